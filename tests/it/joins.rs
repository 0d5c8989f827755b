//! Joins under a memory limit: where DataFusion's in-memory hash join fails, sluice's grace
//! hash join partitions to disk and finishes with the same rows; the plan and the run report
//! say which strategy each join got; the spill folder is left empty.

use std::path::Path;

use crate::support::*;

/// TPC-H SF 0.1 in `data/`, and a pipeline with two join models.
fn join_pipeline() -> tempfile::TempDir {
    let dir = tpch_pipeline_dir(0.1);
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!(
            "[settings]\nthreads = 2\nspill_dir = \"{}/spill\"\n\
             [sources.orders]\nlocation = \"data/orders/\"\n\
             [sources.lineitem]\nlocation = \"data/lineitem/\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    // Inner join, grouped: the query at a small scale.
    std::fs::write(
        dir.path().join("queries/by_priority.sql"),
        "SELECT o_orderpriority, COUNT(*) AS n, SUM(l_extendedprice) AS revenue \
         FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY o_orderpriority",
    )
    .unwrap();
    // Left join with a join filter, carrying a wide column from the build side.
    std::fs::write(
        dir.path().join("queries/big_lines.sql"),
        "SELECT o_orderkey, o_comment, l_linenumber \
         FROM orders LEFT JOIN lineitem ON o_orderkey = l_orderkey AND l_quantity > 45",
    )
    .unwrap();
    dir
}

/// Orders per priority over the whole join, as plain DataFusion computes it over the raw
/// files of `dir/data/`.
async fn plain_orders_per_priority(dir: &Path) -> Vec<Vec<String>> {
    let ctx = plain_tpch(&dir.join("data")).await;
    let want = plain_query(
        &ctx,
        "SELECT o_orderpriority, CAST(COUNT(*) AS VARCHAR) AS n FROM orders \
         JOIN lineitem ON o_orderkey = l_orderkey GROUP BY 1 ORDER BY 1",
    )
    .await;
    rows(&want, &["o_orderpriority", "n"])
}

/// Orders per priority in model `by_priority`'s output: `n` summed over its rows of each
/// priority (a run in units writes one row per unit and priority).
async fn output_orders_per_priority(dir: &Path) -> Vec<Vec<String>> {
    let got = query_output(
        &format!("{}/out/by_priority/", dir.display()),
        "parquet",
        &[],
        "SELECT o_orderpriority, CAST(SUM(n) AS VARCHAR) AS n FROM t GROUP BY 1 ORDER BY 1",
    )
    .await;
    rows(&got, &["o_orderpriority", "n"])
}

/// Runs model `by_priority` alone under an 8 MiB memory limit; its run report.
fn run_by_priority_in_8mib(dir: &Path) -> serde_json::Value {
    let (_, report) = run_with_report(
        dir,
        &["--select", "by_priority", "--memory-limit", "8MiB"],
        0,
    );
    report
}

#[tokio::test]
async fn joins_over_the_memory_limit_partition_to_disk_and_match_an_unlimited_run() {
    let dir = join_pipeline();
    // DataFusion's own hash join cannot hold the build side in 4 MiB. (At 8 MiB it depends
    // on timing whether it fits.)
    let (failed, _) = run_with_report(
        dir.path(),
        &["--memory-limit", "4MiB", "--join-strategy", "in_memory"],
        1,
    );
    assert!(
        failed.stderr.contains("HashJoinInput") || failed.stderr.contains("Resources exhausted"),
        "{}",
        failed.stderr
    );

    // The plan says which strategy each join gets and why.
    let plan = sluice(dir.path(), &["plan", ".", "--memory-limit", "8MiB"]).expect(0);
    assert!(plan.stdout.contains("join:"), "{}", plan.stdout);
    assert!(plan.stdout.contains("grace("), "{}", plan.stdout);
    assert!(plan.stdout.contains("memory limit"), "{}", plan.stdout);

    // EXPLAIN in `sluice sql` shows the operator, its strategy and why.
    let explain = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "EXPLAIN SELECT COUNT(*) FROM orders JOIN lineitem ON o_orderkey = l_orderkey",
            "--table",
            "orders=data/orders/",
            "--table",
            "lineitem=data/lineitem/",
            "--memory-limit",
            "8MiB",
        ],
    )
    .expect(0);
    assert!(
        explain
            .stdout
            .contains("GraceHashJoinExec: join_type=Inner")
            && explain.stdout.contains("strategy=grace(")
            && explain.stdout.contains("reason="),
        "{}",
        explain.stdout
    );
    // And in DataFusion's other forms, here the tree.
    let tree = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "EXPLAIN FORMAT TREE SELECT COUNT(*) FROM orders JOIN lineitem ON o_orderkey = l_orderkey",
            "--table",
            "orders=data/orders/",
            "--table",
            "lineitem=data/lineitem/",
            "--memory-limit",
            "8MiB",
        ],
    )
    .expect(0);
    assert!(
        tree.stdout.contains("GraceHashJoinExec") && tree.stdout.contains("strategy: grace("),
        "{}",
        tree.stdout
    );

    // (--restart: the failed run above would otherwise be resumed, keeping what it did.)
    let (_, r) = run_with_report(dir.path(), &["--memory-limit", "8MiB", "--restart"], 0);
    for m in r["models"].as_array().unwrap() {
        assert_eq!(m["status"], "success", "{m}");
        let joins = m["joins"].as_array().expect("joins in the report");
        assert_eq!(joins.len(), 1, "{m}");
        let j = &joins[0];
        assert_eq!(j["ran_partitioned"], 1, "{j}");
        assert!(j["buckets"].as_u64().unwrap() >= 8, "{j}");
        assert!(j["spilled_bytes"].as_u64().unwrap() > 0, "{j}");
        assert!(j["peak_memory"].as_u64().unwrap() <= 8 << 20, "{j}");
        assert!(m["spilled_bytes"].as_u64().unwrap() >= j["spilled_bytes"].as_u64().unwrap());
    }
    assert!(
        files_under(&dir.path().join("spill")).is_empty(),
        "spill files left behind"
    );

    // Results against plain DataFusion on the raw files, without a limit.
    let ctx = plain_tpch(&dir.path().join("data")).await;
    let out = |model: &str| format!("{}/out/{model}/", dir.path().display());
    let by_priority = query_output(
        &out("by_priority"),
        "parquet",
        &[],
        "SELECT o_orderpriority, CAST(n AS VARCHAR) AS n, CAST(revenue AS VARCHAR) AS revenue FROM t ORDER BY 1",
    )
    .await;
    let want = plain_query(
        &ctx,
        "SELECT o_orderpriority, CAST(COUNT(*) AS VARCHAR) AS n, CAST(SUM(l_extendedprice) AS VARCHAR) AS revenue \
         FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY 1 ORDER BY 1",
    )
    .await;
    let cols = ["o_orderpriority", "n", "revenue"];
    assert_eq!(rows(&by_priority, &cols), rows(&want, &cols));
    assert_eq!(rows(&want, &cols).len(), 5);

    // The left join: every order at least once, counts and a checksum of the keys.
    let summary = "CAST(COUNT(*) AS VARCHAR) AS n, CAST(COUNT(DISTINCT o_orderkey) AS VARCHAR) AS orders, \
         CAST(SUM(o_orderkey * 7 + COALESCE(l_linenumber, 0)) AS VARCHAR) AS sum, \
         CAST(SUM(LENGTH(o_comment)) AS VARCHAR) AS chars";
    let got = query_output(
        &out("big_lines"),
        "parquet",
        &[],
        &format!("SELECT {summary} FROM t"),
    )
    .await;
    let want = plain_query(
        &ctx,
        &format!(
            "SELECT {summary} FROM (SELECT o_orderkey, o_comment, l_linenumber FROM orders \
             LEFT JOIN lineitem ON o_orderkey = l_orderkey AND l_quantity > 45)"
        ),
    )
    .await;
    let cols = ["n", "orders", "sum", "chars"];
    assert_eq!(rows(&got, &cols), rows(&want, &cols));
    assert_eq!(rows(&want, &cols)[0][1], "150000");
}

