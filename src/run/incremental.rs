//! Incremental models: which periods a run computes, and how late its input was.
//!
//! The output's `_MANIFEST` records, for each period it holds, the input file versions that
//! were applied to it ([`Periods`]). A run compares them with the files there are now
//! ([`EventMap`](super::event_map::EventMap) says which periods each file holds rows of):
//!
//! - a period never computed that has ended by the clock is **new**;
//! - a computed period whose files changed (a file added, rewritten or deleted) was touched by
//!   late data: inside its late window (its end + `late_window` ≥ the clock, inclusive) it is
//!   **reconciled** in this run; beyond the window it stays as it is, its late rows are counted
//!   and it is listed as needing a backfill until one recomputes it;
//! - a change of the inputs without event time (a dimension source, a table upstream) redoes
//!   the periods inside the window; `lookback` redoes the last N periods whatever happened.
//!
//! [`plan`] is pure: `sluice run`, `plan` and `status` share it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDateTime;

use crate::config::{BatchSize, IncrementalConfig};
pub use crate::report::{Backlog, LateCounts, Reason};
use crate::table::manifest::{AppliedFile, Periods};
use crate::units::{Grid, Unit, UnitKind};

/// A run's clock and what it was asked to do: what incremental models plan by.
#[derive(Debug, Clone)]
pub struct Clock {
    /// The run's "now" (UTC): periods that ended by it are due; late windows close by it.
    pub as_of: NaiveDateTime,
    /// What the run was asked to do.
    pub kind: RunKind,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            as_of: chrono::Utc::now().naive_utc(),
            kind: RunKind::Run,
        }
    }
}

/// Which periods of an incremental model a run computes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunKind {
    /// New periods, and touched periods inside the late window (`sluice run`).
    #[default]
    Run,
    /// New periods only (`sluice run --no-reconcile`).
    NoReconcile,
    /// Touched periods inside the late window only (`sluice reconcile`).
    Reconcile,
    /// Exactly the periods that overlap `[from, to)`, whatever the window (`sluice
    /// backfill`).
    Backfill {
        /// The first period's start.
        from: NaiveDateTime,
        /// The end (exclusive).
        to: NaiveDateTime,
    },
    /// Every period, as a first run (`sluice run --full-refresh`).
    FullRefresh,
}

impl RunKind {
    /// The kind's name in reports and the state store.
    pub fn name(&self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::NoReconcile => "run --no-reconcile",
            RunKind::Reconcile => "reconcile",
            RunKind::Backfill { .. } => "backfill",
            RunKind::FullRefresh => "run --full-refresh",
        }
    }

    fn reconciles(&self) -> bool {
        matches!(self, RunKind::Run | RunKind::Reconcile)
    }
}

/// What one run of an incremental model computes, and what it found late.
#[derive(Debug, Clone, Default)]
pub(crate) struct IncrementalPlan {
    /// The periods it computes, in order, each with why.
    pub todo: Vec<(NaiveDateTime, Reason)>,
    /// Whether it replaces every period of the output (a first run, a full refresh).
    pub full: bool,
    /// The first period of the output.
    pub start: Option<NaiveDateTime>,
    /// Rows by lateness, in total and per source.
    pub counts: LateCounts,
    /// The same per source.
    pub by_source: BTreeMap<String, LateCounts>,
    /// Touched periods inside the window this run leaves for `sluice reconcile`.
    pub to_reconcile: Vec<String>,
    /// Touched periods beyond the window, for a backfill.
    pub backlog: Vec<Backlog>,
    /// Whether the inputs without event time changed since a period this run computes was
    /// computed.
    pub dimensions_changed: bool,
    /// The file versions, by period, whose rows this run counted as later than the window
    /// (the state store remembers them, so they are counted once).
    pub counted: Vec<(String, AppliedFile)>,
}

