//! Encoders that stream record batches into one object each: Parquet, CSV or JSON lines.
//!
//! Each file is written through object_store's `BufWriter`, which switches to a multipart
//! upload for large objects, so a file never has to fit in memory whole.

use std::sync::Arc;

use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
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
                    Format::Csv => {
                        let mut w = CsvWriterBuilder::new()
                            .with_header(*header_pending)
                            .build(&mut buf);
                        w.write(batch)?;
                    }
                    _ => {
                        let mut w = LineDelimitedWriter::new(&mut buf);
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
