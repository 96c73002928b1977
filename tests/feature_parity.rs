//! With and without the `rayon` feature, every pass gives the same bits.
//!
//! The test hashes the bit patterns of all three passes' outputs over shapes that split
//! work every way the passes do (over images, pixel tiles, channel blocks, groups), with
//! random non-integer data so the results depend on the summation order. A digest only
//! means something next to another build's: when `CONVGEMM_DIGEST_FILE` names a file, the
//! test writes the digest there if the file does not exist, else compares with it. CI runs
//! the test suite with `--all-features` (rayon) and then `--no-default-features`
//! (sequential) with the same file. Without the variable, it checks that the digest is
//! reproducible within one build.

use convgemm::{Conv2d, Conv2dSpec, Element};

fn lcg<T: Element>(len: usize, seed: u64) -> Vec<T> {
    let mut s = seed.wrapping_mul(6364136223846793005) ^ 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            T::from_f64((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect()
}

/// FNV-1a over the exact bits of every value.
fn fnv(hash: &mut u64, values: &[f64]) {
    for v in values {
        for byte in v.to_bits().to_le_bytes() {
            *hash = (*hash ^ byte as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn shapes() -> Vec<Conv2dSpec> {
    let base = Conv2dSpec {
        kernel: [3, 3],
        padding: [1, 1],
        ..Default::default()
    };
    vec![
        // Several images: split over the batch.
        Conv2dSpec {
            batch: 4,
            in_channels: 16,
            in_h: 20,
            in_w: 20,
            out_channels: 16,
            ..base
        },
        // One large image: split over pixel tiles and channel blocks.
        Conv2dSpec {
            batch: 1,
            in_channels: 8,
            in_h: 64,
            in_w: 64,
            out_channels: 32,
            ..base
        },
        // Groups, stride, dilation.
        Conv2dSpec {
            batch: 3,
            in_channels: 12,
            in_h: 17,
            in_w: 15,
            out_channels: 18,
            stride: [2, 1],
            dilation: [1, 2],
            padding: [2, 1],
            groups: 3,
            ..base
        },
        // Pointwise (no im2col).
        Conv2dSpec {
            batch: 2,
            in_channels: 32,
            in_h: 12,
            in_w: 12,
            out_channels: 24,
            kernel: [1, 1],
            padding: [0, 0],
            ..base
        },
    ]
}

fn digest_of<T: Element>(hash: &mut u64) {
    for (i, spec) in shapes().into_iter().enumerate() {
        let conv = Conv2d::new(spec).unwrap();
        let len = |d: [usize; 4]| d.iter().product::<usize>();
        let seed = i as u64 * 4;
        let x = lcg::<T>(len(conv.input_dims()), seed);
        let w = lcg::<T>(len(conv.weight_dims()), seed + 1);
        let b = lcg::<T>(spec.out_channels, seed + 2);
        let dy = lcg::<T>(len(conv.output_dims()), seed + 3);
        let mut y = vec![T::ZERO; dy.len()];
        let mut dx = vec![T::ZERO; x.len()];
        let mut dw = vec![T::ZERO; w.len()];
        let mut db = vec![T::ZERO; b.len()];
        conv.forward(&x, &w, Some(&b), &mut y).unwrap();
        conv.backward_data(&dy, &w, &mut dx).unwrap();
        conv.backward_weights(&x, &dy, &mut dw, Some(&mut db))
            .unwrap();
        for out in [&y, &dx, &dw, &db] {
            let wide: Vec<f64> = out.iter().map(|v| v.to_f64()).collect();
            fnv(hash, &wide);
        }
    }
}

fn digest() -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    digest_of::<f32>(&mut hash);
    digest_of::<f64>(&mut hash);
    format!("{hash:016x}")
}

#[test]
fn same_bits_with_and_without_rayon() {
    let digest = digest();
    assert_eq!(digest, self::digest(), "not reproducible within one build");
    let rayon = cfg!(feature = "rayon");
    let Some(path) = std::env::var_os("CONVGEMM_DIGEST_FILE") else {
        return;
    };
    match std::fs::read_to_string(&path) {
        Ok(saved) => {
            let (saved_digest, saved_rayon) = saved.trim().split_once(' ').unwrap_or((&saved, "?"));
            assert_eq!(
                saved_digest, digest,
                "digest differs from the build with rayon={saved_rayon}; this build has rayon={rayon}"
            );
            println!(
                "digest {digest} matches the build with rayon={saved_rayon} (this one: rayon={rayon})"
            );
        }
        Err(_) => {
            std::fs::write(&path, format!("{digest} {rayon}\n")).unwrap();
            println!("digest {digest} (rayon={rayon}) written for the next build to compare");
        }
    }
}
