//! `sluice gen tpch` and `sluice bench tpch` at a small scale factor, and the 22 TPC-H
//! queries run as a pipeline, checked against plain DataFusion over the same files.

use crate::support::*;

#[tokio::test]
async fn generates_tpch_and_benches_all_22_queries_with_the_row_counts_of_plain_datafusion() {
    let dir = tempfile::tempdir().unwrap();
    let tpch = gen_tpch(dir.path(), "tpch", 0.01, "parquet");
    let data = format!("{}/", tpch.display());
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
        let m = read_json(&tpch.join(table).join("_MANIFEST"));
        assert_eq!(m["rows"], n, "{table}");
        let got = count_output(&format!("{data}{table}/"), "parquet", &[]).await;
        assert_eq!(got, n, "{table}");
    }
    // lineitem has 1-7 lines per order: as many as the generator itself makes, in process.
    let li = read_json(&tpch.join("lineitem/_MANIFEST"))["rows"]
        .as_u64()
        .unwrap();
    let generated = tpchgen::generators::LineItemGenerator::new(0.01, 1, 1)
        .iter()
        .count() as u64;
    assert!((15_000..=105_000).contains(&generated), "{generated}");
    assert_eq!(li, generated);

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
    // Every query's row count: that of the same query text run by plain DataFusion over the
    // same files. (The bench reports no values below SF 1: the values are checked by
    // `the_22_tpch_queries_as_models_give_the_answers_of_plain_datafusion`.)
    let ctx = plain_tpch(&tpch).await;
    for (q, got) in (1u8..).zip(queries) {
        assert_eq!(got["query"], q);
        let want: usize = plain_query(&ctx, &tpch_query(q))
            .await
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(got["rows"], want, "q{q}: {got}");
    }

    // CSV data too, and a query subset.
    let csv = format!(
        "{}/",
        gen_tpch(dir.path(), "tpch_csv", 0.01, "csv").display()
    );
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
    let data = gen_tpch(dir.path(), "data", 0.01, "parquet");
    sluice(dir.path(), &["run", "."]).expect(0);
    // monthly_revenue counts every shipped line once: compare with plain DataFusion over the
    // generated lineitem files.
    let want = query_output(
        &format!("{}/lineitem/", data.display()),
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

#[tokio::test]
async fn the_22_tpch_queries_as_models_give_the_answers_of_plain_datafusion() {
    // A pipeline over the eight tables with one model per query (`q1` ... `q22`, the bench's
    // query texts), run by sluice; each output compared value for value with the same query
    // run by plain DataFusion over the same files.
    let dir = tpch_pipeline_dir(0.01);
    tpch_models_pipeline(dir.path(), "data/", "out/", "threads = 2");
    sluice(dir.path(), &["run", "."]).expect(0);
    let out = format!("{}/out/", dir.path().display());
    check_tpch_models(&dir.path().join("data"), &out, None).await;
}
