//! The dense buffer an all-reduce works on: owned (the asynchronous API hands a `Vec` to the
//! communicator thread) or the caller's own slice (the blocking API, which waits for the
//! operation, so it runs in place without copying the tensor in and out).

use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A dense `f32` buffer, owned or borrowed from a caller that blocks until the operation
/// using it is over. Dereferences to `[f32]`.
pub struct DenseBuf(Inner);

enum Inner {
    Owned(Vec<f32>),
    Borrowed { ptr: NonNull<f32>, len: usize },
}

// SAFETY: an owned buffer is a Vec. A borrowed one is created only by `DenseBuf::borrow`,
// whose caller keeps the exclusive borrow alive and does not touch the slice until the
// communicator thread has finished with it (it blocks on the operation's reply), so exactly
// one thread accesses the memory at a time.
unsafe impl Send for DenseBuf {}

impl DenseBuf {
    /// Borrows `buf` for an operation run on another thread.
    ///
    /// # Safety
    /// The caller must keep `buf` exclusively borrowed and unused until every `DenseBuf`
    /// derived from this one (including the result the operation returns) is dropped, i.e.
    /// until it received the operation's reply.
    pub(crate) unsafe fn borrow(buf: &mut [f32]) -> Self {
        DenseBuf(Inner::Borrowed {
            ptr: NonNull::new(buf.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len: buf.len(),
        })
    }

    /// The values as an owned vector (a copy for a borrowed buffer).
    pub fn into_vec(self) -> Vec<f32> {
        match self.0 {
            Inner::Owned(v) => v,
            Inner::Borrowed { .. } => self.to_vec(),
        }
    }

    /// Whether this is the caller's own memory (the result is already where it wants it).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Inner::Borrowed { .. })
    }
}

impl From<Vec<f32>> for DenseBuf {
    fn from(v: Vec<f32>) -> Self {
        DenseBuf(Inner::Owned(v))
    }
}

impl Deref for DenseBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.0 {
            Inner::Owned(v) => v,
            // SAFETY: see `DenseBuf::borrow`: the memory is valid and not used elsewhere.
            Inner::Borrowed { ptr, len } => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), *len)
            },
        }
    }
}

impl DerefMut for DenseBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.0 {
            Inner::Owned(v) => v,
            // SAFETY: as for `deref`, and `&mut self` makes this the only live view.
            Inner::Borrowed { ptr, len } => unsafe {
                std::slice::from_raw_parts_mut(ptr.as_ptr(), *len)
            },
        }
    }
}

impl Clone for DenseBuf {
    /// A clone is always owned.
    fn clone(&self) -> Self {
        DenseBuf(Inner::Owned(self.to_vec()))
    }
}

impl std::fmt::Debug for DenseBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenseBuf")
            .field("len", &self.len())
            .field("borrowed", &self.is_borrowed())
            .finish()
    }
}

impl PartialEq for DenseBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_writes_land_in_the_callers_buffer() {
        let mut v = vec![1.0f32, 2.0, 3.0];
        {
            // SAFETY: `v` is not touched until `b` is dropped.
            let mut b = unsafe { DenseBuf::borrow(&mut v) };
            assert!(b.is_borrowed());
            b[1] = 5.0;
            let c = b.clone();
            assert!(!c.is_borrowed());
            assert_eq!(c.into_vec(), vec![1.0, 5.0, 3.0]);
        }
        assert_eq!(v, vec![1.0, 5.0, 3.0]);
        let mut empty: Vec<f32> = Vec::new();
        // SAFETY: as above.
        let b = unsafe { DenseBuf::borrow(&mut empty) };
        assert!(b.is_empty());
    }
}
