//! Decoding a [`Chunk`] of records into batches of the source's schema, setting aside the
//! records that do not fit.
//!
//! A chunk is first decoded whole by arrow's own CSV / JSON decoder, the one DataFusion's
//! plain read uses, so a clean chunk costs what the plain read costs and a good row reads
//! exactly as it would without quarantine. Only a chunk that fails is taken apart: split into
//! records (csv-core, or lines for JSON) to reject those of the wrong shape, then decoded in
//! halves, and halves of halves, down to the single rows that fail. A chunk with one bad row
//! costs about three decodes of it.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use super::plain_csv::PlainCsv;
use super::split::{Boundaries, Chunk, CsvBoundaries};
use super::{MAX_RAW, Reject};
use crate::config::CsvOptions;

/// The file format a quarantined source is read in.
#[derive(Debug, Clone)]
pub enum Dialect {
    /// CSV with these options; `null` matches the values read as NULL.
    Csv {
        /// Delimiter, quote, escape, header, null value.
        options: CsvOptions,
        /// The empty string, or the null value.
        null: Option<regex::Regex>,
        /// CSV as sluice's sink writes it ([`Dialect::sluice_csv`]): a quoted empty field
        /// (`""`) is the empty string, an unquoted one NULL, and in a file of one column a
        /// blank line is a row whose value is NULL.
        empty_quoted: bool,
    },
    /// Newline-delimited JSON objects.
    Json,
}

impl Dialect {
    /// CSV read with `options` (the empty field and the null value, if any, are NULL).
    pub fn csv(options: CsvOptions) -> Dialect {
        let null = options
            .null_value
            .as_deref()
            .and_then(|v| regex::Regex::new(&format!("^(?:|{})$", regex::escape(v))).ok());
        Dialect::Csv {
            options,
            null,
            empty_quoted: false,
        }
    }

    /// CSV as sluice's sink writes it (`src/sink/writer.rs`, `write_csv`): default options,
    /// NULL an empty field (a blank line in a file of one column), the empty string `""`.
    pub fn sluice_csv() -> Dialect {
        Dialect::Csv {
            options: CsvOptions::default(),
            null: None,
            empty_quoted: true,
        }
    }

    /// How records end in this format.
    pub fn boundaries(&self) -> Boundaries {
        match self {
            Dialect::Csv { options, .. } => Boundaries::Csv(CsvBoundaries::new(
                options.delimiter,
                options.quote,
                options.escape,
            )),
            Dialect::Json => Boundaries::Lines,
        }
    }
}

/// What decoding a chunk gave.
#[derive(Debug, Default)]
pub struct Decoded {
    /// The good rows, in file order.
    pub batches: Vec<RecordBatch>,
    /// The rows set aside.
    pub rejects: Vec<Reject>,
}

/// Decodes chunks of one source.
#[derive(Debug, Clone)]
pub struct ChunkDecoder {
    schema: SchemaRef,
    dialect: Dialect,
    batch_size: usize,
    /// The source's event-time column (its index and name), when it declares one: a row
    /// whose value there is NULL or no timestamp is in no work unit, so it is a bad row.
    event_time: Option<(usize, String)>,
    /// The columns decoded (indexes into `schema`, in order), when not all: see
    /// [`ChunkDecoder::with_columns`].
    columns: Option<Arc<[usize]>>,
}

/// Why a decoded row is still a bad row: its event time is NULL or not a timestamp. Raised
/// as a decode error, so the row is found and set aside the way a row that does not parse is.
#[derive(Debug)]
struct Untimed(String);

impl std::fmt::Display for Untimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untimed {}

/// Where a batch taken apart starts: its line, and whether it starts with the header.
#[derive(Debug, Clone, Copy)]
struct At {
    line: u64,
    skip_header: bool,
    /// The byte before the first one is a `\r` (a `\n` first completes its line end).
    after_cr: bool,
}

/// One record of a chunk taken apart: its bytes and the line it starts on.
#[derive(Debug, Clone, Copy)]
struct Record {
    start: usize,
    end: usize,
    line: u64,
}

