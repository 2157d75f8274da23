//! Signed feature hashing of word n-grams (and optionally character n-grams): a fixed-dimension,
//! model-free text vector that needs no vocabulary, so every worker featurizes identically.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{Featurizer, SparseVec};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct HashedSpec {
    /// log2 of the dimension (18 gives 262,144 buckets: few collisions, 1 MiB per head).
    pub dim_log2: u32,
    /// Word n-grams from 1 to this (2: unigrams and bigrams).
    pub word_ngrams: u32,
    /// Character n-gram lengths `[min, max]` over the lower-cased text; none by default.
    pub char_ngrams: Option<[u32; 2]>,
    /// Weight terms by `1 + ln(tf)` rather than raw counts.
    pub sublinear_tf: bool,
    /// Multiply by inverse document frequency learnt from the training records.
    pub idf: bool,
    /// Hash seed.
    pub seed: u64,
}

impl Default for HashedSpec {
    fn default() -> Self {
        HashedSpec { dim_log2: 18, word_ngrams: 2, char_ngrams: None, sublinear_tf: true, idf: false, seed: 0 }
    }
}

/// The longest word n-grams.
const MAX_WORD_NGRAMS: usize = 8;

pub struct HashedFeaturizer {
    spec: HashedSpec,
    mask: u64,
    idf: Option<Vec<f32>>,
}

impl HashedFeaturizer {
    pub fn new(spec: HashedSpec, idf: Option<Vec<f32>>) -> Result<Self> {
        if !(4..=24).contains(&spec.dim_log2) {
            return Err(Error::plan(format!("hashed featurizer: dimLog2 {} not in 4..=24", spec.dim_log2)));
        }
        if spec.word_ngrams as usize > MAX_WORD_NGRAMS {
            return Err(Error::plan(format!("hashed featurizer: wordNgrams {} above {MAX_WORD_NGRAMS}", spec.word_ngrams)));
        }
        if spec.word_ngrams == 0 && spec.char_ngrams.is_none() {
            return Err(Error::plan("hashed featurizer: no word or character n-grams"));
        }
        if let Some([lo, hi]) = spec.char_ngrams {
            if lo == 0 || lo > hi {
                return Err(Error::plan("hashed featurizer: charNgrams must be [min, max] with 1 <= min <= max"));
            }
        }
        let dim = 1usize << spec.dim_log2;
        if let Some(idf) = &idf {
            if idf.len() != dim {
                return Err(Error::plan(format!("idf has {} weights, featurizer dimension is {dim}", idf.len())));
            }
        }
        Ok(HashedFeaturizer { mask: dim as u64 - 1, spec, idf })
    }

    /// The hash of every n-gram of `text`, into `scratch.grams`. Each hash gives a feature index
    /// (its low bits) and a sign (its top bit).
    fn gram_hashes(&self, text: &str, scratch: &mut Scratch) {
        let seed = self.spec.seed;
        let Scratch { tokens, grams, chars, gram, .. } = scratch;
        grams.clear();
        if self.spec.word_ngrams > 0 {
            let n = self.spec.word_ngrams as usize;
            tokens.clear();
            for_each_token_hash(text, seed, |hash| tokens.push(hash));
            // Every n-gram ending at each token: combine hashes newest to oldest.
            for t in 0..tokens.len() {
                let mut combined = tokens[t];
                grams.push(combined);
                for k in 1..n.min(t + 1) {
                    combined = mix(tokens[t - k].rotate_left(k as u32 * 7) ^ combined);
                    grams.push(combined);
                }
            }
        }
        if let Some([lo, hi]) = self.spec.char_ngrams {
            chars.clear();
            chars.extend(text.chars().flat_map(char::to_lowercase));
            for len in lo as usize..=hi as usize {
                for window in chars.windows(len) {
                    gram.clear();
                    gram.extend(window);
                    grams.push(xxh3_64_with_seed(gram.as_bytes(), seed ^ 0x9e37_79b9_7f4a_7c15 ^ len as u64));
                }
            }
        }
    }

