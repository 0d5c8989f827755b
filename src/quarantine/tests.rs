//! The quarantine read against an independent account of the same generated file: every
//! good row comes out once, in order, with its values; every bad row is a reject with its line
//! and reason; and none of it depends on where the file is cut into chunks.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

use super::decode::{ChunkDecoder, Decoded, Dialect};
use super::read_bytes;
use crate::config::CsvOptions;

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

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(10, 2), true),
        Field::new("day", DataType::Date32, true),
    ]))
}

/// A generated file, with the good rows (id, name, amount in cents) and the rejects (line,
/// reason) it must give.
struct Expected {
    bytes: Vec<u8>,
    good: Good,
    rejects: Vec<(u64, String)>,
}

fn csv_file(rows: usize, seed: u64) -> Expected {
    let mut rng = Rng(seed);
    let mut e = Expected {
        bytes: b"id,name,amount,day\n".to_vec(),
        good: Vec::new(),
        rejects: Vec::new(),
    };
    let mut line = 2u64;
    for i in 0..rows as i64 {
        let cents = i as i128 * 7 % 100_000;
        let amount = format!("{}.{:02}", cents / 100, cents % 100);
        let day = format!("2024-01-{:02}", 1 + i % 28);
        let (row, reject): (Vec<u8>, Option<String>) = match rng.next() % 16 {
            0 => (
                format!("{i},n{i},x{i},{day}\n").into_bytes(),
                Some(format!("column amount: \"x{i}\" is not Decimal128(10, 2)")),
            ),
            1 => (
                format!("{i},n{i},{amount}\n").into_bytes(),
                Some("expected 4 fields, found 3".into()),
            ),
            2 => (
                format!("{i},n{i},{amount},{day},more\n").into_bytes(),
                Some("expected 4 fields, found 5".into()),
            ),
            3 => (
                format!("{i},n{i},{amount},2024-02-30\n").into_bytes(),
                Some("column day: \"2024-02-30\" is not Date32".into()),
            ),
            4 => {
                let mut r = format!("{i},n").into_bytes();
                r.push(0xff);
                r.extend(format!(",{amount},{day}\n").into_bytes());
                (r, Some("invalid UTF-8 in column name".into()))
            }
            5 | 6 => {
                let name = format!("a, \"b\"\nc{i}");
                e.good.push((i, name, cents));
                (
                    format!("{i},\"a, \"\"b\"\"\nc{i}\",{amount},{day}\r\n").into_bytes(),
                    None,
                )
            }
            _ => {
                e.good.push((i, format!("n{i}"), cents));
                (format!("{i},n{i},{amount},{day}\n").into_bytes(), None)
            }
        };
        if let Some(reason) = reject {
            e.rejects.push((line, reason));
        }
        line += row.iter().filter(|b| **b == b'\n').count() as u64;
        e.bytes.extend(row);
    }
    e
}

/// Good rows as (id, name, amount in cents).
type Good = Vec<(i64, String, i128)>;

/// The good rows and the rejects (line, reason; sorted by line) of a read.
fn summary(d: &Decoded) -> (Good, Vec<(u64, String)>) {
    let mut good = Vec::new();
    for b in &d.batches {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let names = b.column(1).as_string::<i32>();
        let amounts = b
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
        for r in 0..b.num_rows() {
            good.push((ids.value(r), names.value(r).to_string(), amounts.value(r)));
        }
    }
    let mut rejects: Vec<(u64, String)> = d
        .rejects
        .iter()
        .map(|r| (r.line, r.reason.clone()))
        .collect();
    rejects.sort();
    (good, rejects)
}

#[test]
fn csv_rows_read_the_same_wherever_the_chunks_are_cut() {
    let e = csv_file(3000, 0x5eed);
    let decoder = ChunkDecoder::new(schema(), Dialect::csv(CsvOptions::default()), 100);
    assert!(e.rejects.len() > 500 && e.good.len() > 1500);
    for chunk in [1, 13, 97, 4096, 1 << 20, usize::MAX] {
        let got = summary(&read_bytes(&e.bytes, "f.csv", &decoder, chunk));
        assert_eq!(got.0, e.good, "good rows, chunks of {chunk} bytes");
        assert_eq!(got.1, e.rejects, "rejects, chunks of {chunk} bytes");
    }
}

