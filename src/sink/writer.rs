//! Encoders that stream record batches into one object each: Parquet, CSV or JSON lines.
//!
//! Each file is written through object_store's `BufWriter`, which switches to a multipart
//! upload for large objects, so a file never has to fit in memory whole.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{
    Encoder, EncoderFactory, EncoderOptions, LineDelimited, NullableEncoder,
    WriterBuilder as JsonWriterBuilder,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::{ArrowSchemaConverter, AsyncArrowWriter};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::{DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;

use crate::config::{Format, ParquetCompression};

/// Parquet's codec for a sink's `compression`.
fn codec(c: ParquetCompression) -> Result<Compression, WriteError> {
    Ok(match c {
        ParquetCompression::Zstd(level) => Compression::ZSTD(ZstdLevel::try_new(i32::from(level))?),
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Lz4 => Compression::LZ4_RAW,
        ParquetCompression::None => Compression::UNCOMPRESSED,
    })
}

/// Rows in one Parquet row group: small enough that a writer's buffer stays modest with many
/// partitions open, large enough for good compression and pruning.
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Distinct values a column may have in one row group and stay dictionary-encoded. Past
/// that, the writer falls back to plain encoding for the rest of the row group. Parquet's
/// default limit (1 MB of dictionary) would keep nearly every value of a high-cardinality
/// integer column (keys, amounts, timestamps) in a dictionary that saves nothing, hashing each
/// value on the way (a fifth of the CPU time of a database import); an eighth of the row
/// group is about where a dictionary stops paying for itself.
const DICTIONARY_VALUES: usize = ROW_GROUP_ROWS / 8;

/// The dictionary page size (bytes of distinct values, as parquet counts them) at which the
/// column `field` falls back to plain encoding: [`DICTIONARY_VALUES`] values of its width,
/// for text and binary the average length of its values in `first` (the file's first rows)
/// plus 4, never above parquet's default. `None`: parquet's default (nested types, views).
fn dictionary_limit(field: &Field, first: Option<&ArrayRef>) -> Option<usize> {
    use DataType::*;
    let width = match field.data_type() {
        Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 | Float32 | Date32 | Time32(_) => 4,
        Int64 | UInt64 | Float64 | Date64 | Time64(_) | Timestamp(..) | Duration(_) => 8,
        Decimal32(p, _) | Decimal64(p, _) | Decimal128(p, _) | Decimal256(p, _) => match p {
            0..=9 => 4,
            10..=18 => 8,
            // FIXED_LEN_BYTE_ARRAY: about the bytes that hold 10^precision.
            p => usize::from(*p) * 10 / 24 + 1,
        },
        Utf8 | Binary | LargeUtf8 | LargeBinary => {
            let values = first.filter(|v| v.data_type() == field.data_type())?;
            // (The offsets' span, not the values buffer: a slice shares its parent's.)
            fn span<O: datafusion::arrow::array::OffsetSizeTrait>(offsets: &[O]) -> usize {
                match (offsets.first(), offsets.last()) {
                    (Some(a), Some(b)) => (*b - *a).as_usize(),
                    _ => 0,
                }
            }
            let bytes = match values.data_type() {
                Utf8 => span(values.as_string::<i32>().value_offsets()),
                LargeUtf8 => span(values.as_string::<i64>().value_offsets()),
                Binary => span(values.as_binary::<i32>().value_offsets()),
                _ => span(values.as_binary::<i64>().value_offsets()),
            };
            let count = values.len() - values.null_count();
            if count == 0 {
                return None;
            }
            4 + bytes / count
        }
        _ => return None,
    };
    Some((DICTIONARY_VALUES * width).min(DEFAULT_DICTIONARY_PAGE_SIZE_LIMIT))
}

/// Rows of a file's first batch below which its columns' cardinality is not judged.
const SAMPLE_ROWS: usize = 1024;

/// Whether `first` (a column's values in the file's first rows, at least [`SAMPLE_ROWS`]) has
/// more distinct values than rows drawn from [`DICTIONARY_VALUES`] values would: then the
/// column's values come from a larger domain, its row groups hold more than a dictionary may,
/// and every dictionary would be abandoned part-way after hashing that many values for
/// nothing; it is written plain from the start (lineitem's comments and part keys: parquet's
/// dictionaries took a twentieth of a CSV → Parquet rewrite's CPU time). `n` draws from `v`
/// values give `v · (1 − e^(−n/v))` distinct ones on average (2,000 rows: 1,882; 8,192 rows:
/// 6,447), so a domain under the limit keeps its dictionary however small the sample.
/// (Values are told apart by a 64-bit hash: no copy of them is made.)
fn nearly_unique(first: &ArrayRef) -> bool {
    let n = first.len();
    if n < SAMPLE_ROWS || first.data_type().is_nested() {
        return false;
    }
    let mut hashes = vec![0u64; n];
    let state = datafusion::common::hash_utils::RandomState::with_seed(0x5eed);
    if datafusion::common::hash_utils::create_hashes([first], &state, &mut hashes).is_err() {
        return false;
    }
    let distinct = hashes
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len() as f64;
    let v = DICTIONARY_VALUES as f64;
    distinct > v * (1.0 - (-(n as f64) / v).exp())
}

/// An error while encoding or uploading one file.
#[derive(Debug)]
pub(crate) struct WriteError {
    /// What went wrong, in words a user can act on.
    pub message: String,
    /// Whether another attempt could succeed (see [`crate::describe::is_transient`]).
    pub transient: bool,
}

impl<E: std::error::Error + 'static> From<E> for WriteError {
    fn from(e: E) -> Self {
        WriteError {
            message: crate::describe::describe_storage(&e.to_string()),
            transient: crate::describe::is_transient(&e),
        }
    }
}

