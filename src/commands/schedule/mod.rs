//! `sluice schedule PATH...`: a long-lived process that runs each pipeline on its
//! `[schedule]`. Runs of one pipeline never overlap (one loop per pipeline, and the state
//! store's run lock against other processes); a run starts only inside its windows, and one
//! still going when its window closes is paused (or cancelled) and resumed at the next
//! window; runs missed while the process was down are made up as `catch_up` says. SIGTERM or
//! SIGINT drains every run (no unit starts; running ones finish), cancels what is left after
//! the grace period (a resume redoes it), and ends the process with status 0.

mod clock;
mod serve;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use clock::Clock;

use super::Context;
use super::run::{ReportFile, execute_with, last_successes};
use crate::config::schedule::{CatchUp, OnWindowEnd, Schedule};
use crate::config::window::{next_open, open_until};
use crate::error::{EXIT_OK, Error};
use crate::report::RunReport;
use crate::run::{Interrupt, RunOptions, StopReason};
use crate::status::RunStatus;
use serve::Board;

/// At most this many missed runs are made up by `catch_up = "all"`.
const MAX_CATCH_UP: usize = 1000;

/// What `sluice schedule` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pipelines: folders or their sluice.toml.
    pub paths: Vec<PathBuf>,
    /// Engine settings and variables every run gets.
    pub run: RunOptions,
    /// `--listen`: where `/metrics` and `/healthz` are served.
    pub listen: Option<std::net::SocketAddr>,
    /// `--grace`: how long running units may finish after SIGTERM before they are cancelled.
    pub grace: Duration,
    /// `--max-concurrent-units`: units running at once over all pipelines.
    pub max_concurrent_units: Option<usize>,
    /// `--report-dir`: each run's report is written there as `PIPELINE-RUN_ID.json`.
    pub report_dir: Option<PathBuf>,
    /// The clock (simulated in tests).
    pub clock: Clock,
    /// Stop as SIGTERM would when the clock reaches this (for tests).
    pub until: Option<DateTime<Utc>>,
}

/// Runs the pipelines on their schedules until SIGTERM / SIGINT (or `until`); 0 then. A
/// pipeline that does not load, or has no `[schedule]`, is an error before anything runs.
pub async fn execute(opts: &Options, cx: &Context<'_>) -> Result<i32, Error> {
    // A time that comes due while the process starts up is not missed.
    let started = opts.clock.now();
    let board = Arc::new(Board::new());
    let slots = opts
        .max_concurrent_units
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
    if let Some(dir) = &opts.report_dir {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for path in &opts.paths {
        let pipeline = cx.load_pipeline(path)?;
        let Some(schedule) = pipeline.schedule.clone() else {
            return Err(crate::config::ConfigError::Invalid {
                path: pipeline.file.clone(),
                line: None,
                key: "schedule".to_string(),
                message: "sluice schedule needs a [schedule] with a cron expression (e.g. \
                          cron = \"0 2 * * *\")"
                    .to_string(),
            }
            .into());
        };
        if jobs.iter().any(|j| j.name == pipeline.name) {
            return Err(super::usage(
                "PATH",
                format!("pipeline '{}' is given twice", pipeline.name),
            ));
        }
        // (Checked here, as each run would check them, so a bad setting stops the scheduler
        // instead of failing every run.)
        crate::engine::settings::check(&opts.run.engine_settings(&pipeline))?;
        // (Opened here, so a state store that cannot be is an error before anything runs.)
        let store = crate::state::StateStore::open(&pipeline.settings.state)?;
        jobs.push(Job {
            path: path.clone(),
            name: pipeline.name.clone(),
            store,
            schedule,
            started,
            opts,
            cx,
            board: Arc::clone(&board),
            slots: slots.clone(),
        });
    }
    let server = match opts.listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Io {
                    path: format!("--listen {addr}"),
                    source,
                })?;
            tracing::info!("serving /metrics and /healthz on http://{addr}");
            Some(serve::serve(listener, Arc::clone(&board)))
        }
        None => None,
    };
    let until = async {
        match opts.until {
            Some(t) => {
                opts.clock.sleep_until(t).await;
                cx.interrupt.raise(libc::SIGTERM);
            }
            None => std::future::pending().await,
        }
    };
    // A pipeline whose schedule ends by itself (its cron fires no more) ends the process with
    // an error, rather than leaving it up with that pipeline silently gone.
    let loops = futures::future::try_join_all(jobs.iter().map(Job::run));
    tokio::select! {
        r = loops => { r?; }
        () = async { match server { Some(s) => s.await, None => std::future::pending().await } } => {}
        () = async { until.await; std::future::pending::<()>().await } => {}
    };
    Ok(EXIT_OK)
}

