//! A faster decoder for the common case of CSV: a chunk with no escape and no carriage
//! return, whose quotes only enclose whole values (`…,"a, b",…`, no doubled quote, no line
//! feed inside), and whose every record has the schema's number of fields.
//!
//! arrow's CSV decoder runs csv-core's state machine over every byte and copies each field
//! into a buffer of its own before the columns are built; on a CSV → Parquet rewrite that
//! tokenizer was a sixth of the CPU. Here the delimiters, line feeds and quotes are found
//! eight bytes at a time, a record is the bytes up to a line feed, a field the bytes up to a
//! delimiter (or between its quotes), and the columns are built from slices of the chunk.
//!
//! This decoder is an optimisation and nothing else: a value converts with the very
//! function arrow's decoder calls for its type (`Parser`, `parse_decimal`,
//! `string_to_datetime`; a decimal of up to 18 digits is read in 64 bits, to the same
//! value), NULL is what arrow's null test says, and anything it does not handle the same way
//! (a quote inside a value, a blank line, a record of the wrong length, invalid UTF-8, a
//! value that does not convert, a type it does not build) makes it return `None`, so that
//! the caller decodes the chunk with arrow's decoder, which gives the errors and line
//! numbers. A test compares the two on random chunks.

use std::sync::Arc;

use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, PrimitiveArray, PrimitiveBuilder, StringArray, StringViewArray,
};
use datafusion::arrow::compute::kernels::cast_utils::{Parser, parse_decimal, string_to_datetime};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, ArrowTimestampType, DataType, Date32Type, Date64Type, Decimal32Type,
    Decimal64Type, Decimal128Type, Decimal256Type, DecimalType, Float32Type, Float64Type, Int8Type,
    Int16Type, Int32Type, Int64Type, Schema, SchemaRef, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// How to read the chunk: what arrow's decoder would be built with.
#[derive(Debug)]
pub(super) struct PlainCsv<'a> {
    /// The file's columns, all of them.
    pub schema: &'a SchemaRef,
    /// The columns built (indexes into `schema`, ascending: any other order is declined),
    /// or all.
    pub columns: Option<&'a [usize]>,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    /// The values read as NULL; without it, the empty field.
    pub null: Option<&'a regex::Regex>,
    /// Whether the first record is a header, skipped.
    pub header: bool,
    pub batch_size: usize,
}