/// What [`plan`] works from.
pub(crate) struct PlanInput<'a> {
    /// The periods.
    pub grid: Grid,
    /// `batches.start`, `batches.end`.
    pub start: Option<NaiveDateTime>,
    /// `batches.end` (exclusive).
    pub end: Option<NaiveDateTime>,
    /// The model's incremental settings.
    pub config: &'a IncrementalConfig,
    /// The run's clock.
    pub as_of: NaiveDateTime,
    /// What the run was asked to do.
    pub kind: &'a RunKind,
    /// The input files there are now, per period, each with its rows in it.
    pub current: &'a BTreeMap<NaiveDateTime, Vec<AppliedFile>>,
    /// A hash of the inputs without event time now.
    pub dims: &'a str,
    /// What the output holds, if it records periods on this grid.
    pub previous: Option<&'a Periods>,
    /// Whether an earlier run counted a file version's rows in a period (by name) as later
    /// than the window: they are not counted again.
    pub counted_before: &'a dyn Fn(&str, &AppliedFile) -> bool,
}

/// Decides which periods a run computes and counts its late rows (see the module
/// documentation).
pub(crate) fn plan(input: &PlanInput<'_>) -> IncrementalPlan {
    let PlanInput {
        grid,
        start,
        end,
        config,
        as_of,
        kind,
        current,
        dims,
        previous,
        counted_before,
    } = *input;
    let full = previous.is_none() || *kind == RunKind::FullRefresh;
    let previous = previous.filter(|_| !full);
    let parse = |name: &str| grid.parse(name);
    // `start`, `end` and a backfill's range are wall times of the grid's zone.
    let start = start.map(|s| grid.instant_of(s));
    let end = end.map(|e| grid.instant_of(e));
    let clock_end = grid.truncate(as_of);
    let limit = end.map_or(clock_end, |e| e.min(clock_end));
    let entries: BTreeMap<NaiveDateTime, &crate::table::manifest::PeriodEntry> = previous
        .map(|p| {
            p.entries
                .iter()
                .filter_map(|(name, e)| Some((parse(name)?, e)))
                .collect()
        })
        .unwrap_or_default();
    let first = start
        .map(|s| grid.truncate(s))
        .or_else(|| previous.and_then(|p| parse(&p.start)))
        .or_else(|| current.keys().next().copied());
    let mut out = IncrementalPlan {
        full,
        start: first,
        ..IncrementalPlan::default()
    };
    let Some(first) = first else {
        return out;
    };
    // Periods up to the latest holding data (or computed): never empty units up to "now".
    let last = current
        .keys()
        .chain(entries.keys())
        .max()
        .map_or(first, |p| grid.next(*p));
    let frontier = last.min(limit);
    let mut candidates: BTreeSet<NaiveDateTime> = BTreeSet::new();
    let mut p = first;
    while p < frontier {
        candidates.insert(p);
        p = grid.next(p);
    }
    candidates.extend(entries.keys().filter(|p| **p < limit));
    // A backfill computes every period of its range that has ended, data or not.
    let backfill = match kind {
        RunKind::Backfill { from, to } => Some((grid.instant_of(*from), grid.instant_of(*to))),
        _ => None,
    };
    if let Some((from, to)) = backfill {
        let mut p = grid.truncate(from);
        while p < to && p < limit {
            candidates.insert(p);
            p = grid.next(p);
        }
    }
    // Rows before the first period: only a backfill computes them (unless `start` excludes them).
    if start.is_none() {
        candidates.extend(current.keys().filter(|p| **p < first));
    }
    let window = config.late_window;
    // `lookback` widens the window to the last N computed periods: they are computed again,
    // late rows included, on every run.
    let lookback: BTreeSet<NaiveDateTime> = entries
        .keys()
        .filter(|p| **p < limit)
        .rev()
        .take(config.lookback as usize)
        .copied()
        .collect();
    let empty = Vec::new();
    for p in candidates {
        let name = grid.name(p);
        let now = current.get(&p).unwrap_or(&empty);
        let entry = entries.get(&p);
        let in_window = grid.next(p) + window >= as_of || lookback.contains(&p);
        let backfilled = backfill.is_some_and(|(from, to)| p < to && grid.next(p) > from);
        // What changed since the period was computed (never computed: everything arrived).
        let (arrived, gone): (Vec<&AppliedFile>, Vec<&AppliedFile>) = match entry {
            None => (now.iter().collect(), Vec::new()),
            Some(e) => {
                let before: BTreeSet<_> = e.inputs.iter().map(AppliedFile::version).collect();
                let after: BTreeSet<_> = now.iter().map(AppliedFile::version).collect();
                (
                    now.iter()
                        .filter(|f| !before.contains(&f.version()))
                        .collect(),
                    e.inputs
                        .iter()
                        .filter(|f| !after.contains(&f.version()))
                        .collect(),
                )
            }
        };
        let touched = entry.is_some() && (!arrived.is_empty() || !gone.is_empty());
        let dims_changed = entry.is_some_and(|e| e.dims != dims) && in_window;
        let reason = if matches!(kind, RunKind::Backfill { .. }) {
            // Exactly the periods asked for.
            backfilled.then_some(Reason::Backfill)
        } else if full {
            Some(Reason::FullRefresh)
        } else if entry.is_none() {
            (p >= first && *kind != RunKind::Reconcile).then_some(Reason::New)
        } else if touched && in_window && kind.reconciles() {
            Some(match (arrived.is_empty(), gone.is_empty()) {
                (false, true) => Reason::Late,
                (true, false) => Reason::Deleted,
                _ => Reason::Changed,
            })
        } else if dims_changed && kind.reconciles() {
            Some(Reason::Dimension)
        } else if lookback.contains(&p) && *kind == RunKind::Run {
            Some(Reason::Lookback)
        } else {
            None
        };
        out.dimensions_changed |= dims_changed && reason.is_some();
        // Count the rows, each once: on time when its period is computed for the first
        // time; late inside the window when applied to a computed period; beyond the window
        // when first found after the window closed (applied or not).
        let on_time = entry.is_none() && p >= first;
        for f in &arrived {
            let bucket = if on_time {
                reason.is_some().then_some(Bucket::OnTime)
            } else if in_window {
                reason.is_some().then_some(Bucket::InWindow)
            } else if counted_before(&name, f) {
                None
            } else {
                Some(Bucket::Beyond)
            };
            match bucket {
                Some(Bucket::OnTime) => out.count(&f.source, |c| c.rows_on_time += f.rows),
                Some(Bucket::InWindow) => out.count(&f.source, |c| c.rows_late_in_window += f.rows),
                Some(Bucket::Beyond) => {
                    out.count(&f.source, |c| c.rows_late_beyond_window += f.rows);
                    out.counted.push((name.clone(), (*f).clone()));
                }
                None => {}
            }
        }
        if reason.is_some() {
            for f in &gone {
                out.count(&f.source, |c| c.rows_deleted += f.rows);
            }
        } else if touched || (entry.is_none() && p < first && !arrived.is_empty()) {
            if in_window {
                out.to_reconcile.push(name.clone());
            } else {
                out.backlog.push(Backlog {
                    period: name.clone(),
                    rows_late: arrived.iter().map(|f| f.rows).sum(),
                    rows_deleted: gone.iter().map(|f| f.rows).sum(),
                    files: arrived
                        .iter()
                        .chain(gone.iter())
                        .map(|f| f.path.clone())
                        .collect(),
                });
            }
        }
        if let Some(r) = reason {
            out.todo.push((p, r));
        }
    }
    out
}

