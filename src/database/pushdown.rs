//! Filters pushed into the SQL a database source sends, so the database returns only the
//! rows the query keeps. A filter is rendered only where the database's answer is certainly
//! the same as DataFusion's: comparisons of a column with a literal of an exact type
//! (integers, decimals, dates, booleans; text for equality only, since text order depends on
//! the database's collation), `IS [NOT] NULL`, `IN` lists, and `AND` / `OR` / `NOT` of
//! those. Anything else (floats, timestamps, functions, casts) stays with DataFusion. Even a
//! pushed filter is applied again by DataFusion after the scan (`Inexact`): the database
//! only narrows what is read.

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use super::postgres::quote_ident;

/// The SQL of `expr` over a relation of `schema`, if it can be pushed exactly.
pub(crate) fn render(expr: &Expr, schema: &Schema) -> Option<String> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                let l = render(left, schema)?;
                let r = render(right, schema)?;
                let word = if *op == Operator::And { "AND" } else { "OR" };
                Some(format!("({l} {word} {r})"))
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => compare(left, *op, right, schema),
            _ => None,
        },
        Expr::Not(inner) => Some(format!("(NOT {})", render(inner, schema)?)),
        // A boolean column as a predicate (DataFusion simplifies `ok = true` to `ok`).
        Expr::Column(_) => match column(expr, schema)? {
            (name, DataType::Boolean) => Some(format!("({name})")),
            _ => None,
        },
        Expr::IsNull(inner) => Some(format!("({} IS NULL)", column(inner, schema)?.0)),
        Expr::IsNotNull(inner) => Some(format!("({} IS NOT NULL)", column(inner, schema)?.0)),
        Expr::InList(list) => {
            let (col, ty) = column(&list.expr, schema)?;
            if list.list.is_empty() {
                return None;
            }
            let values: Option<Vec<String>> = list
                .list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => literal(v, &ty, true),
                    _ => None,
                })
                .collect();
            let not = if list.negated { "NOT " } else { "" };
            Some(format!("({col} {not}IN ({}))", values?.join(", ")))
        }
        _ => None,
    }
}

/// `column op literal` (either side), rendered.
fn compare(left: &Expr, op: Operator, right: &Expr, schema: &Schema) -> Option<String> {
    let (col, value, op) = match (left, right) {
        (c, Expr::Literal(v, _)) => (c, v, op),
        (Expr::Literal(v, _), c) => (c, v, op.swap()?),
        _ => return None,
    };
    let (name, ty) = column(col, schema)?;
    let equality = matches!(op, Operator::Eq | Operator::NotEq);
    let value = literal(value, &ty, equality)?;
    let sign = match op {
        Operator::Eq => "=",
        Operator::NotEq => "<>",
        Operator::Lt => "<",
        Operator::LtEq => "<=",
        Operator::Gt => ">",
        Operator::GtEq => ">=",
        _ => return None,
    };
    Some(format!("({name} {sign} {value})"))
}

/// A plain column of the relation: its quoted name and type. A text column counts as text
/// only if the database's type is `text` or `varchar` (as [`super::postgres::PG_TYPE`]
/// says): `char(n)` compares ignoring its padding and `json` has no `=`, so filters on them
/// stay with sluice.
fn column(e: &Expr, schema: &Schema) -> Option<(String, DataType)> {
    let Expr::Column(c) = e else {
        return None;
    };
    let field = schema.field_with_name(&c.name).ok()?;
    let ty = field.data_type().clone();
    if ty == DataType::Utf8 {
        let pg = field
            .metadata()
            .get(super::postgres::PG_TYPE)
            .map(String::as_str);
        if !matches!(pg, Some("text" | "varchar")) {
            return Some((quote_ident(&c.name), DataType::Null));
        }
        // Compared byte by byte, as sluice does: under a case-insensitive collation
        // 'ABC' <> 'abc' is false in the database.
        return Some((format!("{} COLLATE \"C\"", quote_ident(&c.name)), ty));
    }
    Some((quote_ident(&c.name), ty))
}