    /// One text's vector, into `out`.
    fn featurize_into(&self, text: &str, scratch: &mut Scratch, out: &mut SparseVec) {
        self.gram_hashes(text, scratch);
        let counts = &mut scratch.counts;
        counts.reset(scratch.grams.len().min(self.dim()));
        counts.add_all(&scratch.grams, self.mask);
        out.indices.clear();
        out.values.clear();
        for (i, mut v) in counts.iter() {
            if v == 0.0 {
                continue;
            }
            if self.spec.sublinear_tf {
                v = v.signum() * sublinear(v.abs());
            }
            if let Some(idf) = &self.idf {
                v *= idf[i as usize];
            }
            out.indices.push(i);
            out.values.push(v);
        }
        out.normalize();
    }
}

/// Buffers reused from one text to the next.
#[derive(Default)]
struct Scratch {
    tokens: Vec<u64>,
    grams: Vec<u64>,
    /// The lower-cased characters, and one character n-gram, for character n-grams.
    chars: Vec<char>,
    gram: String,
    counts: Counts,
}

impl Featurizer for HashedFeaturizer {
    fn dim(&self) -> usize {
        1 << self.spec.dim_log2
    }

    fn featurize(&self, texts: &[&str]) -> Result<Vec<SparseVec>> {
        let mut scratch = Scratch::default();
        let mut one = |text: &str| {
            let mut x = SparseVec::default();
            self.featurize_into(text, &mut scratch, &mut x);
            x
        };
        Ok(texts.iter().map(|t| one(t)).collect())
    }

    fn featurize_each(&self, texts: &[&str], f: &mut dyn FnMut(&SparseVec)) -> Result<()> {
        let (mut scratch, mut x) = (Scratch::default(), SparseVec::default());
        for text in texts {
            self.featurize_into(text, &mut scratch, &mut x);
            f(&x);
        }
        Ok(())
    }
}

/// Signed counts of one text's feature indices, in an open-addressing table sized to the text
/// rather than to the feature space: a record's few hundred n-grams then stay in L1 cache,
/// where a dense accumulator over 2^18 features missed to L3 on nearly every n-gram.
#[derive(Default)]
struct Counts {
    /// Feature index + 1 per slot; 0 marks an empty slot.
    keys: Vec<u32>,
    values: Vec<f32>,
    /// Occupied slots in the order their index was first counted, so vectors list indices in
    /// the order the text first hits them.
    order: Vec<u32>,
}

impl Counts {
    /// Empties the table, with room for `distinct` indices at a load factor of at most 1/2.
    fn reset(&mut self, distinct: usize) {
        for &slot in &self.order {
            self.keys[slot as usize] = 0;
        }
        self.order.clear();
        let capacity = (2 * distinct).next_power_of_two().max(64);
        if capacity > self.keys.len() {
            self.keys = vec![0; capacity];
            self.values = vec![0.0; capacity];
        }
    }

    /// Counts every hash's feature index (`hash & index_mask`) with its sign (the top bit).
    fn add_all(&mut self, hashes: &[u64], index_mask: u64) {
        let (keys, values, order) = (&mut self.keys[..], &mut self.values[..], &mut self.order);
        let slots = keys.len() - 1;
        for &hash in hashes {
            let index = (hash & index_mask) as u32;
            let delta = if hash >> 63 == 1 { -1.0 } else { 1.0 };
            // Indices are hash bits already: their low bits spread the slots.
            let mut slot = index as usize & slots;
            loop {
                let key = keys[slot];
                if key == index + 1 {
                    values[slot] += delta;
                    break;
                }
                if key == 0 {
                    keys[slot] = index + 1;
                    values[slot] = delta;
                    order.push(slot as u32);
                    break;
                }
                slot = (slot + 1) & slots;
            }
        }
    }

