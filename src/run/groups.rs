//! Groups split over work units: a time-batched model that aggregates runs its query once per
//! period, so a group whose rows fall in two periods comes out as two rows — silently, unless
//! a group key places every group in one period. Read off the model's logical plan before
//! anything runs (a pattern match: it may warn of a query that is fine, never the reverse of
//! the patterns it knows).

use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::scalar::ScalarValue;

use crate::config::BatchSize;
use crate::units::Grid;

/// Why `plan` (a model batched on `grid` by the event-time columns `columns`) may split a
/// group over two units, or `None` when its top aggregate groups by a key that places each
/// group in one period (or it does not aggregate).
pub(crate) fn split_groups(plan: &LogicalPlan, columns: &[String], grid: Grid) -> Option<String> {
    let agg = top_aggregate(plan)?;
    let cols = columns.join(", ");
    if agg.group_expr.is_empty() {
        return Some(format!(
            "it aggregates all its input into one row, so each unit (one {} of {cols}) \
             writes its own row: aggregate by a period of {cols}, or do not batch it",
            grid.size.name()
        ));
    }
    if agg.group_expr.iter().any(|e| determines(e, columns, grid)) {
        return None;
    }
    let keys: Vec<String> = agg.group_expr.iter().map(|e| e.to_string()).collect();
    Some(format!(
        "it groups by ({}), and no key places a group in one {} of {cols}{}: a group whose rows \
         fall in two periods is split over two units (two rows for one key). Group by a period \
         of {cols} (e.g. date_trunc('{}', {})), or set batches.timezone if the key is a local \
         date",
        keys.join(", "),
        grid.size.name(),
        if grid.tz.is_none() { " (UTC)" } else { "" },
        grid.size.name(),
        columns.first().map_or("ts", String::as_str)
    ))
}

/// The output columns that hold the group keys of `plan`'s top aggregate, when each key is
/// output as a column of its own (`None` otherwise, or without keys): a key two units both
/// produced means a group split over them.
pub(crate) fn key_columns(plan: &LogicalPlan) -> Option<Vec<String>> {
    let agg = top_aggregate(plan)?;
    let n = agg.group_expr.len();
    if n == 0 {
        return None;
    }
    let keys: Vec<datafusion::common::Column> = agg.schema.columns().into_iter().take(n).collect();
    let output = plan.schema();
    let mut out = Vec::with_capacity(n);
    for key in &keys {
        // The output column that is this key: the same column through the plan's final
        // projection (filters and sorts keep columns as they are).
        let i = output
            .columns()
            .iter()
            .position(|c| c == key)
            .or_else(|| projected_as(plan, key))?;
        out.push(output.field(i).name().clone());
    }
    Some(out)
}

/// The position of the output column that a projection at the top of `plan` makes of `key`.
fn projected_as(plan: &LogicalPlan, key: &datafusion::common::Column) -> Option<usize> {
    match plan {
        LogicalPlan::Projection(p) => p.expr.iter().position(|e| {
            let e = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            matches!(e, Expr::Column(c) if c == key)
        }),
        LogicalPlan::Sort(s) => projected_as(&s.input, key),
        LogicalPlan::Filter(f) => projected_as(&f.input, key),
        LogicalPlan::Limit(l) => projected_as(&l.input, key),
        LogicalPlan::SubqueryAlias(a) => projected_as(&a.input, key),
        _ => None,
    }
}

/// The aggregate whose rows the model outputs, under projections, filters, sorts and aliases.
fn top_aggregate(plan: &LogicalPlan) -> Option<&datafusion::logical_expr::Aggregate> {
    match plan {
        LogicalPlan::Aggregate(a) => Some(a),
        LogicalPlan::Projection(p) => top_aggregate(&p.input),
        LogicalPlan::Filter(f) => top_aggregate(&f.input),
        LogicalPlan::Sort(s) => top_aggregate(&s.input),
        LogicalPlan::SubqueryAlias(a) => top_aggregate(&a.input),
        LogicalPlan::Limit(l) => top_aggregate(&l.input),
        _ => None,
    }
}

/// Whether the model's result is sorted (an `ORDER BY` under projections and aliases):
/// its files then hold rows in order, which merging them would undo.
pub(crate) fn is_sorted(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Sort(_) => true,
        LogicalPlan::Projection(p) => is_sorted(&p.input),
        LogicalPlan::SubqueryAlias(a) => is_sorted(&a.input),
        LogicalPlan::Limit(l) => is_sorted(&l.input),
        LogicalPlan::Filter(f) => is_sorted(&f.input),
        _ => false,
    }
}

/// How fine a truncation unit is (an hour inside a day inside a month...).
fn rank(unit: &str) -> Option<u8> {
    match unit.to_ascii_lowercase().as_str() {
        "second" | "minute" => Some(0),
        "hour" => Some(1),
        "day" => Some(2),
        "week" => None,
        "month" => Some(4),
        "quarter" => Some(5),
        "year" => Some(6),
        _ => None,
    }
}

fn size_rank(size: BatchSize) -> u8 {
    match size {
        BatchSize::Hour => 1,
        BatchSize::Day => 2,
        BatchSize::Month => 4,
        BatchSize::Year => 6,
    }
}

