//! The run report: what happened in a run, as JSON for schedulers and as a summary for people.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::status::{ModelStatus, RunStatus, UnitStatus};

/// The outcome of one `sluice run` (the JSON of `--report FILE`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Unique id of the run; also part of every file name the run writes.
    pub run_id: String,
    /// The pipeline's name.
    pub pipeline: String,
    /// `success`, `failed`, or `planned` for a dry run.
    pub status: RunStatus,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC.
    pub finished_at: String,
    /// One entry per selected model, in run order.
    pub models: Vec<ModelReport>,
    /// Why the run failed before any model ran (invalid pipeline, unreadable source...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Per database the run used: connections, rows and bytes, pauses, lag.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseReport>,
    /// The object stores it used (not local files): bytes, requests, time throttled.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<crate::store::StoreReport>,
    /// The threads and memory pool the run used, and where they came from (set, the
    /// cgroup's limits, the machine); none for a run that stopped before planning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::engine::limits::Resources>,
    /// The process's exit status for this run (0, 1, 2, or 128 + a signal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// For a run that did not succeed: whether running it again may succeed (exit 1: a
    /// server, a store or the data may have changed; interrupted: it resumes) or not before
    /// the pipeline is fixed (exit 2). What an orchestrator decides a retry on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// A deferred run: when its run window next opens (RFC 3339, in the window's zone).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_window: Option<String>,
}

/// What the run report says of one database.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatabaseReport {
    /// Its name in `sluice.toml`.
    pub name: String,
    /// postgres or mysql.
    pub kind: String,
    /// The server's version, when a connection was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Whether it is a replica (known once the lag was checked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<bool>,
    /// `max_connections`.
    pub max_connections: usize,
    /// Most connections open at once.
    pub peak_connections: usize,
    /// Connections opened.
    pub connections_opened: u64,
    /// Rows and bytes read (the bytes as the server sent them).
    pub rows_read: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Rows loaded into tables.
    pub rows_written: u64,
    /// Bytes sent to load them.
    pub bytes_written: u64,
    /// Time the latency gate was closed while reads or loads were under way.
    pub paused_ms: u64,
    /// Times it closed.
    pub pauses: u64,
    /// Probes made, and the slowest.
    pub probes: u64,
    /// The slowest probe.
    pub max_probe_ms: f64,
    /// Time spent waiting for the rate limit.
    pub throttled_ms: u64,
    /// The largest replica lag seen.
    pub lag_max_ms: u64,
    /// Time spent waiting for the lag to come down.
    pub lag_waited_ms: u64,
}

impl DatabaseReport {
    /// What the run did with the database of `pool`.
    pub(crate) fn of(pool: &crate::database::Pool) -> DatabaseReport {
        use std::sync::atomic::Ordering::Relaxed;
        let g = &pool.guard;
        let s = g.stats();
        DatabaseReport {
            name: pool.config.name.clone(),
            kind: pool.config.url.kind.name().to_string(),
            server: g.server(),
            replica: g.replica(),
            max_connections: pool.config.max_connections,
            peak_connections: s.peak_connections.load(Relaxed),
            connections_opened: s.connections_opened.load(Relaxed),
            rows_read: s.rows_read.load(Relaxed),
            bytes_read: s.bytes_read.load(Relaxed),
            rows_written: s.rows_written.load(Relaxed),
            bytes_written: s.bytes_written.load(Relaxed),
            paused_ms: s.paused_ms.load(Relaxed),
            pauses: s.pauses.load(Relaxed),
            probes: s.probes.load(Relaxed),
            max_probe_ms: s.max_probe_us.load(Relaxed) as f64 / 1000.0,
            throttled_ms: s.throttled_ms.load(Relaxed),
            lag_max_ms: s.lag_max_ms.load(Relaxed),
            lag_waited_ms: s.lag_waited_ms.load(Relaxed),
        }
    }

    /// One line for the run's summary.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} ({}): {} of {} connections at most, {} rows read, {} rows written",
            self.name,
            self.kind,
            self.peak_connections,
            self.max_connections,
            self.rows_read,
            self.rows_written
        );
        if self.pauses > 0 {
            line.push_str(&format!(
                ", paused {} times for {:.1}s (slowest probe {:.0} ms)",
                self.pauses,
                self.paused_ms as f64 / 1000.0,
                self.max_probe_ms
            ));
        }
        if self.throttled_ms > 0 {
            line.push_str(&format!(
                ", throttled {:.1}s",
                self.throttled_ms as f64 / 1000.0
            ));
        }
        if self.replica == Some(true) {
            line.push_str(&format!(
                ", replica lag at most {:.1}s (waited {:.1}s)",
                self.lag_max_ms as f64 / 1000.0,
                self.lag_waited_ms as f64 / 1000.0
            ));
        }
        line
    }
}

