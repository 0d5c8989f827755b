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
    StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
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
    Text(StringBuilder),
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
            Wire::Text | Wire::Jsonb | Wire::Uuid => Builder::Text(StringBuilder::new()),
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
                Some((1, text)) => b.append_value(utf8(text)?),
                _ => return Err("jsonb of an unknown version".into()),
            },
            (Builder::Text(b), Wire::Uuid) => b.append_value(uuid(fixed(16)?)),
            (Builder::Text(b), _) => b.append_value(utf8(v)?),
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

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Dec(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .unwrap_or_else(|_| Decimal128Builder::new().finish()),
            ),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Bytes(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Ts(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
        }
    }
}

fn array<const N: usize>(v: &[u8]) -> Result<[u8; N], String> {
    v.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", v.len()))
}

fn utf8(v: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(v).map_err(|e| format!("text that is not UTF-8 ({e})"))
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

/// A numeric's wire value as the unscaled integer of a Decimal128(`precision`, `scale`):
/// exact, or an error (NaN, infinity, more digits than the type holds, a fraction the scale
/// would round).
fn numeric(v: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let word = |i: usize| -> Result<i16, String> {
        v.get(i * 2..i * 2 + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric cut short".to_string())
    };
    let ndigits = word(0)?;
    let weight = i32::from(word(1)?);
    let sign = word(2)? as u16;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("NaN, which a decimal cannot hold".into()),
        0xD000 | 0xF000 => return Err("infinity, which a decimal cannot hold".into()),
        other => return Err(format!("a numeric with sign word {other:#06x}")),
    }
    let too_many = || format!("a value with more digits than decimal({precision},{scale}) holds");
    let mut acc: i128 = 0;
    for i in 0..ndigits.max(0) as usize {
        let d = i128::from(word(4 + i)?);
        if !(0..10_000).contains(&d) {
            return Err(format!("a numeric digit {d} out of range"));
        }
        // This digit's power of ten in the unscaled integer.
        let exp = 4 * (weight - i as i32) + i32::from(scale);
        if exp >= 0 {
            let term = 10i128
                .checked_pow(exp as u32)
                .and_then(|p| d.checked_mul(p))
                .ok_or_else(too_many)?;
            acc = acc.checked_add(term).ok_or_else(too_many)?;
        } else {
            let cut = 10i128.checked_pow((-exp) as u32).unwrap_or(i128::MAX);
            if d % cut != 0 {
                return Err(format!(
                    "a value with more decimals than decimal({precision},{scale}) keeps (it \
                     would be rounded)"
                ));
            }
            acc = acc.checked_add(d / cut).ok_or_else(too_many)?;
        }
    }
    let limit = 10i128
        .checked_pow(u32::from(precision))
        .unwrap_or(i128::MAX);
    if acc >= limit {
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
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        if !self.header_read {
            if self.buf.len() < SIGNATURE.len() + 8 {
                return Ok(out);
            }
            if &self.buf[..SIGNATURE.len()] != SIGNATURE {
                return Err(stream_error("not a binary COPY stream"));
            }
            let ext = u32::from_be_bytes([self.buf[15], self.buf[16], self.buf[17], self.buf[18]])
                as usize;
            if self.buf.len() < 19 + ext {
                return Ok(out);
            }
            self.buf.advance(19 + ext);
            self.header_read = true;
        }
        while !self.done {
            let Some(len) = self.whole_row()? else {
                break;
            };
            let count = i16::from_be_bytes([self.buf[0], self.buf[1]]);
            if count == -1 {
                self.buf.advance(2);
                self.done = true;
                break;
            }
            let mut pos = 2;
            for (i, wire) in self.wires.iter().enumerate() {
                let n = i32::from_be_bytes([
                    self.buf[pos],
                    self.buf[pos + 1],
                    self.buf[pos + 2],
                    self.buf[pos + 3],
                ]);
                pos += 4;
                if n < 0 {
                    self.builders[i].append_null();
                } else {
                    let v = &self.buf[pos..pos + n as usize];
                    if let Err(message) = self.builders[i].append(*wire, v) {
                        return Err(DecodeError {
                            column: Some(self.schema.field(i).name().clone()),
                            message,
                        });
                    }
                    pos += n as usize;
                }
            }
            self.buf.advance(len);
            self.rows += 1;
            if self.rows >= self.batch_rows {
                out.push(self.batch()?);
            }
        }
        Ok(out)
    }

    /// The bytes of the row at the front of the buffer, if it is all there (the trailer
    /// counts as a row of 2 bytes).
    fn whole_row(&self) -> Result<Option<usize>, DecodeError> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        let count = i16::from_be_bytes([b[0], b[1]]);
        if count == -1 {
            return Ok(Some(2));
        }
        if count as usize != self.wires.len() {
            return Err(stream_error(format!(
                "a row of {count} fields, expected {}",
                self.wires.len()
            )));
        }
        let mut pos = 2;
        for _ in 0..count {
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

    /// The rows taken in so far, as a batch.
    fn batch(&mut self) -> Result<RecordBatch, DecodeError> {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
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
