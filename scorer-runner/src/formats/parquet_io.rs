//! Parquet shards through Arrow: rows are rendered to JSON for text extraction (unless the reader
//! only copies rows), and kept rows are written back with the source's schema.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use arrow::array::BooleanArray;
use parquet::arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::{Batch, RawRecord, ReadOptions};
use crate::error::{Error, Result};

pub fn for_each_batch(
    uri: &str,
    path: &Path,
    options: ReadOptions,
    mut on_batch: impl FnMut(Batch) -> Result<ControlFlow<()>>,
) -> Result<()> {
    let parquet_err = |source| Error::Parquet { uri: uri.into(), source };
    let arrow_err = |source| Error::Arrow { uri: uri.into(), source };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_err)?
        .with_batch_size(options.batch_size)
        .build()
        .map_err(parquet_err)?;
    let mut next_index = 0u64;
    for batch in reader {
        let batch = batch.map_err(arrow_err)?;
        let rows = next_index..next_index + batch.num_rows() as u64;
        next_index = rows.end;
        let records = if options.parquet_as_json {
            rendered_rows(&batch, rows, options.max_record_bytes).map_err(arrow_err)?
        } else {
            rows.map(|index| RawRecord { index, bytes: Vec::new(), oversized: false }).collect()
        };
        if records.len() != batch.num_rows() {
            return Err(Error::Shard { uri: uri.into(), message: "row count differs from rendered rows".into() });
        }
        if on_batch(Batch { records, arrow: Some(batch) })?.is_break() {
            break;
        }
    }
    Ok(())
}

/// A batch's rows as JSON records, numbered from `rows`.
fn rendered_rows(
    batch: &arrow::record_batch::RecordBatch,
    rows: std::ops::Range<u64>,
    max_record_bytes: usize,
) -> std::result::Result<Vec<RawRecord>, arrow::error::ArrowError> {
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let json = writer.into_inner();
    // JSON strings escape newlines, so each row is exactly one line.
    let lines = json.split(|&b| b == b'\n').take(batch.num_rows());
    Ok(rows
        .zip(lines)
        .map(|(index, line)| {
            let oversized = line.len() > max_record_bytes;
            RawRecord { index, bytes: if oversized { Vec::new() } else { line.to_vec() }, oversized }
        })
        .collect())
}

/// A Parquet file being written; created with the schema of the first batch it sees.
pub struct ParquetSink {
    path: PathBuf,
    writer: Option<ArrowWriter<std::fs::File>>,
}

impl ParquetSink {
    pub fn new(path: &Path) -> Self {
        ParquetSink { path: path.to_path_buf(), writer: None }
    }

    pub fn write_kept(&mut self, batch: &Batch, keep: &[bool]) -> Result<()> {
        let uri = self.path.to_string_lossy().into_owned();
        let rows = batch
            .arrow
            .as_ref()
            .ok_or_else(|| Error::Shard { uri: uri.clone(), message: "parquet output needs parquet input".into() })?;
        if self.writer.is_none() {
            let file = std::fs::File::create(&self.path).map_err(|e| Error::io(&self.path, e))?;
            let props = WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::default())).build();
            let writer = ArrowWriter::try_new(file, rows.schema(), Some(props))
                .map_err(|source| Error::Parquet { uri: uri.clone(), source })?;
            self.writer = Some(writer);
        }
        let kept = arrow::compute::filter_record_batch(rows, &BooleanArray::from(keep.to_vec()))
            .map_err(|source| Error::Arrow { uri: uri.clone(), source })?;
        if let Some(writer) = self.writer.as_mut() {
            writer.write(&kept).map_err(|source| Error::Parquet { uri, source })?;
        }
        Ok(())
    }

    /// Closes the file; a shard that had no rows at all produces no file.
    pub fn finish(self) -> Result<()> {
        if let Some(writer) = self.writer {
            let uri = self.path.to_string_lossy().into_owned();
            writer.close().map_err(|source| Error::Parquet { uri, source })?;
        }
        Ok(())
    }
}