impl ChunkDecoder {
    /// A decoder into `schema`, making batches of up to `batch_size` rows.
    pub fn new(schema: SchemaRef, dialect: Dialect, batch_size: usize) -> ChunkDecoder {
        ChunkDecoder {
            schema,
            dialect,
            batch_size: batch_size.max(1),
            event_time: None,
            columns: None,
        }
    }

    /// The same decoder, building only `columns` (indexes into its schema, ascending) of the
    /// rows it decodes: the others are still read to find each record's end and its number
    /// of fields, not converted. For a scan that fails on a bad row rather than set it aside
    /// (whose rejects must not depend on the query), and not with an event-time column.
    pub fn with_columns(mut self, columns: Option<Arc<[usize]>>) -> ChunkDecoder {
        if self.event_time.is_none() {
            self.columns = columns;
        }
        self
    }

    /// The same decoder, setting aside rows whose `column` (the source's event time) is NULL
    /// or does not read as a timestamp. A column the schema lacks is ignored here (the plan
    /// names it).
    pub fn with_event_time(mut self, column: Option<&str>) -> ChunkDecoder {
        self.event_time = column.and_then(|c| {
            let i = self.schema.index_of(c).ok()?;
            Some((i, c.to_string()))
        });
        self
    }

    /// `batch` if every row has an event time (the column is `projection`'s, or every
    /// column is decoded); else an [`Untimed`] error naming the first such value.
    fn timed(
        &self,
        batch: Option<RecordBatch>,
        projection: Option<usize>,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let (Some((index, name)), Some(b)) = (&self.event_time, &batch) else {
            return Ok(batch);
        };
        let column = match projection {
            None => b.column(*index),
            Some(p) if p == *index => b.column(0),
            Some(_) => return Ok(batch),
        };
        let ts = DataType::Timestamp(TimeUnit::Nanosecond, None);
        let cast = datafusion::arrow::compute::cast(column, &ts)?;
        if cast.null_count() == 0 {
            return Ok(batch);
        }
        let Some(row) = (0..cast.len()).find(|i| cast.is_null(*i)) else {
            return Ok(batch);
        };
        let reason = if column.is_null(row) {
            format!("no event time: column {name} is NULL")
        } else {
            let value = datafusion::arrow::util::display::array_value_to_string(column, row)
                .unwrap_or_default();
            format!("no event time: column {name}: {value:?} is not a timestamp")
        };
        Err(ArrowError::ExternalError(Box::new(Untimed(reason))))
    }

    /// The same decoder (dialect, batch size, event-time column by name) into `schema`: for
    /// a file whose columns are in another order.
    pub fn with_schema(&self, schema: SchemaRef) -> ChunkDecoder {
        let event_time = self.event_time.as_ref().map(|(_, name)| name.clone());
        ChunkDecoder::new(schema, self.dialect.clone(), self.batch_size)
            .with_event_time(event_time.as_deref())
    }

    /// The format read.
    pub fn dialect(&self) -> &Dialect {
        &self.dialect
    }

    /// The good rows and the rejects of `chunk`, a part of `file`.
    ///
    /// Decoded by arrow's decoder, a batch at a time; a batch that fails is taken apart (its
    /// records split out, those of the wrong shape rejected, the rest decoded in halves down
    /// to the rows that fail), and arrow's decoder goes on after it.
    pub fn decode(&self, file: &str, chunk: &Chunk) -> Decoded {
        let mut out = Decoded::default();
        let mut header = chunk.first && self.has_header();
        let mut from = 0;
        loop {
            let parts = chunk.parts_from(from);
            match self.run(&parts, header, None, &mut out.batches) {
                Ok(()) => return out,
                Err((at, _)) => {
                    let start = from + at;
                    let used = self.take_apart(file, chunk, start, header && start == 0, &mut out);
                    header = false;
                    from = start + used.max(1);
                    // A record taken apart can end at the `\r` of a `\r\n`: its `\n` is no
                    // blank line (which, in a file of one column, would be a NULL row).
                    if from > 0
                        && chunk.byte_at(from - 1) == Some(b'\r')
                        && chunk.byte_at(from) == Some(b'\n')
                    {
                        from += 1;
                    }
                    if from >= chunk.len() {
                        return out;
                    }
                }
            }
        }
    }