#[test]
fn join_strategy_values_are_checked() {
    let dir = pipeline_copy("shop");
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace("threads = 2", "threads = 2\njoin_strategy = \"fast\"")
    });
    let run = sluice(dir.path(), &["run", "."]).expect(2);
    assert!(
        run.stderr.contains("sluice.toml:6: settings.join_strategy"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("unknown join strategy \"fast\""),
        "{}",
        run.stderr
    );

    let dir = pipeline_copy("shop");
    let run = sluice(dir.path(), &["run", ".", "--join-strategy", "hash"]).expect(2);
    assert!(run.stderr.contains("--join-strategy"), "{}", run.stderr);

    // Key units need a bucket count and keys.
    for (batches, expected) in [
        (
            "by = \"key\"\nkeys = { orders = \"customer_id\" }",
            "batches.buckets",
        ),
        ("by = \"key\"\nbuckets = 8", "batches.keys"),
        (
            "by = \"key\"\nbuckets = 1\nkeys = { orders = \"customer_id\" }",
            "between 2 and 4096",
        ),
        ("size = \"day\"\nbuckets = 8", "apply to by = \"key\""),
    ] {
        std::fs::write(
            dir.path().join("sluice.toml"),
            format!("{toml}\n[models.daily_revenue.batches]\n{batches}\n"),
        )
        .unwrap();
        let run = sluice(dir.path(), &["run", "."]).expect(2);
        assert!(run.stderr.contains(expected), "{batches}: {}", run.stderr);
    }
}

