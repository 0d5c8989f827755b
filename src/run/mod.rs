//! A run: a prepared pipeline from configuration to published outputs, under the pipeline's
//! lock, recorded in its state store.
//!
//! The data flows one way: [`Pipeline`] (config) → [`Dag`] → tables registered in the engine's
//! catalog → each model's query validated up front ([`prepare`]) → executed in dependency
//! order, each table model run as work units ([`unit`]) staged into its sink and published
//! once ([`model`]) → [`RunReport`]. A killed run is resumed ([`resume`]).
//!
//! - [`prepare`]: the DAG built, inputs registered, every selected model planned;
//! - [`model`]: one table model, as named phases: resume, units, rejects, checks, publish;
//! - [`unit`]: planning a model's units, one unit's attempts, retries and backoff;
//! - [`unit_context`]: the SQL context one unit runs in (its slice of the inputs);
//! - [`event_map`]: where a time-batched model's rows fall in time (periods, and their files);
//! - [`resume`]: what a run does as a fingerprint, and the units a resumed run keeps;
//! - [`route`]: source files holding rows of many units, read once and routed to them;
//! - [`source_schemas`]: the schemas of the sources' files, kept between runs.

mod database_load;
pub mod event_map;
mod groups;
pub mod heal;
pub mod incremental;
mod input_files;
mod model;
pub mod prepare;
mod resume;
mod route;
mod source_schemas;
pub mod unit;
mod unit_context;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Materialized, Pipeline, timestamp_now};
use crate::dag::Dag;
use crate::engine::Engine;
use crate::error::Error;
use crate::progress::Progress;
use crate::report::{ModelReport, RunReport};
use crate::state::{Holder, RunLock, StateStore};
use crate::status::{ModelStatus, RunStatus};

pub use prepare::{Prepared, prepare, register_output};

/// What `sluice run` was asked to do, beyond the pipeline itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--select`: models to run (`a`, `a+`, `+a`); empty means all.
    pub select: Vec<String>,
    /// `--var KEY=VALUE`, over the pipeline's `[vars]`.
    pub vars: BTreeMap<String, String>,
    /// `--memory-limit` in bytes, over `settings.memory_limit`.
    pub memory_limit: Option<usize>,
    /// `--threads`, over `settings.threads`.
    pub threads: Option<usize>,
    /// Where the cgroup limits are read from when `threads` or `memory_limit` is set nowhere
    /// (`--cgroup-root`, for tests; default the system's).
    pub cgroup: crate::engine::limits::CgroupPaths,
    /// `--join-strategy`, over `settings.join_strategy`.
    pub join_strategy: Option<crate::config::JoinStrategy>,
    /// `--join-order`, over `settings.join_order`.
    pub join_order: Option<crate::config::JoinOrder>,
    /// `--set KEY=VALUE`, after `[settings.options]`: DataFusion's options and sluice's
    /// rewrite switches ([`EngineOptions::settings`](crate::engine::EngineOptions::settings)).
    pub settings: Vec<(String, String)>,
    /// `--dry-run`: validate and plan, write nothing.
    pub dry_run: bool,
    /// `--restart`: do not resume an unfinished run; start afresh.
    pub restart: bool,
    /// Raised when the process is asked to stop (the binary's SIGINT / SIGTERM handler).
    pub interrupt: Arc<Interrupt>,
    /// Slots for work units shared with other runs of the process (`sluice schedule
    /// --max-concurrent-units`): a unit holds one while it runs.
    pub unit_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// `--force-append`: apply an append even if the output already holds it.
    pub force_append: bool,
    /// `--as-of`: the run's clock for incremental models (default: now, or the clock of
    /// the run it resumes).
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// What incremental models compute: `run` (new and late periods), `--no-reconcile`,
    /// `reconcile`, `backfill`, `--full-refresh`.
    pub kind: incremental::RunKind,
    /// `--cluster`: where the queries run, over `[settings] cluster`.
    pub cluster: Option<crate::config::ClusterTarget>,
}

