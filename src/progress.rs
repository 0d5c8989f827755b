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

    /// A display that shows nothing.
    pub fn hidden() -> Progress {
        Progress::new(false)
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
