//! Shard formats: JSONL (plain, gzip, zstd) and Parquet, read in bounded batches and written back
//! record-for-record.
//!
//! Every format is read as a sequence of [`Batch`]es of raw records. A JSONL record is its line's
//! bytes as stored; a Parquet row is rendered to one JSON object so that text extraction is the
//! same code for every format, while the batch also keeps the Arrow rows so kept rows are written
//! back row-identical (a reader that only copies rows, `select`, skips the rendering). Memory is
//! bounded by the batch size and the longest accepted record, never by the shard's size.

mod jsonl;
mod parquet_io;
pub mod scores;

use std::io::{Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::plan::{Format, ReadLimits};

pub use jsonl::JsonlLines;

impl Format {
    /// The format named by a shard's extension (`.jsonl`/`.json`/`.ndjson`, `.gz`, `.zst`,
    /// `.parquet`), or `None` for files that are not shards.
    pub fn from_uri(uri: &str) -> Option<Format> {
        let name = crate::storage::file_name(uri).to_ascii_lowercase();
        let plain = |stem: &str| stem.ends_with(".jsonl") || stem.ends_with(".ndjson") || stem.ends_with(".json");
        if name.ends_with(".parquet") {
            Some(Format::Parquet)
        } else if let Some(stem) = name.strip_suffix(".gz") {
            plain(stem).then_some(Format::JsonlGz)
        } else if let Some(stem) = name.strip_suffix(".zst").or_else(|| name.strip_suffix(".zstd")) {
            plain(stem).then_some(Format::JsonlZst)
        } else {
            plain(&name).then_some(Format::Jsonl)
        }
    }
}

/// Limits applied while reading.
#[derive(Clone, Copy, Debug)]
pub struct ReadOptions {
    /// Records per batch.
    pub batch_size: usize,
    /// Longer records are skipped (and counted as `oversized`) without being held in memory.
    pub max_record_bytes: usize,
    /// Parquet rows are rendered as JSON records; a reader that needs only each row's index and
    /// its Arrow batch (`select`) turns this off and gets records with no bytes.
    pub parquet_as_json: bool,
}

impl From<ReadLimits> for ReadOptions {
    fn from(l: ReadLimits) -> Self {
        ReadOptions { batch_size: l.batch_size.max(1), max_record_bytes: l.max_record_bytes, parquet_as_json: true }
    }
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { batch_size: 1024, max_record_bytes: 16 << 20, parquet_as_json: true }
    }
}

/// One raw record: where it is in its shard and its bytes (a JSON object, not yet parsed).
#[derive(Debug)]
pub struct RawRecord {
    /// Zero-based line (JSONL) or row (Parquet) number in the shard; stable across reruns.
    pub index: u64,
    /// The record's bytes; empty when `oversized`, or for Parquet rows read with
    /// `parquet_as_json` off.
    pub bytes: Vec<u8>,
    /// The record exceeded `max_record_bytes` and was not read.
    pub oversized: bool,
}

/// A batch of records; Parquet batches keep their Arrow rows (one per record, same order).
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<RawRecord>,
    pub arrow: Option<RecordBatch>,
}

/// Where a shard's bytes come from once fetched: a stream (JSONL) or a local file (Parquet).
pub enum ShardInput {
    Stream(Box<dyn Read + Send>),
    File(PathBuf),
}

/// Reads the batches of a shard, in order, calling `on_batch` for each until it breaks.
pub fn for_each_batch(
    uri: &str,
    input: ShardInput,
    format: Format,
    options: ReadOptions,
    mut on_batch: impl FnMut(Batch) -> Result<ControlFlow<()>>,
) -> Result<()> {
    if format == Format::Parquet {
        return match input {
            ShardInput::File(path) => parquet_io::for_each_batch(uri, &path, options, on_batch),
            ShardInput::Stream(_) => {
                Err(Error::Shard { uri: uri.into(), message: "parquet needs a seekable local file".into() })
            }
        };
    }
    let raw: Box<dyn Read + Send> = match input {
        ShardInput::Stream(stream) => stream,
        ShardInput::File(path) => Box::new(std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?),
    };
    let mut lines = JsonlLines::new(decoder(uri, format, raw)?, options);
    while let Some(batch) = lines.next_batch(uri)? {
        if on_batch(batch)?.is_break() {
            break;
        }
    }
    Ok(())
}