    /// Takes apart the batch of records that starts at byte `start` of `chunk` (see
    /// [`ChunkDecoder::decode`]); returns the bytes it covered.
    fn take_apart(
        &self,
        file: &str,
        chunk: &Chunk,
        start: usize,
        skip_header: bool,
        out: &mut Decoded,
    ) -> usize {
        let bytes = chunk.slice_from(start);
        let line = chunk.first_line + chunk.newlines_before(start);
        let (records, used) = match &self.dialect {
            Dialect::Csv { options, .. } => {
                let after_cr = start > 0 && chunk.byte_at(start - 1) == Some(b'\r');
                let at = At {
                    line,
                    skip_header,
                    after_cr,
                };
                self.csv_records(file, &bytes, at, options, out)
            }
            Dialect::Json => json_records(&bytes, line, self.batch_size),
        };
        self.bisect(file, &bytes, &records, out);
        used
    }

    fn has_header(&self) -> bool {
        matches!(&self.dialect, Dialect::Csv { options, .. } if options.has_header)
    }

    /// Decodes `parts` (whole records, one piece after the other) with arrow's decoder;
    /// `projection` picks columns.
    fn decode_all(
        &self,
        parts: &[&[u8]],
        header: bool,
        projection: Option<usize>,
    ) -> Result<Vec<RecordBatch>, ArrowError> {
        let mut out = Vec::new();
        self.run(parts, header, projection, &mut out)
            .map_err(|(_, e)| e)?;
        Ok(out)
    }

