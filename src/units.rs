//! Work units: how a model is split into batches of event time, and the SQL context in which
//! one batch runs.
//!
//! A batched model runs once per period (`hour`, `day`, `month`, `year`) of event time. In a
//! unit, every source that declares `event_time` is replaced by a view filtered to the
//! period's `[start, end)`; the filter reaches the scan (Parquet row-group statistics and Hive
//! partitions prune), so a unit reads only its slice. Sources without `event_time` and
//! upstream outputs are read whole; the views the model inlines are planned again over the
//! filtered sources.

use std::collections::BTreeSet;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Timelike};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::prelude::{Expr, SessionContext, col, lit};

use crate::config::{BatchSize, Materialized, Pipeline};
use crate::describe::describe_datafusion;
use crate::plan::Dag;

/// One work unit of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Position in the model's units (also its staging folder and file-name prefix).
    pub index: usize,
    /// The unit's name: its period (`1992-01`, `1992-01-31`, `1992-01-31T05`, `1992`), or
    /// `all` for an unbatched model.
    pub name: String,
    /// The event-time range `[start, end)`, or `None` for the whole input.
    pub range: Option<(NaiveDateTime, NaiveDateTime)>,
    /// For a unit by file: its input source and the files of it the unit reads.
    pub files: Option<(String, Vec<object_store::ObjectMeta>)>,
    /// For a unit by key: its bucket and the number of buckets.
    pub key_bucket: Option<(usize, usize)>,
}

/// The start of the period of `size` that contains `t`.
pub fn truncate(size: BatchSize, t: NaiveDateTime) -> NaiveDateTime {
    let d = t.date();
    let day = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).and_then(|d| d.and_hms_opt(0, 0, 0));
    match size {
        BatchSize::Hour => t.date().and_hms_opt(t.hour(), 0, 0),
        BatchSize::Day => day(d.year(), d.month(), d.day()),
        BatchSize::Month => day(d.year(), d.month(), 1),
        BatchSize::Year => day(d.year(), 1, 1),
    }
    .unwrap_or(t)
}

/// The start of the period after the one starting at `t`.
pub fn next(size: BatchSize, t: NaiveDateTime) -> NaiveDateTime {
    match size {
        BatchSize::Hour => t + Duration::hours(1),
        BatchSize::Day => t + Duration::days(1),
        BatchSize::Month => t
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(t + Duration::days(31)),
        BatchSize::Year => t
            .checked_add_months(chrono::Months::new(12))
            .unwrap_or(t + Duration::days(366)),
    }
}

/// The name of the period of `size` starting at `t`.
pub fn period_name(size: BatchSize, t: NaiveDateTime) -> String {
    match size {
        BatchSize::Hour => t.format("%Y-%m-%dT%H").to_string(),
        BatchSize::Day => t.format("%Y-%m-%d").to_string(),
        BatchSize::Month => t.format("%Y-%m").to_string(),
        BatchSize::Year => t.format("%Y").to_string(),
    }
}

/// The units covering `[start, end)`: the first starts at `start`'s period.
pub fn periods(size: BatchSize, start: NaiveDateTime, end: NaiveDateTime) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut t = truncate(size, start);
    while t < end {
        let n = next(size, t);
        out.push(Unit {
            index: out.len(),
            name: period_name(size, t),
            range: Some((t.max(start), n.min(end))),
            files: None,
            key_bucket: None,
        });
        t = n;
    }
    out
}

/// The `n` units of a model by key, named `key 03 of 16`.
pub fn by_key(n: usize) -> Vec<Unit> {
    let width = (n.max(2) - 1).to_string().len();
    (0..n)
        .map(|i| Unit {
            index: i,
            name: format!("key {i:0width$} of {n}"),
            range: None,
            files: None,
            key_bucket: Some((i, n)),
        })
        .collect()
}

/// `sluice_key_bucket(key)`: the bucket (0..n) of a key, by a hash that is the same in every
/// process, so that a resumed run's units hold the same keys. Integer keys hash as BIGINT and
/// text keys as VARCHAR, so `INT` and `BIGINT` (or `VARCHAR` and `VARCHAR VIEW`) keys of two
/// sources land in the same bucket.
#[derive(Debug, PartialEq, Eq, Hash)]
struct KeyBucket {
    n: u64,
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for KeyBucket {
    fn name(&self) -> &str {
        "sluice_key_bucket"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::UInt64)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::array::{Array, UInt64Array};
        use datafusion::arrow::compute::cast;
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let key = &arrays[0];
        let common = match key.data_type() {
            t if t.is_integer() => DataType::Int64,
            DataType::Utf8View | DataType::LargeUtf8 | DataType::Dictionary(_, _) => DataType::Utf8,
            t => t.clone(),
        };
        let key = cast(key, &common)?;
        let mut hashes = vec![0u64; key.len()];
        let state = datafusion::common::hash_utils::RandomState::with_seed(0x51ce_b0c4);
        datafusion::common::hash_utils::create_hashes([&key], &state, &mut hashes)?;
        let buckets: UInt64Array = hashes.iter().map(|h| Some((h >> 16) % self.n)).collect();
        Ok(datafusion::logical_expr::ColumnarValue::Array(
            std::sync::Arc::new(buckets),
        ))
    }
}

