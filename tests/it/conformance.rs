//! The storage conformance suite: the same sink and commit checks on local disk and on a real
//! S3-compatible server (moto on 127.0.0.1).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::sql::{orders_arg, raw_counts};
use crate::support::s3::S3Server;
use crate::support::*;

/// Where a suite writes: a local folder or a bucket prefix, with the means to inspect it.
pub struct Target {
    /// The output folder as sluice takes it (path or URL, trailing `/`).
    pub url: String,
    /// Environment for the sluice process.
    pub env: Vec<(String, String)>,
    pub store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    store_url: Option<url::Url>,
    /// Working folder for the sluice process.
    pub dir: tempfile::TempDir,
    _server: Option<S3Server>,
}

impl Target {
    pub fn local() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let url = format!("{}/", out.display());
        let prefix = ObjectPath::from_filesystem_path(dir.path())
            .unwrap()
            .clone()
            .join("out");
        Target {
            url,
            env: Vec::new(),
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
            store_url: None,
            dir,
            _server: None,
        }
    }

    pub fn s3() -> Target {
        let server = S3Server::start();
        server.create_bucket("lake");
        Target {
            url: "s3://lake/warehouse/out/".into(),
            env: server.env(),
            store: server.store("lake"),
            prefix: ObjectPath::from("warehouse/out"),
            store_url: Some(url::Url::parse("s3://lake").unwrap()),
            dir: tempfile::tempdir().unwrap(),
            _server: Some(server),
        }
    }

    /// A bucket prefix on a running server (the caller keeps the server alive).
    pub fn for_bucket_prefix(server: &S3Server, bucket: &str, prefix: &str) -> Target {
        Target {
            url: format!("s3://{bucket}/{prefix}/"),
            env: server.env(),
            store: server.store(bucket),
            prefix: ObjectPath::from(prefix),
            store_url: Some(url::Url::parse(&format!("s3://{bucket}")).unwrap()),
            dir: tempfile::tempdir().unwrap(),
            _server: None,
        }
    }

    /// Every object under the output, with its bytes.
    pub async fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for m in metas {
            let rel = m.location.as_ref()[self.prefix.as_ref().len() + 1..].to_string();
            let bytes = self
                .store
                .get(&m.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.insert(rel, bytes.to_vec());
        }
        out
    }

    /// Reads the output with plain DataFusion and runs `sql` over it as table `t`.
    pub async fn query(&self, format: &str, partitions: &[&str], sql: &str) -> Vec<RecordBatch> {
        let store = self
            .store_url
            .as_ref()
            .map(|u| (u, Arc::clone(&self.store)));
        query_output_in(store, &self.url, format, partitions, sql).await
    }

    /// Runs `sluice sql` writing to the target.
    pub fn write(&self, sql: &str, extra: &[&str]) -> Run {
        let table = orders_arg();
        let mut args = vec!["sql", "-e", sql, "--table", &table, "--out", &self.url];
        args.extend_from_slice(extra);
        sluice_env(self.dir.path(), &args, &self.env)
    }
}

fn data_files(snap: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    snap.keys()
        .filter(|k| k.starts_with("dt=") || k.starts_with("part-"))
        .cloned()
        .collect()
}

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
    let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
    let listed: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        data_files(&snap),
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
    let b = t
        .query(
            "parquet",
            &["dt"],
            "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t",
        )
        .await;
    assert_eq!(rows(&b, &["n"]), vec![vec!["200".to_string()]]);
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
        data_files(&snap).len(),
        4,
        "one file per day, old ones removed: {:?}",
        snap.keys()
    );
}

#[tokio::test]
async fn local_every_mode() {
    every_mode(Target::local()).await;
}

#[tokio::test]
async fn s3_every_mode() {
    every_mode(Target::s3()).await;
}

#[tokio::test]
async fn local_failed_write_leaves_previous_output() {
    failed_write_leaves_previous_output(Target::local()).await;
}

#[tokio::test]
async fn s3_failed_write_leaves_previous_output() {
    failed_write_leaves_previous_output(Target::s3()).await;
}

