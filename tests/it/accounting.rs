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