/// The single unit of an unbatched model.
pub fn whole() -> Vec<Unit> {
    vec![Unit {
        index: 0,
        name: "all".into(),
        range: None,
        files: None,
        key_bucket: None,
    }]
}

/// Units of `per_unit` files each over `files` of `source` (sorted by path), named after their
/// first file (relative to `prefix`).
pub fn by_files(
    source: &str,
    files: Vec<object_store::ObjectMeta>,
    per_unit: usize,
    prefix: &str,
) -> Vec<Unit> {
    files
        .chunks(per_unit.max(1))
        .enumerate()
        .map(|(index, chunk)| {
            let first = chunk[0].location.as_ref();
            let rel = first
                .strip_prefix(prefix)
                .unwrap_or(first)
                .trim_start_matches('/');
            let name = if chunk.len() == 1 {
                rel.to_string()
            } else {
                format!("{rel} (+{} files)", chunk.len() - 1)
            };
            Unit {
                index,
                name,
                range: None,
                files: Some((source.to_string(), chunk.to_vec())),
                key_bucket: None,
            }
        })
        .collect()
}

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

/// The event-time sources a model reads (directly or through the views it inlines), with
/// their event-time columns.
pub fn event_sources(pipeline: &Pipeline, sources: &BTreeSet<String>) -> Vec<(String, String)> {
    sources
        .iter()
        .filter_map(|s| {
            let src = pipeline.sources.get(s)?;
            src.event_time.clone().map(|et| (s.clone(), et))
        })
        .collect()
}

