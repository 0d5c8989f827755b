//! Arrow batches into what MySQL and MariaDB load: the lines of a `LOAD DATA LOCAL INFILE`
//! (tab-separated, `\N` for NULL, backslash escapes, binary columns in hexadecimal through
//! `UNHEX`), or the values of a multi-row `INSERT`. Each result column is written as the
//! type of the table column it goes into ([`Put`], chosen when the load is planned), as the
//! exact text of its value; a value the column cannot hold is an error naming the column, or
//! (one out of the column's range) a warning of the server, which fails the load.

use std::fmt::Write as _;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int64Type,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, UInt64Type,
};
use datafusion::arrow::record_batch::RecordBatch;

/// How a result column's values are written: as the text of the table column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// A signed whole number (booleans as 0 and 1).
    Int,
    /// An unsigned whole number.
    UInt,
    /// FLOAT: the shortest text that reads back as the same `f32`.
    Float,
    /// DOUBLE: the shortest text that reads back as the same `f64`.
    Double,
    /// DECIMAL, with this many digits after the point.
    Decimal {
        /// The result's scale (the column keeps at least as many).
        scale: i8,
    },
    /// Text columns (CHAR, VARCHAR, TEXT, ENUM, SET, JSON): the UTF-8 text.
    Text,
    /// BINARY, VARBINARY, BLOB: the bytes.
    Bytes,
    /// DATE: `YYYY-MM-DD`.
    Date,
    /// DATETIME (a local date-time) and TIMESTAMP (an instant, written in UTC, the
    /// session's time zone): `YYYY-MM-DD HH:MM:SS.ffffff`.
    DateTime,
    /// TIME: `HH:MM:SS.ffffff`.
    Time,
    /// A column of the `Null` type: every value is NULL.
    Null,
}

impl Put {
    /// The Arrow type a column is cast to before it is written (`None`: taken as it is).
    fn arrow(self) -> Option<DataType> {
        Some(match self {
            Put::Int => DataType::Int64,
            Put::UInt => DataType::UInt64,
            Put::Float => DataType::Float32,
            Put::Double => DataType::Float64,
            Put::Decimal { scale } => DataType::Decimal128(38, scale),
            Put::Text => DataType::Utf8,
            Put::Bytes => DataType::Binary,
            Put::Date => DataType::Date32,
            // (From a zoned timestamp the cast keeps the UTC instant: only a cast from a
            // local one to a zoned one shifts values.)
            Put::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
            Put::Time => DataType::Time64(TimeUnit::Microsecond),
            Put::Null => return None,
        })
    }

    /// Whether the values go through a user variable and `UNHEX` in a `LOAD DATA`.
    pub(crate) fn hex(self) -> bool {
        self == Put::Bytes
    }
}

/// One value, as it is sent.
enum Cell<'a> {
    Null,
    /// Text a line must escape.
    Text(&'a [u8]),
    /// Text without a character to escape (numbers, dates), in the scratch buffer.
    Plain,
    /// Bytes: hexadecimal in a line, as they are in a parameter.
    Bytes(&'a [u8]),
}

/// The columns of one batch, cast to what their [`Put`]s write.
pub(crate) struct Columns<'p> {
    arrays: Vec<Option<ArrayRef>>,
    puts: &'p [Put],
    names: &'p [String],
    rows: usize,
}

