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

/// sluice's own CSV of one column, where a blank line is a NULL row and `""` the empty
/// string: the rows and rejects are the generated ones however the file is cut into chunks
/// and batches. (A chunk that started with a blank line lost that row; a bad row after blank
/// lines was looked for at the wrong offset and lost.)
#[test]
fn a_one_column_sluice_csv_reads_as_written_wherever_it_is_cut() {
    let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("c0", DataType::Utf8, true)]));
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        // Each row: its text, and the value it reads as (`Err`: a reject).
        let n = 1 + rng.next() % 16;
        let rows: Vec<(String, Result<Option<String>, ()>)> = (0..n)
            .map(|i| match rng.next() % 4 {
                0 => (String::new(), Ok(None)),
                1 => ("\"\"".to_string(), Ok(Some(String::new()))),
                2 => (format!("v{i},x"), Err(())),
                _ => (format!("v{i}"), Ok(Some(format!("v{i}")))),
            })
            .collect();
        let mut ends: Vec<&str> = (0..n)
            .map(|_| ["\n", "\r\n", "\r"][(rng.next() % 3) as usize])
            .collect();
        // A bare `\r` before a blank line ended by `\n` would make one `\r\n` of the two.
        for i in 0..ends.len().saturating_sub(1) {
            if rows[i + 1].0.is_empty() && ends[i + 1] == "\n" && ends[i] == "\r" {
                ends[i] = "\r\n";
            }
        }
        let mut text = b"c0\n".to_vec();
        for ((row, _), end) in rows.iter().zip(&ends) {
            text.extend(row.as_bytes());
            text.extend(end.as_bytes());
        }
        let want_rows: Vec<Option<String>> =
            rows.iter().filter_map(|(_, v)| v.clone().ok()).collect();
        let mut want_rejects: Vec<String> = rows
            .iter()
            .filter(|(_, v)| v.is_err())
            .map(|(r, _)| r.clone())
            .collect();
        want_rejects.sort();
        for batch in 1..=3 {
            let decoder = ChunkDecoder::new(Arc::clone(&schema), Dialect::sluice_csv(), batch);
            for chunk in [1, 5, usize::MAX] {
                let d = read_bytes(&text, "f.csv", &decoder, chunk);
                let got: Vec<Option<String>> = d
                    .batches
                    .iter()
                    .flat_map(|b| {
                        let c = b.column(0).as_string::<i32>();
                        (0..b.num_rows())
                            .map(|r| (!c.is_null(r)).then(|| c.value(r).to_string()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let mut rejects: Vec<String> = d
                    .rejects
                    .iter()
                    .map(|r| r.raw.trim_end_matches(['\r', '\n']).to_string())
                    .collect();
                rejects.sort();
                let shown = String::from_utf8_lossy(&text);
                assert_eq!(
                    got, want_rows,
                    "{shown:?}, batches of {batch}, chunks of {chunk}"
                );
                assert_eq!(
                    rejects, want_rejects,
                    "{shown:?}, batches of {batch}, chunks of {chunk}"
                );
            }
        }
    }
}

/// A table of [`schema`] over the local CSV `file` in `dialect`, failing on a bad row.
async fn failing_table(file: &std::path::Path, dialect: Dialect) -> super::QuarantineTable {
    use object_store::ObjectStoreExt;
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new());
    let meta = store
        .head(&object_store::path::Path::from_filesystem_path(file).unwrap())
        .await
        .unwrap();
    let folder = format!("{}/", file.parent().unwrap().display());
    let source = super::SourceFiles {
        store,
        table_url: datafusion::datasource::listing::ListingTableUrl::parse(&folder).unwrap(),
        files: vec![meta],
        partition_cols: Vec::new(),
        location: crate::store::Location::parse(&folder).unwrap(),
        layouts: Default::default(),
    };
    super::QuarantineTable::new(
        source,
        schema(),
        dialect,
        datafusion::datasource::file_format::file_compression_type::FileCompressionType::UNCOMPRESSED,
        None,
        super::OnBad::Fail,
    )
}

/// A pool that keeps the most the CSV scan's consumers held at once, and passes everything
/// on to `inner`.
#[derive(Debug)]
struct ScanPeak {
    inner: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    held: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
    named: std::sync::Mutex<Vec<String>>,
}

impl ScanPeak {
    fn new(limit: usize) -> ScanPeak {
        ScanPeak {
            inner: Arc::new(datafusion::execution::memory_pool::GreedyMemoryPool::new(
                limit,
            )),
            held: Default::default(),
            peak: Default::default(),
            named: Default::default(),
        }
    }

    fn scans(r: &datafusion::execution::memory_pool::MemoryReservation) -> bool {
        r.consumer().name().starts_with("QuarantineScan[")
    }

    fn add(&self, r: &datafusion::execution::memory_pool::MemoryReservation, n: usize) {
        use std::sync::atomic::Ordering::SeqCst;
        if Self::scans(r) {
            let now = self.held.fetch_add(n, SeqCst) + n;
            self.peak.fetch_max(now, SeqCst);
        }
    }
}

impl std::fmt::Display for ScanPeak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScanPeak")
    }
}

