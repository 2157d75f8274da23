//! The student artefact: what `score` runs for a group, and the reliability mask `distill`
//! derived for it, in one self-describing, versioned file, so a `score` Job needs nothing else to
//! reproduce the student that `distill` validated.
//!
//! Two kinds of student score alike: `heads` (ridge heads over a featurizer's vectors, trained by
//! `distill`) and `judge` (an LLM judge, fine-tuned elsewhere from the exported SFT data, asked
//! for the same per-dimension scores). Reliability masking treats them the same way.
//!
//! Layout (the whole file zstd-compressed): the magic `MIRASTU1`, a little-endian u32 header
//! length, the JSON [`StudentHeader`], then for `heads` `dim * heads` little-endian f32 weights
//! (feature-major) and, when the header says so, `dim` f32 IDF weights.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::featurize::{self, Featurizer};
use crate::models::judge::{JudgeRequest, Judged};
use crate::models::Chat;
use crate::plan::{Dimension, FeaturizerSpec, ModelSpec, Scale};
use crate::ridge::RidgeHeads;
use crate::storage::Storage;

const MAGIC: &[u8; 8] = b"MIRASTU1";
/// The artefact format. v3: the hashed featurizer's token and n-gram hashes changed, so heads
/// trained on v2 vectors would score v3 vectors wrongly; an older student is refused, not used.
pub const FORMAT: &str = "mira-student/v3";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StudentHeader {
    pub format: String,
    pub group: String,
    pub dimensions: Vec<Dimension>,
    pub scale: Scale,
    /// Dimensions masked out of the aggregate, per source.
    pub masked: BTreeMap<String, Vec<String>>,
    pub trained_on: usize,
    #[serde(flatten)]
    pub kind: StudentKind,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum StudentKind {
    #[serde(rename_all = "camelCase")]
    Heads { featurizer: FeaturizerSpec, dim: usize, bias: Vec<f32>, lambdas: Vec<f64>, has_idf: bool },
    #[serde(rename_all = "camelCase")]
    Judge {
        model: ModelSpec,
        /// The most tokens of a record the judge reads (the teacher's).
        #[serde(default = "crate::plan::defaults::max_record_tokens")]
        max_record_tokens: usize,
    },
}

/// How a student turns texts into per-dimension scores.
pub enum Scorer {
    Heads { heads: RidgeHeads, featurizer: Arc<dyn Featurizer>, idf: Option<Vec<f32>> },
    Judge { chat: Arc<Chat>, request: JudgeRequest, runtime: tokio::runtime::Handle },
}

impl Scorer {
    /// A judge student's scorer: the model loaded (an `s3://` one by way of `scratch`), its
    /// request for the group's dimensions, and the runtime its requests wait on.
    pub async fn judge(
        storage: &Storage,
        scratch: &std::path::Path,
        model: &ModelSpec,
        dimensions: &[Dimension],
        scale: Scale,
        max_record_tokens: usize,
    ) -> Result<Self> {
        Ok(Scorer::Judge {
            chat: Arc::new(Chat::load(storage, scratch, model).await?),
            request: JudgeRequest::new(dimensions.to_vec(), scale, false, max_record_tokens),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

/// A batch's per-dimension scores, a row per text, reused from batch to batch so that scoring
/// allocates nothing per record.
#[derive(Debug, Default)]
pub struct BatchScores {
    dims: usize,
    values: Vec<f32>,
    /// Per text: whether it has a row (a judge may give no usable reply).
    replied: Vec<bool>,
}

impl BatchScores {
    fn clear(&mut self, dims: usize) {
        self.dims = dims;
        self.values.clear();
        self.replied.clear();
    }

    /// The scores of text `i`, or `None` where it got none.
    pub fn get(&self, i: usize) -> Option<&[f32]> {
        self.replied[i].then(|| &self.values[i * self.dims..(i + 1) * self.dims])
    }

    /// Each text's scores, in order.
    pub fn iter(&self) -> impl Iterator<Item = Option<&[f32]>> {
        (0..self.replied.len()).map(|i| self.get(i))
    }
}

pub struct Student {
    pub header: StudentHeader,
    pub scorer: Scorer,
    /// Per source: which dimensions count towards the aggregate.
    unmasked: HashMap<String, Vec<bool>>,
}

impl Student {
    pub fn new(header: StudentHeader, scorer: Scorer) -> Self {
        let unmasked = header
            .masked
            .iter()
            .map(|(source, dims)| (source.clone(), header.dimensions.iter().map(|d| !dims.contains(&d.id)).collect()))
            .collect();
        Student { header, scorer, unmasked }
    }

    /// Sets the mask (after validation) and recomputes the per-source view of it.
    pub fn with_mask(self, masked: BTreeMap<String, Vec<String>>) -> Self {
        let Student { mut header, scorer, .. } = self;
        header.masked = masked;
        Student::new(header, scorer)
    }

    /// Which dimensions count for a record of `source` (all, for a source the mask does not name).
    pub fn unmasked(&self, source: &str) -> Option<&[bool]> {
        self.unmasked.get(source).map(Vec::as_slice)
    }

    /// Whether the mask drops every dimension of `source`: no score of this student ranks it.
    pub fn ranks_none(&self, source: &str) -> bool {
        self.unmasked(source).is_some_and(|m| !m.iter().any(|&u| u))
    }

    /// Per-dimension scores for each text, clipped to the scale, into `out` (emptied first);
    /// no row where a judge gave no usable reply. Runs on the blocking pool (judges wait on
    /// their async API).
    pub fn score_batch(&self, texts: &[&str], out: &mut BatchScores) -> Result<()> {
        let (lo, hi) = (self.header.scale.min as f32, self.header.scale.max as f32);
        out.clear(self.header.dimensions.len());
        match &self.scorer {
            Scorer::Heads { heads, featurizer, .. } => featurizer.predict_each(texts, heads, &mut |predicted| {
                out.values.extend(predicted.iter().map(|v| v.clamp(lo, hi)));
                out.replied.push(true);
            }),
            Scorer::Judge { chat, request, runtime } => {
                let dims = request.dimensions();
                out.values.resize(texts.len() * dims.len(), 0.0);
                out.replied.resize(texts.len(), false);
                runtime.block_on(async {
                    let replies: Vec<(usize, Result<_>)> = futures::stream::iter(texts.iter().enumerate())
                        .map(|(i, text)| async move { (i, request.ask(chat, text).await) })
                        .buffer_unordered(chat.concurrency())
                        .collect()
                        .await;
                    for (i, reply) in replies {
                        match reply {
                            Ok(Judged { scores, .. }) => {
                                let row = &mut out.values[i * dims.len()..(i + 1) * dims.len()];
                                for (value, d) in row.iter_mut().zip(dims) {
                                    *value = scores[&d.id].score as f32;
                                }
                                out.replied[i] = true;
                            }
                            Err(Error::Model(message)) => tracing::warn!(%message, "judge gave no usable reply"),
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
            }
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = serde_json::to_vec(&self.header).map_err(|e| Error::json("student header", e))?;
        let mut raw = Vec::with_capacity(12 + header.len());
        raw.extend_from_slice(MAGIC);
        raw.extend_from_slice(&(header.len() as u32).to_le_bytes());
        raw.extend_from_slice(&header);
        if let Scorer::Heads { heads, idf, .. } = &self.scorer {
            for w in heads.weights().chain(idf.iter().flatten().copied()) {
                raw.extend_from_slice(&w.to_le_bytes());
            }
        }
        zstd::bulk::compress(&raw, 3).map_err(|e| Error::Student { uri: String::new(), message: e.to_string() })
    }

    /// Reads an artefact and builds its scorer (loading the featurizer's or judge's model, an
    /// `s3://` one by way of `scratch`).
    pub async fn load(storage: &Storage, scratch: &std::path::Path, uri: &str) -> Result<Self> {
        let bytes = storage.get(uri).await?;
        let bad = |message: String| Error::Student { uri: uri.into(), message };
        let raw = zstd::stream::decode_all(&bytes[..]).map_err(|e| bad(format!("not zstd: {e}")))?;
        if raw.len() < 12 || &raw[..8] != MAGIC {
            return Err(bad("not a MIRA student artefact".into()));
        }
        let header_len = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes")) as usize;
        let body_start = 12 + header_len;
        let header: StudentHeader =
            serde_json::from_slice(raw.get(12..body_start).ok_or_else(|| bad("truncated header".into()))?)
                .map_err(|e| bad(format!("header: {e}")))?;
        if header.format != FORMAT {
            return Err(bad(format!("format {:?}, this build reads {FORMAT:?}", header.format)));
        }
        let scorer = match &header.kind {
            StudentKind::Judge { model, max_record_tokens } => {
                Scorer::judge(storage, scratch, model, &header.dimensions, header.scale, *max_record_tokens).await?
            }
            StudentKind::Heads { featurizer, dim, bias, lambdas, has_idf } => {
                let n = header.dimensions.len();
                let n_weights = dim * n;
                let floats: Vec<f32> = raw[body_start..]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                let n_idf = if *has_idf { *dim } else { 0 };
                if floats.len() != n_weights + n_idf || bias.len() != n {
                    return Err(bad(format!("expected {} weights, found {}", n_weights + n_idf, floats.len())));
                }
                let idf = has_idf.then(|| floats[n_weights..].to_vec());
                let heads = RidgeHeads::new(*dim, n, &floats[..n_weights], bias.clone(), lambdas.clone());
                let built = featurize::build(storage, scratch, featurizer, idf.clone()).await?;
                if built.dim() != *dim {
                    return Err(bad(format!("featurizer has dimension {}, heads {dim}", built.dim())));
                }
                Scorer::Heads { heads, featurizer: built, idf }
            }
        };
        Ok(Student::new(header, scorer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::featurize::HashedFeaturizer;
    use crate::plan::HashedSpec;

    #[tokio::test]
    async fn a_student_of_another_format_is_refused_with_a_clear_error() {
        let spec = HashedSpec { dim_log2: 4, ..Default::default() };
        let featurizer = Arc::new(HashedFeaturizer::new(spec.clone(), None).unwrap());
        let heads = RidgeHeads::new(16, 1, &[0.5; 16], vec![3.0], vec![1.0]);
        let header = |format: &str| StudentHeader {
            format: format.into(),
            group: "g".into(),
            dimensions: vec![Dimension {
                id: "d".into(),
                name: String::new(),
                description: String::new(),
                guide: String::new(),
            }],
            scale: Scale::default(),
            masked: BTreeMap::new(),
            trained_on: 1,
            kind: StudentKind::Heads {
                featurizer: FeaturizerSpec::Hashed(spec.clone()),
                dim: 16,
                bias: vec![3.0],
                lambdas: vec![1.0],
                has_idf: false,
            },
        };
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::new(Default::default());
        for format in [FORMAT, "mira-student/v2"] {
            let scorer = Scorer::Heads { heads: heads.clone(), featurizer: featurizer.clone(), idf: None };
            let path = dir.path().join("s.student");
            std::fs::write(&path, Student::new(header(format), scorer).to_bytes().unwrap()).unwrap();
            match Student::load(&storage, &dir.path().join("scratch"), path.to_str().unwrap()).await {
                Ok(loaded) => {
                    assert_eq!(format, FORMAT, "loaded");
                    assert_eq!(loaded.header, header(FORMAT));
                    let mut scores = BatchScores::default();
                    loaded.score_batch(&["a b c"], &mut scores).unwrap();
                    assert!(scores.get(0).is_some());
                }
                Err(e) => {
                    assert_ne!(format, FORMAT, "{e}");
                    assert!(e.to_string().contains("this build reads \"mira-student/v3\""), "{e}");
                }
            }
        }
    }
}
