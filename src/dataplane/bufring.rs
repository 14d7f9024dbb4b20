//! A provided-buffer ring (IORING_REGISTER_PBUF_RING) owned by one worker.
//!
//! The kernel picks a buffer from the ring for every multishot read
//! completion and names it by buffer id (bid); the worker hands the bid back
//! with [`BufRing::push`] once the packet is consumed and makes the returns
//! visible with one [`BufRing::publish`] per batch.
//!
//! Every buffer is `stride` bytes; the kernel is only given the part after
//! `headroom`, so the type byte and AEAD envelope of the direct UDP path can
//! later be written in front of the packet without moving it.

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

/// Buffers are placed on cache-line boundaries so a packet and its headroom
/// never share a line with the neighbouring buffer.
pub const BUF_ALIGN: usize = 64;

/// Kernel limit on entries in one provided-buffer ring.
pub const MAX_ENTRIES: u16 = 32_768;

/// Mirror of the kernel's `struct io_uring_buf`. Entry 0's `resv` field is
/// the ring tail, so entries are written field by field and `resv` is never
/// touched through an entry.
#[repr(C)]
struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawBuf>() == 16);

#[derive(Debug, thiserror::Error)]
pub enum BufRingError {
    #[error("buffer ring needs a power-of-two entry count in 1..={MAX_ENTRIES}, got {0}")]
    BadEntryCount(u32),
    #[error("buffer of {headroom} headroom + {payload} payload bytes is too large")]
    BadBufferSize { headroom: usize, payload: usize },
    #[error("mapping {bytes} bytes for the buffer ring failed: {source}")]
    Mmap { bytes: usize, source: io::Error },
}

/// Pure index and address arithmetic, separate from the memory so it can be
/// tested without mapping anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    entries: u16,
    stride: usize,
    headroom: usize,
}

impl Layout {
    /// `payload` is the largest packet a buffer must hold (the MTU).
    pub fn new(entries: u32, payload: usize, headroom: usize) -> Result<Self, BufRingError> {
        if entries == 0 || entries > u32::from(MAX_ENTRIES) || !entries.is_power_of_two() {
            return Err(BufRingError::BadEntryCount(entries));
        }
        let too_big = BufRingError::BadBufferSize { headroom, payload };
        let stride = headroom
            .checked_add(payload)
            .and_then(|n| n.checked_next_multiple_of(BUF_ALIGN))
            .ok_or(too_big)?;
        // The kernel's per-buffer length is a u32.
        if payload == 0 || stride - headroom > u32::MAX as usize {
            return Err(BufRingError::BadBufferSize { headroom, payload });
        }
        Ok(Layout {
            entries: entries as u16,
            stride,
            headroom,
        })
    }

