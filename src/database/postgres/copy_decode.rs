//! PostgreSQL's binary COPY format decoded straight into Arrow columns: the bytes of
//! `COPY (SELECT ...) TO STDOUT (FORMAT binary)`, in chunks as the connection delivers them,
//! become record batches. Each value is decoded from its wire format exactly, or the read
//! fails naming the column and the value: a value Arrow's type cannot hold (a timestamp
//! `infinity`, a numeric with more digits than its declared scale) is never turned into a
//! different one.
//!
//! The format: an 11-byte signature, a 32-bit flags word and a header extension; then per row
//! a 16-bit field count and per field a 32-bit length (-1 for NULL) and the value's bytes;
//! then a field count of -1. All integers big-endian.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch, RecordBatchOptions,
    StringArray, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};

/// The signature opening every binary COPY stream.
pub(super) const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Microseconds from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
pub(super) const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Days from 1970-01-01 to 2000-01-01.
pub(super) const EPOCH_DAYS: i32 = 10_957;

/// How a column's wire values are read: by its PostgreSQL type, into its Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// bool.
    Bool,
    /// int2.
    Int2,
    /// int4.
    Int4,
    /// int8.
    Int8,
    /// float4.
    Float4,
    /// float8.
    Float8,
    /// numeric, as Decimal128 of this precision and scale.
    Numeric {
        /// Digits in all.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// Text of any kind (text, varchar, bpchar, name, json, enum labels).
    Text,
    /// jsonb: a version byte, then text.
    Jsonb,
    /// bytea.
    Bytes,
    /// uuid, as its canonical text.
    Uuid,
    /// date.
    Date,
    /// time (without time zone).
    Time,
    /// timestamp (without time zone).
    Timestamp,
    /// timestamptz (UTC).
    TimestampTz,
}

impl Wire {
    /// The Arrow type the values become.
    pub(crate) fn data_type(self) -> DataType {
        match self {
            Wire::Bool => DataType::Boolean,
            Wire::Int2 => DataType::Int16,
            Wire::Int4 => DataType::Int32,
            Wire::Int8 => DataType::Int64,
            Wire::Float4 => DataType::Float32,
            Wire::Float8 => DataType::Float64,
            Wire::Numeric { precision, scale } => DataType::Decimal128(precision, scale),
            Wire::Text | Wire::Jsonb | Wire::Uuid => DataType::Utf8,
            Wire::Bytes => DataType::Binary,
            Wire::Date => DataType::Date32,
            Wire::Time => DataType::Time64(TimeUnit::Microsecond),
            Wire::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Wire::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        }
    }
}