/// Where [`plan`] counts a row.
enum Bucket {
    OnTime,
    InWindow,
    Beyond,
}

impl IncrementalPlan {
    fn count(&mut self, source: &str, f: impl Fn(&mut LateCounts)) {
        f(&mut self.counts);
        f(self.by_source.entry(source.to_string()).or_default());
    }

    /// The units of the periods it computes, one a period, each a whole period (an
    /// incremental model's `start` and `end` are rounded to periods: the output is a union
    /// of whole periods).
    pub(crate) fn units(&self, grid: Grid) -> Vec<Unit> {
        self.todo
            .iter()
            .enumerate()
            .map(|(index, (p, _))| Unit {
                index,
                name: grid.name(*p),
                kind: UnitKind::Period {
                    start: *p,
                    end: grid.next(*p),
                },
            })
            .collect()
    }
}

/// The first period a run of an incremental model may compute, given what its output last
/// applied (`previous`): the late window's first period, the lookback's, the one after the
/// last computed, or a backfill's first; `None` when the run may compute any period (a full
/// refresh). Sources that can be read from an instant on (database sources) are read from
/// it; the periods before are as `previous` applied them.
pub(crate) fn first_period_to_read(
    grid: Grid,
    config: &IncrementalConfig,
    previous: &Periods,
    clock: &Clock,
) -> Option<NaiveDateTime> {
    let entries: BTreeSet<NaiveDateTime> = previous
        .entries
        .keys()
        .filter_map(|n| grid.parse(n))
        .collect();
    let last = *entries.iter().next_back()?;
    let as_of = clock.as_of;
    // (A second before the window opens: the window is inclusive of its end.)
    let window = grid.truncate(as_of - config.late_window - chrono::Duration::seconds(1));
    let mut first = window.min(grid.next(last));
    let lookback = (config.lookback as usize).min(entries.len());
    if lookback > 0
        && let Some(p) = entries.iter().rev().nth(lookback - 1)
    {
        first = first.min(*p);
    }
    match &clock.kind {
        RunKind::FullRefresh => None,
        RunKind::Backfill { from, .. } => Some(first.min(grid.truncate(grid.instant_of(*from)))),
        _ => Some(first),
    }
}

