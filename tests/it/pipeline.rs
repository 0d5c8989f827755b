//! `sluice run` / `sluice plan` on the `shop` pipeline, checked against the answers that
//! `testdata/shop/generate.py` computed in plain Python.

use crate::support::*;

/// Reads `out/daily_revenue/` and compares it with `expected/daily_revenue.csv`.
async fn check_daily_revenue(dir: &std::path::Path) {
    let out = dir.join("out/daily_revenue/");
    let batches = query_output(
        out.to_str().unwrap(),
        "parquet",
        &["order_date"],
        "SELECT order_date, CAST(orders AS VARCHAR) AS orders, CAST(revenue AS VARCHAR) AS revenue, CAST(items AS VARCHAR) AS items FROM t",
    )
    .await;
    let (header, expected) = expected_csv(&dir.join("expected/daily_revenue.csv"));
    let cols: Vec<&str> = header.iter().map(String::as_str).collect();
    assert_eq!(rows(&batches, &cols), expected);
}

async fn check_revenue_by_country(dir: &std::path::Path) {
    let out = dir.join("out/revenue_by_country/");
    let batches = query_output(
        out.to_str().unwrap(),
        "csv",
        &[],
        "SELECT country, product, CAST(orders AS VARCHAR) AS orders, arrow_cast(revenue, 'Utf8') AS revenue FROM t",
    )
    .await;
    let (header, expected) = expected_csv(&dir.join("expected/revenue_by_country.csv"));
    let cols: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut got = rows(&batches, &cols);
    // CSV drops trailing zeros of decimals ("12.5"): compare numbers as numbers.
    for r in got.iter_mut() {
        r[3] = format!("{:.2}", r[3].parse::<f64>().unwrap());
    }
    got.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn shop_pipeline_matches_an_independent_computation() {
    let dir = pipeline_copy("shop");
    let (_, r) = run_with_report(dir.path(), &[], 0);
    check_daily_revenue(dir.path()).await;
    check_revenue_by_country(dir.path()).await;

    assert_eq!(r["pipeline"], "shop");
    assert_eq!(r["status"], "success");
    let counts = read_json(&dir.path().join("expected/counts.json"));
    let by_name = |n: &str| report_model(&r, n).clone();
    let daily = by_name("daily_revenue");
    assert_eq!(daily["status"], "success");
    assert_eq!(daily["rows_in"], counts["orders"]);
    assert_eq!(daily["rows_out"], 4);
    assert_eq!(daily["outputs"].as_array().unwrap().len(), 4);
    assert!(
        daily["outputs"][0]
            .as_str()
            .unwrap()
            .starts_with("out/daily_revenue/order_date=2024-01-0")
    );
    let by_country = by_name("revenue_by_country");
    let expected_groups = expected_csv(&dir.path().join("expected/revenue_by_country.csv"))
        .1
        .len();
    assert_eq!(by_country["rows_out"], expected_groups as u64);
    assert_eq!(
        by_country["rows_in"].as_u64().unwrap(),
        counts["orders"].as_u64().unwrap() + counts["customers"].as_u64().unwrap()
    );
    assert_eq!(by_name("paid_orders")["materialized"], "view");
    assert!(
        !dir.path().join("out/paid_orders").exists(),
        "views are not written"
    );

    // The published output: marker, manifest whose counts match the files' own footers.
    let out = dir.path().join("out/daily_revenue");
    assert!(out.join("_SUCCESS").exists());
    let (total, files) = manifest_rows(&out);
    assert_eq!(total, 4);
    for (path, rows) in files {
        assert_eq!(parquet_rows(&out.join(&path)), rows, "{path}");
    }
    assert!(
        dirs_under(&out).iter().all(|d| !d.contains("_staging")),
        "{:?}",
        dirs_under(&out)
    );
}

#[tokio::test]
async fn running_twice_gives_the_same_output_and_no_leftovers() {
    let dir = pipeline_copy("shop");
    sluice(dir.path(), &["run", "."]).expect(0);
    let first = files_under(&dir.path().join("out"));
    sluice(dir.path(), &["run", "."]).expect(0);
    let second = files_under(&dir.path().join("out"));
    assert_eq!(first.len(), second.len(), "{first:?}\n{second:?}");
    assert_ne!(
        first, second,
        "a rerun writes new files (names carry the run id)"
    );
    assert!(
        dirs_under(&dir.path().join("out"))
            .iter()
            .all(|d| !d.contains("_staging"))
    );
    check_daily_revenue(dir.path()).await;
    check_revenue_by_country(dir.path()).await;
}

#[test]
fn select_runs_only_the_chosen_models() {
    let dir = pipeline_copy("shop");
    let (_, r) = run_with_report(dir.path(), &["--select", "daily_revenue"], 0);
    let names = model_names(&r);
    assert_eq!(names, vec!["daily_revenue"]);
    assert!(dir.path().join("out/daily_revenue/_SUCCESS").exists());
    assert!(!dir.path().join("out/revenue_by_country").exists());

    let (_, r) = run_with_report(dir.path(), &["--select", "paid_orders+"], 0);
    let names = model_names(&r);
    assert_eq!(
        names,
        vec!["paid_orders", "daily_revenue", "revenue_by_country"]
    );
}

#[test]
fn dry_run_and_plan_write_nothing() {
    let dir = pipeline_copy("shop");
    let run = sluice(dir.path(), &["run", ".", "--dry-run"]).expect(0);
    assert!(run.stdout.contains("daily_revenue"), "{}", run.stdout);
    assert!(!dir.path().join("out").exists());
    let plan = sluice(dir.path(), &["plan", "."]).expect(0);
    for expected in [
        "pipeline shop (3 models, 2 sources)",
        "orders (source)",
        "paid_orders (view)",
        "sink:   out/daily_revenue/ (parquet, mode overwrite, partition_by order_date)",
        "schema: order_date, orders, revenue, items",
    ] {
        assert!(
            plan.stdout.contains(expected),
            "missing {expected:?} in\n{}",
            plan.stdout
        );
    }
    // Models run after the models they read.
    let pos = |s: &str| plan.stdout.find(s).unwrap();
    assert!(pos("paid_orders  [view]") < pos("daily_revenue  [table]"));
    assert!(!dir.path().join("out").exists());
}

#[tokio::test]
async fn variables_are_substituted() {
    let dir = pipeline_copy("shop");
    std::fs::write(
        dir.path().join("queries/big_orders.sql"),
        "SELECT order_id FROM paid_orders WHERE quantity >= {{ min_qty }}",
    )
    .unwrap();
    let missing = sluice(dir.path(), &["run", ".", "--select", "big_orders"]).expect(2);
    assert!(
        missing
            .stderr
            .contains("big_orders.sql:1: variable 'min_qty' is not set"),
        "{}",
        missing.stderr
    );
    sluice(
        dir.path(),
        &["run", ".", "--select", "big_orders", "--var", "min_qty=8"],
    )
    .expect(0);
    let got = query_output(
        dir.path().join("out/big_orders/").to_str().unwrap(),
        "parquet",
        &[],
        "SELECT COUNT(*) AS n FROM t",
    )
    .await;
    // Independent count: paid rows with quantity >= 8 in the raw CSVs.
    let expected = raw_orders(dir.path())
        .iter()
        .filter(|o| o.status == "paid" && o.quantity >= 8)
        .count();
    assert_eq!(rows(&got, &["n"]), vec![vec![expected.to_string()]]);
}

#[test]
fn a_failing_model_leaves_the_previous_output_untouched_and_skips_downstream() {
    let (dir, before) = ran_shop();
    // Fails at run time, after planning: a bad cast of a value in the data.
    std::fs::write(
        dir.path().join("queries/daily_revenue.sql"),
        "SELECT order_date, COUNT(*) AS orders, SUM(amount) AS revenue, SUM(CAST(product AS INT)) AS items FROM paid_orders GROUP BY order_date",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/after_daily.sql"),
        "SELECT * FROM daily_revenue",
    )
    .unwrap();
    let (run, r) = run_with_report(dir.path(), &[], 1);
    assert!(
        run.stderr.contains("model 'daily_revenue' failed"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Cannot cast string"), "{}", run.stderr);
    let status = |n: &str| report_model(&r, n)["status"].clone();
    assert_eq!(status("daily_revenue"), "failed");
    assert_eq!(status("after_daily"), "skipped");
    assert_eq!(status("revenue_by_country"), "success");
    assert_eq!(r["status"], "failed");
    let after = snapshot(&dir.path().join("out"));
    let daily = |m: &std::collections::BTreeMap<String, Vec<u8>>| {
        m.iter()
            .filter(|(k, _)| k.starts_with("daily_revenue/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(daily(&before), daily(&after), "the previous output changed");
}

#[test]
fn typed_and_null_partitions_read_back_downstream_even_when_not_selected() {
    // by_day is partitioned by a DATE column that is NULL for one group.
    let dir = shop_with(
        &[
            (
                "by_day",
                "SELECT CASE WHEN order_date = DATE '2024-01-04' THEN NULL ELSE order_date END AS d, COUNT(*) AS n FROM paid_orders GROUP BY 1",
            ),
            (
                "latest",
                "SELECT MAX(d) - INTERVAL '1' DAY AS before_last, COUNT(*) AS days, SUM(CASE WHEN d IS NULL THEN n END) AS undated FROM by_day",
            ),
        ],
        "[models.by_day.sink]\npartition_by = [\"d\"]\n",
    );
    sluice(dir.path(), &["run", "."]).expect(0);
    let check = |dir: &std::path::Path| {
        let run = sluice(
            dir,
            &[
                "sql",
                "-e",
                "SELECT CAST(before_last AS VARCHAR) AS b, days, undated FROM t",
                "--table",
                &format!("t={}/out/latest/", dir.display()),
            ],
        )
        .expect(0);
        // Dates 01..03 plus NULL: 4 groups; the latest date is 2024-01-03; the NULL group holds
        // the paid orders of 2024-01-04 (expected/daily_revenue.csv: 36).
        assert!(
            run.stdout.contains("| 2024-01-02 | 4    | 36      |"),
            "{}",
            run.stdout
        );
    };
    check(dir.path());
    // Again with by_day not selected: read from its output, with its types from the manifest.
    std::fs::remove_dir_all(dir.path().join("out/latest")).unwrap();
    sluice(dir.path(), &["run", ".", "--select", "latest"]).expect(0);
    check(dir.path());
}

#[test]
fn an_empty_result_is_a_valid_output_for_downstream_models() {
    let dir = shop_with(
        &[
            (
                "none",
                "SELECT order_id, order_date FROM paid_orders WHERE quantity > 1000",
            ),
            ("count_none", "SELECT COUNT(*) AS n FROM none"),
        ],
        "[models.none.sink]\npartition_by = [\"order_date\"]\n",
    );
    let (_, r) = run_with_report(dir.path(), &[], 0);
    let none = report_model(&r, "none");
    assert_eq!(none["rows_out"], 0);
    // One file of no rows, for readers of the folder to find the columns in (see
    // encodings::an_output_with_no_rows_is_read_as_its_columns_by_every_reader).
    let m = read_json(&dir.path().join("out/none/_MANIFEST"));
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{m}");
    assert_eq!(
        (&files[0]["rows"], &files[0]["schema_only"]),
        (&0.into(), &true.into())
    );
    let path = files[0]["path"].as_str().unwrap();
    assert!(
        path.starts_with("order_date=__HIVE_DEFAULT_PARTITION__/part-00000-"),
        "{path}"
    );
    let run = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT n FROM t",
            "--table",
            &format!("t={}/out/count_none/", dir.path().display()),
        ],
    )
    .expect(0);
    assert!(run.stdout.contains("| 0 |"), "{}", run.stdout);
}

#[test]
fn select_star_over_a_partitioned_model_keeps_columns_straight_in_csv() {
    // a is partitioned (its partition column comes last in files' folders); b copies it as
    // CSV, which is read by position; c reads b.
    let dir = shop_with(
        &[
            (
                "a",
                "SELECT customer_id, product, quantity FROM paid_orders",
            ),
            ("b", "SELECT * FROM a"),
            (
                "c",
                "SELECT product, SUM(quantity) AS q, SUM(customer_id) AS s FROM b GROUP BY product",
            ),
        ],
        "[models.a.sink]\npartition_by = [\"product\"]\n[models.b.sink]\nformat = \"csv\"\n",
    );
    sluice(dir.path(), &["run", "."]).expect(0);
    // Independent: the same aggregate straight from the raw CSVs.
    let mut want = std::collections::BTreeMap::<String, (i64, i64)>::new();
    for o in raw_orders(dir.path())
        .into_iter()
        .filter(|o| o.status == "paid")
    {
        let e = want.entry(o.product).or_default();
        e.0 += o.quantity;
        e.1 += o.customer_id;
    }
    let run = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT product, q, s FROM t ORDER BY product",
            "--table",
            &format!("t={}/out/c/", dir.path().display()),
            "--max-rows",
            "100",
        ],
    )
    .expect(0);
    let got: std::collections::BTreeMap<String, (i64, i64)> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.contains("product"))
        .map(|l| {
            let c: Vec<&str> = l
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect();
            (
                c[0].to_string(),
                (c[1].parse().unwrap(), c[2].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, want);
}

/// `[settings.options]` reach the run's engine: tiny batches and a rewrite turned off give the
/// same answers; a key that names nothing stops the run before it writes, naming the key,
/// and so does one given by `--set`.
#[tokio::test]
async fn settings_options_reach_the_engine() {
    let dir = pipeline_copy("shop");
    let toml = dir.path().join("sluice.toml");
    let base = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(
        &toml,
        format!(
            "{base}\n[settings.options]\n\"datafusion.execution.batch_size\" = 7\n\
             \"sluice.decimal_arith\" = false\n"
        ),
    )
    .unwrap();
    sluice(dir.path(), &["run", "."]).expect(0);
    check_daily_revenue(dir.path()).await;
    check_revenue_by_country(dir.path()).await;

    let dir = pipeline_copy("shop");
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("{base}\n[settings.options]\n\"sluice.no_such_rewrite\" = false\n"),
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", "."]).expect(2);
    assert!(
        run.stderr.contains("sluice.no_such_rewrite"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("out").exists());

    let dir = pipeline_copy("shop");
    let run = sluice(
        dir.path(),
        &["run", ".", "--set", "datafusion.optimizer.no_such_option=1"],
    )
    .expect(2);
    assert!(
        run.stderr.contains("datafusion.optimizer.no_such_option"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("out").exists());
}