/// What happened to one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// The model's name.
    pub name: String,
    /// `success`, `failed`, `skipped` (an upstream model failed) or `planned` (dry run).
    pub status: ModelStatus,
    /// `table` or `view`.
    pub materialized: String,
    /// Rows read by the model's scans (sources and upstream outputs).
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Rows quarantined as unparseable.
    pub rows_rejected: u64,
    /// Work units planned.
    pub units_total: u64,
    /// Work units committed.
    pub units_done: u64,
    /// Wall time.
    pub elapsed_ms: u64,
    /// Bytes spilled to disk by sorts, aggregations and joins.
    pub spilled_bytes: u64,
    /// The files this run wrote (paths relative to the pipeline folder, or URLs).
    pub outputs: Vec<String>,
    /// Why the model failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its work units.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<UnitReport>,
    /// Its query's joins: strategy and why, buckets, bytes spilled, peak memory (summed
    /// over the units that ran in this run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub joins: Vec<crate::join::JoinReport>,
    /// On a cluster, the Ballista job of each unit that ran: its id, stages, tasks, shuffle
    /// bytes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster_jobs: Vec<crate::cluster::JobReport>,
    /// Rows read per source and upstream model (a rejected row counts as read from its
    /// source). Given when every unit ran in this run: a resumed unit recorded its total only.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rows_in_by_source: BTreeMap<String, u64>,
    /// Rows the query's filters dropped, given when the query is only filters and projections
    /// over one input (then `rows_in = rows_out + rows_filtered + rows_rejected`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_filtered: Option<u64>,
    /// That identity with this run's numbers, e.g. `10 in = 4 out + 0 filtered + 6 rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_balance: Option<String>,
    /// Its checks' results (run on the staged output before the publish).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::checks::CheckResult>,
    /// An incremental model's periods and late rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub late: Option<LateReport>,
    /// What planning found worth a warning (a batched model's groups split over units).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Source files holding rows of many units, read once for all of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routed: Option<Routed>,
    /// Small staged files merged before the publish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compacted: Option<Compacted>,
    /// The load of the output into a database table (a sink with `database = ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded: Option<Loaded>,
}

/// A model's output loaded into a database table, in one transaction.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Loaded {
    /// The `[databases.*]` entry.
    pub database: String,
    /// The table.
    pub table: String,
    /// overwrite, append or upsert.
    pub mode: String,
    /// How the rows were sent: `copy` (PostgreSQL), `load data` or `insert` (MySQL and
    /// MariaDB; `insert` where the server has `local_infile` off); empty when nothing was sent.
    pub method: String,
    /// Rows sent to the table.
    pub rows: u64,
    /// Bytes sent (the database's bulk format).
    pub bytes: u64,
    /// The load's id in the table's commit records (`_sluice_commits`).
    pub commit: String,
    /// The load had been committed already, by a killed attempt of this run: nothing sent.
    pub already_loaded: bool,
    /// Time the load took.
    pub elapsed_ms: u64,
}

/// Small files the units staged, merged into files of the sink's target size before the
/// publish (per partition folder, and per period of an incremental model).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Compacted {
    /// Files merged.
    pub files_in: u64,
    /// Files they became.
    pub files_out: u64,
}

/// Source files a batched model read once and routed to its units by period, instead of
/// each unit reading them whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Routed {
    /// Files read once.
    pub files: u64,
    /// Rows routed from them to the units that ran.
    pub rows: u64,
    /// Units that read routed rows.
    pub units: u64,
}

/// Why a run computes a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Never computed, and ended by the clock.
    New,
    /// Files holding rows of it arrived after it was computed.
    Late,
    /// Files it was computed from were rewritten.
    Changed,
    /// Files it was computed from were deleted.
    Deleted,
    /// An input without event time changed.
    Dimension,
    /// Within the last `lookback` periods.
    Lookback,
    /// Asked for by `sluice backfill`.
    Backfill,
    /// A first run, or `--full-refresh`.
    FullRefresh,
}

/// Rows counted by lateness, over the input one run saw for the first time (late rows inside
/// the window are counted when they are applied).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LateCounts {
    /// Rows of periods computed for the first time.
    pub rows_on_time: u64,
    /// Rows that arrived after their period was computed, applied inside the late window.
    pub rows_late_in_window: u64,
    /// Rows that arrived after their period's late window closed: not applied.
    pub rows_late_beyond_window: u64,
    /// Rows of files deleted or rewritten since their period was computed, taken out inside
    /// the late window (beyond it, the backlog lists them).
    pub rows_deleted: u64,
}

impl LateCounts {
    /// Late rows over all rows counted: 0 when none were.
    pub fn rate(&self) -> f64 {
        let rows = self.late_rows();
        if rows.total == 0 {
            0.0
        } else {
            rows.late as f64 / rows.total as f64
        }
    }