#[tokio::test]
async fn batched_models_join_per_unit_under_the_limit() {
    let dir = join_pipeline();
    // lineitem batched by ship year (7 units); orders read whole in each unit.
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace(
            "[sources.lineitem]\nlocation = \"data/lineitem/\"\n",
            "[sources.lineitem]\nlocation = \"data/lineitem/\"\nevent_time = \"l_shipdate\"\n\
             [models.by_priority.batches]\nsize = \"year\"\n",
        )
    });
    // Grouped by ship year too: a group of one unit each (grouped by priority alone, each
    // priority would come out of every unit, and the publish refuses a key split over units).
    std::fs::write(
        dir.path().join("queries/by_priority.sql"),
        "SELECT date_trunc('year', l_shipdate) AS ship_year, o_orderpriority, COUNT(*) AS n, \
         SUM(l_extendedprice) AS revenue \
         FROM orders JOIN lineitem ON o_orderkey = l_orderkey GROUP BY 1, 2",
    )
    .unwrap();
    let r = run_by_priority_in_8mib(dir.path());
    let m = &r["models"][0];
    assert_eq!(m["units_done"], 7, "{m}");
    let j = &m["joins"][0];
    // Each unit's query had the grace join, and each partitioned.
    assert_eq!(j["ran_partitioned"], 7, "{j}");
    assert!(j["spilled_bytes"].as_u64().unwrap() > 0, "{j}");
    assert!(files_under(&dir.path().join("spill")).is_empty());
    // Per year and priority, summed over the units: the totals of the unbatched join.
    assert_eq!(
        output_orders_per_priority(dir.path()).await,
        plain_orders_per_priority(dir.path()).await
    );
}

#[tokio::test]
async fn a_join_runs_as_key_bucketed_units() {
    let dir = join_pipeline();
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        format!(
            "{toml}[models.by_priority.batches]\nby = \"key\"\nbuckets = 4\n\
             keys = {{ orders = \"o_orderkey\", lineitem = \"l_orderkey\" }}\n"
        )
    });
    let plan = sluice(dir.path(), &["plan", ".", "--select", "by_priority"]).expect(0);
    assert!(
        plan.stdout
            .contains("units:  4 (by key: a hash of lineitem.l_orderkey, orders.o_orderkey)"),
        "{}",
        plan.stdout
    );
    let r = run_by_priority_in_8mib(dir.path());
    let m = &r["models"][0];
    assert_eq!(m["units_done"], 4, "{m}");
    // Each unit scans both inputs whole (the bucket filter is applied after the scan: the
    // price of key units over unbucketed files) and joins its share of the keys.
    let ctx = plain_tpch(&dir.path().join("data")).await;
    let count = |sql: &'static str| {
        let ctx = ctx.clone();
        async move {
            let b = plain_query(&ctx, sql).await;
            rows(&b, &["n"])[0][0].parse::<u64>().unwrap()
        }
    };
    let total = count("SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM orders").await
        + count("SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM lineitem").await;
    for u in m["units"].as_array().unwrap() {
        assert_eq!(u["rows_in"].as_u64().unwrap(), total, "{u}");
        assert_eq!(u["rows_out"].as_u64().unwrap(), 5, "{u}");
    }
    let per_unit = count_output(
        &format!("{}/out/by_priority/", dir.path().display()),
        "parquet",
        &[],
    )
    .await;
    assert_eq!(per_unit, 20, "4 units x 5 priorities");
    // Joined per key bucket and summed: the totals of the whole join.
    assert_eq!(
        output_orders_per_priority(dir.path()).await,
        plain_orders_per_priority(dir.path()).await
    );

    // A key of a source the model does not read is refused, naming it.
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace("orders = \"o_orderkey\"", "customer = \"c_custkey\"")
    });
    let run = sluice(dir.path(), &["run", ".", "--select", "by_priority"]).expect(1);
    assert!(run.stderr.contains("source 'customer'"), "{}", run.stderr);
}