/// How a write of `model` combines with its output, for the check that its columns did not
/// change: an incremental model keeps the other periods' files (as an append does), unless
/// it computes every period (a first run, a full refresh, another grid).
pub(crate) fn column_mode(
    model: &crate::config::ModelConfig,
    manifest: Option<&crate::table::Manifest>,
    kind: &RunKind,
) -> crate::config::WriteMode {
    let Some(batches) = model.batches.as_ref().filter(|b| b.incremental.is_some()) else {
        return model.sink.mode;
    };
    let keeps = *kind != RunKind::FullRefresh
        && manifest
            .and_then(|m| m.periods.as_ref())
            .is_some_and(|p| p.grid == Grid::of(batches).label());
    if keeps {
        crate::config::WriteMode::Append
    } else {
        crate::config::WriteMode::Overwrite
    }
}

/// An input file's object path as the user knows the file: relative to the pipeline folder
/// when inside it, else its path or URL (the first source whose location holds it says which).
pub(crate) fn show_file(pipeline: &crate::config::Pipeline, path: &str) -> String {
    let key = object_store::path::Path::from(path);
    let shown = pipeline
        .sources
        .values()
        .filter_map(|spec| crate::store::Location::parse(&spec.location).ok())
        .find(|l| path.starts_with(l.path().as_ref()))
        .map(|l| l.display_key(&key))
        .unwrap_or_else(|| path.to_string());
    std::path::Path::new(&shown)
        .strip_prefix(&pipeline.root)
        .map(|p| p.display().to_string())
        .unwrap_or(shown)
}

/// The command that backfills `period` of the pipeline.
pub fn backfill_command(pipeline: &crate::config::Pipeline, grid: Grid, period: &str) -> String {
    backfill_range(pipeline, grid, period, period)
        .unwrap_or_else(|| format!("sluice backfill {}", pipeline.root.display()))
}

