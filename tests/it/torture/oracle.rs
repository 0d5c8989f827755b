//! The oracle: what a run over the current inputs must do ([`Expect`]), and every state the
//! published output may be in after the history so far ([`Oracle`]), computed from the
//! contract (README's guarantees, docs/outputs.md's write modes, docs/bad-data.md) and the
//! inputs as [`Inputs`] reads them, never from sluice.

use std::collections::{BTreeMap, BTreeSet};

use super::inputs::{Identity, Inputs, Line, Row};
use super::shape::{Mode, Shape};

/// What a run over the current inputs must do when it is not killed.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Exit 0, publishing `rows` by the sink's mode (or skipping an append the output holds).
    Publish {
        rows: Vec<Row>,
        /// The rows set aside (quarantine).
        rejected: BTreeSet<Line>,
        /// Those of them set aside for want of an event time (a time-batched model).
        untimed: BTreeSet<Line>,
        /// Rows per UTC day, for a time-batched model.
        days: BTreeMap<String, u64>,
        identity: Identity,
    },
    /// Exit 1, publishing nothing.
    Refuse(Refusal),
}

/// Why a run must fail.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// Rows that do not parse, without quarantine: the message names one's file and line.
    BadRows(BTreeSet<Line>),
    /// Rows without an event time in a time-batched model, without quarantine: the message
    /// gives their count.
    Untimed(u64),
    /// Both of the above: either message.
    Both,
    /// More rows quarantined than `max_bad_rows`: the message gives the count and the limit;
    /// the rejects are written all the same.
    OverLimit {
        rejected: BTreeSet<Line>,
        limit: u64,
    },
}

impl Expect {
    /// A short account, for a failure message.
    pub fn describe(&self) -> String {
        match self {
            Expect::Publish { rows, rejected, .. } => format!(
                "publish {} rows, {} rejected {rejected:?}",
                rows.len(),
                rejected.len()
            ),
            Expect::Refuse(why) => format!("refuse: {why:?}"),
        }
    }

    /// What a run of `shape` over `inputs` must do.
    pub fn of(shape: &Shape, inputs: &Inputs) -> Expect {
        // A row without an event time is refused (or set aside, under quarantine) in time
        // units; under main's contract (`SLUICE_TORTURE_UNTIMED`) a quarantined source sets
        // it aside in every model. Otherwise the event time is just a column.
        // A source that declares `event_time` and quarantines sets a row without one aside
        // in every model; without quarantine, only time units need it (and refuse it).
        let needs_time = shape.time_units() || shape.quarantine;
        let untimed = if needs_time {
            inputs.untimed.clone()
        } else {
            BTreeSet::new()
        };
        let rows = if needs_time {
            inputs.timed_rows()
        } else {
            inputs.all_rows()
        };
        if !shape.quarantine {
            match (inputs.bad.is_empty(), untimed.is_empty()) {
                (false, false) => return Expect::Refuse(Refusal::Both),
                (false, true) => return Expect::Refuse(Refusal::BadRows(inputs.bad.clone())),
                (true, false) => return Expect::Refuse(Refusal::Untimed(untimed.len() as u64)),
                (true, true) => {}
            }
        }
        let rejected: BTreeSet<Line> = inputs.bad.union(&untimed).cloned().collect();
        if let Some(limit) = shape.max_bad_rows
            && rejected.len() as u64 > limit
        {
            return Expect::Refuse(Refusal::OverLimit { rejected, limit });
        }
        Expect::Publish {
            rows,
            rejected,
            untimed,
            days: if shape.time_units() {
                inputs.days()
            } else {
                BTreeMap::new()
            },
            identity: inputs.identity.clone(),
        }
    }
}

/// One state the output may be in: its rows (`None`: nothing published yet), and the appends
/// it records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub rows: Option<Vec<Row>>,
    pub appended: BTreeSet<Identity>,
}

impl State {
    /// The state after a run that publishes `rows` read from files `identity` in `mode`; and
    /// whether the run skips an append the output already holds.
    pub fn after(&self, mode: Mode, rows: &[Row], identity: &Identity) -> (State, bool) {
        let old = self.rows.clone().unwrap_or_default();
        let mut next = self.clone();
        let new_rows: Vec<Row> = match mode {
            Mode::Overwrite => rows.to_vec(),
            Mode::OverwritePartitions => {
                let written: BTreeSet<i64> = rows.iter().map(|r| r.2).collect();
                old.into_iter()
                    .filter(|r| !written.contains(&r.2))
                    .chain(rows.iter().copied())
                    .collect()
            }
            Mode::Append => {
                if self.appended.contains(identity) {
                    return (self.clone(), true);
                }
                next.appended.insert(identity.clone());
                old.into_iter().chain(rows.iter().copied()).collect()
            }
        };
        let mut new_rows = new_rows;
        new_rows.sort();
        next.rows = Some(new_rows);
        (next, false)
    }
}

/// Every state the output may be in: one, until a killed run leaves it either before or
/// after that run's publish; the published output, read after every step, narrows it down.
#[derive(Debug, Clone)]
pub struct Oracle {
    pub states: Vec<State>,
}

impl Oracle {
    pub fn new() -> Oracle {
        Oracle {
            states: vec![State::default()],
        }
    }

    /// A run that was killed: it published, or it did not.
    pub fn killed(&mut self, mode: Mode, expect: &Expect) {
        if let Expect::Publish { rows, identity, .. } = expect {
            let after: Vec<State> = self
                .states
                .iter()
                .map(|s| s.after(mode, rows, identity).0)
                .collect();
            for s in after {
                self.add(s);
            }
        }
    }

    /// A run that exited 0 and published (`skipped` false) or skipped its append: the states
    /// it may have started from are those in which it would do that.
    pub fn published(&mut self, mode: Mode, expect: &Expect, skipped: bool) {
        let Expect::Publish { rows, identity, .. } = expect else {
            unreachable!("a refusal publishes nothing")
        };
        let before = std::mem::take(&mut self.states);
        for s in before {
            let (next, skips) = s.after(mode, rows, identity);
            if skips == skipped {
                self.add(next);
            }
        }
    }

    /// A run that resumed a killed run which had published, and reported success: either it
    /// found its publish in the output and changed nothing (the states that already hold
    /// it), or, its inputs having changed since, it ran the model again over them.
    pub fn completed(&mut self, mode: Mode, expect: &Expect) {
        let Expect::Publish { rows, identity, .. } = expect else {
            unreachable!("a refusal publishes nothing")
        };
        let before = std::mem::take(&mut self.states);
        for s in &before {
            let (next, skips) = s.after(mode, rows, identity);
            if &next == s {
                self.add(s.clone());
            }
            if !skips {
                self.add(next);
            }
        }
    }

    /// Keeps the states whose rows are `rows`: false when there is none.
    pub fn observe(&mut self, rows: &Option<Vec<Row>>) -> bool {
        self.states.retain(|s| &s.rows == rows);
        !self.states.is_empty()
    }

    fn add(&mut self, s: State) {
        if !self.states.contains(&s) {
            self.states.push(s);
        }
    }
}