impl PlainCsv<'_> {
    /// The batches arrow's decoder would make of `parts` (whole records, one piece after the
    /// other), or `None` when this decoder does not read them the same way.
    pub(super) fn decode(&self, parts: &[&[u8]]) -> Option<Vec<RecordBatch>> {
        let fields = self.schema.fields();
        let ncols = fields.len();
        let all: Vec<usize>;
        let columns = match self.columns {
            Some(c) => c,
            None => {
                all = (0..ncols).collect();
                &all
            }
        };
        let (delimiter, quote) = (self.delimiter, self.quote);
        if ncols == 0
            || !delimiter.is_ascii()
            || !quote.is_ascii()
            || delimiter == quote
            || [delimiter, quote]
                .iter()
                .any(|b| matches!(b, b'\n' | b'\r'))
            || columns.windows(2).any(|w| w[0] >= w[1])
            || columns
                .iter()
                .any(|&c| c >= ncols || !builds(fields[c].data_type()))
        {
            return None;
        }
        // An escape, or a carriage return (a line end of three kinds for csv-core): left to
        // arrow's decoder.
        let odd = |p: &&[u8]| match self.escape {
            Some(e) => memchr::memchr2(e, b'\r', p).is_some(),
            None => memchr::memchr(b'\r', p).is_some(),
        };
        if parts.iter().any(odd) {
            return None;
        }
        // csv-core drops a byte-order mark at the start of its first input, and takes an
        // empty input for the end of the records: both left to arrow's decoder.
        if parts
            .first()
            .is_some_and(|p| p.starts_with(b"\xEF\xBB\xBF"))
            || parts.iter().any(|p| p.is_empty())
        {
            return None;
        }
        let text = Segments::of(parts)?;
        // Where each source column goes among those built.
        let mut slot = vec![usize::MAX; ncols];
        for (j, &c) in columns.iter().enumerate() {
            slot[c] = j;
        }
        let schema = Arc::new(Schema::new_with_metadata(
            columns
                .iter()
                .map(|&c| Arc::clone(&fields[c]))
                .collect::<Vec<_>>(),
            self.schema.metadata().clone(),
        ));
        let mut batch = Batch {
            schema,
            values: vec![Vec::with_capacity(self.batch_size); columns.len()],
            rows: 0,
        };
        let mut out = Vec::new();
        let mut skip_header = self.header;
        for segment in text.segments() {
            let bytes = segment.as_bytes();
            // The field being read: its number in the record, where it starts, its value if
            // it was quoted, and the end of the quotes (separators before it are in them).
            let mut field = 0usize;
            let mut start = 0usize;
            let mut quoted: Option<&str> = None;
            let mut skip_to = 0usize;
            if bytes.len() >= u32::MAX as usize {
                return None;
            }
            let hits = separators(bytes, [delimiter, b'\n', quote]);
            for &at in &hits {
                let at = at as usize;
                if at < skip_to {
                    continue;
                }
                let kind = bytes[at];
                if kind == quote {
                    // A quote opens a field, and closes it just before a delimiter or a line
                    // end; anything else (a quote inside a field, a doubled one, a line end
                    // or the empty string quoted) is left to arrow's decoder.
                    let close = memchr::memchr(quote, &bytes[at + 1..]).map(|n| at + 1 + n)?;
                    let value = segment.get(at + 1..close)?;
                    let closes = bytes
                        .get(close + 1)
                        .is_none_or(|&b| b == delimiter || b == b'\n');
                    if at != start
                        || quoted.is_some()
                        || value.is_empty()
                        || value.contains('\n')
                        || !closes
                    {
                        return None;
                    }
                    quoted = Some(value);
                    skip_to = close + 1;
                    continue;
                }
                let value = match quoted.take() {
                    Some(v) => v,
                    None => segment.get(start..at)?,
                };
                if field >= ncols {
                    return None;
                }
                if slot[field] != usize::MAX && !skip_header {
                    batch.values[slot[field]].push(value);
                }
                field += 1;
                start = at + 1;
                if kind == b'\n' {
                    // csv-core skips a blank line, and arrow's decoder then counts lines its
                    // own way: leave such a chunk to it.
                    if field != ncols || (ncols == 1 && value.is_empty()) {
                        return None;
                    }
                    field = 0;
                    if skip_header {
                        skip_header = false;
                        continue;
                    }
                    batch.rows += 1;
                    if batch.rows == self.batch_size {
                        out.push(batch.finish(self.null)?);
                    }
                }
            }
            // The last record of the input may have no line feed.
            if start < bytes.len() || field > 0 {
                let value = quoted.take().or_else(|| segment.get(start..))?;
                if field + 1 != ncols {
                    return None;
                }
                if skip_header {
                    skip_header = false;
                } else {
                    if slot[field] != usize::MAX {
                        batch.values[slot[field]].push(value);
                    }
                    batch.rows += 1;
                }
            }
        }
        if batch.rows > 0 {
            out.push(batch.finish(self.null)?);
        }
        Some(out)
    }
}

/// Whether this decoder builds columns of `t` (arrow's decoder builds a few more).
fn builds(t: &DataType) -> bool {
    use DataType::*;
    match t {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32
        | Float64 | Date32 | Date64 | Utf8 | Utf8View | Decimal32(..) | Decimal64(..)
        | Decimal128(..) | Decimal256(..) | Timestamp(..) => true,
        Time32(u) => matches!(u, TimeUnit::Second | TimeUnit::Millisecond),
        Time64(u) => matches!(u, TimeUnit::Microsecond | TimeUnit::Nanosecond),
        _ => false,
    }
}

/// The rows of a batch being filled: the values of each column built.
struct Batch<'a> {
    schema: SchemaRef,
    values: Vec<Vec<&'a str>>,
    rows: usize,
}

impl Batch<'_> {
    /// The batch of the rows so far (which are then cleared), or `None` if a value does not
    /// convert.
    fn finish(&mut self, null: Option<&regex::Regex>) -> Option<RecordBatch> {
        let is_null = |s: &str| match null {
            Some(r) => r.is_match(s),
            None => s.is_empty(),
        };
        let mut arrays = Vec::with_capacity(self.values.len());
        for (field, column) in self.schema.fields().iter().zip(&mut self.values) {
            arrays.push(build(field.data_type(), column.iter().copied(), is_null)?);
            column.clear();
        }
        let options = RecordBatchOptions::new()
            .with_match_field_names(true)
            .with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options).ok()
    }
}

