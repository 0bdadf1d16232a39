//! Registered (fixed) buffers for reads (`IORING_REGISTER_BUFFERS`, `IORING_OP_READ_FIXED`)
//! whose bytes are handed on as [`Bytes`] without a copy.
//!
//! One anonymous mapping holds `count` buffers; it is registered with the ring for as long as
//! the [`FixedBufs`] lives. A read takes a free buffer ([`FixedBufs::take`]: a [`FixedBuf`],
//! which names its index for `READ_FIXED`); once the read has completed, the buffer becomes a
//! [`Bytes`] ([`FixedBuf::into_bytes`]) that points into the mapping, and the index goes back to
//! the free list when the last clone or slice of that `Bytes` is dropped, wherever that happens.
//!
//! Lifetimes, the reason for the shape:
//! * the mapping is shared (an [`Arc`]) by the [`FixedBufs`] and every [`FixedBuf`] and every
//!   `Bytes` made of one, and unmapped only when the last of them is gone: so a `Bytes` still in
//!   a send in flight, or kept by a connection the operation ledger leaked at exit, keeps it;
//! * the registration is the [`FixedBufs`]'s: it borrows the [`IoUring`] (so the ring outlives
//!   it) and unregisters the buffers when dropped, before the mapping can go; an owner that must
//!   stop while a read may still be in flight calls [`FixedBufs::leak`] instead, and the mapping
//!   and the registration stay for the rest of the process (the ring's own teardown drops the
//!   registration once the kernel is done);
//! * each buffer has at most one holder at a time: free (in the list), lent to the kernel by a
//!   read in flight (a [`FixedBuf`] the operation's owner keeps until the read's completion was
//!   reaped), or read by Rust (a `Bytes`), and only its holder touches its bytes. The mapping is
//!   reached only through raw pointers, so nothing in Rust claims bytes the kernel writes.

use std::io;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use io_uring::IoUring;

/// The most buffers the kernel registers (`IORING_MAX_REG_BUFFERS`).
pub const MAX_FIXED_BUFS: u16 = 1 << 14;

/// The mapping and the free list, shared by the pool and every buffer taken from it.
struct Shared {
    map: NonNull<u8>,
    map_len: usize,
    /// Buffer `i` starts at `i * stride`.
    stride: usize,
    /// Usable bytes of each buffer.
    size: usize,
    /// Indices of the free buffers.
    free: Mutex<Vec<u16>>,
}

// SAFETY: `Shared` is plain memory reached through raw pointers plus a mutex. Which thread
// holds it does not matter: a buffer's bytes are touched only by its one holder (see the module
// documentation), and the free list is behind the mutex.
unsafe impl Send for Shared {}
// SAFETY: as above; `&Shared` gives access only to the free list (locked) and to pointers
// that only a buffer's holder dereferences.
unsafe impl Sync for Shared {}

impl Shared {
    fn free(&self) -> MutexGuard<'_, Vec<u16>> {
        // A panic while the list was locked left it whole (a push or a pop): go on with it.
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn buf_ptr(&self, index: u16) -> *mut u8 {
        // `index < count`, so the offset stays within the mapping (`count * stride` bytes).
        self.map
            .as_ptr()
            .wrapping_add(usize::from(index) * self.stride)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the last holder is gone: no `FixedBufs` (so the buffers were unregistered, or
        // leaked with their registration, and then this never runs), no `FixedBuf` (so no read
        // is in flight into it) and no `Bytes` pointing into it. The mapping was made with this
        // length by `FixedBufs::register`.
        let _ = unsafe { rustix::mm::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

/// `count` registered buffers of `size` bytes (see the module documentation).
pub struct FixedBufs<'r> {
    uring: &'r IoUring,
    shared: Arc<Shared>,
    count: u16,
}

impl<'r> FixedBufs<'r> {
    /// Map `count` buffers of `size` bytes (each starting on a 64-byte boundary, the first on a
    /// page) and register them with `uring` (buffer indices `0..count`).
    ///
    /// Registered buffers are pinned, and the kernel counts them against `RLIMIT_MEMLOCK`
    /// unless the process has `CAP_IPC_LOCK`: past the limit this fails with `ENOMEM`.
    pub fn register(uring: &'r IoUring, count: u16, size: usize) -> io::Result<FixedBufs<'r>> {
        if count == 0 || count > MAX_FIXED_BUFS || size == 0 || size > 1 << 30 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fixed buffers: 1 to 16384 buffers of 1 byte to 1 GiB",
            ));
        }
        let stride = size.next_multiple_of(64);
        let map_len = usize::from(count)
            .checked_mul(stride)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffers too large"))?;
        // SAFETY: an anonymous private mapping with no address hint aliases nothing; it is
        // unmapped only when the last `Arc<Shared>` made of it below is dropped (or at once
        // below, should registration fail).
        let addr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }?;
        let map = NonNull::new(addr.cast::<u8>()).expect("mmap succeeded, so not null");
        let shared = Arc::new(Shared {
            map,
            map_len,
            stride,
            size,
            // Popped from the back: buffer 0 first.
            free: Mutex::new((0..count).rev().collect()),
        });
        let iovecs: Vec<libc::iovec> = (0..count)
            .map(|i| libc::iovec {
                iov_base: shared.buf_ptr(i).cast(),
                iov_len: size,
            })
            .collect();
        // SAFETY: each iovec lies within the mapping, which stays mapped for as long as the
        // registration: the `FixedBufs` returned holds the `Arc` and unregisters in `Drop`
        // (or leaks both); if registration fails, `shared` is dropped here and unmaps it.
        unsafe { uring.submitter().register_buffers(&iovecs) }?;
        Ok(FixedBufs {
            uring,
            shared,
            count,
        })
    }

