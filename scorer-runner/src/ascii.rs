//! Byte classes of ASCII text as bit masks, 64 bytes at a time. The hashed featurizer's tokenizer
//! and the whitespace token counter read text through these masks, so their cost follows the
//! number of tokens rather than one unpredictable branch per byte.

/// One 64-byte block's classes, bit i for byte i. Bytes past the end of a short last block
/// count as space.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    /// Letters, digits and `_`.
    pub word: u64,
    /// Neither word nor space: punctuation and control characters.
    pub other: u64,
}

/// The classes of up to 64 ASCII bytes, one block of a text split by `chunks(64)`; a short
/// block is padded with spaces.
#[inline(always)]
pub fn block(chunk: &[u8]) -> Block {
    padded(chunk, classes)
}

/// `f` of a chunk of up to 64 bytes, padded with spaces.
#[inline(always)]
fn padded<T>(chunk: &[u8], f: impl Fn(&[u8; 64]) -> T) -> T {
    match chunk.try_into() {
        Ok(full) => f(full),
        Err(_) => {
            let mut padded = [b' '; 64];
            padded[..chunk.len()].copy_from_slice(chunk);
            f(&padded)
        }
    }
}

// SAFETY (both below): SSE2 is part of the x86-64 baseline, so every CPU this build runs on
// has it.

/// The classes of a full block: 16 bytes at a time with SSE2, whose `movemask` gathers one bit
/// per byte in one instruction; elsewhere, [`portable::classes`].
#[inline(always)]
fn classes(block: &[u8; 64]) -> Block {
    #[cfg(target_arch = "x86_64")]
    return unsafe { sse2::classes(block) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::classes(block);
}

/// The whitespace bytes of a full block, alone: all the whitespace token counter needs.
#[inline(always)]
fn spaces(block: &[u8; 64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    return unsafe { sse2::spaces(block) };
    #[cfg(not(target_arch = "x86_64"))]
    return portable::spaces(block);
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    use super::Block;

    /// Bytes of `v` in `lo..lo + len`, as 0xff: `v - lo` is unchanged by an unsigned minimum
    /// with `len - 1` exactly when it is below `len`.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn in_range(v: __m128i, lo: u8, len: u8) -> __m128i {
        let offset = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
        _mm_cmpeq_epi8(_mm_min_epu8(offset, _mm_set1_epi8((len - 1) as i8)), offset)
    }

    /// The 16 bytes at `16 * k` of a block.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(block: &[u8; 64], k: usize) -> __m128i {
        // SAFETY: bytes 16k..16k + 16 of a 64-byte array (k < 4); the load needs no alignment.
        unsafe { _mm_loadu_si128(block.as_ptr().add(16 * k).cast()) }
    }

    /// Whitespace bytes, as 0xff: space, and tab to carriage return.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn space(v: __m128i) -> __m128i {
        _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8)), in_range(v, b'\t', 5))
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub fn classes(block: &[u8; 64]) -> Block {
        let (mut word, mut other) = (0u64, 0u64);
        for k in 0..4 {
            let v = load(block, k);
            let letter = in_range(_mm_or_si128(v, _mm_set1_epi8(0x20)), b'a', 26);
            let is_word =
                _mm_or_si128(_mm_or_si128(letter, in_range(v, b'0', 10)), _mm_cmpeq_epi8(v, _mm_set1_epi8(b'_' as i8)));
            let (w, s) = (_mm_movemask_epi8(is_word) as u16 as u64, _mm_movemask_epi8(space(v)) as u16 as u64);
            word |= w << (16 * k);
            other |= (!(w | s) & 0xffff) << (16 * k);
        }
        Block { word, other }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub fn spaces(block: &[u8; 64]) -> u64 {
        (0..4).fold(0, |bits, k| bits | (_mm_movemask_epi8(space(load(block, k))) as u16 as u64) << (16 * k))
    }
}

/// The same classes in plain Rust, for other targets (and, in tests, checked on this one).
#[cfg(any(test, not(target_arch = "x86_64")))]
mod portable {
    use super::Block;

    /// Whitespace (as `char::is_whitespace` has it for ASCII: space, and tab to carriage return).
    fn is_space(b: u8) -> bool {
        (b == b' ') | (b.wrapping_sub(b'\t') < 5)
    }

    /// A plain loop over the block, which the compiler turns into vector compares, then one
    /// multiply per 8 bytes to gather the flags into bits.
    #[inline(always)]
    pub fn classes(block: &[u8; 64]) -> Block {
        let (mut word, mut other) = ([0u8; 64], [0u8; 64]);
        for ((&b, w), o) in block.iter().zip(&mut word).zip(&mut other) {
            let is_word = ((b | 0x20).wrapping_sub(b'a') < 26) | (b.wrapping_sub(b'0') < 10) | (b == b'_');
            *w = is_word as u8;
            *o = !(is_word | is_space(b)) as u8;
        }
        Block { word: bit_per_byte(&word), other: bit_per_byte(&other) }
    }

    #[inline(always)]
    pub fn spaces(block: &[u8; 64]) -> u64 {
        bit_per_byte(&block.map(|b| is_space(b) as u8))
    }

    /// 64 bytes that are each 0 or 1 as 64 bits, byte i to bit i.
    #[inline(always)]
    fn bit_per_byte(flags: &[u8; 64]) -> u64 {
        flags.chunks_exact(8).enumerate().fold(0, |bits, (k, eight)| {
            let eight = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
            bits | (eight.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k)
        })
    }
}

/// Whitespace-separated words of `text`, as `str::split_whitespace` counts them: for ASCII text,
/// the word starts read off the masks.
pub fn whitespace_words(text: &str) -> u64 {
    if !text.is_ascii() {
        return text.split_whitespace().count() as u64;
    }
    // Whether the previous block's last byte was not space.
    let mut carry = 0;
    text.as_bytes()
        .chunks(64)
        .map(|chunk| {
            let nonspace = !padded(chunk, spaces);
            let starts = nonspace & !((nonspace << 1) | carry);
            carry = nonspace >> 63;
            starts.count_ones() as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_match_the_character_classes() {
        let all: Vec<u8> = (0..128).collect();
        for bytes in [&all[..64], &all[64..], &all[60..65]] {
            let block = block(bytes);
            let mut padded = [b' '; 64];
            padded[..bytes.len()].copy_from_slice(bytes);
            assert_eq!(portable::classes(&padded), block, "the portable classes differ");
            assert_eq!(spaces(&padded), !(block.word | block.other));
            assert_eq!(portable::spaces(&padded), !(block.word | block.other), "the portable spaces differ");
            for i in 0..64 {
                let (word, other) = (block.word >> i & 1 == 1, block.other >> i & 1 == 1);
                let Some(&b) = bytes.get(i) else {
                    assert!(!word && !other, "padding is space");
                    continue;
                };
                let c = b as char;
                assert_eq!(word, c.is_alphanumeric() || c == '_', "{b}");
                assert_eq!(other, !word && !c.is_whitespace(), "{b}");
            }
        }
    }

    #[test]
    fn whitespace_words_match_split_whitespace() {
        let long = "word ".repeat(30) + "x".repeat(70).as_str() + "\ty";
        let texts = ["", " ", "x", "  a  b\tc\n", "one", "x\u{0b}y \u{a0}z", "é  ü", "a\r\nb\x0cc", "\x1c\x1f_-"];
        for text in texts.into_iter().chain([long.as_str(), &long[..64], &long[..65], &long[1..128]]) {
            assert_eq!(whitespace_words(text), text.split_whitespace().count() as u64, "{text:?}");
        }
    }
}