/// The column of type `t` holding `values`, as arrow's CSV decoder builds it.
fn build<'a>(
    t: &DataType,
    values: impl Iterator<Item = &'a str>,
    is_null: impl Fn(&str) -> bool,
) -> Option<ArrayRef> {
    use DataType::*;
    let strings = values.map(|s| (!is_null(s)).then_some(s));
    Some(match t {
        Utf8View => Arc::new(strings.collect::<StringViewArray>()),
        Utf8 => Arc::new(strings.collect::<StringArray>()),
        Boolean => Arc::new(
            strings
                .map(|s| match s {
                    None => Some(None),
                    Some(s) if s.eq_ignore_ascii_case("false") => Some(Some(false)),
                    Some(s) if s.eq_ignore_ascii_case("true") => Some(Some(true)),
                    Some(_) => None,
                })
                .collect::<Option<BooleanArray>>()?,
        ),
        Int8 => primitive::<Int8Type>(strings)?,
        Int16 => primitive::<Int16Type>(strings)?,
        Int32 => primitive::<Int32Type>(strings)?,
        Int64 => primitive::<Int64Type>(strings)?,
        UInt8 => primitive::<UInt8Type>(strings)?,
        UInt16 => primitive::<UInt16Type>(strings)?,
        UInt32 => primitive::<UInt32Type>(strings)?,
        UInt64 => primitive::<UInt64Type>(strings)?,
        Float32 => primitive::<Float32Type>(strings)?,
        Float64 => primitive::<Float64Type>(strings)?,
        Date32 => primitive::<Date32Type>(strings)?,
        Date64 => primitive::<Date64Type>(strings)?,
        Time32(TimeUnit::Second) => primitive::<Time32SecondType>(strings)?,
        Time32(TimeUnit::Millisecond) => primitive::<Time32MillisecondType>(strings)?,
        Time64(TimeUnit::Microsecond) => primitive::<Time64MicrosecondType>(strings)?,
        Time64(TimeUnit::Nanosecond) => primitive::<Time64NanosecondType>(strings)?,
        &Decimal32(p, s) => decimal::<Decimal32Type>(strings, p, s, |v| {
            parse_decimal::<Decimal32Type>(v, p, s).ok()
        })?,
        &Decimal64(p, s) => decimal::<Decimal64Type>(strings, p, s, |v| {
            parse_decimal::<Decimal64Type>(v, p, s).ok()
        })?,
        // The common values (up to 18 digits, no exponent) read in 64 bits.
        &Decimal128(p, s) => decimal::<Decimal128Type>(strings, p, s, |v| {
            short_decimal(v, p, s).or_else(|| parse_decimal::<Decimal128Type>(v, p, s).ok())
        })?,
        &Decimal256(p, s) => decimal::<Decimal256Type>(strings, p, s, |v| {
            parse_decimal::<Decimal256Type>(v, p, s).ok()
        })?,
        Timestamp(TimeUnit::Second, tz) => timestamp::<TimestampSecondType>(strings, tz)?,
        Timestamp(TimeUnit::Millisecond, tz) => timestamp::<TimestampMillisecondType>(strings, tz)?,
        Timestamp(TimeUnit::Microsecond, tz) => timestamp::<TimestampMicrosecondType>(strings, tz)?,
        Timestamp(TimeUnit::Nanosecond, tz) => timestamp::<TimestampNanosecondType>(strings, tz)?,
        _ => return None,
    })
}

fn primitive<'a, T: ArrowPrimitiveType + Parser>(
    values: impl Iterator<Item = Option<&'a str>>,
) -> Option<ArrayRef> {
    let mut builder = PrimitiveBuilder::<T>::with_capacity(values.size_hint().0);
    for v in values {
        match v {
            None => builder.append_null(),
            Some(s) => builder.append_value(T::parse(s)?),
        }
    }
    Some(Arc::new(builder.finish()))
}

