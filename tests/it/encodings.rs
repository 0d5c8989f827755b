//! Every value a query produces survives a sink and sluice's reader, in every format: what a
//! downstream model (or `sluice sql --table` over the output) reads is what the upstream's SQL
//! produced. NULL and the empty string, NaN and infinities, newlines, quotes, delimiters and
//! Unicode, per format; and the same CSV read by DuckDB and pyarrow.
//!
//! The oracle is the SQL itself: sluice prints a canonical text of each value (strings
//! hex-encoded, so a newline or a NULL cannot hide) of the source query, and of the output read
//! back; the two must be equal.

use std::path::Path;

use crate::support::*;

/// String values that CSV and JSON encoders have to get right.
fn strings() -> Vec<Option<&'static str>> {
    vec![
        None,
        Some(""),
        Some(" "),
        Some("plain"),
        Some("x,y"),
        Some("q\"uote"),
        Some("\"\""),
        Some("\""),
        Some("'"),
        Some("new\nline"),
        Some("cr\r\nlf"),
        Some("\r"),
        Some("\n"),
        Some("München 東京 😀"),
        Some("\\N"),
        Some("NULL"),
        Some("null"),
        Some("NaN"),
        Some("  pad  "),
        Some("tab\there"),
        Some(","),
        Some("a\\b"),
        Some("{\"json\": [1]}"),
    ]
}

/// Float values, as SQL expressions.
const FLOATS: &[&str] = &[
    "NULL", "'NaN'", "'inf'", "'-inf'", "0.0", "-0.0", "1.5", "1e300", "5e-324", "0.1", "-2.5e-10",
];

/// Other columns: a 64-bit integer, a boolean, a date and a timestamp, as SQL expressions.
const INTS: &[&str] = &["NULL", "0", "-9223372036854775808", "9223372036854775807"];
const BOOLS: &[&str] = &["NULL", "true", "false"];
const DATES: &[&str] = &["NULL", "'2024-02-29'", "'1970-01-01'"];
const TIMESTAMPS: &[&str] = &[
    "NULL",
    "'2024-02-29T23:59:59.123456'",
    "'1969-12-31T00:00:00'",
];

/// `s` as a SQL expression: quoted, with `chr(n)` for control characters.
fn sql_text(s: &str) -> String {
    let mut parts = vec![String::from("''")];
    let mut run = String::new();
    for c in s.chars() {
        if c.is_control() {
            if !run.is_empty() {
                parts.push(format!("'{}'", run.replace('\'', "''")));
                run.clear();
            }
            parts.push(format!("chr({})", c as u32));
        } else {
            run.push(c);
        }
    }
    if !run.is_empty() {
        parts.push(format!("'{}'", run.replace('\'', "''")));
    }
    parts.join(" || ")
}

/// The source query: one row per string value, the other columns cycling through theirs.
fn source_sql() -> String {
    let strings = strings();
    let n = strings.len();
    let rows: Vec<String> = (0..n)
        .map(|k| {
            let s = strings[k].map_or("CAST(NULL AS VARCHAR)".to_string(), sql_text);
            format!(
                "({k}, {s}, CAST({} AS DOUBLE), CAST({} AS BIGINT), CAST({} AS BOOLEAN), \
                 CAST({} AS DATE), CAST({} AS TIMESTAMP))",
                FLOATS[k % FLOATS.len()],
                INTS[k % INTS.len()],
                BOOLS[k % BOOLS.len()],
                DATES[k % DATES.len()],
                TIMESTAMPS[k % TIMESTAMPS.len()],
            )
        })
        .collect();
    format!(
        "SELECT * FROM (VALUES {}) AS v(id, s, f, i, b, d, ts)",
        rows.join(", ")
    )
}

/// A query printing each column of `from` as canonical text (strings in hex), by id.
fn canonical(from: &str) -> String {
    format!(
        "SELECT id, COALESCE(encode(s, 'hex'), 'NULL') AS s, \
         COALESCE(CAST(f AS VARCHAR), 'NULL') AS f, COALESCE(CAST(i AS VARCHAR), 'NULL') AS i, \
         COALESCE(CAST(b AS VARCHAR), 'NULL') AS b, COALESCE(CAST(d AS VARCHAR), 'NULL') AS d, \
         COALESCE(CAST(ts AS VARCHAR), 'NULL') AS ts FROM {from} ORDER BY id"
    )
}