impl RunOptions {
    /// The engine settings of a run of `pipeline`: its `[settings.options]`, then `--set`.
    pub fn engine_settings(&self, pipeline: &Pipeline) -> Vec<(String, String)> {
        (pipeline.settings.options.iter())
            .chain(&self.settings)
            .cloned()
            .collect()
    }
}

/// Why a run is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The process received this signal (SIGINT, SIGTERM).
    Signal(i32),
    /// The run window closed (`sluice schedule`).
    WindowClosed,
    /// The run went on past its schedule's `max_run_time`.
    MaxRunTime,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Signal(2) => f.write_str("SIGINT"),
            StopReason::Signal(15) => f.write_str("SIGTERM"),
            StopReason::Signal(n) => write!(f, "signal {n}"),
            StopReason::WindowClosed => f.write_str("the run window closed"),
            StopReason::MaxRunTime => f.write_str("the run went past its max_run_time"),
        }
    }
}

/// A request to stop a run, in one of two strengths. A *drain* starts no more models or units
/// and lets the running units finish: the run ends `paused`, and the next run of the pipeline
/// resumes it (`sluice schedule` at a window's end, or at the first SIGTERM). A *cancel*
/// (the binary's SIGINT / SIGTERM handler, a drain's grace period over) also cancels the
/// running units (their staging is removed; a resume runs them again): the run ends
/// `interrupted`. Either way what was committed is kept.
#[derive(Debug, Default)]
pub struct Interrupt {
    cancel: std::sync::Mutex<Option<StopReason>>,
    drain: std::sync::Mutex<Option<StopReason>>,
    notify: tokio::sync::Notify,
    drained: tokio::sync::Notify,
}

impl Interrupt {
    /// Cancels the run, because of signal number `signal`.
    pub fn raise(&self, signal: i32) {
        self.cancel(StopReason::Signal(signal));
    }

    /// Cancels the run: nothing more starts, and the running units are cancelled.
    pub fn cancel(&self, reason: StopReason) {
        Self::set(&self.cancel, reason);
        self.notify.notify_waiters();
    }

    /// Drains the run: nothing more starts; the running units finish.
    pub fn drain(&self, reason: StopReason) {
        Self::set(&self.drain, reason);
        self.drained.notify_waiters();
    }

    /// Keeps the first reason given.
    fn set(slot: &std::sync::Mutex<Option<StopReason>>, reason: StopReason) {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(reason);
    }

    fn get(slot: &std::sync::Mutex<Option<StopReason>>) -> Option<StopReason> {
        *slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the run was cancelled, if it was.
    pub fn cancelled(&self) -> Option<StopReason> {
        Self::get(&self.cancel)
    }

    /// Why the run should start nothing more (cancelled or drained), if it should.
    pub fn stopping(&self) -> Option<StopReason> {
        self.cancelled().or_else(|| Self::get(&self.drain))
    }

    /// The signal that cancelled the run, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.cancelled() {
            Some(StopReason::Signal(s)) => Some(s),
            _ => None,
        }
    }

    /// Waits until the run is cancelled.
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a cancel in between is not missed.
        notified.as_mut().enable();
        if self.cancelled().is_some() {
            return;
        }
        notified.await;
    }

    /// Waits until the run is drained or cancelled.
    pub async fn wait_stopping(&self) {
        let drained = self.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if self.stopping().is_some() {
            return;
        }
        tokio::select! {
            () = drained => {}
            () = self.wait() => {}
        }
    }

    /// The signal's name, for messages.
    pub fn describe(signal: i32) -> String {
        StopReason::Signal(signal).to_string()
    }
}