/// One output file being written.
pub(crate) struct FileWriter {
    inner: Inner,
    rows: u64,
    /// The last [`FileWriter::write_within`] stopped short of its batch because the next row
    /// does not fit (text formats, whose size is exact), or took nothing (Parquet).
    full: bool,
    /// Row groups flushed early by [`FileWriter::is_full`] (Parquet).
    early_flushes: u32,
}

/// Bytes a file's upload buffers before it sends them (as one object, or as a part of a
/// multipart upload): S3's smallest part, half object_store's default, so that many open
/// files hold less.
const UPLOAD_BUFFER: usize = 5 << 20;

/// At most this many times a Parquet file's row group in progress is flushed early, to count
/// it at its compressed size and let the file take more rows ([`FileWriter::is_full`]).
const EARLY_FLUSHES: u32 = 4;

enum Inner {
    Parquet {
        w: Box<AsyncArrowWriter<BufWriter>>,
        /// Leaf (Parquet) columns, for [`PARQUET_CHUNK_METADATA`].
        leaves: u64,
    },
    Text {
        out: Box<BufWriter>,
        format: Format,
        /// The file's columns: a CSV file that gets no rows still gets its header line.
        schema: SchemaRef,
        header_pending: bool,
        bytes: u64,
    },
}

impl FileWriter {
    /// Starts a file at `path` in `store`, for rows of `schema` beginning with `first` (which
    /// sets which columns Parquet dictionary-encodes, and how far: see [`nearly_unique`] and
    /// [`dictionary_limit`]).
    pub(crate) fn create(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        format: Format,
        compression: ParquetCompression,
        schema: SchemaRef,
        first: Option<&RecordBatch>,
    ) -> Result<FileWriter, WriteError> {
        let out = BufWriter::with_capacity(store, path, UPLOAD_BUFFER);
        let inner = match format {
            Format::Parquet => {
                let mut props = WriterProperties::builder()
                    .set_compression(codec(compression)?)
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS));
                for (i, field) in schema.fields().iter().enumerate() {
                    let column = first.filter(|b| b.num_columns() > i).map(|b| b.column(i));
                    if column.is_some_and(nearly_unique) {
                        props = props.set_column_dictionary_enabled(
                            ColumnPath::from(field.name().as_str()),
                            false,
                        );
                    } else if let Some(limit) = dictionary_limit(field, column) {
                        props = props.set_column_dictionary_page_size_limit(
                            ColumnPath::from(field.name().as_str()),
                            limit,
                        );
                    }
                }
                let props = props.build();
                let leaves = ArrowSchemaConverter::new().convert(&schema)?.num_columns() as u64;
                Inner::Parquet {
                    w: Box::new(AsyncArrowWriter::try_new(out, schema, Some(props))?),
                    leaves,
                }
            }
            Format::Csv | Format::Json => Inner::Text {
                out: Box::new(out),
                format,
                schema,
                header_pending: true,
                bytes: 0,
            },
        };
        Ok(FileWriter {
            inner,
            rows: 0,
            full: false,
            early_flushes: 0,
        })
    }

    /// Rows written so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// The file's size so far. CSV and JSON: exact. Parquet: the bytes of the row groups
    /// flushed, plus the writer's estimate of the encoded size of the row group in progress
    /// (which zstd compression usually makes smaller when it is flushed); the footer, written
    /// by [`FileWriter::finish`], is not counted.
    pub(crate) fn size(&self) -> u64 {
        match &self.inner {
            Inner::Parquet { w, leaves } => parquet_size(w, *leaves),
            Inner::Text { bytes, .. } => *bytes,
        }
    }

    /// Whether the file has reached `limit` bytes ([`FileWriter::size`]), or its next row
    /// would take it past: a new file should be started.
    ///
    /// A Parquet row group in progress is counted at its uncompressed encoded size, often two
    /// or three times what zstd makes of it. So when a Parquet file looks full, its row group
    /// in progress is flushed (compressed, and then counted exactly) and the file takes more
    /// rows if that left an eighth of `limit` or more: up to [`EARLY_FLUSHES`] times a file,
    /// which fills files of compressible data to about 7/8 of `limit` or more, in a few row
    /// groups, and never counts a row group at less than its estimate.
    pub(crate) async fn is_full(&mut self, limit: u64) -> Result<bool, WriteError> {
        if !(self.full || self.size() >= limit) {
            return Ok(false);
        }
        let Inner::Parquet { w, leaves } = &mut self.inner else {
            return Ok(true);
        };
        if w.in_progress_rows() == 0 || self.early_flushes >= EARLY_FLUSHES {
            return Ok(true);
        }
        w.flush().await?;
        self.early_flushes += 1;
        let full = parquet_size(w, *leaves) >= limit - limit / 8;
        self.full = full;
        Ok(full)
    }

    /// Appends the first rows of `batch` that keep the file within `limit` bytes, and returns
    /// how many it took (the caller starts a new file for the rest). A file takes at least one
    /// row, however large.
    ///
    /// CSV and JSON are exact: the batch is encoded, and cut after the last whole row that
    /// fits. Parquet predicts: the rows that fit are the room left divided by the bytes per row
    /// seen so far in this file ([`FileWriter::size`] over its rows) or, for its first rows,
    /// the batch's in-memory (Arrow) bytes per row, which the encoded size rarely exceeds.
    pub(crate) async fn write_within(
        &mut self,
        batch: &RecordBatch,
        limit: u64,
    ) -> Result<usize, WriteError> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(0);
        }
        let empty = self.rows == 0;
        let take = match &mut self.inner {
            Inner::Parquet { w, leaves } => {
                let size = parquet_size(w, *leaves);
                let per_row = if empty || size == 0 {
                    batch.get_array_memory_size() as f64 / n as f64
                } else {
                    size as f64 / self.rows as f64
                };
                let room = limit.saturating_sub(size) as f64;
                let mut take = ((room / per_row.max(1.0)).floor() as usize).min(n);
                if take == 0 && empty {
                    take = 1;
                }
                if take == 0 {
                    self.full = true;
                }
                if take > 0 {
                    w.write(&batch.slice(0, take)).await?;
                }
                take
            }
            Inner::Text {
                out,
                format,
                header_pending,
                bytes,
                ..
            } => {
                let mut buf = Vec::with_capacity(64 * 1024);
                let mut ends = Vec::with_capacity(n);
                encode_text(batch, *format, *header_pending, &mut buf, &mut ends)?;
                let room = limit.saturating_sub(*bytes);
                let mut take = ends.partition_point(|&end| end as u64 <= room);
                if take == 0 && empty {
                    take = 1;
                }
                if take < n {
                    self.full = true;
                }
                if take > 0 {
                    let end = ends[take - 1];
                    *header_pending = false;
                    *bytes += end as u64;
                    out.write_all(&buf[..end]).await?;
                }
                take
            }
        };
        self.rows += take as u64;
        Ok(take)
    }

    /// Bytes buffered in memory for the row group in progress (Parquet only).
    pub(crate) fn buffered_bytes(&self) -> usize {
        match &self.inner {
            Inner::Parquet { w, .. } => w.in_progress_size(),
            Inner::Text { .. } => 0,
        }
    }

    /// Bytes the file holds in memory, at most: the row group in progress (Parquet) and what
    /// the upload buffers, which is never more than was written or [`UPLOAD_BUFFER`].
    pub(crate) fn held_bytes(&self) -> usize {
        let (in_progress, written) = match &self.inner {
            Inner::Parquet { w, .. } => (w.in_progress_size(), w.bytes_written()),
            Inner::Text { bytes, .. } => (0, *bytes as usize),
        };
        in_progress + written.min(UPLOAD_BUFFER)
    }

    /// Flushes the row group in progress, to bound memory.
    pub(crate) async fn flush(&mut self) -> Result<(), WriteError> {
        if let Inner::Parquet { w, .. } = &mut self.inner {
            w.flush().await?;
        }
        Ok(())
    }

    /// Finishes the file and completes the upload; returns its size in bytes.
    pub(crate) async fn finish(self) -> Result<u64, WriteError> {
        match self.inner {
            Inner::Parquet { mut w, .. } => {
                w.finish().await?;
                let bytes = w.bytes_written() as u64;
                Ok(bytes)
            }
            Inner::Text {
                mut out,
                format,
                schema,
                header_pending,
                mut bytes,
            } => {
                if header_pending && format == Format::Csv {
                    let mut header = Vec::new();
                    let empty = RecordBatch::new_empty(schema);
                    write_csv(&empty, true, &mut header, &mut Vec::new())?;
                    out.write_all(&header).await?;
                    bytes += header.len() as u64;
                }
                out.shutdown().await?;
                Ok(bytes)
            }
        }
    }

    /// Abandons the file: aborts the upload so no partial object is left.
    pub(crate) async fn abort(self) {
        let out = match self.inner {
            Inner::Parquet { w, .. } => w.into_inner(),
            Inner::Text { out, .. } => *out,
        };
        let mut out = out;
        let _ = out.abort().await;
    }
}