/// A value that could not be decoded: which column, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    /// The column, when the error is in one.
    pub column: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.column {
            Some(c) => write!(f, "column {c}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn stream_error(message: impl Into<String>) -> DecodeError {
    DecodeError {
        column: None,
        message: message.into(),
    }
}

/// One column being built.
enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Dec(Decimal128Builder, u8, i8),
    /// Text, gathered as bytes and checked to be UTF-8 once per batch (one pass over the
    /// batch's text is much cheaper than one per value).
    Text(BinaryBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Ts(TimestampMicrosecondBuilder, Option<Arc<str>>),
}

impl Builder {
    fn new(wire: Wire) -> Builder {
        match wire {
            Wire::Bool => Builder::Bool(BooleanBuilder::new()),
            Wire::Int2 => Builder::I16(Int16Builder::new()),
            Wire::Int4 => Builder::I32(Int32Builder::new()),
            Wire::Int8 => Builder::I64(Int64Builder::new()),
            Wire::Float4 => Builder::F32(Float32Builder::new()),
            Wire::Float8 => Builder::F64(Float64Builder::new()),
            Wire::Numeric { precision, scale } => {
                Builder::Dec(Decimal128Builder::new(), precision, scale)
            }
            Wire::Text | Wire::Jsonb | Wire::Uuid => Builder::Text(BinaryBuilder::new()),
            Wire::Bytes => Builder::Bytes(BinaryBuilder::new()),
            Wire::Date => Builder::Date(Date32Builder::new()),
            Wire::Time => Builder::Time(Time64MicrosecondBuilder::new()),
            Wire::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::new(), None),
            Wire::TimestampTz => {
                Builder::Ts(TimestampMicrosecondBuilder::new(), Some("UTC".into()))
            }
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::I16(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::F32(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Dec(b, ..) => b.append_null(),
            Builder::Text(b) => b.append_null(),
            Builder::Bytes(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Ts(b, _) => b.append_null(),
        }
    }

    /// Appends the value `v` (its wire bytes) of a column read as `wire`.
    fn append(&mut self, wire: Wire, v: &[u8]) -> Result<(), String> {
        let fixed = |n: usize| -> Result<&[u8], String> {
            if v.len() == n {
                Ok(v)
            } else {
                Err(format!("expected {n} bytes, got {}", v.len()))
            }
        };
        match (self, wire) {
            (Builder::Bool(b), _) => b.append_value(fixed(1)?[0] != 0),
            (Builder::I16(b), _) => b.append_value(i16::from_be_bytes(array(fixed(2)?)?)),
            (Builder::I32(b), _) => b.append_value(i32::from_be_bytes(array(fixed(4)?)?)),
            (Builder::I64(b), _) => b.append_value(i64::from_be_bytes(array(fixed(8)?)?)),
            (Builder::F32(b), _) => b.append_value(f32::from_be_bytes(array(fixed(4)?)?)),
            (Builder::F64(b), _) => b.append_value(f64::from_be_bytes(array(fixed(8)?)?)),
            (Builder::Dec(b, p, s), _) => b.append_value(numeric(v, *p, *s)?),
            (Builder::Text(b), Wire::Jsonb) => match v.split_first() {
                Some((1, text)) => b.append_value(text),
                _ => return Err("jsonb of an unknown version".into()),
            },
            (Builder::Text(b), Wire::Uuid) => b.append_value(uuid(fixed(16)?)),
            (Builder::Text(b), _) => b.append_value(v),
            (Builder::Bytes(b), _) => b.append_value(v),
            (Builder::Date(b), _) => {
                let days = i32::from_be_bytes(array(fixed(4)?)?);
                if days == i32::MAX || days == i32::MIN {
                    return Err("the date is infinity, which Arrow dates cannot hold".into());
                }
                match days.checked_add(EPOCH_DAYS) {
                    Some(d) => b.append_value(d),
                    None => {
                        return Err(format!("date {days} days after 2000-01-01 is out of range"));
                    }
                }
            }
            (Builder::Time(b), _) => {
                let micros = i64::from_be_bytes(array(fixed(8)?)?);
                // PostgreSQL allows 24:00:00, a time of day Arrow's type does not hold.
                if !(0..86_400_000_000).contains(&micros) {
                    return Err("the time 24:00:00, which Arrow times cannot hold".into());
                }
                b.append_value(micros)
            }
            (Builder::Ts(b, _), _) => {
                let micros = i64::from_be_bytes(array(fixed(8)?)?);
                if micros == i64::MAX || micros == i64::MIN {
                    return Err(
                        "the timestamp is infinity, which Arrow timestamps cannot hold".into(),
                    );
                }
                match micros.checked_add(EPOCH_MICROS) {
                    Some(t) => b.append_value(t),
                    None => return Err("the timestamp is out of Arrow's range".into()),
                }
            }
        }
        Ok(())
    }

    /// The column's values so far, as an array; an error if text is not UTF-8.
    fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Dec(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            ),
            Builder::Text(b) => {
                let (offsets, values, nulls) = b.finish().into_parts();
                Arc::new(
                    StringArray::try_new(offsets, values, nulls)
                        .map_err(|e| format!("text that is not UTF-8 ({e})"))?,
                )
            }
            Builder::Bytes(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Ts(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
        })
    }
}

fn array<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", v.len()))
}

fn uuid(v: &[u8]) -> String {
    let hex: String = v.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Powers of ten that fit an i128: `POW10[k]` = 10^k.
const POW10: [i128; 39] = {
    let mut p = [1i128; 39];
    let mut k = 1;
    while k < 39 {
        p[k] = p[k - 1] * 10;
        k += 1;
    }
    p
};

/// A numeric's wire value as the unscaled integer of a Decimal128(`precision`, `scale`):
/// exact, or an error (NaN, infinity, more digits than the type holds, a fraction the scale
/// would round).
///
/// The wire value is `ndigits` base-10000 digits, most significant first, the first worth
/// 10000^`weight`. They are read as one integer (the last digit cut to the scale), which is
/// then scaled once by the power of ten that puts its last digit at the place `scale` gives
/// it: no 128-bit division, and one multiplication a digit.
fn numeric(v: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let word = |i: usize| -> Result<i16, String> {
        v.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric cut short".to_string())
    };
    let ndigits = word(0)?.max(0) as usize;
    let weight = i32::from(word(1)?);
    let sign = word(2)? as u16;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("NaN, which a decimal cannot hold".into()),
        0xD000 | 0xF000 => return Err("infinity, which a decimal cannot hold".into()),
        other => return Err(format!("a numeric with sign word {other:#06x}")),
    }
    let too_many = || format!("a value with more digits than decimal({precision},{scale}) holds");
    let rounded = || {
        format!(
            "a value with more decimals than decimal({precision},{scale}) keeps (it would be \
             rounded)"
        )
    };
    // Trailing zero digits change nothing but the scaling (PostgreSQL strips them anyway).
    let mut last = ndigits;
    while last > 0 && word(4 + last - 1)? == 0 {
        last -= 1;
    }
    // The power of ten the integer of digits 0..last is scaled by. Below zero, that many
    // decimals of the last digit fall past the scale: they must be zeros.
    let mut exp = 4 * (weight + 1 - last as i32) + i32::from(scale);
    if last > 0 && exp <= -4 {
        // A whole (nonzero) base-10000 digit past the scale.
        return Err(rounded());
    }
    let mut acc: i128 = 0;
    for i in 0..last {
        let mut d = word(4 + i)?;
        if !(0..10_000).contains(&d) {
            return Err(format!("a numeric digit {d} out of range"));
        }
        let mut base = 10_000;
        if i + 1 == last && exp < 0 {
            let cut = 10i16.pow((-exp) as u32);
            if d % cut != 0 {
                return Err(rounded());
            }
            d /= cut;
            base /= cut;
            exp = 0;
        }
        acc = acc
            .checked_mul(i128::from(base))
            .and_then(|a| a.checked_add(i128::from(d)))
            .ok_or_else(too_many)?;
    }
    if exp > 0 && acc != 0 {
        acc = POW10
            .get(exp as usize)
            .and_then(|p| acc.checked_mul(*p))
            .ok_or_else(too_many)?;
    }
    if POW10
        .get(usize::from(precision))
        .is_some_and(|limit| acc >= *limit)
    {
        return Err(too_many());
    }
    Ok(if sign == 0x4000 { -acc } else { acc })
}

/// Decodes one binary COPY stream into batches of `schema` (whose columns are read as
/// `wires`, in order).
pub(crate) struct CopyDecoder {
    schema: SchemaRef,
    wires: Vec<Wire>,
    builders: Vec<Builder>,
    buf: BytesMut,
    header_read: bool,
    done: bool,
    rows: usize,
    batch_rows: usize,
}

impl CopyDecoder {
    /// A decoder of rows of `schema`, read as `wires`, in batches of `batch_rows`.
    pub(crate) fn new(schema: SchemaRef, wires: Vec<Wire>, batch_rows: usize) -> CopyDecoder {
        let builders = wires.iter().map(|w| Builder::new(*w)).collect();
        CopyDecoder {
            schema,
            wires,
            builders,
            buf: BytesMut::new(),
            header_read: false,
            done: false,
            rows: 0,
            batch_rows: batch_rows.max(1),
        }
    }

    /// Takes in the next chunk of the stream; returns the batches it completed.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<RecordBatch>, DecodeError> {
        let mut out = Vec::new();
        if self.buf.is_empty() {
            // The usual case: PostgreSQL sends each row in a message of its own, so chunks
            // hold whole rows, decoded where they lie; only a row cut off is kept for later.
            let used = self.take_rows(chunk, &mut out)?;
            self.buf.extend_from_slice(&chunk[used..]);
        } else {
            self.buf.extend_from_slice(chunk);
            let mut buf = std::mem::take(&mut self.buf);
            let used = self.take_rows(&buf, &mut out);
            buf.advance(*used.as_ref().unwrap_or(&0));
            self.buf = buf;
            used?;
        }
        Ok(out)
    }

    /// Decodes the header (once) and the whole rows at the front of `bytes`, pushing each
    /// batch completed to `out`; returns the bytes used.
    fn take_rows(
        &mut self,
        bytes: &[u8],
        out: &mut Vec<RecordBatch>,
    ) -> Result<usize, DecodeError> {
        let mut pos = 0;
        if !self.header_read {
            if bytes.len() < SIGNATURE.len() + 8 {
                return Ok(0);
            }
            if &bytes[..SIGNATURE.len()] != SIGNATURE {
                return Err(stream_error("not a binary COPY stream"));
            }
            let ext = u32::from_be_bytes([bytes[15], bytes[16], bytes[17], bytes[18]]) as usize;
            if bytes.len() < 19 + ext {
                return Ok(0);
            }
            pos = 19 + ext;
            self.header_read = true;
        }
        while !self.done {
            let row = &bytes[pos..];
            let Some(len) = whole_row(row, self.wires.len())? else {
                break;
            };
            pos += len;
            if row[..2] == (-1i16).to_be_bytes() {
                // The trailer.
                self.done = true;
                break;
            }
            self.decode_row(&row[..len])?;
            self.rows += 1;
            if self.rows >= self.batch_rows {
                out.push(self.batch()?);
            }
        }
        Ok(pos)
    }

    /// Appends one whole row (checked by [`whole_row`]) to the builders.
    fn decode_row(&mut self, row: &[u8]) -> Result<(), DecodeError> {
        let mut pos = 2;
        for (i, (wire, builder)) in self.wires.iter().zip(&mut self.builders).enumerate() {
            let n = i32::from_be_bytes([row[pos], row[pos + 1], row[pos + 2], row[pos + 3]]);
            pos += 4;
            if n < 0 {
                builder.append_null();
            } else {
                let v = &row[pos..pos + n as usize];
                if let Err(message) = builder.append(*wire, v) {
                    return Err(DecodeError {
                        column: Some(self.schema.field(i).name().clone()),
                        message,
                    });
                }
                pos += n as usize;
            }
        }
        Ok(())
    }

    /// The rows taken in so far, as a batch.
    fn batch(&mut self) -> Result<RecordBatch, DecodeError> {
        let columns = (self.builders.iter_mut().enumerate())
            .map(|(i, b)| {
                b.finish().map_err(|message| DecodeError {
                    column: Some(self.schema.field(i).name().clone()),
                    message,
                })
            })
            .collect::<Result<Vec<ArrayRef>, _>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)
            .map_err(|e| stream_error(e.to_string()))
    }

    /// The last batch, once the stream has ended; an error if it ended without its trailer
    /// (the connection closed mid-COPY).
    pub(crate) fn finish(mut self) -> Result<Option<RecordBatch>, DecodeError> {
        if !self.done {
            return Err(stream_error(
                "the COPY stream ended before its end marker (the connection was closed?)",
            ));
        }
        if self.rows == 0 {
            return Ok(None);
        }
        self.batch().map(Some)
    }
}

