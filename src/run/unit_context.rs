//! The SQL context one work unit runs in: the engine's tables, with each input the unit reads
//! a slice of replaced by a view of that slice — filtered to its event-time range, restricted
//! to its files, or to its bucket of join keys — and the model's views planned again over
//! them.

use chrono::{NaiveDate, NaiveDateTime};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{DataFrame, Expr, SessionContext, col, lit};

use super::RunCx;
use super::unit::{UnitError, UnitJob};
use crate::config::{Materialized, Pipeline};
use crate::quarantine::QuarantineTable;
use crate::store::{Location, StoreRegistry, UnitViews};
use crate::table::view::ManifestStore;
use crate::units::{self, Unit, UnitKind};

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

/// Distinguishes the URLs of per-unit file views.
static FILE_VIEWS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The session one unit runs in, and the tables in it that read a share of a source's
/// files under a location of their own (so the unit's rows read are counted to the source).
pub(super) struct UnitContext {
    /// The session.
    pub(super) ctx: SessionContext,
    /// `(source, location read)` of each source read through a share of its files.
    pub(super) shares: Vec<(String, ListingTableUrl)>,
    /// The views those shares are read through, served until the unit's attempt ends.
    pub(super) views: UnitViews,
}

/// A session for one unit of `job`'s model: the engine's runtime (memory pool, stores) and
/// tables, with the inputs the unit reads a slice of replaced by views of that slice, and the
/// model's views planned again over them. The whole-model unit runs in the engine's own
/// session. A period unit reads, of a source read file by file when its units were planned,
/// only the files holding rows of its period; every other unit reads the files its model's
/// units were planned from.
pub(super) async fn unit_context(
    cx: &RunCx<'_>,
    job: &UnitJob<'_>,
    unit: &Unit,
) -> Result<UnitContext, UnitError> {
    let (main, stores, pipeline, dag) = (cx.engine.ctx(), cx.engine.stores(), cx.pipeline, cx.dag);
    let (model, sources, events) = (job.model.name.as_str(), job.event_sources, job.events);
    let mut shares = Vec::new();
    let mut views = UnitViews::new(std::sync::Arc::clone(stores), main.runtime_env());
    if unit.kind == UnitKind::Whole {
        return Ok(UnitContext {
            ctx: main.clone(),
            shares,
            views,
        });
    }
    let ctx = crate::engine::sibling_context(main);
    if let Some(schema) = main.catalog("datafusion").and_then(|c| c.schema("public")) {
        for name in schema.table_names() {
            if let Some(t) = schema.table(&name).await.map_err(err)? {
                ctx.register_table(name.as_str(), t).map_err(err)?;
            }
        }
    }
    // A source the unit reads whole (not a share of its files) is read in the files the
    // units were planned from: listed again by each unit's scan, a file added meanwhile would
    // be read by the later units only, and partly published. (A quarantined source's table
    // holds its files, as does an output's: see `InputFiles::listed_at_each_scan`.)
    let shared: Vec<&String> = match &unit.kind {
        UnitKind::Files { source, .. } => vec![source],
        UnitKind::Period { start, .. } => sources
            .iter()
            .map(|(table, _)| table)
            .filter(|t| events.is_some_and(|e| e.files_of(t, *start).is_some()))
            .collect(),
        _ => Vec::new(),
    };
    for source in dag.sources_read(model) {
        if let Some(files) = job.files.listed_at_each_scan(&source)
            && !shared.contains(&&source)
        {
            shares.extend(restrict_to_files(&ctx, &mut views, pipeline, &source, files).await?);
        }
    }
    match &unit.kind {
        UnitKind::Whole => {}
        UnitKind::Files { source, files } => {
            shares.extend(restrict_to_files(&ctx, &mut views, pipeline, source, files).await?);
        }
        UnitKind::Period { start, end } => {
            for (table, column) in sources {
                if let Some(files) = events.and_then(|e| e.files_of(table, *start)) {
                    let share = job.routes.share(table, *start, files)?;
                    shares.extend(
                        restrict_to_files(&ctx, &mut views, pipeline, table, &share.files).await?,
                    );
                    if let Some((routed, url)) = share.routed {
                        // The period's rows of the files read once for every unit.
                        let df = ctx.table(table.as_str()).await.map_err(err)?;
                        let df = df
                            .union(ctx.read_table(routed).map_err(err)?)
                            .map_err(err)?;
                        replace_table(&ctx, table, df)?;
                        shares.push((table.clone(), url));
                    }
                }
                filter_to_period(&ctx, table, column, *start, *end).await?;
            }
            if let Some(grid) = pipeline.models[model].batches.as_ref().map(units::Grid::of) {
                for up in super::unit::incremental_upstream(pipeline, dag, model) {
                    restrict_to_periods(cx, &ctx, &up, grid, *start).await?;
                }
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
    Ok(UnitContext { ctx, shares, views })
}

/// A session of its own in which `source` reads only `files` (with the source's schema).
pub(super) struct FileShare {
    /// The session.
    pub(super) ctx: SessionContext,
    /// The view its files are read through, served while the share lives.
    _views: UnitViews,
}

impl FileShare {
    /// `source` of `main` restricted to `files`, in a session of its own.
    pub(super) async fn new(
        main: &SessionContext,
        stores: &std::sync::Arc<StoreRegistry>,
        pipeline: &Pipeline,
        source: &str,
        files: &[object_store::ObjectMeta],
    ) -> Result<FileShare, UnitError> {
        let ctx = crate::engine::sibling_context(main);
        let provider = main.table_provider(source).await.map_err(err)?;
        ctx.register_table(source, provider).map_err(err)?;
        let mut views = UnitViews::new(std::sync::Arc::clone(stores), main.runtime_env());
        restrict_to_files(&ctx, &mut views, pipeline, source, files).await?;
        Ok(FileShare { ctx, _views: views })
    }

    /// What the share's quarantine scan set aside and read, when `source` is quarantined.
    pub(super) async fn rejects(&self, source: &str) -> Option<crate::quarantine::SourceRejects> {
        let provider = self.ctx.table_provider(source).await.ok()?;
        let table = provider.downcast_ref::<QuarantineTable>()?;
        Some(table.sink.take())
    }
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

/// The input source over exactly these files (a unit's share): the same table over them if
/// it is quarantined, else a view of its store that holds them, under a URL of its own
/// (returned, to count what is read there to the source), read with the source's own
/// options, partitions and schema. No files: an empty table of the source's schema.
async fn restrict_to_files(
    ctx: &SessionContext,
    views: &mut UnitViews,
    pipeline: &Pipeline,
    source: &str,
    files: &[object_store::ObjectMeta],
) -> Result<Option<(String, ListingTableUrl)>, UnitError> {
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
        return Ok(None);
    }
    if files.is_empty() {
        let empty = datafusion::datasource::empty::EmptyTable::new(provider.schema());
        ctx.deregister_table(source).map_err(err)?;
        ctx.register_table(source, std::sync::Arc::new(empty))
            .map_err(err)?;
        return Ok(None);
    }
    let table_url = ListingTableUrl::parse(&spec.location).map_err(err)?;
    let location =
        Location::parse(table_url.as_str()).map_err(|e| UnitError::caused_by(&e, e.to_string()))?;
    // (The registry is the views' own: views are inserted into it below.)
    let stores = std::sync::Arc::clone(views.stores());
    let store = stores
        .store_for(&location)
        .map_err(|e| UnitError::caused_by(&e, e.to_string()))?;
    let n = FILE_VIEWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let view_url = crate::store::view_url("files", n, &location.store_url());
    let view = ManifestStore::new(
        store,
        files.iter().map(|m| (m.location.clone(), m.size)),
        chrono::Utc::now(),
    );
    let url = url::Url::parse(&view_url).map_err(|e| UnitError::permanent(e.to_string()))?;
    views.insert(&url, std::sync::Arc::new(view));
    let prefix = table_url.prefix().as_ref();
    let mut unit_spec = spec.clone();
    // A folder, or a glob: the folder before the pattern, whose view holds only the files
    // that matched (DataFusion expands no pattern in a URL of another scheme than `file`).
    let glob = table_url.get_glob().is_some();
    unit_spec.location = if spec.location.ends_with('/') || prefix.is_empty() || glob {
        format!("{view_url}{prefix}/")
    } else {
        // A single file: its prefix is its path.
        format!("{view_url}{prefix}")
    };
    crate::catalog::register_share(ctx, &stores, &unit_spec, provider.schema()).await?;
    let read_at = ListingTableUrl::parse(&unit_spec.location).map_err(err)?;
    Ok(Some((source.to_string(), read_at)))
}

/// The incremental model `upstream` replaced in `ctx` by its files of the periods inside the
/// unit's period (starting at `start` on `grid`), as its manifest lists them.
async fn restrict_to_periods(
    cx: &RunCx<'_>,
    ctx: &SessionContext,
    upstream: &str,
    grid: units::Grid,
    start: NaiveDateTime,
) -> Result<(), UnitError> {
    let Some(model) = cx.pipeline.models.get(upstream) else {
        return Ok(());
    };
    let Some(their) = model.batches.as_ref().map(units::Grid::of) else {
        return Ok(());
    };
    let location = Location::parse(&model.sink.location)
        .map_err(|e| UnitError::caused_by(&e, e.to_string()))?
        .as_folder();
    let store = cx
        .engine
        .stores()
        .store_for(&location)
        .map_err(|e| UnitError::caused_by(&e, e.to_string()))?;
    let output = crate::table::Output::new(std::sync::Arc::clone(&store), location.clone());
    let Some(mut manifest) = output
        .read_manifest()
        .await
        .map_err(|e| UnitError::permanent(format!("cannot read {}: {}", e.key, e.message)))?
    else {
        return Ok(());
    };
    let mine = grid.truncate(start);
    manifest.files.retain(|f| {
        f.period
            .as_deref()
            .and_then(|p| their.parse(p))
            .is_some_and(|p| grid.truncate(p) == mine)
    });
    let schema = ctx.table_provider(upstream).await.map_err(err)?.schema();
    ctx.deregister_table(upstream).map_err(err)?;
    crate::catalog::register_manifest(ctx, upstream, &location, store, &manifest, Some(&schema))
        .await
        .map_err(UnitError::from)?;
    Ok(())
}

/// `table` (an event-time source) replaced in `ctx` by its rows whose `column` is in
/// `[start, end)`.
async fn filter_to_period(
    ctx: &SessionContext,
    table: &str,
    column: &str,
    start: NaiveDateTime,
    end: NaiveDateTime,
) -> Result<(), UnitError> {
    filter_to_range(ctx, table, column, start, Some(end)).await
}

/// `table` (an event-time source) replaced in `ctx` by its rows whose `column` is in
/// `[start, end)`, or from `start` on.
pub(super) async fn filter_to_range(
    ctx: &SessionContext,
    table: &str,
    column: &str,
    start: NaiveDateTime,
    end: Option<NaiveDateTime>,
) -> Result<(), UnitError> {
    let df = ctx.table(table).await.map_err(err)?;
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
    let mut condition = c.clone().gt_eq(bound(start, &ty));
    if let Some(end) = end {
        condition = condition.and(c.lt(bound(end, &ty)));
    }
    let filtered = df.filter(condition).map_err(err)?;
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
