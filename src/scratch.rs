//! Per-thread scratch buffers, reused across calls.
//!
//! Every pass needs a column tile (or a padded plane) per task. Allocating and zeroing it
//! per call costs more than building it, so each thread keeps one 64-byte aligned buffer
//! per element type and lends it out with [`take`]; the [`Scratch`] guard puts it back
//! when dropped. After the first call on a thread, a pass allocates no column memory. The
//! memory a thread keeps is the largest scratch any call on it asked for (see
//! [`Conv2d::workspace`](crate::Conv2d::workspace)).
//!
//! A buffer is lent to one task at a time: if the thread's buffer is already out, `take`
//! allocates a fresh one. Separate slots hold per-call results that outlive the tasks
//! (the weight gradient's partial sums, kept by the calling thread while it also runs
//! tasks) and the blocked GEMM's packed panels (used while a task holds its column tile).

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

use aligned_vec::{AVec, ConstAlign};

use crate::element::Element;

/// A 64-byte aligned growable buffer.
pub(crate) type AlignedBuf<T> = AVec<T, ConstAlign<64>>;

/// Which of a thread's buffers to lend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Column tiles and padded planes: held by one task at a time.
    Columns = 0,
    /// Per-call results that outlive the tasks (the weight gradient's partial sums), held
    /// by the calling thread while its tasks use [`Slot::Columns`].
    Partials = 1,
    /// The packed A and B panels of the blocked GEMM ([`take_packing`]): the GEMM runs
    /// while a pass holds its column tile, so sharing that slot would make every GEMM call
    /// allocate.
    Packing = 2,
    /// A pass's weights packed once for the GEMM ([`PrepackedA`](crate::blocked::PrepackedA)),
    /// held by the calling thread and read by all of its tasks.
    Weights = 3,
    /// The finished result a task of an accumulating pass computes before adding it to
    /// the caller's buffer (`conv::Write::into`; one image's or plane's input delta), held
    /// around work that uses the other slots.
    Delta = 4,
}

/// A lent scratch buffer of a fixed length. Its initial contents are unspecified (zeros
/// or whatever its last user wrote): users overwrite what they read.
pub(crate) struct Scratch<T: Element> {
    buf: AlignedBuf<T>,
    len: usize,
    slot: Slot,
}

/// Borrows this thread's column buffer, grown to at least `len` elements.
pub(crate) fn take<T: Element>(len: usize) -> Scratch<T> {
    take_from(Slot::Columns, len)
}

/// Borrows this thread's packing buffer (for the blocked GEMM), grown to at least `len`
/// elements.
pub(crate) fn take_packing<T: Element>(len: usize) -> Scratch<T> {
    take_from(Slot::Packing, len)
}

/// Borrows this thread's buffer of `slot`, grown to at least `len` elements.
pub(crate) fn take_from<T: Element>(slot: Slot, len: usize) -> Scratch<T> {
    let mut buf = T::with_thread_buffer(slot, |cell| match cell.try_borrow_mut() {
        Ok(mut held) => std::mem::replace(&mut *held, AVec::new(64)),
        Err(_) => AVec::new(64),
    });
    if buf.len() < len {
        buf.resize(len, T::ZERO);
    }
    Scratch { buf, len, slot }
}

impl<T: Element> Deref for Scratch<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: Element> DerefMut for Scratch<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T: Element> Drop for Scratch<T> {
    /// Returns the buffer to this thread's slot, keeping the larger of the two.
    fn drop(&mut self) {
        let buf = std::mem::replace(&mut self.buf, AVec::new(64));
        T::with_thread_buffer(self.slot, |cell| {
            if let Ok(mut slot) = cell.try_borrow_mut()
                && slot.len() < buf.len()
            {
                *slot = buf;
            }
        });
    }
}

/// The per-type thread-local buffers behind [`take`], [`take_from`] and [`take_packing`]
/// (a supertrait of [`Element`], unnameable outside the crate).
pub trait ThreadBuffer: Sized + 'static {
    /// Runs `f` on this thread's buffer of `slot`.
    fn with_thread_buffer<R>(slot: Slot, f: impl FnOnce(&RefCell<AlignedBuf<Self>>) -> R) -> R;
}

macro_rules! impl_thread_buffer {
    ($t:ty) => {
        impl ThreadBuffer for $t {
            fn with_thread_buffer<R>(
                slot: Slot,
                f: impl FnOnce(&RefCell<AlignedBuf<Self>>) -> R,
            ) -> R {
                thread_local! {
                    static BUFFERS: [RefCell<AlignedBuf<$t>>; 5] =
                        [
                        RefCell::new(AVec::new(64)),
                        RefCell::new(AVec::new(64)),
                        RefCell::new(AVec::new(64)),
                        RefCell::new(AVec::new(64)),
                        RefCell::new(AVec::new(64)),
                    ];
                }
                BUFFERS.with(|buffers| f(&buffers[slot as usize]))
            }
        }
    };
}

impl_thread_buffer!(f32);
impl_thread_buffer!(f64);
