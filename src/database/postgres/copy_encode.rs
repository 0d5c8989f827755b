//! Arrow batches into a PostgreSQL binary COPY stream (`COPY t (cols) FROM STDIN (FORMAT
//! binary)`): the inverse of [`super::copy_decode`]. Each result column is written as the
//! type of the table column it goes into ([`Put`], chosen when the load is planned); a value
//! the column cannot hold exactly is an error naming the column, never a different value.

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Decimal128Array, StringArray,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;

use super::copy_decode::{EPOCH_DAYS, EPOCH_MICROS, SIGNATURE};

/// How a result column's values are written: as the wire format of the table column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
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
    /// numeric, with this many digits after the point.
    Numeric {
        /// The result's scale (the column keeps at least as many).
        scale: i8,
    },
    /// text, varchar, bpchar, json and enum labels: the UTF-8 bytes.
    Text,
    /// jsonb: a version byte, then the text.
    Jsonb,
    /// uuid, from its text.
    Uuid,
    /// bytea.
    Bytes,
    /// date.
    Date,
    /// timestamp and timestamptz: microseconds from 2000-01-01 (UTC).
    Timestamp,
    /// time: microseconds from midnight.
    Time,
    /// A column of the `Null` type: every value is NULL.
    Null,
}

impl Put {
    /// The Arrow type a column is cast to before it is written (`None`: taken as it is).
    fn arrow(self) -> Option<DataType> {
        Some(match self {
            Put::Bool => DataType::Boolean,
            Put::Int2 => DataType::Int16,
            Put::Int4 => DataType::Int32,
            Put::Int8 => DataType::Int64,
            Put::Float4 => DataType::Float32,
            Put::Float8 => DataType::Float64,
            Put::Numeric { scale } => DataType::Decimal128(38, scale),
            Put::Text | Put::Jsonb | Put::Uuid => DataType::Utf8,
            Put::Bytes => DataType::Binary,
            Put::Date => DataType::Date32,
            Put::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Put::Time => DataType::Time64(TimeUnit::Microsecond),
            Put::Null => return None,
        })
    }
}

/// One column of a batch, cast to the type its [`Put`] writes.
enum Column {
    Bool(BooleanArray),
    Int2(ArrayRef),
    Int4(ArrayRef),
    Int8(ArrayRef),
    Float4(ArrayRef),
    Float8(ArrayRef),
    Numeric(Decimal128Array, i8),
    Text(StringArray),
    Jsonb(StringArray),
    Uuid(StringArray),
    Bytes(BinaryArray),
    Date(ArrayRef),
    Timestamp(ArrayRef),
    Time(ArrayRef),
    Null,
}

/// Encodes batches into one COPY stream: the header, rows, and the trailer.
pub(crate) struct CopyEncoder {
    puts: Vec<Put>,
    names: Vec<String>,
    buf: BytesMut,
    rows: u64,
}

impl CopyEncoder {
    /// An encoder of rows whose columns (`names`, for messages) are written as `puts`.
    pub(crate) fn new(names: Vec<String>, puts: Vec<Put>) -> CopyEncoder {
        let mut buf = BytesMut::with_capacity(1 << 20);
        buf.put_slice(SIGNATURE);
        buf.put_i32(0); // flags
        buf.put_i32(0); // header extension
        CopyEncoder {
            puts,
            names,
            buf,
            rows: 0,
        }
    }

    /// Rows encoded so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes waiting to be sent.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The bytes encoded since the last call.
    pub(crate) fn take(&mut self) -> bytes::Bytes {
        self.buf.split().freeze()
    }

    /// The stream's trailer, after the last row.
    pub(crate) fn finish(&mut self) -> bytes::Bytes {
        self.buf.put_i16(-1);
        self.take()
    }

