//! Encoders that stream record batches into one object each: Parquet, CSV or JSON lines.
//!
//! Each file is written through object_store's `BufWriter`, which switches to a multipart
//! upload for large objects, so a file never has to fit in memory whole.

use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{
    Encoder, EncoderFactory, EncoderOptions, LineDelimited, NullableEncoder,
    WriterBuilder as JsonWriterBuilder,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use tokio::io::AsyncWriteExt;

use crate::config::Format;

/// Rows in one Parquet row group: small enough that a writer's buffer stays modest with many
/// partitions open, large enough for good compression and pruning.
pub(crate) const ROW_GROUP_ROWS: usize = 128 * 1024;

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
}

enum Inner {
    Parquet(Box<AsyncArrowWriter<BufWriter>>),
    Text {
        out: Box<BufWriter>,
        format: Format,
        header_pending: bool,
        bytes: u64,
    },
}

impl FileWriter {
    /// Starts a file at `path` in `store`.
    pub(crate) fn create(
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        format: Format,
        schema: SchemaRef,
    ) -> Result<FileWriter, WriteError> {
        let out = BufWriter::new(store, path);
        let inner = match format {
            Format::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::default()))
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .build();
                Inner::Parquet(Box::new(AsyncArrowWriter::try_new(
                    out,
                    schema,
                    Some(props),
                )?))
            }
            Format::Csv | Format::Json => Inner::Text {
                out: Box::new(out),
                format,
                header_pending: true,
                bytes: 0,
            },
        };
        Ok(FileWriter { inner, rows: 0 })
    }

    /// Rows written so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends a batch.
    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Parquet(w) => w.write(batch).await?,
            Inner::Text {
                out,
                format,
                header_pending,
                bytes,
            } => {
                let mut buf = Vec::with_capacity(64 * 1024);
                match format {
                    Format::Csv => write_csv(batch, *header_pending, &mut buf)?,
                    _ => {
                        let mut w = JsonWriterBuilder::new()
                            .with_encoder_factory(Arc::new(NonFiniteAsStrings))
                            .build::<_, LineDelimited>(&mut buf);
                        w.write(batch)?;
                        w.finish()?;
                    }
                }
                *header_pending = false;
                *bytes += buf.len() as u64;
                out.write_all(&buf).await?;
            }
        }
        Ok(())
    }

    /// Bytes buffered in memory for the row group in progress (Parquet only).
    pub(crate) fn buffered_bytes(&self) -> usize {
        match &self.inner {
            Inner::Parquet(w) => w.in_progress_size(),
            Inner::Text { .. } => 0,
        }
    }

    /// Flushes the row group in progress, to bound memory.
    pub(crate) async fn flush(&mut self) -> Result<(), WriteError> {
        if let Inner::Parquet(w) = &mut self.inner {
            w.flush().await?;
        }
        Ok(())
    }

    /// Finishes the file and completes the upload; returns its size in bytes.
    pub(crate) async fn finish(self) -> Result<u64, WriteError> {
        match self.inner {
            Inner::Parquet(mut w) => {
                w.finish().await?;
                let bytes = w.bytes_written() as u64;
                Ok(bytes)
            }
            Inner::Text { mut out, bytes, .. } => {
                out.shutdown().await?;
                Ok(bytes)
            }
        }
    }

    /// Abandons the file: aborts the upload so no partial object is left.
    pub(crate) async fn abort(self) {
        let out = match self.inner {
            Inner::Parquet(w) => w.into_inner(),
            Inner::Text { out, .. } => *out,
        };
        let mut out = out;
        let _ = out.abort().await;
    }
}

/// Appends `batch` to `out` as CSV (comma, `"` quotes, `\n` line ends; with a header line
/// first if `header`), with NULL and the empty string told apart as PostgreSQL's CSV format
/// and Spark do: NULL is an empty field, the empty string is `""`. A field is quoted when it
/// is the empty string or holds a comma, a quote (doubled) or a line break; values are
/// formatted as arrow's CSV writer formats them. A file of one column writes NULL as an empty
/// line (see `docs/outputs.md#values-in-csv-and-json-outputs`).
pub(crate) fn write_csv(
    batch: &RecordBatch,
    header: bool,
    out: &mut Vec<u8>,
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
            write_csv(&batch.slice(0, 150), true, &mut bytes).unwrap();
            write_csv(&batch.slice(150, n - 150), false, &mut bytes).unwrap();
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
