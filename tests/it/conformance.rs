//! The storage conformance suite: the same sink and commit checks on local disk, on a real
//! S3-compatible server (moto on 127.0.0.1) and on an Azure Blob emulator (Azurite), through
//! [`on_every_backend!`].

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::support::*;

async fn every_mode(t: Target) {
    let (_, by_day) = raw_counts();
    let count_by_day = || async {
        let b = t.query("parquet", &["dt"], "SELECT dt, CAST(COUNT(*) AS VARCHAR) AS n, CAST(SUM(quantity) AS VARCHAR) AS q FROM t GROUP BY dt").await;
        rows(&b, &["dt", "n", "q"])
    };
    // overwrite: every partition, exactly the raw rows.
    t.write("SELECT * FROM o", &["--partition-by", "dt"])
        .expect(0);
    let first = count_by_day().await;
    let got: Vec<(String, String)> = first.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let want: Vec<(String, String)> = by_day
        .iter()
        .map(|(d, n)| (d.clone(), n.to_string()))
        .collect();
    assert_eq!(got, want);
    let snap = t.snapshot().await;
    assert!(
        snap.contains_key("_SUCCESS") && snap.contains_key("_MANIFEST"),
        "{:?}",
        snap.keys()
    );
    assert!(
        snap.keys().all(|k| !k.starts_with("_staging")),
        "{:?}",
        snap.keys()
    );
    // Nothing is left in the staging area beside the output either.
    let staged: Vec<_> = t
        .store
        .list(Some(&t.staging_key("")))
        .try_collect()
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
    let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
    let listed = manifest_files(&manifest);
    assert_eq!(
        listed,
        data_files(snap.keys()),
        "the manifest lists exactly the data files"
    );

    // overwrite_partitions: only 2024-01-02 is replaced (with tenfold quantities).
    let others = |snap: &BTreeMap<String, Vec<u8>>| {
        snap.iter()
            .filter(|(k, _)| k.starts_with("dt=") && !k.starts_with("dt=2024-01-02"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let before = t.snapshot().await;
    t.write(
        "SELECT order_id, customer_id, product, quantity * 10 AS quantity, unit_price, status, dt FROM o WHERE dt = '2024-01-02'",
        &["--partition-by", "dt", "--mode", "overwrite_partitions"],
    )
    .expect(0);
    assert_eq!(
        others(&before),
        others(&t.snapshot().await),
        "other partitions changed"
    );
    let second = count_by_day().await;
    for (a, b) in first.iter().zip(&second) {
        if a[0] == "2024-01-02" {
            assert_eq!(a[1], b[1]);
            assert_eq!(
                a[2].parse::<i64>().unwrap() * 10,
                b[2].parse::<i64>().unwrap()
            );
        } else {
            assert_eq!(a, b);
        }
    }

    // append: that day's rows once more; the others unchanged.
    t.write(
        "SELECT * FROM o WHERE dt = '2024-01-03'",
        &["--partition-by", "dt", "--mode", "append"],
    )
    .expect(0);
    let third = count_by_day().await;
    let n = |rows: &Vec<Vec<String>>, d: &str| {
        rows.iter().find(|r| r[0] == d).unwrap()[1]
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(n(&third, "2024-01-03"), 2 * by_day["2024-01-03"]);
    assert_eq!(n(&third, "2024-01-01"), by_day["2024-01-01"]);

    // error_if_exists: refused, nothing changes.
    let before = t.snapshot().await;
    let run = t
        .write(
            "SELECT * FROM o",
            &["--partition-by", "dt", "--mode", "error_if_exists"],
        )
        .expect(1);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    assert_eq!(before, t.snapshot().await);
}

async fn failed_write_leaves_previous_output(t: Target) {
    t.write("SELECT * FROM o", &["--partition-by", "dt"])
        .expect(0);
    let before = t.snapshot().await;
    // Fails part-way: rows of the last day do not cast, after other days' files are staged
    // (tiny files make sure some are complete).
    let run = t.write(
        "SELECT *, CAST(CASE WHEN dt = '2024-01-04' AND quantity > 5 THEN 'x' ELSE '1' END AS INT) AS boom FROM o",
        &["--partition-by", "dt", "--target-rows-per-file", "5"],
    )
    .expect(1);
    assert!(run.stderr.contains("Cannot cast"), "{}", run.stderr);
    assert_eq!(
        before,
        t.snapshot().await,
        "the previous output changed or staging was left"
    );
    assert_eq!(t.count("parquet", &["dt"]).await, 200);
}

async fn rerun_is_idempotent(t: Target) {
    for _ in 0..2 {
        t.write(
            "SELECT * FROM o",
            &["--partition-by", "dt", "--format", "csv"],
        )
        .expect(0);
    }
    let b = t.query("csv", &["dt"], "SELECT CAST(COUNT(*) AS VARCHAR) AS n, CAST(COUNT(DISTINCT order_id) AS VARCHAR) AS d FROM t").await;
    assert_eq!(
        rows(&b, &["n", "d"]),
        vec![vec!["200".to_string(), "200".to_string()]]
    );
    let snap = t.snapshot().await;
    assert_eq!(
        data_files(snap.keys()).len(),
        4,
        "one file per day, old ones removed: {:?}",
        snap.keys()
    );
}

/// `--target-file-size` caps files by bytes: 40,000 rows (a few MB) written with a 64 KiB
/// target, in three partitions, give files each within the target (CSV and JSON lines
/// exactly; Parquet within the documented slack of 1/16, `docs/outputs.md#file-sizes`), none
/// needlessly small, and every row exactly once with its values intact, as plain DataFusion
/// reads the files.
async fn files_are_capped_by_bytes(t: Target) {
    const CAP: u64 = 64 * 1024;
    const N: u64 = 40_000;
    let sql = format!(
        "SELECT value AS id, value % 3 AS k, md5(CAST(value AS VARCHAR)) AS h, \
         CAST(value AS DOUBLE) / 7 AS x FROM generate_series(1, {N})"
    );
    for format in ["parquet", "csv", "json"] {
        t.write(
            &sql,
            &[
                "--format",
                format,
                "--partition-by",
                "k",
                "--target-file-size",
                "64KiB",
                "--threads",
                "2",
            ],
        )
        .expect(0);
        let snap = t.snapshot().await;
        let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
        let files = manifest["files"].as_array().unwrap();
        let slack = if format == "parquet" { CAP / 16 } else { 0 };
        let mut sizes = Vec::new();
        for f in files {
            let path = f["path"].as_str().unwrap();
            let size = snap[path].len() as u64;
            assert_eq!(f["bytes"].as_u64(), Some(size), "{format}: {path}");
            assert!(
                size <= CAP + slack,
                "{format}: {path} is {size} bytes, over {CAP} + {slack}"
            );
            sizes.push(size);
        }
        sizes.sort();
        let total: u64 = sizes.iter().sum();
        assert!(
            total > 10 * CAP && sizes.len() as u64 >= total / CAP,
            "{format}: {} files, {total} bytes",
            sizes.len()
        );
        // Files are filled: CSV and JSON to within a row of the target but for the last file
        // of each writer lane (3 partitions, at most 2 more lanes); Parquet, whose row group
        // in progress is counted uncompressed until flushed, to half of it or more (median).
        if format == "parquet" {
            assert!(sizes[sizes.len() / 2] >= CAP / 2, "{format}: {sizes:?}");
        } else {
            let small = sizes.iter().filter(|s| **s < CAP - 200).count();
            assert!(small <= 5, "{format}: {small} small files: {sizes:?}");
        }
        let listed_rows: u64 = files.iter().map(|f| f["rows"].as_u64().unwrap()).sum();
        assert_eq!(listed_rows, N, "{format}");
        let got = t
            .query(
                format,
                &["k"],
                "SELECT CAST(COUNT(*) AS VARCHAR) AS n, CAST(COUNT(DISTINCT id) AS VARCHAR) AS d, \
                 CAST(SUM(id) AS VARCHAR) AS s, \
                 CAST(SUM(CASE WHEN h = md5(CAST(id AS VARCHAR)) AND CAST(k AS BIGINT) = id % 3 \
                 AND abs(x * 7 - id) < 1e-6 THEN 1 ELSE 0 END) AS VARCHAR) AS intact FROM t",
            )
            .await;
        let n = N.to_string();
        assert_eq!(
            rows(&got, &["n", "d", "s", "intact"]),
            vec![vec![n.clone(), n.clone(), (N * (N + 1) / 2).to_string(), n]],
            "{format}"
        );
        eprintln!(
            "{format}: {} files, {} to {} bytes (target {CAP})",
            sizes.len(),
            sizes[0],
            sizes[sizes.len() - 1]
        );
    }
}

on_every_backend!(
    files_are_capped_by_bytes:
    local_files_are_capped_by_bytes,
    s3_files_are_capped_by_bytes,
    azure_files_are_capped_by_bytes
);

on_every_backend!(
    every_mode:
    local_every_mode,
    s3_every_mode,
    azure_every_mode
);

on_every_backend!(
    failed_write_leaves_previous_output:
    local_failed_write_leaves_previous_output,
    s3_failed_write_leaves_previous_output,
    azure_failed_write_leaves_previous_output
);

on_every_backend!(
    rerun_is_idempotent:
    local_rerun_is_idempotent,
    s3_rerun_is_idempotent,
    azure_rerun_is_idempotent
);

/// Partition values, each with the folder name Hive gives it (`FileUtils.escapePathName`:
/// `%XX` for the control characters and `"#%'*/:=?\{[]^`, DEL; anything else as it is) and
/// the value every reader must read back. `null` in any case is the exception: its first
/// letter is escaped too, since DuckDB reads a folder `p=null` as NULL.
fn partition_cases() -> Vec<(Option<&'static str>, &'static str, Option<&'static str>)> {
    vec![
        (Some("a=b"), "p=a%3Db", Some("a=b")),
        (Some("EU/UK"), "p=EU%2FUK", Some("EU/UK")),
        (Some("50%"), "p=50%25", Some("50%")),
        (Some("%3D"), "p=%253D", Some("%3D")),
        (Some("10:30"), "p=10%3A30", Some("10:30")),
        (Some("München 東京"), "p=München 東京", Some("München 東京")),
        (
            Some("q\"#'*?\\{[]^"),
            "p=q%22%23%27%2A%3F%5C%7B%5B%5D%5E",
            Some("q\"#'*?\\{[]^"),
        ),
        (
            Some("t\tn\nr\r\u{1}\u{7f}"),
            "p=t%09n%0Ar%0D%01%7F",
            Some("t\tn\nr\r\u{1}\u{7f}"),
        ),
        (Some("<>|~`}"), "p=<>|~`}", Some("<>|~`}")),
        (
            Some("x+y&z;w,v@$!()"),
            "p=x+y&z;w,v@$!()",
            Some("x+y&z;w,v@$!()"),
        ),
        (Some("."), "p=.", Some(".")),
        (Some(".."), "p=..", Some("..")),
        (Some(" a b "), "p= a b ", Some(" a b ")),
        (Some("null"), "p=%6Eull", Some("null")),
        (Some("NULL"), "p=%4EULL", Some("NULL")),
        // Hive's NULL folder: NULL, and as in Hive and Spark, '' and the folder's own name.
        (None, "p=__HIVE_DEFAULT_PARTITION__", None),
        (Some(""), "p=__HIVE_DEFAULT_PARTITION__", None),
        (
            Some("__HIVE_DEFAULT_PARTITION__"),
            "p=__HIVE_DEFAULT_PARTITION__",
            None,
        ),
    ]
}

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

/// Rows `(id, value)` of a reader's table, sorted, with the values as [`partition_cases`]
/// expects them.
fn id_values(table: &readers::Table) -> Vec<(i64, Option<String>)> {
    let mut got: Vec<(i64, Option<String>)> = table
        .column("id")
        .into_iter()
        .zip(table.column("p"))
        .map(|(id, p)| (id.unwrap().parse().unwrap(), p))
        .collect();
    got.sort();
    got
}

/// The output folder on local disk, for DuckDB (which reads no store here): the folder itself,
/// or for a store a local copy of its keys (kept as long as the second value lives).
async fn local_folder(t: &Target) -> (std::path::PathBuf, Option<tempfile::TempDir>) {
    if t.is_local() {
        (t.dir.path().join("out"), None)
    } else {
        let copy = t.mirror().await;
        (copy.path().to_path_buf(), Some(copy))
    }
}

/// Hive-special characters in partition values: each folder is named as Hive names it, on
/// local disk and as an S3 key alike, and sluice, DuckDB and pyarrow each read back exactly
/// the values written (NULL for NULL, '' and `__HIVE_DEFAULT_PARTITION__`, as Hive does);
/// a rerun leaves exactly the manifest's files.
async fn hive_special_partition_values(t: Target) {
    let cases = partition_cases();
    let values: Vec<String> = cases
        .iter()
        .enumerate()
        .map(|(i, (v, _, _))| {
            let v = v.map_or("CAST(NULL AS VARCHAR)".to_string(), sql_text);
            format!("({i}, {v})")
        })
        .collect();
    let sql = format!("SELECT * FROM (VALUES {}) AS v(id, p)", values.join(", "));
    for _ in 0..2 {
        t.write(&sql, &["--partition-by", "p"]).expect(0);
    }
    let want: Vec<(i64, Option<String>)> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, _, back))| (i as i64, back.map(str::to_string)))
        .collect();

    // The names on the store: one folder per value, NULL's shared.
    let snap = t.snapshot().await;
    let mut folders: Vec<&str> = data_files(snap.keys())
        .iter()
        .map(|k| {
            let (folder, _) = k.rsplit_once('/').unwrap();
            cases.iter().find(|c| c.1 == folder).map_or("?", |c| c.1)
        })
        .collect();
    folders.sort();
    let mut want_folders: Vec<&str> = cases.iter().map(|c| c.1).collect();
    want_folders.sort();
    want_folders.dedup();
    assert_eq!(
        folders,
        want_folders,
        "the folders: {:?}",
        data_files(snap.keys())
    );
    let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
    assert_eq!(
        manifest_files(&manifest),
        data_files(snap.keys()),
        "after a rerun the folder holds exactly the manifest's files"
    );

    // sluice reads the output (through its manifest): each value hex-encoded, to print it.
    let run = sluice_env(
        t.dir.path(),
        &[
            "sql",
            "-e",
            "SELECT id, COALESCE(encode(p, 'hex'), 'NULL') AS h FROM o ORDER BY id",
            "--table",
            &format!("o={}", t.url),
        ],
        &t.env,
    )
    .expect(0);
    let got: Vec<(i64, Option<String>)> = run
        .stdout
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let id = cells.get(1)?.parse().ok()?;
            let h = cells.get(2)?;
            let v = (*h != "NULL").then(|| {
                let bytes: Vec<u8> = (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                    .collect();
                String::from_utf8(bytes).unwrap()
            });
            Some((id, v))
        })
        .collect();
    assert_eq!(got, want, "sluice:\n{}", run.stdout);

    // Plain DataFusion, listing the folder (no manifest): NULL's folder reads as its name.
    let b = t
        .query(
            "parquet",
            &["p"],
            "SELECT CAST(id AS VARCHAR) AS id, p FROM t",
        )
        .await;
    let listed: Vec<(i64, Option<String>)> = rows(&b, &["id", "p"])
        .into_iter()
        .map(|r| {
            let p = (r[1] != "__HIVE_DEFAULT_PARTITION__").then(|| r[1].clone());
            (r[0].parse().unwrap(), p)
        })
        .collect();
    let mut listed = listed;
    listed.sort();
    assert_eq!(listed, want, "plain DataFusion");

    // pyarrow, on the store itself (S3 and Azure included).
    let table = readers::pyarrow_dataset_on(&t.env, &t.url, "parquet", &["p"]);
    assert_eq!(id_values(&table), want, "pyarrow");

    // DuckDB, on the folder (for a store, a local copy of its keys).
    let (dir, _copy) = local_folder(&t).await;
    let table = readers::duckdb(
        &dir,
        "SELECT id, p FROM read_parquet('**/*.parquet', hive_partitioning = true, \
         hive_types = {'p': VARCHAR}) ORDER BY id",
    );
    assert_eq!(id_values(&table), want, "DuckDB");
}

