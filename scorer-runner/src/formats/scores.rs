//! Score shards, the pipeline's own format between `score` and `select`: one Parquet file per
//! input shard, a row per scored record, in the shard's record order. Columns: `index` (the
//! record's line or row number in its shard), `id`, `tokens`, `aggregate`, `draw` (the key
//! of the threshold's tie draw, a hash of the id), and one
//! `score_<dimension id>` per dimension of the group's student. The group and source are in the
//! file's path, Hive-style (`group=<name>/source=<name>/`), where dataset readers find them as
//! columns, and in the footer's key-value metadata (`mira.group`, `mira.source`).
//!
//! Parquet rather than JSON lines because the rows are numbers and a short id: encoding them
//! as JSON text and compressing that text cost `score` a seventh of its instructions, while typed
//! columns are written with no text formatting at all, are smaller, and `threshold` and `select`
//! read back only the four columns they need. They are also what a data team queries the scores with
//! (DuckDB, Polars, pandas) to look at a run's distribution per source or per dimension.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, AsArray, Float32Array, Float32Builder, StringBuilder, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt64Type};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};

/// Rows buffered before they go to the Parquet writer as one Arrow batch.
const BATCH_ROWS: usize = 8192;
/// Rows per row group: the writer holds one row group's encoded columns in memory (a few MiB).
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The columns `select` reads back, named once for the writer's schema and the reader's
/// projection.
const INDEX: &str = "index";
const TOKENS: &str = "tokens";
const AGGREGATE: &str = "aggregate";
/// The record's tie-draw key ([`crate::tie_draw::draw_key`] of its id).
const DRAW: &str = "draw";

/// The column of one dimension's scores.
fn dimension_column(id: &str) -> String {
    format!("score_{id}")
}

/// Writes a score shard to a local file, row by row.
pub struct ScoreShardWriter {
    uri: String,
    writer: ArrowWriter<std::fs::File>,
    schema: SchemaRef,
    index: UInt64Builder,
    id: StringBuilder,
    tokens: UInt64Builder,
    aggregate: Float32Builder,
    draw: UInt64Builder,
    scores: Vec<Float32Builder>,
}

impl ScoreShardWriter {
    /// A writer for the records of one source of a group, scored on `dimensions` (ids, in the
    /// student's order).
    pub fn create(path: &Path, group: &str, source: &str, dimensions: &[&str]) -> Result<Self> {
        let uri = path.to_string_lossy().into_owned();
        let mut fields = vec![
            Field::new(INDEX, DataType::UInt64, false),
            Field::new("id", DataType::Utf8, false),
            Field::new(TOKENS, DataType::UInt64, false),
            // NaN when no dimension counted.
            Field::new(AGGREGATE, DataType::Float32, false),
            Field::new(DRAW, DataType::UInt64, false),
        ];
        fields.extend(dimensions.iter().map(|d| Field::new(dimension_column(d), DataType::Float32, false)));
        let schema = Arc::new(Schema::new(fields));
        let column = |name: &str| ColumnPath::from(name);
        // Only the record numbers and tokens are compressed or keep statistics. Ids are random
        // digits, draw keys random integers and
        // scores random floats: a dictionary only costs time there, and so does compression.
        // Content-hash ids (hex digits) compress at most to half, for 3-4 % of the step's
        // instructions. Zstd took a tenth off a fifteen-dimension shard's bytes for 7 % of the
        // step's instructions (byte-stream-split floats first: 14 % for 4.4 %); score shards are
        // intermediate, and the step's CPU is the cost that grows with the corpus. Scores in
        // record order span the whole scale in every row group and page, so minima and maxima
        // would prune nothing. The record numbers rise by one, which delta encoding stores in a
        // few bits.
        let metadata = [("mira.group", group), ("mira.source", source)]
            .map(|(key, value)| KeyValue::new(key.to_string(), value.to_string()));
        let zstd = Compression::ZSTD(ZstdLevel::try_new(1).expect("level 1 is valid"));
        let props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_dictionary_enabled(false)
            .set_column_encoding(column(INDEX), Encoding::DELTA_BINARY_PACKED)
            .set_column_compression(column(INDEX), zstd)
            .set_column_statistics_enabled(column(INDEX), EnabledStatistics::Page)
            .set_column_compression(column(TOKENS), zstd)
            .set_column_statistics_enabled(column(TOKENS), EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_key_value_metadata(Some(metadata.to_vec()))
            .build();
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|source| Error::Parquet { uri: uri.clone(), source })?;
        Ok(ScoreShardWriter {
            uri,
            writer,
            schema,
            index: UInt64Builder::with_capacity(BATCH_ROWS),
            id: StringBuilder::with_capacity(BATCH_ROWS, 32 * BATCH_ROWS),
            tokens: UInt64Builder::with_capacity(BATCH_ROWS),
            aggregate: Float32Builder::with_capacity(BATCH_ROWS),
            draw: UInt64Builder::with_capacity(BATCH_ROWS),
            scores: dimensions.iter().map(|_| Float32Builder::with_capacity(BATCH_ROWS)).collect(),
        })
    }