impl<'p> Columns<'p> {
    /// `batch`'s columns (in the order of `puts` and `names`), cast exactly: a value that
    /// does not fit is an error naming its column.
    pub(crate) fn new(
        batch: &RecordBatch,
        puts: &'p [Put],
        names: &'p [String],
    ) -> Result<Columns<'p>, String> {
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let arrays = batch
            .columns()
            .iter()
            .zip(puts)
            .zip(names)
            .map(|((a, put), name)| {
                let Some(to) = put.arrow() else {
                    return Ok(None);
                };
                let a = whole_micros(a).map_err(|e| format!("column {name}: {e}"))?;
                if a.data_type() == &to {
                    return Ok(Some(a));
                }
                cast_with_options(&a, &to, &options)
                    .map(Some)
                    .map_err(|e| format!("column {name}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Columns {
            arrays,
            puts,
            names,
            rows: batch.num_rows(),
        })
    }

    /// Rows in the batch.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Appends row `row` to `out` as a line of a `LOAD DATA` file: fields separated by tabs,
    /// `\N` for NULL, `\\`, `\t`, `\n`, `\r` and `\0` escaped, bytes in hexadecimal.
    pub(crate) fn line(
        &self,
        row: usize,
        out: &mut Vec<u8>,
        scratch: &mut String,
    ) -> Result<(), String> {
        for i in 0..self.arrays.len() {
            if i > 0 {
                out.push(b'\t');
            }
            match self.cell(i, row, scratch)? {
                Cell::Null => out.extend_from_slice(b"\\N"),
                Cell::Plain => out.extend_from_slice(scratch.as_bytes()),
                Cell::Text(t) => escape(t, out),
                Cell::Bytes(b) => hex(b, out),
            }
        }
        out.push(b'\n');
        Ok(())
    }

    /// Appends row `row` to `out` as the values of an `INSERT`: `('text', 12, NULL,
    /// X'00FF')`, text in quotes with `\\`, `\'` and `\0` escaped (the session's SQL mode
    /// keeps backslash escapes).
    pub(crate) fn values(
        &self,
        row: usize,
        out: &mut String,
        scratch: &mut String,
    ) -> Result<(), String> {
        out.push('(');
        for i in 0..self.arrays.len() {
            if i > 0 {
                out.push_str(", ");
            }
            match self.cell(i, row, scratch)? {
                Cell::Null => out.push_str("NULL"),
                Cell::Plain => {
                    out.push('\'');
                    out.push_str(scratch);
                    out.push('\'');
                }
                Cell::Text(t) => {
                    out.push('\'');
                    // (A text column's value is UTF-8.)
                    for c in String::from_utf8_lossy(t).chars() {
                        match c {
                            '\\' => out.push_str("\\\\"),
                            '\'' => out.push_str("\\'"),
                            '\0' => out.push_str("\\0"),
                            c => out.push(c),
                        }
                    }
                    out.push('\'');
                }
                Cell::Bytes(b) => {
                    out.push_str("X'");
                    let mut hexed = Vec::with_capacity(b.len() * 2);
                    hex(b, &mut hexed);
                    out.push_str(&String::from_utf8_lossy(&hexed));
                    out.push('\'');
                }
            }
        }
        out.push(')');
        Ok(())
    }

    /// Value `row` of column `i`; numbers and dates are written to `scratch`.
    fn cell<'a>(&'a self, i: usize, row: usize, scratch: &mut String) -> Result<Cell<'a>, String> {
        let Some(a) = &self.arrays[i] else {
            return Ok(Cell::Null);
        };
        if a.is_null(row) {
            return Ok(Cell::Null);
        }
        scratch.clear();
        let name = &self.names[i];
        // (Writing to a String cannot fail.)
        let _ = match self.puts[i] {
            Put::Null => return Ok(Cell::Null),
            Put::Text => return Ok(Cell::Text(a.as_string::<i32>().value(row).as_bytes())),
            Put::Bytes => return Ok(Cell::Bytes(a.as_binary::<i32>().value(row))),
            Put::Int => write!(scratch, "{}", a.as_primitive::<Int64Type>().value(row)),
            Put::UInt => write!(scratch, "{}", a.as_primitive::<UInt64Type>().value(row)),
            Put::Float => {
                // (The value's exact decimal text: its shortest f32 text, read by the server
                // as a double, can exceed FLT_MAX or round twice.)
                let v = f64::from(a.as_primitive::<Float32Type>().value(row));
                finite(v, name)?;
                write!(scratch, "{v:e}")
            }
            Put::Double => {
                let v = a.as_primitive::<Float64Type>().value(row);
                finite(v, name)?;
                write!(scratch, "{v:e}")
            }
            Put::Decimal { scale } => {
                decimal(
                    scratch,
                    a.as_primitive::<Decimal128Type>().value(row),
                    scale,
                );
                Ok(())
            }
            Put::Date => {
                let days = a.as_primitive::<Date32Type>().value(row);
                let date =
                    chrono::NaiveDate::from_num_days_from_ce_opt(days.saturating_add(719_163))
                        .filter(|d| (0..=9999).contains(&chrono::Datelike::year(d)))
                        .ok_or_else(|| {
                            format!(
                                "column {name}: the date {days} (days from 1970) is out of the \
                             years 0 to 9999 MySQL keeps"
                            )
                        })?;
                write!(scratch, "{}", date.format("%Y-%m-%d"))
            }
            Put::DateTime => {
                let us = a.as_primitive::<TimestampMicrosecondType>().value(row);
                let t = chrono::DateTime::from_timestamp_micros(us)
                    .map(|t| t.naive_utc())
                    .filter(|t| (0..=9999).contains(&chrono::Datelike::year(t)))
                    .ok_or_else(|| {
                        format!(
                            "column {name}: the timestamp {us} (µs from 1970) is out of the \
                             years 0 to 9999 MySQL keeps"
                        )
                    })?;
                write!(scratch, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f"))
            }
            Put::Time => {
                let us = a.as_primitive::<Time64MicrosecondType>().value(row);
                if !(0..86_400_000_000).contains(&us) {
                    return Err(format!(
                        "column {name}: the time {us} µs is not within a day"
                    ));
                }
                let s = us / 1_000_000;
                write!(
                    scratch,
                    "{:02}:{:02}:{:02}.{:06}",
                    s / 3600,
                    s / 60 % 60,
                    s % 60,
                    us % 1_000_000
                )
            }
        };
        Ok(Cell::Plain)
    }
}