/// What `sluice sql` prints for the canonical text of the source query.
fn expected(dir: &Path) -> String {
    sluice(
        dir,
        &["sql", "-e", &canonical(&format!("({})", source_sql()))],
    )
    .expect(0)
    .stdout
}

/// Writes the source query to `out/<name>/` in `format` (extra `sluice sql` arguments in
/// `extra`) and returns what `sluice sql` prints for the canonical text of the output.
fn round_trip(dir: &Path, name: &str, format: &str, extra: &[&str]) -> String {
    let out = format!("out/{name}/");
    let src = source_sql();
    let mut args = vec!["sql", "-e", &src, "--out", &out, "--format", format];
    args.extend_from_slice(extra);
    sluice(dir, &args).expect(0);
    let table = format!("o={out}");
    sluice(dir, &["sql", "-e", &canonical("o"), "--table", &table])
        .expect(0)
        .stdout
}

#[test]
fn every_format_round_trips_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let want = expected(dir.path());
    // The oracle covers what it should: a row per string value, NULL and '' told apart.
    assert!(
        want.contains(&format!("{} row(s)", strings().len())),
        "{want}"
    );
    assert!(want.contains("| 0  | NULL "), "{want}");
    for format in ["parquet", "csv", "json"] {
        let got = round_trip(dir.path(), format, format, &[]);
        assert_eq!(got, want, "{format}: read back differs from the query");
        // Small files: records cut across files and chunks, read in parallel.
        let got = round_trip(
            dir.path(),
            &format!("{format}_small"),
            format,
            &["--target-rows-per-file", "3"],
        );
        assert_eq!(got, want, "{format} in 3-row files: read back differs");
    }
}

/// A pipeline whose CSV output is read by a downstream model: the model sees '' and NULL as
/// the upstream's SQL produced them (they were both read as NULL).
#[tokio::test]
async fn downstream_model_reads_csv_output_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(d.join("queries/upstream.sql"), source_sql()).unwrap();
    std::fs::write(
        d.join("queries/downstream.sql"),
        "SELECT id, s, s IS NULL AS s_null, f, i, b, d, ts FROM upstream",
    )
    .unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "[models.upstream.sink]\nlocation = \"out/upstream/\"\nformat = \"csv\"\n\
         [models.downstream.sink]\nlocation = \"out/downstream/\"\n",
    )
    .unwrap();
    sluice(d, &["run", "."]).expect(0);
    let want = expected(d);
    let got = sluice(
        d,
        &["sql", "-e", &canonical("o"), "--table", "o=out/downstream/"],
    )
    .expect(0)
    .stdout;
    assert_eq!(
        got, want,
        "the downstream model's output differs from the SQL"
    );
    // And read with plain DataFusion: '' is not NULL.
    let b = query_output(
        &format!("{}/", d.join("out/downstream").display()),
        "parquet",
        &[],
        "SELECT CAST(id AS VARCHAR) AS id, CAST(s_null AS VARCHAR) AS n FROM t WHERE id < 2",
    )
    .await;
    assert_eq!(
        rows(&b, &["id", "n"]),
        vec![
            vec!["0".to_string(), "true".to_string()],
            vec!["1".to_string(), "false".to_string()]
        ]
    );
}

