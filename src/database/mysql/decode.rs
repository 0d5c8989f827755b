//! MySQL and MariaDB rows (binary protocol values, as mysql_async hands them over) decoded
//! into Arrow columns. Each value is converted exactly, or the read fails naming the column
//! and the value: a value Arrow's type cannot hold (a zero date, a TIME below zero or of a
//! day or more, a DECIMAL with more digits than its type) is never turned into a different
//! one.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Date32Builder, Decimal128Builder, Decimal256Builder, Float32Builder,
    Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, RecordBatch,
    RecordBatchOptions, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
    UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, i256};
use mysql_async::{Row, Value};

use crate::database::postgres::copy_decode::DecodeError;

/// How a column's values are read: by its MySQL type, into its Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// TINYINT.
    Int8,
    /// SMALLINT.
    Int16,
    /// MEDIUMINT, INT.
    Int32,
    /// BIGINT.
    Int64,
    /// TINYINT UNSIGNED.
    UInt8,
    /// SMALLINT UNSIGNED.
    UInt16,
    /// MEDIUMINT UNSIGNED, INT UNSIGNED.
    UInt32,
    /// BIGINT UNSIGNED.
    UInt64,
    /// FLOAT.
    Float,
    /// DOUBLE.
    Double,
    /// DECIMAL(p,s), sent as text: Decimal128 up to 38 digits, Decimal256 beyond.
    Decimal {
        /// Digits in all.
        precision: u8,
        /// Digits after the point.
        scale: i8,
    },
    /// Text of any kind (CHAR, VARCHAR, TEXT, ENUM, SET, JSON), as UTF-8.
    Text,
    /// BINARY, VARBINARY, BLOB.
    Bytes,
    /// DATE.
    Date,
    /// DATETIME (no time zone).
    DateTime,
    /// TIMESTAMP (UTC: the session's time zone is `+00:00`).
    Timestamp,
    /// TIME (a time of day; MySQL's go from -838 to 838 hours).
    Time,
    /// YEAR.
    Year,
    /// BIT(n), n ≤ 64.
    Bit,
}

impl Wire {
    /// The Arrow type the values become.
    pub(crate) fn data_type(self) -> DataType {
        match self {
            Wire::Int8 => DataType::Int8,
            Wire::Int16 | Wire::Year => DataType::Int16,
            Wire::Int32 => DataType::Int32,
            Wire::Int64 => DataType::Int64,
            Wire::UInt8 => DataType::UInt8,
            Wire::UInt16 => DataType::UInt16,
            Wire::UInt32 => DataType::UInt32,
            Wire::UInt64 | Wire::Bit => DataType::UInt64,
            Wire::Float => DataType::Float32,
            Wire::Double => DataType::Float64,
            Wire::Decimal { precision, scale } if precision <= 38 => {
                DataType::Decimal128(precision, scale)
            }
            Wire::Decimal { precision, scale } => DataType::Decimal256(precision, scale),
            Wire::Text => DataType::Utf8,
            Wire::Bytes => DataType::Binary,
            Wire::Date => DataType::Date32,
            Wire::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Wire::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Wire::Time => DataType::Time64(TimeUnit::Microsecond),
        }
    }

    /// Whether the column can be split in ranges (a whole-number column).
    pub(crate) fn is_whole_number(self) -> bool {
        matches!(
            self,
            Wire::Int8
                | Wire::Int16
                | Wire::Int32
                | Wire::Int64
                | Wire::UInt8
                | Wire::UInt16
                | Wire::UInt32
                | Wire::UInt64
        )
    }
}

/// One column being built.
enum Builder {
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Dec128(Decimal128Builder, u8, i8),
    Dec256(Decimal256Builder, u8, i8),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Ts(TimestampMicrosecondBuilder, Option<Arc<str>>),
}

