//! Filters pushed into the SQL a database source sends, so the database returns only the
//! rows the query keeps. A filter is rendered only where the database's answer is certainly
//! the same as DataFusion's: comparisons of a column with a literal of an exact type
//! (integers, decimals, dates, booleans; text for equality only, since text order depends on
//! the database's collation), `IS [NOT] NULL`, `IN` lists, and `AND` / `OR` / `NOT` of
//! those; on PostgreSQL also timestamps, as instants of whole microseconds (a `timestamptz`
//! column with a literal of a time zone, a `timestamp` column with one of none). Anything
//! else (floats, functions, casts) stays with DataFusion. Even a
//! pushed filter is applied again by DataFusion after the scan (`Inexact`): the database
//! only narrows what is read.
//!
//! Text is compared byte by byte, as sluice compares it: PostgreSQL `"c" COLLATE "C"`,
//! MySQL `CAST(`c` AS BINARY)` (MySQL's default collations ignore case and trailing
//! spaces: `'abc' = 'ABC '` is true there).

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::config::DatabaseKind;

/// Whose SQL a filter is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB (under the session's SQL mode, which sluice sets: backslashes
    /// escape in string literals, double quotes quote strings).
    Mysql,
}

impl Dialect {
    /// The dialect of a kind of database.
    pub(crate) fn of(kind: DatabaseKind) -> Dialect {
        match kind {
            DatabaseKind::Postgres => Dialect::Postgres,
            DatabaseKind::Mysql => Dialect::Mysql,
        }
    }

    /// The FROM item of a relation: a table name quoted part by part, or a query as a
    /// derived table.
    pub(crate) fn relation_sql(self, relation: &crate::config::Relation) -> String {
        use crate::config::Relation;
        match relation {
            Relation::Table(t) => t
                .split('.')
                .map(|part| self.quote_ident(part))
                .collect::<Vec<_>>()
                .join("."),
            // (A newline before the parenthesis: the query may end in a `--` or `#` comment.)
            Relation::Query(q) => format!("({}\n) AS q", q.trim().trim_end_matches(';')),
        }
    }

    /// `name` as a quoted identifier.
    pub(crate) fn quote_ident(self, name: &str) -> String {
        match self {
            Dialect::Postgres => super::postgres::quote_ident(name),
            Dialect::Mysql => super::mysql::quote_ident(name),
        }
    }
}