    pub fn entries(&self) -> u16 {
        self.entries
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Bytes the kernel may fill in each buffer (≥ the requested payload,
    /// since the stride is rounded up).
    pub fn data_len(&self) -> usize {
        self.stride - self.headroom
    }

    /// Ring slot for a (free-running, wrapping) tail value.
    pub fn slot(&self, tail: u16) -> usize {
        usize::from(tail & (self.entries - 1))
    }

    /// Offset of buffer `bid`'s first byte (start of its headroom).
    pub fn buffer_offset(&self, bid: u16) -> usize {
        usize::from(bid) * self.stride
    }

    /// Offset where the kernel writes buffer `bid`'s data.
    pub fn data_offset(&self, bid: u16) -> usize {
        self.buffer_offset(bid) + self.headroom
    }

    pub fn ring_bytes(&self) -> usize {
        usize::from(self.entries) * std::mem::size_of::<RawBuf>()
    }

    pub fn buffer_bytes(&self) -> usize {
        usize::from(self.entries) * self.stride
    }

    pub fn contains(&self, bid: u16) -> bool {
        bid < self.entries
    }
}

/// Anonymous private mapping; page-aligned as the kernel requires for the
/// ring itself.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> Result<Self, BufRingError> {
        // SAFETY: anonymous mapping with no address hint; the result is
        // checked before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BufRingError::Mmap {
                bytes: len,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or(BufRingError::Mmap {
            bytes: len,
            source: io::Error::other("mmap returned NULL"),
        })?;
        Ok(Mmap { ptr, len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Ring memory plus buffer memory for one buffer group.
pub struct BufRing {
    layout: Layout,
    ring: Mmap,
    bufs: Mmap,
    /// Local copy of the tail; the shared one is written only by `publish`.
    tail: u16,
}

// SAFETY: the mappings are owned exclusively by this value; moving it to the
// worker thread that registers and uses it is fine.
unsafe impl Send for BufRing {}

impl BufRing {
    /// Map the memory and fill the ring with every buffer.
    pub fn new(layout: Layout) -> Result<Self, BufRingError> {
        let ring = Mmap::new(layout.ring_bytes())?;
        let bufs = Mmap::new(layout.buffer_bytes())?;
        let mut r = BufRing {
            layout,
            ring,
            bufs,
            tail: 0,
        };
        for bid in 0..layout.entries {
            r.push(bid);
        }
        r.publish();
        Ok(r)
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Address to pass to `register_buf_ring`.
    pub fn ring_addr(&self) -> u64 {
        self.ring.ptr.as_ptr() as u64
    }

    /// Queue buffer `bid` for return to the kernel. Ignores ids outside the
    /// ring (a kernel bug or memory corruption, not something to act on).
    pub fn push(&mut self, bid: u16) {
        if !self.layout.contains(bid) {
            return;
        }
        let slot = self.layout.slot(self.tail);
        // SAFETY: slot < entries, so the entry is inside the ring mapping;
        // bid < entries, so the data range is inside the buffer mapping.
        // Fields are written through raw pointers so the tail that overlays
        // entry 0's `resv` is never covered by a Rust reference.
        unsafe {
            let e = self.ring.ptr.as_ptr().cast::<RawBuf>().add(slot);
            let data = self.bufs.ptr.as_ptr().add(self.layout.data_offset(bid));
            ptr::addr_of_mut!((*e).addr).write(data as u64);
            ptr::addr_of_mut!((*e).len).write(self.layout.data_len() as u32);
            ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make all pushed buffers visible to the kernel.
    pub fn publish(&self) {
        // SAFETY: the tail is the u16 at entry 0's `resv`, 2-byte aligned in
        // a page-aligned mapping; the kernel reads it with acquire semantics,
        // so a release store orders the entry writes before it.
        unsafe {
            let tail = ptr::addr_of_mut!((*self.ring.ptr.as_ptr().cast::<RawBuf>()).resv);
            (*tail.cast::<AtomicU16>()).store(self.tail, Ordering::Release);
        }
    }

    /// The `len` bytes the kernel wrote into buffer `bid`, or `None` if the
    /// id or length is out of range.
    ///
    /// The caller must only ask for a bid the kernel has handed over in a
    /// completion and not yet been given back.
    pub fn data(&self, bid: u16, len: usize) -> Option<&[u8]> {
        if !self.layout.contains(bid) || len > self.layout.data_len() {
            return None;
        }
        // SAFETY: range checked above; the kernel does not write a buffer
        // between handing it out and the worker pushing it back.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.bufs.ptr.as_ptr().add(self.layout.data_offset(bid)),
                len,
            )
        })
    }

    /// The whole buffer `bid` including headroom, for writing a header in
    /// front of `len` data bytes in place. Same contract as [`Self::data`].
    pub fn buffer_mut(&mut self, bid: u16) -> Option<&mut [u8]> {
        if !self.layout.contains(bid) {
            return None;
        }
        // SAFETY: as in `data`; &mut self prevents overlapping borrows.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.bufs.ptr.as_ptr().add(self.layout.buffer_offset(bid)),
                self.layout.stride,
            )
        })
    }

    /// Give up the memory without unmapping it. Used when the kernel may
    /// still write into it (a read could not be confirmed cancelled).
    pub fn leak(self) {
        std::mem::forget(self);
    }

    #[cfg(test)]
    fn entry(&self, slot: usize) -> (u64, u32, u16) {
        // SAFETY: test helper; slot is in range in the tests.
        unsafe {
            let e = self.ring.ptr.as_ptr().cast::<RawBuf>().add(slot);
            (
                ptr::addr_of!((*e).addr).read(),
                ptr::addr_of!((*e).len).read(),
                ptr::addr_of!((*e).bid).read(),
            )
        }
    }

    #[cfg(test)]
    fn shared_tail(&self) -> u16 {
        // SAFETY: see `publish`.
        unsafe {
            let tail = ptr::addr_of!((*self.ring.ptr.as_ptr().cast::<RawBuf>()).resv);
            (*tail.cast::<AtomicU16>()).load(Ordering::Acquire)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_math() {
        let l = Layout::new(1024, 1400, 64).unwrap();
        assert_eq!(l.stride(), 1472);
        assert_eq!(l.data_len(), 1408);
        assert!(l.data_len() >= 1400);
        assert_eq!(l.buffer_offset(3), 3 * 1472);
        assert_eq!(l.data_offset(3), 3 * 1472 + 64);
        assert_eq!(l.slot(1023), 1023);
        assert_eq!(l.slot(1024), 0);
        assert_eq!(l.slot(u16::MAX), 1023);
        assert_eq!(l.ring_bytes(), 16 * 1024);
        assert!(l.contains(1023) && !l.contains(1024));
        assert_eq!(l.stride() % BUF_ALIGN, 0);
    }

    #[test]
    fn layout_rejects_bad_shapes() {
        for n in [0, 3, 1000, 65_536] {
            assert!(matches!(
                Layout::new(n, 1400, 64),
                Err(BufRingError::BadEntryCount(_))
            ));
        }
        assert!(Layout::new(8, 0, 64).is_err());
        assert!(Layout::new(8, usize::MAX, 64).is_err());
        assert!(Layout::new(32_768, 1500, 64).is_ok());
    }

    #[test]
    fn ring_starts_full_and_recycles_with_wrap() {
        let l = Layout::new(4, 100, 64).unwrap();
        let mut r = BufRing::new(l).unwrap();
        assert_eq!(r.shared_tail(), 4);
        let base = r.bufs.ptr.as_ptr() as u64;
        for slot in 0..4 {
            let (addr, len, bid) = r.entry(slot);
            assert_eq!(bid as usize, slot);
            assert_eq!(len as usize, l.data_len());
            assert_eq!(addr, base + l.data_offset(bid) as u64);
        }
        // Returning bid 2 lands in slot 0 (tail 4 wraps) without disturbing
        // the published tail until publish().
        r.push(2);
        assert_eq!(r.entry(0).2, 2);
        assert_eq!(r.shared_tail(), 4);
        r.publish();
        assert_eq!(r.shared_tail(), 5);
        // Out-of-range ids are ignored.
        r.push(9);
        r.publish();
        assert_eq!(r.shared_tail(), 5);
    }

    #[test]
    fn data_and_headroom_views() {
        let l = Layout::new(2, 100, 64).unwrap();
        let mut r = BufRing::new(l).unwrap();
        {
            let b = r.buffer_mut(1).unwrap();
            assert_eq!(b.len(), l.stride());
            b[64] = 0x45;
            b[63] = 0xaa;
        }
        assert_eq!(r.data(1, 1).unwrap(), &[0x45]);
        assert!(r.data(1, l.data_len() + 1).is_none());
        assert!(r.data(2, 1).is_none());
        assert!(r.buffer_mut(2).is_none());
    }
}
