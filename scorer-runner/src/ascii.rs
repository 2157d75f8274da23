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
    match chunk.try_into() {
        Ok(full) => classes(full),
        Err(_) => {
            let mut padded = [b' '; 64];
            padded[..chunk.len()].copy_from_slice(chunk);
            classes(&padded)
        }
    }
}

/// Whitespace (as `char::is_whitespace` has it for ASCII: space, and tab to carriage return).
fn is_space(b: u8) -> bool {
    (b == b' ') | (b.wrapping_sub(b'\t') < 5)
}

/// A plain loop over a fixed-size block, which the compiler turns into vector compares on every
/// target, then one multiply per 8 bytes to gather the flags into bits.
#[inline(always)]
fn classes(block: &[u8; 64]) -> Block {
    let (mut word, mut other) = ([0u8; 64], [0u8; 64]);
    for ((&b, w), o) in block.iter().zip(&mut word).zip(&mut other) {
        let is_word = ((b | 0x20).wrapping_sub(b'a') < 26) | (b.wrapping_sub(b'0') < 10) | (b == b'_');
        *w = is_word as u8;
        *o = !(is_word | is_space(b)) as u8;
    }
    Block { word: bit_per_byte(&word), other: bit_per_byte(&other) }
}

/// 64 bytes that are each 0 or 1 as 64 bits, byte i to bit i.
#[inline(always)]
fn bit_per_byte(flags: &[u8; 64]) -> u64 {
    flags.chunks_exact(8).enumerate().fold(0, |bits, (k, eight)| {
        let eight = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
        bits | (eight.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k)
    })
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
            let block = block(chunk);
            let nonspace = block.word | block.other;
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