/// What a Parquet file's metadata is counted at, per leaf column per row group: the column
/// chunk's entry in the footer, its page index, and the page headers the writer's estimate of a
/// row group in progress leaves out (measured: 250-450 bytes with statistics of 8-byte values;
/// statistics are truncated to 64 bytes).
const PARQUET_CHUNK_METADATA: u64 = 512;

/// A Parquet file's size so far ([`FileWriter::size`]): the row groups flushed, the estimated
/// encoded size of the one in progress, and [`PARQUET_CHUNK_METADATA`] for each column chunk
/// (the one in progress included), which the footer will describe.
fn parquet_size(w: &AsyncArrowWriter<BufWriter>, leaves: u64) -> u64 {
    let chunks = leaves * (w.flushed_row_groups().len() as u64 + 1);
    (w.bytes_written() + w.in_progress_size()) as u64 + chunks * PARQUET_CHUNK_METADATA
}

/// Encodes `batch` as CSV (with a header line first if `header`) or JSON lines into `out`, and
/// pushes to `ends` the offset in `out` just past each row.
fn encode_text(
    batch: &RecordBatch,
    format: Format,
    header: bool,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Result<(), ArrowError> {
    if format == Format::Csv {
        return write_csv(batch, header, out, ends);
    }
    let start = out.len();
    let mut w = JsonWriterBuilder::new()
        .with_encoder_factory(Arc::new(NonFiniteAsStrings))
        .build::<_, LineDelimited>(&mut *out);
    w.write(batch)?;
    w.finish()?;
    // Each row is one line: JSON escapes line breaks inside values.
    let first = ends.len();
    ends.extend(
        out[start..]
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| start + i + 1),
    );
    if ends.len() - first != batch.num_rows() {
        // Not one line a row after all: the batch is cut nowhere.
        ends.truncate(first);
        ends.resize(first + batch.num_rows(), out.len());
    }
    Ok(())
}