/// A decimal column, each value read by `read` (`parse_decimal`, or first `short_decimal`).
fn decimal<'a, T: DecimalType>(
    values: impl Iterator<Item = Option<&'a str>>,
    precision: u8,
    scale: i8,
    read: impl Fn(&str) -> Option<T::Native>,
) -> Option<ArrayRef> {
    let (low, _) = values.size_hint();
    let mut builder = PrimitiveBuilder::<T>::with_capacity(low);
    for v in values {
        match v {
            None => builder.append_null(),
            Some(s) => builder.append_value(read(s)?),
        }
    }
    Some(Arc::new(
        builder
            .finish()
            .with_precision_and_scale(precision, scale)
            .ok()?,
    ))
}

/// What `parse_decimal` reads `s` as, when `s` is `[+-]digits[.digits]` with at most 18
/// significant digits kept and fits `precision`; otherwise `None`, and `parse_decimal`
/// decides (an exponent, an overflow, a bad value). Like it, leading zeros of the integer
/// part do not count as digits, and fractional digits beyond `scale` are dropped.
fn short_decimal(s: &str, precision: u8, scale: i8) -> Option<i128> {
    let scale = u32::try_from(scale).ok()?;
    let bytes = s.as_bytes();
    let (negative, body) = match bytes.first()? {
        b'-' => (true, &bytes[1..]),
        b'+' => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let (mut value, mut digits, mut fractionals, mut any) = (0u64, 0u32, 0u32, false);
    let mut rest = body.iter();
    let mut point = false;
    for &b in rest.by_ref() {
        match b {
            b'0'..=b'9' => {
                any = true;
                if digits == 0 && b == b'0' {
                    continue;
                }
                digits += 1;
                value = value * 10 + u64::from(b - b'0');
            }
            b'.' => {
                point = true;
                break;
            }
            _ => return None,
        }
        if digits > 18 {
            return None;
        }
    }
    if point {
        for &b in rest {
            if !b.is_ascii_digit() {
                return None;
            }
            any = true;
            if fractionals == scale {
                continue;
            }
            fractionals += 1;
            digits += 1;
            value = value * 10 + u64::from(b - b'0');
            if digits > 18 {
                return None;
            }
        }
    }
    let shift = scale - fractionals;
    if !any || shift + digits > u32::from(precision) {
        return None;
    }
    let value = i128::from(value) * 10i128.pow(shift);
    Some(if negative { -value } else { value })
}

fn timestamp<'a, T: ArrowTimestampType>(
    values: impl Iterator<Item = Option<&'a str>>,
    tz: &Option<Arc<str>>,
) -> Option<ArrayRef> {
    fn read<T: ArrowTimestampType, Z: chrono::TimeZone>(zone: &Z, s: &str) -> Option<i64> {
        let date = string_to_datetime(zone, s).ok()?;
        match T::UNIT {
            TimeUnit::Second => Some(date.timestamp()),
            TimeUnit::Millisecond => Some(date.timestamp_millis()),
            TimeUnit::Microsecond => Some(date.timestamp_micros()),
            TimeUnit::Nanosecond => date.timestamp_nanos_opt(),
        }
    }
    let array: PrimitiveArray<T> = match tz {
        None => values
            .map(|v| v.map_or(Some(None), |s| read::<T, _>(&chrono::Utc, s).map(Some)))
            .collect::<Option<_>>()?,
        Some(name) => {
            let zone: Tz = name.parse().ok()?;
            values
                .map(|v| v.map_or(Some(None), |s| read::<T, _>(&zone, s).map(Some)))
                .collect::<Option<PrimitiveArray<T>>>()?
                .with_timezone(Arc::clone(name))
        }
    };
    Some(Arc::new(array))
}

/// The text of a chunk in pieces that each end at a record's end: the parts, cut at their
/// last line feed, and between them the record that spans two (or more) parts, copied.
struct Segments<'a> {
    order: Vec<Piece<'a>>,
    spans: Vec<String>,
}

enum Piece<'a> {
    Part(&'a str),
    Span(usize),
}

