//! Signed feature hashing of word n-grams (and optionally character n-grams): a fixed-dimension,
//! model-free text vector that needs no vocabulary, so every worker featurizes identically.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Featurizer;
use crate::error::{Error, Result};
use crate::plan::HashedSpec;
use crate::ridge::RidgeHeads;
use crate::sparse::SparseVec;

/// The longest word n-grams.
const MAX_WORD_NGRAMS: usize = 8;

pub struct HashedFeaturizer {
    spec: HashedSpec,
    mask: u64,
    idf: Option<Vec<f32>>,
    /// The signed term weight of each count from -64 to 63 (at `count + 64`), which nearly
    /// every term has.
    signed_tf: [f32; 128],
}

impl HashedFeaturizer {
    pub fn new(spec: HashedSpec, idf: Option<Vec<f32>>) -> Result<Self> {
        if !(4..=24).contains(&spec.dim_log2) {
            return Err(Error::plan(format!("hashed featurizer: dimLog2 {} not in 4..=24", spec.dim_log2)));
        }
        if spec.word_ngrams as usize > MAX_WORD_NGRAMS {
            return Err(Error::plan(format!(
                "hashed featurizer: wordNgrams {} above {MAX_WORD_NGRAMS}",
                spec.word_ngrams
            )));
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
        let signed_tf = std::array::from_fn(|at| signed_term_weight(at as i32 - 64, spec.sublinear_tf));
        Ok(HashedFeaturizer { mask: dim as u64 - 1, spec, idf, signed_tf })
    }

    /// Counts every n-gram of `text` into `scratch.counts`: word n-grams from the token hashes,
    /// then character n-grams. Each n-gram's hash gives a feature index (its low bits) and, when
    /// `signed`, a sign (its top bit); unsigned, each count is the n-grams that hit the index.
    fn count_grams(&self, text: &str, scratch: &mut Scratch, signed: bool) {
        let seed = self.spec.seed;
        let Scratch { tokens, spans, chars, gram, counts } = scratch;
        let n = self.spec.word_ngrams as usize;
        tokens.clear();
        if n > 0 {
            token_hashes(text, seed, spans, tokens);
        }
        chars.clear();
        let mut char_grams = 0;
        if let Some([lo, hi]) = self.spec.char_ngrams {
            chars.extend(text.chars().flat_map(char::to_lowercase));
            char_grams = (lo as usize..=hi as usize).map(|len| (chars.len() + 1).saturating_sub(len)).sum();
        }
        counts.count(n * tokens.len() + char_grams, self.mask, signed, |tally| {
            // The common orders as constants, so their loops unroll.
            match n {
                1 => word_grams(tokens, 1, tally),
                2 => word_grams(tokens, 2, tally),
                n => word_grams(tokens, n, tally),
            }
            if let Some([lo, hi]) = self.spec.char_ngrams {
                for len in lo as usize..=hi as usize {
                    for window in chars.windows(len) {
                        gram.clear();
                        gram.extend(window);
                        tally.add(xxh3_64_with_seed(gram.as_bytes(), seed ^ 0x9e37_79b9_7f4a_7c15 ^ len as u64));
                    }
                }
            }
        });
    }

    /// Empties `counts`, calling `f` with each feature it held, in first-counted order: its index
    /// and its weight before normalisation (term weight, times IDF, signed). `ahead`, if any, gets
    /// each index [`AHEAD`] features before `f` does (see [`Counts::drain_ahead`]). Returns the
    /// weights' sum of squares.
    #[inline(always)]
    fn weights(&self, counts: &mut Counts, ahead: Option<impl FnMut(u32)>, f: impl FnMut(u32, f32)) -> f32 {
        // Whether there is an IDF decided once, not per feature.
        match &self.idf {
            None => self.scaled_weights(counts, |_| 1.0, ahead, f),
            Some(idf) => self.scaled_weights(counts, |i| idf[i as usize], ahead, f),
        }
    }

    #[inline(always)]
    fn scaled_weights(
        &self,
        counts: &mut Counts,
        scale: impl Fn(u32) -> f32,
        ahead: Option<impl FnMut(u32)>,
        mut f: impl FnMut(u32, f32),
    ) -> f32 {
        let mut norm2 = 0f32;
        counts.drain_ahead(ahead, |i, count| {
            if count == 0 {
                return;
            }
            // Looked up with its sign: signs are random, so a branch on one would miss on every
            // other feature.
            let v = match self.signed_tf.get(count.wrapping_add(64) as u32 as usize) {
                Some(&weight) => weight,
                None => signed_term_weight(count, self.spec.sublinear_tf),
            } * scale(i);
            norm2 += v * v;
            f(i, v);
        });
        norm2
    }

    /// Each head's sum over the unnormalised weights of `counts`, into `sums` (one per head);
    /// returns the weights' sum of squares. For up to 16 heads the sums are a fixed-size array
    /// over the heads' padded rows, which the compiler keeps in registers; an inlined loop over
    /// a row of run-time length stored each sum back at every feature.
    ///
    /// With more than one head, each row is prefetched [`AHEAD`] features before it is summed,
    /// so its fetch overlaps the sums before it; one head's whole table (a float a row) stays in
    /// cache.
    fn head_sums(&self, counts: &mut Counts, heads: &RidgeHeads, sums: &mut [f32]) -> f32 {
        match heads.stride() {
            1 => self.padded_head_sums::<1>(counts, heads, sums),
            4 => self.padded_head_sums::<4>(counts, heads, sums),
            8 => self.padded_head_sums::<8>(counts, heads, sums),
            16 => self.padded_head_sums::<16>(counts, heads, sums),
            _ => self.weights(counts, Some(|i: u32| heads.prefetch_row(i as usize)), |i, v| {
                for (sum, w) in sums.iter_mut().zip(heads.row(i as usize)) {
                    *sum += v * w;
                }
            }),
        }
    }

    /// [`Self::head_sums`] for rows padded to `S` floats.
    #[inline(never)]
    fn padded_head_sums<const S: usize>(&self, counts: &mut Counts, heads: &RidgeHeads, sums: &mut [f32]) -> f32 {
        let mut padded = [0f32; S];
        let ahead = (S > 1).then_some(|i: u32| heads.prefetch_row(i as usize));
        let norm2 = self.weights(counts, ahead, |i, v| {
            for (sum, w) in padded.iter_mut().zip(heads.padded_row::<S>(i as usize)) {
                *sum += v * w;
            }
        });
        for (sum, p) in sums.iter_mut().zip(padded) {
            *sum += p;
        }
        norm2
    }

    /// Calls `f` with each feature index `text`'s n-grams hit and how many hit it (unsigned,
    /// unweighted): the bag of hashed n-grams that DSIR's importance weights are estimated over.
    pub fn gram_counts(&self, text: &str, scratch: &mut GramScratch, mut f: impl FnMut(u32, u32)) {
        self.count_grams(text, &mut scratch.0, false);
        scratch.0.counts.drain(|i, count| f(i, count as u32));
    }

    /// One text's vector, into `out`.
    fn featurize_into(&self, text: &str, scratch: &mut Scratch, out: &mut SparseVec) {
        self.count_grams(text, scratch, true);
        out.indices.clear();
        out.values.clear();
        self.weights(&mut scratch.counts, None::<fn(u32)>, |i, v| {
            out.indices.push(i);
            out.values.push(v);
        });
        out.normalize();
    }
}

/// Counts every word n-gram of orders 1 to `n` from the token hashes: each n-gram ending at a
/// token, its hash combined from the newest token to the oldest.
#[inline(always)]
fn word_grams(tokens: &[u64], n: usize, tally: &mut Tally<'_>) {
    for t in 0..tokens.len() {
        let mut combined = tokens[t];
        tally.add(combined);
        for k in 1..n.min(t + 1) {
            combined = fold_mul(tokens[t - k].rotate_left(k as u32 * 7) ^ combined, GRAM_K);
            tally.add(combined);
        }
    }
}

/// Buffers [`HashedFeaturizer::gram_counts`] reuses from one text to the next.
#[derive(Default)]
pub struct GramScratch(Scratch);

/// Buffers reused from one text to the next.
#[derive(Default)]
struct Scratch {
    /// The text's token hashes, in order, and its tokens' boundaries.
    tokens: Vec<u64>,
    spans: Spans,
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