/// The SQL of `expr` over a relation of `schema`, if it can be pushed exactly.
pub(crate) fn render(expr: &Expr, schema: &Schema, dialect: Dialect) -> Option<String> {
    let r = |e: &Expr| render(e, schema, dialect);
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => {
                let l = r(left)?;
                let r = r(right)?;
                let word = if *op == Operator::And { "AND" } else { "OR" };
                Some(format!("({l} {word} {r})"))
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => compare(left, *op, right, schema, dialect),
            _ => None,
        },
        Expr::Not(inner) => Some(format!("(NOT {})", r(inner)?)),
        // A boolean column as a predicate (DataFusion simplifies `ok = true` to `ok`).
        Expr::Column(_) => match column(expr, schema, dialect)? {
            (name, DataType::Boolean) => Some(format!("({name})")),
            _ => None,
        },
        Expr::IsNull(inner) => Some(format!(
            "({} IS NULL)",
            null_test_column(inner, schema, dialect)?
        )),
        Expr::IsNotNull(inner) => Some(format!(
            "({} IS NOT NULL)",
            null_test_column(inner, schema, dialect)?
        )),
        Expr::InList(list) => {
            let (col, ty) = column(&list.expr, schema, dialect)?;
            if list.list.is_empty() {
                return None;
            }
            let values: Option<Vec<String>> = list
                .list
                .iter()
                .map(|e| match e {
                    Expr::Literal(v, _) => literal(v, &ty, true, dialect),
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
fn compare(
    left: &Expr,
    op: Operator,
    right: &Expr,
    schema: &Schema,
    dialect: Dialect,
) -> Option<String> {
    let (col, value, op) = match (left, right) {
        (c, Expr::Literal(v, _)) => (c, v, op),
        (Expr::Literal(v, _), c) => (c, v, op.swap()?),
        _ => return None,
    };
    let (name, ty) = column(col, schema, dialect)?;
    let equality = matches!(op, Operator::Eq | Operator::NotEq);
    let value = literal(value, &ty, equality, dialect)?;
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

/// A plain column of the relation tested for NULL: its quoted name (any type).
fn null_test_column(e: &Expr, schema: &Schema, dialect: Dialect) -> Option<String> {
    let Expr::Column(c) = e else {
        return None;
    };
    schema.field_with_name(&c.name).ok()?;
    Some(dialect.quote_ident(&c.name))
}

/// A plain column of the relation compared with literals: its SQL and its type as far as
/// comparisons go (`Null`: compared with nothing). A text column counts as text only where
/// the database compares it as sluice does, byte by byte: PostgreSQL `text` and `varchar`
/// (`char(n)` compares ignoring its padding, `json` has no `=`) under `COLLATE "C"`; MySQL
/// `VARCHAR` and `TEXT` columns of a table in a UTF-8 character set, as `CAST(... AS
/// BINARY)` (the bytes of a UTF-8 column are the literal's; `CHAR` drops trailing spaces,
/// and a query's columns' character sets are not known). On MySQL, only the types whose
/// comparisons are plain are compared at all (a `YEAR` compared with `24` means 2024).
fn column(e: &Expr, schema: &Schema, dialect: Dialect) -> Option<(String, DataType)> {
    let Expr::Column(c) = e else {
        return None;
    };
    let field = schema.field_with_name(&c.name).ok()?;
    let ty = field.data_type().clone();
    let quoted = dialect.quote_ident(&c.name);
    let meta = |key: &str| field.metadata().get(key).map(String::as_str);
    match dialect {
        Dialect::Postgres => {
            if ty == DataType::Utf8 {
                if !matches!(meta(super::postgres::PG_TYPE), Some("text" | "varchar")) {
                    return Some((quoted, DataType::Null));
                }
                // Compared byte by byte, as sluice does: under a case-insensitive collation
                // 'ABC' <> 'abc' is false in the database.
                return Some((format!("{quoted} COLLATE \"C\""), ty));
            }
            Some((quoted, ty))
        }
        Dialect::Mysql => {
            let my = meta(super::mysql::MY_TYPE).unwrap_or("");
            match my {
                "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "decimal"
                | "numeric" | "date" | "datetime" | "timestamp" => Some((quoted, ty)),
                "varchar" | "tinytext" | "text" | "mediumtext" | "longtext"
                    if ty == DataType::Utf8
                        && meta(super::mysql::MY_CHARSET)
                            .is_some_and(|c| c.starts_with("utf8")) =>
                {
                    Some((format!("CAST({quoted} AS BINARY)"), ty))
                }
                _ => Some((quoted, DataType::Null)),
            }
        }
    }
}

/// `v` as a SQL literal compared with a column of type `ty`, if the comparison means the
/// same in the database (`equality`: only `=` / `<>` / `IN`, where text may be compared).
pub(crate) fn literal(
    v: &ScalarValue,
    ty: &DataType,
    equality: bool,
    dialect: Dialect,
) -> Option<String> {
    let int = |i: i128| Some(i.to_string());
    match (ty, v) {
        (_, v) if v.is_null() => None,
        (
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64,
            v,
        ) => match v {
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
        (DataType::Timestamp(_, column_tz), v) => {
            timestamp_literal(v, column_tz.is_some(), dialect)
        }
        (DataType::Utf8, ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)))
            if equality && !s.contains('\0') =>
        {
            let escaped = s.replace('\\', "\\\\").replace('\'', "''");
            Some(match dialect {
                // An escape string: means the same whatever standard_conforming_strings says.
                Dialect::Postgres => format!("E'{escaped}'"),
                // Backslashes escape under the SQL mode sluice's sessions set (without
                // NO_BACKSLASH_ESCAPES).
                Dialect::Mysql => format!("'{escaped}'"),
            })
        }
        _ => None,
    }
}

/// A timestamp literal: on PostgreSQL `TIMESTAMPTZ '2024-01-02 03:04:05.000001+00'` for an
/// instant (`zoned`: the column is a `timestamptz`, and the literal must have a time zone
/// too), `TIMESTAMP '...'` for a local date-time. Only whole microseconds of years 1-9999:
/// both databases keep microseconds, and a value cut to them would move a bound. On MySQL
/// `TIMESTAMP '...'` for both a DATETIME (local) and a TIMESTAMP column (an instant, read in
/// the session's time zone, UTC), the latter only within the years a TIMESTAMP holds
/// (1970-2037), where the comparison is certainly one of instants.
fn timestamp_literal(v: &ScalarValue, zoned: bool, dialect: Dialect) -> Option<String> {
    let (micros, tz) = match v {
        ScalarValue::TimestampSecond(Some(s), tz) => (s.checked_mul(1_000_000)?, tz),
        ScalarValue::TimestampMillisecond(Some(ms), tz) => (ms.checked_mul(1000)?, tz),
        ScalarValue::TimestampMicrosecond(Some(us), tz) => (*us, tz),
        ScalarValue::TimestampNanosecond(Some(ns), tz) if ns % 1000 == 0 => (ns / 1000, tz),
        _ => return None,
    };
    if tz.is_some() != zoned {
        return None;
    }
    use chrono::Datelike;
    let at = chrono::DateTime::from_timestamp_micros(micros)?.naive_utc();
    if !(1..=9999).contains(&at.year()) {
        return None;
    }
    let text = at.format("%Y-%m-%d %H:%M:%S%.6f");
    Some(match dialect {
        Dialect::Postgres if zoned => format!("TIMESTAMPTZ '{text}+00'"),
        Dialect::Mysql if zoned && !(1970..=2037).contains(&at.year()) => return None,
        _ => format!("TIMESTAMP '{text}'"),
    })
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
        let r = |e: Expr| render(&e, &s, Dialect::Postgres);
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

    #[test]
    fn timestamps_are_pushed_as_whole_microseconds_of_the_right_kind() {
        let utc = Some(std::sync::Arc::from("UTC"));
        assert_eq!(
            timestamp_literal(
                &ScalarValue::TimestampNanosecond(Some(1_000), utc.clone()),
                true,
                Dialect::Postgres
            )
            .as_deref(),
            Some("TIMESTAMPTZ '1970-01-01 00:00:00.000001+00'")
        );
        assert_eq!(
            timestamp_literal(
                &ScalarValue::TimestampMicrosecond(Some(-1), None),
                false,
                Dialect::Postgres
            )
            .as_deref(),
            Some("TIMESTAMP '1969-12-31 23:59:59.999999'")
        );
        // A bound between two microseconds would move when cut to them.
        assert_eq!(
            timestamp_literal(
                &ScalarValue::TimestampNanosecond(Some(1_500), utc.clone()),
                true,
                Dialect::Postgres
            ),
            None
        );
        // An instant against a local date-time (and the other way round) is not the same
        // comparison in PostgreSQL.
        assert_eq!(
            timestamp_literal(
                &ScalarValue::TimestampSecond(Some(0), utc.clone()),
                false,
                Dialect::Postgres
            ),
            None
        );
        assert_eq!(
            timestamp_literal(
                &ScalarValue::TimestampSecond(Some(0), None),
                true,
                Dialect::Postgres
            ),
            None
        );
        // MySQL: one literal for both kinds (the session is in UTC); an instant only within
        // the years a TIMESTAMP column holds.
        let my = |v: ScalarValue, zoned| timestamp_literal(&v, zoned, Dialect::Mysql);
        assert_eq!(
            my(
                ScalarValue::TimestampSecond(Some(86_400), utc.clone()),
                true
            )
            .as_deref(),
            Some("TIMESTAMP '1970-01-02 00:00:00.000000'")
        );
        assert_eq!(
            my(ScalarValue::TimestampSecond(Some(-1), None), false).as_deref(),
            Some("TIMESTAMP '1969-12-31 23:59:59.000000'")
        );
        assert_eq!(
            my(ScalarValue::TimestampSecond(Some(-1), utc.clone()), true),
            None
        );
        assert_eq!(
            my(ScalarValue::TimestampSecond(Some(2_200_000_000), utc), true),
            None
        );
    }
}