    /// (index, count) in first-counted order.
    fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.order.iter().map(|&slot| (self.keys[slot as usize] - 1, self.values[slot as usize]))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Space,
    Word,
    Other,
}

/// The class and byte length of the character starting at byte `i` of `text`.
#[inline(always)]
fn class_at(text: &str, i: usize) -> (Class, usize) {
    let b = text.as_bytes()[i];
    if b < 0x80 {
        return (char_class(b as char), 1);
    }
    let c = text[i..].chars().next().unwrap_or_default();
    (char_class(c), c.len_utf8())
}

/// What a character is to the splitter (`_` counts as a letter); [`ascii_classes`] must agree on
/// ASCII, which a test checks.
fn char_class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else {
        Class::Other
    }
}

/// Calls `f` with every token of `text`: words (runs of letters, digits and `_`; case is folded
/// when hashing) and single punctuation characters, which carry much of the signal in code and
/// markup. Whitespace separates.
fn for_each_token<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    if text.is_ascii() {
        ascii_tokens(text, |start, end| f(&text[start..end]));
        return;
    }
    let mut i = 0;
    while i < text.len() {
        let start = i;
        let (class, len) = class_at(text, i);
        i += len;
        match class {
            Class::Space => {}
            Class::Other => f(&text[start..i]),
            Class::Word => {
                while i < text.len() {
                    let (class, len) = class_at(text, i);
                    if class != Class::Word {
                        break;
                    }
                    i += len;
                }
                f(&text[start..i]);
            }
        }
    }
}

/// Calls `f` with [`token_hash`] of every token of `text`, in order. ASCII text is hashed where
/// it lies: a token of up to 8 bytes is one masked 8-byte load, with no loop over its bytes.
fn for_each_token_hash(text: &str, seed: u64, mut f: impl FnMut(u64)) {
    if !text.is_ascii() {
        for_each_token(text, |token| f(token_hash(token, seed)));
        return;
    }
    let bytes = text.as_bytes();
    ascii_tokens(text, |start, end| {
        let len = end - start;
        let hash = match bytes.get(start..start + 8) {
            Some(window) if len <= 8 => {
                let w = u64::from_le_bytes(window.try_into().expect("8 bytes")) & (u64::MAX >> (64 - 8 * len));
                mix(hash_step(hash_start(len, seed), ascii_lower(w)))
            }
            _ => hash_words(&bytes[start..end], seed, ascii_lower),
        };
        f(hash)
    });
}

/// The `(start, end)` byte ranges of the tokens of ASCII `text`, 64 bytes at a time: the bytes'
/// classes become bit masks and token boundaries are read off the masks, so the cost follows
/// the number of tokens rather than one unpredictable branch per byte.
fn ascii_tokens(text: &str, mut f: impl FnMut(usize, usize)) {
    let mut word_start: Option<usize> = None;
    for (block, chunk) in text.as_bytes().chunks(64).enumerate() {
        let base = block * 64;
        let (mut word, mut other) = (0u64, 0u64);
        for (k, bytes) in chunk.chunks(8).enumerate() {
            let (w, s) = ascii_classes(pack(bytes));
            word |= w << (8 * k);
            other |= (!(w | s) & 0xff) << (8 * k);
        }
        let valid = u64::MAX >> (64 - chunk.len());
        other &= valid;
        // Bit j set: the byte before byte j is part of a word.
        let after_word = (word << 1) | word_start.is_some() as u64;
        let (starts, ends) = (word & !after_word, !word & after_word & valid);
        let mut events = starts | ends | other;
        while events != 0 {
            let j = events.trailing_zeros() as usize;
            events &= events - 1;
            let at = base + j;
            if let Some(start) = word_start.filter(|_| ends >> j & 1 == 1) {
                f(start, at);
                word_start = None;
            }
            if starts >> j & 1 == 1 {
                word_start = Some(at);
            } else if other >> j & 1 == 1 {
                f(at, at + 1);
            }
        }
    }
    if let Some(start) = word_start {
        f(start, text.len());
    }
}

