//! Progress of long runs, in one of two forms: bars on stderr for people (one per model with
//! rows and rate; hidden when stderr is not a terminal, as indicatif's stderr target draws
//! nothing then, or with `-q`), or JSON lines on stdout for programs (`--progress json`: an
//! orchestrator's activity heartbeats on each unit done).

use std::io::Write;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress display of a command.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    /// JSON lines on stdout instead of bars.
    json: bool,
}

impl Progress {
    /// A display on stderr, or none at all when `enabled` is false.
    pub fn new(enabled: bool) -> Progress {
        Progress {
            multi: enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            json: false,
        }
    }

    /// Progress as JSON lines on stdout, one object per event, each with an `event` field:
    /// `model_started` (`model`, `units`), `unit_done` (`model`, `unit`, `done`, `total`;
    /// a unit kept from an earlier attempt of the run counts too, `kept: true`), on a
    /// cluster `tasks_done` (`model`, `unit`, `job_id`, `done`, `total`: the tasks of the
    /// unit's job) and `model_finished` (`model`, `status`, `rows_out`).
    pub fn json() -> Progress {
        Progress {
            multi: None,
            json: true,
        }
    }

    /// Prints one JSON event line (whole, under stdout's lock, so lines never interleave).
    fn emit(&self, event: serde_json::Value) {
        if self.json {
            let mut out = std::io::stdout().lock();
            // A closed stdout (the reader went away) must not fail the run.
            let _ = writeln!(out, "{event}").and_then(|()| out.flush());
        }
    }

    /// Reports a model's end (JSON progress only: a bar ends by itself).
    pub fn model_finished(&self, model: &str, status: crate::status::ModelStatus, rows_out: u64) {
        self.emit(serde_json::json!({
            "event": "model_finished",
            "model": model,
            "status": status.to_string(),
            "rows_out": rows_out,
        }));
    }

    /// A spinner for one task (a model, a table), counting rows.
    pub fn task(&self, name: &str) -> Task {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:<24} {human_pos:>12} rows  {per_sec:>14}  {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Task { bar }
    }
}

/// Progress of one task.
pub struct Task {
    bar: Option<ProgressBar>,
}

impl Task {
    /// Counts `rows` more rows.
    pub fn inc(&self, rows: u64) {
        if let Some(b) = &self.bar {
            b.inc(rows);
        }
    }

    /// Ends the task's line.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress {
    /// A bar for a model's work units: units done of `total`, rows written, rate and ETA.
    pub fn units(&self, name: &str, total: u64) -> Units {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix:<24} [{bar:24}] {pos}/{len} units  {msg}  {elapsed} (eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        self.emit(serde_json::json!({"event": "model_started", "model": name, "units": total}));
        Units {
            bar,
            rows: std::sync::atomic::AtomicU64::new(0),
            jobs: Default::default(),
            start: std::time::Instant::now(),
            json: self.json.then(|| JsonUnits {
                progress: self.clone(),
                model: name.to_string(),
                total,
                done: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }
}

/// Progress of a model's work units.
pub struct Units {
    bar: Option<ProgressBar>,
    rows: std::sync::atomic::AtomicU64,
    /// On a cluster: the tasks done and in all of each running unit's job, by unit.
    jobs: std::sync::Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
    start: std::time::Instant,
    json: Option<JsonUnits>,
}

/// See [`Units::job_guard`].
pub struct JobGuard<'a> {
    units: &'a Units,
    unit: &'a str,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.units.jobs.lock() {
            jobs.remove(self.unit);
        }
        self.units.refresh();
    }
}

/// What a model's `unit_done` JSON events need.
struct JsonUnits {
    progress: Progress,
    model: String,
    total: u64,
    done: std::sync::atomic::AtomicU64,
}

impl Units {
    /// Counts `rows` more rows written.
    pub fn rows(&self, rows: u64) {
        self.rows
            .fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
        self.refresh();
    }

    /// On a cluster: unit `unit`'s job `job_id` has finished `done` of its `total` tasks
    /// (the bar shows the tasks of the jobs running; `--progress json` emits `tasks_done`
    /// with `model`, `unit`, `job_id`, `done` and `total`).
    pub fn tasks(&self, unit: &str, job_id: &str, done: u64, total: u64) {
        if let Ok(mut jobs) = self.jobs.lock() {
            if done >= total {
                jobs.remove(unit);
            } else {
                jobs.insert(unit.to_string(), (done, total));
            }
        }
        self.refresh();
        if let Some(j) = &self.json {
            j.progress.emit(serde_json::json!({
                "event": "tasks_done",
                "model": j.model,
                "unit": unit,
                "job_id": job_id,
                "done": done,
                "total": total,
            }));
        }
    }

    /// On a cluster: while the returned guard lives, unit `unit`'s job may show its tasks;
    /// dropped (the job done, failed or abandoned), they leave the bar.
    pub fn job_guard<'a>(&'a self, unit: &'a str) -> JobGuard<'a> {
        JobGuard { units: self, unit }
    }

    /// Redraws the bar's message: rows written and their rate, and on a cluster the tasks
    /// of the jobs running.
    fn refresh(&self) {
        let Some(b) = &self.bar else {
            return;
        };
        let rows = self.rows.load(std::sync::atomic::Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let mut message = format!(
            "{} rows  {}/s",
            indicatif::HumanCount(rows),
            indicatif::HumanCount((rows as f64 / secs) as u64)
        );
        if let Ok(jobs) = self.jobs.lock()
            && !jobs.is_empty()
        {
            let (done, total) = jobs
                .values()
                .fold((0, 0), |(d, t), (done, total)| (d + done, t + total));
            message.push_str(&format!("  tasks {done}/{total}"));
        }
        b.set_message(message);
    }

    /// Counts one more unit done (or, `kept`, committed by an earlier attempt of the run).
    pub fn unit_done(&self, unit: &str, kept: bool) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
        if let Some(j) = &self.json {
            let done = j.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let mut event = serde_json::json!({
                "event": "unit_done",
                "model": j.model,
                "unit": unit,
                "done": done,
                "total": j.total,
            });
            if kept {
                event["kept"] = serde_json::Value::Bool(true);
            }
            j.progress.emit(event);
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