    /// Decodes `parts` into `out` a batch at a time; on an error, the byte offset where the
    /// failing batch starts (the batches before it are in `out`).
    fn run(
        &self,
        parts: &[&[u8]],
        header: bool,
        projection: Option<usize>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<(), (usize, ArrowError)> {
        // Bytes consumed, and where the batch being filled started.
        let (mut pos, mut batch) = (0usize, 0usize);
        let first = out.len();
        // The columns built: one (`projection`), those of `with_columns`, or all.
        let one;
        let columns: Option<&[usize]> = match projection {
            Some(p) => {
                one = [p];
                Some(&one)
            }
            None => self.columns.as_deref(),
        };
        match &self.dialect {
            Dialect::Csv {
                options,
                null,
                empty_quoted,
            } => {
                // sluice's own CSV: the records' quoted empty fields, to set them to '' in
                // what arrow's decoder (which reads both kinds of empty field as NULL) gives;
                // blank lines of a one-column file made `""`, a row arrow reads as NULL.
                let ncols = self.schema.fields().len();
                let scan = (*empty_quoted && (ncols == 1 || has_doubled(parts, options.quote)))
                    .then(|| scan_empty_fields(parts, header, options, ncols));
                let joined;
                let parts: &[&[u8]] = match &scan {
                    Some(EmptyFields {
                        rewritten: Some(bytes),
                        ..
                    }) => {
                        joined = [bytes.as_slice()];
                        &joined
                    }
                    _ => parts,
                };
                let result = self.run_csv(parts, header, projection, columns, options, null, out);
                if let Some(scan) = &scan {
                    let patched = set_empty_strings(&out[first..], &scan.records, columns)
                        .map_err(|e| (0, e))?;
                    out.truncate(first);
                    out.extend(patched);
                }
                // An error's offset is in the bytes decoded: in those of the chunk, where
                // blank lines were rewritten.
                result.map_err(|(at, e)| match &scan {
                    Some(scan) if scan.rewritten.is_some() => (scan.original_offset(at), e),
                    _ => (at, e),
                })?;
            }
            Dialect::Json => {
                let schema = match columns {
                    Some(c) => Arc::new(self.schema.project(c).map_err(|e| (0, e))?),
                    None => Arc::clone(&self.schema),
                };
                let mut d = datafusion::arrow::json::ReaderBuilder::new(schema)
                    .with_batch_size(self.batch_size)
                    .build_decoder()
                    .map_err(|e| (0, e))?;
                for buf in parts {
                    let mut p = 0;
                    while p < buf.len() {
                        let n = guarded(|| d.decode(&buf[p..])).map_err(|e| (batch, e))?;
                        p += n;
                        pos += n;
                        // A full batch stops the decoder short of the input's end.
                        if n == 0 || p < buf.len() {
                            out.extend(
                                guarded(|| d.flush())
                                    .and_then(|b| self.timed(b, projection))
                                    .map_err(|e| (batch, e))?,
                            );
                            batch = pos;
                        }
                    }
                }
                out.extend(
                    guarded(|| d.flush())
                        .and_then(|b| self.timed(b, projection))
                        .map_err(|e| (batch, e))?,
                );
            }
        }
        Ok(())
    }

    /// The CSV part of [`ChunkDecoder::run`]: arrow's decoder over `parts`.
    #[allow(clippy::too_many_arguments)]
    fn run_csv(
        &self,
        parts: &[&[u8]],
        header: bool,
        projection: Option<usize>,
        columns: Option<&[usize]>,
        options: &CsvOptions,
        null: &Option<regex::Regex>,
        out: &mut Vec<RecordBatch>,
    ) -> Result<(), (usize, ArrowError)> {
        // Most chunks quote nothing but whole values: read those the faster way, and any
        // other chunk, or one it would not read as arrow's decoder does (a bad row, a blank
        // line), with arrow's decoder, which finds where the bad rows are.
        let plain = PlainCsv {
            schema: &self.schema,
            columns,
            delimiter: options.delimiter,
            quote: options.quote,
            escape: options.escape,
            null: null.as_ref(),
            header,
            batch_size: self.batch_size,
        };
        // (It converts values with arrow's functions, which can panic: see `guarded`.)
        if let Some(batches) = guarded(|| Ok(plain.decode(parts))).ok().flatten() {
            // A row without an event time is a bad row too: arrow's decoder finds it.
            let timed: Result<Vec<_>, _> = batches
                .into_iter()
                .map(|b| self.timed(Some(b), projection))
                .collect();
            if let Ok(batches) = timed {
                out.extend(batches.into_iter().flatten());
                return Ok(());
            }
        }
        // Bytes consumed, and where the batch being filled started.
        let (mut pos, mut batch) = (0usize, 0usize);
        let mut b = datafusion::arrow::csv::ReaderBuilder::new(Arc::clone(&self.schema))
            .with_header(header)
            .with_delimiter(options.delimiter)
            .with_quote(options.quote)
            .with_batch_size(self.batch_size);
        if let Some(e) = options.escape {
            b = b.with_escape(e);
        }
        if let Some(n) = null {
            b = b.with_null_regex(n.clone());
        }
        if let Some(c) = columns {
            b = b.with_projection(c.to_vec());
        }
        let mut d = b.build_decoder();
        for buf in parts {
            let mut p = 0;
            loop {
                let n = guarded(|| d.decode(&buf[p..])).map_err(|e| (batch, e))?;
                p += n;
                pos += n;
                if d.capacity() == 0 {
                    out.extend(
                        guarded(|| d.flush())
                            .and_then(|b| self.timed(b, projection))
                            .map_err(|e| (batch, e))?,
                    );
                    batch = pos;
                } else if p == buf.len() || n == 0 {
                    break;
                }
            }
        }
        // An empty input ends the last record.
        guarded(|| d.decode(&[])).map_err(|e| (batch, e))?;
        out.extend(
            guarded(|| d.flush())
                .and_then(|b| self.timed(b, projection))
                .map_err(|e| (batch, e))?,
        );
        Ok(())
    }

    /// Splits the first batch of CSV records in `bytes` (a batch's worth, or up to the end)
    /// out; those of the wrong shape go to `out.rejects`. Returns the others and the bytes
    /// the batch covered.
    fn csv_records(
        &self,
        file: &str,
        bytes: &[u8],
        at: At,
        options: &CsvOptions,
        out: &mut Decoded,
    ) -> (Vec<Record>, usize) {
        let ncols = self.schema.fields().len();
        // In sluice's own CSV of one column a blank line is a row (NULL), which csv-core skips.
        let blank_rows = ncols == 1
            && matches!(
                self.dialect,
                Dialect::Csv {
                    empty_quoted: true,
                    ..
                }
            );
        let mut reader = csv_core::ReaderBuilder::new()
            .delimiter(options.delimiter)
            .quote(options.quote)
            .escape(options.escape)
            .build();
        // Grown when a record needs more (`OutputFull`): `bytes` runs to the end of the chunk,
        // and zeroing megabytes for each bad row cost more than decoding its batch.
        let mut fields = vec![0u8; bytes.len().min(64 << 10) + 1];
        let mut ends = vec![0usize; ncols + 8];
        let (mut nfields, mut nends) = (0usize, 0usize);
        let mut records = Vec::new();
        let mut skip_header = at.skip_header;
        let (mut pos, mut start) = (0usize, 0usize);
        let mut line = at.line;
        let mut taken = 0usize;
        while taken < self.batch_size {
            let (res, nin, nout, nend) =
                reader.read_record(&bytes[pos..], &mut fields[nfields..], &mut ends[nends..]);
            pos += nin;
            nfields += nout;
            nends += nend;
            match res {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    let n = fields.len();
                    fields.resize(n * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let n = ends.len();
                    ends.resize(n * 2, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    // Blank lines csv-core skipped belong to no record (but are rows of
                    // their own with `blank_rows`).
                    while start < pos && matches!(bytes[start], b'\n' | b'\r') {
                        let after_cr = follows_cr(bytes, start, at.after_cr);
                        if blank_rows
                            && !skip_header
                            && let Some(r) = blank_record(bytes, start, pos, line, at.after_cr)
                        {
                            records.push(r);
                            taken += 1;
                        }
                        line += super::split::line_ends(&bytes[start..start + 1], after_cr);
                        start += 1;
                    }
                    // (csv-core stops after the `\r` of a `\r\n`: the record's bytes take its
                    // `\n` too, so that records put one after the other keep their ends.)
                    let crlf = pos > 0 && bytes[pos - 1] == b'\r' && bytes.get(pos) == Some(&b'\n');
                    let rec = Record {
                        start,
                        end: pos + usize::from(crlf),
                        line,
                    };
                    // (csv-core skips empty lines itself; `""` is one empty field, a row.)
                    if !skip_header {
                        taken += 1;
                    }
                    if skip_header {
                        skip_header = false;
                    } else if nends != ncols {
                        out.rejects.push(reject(
                            file,
                            bytes,
                            rec,
                            format!("expected {ncols} fields, found {nends}"),
                        ));
                    } else if let Some(bad) = (0..nends).find(|i| {
                        let from = if *i == 0 { 0 } else { ends[i - 1] };
                        std::str::from_utf8(&fields[from..ends[*i]]).is_err()
                    }) {
                        let name = self.schema.field(bad).name();
                        out.rejects.push(reject(
                            file,
                            bytes,
                            rec,
                            format!("invalid UTF-8 in column {name}"),
                        ));
                    } else {
                        records.push(rec);
                    }
                    let after_cr = follows_cr(bytes, start, at.after_cr);
                    line += super::split::line_ends(&bytes[start..pos], after_cr);
                    start = pos;
                    nfields = 0;
                    nends = 0;
                }
                csv_core::ReadRecordResult::End => {
                    // Blank lines at the end are rows too with `blank_rows`.
                    while blank_rows && start < pos && taken < self.batch_size {
                        if let Some(r) = blank_record(bytes, start, pos, line, at.after_cr) {
                            records.push(r);
                            taken += 1;
                        }
                        let after_cr = follows_cr(bytes, start, at.after_cr);
                        line += super::split::line_ends(&bytes[start..start + 1], after_cr);
                        start += 1;
                    }
                    return (records, start);
                }
            }
        }
        (records, pos)
    }

    /// Decodes `records` as a whole; if that fails, each half alone, down to the single
    /// records that fail, which are rejected.
    fn bisect(&self, file: &str, bytes: &[u8], records: &[Record], out: &mut Decoded) {
        if records.is_empty() {
            return;
        }
        // Records as written, terminators included. Only the file's last record can lack one,
        // and it comes last here too; adding a newline to it would change a value left open
        // by an unbalanced quote.
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.end - r.start + 1).sum());
        for r in records {
            // A record ended by a bare `\r` before a blank line (a row, in a file of one
            // column) would make one `\r\n` of the two: its end is written `\r\n`.
            if buf.last() == Some(&b'\r') && bytes.get(r.start) == Some(&b'\n') {
                buf.push(b'\n');
            }
            buf.extend_from_slice(&bytes[r.start..r.end]);
        }
        match self.decode_all(&[&buf], false, None) {
            Ok(batches) => out.batches.extend(batches),
            Err(e) if records.len() == 1 => {
                let reason = self.reason(&buf, e);
                out.rejects.push(reject(file, bytes, records[0], reason));
            }
            Err(_) => {
                let (a, b) = records.split_at(records.len() / 2);
                self.bisect(file, bytes, a, out);
                self.bisect(file, bytes, b, out);
            }
        }
    }