/// A CSV file of one column writes NULL as a blank line (the only way to tell it from `""`),
/// which arrow's reader skips: sluice still reads the row, as NULL. Partitioned outputs too.
#[test]
fn csv_of_one_column_and_partitioned_csv_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let one = |from: &str| {
        format!("SELECT COALESCE(encode(s, 'hex'), 'NULL') AS s FROM {from} ORDER BY s")
    };
    let src = format!("(SELECT s FROM ({}))", source_sql());
    let want = sluice(d, &["sql", "-e", &one(&src)]).expect(0).stdout;
    sluice(
        d,
        &[
            "sql",
            "-e",
            &format!("SELECT * FROM {src}"),
            "--out",
            "out/one/",
            "--format",
            "csv",
        ],
    )
    .expect(0);
    let text = std::fs::read_to_string(
        d.join("out/one")
            .join(&data_files(files_under(&d.join("out/one")))[0]),
    )
    .unwrap();
    assert!(text.starts_with("s\n\n\"\"\n"), "{text:?}");
    let got = sluice(d, &["sql", "-e", &one("o"), "--table", "o=out/one/"])
        .expect(0)
        .stdout;
    assert_eq!(got, want);
    // Partitioned by the boolean (NULL included): each file keeps the other columns.
    let want = expected(d);
    let got = round_trip(d, "by_b", "csv", &["--partition-by", "b"]);
    assert_eq!(got, want);
}

/// The expected (id, s, f) of the source, from the test's inputs.
fn expected_values() -> Vec<(i64, Option<String>, Option<f64>)> {
    strings()
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let f = FLOATS[k % FLOATS.len()].trim_matches('\'');
            let f = (f != "NULL").then(|| f.parse::<f64>().unwrap());
            (k as i64, s.map(str::to_string), f)
        })
        .collect()
}

fn same_float(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits(),
        (a, b) => a == b,
    }
}

/// (id, s, f) of a reader's table.
#[track_caller]
fn id_s_f(table: &readers::Table) -> Vec<(i64, Option<String>, Option<f64>)> {
    let mut rows: Vec<_> = table
        .column("id")
        .into_iter()
        .zip(table.column("s"))
        .zip(table.column("f"))
        .map(|((id, s), f)| {
            (
                id.unwrap().parse().unwrap(),
                s,
                f.map(|f| f.parse::<f64>().unwrap()),
            )
        })
        .collect();
    rows.sort_by_key(|r| r.0);
    rows
}

#[track_caller]
fn assert_same_values(
    got: &[(i64, Option<String>, Option<f64>)],
    want: &[(i64, Option<String>, Option<f64>)],
    what: &str,
) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            g.0 == w.0 && g.1 == w.1 && same_float(g.2, w.2),
            "{what}: read {g:?}, wrote {w:?}"
        );
    }
}

/// sluice's CSV read by DuckDB and pyarrow, told how NULL and the empty string are written
/// (both read `""` as NULL by default: see docs/outputs.md).
#[test]
fn csv_output_read_by_duckdb_and_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source_sql();
    sluice(
        d,
        &["sql", "-e", &src, "--out", "out/csv/", "--format", "csv"],
    )
    .expect(0);
    let want = expected_values();
    let table = readers::duckdb(
        d,
        "SELECT id, s, f FROM read_csv('out/csv/*.csv', allow_quoted_nulls = false, \
         types = {'s': 'VARCHAR', 'f': 'DOUBLE'})",
    );
    assert_same_values(&id_s_f(&table), &want, "DuckDB");
    let table = readers::pyarrow_dataset(
        &d.join("out/csv").display().to_string(),
        "ds.CsvFileFormat(convert_options=csv.ConvertOptions(strings_can_be_null=True, \
         quoted_strings_can_be_null=False, null_values=['']))",
        &[],
    );
    assert_same_values(&id_s_f(&table), &want, "pyarrow");
}

/// sluice's JSON lines read by DuckDB and pyarrow: NULL and '' apart; NaN and the infinities
/// are the strings "NaN", "Infinity", "-Infinity" (JSON has no number for them), read back
/// as floats by DuckDB when the column is typed DOUBLE. pyarrow refuses a column that mixes
/// numbers and strings ("changed from string to number"): it reads the strings of an output
/// without such floats.
#[test]
fn json_output_read_by_duckdb_and_pyarrow() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = source_sql();
    sluice(
        d,
        &["sql", "-e", &src, "--out", "out/json/", "--format", "json"],
    )
    .expect(0);
    let want = expected_values();
    let table = readers::duckdb(
        d,
        "SELECT id, s, f FROM read_json('out/json/*.json', \
         columns = {'id': 'BIGINT', 's': 'VARCHAR', 'f': 'DOUBLE'})",
    );
    assert_same_values(&id_s_f(&table), &want, "DuckDB");
    let src = format!("SELECT id, s FROM ({src})");
    sluice(
        d,
        &[
            "sql",
            "-e",
            &src,
            "--out",
            "out/json_s/",
            "--format",
            "json",
        ],
    )
    .expect(0);
    let table = readers::pyarrow_dataset(&d.join("out/json_s").display().to_string(), "json", &[]);
    let strings: Vec<(i64, Option<String>)> = id_s_f_text(&table);
    let want_strings: Vec<(i64, Option<String>)> =
        want.iter().map(|r| (r.0, r.1.clone())).collect();
    assert_eq!(strings, want_strings, "pyarrow");
}