/// Wraps a compressed stream in its decoder.
pub fn decoder(uri: &str, format: Format, raw: Box<dyn Read + Send>) -> Result<Box<dyn Read + Send>> {
    Ok(match format {
        Format::Jsonl => raw,
        Format::JsonlGz => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Format::JsonlZst => Box::new(
            zstd::stream::read::Decoder::new(raw)
                .map_err(|e| Error::Shard { uri: uri.into(), message: format!("zstd: {e}") })?,
        ),
        Format::Parquet => {
            return Err(Error::Shard { uri: uri.into(), message: "parquet is not a byte stream".into() })
        }
    })
}

/// Writes records into a new shard of one format. JSONL records are written byte-identical, one
/// per line; Parquet rows are written row-identical with the source's schema.
// One per output shard being written: boxing the larger variant would save nothing worth a
// pointer chase per record.
#[allow(clippy::large_enum_variant)]
pub enum ShardWriter {
    Jsonl(Box<dyn FinishWrite>),
    Parquet(parquet_io::ParquetSink),
}

/// A byte sink that must be finished (compressors write their trailer).
pub trait FinishWrite: Write + Send {
    fn finish_box(self: Box<Self>) -> std::io::Result<()>;
}

/// Writers finish into scratch files, which are not synced to disk: the storage they are
/// uploaded to makes them durable (see `storage::local::put_file`).
impl FinishWrite for std::fs::File {
    fn finish_box(self: Box<Self>) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: FinishWrite> FinishWrite for std::io::BufWriter<W> {
    fn finish_box(self: Box<Self>) -> std::io::Result<()> {
        Box::new(self.into_inner().map_err(|e| e.into_error())?).finish_box()
    }
}

impl<W: FinishWrite> FinishWrite for flate2::write::GzEncoder<W> {
    fn finish_box(self: Box<Self>) -> std::io::Result<()> {
        Box::new((*self).finish()?).finish_box()
    }
}

impl<W: FinishWrite> FinishWrite for zstd::stream::write::Encoder<'static, W> {
    fn finish_box(self: Box<Self>) -> std::io::Result<()> {
        Box::new((*self).finish()?).finish_box()
    }
}

impl ShardWriter {
    /// A writer into the local file `path` (uploaded by the caller once finished).
    pub fn create(path: &Path, format: Format) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        // The buffer sits in front of the compressor: handing it each line on its own cost more
        // in per-call overhead than the compression itself. Compressors write in large chunks.
        fn buffered<W: Write>(sink: W) -> std::io::BufWriter<W> {
            std::io::BufWriter::with_capacity(1 << 20, sink)
        }
        Ok(match format {
            Format::Jsonl => ShardWriter::Jsonl(Box::new(buffered(file))),
            Format::JsonlGz => ShardWriter::Jsonl(Box::new(buffered(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::default(),
            )))),
            Format::JsonlZst => ShardWriter::Jsonl(Box::new(buffered(
                zstd::stream::write::Encoder::new(file, zstd::DEFAULT_COMPRESSION_LEVEL)
                    .map_err(|e| Error::io(path, e))?,
            ))),
            Format::Parquet => ShardWriter::Parquet(parquet_io::ParquetSink::new(path)),
        })
    }

    /// Appends the records of `batch` whose `keep` flag is set.
    pub fn write_kept(&mut self, batch: &Batch, keep: &[bool]) -> Result<()> {
        debug_assert_eq!(batch.records.len(), keep.len());
        match self {
            ShardWriter::Jsonl(out) => {
                for (record, _) in batch.records.iter().zip(keep).filter(|(_, k)| **k) {
                    out.write_all(&record.bytes)
                        .and_then(|_| out.write_all(b"\n"))
                        .map_err(|e| Error::io("shard", e))?;
                }
                Ok(())
            }
            ShardWriter::Parquet(sink) => sink.write_kept(batch, keep),
        }
    }

    /// Appends one JSON line (JSONL writers only; used for labels and SFT exports).
    pub fn write_line(&mut self, line: &[u8]) -> Result<()> {
        match self {
            ShardWriter::Jsonl(out) => {
                out.write_all(line).and_then(|_| out.write_all(b"\n")).map_err(|e| Error::io("shard", e))
            }
            ShardWriter::Parquet(_) => Err(Error::Plan("JSON lines cannot be written to a parquet shard".into())),
        }
    }

    pub fn finish(self) -> Result<()> {
        match self {
            ShardWriter::Jsonl(out) => out.finish_box().map_err(|e| Error::io("shard", e)),
            ShardWriter::Parquet(sink) => sink.finish(),
        }
    }
}
