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
//! - With the `uring` feature (Linux), [`SendRing`]: a fan-out's sends queued in an
//!   io_uring and made by one `io_uring_enter` per 512 instead of one `sendto` each
//!   (`docs/design.md`, "Sends of a fan-out in an io_uring", for the figures). A
//!   queued send points at bytes the kernel reads later, which safe Rust cannot
//!   promise: the ring holds a `Bytes` (reference-counted; its bytes never move) of
//!   each send until the kernel has completed it, every send carries `MSG_DONTWAIT` so
//!   that it completes during the submitting call, and `complete` (also run on drop)
//!   returns only once every completion is in; should the submission itself fail, the
//!   bytes are leaked rather than freed and the ring is not used again. Miri cannot
//!   run io_uring: these are tested on real sockets by the crate's tests (`cargo test`),
//!   and Miri's run builds without the feature.

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

/// Sends queued in an io_uring and made by one system call (`io_uring_enter`) for a
/// whole batch: a fan-out's last frames to many sockets. Each send carries
/// `MSG_DONTWAIT`, so the kernel makes it during that call, as a `send` would (what
/// the socket takes, or `EAGAIN`), and never leaves it pending: the ring is empty when
/// [`complete`](Self::complete) returns.
#[cfg(all(feature = "uring", target_os = "linux", not(miri)))]
pub(crate) struct SendRing {
    ring: io_uring::IoUring,
    /// Each queued send's key and bytes, by position (its `user_data`): the ring holds
    /// a reference to the bytes until the kernel is done with them.
    queued: Vec<(usize, bytes::Bytes)>,
    capacity: usize,
    /// A submission failed: the ring is not used again (what it holds may still be
    /// read by the kernel).
    broken: bool,
}

#[cfg(all(feature = "uring", target_os = "linux", not(miri)))]
impl SendRing {
    /// A ring for `capacity` sends (an error where io_uring is missing or refused:
    /// old kernels, `kernel.io_uring_disabled`, seccomp).
    pub(crate) fn new(capacity: usize) -> io::Result<SendRing> {
        let ring = io_uring::IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(capacity as u32)?;
        Ok(SendRing {
            ring,
            queued: Vec::with_capacity(capacity),
            capacity,
            broken: false,
        })
    }

    /// Whether a send can be queued.
    pub(crate) fn has_room(&self) -> bool {
        !self.broken && self.queued.len() < self.capacity
    }

    /// Sends queued and not yet made.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queued.len()
    }

    /// Queue a send of `data` on `fd`, reported under `key` by `complete`. The caller
    /// keeps `fd` open until then. `false` if the ring is full.
    pub(crate) fn push(&mut self, fd: &impl AsRawFd, key: usize, data: bytes::Bytes) -> bool {
        use io_uring::{opcode, types};
        if !self.has_room() {
            return false;
        }
        let entry = opcode::Send::new(types::Fd(fd.as_raw_fd()), data.as_ptr(), data.len() as u32)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(self.queued.len() as u64);
        // SAFETY: the entry points at `data`'s bytes, which `queued` keeps alive (a
        // `Bytes` never moves its bytes) until `complete` has every completion; the
        // kernel only reads them.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            return false;
        }
        self.queued.push((key, data));
        true
    }

    /// Make the queued sends (one system call), then hand each to `done` with its key,
    /// its bytes and what the socket took (0 for `EAGAIN`), or an error: the kernel's
    /// for that send, or, should io_uring itself fail (not expected once the ring
    /// exists), one saying that the send's outcome is unknown (it may have been made:
    /// the caller must not send those bytes again on that socket).
    pub(crate) fn complete(
        &mut self,
        mut done: impl FnMut(usize, bytes::Bytes, io::Result<usize>),
    ) {
        let n = self.queued.len();
        if n == 0 {
            return;
        }
        let mut results: Vec<Option<i32>> = vec![None; n];
        let mut got = 0;
        let mut failed = None;
        // Rounds without progress (the kernel not taking the submissions, or a
        // completion that does not come) are given up on after a few: the loop must
        // not hang on its ring.
        let mut idle_rounds = 0;
        let timeout = io_uring::types::Timespec::new().nsec(10_000_000);
        let args = io_uring::types::SubmitArgs::new().timespec(&timeout);
        while got < n {
            // Hand over what the kernel has not taken; once it has taken all, wait (10
            // ms at most) for what has not completed (nothing, normally: a
            // `MSG_DONTWAIT` send completes during the submitting call).
            let wait = usize::from(self.ring.submission().is_empty());
            match self.ring.submitter().submit_with_args(wait, &args) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            let before = got;
            for cqe in self.ring.completion() {
                if let Some(slot) = results.get_mut(cqe.user_data() as usize) {
                    if slot.replace(cqe.result()).is_none() {
                        got += 1;
                    }
                }
            }
            idle_rounds = if got == before { idle_rounds + 1 } else { 0 };
            if idle_rounds > 100 {
                failed = Some(io::Error::other("io_uring makes no progress"));
                break;
            }
        }
        if failed.is_some() {
            // The kernel may still read the bytes of a send it has not completed: they
            // are leaked rather than freed under it, and the ring is not used again.
            self.broken = true;
        }
        for ((key, data), r) in self.queued.drain(..).zip(results) {
            let took = match r {
                Some(r) if r >= 0 => Ok(r as usize),
                Some(r) if r == -libc::EAGAIN => Ok(0),
                Some(r) => Err(io::Error::from_raw_os_error(-r)),
                None => {
                    std::mem::forget(data.clone());
                    Err(io::Error::other(format!(
                        "io_uring failed, the send's outcome is unknown: {}",
                        failed.as_ref().map_or(String::new(), ToString::to_string)
                    )))
                }
            };
            done(key, data, took);
        }
    }
}

