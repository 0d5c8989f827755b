//! The oracle of an incremental model (docs/incremental.md, simulated here, never asked of
//! sluice): the output as the periods it holds, each with the input file versions applied at
//! its last computation and their rows in it ([`Published`]); which periods a run computes,
//! why, and how it counts the rows it finds ([`plan`]); and the output after it ([`apply`]).
//!
//! Time is in hours since 2024-01-01 00:00 UTC; periods are days of the model's zone
//! (`tz_h` hours east of UTC, no daylight saving time) by index (day 0 is 2024-01-01): day
//! `d` ends at hour `24 (d + 1) - tz_h`. `start` and a backfill's range are wall times of
//! the zone.

use std::collections::{BTreeMap, BTreeSet};

use super::inputs::{InputFile, Row, day_name, local_day};
use super::shape::Incremental;

/// A day index: days since 2024-01-01.
pub type Day = i64;

/// Hours since 2024-01-01 00:00 UTC.
pub type Hour = i64;

/// A file version as the output's manifest records it (the etag, which holds the inode, the
/// modification time and the size, adds nothing): name, size, modification time (seconds,
/// nanoseconds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub name: String,
    pub size: u64,
    pub mtime: (i64, i64),
}

/// One file version applied to a period: its rows there, as they were.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Applied {
    pub version: Version,
    /// Sorted.
    pub rows: Vec<Row>,
}

/// The input files of each period now: each file holding rows of it, with those rows.
pub type Current = BTreeMap<Day, Vec<Applied>>;

/// The input files as periods (days of the zone `tz` hours east of UTC): each file version
/// with its rows in each day it holds rows of.
pub fn current(files: &[InputFile], tz: i64) -> Current {
    let mut out: Current = BTreeMap::new();
    for f in files {
        let mut by_day: BTreeMap<Day, Vec<Row>> = BTreeMap::new();
        for (row, minute) in &f.rows {
            if let Some(m) = minute {
                by_day.entry(local_day(*m, tz)).or_default().push(*row);
            }
        }
        for (day, mut rows) in by_day {
            rows.sort();
            out.entry(day).or_default().push(Applied {
                version: Version {
                    name: f.name.clone(),
                    size: f.size,
                    mtime: f.mtime,
                },
                rows,
            });
        }
    }
    for files in out.values_mut() {
        files.sort();
    }
    out
}

/// The dimension source `dims` (`g, k`, no event time) as it was: its version, and `k` by
/// `g` (the model outputs `n + k` for each event, joined on `g`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dims {
    pub version: Version,
    pub k: BTreeMap<i64, i64>,
}

impl Dims {
    /// `<pipeline>/dims.csv`, if the model has it.
    pub fn read(pipeline: &std::path::Path) -> Option<Dims> {
        use std::os::unix::fs::MetadataExt;
        let path = pipeline.join("dims.csv");
        let m = std::fs::metadata(&path).ok()?;
        let text = std::fs::read_to_string(&path).ok()?;
        let k = text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (g, k) = l.split_once(',')?;
                Some((g.parse().ok()?, k.parse().ok()?))
            })
            .collect();
        Some(Dims {
            version: Version {
                name: "dims.csv".into(),
                size: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
            },
            k,
        })
    }

    /// An event's output row: `(id, n + k, g)`; none when no `k` joins its `g`.
    fn join(&self, (id, n, g): Row) -> Option<Row> {
        Some((id, n + self.k.get(&g)?, g))
    }
}

/// What an incremental output holds: its first period, and each period computed with the
/// file versions applied to it (none: computed with no rows), and the dimension source as it
/// was then (if the model has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub start: Day,
    pub periods: BTreeMap<Day, Vec<Applied>>,
    pub dims: BTreeMap<Day, Dims>,
}

impl Published {
    /// The rows of each period (each event joined with the dimension as it was when its
    /// period was computed).
    pub fn rows(&self) -> BTreeMap<Day, Vec<Row>> {
        self.periods
            .iter()
            .map(|(d, files)| {
                let events = files.iter().flat_map(|f| f.rows.iter().copied());
                let mut rows: Vec<Row> = match self.dims.get(d) {
                    Some(dims) => events.filter_map(|r| dims.join(r)).collect(),
                    None => events.collect(),
                };
                rows.sort();
                (*d, rows)
            })
            .filter(|(_, rows)| !rows.is_empty())
            .collect()
    }