/// The length of the row at the front of `b`, if it is all there: a row of `fields` fields,
/// or the trailer (a field count of -1), whose length is 2.
fn whole_row(b: &[u8], fields: usize) -> Result<Option<usize>, DecodeError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let count = i16::from_be_bytes([b[0], b[1]]);
    if count == -1 {
        return Ok(Some(2));
    }
    if count as usize != fields {
        return Err(stream_error(format!(
            "a row of {count} fields, expected {fields}"
        )));
    }
    let mut pos = 2;
    for _ in 0..fields {
        if b.len() < pos + 4 {
            return Ok(None);
        }
        let n = i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]]);
        pos += 4;
        if n > 0 {
            pos += n as usize;
        }
    }
    Ok((b.len() >= pos).then_some(pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};

    /// A binary COPY stream of `rows` (each value `None` for NULL, else its wire bytes).
    fn stream(rows: &[Vec<Option<Vec<u8>>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(0u32.to_be_bytes());
        for row in rows {
            out.extend((row.len() as i16).to_be_bytes());
            for v in row {
                match v {
                    None => out.extend((-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend((b.len() as i32).to_be_bytes());
                        out.extend(b);
                    }
                }
            }
        }
        out.extend((-1i16).to_be_bytes());
        out
    }

    fn numeric_bytes(ndigits: i16, weight: i16, sign: u16, dscale: u16, d: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight, sign as i16, dscale as i16] {
            v.extend(w.to_be_bytes());
        }
        for x in d {
            v.extend(x.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_are_exact_or_refused() {
        // 12345.678 = digits [1, 2345, 6780], weight 1
        let v = numeric_bytes(3, 1, 0, 3, &[1, 2345, 6780]);
        assert_eq!(numeric(&v, 10, 3), Ok(12_345_678));
        assert_eq!(numeric(&v, 10, 4), Ok(123_456_780));
        assert!(numeric(&v, 10, 2).unwrap_err().contains("rounded"));
        assert!(numeric(&v, 5, 3).unwrap_err().contains("more digits"));
        let neg = numeric_bytes(1, -1, 0x4000, 4, &[5]); // -0.0005
        assert_eq!(numeric(&neg, 10, 4), Ok(-5));
        assert_eq!(numeric(&numeric_bytes(0, 0, 0, 0, &[]), 10, 2), Ok(0));
        assert!(
            numeric(&numeric_bytes(0, 0, 0xC000, 0, &[]), 10, 2)
                .unwrap_err()
                .contains("NaN")
        );
    }

    /// The wire value of the decimal text `int.frac` (ASCII digits), negative if `neg`, in
    /// base-10000 groups aligned on the point, with `pad` zero groups left at the end (which
    /// PostgreSQL strips; a decoder must not mind them).
    fn numeric_text_bytes(neg: bool, int: &str, frac: &str, pad: usize) -> Vec<u8> {
        let int = int.trim_start_matches('0');
        let lead = (4 - int.len() % 4) % 4;
        let tail = (4 - frac.len() % 4) % 4;
        let all = format!("{}{int}{frac}{}", "0".repeat(lead), "0".repeat(tail));
        let mut groups: Vec<i16> = (0..all.len() / 4)
            .map(|g| all[g * 4..g * 4 + 4].parse().unwrap())
            .collect();
        let mut weight = ((lead + int.len()) / 4) as i16 - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        groups.extend(std::iter::repeat_n(0, pad));
        let sign = if neg { 0x4000 } else { 0 };
        numeric_bytes(
            groups.len() as i16,
            weight,
            sign,
            frac.len() as u16,
            &groups,
        )
    }

    #[test]
    fn numerics_match_their_decimal_text() {
        // Oracle: the value's decimal text, cut or padded to the scale by hand.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1414);
        let digit = |rng: &mut rand::rngs::StdRng| char::from(b'0' + rng.random_range(0..10u8));
        for _ in 0..20_000 {
            let int: String = (0..rng.random_range(0..24))
                .map(|_| digit(&mut rng))
                .collect();
            let frac: String = (0..rng.random_range(0..12))
                .map(|_| digit(&mut rng))
                .collect();
            let neg = rng.random_bool(0.3);
            let scale: i8 = rng.random_range(0..12);
            let precision: u8 = rng.random_range(1..=38).max(scale as u8).max(1);
            let v = numeric_text_bytes(neg, &int, &frac, rng.random_range(0..3));
            let got = numeric(&v, precision, scale);
            let keep = frac.len().min(scale as usize);
            let want = if frac[keep..].bytes().any(|b| b != b'0') {
                Err("rounded")
            } else {
                let text = format!(
                    "{int}{}{}",
                    &frac[..keep],
                    "0".repeat(scale as usize - keep)
                );
                let text = text.trim_start_matches('0');
                if text.len() > precision as usize {
                    Err("more digits")
                } else {
                    let n: i128 = if text.is_empty() {
                        0
                    } else {
                        text.parse().unwrap()
                    };
                    Ok(if neg { -n } else { n })
                }
            };
            match (&got, want) {
                (Ok(g), Ok(w)) => assert_eq!(*g, w, "{int}.{frac} as ({precision},{scale})"),
                (Err(g), Err(w)) => assert!(g.contains(w), "{int}.{frac}: {g}"),
                _ => panic!("{int}.{frac} as ({precision},{scale}): {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_stream_in_any_chunks_gives_the_same_batches() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("at", Wire::TimestampTz.data_type(), true),
            Field::new("day", DataType::Date32, true),
        ]));
        let wires = vec![Wire::Int4, Wire::Text, Wire::TimestampTz, Wire::Date];
        let rows: Vec<Vec<Option<Vec<u8>>>> = (0..5)
            .map(|i: i32| {
                vec![
                    Some(i.to_be_bytes().to_vec()),
                    (i % 2 == 0).then(|| format!("n{i}").into_bytes()),
                    Some((i64::from(i) * 1_000_000).to_be_bytes().to_vec()),
                    Some(i.to_be_bytes().to_vec()),
                ]
            })
            .collect();
        let bytes = stream(&rows);
        for chunk in [1, 3, 7, bytes.len()] {
            let mut d = CopyDecoder::new(Arc::clone(&schema), wires.clone(), 2);
            let mut batches = Vec::new();
            for c in bytes.chunks(chunk) {
                batches.extend(d.push(c).unwrap());
            }
            batches.extend(d.finish().unwrap());
            assert_eq!(
                batches.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
                [2, 2, 1]
            );
            let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            assert!(
                text.contains("| 4  | n4   | 2000-01-01T00:00:04Z | 2000-01-05 |"),
                "{text}"
            );
            assert!(
                text.contains("| 1  |      | 2000-01-01T00:00:01Z | 2000-01-02 |"),
                "{text}"
            );
        }
        // Cut short: an error, not fewer rows.
        let mut d = CopyDecoder::new(Arc::clone(&schema), wires.clone(), 100);
        d.push(&bytes[..bytes.len() - 2]).unwrap();
        assert!(d.finish().is_err());
    }

    #[test]
    fn infinity_and_bad_values_name_their_column() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "t",
            Wire::Timestamp.data_type(),
            true,
        )]));
        let bytes = stream(&[vec![Some(i64::MAX.to_be_bytes().to_vec())]]);
        let mut d = CopyDecoder::new(schema, vec![Wire::Timestamp], 10);
        let e = d.push(&bytes).unwrap_err();
        assert_eq!(e.column.as_deref(), Some("t"));
        assert!(e.message.contains("infinity"), "{e}");
    }
}