impl Builder {
    fn new(wire: Wire) -> Builder {
        match wire {
            Wire::Int8 => Builder::I8(Int8Builder::new()),
            Wire::Int16 | Wire::Year => Builder::I16(Int16Builder::new()),
            Wire::Int32 => Builder::I32(Int32Builder::new()),
            Wire::Int64 => Builder::I64(Int64Builder::new()),
            Wire::UInt8 => Builder::U8(UInt8Builder::new()),
            Wire::UInt16 => Builder::U16(UInt16Builder::new()),
            Wire::UInt32 => Builder::U32(UInt32Builder::new()),
            Wire::UInt64 | Wire::Bit => Builder::U64(UInt64Builder::new()),
            Wire::Float => Builder::F32(Float32Builder::new()),
            Wire::Double => Builder::F64(Float64Builder::new()),
            Wire::Decimal { precision, scale } if precision <= 38 => {
                Builder::Dec128(Decimal128Builder::new(), precision, scale)
            }
            Wire::Decimal { precision, scale } => {
                Builder::Dec256(Decimal256Builder::new(), precision, scale)
            }
            Wire::Text => Builder::Text(StringBuilder::new()),
            Wire::Bytes => Builder::Bytes(BinaryBuilder::new()),
            Wire::Date => Builder::Date(Date32Builder::new()),
            Wire::Time => Builder::Time(Time64MicrosecondBuilder::new()),
            Wire::DateTime => Builder::Ts(TimestampMicrosecondBuilder::new(), None),
            Wire::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::new(), Some("UTC".into())),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::I8(b) => b.append_null(),
            Builder::I16(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::U8(b) => b.append_null(),
            Builder::U16(b) => b.append_null(),
            Builder::U32(b) => b.append_null(),
            Builder::U64(b) => b.append_null(),
            Builder::F32(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Dec128(b, ..) => b.append_null(),
            Builder::Dec256(b, ..) => b.append_null(),
            Builder::Text(b) => b.append_null(),
            Builder::Bytes(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Ts(b, _) => b.append_null(),
        }
    }

    /// Appends the value `v` of a column read as `wire`.
    fn append(&mut self, wire: Wire, v: &Value) -> Result<(), String> {
        match self {
            Builder::I8(b) => b.append_value(whole(v)?),
            Builder::I16(b) => b.append_value(whole(v)?),
            Builder::I32(b) => b.append_value(whole(v)?),
            Builder::I64(b) => b.append_value(whole(v)?),
            Builder::U8(b) => b.append_value(whole(v)?),
            Builder::U16(b) => b.append_value(whole(v)?),
            Builder::U32(b) => b.append_value(whole(v)?),
            Builder::U64(b) if wire == Wire::Bit => b.append_value(bits(v)?),
            Builder::U64(b) => b.append_value(whole(v)?),
            Builder::F32(b) => match v {
                Value::Float(f) => b.append_value(*f),
                // (A DOUBLE that is exactly a FLOAT.)
                Value::Double(d) if f64::from(*d as f32) == *d || d.is_nan() => {
                    b.append_value(*d as f32)
                }
                other => return Err(unexpected(other, "FLOAT")),
            },
            Builder::F64(b) => match v {
                Value::Double(d) => b.append_value(*d),
                Value::Float(f) => b.append_value(f64::from(*f)),
                other => return Err(unexpected(other, "DOUBLE")),
            },
            Builder::Dec128(b, p, s) => {
                let x = decimal(bytes(v, "DECIMAL")?, *p, *s)?;
                b.append_value(x.to_i128().ok_or("a DECIMAL out of range")?)
            }
            Builder::Dec256(b, p, s) => b.append_value(decimal(bytes(v, "DECIMAL")?, *p, *s)?),
            Builder::Text(b) => b.append_value(
                std::str::from_utf8(bytes(v, "text")?)
                    .map_err(|e| format!("text that is not UTF-8 ({e})"))?,
            ),
            Builder::Bytes(b) => b.append_value(bytes(v, "bytes")?),
            Builder::Date(b) => {
                let (days, micros) = date_time(v)?;
                if micros != 0 {
                    return Err(format!("{} is not a date", show(v)));
                }
                b.append_value(
                    i32::try_from(days).map_err(|_| format!("{} is out of range", show(v)))?,
                )
            }
            Builder::Ts(b, _) => {
                let (days, micros) = date_time(v)?;
                let t = days
                    .checked_mul(86_400_000_000)
                    .and_then(|d| d.checked_add(micros))
                    .ok_or_else(|| format!("{} is out of range", show(v)))?;
                b.append_value(t)
            }
            Builder::Time(b) => match v {
                Value::Time(false, 0, h, m, s, us) if *h < 24 && *m < 60 && *s < 60 => b
                    .append_value(
                        ((i64::from(*h) * 60 + i64::from(*m)) * 60 + i64::from(*s)) * 1_000_000
                            + i64::from(*us),
                    ),
                Value::Time(..) => {
                    return Err(format!(
                        "the time {}, which is not a time of day (00:00:00 to 23:59:59.999999) \
                         as Arrow times are",
                        show(v)
                    ));
                }
                other => return Err(unexpected(other, "TIME")),
            },
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::I8(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::U8(b) => Arc::new(b.finish()),
            Builder::U16(b) => Arc::new(b.finish()),
            Builder::U32(b) => Arc::new(b.finish()),
            Builder::U64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Dec128(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .unwrap_or_else(|_| Decimal128Builder::new().finish()),
            ),
            Builder::Dec256(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .unwrap_or_else(|_| Decimal256Builder::new().finish()),
            ),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Bytes(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Ts(b, tz) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
        }
    }
}

/// `v` as MySQL would print it, for messages.
fn show(v: &Value) -> String {
    match v {
        Value::Date(y, mo, d, 0, 0, 0, 0) => format!("{y:04}-{mo:02}-{d:02}"),
        Value::Date(y, mo, d, h, mi, s, 0) => {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
        }
        Value::Date(y, mo, d, h, mi, s, us) => {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
        }
        Value::Time(neg, days, h, m, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            if *us == 0 {
                format!("{sign}{hours:02}:{m:02}:{s:02}")
            } else {
                format!("{sign}{hours:02}:{m:02}:{s:02}.{us:06}")
            }
        }
        Value::Bytes(b) => format!("{:?}", String::from_utf8_lossy(b)),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Double(d) => d.to_string(),
        Value::NULL => "NULL".to_string(),
    }
}

fn unexpected(v: &Value, want: &str) -> String {
    format!("the value {} where a {want} was expected", show(v))
}

/// A whole number of the column's type, exactly.
fn whole<T: TryFrom<i64> + TryFrom<u64>>(v: &Value) -> Result<T, String> {
    let out = match v {
        Value::Int(i) => T::try_from(*i).ok(),
        Value::UInt(u) => T::try_from(*u).ok(),
        Value::Bytes(b) => {
            let s = std::str::from_utf8(b).unwrap_or("");
            match s.parse::<i64>() {
                Ok(i) => T::try_from(i).ok(),
                Err(_) => s.parse::<u64>().ok().and_then(|u| T::try_from(u).ok()),
            }
        }
        other => return Err(unexpected(other, "whole number")),
    };
    out.ok_or_else(|| format!("{} is out of the column type's range", show(v)))
}

fn bytes<'a>(v: &'a Value, want: &str) -> Result<&'a [u8], String> {
    match v {
        Value::Bytes(b) => Ok(b),
        other => Err(unexpected(other, want)),
    }
}

/// A BIT(n) value: its bytes, most significant first.
fn bits(v: &Value) -> Result<u64, String> {
    match v {
        Value::Bytes(b) if b.len() <= 8 => {
            Ok(b.iter().fold(0u64, |acc, x| acc << 8 | u64::from(*x)))
        }
        Value::Int(_) | Value::UInt(_) => whole(v),
        other => Err(unexpected(other, "BIT")),
    }
}

/// A DATE, DATETIME or TIMESTAMP value as days since 1970-01-01 and microseconds into the
/// day; a zero date, or a date with a zero month or day, is an error.
fn date_time(v: &Value) -> Result<(i64, i64), String> {
    let Value::Date(y, mo, d, h, mi, s, us) = v else {
        return Err(unexpected(v, "date"));
    };
    let Some(date) = chrono::NaiveDate::from_ymd_opt(i32::from(*y), u32::from(*mo), u32::from(*d))
    else {
        return Err(if *y == 0 && *mo == 0 && *d == 0 {
            format!(
                "the zero date {}, which Arrow dates cannot hold (a NULL in most tools)",
                show(v)
            )
        } else {
            format!("the date {}, which is not a date of the calendar", show(v))
        });
    };
    if *h > 23 || *mi > 59 || *s > 59 || *us > 999_999 {
        return Err(format!("the time of {} is out of range", show(v)));
    }
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let days = date.signed_duration_since(epoch).num_days();
    let micros =
        ((i64::from(*h) * 60 + i64::from(*mi)) * 60 + i64::from(*s)) * 1_000_000 + i64::from(*us);
    Ok((days, micros))
}

/// A DECIMAL's text (`-123.450`) as the unscaled integer of a decimal(`precision`,
/// `scale`): exact, or an error (more digits than the type holds, a fraction the scale
/// would round).
fn decimal(text: &[u8], precision: u8, scale: i8) -> Result<i256, String> {
    let shown = || format!("{:?}", String::from_utf8_lossy(text));
    let bad = || format!("the DECIMAL {}, which is not a decimal number", shown());
    let too_many = || {
        format!(
            "the DECIMAL {}, which has more digits than decimal({precision},{scale}) holds",
            shown()
        )
    };
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let (int, frac) = match digits.iter().position(|c| *c == b'.') {
        Some(i) => (&digits[..i], &digits[i + 1..]),
        None => (digits, &digits[digits.len()..]),
    };
    if (int.is_empty() && frac.is_empty()) || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let scale = usize::try_from(scale).map_err(|_| bad())?;
    // Digits past the scale must be zeros (else the value would be rounded).
    let (kept, dropped) = frac.split_at(frac.len().min(scale));
    if dropped.iter().any(|c| *c != b'0') {
        return Err(format!(
            "the DECIMAL {}, which has more decimals than decimal({precision},{scale}) keeps",
            shown()
        ));
    }
    let ten = i256::from_i128(10);
    let mut acc = i256::ZERO;
    let padding = scale - kept.len();
    for c in int
        .iter()
        .chain(kept)
        .copied()
        .chain(std::iter::repeat_n(b'0', padding))
    {
        acc = acc
            .checked_mul(ten)
            .and_then(|a| a.checked_add(i256::from_i128(i128::from(c - b'0'))))
            .ok_or_else(too_many)?;
    }
    let limit = ten.checked_pow(u32::from(precision)).ok_or_else(too_many)?;
    if acc >= limit {
        return Err(too_many());
    }
    Ok(if negative { acc.wrapping_neg() } else { acc })
}

/// Decodes the rows of one result into batches of `schema` (whose columns are read as
/// `wires`, in order).
pub(crate) struct RowDecoder {
    schema: SchemaRef,
    wires: Vec<Wire>,
    builders: Vec<Builder>,
    /// What columns are named after in messages (`orders.` for a table, else nothing).
    qualifier: String,
    rows: usize,
    batch_rows: usize,
}

impl RowDecoder {
    /// A decoder of rows of `schema`, read as `wires`, in batches of `batch_rows`; columns
    /// are named `{qualifier}{column}` in messages.
    pub(crate) fn new(
        schema: SchemaRef,
        wires: Vec<Wire>,
        qualifier: String,
        batch_rows: usize,
    ) -> RowDecoder {
        let builders = wires.iter().map(|w| Builder::new(*w)).collect();
        RowDecoder {
            schema,
            wires,
            builders,
            qualifier,
            rows: 0,
            batch_rows: batch_rows.max(1),
        }
    }

    /// Takes in the next row; returns a batch when one is full.
    pub(crate) fn push(&mut self, row: &Row) -> Result<Option<RecordBatch>, DecodeError> {
        for (i, wire) in self.wires.iter().enumerate() {
            let column = || format!("{}{}", self.qualifier, self.schema.field(i).name());
            match row.as_ref(i) {
                None => {
                    return Err(DecodeError {
                        column: Some(column()),
                        message: format!("a row of {} values, expected more", row.len()),
                    });
                }
                Some(Value::NULL) => self.builders[i].append_null(),
                Some(v) => {
                    if let Err(message) = self.builders[i].append(*wire, v) {
                        return Err(DecodeError {
                            column: Some(column()),
                            message,
                        });
                    }
                }
            }
        }
        self.rows += 1;
        if self.rows >= self.batch_rows {
            return self.batch().map(Some);
        }
        Ok(None)
    }

    /// The rows taken in so far, as a batch.
    fn batch(&mut self) -> Result<RecordBatch, DecodeError> {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options).map_err(
            |e| DecodeError {
                column: None,
                message: e.to_string(),
            },
        )
    }

    /// The last batch, once the result has ended.
    pub(crate) fn finish(mut self) -> Result<Option<RecordBatch>, DecodeError> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.batch().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_or_refused() {
        let d = |t: &str, p, s| decimal(t.as_bytes(), p, s);
        assert_eq!(d("123.450", 10, 3), Ok(i256::from_i128(123_450)));
        assert_eq!(d("-0.001", 5, 3), Ok(i256::from_i128(-1)));
        assert_eq!(d("7", 5, 2), Ok(i256::from_i128(700)));
        assert_eq!(d("1.50", 5, 1), Ok(i256::from_i128(15)));
        assert!(d("1.55", 5, 1).unwrap_err().contains("more decimals"));
        assert!(d("1000.0", 4, 1).unwrap_err().contains("more digits"));
        assert!(d("1.2.3", 5, 1).is_err());
        assert!(d("", 5, 1).is_err());
        assert!(d("-", 5, 1).is_err());
        let big = "9".repeat(65);
        let v = d(&big, 65, 0).unwrap();
        assert_eq!(v.to_string(), big);
        assert!(d(&format!("1{big}"), 65, 0).is_err());
    }

    #[test]
    fn dates_and_times_out_of_arrow_are_refused_with_the_value() {
        assert_eq!(
            date_time(&Value::Date(1970, 1, 2, 0, 0, 1, 5)),
            Ok((1, 1_000_005))
        );
        assert_eq!(
            date_time(&Value::Date(1969, 12, 31, 0, 0, 0, 0)),
            Ok((-1, 0))
        );
        let zero = date_time(&Value::Date(0, 0, 0, 0, 0, 0, 0)).unwrap_err();
        assert!(zero.contains("0000-00-00"), "{zero}");
        let part = date_time(&Value::Date(2024, 0, 10, 0, 0, 0, 0)).unwrap_err();
        assert!(part.contains("2024-00-10"), "{part}");
        let mut b = Builder::new(Wire::Time);
        assert!(
            b.append(Wire::Time, &Value::Time(false, 0, 23, 59, 59, 999_999))
                .is_ok()
        );
        let neg = b
            .append(Wire::Time, &Value::Time(true, 0, 1, 0, 0, 0))
            .unwrap_err();
        assert!(neg.contains("-01:00:00"), "{neg}");
        let long = b
            .append(Wire::Time, &Value::Time(false, 1, 1, 0, 0, 0))
            .unwrap_err();
        assert!(long.contains("25:00:00"), "{long}");
        assert_eq!(bits(&Value::Bytes(vec![1, 2])), Ok(258));
        assert_eq!(whole::<u8>(&Value::Int(255)), Ok(255));
        assert!(whole::<u8>(&Value::Int(256)).is_err());
        assert!(whole::<i8>(&Value::UInt(200)).is_err());
    }
}
