//! Sampling records of a source for steps that look at a sample rather than the whole corpus
//! (cluster, discover, label). A sample is uniform: up to [`MAX_SAMPLED_SHARDS`] shards are
//! chosen by a seeded hash of their URI (all of them, for most sources), every record of those
//! is read, and the `n` records with the smallest seeded hash of their place (shard and index)
//! are kept (bottom-k). The place, not the id: ids are content hashes where a source names none,
//! and a text that occurs a hundred times must be drawn as often as a hundred texts would be.
//! A malformed record drawn is counted as skipped in the sample's place, so a sample of `n` is
//! `n` records and skips together, as it was when samples were read from the start.
//! Reading shards from their start, or the first shards of a listing, would follow whatever
//! order the data was written in (by crawl date, by repository, by difficulty). The same plan
//! and seed always yield the same sample; another seed, another one.

use std::ops::ControlFlow;

use futures::StreamExt;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{blocking, list_shards, Context, Shard};
use crate::bottom_k::BottomK;
use crate::error::{Error, Result};
use crate::formats::for_each_batch;
use crate::plan::{skip_reasons, SkipCounts};
use crate::plan::{ReadLimits, Source};
use crate::records::{extract, Malformed, TextRecord};

/// A place drawn: its record, or why it could not be read (with the shard and index).
type Drawn = std::result::Result<TextRecord<'static>, (Malformed, String, u64)>;

/// At most this many shards of a source are read for a sample: a source of more shards is
/// sampled from a uniform choice of them, which bounds the read at this many shards' records.
pub const MAX_SAMPLED_SHARDS: usize = 64;

/// A source's sample and what reading it found.
pub struct Sample {
    /// Every shard of the source (not only those read).
    pub shards: Vec<Shard>,
    /// The sample, in the order of its records' hashes.
    pub records: Vec<TextRecord<'static>>,
    pub skipped: SkipCounts,
}

pub async fn sample_source(ctx: &Context, source: &Source, n: usize, read: ReadLimits, seed: u64) -> Result<Sample> {
    let shards = list_shards(&ctx.storage, source).await?;
    let mut picked: Vec<&Shard> = shards.iter().collect();
    picked.sort_by_key(|s| (xxh3_64_with_seed(s.uri.as_bytes(), seed), s.uri.clone()));
    picked.truncate(MAX_SAMPLED_SHARDS);
    // Each shard's part is merged as it arrives: memory holds the parts in flight and the
    // sample, not every shard's part (up to `n` records each) at once.
    let mut parts = futures::stream::iter(picked)
        .map(|shard| sample_shard(ctx, source, shard.clone(), n, read, seed))
        .buffer_unordered(ctx.worker.parallelism);
    let mut sample = BottomK::new(n);
    while let Some(part) = parts.next().await {
        sample.merge(part?);
    }
    drop(parts);
    let mut records = Vec::with_capacity(n);
    let mut skipped = SkipCounts::default();
    for drawn in sample.into_sorted() {
        match drawn {
            Ok(record) => records.push(record),
            Err((reason, shard, index)) => skipped.add(reason, &shard, index),
        }
    }
    Ok(Sample { shards, records, skipped })
}

