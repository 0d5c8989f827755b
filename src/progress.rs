//! Progress on stderr for long runs: one bar per model with rows and rate. Hidden when stderr
//! is not a terminal (indicatif's stderr target draws nothing then) or with `-q`.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress display of a command.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// A display on stderr, or none at all when `enabled` is false.
    pub fn new(enabled: bool) -> Progress {
        Progress {
            multi: enabled.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
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
        Units {
            bar,
            rows: std::sync::atomic::AtomicU64::new(0),
            start: std::time::Instant::now(),
        }
    }
}

/// Progress of a model's work units.
pub struct Units {
    bar: Option<ProgressBar>,
    rows: std::sync::atomic::AtomicU64,
    start: std::time::Instant,
}

impl Units {
    /// Counts `rows` more rows written.
    pub fn rows(&self, rows: u64) {
        let total = self
            .rows
            .fetch_add(rows, std::sync::atomic::Ordering::Relaxed)
            + rows;
        if let Some(b) = &self.bar {
            let secs = self.start.elapsed().as_secs_f64().max(0.001);
            b.set_message(format!(
                "{} rows  {}/s",
                indicatif::HumanCount(total),
                indicatif::HumanCount((total as f64 / secs) as u64)
            ));
        }
    }

    /// Counts one more unit done (or kept from an earlier attempt of the run).
    pub fn unit_done(&self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    /// Ends the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