fn id_s_f_text(table: &readers::Table) -> Vec<(i64, Option<String>)> {
    let mut rows: Vec<_> = table
        .column("id")
        .into_iter()
        .zip(table.column("s"))
        .map(|(id, s)| (id.unwrap().parse().unwrap(), s))
        .collect();
    rows.sort_by_key(|r| r.0);
    rows
}

/// Each Parquet compression a sink offers is what every column chunk of its files says, and
/// sluice, DuckDB and pyarrow read the same rows back; the checksums are computed here.
#[test]
fn every_parquet_compression_is_written_as_asked_and_read_back_by_every_reader() {
    use datafusion::parquet::basic::Compression;
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n: u64 = 50_000;
    let sql = format!(
        "SELECT value AS id, 'name-' || CAST(value % 97 AS VARCHAR) AS name, \
         value * 0.5 AS half FROM generate_series(1, {n})"
    );
    let sum_id: u64 = (1..=n).sum();
    let mut sizes = std::collections::BTreeMap::new();
    for (flag, want) in [
        (None, Compression::ZSTD(Default::default())),
        (Some("zstd(9)"), Compression::ZSTD(Default::default())),
        (Some("snappy"), Compression::SNAPPY),
        (Some("lz4"), Compression::LZ4_RAW),
        (Some("none"), Compression::UNCOMPRESSED),
    ] {
        let name = flag.unwrap_or("default").replace(['(', ')'], "");
        let out = d.join("out").join(&name);
        let mut args = vec!["sql", "-q", "-e", &sql, "--out", out.to_str().unwrap()];
        if let Some(f) = flag {
            args.extend(["--compression", f]);
        }
        sluice(d, &args).expect(0);
        let files = data_files(files_under(&out));
        assert!(!files.is_empty());
        let mut bytes = 0;
        for f in &files {
            let file = std::fs::File::open(out.join(f)).unwrap();
            bytes += file.metadata().unwrap().len();
            let reader = SerializedFileReader::new(file).unwrap();
            for rg in reader.metadata().row_groups() {
                for c in rg.columns() {
                    // (The zstd level is not recorded in the file.)
                    assert_eq!(
                        std::mem::discriminant(&c.compression()),
                        std::mem::discriminant(&want),
                        "{name}: {f}"
                    );
                }
            }
        }
        sizes.insert(name.clone(), bytes);
        // Count, sums and distinct names, all whole numbers, as one text.
        let want_row = format!("{n}/{sum_id}/97/{sum_id}");
        let check = "SELECT CAST(COUNT(*) AS VARCHAR) || '/' || CAST(SUM(id) AS VARCHAR) || '/' \
                     || CAST(COUNT(DISTINCT name) AS VARCHAR) || '/' \
                     || CAST(SUM(CAST(half * 2 AS BIGINT)) AS VARCHAR) AS r FROM t";
        let table = format!("t={}/", out.display());
        let got = sluice(d, &["sql", "-q", "-e", check, "--table", &table]).expect(0);
        assert!(got.stdout.contains(&want_row), "{name}: {}", got.stdout);
        let duck = readers::duckdb(
            d,
            &check.replace(
                "FROM t",
                &format!("FROM read_parquet('out/{name}/*.parquet')"),
            ),
        );
        assert_eq!(duck.rows, vec![vec![Some(want_row.clone())]], "{name}");
        let arrow = readers::pyarrow_dataset(out.to_str().unwrap(), "parquet", &[]);
        assert_eq!(arrow.rows.len() as u64, n, "{name}");
    }
    // Uncompressed files are the largest, zstd's the smallest.
    assert!(
        sizes["none"] > sizes["snappy"] && sizes["snappy"] > sizes["zstd9"],
        "{sizes:?}"
    );
}