/// Appends `batch` to `out` as CSV (comma, `"` quotes, `\n` line ends; with a header line
/// first if `header`), with NULL and the empty string told apart as PostgreSQL's CSV format
/// and Spark do: NULL is an empty field, the empty string is `""`. A field is quoted when it
/// is the empty string or holds a comma, a quote (doubled) or a line break; values are
/// formatted as arrow's CSV writer formats them. A file of one column writes NULL as an empty
/// line (see `docs/outputs.md#values-in-csv-and-json-outputs`). Pushes to `ends` the offset
/// in `out` just past each row.
pub(crate) fn write_csv(
    batch: &RecordBatch,
    header: bool,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
) -> Result<(), ArrowError> {
    let schema = batch.schema();
    if header {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // A lone empty name is quoted, or the line would be blank.
            push_csv_field(out, Some(name), names.len() == 1);
        }
        out.push(b'\n');
    }
    let options = FormatOptions::default().with_null("");
    let formatters = batch
        .columns()
        .iter()
        .map(|a| {
            if a.data_type().is_nested() {
                return Err(ArrowError::CsvError(format!(
                    "Nested type {} is not supported in CSV",
                    a.data_type()
                )));
            }
            ArrayFormatter::try_new(a.as_ref(), &options)
        })
        .collect::<Result<Vec<_>, ArrowError>>()?;
    let mut text = String::new();
    for row in 0..batch.num_rows() {
        for (i, (column, formatter)) in batch.columns().iter().zip(&formatters).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if column.is_null(row) {
                continue;
            }
            text.clear();
            formatter.value(row).write(&mut text).map_err(|e| {
                ArrowError::CsvError(format!("row {}, column {}: {e}", row + 1, i + 1))
            })?;
            push_csv_field(out, Some(&text), true);
        }
        out.push(b'\n');
        ends.push(out.len());
    }
    Ok(())
}