/// Whether the group key `e` places each group in one period: the event time itself, its
/// truncation to the period or finer (`date_trunc`, a cast to DATE in UTC).
fn determines(e: &Expr, columns: &[String], grid: Grid) -> bool {
    let is_column = |e: &Expr| event_column(e, columns);
    match e {
        Expr::Alias(a) => determines(&a.expr, columns, grid),
        Expr::Column(c) => columns.contains(&c.name),
        Expr::Cast(c) => cast_determines(&c.expr, c.field.data_type(), columns, grid),
        Expr::TryCast(c) => cast_determines(&c.expr, c.field.data_type(), columns, grid),
        Expr::ScalarFunction(f) => match f.name() {
            "date_trunc" | "datetrunc" => {
                let unit = match f.args.first() {
                    Some(Expr::Literal(ScalarValue::Utf8(Some(u)), _))
                    | Some(Expr::Literal(ScalarValue::Utf8View(Some(u)), _)) => rank(u),
                    _ => None,
                };
                // In UTC, or an hour or finer (an hour is whole in every zone's day... but a
                // half-hour zone's hours are not: UTC only beyond minutes).
                let fits = unit
                    .is_some_and(|u| u <= size_rank(grid.size) && (grid.tz.is_none() || u == 0));
                fits && f.args.get(1).is_some_and(is_column)
            }
            "to_date" => {
                grid.tz.is_none()
                    && size_rank(grid.size) >= 2
                    && f.args.first().is_some_and(is_column)
            }
            _ => false,
        },
        _ => false,
    }
}

/// A cast of the event time: to a timestamp, the same instant; to a DATE, its UTC day.
fn cast_determines(inner: &Expr, to: &DataType, columns: &[String], grid: Grid) -> bool {
    match to {
        DataType::Date32 | DataType::Date64 => {
            grid.tz.is_none() && size_rank(grid.size) >= 2 && event_column(inner, columns)
        }
        DataType::Timestamp(..) => determines(inner, columns, grid),
        _ => false,
    }
}

/// Whether `e` is an event-time column, possibly cast to a timestamp.
fn event_column(e: &Expr, columns: &[String]) -> bool {
    match e {
        Expr::Column(c) => columns.contains(&c.name),
        Expr::Cast(c) if matches!(c.field.data_type(), DataType::Timestamp(..)) => {
            event_column(&c.expr, columns)
        }
        Expr::TryCast(c) if matches!(c.field.data_type(), DataType::Timestamp(..)) => {
            event_column(&c.expr, columns)
        }
        Expr::Alias(a) => event_column(&a.expr, columns),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn check(sql: &str, grid: Grid) -> Option<String> {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE TABLE f AS SELECT * FROM (VALUES \
             (1, 'EWR', TIMESTAMP '2024-03-10 03:30:00', DATE '2024-03-09')) AS t(id, origin, ts, day)",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
        let df = ctx.sql(sql).await.unwrap();
        split_groups(df.logical_plan(), &["ts".to_string()], grid)
    }

    #[tokio::test]
    async fn group_keys_that_place_a_group_in_one_period() {
        let day = Grid::utc(BatchSize::Day);
        for ok in [
            "SELECT CAST(ts AS DATE) AS d, COUNT(*) FROM f GROUP BY 1",
            "SELECT date_trunc('day', ts) AS d, origin, COUNT(*) FROM f GROUP BY 1, 2",
            "SELECT date_trunc('hour', ts), COUNT(*) FROM f GROUP BY 1 ORDER BY 1",
            "SELECT ts, COUNT(*) FROM f GROUP BY ts",
            "SELECT id, origin FROM f WHERE id > 0",
        ] {
            assert_eq!(check(ok, day).await, None, "{ok}");
        }
        for split in [
            "SELECT day, origin, COUNT(*) FROM f GROUP BY day, origin",
            "SELECT date_trunc('month', ts), COUNT(*) FROM f GROUP BY 1",
            "SELECT COUNT(*) FROM f",
        ] {
            assert!(check(split, day).await.is_some(), "{split}");
        }
        let said = check(
            "SELECT day, origin, COUNT(*) FROM f GROUP BY day, origin",
            day,
        )
        .await
        .unwrap();
        assert!(said.contains("groups by (f.day, f.origin)"), "{said}");
        // A UTC date is not a New York day.
        let ny = Grid {
            size: BatchSize::Day,
            tz: Some(chrono_tz::America::New_York),
        };
        assert!(
            check("SELECT CAST(ts AS DATE), COUNT(*) FROM f GROUP BY 1", ny)
                .await
                .is_some()
        );
    }

    #[tokio::test]
    async fn the_output_columns_of_the_group_keys() {
        let ctx = SessionContext::new();
        ctx.sql("CREATE TABLE f AS SELECT * FROM (VALUES (1, 'EWR', DATE '2024-03-09')) AS t(id, origin, day)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let keys = |sql: &str| {
            let ctx = ctx.clone();
            let sql = sql.to_string();
            async move { key_columns(ctx.sql(&sql).await.unwrap().logical_plan()) }
        };
        assert_eq!(
            keys("SELECT day AS d, origin, COUNT(*) AS n FROM f GROUP BY day, origin ORDER BY 1")
                .await,
            Some(vec!["d".to_string(), "origin".to_string()])
        );
        // A key not output as it is: no columns to check.
        assert_eq!(
            keys("SELECT origin, COUNT(*) FROM f GROUP BY day, origin").await,
            None
        );
        assert_eq!(keys("SELECT COUNT(*) FROM f").await, None);
    }
}