    /// Encodes `batch`, whose columns are in the encoder's order.
    pub(crate) fn push(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let columns = batch
            .columns()
            .iter()
            .zip(&self.puts)
            .zip(&self.names)
            .map(|((a, put), name)| column(a, *put).map_err(|e| format!("column {name}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let fields = i16::try_from(columns.len()).map_err(|_| "too many columns".to_string())?;
        for row in 0..batch.num_rows() {
            self.buf.put_i16(fields);
            for (c, name) in columns.iter().zip(&self.names) {
                put_value(&mut self.buf, c, row).map_err(|e| format!("column {name}: {e}"))?;
            }
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }
}

/// `array` cast (exactly: an overflow is an error) to what `put` writes.
fn column(array: &ArrayRef, put: Put) -> Result<Column, String> {
    let Some(to) = put.arrow() else {
        return Ok(Column::Null);
    };
    let array = whole_micros(array)?;
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let cast = if array.data_type() == &to {
        array
    } else {
        cast_with_options(&array, &to, &options).map_err(|e| e.to_string())?
    };
    Ok(match put {
        Put::Bool => Column::Bool(cast.as_boolean().clone()),
        Put::Int2 => Column::Int2(cast),
        Put::Int4 => Column::Int4(cast),
        Put::Int8 => Column::Int8(cast),
        Put::Float4 => Column::Float4(cast),
        Put::Float8 => Column::Float8(cast),
        Put::Numeric { scale } => Column::Numeric(cast.as_primitive().clone(), scale),
        Put::Text => Column::Text(cast.as_string::<i32>().clone()),
        Put::Jsonb => Column::Jsonb(cast.as_string::<i32>().clone()),
        Put::Uuid => Column::Uuid(cast.as_string::<i32>().clone()),
        Put::Bytes => Column::Bytes(cast.as_binary::<i32>().clone()),
        Put::Date => Column::Date(cast),
        Put::Timestamp => Column::Timestamp(cast),
        Put::Time => Column::Time(cast),
        Put::Null => Column::Null,
    })
}

/// Nanosecond times and timestamps must be whole microseconds (PostgreSQL keeps no more);
/// Arrow's cast would drop the rest.
fn whole_micros(array: &ArrayRef) -> Result<ArrayRef, String> {
    let nanos: Option<Vec<Option<i64>>> = match array.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(
            array
                .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>()
                .iter()
                .collect(),
        ),
        DataType::Time64(TimeUnit::Nanosecond) => Some(
            array
                .as_primitive::<datafusion::arrow::datatypes::Time64NanosecondType>()
                .iter()
                .collect(),
        ),
        _ => None,
    };
    if let Some(v) = nanos
        && let Some(ns) = v.into_iter().flatten().find(|ns| ns % 1000 != 0)
    {
        return Err(format!(
            "the value {ns} ns is not a whole number of microseconds, which PostgreSQL keeps \
             (it would be rounded)"
        ));
    }
    Ok(std::sync::Arc::clone(array))
}

/// Writes value `row` of `c`: its length, then its bytes (length -1 for NULL).
fn put_value(buf: &mut BytesMut, c: &Column, row: usize) -> Result<(), String> {
    let valid = match c {
        Column::Null => false,
        Column::Bool(a) => a.is_valid(row),
        Column::Numeric(a, _) => a.is_valid(row),
        Column::Text(a) | Column::Jsonb(a) | Column::Uuid(a) => a.is_valid(row),
        Column::Bytes(a) => a.is_valid(row),
        Column::Int2(a)
        | Column::Int4(a)
        | Column::Int8(a)
        | Column::Float4(a)
        | Column::Float8(a)
        | Column::Date(a)
        | Column::Timestamp(a)
        | Column::Time(a) => a.is_valid(row),
    };
    if !valid {
        buf.put_i32(-1);
        return Ok(());
    }
    match c {
        Column::Null => {}
        Column::Bool(a) => {
            buf.put_i32(1);
            buf.put_u8(u8::from(a.value(row)));
        }
        Column::Int2(a) => {
            buf.put_i32(2);
            buf.put_i16(a.as_primitive::<Int16Type>().value(row));
        }
        Column::Int4(a) => {
            buf.put_i32(4);
            buf.put_i32(a.as_primitive::<Int32Type>().value(row));
        }
        Column::Int8(a) => {
            buf.put_i32(8);
            buf.put_i64(a.as_primitive::<Int64Type>().value(row));
        }
        Column::Float4(a) => {
            buf.put_i32(4);
            buf.put_f32(a.as_primitive::<Float32Type>().value(row));
        }
        Column::Float8(a) => {
            buf.put_i32(8);
            buf.put_f64(a.as_primitive::<Float64Type>().value(row));
        }
        Column::Numeric(a, scale) => numeric(buf, a.value(row), *scale),
        Column::Text(a) => put_bytes(buf, a.value(row).as_bytes())?,
        Column::Jsonb(a) => {
            let text = a.value(row).as_bytes();
            put_len(buf, text.len() + 1)?;
            buf.put_u8(1);
            buf.put_slice(text);
        }
        Column::Uuid(a) => {
            let text = a.value(row);
            let id = uuid::Uuid::parse_str(text).map_err(|_| format!("{text:?} is not a uuid"))?;
            buf.put_i32(16);
            buf.put_slice(id.as_bytes());
        }
        Column::Bytes(a) => put_bytes(buf, a.value(row))?,
        Column::Date(a) => {
            let days = a.as_primitive::<Date32Type>().value(row);
            let pg = days
                .checked_sub(EPOCH_DAYS)
                .ok_or_else(|| format!("the date {days} (days from 1970) is out of range"))?;
            buf.put_i32(4);
            buf.put_i32(pg);
        }
        Column::Timestamp(a) => {
            let us = a.as_primitive::<TimestampMicrosecondType>().value(row);
            let pg = us.checked_sub(EPOCH_MICROS).ok_or_else(|| {
                format!("the timestamp {us} (µs from 1970) is out of PostgreSQL's range")
            })?;
            buf.put_i32(8);
            buf.put_i64(pg);
        }
        Column::Time(a) => {
            let us = a.as_primitive::<Time64MicrosecondType>().value(row);
            if !(0..86_400_000_000).contains(&us) {
                return Err(format!("the time {us} µs is not within a day"));
            }
            buf.put_i32(8);
            buf.put_i64(us);
        }
    }
    Ok(())
}

fn put_len(buf: &mut BytesMut, len: usize) -> Result<(), String> {
    let len = i32::try_from(len).map_err(|_| format!("a value of {len} bytes is over 2 GiB"))?;
    buf.put_i32(len);
    Ok(())
}

fn put_bytes(buf: &mut BytesMut, v: &[u8]) -> Result<(), String> {
    put_len(buf, v.len())?;
    buf.put_slice(v);
    Ok(())
}

/// A decimal (`unscaled` × 10^-`scale`) as a PostgreSQL numeric: base-10000 digits, the
/// weight of the first, the sign and the scale shown.
fn numeric(buf: &mut BytesMut, unscaled: i128, scale: i8) {
    // (No allocation: this runs for every value of a decimal column.) A Decimal128 has at
    // most 38 digits, so at most 10 groups on either side of the point.
    let scale = u32::try_from(scale).unwrap_or(0).min(38);
    let unit = 10u128.pow(scale);
    let abs = unscaled.unsigned_abs();
    let (mut int, frac) = (abs / unit, abs % unit);
    let mut digits = [0i16; 24];
    let mut n = 0;
    let mut int_groups = [0i16; 12];
    let mut k = 0;
    while int > 0 {
        int_groups[k] = (int % 10_000) as i16;
        int /= 10_000;
        k += 1;
    }
    for g in int_groups[..k].iter().rev() {
        digits[n] = *g;
        n += 1;
    }
    let mut weight = k as i16 - 1;
    // The fraction in groups of four digits from the point, the last padded with zeros.
    for g in 0..scale.div_ceil(4) {
        let end = 4 * (g + 1);
        let v = if end <= scale {
            (frac / 10u128.pow(scale - end)) % 10_000
        } else {
            (frac % 10u128.pow(scale - 4 * g)) * 10u128.pow(end - scale)
        };
        digits[n] = v as i16;
        n += 1;
    }
    // No leading or trailing zero groups.
    let mut first = 0;
    while first < n && digits[first] == 0 {
        first += 1;
        weight -= 1;
    }
    while n > first && digits[n - 1] == 0 {
        n -= 1;
    }
    let digits = &digits[first..n];
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if unscaled < 0 && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    buf.put_i32(8 + 2 * digits.len() as i32);
    buf.put_i16(digits.len() as i16);
    buf.put_i16(weight);
    buf.put_u16(sign);
    buf.put_u16(scale as u16);
    for d in digits {
        buf.put_i16(*d);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        Date32Array, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray,
        TimestampNanosecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::super::copy_decode::{CopyDecoder, Wire};
    use super::*;

    /// Encodes `batch` as `puts`, decodes it as `wires`: the round trip through PostgreSQL's
    /// wire format the sink and the reader agree on.
    fn round_trip(batch: &RecordBatch, puts: Vec<Put>, wires: Vec<Wire>) -> RecordBatch {
        let names = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut enc = CopyEncoder::new(names, puts);
        enc.push(batch).unwrap();
        let mut bytes = enc.take().to_vec();
        bytes.extend_from_slice(&enc.finish());
        let fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .zip(&wires)
            .map(|(f, w)| Field::new(f.name(), w.data_type(), true))
            .collect();
        let mut dec = CopyDecoder::new(Arc::new(Schema::new(fields)), wires, 1 << 20);
        let mut out = dec.push(&bytes).unwrap();
        out.extend(dec.finish().unwrap());
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn decimals_round_trip_exactly_through_numeric() {
        // Every digit position around the base-10000 group edges, signs, zero.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let mut rng_values: Vec<i128> = vec![0, 1, -1, 9999, 10000, -10001, 123456789];
        for digits in 1..=38 {
            for _ in 0..8 {
                let v = rng.random_range(0..10i128.pow(digits));
                rng_values.push(if rng.random_bool(0.5) { -v } else { v });
            }
        }
        rng_values.push(10i128.pow(38) - 1);
        rng_values.push(-(10i128.pow(38) - 1));
        for scale in [0i8, 1, 2, 3, 4, 5, 8, 9, 17, 36, 37, 38] {
            let a = Decimal128Array::from(rng_values.clone())
                .with_precision_and_scale(38, scale)
                .unwrap();
            let schema = Schema::new(vec![Field::new("d", a.data_type().clone(), true)]);
            let batch = RecordBatch::try_new(Arc::new(schema), vec![Arc::new(a.clone())]).unwrap();
            let back = round_trip(
                &batch,
                vec![Put::Numeric { scale }],
                vec![Wire::Numeric {
                    precision: 38,
                    scale,
                }],
            );
            assert_eq!(back.column(0).as_primitive(), &a, "scale {scale}");
        }
    }

    #[test]
    fn ints_times_and_text_round_trip() {
        let schema = Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("d", DataType::Date32, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            Field::new("s", DataType::Utf8, true),
        ]);
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None, Some(-7)])),
                Arc::new(Date32Array::from(vec![Some(-800_000), Some(0), None])),
                Arc::new(TimestampNanosecondArray::from(vec![
                    Some(-1_000_000_000_000_000),
                    None,
                    Some(1_700_000_000_123_456_000),
                ])),
                Arc::new(StringArray::from(vec![Some("é\t\"x"), Some(""), None])),
            ],
        )
        .unwrap();
        let back = round_trip(
            &batch,
            vec![Put::Int8, Put::Date, Put::Timestamp, Put::Text],
            vec![Wire::Int8, Wire::Date, Wire::Timestamp, Wire::Text],
        );
        assert_eq!(
            back.column(0).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![Some(1), None, Some(-7)])
        );
        assert_eq!(
            back.column(1).as_primitive::<Date32Type>(),
            &Date32Array::from(vec![Some(-800_000), Some(0), None])
        );
        assert_eq!(
            back.column(2).as_primitive::<TimestampMicrosecondType>(),
            &TimestampMicrosecondArray::from(vec![
                Some(-1_000_000_000_000),
                None,
                Some(1_700_000_000_123_456)
            ])
        );
        assert_eq!(
            back.column(3).as_string::<i32>(),
            batch.column(3).as_string::<i32>()
        );
    }

    #[test]
    fn values_a_column_cannot_hold_are_errors() {
        let cases: Vec<(ArrayRef, Put, &str)> = vec![
            (
                Arc::new(Int64Array::from(vec![1, 70_000])),
                Put::Int2,
                "70000",
            ),
            (
                Arc::new(TimestampNanosecondArray::from(vec![1_500])),
                Put::Timestamp,
                "not a whole number of microseconds",
            ),
            (
                Arc::new(StringArray::from(vec!["not-a-uuid"])),
                Put::Uuid,
                "is not a uuid",
            ),
        ];
        for (array, put, expected) in cases {
            let schema = Schema::new(vec![Field::new("c", array.data_type().clone(), true)]);
            let batch = RecordBatch::try_new(Arc::new(schema), vec![array]).unwrap();
            let mut enc = CopyEncoder::new(vec!["c".into()], vec![put]);
            let e = enc.push(&batch).unwrap_err();
            assert!(e.starts_with("column c: ") && e.contains(expected), "{e}");
        }
    }
}
