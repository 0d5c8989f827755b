//! Where a time-batched model's input rows fall in time, read once when its units are
//! planned, file by file: the rows of each period per event-time source (the units, and each
//! unit's true rows in), and the periods each file holds rows of, so a unit reads only the
//! files of its period instead of every file, and an incremental model knows which periods
//! a new or changed file touches.
//!
//! A row whose event time is NULL or not a timestamp would be in no unit: that is an error
//! naming the source, the count and an example, never a silent loss (a quarantined source
//! sets such rows aside as it reads them).

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDateTime;
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use object_store::ObjectMeta;

use super::input_files::InputFiles;
use crate::config::Pipeline;
use crate::engine::Engine;
use crate::engine::FileVersion;
use crate::quarantine::SourceRejects;
use crate::state::{FilePeriodsKey, StateStore};
use crate::units::Grid;

/// Rows per period, by the period's first instant.
pub type PeriodRows = BTreeMap<NaiveDateTime, u64>;

/// Where the rows of a model's event-time sources fall in time.
#[derive(Debug, Default)]
pub struct EventMap {
    /// The periods the map is by.
    pub grid: Option<Grid>,
    /// Rows per period (by its first instant), per source.
    pub rows: BTreeMap<String, BTreeMap<NaiveDateTime, u64>>,
    /// Per source: each file, with its rows per period.
    pub files: BTreeMap<String, Vec<(ObjectMeta, PeriodRows)>>,
    /// What reading the quarantined sources set aside: every file of theirs was read here.
    pub rejects: Vec<(String, SourceRejects)>,
    /// Per database source: what its periods are called as inputs (`db:app/public.orders`),
    /// and its rows per period (from `since` on, when the read was bounded).
    pub database: BTreeMap<String, (String, PeriodRows)>,
}

/// What one read (of a file, or of a whole source) found.
#[derive(Default)]
struct Found {
    rows: BTreeMap<NaiveDateTime, u64>,
    untimed: u64,
    example: Option<String>,
}