#[cfg(all(feature = "uring", target_os = "linux", not(miri)))]
impl Drop for SendRing {
    fn drop(&mut self) {
        if !self.broken {
            self.complete(|_, _, _| {});
        }
    }
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

    /// A batch of sends made in one call: each reported under its key with what its
    /// socket took, a full socket's send cut short or refused (`EAGAIN` as 0, never
    /// left pending), a closed peer's as an error; a full ring refuses more.
    #[cfg(all(feature = "uring", target_os = "linux", not(miri)))]
    #[test]
    fn a_send_ring_makes_its_sends_at_once_and_says_what_each_socket_took() {
        use bytes::Bytes;
        let Ok(mut ring) = SendRing::new(4) else {
            eprintln!("no io_uring here: nothing to test");
            return;
        };
        let (mut rx, tx) = UnixStream::pair().expect("socketpair");
        let (full_rx, full) = UnixStream::pair().expect("socketpair");
        let (gone_rx, gone) = UnixStream::pair().expect("socketpair");
        drop(gone_rx);
        let big = Bytes::from(vec![7u8; 8 << 20]);
        assert!(ring.push(&tx, 1, Bytes::from_static(b"hello")));
        assert!(ring.push(&full, 2, big.clone()));
        assert!(ring.push(&full, 3, big.clone()));
        assert!(ring.push(&gone, 4, Bytes::from_static(b"lost")));
        assert!(!ring.has_room());
        assert!(!ring.push(&tx, 5, Bytes::from_static(b"no room")));
        let mut got = Vec::new();
        ring.complete(|key, data, took| got.push((key, data.len(), took.map_err(|e| e.kind()))));
        assert_eq!(ring.len(), 0);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], (1, 5, Ok(5)));
        let (k2, len2, took2) = got[1];
        let took2 = took2.expect("a full socket's send is cut short, not failed");
        assert!(k2 == 2 && len2 == 8 << 20 && took2 < len2, "{:?}", got[1]);
        assert_eq!(got[2], (3, 8 << 20, Ok(0)), "refused: the socket is full");
        assert_eq!(got[3], (4, 4, Err(io::ErrorKind::BrokenPipe)));
        let mut hello = [0u8; 5];
        std::io::Read::read_exact(&mut rx, &mut hello).expect("read");
        assert_eq!(&hello, b"hello");
        drop(full_rx);
        // Room again once complete.
        assert!(ring.push(&tx, 6, Bytes::from_static(b"again")));
        ring.complete(|key, _, took| assert_eq!((key, took.expect("sent")), (6, 5)));
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