    /// Why the one record in `row` does not decode: for CSV the first column whose value
    /// does not read as its type; for JSON arrow's words (which name the field).
    fn reason(&self, row: &[u8], err: ArrowError) -> String {
        if let ArrowError::ExternalError(e) = &err
            && let Some(Untimed(reason)) = e.downcast_ref::<Untimed>()
        {
            return reason.clone();
        }
        let message = plain(&err);
        if let Dialect::Json = self.dialect {
            // "whilst decoding field 'id': failed to parse ..." → "column id: failed to ...".
            if let Some(rest) = message.strip_prefix("whilst decoding field '")
                && let Some((name, what)) = rest.split_once("': ")
            {
                return format!("column {name}: {what}");
            }
            return message;
        }
        for (i, field) in self.schema.fields().iter().enumerate() {
            if self.decode_all(&[row], false, Some(i)).is_err() {
                return match csv_value(&self.dialect, row, i) {
                    Some(value) => format!(
                        "column {}: {value:?} is not {}",
                        field.name(),
                        field.data_type()
                    ),
                    None => format!("column {}: {message}", field.name()),
                };
            }
        }
        message
    }
}

/// Whether the byte before `i` of `bytes` is a `\r` (`after_cr`: `bytes` follows one).
fn follows_cr(bytes: &[u8], i: usize, after_cr: bool) -> bool {
    if i == 0 {
        after_cr
    } else {
        bytes[i - 1] == b'\r'
    }
}