on_every_backend!(
    hive_special_partition_values:
    local_hive_special_partition_values,
    s3_hive_special_partition_values,
    azure_hive_special_partition_values
);

/// A write of no rows publishes one file of no rows and the columns, in the NULL partition's
/// folder (`docs/outputs.md`), on every store: pyarrow (on the store) and DuckDB read the
/// folder as those columns and no rows, sluice as no rows; an append of rows then drops it,
/// and the folder holds exactly the manifest's files.
async fn an_output_of_no_rows_has_its_columns(t: Target) {
    t.write(
        "SELECT * FROM o WHERE quantity < 0",
        &["--partition-by", "dt"],
    )
    .expect(0);
    let snap = t.snapshot().await;
    let files = data_files(snap.keys());
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("dt=__HIVE_DEFAULT_PARTITION__/part-00000-"),
        "{files:?}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
    assert_eq!(manifest_files(&manifest), files);
    assert_eq!(manifest["files"][0]["schema_only"], true, "{manifest}");

    let table = readers::pyarrow_dataset_on(&t.env, &t.url, "parquet", &["dt"]);
    assert!(table.rows.is_empty(), "pyarrow: {table:?}");
    for c in ["order_id", "quantity", "dt"] {
        assert!(table.columns.iter().any(|n| n == c), "pyarrow: {table:?}");
    }
    let (dir, _copy) = local_folder(&t).await;
    let table = readers::duckdb(
        &dir,
        "SELECT * FROM read_parquet('**/*.parquet', hive_partitioning = true, \
         hive_types = {'dt': VARCHAR})",
    );
    assert!(table.rows.is_empty(), "DuckDB: {table:?}");
    assert!(
        table.columns.iter().any(|n| n == "order_id"),
        "DuckDB: {table:?}"
    );
    let run = sluice_env(
        t.dir.path(),
        &[
            "sql",
            "-e",
            "SELECT COUNT(*) AS n FROM o",
            "--table",
            &format!("o={}", t.url),
        ],
        &t.env,
    )
    .expect(0);
    assert!(run.stdout.contains("| 0 |"), "{}", run.stdout);

    t.write(
        "SELECT * FROM o",
        &["--partition-by", "dt", "--mode", "append"],
    )
    .expect(0);
    let snap = t.snapshot().await;
    let files = data_files(snap.keys());
    assert!(
        files
            .iter()
            .all(|f| !f.contains("__HIVE_DEFAULT_PARTITION__")),
        "{files:?}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
    assert_eq!(manifest_files(&manifest), files);
    assert_eq!(t.count("parquet", &["dt"]).await, 200);
}

on_every_backend!(
    an_output_of_no_rows_has_its_columns:
    local_an_output_of_no_rows_has_its_columns,
    s3_an_output_of_no_rows_has_its_columns,
    azure_an_output_of_no_rows_has_its_columns
);

/// A partition column whose name Hive would escape is refused before anything is written:
/// readers match partition column names unescaped.
#[test]
fn partition_columns_hive_escapes_are_refused() {
    let t = Target::local();
    for name in ["a:b", "a=b", "a/b", "a%b", "a#b"] {
        let run = t
            .write(
                &format!("SELECT 1 AS \"{name}\", 2 AS v"),
                &["--partition-by", name],
            )
            .expect(2);
        assert!(
            run.stderr.contains(&format!(
                "partition column {name:?} cannot be a folder name"
            )),
            "{}",
            run.stderr
        );
    }
    assert!(files_under(t.dir.path()).is_empty());
}

async fn incompatible_appends_are_refused(t: Target) {
    t.write("SELECT * FROM o", &["--partition-by", "dt"])
        .expect(0);
    let before = t.snapshot().await;
    let run = t
        .write(
            "SELECT * FROM o",
            &[
                "--partition-by",
                "dt",
                "--mode",
                "append",
                "--format",
                "csv",
            ],
        )
        .expect(2);
    assert!(
        run.stderr.contains("the existing output is parquet"),
        "{}",
        run.stderr
    );
    let run = t
        .write(
            "SELECT * FROM o",
            &[
                "--partition-by",
                "product",
                "--mode",
                "overwrite_partitions",
            ],
        )
        .expect(2);
    assert!(run.stderr.contains("partitioned by [dt]"), "{}", run.stderr);
    assert_eq!(before, t.snapshot().await);
}

on_every_backend!(
    incompatible_appends_are_refused:
    local_incompatible_appends_are_refused,
    s3_incompatible_appends_are_refused,
    azure_incompatible_appends_are_refused
);

#[tokio::test]
async fn s3_root_and_empty_segments_are_refused() {
    let t = Target::s3();
    t.store
        .put(
            &ObjectPath::from("keep/me.csv"),
            object_store::PutPayload::from_static(b"a\n1\n"),
        )
        .await
        .unwrap();
    for url in ["s3://lake/", "s3://lake//x/"] {
        let run = sluice_env(
            t.dir.path(),
            &["sql", "-e", "SELECT 1 AS a", "--out", url],
            &t.env,
        )
        .expect(2);
        assert!(run.stderr.contains("s3://lake/"), "{}", run.stderr);
    }
    let left: Vec<_> = t.store.list(None).try_collect().await.unwrap();
    assert_eq!(left.len(), 1, "nothing written or deleted: {left:?}");
}

/// An http(s) location cannot commit atomically (no conditional write): refused as a sink
/// before anything runs, saying why.
#[test]
fn an_http_sink_is_refused_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let run = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT 1 AS a",
            "--out",
            "http://127.0.0.1:9/out/",
        ],
    )
    .expect(2);
    assert!(
        run.stderr.contains("http://127.0.0.1:9/out/"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("conditional write"), "{}", run.stderr);
}
