//! Incremental UTF-8 validation (RFC 6455 §8.1).
//!
//! A text message may arrive in many frames and each frame in many reads; a code point
//! may be split anywhere. [`Utf8Validator`] validates each piece as it arrives with
//! `simdutf8` and carries at most three bytes of an unfinished code point to the next
//! piece, so an invalid message fails at the first piece that holds an invalid byte.

/// Validates a byte stream as UTF-8, piece by piece.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

/// The stream is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate the next piece. Fails as soon as the bytes seen so far cannot be the
    /// start of valid UTF-8.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<(), InvalidUtf8> {
        if self.carry_len > 0 {
            // Complete the carried code point with bytes from this piece.
            let have = self.carry_len as usize;
            let need = utf8_width(self.carry[0]).ok_or(InvalidUtf8)? - have;
            let take = need.min(input.len());
            self.carry[have..have + take].copy_from_slice(&input[..take]);
            let filled = have + take;
            match simdutf8::compat::from_utf8(&self.carry[..filled]) {
                Ok(_) => {
                    self.carry_len = 0;
                    input = &input[take..];
                }
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix, and the piece is used up.
                    self.carry_len = filled as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        // Fast path: the whole piece is valid.
        if simdutf8::basic::from_utf8(input).is_ok() {
            return Ok(());
        }
        match simdutf8::compat::from_utf8(input) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &input[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Whether the stream so far ends on a code point boundary. A message whose stream
    /// does not is invalid.
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }

    /// Start a new stream.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

/// The length of the code point a lead byte starts, if it is a valid lead byte.
fn utf8_width(lead: u8) -> Option<usize> {
    match lead {
        0x00..=0x7f => Some(1),
        0xc2..=0xdf => Some(2),
        0xe0..=0xef => Some(3),
        0xf0..=0xf4 => Some(4),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_split(bytes: &[u8], at: &[usize]) -> Result<bool, InvalidUtf8> {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        for &cut in at {
            v.feed(&bytes[start..cut])?;
            start = cut;
        }
        v.feed(&bytes[start..])?;
        Ok(v.is_complete())
    }

    #[test]
    fn valid_text_split_at_every_position_is_valid() {
        let text = "Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞 €".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert_eq!(feed_split(text, &[i, j]), Ok(true), "split {i} {j}");
            }
        }
    }

    #[test]
    fn code_point_split_across_pieces_is_incomplete_until_finished() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xf0, 0x9d]).unwrap();
        assert!(!v.is_complete());
        v.feed(&[0x84]).unwrap();
        assert!(!v.is_complete());
        v.feed(&[0x9e]).unwrap();
        assert!(v.is_complete());
    }

    #[test]
    fn invalid_byte_fails_at_its_piece() {
        // Autobahn 6.4.1: κόσμε then 0xf4 0x90 (beyond U+10FFFF): must fail on the piece
        // holding 0x90, not at the end of the message.
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes()).unwrap();
        v.feed(&[0xf4]).unwrap();
        assert_eq!(v.feed(&[0x90]), Err(InvalidUtf8));
    }

    #[test]
    fn invalid_prefix_fails_immediately() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[b'a', 0xc0]), Err(InvalidUtf8));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xed, 0xa0]), Err(InvalidUtf8), "surrogate");
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xff]), Err(InvalidUtf8));
    }

    #[test]
    fn every_split_of_invalid_input_fails_or_stays_incomplete() {
        let bad: &[u8] = &[
            0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80,
            0x65,
        ];
        for i in 0..=bad.len() {
            assert!(!matches!(feed_split(bad, &[i]), Ok(true)), "split {i}");
        }
    }
}
