//! The crate's one `unsafe`: a read from a socket straight into a buffer's spare
//! capacity, which safe Rust cannot express (a `&mut [u8]` must be initialized, so
//! [`std::io::Read`] would need the room zeroed first or a copy from a scratch buffer).
//!
//! Measured by `scripts/bench` (the echo matrix, `wsx serve` on the event loop against
//! uWebSockets): at 16 and 64 KiB messages the copy from the loop's scratch buffer was
//! ~8 % of the server's time.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use bytes::BytesMut;

/// Read at most `want` bytes from `fd` into `buf`'s spare capacity (reserved first),
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
    // else refers to it while `read` runs; `read` writes at most that many bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), room) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    debug_assert!(n <= room);
    // SAFETY: the kernel initialized the first `n` bytes of the spare capacity (`read`
    // returns how many it wrote, never more than the room it was given).
    unsafe { buf.set_len(buf.len() + n) };
    Ok((n, n == room))
}

// Under Miri too (`scripts/miri`): pipes, which it models, stand in for sockets (a
// socket's `read` is the same call).
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_read_appends_to_what_the_buffer_holds() {
        let (rx, mut tx) = io::pipe().expect("pipe");
        tx.write_all(b"hello").expect("write");
        let mut buf = BytesMut::from(&b"ab"[..]);
        let (n, filled) = recv_into(&rx, &mut buf, 64).expect("read");
        assert_eq!((n, filled), (5, false), "a short read");
        assert_eq!(&buf[..], b"abhello");
    }

    #[test]
    fn a_read_that_fills_the_room_says_so_and_the_next_reads_the_rest() {
        let (rx, mut tx) = io::pipe().expect("pipe");
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
        let (rx, tx) = io::pipe().expect("pipe");
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
}