/// Appends one CSV field: `None` as nothing; a value quoted if it needs it, or (`quote_empty`)
/// if it is empty.
fn push_csv_field(out: &mut Vec<u8>, value: Option<&str>, quote_empty: bool) {
    let Some(v) = value else {
        return;
    };
    let needs = (v.is_empty() && quote_empty) || v.contains([',', '"', '\r', '\n']);
    if !needs {
        out.extend_from_slice(v.as_bytes());
        return;
    }
    out.push(b'"');
    for b in v.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Writes a float that JSON has no number for as a string, `"NaN"`, `"Infinity"` or
/// `"-Infinity"` (arrow's JSON writer writes it as `null`, which reads back as NULL); arrow's
/// JSON reader, and so sluice's, reads those strings back into a float column. Finite floats
/// are written as numbers, in Rust's shortest form that reads back exactly.
#[derive(Debug)]
struct NonFiniteAsStrings;

impl EncoderFactory for NonFiniteAsStrings {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a datafusion::arrow::datatypes::FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type};
        let values: Box<dyn Fn(usize) -> f64 + 'a> = match array.data_type() {
            DataType::Float64 => {
                let a = array.as_primitive::<Float64Type>();
                Box::new(move |i| a.value(i))
            }
            DataType::Float32 => {
                let a = array.as_primitive::<Float32Type>();
                // Through f32's own shortest form, so 0.1f32 is written 0.1.
                Box::new(move |i| f64::from(a.value(i)))
            }
            DataType::Float16 => {
                let a = array.as_primitive::<Float16Type>();
                Box::new(move |i| f64::from(a.value(i).to_f32()))
            }
            _ => return Ok(None),
        };
        let single = matches!(array.data_type(), DataType::Float32 | DataType::Float16);
        Ok(Some(NullableEncoder::new(
            Box::new(FloatEncoder { values, single }),
            array.logical_nulls(),
        )))
    }
}