    /// Late rows (inside the window or beyond it) and all rows counted.
    pub(crate) fn late_rows(&self) -> crate::checks::LateRows {
        let late = self.rows_late_in_window + self.rows_late_beyond_window;
        crate::checks::LateRows {
            late,
            total: self.rows_on_time + late,
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &LateCounts) {
        self.rows_on_time += other.rows_on_time;
        self.rows_late_in_window += other.rows_late_in_window;
        self.rows_late_beyond_window += other.rows_late_beyond_window;
        self.rows_deleted += other.rows_deleted;
    }
}

/// A computed period that late input touched after its window closed: it keeps what it
/// was computed from until a backfill recomputes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// The period.
    pub period: String,
    /// Rows of the files that arrived (or were rewritten) since it was computed.
    pub rows_late: u64,
    /// Rows of the files deleted or rewritten since.
    pub rows_deleted: u64,
    /// Those files, by path.
    pub files: Vec<String>,
}

/// What an incremental model's run computed, and how late its input was (`late` in the
/// report).
#[derive(Debug, Clone, Serialize)]
pub struct LateReport {
    /// The run's clock.
    pub as_of: String,
    /// What the run was asked to do (`run`, `reconcile`, `backfill`...).
    pub kind: String,
    /// The model's late window, e.g. `48h`.
    pub late_window: String,
    /// Rows by lateness: on time and late inside the window as applied by this run, late
    /// beyond the window as first seen by it.
    #[serde(flatten)]
    pub counts: LateCounts,
    /// Late rows over all rows counted.
    pub rate: f64,
    /// The periods computed, each with why.
    pub periods_processed: Vec<PeriodReason>,
    /// Touched periods inside the window left for `sluice reconcile` (`--no-reconcile`).
    pub periods_to_reconcile: Vec<String>,
    /// Touched periods beyond the window: `sluice backfill` recomputes them.
    pub periods_needing_backfill: Vec<Backlog>,
    /// The command that backfills them all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill_command: Option<String>,
    /// The counts per source.
    pub by_source: BTreeMap<String, LateCounts>,
    /// Whether an input without event time changed, so periods inside the window were redone.
    pub dimensions_changed: bool,
}

impl LateReport {
    /// Replaces the counts with `by_source`'s (and the total and rate with theirs).
    pub fn set_counts(&mut self, by_source: BTreeMap<String, LateCounts>) {
        let mut total = LateCounts::default();
        for c in by_source.values() {
            total.add(c);
        }
        self.rate = total.rate();
        self.counts = total;
        self.by_source = by_source;
    }

    /// One line for the run's summary: the periods computed, the late rows, and what needs
    /// a backfill.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut out = format!(
            "periods: {} computed; rows: {} on time, {} late inside the window, {} beyond it, \
             {} deleted (late rate {:.2}%)",
            self.periods_processed.len(),
            c.rows_on_time,
            c.rows_late_in_window,
            c.rows_late_beyond_window,
            c.rows_deleted,
            100.0 * self.rate
        );
        if !self.periods_to_reconcile.is_empty() {
            out.push_str(&format!(
                "; to reconcile: {}",
                self.periods_to_reconcile.join(", ")
            ));
        }
        if !self.periods_needing_backfill.is_empty() {
            let periods: Vec<String> = self
                .periods_needing_backfill
                .iter()
                .map(|b| format!("{} ({} rows)", b.period, b.rows_late + b.rows_deleted))
                .collect();
            out.push_str(&format!(
                "; needs backfill: {}: {}",
                periods.join(", "),
                self.backfill_command
                    .as_deref()
                    .unwrap_or("sluice backfill")
            ));
        }
        out
    }
}

/// A period a run computed, and why.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodReason {
    /// The period.
    pub period: String,
    /// Why.
    pub reason: Reason,
}