/// The blank line that starts at `start` (a line end; `limit` is where the blank lines stop)
/// as a record of its own, on `line`; `None` when `start` is the `\n` of a `\r\n`, which
/// ends the line before.
fn blank_record(
    bytes: &[u8],
    start: usize,
    limit: usize,
    line: u64,
    after_cr: bool,
) -> Option<Record> {
    if bytes[start] == b'\n' && follows_cr(bytes, start, after_cr) {
        return None;
    }
    let end = if bytes[start..limit].starts_with(b"\r\n") {
        start + 2
    } else {
        start + 1
    };
    Some(Record { start, end, line })
}

/// What [`scan_empty_fields`] found in CSV written by sluice.
#[derive(Debug, Default)]
struct EmptyFields {
    /// The bytes with each blank line made `""` (a file of one column only), if any was.
    rewritten: Option<Vec<u8>>,
    /// Where in the original bytes each `""` of `rewritten` was put, in order.
    inserted: Vec<usize>,
    /// For each record (after the header), the indexes of its quoted empty fields.
    records: Vec<Vec<usize>>,
}

impl EmptyFields {
    /// The offset in the original bytes of `at`, an offset in `rewritten` (the start of a
    /// record there: a `""` put in for a blank line is that blank line's start).
    fn original_offset(&self, at: usize) -> usize {
        let mut shift = 0;
        for (k, &orig) in self.inserted.iter().enumerate() {
            let put_at = orig + 2 * k;
            if at < put_at {
                break;
            }
            if at < put_at + 2 {
                return orig;
            }
            shift = 2 * (k + 1);
        }
        at - shift
    }
}