/// Runs a prepared pipeline under its lock, recorded in its state store: every selected model
/// in order. A failed model fails the run and skips the models downstream of it; independent
/// models still run. A dry run takes no lock and records nothing.
///
/// Unless `opts.restart`, a run resumes the last run of the pipeline if that one did not
/// finish and did the same work (same selection, variables, SQL and sinks): it keeps that
/// run's id, so the units it committed (staged and recorded) are not redone, and models it
/// already published are not published again.
pub async fn run(
    prepared: Prepared,
    opts: &RunOptions,
    progress: &Progress,
) -> Result<RunReport, Error> {
    let mut run_id = crate::table::new_run_id();
    let started_at = timestamp_now();
    let mut clock = clock_of(opts);
    if opts.dry_run {
        let ended = crate::table::Ended::default();
        return Ok(run_models(
            prepared, opts, progress, None, run_id, started_at, &ended, &clock,
        )
        .await);
    }
    let state = Arc::new(StateStore::open(&prepared.pipeline.settings.state)?);
    let me = Holder::current();
    let pipeline = prepared.pipeline.name.clone();
    let (mut lock, taken_over) = RunLock::take(&state, &pipeline, &run_id, &me, &started_at)?;
    if let Some(old) = taken_over {
        tracing::warn!("took over the lock of run {old}, whose process is gone");
    }
    prepared.schemas_read.record(&state);
    let fingerprint = resume::fingerprint(&prepared, opts);
    if !opts.restart
        && let Some(old) = state.resumable_run(&pipeline, &fingerprint)?
    {
        lock.move_to(&old)?;
        tracing::warn!(
            "resuming run {old}: its committed units are kept (--restart starts afresh)"
        );
        // Its clock too, unless one was given (then it is in the fingerprint): a clock that
        // moved on would plan other periods than the units it committed.
        if opts.as_of.is_none()
            && let Some(t) = state
                .clock(&old)?
                .and_then(|t| crate::config::parse_timestamp(&t))
        {
            clock.as_of = t.naive_utc();
        }
        run_id = old;
    }
    let selection = prepared.selected.join(",");
    let vars = opts
        .vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    state.start_run(
        &run_id,
        &pipeline,
        &started_at,
        &selection,
        &vars,
        &fingerprint,
        &me,
    )?;
    state.set_clock(
        &run_id,
        &clock.as_of.and_utc().to_rfc3339(),
        clock.kind.name(),
    )?;
    let beat = Heartbeat::start(&state, &run_id);
    // Run ids name the writers of outputs' leftovers: the pipeline's other runs have all
    // ended (this one holds the lock), so their leftovers go at once.
    let ended = crate::table::Ended {
        runs: state
            .run_ids()?
            .into_iter()
            .filter(|id| *id != run_id)
            .collect(),
        as_of: Some(chrono::Utc::now()),
        resumable: None,
    };
    heal::heal_outputs(&prepared, Some(&run_id), &ended).await;
    let report = run_models(
        prepared,
        opts,
        progress,
        Some(&state),
        run_id.clone(),
        started_at,
        &ended,
        &clock,
    )
    .await;
    drop(beat);
    state.finish_run(&report)?;
    if report.status == RunStatus::Failed
        && report
            .models
            .iter()
            .all(|m| m.status != ModelStatus::Failed && m.status != ModelStatus::Skipped)
    {
        // Failed only by `on_late_beyond_window = "fail"`: every model is published, so
        // there is nothing to resume (a resume would also keep the old clock).
        state.complete_run(&report.run_id)?;
    }
    drop(lock);
    Ok(report)
}

/// The clock `opts` asks for: `--as-of`, else now.
pub fn clock_of(opts: &RunOptions) -> incremental::Clock {
    incremental::Clock {
        as_of: opts.as_of.unwrap_or_else(chrono::Utc::now).naive_utc(),
        kind: opts.kind.clone(),
    }
}

