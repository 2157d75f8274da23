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

/// The writer holds a row group's encoded columns in memory until the group is flushed; rows of
/// long texts would otherwise reach the default million rows per group only after gigabytes.
const ROW_GROUP_BYTES: usize = 64 << 20;

/// A Parquet file being written; created with the schema of the first batch it sees.
pub struct ParquetSink {
    path: PathBuf,
    writer: Option<ArrowWriter<std::fs::File>>,
    row_group_bytes: usize,
}

impl ParquetSink {
    pub fn new(path: &Path) -> Self {
        ParquetSink { path: path.to_path_buf(), writer: None, row_group_bytes: ROW_GROUP_BYTES }
    }

    pub fn write_kept(&mut self, batch: &Batch, keep: &[bool]) -> Result<()> {
        let uri = self.path.to_string_lossy().into_owned();
        let rows = batch
            .arrow
            .as_ref()
            .ok_or_else(|| Error::Shard { uri: uri.clone(), message: "parquet output needs parquet input".into() })?;
        if self.writer.is_none() {
            let file = std::fs::File::create(&self.path).map_err(|e| Error::io(&self.path, e))?;
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .set_max_row_group_bytes(Some(self.row_group_bytes))
                .build();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn kept_rows_are_flushed_in_row_groups_bounded_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        // Hex digits of hashes, which compress only to half: the limit is on encoded bytes.
        let text = |i: u64| {
            (0..250u64)
                .map(|k| format!("{:016x}", xxhash_rust::xxh3::xxh3_64_with_seed(&k.to_le_bytes(), i)))
                .collect::<String>()
        };
        let texts: Vec<String> = (0..64).map(text).collect();
        let mut sink = ParquetSink { row_group_bytes: 32 << 10, ..ParquetSink::new(&path) };
        // Sixteen batches of four rows (16 KB of text, about 8 KB encoded, each): without the
        // limit they would make one row group.
        for four in texts.chunks(4) {
            let rows = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(four.to_vec()))]).unwrap();
            let batch = Batch { records: Vec::new(), arrow: Some(rows) };
            sink.write_kept(&batch, &[true; 4]).unwrap();
        }
        sink.finish().unwrap();

        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let groups = reader.metadata().num_row_groups();
        assert!((3..16).contains(&groups), "{groups} row groups for about 128 KB encoded");
        let mut read = Vec::new();
        for_each_batch("kept", &path, ReadOptions::default(), |b| {
            let column = b.arrow.unwrap();
            let column = column.column(0).as_any().downcast_ref::<StringArray>().unwrap().clone();
            read.extend(column.iter().map(|t| t.unwrap().to_string()));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        assert_eq!(read, texts, "every row, in order");
    }
}