    /// Buffers registered.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Usable bytes of each buffer.
    pub fn size(&self) -> usize {
        self.shared.size
    }

    /// Whether a buffer is free now.
    pub fn has_free(&self) -> bool {
        !self.shared.free().is_empty()
    }

    /// Take a free buffer, if there is one. It goes back to the free list when the `FixedBuf`,
    /// or the last piece of the `Bytes` made of it, is dropped.
    pub fn take(&self) -> Option<FixedBuf> {
        let index = self.shared.free().pop()?;
        Some(FixedBuf {
            shared: self.shared.clone(),
            index,
        })
    }

    /// Stop while reads into the buffers may still be in flight: keep the mapping and the
    /// registration for the rest of the process (the kernel may still write into them).
    pub fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for FixedBufs<'_> {
    fn drop(&mut self) {
        // Nothing is in flight into the buffers (else the owner would have called `leak`), so
        // the kernel lets go of them here; `Bytes` still pointing into the mapping keep it
        // mapped (their `Arc`), and the kernel no longer writes there.
        let _ = self.uring.submitter().unregister_buffers();
    }
}

/// One registered buffer, held exclusively: lent to a `READ_FIXED` in flight, then turned into
/// [`Bytes`]. Dropping it puts it back on the free list.
pub struct FixedBuf {
    shared: Arc<Shared>,
    index: u16,
}

impl FixedBuf {
    /// Its index among the registered buffers (`READ_FIXED`'s `buf_index`).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The start of its bytes, for the kernel to write into.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.shared.buf_ptr(self.index)
    }

    /// Its usable size.
    pub fn capacity(&self) -> usize {
        self.shared.size
    }

    /// The first `len` bytes (at most the capacity) as `Bytes`, without a copy; the buffer is
    /// free again once the last clone or slice of them is dropped.
    ///
    /// # Safety
    /// The kernel no longer writes into this buffer: the read it was lent to has completed (its
    /// completion was reaped), or it was never lent.
    pub unsafe fn into_bytes(self, len: usize) -> Bytes {
        let len = len.min(self.shared.size);
        Bytes::from_owner(Filled { buf: self, len })
    }
}

impl Drop for FixedBuf {
    fn drop(&mut self) {
        self.shared.free().push(self.index);
    }
}

/// The owner behind the `Bytes` of a filled buffer.
struct Filled {
    buf: FixedBuf,
    len: usize,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the bytes are within buffer `index` (`len <= size`) of a mapping that the
        // `Arc` in `buf` keeps mapped; this owner is the buffer's only holder, and the kernel
        // no longer writes into it (`into_bytes`'s contract), so the bytes do not change while
        // borrowed; the mapping is zero-filled at first, so every byte is initialized.
        unsafe { std::slice::from_raw_parts(self.buf.shared.buf_ptr(self.buf.index), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_bytes_go() {
        let ring = match IoUring::new(8) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipped: no io_uring here ({e})");
                return;
            }
        };
        let bufs = match FixedBufs::register(&ring, 2, 4096) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("skipped: cannot register buffers here ({e})");
                return;
            }
        };
        let mut a = bufs.take().unwrap();
        let b = bufs.take().unwrap();
        assert_ne!(a.index(), b.index());
        assert!(bufs.take().is_none() && !bufs.has_free());
        // SAFETY: the buffer is held exclusively and no read was ever lent it.
        unsafe { a.as_mut_ptr().write_bytes(7, 10) };
        // SAFETY: never lent to the kernel.
        let bytes = unsafe { a.into_bytes(10) };
        let slice = bytes.slice(2..5);
        drop(b);
        assert!(bufs.has_free());
        let c = bufs.take().unwrap();
        assert!(!bufs.has_free());
        drop(bytes);
        assert!(!bufs.has_free(), "a slice still points into the buffer");
        assert_eq!(&slice[..], &[7, 7, 7]);
        drop(slice);
        assert!(bufs.has_free());
        drop(c);
        // The mapping outlives the pool while a `Bytes` points into it.
        let d = bufs.take().unwrap();
        // SAFETY: never lent to the kernel.
        let last = unsafe { d.into_bytes(4096) };
        drop(bufs);
        assert_eq!(last.len(), 4096);
        assert!(last.iter().all(|&x| x == 0 || x == 7));
    }
}
