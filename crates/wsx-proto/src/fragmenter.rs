//! The output side: frames encoded into a write queue the I/O layer drains with
//! vectored writes.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, OnceLock};

use bytes::{Buf, Bytes, BytesMut};

use crate::extensions::permessage_deflate::deflate_fresh;
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::mask::apply_mask;

/// Bytes waiting to be written, in order.
///
/// Small frames are copied into one contiguous tail, so many small messages leave in one
/// write; large payloads are queued as the caller's `Bytes`, so they leave without a
/// copy. Implements [`bytes::Buf`]: drain it with `chunks_vectored` and `advance`.
#[derive(Debug, Default)]
pub struct OutBuffer {
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
}

/// Release the tail's memory once empty if it grew beyond this.
const SHRINK_ABOVE: usize = 64 * 1024;

impl OutBuffer {
    pub(crate) fn push_slice(&mut self, s: &[u8]) {
        self.tail.extend_from_slice(s);
        self.len += s.len();
    }

    pub(crate) fn push_bytes(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
        self.len += b.len();
        self.chunks.push_back(b);
    }

    pub(crate) fn push_masked(&mut self, s: &[u8], key: [u8; 4]) {
        let start = self.tail.len();
        self.tail.extend_from_slice(s);
        apply_mask(&mut self.tail[start..], key, 0);
        self.len += s.len();
    }

    /// Put bytes back at the front, before everything queued: the unwritten end of a
    /// frame that a writer outside this buffer took and counted as written before it
    /// knew (a send completed later, as io_uring's are).
    pub fn put_back(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        self.chunks.push_front(b);
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Buf for OutBuffer {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        match self.chunks.front() {
            Some(c) => c,
            None => &self.tail,
        }
    }

    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advance past the end of the output");
        self.len -= n;
        while n > 0 {
            match self.chunks.front_mut() {
                Some(front) if n >= front.len() => {
                    n -= front.len();
                    self.chunks.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    n = 0;
                }
                None => {
                    self.tail.advance(n);
                    n = 0;
                }
            }
        }
        if self.len == 0 && self.tail.capacity() > SHRINK_ABOVE {
            self.tail = BytesMut::new();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for c in &self.chunks {
            if n == dst.len() {
                return n;
            }
            dst[n] = IoSlice::new(c);
            n += 1;
        }
        if n < dst.len() && !self.tail.is_empty() {
            dst[n] = IoSlice::new(&self.tail);
            n += 1;
        }
        n
    }
}

/// Encode one frame into `out`. `mask` is `Some` for client frames.
pub(crate) fn write_frame(
    out: &mut OutBuffer,
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    mask: Option<[u8; 4]>,
    payload: &Bytes,
    copy_threshold: usize,
) {
    let header = FrameHeader {
        fin,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    out.push_slice(&h[..n]);
    match mask {
        Some(key) => out.push_masked(payload, key),
        None if payload.len() <= copy_threshold => out.push_slice(payload),
        None => out.push_bytes(payload.clone()),
    }
}

/// An unmasked, unfragmented frame's bytes.
fn frame_bytes(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        fin: true,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
        payload_len: payload.len() as u64,
    };
    let mut h = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut h);
    let mut buf = BytesMut::with_capacity(n + payload.len());
    buf.extend_from_slice(&h[..n]);
    buf.extend_from_slice(payload);
    buf.freeze()
}

/// A server frame encoded once and shared among many connections (fan-out): each
/// receiver's write queue holds a reference to the same bytes.
///
/// Connections that negotiated permessage-deflate with a context reset after each
/// message (`server_no_context_takeover`) get the message compressed once, on the first
/// such send, and share that frame too ([`Connection::send_shared`](crate::Connection::send_shared));
/// connections that keep their context compress it with it, each its own.
///
/// ```
/// use wsx_proto::SharedFrame;
///
/// let frame = SharedFrame::text("tick 42");
/// assert_eq!(&frame.as_bytes()[..2], &[0x81, 7]);
/// ```
#[derive(Debug, Clone)]
pub struct SharedFrame {
    frame: Bytes,
    /// The compressed frame (RSV1 set) and the window and level it was made for.
    deflated: Arc<OnceLock<(u8, u32, Bytes)>>,
}

impl PartialEq for SharedFrame {
    fn eq(&self, other: &Self) -> bool {
        self.frame == other.frame
    }
}