impl datafusion::execution::memory_pool::MemoryPool for ScanPeak {
    fn name(&self) -> &str {
        "ScanPeak"
    }
    fn register(&self, c: &datafusion::execution::memory_pool::MemoryConsumer) {
        if let Ok(mut named) = self.named.lock() {
            named.push(c.name().to_string());
        }
        self.inner.register(c)
    }
    fn unregister(&self, c: &datafusion::execution::memory_pool::MemoryConsumer) {
        self.inner.unregister(c)
    }
    fn grow(&self, r: &datafusion::execution::memory_pool::MemoryReservation, n: usize) {
        self.add(r, n);
        self.inner.grow(r, n)
    }
    fn shrink(&self, r: &datafusion::execution::memory_pool::MemoryReservation, n: usize) {
        if Self::scans(r) {
            self.held.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.shrink(r, n)
    }
    fn try_grow(
        &self,
        r: &datafusion::execution::memory_pool::MemoryReservation,
        n: usize,
    ) -> datafusion::common::Result<()> {
        self.inner.try_grow(r, n)?;
        self.add(r, n);
        Ok(())
    }
    fn reserved(&self) -> usize {
        self.inner.reserved()
    }
    fn memory_limit(&self) -> datafusion::execution::memory_pool::MemoryLimit {
        self.inner.memory_limit()
    }
}

/// The chunks a CSV scan decodes beside the one it always has in flight are counted in the
/// query's pool, up to a quarter of it; a pool too small for any reads one chunk at a time.
/// Either way every row comes out once (checked against the generated file's own sums).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_in_flight_are_counted_in_the_pool_up_to_a_quarter_of_it() {
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    // About 30 MB: several 4 MiB chunks.
    let dir = tempfile::tempdir().unwrap();
    let rows = 600_000i64;
    let mut text = String::from("id,name,amount,day\n");
    for i in 0..rows {
        text.push_str(&format!(
            "{i},name number {i} of the file,{}.{:02},2024-01-{:02}\n",
            i % 1000,
            i % 100,
            1 + i % 28
        ));
    }
    let file = dir.path().join("a.csv");
    std::fs::write(&file, &text).unwrap();
    let want_sum: i64 = (0..rows).sum();

