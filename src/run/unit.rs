//! A model's work units: planning them, and running one with its timeout, retries and
//! backoff, into its staging folder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use datafusion::error::DataFusionError;

use std::collections::BTreeMap;

use chrono::NaiveDateTime;

use super::RunCx;
use super::event_map::EventMap;
use super::incremental::{self, Clock, IncrementalPlan};
use super::input_files::InputFiles;
use crate::config::{ModelConfig, Pipeline, timestamp_now};
use crate::dag::Dag;
use crate::describe::describe_datafusion;
use crate::engine::{Engine, ScanRows};
use crate::join::JoinReport;
use crate::quarantine::{QuarantineTable, SourceRejects};
use crate::sink::{self, SinkSpec};
use crate::state::UnitRecord;
use crate::state::{FileSeen, StateStore};
use crate::status::UnitStatus;
use crate::table::manifest::AppliedFile;
use crate::units::{self, Unit, UnitKind};

/// A model's work units, and, for a time-batched model, where its input rows fall in time.
pub(crate) struct UnitPlan {
    /// The units, in order.
    pub units: Vec<Unit>,
    /// For a time-batched model: its rows per period and the files of each period.
    pub events: Option<EventMap>,
    /// For an incremental model: the periods it computes and why, and its late rows.
    pub incremental: Option<IncrementalWork>,
    /// The files of the model's sources the units were planned from (and read).
    pub files: InputFiles,
}

/// What an incremental model's run computes, and from what.
pub(crate) struct IncrementalWork {
    /// The periods, why, and the late rows.
    pub plan: IncrementalPlan,
    /// A hash of its inputs without event time.
    pub dims: String,
    /// Its input files per period, each with its rows there.
    pub current: BTreeMap<NaiveDateTime, Vec<AppliedFile>>,
    /// The periods its output holds now (on this grid).
    pub output: Option<crate::table::manifest::Periods>,
    /// Its periods.
    pub grid: units::Grid,
}

impl From<Vec<Unit>> for UnitPlan {
    fn from(units: Vec<Unit>) -> UnitPlan {
        UnitPlan {
            units,
            events: None,
            incremental: None,
            files: InputFiles::default(),
        }
    }
}

/// What planning a model's units may use beyond the pipeline.
pub(crate) struct Planning<'a> {
    /// The run's clock and what it was asked to do (incremental models).
    pub clock: &'a Clock,
    /// The state store, when there is one: the periods of input files mapped before, and
    /// the late rows earlier runs counted.
    pub state: Option<&'a StateStore>,
    /// The run planning; `""` for a command that does not run.
    pub run_id: &'a str,
}

impl Planning<'_> {
    /// The file versions, by period, whose rows earlier runs counted for `model` as later
    /// than the window. (This run's own earlier attempt counted them for a report that was
    /// lost with it: they are counted again, and replace what it recorded.)
    fn counted_late(
        &self,
        model: &str,
    ) -> Result<std::collections::HashSet<(String, FileSeen)>, String> {
        match self.state {
            Some(state) => state
                .counted_late(model, self.run_id)
                .map_err(|e| e.to_string()),
            None => Ok(Default::default()),
        }
    }
}

/// The work units of a model: one per period for a batched model, a group of files, a key
/// bucket, or one unit for the whole model.
pub(crate) async fn plan_units(
    engine: &Engine,
    pipeline: &Pipeline,
    dag: &Dag,
    model: &ModelConfig,
    planning: &Planning<'_>,
) -> Result<UnitPlan, String> {
    let files = InputFiles::list(engine, pipeline, &dag.sources_read(&model.name))
        .await
        .map_err(|e| e.to_string())?;
    let mut plan = plan_over(engine, pipeline, dag, model, planning, &files).await?;
    plan.files = files;
    Ok(plan)
}