impl<'a> Segments<'a> {
    /// `None` if the bytes are not UTF-8.
    fn of(parts: &[&'a [u8]]) -> Option<Segments<'a>> {
        let mut order = Vec::with_capacity(parts.len() * 2);
        let mut spans = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let mut rest: &[u8] = part;
            if !pending.is_empty() {
                match memchr::memchr(b'\n', rest) {
                    Some(nl) => {
                        pending.extend_from_slice(&rest[..=nl]);
                        spans.push(String::from_utf8(std::mem::take(&mut pending)).ok()?);
                        order.push(Piece::Span(spans.len() - 1));
                        rest = &rest[nl + 1..];
                    }
                    None => {
                        pending.extend_from_slice(rest);
                        continue;
                    }
                }
            }
            let cut = if i + 1 == parts.len() {
                rest.len()
            } else {
                memchr::memrchr(b'\n', rest).map_or(0, |nl| nl + 1)
            };
            if cut > 0 {
                order.push(Piece::Part(std::str::from_utf8(&rest[..cut]).ok()?));
            }
            pending.extend_from_slice(&rest[cut..]);
        }
        if !pending.is_empty() {
            spans.push(String::from_utf8(pending).ok()?);
            order.push(Piece::Span(spans.len() - 1));
        }
        Some(Segments { order, spans })
    }

    fn segments(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(|p| match p {
            Piece::Part(s) => *s,
            Piece::Span(i) => self.spans[*i].as_str(),
        })
    }
}

/// Where the bytes of `bytes` that are one of `three` are, in order.
///
/// Eight bytes at a time: a word's bytes equal to one of them are found with the exact
/// zero-byte test (no carry crosses a byte), then taken lowest first.
fn separators(bytes: &[u8], three: [u8; 3]) -> Vec<u32> {
    const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let splat = three.map(|b| u64::from_ne_bytes([b; 8]));
    // The high bit of each byte of `w` that is zero.
    let zero = |w: u64| !(((w & LOW) + LOW) | w | LOW);
    let mut out = Vec::with_capacity(bytes.len() / 6);
    let mut words = bytes.chunks_exact(8);
    let mut base = 0u32;
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let w = u64::from_le_bytes(w);
        let mut hits = zero(w ^ splat[0]) | zero(w ^ splat[1]) | zero(w ^ splat[2]);
        while hits != 0 {
            out.push(base + hits.trailing_zeros() / 8);
            hits &= hits - 1;
        }
        base += 8;
    }
    for (i, b) in words.remainder().iter().enumerate() {
        if three.contains(b) {
            out.push(base + i as u32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! The plain decoder against arrow's, on random chunks cut into random pieces: whenever
    //! it reads a chunk, its batches are arrow's; and it reads the clean ones.

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use datafusion::arrow::datatypes::Field;

    use super::*;

    fn types() -> Vec<DataType> {
        vec![
            DataType::Int64,
            DataType::Int32,
            DataType::UInt8,
            DataType::Float64,
            DataType::Boolean,
            DataType::Utf8,
            DataType::Utf8View,
            DataType::Decimal128(15, 2),
            DataType::Decimal128(5, 3),
            DataType::Decimal128(38, 10),
            DataType::Decimal64(10, 2),
            DataType::Date32,
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Timestamp(TimeUnit::Second, Some(Arc::<str>::from("+02:00"))),
        ]
    }

    /// A value for a column of `t`: mostly good, sometimes empty, odd or bad.
    fn value(rng: &mut StdRng, t: &DataType, messy: bool) -> String {
        let digits = |rng: &mut StdRng, n: usize| -> String {
            (0..n)
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect()
        };
        if rng.random_ratio(1, 20) {
            return String::new();
        }
        if messy && rng.random_ratio(1, 150) {
            let odd = [
                "x",
                "\"q,1\"",
                "\"\"",
                "a\"b",
                "\r",
                "1e3",
                "-",
                ".",
                "+.5",
                "NULL",
                "\u{e9}t\u{e9}",
                "\"l\nf\"",
                "\"a\"\"b\"",
                " 1",
                "9999999999999999999999",
                "a\"b\"",
                "\"q\"x",
            ];
            return odd[rng.random_range(0..odd.len())].to_string();
        }
        match t {
            DataType::Int64 | DataType::Int32 => {
                let n = rng.random_range(1..10);
                let sign = if rng.random_bool(0.3) { "-" } else { "" };
                format!("{sign}{}", digits(rng, n))
            }
            DataType::UInt8 => rng.random_range(0..256u32).to_string(),
            DataType::Float64 => format!("{}", rng.random_range(-1e6..1e6f64)),
            DataType::Boolean => ["true", "FALSE", "True"][rng.random_range(0..3)].into(),
            DataType::Utf8 | DataType::Utf8View => {
                let n = rng.random_range(1..30);
                let s: String = (0..n)
                    .map(|_| char::from(rng.random_range(b' '..=b'~')))
                    .filter(|c| *c != '"' && *c != ',')
                    .collect();
                let s = if s.is_empty() { "s".to_string() } else { s };
                if rng.random_ratio(1, 6) {
                    format!("\"{s}, and more\"")
                } else {
                    s
                }
            }
            DataType::Decimal128(..) | DataType::Decimal64(..) => {
                let sign = ["", "-", "+"][rng.random_range(0..3)];
                let int = rng.random_range(0..22);
                let frac = rng.random_range(0..14);
                let zeros = "0".repeat(rng.random_range(0..3));
                match rng.random_range(0..4) {
                    0 => format!("{sign}{zeros}{}", digits(rng, int.max(1))),
                    1 => format!("{sign}{}.", digits(rng, int.max(1))),
                    2 => format!("{sign}.{}", digits(rng, frac.max(1))),
                    _ => format!("{sign}{zeros}{}.{}", digits(rng, int), digits(rng, frac)),
                }
            }
            DataType::Date32 => format!(
                "{}-{:02}-{:02}",
                rng.random_range(1900..2100),
                rng.random_range(1..13),
                rng.random_range(1..29)
            ),
            _ => format!(
                "2026-{:02}-{:02}T{:02}:{:02}:{:02}{}",
                rng.random_range(1..13),
                rng.random_range(1..29),
                rng.random_range(0..24),
                rng.random_range(0..60),
                rng.random_range(0..60),
                ["", "Z", ".123456", "+01:00"][rng.random_range(0..4)]
            ),
        }
    }

    fn arrow_decode(
        schema: &SchemaRef,
        parts: &[&[u8]],
        header: bool,
        columns: Option<&[usize]>,
        null: Option<&regex::Regex>,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>, datafusion::arrow::error::ArrowError> {
        let mut b = datafusion::arrow::csv::ReaderBuilder::new(Arc::clone(schema))
            .with_header(header)
            .with_batch_size(batch_size);
        if let Some(c) = columns {
            b = b.with_projection(c.to_vec());
        }
        if let Some(n) = null {
            b = b.with_null_regex(n.clone());
        }
        let mut d = b.build_decoder();
        let mut out = vec![];
        for buf in parts {
            let mut p = 0;
            loop {
                let n = d.decode(&buf[p..])?;
                p += n;
                if d.capacity() == 0 {
                    out.extend(d.flush()?);
                } else if p == buf.len() || n == 0 {
                    break;
                }
            }
        }
        d.decode(&[])?;
        out.extend(d.flush()?);
        Ok(out)
    }

    #[test]
    fn whatever_it_reads_it_reads_as_arrows_decoder_does() {
        let mut rng = StdRng::seed_from_u64(0x05ee_dc5f);
        let all_types = types();
        let null_value = regex::Regex::new("^(?:|NULL)$").unwrap();
        let (mut read, mut messy_read, mut clean_read) = (0, 0, 0);
        for case in 0..1500 {
            let ncols = rng.random_range(1..7);
            let types: Vec<DataType> = (0..ncols)
                .map(|_| all_types[rng.random_range(0..all_types.len())].clone())
                .collect();
            let schema: SchemaRef = Arc::new(Schema::new(
                types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Field::new(format!("c{i}"), t.clone(), true))
                    .collect::<Vec<_>>(),
            ));
            let messy = case % 3 == 0;
            let header = rng.random_bool(0.5);
            let mut text = String::new();
            let marked = rng.random_ratio(1, 10);
            if marked {
                text.push('\u{feff}');
            }
            if header {
                let names: Vec<String> = (0..ncols).map(|i| format!("c{i}")).collect();
                text.push_str(&names.join(","));
                text.push('\n');
            }
            for _ in 0..rng.random_range(0..60) {
                let mut row: Vec<String> =
                    types.iter().map(|t| value(&mut rng, t, messy)).collect();
                if messy && rng.random_ratio(1, 50) {
                    row.pop();
                }
                text.push_str(&row.join(","));
                if !messy || !rng.random_ratio(1, 50) {
                    text.push('\n');
                }
            }
            if rng.random_bool(0.3) {
                text.pop();
            }
            let bytes = text.as_bytes();
            // Cut into up to four pieces anywhere, even inside a character.
            let mut cuts: Vec<usize> = (0..rng.random_range(0..4))
                .map(|_| rng.random_range(0..=bytes.len()))
                .collect();
            cuts.sort_unstable();
            let mut parts = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                if c > from {
                    parts.push(&bytes[from..c]);
                }
                from = c;
            }
            let columns: Option<Vec<usize>> = rng
                .random_bool(0.4)
                .then(|| (0..ncols).filter(|_| rng.random_bool(0.6)).collect());
            let null = rng.random_ratio(1, 5).then(|| null_value.clone());
            let batch_size = [1, 3, 7, 8192][rng.random_range(0..4)];
            let plain = PlainCsv {
                schema: &schema,
                columns: columns.as_deref(),
                delimiter: b',',
                quote: b'"',
                escape: None,
                null: null.as_ref(),
                header,
                batch_size,
            };
            let fast = plain.decode(&parts);
            let slow = arrow_decode(
                &schema,
                &parts,
                header,
                columns.as_deref(),
                null.as_ref(),
                batch_size,
            );
            if let Some(fast) = &fast {
                read += 1;
                messy_read += usize::from(messy);
                let slow = slow.as_ref().unwrap_or_else(|e| {
                    panic!(
                        "case {case}: read by the plain decoder, refused by arrow's: {e}\n{text:?}"
                    )
                });
                assert_eq!(fast, slow, "case {case}: {text:?}");
            }
            // A clean chunk that arrow reads, it reads too (one column: an empty value is a
            // blank line, which it leaves to arrow; a byte-order mark is left to arrow too).
            if !messy && !marked && ncols > 1 && slow.is_ok() {
                clean_read += 1;
                assert!(
                    fast.is_some(),
                    "case {case}: a clean chunk not read: {text:?}"
                );
            }
        }
        // Enough of both kinds, or the comparison says little.
        assert!(
            read > 400 && messy_read > 60 && clean_read > 300,
            "read {read}: {messy_read} messy, {clean_read} clean"
        );
    }

    #[test]
    fn a_byte_order_mark_or_an_empty_piece_is_left_to_arrows_decoder() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let plain = PlainCsv {
            schema: &schema,
            columns: None,
            delimiter: b',',
            quote: b'"',
            escape: None,
            null: None,
            header: false,
            batch_size: 8192,
        };
        // arrow reads the first value as "x": csv-core drops the mark.
        let marked: &[u8] = b"\xEF\xBB\xBFx,1\ny,2\n";
        assert!(plain.decode(&[marked]).is_none());
        // An empty piece ends arrow's input mid-record.
        assert!(plain.decode(&[b"x,", b"", b"1\n"]).is_none());
        // Without either, it reads them.
        let read = plain.decode(&[b"x,", b"1\ny,2\n"]).expect("read");
        assert_eq!(read[0].num_rows(), 2);
    }

    #[test]
    fn short_decimals_read_as_parse_decimal_reads_them() {
        let mut rng = StdRng::seed_from_u64(18);
        let cases = [
            "0",
            "-0",
            "+7",
            "007.50",
            "5.",
            "-.5",
            ".05",
            "123.456789",
            "999999999999999999",
            "1234567890123456789",
            "0.000000000000000000001",
            "12345678901234.5",
            "1e3",
            "",
            "-",
            ".",
            "+.",
            "1.2.3",
            "99999999999999999.99",
        ];
        let mut all: Vec<String> = cases.iter().map(|s| s.to_string()).collect();
        for _ in 0..20_000 {
            let int: String = (0..rng.random_range(0..22))
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            let frac: String = (0..rng.random_range(0..12))
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            let sign = ["", "-", "+"][rng.random_range(0..3)];
            let point = if rng.random_bool(0.8) { "." } else { "" };
            all.push(format!("{sign}{int}{point}{frac}"));
        }
        let mut short = 0;
        for s in &all {
            for (p, sc) in [(15u8, 2i8), (38, 10), (5, 3), (18, 0), (10, 9)] {
                let slow = parse_decimal::<Decimal128Type>(s, p, sc).ok();
                if let Some(fast) = short_decimal(s, p, sc) {
                    short += 1;
                    assert_eq!(Some(fast), slow, "{s:?} as ({p}, {sc})");
                }
            }
        }
        assert!(short > 30_000, "{short} read the short way");
    }
}