    /// What the manifest records of each period: each file version with its row count.
    pub fn records(&self) -> BTreeMap<Day, Vec<(Version, u64)>> {
        self.periods
            .iter()
            .map(|(d, files)| {
                let mut v: Vec<(Version, u64)> = files
                    .iter()
                    .map(|f| (f.version.clone(), f.rows.len() as u64))
                    .collect();
                v.sort();
                (*d, v)
            })
            .collect()
    }
}

/// A (period, file version) whose rows a run counted as later than the window: the state
/// store remembers them, so they are counted once.
pub type Counted = (Day, Version);

/// What the history may be in: the output (`None`: nothing published), and the late rows
/// beyond the window the state store has surely, or perhaps (a killed run recorded its
/// counts before its publish, and may have died before), counted.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub out: Option<Published>,
    pub sure: BTreeSet<Counted>,
    pub maybe: BTreeSet<Counted>,
}

impl State {
    /// One state for two that hold the same output: what either may have counted.
    pub fn merge(&self, other: &State) -> State {
        let sure: BTreeSet<Counted> = self.sure.intersection(&other.sure).cloned().collect();
        let maybe = self
            .sure
            .iter()
            .chain(&self.maybe)
            .chain(&other.sure)
            .chain(&other.maybe)
            .filter(|c| !sure.contains(*c))
            .cloned()
            .collect();
        State {
            out: self.out.clone(),
            sure,
            maybe,
        }
    }
}

/// What a run was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sluice run`.
    Run,
    /// `sluice run --no-reconcile`.
    NoReconcile,
    /// `sluice reconcile`.
    Reconcile,
    /// `sluice backfill --from --to` (wall times of the zone, in hours).
    Backfill { from: Hour, to: Hour },
    /// `sluice run --full-refresh`.
    FullRefresh,
}

impl Kind {
    /// The command's arguments after `.`, with the clock.
    pub fn args(&self, clock: Hour) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Kind::Run | Kind::NoReconcile | Kind::FullRefresh => vec!["run".into(), ".".into()],
            Kind::Reconcile => vec!["reconcile".into(), ".".into()],
            Kind::Backfill { .. } => vec!["backfill".into(), ".".into()],
        };
        args.extend(["--as-of".into(), instant(clock)]);
        match self {
            Kind::NoReconcile => args.push("--no-reconcile".into()),
            Kind::FullRefresh => args.push("--full-refresh".into()),
            Kind::Backfill { from, to } => {
                args.extend(["--from".into(), time_arg(*from)]);
                args.extend(["--to".into(), time_arg(*to)]);
            }
            _ => {}
        }
        args
    }
}

/// An instant as `--as-of` takes it (RFC 3339).
pub fn instant(h: Hour) -> String {
    format!(
        "{}T{:02}:00:00Z",
        day_name(h.div_euclid(24)),
        h.rem_euclid(24)
    )
}

/// `--from` / `--to`: a date at midnight, else a date-time (read as UTC).
fn time_arg(h: Hour) -> String {
    if h.rem_euclid(24) == 0 {
        day_name(h.div_euclid(24))
    } else {
        format!(
            "{}T{:02}:00:00",
            day_name(h.div_euclid(24)),
            h.rem_euclid(24)
        )
    }
}

/// Why a run computes a period (the report's `periods_processed[].reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    New,
    Late,
    Changed,
    Deleted,
    Lookback,
    Dimension,
    Backfill,
    FullRefresh,
}

impl Reason {
    pub fn name(&self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Late => "late",
            Reason::Changed => "changed",
            Reason::Deleted => "deleted",
            Reason::Lookback => "lookback",
            Reason::Dimension => "dimension",
            Reason::Backfill => "backfill",
            Reason::FullRefresh => "full_refresh",
        }
    }
}

/// The report's late-arrival counts (`rows_late_beyond_window` as a range: rows the state
/// store perhaps counted already may be counted again or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub on_time: u64,
    pub in_window: u64,
    /// The least and the most rows counted beyond the window.
    pub beyond: (u64, u64),
    pub deleted: u64,
}