/// Whether `byte` comes twice in a row somewhere in `parts` (read one after the other). A
/// quoted empty field is a doubled quote, so most chunks need no [`scan_empty_fields`]: this
/// finds that at memory speed.
fn has_doubled(parts: &[&[u8]], byte: u8) -> bool {
    let pair = [byte, byte];
    let mut last = None;
    for p in parts.iter().filter(|p| !p.is_empty()) {
        if (last == Some(byte) && p[0] == byte) || memchr::memmem::find(p, &pair).is_some() {
            return true;
        }
        last = p.last().copied();
    }
    false
}

/// Reads CSV `parts` (whole records; the first a header when `header`) as sluice's sink
/// writes them and finds, for each record, its quoted empty fields (`""`, the empty
/// string); with `ncols` = 1, a blank line is a record (NULL), rewritten as `""` so that
/// arrow's decoder, which skips blank lines, reads it as a row (whose value it reads as NULL).
fn scan_empty_fields(
    parts: &[&[u8]],
    header: bool,
    options: &CsvOptions,
    ncols: usize,
) -> EmptyFields {
    let bytes: Vec<u8> = parts.concat();
    let (quote, delim) = (options.quote, options.delimiter);
    let mut found = EmptyFields::default();
    let mut rewritten: Vec<u8> = Vec::new();
    // Bytes of `bytes` up to here are in `rewritten` (when it is in use).
    let mut copied = 0usize;
    let mut skip = header;
    let mut i = 0usize;
    let n = bytes.len();
    while i < n {
        // A record starts at `i`.
        if matches!(bytes[i], b'\n' | b'\r') {
            let end = if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                i + 2
            } else {
                i + 1
            };
            if ncols == 1 && !skip {
                rewritten.extend_from_slice(&bytes[copied..i]);
                rewritten.extend_from_slice(&[quote, quote]);
                copied = i;
                found.inserted.push(i);
                found.records.push(Vec::new());
            }
            i = end;
            continue;
        }
        let mut empties = Vec::new();
        let mut field = 0usize;
        loop {
            // A field starts at `i`.
            if i < n && bytes[i] == quote {
                let open = i;
                i += 1;
                while i < n {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    if options.escape == Some(bytes[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                // `""` is the empty string only when closed and the field ends there: `""22`
                // is `22` and an unclosed `"` runs to the end, as csv-core (and arrow) read
                // them, whatever else the chunk holds.
                let ends = |at: usize| {
                    bytes
                        .get(at)
                        .is_none_or(|b| *b == delim || matches!(b, b'\n' | b'\r'))
                };
                if i == open + 1 && i < n && ends(i + 1) {
                    empties.push(field);
                }
                i += 1;
            }
            while i < n && !matches!(bytes[i], b'\n' | b'\r') && bytes[i] != delim {
                i += 1;
            }
            if i < n && bytes[i] == delim {
                i += 1;
                field += 1;
                continue;
            }
            // The record ends here.
            if i < n {
                i += if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
            }
            break;
        }
        if skip {
            skip = false;
        } else {
            found.records.push(empties);
        }
    }
    // (Tested on the insertions, not on `copied`: a blank line at the start copies nothing.)
    if !found.inserted.is_empty() {
        rewritten.extend_from_slice(&bytes[copied..]);
        found.rewritten = Some(rewritten);
    }
    found
}

/// `batches` (the records of [`EmptyFields::records`], in order; of the columns `built` only,
/// when given) with each quoted empty field of a text or binary column set to the empty value.
fn set_empty_strings(
    batches: &[RecordBatch],
    records: &[Vec<usize>],
    built: Option<&[usize]>,
) -> Result<Vec<RecordBatch>, ArrowError> {
    use datafusion::arrow::array::{BooleanArray, Scalar, StringArray};
    let mut out = Vec::with_capacity(batches.len());
    let mut next = 0usize;
    for b in batches {
        let rows = &records[next.min(records.len())..(next + b.num_rows()).min(records.len())];
        next += b.num_rows();
        let mut columns = b.columns().to_vec();
        let mut changed = false;
        for (c, column) in columns.iter_mut().enumerate() {
            let field = built.map_or(c, |b| b[c]);
            if !matches!(
                column.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
            ) {
                continue;
            }
            let mask: BooleanArray = (0..b.num_rows())
                .map(|r| Some(rows.get(r).is_some_and(|e| e.contains(&field))))
                .collect();
            if mask.true_count() == 0 {
                continue;
            }
            let empty =
                datafusion::arrow::compute::cast(&StringArray::from(vec![""]), column.data_type())?;
            *column =
                datafusion::arrow::compute::kernels::zip::zip(&mask, &Scalar::new(empty), column)?;
            changed = true;
        }
        out.push(if changed {
            RecordBatch::try_new(b.schema(), columns)?
        } else {
            b.clone()
        });
    }
    Ok(out)
}

/// Runs a step of arrow's decoder, turning a panic into an error, so the row that caused it
/// is set aside like any other bad row. (arrow-cast 59.3 overflows on a decimal exponent of
/// five digits or more, `1e65537`: a panic where overflow checks are on, a wrong value where
/// they are off; fuzzing found it.)
fn guarded<T>(step: impl FnOnce() -> Result<T, ArrowError>) -> Result<T, ArrowError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        Err(ArrowError::ComputeError(format!(
            "the decoder failed: {what}"
        )))
    })
}

