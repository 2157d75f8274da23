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

    /// Adds the signed hits of one text's n-grams into `acc` (dense, all zero on entry), and
    /// records each index the first time it is hit in `touched`.
    fn hits(&self, text: &str, acc: &mut [f32], touched: &mut Vec<u32>) {
        let seed = self.spec.seed;
        let mut push = |h: u64| {
            let i = (h & self.mask) as usize;
            if acc[i] == 0.0 {
                touched.push(i as u32);
            }
            // A count that returns to zero keeps its slot in `touched` and is dropped later.
            acc[i] += if h >> 63 == 1 { -1.0 } else { 1.0 };
        };
        if self.spec.word_ngrams > 0 {
            let n = self.spec.word_ngrams as usize;
            let mut window: Vec<u64> = Vec::with_capacity(n);
            for token in tokens(text) {
                let h = token_hash(token, seed);
                if window.len() == n {
                    window.remove(0);
                }
                window.push(h);
                // Every n-gram ending at this token: combine hashes right to left.
                let mut combined = 0u64;
                for (k, &wh) in window.iter().rev().enumerate() {
                    combined = if k == 0 { wh } else { mix(wh.rotate_left(k as u32 * 7) ^ combined) };
                    push(combined);
                }
            }
        }
        if let Some([lo, hi]) = self.spec.char_ngrams {
            let lower: Vec<char> = text.chars().flat_map(char::to_lowercase).collect();
            let mut buf = String::new();
            for len in lo as usize..=hi as usize {
                for gram in lower.windows(len) {
                    buf.clear();
                    buf.extend(gram);
                    push(xxh3_64_with_seed(buf.as_bytes(), seed ^ 0x9e37_79b9_7f4a_7c15 ^ len as u64));
                }
            }
        }
    }

    /// One text's vector, using `acc` (dense, all zero; left all zero) as scratch.
    fn featurize_one(&self, text: &str, acc: &mut [f32]) -> SparseVec {
        let mut touched = Vec::new();
        self.hits(text, acc, &mut touched);
        let mut out = SparseVec { indices: Vec::with_capacity(touched.len()), values: Vec::with_capacity(touched.len()) };
        for i in touched {
            let mut v = std::mem::take(&mut acc[i as usize]);
            if v == 0.0 {
                continue;
            }
            // 1 + ln|tf| is 1 for the common |tf| = 1: skip the logarithm there.
            if self.spec.sublinear_tf && v.abs() != 1.0 {
                v = v.signum() * (1.0 + v.abs().ln());
            }
            if let Some(idf) = &self.idf {
                v *= idf[i as usize];
            }
            out.indices.push(i);
            out.values.push(v);
        }
        out.normalize();
        out
    }
}

impl Featurizer for HashedFeaturizer {
    fn dim(&self) -> usize {
        1 << self.spec.dim_log2
    }

    fn featurize(&self, texts: &[&str]) -> Result<Vec<SparseVec>> {
        let mut acc = vec![0f32; self.dim()];
        Ok(texts.iter().map(|t| self.featurize_one(t, &mut acc)).collect())
    }
}

/// Words (runs of letters, digits and `_`, lower-cased by hashing case-folded bytes) and single
/// punctuation characters, which carry much of the signal in code and markup.
fn tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        rest = rest.trim_start();
        let mut chars = rest.char_indices();
        let (_, first) = chars.next()?;
        let end = if first.is_alphanumeric() || first == '_' {
            chars.find(|&(_, c)| !(c.is_alphanumeric() || c == '_')).map_or(rest.len(), |(i, _)| i)
        } else {
            first.len_utf8()
        };
        let (token, tail) = rest.split_at(end);
        rest = tail;
        Some(token)
    })
}

fn token_hash(token: &str, seed: u64) -> u64 {
    if token.bytes().any(|b| b.is_ascii_uppercase()) || !token.is_ascii() {
        xxh3_64_with_seed(token.to_lowercase().as_bytes(), seed)
    } else {
        xxh3_64_with_seed(token.as_bytes(), seed)
    }
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
        let t: Vec<_> = tokens("fn main() { x_1 += 2; } Été").collect();
        assert_eq!(t, ["fn", "main", "(", ")", "{", "x_1", "+", "=", "2", ";", "}", "Été"]);
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
        assert!(HashedFeaturizer::new(HashedSpec::default(), Some(vec![1.0; 3])).is_err());
    }
}