/// `v` as a SQL literal compared with a column of type `ty`, if the comparison means the
/// same in the database (`equality`: only `=` / `<>` / `IN`, where text may be compared).
fn literal(v: &ScalarValue, ty: &DataType, equality: bool) -> Option<String> {
    let int = |i: i128| Some(i.to_string());
    match (ty, v) {
        (_, v) if v.is_null() => None,
        (DataType::Int16 | DataType::Int32 | DataType::Int64, v) => match v {
            ScalarValue::Int8(Some(i)) => int(i128::from(*i)),
            ScalarValue::Int16(Some(i)) => int(i128::from(*i)),
            ScalarValue::Int32(Some(i)) => int(i128::from(*i)),
            ScalarValue::Int64(Some(i)) => int(i128::from(*i)),
            ScalarValue::UInt8(Some(i)) => int(i128::from(*i)),
            ScalarValue::UInt16(Some(i)) => int(i128::from(*i)),
            ScalarValue::UInt32(Some(i)) => int(i128::from(*i)),
            ScalarValue::UInt64(Some(i)) => int(i128::from(*i)),
            _ => None,
        },
        (DataType::Decimal128(..), ScalarValue::Decimal128(Some(x), _, s)) => {
            Some(decimal_text(*x, *s))
        }
        (DataType::Boolean, ScalarValue::Boolean(Some(b))) => {
            Some(if *b { "TRUE" } else { "FALSE" }.to_string())
        }
        (DataType::Date32, ScalarValue::Date32(Some(days))) => {
            use chrono::Datelike;
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
            let date = epoch.checked_add_signed(chrono::Duration::days(i64::from(*days)))?;
            // (Years PostgreSQL writes as chrono does.)
            (1..=9999)
                .contains(&date.year())
                .then(|| format!("DATE '{}'", date.format("%Y-%m-%d")))
        }
        (DataType::Utf8, ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)))
            if equality && !s.contains('\0') =>
        {
            // An escape string: means the same whatever standard_conforming_strings says.
            Some(format!(
                "E'{}'",
                s.replace('\\', "\\\\").replace('\'', "''")
            ))
        }
        _ => None,
    }
}

/// The decimal with unscaled value `x` and scale `s`, as exact text (`-12.50`).
fn decimal_text(x: i128, s: i8) -> String {
    if s <= 0 {
        return format!("{x}{}", "0".repeat(s.unsigned_abs() as usize));
    }
    let digits = x.unsigned_abs().to_string();
    let s = s as usize;
    let padded = format!("{digits:0>width$}", width = s + 1);
    let (int, frac) = padded.split_at(padded.len() - s);
    format!("{}{int}.{frac}", if x < 0 { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;
    use datafusion::prelude::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true).with_metadata(
                [(
                    super::super::postgres::PG_TYPE.to_string(),
                    "text".to_string(),
                )]
                .into(),
            ),
            Field::new("code", DataType::Utf8, true).with_metadata(
                [(
                    super::super::postgres::PG_TYPE.to_string(),
                    "bpchar".to_string(),
                )]
                .into(),
            ),
            Field::new("day", DataType::Date32, true),
            Field::new("price", DataType::Decimal128(12, 3), true),
            Field::new("ratio", DataType::Float64, true),
            Field::new("ok", DataType::Boolean, true),
        ])
    }

    #[test]
    fn exact_filters_are_rendered_and_others_are_not() {
        let s = schema();
        let r = |e: Expr| render(&e, &s);
        assert_eq!(
            r(col("id").gt_eq(lit(5i64))).as_deref(),
            Some("(\"id\" >= 5)")
        );
        assert_eq!(r(lit(5i64).lt(col("id"))).as_deref(), Some("(\"id\" > 5)"));
        assert_eq!(
            r(col("name").eq(lit("o'neil\\x"))).as_deref(),
            Some("(\"name\" COLLATE \"C\" = E'o''neil\\\\x')")
        );
        // char(n) compares without its padding: not pushed.
        assert_eq!(r(col("code").eq(lit("x"))), None);
        assert_eq!(
            r(col("code").is_null()).as_deref(),
            Some("(\"code\" IS NULL)")
        );
        // Text order is the database's collation's: not pushed.
        assert_eq!(r(col("name").lt(lit("m"))), None);
        assert_eq!(r(col("ratio").gt(lit(0.5f64))), None);
        assert_eq!(
            r(col("price").lt(lit(ScalarValue::Decimal128(Some(-12050), 12, 3)))).as_deref(),
            Some("(\"price\" < -12.050)")
        );
        assert_eq!(
            r(col("day").eq(lit(ScalarValue::Date32(Some(19_723))))).as_deref(),
            Some("(\"day\" = DATE '2024-01-01')")
        );
        assert_eq!(
            r(col("id").in_list(vec![lit(1i64), lit(2i64)], true)).as_deref(),
            Some("(\"id\" NOT IN (1, 2))")
        );
        assert_eq!(
            r(col("ok")
                .is_null()
                .or(col("id").eq(lit(1i64)).and(col("ok").eq(lit(true)))))
            .as_deref(),
            Some("((\"ok\" IS NULL) OR ((\"id\" = 1) AND (\"ok\" = TRUE)))")
        );
        // Half of an AND that cannot be pushed: nothing (DataFusion splits conjunctions
        // into separate filters before asking, so each half is asked on its own).
        assert_eq!(
            r(col("id").eq(lit(1i64)).and(col("ratio").gt(lit(1.0f64)))),
            None
        );
        assert_eq!(r(col("id").eq(lit(ScalarValue::Int64(None)))), None);
        assert_eq!(r(!col("ok")).as_deref(), Some("(NOT (\"ok\"))"));
        assert_eq!(r(col("id")), None);
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(-123456, 2), "-1234.56");
        assert_eq!(decimal_text(7, 0), "7");
    }
}