#[test]
fn a_hot_key_with_30_percent_of_the_build_side_joins_under_the_limit() {
    let dir = join_pipeline();
    let d = dir.path();
    // orders with 30 % of its rows moved onto one key (7), as a table of its own.
    sluice(
        d,
        &[
            "sql",
            "-e",
            "SELECT CASE WHEN o_orderkey % 10 < 3 THEN 7 ELSE o_orderkey END AS o_orderkey, \
             o_orderpriority, o_comment FROM orders",
            "--table",
            "orders=data/orders/",
            "--out",
            "skewed/",
        ],
    )
    .expect(0);
    let query = "SELECT o_orderpriority, CAST(COUNT(*) AS VARCHAR) AS n, \
                 CAST(SUM(LENGTH(o_comment) + l_linenumber) AS VARCHAR) AS s \
                 FROM orders JOIN lineitem ON o_orderkey = l_orderkey \
                 GROUP BY o_orderpriority ORDER BY o_orderpriority";
    let tables = [
        "--table",
        "orders=skewed/",
        "--table",
        "lineitem=data/lineitem/",
    ];
    let with = |extra: &[&str]| {
        let mut args = vec!["sql", "-e", query];
        args.extend_from_slice(&tables);
        args.extend_from_slice(extra);
        sluice(d, &args)
    };
    let unlimited = with(&[]).expect(0);
    let limited = with(&["--memory-limit", "8MiB"]).expect(0);
    assert_eq!(limited.stdout, unlimited.stdout);
    assert!(
        unlimited.stdout.contains("5 row(s)"),
        "{}",
        unlimited.stdout
    );
    // The plan shows the hot key's bucket was joined in pieces.
    let mut args = vec!["sql", "-e"];
    let analyze = format!("EXPLAIN ANALYZE {query}");
    args.push(&analyze);
    args.extend_from_slice(&tables);
    args.extend_from_slice(&["--memory-limit", "8MiB"]);
    let explain = sluice(d, &args).expect(0);
    let skewed = explain
        .stdout
        .split("skewed_buckets=")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(skewed.is_some_and(|n| n >= 1), "{}", explain.stdout);
}

#[tokio::test]
async fn too_few_buckets_are_split_again_under_a_real_limit() {
    let dir = join_pipeline();
    // Two buckets of a 4.6 MiB build side under 8 MiB: each is split again.
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace("threads = 2", "threads = 2\njoin_buckets = 2")
    });
    let r = run_by_priority_in_8mib(dir.path());
    let j = &r["models"][0]["joins"][0];
    assert_eq!(j["strategy"], "grace(2)", "{j}");
    assert!(j["max_depth"].as_u64().unwrap() >= 2, "{j}");
    assert!(j["buckets"].as_u64().unwrap() > 2, "{j}");
    assert!(files_under(&dir.path().join("spill")).is_empty());
    let got = query_output(
        &format!("{}/out/by_priority/", dir.path().display()),
        "parquet",
        &[],
        "SELECT o_orderpriority, CAST(n AS VARCHAR) AS n FROM t ORDER BY 1",
    )
    .await;
    assert_eq!(
        rows(&got, &["o_orderpriority", "n"]),
        plain_orders_per_priority(dir.path()).await
    );
}

/// A fact table `sales` (1.2 M rows, sorted by its date key, in 4 files) and a dimension
/// `dims` (400 K rows, one per date key) in `data/`, both written by sluice (read through
/// their manifests), and a pipeline joining them where the dimension's filter selects a run
/// of keys: the hash join pushes those keys into the `sales` scan, which skips the pages
/// outside them. Joins over 4 KiB are not broadcast, so that the join is a partitioned one,
/// which a memory limit wraps.
fn star_pipeline() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, sql, per_file) in [
        (
            "dims",
            "SELECT value AS d_sk, value / 1000 AS d_year, 'd' || value AS d_name \
             FROM generate_series(0, 399999) ORDER BY value",
            "400000",
        ),
        (
            "sales",
            "SELECT value % 400000 AS s_sk, (value * 7919) % 1000 AS amount \
             FROM generate_series(0, 1199999) ORDER BY s_sk",
            "300000",
        ),
    ] {
        let out = d.join("data").join(name);
        sluice(
            d,
            &[
                "sql",
                "-q",
                "-e",
                sql,
                "--out",
                out.to_str().unwrap(),
                "--target-rows-per-file",
                per_file,
            ],
        )
        .expect(0);
    }
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        format!(
            "[settings]\nthreads = 2\nspill_dir = \"{}/spill\"\n\
             broadcast_join_limit = \"4KiB\"\n\
             [sources.sales]\nlocation = \"data/sales/\"\n\
             [sources.dims]\nlocation = \"data/dims/\"\n",
            d.display()
        ),
    )
    .unwrap();
    dir
}