    /// Appends one record's row (`scores` has one value per dimension) and returns its draw key.
    pub fn push(&mut self, index: u64, id: &str, tokens: u64, aggregate: f32, scores: &[f32]) -> Result<u64> {
        if scores.len() != self.scores.len() {
            return Err(Error::Shard {
                uri: self.uri.clone(),
                message: format!("{} scores for {} dimensions", scores.len(), self.scores.len()),
            });
        }
        self.index.append_value(index);
        self.id.append_value(id);
        self.tokens.append_value(tokens);
        self.aggregate.append_value(aggregate);
        let draw = crate::tie_draw::draw_key(id);
        self.draw.append_value(draw);
        for (column, &score) in self.scores.iter_mut().zip(scores) {
            column.append_value(score);
        }
        if self.index.len() == BATCH_ROWS {
            self.flush()?;
        }
        Ok(draw)
    }

    /// Hands the buffered rows to the Parquet writer.
    fn flush(&mut self) -> Result<()> {
        let rows = self.index.len();
        if rows == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.index.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.tokens.finish()),
            Arc::new(self.aggregate.finish()),
            Arc::new(self.draw.finish()),
        ];
        columns.extend(self.scores.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|source| Error::Arrow { uri: self.uri.clone(), source })?;
        self.writer.write(&batch).map_err(|source| Error::Parquet { uri: self.uri.clone(), source })
    }

    /// Writes the buffered rows and the footer. A shard with no rows is still a valid file.
    /// Not synced to disk: the file is scratch, made durable (or not) by the storage it is
    /// uploaded to. Syncing it here held a core idle for a disk flush at the end of every unit.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
        self.writer.close().map(drop).map_err(|source| Error::Parquet { uri: self.uri.clone(), source })
    }
}

/// What `threshold` and `select` need of a scored record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreKey {
    pub index: u64,
    pub tokens: u64,
    pub aggregate: f32,
    pub draw: u64,
}

/// A batch's key columns: record number, tokens, aggregate, draw key.
type KeyColumns = (UInt64Array, UInt64Array, Float32Array, UInt64Array);

/// The [`ScoreKey`]s of a score shard in a local file, in order; the other columns are not read.
pub struct ScoreKeys {
    uri: String,
    reader: ParquetRecordBatchReader,
    /// The current batch's columns, and the next row in it.
    columns: Option<KeyColumns>,
    row: usize,
}

impl ScoreKeys {
    /// `uri` names the shard in errors.
    pub fn open(uri: &str, path: &Path) -> Result<Self> {
        let parquet_err = |source| Error::Parquet { uri: uri.into(), source };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_err)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), [INDEX, TOKENS, AGGREGATE, DRAW]);
        let reader = builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(parquet_err)?;
        Ok(ScoreKeys { uri: uri.into(), reader, columns: None, row: 0 })
    }

    /// The key columns of a batch, or which one is missing or mistyped.
    fn columns(&self, batch: &RecordBatch) -> Result<KeyColumns> {
        let bad = |name: &str| Error::Shard {
            uri: self.uri.clone(),
            message: format!("not a score shard: no {name:?} column of the right type"),
        };
        let column = |name: &str| batch.column_by_name(name).ok_or_else(|| bad(name));
        Ok((
            column(INDEX)?.as_primitive_opt::<UInt64Type>().ok_or_else(|| bad(INDEX))?.clone(),
            column(TOKENS)?.as_primitive_opt::<UInt64Type>().ok_or_else(|| bad(TOKENS))?.clone(),
            column(AGGREGATE)?.as_primitive_opt::<Float32Type>().ok_or_else(|| bad(AGGREGATE))?.clone(),
            column(DRAW)?.as_primitive_opt::<UInt64Type>().ok_or_else(|| bad(DRAW))?.clone(),
        ))
    }
}