struct FloatEncoder<'a> {
    values: Box<dyn Fn(usize) -> f64 + 'a>,
    /// The column is f32 or f16: write the shortest form of the f32.
    single: bool,
}

impl Encoder for FloatEncoder<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let v = (self.values)(idx);
        let text = if v.is_nan() {
            "\"NaN\"".to_string()
        } else if v.is_infinite() {
            if v > 0.0 {
                "\"Infinity\""
            } else {
                "\"-Infinity\""
            }
            .to_string()
        } else if self.single {
            format!("{:?}", v as f32)
        } else {
            format!("{v:?}")
        };
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::write_csv;
    use crate::quarantine::decode::{ChunkDecoder, Dialect};
    use crate::quarantine::read_bytes;

    /// A small deterministic generator (xorshift), so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }
    /// Random text of up to 6 characters from an alphabet rich in what CSV must quote, or NULL.
    fn awkward_text(rng: &mut Rng) -> Option<String> {
        const ALPHABET: &[&str] = &["", "a", ",", "\"", "\n", "\r", " ", "é", "\\", "'", "\"\""];
        if rng.next().is_multiple_of(5) {
            return None;
        }
        let n = (rng.next() % 4) as usize;
        Some(
            (0..n)
                .map(|_| ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize])
                .collect(),
        )
    }

    /// What the CSV sink writes, sluice's CSV scan (`Dialect::sluice_csv`) reads back exactly (NULL and '' apart),
    /// wherever the chunks are cut; with one column too, where NULL is a blank line.
    #[test]
    fn sluice_csv_reads_back_what_the_sink_wrote() {
        use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
        use datafusion::arrow::record_batch::RecordBatch;
        let mut rng = Rng(0xc5f);
        for one_column in [false, true] {
            let n = 400;
            let texts: Vec<Option<String>> = (0..n).map(|_| awkward_text(&mut rng)).collect();
            let text_col: ArrayRef = Arc::new(StringArray::from(texts.clone()));
            let batch = if one_column {
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)])),
                    vec![text_col],
                )
            } else {
                let ids: ArrayRef = Arc::new(Int64Array::from_iter(
                    (0..n as i64).map(|i| (i % 7 != 3).then_some(i)),
                ));
                let more: ArrayRef = Arc::new(StringArray::from(
                    (0..n).map(|_| awkward_text(&mut rng)).collect::<Vec<_>>(),
                ));
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![
                        Field::new("id", DataType::Int64, true),
                        Field::new("s", DataType::Utf8, true),
                        Field::new("t", DataType::Utf8, true),
                    ])),
                    vec![ids, text_col, more],
                )
            }
            .unwrap();
            let mut bytes = Vec::new();
            write_csv(&batch.slice(0, 150), true, &mut bytes, &mut Vec::new()).unwrap();
            write_csv(
                &batch.slice(150, n - 150),
                false,
                &mut bytes,
                &mut Vec::new(),
            )
            .unwrap();
            let decoder = ChunkDecoder::new(batch.schema(), Dialect::sluice_csv(), 64);
            for chunk in [1, 7, 100, 4096, usize::MAX] {
                let got = read_bytes(&bytes, "f.csv", &decoder, chunk);
                assert!(got.rejects.is_empty(), "{:?}", got.rejects);
                let got = datafusion::arrow::compute::concat_batches(&batch.schema(), &got.batches)
                    .unwrap();
                assert_eq!(
                    got, batch,
                    "one column: {one_column}, chunks of {chunk} bytes"
                );
            }
        }
    }
}