/// A result with no rows still publishes one file, of no rows and the result's columns (a
/// partitioned output's in the NULL partition's folder), so that DuckDB and pyarrow read the
/// folder as those columns and no rows (without it DuckDB's glob fails: "No files found");
/// sluice reads it as no rows. The next version with rows drops it, appended or overwritten,
/// and every reader then counts exactly those rows; a version with no rows again has it back.
#[test]
fn an_output_with_no_rows_is_read_as_its_columns_by_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = |bound: i64| {
        format!(
            "SELECT id, s, p FROM (VALUES (1, 'a', 'x'), (2, 'b', 'y'), (3, 'c', 'x')) \
             AS v(id, s, p) WHERE id > {bound}"
        )
    };
    let count = |out: &str| -> u64 {
        let printed = sluice(
            d,
            &[
                "sql",
                "-e",
                "SELECT COUNT(id) AS n FROM o",
                "--table",
                &format!("o={out}"),
            ],
        )
        .expect(0)
        .stdout;
        let n = printed
            .lines()
            .nth(3)
            .map(|l| l.trim_matches(['|', ' ']).to_string());
        n.and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {printed}"))
    };
    for (format, partitioned) in [
        ("parquet", false),
        ("parquet", true),
        ("csv", false),
        ("csv", true),
        ("json", false),
    ] {
        let out = format!("out/{format}-{partitioned}/");
        let write = |bound: i64, mode: &str| {
            let mut args = vec!["sql", "-q", "-e"];
            let sql = rows(bound);
            args.extend([
                sql.as_str(),
                "--out",
                &out,
                "--format",
                format,
                "--mode",
                mode,
            ]);
            if partitioned {
                args.extend(["--partition-by", "p"]);
            }
            sluice(d, &args).expect(0);
        };
        let reader = match format {
            "parquet" => format!("read_parquet('{out}**/*.parquet', hive_partitioning = true)"),
            "csv" => format!("read_csv('{out}**/*.csv', hive_partitioning = true)"),
            _ => format!("read_json('{out}**/*.json')"),
        };
        let files = |schema_only: bool| {
            data_files(files_under(&d.join(&out)))
                .into_iter()
                .filter(|f| f.contains("/part-00000-") || f.starts_with("part-00000-"))
                .count()
                == usize::from(schema_only)
        };
        let readers_see = |want: u64, context: &str| {
            let table = readers::duckdb(d, &format!("SELECT * FROM {reader}"));
            assert_eq!(table.rows.len() as u64, want, "{out} {context}: DuckDB");
            if format != "json" {
                // (JSON lines have no header: an empty file names no column.)
                for c in ["id", "s", "p"] {
                    assert!(
                        table.columns.iter().any(|n| n == c),
                        "{out} {context}: {table:?}"
                    );
                }
                let parts: &[&str] = if partitioned { &["p"] } else { &[] };
                let folder = d.join(&out).display().to_string();
                let table = readers::pyarrow_dataset(&folder, format, parts);
                assert_eq!(table.rows.len() as u64, want, "{out} {context}: pyarrow");
                for c in ["id", "s", "p"] {
                    assert!(
                        table.columns.iter().any(|n| n == c),
                        "{out} {context}: {table:?}"
                    );
                }
            }
            assert_eq!(count(&out), want, "{out} {context}: sluice");
        };
        write(100, "overwrite");
        assert!(files(true), "{out}: {:?}", files_under(&d.join(&out)));
        readers_see(0, "no rows");
        write(1, "append");
        assert!(files(false), "{out}: {:?}", files_under(&d.join(&out)));
        readers_see(2, "appended to no rows");
        write(0, "overwrite");
        readers_see(3, "overwritten");
        write(100, "overwrite");
        assert!(files(true), "{out}: {:?}", files_under(&d.join(&out)));
        readers_see(0, "overwritten with no rows");
    }
}
