//! Row accounting: a model's report gives the rows read per source, and for a query that only
//! filters and projects one source, that rows in = rows out + rows filtered + rows rejected,
//! every number checked against a count of the raw files.

use crate::support::*;

#[test]
fn each_model_counts_the_rows_it_read_per_source() {
    let dir = pipeline_copy("shop");
    let d = dir.path();
    // A filter over one source, beside the shop's aggregate and join models.
    std::fs::write(
        d.join("queries/bulk_orders.sql"),
        "SELECT order_id, quantity FROM orders WHERE quantity >= 3",
    )
    .unwrap();
    let toml = std::fs::read_to_string(d.join("sluice.toml")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        format!("{toml}\n[models.bulk_orders.sink]\nlocation = \"out/bulk_orders/\"\n"),
    )
    .unwrap();
    let report = d.join("r.json");
    sluice(d, &["run", ".", "--report", report.to_str().unwrap()]).expect(0);
    let report = read_json(&report);
    let model = |name: &str| {
        report["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap()
            .clone()
    };

    let orders = raw_orders(d);
    let customers = std::fs::read_to_string(d.join("data/customers.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
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
