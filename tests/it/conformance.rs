//! The storage conformance suite: the same sink and commit checks on local disk and on a real
//! S3-compatible server (moto on 127.0.0.1).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::support::*;

/// Tests that run `suite` on local disk (`local`) and on S3 (`s3`).
macro_rules! on_local_and_s3 {
    ($suite:ident: $local:ident, $s3:ident) => {
        #[tokio::test]
        async fn $local() {
            $suite(Target::local()).await;
        }

        #[tokio::test]
        async fn $s3() {
            $suite(Target::s3()).await;
        }
    };
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

on_local_and_s3!(every_mode: local_every_mode, s3_every_mode);

on_local_and_s3!(
    failed_write_leaves_previous_output:
    local_failed_write_leaves_previous_output,
    s3_failed_write_leaves_previous_output
);

on_local_and_s3!(rerun_is_idempotent: local_rerun_is_idempotent, s3_rerun_is_idempotent);

/// Partition values with characters that need escaping (space, non-ASCII, `:`, `%`, `/`) and a
/// NULL: written, read back through plain DataFusion and through sluice, rerun without leaks.
async fn awkward_partition_values(t: Target) {
    let sql = "SELECT * FROM (VALUES (1, 'a b'), (2, 'München'), (3, '10:30'), (4, '50%'), (5, 'EU/UK'), (6, NULL), (7, 'a b')) AS v(id, region)";
    for _ in 0..2 {
        t.write(sql, &["--partition-by", "region"]).expect(0);
    }
    let snap = t.snapshot().await;
    let manifest: serde_json::Value = serde_json::from_slice(&snap["_MANIFEST"]).unwrap();
    let listed = manifest_files(&manifest);
    assert_eq!(
        listed,
        data_files(snap.keys()),
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

on_local_and_s3!(
    awkward_partition_values:
    local_awkward_partition_values,
    s3_awkward_partition_values
);

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

on_local_and_s3!(
    incompatible_appends_are_refused:
    local_incompatible_appends_are_refused,
    s3_incompatible_appends_are_refused
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