impl EventMap {
    /// Reads the event-time column of each of `sources` (`(table, column)`), by the periods
    /// of `grid`, file by file (its files as `listed`); a file version `cache` (the state
    /// store) mapped before is not
    /// read again. A database source is read in one query, from `since` on when given (the
    /// filter goes to the database: an incremental model's nightly run reads its window, not
    /// the table).
    pub(crate) async fn build(
        engine: &Engine,
        pipeline: &Pipeline,
        sources: &[(String, String)],
        listed: &InputFiles,
        grid: Grid,
        cache: Option<&StateStore>,
        since: Option<NaiveDateTime>,
    ) -> Result<EventMap, String> {
        let (main, stores) = (engine.ctx(), engine.stores());
        let mut map = EventMap {
            grid: Some(grid),
            ..EventMap::default()
        };
        for (table, column) in sources {
            if grid.tz.is_some() {
                refuse_dates(main, table, column).await?;
            }
            if let Some(spec) = pipeline.database_sources.get(table) {
                let ctx = crate::engine::sibling_context(main);
                if let Ok(t) = main.table_provider(table.as_str()).await {
                    ctx.register_table(table.as_str(), t)
                        .map_err(|e| e.to_string())?;
                }
                if let Some(since) = since {
                    super::unit_context::filter_to_range(&ctx, table, column, since, None)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let found = match periods(&ctx, table, column, grid).await {
                    Ok(found) => found,
                    Err(e) => return Err(explain(engine, pipeline, table, column, e).await),
                };
                if found.untimed > 0 {
                    return Err(format!(
                        "source '{table}': {} rows have NULL in '{column}': they would be in no \
                         work unit",
                        found.untimed
                    ));
                }
                let what = match &spec.relation {
                    crate::config::Relation::Table(t) => t.clone(),
                    crate::config::Relation::Query(_) => "query".to_string(),
                };
                let prefix = format!("db:{}/{what}", spec.database);
                map.rows.insert(table.clone(), found.rows.clone());
                map.database.insert(table.clone(), (prefix, found.rows));
                continue;
            }
            let mut found = Found::default();
            let listed = listed
                .of(table)
                .ok_or_else(|| format!("unknown source '{table}'"))?
                .to_vec();
            let key = cache_key(pipeline, table, column, grid);
            let known = match cache {
                Some(state) => state.file_periods(&key).map_err(|e| e.to_string())?,
                None => Default::default(),
            };
            let mut files = Vec::new();
            let mut unread = Vec::new();
            for file in listed {
                match known.get(&cache_version(&file)) {
                    Some(rows) => {
                        found.merge(Found {
                            rows: rows.clone(),
                            ..Found::default()
                        });
                        files.push((file, rows.clone()));
                    }
                    None => unread.push(file),
                }
            }
            tracing::info!(
                source = %table,
                cached = files.len(),
                read = unread.len(),
                "mapping event times: {} files known, {} to read",
                files.len(),
                unread.len()
            );
            let parallel = main.copied_config().target_partitions().max(1);
            let reads: Vec<_> = futures::stream::iter(unread)
                .map(|file| async move {
                    let share = super::unit_context::FileShare::new(
                        main,
                        stores,
                        pipeline,
                        table,
                        std::slice::from_ref(&file),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    let got = match periods(&share.ctx, table, column, grid).await {
                        Ok(got) => got,
                        Err(e) => return Err(explain(engine, pipeline, table, column, e).await),
                    };
                    Ok::<_, String>((file, got, share.rejects(table).await))
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
            let mut rejects = SourceRejects::default();
            let mut mapped = Vec::new();
            for read in reads {
                let (file, got, quarantined) = read?;
                if got.untimed == 0 {
                    mapped.push((cache_version(&file), got.rows.clone()));
                }
                files.push((file, got.rows.clone()));
                found.merge(got);
                if let Some(q) = quarantined {
                    rejects.merge(q);
                }
            }
            if let Some(state) = cache
                && let Err(e) = state.record_file_periods(&key, &mapped)
            {
                // A cache: the next run reads these files again.
                tracing::warn!("cannot record the periods of {table}'s files: {e}");
            }
            files.sort_by(|a: &(ObjectMeta, _), b| a.0.location.cmp(&b.0.location));
            map.files.insert(table.clone(), files);
            map.rejects.push((table.clone(), rejects));
            if found.untimed > 0 {
                let example = match found.example {
                    Some(s) => format!("not a timestamp, e.g. {s:?}"),
                    None => "NULL".to_string(),
                };
                return Err(format!(
                    "source '{table}': {} rows have no event time in '{column}' ({example}): \
                     they would be in no work unit",
                    found.untimed
                ));
            }
            map.rows.insert(table.clone(), found.rows);
        }
        Ok(map)
    }

    /// The first and the last period holding rows, over every source.
    pub fn range(&self) -> Option<(NaiveDateTime, NaiveDateTime)> {
        let all = self.rows.values().flat_map(|r| r.keys());
        let lo = all.clone().min()?;
        let hi = all.max()?;
        Some((*lo, *hi))
    }

    /// The period holding `t`, as the map keys it: a unit whose range starts inside its
    /// period (a `start` in the middle of one) is looked up by its period.
    pub(super) fn key(&self, t: NaiveDateTime) -> NaiveDateTime {
        self.grid.map_or(t, |grid| grid.truncate(t))
    }

    /// Rows of `source` in the period holding `start`. (A unit whose range is part of its
    /// period, cut by `batches.start` or `end`, takes the period's rows: its files are read
    /// whole and filtered to the range.)
    pub fn rows_in(&self, source: &str, start: NaiveDateTime) -> u64 {
        self.rows
            .get(source)
            .and_then(|r| r.get(&self.key(start)))
            .copied()
            .unwrap_or(0)
    }

    /// Rows in the period starting at `start`, over every source.
    pub fn rows_of_period(&self, start: NaiveDateTime) -> u64 {
        self.rows.keys().map(|s| self.rows_in(s, start)).sum()
    }

    /// The files of `source` holding rows of the period holding `start`; `None` for a source
    /// not in the map.
    pub fn files_of(&self, source: &str, start: NaiveDateTime) -> Option<Vec<ObjectMeta>> {
        let files = self.files.get(source)?;
        Some(
            files
                .iter()
                .filter(|(_, periods)| periods.contains_key(&self.key(start)))
                .map(|(f, _)| f.clone())
                .collect(),
        )
    }

    /// Every file version of every source, with its rows, per period: what an incremental
    /// model compares with what its output was computed from.
    pub(crate) fn applied_files(
        &self,
    ) -> BTreeMap<NaiveDateTime, Vec<crate::table::manifest::AppliedFile>> {
        let mut out: BTreeMap<NaiveDateTime, Vec<_>> = BTreeMap::new();
        for (source, files) in &self.files {
            for (meta, periods) in files {
                let (path, size, modified, etag) = crate::engine::file_version(meta);
                for (p, rows) in periods {
                    out.entry(*p)
                        .or_default()
                        .push(crate::table::manifest::AppliedFile {
                            source: source.clone(),
                            path: path.clone(),
                            size,
                            modified: modified.clone(),
                            etag: etag.clone(),
                            rows: *rows,
                        });
                }
            }
        }
        // A database source's rows of a period are one input, known by their count: rows
        // added (or deleted) in a period change it.
        if let Some(grid) = self.grid {
            for (source, (prefix, periods)) in &self.database {
                for (p, rows) in periods {
                    out.entry(*p)
                        .or_default()
                        .push(crate::table::manifest::AppliedFile {
                            source: source.clone(),
                            path: format!("{prefix}/{}", grid.name(*p)),
                            size: *rows,
                            modified: String::new(),
                            etag: None,
                            rows: *rows,
                        });
                }
            }
        }
        for files in out.values_mut() {
            files.sort();
        }
        out
    }
}

impl Found {
    fn merge(&mut self, other: Found) {
        for (p, n) in other.rows {
            *self.rows.entry(p).or_default() += n;
        }
        self.untimed += other.untimed;
        if self.example.is_none() {
            self.example = other.example;
        }
    }
}

/// A DATE has no time of day, so no instant to place in a zone's day: refused with
/// `batches.timezone`, rather than read as midnight UTC (the evening before, in America).
async fn refuse_dates(main: &SessionContext, table: &str, column: &str) -> Result<(), String> {
    use datafusion::arrow::datatypes::DataType;
    let Ok(provider) = main.table_provider(table).await else {
        return Ok(());
    };
    let schema = provider.schema();
    match schema
        .field_with_name(column)
        .map(|f| f.data_type().clone())
    {
        Ok(DataType::Date32 | DataType::Date64) => Err(format!(
            "source '{table}': event_time '{column}' is a DATE, which has no time of day to \
             place in batches.timezone's days: batch it without a timezone (its dates are the \
             periods), or give it timestamps"
        )),
        _ => Ok(()),
    }
}

/// What the state store keys the periods of a source's files by: the source, its
/// definition and event-time column (a changed one maps its files again), and the grid.
fn cache_key(pipeline: &Pipeline, table: &str, column: &str, grid: Grid) -> FilePeriodsKey {
    let spec = pipeline
        .sources
        .get(table)
        .and_then(|s| serde_json::to_string(s).ok())
        .unwrap_or_default();
    FilePeriodsKey {
        source: table.to_string(),
        spec: format!(
            "{:016x}",
            crate::units::stable_hash(&format!("{spec}\n{column}"))
        ),
        grid: grid.label(),
    }
}

/// A file version as the cache keys it.
fn cache_version(m: &ObjectMeta) -> FileVersion {
    crate::engine::file_version(m)
}

/// A failed read of `table`'s event times, naming the file and line at fault where they can
/// be found.
async fn explain(
    engine: &Engine,
    pipeline: &Pipeline,
    table: &str,
    column: &str,
    e: datafusion::error::DataFusionError,
) -> String {
    let source = BTreeSet::from([table.to_string()]);
    format!(
        "source '{table}': event_time '{column}': {}",
        crate::diagnose::explain(engine, pipeline, &source, &e).await
    )
}

/// SQL for the first instant of the period of `grid` holding the timestamp `t` (NULL for
/// none), as a nanosecond timestamp: what the map keys rows by, and what routing splits a
/// file's rows by (`super::route`), so both place every row alike.
pub(super) fn period_sql(grid: Grid, t: &str) -> String {
    // In a zone, the instant is truncated in the zone's wall time (DataFusion's date_trunc on
    // a zoned timestamp is DST-correct); the naive time is an instant in UTC, so it is made
    // a UTC timestamp first (cast straight to the zone, it would be read as wall time there).
    let t = match grid.tz {
        None => t.to_string(),
        Some(tz) => format!(
            "arrow_cast(arrow_cast({t}, 'Timestamp(Nanosecond, Some(\"UTC\"))'), \
             'Timestamp(Nanosecond, Some(\"{}\"))')",
            tz.name()
        ),
    };
    format!("date_trunc('{}', {t})", grid.size.name())
}

/// The period a value of [`period_sql`] names, as the grid keys it (the same instant, made
/// sure of at a DST gap).
pub(super) fn period_key(grid: Grid, ns: i64) -> NaiveDateTime {
    grid.truncate(chrono::DateTime::from_timestamp_nanos(ns).naive_utc())
}

/// Rows per period of `table`'s `column` in `ctx`, each value read as the instant it names
/// (text with a UTC offset included), and the rows with none.
async fn periods(
    ctx: &SessionContext,
    table: &str,
    column: &str,
    grid: Grid,
) -> Result<Found, datafusion::error::DataFusionError> {
    let sql = format!(
        "SELECT {} AS p, COUNT(*) AS n, \
                MIN(CASE WHEN t IS NULL AND raw IS NOT NULL THEN CAST(raw AS VARCHAR) END) AS example \
         FROM (SELECT TRY_CAST(\"{column}\" AS TIMESTAMP) AS t, \"{column}\" AS raw FROM \"{table}\") \
         GROUP BY 1",
        period_sql(grid, "t")
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    let mut found = Found::default();
    for b in &batches {
        for i in 0..b.num_rows() {
            let value = |c: usize| ScalarValue::try_from_array(b.column(c), i);
            let ScalarValue::Int64(Some(n)) = value(1)? else {
                continue;
            };
            match value(0)? {
                ScalarValue::TimestampNanosecond(Some(ns), _) => {
                    *found.rows.entry(period_key(grid, ns)).or_default() += n as u64;
                }
                _ => {
                    found.untimed += n as u64;
                    if let ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) = value(2)? {
                        found.example = Some(s);
                    }
                }
            }
        }
    }
    Ok(found)
}