/// [`plan_units`] over the files of the model's sources as `listed`.
async fn plan_over(
    engine: &Engine,
    pipeline: &Pipeline,
    dag: &Dag,
    model: &ModelConfig,
    planning: &Planning<'_>,
    listed: &InputFiles,
) -> Result<UnitPlan, String> {
    let clock = planning.clock;
    if let Some(per_unit) = model.files_per_unit {
        let source = dag.single_source(&model.name)?;
        let spec = pipeline
            .sources
            .get(&source)
            .ok_or_else(|| format!("batches by file read files: source '{source}' has none"))?;
        let files = listed
            .of(&source)
            .ok_or_else(|| format!("batches by file read files: source '{source}' has none"))?
            .to_vec();
        let prefix = datafusion::datasource::listing::ListingTableUrl::parse(&spec.location)
            .map(|u| u.prefix().as_ref().to_string())
            .unwrap_or_default();
        return Ok(units::by_files(&source, files, per_unit, &prefix).into());
    }
    if let Some(kb) = &model.key_buckets {
        let read = dag.sources_read(&model.name);
        if let Some(missing) = kb.keys.keys().find(|k| !read.contains(*k)) {
            return Err(format!(
                "batches.keys names source '{missing}', which the model does not read (it reads {})",
                read.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        return Ok(units::by_key(kb.buckets).into());
    }
    let Some(batches) = &model.batches else {
        return Ok(units::whole().into());
    };
    let sources = units::event_sources(pipeline, &dag.sources_read(&model.name));
    let upstream = incremental_upstream(pipeline, dag, &model.name);
    if sources.is_empty() && (upstream.is_empty() || batches.incremental.is_none()) {
        return Err("batches need at least one input source that declares event_time".into());
    }
    // Read even when start and end are given: a row without an event time is refused there.
    let grid = units::Grid::of(batches);
    let manifest = match &batches.incremental {
        Some(_) => output_manifest(engine, model).await?,
        None => None,
    };
    let previous = manifest
        .as_ref()
        .and_then(|m| m.periods.as_ref())
        .filter(|p| p.grid == grid.label());
    let database_sources: Vec<&String> = sources
        .iter()
        .map(|(t, _)| t)
        .filter(|t| pipeline.database_sources.contains_key(*t))
        .collect();
    // A database source is read from the first period this run may compute on: the
    // periods before are as the output last applied them.
    let since = match (&batches.incremental, previous) {
        (Some(config), Some(previous)) if !database_sources.is_empty() => {
            incremental::first_period_to_read(grid, config, previous, clock)
        }
        _ => None,
    };
    let events = EventMap::build(
        engine,
        pipeline,
        &sources,
        listed,
        grid,
        planning.state,
        since,
    )
    .await?;
    if let Some(config) = &batches.incremental {
        let counted = planning.counted_late(&model.name)?;
        let counted_before = |period: &str, f: &AppliedFile| {
            counted.contains(&(period.to_string(), FileSeen::of(f)))
        };
        let mut current = events.applied_files();
        if let (Some(since), Some(previous)) = (since, previous) {
            for (name, entry) in &previous.entries {
                let Some(p) = grid.parse(name).filter(|p| *p < since) else {
                    continue;
                };
                for file in entry
                    .inputs
                    .iter()
                    .filter(|f| database_sources.contains(&&f.source))
                {
                    current.entry(p).or_default().push(file.clone());
                }
            }
        }
        for up in &upstream {
            for (p, file) in upstream_files(engine, pipeline, up, grid).await? {
                current.entry(p).or_default().push(file);
            }
        }
        for files in current.values_mut() {
            files.sort();
        }
        let dims = super::resume::dimension_inputs(engine, pipeline, dag, &model.name, listed)
            .await
            .map_err(|e| e.to_string())?;
        let plan = incremental::plan(&incremental::PlanInput {
            grid,
            start: batches.start,
            end: batches.end,
            config,
            as_of: clock.as_of,
            kind: &clock.kind,
            current: &current,
            dims: &dims,
            previous,
            counted_before: &counted_before,
        });
        return Ok(UnitPlan {
            units: plan.units(grid),
            events: Some(events),
            incremental: Some(IncrementalWork {
                plan,
                dims,
                current,
                output: previous.cloned(),
                grid,
            }),
            files: InputFiles::default(),
        });
    }
    let (start, end) = match (batches.start, batches.end, events.range()) {
        (Some(s), Some(e), _) => (grid.instant_of(s), grid.instant_of(e)),
        (_, _, None) => {
            return Ok(UnitPlan {
                units: Vec::new(),
                events: Some(events),
                incremental: None,
                files: InputFiles::default(),
            });
        }
        (s, e, Some((lo, hi))) => (
            s.map_or(lo, |s| grid.instant_of(s)),
            e.map_or(grid.next(hi), |e| grid.instant_of(e)),
        ),
    };
    warn_outside(&model.name, &events, grid, Some(start), Some(end));
    Ok(UnitPlan {
        units: grid.periods(start, end),
        events: Some(events),
        incremental: None,
        files: InputFiles::default(),
    })
}

/// The current manifest of `model`'s output, if it has one.
async fn output_manifest(
    engine: &Engine,
    model: &ModelConfig,
) -> Result<Option<crate::table::Manifest>, String> {
    let location = crate::store::Location::parse(&model.sink.location)
        .map_err(|e| e.to_string())?
        .as_folder();
    let store = engine
        .stores()
        .store_for(&location)
        .map_err(|e| e.to_string())?;
    crate::table::Output::new(store, location)
        .read_manifest()
        .await
        .map_err(|e| format!("cannot read {}: {}", e.key, e.message))
}

/// The incremental models a model reads (directly or through views): their periods are its
/// event-time input, propagated through their manifests.
pub(crate) fn incremental_upstream(pipeline: &Pipeline, dag: &Dag, model: &str) -> Vec<String> {
    dag.inputs_of(model)
        .1
        .into_iter()
        .filter(|t| {
            pipeline
                .models
                .get(t)
                .is_some_and(|m| m.materialized == crate::config::Materialized::Incremental)
        })
        .collect()
}

/// The published files of the incremental model `upstream`, each as an input file of the
/// period of `grid` holding its period (a day's file is an input of its month): a period the
/// upstream model recomputed has new files, so it touches the periods downstream that hold it.
async fn upstream_files(
    engine: &Engine,
    pipeline: &Pipeline,
    upstream: &str,
    grid: units::Grid,
) -> Result<Vec<(NaiveDateTime, AppliedFile)>, String> {
    let Some(model) = pipeline.models.get(upstream) else {
        return Ok(Vec::new());
    };
    let Some(their) = model.batches.as_ref().map(units::Grid::of) else {
        return Ok(Vec::new());
    };
    let manifest = output_manifest(engine, model).await?;
    let mut out = Vec::new();
    for f in manifest.iter().flat_map(|m| &m.files) {
        let Some(start) = f.period.as_deref().and_then(|p| their.parse(p)) else {
            continue;
        };
        out.push((
            grid.truncate(start),
            AppliedFile {
                source: upstream.to_string(),
                path: f.path.clone(),
                size: f.bytes,
                modified: String::new(),
                etag: None,
                rows: f.rows,
            },
        ));
    }
    Ok(out)
}

/// Rows a model's `batches` `start..end` leaves out are not read: says so, never silently.
fn warn_outside(
    model: &str,
    events: &EventMap,
    grid: units::Grid,
    start: Option<NaiveDateTime>,
    end: Option<NaiveDateTime>,
) {
    let show = |t: Option<NaiveDateTime>| t.map_or("-".to_string(), |t| t.to_string());
    for (source, periods) in &events.rows {
        let outside: u64 = periods
            .iter()
            .filter(|(p, _)| {
                start.is_some_and(|s| grid.next(**p) <= s) || end.is_some_and(|e| **p >= e)
            })
            .map(|(_, n)| n)
            .sum();
        if outside > 0 {
            tracing::warn!(
                "model '{model}': {outside} row(s) of source '{source}' lie in periods outside \
                 batches start..end ({} .. {}) and are not read; widen start or end to \
                 include them",
                show(start),
                show(end)
            );
        }
    }
}

/// Why one attempt of a unit failed: the message the user sees, and whether another attempt
/// could succeed, decided from the error's type where it was raised
/// ([`crate::describe::is_transient`]).
#[derive(Debug)]
pub struct UnitError {
    message: String,
    transient: bool,
}

impl UnitError {
    /// A failure that another attempt would repeat (the SQL, the data, the plan).
    pub fn permanent(message: impl Into<String>) -> UnitError {
        UnitError {
            message: message.into(),
            transient: false,
        }
    }

    /// A failure caused by `err`, described by `message`; transient if `err` is.
    pub fn caused_by(err: &(dyn std::error::Error + 'static), message: String) -> UnitError {
        UnitError {
            message,
            transient: crate::describe::is_transient(err),
        }
    }

    /// A query error, described for the user.
    pub fn query(err: &DataFusionError) -> UnitError {
        UnitError::caused_by(err, describe_datafusion(err))
    }

    /// The attempt ran out of time: another may not.
    fn timed_out(limit: Duration) -> UnitError {
        UnitError {
            message: format!("timed out after {}", humanize(limit)),
            transient: true,
        }
    }

    /// Whether another attempt could succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl std::fmt::Display for UnitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<sink::SinkError> for UnitError {
    /// A failed write is transient as its storage error was (the sink keeps that, not the
    /// error itself).
    fn from(e: sink::SinkError) -> UnitError {
        UnitError {
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}

impl From<crate::catalog::CatalogError> for UnitError {
    fn from(e: crate::catalog::CatalogError) -> UnitError {
        UnitError {
            transient: e.is_transient(),
            message: e.to_string(),
        }
    }
}

impl From<String> for UnitError {
    fn from(message: String) -> UnitError {
        UnitError::permanent(message)
    }
}

/// Exponential backoff with jitter for attempt `n` (1-based): about 0.5 s, 1 s, 2 s... capped
/// at 30 s, each scaled by a random factor in [0.5, 1.5) so retries of many units spread out.
fn backoff(n: u32) -> Duration {
    let base = 0.5 * 2f64.powi(n.saturating_sub(1).min(6) as i32);
    let jitter: f64 = rand::random_range(0.5..1.5);
    Duration::from_secs_f64((base * jitter).min(30.0))
}

/// What every unit of one model shares.
#[derive(Clone, Copy)]
pub(super) struct UnitJob<'a> {
    /// The model.
    pub(super) model: &'a ModelConfig,
    /// Its sink.
    pub(super) spec: &'a SinkSpec,
    /// Its output folder.
    pub(super) output: &'a crate::table::Output,
    /// The event-time sources it reads, with their columns.
    pub(super) event_sources: &'a [(String, String)],
    /// Where its input rows fall in time (a time-batched model).
    pub(super) events: Option<&'a EventMap>,
    /// Each unit's inputs (by name), recorded with it.
    pub(super) inputs: &'a std::collections::BTreeMap<String, String>,
    /// The source files read once for every unit, and their rows by period.
    pub(super) routes: &'a super::route::Routes,
    /// The files of its sources its units were planned from: what a unit reads of a source
    /// it does not read a share of.
    pub(super) files: &'a InputFiles,
    /// Set once a unit has failed for good: the model fails, so the units not started yet
    /// are not started, and running ones make no further attempt.
    pub(super) stop: &'a AtomicBool,
}

/// Why a unit did not finish.
#[derive(Debug)]
pub(super) enum UnitFailure {
    /// It failed for good; the message says which unit, after how many attempts, and why.
    Failed(String),
    /// It was not started, or not tried again, because another unit of the model failed.
    Stopped,
    /// It was not started, or was cancelled, because the run was cancelled.
    Interrupted(super::StopReason),
    /// It was not started because the run was drained: it is left for a resume.
    Paused,
}

/// What a unit's quarantine scans set aside and read, by source.
pub(super) type UnitRejects = Vec<(String, SourceRejects)>;

/// A unit that ran.
pub(super) struct UnitDone {
    /// Its record, as the state store keeps it.
    pub(super) record: UnitRecord,
    /// Its query's joins.
    pub(super) joins: Vec<JoinReport>,
    /// The rows its scans read, per table.
    pub(super) scan: ScanRows,
    /// What its own quarantine scans set aside (a by-file unit reads its files through a scan
    /// of its own; other units share the model's).
    pub(super) rejects: UnitRejects,
    /// On a cluster, its job.
    pub(super) job: Option<crate::cluster::JobReport>,
}

/// Runs one unit with its timeout and retries; stages its files and records it.
pub(super) async fn run_unit(
    cx: &RunCx<'_>,
    job: &UnitJob<'_>,
    unit: &Unit,
    bar: &crate::progress::Units,
) -> Result<UnitDone, UnitFailure> {
    let UnitJob { model, output, .. } = *job;
    let settings = model.units;
    // A slot of the process's, held over all attempts (it never closes: an error is none). A
    // unit waiting for one when the run is drained or cancelled stops waiting, and starts
    // nothing (below).
    let _slot = match cx.unit_slots {
        Some(slots) if cx.interrupt.stopping().is_none() => tokio::select! {
            slot = slots.acquire() => slot.ok(),
            () = cx.interrupt.wait_stopping() => None,
        },
        _ => None,
    };
    let mut attempt = 0u32;
    loop {
        if let Some(reason) = cx.interrupt.cancelled() {
            return Err(UnitFailure::Interrupted(reason));
        }
        // A drained run lets a unit that started finish (retries included), but starts no
        // new one.
        if cx.interrupt.stopping().is_some() && attempt == 0 {
            return Err(UnitFailure::Paused);
        }
        if job.stop.load(Ordering::Relaxed) {
            return Err(UnitFailure::Stopped);
        }
        attempt += 1;
        let mut record = UnitRecord {
            unit: unit.name.clone(),
            status: UnitStatus::Running,
            attempts: attempt,
            rows_in: 0,
            rows_out: 0,
            started_at: Some(timestamp_now()),
            finished_at: None,
            elapsed_ms: 0,
            peak_memory: 0,
            spilled_bytes: 0,
            files: Vec::new(),
            error: None,
            inputs: job.inputs.get(&unit.name).cloned().unwrap_or_default(),
        };
        if let Some(state) = cx.state {
            let _ = state.record_unit(cx.run_id, &model.name, &record);
        }
        let start = Instant::now();
        let (outcome, peak) = timed_attempt(cx, job, unit, bar).await;
        record.elapsed_ms = start.elapsed().as_millis() as u64;
        record.peak_memory = peak;
        record.finished_at = Some(timestamp_now());
        let error = match outcome {
            Ok(done) => {
                record.status = UnitStatus::Done;
                record.rows_in = done.scan.total();
                record.rows_out = done.staged.rows();
                record.spilled_bytes = done.spilled;
                record.files = done.staged.files;
                if let Some(state) = cx.state {
                    state
                        .record_unit(cx.run_id, &model.name, &record)
                        .map_err(|e| {
                            job.stop.store(true, Ordering::Relaxed);
                            UnitFailure::Failed(e.to_string())
                        })?;
                }
                bar.unit_done(&unit.name, false);
                return Ok(UnitDone {
                    record,
                    joins: done.joins,
                    scan: done.scan,
                    rejects: done.rejects,
                    job: done.job,
                });
            }
            Err(error) => error,
        };
        // Whatever the attempt staged is discarded (a cancelled attempt's writers may still
        // be closing files: they are removed again before a retry's files land).
        let _ = output.discard_staging(cx.run_id, Some(&unit.key())).await;
        if let Some(reason) = cx.interrupt.cancelled() {
            record.status = UnitStatus::Failed;
            record.error = Some(format!("interrupted ({reason})"));
            if let Some(state) = cx.state {
                let _ = state.record_unit(cx.run_id, &model.name, &record);
            }
            return Err(UnitFailure::Interrupted(reason));
        }
        let retry = attempt <= settings.retries && error.is_transient();
        record.status = if retry {
            UnitStatus::Retrying
        } else {
            UnitStatus::Failed
        };
        record.error = Some(error.to_string());
        if let Some(state) = cx.state {
            let _ = state.record_unit(cx.run_id, &model.name, &record);
        }
        if !retry {
            let tries = if attempt == 1 {
                "1 attempt".to_string()
            } else {
                format!("{attempt} attempts")
            };
            job.stop.store(true, Ordering::Relaxed);
            return Err(UnitFailure::Failed(format!(
                "unit {} failed after {tries}: {error}",
                unit.name
            )));
        }
        let wait = backoff(attempt);
        tracing::warn!(model = %model.name, unit = %unit.name, attempt, "transient failure, retrying in {wait:?}: {error}");
        tokio::time::sleep(wait).await;
    }
}

/// What one attempt did.
struct Attempt {
    /// What it staged.
    staged: sink::UnitOutput,
    /// The rows its scans read, per table.
    scan: ScanRows,
    /// Bytes its operators spilled.
    spilled: u64,
    /// Its query's joins.
    joins: Vec<JoinReport>,
    /// What its own quarantine scans set aside.
    rejects: UnitRejects,
    /// On a cluster, its job.
    job: Option<crate::cluster::JobReport>,
}

/// One attempt under the unit timeout, with the peak of the memory pool's reservation,
/// sampled while it runs.
async fn timed_attempt(
    cx: &RunCx<'_>,
    job: &UnitJob<'_>,
    unit: &Unit,
    bar: &crate::progress::Units,
) -> (Result<Attempt, UnitError>, u64) {
    let pool = Arc::clone(&cx.engine.ctx().runtime_env().memory_pool);
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(pool.reserved(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let work = async {
        let work = attempt_unit(cx, job, unit, bar);
        match job.model.units.timeout {
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(r) => r,
                Err(_) => Err(UnitError::timed_out(limit)),
            },
            None => work.await,
        }
    };
    // An interrupt cancels the attempt (its writers abandon their files).
    let outcome = tokio::select! {
        outcome = work => outcome,
        () = cx.interrupt.wait() => Err(UnitError::permanent("interrupted")),
    };
    sampler.abort();
    (outcome, peak.load(Ordering::Relaxed) as u64)
}

fn humanize(d: Duration) -> String {
    if d.as_secs() >= 60 {
        let secs = d.as_secs_f64().round() as u64;
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// One attempt of a unit: plan it in its context, run it into the unit's staging folder.
/// Returns what it staged, the rows its scans read and the bytes it spilled.
async fn attempt_unit(
    cx: &RunCx<'_>,
    job: &UnitJob<'_>,
    unit: &Unit,
    bar: &crate::progress::Units,
) -> Result<Attempt, UnitError> {
    let UnitJob {
        model,
        spec,
        output,
        ..
    } = *job;
    let context = super::unit_context::unit_context(cx, job, unit).await?;
    let df = context
        .ctx
        .sql(&cx.dag.nodes[&model.name].sql)
        .await
        .map_err(|e| UnitError::query(&e))?;
    if let Some(cluster) = cx.cluster {
        return cluster_attempt(cx, job, unit, bar, cluster, context, df).await;
    }
    // (`_views` keeps the unit's views served until the attempt ends.)
    let super::unit_context::UnitContext {
        ctx,
        shares,
        views: _views,
    } = context;
    // Reading the sources starts here (Parquet footers are read while planning): an error
    // is explained by naming the file at fault.
    let explain = |e: DataFusionError| async move {
        let sources = cx.dag.sources_read(&model.name);
        let message = crate::diagnose::explain(cx.engine, cx.pipeline, &sources, &e).await;
        UnitError::caused_by(&e, message)
    };
    let mut exec = match cx.engine.execute(df).await {
        Ok(exec) => exec,
        Err(e) => return Err(explain(e).await),
    };
    let mut spec = spec.clone();
    spec.preserve_order = exec.is_ordered();
    let Some(stream) = exec.take_stream() else {
        return Err(UnitError::permanent("the query produced no stream"));
    };
    let slot = sink::UnitSlot::attempt(&unit.key());
    let staged = sink::stage_unit(output, &spec, stream, cx.run_id, slot, &|rows| {
        bar.rows(rows)
    })
    .await;
    match staged {
        Ok(staged) => {
            let mut tables = cx.dag.tables_read(cx.pipeline, &model.name);
            tables.extend(shares);
            let mut scan = exec.scan_rows(&tables);
            own_period_rows(job, unit, &mut scan);
            Ok(Attempt {
                staged,
                scan,
                spilled: exec.spilled_bytes(),
                joins: exec.joins(),
                rejects: own_rejects(&ctx, &cx.dag.sources_read(&model.name)).await,
                job: None,
            })
        }
        Err(sink::SinkError::Input(e)) => Err(explain(e).await),
        Err(e) => Err(UnitError::from(e)),
    }
}

/// A unit takes in its period's rows: the rows of other periods its files hold were read,
/// but they are other units' rows, not filtered out.
fn own_period_rows(job: &UnitJob<'_>, unit: &Unit, scan: &mut ScanRows) {
    if let (UnitKind::Period { start, .. }, Some(events)) = (&unit.kind, job.events) {
        for (source, _) in job.event_sources {
            let mine = events.rows_in(source, *start);
            let read = scan.by_table.insert(source.clone(), mine).unwrap_or(0);
            scan.filtered = scan
                .filtered
                .map(|f| f.saturating_sub(read.saturating_sub(mine)));
        }
    }
}

/// One attempt of a unit on a cluster: its plan, made here with sluice's rules, is submitted
/// as a Ballista job whose executors stage the output's files; the job's output lists them.
async fn cluster_attempt(
    cx: &RunCx<'_>,
    job: &UnitJob<'_>,
    unit: &Unit,
    bar: &crate::progress::Units,
    cluster: &crate::cluster::Cluster,
    context: super::unit_context::UnitContext,
    df: datafusion::prelude::DataFrame,
) -> Result<Attempt, UnitError> {
    // (`_views` keeps the unit's views served until the attempt ends.)
    let super::unit_context::UnitContext {
        ctx,
        shares,
        views: _views,
    } = context;
    let model = job.model;
    let plan = match df.create_physical_plan().await {
        Ok(plan) => plan,
        Err(e) => {
            let sources = cx.dag.sources_read(&model.name);
            let message = crate::diagnose::explain(cx.engine, cx.pipeline, &sources, &e).await;
            return Err(UnitError::caused_by(&e, message));
        }
    };
    crate::cluster::check_plan(&model.name, &plan)
        .map_err(|e| UnitError::permanent(e.to_string()))?;
    let mut spec = job.spec.clone();
    spec.preserve_order = plan.properties().output_ordering().is_some();
    let staging = job
        .output
        .staging()
        .cloned()
        .ok_or_else(|| UnitError::permanent("the output has no staging folder"))?;
    let slot = sink::UnitSlot::attempt(&unit.key());
    let target = sink::exec::StageTarget::new(&spec, &staging, cx.run_id, &slot);
    let config = crate::cluster::job_config(&ctx, cx.engine.stores())
        .map_err(|e| UnitError::permanent(e.to_string()))?;
    let name = format!("{}/{}/{}", cx.pipeline.name, model.name, unit.name);
    let schema = plan.schema();
    // The job's tasks leave the progress bar when it ends, or when the unit is dropped
    // (timed out, interrupted).
    let _over = bar.job_guard(&unit.name);
    let (mut files, report) = cluster
        .stage(plan, target, &config, &name, &|p| {
            bar.tasks(&unit.name, p.job_id, p.tasks_done, p.tasks)
        })
        .await
        .map_err(|e| UnitError {
            message: e.to_string(),
            transient: e.is_transient(),
        })?;
    files.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    let staged = sink::UnitOutput {
        files,
        schema: Arc::clone(&schema),
    };
    bar.rows(staged.rows());
    let mut tables = cx.dag.tables_read(cx.pipeline, &model.name);
    tables.extend(shares);
    let mut scan = crate::cluster::scan_rows(&report, &tables);
    own_period_rows(job, unit, &mut scan);
    Ok(Attempt {
        staged,
        scan,
        spilled: report.spilled_bytes,
        joins: Vec::new(),
        rejects: own_rejects(&ctx, &cx.dag.sources_read(&model.name)).await,
        job: Some(report),
    })
}

/// What the quarantine scans of a unit's sources set aside and read: a unit that reads a
/// share of a source (its files, its period) reads it through a table of its own, whose
/// rejects would otherwise be lost with its context. (The model merges every unit's, each
/// row once, so a table the unit shares with others may be taken from too.)
async fn own_rejects(
    ctx: &datafusion::prelude::SessionContext,
    sources: &std::collections::BTreeSet<String>,
) -> UnitRejects {
    let mut out = Vec::new();
    for source in sources {
        let Ok(provider) = ctx.table_provider(source.as_str()).await else {
            continue;
        };
        if let Some(table) = provider.downcast_ref::<QuarantineTable>() {
            out.push((source.clone(), table.sink.take()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_error_is_transient_when_its_cause_is() {
        let plan = DataFusionError::Plan("No field named x".into());
        assert!(!UnitError::query(&plan).is_transient());
        let reset = DataFusionError::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset by peer",
        ));
        assert!(UnitError::query(&reset).is_transient());
        assert!(UnitError::timed_out(Duration::from_secs(90)).is_transient());
        assert_eq!(
            UnitError::timed_out(Duration::from_secs(90)).to_string(),
            "timed out after 1m30s"
        );
        assert!(!UnitError::from("a message".to_string()).is_transient());
    }

    /// Errors that reach the unit as another layer's error keep whether they are transient:
    /// a write that failed on a dropped connection, a unit's files that could not be listed.
    #[test]
    fn write_and_read_failures_keep_whether_they_are_transient() {
        let reset = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let write = sink::writer::WriteError::from(reset());
        assert!(write.transient);
        let sink_error = sink::SinkError::Write {
            key: "out/part-0.parquet".into(),
            message: write.message,
            transient: write.transient,
        };
        assert!(UnitError::from(sink_error).is_transient());
        let bad_data = sink::writer::WriteError::from(
            datafusion::arrow::error::ArrowError::CastError("'x' to Int32".into()),
        );
        assert!(!bad_data.transient);
        let listing = crate::catalog::CatalogError::read_failed("orders", "s3://b/o/".into(), &{
            DataFusionError::ObjectStore(Box::new(object_store::Error::Generic {
                store: "S3",
                source: Box::new(reset()),
            }))
        });
        let unit = UnitError::from(listing);
        assert!(unit.is_transient());
        assert!(unit.to_string().contains("source 'orders'"), "{unit}");
        let missing = crate::catalog::CatalogError::read_failed(
            "orders",
            "s3://b/o/".into(),
            &DataFusionError::Plan("no such column".into()),
        );
        assert!(!UnitError::from(missing).is_transient());
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for n in 1..=10 {
            let d = backoff(n).as_secs_f64();
            let base = 0.5 * 2f64.powi((n - 1).min(6) as i32);
            assert!(
                d >= (base * 0.5).min(30.0) - 1e-9 && d <= (base * 1.5).min(30.0) + 1e-9,
                "{n}: {d}"
            );
        }
    }
}