/// The command that backfills the periods `first` to `last` (inclusive) of the pipeline:
/// `--from` and `--to` in the grid's wall time, as `sluice backfill` reads them.
pub(crate) fn backfill_range(
    pipeline: &crate::config::Pipeline,
    grid: Grid,
    first: &str,
    last: &str,
) -> Option<String> {
    let from = grid.parse(first)?;
    let to = grid.next(grid.parse(last)?);
    let show = |t: NaiveDateTime| {
        let local = grid.local(t);
        match grid.size {
            BatchSize::Hour => local.format("%Y-%m-%dT%H:%M:%S").to_string(),
            _ => local.format("%Y-%m-%d").to_string(),
        }
    };
    Some(format!(
        "sluice backfill {} --from {} --to {}",
        pipeline.root.display(),
        show(from),
        show(to)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::manifest::PeriodEntry;

    fn at(s: &str) -> NaiveDateTime {
        crate::config::parse_datetime(s).unwrap()
    }

    fn file(path: &str, rows: u64) -> AppliedFile {
        AppliedFile {
            source: "events".into(),
            path: path.into(),
            size: rows * 10,
            modified: "2024-01-01T00:00:00+00:00".into(),
            etag: None,
            rows,
        }
    }

    /// Day `d` of January 2024 holds the rows of `files`.
    fn day(map: &mut BTreeMap<NaiveDateTime, Vec<AppliedFile>>, d: u32, files: &[AppliedFile]) {
        map.entry(at(&format!("2024-01-{d:02}")))
            .or_default()
            .extend(files.iter().cloned());
    }

    fn config(window_hours: i64, lookback: u32) -> IncrementalConfig {
        IncrementalConfig {
            late_window: chrono::Duration::hours(window_hours),
            lookback,
            on_late_beyond_window: crate::config::OnLate::Warn,
        }
    }

    fn run(
        current: &BTreeMap<NaiveDateTime, Vec<AppliedFile>>,
        previous: Option<&Periods>,
        as_of: &str,
        kind: &RunKind,
        config: &IncrementalConfig,
    ) -> IncrementalPlan {
        plan(&PlanInput {
            grid: Grid::utc(BatchSize::Day),
            start: Some(at("2024-01-01")),
            end: None,
            config,
            as_of: at(as_of),
            kind,
            current,
            dims: "d",
            previous,
            counted_before: &|_, _| false,
        })
    }

    /// What a run that computed `done` periods from `current` records.
    fn applied(current: &BTreeMap<NaiveDateTime, Vec<AppliedFile>>, upto: u32) -> Periods {
        let mut entries = BTreeMap::new();
        for d in 1..=upto {
            let p = at(&format!("2024-01-{d:02}"));
            entries.insert(
                Grid::utc(BatchSize::Day).name(p),
                PeriodEntry {
                    run_id: "r1".into(),
                    dims: "d".into(),
                    inputs: current.get(&p).cloned().unwrap_or_default(),
                },
            );
        }
        Periods {
            grid: "day".into(),
            start: "2024-01-01".into(),
            entries,
        }
    }

    fn names(plan: &IncrementalPlan) -> Vec<(String, Reason)> {
        plan.todo
            .iter()
            .map(|(p, r)| (Grid::utc(BatchSize::Day).name(*p), *r))
            .collect()
    }

    /// The timeline: ten days, then two new days, a late file inside the window (day
    /// 10 ends on day 11 00:00; +48 h is the clock, and the window's end is inclusive) and
    /// one beyond it (day 2).
    #[test]
    fn the_day_one_day_two_timeline() {
        let cfg = config(48, 0);
        let mut current = BTreeMap::new();
        for d in 1..=10 {
            day(&mut current, d, &[file(&format!("events-{d:02}.csv"), 100)]);
        }
        let first = run(&current, None, "2024-01-11", &RunKind::Run, &cfg);
        assert!(first.full);
        assert_eq!(first.todo.len(), 10);
        assert_eq!(first.counts.rows_on_time, 1000);
        let previous = applied(&current, 10);
        // Nothing new: nothing to do.
        let again = run(&current, Some(&previous), "2024-01-11", &RunKind::Run, &cfg);
        assert!(again.todo.is_empty() && !again.full);
        assert_eq!(again.counts, LateCounts::default());

        day(&mut current, 11, &[file("events-11.csv", 100)]);
        day(&mut current, 12, &[file("events-12.csv", 100)]);
        day(&mut current, 10, &[file("late-10.csv", 7)]);
        day(&mut current, 2, &[file("late-02.csv", 5)]);
        let second = run(&current, Some(&previous), "2024-01-13", &RunKind::Run, &cfg);
        assert_eq!(
            names(&second),
            vec![
                ("2024-01-10".into(), Reason::Late),
                ("2024-01-11".into(), Reason::New),
                ("2024-01-12".into(), Reason::New),
            ]
        );
        assert_eq!(
            second.counts,
            LateCounts {
                rows_on_time: 200,
                rows_late_in_window: 7,
                rows_late_beyond_window: 5,
                rows_deleted: 0,
            }
        );
        assert!((second.counts.rate() - 12.0 / 212.0).abs() < 1e-12);
        assert_eq!(second.backlog.len(), 1);
        assert_eq!(second.backlog[0].period, "2024-01-02");
        assert_eq!(second.backlog[0].rows_late, 5);

        // One second past the window's end, day 10 is beyond it too.
        let late = run(
            &current,
            Some(&previous),
            "2024-01-13T00:00:01",
            &RunKind::Run,
            &cfg,
        );
        assert_eq!(names(&late)[0], ("2024-01-11".into(), Reason::New));
        assert_eq!(late.counts.rows_late_beyond_window, 12);

        // --no-reconcile leaves day 10 for reconcile, which does only it.
        let main = run(
            &current,
            Some(&previous),
            "2024-01-13",
            &RunKind::NoReconcile,
            &cfg,
        );
        assert_eq!(main.todo.len(), 2);
        assert_eq!(main.to_reconcile, vec!["2024-01-10"]);
        assert_eq!(main.counts.rows_late_in_window, 0);
        let rec = run(
            &current,
            Some(&previous),
            "2024-01-13",
            &RunKind::Reconcile,
            &cfg,
        );
        assert_eq!(names(&rec), vec![("2024-01-10".into(), Reason::Late)]);
        assert_eq!(rec.counts.rows_late_in_window, 7);
        assert_eq!(rec.counts.rows_on_time, 0);

        // A backfill of day 2 computes it, whatever the window.
        let backfill = RunKind::Backfill {
            from: at("2024-01-02"),
            to: at("2024-01-03"),
        };
        let bf = run(&current, Some(&previous), "2024-01-13", &backfill, &cfg);
        assert_eq!(names(&bf), vec![("2024-01-02".into(), Reason::Backfill)]);
        assert!(bf.backlog.is_empty());

        // A late row beyond the window is counted by the run that first sees it only.
        let seen = plan(&PlanInput {
            grid: Grid::utc(BatchSize::Day),
            start: Some(at("2024-01-01")),
            end: None,
            config: &cfg,
            as_of: at("2024-01-13"),
            kind: &RunKind::Run,
            current: &current,
            dims: "d",
            previous: Some(&previous),
            counted_before: &|p, f| p == "2024-01-02" && f.path == "late-02.csv",
        });
        assert_eq!(seen.counts.rows_late_beyond_window, 0);
        assert_eq!(seen.backlog.len(), 1, "still listed for a backfill");
    }

    #[test]
    fn rewritten_and_deleted_files_dimensions_and_lookback() {
        let cfg = config(48, 0);
        let mut current = BTreeMap::new();
        for d in 1..=5 {
            day(&mut current, d, &[file(&format!("events-{d:02}.csv"), 100)]);
        }
        let previous = applied(&current, 5);
        // events-05 rewritten (bigger), events-04 deleted: both inside the window at day 7.
        current.insert(at("2024-01-05"), vec![file("events-05.csv", 103)]);
        current.remove(&at("2024-01-04"));
        let p = run(&current, Some(&previous), "2024-01-07", &RunKind::Run, &cfg);
        // (Day 6 holds no rows and is after the latest data: not computed.)
        assert_eq!(
            names(&p),
            vec![
                ("2024-01-04".into(), Reason::Deleted),
                ("2024-01-05".into(), Reason::Changed),
            ]
        );
        assert_eq!(p.counts.rows_deleted, 200);
        assert_eq!(p.counts.rows_late_in_window, 103);

        // A changed dimension redoes the periods inside the window, and says so.
        let mut dims_prev = applied(&current, 5);
        for e in dims_prev.entries.values_mut() {
            e.dims = "old".into();
        }
        let d = run(
            &current,
            Some(&dims_prev),
            "2024-01-06",
            &RunKind::Run,
            &cfg,
        );
        assert!(d.dimensions_changed);
        assert_eq!(
            names(&d),
            vec![
                ("2024-01-03".into(), Reason::Dimension),
                ("2024-01-04".into(), Reason::Dimension),
                ("2024-01-05".into(), Reason::Dimension),
            ]
        );

        // lookback = 2 redoes the last two periods computed.
        let lb = run(
            &current,
            Some(&applied(&current, 5)),
            "2024-01-06",
            &RunKind::Run,
            &config(0, 2),
        );
        assert_eq!(
            names(&lb),
            vec![
                ("2024-01-04".into(), Reason::Lookback),
                ("2024-01-05".into(), Reason::Lookback),
            ]
        );
    }

    /// Found by review: late rows a run sees but does not apply are counted once their
    /// window closes (not dropped as "seen"); rows a lookback recomputes are applied, so
    /// counted inside the window and never listed for a backfill; a backfill of a period
    /// never computed counts its rows on time.
    #[test]
    fn every_late_row_is_counted_once_where_it_ends_up() {
        let cfg = config(48, 0);
        let mut current = BTreeMap::new();
        for d in 1..=5 {
            day(&mut current, d, &[file(&format!("e{d:02}.csv"), 10)]);
        }
        let previous = applied(&current, 5);
        day(&mut current, 5, &[file("late05.csv", 7)]);
        let main = run(
            &current,
            Some(&previous),
            "2024-01-07",
            &RunKind::NoReconcile,
            &cfg,
        );
        assert_eq!(main.to_reconcile, vec!["2024-01-05"]);
        assert_eq!(main.counts, LateCounts::default());
        // Day 5's window closed on day 8: the next run counts the 7 rows beyond it, once.
        let closed = run(&current, Some(&previous), "2024-01-09", &RunKind::Run, &cfg);
        assert_eq!(closed.counts.rows_late_beyond_window, 7);
        assert_eq!(closed.counted.len(), 1);
        assert_eq!(closed.backlog[0].period, "2024-01-05");
        let counted = closed.counted.clone();
        let again = plan(&PlanInput {
            grid: Grid::utc(BatchSize::Day),
            start: Some(at("2024-01-01")),
            end: None,
            config: &cfg,
            as_of: at("2024-01-10"),
            kind: &RunKind::Run,
            current: &current,
            dims: "d",
            previous: Some(&previous),
            counted_before: &|p, f| counted.iter().any(|(cp, cf)| cp == p && cf == f),
        });
        assert_eq!(again.counts.rows_late_beyond_window, 0);
        assert_eq!(again.backlog.len(), 1);

        // lookback = 2 with no window: day 5 is recomputed, its late rows applied.
        let lb = run(
            &current,
            Some(&previous),
            "2024-01-09",
            &RunKind::Run,
            &config(0, 2),
        );
        assert_eq!(
            names(&lb),
            vec![
                ("2024-01-04".into(), Reason::Lookback),
                ("2024-01-05".into(), Reason::Late),
            ]
        );
        assert_eq!(lb.counts.rows_late_in_window, 7);
        assert_eq!(lb.counts.rows_late_beyond_window, 0);
        assert!(lb.backlog.is_empty());

        // A backfill over a period never computed (day 8, after a gap) counts it on time.
        day(&mut current, 8, &[file("e08.csv", 4)]);
        let bf = run(
            &current,
            Some(&previous),
            "2024-01-10",
            &RunKind::Backfill {
                from: at("2024-01-04T12:00:00"),
                to: at("2024-01-09T06:00:00"),
            },
            &cfg,
        );
        assert_eq!(
            names(&bf)
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            vec![
                "2024-01-04",
                "2024-01-05",
                "2024-01-06",
                "2024-01-07",
                "2024-01-08",
                "2024-01-09"
            ]
        );
        assert_eq!(bf.counts.rows_on_time, 4);
    }

    #[test]
    fn period_names_read_back() {
        for size in [
            BatchSize::Hour,
            BatchSize::Day,
            BatchSize::Month,
            BatchSize::Year,
        ] {
            let grid = Grid::utc(size);
            let t = grid.truncate(at("2024-03-10T05:30:00"));
            assert_eq!(grid.parse(&grid.name(t)), Some(t), "{size:?}");
        }
    }
}