#[test]
fn a_clean_csv_chunk_reads_as_the_plain_reader_reads_it() {
    let e = csv_file(500, 7);
    // Only the good rows, so the plain reader can read them.
    let mut text = b"id,name,amount,day\n".to_vec();
    for (i, name, cents) in &e.good {
        text.extend(
            format!(
                "{i},\"{}\",{}.{:02},2024-01-{:02}\n",
                name.replace('"', "\"\""),
                cents / 100,
                cents % 100,
                1 + i % 28
            )
            .into_bytes(),
        );
    }
    let plain: Vec<_> = datafusion::arrow::csv::ReaderBuilder::new(schema())
        .with_header(true)
        .build(std::io::Cursor::new(text.clone()))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let decoder = ChunkDecoder::new(schema(), Dialect::csv(CsvOptions::default()), 8192);
    let ours = read_bytes(&text, "f.csv", &decoder, 1000);
    assert!(ours.rejects.is_empty());
    let concat = |b: &[datafusion::arrow::record_batch::RecordBatch]| {
        datafusion::arrow::compute::concat_batches(&schema(), b).unwrap()
    };
    assert_eq!(concat(&ours.batches), concat(&plain));
}

#[test]
fn json_lines_bad_ones_are_rejected_by_line() {
    let mut text = Vec::new();
    let mut want_good = Vec::new();
    let mut want_bad = Vec::new();
    let mut rng = Rng(99);
    for i in 0..2000i64 {
        let line = i as u64 + 1;
        match rng.next() % 10 {
            0 => {
                text.extend(format!("{{\"id\": \"x{i}\", \"name\": \"n\"}}\n").into_bytes());
                want_bad.push(line);
            }
            1 => {
                text.extend(format!("not json {i}\n").into_bytes());
                want_bad.push(line);
            }
            2 => {
                text.extend(format!("{{\"id\": {i}, \"day\": \"2024-13-01\"}}\n").into_bytes());
                want_bad.push(line);
            }
            _ => {
                text.extend(
                    format!("{{\"id\": {i}, \"name\": \"n{i}\", \"day\": \"2024-01-02\"}}\n")
                        .into_bytes(),
                );
                want_good.push(i);
            }
        }
    }
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("day", DataType::Date32, true),
    ]));
    let decoder = ChunkDecoder::new(schema, Dialect::Json, 64);
    for chunk in [1, 50, 4096, usize::MAX] {
        let d = read_bytes(&text, "f.json", &decoder, chunk);
        let ids: Vec<i64> = d
            .batches
            .iter()
            .flat_map(|b| {
                let a = b.column(0).as_primitive::<Int64Type>();
                (0..a.len()).map(|r| a.value(r)).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ids, want_good, "chunks of {chunk}");
        let mut lines: Vec<u64> = d.rejects.iter().map(|r| r.line).collect();
        lines.sort();
        assert_eq!(lines, want_bad, "chunks of {chunk}");
        assert!(
            d.rejects
                .iter()
                .all(|r| !r.reason.is_empty() && !r.raw.is_empty())
        );
    }
}

#[test]
fn inputs_the_fuzzer_found_and_its_seeds_still_read_consistently() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["regressions/csv_quarantine", "corpus/csv_quarantine"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().file_name().is_some_and(|n| n == "README.md") {
                continue;
            }
            let data = std::fs::read(e.path()).unwrap();
            super::check_csv_read(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no inputs under {}", root.display());
}

#[test]
fn a_quoted_empty_value_is_a_row_and_an_empty_line_is_none() {
    // One column: `""` is a NULL row, the empty line no row, `x` a reject; whether or not
    // its batch was taken apart.
    let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
    let decoder = ChunkDecoder::new(schema, Dialect::csv(CsvOptions::default()), 2);
    for text in [&b"a\n\"\"\nx\n\n5\n"[..], b"a\n\"\"\n7\n\n5\n"] {
        let bad = text.windows(2).any(|w| w == b"x\n");
        for chunk in [1, usize::MAX] {
            let d = read_bytes(text, "f.csv", &decoder, chunk);
            let values: Vec<Option<i64>> = d
                .batches
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_primitive::<Int64Type>();
                    (0..b.num_rows())
                        .map(|r| (!a.is_null(r)).then(|| a.value(r)))
                        .collect::<Vec<_>>()
                })
                .collect();
            let lines: Vec<u64> = d.rejects.iter().map(|r| r.line).collect();
            if bad {
                assert_eq!(values, vec![None, Some(5)], "chunks of {chunk}");
                assert_eq!(lines, vec![3], "chunks of {chunk}");
            } else {
                assert_eq!(values, vec![None, Some(7), Some(5)], "chunks of {chunk}");
                assert!(lines.is_empty(), "chunks of {chunk}");
            }
        }
    }
}
