//! The SQL context one work unit runs in: the engine's tables, with each input the unit reads
//! a slice of replaced by a view of that slice — filtered to its event-time range, restricted
//! to its files, or to its bucket of join keys — and the model's views planned again over
//! them. Also the event-time queries that plan and describe units.

use std::collections::BTreeMap;

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};

use super::unit::UnitError;
use crate::config::{BatchSize, Materialized, Pipeline};
use crate::dag::Dag;
use crate::describe::describe_datafusion;
use crate::quarantine::QuarantineTable;
use crate::store::{Location, StoreRegistry};
use crate::table::view::ManifestStore;
use crate::units::{Unit, UnitKind, period_name};

/// A literal for `t` of the event-time column's type, so the comparison needs no cast of the
/// column (which would defeat pruning).
fn bound(t: NaiveDateTime, ty: &DataType) -> Expr {
    let epoch = t.and_utc();
    let value = match ty {
        DataType::Date32 => {
            let days =
                (t.date() - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days();
            ScalarValue::Date32(Some(days as i32))
        }
        DataType::Date64 => ScalarValue::Date64(Some(epoch.timestamp_millis())),
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => epoch.timestamp(),
                TimeUnit::Millisecond => epoch.timestamp_millis(),
                TimeUnit::Microsecond => epoch.timestamp_micros(),
                TimeUnit::Nanosecond => epoch.timestamp_nanos_opt().unwrap_or(i64::MAX),
            };
            match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(Some(v), tz.clone()),
                TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(v), tz.clone()),
                TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(v), tz.clone()),
                TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(v), tz.clone()),
            }
        }
        // Other types are cast to timestamps by the caller; a string is a last resort.
        _ => ScalarValue::Utf8(Some(t.format("%Y-%m-%d %H:%M:%S").to_string())),
    };
    lit(value)
}

/// The earliest and latest event time over the given sources (`None` when they hold no
/// rows), each value read as the instant it names (text with a UTC offset included), not
/// compared as text. A row whose event time is NULL or not a timestamp would be in no unit:
/// that is an error naming the source, the count and an example, never a silent loss.
pub async fn event_range(
    ctx: &SessionContext,
    sources: &[(String, String)],
) -> Result<Option<(NaiveDateTime, NaiveDateTime)>, String> {
    let mut lo: Option<NaiveDateTime> = None;
    let mut hi: Option<NaiveDateTime> = None;
    for (table, column) in sources {
        let sql = format!(
            "SELECT MIN(t) AS lo, MAX(t) AS hi, COUNT(*) - COUNT(t) AS untimed, \
                    MIN(CASE WHEN t IS NULL THEN CAST(raw AS VARCHAR) END) AS example \
             FROM (SELECT TRY_CAST(\"{column}\" AS TIMESTAMP) AS t, \"{column}\" AS raw FROM \"{table}\")"
        );
        let batches = ctx
            .sql(&sql)
            .await
            .map_err(|e| {
                format!(
                    "source '{table}': event_time '{column}': {}",
                    describe_datafusion(&e)
                )
            })?
            .collect()
            .await
            .map_err(|e| format!("source '{table}': {}", describe_datafusion(&e)))?;
        let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
            continue;
        };
        let value =
            |i: usize| ScalarValue::try_from_array(b.column(i), 0).map_err(|e| e.to_string());
        let untimed = match value(2)? {
            ScalarValue::Int64(Some(n)) => n,
            _ => 0,
        };
        if untimed > 0 {
            let example = match value(3)? {
                ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
                    format!("not a timestamp, e.g. {s:?}")
                }
                _ => "NULL".to_string(),
            };
            return Err(format!(
                "source '{table}': {untimed} rows have no event time in '{column}' ({example}): \
                 they would be in no work unit"
            ));
        }
        for (i, slot) in [(0, &mut lo), (1, &mut hi)] {
            if let ScalarValue::TimestampNanosecond(Some(ns), _) = value(i)? {
                let t = chrono::DateTime::from_timestamp_nanos(ns).naive_utc();
                *slot = Some(match (i, *slot) {
                    (0, Some(x)) => x.min(t),
                    (_, Some(x)) => x.max(t),
                    (_, None) => t,
                });
            }
        }
    }
    Ok(lo.zip(hi))
}

