//! Data-quality checks that gate a model's publish (write, audit, publish).
//!
//! A model's checks run on its staged output, after every unit has written and before the
//! output is published: a failed `error` check fails the model, so the previous output stays
//! in place and downstream models are skipped; a failed `warn` check is reported and the
//! output is published. Each check is one SQL query over the output that counts the rows
//! (or keys) breaking it.

use datafusion::prelude::SessionContext;
use serde::Serialize;

use crate::config::{Check, CheckKind, Severity};
use crate::describe::describe_datafusion;
use crate::status::CheckStatus;

/// A column name quoted for SQL (`"My Col"`), so any name works.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

// The running half of a check; the type itself is configuration, defined in `config`.
impl Check {
    /// The query counting what breaks the check in `table` (one row, one column `n`).
    fn query(&self, table: &str) -> String {
        let t = ident(table);
        match &self.kind {
            CheckKind::NotNull(cols) => {
                let cond: Vec<String> = cols
                    .iter()
                    .map(|c| format!("{} IS NULL", ident(c)))
                    .collect();
                format!("SELECT COUNT(*) AS n FROM {t} WHERE {}", cond.join(" OR "))
            }
            CheckKind::Unique(cols) => {
                let cols: Vec<String> = cols.iter().map(|c| ident(c)).collect();
                let cols = cols.join(", ");
                format!(
                    "SELECT COALESCE(SUM(c), 0) AS n FROM \
                     (SELECT COUNT(*) AS c FROM {t} GROUP BY {cols} HAVING COUNT(*) > 1)"
                )
            }
            CheckKind::AcceptedValues { column, values } => format!(
                "SELECT COUNT(*) AS n FROM {t} WHERE {c} IS NOT NULL AND {c} NOT IN ({})",
                values.join(", "),
                c = ident(column)
            ),
            CheckKind::RowCount { .. } => format!("SELECT COUNT(*) AS n FROM {t}"),
            CheckKind::Expression(e) => {
                format!("SELECT COUNT(*) AS n FROM {t} WHERE NOT COALESCE(({e}), FALSE)")
            }
            CheckKind::Sql(q) => format!("SELECT COUNT(*) AS n FROM ({q})"),
            // Not a query (see `run`).
            CheckKind::LateRate { .. } => "SELECT 0 AS n".to_string(),
        }
    }