impl Eq for SharedFrame {}

impl SharedFrame {
    /// An unmasked, uncompressed, unfragmented text frame.
    pub fn text(text: &str) -> SharedFrame {
        Self::encode(OpCode::Text, text.as_bytes())
    }

    /// An unmasked, uncompressed, unfragmented binary frame.
    pub fn binary(data: &[u8]) -> SharedFrame {
        Self::encode(OpCode::Binary, data)
    }

    fn encode(opcode: OpCode, payload: &[u8]) -> SharedFrame {
        SharedFrame {
            frame: frame_bytes(opcode, false, payload),
            deflated: Arc::new(OnceLock::new()),
        }
    }

    /// The frame compressed with a fresh context of window `bits` and `level` (made on
    /// the first call and kept), or `None` when it was first made with other ones.
    pub(crate) fn deflated(&self, bits: u8, level: u32) -> Option<Bytes> {
        let (b, l, frame) = self.deflated.get_or_init(|| {
            let payload = deflate_fresh(self.payload(), bits, level);
            (bits, level, frame_bytes(self.opcode(), true, &payload))
        });
        (*b == bits && *l == level).then(|| frame.clone())
    }

    /// The opcode (text or binary).
    pub(crate) fn opcode(&self) -> OpCode {
        if self.frame[0] & 0x0f == 0x2 {
            OpCode::Binary
        } else {
            OpCode::Text
        }
    }

    /// The payload (the frame without its header).
    pub(crate) fn payload(&self) -> &[u8] {
        &self.frame[self.frame.len() - self.payload_len()..]
    }

    /// The encoded frame.
    pub fn as_bytes(&self) -> &Bytes {
        &self.frame
    }

    /// The payload's length (the frame without its header).
    pub fn payload_len(&self) -> usize {
        // Unmasked: the header is 2 bytes, plus 2 or 8 of extended length.
        let header = match self.frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        self.frame.len() - header
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_length_of_each_header_size() {
        for n in [0usize, 125, 126, 65535, 65536, 70000] {
            let frame = SharedFrame::text(&"x".repeat(n));
            assert_eq!(frame.payload_len(), n, "{n}");
        }
    }

    /// Everything `out` holds, chunk by chunk (none of them empty), in order.
    fn drain(out: &mut OutBuffer) -> Vec<u8> {
        let mut all = Vec::new();
        while out.has_remaining() {
            let c = out.chunk().to_vec();
            assert!(!c.is_empty());
            out.advance(c.len());
            all.extend(c);
        }
        all
    }

    #[test]
    fn bytes_put_back_go_before_everything_queued() {
        let mut out = OutBuffer::default();
        out.push_slice(b"tail");
        out.push_bytes(Bytes::from_static(b"-chunk"));
        out.push_slice(b"-more");
        out.put_back(Bytes::from_static(b"front:"));
        out.put_back(Bytes::new());
        assert_eq!(out.len(), 21);
        assert_eq!(drain(&mut out), b"front:tail-chunk-more");
    }

    #[test]
    fn small_frames_coalesce_into_one_chunk() {
        let mut out = OutBuffer::default();
        for _ in 0..10 {
            write_frame(
                &mut out,
                OpCode::Text,
                true,
                false,
                None,
                &Bytes::from_static(b"hi"),
                4096,
            );
        }
        assert_eq!(out.len(), 40);
        assert_eq!(out.chunk().len(), 40);
    }

    #[test]
    fn large_payloads_are_shared_not_copied() {
        let big = Bytes::from(vec![7u8; 100_000]);
        let mut out = OutBuffer::default();
        write_frame(&mut out, OpCode::Binary, true, false, None, &big, 4096);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(out.chunks_vectored(&mut slices), 2);
        assert_eq!(slices[0].len(), 10);
        assert_eq!(slices[1].as_ptr(), big.as_ptr(), "same memory");
        out.advance(9);
        assert_eq!(out.chunk().len(), 1);
        out.advance(100_001);
        assert!(out.is_empty());
    }

    #[test]
    fn order_is_kept_across_tail_and_chunks() {
        let mut out = OutBuffer::default();
        out.push_slice(b"a");
        out.push_bytes(Bytes::from_static(b"bb"));
        out.push_slice(b"c");
        out.push_bytes(Bytes::new());
        let all = drain(&mut out);
        assert_eq!(all, b"abbc");
    }
}
