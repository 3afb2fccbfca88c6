//! The input side: frames out of one read buffer, parsed and unmasked in place.
//!
//! A frame's payload is unmasked, and text UTF-8-validated, as its bytes arrive, so an
//! invalid text frame fails at the first bad byte rather than when it is complete. A
//! complete payload is split off the read buffer without copying.

use bytes::{Buf, BytesMut};

use crate::error::Error;
use crate::frame::{FrameHeader, MAX_HEADER_LEN};
use crate::mask::apply_mask;
use crate::utf8::Utf8Validator;

/// Frames up to this size are split off the read buffer even when they end it, so the
/// buffer's allocation stays for the next read; larger ones take the buffer. An I/O
/// layer keeps a read buffer up to this size between such frames (`wsx` does).
pub const KEEP_BUFFER_UP_TO: usize = 2 * 1024;

/// The frame being received.
#[derive(Debug)]
struct InFrame {
    header: FrameHeader,
    len: usize,
    /// Payload bytes already unmasked (and validated).
    processed: usize,
    validate_utf8: bool,
}

/// Frames from a byte stream.
#[derive(Debug, Default)]
pub(crate) struct Deframer {
    pub(crate) buf: BytesMut,
    cur: Option<InFrame>,
}

impl Deframer {
    /// The next complete frame, or `None` if more bytes are needed.
    ///
    /// `check` sees each header once, before its payload is read, and says whether the
    /// payload must be fed to `utf8` (or fails the frame).
    #[inline]
    pub(crate) fn next_frame(
        &mut self,
        check: &mut dyn FnMut(&FrameHeader) -> Result<bool, Error>,
        utf8: &mut Utf8Validator,
    ) -> Result<Option<(FrameHeader, BytesMut)>, Error> {
        if self.cur.is_none() {
            let Some((header, n)) = FrameHeader::parse(&self.buf)? else {
                return Ok(None);
            };
            let validate_utf8 = check(&header)?;
            self.buf.advance(n);
            self.cur = Some(InFrame {
                header,
                // `check` bounds the length by the frame limit, which is a usize.
                len: header.payload_len as usize,
                processed: 0,
                validate_utf8,
            });
        }
        let Some(f) = self.cur.as_mut() else {
            return Ok(None);
        };
        let avail = self.buf.len().min(f.len);
        if avail > f.processed {
            let fresh = &mut self.buf[f.processed..avail];
            if let Some(key) = f.header.mask {
                apply_mask(fresh, key, f.processed);
            }
            if f.validate_utf8 {
                utf8.feed(fresh)
                    .map_err(|_| crate::error::ProtocolError::InvalidUtf8)?;
            }
            f.processed = avail;
        }
        if avail < f.len {
            return Ok(None);
        }
        let header = f.header;
        let len = f.len;
        self.cur = None;
        let payload = if len == self.buf.len() && len > KEEP_BUFFER_UP_TO {
            // A large frame ends the buffer: hand over the whole buffer, which keeps its
            // cheap unshared form (no split bookkeeping to allocate).
            std::mem::take(&mut self.buf)
        } else {
            // Split off: the buffer keeps its allocation, and once the payload is dropped
            // the next read reuses it in place (no allocation per small message).
            self.buf.split_to(len)
        };
        Ok(Some((header, payload)))
    }

    /// How many more bytes the current frame needs (at least a header's worth).
    pub(crate) fn wanted(&self) -> usize {
        match &self.cur {
            Some(f) => f.len.saturating_sub(self.buf.len()).max(1),
            None => MAX_HEADER_LEN.saturating_sub(self.buf.len()).max(1),
        }
    }
}
