//! Where libbus meets the system through `unsafe`, its only place that
//! does (busd's is `busd::sys`): reading a Unix socket with `recvmsg`, so
//! that file descriptors sent with the bytes (`SCM_RIGHTS`) are received
//! rather than closed by the kernel, straight into the read buffer's
//! uninitialized room; and mapping a sealed memfd payload read-only
//! ([`map_sealed`]), whose seals are the argument that the mapped bytes
//! never change.
//!
//! Why not a safe wrapper: `nix::sys::socket::recvmsg` needs an
//! initialized `&mut [u8]`, and the read buffer's room is not initialized
//! (tokio hands it over as `MaybeUninit`). Zeroing 64 KiB to 1 MiB before
//! every read would cost every message on the hot path a few percent,
//! to receive descriptors that almost never come.

use std::{
    collections::VecDeque,
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use nix::libc;
use tokio::io::ReadBuf;

/// Most descriptors the kernel passes in one message (`SCM_MAX_FD`).
pub const MAX_FDS_PER_READ: usize = 253;

/// Room for one `SCM_RIGHTS` control message of [`MAX_FDS_PER_READ`]
/// descriptors, in `u64`s (so it is aligned for `cmsghdr`).
#[allow(unsafe_code)]
pub(crate) fn control_room() -> Vec<u64> {
    let data = (MAX_FDS_PER_READ * size_of::<libc::c_int>()) as libc::c_uint;
    // SAFETY: CMSG_SPACE is arithmetic on its argument (the header's size
    // plus `data`, aligned); it reads and writes no memory.
    let bytes = unsafe { libc::CMSG_SPACE(data) } as usize;
    vec![0; bytes.div_ceil(size_of::<u64>())]
}

/// Receives from the socket `fd` into the unfilled part of `buf` without
/// waiting (`MSG_DONTWAIT`: `WouldBlock` when there is nothing), appending
/// the descriptors that came with the bytes to `fds` (close-on-exec).
/// `control` is [`control_room`]. Returns the bytes read (0 at the end of
/// the stream), or an error if descriptors were cut off (`MSG_CTRUNC`: the
/// process is out of descriptors); those the kernel could not pass it
/// closed itself.
#[allow(unsafe_code)]
pub(crate) fn recv_with_fds(
    fd: BorrowedFd<'_>,
    buf: &mut ReadBuf<'_>,
    control: &mut [u64],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    // SAFETY: we only ever write into `unfilled` (through the kernel) and
    // never de-initialize it; `assume_init` below covers exactly the bytes
    // `recvmsg` reports written.
    let unfilled: &mut [MaybeUninit<u8>] = unsafe { buf.unfilled_mut() };
    let mut iov = libc::iovec {
        iov_base: unfilled.as_mut_ptr().cast(),
        iov_len: unfilled.len(),
    };
    // SAFETY: `msghdr` is a plain C struct for which all-zero bytes are a
    // valid value (null pointers, zero lengths); the fields we use are set
    // next.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(control) as _;
    // SAFETY: `fd` is open for the call (borrowed). `msg` points at one
    // iovec covering `unfilled` (writable, `iov_len` bytes, alive across
    // the call) and at `control` (writable, `msg_controllen` bytes,
    // aligned for `cmsghdr`); the kernel writes within those bounds only.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel wrote the first `n` bytes of `unfilled`.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    // SAFETY: `msg` is the header `recvmsg` just filled: `msg_control` and
    // the `msg_controllen` it set describe the control messages it wrote
    // into `control`, which CMSG_FIRSTHDR / CMSG_NXTHDR walk without
    // leaving it (they return null past the end).
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is non-null and points at a whole `cmsghdr` inside
        // `control` (CMSG_FIRSTHDR / CMSG_NXTHDR check that it fits).
        let (level, kind, len) = unsafe { ((*c).cmsg_level, (*c).cmsg_type, (*c).cmsg_len as usize) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA points just past the header of `c`, inside
            // the `len` bytes the kernel wrote for it.
            let data = unsafe { libc::CMSG_DATA(c) };
            let header = data as usize - c as usize;
            let count = len.saturating_sub(header) / size_of::<libc::c_int>();
            for i in 0..count {
                // SAFETY: the `count` ints lie within this control message
                // (possibly unaligned, hence `read_unaligned`); each is a
                // descriptor the kernel just installed in this process for
                // us alone, so it gets exactly one owner here.
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                fds.push_back(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; `c` is a header within `msg`'s control data.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "file descriptors sent with a message were cut off (too many at once, or out of descriptors)",
        ));
    }
    Ok(n)
}

/// A sealed memfd mapped read-only: the payload of a message published
/// with [`Bus::publish_memfd`](crate::Bus::publish_memfd).
#[derive(Debug)]
pub(crate) struct SealedMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and its contents cannot change (see
// `map_sealed`): sharing or sending the pointer between threads reads
// memory no one writes.
#[allow(unsafe_code)]
unsafe impl Send for SealedMap {}
// SAFETY: as for `Send`: only shared reads of unchanging memory.
#[allow(unsafe_code)]
unsafe impl Sync for SealedMap {}

impl AsRef<[u8]> for SealedMap {
    #[allow(unsafe_code)]
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes (until
        // drop), which nothing can change: the memfd is sealed against
        // writes, shrinking and growing, so no process can write it
        // through any descriptor or mapping, nor truncate it (which would
        // turn reads past the new end into SIGBUS).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SealedMap {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` are exactly the mapping `map_sealed`
            // made, unmapped once, here; no borrow of it outlives `self`.
            let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// Seals a memfd carrying a payload must have: no writes, no shrinking,
/// no growing (and no more seals).
pub(crate) fn payload_seals() -> nix::fcntl::SealFlag {
    use nix::fcntl::SealFlag;
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL
}

/// Maps the memfd `fd` read-only if it is sealed against writing,
/// shrinking and growing and holds exactly `len` bytes; else an error
/// saying what is wrong (the caller keeps the descriptor as a plain one).
#[allow(unsafe_code)]
pub(crate) fn map_sealed(fd: &OwnedFd, len: usize) -> io::Result<SealedMap> {
    use nix::{
        fcntl::{fcntl, FcntlArg, SealFlag},
        sys::mman::{mmap, MapFlags, ProtFlags},
    };
    let seals = SealFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GET_SEALS)?);
    let needed = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
    if !seals.contains(needed) {
        return Err(io::Error::other(
            "the payload's memfd is not sealed against writes and resizing",
        ));
    }
    let size = nix::sys::stat::fstat(fd)?.st_size;
    if usize::try_from(size).ok() != Some(len) {
        return Err(io::Error::other(format!(
            "the payload's memfd holds {size} bytes, not {len}"
        )));
    }
    let Some(length) = std::num::NonZeroUsize::new(len) else {
        return Ok(SealedMap {
            ptr: std::ptr::NonNull::dangling(),
            len: 0,
        });
    };
    // SAFETY: a fresh read-only shared mapping of `len` bytes of a file
    // that holds exactly `len` bytes and can neither shrink nor grow nor
    // be written (the seals above, which cannot be removed), so the
    // mapped memory stays valid and unchanging for the mapping's life;
    // it aliases no Rust object (the kernel picks the address).
    let ptr = unsafe { mmap(None, length, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, fd, 0) }?;
    Ok(SealedMap { ptr: ptr.cast(), len })
}