/// Tells other hosts sharing the state file that a run is alive, every
/// [`HEARTBEAT_EVERY`](crate::state::HEARTBEAT_EVERY), until dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(state: &Arc<StateStore>, run_id: &str) -> Heartbeat {
        let state = Arc::clone(state);
        let run_id = run_id.to_string();
        Heartbeat(tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::state::HEARTBEAT_EVERY).await;
                if let Err(e) = state.heartbeat(&run_id, &timestamp_now()) {
                    tracing::warn!("cannot write the heartbeat: {e}");
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records a run that stopped before any model ran (invalid SQL, unreadable source...) in the
/// pipeline's ledger, so `sluice runs` shows it.
pub fn record_not_run(pipeline: &Pipeline, report: &RunReport) -> Result<(), Error> {
    let state = StateStore::open(&pipeline.settings.state)?;
    state.start_run(
        &report.run_id,
        &report.pipeline,
        &report.started_at,
        "",
        "",
        "",
        &Holder::current(),
    )?;
    state.finish_run(report)?;
    Ok(())
}

/// Sends the OpenLineage events of a run that failed before any model ran (START, FAIL), if
/// the pipeline has a `[lineage]`.
pub async fn lineage_not_run(pipeline: &Pipeline, report: &RunReport) {
    if let Some(lineage) = crate::lineage::Lineage::new(pipeline) {
        let models: Vec<String> = pipeline.models.keys().cloned().collect();
        crate::lineage::Emitter::new(&lineage, &report.run_id, &models)
            .not_run(report)
            .await;
    }
}

/// What every model of a run shares.
struct RunCx<'a> {
    engine: &'a Engine,
    pipeline: &'a Pipeline,
    dag: &'a Dag,
    state: Option<&'a StateStore>,
    run_id: &'a str,
    progress: &'a Progress,
    interrupt: &'a Interrupt,
    unit_slots: Option<&'a tokio::sync::Semaphore>,
    force_append: bool,
    /// The pipeline's other runs: none is live while this one holds the run lock.
    ended: &'a crate::table::Ended,
    /// The run's clock, for incremental models.
    clock: &'a incremental::Clock,
    /// Per batched model whose groups units may split, the output columns of its keys.
    split_keys: &'a BTreeMap<String, Vec<String>>,
    /// The models whose result is sorted.
    sorted: &'a BTreeSet<String>,
    /// The pools of the pipeline's databases.
    databases: &'a crate::database::Databases,
    /// The cluster the queries run on, if any.
    cluster: Option<&'a crate::cluster::Cluster>,
}