/// The `n` places of one shard with the smallest seeded hash of their index.
async fn sample_shard(
    ctx: &Context,
    source: &Source,
    shard: Shard,
    n: usize,
    read: ReadLimits,
    seed: u64,
) -> Result<BottomK<Drawn>> {
    let (input, _guard) = ctx.open_shard(&shard.uri, shard.format).await?;
    let (text, progress) = (source.text.clone(), ctx.progress.clone());
    blocking(move || {
        let mut sample = BottomK::new(n);
        let shard_seed = xxh3_64_with_seed(shard.uri.as_bytes(), seed);
        for_each_batch(&shard.uri, input, shard.format, read.into(), |batch| {
            progress.read(&batch);
            for raw in &batch.records {
                let key = xxh3_64_with_seed(&raw.index.to_le_bytes(), shard_seed);
                if !sample.would_keep(key) {
                    continue;
                }
                let drawn =
                    extract(raw, &text).map(TextRecord::into_owned).map_err(|r| (r, shard.uri.clone(), raw.index));
                sample.offer(key, drawn);
            }
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(sample)
    })
    .await
}

/// A sample of `n` records from a group's sources, an equal share from each, tagged with their
/// source's name.
pub async fn sample_group(
    ctx: &Context,
    sources: &[Source],
    n: usize,
    read: ReadLimits,
    seed: u64,
) -> Result<(Vec<(String, TextRecord<'static>)>, SkipCounts)> {
    let share = n.div_ceil(sources.len().max(1));
    let mut records = Vec::new();
    let mut skipped = SkipCounts::default();
    for source in sources {
        let sample = sample_source(ctx, source, share, read, seed).await?;
        if sample.records.is_empty() && share > 0 {
            // Every record drawn was skipped: the source's text is not where the spec says, and a
            // teacher given nothing would only be blamed for proposing nothing.
            return Err(Error::Shard {
                uri: source.uri.clone(),
                message: format!(
                    "source {:?}: none of the {} records sampled is usable ({}); do text.field or \
                     text.messagesField name the records' text, and is the format right?",
                    source.name,
                    sample.skipped.total(),
                    skip_reasons(&sample.skipped.counts)
                ),
            });
        }
        records.extend(sample.records.into_iter().map(|r| (source.name.clone(), r)));
        skipped.merge(&sample.skipped);
    }
    records.truncate(n);
    Ok((records, skipped))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::TextSpec;

    /// Word counts of texts, averaged.
    fn mean(texts: &[&str]) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for text in texts {
            for word in text.split_whitespace() {
                *out.entry(word.to_string()).or_default() += 1.0 / texts.len() as f64;
            }
        }
        out
    }

    fn cosine(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> f64 {
        let dot: f64 = a.iter().map(|(k, v)| v * b.get(k).unwrap_or(&0.0)).sum();
        let norm = |m: &BTreeMap<String, f64>| m.values().map(|v| v * v).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    }

    /// Sixteen shards, each on its own topic and of its own length (as a corpus written by crawl
    /// date or by repository is), every text seen many times: a sample must stand for all of
    /// them, not the first shards, nor the texts whose hash happens to be small.
    #[tokio::test]
    async fn a_sample_stands_for_every_shard_and_follows_its_seed() {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("corpus");
        std::fs::create_dir_all(&corpus).unwrap();
        let mut all = Vec::new();
        for s in 0..16 {
            let mut lines = String::new();
            for r in 0..(200 + 40 * s) {
                let text = format!("common words topic{s} topic{s} detail{} record", r % 7);
                lines.push_str(&serde_json::json!({"id": format!("s{s}-r{r}"), "text": text}).to_string());
                lines.push('\n');
                all.push(text);
            }
            std::fs::write(corpus.join(format!("part-{s:02}.jsonl")), lines).unwrap();
        }
        let ctx = Context::new(Default::default(), crate::units::WorkerConfig::from_env(), dir.path().join("scratch"));
        let source = Source {
            name: "web".into(),
            uri: corpus.to_string_lossy().into(),
            format: None,
            text: TextSpec::default(),
            shard_fraction: None,
        };
        let full = mean(&all.iter().map(String::as_str).collect::<Vec<_>>());
        let ids = |sample: &Sample| sample.records.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        let sample = sample_source(&ctx, &source, 500, ReadLimits::default(), 7).await.unwrap();
        assert_eq!((sample.records.len(), sample.shards.len()), (500, 16));
        let texts: Vec<&str> = sample.records.iter().map(|r| &*r.text).collect();
        let similarity = cosine(&mean(&texts), &full);
        assert!(similarity > 0.99, "sample mean vs full mean: cosine {similarity}");
        let again = sample_source(&ctx, &source, 500, ReadLimits::default(), 7).await.unwrap();
        assert_eq!(ids(&again), ids(&sample), "the same seed, the same sample");
        let other = sample_source(&ctx, &source, 500, ReadLimits::default(), 8).await.unwrap();
        assert_ne!(ids(&other), ids(&sample), "another seed, another sample");

        // A text field that names nothing: the sample says so, not the teacher.
        let wrong = Source { text: TextSpec { field: Some("body".into()), ..TextSpec::default() }, ..source };
        let error = sample_group(&ctx, &[wrong], 100, ReadLimits::default(), 7).await.unwrap_err().to_string();
        assert!(
            error.contains("source \"web\": none of the 100 records sampled is usable (missing_text 100)"),
            "{error}"
        );
    }
}