/// Rows per period (by period name) over the given sources' event-time columns.
pub async fn rows_per_period(
    ctx: &SessionContext,
    sources: &[(String, String)],
    size: BatchSize,
) -> Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for (table, column) in sources {
        let sql = format!(
            "SELECT date_trunc('{}', CAST(\"{column}\" AS TIMESTAMP)) AS p, COUNT(*) AS n FROM \"{table}\" GROUP BY 1",
            size.name()
        );
        let batches = ctx
            .sql(&sql)
            .await
            .map_err(|e| describe_datafusion(&e))?
            .collect()
            .await
            .map_err(|e| describe_datafusion(&e))?;
        for b in &batches {
            for i in 0..b.num_rows() {
                let p = ScalarValue::try_from_array(b.column(0), i).map_err(|e| e.to_string())?;
                let n = ScalarValue::try_from_array(b.column(1), i).map_err(|e| e.to_string())?;
                if let (
                    ScalarValue::TimestampNanosecond(Some(ns), _),
                    ScalarValue::Int64(Some(n)),
                ) = (p, n)
                {
                    let t = chrono::DateTime::from_timestamp_nanos(ns).naive_utc();
                    *out.entry(period_name(size, t)).or_insert(0) += n as u64;
                }
            }
        }
    }
    Ok(out)
}

/// Distinguishes the URLs of per-unit file views.
static FILE_VIEWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A session for one unit: the engine's runtime (memory pool, stores) and tables, with the
/// inputs the unit reads a slice of replaced by views of that slice, and the model's views
/// planned again over them. The whole-model unit runs in the engine's own session.
pub async fn unit_context(
    main: &SessionContext,
    stores: &StoreRegistry,
    pipeline: &Pipeline,
    dag: &Dag,
    model: &str,
    sources: &[(String, String)],
    unit: &Unit,
) -> Result<SessionContext, UnitError> {
    if unit.kind == UnitKind::Whole {
        return Ok(main.clone());
    }
    let ctx = crate::engine::sibling_context(main);
    if let Some(schema) = main.catalog("datafusion").and_then(|c| c.schema("public")) {
        for name in schema.table_names() {
            if let Some(t) = schema.table(&name).await.map_err(err)? {
                ctx.register_table(name.as_str(), t).map_err(err)?;
            }
        }
    }
    match &unit.kind {
        UnitKind::Whole => {}
        UnitKind::Files { source, files } => {
            restrict_to_files(&ctx, stores, pipeline, source, files).await?;
        }
        UnitKind::Period { start, end } => {
            for (table, column) in sources {
                filter_to_period(&ctx, main, table, column, *start, *end).await?;
            }
        }
        UnitKind::KeyBucket { bucket, buckets } => {
            if let Some(kb) = &pipeline.models[model].key_buckets {
                let udf = crate::engine::udf::key_bucket(*buckets);
                for (table, column) in &kb.keys {
                    filter_to_bucket(&ctx, &udf, table, column, *bucket).await?;
                }
            }
        }
    }
    // The views the model inlines, in dependency order, over the filtered sources.
    let upstream = dag.upstream(model);
    for name in &dag.order {
        if upstream.contains(name) && pipeline.models[name].materialized == Materialized::View {
            let df = ctx.sql(&dag.nodes[name].sql).await.map_err(err)?;
            replace_table(&ctx, name, df)?;
        }
    }
    Ok(ctx)
}

fn err(e: DataFusionError) -> UnitError {
    UnitError::query(&e)
}

/// Registers `df` as `name` in place of the table of that name.
fn replace_table(ctx: &SessionContext, name: &str, df: DataFrame) -> Result<(), UnitError> {
    ctx.deregister_table(name).map_err(err)?;
    ctx.register_table(name, df.into_view()).map_err(err)?;
    Ok(())
}