#[allow(clippy::too_many_arguments)]
async fn run_models(
    prepared: Prepared,
    opts: &RunOptions,
    progress: &Progress,
    state: Option<&StateStore>,
    run_id: String,
    started_at: String,
    ended: &crate::table::Ended,
    clock: &incremental::Clock,
) -> RunReport {
    let Prepared {
        pipeline,
        dag,
        selected,
        engine,
        schemas,
        warnings,
        split_keys,
        sorted,
        schemas_read: _,
        databases,
        resources,
        lineage,
        cluster,
    } = prepared;
    // (A dry run sends no events.)
    let emitter = lineage
        .as_ref()
        .filter(|_| !opts.dry_run)
        .map(|l| crate::lineage::Emitter::new(l, &run_id, &selected));
    if let Some(e) = &emitter {
        e.start().await;
    }
    let cx = RunCx {
        engine: &engine,
        pipeline: &pipeline,
        dag: &dag,
        state,
        run_id: &run_id,
        progress,
        interrupt: &opts.interrupt,
        unit_slots: opts.unit_slots.as_deref(),
        force_append: opts.force_append,
        ended,
        clock,
        split_keys: &split_keys,
        sorted: &sorted,
        databases: &databases,
        cluster: cluster.as_deref(),
    };
    let mut reports = Vec::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for name in &selected {
        let model = &pipeline.models[name];
        let kind = model.materialized.name();
        if opts.dry_run {
            reports.push(ModelReport::new(name, kind, ModelStatus::Planned));
            continue;
        }
        if let Some(reason) = opts.interrupt.stopping() {
            let (status, how) = match opts.interrupt.cancelled() {
                Some(_) => (ModelStatus::Skipped, "interrupted"),
                None => (ModelStatus::Paused, "paused"),
            };
            let mut r = ModelReport::new(name, kind, status);
            r.error = Some(format!("not run: the run was {how} ({reason})"));
            progress.model_finished(name, r.status, 0);
            reports.push(r);
            continue;
        }
        if let Some(up) = dag.upstream(name).iter().find(|u| failed.contains(*u)) {
            let mut r = ModelReport::new(name, kind, ModelStatus::Skipped);
            r.error = Some(format!("upstream model '{up}' failed"));
            failed.insert(name.clone());
            progress.model_finished(name, r.status, 0);
            reports.push(r);
            continue;
        }
        if model.materialized == Materialized::View {
            let mut r = ModelReport::new(name, kind, ModelStatus::Success);
            r.units_total = 0;
            reports.push(r);
            continue;
        }
        let start = Instant::now();
        tracing::info!(model = %name, run_id = %run_id, "running");
        let mut report = ModelReport::new(name, kind, ModelStatus::Success);
        report.warnings = warnings.get(name).cloned().unwrap_or_default();
        if let Err(e) = model::run_table_model(&cx, name, &schemas[name], &mut report).await {
            // A drained model (units left for the resume) is paused, not failed.
            if report.status != ModelStatus::Paused {
                report.status = ModelStatus::Failed;
            }
            report.error = Some(match e {
                Error::Model { message, .. } => message,
                other => other.to_string(),
            });
            failed.insert(name.clone());
        }
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            model = %name,
            status = %report.status,
            rows_in = report.rows_in,
            rows_out = report.rows_out,
            units = report.units_total,
            elapsed_ms = report.elapsed_ms,
            "finished"
        );
        if let Some(state) = state
            && let Err(e) = state.record_model(&run_id, &report)
        {
            tracing::warn!("cannot record model {name}: {e}");
        }
        progress.model_finished(name, report.status, report.rows_out);
        if let Some(e) = &emitter {
            e.model(&report).await;
        }
        reports.push(report);
    }
    let late = late_beyond_failures(&pipeline, &reports);
    let status = if opts.dry_run {
        RunStatus::Planned
    } else if opts.interrupt.cancelled().is_some() {
        RunStatus::Interrupted
    } else if opts.interrupt.stopping().is_some()
        && late.is_none()
        && reports.iter().any(|r| r.status == ModelStatus::Paused)
        && !reports.iter().any(|r| r.status == ModelStatus::Failed)
    {
        // (A model that failed fails the run, paused or not: it needs a look.)
        RunStatus::Paused
    } else if failed.is_empty() && late.is_none() {
        RunStatus::Success
    } else {
        RunStatus::Failed
    };
    let report = RunReport {
        run_id,
        pipeline: pipeline.name.clone(),
        status,
        started_at,
        finished_at: timestamp_now(),
        models: reports,
        error: late,
        databases: databases
            .pools()
            .map(|p| crate::report::DatabaseReport::of(p))
            .collect(),
        stores: engine.stores().usage(),
        resources: Some(resources),
        exit_code: None,
        retryable: None,
        next_window: None,
    };
    if let Some(e) = &emitter {
        e.end(&report).await;
    }
    report
}

/// Incremental models with `on_late_beyond_window = "fail"` that found rows later than their
/// window in this run: their outputs are published, and the run fails with this message, so
/// whoever runs it is alerted.
fn late_beyond_failures(pipeline: &Pipeline, reports: &[ModelReport]) -> Option<String> {
    let failures: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let late = r.late.as_ref()?;
            let config = pipeline
                .models
                .get(&r.name)?
                .batches
                .as_ref()?
                .incremental
                .as_ref()?;
            let fail = config.on_late_beyond_window == crate::config::OnLate::Fail;
            (fail && late.counts.rows_late_beyond_window > 0).then(|| {
                let periods: Vec<&str> = late
                    .periods_needing_backfill
                    .iter()
                    .map(|b| b.period.as_str())
                    .collect();
                format!(
                    "model '{}': {} rows arrived later than the late window (periods {}); they \
                     are not applied: {}",
                    r.name,
                    late.counts.rows_late_beyond_window,
                    periods.join(", "),
                    late.backfill_command
                        .as_deref()
                        .unwrap_or("run sluice backfill")
                )
            })
        })
        .collect();
    (!failures.is_empty()).then(|| failures.join("; "))
}
