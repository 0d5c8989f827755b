//! `memory_limit`: sorts and aggregations spill to disk instead of failing, and the run
//! report says how much they spilled and the peak memory reserved.

use crate::support::*;

#[tokio::test]
async fn sorts_and_aggregations_spill_under_the_memory_limit() {
    let dir = tpch_pipeline_dir();
    let data = format!("{}/data", dir.path().display());
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("[settings]\nthreads = 2\nspill_dir = \"{}/spill\"\n[sources.lineitem]\nlocation = \"data/lineitem/\"\n", dir.path().display()),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/sorted.sql"),
        "SELECT l_orderkey, l_linenumber, l_comment FROM lineitem ORDER BY l_comment, l_orderkey, l_linenumber",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/grouped.sql"),
        "SELECT l_comment, COUNT(*) AS n FROM lineitem GROUP BY l_comment",
    )
    .unwrap();

    let report = dir.path().join("r.json");
    // The aggregation alone spills under 4 MiB; the sort needs room for its merge.
    for (model, limit) in [("grouped", "4MiB"), ("sorted", "16MiB")] {
        sluice(
            dir.path(),
            &[
                "run",
                ".",
                "--select",
                model,
                "--memory-limit",
                limit,
                "--report",
                report.to_str().unwrap(),
            ],
        )
        .expect(0);
        let r = read_json(&report);
        let m = &r["models"][0];
        assert_eq!(m["status"], "success");
        assert!(
            m["spilled_bytes"].as_u64().unwrap() > 0,
            "{model} did not spill: {m}"
        );
        let peak = m["units"][0]["peak_memory"].as_u64().unwrap();
        assert!(peak <= 16 << 20, "{model}: peak {peak} over the pool");
    }
    // Results: against plain DataFusion over the same files, without a limit.
    let raw = format!("{data}/lineitem/");
    let want = query_output(&raw, "parquet", &[], "SELECT CAST(COUNT(DISTINCT l_comment) AS VARCHAR) AS g, CAST(COUNT(*) AS VARCHAR) AS n FROM t").await;
    let grouped = query_output(
        &format!("{}/out/grouped/", dir.path().display()),
        "parquet",
        &[],
        "SELECT CAST(COUNT(*) AS VARCHAR) AS g, CAST(SUM(n) AS VARCHAR) AS n FROM t",
    )
    .await;
    assert_eq!(rows(&grouped, &["g", "n"]), rows(&want, &["g", "n"]));
    let sorted = query_output(
        &format!("{}/out/sorted/", dir.path().display()),
        "parquet",
        &[],
        "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t",
    )
    .await;
    assert_eq!(rows(&sorted, &["n"])[0][0], rows(&want, &["g", "n"])[0][1]);
    // The spill folder is left empty.
    assert!(files_under(&dir.path().join("spill")).is_empty());
}