/// A plain DataFusion session with `sales` and `dims` registered from `d/data/`.
async fn plain_sales_and_dims(d: &Path) -> datafusion::prelude::SessionContext {
    let ctx = datafusion::prelude::SessionContext::new();
    for t in ["sales", "dims"] {
        let path = d.join("data").join(t);
        ctx.register_parquet(t, path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
    }
    ctx
}

#[tokio::test]
async fn a_memory_limit_never_makes_a_join_read_more_of_its_probe_side() {
    let dir = star_pipeline();
    let d = dir.path();
    let ctx = plain_sales_and_dims(d).await;
    // Seeded runs of dimension keys, each selecting under a fifth of the fact table.
    let mut seed = 0x5eed_u64;
    for round in 0..3 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let from = (seed >> 33) % 300;
        let to = from + 10 + (seed >> 40) % 60;
        let query = format!(
            "SELECT COUNT(*) AS n, SUM(amount) AS total FROM sales JOIN dims ON s_sk = d_sk \
             WHERE d_year BETWEEN {from} AND {to} AND d_name LIKE '%7'"
        );
        std::fs::write(d.join("queries/joined.sql"), &query).unwrap();
        let want = rows(
            &plain_query(
                &ctx,
                &format!(
                    "SELECT CAST(n AS VARCHAR) AS n, CAST(total AS VARCHAR) AS total \
                     FROM ({query})"
                ),
            )
            .await,
            &["n", "total"],
        );
        let mut read = Vec::new();
        for extra in [
            &[][..],
            &["--memory-limit", "256MiB"][..],
            &["--memory-limit", "256MiB", "--join-strategy", "grace"][..],
        ] {
            let (_, report) = run_with_report(d, extra, 0);
            let model = report_model(&report, "joined");
            let strategy = model["joins"][0]["strategy"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let sales = model["rows_in_by_source"]["sales"].as_u64().unwrap();
            let got = query_output(
                &format!("{}/out/joined/", d.display()),
                "parquet",
                &[],
                "SELECT CAST(n AS VARCHAR) AS n, CAST(total AS VARCHAR) AS total FROM t",
            )
            .await;
            assert_same_rows(
                &rows(&got, &["n", "total"]),
                &want,
                &format!("round {round}, {extra:?}"),
            );
            read.push((extra, strategy, sales));
        }
        let unlimited = read[0].2;
        for (extra, strategy, sales) in &read[1..] {
            assert!(
                *sales <= unlimited && *sales < 1_200_000 / 4,
                "round {round} ({query}): the sales scan read {sales} rows with {extra:?} \
                 ({strategy}), {unlimited} without a limit: {read:?}"
            );
        }
        // Both ways of running the join under the limit were exercised.
        assert_eq!(read[1].1, "adaptive", "{read:?}");
        assert!(read[2].1.starts_with("grace("), "{read:?}");
    }
}

/// A join whose filter keeps 0.1 % of an unsorted fact table has it applied while the
/// table's Parquet is decoded (`while_selective` in the scan's predicate), and the run report
/// still counts every row the scan read, not only those that passed; the answer is plain
/// DataFusion's.
#[tokio::test]
async fn a_join_filter_applied_while_decoding_still_counts_every_row_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, sql) in [
        (
            "dims",
            "SELECT value AS d_sk, value % 1000 AS d_year FROM generate_series(0, 99999)",
        ),
        (
            "sales",
            "SELECT (value * 7919) % 100000 AS s_sk, value % 1000 AS amount \
             FROM generate_series(0, 599999)",
        ),
    ] {
        let out = d.join("data").join(name);
        sluice(d, &["sql", "-q", "-e", sql, "--out", out.to_str().unwrap()]).expect(0);
    }
    std::fs::create_dir_all(d.join("queries")).unwrap();
    let query = "SELECT COUNT(*) AS n, SUM(amount) AS total FROM sales JOIN dims ON s_sk = d_sk \
                 WHERE d_year = 7";
    std::fs::write(d.join("queries/joined.sql"), query).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "[settings]\nthreads = 2\n\
         [sources.sales]\nlocation = \"data/sales/\"\n\
         [sources.dims]\nlocation = \"data/dims/\"\n",
    )
    .unwrap();

    let tables = [
        format!("sales={}", d.join("data/sales").display()),
        format!("dims={}", d.join("data/dims").display()),
    ];
    let explain = format!("EXPLAIN ANALYZE {query}");
    let plan = sluice(
        d,
        &[
            "sql", "-q", "-e", &explain, "--table", &tables[0], "--table", &tables[1],
        ],
    )
    .expect(0);
    assert!(plan.stdout.contains("while_selective"), "{}", plan.stdout);

    let (_, report) = run_with_report(d, &[], 0);
    let model = report_model(&report, "joined");
    assert_eq!(
        model["rows_in_by_source"]["sales"].as_u64(),
        Some(600_000),
        "{model}"
    );

    let ctx = plain_sales_and_dims(d).await;
    let as_text = |q: &str| {
        format!("SELECT CAST(n AS VARCHAR) AS n, CAST(total AS VARCHAR) AS total FROM ({q})")
    };
    let want = rows(&plain_query(&ctx, &as_text(query)).await, &["n", "total"]);
    let got = query_output(
        &format!("{}/out/joined/", d.display()),
        "parquet",
        &[],
        &as_text("SELECT * FROM t"),
    )
    .await;
    assert_same_rows(&rows(&got, &["n", "total"]), &want, "the join");
}

