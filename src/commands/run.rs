//! `sluice run`: load, prepare and run a pipeline; write its report; print its summary.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Context, usage};
use crate::error::{EXIT_DEFERRED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, Error};
use crate::report::RunReport;
use crate::run::{self, RunOptions};
use crate::status::ModelStatus;

/// What `sluice run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pipeline folder, or its sluice.toml.
    pub path: PathBuf,
    /// Selection, variables, engine settings, `--dry-run`, `--restart`.
    pub run: RunOptions,
    /// `--report FILE`: where the JSON run report goes.
    pub report: Option<PathBuf>,
    /// `--window`: the run starts only inside one of these, in this time zone (`--timezone`;
    /// default: `[schedule] timezone`, else UTC).
    pub window: Option<(Vec<crate::config::window::Window>, Option<chrono_tz::Tz>)>,
    /// The wall clock the window is checked against (`--now`, for tests; default: now).
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// `--metrics-file FILE`: where the run's Prometheus metrics go.
    pub metrics: Option<PathBuf>,
}

/// Runs the pipeline. Exit status 0 when every model succeeded, 1 when one failed, 128 + the
/// signal (130 for SIGINT, 143 for SIGTERM) when the run was interrupted; an error before any
/// model ran (an invalid pipeline, a missing source) is returned, and still written to the
/// report.
pub async fn execute(opts: &Options, cx: &Context<'_>) -> Result<i32, Error> {
    let mut opts = opts.clone();
    opts.run.interrupt = std::sync::Arc::clone(&cx.interrupt);
    execute_with(&opts, cx, &mut None).await
}