#[tokio::test]
async fn local_rerun_is_idempotent() {
    rerun_is_idempotent(Target::local()).await;
}

#[tokio::test]
async fn s3_rerun_is_idempotent() {
    rerun_is_idempotent(Target::s3()).await;
}

/// Partition values with characters that need escaping (space, non-ASCII, `:`, `%`, `/`) and a
/// NULL: written, read back through plain DataFusion and through sluice, rerun without leaks.
async fn awkward_partition_values(t: Target) {
    let sql = "SELECT * FROM (VALUES (1, 'a b'), (2, 'München'), (3, '10:30'), (4, '50%'), (5, 'EU/UK'), (6, NULL), (7, 'a b')) AS v(id, region)";
    for _ in 0..2 {
        t.write(sql, &["--partition-by", "region"]).expect(0);
    }
    let snap = t.snapshot().await;
    let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
    let listed: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        data_files_any(&snap),
        "after a rerun the folder holds exactly the manifest's files"
    );
    assert_eq!(listed.len(), 6, "{listed:?}");
    // Plain DataFusion decodes each value once: all exact but '/', which reads as %2F.
    let b = t
        .query(
            "parquet",
            &["region"],
            "SELECT CAST(id AS VARCHAR) AS id, region FROM t",
        )
        .await;
    let want: Vec<Vec<String>> = [
        ("1", "a b"),
        ("2", "München"),
        ("3", "10:30"),
        ("4", "50%"),
        ("5", "EU%2FUK"),
        ("6", "__HIVE_DEFAULT_PARTITION__"),
        ("7", "a b"),
    ]
    .iter()
    .map(|(a, b)| vec![a.to_string(), b.to_string()])
    .collect();
    assert_eq!(rows(&b, &["id", "region"]), want);
    // sluice reads the output back with NULL as NULL.
    let run = sluice_env(
        t.dir.path(),
        &[
            "sql",
            "-e",
            "SELECT id, region FROM o WHERE region IS NULL OR region = 'München' ORDER BY id",
            "--table",
            &format!("o={}", t.url),
        ],
        &t.env,
    )
    .expect(0);
    assert!(run.stdout.contains("| 2  | München |"), "{}", run.stdout);
    assert!(run.stdout.contains("2 row(s)"), "{}", run.stdout);
}

fn data_files_any(snap: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    snap.keys()
        .filter(|k| !k.starts_with('_'))
        .cloned()
        .collect()
}

#[tokio::test]
async fn local_awkward_partition_values() {
    awkward_partition_values(Target::local()).await;
}

#[tokio::test]
async fn s3_awkward_partition_values() {
    awkward_partition_values(Target::s3()).await;
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

#[tokio::test]
async fn local_incompatible_appends_are_refused() {
    incompatible_appends_are_refused(Target::local()).await;
}

#[tokio::test]
async fn s3_incompatible_appends_are_refused() {
    incompatible_appends_are_refused(Target::s3()).await;
}

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

#[tokio::test]
async fn crashed_first_publish_is_not_adopted_by_append() {
    let t = Target::local();
    // A file named like sluice's, with no manifest: what a first publish killed before its
    // commit leaves behind. A foreign file beside it is kept.
    let dir = t.dir.path().join("out/dt=2024-01-01");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("part-00000-20240101T000000Z-abcdef.parquet"),
        b"partial",
    )
    .unwrap();
    t.write(
        "SELECT * FROM o WHERE dt = '2024-01-02'",
        &["--partition-by", "dt", "--mode", "append"],
    )
    .expect(0);
    let snap = t.snapshot().await;
    assert!(
        !snap.keys().any(|k| k.contains("abcdef")),
        "the orphan was deleted: {:?}",
        snap.keys()
    );
    let b = t
        .query(
            "parquet",
            &["dt"],
            "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t",
        )
        .await;
    let (_, by_day) = raw_counts();
    assert_eq!(
        rows(&b, &["n"]),
        vec![vec![by_day["2024-01-02"].to_string()]]
    );
}
