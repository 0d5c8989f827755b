//! `memory_limit`: sorts and aggregations spill to disk instead of failing, and the run
//! report says how much they spilled and the peak memory reserved; the results are those of
//! plain DataFusion without a limit, row for row, and the sort's output is in order.

use crate::support::*;

#[tokio::test]
async fn sorts_and_aggregations_spill_under_the_memory_limit() {
    let dir = tpch_pipeline_dir(0.01);
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("[settings]\nthreads = 2\nspill_dir = \"{}/spill\"\n[sources.lineitem]\nlocation = \"data/lineitem/\"\n", dir.path().display()),
    )
    .unwrap();
    // (l_orderkey, l_linenumber) is lineitem's key: the order is total.
    let sorted_sql = "SELECT l_orderkey, l_linenumber, l_comment FROM lineitem ORDER BY l_comment, l_orderkey, l_linenumber";
    let grouped_sql = "SELECT l_comment, COUNT(*) AS n FROM lineitem GROUP BY l_comment";
    std::fs::write(dir.path().join("queries/sorted.sql"), sorted_sql).unwrap();
    std::fs::write(dir.path().join("queries/grouped.sql"), grouped_sql).unwrap();

    for (model, limit) in [("grouped", "4MiB"), ("sorted", "4MiB")] {
        let (_, r) = run_with_report(dir.path(), &["--select", model, "--memory-limit", limit], 0);
        let m = &r["models"][0];
        assert_eq!(m["status"], "success");
        assert!(
            m["spilled_bytes"].as_u64().unwrap() > 0,
            "{model} did not spill: {m}"
        );
        let peak = m["units"][0]["peak_memory"].as_u64().unwrap();
        assert!(peak <= 16 << 20, "{model}: peak {peak} over the pool");
    }
    // Results: every row of each model against plain DataFusion over the same files, without
    // a limit.
    let ctx = plain_tpch(&dir.path().join("data")).await;

    // grouped: every (comment, count) pair; the groups come in no particular order.
    let cols = ["l_comment", "n"];
    let want = rows(&plain_query(&ctx, grouped_sql).await, &cols);
    let got = output_rows(dir.path(), "grouped", &cols).await;
    assert!(want.len() > 1000, "{} groups", want.len());
    assert_same_rows(&got, &want, "grouped");

    // sorted: every row, in the query's order: the data files read in the order they were
    // written (their names count up), each file front to back.
    let cols = ["l_orderkey", "l_linenumber", "l_comment"];
    let want = rows_in_order(&plain_query(&ctx, sorted_sql).await, &cols);
    let sorted = dir.path().join("out/sorted");
    let mut files = data_files(files_under(&sorted));
    files.sort();
    assert_eq!(files, manifest_files_sorted(&sorted));
    let got: Vec<Vec<String>> = files
        .iter()
        .flat_map(|f| rows_in_order(&parquet_batches(&sorted.join(f)), &cols))
        .collect();
    assert_same_rows(&got, &want, "sorted");
    // The spill folder is left empty.
    assert!(files_under(&dir.path().join("spill")).is_empty());
}