/// Runs the pipeline as [`execute`] does, under `opts.run.interrupt`; `last` receives the
/// run's report, whatever its end (none when the report itself could not be written).
pub(super) async fn execute_with(
    opts: &Options,
    cx: &Context<'_>,
    last: &mut Option<RunReport>,
) -> Result<i32, Error> {
    let interrupt = std::sync::Arc::clone(&opts.run.interrupt);
    // Open the report first: a bad path is found before anything runs, and a run that stops
    // early still leaves a report saying why.
    let mut report_file = match &opts.report {
        Some(path) => Some(ReportFile::create(path)?),
        None => None,
    };
    let started_at = crate::config::timestamp_now();
    let pipeline = match cx.load_pipeline(&opts.path) {
        Ok(p) => p,
        Err(e) => {
            let e = Error::from(e);
            let report = not_run(&e, "", started_at);
            if let Some(file) = report_file.as_mut() {
                file.write(&report)?;
            }
            *last = Some(report);
            return Err(e);
        }
    };
    if let Some((windows, tz)) = &opts.window {
        let now = opts.now.unwrap_or_else(chrono::Utc::now);
        let tz = tz
            .or(pipeline.schedule.as_ref().map(|s| s.timezone))
            .unwrap_or(chrono_tz::Tz::UTC);
        if crate::config::window::open_until(windows, tz, now).is_none() {
            let report = deferred(&pipeline.name, windows, tz, now, started_at, cx);
            if let Some(file) = report_file.as_mut() {
                file.write(&report)?;
            }
            write_metrics(opts, &report, Some(&pipeline));
            *last = Some(report);
            return Ok(EXIT_DEFERRED);
        }
    }
    let kept = pipeline.clone();
    let prepared = match run::prepare(pipeline, &opts.run, cx.env.clone()).await {
        Ok(p) => p,
        Err(e) => {
            let report = not_run(&e, &kept.name, started_at);
            if let Some(file) = report_file.as_mut() {
                file.write(&report)?;
            }
            write_metrics(opts, &report, Some(&kept));
            if !opts.run.dry_run {
                if let Err(state_err) = run::record_not_run(&kept, &report) {
                    tracing::warn!("cannot record the run: {state_err}");
                }
                run::lineage_not_run(&kept, &report).await;
            }
            *last = Some(report);
            return Err(e);
        }
    };
    if opts.run.dry_run && !cx.quiet {
        print!(
            "{}",
            super::plan::describe_plan(
                &prepared,
                &crate::run::unit::Planning {
                    clock: &run::clock_of(&opts.run),
                    state: None,
                    run_id: "",
                }
            )
            .await
        );
    }
    let report = match run::run(prepared, &opts.run, cx.progress).await {
        Ok(report) => report,
        Err(e) => {
            // Refused (another run holds the lock) or the state store failed: the report
            // still says so.
            let report = not_run(&e, &kept.name, started_at);
            if let Some(file) = report_file.as_mut() {
                file.write(&report)?;
            }
            *last = Some(report);
            return Err(e);
        }
    };
    let mut report = report;
    // (A run that failed or was interrupted may succeed when run again: a pipeline that
    // must be fixed stops before it runs, above.)
    // A paused run (drained by `sluice schedule`) is for later, as a deferred one is.
    let code = match interrupt.signal() {
        _ if report.succeeded() => EXIT_OK,
        Some(signal) => 128 + signal,
        None if report.status == crate::status::RunStatus::Paused => EXIT_DEFERRED,
        None => EXIT_FAILED,
    };
    report.set_exit_code(code, true);
    if let Some(file) = report_file.as_mut() {
        file.write(&report)?;
    }
    write_metrics(opts, &report, Some(&kept));
    if !cx.quiet {
        eprint!("{}", report.summary());
    }
    let succeeded = report.succeeded();
    let status = report.status;
    *last = Some(report);
    if succeeded {
        return Ok(EXIT_OK);
    }
    if let Some(reason) = interrupt.stopping() {
        let how = if status == crate::status::RunStatus::Paused {
            "paused"
        } else {
            "interrupted"
        };
        eprintln!(
            "error: the run was {how} ({reason}): what it committed is kept; run it again to resume",
        );
        return Ok(code);
    }
    let Some(report) = last.as_ref() else {
        return Ok(EXIT_FAILED);
    };
    if let Some(error) = &report.error {
        eprintln!("error: {error}");
    }
    for m in report
        .models
        .iter()
        .filter(|m| m.status == ModelStatus::Failed)
    {
        eprintln!(
            "error: model '{}' failed: {}",
            m.name,
            m.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(EXIT_FAILED)
}

/// A run started outside its windows: nothing runs; says when the next window opens, in the
/// report too (`deferred`), and exits [`EXIT_DEFERRED`] (an orchestrator reschedules).
fn deferred(
    pipeline: &str,
    windows: &[crate::config::window::Window],
    tz: chrono_tz::Tz,
    now: chrono::DateTime<chrono::Utc>,
    started_at: String,
    cx: &Context<'_>,
) -> RunReport {
    let next = crate::config::window::next_open(windows, tz, now).map(|t| t.to_rfc3339());
    let spans: Vec<&str> = windows.iter().map(|w| w.text.as_str()).collect();
    let message = format!(
        "outside the run window {} ({tz}) at {}: no unit started; {}",
        spans.join(", "),
        now.with_timezone(&tz).to_rfc3339(),
        match &next {
            Some(t) => format!("the window next opens at {t}"),
            None => "the window never opens".to_string(),
        }
    );
    if !cx.quiet {
        eprintln!("sluice: {message}");
    }
    let mut report = RunReport::not_run(crate::table::new_run_id(), pipeline, started_at, message);
    report.status = crate::status::RunStatus::Deferred;
    report.next_window = next;
    report.exit_code = Some(EXIT_DEFERRED);
    report.retryable = Some(true);
    report
}

/// Writes `report`'s metrics to `--metrics-file`, if given (replacing the file whole), with
/// the last successes the state store of `pipeline` knows. A dry run writes none (it would
/// replace the latest run's). A failure is a warning: the run's exit status and report stand.
fn write_metrics(opts: &Options, report: &RunReport, pipeline: Option<&crate::config::Pipeline>) {
    let Some(path) = &opts.metrics else {
        return;
    };
    if opts.run.dry_run {
        return;
    }
    let last = pipeline
        .map(|p| last_successes(p, &report.pipeline))
        .unwrap_or_default();
    let text = crate::metrics::render(
        &[crate::metrics::Latest {
            report,
            last: &last,
        }],
        None,
    );
    // (Beside the file, renamed over it: a collector never reads half a file.)
    let temp = path.with_extension("prom.tmp");
    if let Err(e) = std::fs::write(&temp, text).and_then(|()| std::fs::rename(&temp, path)) {
        tracing::warn!("cannot write the metrics to {}: {e}", path.display());
        let _ = std::fs::remove_file(&temp);
    }
}

/// The report of a run of `pipeline` that `e` stopped before any model ran: retryable
/// unless the pipeline must be fixed (exit 2).
fn not_run(e: &Error, pipeline: &str, started_at: String) -> RunReport {
    let mut report = RunReport::not_run(
        crate::table::new_run_id(),
        pipeline,
        started_at,
        e.to_string(),
    );
    report.set_exit_code(e.exit_code(), e.exit_code() != EXIT_USAGE);
    report
}

/// When `pipeline` (named `name` in its runs) and its models last succeeded, as its state
/// store says (nothing when it has none yet, or it cannot be read).
pub(super) fn last_successes(
    pipeline: &crate::config::Pipeline,
    name: &str,
) -> crate::state::LastSuccess {
    crate::state::StateStore::open_existing(&pipeline.settings.state)
        .ok()
        .flatten()
        .and_then(|store| store.last_successes(name, pipeline.models.len()).ok())
        .unwrap_or_default()
}

/// The `--report` file. A temporary file beside it is created before the run starts (so a
/// path that cannot be written is found before anything runs); the report is written there
/// and renamed over the path, so a report already at the path is replaced whole or not at
/// all, never left empty or half-written.
pub(super) struct ReportFile {
    path: PathBuf,
    temp: PathBuf,
}

impl ReportFile {
    pub(super) fn create(path: &Path) -> Result<ReportFile, Error> {
        let name = path
            .file_name()
            .ok_or_else(|| usage("--report", format!("{} is not a file name", path.display())))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = path.with_file_name(temp_name);
        std::fs::File::create(&temp)
            .map_err(|e| usage("--report", format!("cannot write {}: {e}", path.display())))?;
        Ok(ReportFile {
            path: path.to_path_buf(),
            temp,
        })
    }

    pub(super) fn write(&mut self, report: &RunReport) -> Result<(), Error> {
        let io = |source| Error::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::create(&self.temp).map_err(io)?;
        file.write_all(report.to_json().as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.temp, &self.path).map_err(io)
    }
}

impl Drop for ReportFile {
    fn drop(&mut self) {
        // Nothing to do once renamed; otherwise the unused temporary goes.
        let _ = std::fs::remove_file(&self.temp);
    }
}