/// One pipeline's schedule.
struct Job<'a> {
    path: PathBuf,
    name: String,
    store: crate::state::StateStore,
    schedule: Schedule,
    /// When the process started.
    started: DateTime<Utc>,
    opts: &'a Options,
    cx: &'a Context<'a>,
    board: Arc<Board>,
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl Job<'_> {
    /// Fires the pipeline's runs until the process is asked to stop.
    async fn run(&self) -> Result<(), Error> {
        let clock = self.opts.clock;
        let s = &self.schedule;
        let store = &self.store;
        // (The state store's record of the schedule is a convenience: when it cannot be read
        // or written, the schedule goes on from now, with a warning.)
        let last_fire = store
            .last_fire(&self.name)
            .unwrap_or_else(|e| {
                tracing::warn!(pipeline = %self.name, "cannot read the schedule's record: {e}");
                None
            })
            .and_then(|t| crate::config::parse_timestamp(&t));
        // Every scheduled time up to `horizon` has been fired, queued or passed over.
        let now = clock.now();
        let mut horizon = last_fire.unwrap_or(self.started);
        if last_fire.is_none() {
            // The first start: from the process's start on, a time that comes due counts
            // (even one whose run waited for its window when the scheduler stopped).
            if let Err(e) = store.set_last_fire(&self.name, &self.started.to_rfc3339()) {
                tracing::warn!(pipeline = %self.name, "cannot record the schedule: {e}");
            }
        }
        // What was missed while no scheduler ran.
        let mut pending = self.missed(horizon, now);
        horizon = horizon.max(now);
        loop {
            if self.cx.interrupt.stopping().is_some() {
                return Ok(());
            }
            let (fire, as_of) = match pending.pop_front() {
                Some(missed) => missed,
                None => {
                    let Some(next) = s.cron.next_after(s.timezone, horizon) else {
                        return Err(super::usage(
                            "[schedule] cron",
                            format!(
                                "pipeline '{}': {:?} fires no more after {horizon}",
                                self.name,
                                s.cron.as_str()
                            ),
                        ));
                    };
                    self.board.scheduled.next_run(&self.name, next);
                    tracing::info!(pipeline = %self.name, next = %next.with_timezone(&s.timezone).to_rfc3339(), "next run");
                    if !self.sleep_until(next).await {
                        return Ok(());
                    }
                    horizon = next;
                    (next, None)
                }
            };
            self.fire(fire, as_of).await;
            if self.cx.interrupt.stopping().is_some() {
                return Ok(());
            }
            // What came due while it ran.
            let now = clock.now();
            pending.extend(self.missed(horizon, now));
            horizon = horizon.max(now);
        }
    }

    /// The runs due in `(since, now]` as `catch_up` makes them up: the scheduled time, and
    /// the clock the run gets (`all`: its scheduled time). The ones passed over are recorded
    /// as fired.
    fn missed(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> VecDeque<(DateTime<Utc>, Option<DateTime<Utc>>)> {
        let s = &self.schedule;
        let (due, all) = s.cron.between(s.timezone, since, now, MAX_CATCH_UP);
        let Some(&latest) = due.last() else {
            return VecDeque::new();
        };
        tracing::info!(pipeline = %self.name, missed = all, catch_up = ?s.catch_up, "runs missed");
        match s.catch_up {
            CatchUp::Latest => VecDeque::from([(latest, None)]),
            CatchUp::All => {
                if all > due.len() {
                    tracing::warn!(pipeline = %self.name, "{all} runs missed: only the latest {} are made up", due.len());
                }
                due.into_iter().map(|t| (t, Some(t))).collect()
            }
            CatchUp::None => {
                if let Err(e) = self.store.set_last_fire(&self.name, &latest.to_rfc3339()) {
                    tracing::warn!(pipeline = %self.name, "cannot record the schedule: {e}");
                }
                VecDeque::new()
            }
        }
    }

    /// Sleeps until `t`; false if the process was asked to stop first.
    async fn sleep_until(&self, t: DateTime<Utc>) -> bool {
        tokio::select! {
            () = self.opts.clock.sleep_until(t) => self.cx.interrupt.stopping().is_none(),
            () = self.cx.interrupt.wait() => false,
        }
    }

    /// The run scheduled at `fire`: started inside a window, paused (or cancelled) when the
    /// window closes and resumed at the next, until it ends or the process stops.
    async fn fire(&self, fire: DateTime<Utc>, as_of: Option<DateTime<Utc>>) {
        let clock = self.opts.clock;
        let s = &self.schedule;
        let mut recorded = false;
        loop {
            let window_end = open_until(&s.windows, s.timezone, clock.now());
            if !s.windows.is_empty() && window_end.is_none() {
                let Some(open) = next_open(&s.windows, s.timezone, clock.now()) else {
                    return;
                };
                let open = open.with_timezone(&Utc);
                tracing::info!(pipeline = %self.name, scheduled = %fire.with_timezone(&s.timezone).to_rfc3339(), window_opens = %open.with_timezone(&s.timezone).to_rfc3339(), "waiting for the run window");
                self.board.scheduled.next_run(&self.name, open);
                if !self.sleep_until(open).await {
                    return;
                }
                // Looked at again: the window may be empty that day (inside a daylight saving
                // gap), or the wait may have overslept it.
                continue;
            }
            // Recorded once the run starts: a scheduler stopped while it waited for the window
            // makes it up when it comes back.
            if !recorded {
                if let Err(e) = self.store.set_last_fire(&self.name, &fire.to_rfc3339()) {
                    tracing::warn!(pipeline = %self.name, "cannot record the schedule: {e}");
                }
                recorded = true;
            }
            let Some((report, stopped)) = self.run_once(as_of, window_end).await else {
                return;
            };
            // Paused at the window's end (or cancelled there): resumed at the next.
            let resume = matches!(report.status, RunStatus::Paused | RunStatus::Interrupted)
                && stopped == Some(StopReason::WindowClosed)
                && self.cx.interrupt.stopping().is_none();
            if !resume {
                return;
            }
        }
    }

    /// One run, under a watch that drains or cancels it at the window's end, past
    /// `max_run_time` and on the process's SIGTERM. Its report, if it got one, and why it was
    /// stopped, if it was.
    async fn run_once(
        &self,
        as_of: Option<DateTime<Utc>>,
        window_end: Option<DateTime<Utc>>,
    ) -> Option<(RunReport, Option<StopReason>)> {
        let clock = self.opts.clock;
        let s = &self.schedule;
        let interrupt = Arc::new(Interrupt::default());
        let mut run = self.opts.run.clone();
        run.interrupt = Arc::clone(&interrupt);
        run.unit_slots = self.slots.clone();
        run.as_of = as_of;
        let opts = super::run::Options {
            path: self.path.clone(),
            run,
            report: None,
            window: None,
            now: None,
            metrics: None,
        };
        // Drains or cancels the run: at the window's end, past max_run_time, and on the
        // process's SIGTERM (drain, then cancel after the grace period), whichever come.
        let watch = async {
            let closes = async {
                match window_end {
                    Some(t) => clock.sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let too_long = async {
                match s.max_run_time {
                    Some(d) => tokio::time::sleep(clock.real(d)).await,
                    None => std::future::pending().await,
                }
            };
            let grace_over = async {
                self.cx.interrupt.wait().await;
                let reason = self
                    .cx
                    .interrupt
                    .cancelled()
                    .unwrap_or(StopReason::Signal(libc::SIGTERM));
                interrupt.drain(reason);
                tokio::time::sleep(self.opts.grace).await;
                reason
            };
            tokio::pin!(closes, too_long, grace_over);
            let mut closed = false;
            loop {
                tokio::select! {
                    () = &mut closes, if !closed => {
                        closed = true;
                        tracing::warn!(pipeline = %self.name, "the run window closed: {}", match s.on_window_end {
                            OnWindowEnd::Pause => "no more units start; the running ones finish",
                            OnWindowEnd::Cancel => "the running units are cancelled",
                        });
                        match s.on_window_end {
                            OnWindowEnd::Pause => interrupt.drain(StopReason::WindowClosed),
                            OnWindowEnd::Cancel => interrupt.cancel(StopReason::WindowClosed),
                        }
                    }
                    () = &mut too_long => {
                        tracing::warn!(pipeline = %self.name, "the run went past its max_run_time: it is cancelled");
                        interrupt.cancel(StopReason::MaxRunTime);
                        break;
                    }
                    reason = &mut grace_over => {
                        interrupt.cancel(reason);
                        break;
                    }
                }
            }
            std::future::pending::<()>().await
        };
        self.board.scheduled.running(&self.name, true);
        let mut last = None;
        let outcome = tokio::select! {
            r = execute_with(&opts, self.cx, &mut last) => r,
            () = watch => Ok(EXIT_OK),
        };
        self.board.scheduled.running(&self.name, false);
        if let Err(e) = &outcome {
            tracing::error!(pipeline = %self.name, "the run failed: {e}");
        }
        let mut report = last?;
        if report.pipeline.is_empty() {
            // It did not load: still this pipeline's run.
            report.pipeline = self.name.clone();
        }
        if interrupt.cancelled() == Some(StopReason::MaxRunTime) {
            report.error = Some(
                "the run went past its max_run_time and was cancelled; the next scheduled run \
                 resumes it"
                    .to_string(),
            );
        }
        let pipeline = self.cx.load_pipeline(&self.path).ok();
        let successes = pipeline
            .map(|p| last_successes(&p, &report.pipeline))
            .unwrap_or_default();
        self.board.ended(&report, successes);
        if let Some(dir) = &self.opts.report_dir {
            let path = dir.join(format!("{}-{}.json", self.name, report.run_id));
            if let Err(e) = ReportFile::create(&path).and_then(|mut f| f.write(&report)) {
                tracing::warn!("cannot write the report: {e}");
            }
        }
        Some((report, interrupt.stopping()))
    }
}
