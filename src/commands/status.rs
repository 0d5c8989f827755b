//! `sluice status`: where a pipeline stands — its schedule's next run, its last run and the
//! unfinished (paused, interrupted or failed) run the next one resumes; and where each
//! incremental model stands: the periods its output holds, the periods due (new, or touched
//! by late input inside the window), those needing a backfill (late input beyond the
//! window), and its late-arrival history. Takes no lock and writes nothing but the state
//! store's cache of the periods files hold.

use std::path::Path;

use serde::Serialize;

use super::Context;
use crate::error::{EXIT_OK, Error};
use crate::report::{Backlog, LateCounts, PeriodReason};
use crate::run::RunOptions;
use crate::run::incremental::RunKind;
use crate::state::{LateRow, RunRow, StateStore};

/// Where the pipeline stands (`--json` prints this).
#[derive(Debug, Serialize)]
struct PipelineStatus {
    pipeline: String,
    /// Its `[schedule]`, if it has one.
    schedule: Option<ScheduleStatus>,
    /// Its latest run.
    last_run: Option<RunRow>,
    /// The run the next one resumes (paused, interrupted or failed), if any.
    unfinished_run: Option<RunRow>,
    /// Its incremental models.
    models: Vec<ModelStatus>,
}

/// A pipeline's schedule, as of the status's clock.
#[derive(Debug, Serialize)]
struct ScheduleStatus {
    cron: String,
    timezone: String,
    windows: Vec<String>,
    /// When `sluice schedule` starts the next run.
    next_run: Option<String>,
    /// When that run can start units: the next run, or when a window next opens after it.
    next_start: Option<String>,
    /// The scheduled time of the last run `sluice schedule` started.
    last_scheduled: Option<String>,
}

/// Where one incremental model stands.
#[derive(Debug, Serialize)]
struct ModelStatus {
    model: String,
    grid: String,
    late_window: String,
    as_of: String,
    /// Periods the output holds.
    periods_computed: usize,
    first_period: Option<String>,
    last_period: Option<String>,
    /// What `sluice run` would compute now, and why.
    due: Vec<PeriodReason>,
    /// Periods needing a backfill, with the command.
    needs_backfill: Vec<Backfill>,
    /// Late rows a run now would find (late beyond the window: not yet counted by a run).
    pending: LateCounts,
    /// The model's last runs' late-arrival counts, newest first.
    history: Vec<LateRow>,
}

#[derive(Debug, Serialize)]
struct Backfill {
    #[serde(flatten)]
    backlog: Backlog,
    command: String,
}

/// Prints the status of the selected incremental models.
pub async fn execute(
    path: &Path,
    opts: &RunOptions,
    json: bool,
    cx: &Context<'_>,
) -> Result<i32, Error> {
    let pipeline = cx.load_pipeline(path)?;
    let state = StateStore::open_existing(&pipeline.settings.state)?;
    let now = opts.as_of.unwrap_or_else(chrono::Utc::now);
    let (last_run, unfinished_run, last_scheduled) = match &state {
        Some(s) => {
            let runs: Vec<RunRow> = s
                .runs(1000)?
                .into_iter()
                .filter(|r| r.pipeline == pipeline.name)
                .collect();
            let unfinished = s.last_unfinished_run(&pipeline.name)?;
            (
                runs.first().cloned(),
                runs.into_iter()
                    .find(|r| Some(&r.run_id) == unfinished.as_ref()),
                s.last_fire(&pipeline.name)?,
            )
        }
        None => (None, None, None),
    };
    let schedule = pipeline.schedule.as_ref().map(|sc| {
        let tz = sc.timezone;
        let next = sc.cron.next_after(tz, now);
        let start = next.and_then(|t| {
            if sc.windows.is_empty()
                || crate::config::window::open_until(&sc.windows, tz, t).is_some()
            {
                Some(t)
            } else {
                crate::config::window::next_open(&sc.windows, tz, t).map(|o| o.to_utc())
            }
        });
        let local = |t: chrono::DateTime<chrono::Utc>| t.with_timezone(&tz).to_rfc3339();
        ScheduleStatus {
            cron: sc.cron.as_str().to_string(),
            timezone: tz.to_string(),
            windows: sc.windows.iter().map(|w| w.text.clone()).collect(),
            next_run: next.map(local),
            next_start: start.map(local),
            last_scheduled,
        }
    });
    let name = pipeline.name.clone();
    let prepared = crate::run::prepare(pipeline, opts, cx.env.clone()).await?;
    let mut clock = crate::run::clock_of(opts);
    clock.kind = RunKind::Run;
    let mut out = Vec::new();
    for name in &prepared.selected {
        let model = &prepared.pipeline.models[name];
        let Some(batches) = &model.batches else {
            continue;
        };
        let Some(config) = &batches.incremental else {
            continue;
        };
        let grid = crate::units::Grid::of(batches);
        let plan = crate::run::unit::plan_units(
            &prepared.engine,
            &prepared.pipeline,
            &prepared.dag,
            model,
            &crate::run::unit::Planning {
                clock: &clock,
                state: state.as_ref(),
                run_id: "",
            },
        )
        .await
        .map_err(|message| Error::Model {
            model: name.clone(),
            message,
        })?;
        let Some(work) = plan.incremental else {
            continue;
        };
        let computed = work.output.as_ref().map(|p| &p.entries);
        out.push(ModelStatus {
            model: name.clone(),
            grid: grid.label(),
            late_window: crate::config::format_duration(config.late_window),
            as_of: clock.as_of.and_utc().to_rfc3339(),
            periods_computed: computed.map_or(0, |c| c.len()),
            first_period: computed.and_then(|c| c.keys().next().cloned()),
            last_period: computed.and_then(|c| c.keys().next_back().cloned()),
            due: work
                .plan
                .todo
                .iter()
                .map(|(p, reason)| PeriodReason {
                    period: grid.name(*p),
                    reason: *reason,
                })
                .collect(),
            needs_backfill: work
                .plan
                .backlog
                .iter()
                .map(|b| Backfill {
                    command: crate::run::incremental::backfill_command(
                        &prepared.pipeline,
                        grid,
                        &b.period,
                    ),
                    backlog: Backlog {
                        files: b
                            .files
                            .iter()
                            .map(|f| crate::run::incremental::show_file(&prepared.pipeline, f))
                            .collect(),
                        ..b.clone()
                    },
                })
                .collect(),
            pending: work.plan.counts.clone(),
            history: match &state {
                Some(s) => s.late_history(name, 10)?,
                None => Vec::new(),
            },
        });
    }
    let status = PipelineStatus {
        pipeline: name,
        schedule,
        last_run,
        unfinished_run,
        models: out,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!("{}", describe_pipeline(&status));
        for m in &status.models {
            print!("{}", describe(m));
        }
    }
    Ok(EXIT_OK)
}