/// With neither `threads` nor `memory_limit` set, a run sizes itself to its cgroup (here a
/// copy of a pod's cgroup v2 files: 1.5 CPUs, 5 MiB): one thread and a pool of 75 % of the
/// memory limit, which `sluice plan` and the report show, and under which the aggregation
/// spills; a value set wins.
#[tokio::test]
async fn the_cgroup_limits_size_a_run_when_nothing_is_set() {
    let dir = tpch_pipeline_dir(0.01);
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!(
            "[settings]\nspill_dir = \"{}/spill\"\n[sources.lineitem]\nlocation = \"data/lineitem/\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/grouped.sql"),
        "SELECT l_comment, COUNT(*) AS n FROM lineitem GROUP BY l_comment",
    )
    .unwrap();
    let cgroup = tempfile::tempdir().unwrap();
    let pod = cgroup.path().join("sys-fs-cgroup/kubepods/pod7");
    std::fs::create_dir_all(&pod).unwrap();
    std::fs::write(
        cgroup.path().join("proc-self-cgroup"),
        "0::/kubepods/pod7\n",
    )
    .unwrap();
    std::fs::write(pod.join("cpu.max"), "150000 100000\n").unwrap();
    std::fs::write(pod.join("memory.max"), format!("{}\n", 5 << 20)).unwrap();
    let root = cgroup.path().to_str().unwrap();

    let plan = sluice(dir.path(), &["plan", ".", "--cgroup-root", root]).expect(0);
    assert!(
        plan.stdout.contains(
            "resources: 1 threads (the cgroup v2 CPU quota, 1.50 CPUs); memory pool 3.8 MiB \
             (75 % of the cgroup v2 memory limit, 5 MiB)"
        ),
        "{}",
        plan.stdout
    );
    let (_, r) = run_with_report(dir.path(), &["--cgroup-root", root], 0);
    assert_eq!(r["resources"]["threads"], 1, "{}", r["resources"]);
    assert_eq!(r["resources"]["memory_limit"], (5u64 << 20) * 3 / 4);
    let m = &r["models"][0];
    assert!(m["spilled_bytes"].as_u64().unwrap() > 0, "no spill: {m}");
    // Set values win over the cgroup's.
    let plan = sluice(
        dir.path(),
        &[
            "plan",
            ".",
            "--cgroup-root",
            root,
            "--threads",
            "3",
            "--memory-limit",
            "1GiB",
        ],
    )
    .expect(0);
    assert!(
        plan.stdout
            .contains("resources: 3 threads (set); memory pool 1 GiB (set)"),
        "{}",
        plan.stdout
    );
}

/// Sorts of text whose rows nearly fit the pool, and `ORDER BY … LIMIT k OFFSET n` keeping
/// more rows than the pool holds, finish under the limit with plain DataFusion's rows, in
/// order. Before, with 600 K lineitem rows under 16 and 32 MiB: the full sort failed in its
/// final merge, which counted the rows again (and string views as every page they point
/// into), and the deep limit failed in DataFusion's top-k heap, which cannot spill; sluice
/// now sorts that in full, which spills. A small limit keeps the heap: nothing spills.
#[tokio::test]
async fn sorts_whose_rows_nearly_fit_and_deep_limits_finish_under_the_limit() {
    let dir = tpch_pipeline_dir(0.1);
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("[settings]\nthreads = 2\nspill_dir = \"{}/spill\"\n[sources.lineitem]\nlocation = \"data/lineitem/\"\n", dir.path().display()),
    )
    .unwrap();
    let order = "ORDER BY l_comment, l_orderkey, l_linenumber";
    let cols = ["l_orderkey", "l_linenumber", "l_comment"];
    let ctx = plain_tpch(&dir.path().join("data")).await;
    for (model, limit, memory, spills) in [
        ("sorted", "", "16MiB", Some(true)),
        ("sorted_32", "", "32MiB", None),
        ("deep", "LIMIT 25 OFFSET 400000", "16MiB", Some(true)),
        ("top", "LIMIT 25", "16MiB", Some(false)),
    ] {
        let sql =
            format!("SELECT l_orderkey, l_linenumber, l_comment FROM lineitem {order} {limit}");
        std::fs::write(dir.path().join(format!("queries/{model}.sql")), &sql).unwrap();
        let (_, r) = run_with_report(
            dir.path(),
            &["--select", model, "--memory-limit", memory],
            0,
        );
        let m = &r["models"][0];
        assert_eq!(m["status"], "success", "{model}: {m}");
        if let Some(spills) = spills {
            assert_eq!(
                m["spilled_bytes"].as_u64().unwrap() > 0,
                spills,
                "{model}: {m}"
            );
        }
        let want = rows_in_order(&plain_query(&ctx, &sql).await, &cols);
        assert!(
            want.len() == 25 || want.len() > 500_000,
            "{model}: {} rows",
            want.len()
        );
        // The data files in the order they were written (their names count up).
        let out = dir.path().join(format!("out/{model}"));
        let got: Vec<Vec<String>> = manifest_files_sorted(&out)
            .iter()
            .flat_map(|f| rows_in_order(&parquet_batches(&out.join(f)), &cols))
            .collect();
        assert_same_rows(&got, &want, model);
    }
}