/// `1 + ln(count)`, sublinear term frequency, from a table for the small counts nearly every
/// term has.
fn sublinear(count: f32) -> f32 {
    static TABLE: std::sync::LazyLock<[f32; 64]> =
        std::sync::LazyLock::new(|| std::array::from_fn(|k| 1.0 + (k as f32).ln()));
    let k = count as usize;
    match TABLE.get(k) {
        Some(&v) if k as f32 == count && k >= 1 => v,
        _ => 1.0 + count.ln(),
    }
}

/// Up to 8 bytes as a little-endian word, zero-padded; built in registers, since a word loaded
/// from bytes just stored one at a time stalls on store forwarding.
#[inline(always)]
fn pack(bytes: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(bytes) {
        Ok(full) => u64::from_le_bytes(full),
        Err(_) => bytes.iter().rev().fold(0, |w, &b| (w << 8) | b as u64),
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` (all ASCII) that lies in `lo..=hi`.
#[inline(always)]
fn in_range(w: u64, lo: u8, hi: u8) -> u64 {
    (w + ONES * (0x80 - lo as u64)) & !(w + ONES * (0x7f - hi as u64)) & HIGH
}

/// One bit per byte (byte i to bit i) from the high bits of each byte.
#[inline(always)]
fn movemask(high: u64) -> u64 {
    ((high >> 7).wrapping_mul(0x0102_0408_1020_4080)) >> 56
}

/// Word bytes (letters, digits, `_`) and space bytes of 8 ASCII bytes, one bit per byte.
#[inline(always)]
fn ascii_classes(w: u64) -> (u64, u64) {
    let word = in_range(w | ONES * 0x20, b'a', b'z') | in_range(w, b'0', b'9') | in_range(w, b'_', b'_');
    let space = in_range(w, b' ', b' ') | in_range(w, b'\t', b'\r');
    (movemask(word), movemask(space))
}

/// ASCII upper-case letters of `w` to lower case.
#[inline(always)]
fn ascii_lower(w: u64) -> u64 {
    w | (in_range(w, b'A', b'Z') >> 2)
}

/// The hash of a token's lower-cased form: its bytes taken 8 at a time into a multiply-rotate
/// chain, then finalised. ASCII tokens (nearly all) are folded to lower case in registers.
fn token_hash(token: &str, seed: u64) -> u64 {
    if token.is_ascii() {
        return hash_words(token.as_bytes(), seed, ascii_lower);
    }
    hash_words(token.to_lowercase().as_bytes(), seed, |w| w)
}

fn hash_words(bytes: &[u8], seed: u64, fold: impl Fn(u64) -> u64) -> u64 {
    mix(bytes.chunks(8).fold(hash_start(bytes.len(), seed), |h, chunk| hash_step(h, fold(pack(chunk)))))
}

const HASH_K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline(always)]
fn hash_start(len: usize, seed: u64) -> u64 {
    seed ^ (len as u64).wrapping_mul(HASH_K)
}

#[inline(always)]
fn hash_step(h: u64, word: u64) -> u64 {
    (h ^ word).wrapping_mul(HASH_K).rotate_left(29)
}

/// A 64-bit finaliser (splitmix64) so combined n-gram hashes stay well spread.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Inverse document frequencies, `ln((1 + n) / (1 + df)) + 1`, from featurized training vectors.
pub fn idf_weights(dim: usize, docs: &[SparseVec]) -> Vec<f32> {
    let mut df = vec![0u32; dim];
    for doc in docs {
        for &i in &doc.indices {
            df[i as usize] += 1;
        }
    }
    let n = docs.len() as f32;
    df.into_iter().map(|d| ((1.0 + n) / (1.0 + d as f32)).ln() + 1.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn featurizer(spec: HashedSpec) -> HashedFeaturizer {
        HashedFeaturizer::new(spec, None).unwrap()
    }

    fn dot(a: &SparseVec, b: &SparseVec) -> f32 {
        let mut dense = vec![0f32; 1 << 18];
        a.add_to(&mut dense, 1.0);
        b.dense_dot(&dense)
    }

    #[test]
    fn tokens_split_words_and_punctuation() {
        for (text, expected) in [
            ("fn main() { x_1 += 2; } Ete", ["fn", "main", "(", ")", "{", "x_1", "+", "=", "2", ";", "}", "Ete"]),
            ("fn main() { x_1 += 2; } Été", ["fn", "main", "(", ")", "{", "x_1", "+", "=", "2", ";", "}", "Été"]),
        ] {
            let mut got = Vec::new();
            for_each_token(text, |t| got.push(t));
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn sublinear_weights_match_the_logarithm() {
        for count in [1.0f32, 2.0, 3.0, 63.0, 64.0, 1000.0, 2.5] {
            assert_eq!(sublinear(count), 1.0 + count.ln(), "{count}");
        }
    }

    /// The definition the byte-level splitter must match, character by character.
    fn reference_tokens(text: &str) -> Vec<&str> {
        let word = |c: char| c.is_alphanumeric() || c == '_';
        let mut out = Vec::new();
        let mut rest = text.trim_start();
        while let Some(first) = rest.chars().next() {
            let end = if word(first) { rest.find(|c: char| !word(c)).unwrap_or(rest.len()) } else { first.len_utf8() };
            out.push(&rest[..end]);
            rest = rest[end..].trim_start();
        }
        out
    }

    #[test]
    fn byte_level_split_matches_the_character_level_definition() {
        let texts = [
            "",
            "   ",
            "plain ascii words, and punctuation!",
            "tabs\tnew\nlines\r\nvertical\x0btab\x0cfeed",
            "naïve café — «quotes» ünïcödé_words 東京タワー 123",
            "nbsp\u{a0}and\u{2003}em space\u{3000}ideographic",
            "mixed😀emoji a😀b _x_ __ é_1 \x1cfs\x7fdel",
            "fn main() { let x_1: Vec<u8> = vec![]; }",
        ];
        let long = "word_1 ".repeat(9) + "x".repeat(70).as_str() + "(y) Eight888 NineNine9";
        for text in texts.into_iter().chain([long.as_str(), &long[1..], &long[..64], &long[..65]]) {
            let mut got = Vec::new();
            for_each_token(text, |t| got.push(t));
            assert_eq!(got, reference_tokens(text), "{text:?}");
            let mut hashes = Vec::new();
            for_each_token_hash(text, 3, |h| hashes.push(h));
            let expected: Vec<u64> = got.iter().map(|t| token_hash(t, 3)).collect();
            assert_eq!(hashes, expected, "{text:?}");
        }
    }

    #[test]
    fn token_hashes_fold_case_like_to_lowercase() {
        let long = "A".repeat(40) + "b";
        for token in ["word", "WoRd", "x_1", "Été", "ÉTÉ", "İstanbul", long.as_str(), "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345@[`{"] {
            let lower = token.to_lowercase();
            assert_eq!(token_hash(token, 7), hash_words(lower.as_bytes(), 7, |w| w), "{token}");
        }
        assert_ne!(token_hash("word", 7), token_hash("word", 8));
        assert_ne!(token_hash("ab", 7), token_hash("ab\0", 7), "zero padding is not the same token");
    }

    #[test]
    fn ascii_byte_classes_match_the_character_classes() {
        let all: Vec<u8> = (0..128).collect();
        for bytes in all.chunks(8) {
            let (word, space) = ascii_classes(pack(bytes));
            for (i, &b) in bytes.iter().enumerate() {
                let class = char_class(b as char);
                assert_eq!(word >> i & 1 == 1, class == Class::Word, "{b}");
                assert_eq!(space >> i & 1 == 1, class == Class::Space, "{b}");
                assert_eq!(ascii_lower(pack(&[b])) as u8, b.to_ascii_lowercase());
            }
        }
    }

    #[test]
    fn counts_keep_first_hit_order_through_collisions_and_cancellations() {
        let mut counts = Counts::default();
        // Indices 3, 67 and 131 share a slot in a 64-slot table; 5 cancels to zero and returns.
        let hits: Vec<u64> = [(3, 1), (67, -1), (5, 1), (3, 1), (131, 1), (5, -1), (67, -1), (5, 1)]
            .iter()
            .map(|&(i, sign): &(u64, i32)| i | ((sign < 0) as u64) << 63 | 1 << 40)
            .collect();
        for round in 0..2 {
            counts.reset(8);
            counts.add_all(&hits, (1 << 18) - 1);
            let got: Vec<(u32, f32)> = counts.iter().collect();
            assert_eq!(got, [(3, 2.0), (67, -2.0), (5, 1.0), (131, 1.0)], "round {round}");
        }
    }

    #[test]
    fn vectors_are_normalised_deterministic_and_case_insensitive() {
        let f = featurizer(HashedSpec::default());
        let a = f.featurize(&["The cat sat on the mat"]).unwrap().remove(0);
        let b = f.featurize(&["the CAT sat on THE mat"]).unwrap().remove(0);
        assert_eq!(a, b);
        assert!((dot(&a, &a) - 1.0).abs() < 1e-5);
        let unique: std::collections::HashSet<_> = a.indices.iter().collect();
        assert_eq!(unique.len(), a.indices.len());
    }

    #[test]
    fn similar_texts_are_closer_than_unrelated_ones() {
        let f = featurizer(HashedSpec { char_ngrams: Some([3, 4]), ..Default::default() });
        let v = f.featurize(&["def add(a, b): return a + b", "def sub(a, b): return a - b", "Paris is the capital of France"]).unwrap();
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2);
    }

    #[test]
    fn vectors_one_at_a_time_equal_the_batch() {
        let f = featurizer(HashedSpec { char_ngrams: Some([2, 3]), ..Default::default() });
        let texts = ["a longer text, with more words than the next", "short", "Été à Paris"];
        let mut each = Vec::new();
        f.featurize_each(&texts, &mut |x| each.push(x.clone())).unwrap();
        assert_eq!(each, f.featurize(&texts).unwrap());
    }

    #[test]
    fn word_order_matters_through_bigrams_only() {
        let uni = featurizer(HashedSpec { word_ngrams: 1, ..Default::default() });
        let bi = featurizer(HashedSpec::default());
        let (x, y) = ("dog bites man", "man bites dog");
        let u = uni.featurize(&[x, y]).unwrap();
        let b = bi.featurize(&[x, y]).unwrap();
        assert!((dot(&u[0], &u[1]) - 1.0).abs() < 1e-5);
        assert!(dot(&b[0], &b[1]) < 0.9);
    }

    #[test]
    fn idf_downweights_common_terms() {
        let f = featurizer(HashedSpec { word_ngrams: 1, ..Default::default() });
        let docs = f.featurize(&["the apple", "the pear", "the plum"]).unwrap();
        let idf = idf_weights(f.dim(), &docs);
        let the = f.featurize(&["the"]).unwrap().remove(0).indices[0] as usize;
        let apple = f.featurize(&["apple"]).unwrap().remove(0).indices[0] as usize;
        assert!(idf[the] < idf[apple]);
    }

    #[test]
    fn bad_specs_are_rejected() {
        assert!(HashedFeaturizer::new(HashedSpec { dim_log2: 40, ..Default::default() }, None).is_err());
        assert!(HashedFeaturizer::new(HashedSpec { word_ngrams: 0, ..Default::default() }, None).is_err());
        assert!(HashedFeaturizer::new(HashedSpec { word_ngrams: 9, ..Default::default() }, None).is_err());
        assert!(HashedFeaturizer::new(HashedSpec::default(), Some(vec![1.0; 3])).is_err());
    }
}
