//! Parallel iteration: rayon when the `rayon` feature is on (the default), the same calls
//! run sequentially on the caller's thread when it is off.
//!
//! The passes are written once against the subset of rayon's API re-exported here. The
//! work partition never depends on the thread count, so both builds give bit-identical
//! results. The exceptions cannot change a bit: [`threads`]-sized splits of a blocked
//! GEMM's rows (that GEMM computes each element the same way however its rows are split,
//! see [`blocked`](crate::blocked)), and the forward's choice of which images of a batch
//! take the single-image path (every forward path computes each output with the same
//! operations).

/// Threads the calling pool runs (1 without the `rayon` feature).
pub(crate) fn threads() -> usize {
    #[cfg(feature = "rayon")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "rayon"))]
    1
}

#[cfg(feature = "rayon")]
pub(crate) use rayon::prelude::*;

#[cfg(not(feature = "rayon"))]
pub(crate) use sequential::*;

#[cfg(not(feature = "rayon"))]
#[allow(dead_code)] // the full subset, for every pass; each build uses part of it
mod sequential {
    /// rayon's slice methods, as plain sequential iterators.
    pub(crate) trait ParSlice<T> {
        fn par_iter(&self) -> std::slice::Iter<'_, T>;
        fn par_chunks_exact(&self, size: usize) -> std::slice::ChunksExact<'_, T>;
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T>;
    }

    impl<T> ParSlice<T> for [T] {
        fn par_iter(&self) -> std::slice::Iter<'_, T> {
            self.iter()
        }
        fn par_chunks_exact(&self, size: usize) -> std::slice::ChunksExact<'_, T> {
            self.chunks_exact(size)
        }
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T> {
            self.chunks(size)
        }
    }

    /// rayon's mutable slice methods, as plain sequential iterators.
    pub(crate) trait ParSliceMut<T> {
        fn par_iter_mut(&mut self) -> std::slice::IterMut<'_, T>;
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T>;
        fn par_chunks_exact_mut(&mut self, size: usize) -> std::slice::ChunksExactMut<'_, T>;
    }

    impl<T> ParSliceMut<T> for [T] {
        fn par_iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
            self.iter_mut()
        }
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T> {
            self.chunks_mut(size)
        }
        fn par_chunks_exact_mut(&mut self, size: usize) -> std::slice::ChunksExactMut<'_, T> {
            self.chunks_exact_mut(size)
        }
    }

    /// `into_par_iter` for ranges.
    pub(crate) trait IntoParIter: IntoIterator + Sized {
        fn into_par_iter(self) -> Self::IntoIter {
            self.into_iter()
        }
    }

    impl IntoParIter for std::ops::Range<usize> {}

    /// rayon's `*_init` adapters: one state for the whole (sequential) iteration.
    pub(crate) trait ParIterInit: Iterator + Sized {
        fn for_each_init<S>(self, init: impl Fn() -> S, f: impl Fn(&mut S, Self::Item)) {
            let mut state = init();
            for item in self {
                f(&mut state, item);
            }
        }
        fn map_init<S, R>(
            self,
            init: impl Fn() -> S,
            f: impl Fn(&mut S, Self::Item) -> R,
        ) -> impl Iterator<Item = R> {
            let mut state = init();
            self.map(move |item| f(&mut state, item))
        }
    }

    impl<I: Iterator> ParIterInit for I {}
}
