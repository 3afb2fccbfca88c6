//! The crate's one `unsafe`: the event loop's socket calls.
//!
//! - A read from a socket straight into a buffer's spare capacity, which safe Rust
//!   cannot express (a `&mut [u8]` must be initialized, so [`std::io::Read`] would need
//!   the room zeroed first or a copy from a scratch buffer). Measured by `scripts/bench`
//!   (the echo matrix, `wsx serve` on the event loop against uWebSockets): at 16 and
//!   64 KiB messages the copy from the loop's scratch buffer was ~8 % of the server's
//!   time.
//! - The `recv` and `send` system calls made directly (`libc::syscall`), not through
//!   glibc's wrappers: in a process with more than one thread (a tokio runtime beside
//!   the loop) those are pthread cancellation points and switch asynchronous
//!   cancellation on and off around every call, which perf put at 1.8 % of an echo's
//!   CPU at 20 B (`__pthread_enable_asynccancel`/`disable`; a single-threaded server
//!   such as uWebSockets skips them). Nothing in Rust cancels threads, so nothing is
//!   lost. Under Miri, which models glibc's calls and not raw system calls, the
//!   wrappers are called: the same system calls, the same contract.
//! - A socket is read with `recvfrom`, not `read`: `read` goes through the VFS layer
//!   first (`vfs_read`, `fdget_pos`, the file's `read_iter`), where `recvfrom` goes to
//!   the socket at once (as uWebSockets' `recv` does): perf of `wsx serve`'s `/echo` at
//!   20 B × 100 connections put the read path at 3.1–3.2 % of the CPU with `read`,
//!   2.3–2.6 % with `recvfrom`. Under Miri, `read` (it models no `recv`).

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// Read at most `want` bytes from the socket `fd` into `buf`'s spare capacity (reserved first),
/// extending `buf` by what was read: how many bytes, and whether they were all that
/// was asked (a short read empties a stream socket). `Ok((0, _))` is end of stream.
pub(crate) fn recv_into(
    fd: &impl AsRawFd,
    buf: &mut BytesMut,
    want: usize,
) -> io::Result<(usize, bool)> {
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let room = spare.len().min(want);
    // SAFETY: `spare` is valid for writes of `room` (≤ its length) bytes and nothing
    // else refers to it while `recv` runs; `recv` writes at most that many bytes.
    let n = unsafe { recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), room) }?;
    debug_assert!(n <= room);
    // SAFETY: the kernel initialized the first `n` bytes of the spare capacity (`recv`
    // returns how many it wrote, never more than the room it was given).
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, n == room))
}

/// Send `data` on the socket `fd` (no `SIGPIPE` on a peer gone: `EPIPE` instead), as
/// [`std::io::Write::write`] on a `TcpStream` does: how many bytes it took.
pub(crate) fn send(fd: &impl AsRawFd, data: &[u8]) -> io::Result<usize> {
    #[cfg(not(miri))]
    // SAFETY: `data` is valid for reads of its length while the call runs; the kernel
    // only reads it. No address is given (a connected socket).
    let n = unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd.as_raw_fd(),
            data.as_ptr(),
            data.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0 as libc::socklen_t,
        )
    };
    // Miri models glibc's calls, not raw system calls: `write` on the test's socket
    // pair is the same as a `send` without flags.
    #[cfg(miri)]
    // SAFETY: as above.
    let n =
        unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) } as libc::c_long;
    result(n)
}

/// `recvfrom(2)` without flags or address, straight to the kernel (under Miri, glibc's
/// `read`, the same for a connected socket).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn recv(fd: libc::c_int, ptr: *mut libc::c_void, len: usize) -> io::Result<usize> {
    #[cfg(not(miri))]
    // SAFETY: the caller's promise; no address is asked for (both pointers null).
    let n = unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            ptr,
            len,
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    };
    #[cfg(miri)]
    // SAFETY: the caller's promise.
    let n = unsafe { libc::read(fd, ptr, len) } as libc::c_long;
    result(n)
}

/// A system call's return: a count, or -1 and `errno`.
fn result(n: libc::c_long) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

// Under Miri too (`scripts/miri`): Unix socket pairs, which it models, stand in for
// TCP sockets.
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_read_appends_to_what_the_buffer_holds() {
        let (rx, mut tx) = UnixStream::pair().expect("socketpair");
        tx.write_all(b"hello").expect("write");
        let mut buf = BytesMut::from(&b"ab"[..]);
        let (n, filled) = recv_into(&rx, &mut buf, 64).expect("read");
        assert_eq!((n, filled), (5, false), "a short read");
        assert_eq!(&buf[..], b"abhello");
    }

    #[test]
    fn a_read_that_fills_the_room_says_so_and_the_next_reads_the_rest() {
        let (rx, mut tx) = UnixStream::pair().expect("socketpair");
        tx.write_all(b"0123456789").expect("write");
        let mut buf = BytesMut::with_capacity(4);
        let (n, filled) = recv_into(&rx, &mut buf, 4).expect("read");
        assert_eq!((n, filled), (4, true), "no more than asked");
        let (m, filled) = recv_into(&rx, &mut buf, 64).expect("read");
        assert_eq!((m, filled), (6, false));
        assert_eq!(&buf[..], b"0123456789");
    }

    #[test]
    fn end_of_stream_and_errors_leave_the_buffer_as_it_was() {
        let (rx, tx) = UnixStream::pair().expect("socketpair");
        // SAFETY: `rx` is an open descriptor; O_NONBLOCK changes no memory.
        let nonblocking = unsafe { libc::fcntl(rx.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        assert_eq!(nonblocking, 0, "{}", io::Error::last_os_error());
        let mut buf = BytesMut::from(&b"kept"[..]);
        let e = recv_into(&rx, &mut buf, 64).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(tx);
        assert_eq!(recv_into(&rx, &mut buf, 64).expect("end").0, 0);
        assert_eq!(&buf[..], b"kept");
    }

    #[test]
    fn a_send_hands_over_what_the_socket_takes() {
        let (mut rx, tx) = UnixStream::pair().expect("socketpair");
        assert_eq!(send(&tx, b"hello").expect("send"), 5);
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut rx, &mut got).expect("read");
        assert_eq!(&got, b"hello");
    }
}
