//! Row accounting: a model's report gives the rows read per source, and for a query that only
//! filters and projects one source, that rows in = rows out + rows filtered + rows rejected,
//! every number checked against a count of the raw files.

use crate::support::*;

#[test]
fn each_model_counts_the_rows_it_read_per_source() {
    // A filter over one source, beside the shop's aggregate and join models.
    let dir = shop_with(
        &[(
            "bulk_orders",
            "SELECT order_id, quantity FROM orders WHERE quantity >= 3",
        )],
        "[models.bulk_orders.sink]\nlocation = \"out/bulk_orders/\"\n",
    );
    let d = dir.path();
    let (_, report) = run_with_report(d, &[], 0);
    let model = |name: &str| report_model(&report, name);

    let orders = raw_orders(d);
    let customers = raw_customers(d);
    let n_orders = orders.len() as u64;
    let bulk = orders.iter().filter(|o| o.quantity >= 3).count() as u64;
    assert!(bulk > 0 && bulk < n_orders);

    let m = model("bulk_orders");
    assert_eq!(
        m["rows_in_by_source"],
        serde_json::json!({ "orders": n_orders })
    );
    assert_eq!(m["rows_in"], n_orders);
    assert_eq!(m["rows_out"], bulk);
    assert_eq!(m["rows_filtered"], n_orders - bulk);
    assert_eq!(
        m["row_balance"],
        format!(
            "{n_orders} in = {bulk} out + {} filtered + 0 rejected",
            n_orders - bulk
        )
    );

    // An aggregate over the view of paid orders: rows per source, no balance (an aggregate
    // is not a filter).
    let m = model("daily_revenue");
    assert_eq!(
        m["rows_in_by_source"],
        serde_json::json!({ "orders": n_orders })
    );
    assert!(m.get("rows_filtered").is_none(), "{m}");
    // A join of two sources.
    let m = model("revenue_by_country");
    assert_eq!(
        m["rows_in_by_source"],
        serde_json::json!({ "orders": n_orders, "customers": customers })
    );
    assert_eq!(m["rows_in"], n_orders + customers);
    assert!(m.get("row_balance").is_none(), "{m}");
}

/// A CTE a model reads twice is computed once (`EXPLAIN ANALYZE` shows the computing copy and
/// the reader), the report counts the source's rows once, and the answer is plain
/// DataFusion's, which reads the source twice.
#[tokio::test]
async fn a_cte_read_twice_counts_its_source_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sales = d.join("data/sales");
    sluice(
        d,
        &[
            "sql",
            "-q",
            "-e",
            "SELECT (value * 7919) % 5000 AS supplier, value % 1000 AS amount \
             FROM generate_series(0, 199999)",
            "--out",
            sales.to_str().unwrap(),
        ],
    )
    .expect(0);
    std::fs::create_dir_all(d.join("queries")).unwrap();
    let query = "WITH revenue AS (SELECT supplier, SUM(amount) AS total FROM sales \
                 GROUP BY supplier) \
                 SELECT supplier, total FROM revenue \
                 WHERE total = (SELECT MAX(total) FROM revenue)";
    std::fs::write(d.join("queries/top.sql"), query).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "[settings]\nthreads = 2\n[sources.sales]\nlocation = \"data/sales/\"\n",
    )
    .unwrap();

    let table = format!("sales={}", sales.display());
    let explain = format!("EXPLAIN ANALYZE {query}");
    let plan = sluice(d, &["sql", "-q", "-e", &explain, "--table", &table]).expect(0);
    for operator in ["SharedSubplanExec", "SharedReadExec"] {
        assert_eq!(plan.stdout.matches(operator).count(), 1, "{}", plan.stdout);
    }

    let (_, report) = run_with_report(d, &[], 0);
    let model = report_model(&report, "top");
    assert_eq!(
        model["rows_in_by_source"],
        serde_json::json!({ "sales": 200_000 }),
        "{model}"
    );

    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet("sales", sales.to_str().unwrap(), Default::default())
        .await
        .unwrap();
    let as_text = |q: &str| {
        format!(
            "SELECT CAST(supplier AS VARCHAR) AS supplier, CAST(total AS VARCHAR) AS total \
             FROM ({q})"
        )
    };
    let want = rows(
        &plain_query(&ctx, &as_text(query)).await,
        &["supplier", "total"],
    );
    assert!(!want.is_empty());
    let got = query_output(
        &format!("{}/out/top/", d.display()),
        "parquet",
        &[],
        &as_text("SELECT * FROM t"),
    )
    .await;
    assert_same_rows(
        &rows(&got, &["supplier", "total"]),
        &want,
        "the top suppliers",
    );
}
