//! Synthetic corpora with a known quality signal, for tests, examples and benchmarks.
//!
//! Each record's hidden quality `q` (0..=4) sets how many of its sentences carry "careful"
//! vocabulary, so a text student can learn it; teacher labels are then a known function of `q`
//! plus noise (dimension `signal`) and pure noise (dimension `noise`), which reliability masking
//! must catch.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use scorer_runner::formats::ShardWriter;
use scorer_runner::plan::Format;

/// What a source's records look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Prose,
    Code,
    Math,
    /// Chat/agent traces in a `messages` array.
    Agent,
}

#[derive(Clone, Debug)]
pub struct SynthSource {
    pub name: String,
    pub kind: Kind,
    pub format: Format,
    pub shards: usize,
    pub records_per_shard: usize,
    /// Every n-th line is malformed (invalid JSON, missing text, invalid UTF-8, empty, in turn).
    pub malformed_every: Option<usize>,
}

/// One generated record as the tests know it.
#[derive(Clone, Debug)]
pub struct Generated {
    pub source: String,
    pub id: String,
    pub text: String,
    pub quality: u32,
}

const PROSE: &[&str] = &[
    "the", "river", "city", "market", "people", "walked", "history", "winter", "garden", "story", "light", "morning",
    "village", "music", "bridge",
];
const CODE: &[&str] = &[
    "fn", "let", "mut", "return", "self", "impl", "struct", "match", "Vec", "usize", "iter", "map", "Some", "None",
    "Ok",
];
const MATH: &[&str] = &[
    "let",
    "x",
    "prove",
    "integer",
    "prime",
    "sum",
    "equation",
    "lemma",
    "therefore",
    "n",
    "theorem",
    "divides",
    "mod",
    "2",
    "3",
];
const CAREFUL: &[&str] = &[
    "precisely",
    "because",
    "verified",
    "explained",
    "rigorous",
    "consistent",
    "documented",
    "justified",
    "correctly",
    "clearly",
];
const SLOPPY: &[&str] = &["stuff", "whatever", "lol", "thing", "idk", "random", "junk", "meh", "asdf", "etc"];

fn sentence(rng: &mut ChaCha8Rng, vocab: &[&str], careful: bool) -> String {
    let n = rng.gen_range(6..14);
    let mut words: Vec<&str> = (0..n).map(|_| vocab[rng.gen_range(0..vocab.len())]).collect();
    let extra = if careful { CAREFUL } else { SLOPPY };
    for _ in 0..2 {
        let at = rng.gen_range(0..=words.len());
        words.insert(at, extra[rng.gen_range(0..extra.len())]);
    }
    words.join(" ")
}

/// A record's text (or messages) for a quality level.
fn body(rng: &mut ChaCha8Rng, kind: Kind, quality: u32) -> (String, serde_json::Value) {
    let sentences = rng.gen_range(4..9);
    let vocab = match kind {
        Kind::Prose | Kind::Agent => PROSE,
        Kind::Code => CODE,
        Kind::Math => MATH,
    };
    let parts: Vec<String> = (0..sentences).map(|i| sentence(rng, vocab, i < quality * sentences / 4)).collect();
    match kind {
        Kind::Agent => {
            let messages: Vec<serde_json::Value> = parts
                .iter()
                .enumerate()
                .map(|(i, p)| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": p}))
                .collect();
            let text = scorer_runner::records::render_messages(&messages);
            (text, json!({ "messages": messages }))
        }
        _ => {
            let text = parts.join(". ");
            (text.clone(), json!({ "text": text }))
        }
    }
}

fn malformed_line(n: usize) -> Vec<u8> {
    match n % 4 {
        0 => b"{\"text\": \"unterminated".to_vec(),
        1 => b"{\"body\": \"no text field\"}".to_vec(),
        2 => b"{\"text\": \"bad \xff\xfe bytes\"}".to_vec(),
        _ => b"{\"text\": \"   \"}".to_vec(),
    }
}

/// Writes a source's shards under `dir/<name>/` and returns the good records.
pub fn write_source(dir: &Path, source: &SynthSource, seed: u64) -> std::io::Result<Vec<Generated>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ xxhash_rust::xxh3::xxh3_64(source.name.as_bytes()));
    let root = dir.join(&source.name);
    std::fs::create_dir_all(&root)?;
    let mut out = Vec::new();
    let mut line_no = 0usize;
    for s in 0..source.shards {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for r in 0..source.records_per_shard {
            line_no += 1;
            if source.malformed_every.is_some_and(|m| line_no.is_multiple_of(m)) && source.format != Format::Parquet {
                lines.push(malformed_line(line_no / source.malformed_every.unwrap_or(1)));
                continue;
            }
            let quality = rng.gen_range(0..=4);
            let (text, mut value) = body(&mut rng, source.kind, quality);
            let id = format!("{}-{s}-{r}", source.name);
            value["id"] = json!(id);
            value["meta"] = json!({"shard": s});
            lines.push(serde_json::to_vec(&value).expect("json"));
            out.push(Generated { source: source.name.clone(), id, text, quality });
        }
        write_shard(&root.join(format!("part-{s:05}.{}", source.format.extension())), source.format, &lines)?;
    }
    Ok(out)
}

/// Writes JSON lines as a shard of the given format (Parquet: one string column per top-level
/// field, via Arrow's JSON reader).
pub fn write_shard(path: &Path, format: Format, lines: &[Vec<u8>]) -> std::io::Result<()> {
    if format == Format::Parquet {
        return write_parquet(std::fs::File::create(path)?, lines);
    }
    let err = |e: scorer_runner::Error| std::io::Error::other(e.to_string());
    let mut writer = ShardWriter::create(path, format).map_err(err)?;
    for line in lines {
        writer.write_line(line).map_err(err)?;
    }
    writer.finish().map_err(err)
}

fn write_parquet(file: std::fs::File, lines: &[Vec<u8>]) -> std::io::Result<()> {
    let err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let joined: Vec<u8> = lines.iter().flat_map(|l| l.iter().copied().chain(std::iter::once(b'\n'))).collect();
    let (schema, _) =
        arrow::json::reader::infer_json_schema(std::io::Cursor::new(&joined), None).map_err(|e| err(&e))?;
    let schema = std::sync::Arc::new(schema);
    let reader =
        arrow::json::ReaderBuilder::new(schema.clone()).build(std::io::Cursor::new(joined)).map_err(|e| err(&e))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(|e| err(&e))?;
    for batch in reader {
        writer.write(&batch.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    writer.close().map_err(|e| err(&e))?;
    Ok(())
}

/// Teacher labels for a sample of records: `signal` tracks quality (1 + q, off by one 15% of the
/// time), `noise` is uniform on 1..=5. Written as one JSONL file; returns its path.
pub fn write_labels(path: &Path, records: &[Generated], every: usize, seed: u64) -> std::io::Result<PathBuf> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for record in records.iter().step_by(every.max(1)) {
        let jitter: i32 = if rng.gen_bool(0.15) {
            if rng.gen_bool(0.5) {
                1
            } else {
                -1
            }
        } else {
            0
        };
        let signal = (1 + record.quality as i32 + jitter).clamp(1, 5);
        let label = json!({
            "id": record.id, "source": record.source, "text": record.text,
            "scores": {"signal": signal, "noise": rng.gen_range(1..=5)},
        });
        serde_json::to_writer(&mut file, &label)?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(path.to_path_buf())
}