    /// The heads' sums over the unnormalised weights, scaled once by the norm: the heads are
    /// linear, so this equals predicting from the normalised vector (up to rounding).
    fn predict_each(&self, texts: &[&str], heads: &RidgeHeads, f: &mut dyn FnMut(&[f32])) -> Result<()> {
        let (mut scratch, mut sums, mut out) = (Scratch::default(), vec![0f32; heads.heads], vec![0f32; heads.heads]);
        for text in texts {
            self.count_grams(text, &mut scratch, true);
            sums.fill(0.0);
            let norm2 = self.head_sums(&mut scratch.counts, heads, &mut sums);
            let scale = if norm2 > 0.0 { norm2.sqrt().recip() } else { 0.0 };
            for ((o, sum), bias) in out.iter_mut().zip(&sums).zip(&heads.bias) {
                *o = bias + sum * scale;
            }
            f(&out);
        }
        Ok(())
    }
}

/// How many features ahead of its use [`Counts::drain_ahead`] announces one: about as many as
/// are summed while a row comes from memory.
const AHEAD: usize = 32;

/// Signed counts of one text's feature indices, in an open-addressing table sized to the text
/// rather than to the feature space: a record's few hundred n-grams then stay in L1 cache,
/// where a dense accumulator over 2^18 features missed to L3 on nearly every n-gram. The table
/// is kept at most a quarter full, so a probe nearly always ends at its first slot, and a hit on
/// a new index and on a counted one take the same branch-free path.
#[derive(Default)]
struct Counts {
    /// Per slot: feature index + 1 (0 marks an empty slot) and its signed count, side by side so
    /// a hit reads and writes one place.
    slots: Vec<(u32, i32)>,
    /// Occupied slots in the order their index was first counted (the first `len`), so vectors
    /// list indices in the order the text first hits them.
    order: Vec<u32>,
    len: usize,
}

impl Counts {
    /// Replaces the previous text's counts with those `fill` adds through a [`Tally`], at most
    /// `hits` of them. Feature indices are `hash & index_mask`.
    #[inline(always)]
    fn count(&mut self, hits: usize, index_mask: u64, signed: bool, fill: impl FnOnce(&mut Tally<'_>)) {
        // Counts that were never drained (reading them empties the table as it goes).
        self.drain(|_, _| {});
        let capacity = (4 * hits).next_power_of_two().max(64);
        if capacity > self.slots.len() {
            self.slots = vec![(0, 0); capacity];
            self.order = vec![0; capacity + 1];
        }
        let sign_mask = signed as u64;
        let mut tally =
            Tally { table: &mut self.slots[..capacity], order: &mut self.order, index_mask, sign_mask, len: 0 };
        fill(&mut tally);
        self.len = tally.len;
    }

    /// Calls `f` with each (index, signed count) in first-counted order, emptying each slot as
    /// it is read (where a separate pass would read them all again), so the table is left empty
    /// for the next text.
    #[inline(always)]
    fn drain(&mut self, f: impl FnMut(u32, i32)) {
        self.drain_ahead(None::<fn(u32)>, f);
    }

    /// [`Self::drain`], calling `ahead` (if any) with each index [`AHEAD`] places before `f`
    /// gets it (the first [`AHEAD`] at the start): time for a prefetch it issues to land.
    #[inline(always)]
    fn drain_ahead(&mut self, mut ahead: Option<impl FnMut(u32)>, mut f: impl FnMut(u32, i32)) {
        let order = &self.order[..self.len];
        if let Some(ahead) = &mut ahead {
            order.iter().take(AHEAD).for_each(|&slot| ahead(self.slots[slot as usize].0 - 1));
        }
        for (at, &slot) in order.iter().enumerate() {
            if let (Some(ahead), Some(&later)) = (&mut ahead, order.get(at + AHEAD)) {
                ahead(self.slots[later as usize].0 - 1);
            }
            let (key, count) = std::mem::take(&mut self.slots[slot as usize]);
            f(key - 1, count);
        }
        self.len = 0;
    }
}

/// One text's counting in progress: the table in use (sized to the text) and how many slots
/// are taken, held in locals rather than re-read from [`Counts`] at every hit.
struct Tally<'a> {
    table: &'a mut [(u32, i32)],
    order: &'a mut [u32],
    index_mask: u64,
    /// 1 when a hash's top bit signs its count, 0 when every count is positive.
    sign_mask: u64,
    len: usize,
}

impl Tally<'_> {
    /// Counts a hash's feature index with its sign (the top bit), if counts are signed.
    #[inline(always)]
    fn add(&mut self, hash: u64) {
        let key = (hash & self.index_mask) as u32 + 1;
        let mask = self.table.len() - 1;
        // Indices are hash bits already: their low bits spread the slots.
        let mut slot = key as usize & mask;
        let mut found = self.table[slot].0;
        // "Neither this key nor empty" as one test, so the loop's only branch is the rare
        // collision (two tests would branch on "new or seen", which is a coin toss).
        while (found ^ key) as u64 * found as u64 != 0 {
            slot = (slot + 1) & mask;
            found = self.table[slot].0;
        }
        // SAFETY: the table's length is a power of two, so a slot masked by it minus one lies
        // inside; `len` counts the slots taken, at most the table's length, and `order` has one
        // more place than that.
        unsafe {
            let entry = self.table.get_unchecked_mut(slot);
            *entry = (key, entry.1 + 1 - 2 * ((hash >> 63) & self.sign_mask) as i32);
            *self.order.get_unchecked_mut(self.len) = slot as u32;
        }
        self.len += (found == 0) as usize;
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Space,
    Word,
    /// A letter of a script written without spaces between words (Chinese, Japanese, Thai, ...).
    Unspaced,
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

/// What a character is to the splitter (`_` counts as a letter); the ASCII byte classes of
/// [`crate::ascii::block`] must agree, which `byte_level_split_matches_the_character_level_definition`
/// checks.
fn char_class(c: char) -> Class {
    if c.is_whitespace() {
        Class::Space
    } else if is_unspaced(c) {
        Class::Unspaced
    } else if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else {
        Class::Other
    }
}

/// Whether `c` is a letter of a script written without spaces between words: Han, kana, Thai,
/// Lao, Khmer, Myanmar. (Hangul is written with spaces.)
fn is_unspaced(c: char) -> bool {
    matches!(c as u32,
        0x0E00..=0x0EFF // Thai, Lao
        | 0x1000..=0x109F // Myanmar
        | 0x1780..=0x17FF // Khmer
        | 0x3040..=0x30FF // Hiragana, Katakana
        | 0x31F0..=0x31FF // Katakana extensions
        | 0x3400..=0x4DBF // CJK Extension A
        | 0x4E00..=0x9FFF // CJK Unified Ideographs
        | 0xF900..=0xFAFF // CJK Compatibility Ideographs
        | 0xFF66..=0xFF9F // Halfwidth Katakana
        | 0x20000..=0x3FFFF // CJK Extensions B and later
    )
}

/// Calls `f` with every token of `text`: words (runs of letters, digits and `_`; case is folded
/// when hashing) and single punctuation characters, which carry much of the signal in code and
/// markup. Whitespace separates. A run of a script written without spaces (Chinese, Japanese,
/// Thai) has no words to find, and as one token would match only itself: it gives its
/// overlapping character bigrams instead (a lone character, itself), the usual unit for such
/// text in retrieval.
fn for_each_token<'t>(text: &'t str, mut f: impl FnMut(&'t str)) {
    let mut i = 0;
    while i < text.len() {
        let start = i;
        let (class, len) = class_at(text, i);
        i += len;
        match class {
            Class::Space => {}
            Class::Other => f(&text[start..i]),
            Class::Unspaced => {
                // `start..i` is the run's current character; pair it with the next one.
                let mut previous = start;
                loop {
                    let next = (i < text.len()).then(|| class_at(text, i));
                    match next {
                        Some((Class::Unspaced, len)) => {
                            f(&text[previous..i + len]);
                            previous = i;
                            i += len;
                        }
                        _ => {
                            if previous == start {
                                f(&text[start..i]);
                            }
                            break;
                        }
                    }
                }
            }
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

/// [`token_hash`] of every token of `text`, in order, into `out`. ASCII text (nearly all) is
/// split by [`Spans`] and hashed where it lies: a token of up to 8 bytes is one masked 8-byte
/// load, with no loop over its bytes. Other text (and text too long for `Spans`' 32-bit
/// offsets) goes character by character.
fn token_hashes(text: &str, seed: u64, spans: &mut Spans, out: &mut Vec<u64>) {
    if !text.is_ascii() || text.len() >= u32::MAX as usize {
        for_each_token(text, |token| out.push(token_hash(token, seed)));
        return;
    }
    let bytes = text.as_bytes();
    out.extend(spans.split(text).map(|(start, end)| {
        let len = end - start;
        match bytes.get(start..start + 8) {
            Some(window) if len <= 8 => {
                let w = u64::from_le_bytes(window.try_into().expect("8 bytes")) & (u64::MAX >> (64 - 8 * len));
                fold_mul(hash_start(len, seed) ^ ascii_lower(w), HASH_K)
            }
            _ => hash_words(&bytes[start..end], seed, ascii_lower),
        }
    }));
}

/// Token boundaries of ASCII text, with buffers reused from one text to the next.
#[derive(Default)]
struct Spans {
    /// Byte offsets of token starts and of (exclusive) token ends, in order.
    starts: Vec<u32>,
    ends: Vec<u32>,
}

impl Spans {
    /// The `(start, end)` byte ranges of the tokens of ASCII `text`, in order. 64 bytes at a
    /// time, the bytes' classes become bit masks and token starts and ends two more masks, whose
    /// positions [`positions`] writes out; the k-th start pairs with the k-th end. Nothing
    /// branches per byte or per token.
    fn split(&mut self, text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
        let bytes = text.as_bytes();
        // Room for every position (at most one per byte, and the text's end) and the spare
        // ones `positions` writes past the last.
        let room = bytes.len() + 1 + POSITIONS_AT_ONCE;
        for buffer in [&mut self.starts, &mut self.ends] {
            if buffer.len() < room {
                buffer.resize(room, 0);
            }
        }
        let (mut n_starts, mut n_ends) = (0, 0);
        // Whether the previous block's last byte was a word byte, or punctuation.
        let (mut word_carry, mut other_carry) = (0u64, 0u64);
        for (block, chunk) in bytes.chunks(64).enumerate() {
            let crate::ascii::Block { word, other } = crate::ascii::block(chunk);
            // Bit j of `after_word`: the byte before byte j is a word byte.
            let after_word = (word << 1) | word_carry;
            let starts = (word & !after_word) | other;
            // A token ends (exclusively) at j when a word stops there or punctuation was just
            // before; past a short last block's text, that is the text's end.
            let ends = (after_word & !word) | (other << 1) | other_carry;
            (word_carry, other_carry) = (word >> 63, other >> 63);
            let base = (block * 64) as u32;
            n_starts = positions(starts, base, &mut self.starts, n_starts);
            n_ends = positions(ends, base, &mut self.ends, n_ends);
        }
        // A token that runs to the end of a full last block ends with the text.
        if n_ends < n_starts {
            self.ends[n_ends] = bytes.len() as u32;
        }
        let (starts, ends) = (&self.starts[..n_starts], &self.ends[..n_starts]);
        starts.iter().zip(ends).map(|(&start, &end)| (start as usize, end as usize))
    }
}

/// How many positions [`positions`] writes whatever the count: a 64-byte block of prose has
/// about ten tokens.
const POSITIONS_AT_ONCE: usize = 12;

/// Writes `base` plus the position of each set bit of `bits`, in order, at `out[n..]`, and
/// returns the new count. [`POSITIONS_AT_ONCE`] are written whether the bits have that many or
/// not (the spare ones are overwritten next, or ignored): a fixed loop, rather than a loop that
/// ends, at an unpredictable point, after each block's last token (the simdjson way).
#[inline(always)]
fn positions(mut bits: u64, base: u32, out: &mut [u32], n: usize) -> usize {
    let count = bits.count_ones() as usize;
    for slot in &mut out[n..n + POSITIONS_AT_ONCE.max(count)] {
        *slot = base + bits.trailing_zeros();
        bits &= bits.wrapping_sub(1);
    }
    n + count
}

/// A term's weight from its signed count: `1 + ln(|count|)` (sublinear term frequency), or the
/// count's magnitude, with the count's sign; 0 for 0.
fn signed_term_weight(count: i32, sublinear: bool) -> f32 {
    let magnitude = count.unsigned_abs() as f32;
    let weight = match sublinear {
        true => 1.0 + magnitude.ln(),
        false => magnitude,
    };
    if count == 0 {
        0.0
    } else {
        weight.copysign(count as f32)
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
    bytes.chunks(8).fold(hash_start(bytes.len(), seed), |h, chunk| fold_mul(h ^ fold(pack(chunk)), HASH_K))
}

const HASH_K: u64 = 0x9e37_79b9_7f4a_7c15;
/// The multiplier that combines token hashes into n-gram hashes.
const GRAM_K: u64 = 0xbf58_476d_1ce4_e5b9;

#[inline(always)]
fn hash_start(len: usize, seed: u64) -> u64 {
    seed ^ (len as u64).wrapping_mul(HASH_K)
}

/// The full 128-bit product of `a` and `k`, its halves xor-ed (as in wyhash): one multiply
/// whose every output bit depends on every input bit, so the low bits (the feature index) and
/// the top bit (the sign) are both well spread.
#[inline(always)]
fn fold_mul(a: u64, k: u64) -> u64 {
    let product = a as u128 * k as u128;
    product as u64 ^ (product >> 64) as u64
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
    fn unspaced_scripts_give_character_bigrams() {
        for (text, expected) in [
            ("自然语言处理 ok", &["自然", "然语", "语言", "言处", "处理", "ok"][..]),
            ("日本語の文。", &["日本", "本語", "語の", "の文", "。"]),
            ("สวัสดี", &["สว", "วั", "ัส", "สด", "ดี"]),
            ("x 字 y", &["x", "字", "y"]),
            ("한국어 문장", &["한국어", "문장"]),
        ] {
            let mut got = Vec::new();
            for_each_token(text, |t| got.push(t));
            assert_eq!(got, expected, "{text}");
        }
        // Two Chinese texts sharing most of their words are near; as whole-run tokens they had
        // nothing in common.
        let f = featurizer(HashedSpec::default());
        let v = f.featurize(&["我们今天学习自然语言处理", "他们明天学习自然语言处理", "股票市场昨天大幅下跌"]).unwrap();
        assert!(dot(&v[0], &v[1]) > 0.5 && dot(&v[0], &v[2]) < 0.1, "{} {}", dot(&v[0], &v[1]), dot(&v[0], &v[2]));
    }

    #[test]
    fn term_weights_are_sublinear_or_raw_counts_past_the_table_too() {
        let many = "x ".repeat(70) + "y";
        for sublinear_tf in [true, false] {
            let f = featurizer(HashedSpec { word_ngrams: 1, sublinear_tf, ..Default::default() });
            for (text, count, weight) in
                [("x x y", 2, [1.0 + 2f32.ln(), 2.0]), (many.as_str(), 70, [1.0 + 70f32.ln(), 70.0])]
            {
                let v = f.featurize(&[text]).unwrap().remove(0);
                let ratio = v.values[0].abs() / v.values[1].abs();
                let expected = weight[!sublinear_tf as usize];
                assert!((ratio - expected).abs() < 1e-4 * expected, "{sublinear_tf} {count}: {ratio}");
            }
        }
    }

    /// The definition the byte-level splitter must match, character by character (for scripts
    /// written with spaces; `unspaced_scripts_give_character_bigrams` covers the others).
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
            "naïve café — «quotes» ünïcödé_words Ελληνικά 123",
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
            token_hashes(text, 3, &mut Spans::default(), &mut hashes);
            let expected: Vec<u64> = got.iter().map(|t| token_hash(t, 3)).collect();
            assert_eq!(hashes, expected, "{text:?}");
        }
    }

    #[test]
    fn token_hashes_fold_case_like_to_lowercase() {
        let long = "A".repeat(40) + "b";
        for token in
            ["word", "WoRd", "x_1", "Été", "ÉTÉ", "İstanbul", long.as_str(), "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345@[`{"]
        {
            let lower = token.to_lowercase();
            assert_eq!(token_hash(token, 7), hash_words(lower.as_bytes(), 7, |w| w), "{token}");
        }
        assert_ne!(token_hash("word", 7), token_hash("word", 8));
        assert_ne!(token_hash("ab", 7), token_hash("ab\0", 7), "zero padding is not the same token");
    }

    #[test]
    fn ascii_lower_folds_only_upper_case_letters() {
        for b in 0..128u8 {
            assert_eq!(ascii_lower(pack(&[b])) as u8, b.to_ascii_lowercase());
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
            counts.count(hits.len(), (1 << 18) - 1, true, |tally| hits.iter().for_each(|&hit| tally.add(hit)));
            let mut got = Vec::new();
            counts.drain(|i, count| got.push((i, count)));
            assert_eq!(got, [(3, 2), (67, -2), (5, 1), (131, 1)], "round {round}");
            assert!(counts.slots.iter().all(|&slot| slot == (0, 0)), "drained, the table is empty");
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
        let v = f
            .featurize(&[
                "def add(a, b): return a + b",
                "def sub(a, b): return a - b",
                "Paris is the capital of France",
            ])
            .unwrap();
        assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2);
    }

    #[test]
    fn vectors_one_at_a_time_equal_the_batch() {
        let f = featurizer(HashedSpec { char_ngrams: Some([2, 3]), ..Default::default() });
        let texts = ["a longer text, with more words than the next", "short", "Été à Paris"];
        let each: Vec<SparseVec> = texts.iter().map(|t| f.featurize(&[t]).unwrap().remove(0)).collect();
        assert_eq!(each, f.featurize(&texts).unwrap(), "buffers reused from text to text leave nothing behind");
    }

    #[test]
    fn predictions_while_featurizing_equal_predictions_from_the_vectors() {
        let texts = ["a longer text, with more words than the next", "short", "Été à Paris", "x x x y", ""];
        let specs = [
            HashedSpec { dim_log2: 10, ..Default::default() },
            HashedSpec { dim_log2: 10, char_ngrams: Some([2, 3]), sublinear_tf: false, ..Default::default() },
        ];
        // Head counts whose rows are padded to 1, 4, 8, 16 and 32 floats.
        for (spec, heads) in specs.into_iter().flat_map(|spec| [1, 3, 8, 15, 17].map(|heads| (spec.clone(), heads))) {
            let idf: Vec<f32> = (0..1024).map(|i| 1.0 + (i % 7) as f32 / 7.0).collect();
            let f = HashedFeaturizer::new(spec, Some(idf)).unwrap();
            let weights: Vec<f32> = (0..1024 * heads).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
            let bias: Vec<f32> = (1..=heads).map(|b| b as f32).collect();
            let heads = RidgeHeads::new(1024, heads, &weights, bias, vec![1.0; heads]);
            let expected: Vec<Vec<f32>> = f
                .featurize(&texts)
                .unwrap()
                .iter()
                .map(|x| {
                    let mut out = vec![0f32; heads.heads];
                    heads.predict(x, &mut out);
                    out
                })
                .collect();
            let mut got = Vec::new();
            f.predict_each(&texts, &heads, &mut |scores| got.push(scores.to_vec())).unwrap();
            assert_eq!(got.len(), texts.len());
            for (g, e) in got.iter().flatten().zip(expected.iter().flatten()) {
                assert!((g - e).abs() < 1e-5, "{got:?} vs {expected:?}");
            }
            assert_eq!(got[4], heads.bias, "an empty text scores the bias");
        }
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
