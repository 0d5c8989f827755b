//! CSV columns are matched by the header's names, not by position: a declared (or inferred)
//! schema `id, first_name, city` reads a file whose header is `id,city,first_name` with each
//! value in its own column, in every way a CSV source is read (plain, quarantined, compressed,
//! with a null value, on S3); a header that lacks a column or has one the schema does not is
//! refused, naming the file and the columns, unless `schema_evolution = "union"`.

use crate::support::s3::S3Server;
use crate::support::*;

const SCHEMA: &str = "schema = \"id BIGINT, first_name VARCHAR, city VARCHAR\"\n";

/// `a.csv` in the declared order, `b.csv` with the last two columns swapped.
const A: &str = "id,first_name,city\n1,Alice,Lyon\n";
const B: &str = "id,city,first_name\n2,Paris,Bob\n3,Nice,Carol\n";

fn expected() -> Vec<Vec<String>> {
    [
        ["1", "Alice", "Lyon"],
        ["2", "Bob", "Paris"],
        ["3", "Carol", "Nice"],
    ]
    .iter()
    .map(|r| r.iter().map(|s| s.to_string()).collect())
    .collect()
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// A pipeline reading `files` (name, bytes) as source `people` with `toml`; model `everyone`
/// = every row.
fn people(toml: &str, files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let mut m =
        OneModel::new("people", "everyone").source_toml(&format!("format = \"csv\"\n{toml}"));
    for (name, bytes) in files {
        m = m.file(name, bytes.clone());
    }
    m.build()
}

async fn everyone(dir: &std::path::Path) -> Vec<Vec<String>> {
    let mut got = output_rows(dir, "everyone", &["id", "first_name", "city"]).await;
    got.sort();
    got
}

#[tokio::test]
async fn a_declared_schema_reads_csv_columns_by_header_name_in_every_read_path() {
    type Files = Vec<(&'static str, Vec<u8>)>;
    let cases: Vec<(&str, String, Files)> = vec![
        (
            "plain",
            SCHEMA.to_string(),
            vec![("a.csv", A.into()), ("b.csv", B.into())],
        ),
        (
            "quarantine",
            format!("{SCHEMA}on_bad_rows = \"quarantine\"\n"),
            vec![("a.csv", A.into()), ("b.csv", B.into())],
        ),
        (
            "gzip",
            format!("{SCHEMA}compression = \"gzip\"\n"),
            vec![("a.csv.gz", gzip(A)), ("b.csv.gz", gzip(B))],
        ),
        (
            "gzip quarantine",
            format!("{SCHEMA}compression = \"gzip\"\non_bad_rows = \"quarantine\"\n"),
            vec![("a.csv.gz", gzip(A)), ("b.csv.gz", gzip(B))],
        ),
        (
            "null value",
            format!("{SCHEMA}null_value = \"n/a\"\n"),
            vec![("a.csv", A.into()), ("b.csv", B.into())],
        ),
        (
            "inferred",
            String::new(),
            vec![("a.csv", A.into()), ("b.csv", B.into())],
        ),
        (
            "one file, reordered",
            SCHEMA.to_string(),
            vec![("b.csv", format!("{B}1,Lyon,Alice\n").into_bytes())],
        ),
    ];
    for (what, toml, files) in cases {
        let dir = people(&toml, &files);
        let run = sluice(dir.path(), &["run", "."]);
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert_eq!(everyone(dir.path()).await, expected(), "{what}");
    }
}

#[tokio::test]
async fn a_header_with_a_missing_or_an_undeclared_column_is_refused_naming_the_file_and_columns() {
    for (what, toml) in [
        ("plain", SCHEMA.to_string()),
        (
            "quarantine",
            format!("{SCHEMA}on_bad_rows = \"quarantine\"\n"),
        ),
    ] {
        let dir = people(
            &toml,
            &[
                ("a.csv", A.into()),
                ("b.csv", "id,email,city\n2,bob@x,Paris\n".into()),
            ],
        );
        let run = sluice(dir.path(), &["run", "."]).expect(1);
        let e = &run.stderr;
        assert!(e.contains("source 'people'"), "{what}: {e}");
        assert!(e.contains("data/b.csv"), "{what}: {e}");
        assert!(e.contains("first_name missing"), "{what}: {e}");
        assert!(e.contains("email not in the schema"), "{what}: {e}");
        assert!(e.contains("schema_evolution = \"union\""), "{what}: {e}");
        assert!(!e.contains("a.csv"), "{what}: only the file at fault: {e}");
        assert!(
            !dir.path().join("out/everyone/_MANIFEST").exists(),
            "{what}"
        );
        // `plan` refuses it too, before anything runs.
        let plan = sluice(dir.path(), &["plan", "."]);
        assert_ne!(plan.code, 0, "{what}");
        assert!(
            plan.stderr.contains("first_name missing"),
            "{what}: {}",
            plan.stderr
        );
    }
}

#[tokio::test]
async fn with_union_a_missing_column_reads_as_null_and_an_undeclared_one_is_ignored() {
    for (what, extra) in [
        ("plain", ""),
        ("quarantine", "on_bad_rows = \"quarantine\"\n"),
    ] {
        let dir = people(
            &format!("{SCHEMA}schema_evolution = \"union\"\n{extra}"),
            &[
                ("a.csv", A.into()),
                ("b.csv", "city,email,id\nParis,bob@x,2\n".into()),
            ],
        );
        let run = sluice(dir.path(), &["run", "."]);
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        let mut got = query_output(
            &format!("{}/out/everyone/", dir.path().display()),
            "parquet",
            &[],
            "SELECT CAST(id AS VARCHAR) AS id, COALESCE(first_name, 'NULL') AS first_name, \
             city FROM t",
        )
        .await;
        let mut got = rows(&std::mem::take(&mut got), &["id", "first_name", "city"]);
        got.sort();
        assert_eq!(
            got,
            vec![
                vec!["1".to_string(), "Alice".into(), "Lyon".into()],
                vec!["2".to_string(), "NULL".into(), "Paris".into()],
            ],
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_bad_value_in_a_reordered_file_is_named_by_its_file_and_line() {
    // Column `id` is third in this file: its bad value is found by name.
    let bad = "first_name,city,id\nBob,Paris,2\nCarol,Nice,three\n";
    let dir = people(SCHEMA, &[("a.csv", A.into()), ("b.csv", bad.into())]);
    let run = sluice(dir.path(), &["run", "."]).expect(1);
    assert!(run.stderr.contains("data/b.csv:3"), "{}", run.stderr);
    assert!(run.stderr.contains("three"), "{}", run.stderr);

    let dir = people(
        &format!("{SCHEMA}on_bad_rows = \"quarantine\"\n"),
        &[("a.csv", A.into()), ("b.csv", bad.into())],
    );
    let (_, r) = run_with_report(dir.path(), &[], 0);
    assert_eq!(r["models"][0]["rows_rejected"], 1, "{r}");
    assert_eq!(
        everyone(dir.path()).await,
        vec![
            vec!["1".to_string(), "Alice".into(), "Lyon".into()],
            vec!["2".to_string(), "Bob".into(), "Paris".into()],
        ]
    );
}

#[tokio::test]
async fn csv_files_on_s3_are_read_by_header_name_plain_and_compressed() {
    use object_store::{ObjectStoreExt, PutPayload};
    let server = S3Server::start();
    server.create_bucket("lake");
    let store = server.store("lake");
    for (key, bytes) in [
        ("raw/plain/a.csv", A.as_bytes().to_vec()),
        ("raw/plain/b.csv", B.as_bytes().to_vec()),
        ("raw/gz/a.csv.gz", gzip(A)),
        ("raw/gz/b.csv.gz", gzip(B)),
    ] {
        store
            .put(
                &object_store::path::Path::from(key),
                PutPayload::from(bytes),
            )
            .await
            .unwrap();
    }
    for (what, location, extra) in [
        ("plain", "s3://lake/raw/plain/", ""),
        ("gzip", "s3://lake/raw/gz/", "compression = \"gzip\"\n"),
        (
            "gzip quarantine",
            "s3://lake/raw/gz/",
            "compression = \"gzip\"\non_bad_rows = \"quarantine\"\n",
        ),
    ] {
        let dir = OneModel::new("people", "everyone")
            .source_location(location)
            .source_toml(&format!("format = \"csv\"\n{SCHEMA}{extra}"))
            .build();
        append_toml(
            dir.path(),
            &format!(
                "[stores.lake]\nurl = \"s3://lake\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n",
                server.endpoint()
            ),
        );
        let run = sluice_env(dir.path(), &["run", "."], &server.env());
        assert_eq!(run.code, 0, "{what}: {}", run.stderr);
        assert_eq!(everyone(dir.path()).await, expected(), "{what}");
    }
}