/// The input source over exactly this unit's files: a view of its store that holds them,
/// under a URL of its own, read with the source's own options and partitions.
async fn restrict_to_files(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    pipeline: &Pipeline,
    source: &str,
    files: &[object_store::ObjectMeta],
) -> Result<(), UnitError> {
    let spec = pipeline
        .sources
        .get(source)
        .ok_or_else(|| UnitError::permanent(format!("unknown source '{source}'")))?;
    let provider = ctx.table_provider(source).await.map_err(err)?;
    if let Some(table) = provider.downcast_ref::<QuarantineTable>() {
        // The same table over these files, with a sink of its own for their rejects.
        let subset = std::sync::Arc::new(table.subset(files.to_vec()));
        ctx.deregister_table(source).map_err(err)?;
        ctx.register_table(source, subset).map_err(err)?;
        return Ok(());
    }
    let table_url = ListingTableUrl::parse(&spec.location).map_err(err)?;
    let location =
        Location::parse(table_url.as_str()).map_err(|e| UnitError::caused_by(&e, e.to_string()))?;
    let store = stores
        .store_for(&location)
        .map_err(|e| UnitError::caused_by(&e, e.to_string()))?;
    let n = FILE_VIEWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let view_url = format!(
        "sluice-files-{n}://{}/",
        location.store_url().host_str().unwrap_or("local")
    );
    let view = ManifestStore::new(
        store,
        files.iter().map(|m| (m.location.clone(), m.size)),
        chrono::Utc::now(),
    );
    let url = url::Url::parse(&view_url).map_err(|e| UnitError::permanent(e.to_string()))?;
    stores.insert(&url, std::sync::Arc::new(view));
    let prefix = table_url.prefix().as_ref();
    let mut unit_spec = spec.clone();
    unit_spec.location = if spec.location.ends_with('/') || prefix.is_empty() {
        format!("{view_url}{prefix}/")
    } else {
        // A single file or a glob: keep the pattern after the prefix.
        let tail = spec.location.rsplit_once('/').map_or("", |(_, t)| t);
        format!("{view_url}{prefix}/{tail}")
    };
    crate::catalog::register_table(ctx, stores, &unit_spec).await?;
    Ok(())
}

/// `table` (an event-time source of `main`) replaced in `ctx` by its rows whose `column` is in
/// `[start, end)`.
async fn filter_to_period(
    ctx: &SessionContext,
    main: &SessionContext,
    table: &str,
    column: &str,
    start: NaiveDateTime,
    end: NaiveDateTime,
) -> Result<(), UnitError> {
    let df = main.table(table).await.map_err(err)?;
    let mut ty = df
        .schema()
        .field_with_unqualified_name(column)
        .map(|f| f.data_type().clone())
        .map_err(|_| {
            UnitError::permanent(format!(
                "source '{table}' has no event_time column '{column}'"
            ))
        })?;
    let mut c = col(Column::from_name(column));
    if matches!(
        ty,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        // Text event times ("1992-01-01", "1992-01-01 06:00:00") compare as timestamps,
        // not as strings (where "1992-01-01" < "1992-01-01 00:00:00").
        ty = DataType::Timestamp(TimeUnit::Nanosecond, None);
        c = datafusion::prelude::cast(c, ty.clone());
    }
    let filtered = df
        .filter(
            c.clone()
                .gt_eq(bound(start, &ty))
                .and(c.lt(bound(end, &ty))),
        )
        .map_err(err)?;
    replace_table(ctx, table, filtered)
}

/// `table` replaced in `ctx` by its rows whose `column` hashes to `bucket`.
async fn filter_to_bucket(
    ctx: &SessionContext,
    udf: &ScalarUDF,
    table: &str,
    column: &str,
    bucket: usize,
) -> Result<(), UnitError> {
    let df = ctx.table(table).await.map_err(err)?;
    if df.schema().field_with_unqualified_name(column).is_err() {
        return Err(UnitError::permanent(format!(
            "batches.keys: source '{table}' has no column '{column}'"
        )));
    }
    let filtered = df
        .filter(
            udf.call(vec![col(Column::from_name(column))])
                .eq(lit(bucket as u64)),
        )
        .map_err(err)?;
    replace_table(ctx, table, filtered)
}
