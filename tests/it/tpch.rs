//! `sluice gen tpch` and `sluice bench tpch` at a small scale factor.

use crate::support::*;

#[tokio::test]
async fn generates_tpch_and_runs_all_22_queries_with_checked_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("{}/tpch/", dir.path().display());
    sluice(
        dir.path(),
        &[
            "gen", "tpch", "--scale", "0.01", "--format", "parquet", "--out", &data,
        ],
    )
    .expect(0);
    // Row counts fixed by the TPC-H specification at SF 0.01.
    let expected = [
        ("region", 5),
        ("nation", 25),
        ("supplier", 100),
        ("customer", 1_500),
        ("part", 2_000),
        ("partsupp", 8_000),
        ("orders", 15_000),
    ];
    for (table, n) in expected {
        let m = read_json(&dir.path().join("tpch").join(table).join("_MANIFEST"));
        assert_eq!(m["rows"], n, "{table}");
        let b = query_output(
            &format!("{data}{table}/"),
            "parquet",
            &[],
            "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t",
        )
        .await;
        assert_eq!(rows(&b, &["n"]), vec![vec![n.to_string()]], "{table}");
    }
    // lineitem has 1-7 lines per order: check it against orders independently.
    let li = read_json(&dir.path().join("tpch/lineitem/_MANIFEST"))["rows"]
        .as_u64()
        .unwrap();
    assert!((15_000..=105_000).contains(&li), "{li}");

    let json = dir.path().join("bench.json");
    let run = sluice(
        dir.path(),
        &[
            "bench",
            "tpch",
            "--data",
            &data,
            "--json",
            json.to_str().unwrap(),
        ],
    )
    .expect(0);
    assert!(run.stdout.contains("q22"), "{}", run.stdout);
    let report = read_json(&json);
    let queries = report["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 22);
    assert_eq!(report["scale"], 0.01);
    for q in queries {
        assert_eq!(q["iterations_ms"].as_array().unwrap().len(), 1);
    }
    // Q1 groups by (returnflag, linestatus): 4 groups at any scale.
    assert_eq!(queries[0]["rows"], 4);
    assert_eq!(queries[0]["check"], "row count");

    // CSV data too, and a query subset.
    let csv = format!("{}/tpch_csv/", dir.path().display());
    sluice(
        dir.path(),
        &[
            "gen", "tpch", "--scale", "0.01", "--format", "csv", "--out", &csv,
        ],
    )
    .expect(0);
    let run = sluice(
        dir.path(),
        &[
            "bench",
            "tpch",
            "--data",
            &csv,
            "--queries",
            "1,6",
            "--iterations",
            "2",
        ],
    )
    .expect(0);
    assert!(
        run.stdout.contains("q1") && run.stdout.contains("q6") && !run.stdout.contains("q3 "),
        "{}",
        run.stdout
    );
    let run = sluice(
        dir.path(),
        &["bench", "tpch", "--data", &csv, "--queries", "0-40"],
    )
    .expect(2);
    assert!(run.stderr.contains("--queries"), "{}", run.stderr);
}

#[tokio::test]
async fn the_bundled_example_pipeline_runs() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tpch"),
        dir.path(),
    );
    let data = format!("{}/data", dir.path().display());
    sluice(
        dir.path(),
        &["gen", "tpch", "--scale", "0.01", "--out", &data],
    )
    .expect(0);
    sluice(dir.path(), &["run", "."]).expect(0);
    // monthly_revenue counts every shipped line once: compare with plain DataFusion over the
    // generated lineitem files.
    let want = query_output(
        &format!("{data}/lineitem/"),
        "parquet",
        &[],
        "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t WHERE l_shipdate <= DATE '1998-09-02'",
    )
    .await;
    let got = query_output(
        &format!("{}/out/monthly_revenue/", dir.path().display()),
        "parquet",
        &["ship_year"],
        "SELECT CAST(SUM(lines) AS VARCHAR) AS n FROM t",
    )
    .await;
    assert_eq!(rows(&got, &["n"]), rows(&want, &["n"]));
    let top = read_json(&dir.path().join("out/top_customers/_MANIFEST"));
    assert_eq!(top["rows"], 100);
}