/// What happened to one work unit.
#[derive(Debug, Clone, Serialize)]
pub struct UnitReport {
    /// The unit (its period, or `all`).
    pub unit: String,
    /// `done`, `failed` or `retrying`.
    pub status: UnitStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Rows its scans read.
    pub rows_in: u64,
    /// Rows it wrote.
    pub rows_out: u64,
    /// Wall time of its last attempt.
    pub elapsed_ms: u64,
    /// Peak memory reserved in the query pool while it ran (pool-wide).
    pub peak_memory: u64,
    /// Bytes spilled to disk.
    pub spilled_bytes: u64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ModelReport {
    /// An entry for a model that has not run.
    pub fn new(name: &str, materialized: &str, status: ModelStatus) -> ModelReport {
        ModelReport {
            name: name.to_string(),
            status,
            materialized: materialized.to_string(),
            rows_in: 0,
            rows_out: 0,
            rows_rejected: 0,
            units_total: 1,
            units_done: 0,
            elapsed_ms: 0,
            spilled_bytes: 0,
            outputs: Vec::new(),
            error: None,
            units: Vec::new(),
            joins: Vec::new(),
            cluster_jobs: Vec::new(),
            checks: Vec::new(),
            late: None,
            warnings: Vec::new(),
            routed: None,
            compacted: None,
            loaded: None,
            rows_in_by_source: BTreeMap::new(),
            rows_filtered: None,
            row_balance: None,
        }
    }

    /// Records what the filters dropped and states the row balance (marked if it does not
    /// hold, which would be a counting bug).
    pub fn balance(&mut self, filtered: u64) {
        let (i, o, r) = (self.rows_in, self.rows_out, self.rows_rejected);
        let holds = i == o + filtered + r;
        self.rows_filtered = Some(filtered);
        self.row_balance = Some(format!(
            "{i} in = {o} out + {filtered} filtered + {r} rejected{}",
            if holds { "" } else { " (does not balance)" }
        ));
    }
}

impl RunReport {
    /// The report of a run that stopped before any model ran.
    pub fn not_run(run_id: String, pipeline: &str, started_at: String, error: String) -> RunReport {
        RunReport {
            run_id,
            pipeline: pipeline.to_string(),
            status: RunStatus::Failed,
            finished_at: crate::config::timestamp_now(),
            started_at,
            models: Vec::new(),
            error: Some(error),
            databases: Vec::new(),
            stores: Vec::new(),
            resources: None,
            exit_code: None,
            retryable: None,
            next_window: None,
        }
    }

    /// Records the exit status `code` the process ends the run with, and for a run that did
    /// not succeed whether a retry may help (see [`RunReport::retryable`]).
    pub fn set_exit_code(&mut self, code: i32, retryable: bool) {
        self.exit_code = Some(code);
        self.retryable = (!self.succeeded()).then_some(retryable);
    }

    /// Whether every model succeeded.
    pub fn succeeded(&self) -> bool {
        matches!(self.status, RunStatus::Success | RunStatus::Planned)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// A human summary, one line per model.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let width = self
            .models
            .iter()
            .map(|m| m.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        for m in &self.models {
            let secs = m.elapsed_ms as f64 / 1000.0;
            let line = match m.status {
                ModelStatus::Success if m.materialized == "view" => {
                    format!("  {:<width$}  view     (inlined)", m.name)
                }
                ModelStatus::Success => format!(
                    "  {:<width$}  ok       {:>12} rows in  {:>12} rows out  {:>4} files  {secs:>7.2}s",
                    m.name,
                    m.rows_in,
                    m.rows_out,
                    m.outputs.len()
                ),
                ModelStatus::Planned => format!("  {:<width$}  planned", m.name),
                status => format!(
                    "  {:<width$}  {status:<8} {}",
                    m.name,
                    m.error.as_deref().unwrap_or("")
                ),
            };
            out.push_str(&line);
            out.push('\n');
            for w in &m.warnings {
                out.push_str(&format!("  {:<width$}    warning: {w}\n", ""));
            }
            if let Some(late) = &m.late {
                out.push_str(&format!("  {:<width$}    {}\n", "", late.summary()));
            }
            match &m.row_balance {
                Some(b) if m.rows_rejected > 0 || m.rows_filtered > Some(0) => {
                    out.push_str(&format!("  {:<width$}    rows: {b}\n", ""));
                }
                None if m.rows_rejected > 0 => {
                    out.push_str(&format!(
                        "  {:<width$}    rows: {} rejected\n",
                        "", m.rows_rejected
                    ));
                }
                _ => {}
            }
            for c in m
                .checks
                .iter()
                .filter(|c| c.status != crate::status::CheckStatus::Pass)
            {
                out.push_str(&format!(
                    "  {:<width$}    check {} {}: {}\n",
                    "",
                    c.check,
                    c.status,
                    c.message.as_deref().unwrap_or("")
                ));
            }
            for j in m.joins.iter().filter(|j| j.spilled_bytes > 0) {
                out.push_str(&format!(
                    "  {:<width$}    {}: {}, {} buckets (depth {}), {} spilled, peak {}\n",
                    "",
                    j.join,
                    j.strategy,
                    j.buckets,
                    j.max_depth,
                    crate::join::human_bytes(j.spilled_bytes as usize),
                    crate::join::human_bytes(j.peak_memory as usize),
                ));
            }
        }
        out.push_str(&format!(
            "run {} {}: {} of {} models ok\n",
            self.run_id,
            self.status,
            self.models
                .iter()
                .filter(|m| m.status == ModelStatus::Success)
                .count(),
            self.models.len()
        ));
        for d in &self.databases {
            out.push_str(&format!("  database {}\n", d.summary()));
        }
        out
    }
}