fn finite(v: f64, name: &str) -> Result<(), String> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(format!(
            "column {name}: {v} cannot be loaded: MySQL and MariaDB have no NaN or infinity"
        ))
    }
}

/// Nanosecond times and timestamps must be whole microseconds (MySQL keeps no more);
/// Arrow's cast would drop the rest.
fn whole_micros(array: &ArrayRef) -> Result<ArrayRef, String> {
    use datafusion::arrow::datatypes::{Time64NanosecondType, TimestampNanosecondType};
    let odd = match array.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => array
            .as_primitive::<TimestampNanosecondType>()
            .iter()
            .flatten()
            .find(|ns| ns % 1000 != 0),
        DataType::Time64(TimeUnit::Nanosecond) => array
            .as_primitive::<Time64NanosecondType>()
            .iter()
            .flatten()
            .find(|ns| ns % 1000 != 0),
        _ => None,
    };
    match odd {
        Some(ns) => Err(format!(
            "the value {ns} ns is not a whole number of microseconds, which MySQL keeps (it \
             would be rounded)"
        )),
        None => Ok(std::sync::Arc::clone(array)),
    }
}

/// `unscaled` × 10^-`scale` as exact decimal text.
fn decimal(out: &mut String, unscaled: i128, scale: i8) {
    if unscaled < 0 {
        out.push('-');
    }
    let digits = unscaled.unsigned_abs().to_string();
    let scale = usize::try_from(scale).unwrap_or(0);
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        let (whole, frac) = digits.split_at(digits.len() - scale);
        out.push_str(whole);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
}