    for (limit, scan_cap) in [(256usize << 20, 64usize << 20), (1 << 20, 0)] {
        let table = failing_table(&file, Dialect::csv(CsvOptions::default())).await;
        let pool = Arc::new(ScanPeak::new(limit));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&pool) as _)
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(
            SessionConfig::new().with_target_partitions(1),
            runtime,
        );
        ctx.register_table("t", Arc::new(table)).unwrap();
        let got = ctx
            .sql("SELECT COUNT(*), SUM(id) FROM t")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let (n, sum) = (
            got[0].column(0).as_primitive::<Int64Type>().value(0),
            got[0].column(1).as_primitive::<Int64Type>().value(0),
        );
        assert_eq!((n, sum), (rows, want_sum), "pool of {limit} bytes");
        let peak = pool.peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            pool.named
                .lock()
                .unwrap()
                .iter()
                .any(|n| n == "QuarantineScan[0]"),
            "the scan registers in the pool"
        );
        assert!(
            peak <= limit / 4,
            "pool of {limit}: the scan held {peak} bytes"
        );
        if scan_cap > 0 {
            // With room, a second chunk was decoded beside the first, and counted.
            assert!(
                peak >= 2 * super::CHUNK_BYTES,
                "pool of {limit}: {peak} bytes counted"
            );
        } else {
            assert_eq!(peak, 0, "a pool smaller than a chunk counts none");
        }
        assert_eq!(
            pool.held.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "all released"
        );
    }

    // Four scans at once in a session with a budget (as the engine's): the quarter is
    // theirs together.
    let limit = 128usize << 20;
    let pool = Arc::new(ScanPeak::new(limit));
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::clone(&pool) as _)
        .build_arc()
        .unwrap();
    let ctx = SessionContext::new_with_config_rt(
        SessionConfig::new()
            .with_target_partitions(1)
            .with_extension(Arc::new(super::ScanBudget::default())),
        runtime,
    );
    for t in 0..4 {
        let table = failing_table(&file, Dialect::csv(CsvOptions::default())).await;
        ctx.register_table(format!("t{t}"), Arc::new(table))
            .unwrap();
    }
    let got = ctx
        .sql(
            "SELECT COUNT(*), SUM(id) FROM (SELECT id FROM t0 UNION ALL SELECT id FROM t1 \
             UNION ALL SELECT id FROM t2 UNION ALL SELECT id FROM t3)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let (n, sum) = (
        got[0].column(0).as_primitive::<Int64Type>().value(0),
        got[0].column(1).as_primitive::<Int64Type>().value(0),
    );
    assert_eq!((n, sum), (4 * rows, 4 * want_sum));
    let peak = pool.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(peak <= limit / 4, "four scans held {peak} bytes together");
    assert!(peak >= 2 * super::CHUNK_BYTES, "{peak} bytes counted");
    assert_eq!(pool.held.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A scan that fails on a bad row builds only the columns the query reads: a query of some
/// columns gets their values as written (the empty string apart from NULL, in sluice's own
/// CSV), a bad value in a column it does not read fails no query that does not read it, and
/// a query that reads it fails naming its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_scan_builds_only_the_columns_read() {
    use datafusion::prelude::{SessionConfig, SessionContext};

    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("id,name,amount,day\n");
    let mut names: Vec<(i64, Option<String>)> = Vec::new();
    let bad_line = 2 + 700;
    for i in 0..3000i64 {
        let name = match i % 3 {
            0 => None,
            1 => Some(String::new()),
            _ => Some(format!("n{i}")),
        };
        let written = match &name {
            None => String::new(),
            Some(n) if n.is_empty() => "\"\"".to_string(),
            Some(n) => n.clone(),
        };
        let amount = if i == 700 {
            "x".to_string()
        } else {
            format!("{i}.5")
        };
        text.push_str(&format!("{i},{written},{amount},2024-01-01\n"));
        names.push((i, name));
    }
    std::fs::write(dir.path().join("f.csv"), &text).unwrap();
    let table = failing_table(&dir.path().join("f.csv"), Dialect::sluice_csv()).await;
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    ctx.register_table("t", Arc::new(table)).unwrap();
    let run = |sql: &'static str| {
        let ctx = ctx.clone();
        async move { ctx.sql(sql).await.unwrap().collect().await }
    };
    let got = run("SELECT id, name FROM t ORDER BY id").await.unwrap();
    let mut read: Vec<(i64, Option<String>)> = Vec::new();
    for b in &got {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let n = datafusion::arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        let n = n.as_string::<i32>();
        for r in 0..b.num_rows() {
            read.push((
                ids.value(r),
                (!n.is_null(r)).then(|| n.value(r).to_string()),
            ));
        }
    }
    assert_eq!(read, names);
    let count = run("SELECT COUNT(*) FROM t").await.unwrap();
    assert_eq!(
        count[0].column(0).as_primitive::<Int64Type>().value(0),
        3000
    );
    let err = run("SELECT SUM(amount) FROM t")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("f.csv:{bad_line}: column amount")),
        "{err}"
    );
}

/// Text that is not quite sluice's CSV reads as csv-core reads it, however the chunk is cut
/// and whatever else the chunk holds: `""22` is `22`, and a lone `"` opening the file's last
/// field is NULL (before, a `""` elsewhere in the chunk made it the empty string).
#[test]
fn almost_sluice_csv_reads_as_csv_core_reads_it() {
    let schema: SchemaRef = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Utf8, true),
        Field::new("b", DataType::Utf8, true),
    ]));
    let decoder = ChunkDecoder::new(Arc::clone(&schema), Dialect::sluice_csv(), 4);
    let values = |text: &[u8], chunk: usize| -> Vec<(Option<String>, Option<String>)> {
        let d = read_bytes(text, "f.csv", &decoder, chunk);
        assert!(d.rejects.is_empty(), "{:?}", d.rejects);
        d.batches
            .iter()
            .flat_map(|b| {
                let (a, c) = (
                    b.column(0).as_string::<i32>(),
                    b.column(1).as_string::<i32>(),
                );
                (0..b.num_rows())
                    .map(|r| {
                        (
                            (!a.is_null(r)).then(|| a.value(r).to_string()),
                            (!c.is_null(r)).then(|| c.value(r).to_string()),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let s = |v: &str| Some(v.to_string());
    for chunk in [1, usize::MAX] {
        assert_eq!(
            values(b"a,b\n\"\"22,x\n\"\",y\n", chunk),
            vec![(s("22"), s("x")), (s(""), s("y"))],
            "chunks of {chunk}"
        );
        for text in [&b"a,b\n\"\",y\nz,\""[..], b"a,b\nq,y\nz,\""] {
            let got = values(text, chunk);
            assert_eq!(
                got.last(),
                Some(&(s("z"), None)),
                "{text:?}, chunks of {chunk}"
            );
        }
    }
}