#[cfg(test)]
mod size_tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt};

    use super::FileWriter;
    use crate::config::Format;
    use crate::config::ParquetCompression;

    /// CSV and JSON lines files are cut after the last whole row that fits the limit, even
    /// where values hold line breaks, quotes and commas; the next file takes the rest (with
    /// its own CSV header); a row larger than the limit still makes a file of its own.
    #[tokio::test]
    async fn text_files_are_cut_at_row_boundaries_within_the_limit() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let texts: Vec<Option<String>> = (0..50)
            .map(|i| match i % 4 {
                0 => Some(format!("line\nbreak {i}")),
                1 => Some(format!("a \"quote\", and a comma {i}")),
                2 => None,
                _ => Some("x".repeat(i * 3)),
            })
            .collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..50)) as ArrayRef,
                Arc::new(StringArray::from(texts)) as ArrayRef,
            ],
        )
        .unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for format in [Format::Csv, Format::Json] {
            let whole = {
                let mut w = FileWriter::create(
                    Arc::clone(&store),
                    ObjectPath::from("whole"),
                    format,
                    ParquetCompression::DEFAULT,
                    Arc::clone(&schema),
                    Some(&batch),
                )
                .unwrap();
                assert_eq!(w.write_within(&batch, u64::MAX).await.unwrap(), 50);
                w.finish().await.unwrap()
            };
            for limit in [1, 60, 200, 1000] {
                let mut rest = batch.clone();
                let mut files = Vec::new();
                while rest.num_rows() > 0 {
                    let key = ObjectPath::from(format!("f{}", files.len()));
                    let mut w = FileWriter::create(
                        Arc::clone(&store),
                        key.clone(),
                        format,
                        ParquetCompression::DEFAULT,
                        Arc::clone(&schema),
                        Some(&rest),
                    )
                    .unwrap();
                    let taken = w.write_within(&rest, limit).await.unwrap();
                    assert!(taken >= 1);
                    assert!(w.is_full(limit).await.unwrap() || taken == rest.num_rows());
                    // A full file takes nothing more.
                    if taken < rest.num_rows() {
                        assert_eq!(
                            w.write_within(&rest.slice(taken, 1), limit).await.unwrap(),
                            0
                        );
                    }
                    let bytes = w.finish().await.unwrap();
                    let got = store.get(&key).await.unwrap().bytes().await.unwrap();
                    assert_eq!(got.len() as u64, bytes);
                    assert!(bytes <= limit || taken == 1, "{format:?} {limit}: {bytes}");
                    files.push((got, taken));
                    rest = rest.slice(taken, rest.num_rows() - taken);
                }
                // Each file is the rows it took, encoded alone: cut at a row boundary.
                let mut offset = 0;
                let mut total = 0;
                for (got, taken) in &files {
                    let mut alone = Vec::new();
                    super::encode_text(
                        &batch.slice(offset, *taken),
                        format,
                        true,
                        &mut alone,
                        &mut Vec::new(),
                    )
                    .unwrap();
                    assert_eq!(got.as_ref(), &alone[..], "{format:?} {limit}");
                    offset += taken;
                    total += got.len() as u64;
                }
                assert_eq!(offset, 50);
                if format == Format::Json {
                    assert_eq!(total, whole, "JSON lines: the files add up to the whole");
                }
            }
        }
    }

    #[tokio::test]
    async fn high_cardinality_numbers_fall_back_to_plain_encoding_and_read_back() {
        use datafusion::arrow::array::{Array, Int32Array};
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        use datafusion::parquet::basic::Encoding;

        // One row group: 40,000 ids and names (in parquet's default 1 MB of dictionary, over
        // an eighth of the row group), days from 100 values; codes and labels from 32,768
        // values, four rows each in order (so repeated in the first rows), labels as views;
        // serials all distinct.
        let n = super::ROW_GROUP_ROWS as i64;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("day", DataType::Int32, false),
            Field::new("name", DataType::Utf8, false),
            Field::new("code", DataType::Int64, false),
            Field::new("label", DataType::Utf8View, false),
            Field::new("serial", DataType::Utf8View, false),
        ]));
        let ids = Int64Array::from_iter_values((0..n).map(|i| i * 7919 % 40_000));
        let days = Int32Array::from_iter_values((0..n as i32).map(|i| i % 100));
        let names = StringArray::from_iter_values((0..n).map(|i| format!("n{}", i % 40_000)));
        let codes = Int64Array::from_iter_values((0..n).map(|i| i / 4));
        let labels = datafusion::arrow::array::StringViewArray::from_iter_values((0..n).map(|i| {
            format!(
                "a label long enough not to be inlined {}",
                (i / 10) % 30_000
            )
        }));
        let serials = datafusion::arrow::array::StringViewArray::from_iter_values(
            (0..n).map(|i| format!("serial number {i:>12}")),
        );
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(ids) as ArrayRef,
                Arc::new(days) as ArrayRef,
                Arc::new(names) as ArrayRef,
                Arc::new(codes) as ArrayRef,
                Arc::new(labels) as ArrayRef,
                Arc::new(serials) as ArrayRef,
            ],
        )
        .unwrap();
        // (The writer judges from the file's first batch, as the sink's first 8,192 rows.)
        let first = batch.slice(0, 8192);
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let key = ObjectPath::from("f.parquet");
        let mut w = FileWriter::create(
            Arc::clone(&store),
            key.clone(),
            Format::Parquet,
            ParquetCompression::DEFAULT,
            schema,
            Some(&first),
        )
        .unwrap();
        // (Written as a sink writes, a batch of 8,192 rows at a time.)
        for start in (0..n as usize).step_by(8192) {
            let part = batch.slice(start, 8192);
            assert_eq!(w.write_within(&part, u64::MAX).await.unwrap(), 8192);
        }
        w.finish().await.unwrap();
        let bytes = store.get(&key).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let rg = reader.metadata().row_group(0);
        let plain_pages = |c: usize| {
            let mask = rg.column(c).page_encoding_stats_mask().unwrap();
            mask.is_set(Encoding::PLAIN)
        };
        // Judged from samples of any size: draws from a domain under the dictionary's limit
        // keep it; from a larger one, not (the reviewer's case: 1,024 rows of 8,000 values).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut draws = |n: usize, domain: u64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values((0..n).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % domain) as i64
            })))
        };
        for (n, domain, unique) in [
            (1024, 8_000, false),
            (1024, 1 << 40, true),
            (2000, 10_000, false),
            (2000, 200_000, true),
            (8192, 10_000, false),
            (8192, 200_000, true),
            (1000, 1 << 40, false),
        ] {
            assert_eq!(
                super::nearly_unique(&draws(n, domain)),
                unique,
                "{n} draws from {domain}"
            );
        }
        let dictionary = |c: usize| rg.column(c).dictionary_page_offset().is_some();
        // The ids, the names and the serials, all distinct in the first rows, have no
        // dictionary; the days keep theirs; the codes and the labels, repeated in the first
        // rows, start with one (the codes leave it after an eighth of the row group).
        for c in [0, 2, 5] {
            assert!(!dictionary(c) && plain_pages(c), "{c}: {:?}", rg.column(c));
        }
        assert!(dictionary(1) && !plain_pages(1), "days: {:?}", rg.column(1));
        assert!(dictionary(3) && plain_pages(3), "codes: {:?}", rg.column(3));
        assert!(dictionary(4), "labels: {:?}", rg.column(4));
        let back: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        let back = datafusion::arrow::compute::concat_batches(&back[0].schema(), &back).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.column(0).null_count(), 0);
    }
}