impl Iterator for ScoreKeys {
    type Item = Result<ScoreKey>;

    fn next(&mut self) -> Option<Result<ScoreKey>> {
        loop {
            if let Some((index, tokens, aggregate, draw)) =
                self.columns.as_ref().filter(|(index, ..)| self.row < index.len())
            {
                let row = self.row;
                self.row += 1;
                return Some(Ok(ScoreKey {
                    index: index.value(row),
                    tokens: tokens.value(row),
                    aggregate: aggregate.value(row),
                    draw: draw.value(row),
                }));
            }
            let batch = match self.reader.next()? {
                Ok(batch) => batch,
                Err(source) => return Some(Err(Error::Arrow { uri: self.uri.clone(), source })),
            };
            match self.columns(&batch) {
                Ok(columns) => (self.columns, self.row) = (Some(columns), 0),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_across_batches_and_row_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        let mut writer = ScoreShardWriter::create(&path, "prose", "web", &["clarity", "depth"]).unwrap();
        let n = ROW_GROUP_ROWS + BATCH_ROWS + 5;
        let row =
            |i: usize| (3 * i as u64, format!("id-{i}"), (i % 977) as u64, i as f32 / 7.0, [i as f32, -(i as f32)]);
        for i in 0..n {
            let (index, id, tokens, aggregate, scores) = row(i);
            writer.push(index, &id, tokens, aggregate, &scores).unwrap();
        }
        assert!(writer.push(0, "x", 1, 1.0, &[1.0]).is_err(), "one score for two dimensions");
        writer.finish().unwrap();

        let keys: Vec<ScoreKey> = ScoreKeys::open("s", &path).unwrap().collect::<Result<_>>().unwrap();
        assert_eq!(keys.len(), n);
        for (i, key) in keys.iter().enumerate() {
            let (index, id, tokens, aggregate, _) = row(i);
            assert_eq!(*key, ScoreKey { index, tokens, aggregate, draw: crate::tie_draw::draw_key(&id) });
        }

        // Every column, as any Parquet reader sees it.
        let builder = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        let metadata = builder.metadata().file_metadata().key_value_metadata().unwrap();
        let metadata: Vec<(&str, Option<&str>)> =
            metadata.iter().map(|kv| (kv.key.as_str(), kv.value.as_deref())).collect();
        assert!(metadata.contains(&("mira.group", Some("prose"))) && metadata.contains(&("mira.source", Some("web"))));
        // Per column: compressed, and with statistics. Only record numbers and tokens are either.
        let chunks: Vec<(String, bool, bool)> = (builder.metadata().row_group(0).columns().iter())
            .map(|c| (c.column_path().string(), c.compression() != Compression::UNCOMPRESSED, c.statistics().is_some()))
            .collect();
        let integer = |name: &str| (name.to_string(), true, true);
        let plain = |name: &str| (name.to_string(), false, false);
        assert_eq!(
            chunks,
            [
                integer("index"),
                plain("id"),
                integer("tokens"),
                plain("aggregate"),
                plain("draw"),
                plain("score_clarity"),
                plain("score_depth")
            ]
        );
        let batches: Vec<RecordBatch> = builder.build().unwrap().collect::<std::result::Result<_, _>>().unwrap();
        let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["index", "id", "tokens", "aggregate", "draw", "score_clarity", "score_depth"]);
        let last = batches.last().unwrap();
        let at = last.num_rows() - 1;
        let (_, id, _, _, scores) = row(n - 1);
        assert_eq!(last.column(1).as_string::<i32>().value(at), id);
        assert_eq!(last.column(6).as_primitive::<Float32Type>().value(at), scores[1]);
    }

    #[test]
    fn a_shard_with_no_rows_is_a_valid_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.parquet");
        ScoreShardWriter::create(&path, "prose", "web", &["d"]).unwrap().finish().unwrap();
        assert_eq!(ScoreKeys::open("s", &path).unwrap().count(), 0);
    }

    #[test]
    fn a_file_without_the_key_columns_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow::array::StringArray::from(vec!["a"]))]).unwrap();
        let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let first = ScoreKeys::open("other", &path).unwrap().next().unwrap();
        assert!(first.unwrap_err().to_string().contains("not a score shard"), "the error names the problem");
    }
}