/// The text of the pipeline's runs and schedule.
fn describe_pipeline(p: &PipelineStatus) -> String {
    let mut out = format!("pipeline {}\n", p.pipeline);
    match &p.schedule {
        Some(s) => {
            let windows = if s.windows.is_empty() {
                String::new()
            } else {
                format!(", windows {}", s.windows.join(", "))
            };
            out.push_str(&format!(
                "  schedule:        {} ({}){windows}\n",
                s.cron, s.timezone
            ));
            let next = match (&s.next_run, &s.next_start) {
                (Some(n), Some(st)) if n != st => {
                    format!("{n} (its units start when the window opens, {st})")
                }
                (Some(n), _) => n.clone(),
                (None, _) => "never".to_string(),
            };
            out.push_str(&format!("  next run:        {next}\n"));
        }
        None => out.push_str("  schedule:        - (no [schedule])\n"),
    }
    let run = |r: &RunRow| {
        format!(
            "{} {} ({}, started {}{}; {}/{} models ok)",
            r.run_id,
            r.status,
            r.kind,
            r.started_at,
            r.finished_at
                .as_deref()
                .map(|f| format!(", ended {f}"))
                .unwrap_or_default(),
            r.models_ok,
            r.models_total
        )
    };
    out.push_str(&format!(
        "  last run:        {}\n",
        p.last_run.as_ref().map_or("-".to_string(), run)
    ));
    out.push_str(&format!(
        "  unfinished run:  {}\n",
        p.unfinished_run
            .as_ref()
            .map_or("-".to_string(), |r| format!(
                "{}: the next run with the same work resumes it",
                run(r)
            ))
    ));
    out
}

/// The text of one model's status.
fn describe(m: &ModelStatus) -> String {
    let mut out = format!(
        "model {} (incremental by {}, late window {}, as of {})\n",
        m.model, m.grid, m.late_window, m.as_of
    );
    out.push_str(&format!(
        "  computed:        {} periods{}\n",
        m.periods_computed,
        match (&m.first_period, &m.last_period) {
            (Some(a), Some(b)) => format!(", {a} .. {b}"),
            _ => String::new(),
        }
    ));
    let due: Vec<String> = m
        .due
        .iter()
        .map(|d| {
            let reason = serde_json::to_value(d.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{} ({reason})", d.period)
        })
        .collect();
    out.push_str(&format!(
        "  due:             {}\n",
        if due.is_empty() {
            "-".to_string()
        } else {
            due.join(", ")
        }
    ));
    if m.needs_backfill.is_empty() {
        out.push_str("  needs backfill:  -\n");
    }
    for b in &m.needs_backfill {
        out.push_str(&format!(
            "  needs backfill:  {}: {} late rows, {} deleted ({}): {}\n",
            b.backlog.period,
            b.backlog.rows_late,
            b.backlog.rows_deleted,
            b.backlog.files.join(", "),
            b.command
        ));
    }
    if !m.history.is_empty() {
        out.push_str(&format!(
            "  late history:    {:<24} {:<26} {:<20} {:>10} {:>10} {:>10} {:>10} {:>8}\n",
            "run", "as of", "kind", "on time", "in window", "beyond", "deleted", "rate"
        ));
        for h in &m.history {
            out.push_str(&format!(
                "                   {:<24} {:<26} {:<20} {:>10} {:>10} {:>10} {:>10} {:>7.2}%\n",
                h.run_id,
                h.as_of,
                h.kind,
                h.counts.rows_on_time,
                h.counts.rows_late_in_window,
                h.counts.rows_late_beyond_window,
                h.counts.rows_deleted,
                100.0 * h.counts.rate()
            ));
        }
    }
    out
}