    /// Whether `count` (the query's answer) means the check passed, and what failed.
    fn verdict(&self, count: u64) -> Option<String> {
        match &self.kind {
            CheckKind::RowCount { min, max } => {
                if min.is_some_and(|m| count < m) || max.is_some_and(|m| count > m) {
                    Some(format!("{count} rows"))
                } else {
                    None
                }
            }
            CheckKind::Unique(_) => (count > 0).then(|| format!("{count} rows share a key")),
            CheckKind::Sql(_) => (count > 0).then(|| format!("the query returned {count} rows")),
            _ => (count > 0).then(|| format!("{count} rows")),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name, e.g. `not_null(order_date)`.
    pub check: String,
    /// `error` or `warn`.
    pub severity: String,
    /// `pass`, `fail` (an error check failed), `warn` (a warn check failed) or `error` (the
    /// check itself could not run: bad SQL, unknown column).
    pub status: CheckStatus,
    /// Rows breaking it (for `row_count`: the row count; for `unique`: rows sharing a key).
    pub failing_rows: u64,
    /// What failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl CheckResult {
    /// Whether this result stops the publish.
    pub fn blocks(&self) -> bool {
        matches!(self.status, CheckStatus::Fail | CheckStatus::Error)
    }
}

/// The late rows and all rows an incremental model counted in a run, for `late_rate`
/// checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LateRows {
    /// Rows late, inside the window or beyond it.
    pub(crate) late: u64,
    /// Rows counted: on time and late.
    pub(crate) total: u64,
}

/// A `late_rate` check's result: the run's rate against the check's maximum.
fn late_rate(check: &Check, max: f64, late: Option<LateRows>) -> CheckResult {
    let (status, failing_rows, message) = match late {
        None => (
            CheckStatus::Error,
            0,
            Some(
                "the check cannot run: no late-arrival counts (no incremental run recorded)".into(),
            ),
        ),
        Some(LateRows { late, total }) => {
            let rate = if total == 0 {
                0.0
            } else {
                late as f64 / total as f64
            };
            if rate <= max {
                (CheckStatus::Pass, 0, None)
            } else {
                let status = match check.severity {
                    Severity::Error => CheckStatus::Fail,
                    Severity::Warn => CheckStatus::Warn,
                };
                let message = format!(
                    "late-arrival rate {:.2}% ({late} of {total} rows) is over the maximum {:.2}%",
                    100.0 * rate,
                    100.0 * max
                );
                (status, late, Some(message))
            }
        }
    };
    CheckResult {
        check: check.name(),
        severity: check.severity.name().into(),
        status,
        failing_rows,
        message,
    }
}

/// Runs `checks` against `table` in `ctx`; `late_rate` checks against `late`, the rows an
/// incremental model counted in the run (`None`: not known).
pub(crate) async fn run(
    ctx: &SessionContext,
    table: &str,
    checks: &[Check],
    late: Option<LateRows>,
) -> Vec<CheckResult> {
    let mut out = Vec::with_capacity(checks.len());
    for check in checks {
        if let CheckKind::LateRate { max } = check.kind {
            out.push(late_rate(check, max, late));
            continue;
        }
        let counted = async {
            let batches = ctx.sql(&check.query(table)).await?.collect().await?;
            let n = batches
                .first()
                .filter(|b| b.num_rows() > 0)
                .and_then(|b| {
                    datafusion::arrow::compute::cast(
                        b.column(0),
                        &datafusion::arrow::datatypes::DataType::UInt64,
                    )
                    .ok()
                })
                .and_then(|a| {
                    a.as_any()
                        .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                        .map(|a| a.value(0))
                })
                .unwrap_or(0);
            Ok::<u64, datafusion::error::DataFusionError>(n)
        }
        .await;
        let result = match counted {
            Err(e) => CheckResult {
                check: check.name(),
                severity: check.severity.name().into(),
                status: CheckStatus::Error,
                failing_rows: 0,
                message: Some(format!("the check cannot run: {}", describe_datafusion(&e))),
            },
            Ok(n) => match check.verdict(n) {
                None => CheckResult {
                    check: check.name(),
                    severity: check.severity.name().into(),
                    status: CheckStatus::Pass,
                    failing_rows: 0,
                    message: None,
                },
                Some(what) => CheckResult {
                    check: check.name(),
                    severity: check.severity.name().into(),
                    status: match check.severity {
                        Severity::Error => CheckStatus::Fail,
                        Severity::Warn => CheckStatus::Warn,
                    },
                    failing_rows: n,
                    message: Some(what),
                },
            },
        };
        out.push(result);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_kind_passes_and_fails_on_known_data() {
        let ctx = SessionContext::new();
        ctx.sql(
            "CREATE VIEW t AS SELECT * FROM (VALUES (1, 'a', 10), (2, 'b', NULL), (2, 'z', 30)) \
             AS v(id, status, amount)",
        )
        .await
        .unwrap();
        let check = |kind| Check {
            kind,
            severity: Severity::Error,
        };
        let cases = [
            (check(CheckKind::NotNull(vec!["id".into()])), "pass", 0),
            (
                check(CheckKind::NotNull(vec!["id".into(), "amount".into()])),
                "fail",
                1,
            ),
            (check(CheckKind::Unique(vec!["status".into()])), "pass", 0),
            (check(CheckKind::Unique(vec!["id".into()])), "fail", 2),
            (
                check(CheckKind::Unique(vec!["id".into(), "status".into()])),
                "pass",
                0,
            ),
            (
                check(CheckKind::AcceptedValues {
                    column: "status".into(),
                    values: vec!["'a'".into(), "'b'".into()],
                }),
                "fail",
                1,
            ),
            (
                check(CheckKind::RowCount {
                    min: Some(1),
                    max: Some(3),
                }),
                "pass",
                0,
            ),
            (
                check(CheckKind::RowCount {
                    min: Some(4),
                    max: None,
                }),
                "fail",
                3,
            ),
            (check(CheckKind::Expression("amount > 5".into())), "fail", 1),
            (check(CheckKind::Expression("id > 0".into())), "pass", 0),
            (
                check(CheckKind::Sql("SELECT * FROM t WHERE amount > 20".into())),
                "fail",
                1,
            ),
            (
                check(CheckKind::Expression("no_such_column > 0".into())),
                "error",
                0,
            ),
        ];
        for (c, status, rows) in cases {
            let r = run(&ctx, "t", std::slice::from_ref(&c), None)
                .await
                .remove(0);
            assert_eq!(r.status.as_str(), status, "{}: {r:?}", c.name());
            assert_eq!(r.failing_rows, rows, "{}", c.name());
        }
        let warn = Check {
            kind: CheckKind::NotNull(vec!["amount".into()]),
            severity: Severity::Warn,
        };
        let r = run(&ctx, "t", &[warn], None).await.remove(0);
        assert_eq!(r.status, CheckStatus::Warn);
        assert!(!r.blocks());
    }
}