/// The earliest and latest event time over the given sources (`None` when they are empty).
pub async fn event_range(
    ctx: &SessionContext,
    sources: &[(String, String)],
) -> Result<Option<(NaiveDateTime, NaiveDateTime)>, String> {
    let mut lo: Option<NaiveDateTime> = None;
    let mut hi: Option<NaiveDateTime> = None;
    for (table, column) in sources {
        let sql = format!(
            "SELECT CAST(MIN(\"{column}\") AS TIMESTAMP) AS lo, CAST(MAX(\"{column}\") AS TIMESTAMP) AS hi FROM \"{table}\""
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
        for b in &batches {
            for (i, slot) in [(0, &mut lo), (1, &mut hi)] {
                let v = ScalarValue::try_from_array(b.column(i), 0).map_err(|e| e.to_string())?;
                if let ScalarValue::TimestampNanosecond(Some(ns), _) = v {
                    let t = chrono::DateTime::from_timestamp_nanos(ns).naive_utc();
                    *slot = Some(match (i, *slot) {
                        (0, Some(x)) => x.min(t),
                        (_, Some(x)) => x.max(t),
                        (_, None) => t,
                    });
                }
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
) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let mut out = std::collections::BTreeMap::new();
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

/// A session for one unit: the engine's runtime (memory pool, stores) and tables, with each
/// event-time source replaced by a view filtered to the unit's range and the model's views
/// planned again over them.
pub async fn unit_context(
    main: &SessionContext,
    stores: &crate::store::StoreRegistry,
    pipeline: &Pipeline,
    dag: &Dag,
    model: &str,
    sources: &[(String, String)],
    unit: &Unit,
) -> Result<SessionContext, String> {
    if unit.range.is_none() && unit.files.is_none() && unit.key_bucket.is_none() {
        return Ok(main.clone());
    }
    let ctx = crate::engine::sibling_context(main);
    let err = |e: datafusion::error::DataFusionError| describe_datafusion(&e);
    if let Some(schema) = main.catalog("datafusion").and_then(|c| c.schema("public")) {
        for name in schema.table_names() {
            if let Some(t) = schema.table(&name).await.map_err(err)? {
                ctx.register_table(name.as_str(), t).map_err(err)?;
            }
        }
    }
    if let Some((source, files)) = &unit.files {
        // The input source over exactly this unit's files: a view of its store that holds
        // them, under a URL of its own, read with the source's own options and partitions.
        let spec = pipeline
            .sources
            .get(source)
            .ok_or_else(|| format!("unknown source '{source}'"))?;
        let table_url =
            datafusion::datasource::listing::ListingTableUrl::parse(&spec.location).map_err(err)?;
        let location =
            crate::store::Location::parse(table_url.as_str()).map_err(|e| e.to_string())?;
        let store = stores.store_for(&location).map_err(|e| e.to_string())?;
        let n = FILE_VIEWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let view_url = format!(
            "sluice-files-{n}://{}/",
            location.store_url().host_str().unwrap_or("local")
        );
        let view = crate::table::view::ManifestStore::new(
            store,
            files.iter().map(|m| (m.location.clone(), m.size)),
            chrono::Utc::now(),
        );
        let url = url::Url::parse(&view_url).map_err(|e| e.to_string())?;
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
        crate::catalog::register_table(&ctx, stores, &unit_spec)
            .await
            .map_err(|e| e.to_string())?;
    }
    let range = unit.range.unwrap_or_default();
    let (start, end) = range;
    for (table, column) in sources.iter().filter(|_| unit.range.is_some()) {
        let df = main.table(table.as_str()).await.map_err(err)?;
        let ty = df
            .schema()
            .field_with_unqualified_name(column)
            .map(|f| f.data_type().clone())
            .map_err(|_| format!("source '{table}' has no event_time column '{column}'"))?;
        let mut c = col(datafusion::common::Column::from_name(column));
        let mut ty = ty;
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
        ctx.deregister_table(table.as_str()).map_err(err)?;
        ctx.register_table(table.as_str(), filtered.into_view())
            .map_err(err)?;
    }
    if let (Some((i, n)), Some(kb)) = (unit.key_bucket, &pipeline.models[model].key_buckets) {
        let bucket = datafusion::logical_expr::ScalarUDF::new_from_impl(KeyBucket {
            n: n as u64,
            signature: datafusion::logical_expr::Signature::any(
                1,
                datafusion::logical_expr::Volatility::Immutable,
            ),
        });
        for (table, column) in &kb.keys {
            let df = ctx.table(table.as_str()).await.map_err(err)?;
            if df.schema().field_with_unqualified_name(column).is_err() {
                return Err(format!(
                    "batches.keys: source '{table}' has no column '{column}'"
                ));
            }
            let filtered = df
                .filter(
                    bucket
                        .call(vec![col(datafusion::common::Column::from_name(column))])
                        .eq(lit(i as u64)),
                )
                .map_err(err)?;
            ctx.deregister_table(table.as_str()).map_err(err)?;
            ctx.register_table(table.as_str(), filtered.into_view())
                .map_err(err)?;
        }
    }
    // The views the model inlines, in dependency order, over the filtered sources.
    let upstream = dag.upstream(model);
    for name in &dag.order {
        if upstream.contains(name) && pipeline.models[name].materialized == Materialized::View {
            let df = ctx.sql(&dag.nodes[name].sql).await.map_err(err)?;
            ctx.deregister_table(name.as_str()).map_err(err)?;
            ctx.register_table(name.as_str(), df.into_view())
                .map_err(err)?;
        }
    }
    Ok(ctx)
}

/// Units of a plan whose `[start, end)` falls outside the sizing rule of thumb: 10K–500K rows
/// a unit and 50–200 units a job.
pub fn sizing_warnings(units: usize, rows_per_unit: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    if units > 0 && units < 50 {
        out.push(format!(
            "{units} units: fewer than 50, so a failure or a retry redoes a large share of the job"
        ));
    }
    if units > 200 {
        out.push(format!(
            "{units} units: more than 200, so per-unit overhead (planning, commits) dominates"
        ));
    }
    let small = rows_per_unit.iter().filter(|r| **r < 10_000).count();
    let big = rows_per_unit.iter().filter(|r| **r > 500_000).count();
    if small > 0 {
        out.push(format!(
            "{small} units under 10K rows: scheduling overhead dominates; use a larger size"
        ));
    }
    if big > 0 {
        out.push(format!(
            "{big} units over 500K rows: risk of timeouts and memory pressure; use a smaller size"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        crate::config::parse_datetime(s).unwrap()
    }

    #[test]
    fn months_cover_the_range_with_calendar_boundaries() {
        let u = periods(BatchSize::Month, at("1992-01-15"), at("1992-04-01"));
        let names: Vec<_> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, vec!["1992-01", "1992-02", "1992-03"]);
        assert_eq!(u[0].range, Some((at("1992-01-15"), at("1992-02-01"))));
        assert_eq!(u[1].range, Some((at("1992-02-01"), at("1992-03-01"))));
        assert_eq!(u[2].index, 2);
    }

    #[test]
    fn hours_days_and_years() {
        assert_eq!(
            periods(
                BatchSize::Hour,
                at("2024-01-01T22:30:00"),
                at("2024-01-02T01:00:00")
            )
            .len(),
            3
        );
        assert_eq!(
            periods(BatchSize::Day, at("2024-02-27"), at("2024-03-01")).len(),
            3
        );
        let y = periods(BatchSize::Year, at("1992-01-01"), at("1999-01-01"));
        assert_eq!(y.len(), 7);
        assert_eq!(y[6].name, "1998");
    }

    #[test]
    fn sizing_rule_of_thumb() {
        assert!(sizing_warnings(80, &[100_000; 80]).is_empty());
        let w = sizing_warnings(3, &[5_000, 600_000, 20_000]);
        assert_eq!(w.len(), 3, "{w:?}");
    }
}