impl Counts {
    /// Whether a report's counts `(on time, in window, beyond, deleted)` are these.
    pub fn allows(&self, got: (u64, u64, u64, u64)) -> bool {
        got.0 == self.on_time
            && got.1 == self.in_window
            && (self.beyond.0..=self.beyond.1).contains(&got.2)
            && got.3 == self.deleted
    }
}

/// What one run computes and counts.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The periods, in order, with why.
    pub todo: Vec<(Day, Reason)>,
    /// Every period of the output is replaced (a first run, a full refresh).
    pub full: bool,
    /// The output's first period.
    pub first: Option<Day>,
    pub counts: Counts,
    /// The file versions whose rows this run may count beyond the window.
    pub counted: BTreeSet<Counted>,
    /// Touched periods inside the window this run leaves for `sluice reconcile`.
    pub to_reconcile: Vec<Day>,
    /// Touched periods beyond the window: (period, late rows, deleted rows).
    pub backlog: Vec<(Day, u64, u64)>,
    /// The dimension changed since a period it computes was computed.
    pub dimensions_changed: bool,
}

/// The periods a run of `kind` with clock `clock` computes over the `current` files (and
/// dimension `dims`) from `state`, and how it counts the rows it finds (docs/incremental.md,
/// "What a run computes", "Late rows, the window, and what is later still", "The
/// late-arrival rate").
/// `resumed`: the run resumes a killed one, so the rows that run counted beyond the window
/// are counted again (the state store's records of a run are replaced by its resume).
pub fn plan(
    state: &State,
    current: &Current,
    dims: Option<&Dims>,
    kind: Kind,
    clock: Hour,
    cfg: &Incremental,
    resumed: bool,
) -> Plan {
    // The first run (nothing published) and a full refresh compute every period as new.
    let full = state.out.is_none() || kind == Kind::FullRefresh;
    let none = BTreeMap::new();
    let entries = match (&state.out, full) {
        (Some(out), false) => &out.periods,
        _ => &none,
    };
    let first = cfg
        .start
        .or_else(|| state.out.as_ref().filter(|_| !full).map(|o| o.start))
        .or_else(|| current.keys().next().copied());
    let mut plan = Plan {
        full,
        first,
        ..Plan::default()
    };
    let Some(first) = first else {
        return plan;
    };
    // The periods that have ended by the clock: before `limit` (the day holding the clock).
    let limit = (clock + cfg.tz_h).div_euclid(24);
    // New periods go up to the latest data (or computed period), not up to the clock.
    let last = current
        .keys()
        .chain(entries.keys())
        .max()
        .map_or(first, |d| d + 1);
    let mut candidates: BTreeSet<Day> = (first..last.min(limit)).collect();
    candidates.extend(entries.keys().filter(|d| **d < limit));
    let backfill = match kind {
        Kind::Backfill { from, to } => Some((from, to)),
        _ => None,
    };
    if let Some((from, to)) = backfill {
        candidates.extend((from.div_euclid(24)..limit).filter(|d| d * 24 < to));
    }
    // Without `start`, rows of days before the first period are found too (a backfill
    // computes them).
    if cfg.start.is_none() {
        candidates.extend(current.keys().filter(|d| **d < first));
    }
    // The last `lookback` periods computed (that have ended).
    let lookback: BTreeSet<Day> = entries
        .keys()
        .filter(|d| **d < limit)
        .rev()
        .take(cfg.lookback as usize)
        .copied()
        .collect();
    let empty = Vec::new();
    for d in candidates {
        let now = current.get(&d).unwrap_or(&empty);
        let entry = entries.get(&d);
        // The window is open while the period's end + late_window >= the clock.
        let in_window = (d + 1) * 24 - cfg.tz_h + cfg.window_h >= clock || lookback.contains(&d);
        let backfilled = backfill.is_some_and(|(from, to)| d * 24 < to && (d + 1) * 24 > from);
        let (arrived, gone): (Vec<&Applied>, Vec<&Applied>) = match entry {
            None => (now.iter().collect(), Vec::new()),
            Some(applied) => {
                let before: BTreeSet<&Version> = applied.iter().map(|f| &f.version).collect();
                let after: BTreeSet<&Version> = now.iter().map(|f| &f.version).collect();
                (
                    now.iter()
                        .filter(|f| !before.contains(&f.version))
                        .collect(),
                    applied
                        .iter()
                        .filter(|f| !after.contains(&f.version))
                        .collect(),
                )
            }
        };
        let touched = entry.is_some() && (!arrived.is_empty() || !gone.is_empty());
        let reconciles = matches!(kind, Kind::Run | Kind::Reconcile);
        // The dimension changed since the period was computed, and its window is open.
        let computed_with = entries
            .contains_key(&d)
            .then(|| state.out.as_ref()?.dims.get(&d))
            .flatten();
        let dims_changed = entries.contains_key(&d)
            && computed_with.map(|c| &c.version) != dims.map(|c| &c.version)
            && in_window;
        let reason = if backfill.is_some() {
            backfilled.then_some(Reason::Backfill)
        } else if full {
            Some(Reason::FullRefresh)
        } else if entry.is_none() {
            (d >= first && kind != Kind::Reconcile).then_some(Reason::New)
        } else if touched && in_window && reconciles {
            Some(match (arrived.is_empty(), gone.is_empty()) {
                (false, true) => Reason::Late,
                (true, false) => Reason::Deleted,
                _ => Reason::Changed,
            })
        } else if dims_changed && reconciles {
            Some(Reason::Dimension)
        } else if lookback.contains(&d) && kind == Kind::Run {
            Some(Reason::Lookback)
        } else {
            None
        };
        plan.dimensions_changed |= dims_changed && reason.is_some();
        // Each row counted once: on time when its period is computed for the first time,
        // late inside the window when applied to a computed period, beyond the window by
        // the first run that finds it after the window closed (applied or not).
        let on_time = entry.is_none() && d >= first;
        for f in &arrived {
            let n = f.rows.len() as u64;
            if on_time {
                if reason.is_some() {
                    plan.counts.on_time += n;
                }
            } else if in_window {
                if reason.is_some() {
                    plan.counts.in_window += n;
                }
            } else {
                let key = (d, f.version.clone());
                let recorded = state.sure.contains(&key) || state.maybe.contains(&key);
                if !recorded {
                    plan.counts.beyond.0 += n;
                }
                if resumed || !state.sure.contains(&key) {
                    plan.counts.beyond.1 += n;
                    plan.counted.insert(key);
                }
            }
        }
        if reason.is_some() {
            plan.counts.deleted += gone.iter().map(|f| f.rows.len() as u64).sum::<u64>();
        } else if touched || (entry.is_none() && d < first && !arrived.is_empty()) {
            if in_window {
                plan.to_reconcile.push(d);
            } else {
                plan.backlog.push((
                    d,
                    arrived.iter().map(|f| f.rows.len() as u64).sum(),
                    gone.iter().map(|f| f.rows.len() as u64).sum(),
                ));
            }
        }
        if let Some(r) = reason {
            plan.todo.push((d, r));
        }
    }
    plan
}

/// The output after a run that carried out `plan` over the `current` files: the periods it
/// computed replaced by what they hold now (all of them, for a full one); nothing published
/// when it computed nothing.
pub fn apply(
    out: Option<&Published>,
    plan: &Plan,
    current: &Current,
    dims: Option<&Dims>,
) -> Option<Published> {
    if plan.todo.is_empty() {
        return out.cloned();
    }
    let (mut periods, mut dims_of) = match out {
        Some(o) if !plan.full => (o.periods.clone(), o.dims.clone()),
        _ => (BTreeMap::new(), BTreeMap::new()),
    };
    for (d, _) in &plan.todo {
        periods.insert(*d, current.get(d).cloned().unwrap_or_default());
        if let Some(dims) = dims {
            dims_of.insert(*d, dims.clone());
        }
    }
    let first = plan.first.expect("a plan with periods has a first one");
    let start = match out {
        Some(o) if !plan.full => o.start.min(first),
        _ => first,
    };
    Some(Published {
        start,
        periods,
        dims: dims_of,
    })
}