/// `text` with the characters `LOAD DATA` reads specially escaped.
fn escape(text: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        let esc = match b {
            b'\\' => b'\\',
            b'\t' => b't',
            b'\n' => b'n',
            b'\r' => b'r',
            0 => b'0',
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.push(b'\\');
        out.push(esc);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
}

fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int32Array,
        StringArray, Time64NanosecondArray, TimestampMicrosecondArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn lines(batch: &RecordBatch, puts: &[Put]) -> Result<String, String> {
        let names: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let columns = Columns::new(batch, puts, &names)?;
        let (mut out, mut scratch) = (Vec::new(), String::new());
        for row in 0..columns.rows() {
            columns.line(row, &mut out, &mut scratch)?;
        }
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn values_are_written_as_exact_text_and_escaped() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("u", DataType::UInt64, true),
            Field::new("b", DataType::Boolean, true),
            Field::new("f", DataType::Float64, true),
            Field::new("d", DataType::Decimal128(12, 3), true),
            Field::new("s", DataType::Utf8, true),
            Field::new("x", DataType::Binary, true),
            Field::new("day", DataType::Date32, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+02:00".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int32Array::from(vec![Some(-7), None])),
                Arc::new(UInt64Array::from(vec![Some(u64::MAX), Some(0)])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false)])),
                Arc::new(Float64Array::from(vec![Some(0.1), Some(-1.5e300)])),
                Arc::new(
                    Decimal128Array::from(vec![Some(-5), Some(123_456)])
                        .with_precision_and_scale(12, 3)
                        .unwrap(),
                ),
                Arc::new(StringArray::from(vec![Some("a\tb\\c\nd\r\0é"), Some("N")])),
                Arc::new(BinaryArray::from(vec![Some(&[0u8, 255, 16][..]), None])),
                Arc::new(Date32Array::from(vec![Some(19_723), Some(-719_528)])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![Some(1_704_067_200_000_001), Some(-1)])
                        .with_timezone("+02:00"),
                ),
            ],
        )
        .unwrap();
        let puts = [
            Put::Int,
            Put::UInt,
            Put::Int,
            Put::Double,
            Put::Decimal { scale: 3 },
            Put::Text,
            Put::Bytes,
            Put::Date,
            Put::DateTime,
        ];
        assert_eq!(
            lines(&batch, &puts).unwrap(),
            "-7\t18446744073709551615\t1\t1e-1\t-0.005\ta\\tb\\\\c\\nd\\r\\0é\t00FF10\t\
             2024-01-01\t2024-01-01 00:00:00.000001\n\
             \\N\t0\t0\t-1.5e300\t123.456\tN\t\\N\t0000-01-01\t1969-12-31 23:59:59.999999\n"
        );
    }

    #[test]
    fn values_mysql_cannot_keep_are_errors_naming_the_column() {
        let one = |field: Field, array: ArrayRef, put: Put| {
            let batch =
                RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array]).unwrap();
            lines(&batch, &[put]).unwrap_err()
        };
        let e = one(
            Field::new("f", DataType::Float64, true),
            Arc::new(Float64Array::from(vec![f64::NAN])),
            Put::Double,
        );
        assert!(e.contains("column f") && e.contains("no NaN"), "{e}");
        let e = one(
            Field::new("day", DataType::Date32, true),
            Arc::new(Date32Array::from(vec![3_000_000])),
            Put::Date,
        );
        assert!(e.contains("column day") && e.contains("9999"), "{e}");
        let e = one(
            Field::new("t", DataType::Time64(TimeUnit::Nanosecond), true),
            Arc::new(Time64NanosecondArray::from(vec![1_500])),
            Put::Time,
        );
        assert!(e.contains("column t") && e.contains("microseconds"), "{e}");
        let e = one(
            Field::new("big", DataType::UInt64, true),
            Arc::new(UInt64Array::from(vec![u64::MAX])),
            Put::Int,
        );
        assert!(e.contains("column big"), "{e}");
    }

    #[test]
    fn decimals_keep_every_digit() {
        for (v, s, want) in [
            (0i128, 2i8, "0.00"),
            (-1, 2, "-0.01"),
            (12_345, 2, "123.45"),
            (i128::MAX, 0, "170141183460469231731687303715884105727"),
            (
                -(10i128.pow(37)),
                38,
                "-0.10000000000000000000000000000000000000",
            ),
        ] {
            let mut out = String::new();
            decimal(&mut out, v, s);
            assert_eq!(out, want);
        }
    }
}
