#!/usr/bin/env python3
"""Writes the committed seed corpora, fuzz/seeds/<target>/<name>, in the byte layouts the
targets document at the top of their files. Run from anywhere: python3 fuzz/seeds/make_seeds.py

Each seed is one interesting edge (1x1 output, depthwise, large stride, H = 1, padding
larger than the input, dilation, overflow, ...); libFuzzer mutates from them. Keep the
tables below in sync with the targets (SPECIAL in conv_never_panics.rs).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


# ---------------------------------------------------------------- conv_matches_reference
# flags: bit 0 bias, bits 1-2 data mode, bit 3 raw channels, bit 4 also f32, bit 5 big.
UNIFORM, SMALL_INTS, WIDE, SPARSE = 0, 1, 2, 3


def conv_case(name, n, g, ci, co, hw, k, s=(1, 1), p=(0, 0), d=(1, 1), bias=True,
              mode=UNIFORM, raw=False, f32=True, big=False, seed=1):
    """ci / co are per group unless raw (then the channel counts themselves)."""
    flags = int(bias) | (mode << 1) | (int(raw) << 3) | (int(f32) << 4) | (int(big) << 5)
    plane = 49 if big else 13
    assert all(v < plane for v in hw), name
    assert all(v < 6 for v in k) and all(v < 5 for v in s), name
    assert all(v < 6 for v in p) and all(v < 4 for v in d), name
    assert n < 4 and g < 5 and (ci < 13 and co < 13 if raw else ci < 5 and co < 5), name
    data = [flags, n, g, ci, co, hw[0], hw[1], k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1]]
    data += list(struct.pack("<Q", seed))
    for m, suffix in [(mode, ""), (SMALL_INTS, "-exact")]:
        if suffix and (mode == SMALL_INTS or name.startswith("invalid")):
            continue
        data[0] = (flags & ~6) | (m << 1)
        write("conv_matches_reference", name + suffix, data)


T = "conv_matches_reference"
conv_case("output_1x1", 2, 1, 3, 2, (3, 3), (3, 3))
conv_case("output_1x1_pad_dilation", 1, 1, 2, 3, (3, 3), (3, 3), p=(2, 2), d=(3, 3))
conv_case("depthwise", 2, 4, 1, 1, (7, 6), (3, 3), p=(1, 1))
conv_case("depthwise_multiplier", 1, 3, 1, 2, (8, 7), (3, 3), s=(2, 1), p=(1, 1))
conv_case("depthwise_n1_big", 1, 4, 1, 1, (40, 33), (3, 3), p=(1, 1), big=True)
conv_case("groups_2", 2, 2, 3, 2, (6, 7), (3, 2), p=(1, 0))
conv_case("large_stride", 2, 1, 2, 3, (12, 11), (2, 3), s=(4, 3))
conv_case("stride_larger_than_input", 1, 1, 2, 2, (3, 4), (1, 1), s=(4, 4))
conv_case("h1", 2, 1, 3, 2, (1, 12), (1, 3), p=(0, 1))
conv_case("h1_stride_dilation", 1, 1, 2, 2, (1, 12), (1, 4), s=(1, 2), p=(0, 3), d=(1, 2))
conv_case("w1", 2, 1, 2, 3, (11, 1), (3, 1), s=(2, 1), p=(1, 0))
conv_case("input_1x1_pad", 3, 1, 2, 2, (1, 1), (3, 3), p=(1, 1))
conv_case("padding_larger_than_input", 1, 1, 2, 2, (2, 3), (3, 2), p=(5, 4))
conv_case("padding_larger_than_input_stride", 2, 2, 1, 2, (1, 2), (2, 3), s=(3, 4), p=(5, 5))
conv_case("dilation_3x2", 2, 1, 2, 2, (12, 12), (3, 3), p=(2, 1), d=(3, 2))
conv_case("dilation_stride", 1, 1, 3, 2, (12, 9), (3, 2), s=(2, 3), p=(1, 0), d=(2, 3))
conv_case("pointwise", 3, 1, 4, 3, (5, 7), (1, 1))
conv_case("pointwise_groups_n1", 1, 2, 4, 3, (9, 9), (1, 1))
conv_case("pointwise_stride2", 2, 1, 4, 3, (7, 8), (1, 1), s=(2, 2))
conv_case("kernel_equals_padded_input", 2, 1, 3, 4, (5, 4), (5, 5), p=(0, 1))
conv_case("multi_tile_n1_big", 1, 1, 4, 4, (40, 40), (3, 3), p=(1, 1), big=True)
conv_case("multi_tile_n3_big", 3, 1, 4, 2, (30, 28), (5, 5), p=(2, 2), big=True)
# Column matrix over the 1 MiB tile budget even for several images: tiles cut by bytes.
conv_case("budget_limited_tiles_big", 2, 1, 4, 1, (48, 48), (5, 5), p=(2, 2), raw=True,
          big=True)
conv_case("wide_magnitudes", 2, 1, 4, 3, (8, 8), (3, 3), p=(1, 1), mode=WIDE)
conv_case("sparse", 2, 1, 4, 3, (8, 8), (3, 3), p=(1, 1), mode=SPARSE)
conv_case("no_bias", 2, 1, 3, 3, (6, 6), (3, 3), p=(1, 1), bias=False)
# Invalid specs: every entry must fail the same way.
conv_case("invalid_groups_mismatch", 1, 2, 3, 4, (5, 5), (3, 3), raw=True)
conv_case("invalid_zero_batch", 0, 1, 2, 2, (5, 5), (3, 3))
conv_case("invalid_kernel_too_large", 1, 1, 2, 2, (2, 2), (5, 5), p=(1, 1), d=(1, 1))
conv_case("invalid_zero_stride", 1, 1, 2, 2, (5, 5), (3, 3), s=(0, 1))
conv_case("invalid_zero_dilation", 1, 1, 2, 2, (5, 5), (3, 3), d=(1, 0))

# ---------------------------------------------------------------- conv_never_panics
# Size field: (tag, arg...). Tag 0 small (SMALL index), 5 special (SPECIAL index),
# 6 quotient (LIMITS index | delta << 2; delta 0 means -1, 1 means 0, 2 means +1),
# 7 raw u64.
SMALL = [1, 2, 3, 0, 4, 5, 7, 16]
SPECIAL = [0, 1, 2, 3, 2**32 - 1, 2**32, 2**31 - 1, 1 << 20, 1 << 30, 1 << 31, 1 << 32,
           1 << 40, 1 << 59, 1 << 60, (1 << 60) - 1, 1 << 61, 1 << 62, 1 << 63, (1 << 63) + 1,
           2**63 - 1, (2**63 - 1) // 8, (2**63 - 1) // 8 + 1, (2**64 - 1) // 2 - 1, 2**64 - 1]


def sm(v):
    return [0, SMALL.index(v)]


def sp(v):
    return [5, SPECIAL.index(v)]


def quot(limit_index, delta=0):
    return [6, limit_index | ((delta + 1) << 2)]


def raw(v):
    return [7] + list(struct.pack("<Q", v))


FIELDS = ["batch", "in_channels", "in_h", "in_w", "out_channels", "k0", "k1", "s0", "s1",
          "p0", "p1", "d0", "d1", "groups"]
DEFAULT = dict(batch=1, in_channels=2, in_h=5, in_w=5, out_channels=3, k0=3, k1=3, s0=1,
               s1=1, p0=1, p1=1, d0=1, d1=1, groups=1)

# Ops: 0/1 forward f32/f64, 2/3 backward_data, 4/5 backward_weights, 6 inspect,
# 7 reference-only forward f64. Length selector: (kind, arg): 0 exact, 1 exact + i8 arg,
# 2 tiny (arg), 3 empty.
EXACT = [0, 0]


def plus(delta):
    return [1, delta & 0xFF]


def tiny(n):
    return [2, n]


def all_ops(lens=None):
    """Every pass in both types with exact buffers (bias / db present), then inspect."""
    lens = lens or {}
    x, w, y, k = (lens.get(b, EXACT) for b in "xwyk")
    ops = []
    for t in (0, 1):
        ops += [0 + t] + x + w + [1] + k + y
        ops += [2 + t] + y + w + x
        ops += [4 + t] + x + y + w + [1] + k
    return ops + [6, 7] + x + w + [1] + k + y


def np_case(name, ops=None, **fields):
    spec = []
    for f in FIELDS:
        v = fields.get(f, DEFAULT[f])
        spec += v if isinstance(v, list) else sm(v)
    write("conv_never_panics", name, spec + (all_ops() if ops is None else ops))


np_case("valid_3x3")
np_case("all_zero_bytes", ops=[], batch=1, in_channels=1, in_h=1, in_w=1, out_channels=1,
        k0=1, k1=1)
np_case("output_1x1", in_h=3, in_w=3, p0=0, p1=0)
np_case("depthwise", in_channels=4, out_channels=4, groups=4)
np_case("large_stride", in_h=16, in_w=7, s0=16, s1=5)
np_case("h1", in_h=1, k0=1, p0=0)
np_case("padding_larger_than_input", in_h=2, in_w=1, p0=7, p1=5)
np_case("dilation", in_h=16, in_w=16, d0=7, d1=3)
np_case("wrong_lengths", ops=(
    [1] + plus(1) + EXACT + [0] + EXACT  # forward f64, x one too long
    + [1] + EXACT + EXACT + [1] + plus(-1) + EXACT  # bias one short
    + [3] + EXACT + tiny(3) + EXACT  # backward_data f64, w tiny
    + [5] + EXACT + EXACT + EXACT + [1] + plus(1)  # backward_weights f64, db one long
    + [0] + [3, 0] + [3, 0] + [0] + [3, 0]))  # forward f32, every buffer empty
# Found: the reference's isize index overflowed (stride 2^63, padding 2^62).
np_case("huge_stride_padding", in_h=1, in_w=1, k0=1, k1=1, s0=sp(1 << 63), p0=sp(1 << 62),
        p1=0)
# Found: workspace() overflowed for weights near isize::MAX bytes.
np_case("workspace_limit", ops=[6], in_channels=quot(0, 0), in_h=1, in_w=1, out_channels=1,
        k0=1, k1=1)
np_case("x_at_limit", in_channels=quot(0, 0), in_h=1, in_w=1, out_channels=1, k0=1, k1=1,
        p0=0, p1=0)
np_case("x_over_limit", in_w=quot(0, 1), in_h=1, k0=1, k1=1, p0=0, p1=0)
np_case("product_overflows_usize", in_h=sp(2**64 - 1), in_w=2)
np_case("padding_overflows", p0=sp((2**64 - 1) // 2 - 1), in_h=3)
np_case("padding_max", p1=sp(2**64 - 1))
np_case("dilation_overflows", d0=sp(1 << 63), k0=3)
np_case("kernel_huge", k0=sp(1 << 40), p0=sp(1 << 40))
np_case("stride_huge", s0=sp(2**64 - 1), s1=sp(2**64 - 1))
np_case("groups_huge", groups=sp(2**64 - 1))
np_case("raw_fields", batch=raw(0x0123456789ABCDEF), in_w=raw(3))
# Found: 317 channels of a 1 × 1 input padded to 15 × 33 each: scratch over the guard.
np_case("many_tiny_padded_channels", batch=2, in_channels=raw(317), in_h=1, in_w=1,
        out_channels=1, k0=1, k1=1, s0=2, p0=7, p1=16)
# ---------------------------------------------------------------- pool_matches_reference
# flags: bit 0 count_include_pad, bits 1-2 data mode, bit 3 also f32, bit 4 big,
# bit 5 corrupt an argmax, bit 6 wrong buffer lengths.


def pool_case(name, n, c, hw, k, s, p=(0, 0), include_pad=False, mode=UNIFORM, big=False,
              corrupt=True, wrong=True, seed=1):
    flags = (int(include_pad) | (mode << 1) | (1 << 3) | (int(big) << 4)
             | (int(corrupt) << 5) | (int(wrong) << 6))
    plane = 49 if big else 13
    assert all(v < plane for v in hw) and all(v < 6 for v in k), name
    assert all(v < 5 for v in s) and all(v < 4 for v in p) and n < 4 and c < 5, name
    data = [flags, n, c, hw[0], hw[1], k[0], k[1], s[0], s[1], p[0], p[1]]
    data += list(struct.pack("<Q", seed))
    write("pool_matches_reference", name, data)
    if not name.startswith("invalid"):
        # The same shape with ties everywhere (small integers) and the other divisor rule.
        data[0] = (flags & ~7) | (SMALL_INTS << 1) | int(not include_pad)
        write("pool_matches_reference", name + "-ties", data)


pool_case("max_2x2_s2", 2, 3, (8, 8), (2, 2), (2, 2))
pool_case("output_1x1", 1, 2, (3, 3), (3, 3), (1, 1))
pool_case("overlapping_3x3_s1_pad1", 2, 2, (7, 6), (3, 3), (1, 1), (1, 1), include_pad=True)
pool_case("overlapping_3x3_s2_pad1", 1, 3, (9, 10), (3, 3), (2, 2), (1, 1))
pool_case("large_stride", 2, 1, (12, 11), (2, 3), (4, 4))
pool_case("h1", 2, 2, (1, 12), (1, 3), (1, 2), (0, 1))
pool_case("w1", 1, 2, (10, 1), (3, 1), (2, 1), (1, 0), include_pad=True)
pool_case("input_1x1_pad", 3, 2, (1, 1), (3, 3), (1, 1), (1, 1))
pool_case("kernel_5_pad_2", 1, 2, (6, 5), (5, 5), (3, 1), (2, 2), include_pad=True)
pool_case("non_square", 2, 2, (9, 12), (2, 4), (1, 3), (1, 2))
pool_case("big_plane", 1, 2, (40, 37), (3, 3), (2, 2), (1, 1), big=True)
pool_case("wide_magnitudes", 2, 2, (8, 8), (3, 3), (2, 2), (1, 1), mode=WIDE)
pool_case("sparse", 2, 2, (8, 8), (3, 3), (1, 1), (1, 1), mode=SPARSE)
pool_case("invalid_padding_over_half_kernel", 1, 1, (6, 6), (2, 2), (2, 2), (2, 0))
pool_case("invalid_kernel_too_large", 1, 1, (2, 3), (5, 3), (1, 1), (1, 1))
pool_case("invalid_zero_stride", 1, 1, (6, 6), (2, 2), (0, 2))
pool_case("invalid_zero_channels", 1, 0, (6, 6), (2, 2), (2, 2))

print("seeds written under", HERE)
