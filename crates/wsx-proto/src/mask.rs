//! Masking (RFC 6455 §5.3): XOR the payload with a 4-byte key, octet `i` with key
//! octet `i mod 4`.
//!
//! Safe code only: the key is widened to a 32-byte block and the payload is processed
//! with `chunks_exact_mut`, which LLVM turns into SIMD XORs (see the `unmask` benchmark).

/// XOR `buf` with `key`, where `buf[0]` is payload octet number `offset`.
///
/// `offset` lets a payload be unmasked piece by piece as it arrives.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate(key, offset);
    // Short payloads: a byte loop is fastest.
    if buf.len() < 32 {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
        return;
    }
    let mut wide = [0u8; 32];
    for (i, k) in wide.iter_mut().enumerate() {
        *k = key[i & 3];
    }
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for (b, k) in chunk.iter_mut().zip(wide.iter()) {
            *b ^= k;
        }
    }
    // 32 is a multiple of 4, so the remainder starts at key phase 0 again.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The key as seen from payload octet `offset`.
#[inline]
fn rotate(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(i + offset) % 4];
        }
    }

    #[test]
    fn mask_matches_the_rfc_definition_for_every_length_and_offset() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        for len in 0..200 {
            for offset in 0..5 {
                let orig: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let mut a = orig.clone();
                let mut b = orig.clone();
                apply_mask(&mut a, key, offset);
                naive(&mut b, key, offset);
                assert_eq!(a, b, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_whole() {
        let key = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..1000).map(|i| i as u8).collect();
        let mut whole = orig.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = orig.clone();
        let mut at = 0;
        for step in [1, 3, 33, 64, 5, 894] {
            apply_mask(&mut pieces[at..at + step], key, at);
            at += step;
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut p = *b"Hello";
        apply_mask(&mut p, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(p, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