/// The first `max` lines of JSON `bytes` (starting at line `first_line`) that hold
/// something, and the bytes they covered.
fn json_records(bytes: &[u8], first_line: u64, max: usize) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let (mut start, mut line) = (0usize, first_line);
    while start < bytes.len() && records.len() < max {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i + 1);
        if bytes[start..end].iter().any(|b| !b.is_ascii_whitespace()) {
            records.push(Record { start, end, line });
        }
        start = end;
        line += 1;
    }
    (records, start)
}

/// The text of column `i` of the CSV record `row`.
fn csv_value(dialect: &Dialect, row: &[u8], i: usize) -> Option<String> {
    let Dialect::Csv { options, .. } = dialect else {
        return None;
    };
    let mut reader = csv_core::ReaderBuilder::new()
        .delimiter(options.delimiter)
        .quote(options.quote)
        .escape(options.escape)
        .build();
    let mut fields = vec![0u8; row.len() + 1];
    let mut ends = vec![0usize; i + 2 + row.iter().filter(|b| **b == options.delimiter).count()];
    let (_, _, _, n) = reader.read_record(row, &mut fields, &mut ends);
    let end = *ends.get(i)?;
    let from = if i == 0 { 0 } else { ends[i - 1] };
    (i < n).then(|| String::from_utf8_lossy(&fields[from..end]).into_owned())
}

/// An arrow error's message without the error kind's prefix.
fn plain(err: &ArrowError) -> String {
    let text = err.to_string();
    for prefix in ["Json error: ", "Csv error: ", "Parser error: "] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}

/// A reject of `rec`, a record of `bytes`.
fn reject(file: &str, bytes: &[u8], rec: Record, reason: String) -> Reject {
    let raw = &bytes[rec.start..rec.end.min(rec.start + MAX_RAW)];
    Reject {
        file: file.to_string(),
        line: rec.line,
        raw: String::from_utf8_lossy(raw)
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::has_doubled;

    #[test]
    fn a_doubled_byte_is_found_inside_a_piece_and_across_two() {
        assert!(has_doubled(&[b"a,\"\",b"], b'"'));
        assert!(has_doubled(&[b"a,\"", b"\",b"], b'"'));
        assert!(!has_doubled(&[b"a,\"x\",b", b"\"y\""], b'"'));
        assert!(has_doubled(&[b"a,\"", b"", b"\",b"], b'"'));
    }
}