/// A star query written with its selective dimension last: with `--join-order cost` (the
/// default) the fact table is joined with that dimension first (the join nearest the scans in
/// `EXPLAIN`), and the answer is the written order's and plain DataFusion's.
#[tokio::test]
async fn a_star_query_joins_its_selective_dimension_first() {
    let dir = star_pipeline();
    let d = dir.path();
    sluice(
        d,
        &[
            "sql",
            "-q",
            "-e",
            "SELECT value AS st_id, 'store ' || CAST(value AS VARCHAR) AS st_name \
             FROM generate_series(0, 9)",
            "--out",
            d.join("data/stores").to_str().unwrap(),
        ],
    )
    .expect(0);
    let query = "SELECT st_name, COUNT(*) AS n, SUM(amount) AS total FROM sales \
                 JOIN stores ON amount % 10 = st_id \
                 JOIN dims ON s_sk = d_sk \
                 WHERE d_year = 123 GROUP BY st_name ORDER BY st_name";
    let tables = [
        format!("sales={}/", d.join("data/sales").display()),
        format!("dims={}/", d.join("data/dims").display()),
        format!("stores={}/", d.join("data/stores").display()),
    ];
    let args = |extra: &[&str], sql: &str| -> String {
        let mut a = vec!["sql".to_string(), "-q".into(), "-e".into(), sql.to_string()];
        for t in &tables {
            a.extend(["--table".to_string(), t.clone()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        sluice(d, &a).expect(0).stdout
    };
    for flags in [&["--join-order", "cost"][..], &[]] {
        let plan = args(flags, &format!("EXPLAIN {query}"));
        let physical = plan.split("physical_plan").nth(1).unwrap_or_default();
        let lowest = physical
            .lines()
            .rfind(|l| l.contains("HashJoinExec"))
            .unwrap_or_default();
        assert!(
            lowest.contains("d_sk@") && lowest.contains("s_sk@"),
            "{flags:?}: {plan}"
        );
    }
    let written = args(&["--join-order", "as_written"], &format!("EXPLAIN {query}"));
    let written = written.split("physical_plan").nth(1).unwrap_or_default();
    let lowest_written = written
        .lines()
        .rfind(|l| l.contains("HashJoinExec"))
        .unwrap_or_default();
    assert!(lowest_written.contains("st_id@"), "{written}");
    // The same answer both ways, and plain DataFusion's.
    let got = args(&["--join-order", "cost"], query);
    assert_eq!(got, args(&["--join-order", "as_written"], query));
    let ctx = datafusion::prelude::SessionContext::new();
    for t in ["sales", "dims", "stores"] {
        let path = d.join("data").join(t);
        ctx.register_parquet(t, path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
    }
    let want = plain_query(&ctx, query).await;
    let want = datafusion::arrow::util::pretty::pretty_format_batches(&want)
        .unwrap()
        .to_string();
    for line in want.lines().filter(|l| l.starts_with("| store")) {
        assert!(got.contains(line), "{line} not in\n{got}");
    }
    assert!(
        want.lines().filter(|l| l.starts_with("| store")).count() == 10,
        "{want}"
    );
}

/// An anti join of a small join's output with a large table builds the small side.
/// DataFusion estimates a join's output in bytes as the unscaled bytes of its inputs'
/// columns (here those of all 1.2 M `sales` rows, although 180,000 remain), so on its own
/// it builds the 1.2 M rows of the subquery, as in TPC-H q21; sluice compares rows × width
/// and builds the join's output. The answer is plain DataFusion's.
#[tokio::test]
async fn an_anti_join_builds_its_smaller_side_by_rows_and_width() {
    let dir = star_pipeline();
    let d = dir.path();
    let query = "SELECT count(*) AS n, sum(amount) AS total FROM dims \
                 JOIN sales ON d_sk = s_sk WHERE d_year < 60 AND EXISTS \
                 (SELECT 1 FROM sales s3 WHERE s3.s_sk = d_sk AND s3.amount = sales.amount) \
                 AND NOT EXISTS (SELECT 1 FROM sales s2 WHERE s2.s_sk = d_sk \
                 AND s2.amount < 900)";
    let tables = [
        format!("sales={}/", d.join("data/sales").display()),
        format!("dims={}/", d.join("data/dims").display()),
    ];
    let sql = |sql: &str| -> String {
        let mut a = vec!["sql".to_string(), "-q".into(), "-e".into(), sql.to_string()];
        for t in &tables {
            a.extend(["--table".to_string(), t.clone()]);
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        sluice(d, &a).expect(0).stdout
    };
    let anti = |plan: &str| -> String {
        let physical = plan.split("physical_plan").nth(1).unwrap_or_default();
        physical
            .lines()
            .find(|l| l.contains("Anti"))
            .unwrap_or_default()
            .to_string()
    };
    let ours = anti(&sql(&format!("EXPLAIN {query}")));
    assert!(ours.contains("join_type=LeftAnti"), "{ours}");
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().with_target_partitions(2),
    );
    for t in ["sales", "dims"] {
        let path = d.join("data").join(t);
        ctx.register_parquet(t, path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
    }
    let theirs = plain_query(&ctx, &format!("EXPLAIN {query}")).await;
    let theirs = datafusion::arrow::util::pretty::pretty_format_batches(&theirs)
        .unwrap()
        .to_string();
    assert!(anti(&theirs).contains("join_type=RightAnti"), "{theirs}");
    let want = plain_query(&ctx, query).await;
    let want = datafusion::arrow::util::pretty::pretty_format_batches(&want)
        .unwrap()
        .to_string();
    let got = sql(query);
    let rows = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("| ") && !l.contains(" n "))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert!(!rows(&want).is_empty(), "{want}");
    assert_eq!(rows(&got), rows(&want));
}

/// Under a memory limit with grace joins, a CTE over a join that the query reads twice is
/// computed once (`EXPLAIN` shows the reader), while two aggregations over joins that differ
/// only in how they match NULL keys (`=` and `IS NOT DISTINCT FROM`) are not taken for one:
/// each answer is plain DataFusion's.
#[tokio::test]
async fn grace_joins_inside_repeated_aggregations_are_shared_only_when_they_match_alike() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut tables = Vec::new();
    for (name, step) in [("na", 7), ("nb", 13)] {
        let out = d.join(name);
        let sql = format!(
            "SELECT CASE WHEN value % 10 = 0 THEN NULL ELSE (value * {step}) % 2000 END AS x, \
             value % 100 AS y FROM generate_series(0, 39999)"
        );
        sluice(
            d,
            &["sql", "-q", "-e", &sql, "--out", out.to_str().unwrap()],
        )
        .expect(0);
        tables.push(format!("{name}={}", out.display()));
    }
    let ctx = datafusion::prelude::SessionContext::new();
    for name in ["na", "nb"] {
        let path = d.join(name);
        ctx.register_parquet(name, path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
    }
    let shared = "WITH r AS (SELECT a.x, count(*) AS n FROM na a JOIN nb b ON a.x = b.x \
                  GROUP BY a.x) SELECT CAST(x AS VARCHAR) AS x, CAST(n AS VARCHAR) AS n FROM r \
                  WHERE n = (SELECT max(n) FROM r)";
    let alike = "SELECT 'eq' AS x, CAST(count(*) AS VARCHAR) AS n FROM (SELECT a.x, count(*) \
                 FROM na a JOIN nb b ON a.x = b.x GROUP BY a.x) \
                 UNION ALL SELECT 'nd', CAST(count(*) AS VARCHAR) FROM (SELECT a.x, count(*) \
                 FROM na a JOIN nb b ON a.x IS NOT DISTINCT FROM b.x GROUP BY a.x)";
    for (query, readers) in [(shared, 1), (alike, 0)] {
        let flags = [
            "--table",
            &tables[0],
            "--table",
            &tables[1],
            "--memory-limit",
            "64MiB",
            "--join-strategy",
            "grace",
        ];
        let explain = format!("EXPLAIN {query}");
        let mut args = vec!["sql", "-q", "-e", &explain];
        args.extend(flags);
        let plan = sluice(d, &args).expect(0);
        assert!(plan.stdout.contains("GraceHashJoinExec"), "{}", plan.stdout);
        assert_eq!(
            plan.stdout.matches("SharedReadExec").count(),
            readers,
            "{}",
            plan.stdout
        );

        let out = d.join(format!("out-{readers}"));
        let mut args = vec!["sql", "-q", "-e", query, "--out", out.to_str().unwrap()];
        args.extend(flags);
        sluice(d, &args).expect(0);
        let got = query_output(
            &format!("{}/", out.display()),
            "parquet",
            &[],
            "SELECT * FROM t",
        )
        .await;
        let want = rows(&plain_query(&ctx, query).await, &["x", "n"]);
        assert!(!want.is_empty());
        assert_same_rows(&rows(&got, &["x", "n"]), &want, query);
    }
}

/// `NOT IN` over a subquery whose values may be NULL: DataFusion's null-aware join builds
/// the whole outer side (`lineitem`) in one table that cannot spill, and fails under a
/// 4 MiB limit; sluice's anti join with NOT IN's rule for NULLs applied by the subquery's
/// counts finishes there with plain DataFusion's answer (unlimited, null-aware), whether
/// the subquery holds no NULL, a NULL, or no row at all. (The case at SF 1, under
/// 64 MiB, is the same plan at 10× the rows.)
#[tokio::test]
async fn not_in_over_a_nullable_subquery_finishes_under_the_memory_limit() {
    let dir = join_pipeline();
    let d = dir.path();
    let tables = [
        format!("lineitem={}/", d.join("data/lineitem").display()),
        format!("orders={}/", d.join("data/orders").display()),
    ];
    let sql = |sql: &str, extra: &[&str], status: i32| {
        let mut a = vec!["sql".to_string(), "-q".into(), "-e".into(), sql.to_string()];
        for t in &tables {
            a.extend(["--table".to_string(), t.clone()]);
        }
        a.extend(["--threads", "2", "--memory-limit", "4MiB"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        sluice(d, &a).expect(status)
    };
    let ctx = plain_tpch(&d.join("data")).await;
    let query = |subquery: &str| {
        format!(
            "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem \
             WHERE l_orderkey NOT IN ({subquery})"
        )
    };
    let shapes = [
        "SELECT nullif(o_orderkey, -1) FROM orders WHERE o_orderdate < DATE '1995-01-01'",
        "SELECT CASE WHEN o_orderkey = 1 THEN NULL ELSE o_orderkey END FROM orders",
        "SELECT nullif(o_orderkey, -1) FROM orders WHERE o_orderdate < DATE '1900-01-01'",
    ];
    let mut counts = Vec::new();
    for subquery in shapes {
        let q = query(subquery);
        let want = plain_query(&ctx, &q).await;
        let want = datafusion::arrow::util::pretty::pretty_format_batches(&want)
            .unwrap()
            .to_string();
        let got = sql(&q, &[], 0).stdout;
        let line = |t: &str| -> String {
            let row = t
                .lines()
                .find(|l| l.starts_with("| ") && !l.contains(" n "));
            row.unwrap_or_default().split_whitespace().collect()
        };
        assert_eq!(line(&got), line(&want), "{q}\n{got}\n{want}");
        counts.push(line(&want));
    }
    // The three answers differ: some rows, none (a NULL in the set), all of lineitem.
    let all = plain_query(
        &ctx,
        "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem",
    )
    .await;
    let all = datafusion::arrow::util::pretty::pretty_format_batches(&all)
        .unwrap()
        .to_string();
    assert!(counts[1].starts_with("|0|"), "{counts:?}");
    assert!(
        all.split_whitespace()
            .collect::<String>()
            .contains(&counts[2]),
        "{counts:?}\n{all}"
    );
    assert!(
        counts[0] != counts[1] && counts[0] != counts[2],
        "{counts:?}"
    );
    // DataFusion's own join, the rule turned off, cannot run the first under the limit.
    let failed = sql(&query(shapes[0]), &["--set", "sluice.not_in=false"], 1);
    assert!(failed.stderr.contains("HashJoinInput"), "{}", failed.stderr);
}
