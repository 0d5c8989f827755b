//! The incremental histories (issue 13 §8: "kill -9 at any point of an incremental or
//! reconcile run, then rerun, gives what an uninterrupted run gives; arrival records are
//! committed with the publish that used them").
//!
//! Each draws an incremental model by day ([`Incremental`]: UTC or a zone's days, a late
//! window, a lookback, a `start` or none, `on_late_beyond_window` warn or fail, a dimension
//! source joined or none, partitioned or not; a local or an S3 output) and a timeline: the
//! clock (`--as-of`) moves on by random amounts (or to the hour a window closes); day files
//! arrive, late files for days inside and beyond the window, files are rewritten, renamed,
//! touched and deleted, the dimension changes;
//! runs of every kind (`run`, `run --no-reconcile`, `reconcile`, `backfill` over a random
//! range, `run --full-refresh`) are checked in full, or killed with `kill -9` (after a pause,
//! or when a staging file, a moved file or a new manifest appears) and run again (the same
//! command, which resumes it; after the inputs changed; with `--restart`); `plan`, `status`
//! and `runs` in between.
//!
//! After every step the output is checked against the oracle ([`periods`]): each period's
//! rows and the file versions its manifest records are those of the state the history is in
//! (after a kill: before or after the killed run's publish, never a mix); a checked run
//! computed exactly the periods the contract says, with their reasons, and reported the
//! late-arrival counts, the periods left to reconcile and those needing a backfill; `status`
//! lists the same due periods and backlog.

use std::process::{Command, Stdio};

use super::inputs::{Inputs, day_name};
use super::output::{PeriodsSeen, Recorded};
use super::periods::{
    self, Counts, Current, Day, Dims, Hour, Kind, Plan, Published, State, instant,
};
use super::shape::{Flags, Incremental};
use super::{Counts as Totals, Ended, History, Moment, Rng, env_flag};
use crate::support::sluice_env;

/// The incremental part of a history: its settings, its clock, the state it is in, and the
/// counts the attempts of a killed run reported (a rerun that resumes it with nothing left
/// to compute reports what an attempt counted).
pub struct Timeline {
    pub cfg: Incremental,
    pub clock: Hour,
    pub state: State,
    attempts: Vec<(Kind, Hour, Counts)>,
    /// The hash the manifest records (`dims`) for each version of the dimension a period
    /// was computed with (`None`: the model has none).
    dims_hashes: std::collections::BTreeMap<Option<periods::Version>, String>,
}

impl Timeline {
    /// A short account of the state, for a failure message.
    pub fn describe(&self) -> String {
        let out = match &self.state.out {
            None => "nothing published".to_string(),
            Some(o) => {
                let periods: Vec<String> = o
                    .periods
                    .iter()
                    .map(|(d, files)| {
                        let files: Vec<String> = files
                            .iter()
                            .map(|f| format!("{}:{}", f.version.name, f.rows.len()))
                            .collect();
                        format!("{} [{}]", &day_name(*d)[5..], files.join(" "))
                    })
                    .collect();
                format!("start {}, {}", day_name(o.start), periods.join(", "))
            }
        };
        format!(
            "clock {}; output: {out}; counted beyond the window: {} surely, {} perhaps",
            instant(self.clock),
            self.state.sure.len(),
            self.state.maybe.len()
        )
    }
}

/// One incremental history of `seed`: its model, its first files, random steps each checked
/// against the oracle, then a final run checked in full.
pub fn history(seed: u64, flags: Flags) -> Totals {
    let mut rng = Rng(seed);
    let flags = Flags {
        incremental: true,
        ..flags
    };
    let mut h = History::new(seed, &mut rng, flags);
    let cfg = h.shape.incremental().expect("an incremental shape");
    let clock = 24 * (2 + rng.below(3) as i64) + rng.below(24) as i64;
    h.inc = Some(Timeline {
        cfg,
        clock,
        state: State::default(),
        attempts: Vec::new(),
        dims_hashes: Default::default(),
    });
    h.log.push(format!("clock {}", instant(clock)));
    // A file a day up to the clock's (unfinished) day, a few days missing.
    let shape = h.shape.clone();
    if cfg.dims {
        let what = h.files.dims(&mut rng, true);
        h.log.push(what);
    }
    for day in 0..=(clock + cfg.tz_h).div_euclid(24) {
        if rng.chance(4) && day > 0 {
            continue;
        }
        let what = h.files.add_on(&mut rng, &shape, &[day], "day");
        h.log.push(what);
    }
    let steps = 4 + rng.below(6);
    for _ in 0..steps {
        h.tick(&mut rng);
        h.change(&mut rng);
        h.act_incremental(&mut rng);
        h.counts.steps += 1;
    }
    // A final run: the current inputs at the current clock.
    h.check_run(Kind::Run, false);
    if env_flag("SLUICE_TORTURE_VERBOSE") {
        eprintln!("seed {seed}: {:?}\n    {}", h.shape, h.log.join("\n    "));
    }
    h.counts
}

impl History {
    fn timeline(&self) -> &Timeline {
        self.inc.as_ref().expect("an incremental history")
    }

    fn timeline_mut(&mut self) -> &mut Timeline {
        self.inc.as_mut().expect("an incremental history")
    }

    /// Moves the clock on: not at all, by hours, by days, by a week or more (every window
    /// closes), or to the next hour a window closes at (a period's end + `late_window`: the
    /// window is still open then), or just past it.
    fn tick(&mut self, rng: &mut Rng) {
        let (clock, cfg) = (self.timeline().clock, self.timeline().cfg);
        // (Day d's window closes at 24 (d + 1) - tz + window.)
        let window = cfg.window_h - cfg.tz_h;
        let dt = match rng.below(20) {
            0..=2 => 0,
            3..=10 => 1 + rng.below(30) as i64,
            11..=15 => 24 + rng.below(48) as i64,
            16..=18 => {
                let edge = clock + 1 + (window - clock - 1).rem_euclid(24);
                edge - clock + i64::from(rng.chance(3))
            }
            _ => 24 * (5 + rng.below(6) as i64),
        };
        if dt > 0 {
            let t = self.timeline_mut();
            t.clock += dt;
            let now = instant(t.clock);
            self.log.push(format!("clock +{dt}h: {now}"));
        }
    }

    /// Changes the input files, or not: a file of the last day or two (sometimes of a day
    /// that has not ended, or of tomorrow), a late file for an older day (inside or beyond
    /// the window; sometimes before `start`), a file rewritten with fresh rows on its days,
    /// renamed, deleted, or rewritten unchanged.
    fn change(&mut self, rng: &mut Rng) {
        let shape = self.shape.clone();
        let (cfg, clock) = (self.timeline().cfg, self.timeline().clock);
        let today = (clock + cfg.tz_h).div_euclid(24);
        let what = match rng.below(14) {
            0..=3 => {
                let day = today - rng.below(2) as i64 + i64::from(rng.chance(8));
                let days = if rng.chance(3) {
                    vec![day, day + 1]
                } else {
                    vec![day]
                };
                Some(self.files.add_on(rng, &shape, &days, "day"))
            }
            4..=6 => {
                // Half of them for the days whose window closes about now.
                let lo = match cfg.start {
                    Some(s) if rng.chance(8) => s - 1,
                    None if rng.chance(8) => -2,
                    s => s.unwrap_or(0).max(today - 10),
                };
                let edge = (clock + cfg.tz_h - cfg.window_h).div_euclid(24) - 1;
                let day = if rng.chance(2) && edge >= lo && edge < today {
                    (edge - 1 + rng.below(3) as i64).clamp(lo, today - 1)
                } else {
                    lo + rng.below((today - lo).max(1) as u64) as i64
                };
                let days = if rng.chance(5) {
                    vec![day, day + 1]
                } else {
                    vec![day]
                };
                Some(self.files.add_on(rng, &shape, &days, "late"))
            }
            7 | 8 => Some(self.files.rewrite_on(rng, &shape)),
            9 => Some(self.files.rename(rng)),
            10 => self.files.delete(rng),
            11 => Some(self.files.touch(rng)),
            12 if cfg.dims => {
                let fresh = !rng.chance(3);
                Some(self.files.dims(rng, fresh))
            }
            _ => None,
        };
        if let Some(what) = what {
            self.log.push(what);
        }
    }

    /// A command: a run checked in full, a run killed (then, mostly, run again: the same
    /// command, which resumes it, after the inputs changed or not, or `--restart`), two kills
    /// in a row, or an unrelated command.
    fn act_incremental(&mut self, rng: &mut Rng) {
        match rng.below(10) {
            0..=3 => {
                let kind = self.draw_kind(rng, true);
                let restart = rng.chance(6);
                self.check_run(kind, restart);
            }
            4..=7 => {
                let kind = self.draw_kind(rng, false);
                let restart = rng.chance(6);
                self.kill_incremental(rng, kind, restart);
                match rng.below(6) {
                    0..=2 => self.check_run(kind, false),
                    3 => {
                        self.change(rng);
                        self.check_run(kind, false);
                    }
                    4 => self.check_run(kind, true),
                    _ => {}
                }
            }
            8 => self.unrelated_incremental(rng),
            _ => {
                let kind = self.draw_kind(rng, false);
                self.kill_incremental(rng, kind, false);
                self.kill_incremental(rng, kind, false);
                self.check_run(kind, false);
            }
        }
    }

    /// What a run is asked to do: mostly `run`; `--no-reconcile`, `reconcile`, a backfill of
    /// a random range (days or hours; with `refusal`, sometimes from before `start`, which
    /// is refused), `--full-refresh`.
    fn draw_kind(&self, rng: &mut Rng, refusal: bool) -> Kind {
        let (cfg, clock) = (self.timeline().cfg, self.timeline().clock);
        match rng.below(20) {
            0..=8 => Kind::Run,
            9..=11 => Kind::NoReconcile,
            12..=14 => Kind::Reconcile,
            15..=18 => {
                let today = (clock + cfg.tz_h).div_euclid(24);
                let lo = cfg.start.unwrap_or(-1);
                if let Some(s) = cfg.start
                    && refusal
                    && rng.chance(12)
                {
                    return Kind::Backfill {
                        from: (s - 1) * 24,
                        to: (s + 1) * 24,
                    };
                }
                let day = lo + rng.below((today - lo + 1).max(1) as u64) as i64;
                let mut from = day * 24;
                if rng.chance(4) {
                    from += rng.below(24) as i64;
                }
                let mut to = day * 24 + 24 * (1 + rng.below(4) as i64);
                if rng.chance(4) {
                    to += rng.below(24) as i64;
                }
                Kind::Backfill {
                    from,
                    to: to.max(from + 1),
                }
            }
            _ => Kind::FullRefresh,
        }
    }

    /// Whether `kind` is a backfill from before the configured `start` (refused, exit 2).
    fn before_start(&self, kind: Kind) -> bool {
        match (kind, self.timeline().cfg.start) {
            (Kind::Backfill { from, .. }, Some(s)) => from < s * 24,
            _ => false,
        }
    }

    /// The command line of `kind` at the current clock.
    fn command(&self, kind: Kind, restart: bool) -> Vec<String> {
        let mut args = kind.args(self.timeline().clock);
        if restart {
            args.push("--restart".into());
        }
        args
    }

    /// A run that is not killed, checked in full: its exit status, the periods it computed
    /// and why, its late-arrival counts, the periods it leaves to reconcile and those it
    /// lists for a backfill, its units and rows out, and the output it leaves.
    fn check_run(&mut self, kind: Kind, restart: bool) {
        let inputs = Inputs::read(self.d());
        let current = periods::current(&inputs.files, self.timeline().cfg.tz_h);
        let dims = Dims::read(self.d());
        let mut args = self.command(kind, restart);
        args.extend(["--report".into(), "r.json".into()]);
        let _ = std::fs::remove_file(self.d().join("r.json"));
        let files_before = self.out.files_by_period();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = sluice_env(self.d(), &argv, &self.out.env());
        self.counts.runs += 1;
        self.log.push(format!(
            "{}: exit {}",
            args[..args.len() - 2].join(" "),
            run.code
        ));
        self.check(
            !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
            || format!("a panic reached the user:\n{}", run.stderr),
        );
        if self.before_start(kind) {
            self.counts.refusals += 1;
            self.check(run.code == 2 && run.stderr.contains("is before"), || {
                format!(
                    "a backfill from before start: expected exit 2, got {}:\n{}",
                    run.code, run.stderr
                )
            });
            *self.log.last_mut().unwrap() += " (refused: before start)";
            let state = self.timeline().state.clone();
            self.observe_incremental("after a refused backfill", &[state]);
            return;
        }
        let report = std::fs::read_to_string(self.d().join("r.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .unwrap_or_else(|| self.fail(&format!("no report; stderr:\n{}", run.stderr)));
        let model = report["models"][0].clone();
        let resumed = run.stderr.contains("resuming run");
        if resumed {
            *self.log.last_mut().unwrap() += " (resumed)";
        }
        let t = self.timeline();
        let (cfg, clock) = (t.cfg, t.clock);
        let plan = periods::plan(
            &t.state,
            &current,
            dims.as_ref(),
            kind,
            clock,
            &cfg,
            resumed,
        );
        self.check(model["status"] == "success", || {
            format!(
                "model status {}: {}\n{}",
                model["status"],
                brief(&model),
                run.stderr
            )
        });
        let late = &model["late"];
        self.check_late(late, &plan, &current);
        // The counts: this run's, or, resuming a run with nothing left to compute, what an
        // attempt of it counted.
        let got = counts_of(late);
        let mut allowed = vec![plan.counts];
        if resumed && plan.todo.is_empty() {
            allowed.extend(
                t.attempts
                    .iter()
                    .filter(|(k, c, _)| *k == kind && *c == clock)
                    .map(|a| a.2),
            );
        }
        self.check(allowed.iter().any(|c| c.allows(got)), || {
            format!(
                "late counts (on time, in window, beyond, deleted) {got:?}, expected one of {allowed:?}"
            )
        });
        // Beyond the window with `fail`: published, then exit 1 naming the rows.
        let fails = cfg.fail_beyond && got.2 > 0;
        self.check(run.code == i32::from(fails), || {
            format!(
                "exit {}, expected {} ({} rows beyond the window, on_late_beyond_window {}):\n{}",
                run.code,
                i32::from(fails),
                got.2,
                if cfg.fail_beyond { "fail" } else { "warn" },
                run.stderr
            )
        });
        if fails {
            self.check(
                run.stderr.contains(&format!(
                    "{} rows arrived later than the late window",
                    got.2
                )),
                || format!("the failure does not count the rows:\n{}", run.stderr),
            );
            *self.log.last_mut().unwrap() += &format!(" ({} rows beyond the window)", got.2);
        }
        // The units are the periods computed; rows out, theirs.
        let after = periods::apply(
            self.timeline().state.out.as_ref(),
            &plan,
            &current,
            dims.as_ref(),
        );
        let units: Vec<String> = model["units"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| u["unit"].as_str().unwrap_or_default().to_string())
            .collect();
        let todo: Vec<String> = plan.todo.iter().map(|(d, _)| day_name(*d)).collect();
        self.check(units == todo, || {
            format!("the report's units {units:?}, expected the periods {todo:?}")
        });
        let rows_out: u64 = after.as_ref().map_or(0, |o| {
            plan.todo
                .iter()
                .filter_map(|(d, _)| o.periods.get(d))
                .flatten()
                .map(|f| f.rows.len() as u64)
                .sum()
        });
        self.check(model["rows_out"] == rows_out, || {
            format!(
                "rows_out {}, the periods computed hold {rows_out}: {}",
                model["rows_out"],
                brief(&model)
            )
        });
        if !plan.todo.is_empty() {
            let reasons: Vec<String> = plan
                .todo
                .iter()
                .map(|(d, r)| format!("{}:{}", &day_name(*d)[5..], r.name()))
                .collect();
            *self.log.last_mut().unwrap() += &format!(" [{}]", reasons.join(" "));
        }
        // The state after it: its beyond-window rows are recorded. Unless it resumed a killed
        // run: with nothing left to compute, it reports, and keeps, what an attempt recorded.
        let t = self.timeline_mut();
        let mut next = State {
            out: after,
            ..t.state.clone()
        };
        if resumed {
            next.maybe.extend(plan.counted.iter().cloned());
        } else {
            next.sure.extend(plan.counted.iter().cloned());
        }
        let sure = next.sure.clone();
        next.maybe.retain(|c| !sure.contains(c));
        t.attempts.clear();
        self.observe_incremental("after the run", &[next]);
        // Nothing else is written: the periods it did not compute keep their files.
        let files_after = self.out.files_by_period();
        let computed: Vec<String> = plan.todo.iter().map(|(d, _)| day_name(*d)).collect();
        for (period, files) in &files_after {
            if !computed.contains(period) {
                self.check(files_before.get(period) == Some(files), || {
                    format!(
                        "period {period}, not computed, has files {files:?}, had {:?}",
                        files_before.get(period)
                    )
                });
            }
        }
        let run_id = report["run_id"].as_str().unwrap_or_default().to_string();
        self.check_leftovers(&run_id, plan.todo.is_empty(), resumed);
    }

    /// After a run that exited: no staging and no data file the manifest does not list, but
    /// for one leftover, by design (src/table/heal.rs, `lease_being_written`): a run killed
    /// while writing its first lease leaves a folder holding only the store's temporary
    /// `_LEASE#N`, which healing takes for a lease being written, so live, for a minute.
    /// (Before the fix of `ModelRun::publish_nothing`, a run with nothing to compute left
    /// its lease, and when it resumed a killed run, that run's staged and moved files.)
    fn check_leftovers(&mut self, _run_id: &str, _nothing_computed: bool, _resumed: bool) {
        let all = self.out.staging();
        let lease_only = |k: &str| {
            let Some((dir, file)) = k.rsplit_once('/') else {
                return false;
            };
            file.starts_with("_LEASE#")
                && all.iter().all(|o| {
                    o.rsplit_once('/')
                        .is_none_or(|(d, f)| d != dir || f.starts_with("_LEASE#"))
                })
        };
        let staging: Vec<&String> = all.iter().filter(|k| !lease_only(k)).collect();
        let unlisted = self.out.unlisted();
        self.check(staging.is_empty() && unlisted.is_empty(), || {
            format!("after the run: staging {staging:?}, unlisted data files {unlisted:?}")
        });
    }

    /// The report's `late` object against the plan: the periods processed with their
    /// reasons, those left to reconcile, those needing a backfill.
    fn check_late(&self, late: &serde_json::Value, plan: &Plan, current: &Current) {
        let processed: Vec<(String, String)> = late["periods_processed"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["period"].as_str().unwrap_or_default().to_string(),
                    p["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = plan
            .todo
            .iter()
            .map(|(d, r)| (day_name(*d), r.name().to_string()))
            .collect();
        self.check(processed == want, || {
            format!(
                "periods processed {processed:?}, expected {want:?} (input files by day: {})",
                describe_current(current)
            )
        });
        self.check(
            late["dimensions_changed"] == plan.dimensions_changed,
            || {
                format!(
                    "dimensions_changed {}, expected {}",
                    late["dimensions_changed"], plan.dimensions_changed
                )
            },
        );
        let reconcile: Vec<String> = strings(&late["periods_to_reconcile"]);
        let want: Vec<String> = plan.to_reconcile.iter().map(|d| day_name(*d)).collect();
        self.check(reconcile == want, || {
            format!("periods to reconcile {reconcile:?}, expected {want:?}")
        });
        let backlog = backlog_of(&late["periods_needing_backfill"]);
        let want = backlog_want(plan);
        self.check(backlog == want, || {
            format!(
                "periods needing backfill (period, late, deleted) {backlog:?}, expected {want:?}"
            )
        });
    }

    /// A run killed with `kill -9` at a drawn moment: the output is the state before its
    /// publish or after it, and its beyond-window rows perhaps recorded.
    fn kill_incremental(&mut self, rng: &mut Rng, kind: Kind, restart: bool) {
        let inputs = Inputs::read(self.d());
        let current = periods::current(&inputs.files, self.timeline().cfg.tz_h);
        let dims = Dims::read(self.d());
        let moment = match rng.below(8) {
            0 => Moment::Staged,
            1 => Moment::Moved,
            2 => Moment::Manifest,
            _ => Moment::After(rng.below(150)),
        };
        let before = (self.out.manifest(), 0);
        let args = self.command(kind, restart);
        // (Not quiet: its stderr says whether it resumed a killed run.)
        let err = self.d().join("killed.err");
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(&args)
            .current_dir(self.d())
            .envs(self.out.env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("the sluice binary starts");
        let ended = self.kill_at(&mut child, moment, &before);
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let resumed = stderr.contains("resuming run");
        let t = self.timeline();
        let (cfg, clock) = (t.cfg, t.clock);
        let plan = periods::plan(
            &t.state,
            &current,
            dims.as_ref(),
            kind,
            clock,
            &cfg,
            resumed,
        );
        let cmd = args.join(" ");
        let how = if resumed { " (resumed)" } else { "" };
        match ended {
            Ended::Killed => {
                self.counts.kills += 1;
                self.log.push(format!("{cmd}{how}: killed at {moment:?}"));
            }
            Ended::Exited(code) => {
                self.counts.unkilled += 1;
                self.log.push(format!(
                    "{cmd}{how}: to kill at {moment:?}, exited {code} first"
                ));
                let ok = code == 0 || (cfg.fail_beyond && code == 1);
                self.check(ok && !stderr.contains("panicked"), || {
                    format!("the run exited {code}:\n{stderr}")
                });
            }
        }
        // Before its publish (its counts perhaps recorded), or after it (recorded).
        let t = self.timeline_mut();
        let mut pre = t.state.clone();
        pre.maybe.extend(plan.counted.iter().cloned());
        let mut post = State {
            out: periods::apply(t.state.out.as_ref(), &plan, &current, dims.as_ref()),
            ..t.state.clone()
        };
        if plan.todo.is_empty() {
            post.maybe.extend(plan.counted.iter().cloned());
        } else {
            post.sure.extend(plan.counted.iter().cloned());
        }
        for s in [&mut pre, &mut post] {
            let sure = s.sure.clone();
            s.maybe.retain(|c| !sure.contains(c));
        }
        if restart
            || t.attempts
                .first()
                .is_some_and(|(k, c, _)| *k != kind || *c != clock)
        {
            t.attempts.clear();
        }
        t.attempts.push((kind, clock, plan.counts));
        let published = post.out != pre.out;
        let which = self.observe_incremental("after the killed run", &[pre, post]);
        if published && which == 1 {
            *self.log.last_mut().unwrap() += " (after its publish)";
        }
    }

    /// A command that must not change the output: `plan`, `runs`, `run --dry-run`, or
    /// `status --json`, whose due periods, backlog and pending counts are checked.
    fn unrelated_incremental(&mut self, rng: &mut Rng) {
        let at = instant(self.timeline().clock);
        let args: Vec<&str> = match rng.below(4) {
            0 => vec!["-q", "plan", ".", "--as-of", &at],
            1 => vec!["-q", "runs", "."],
            2 => vec!["-q", "run", ".", "--dry-run", "--as-of", &at],
            _ => vec!["status", ".", "--as-of", &at, "--json"],
        };
        let before = self.out.manifest();
        let run = sluice_env(self.d(), &args, &self.out.env());
        self.counts.unrelated += 1;
        self.log.push(format!(
            "{}: exit {}",
            args.iter()
                .filter(|a| **a != "-q")
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            run.code
        ));
        self.check(run.code == 0 && !run.stderr.contains("panicked"), || {
            format!("{args:?} exited {}:\n{}", run.code, run.stderr)
        });
        self.check(self.out.manifest() == before, || {
            format!("{args:?} changed the published manifest")
        });
        if args[0] == "status" {
            self.check_status(&run.stdout);
        }
        let state = self.timeline().state.clone();
        self.observe_incremental("after an unrelated command", &[state]);
    }

    /// `sluice status --json`: the periods due (as a `run` now would compute them), those
    /// needing a backfill, the periods computed, the rows pending.
    fn check_status(&self, stdout: &str) {
        let status: serde_json::Value = serde_json::from_str(stdout)
            .unwrap_or_else(|e| self.fail(&format!("status --json: {e}:\n{stdout}")));
        let m = &status["models"][0];
        let inputs = Inputs::read(self.d());
        let current = periods::current(&inputs.files, self.timeline().cfg.tz_h);
        let dims = Dims::read(self.d());
        let t = self.timeline();
        let plan = periods::plan(
            &t.state,
            &current,
            dims.as_ref(),
            Kind::Run,
            t.clock,
            &t.cfg,
            false,
        );
        let due: Vec<(String, String)> = m["due"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["period"].as_str().unwrap_or_default().to_string(),
                    p["reason"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = plan
            .todo
            .iter()
            .map(|(d, r)| (day_name(*d), r.name().to_string()))
            .collect();
        self.check(due == want, || {
            format!("status: due {due:?}, expected {want:?}")
        });
        let backlog = backlog_of(&m["needs_backfill"]);
        let want = backlog_want(&plan);
        self.check(backlog == want, || {
            format!("status: needs backfill {backlog:?}, expected {want:?}")
        });
        let computed = t.state.out.as_ref().map_or(0, |o| o.periods.len() as u64);
        self.check(m["periods_computed"] == computed, || {
            format!(
                "status: {} periods computed, expected {computed}",
                m["periods_computed"]
            )
        });
        let pending = counts_of(&m["pending"]);
        self.check(plan.counts.allows(pending), || {
            format!("status: pending {pending:?}, expected {:?}", plan.counts)
        });
    }

    /// The output is one of `states`, which becomes the history's (the first that matches,
    /// merged with any other holding the same output): its index.
    fn observe_incremental(&mut self, when: &str, states: &[State]) -> usize {
        let partitioned = self.shape.partitioned;
        let seen = self
            .out
            .periods(partitioned)
            .unwrap_or_else(|e| self.fail(&format!("{when}: the published output: {e}")));
        if let (Some(seen), Some(listed)) = (&seen, self.out.manifest_rows()) {
            let held: u64 = seen.rows.values().map(|r| r.len() as u64).sum();
            self.check(held == listed, || {
                format!("{when}: the manifest says {listed} rows, its files hold {held}")
            });
        }
        // Which dimension each period was computed with shows only as a hash in the
        // manifest (`dims`): learnt from the states observed, one hash for each version.
        let hashes = self.out.period_dims();
        let learnt = &self.timeline().dims_hashes;
        let dims_fit = |s: &State| {
            s.out.as_ref().is_none_or(|o| {
                o.periods.keys().all(|d| {
                    let version = o.dims.get(d).map(|x| x.version.clone());
                    let Some(hash) = hashes.get(&day_name(*d)) else {
                        return false;
                    };
                    match learnt.get(&version) {
                        Some(h) => h == hash,
                        None => !learnt.values().any(|h| h == hash),
                    }
                })
            })
        };
        let matching: Vec<usize> = (0..states.len())
            .filter(|i| expected_seen(states[*i].out.as_ref()) == seen && dims_fit(&states[*i]))
            .collect();
        let Some(&first) = matching.first() else {
            let diffs: Vec<String> = states
                .iter()
                .map(|s| {
                    let dims = if dims_fit(s) {
                        ""
                    } else {
                        "; the dimension versions do not fit the manifest's hashes"
                    };
                    format!(
                        "{}{dims}",
                        describe_seen_diff(&expected_seen(s.out.as_ref()), &seen)
                    )
                })
                .collect();
            self.fail(&format!(
                "{when}: the output is no state the history allows; against each: {diffs:?}"
            ));
        };
        let mut state = states[first].clone();
        for i in &matching[1..] {
            state = state.merge(&states[*i]);
        }
        if let Some(o) = &state.out {
            for d in o.periods.keys() {
                let version = o.dims.get(d).map(|x| x.version.clone());
                let hash = hashes[&day_name(*d)].clone();
                self.timeline_mut().dims_hashes.insert(version, hash);
            }
        }
        self.timeline_mut().state = state;
        first
    }
}

/// The manifest and rows an output in state `out` shows.
fn expected_seen(out: Option<&Published>) -> Option<PeriodsSeen> {
    let out = out?;
    Some(PeriodsSeen {
        start: day_name(out.start),
        records: out
            .records()
            .into_iter()
            .map(|(d, files)| {
                (
                    day_name(d),
                    files
                        .into_iter()
                        .map(|(v, rows)| Recorded {
                            name: v.name,
                            size: v.size,
                            mtime: v.mtime,
                            rows,
                        })
                        .collect(),
                )
            })
            .collect(),
        rows: out
            .rows()
            .into_iter()
            .map(|(d, rows)| (day_name(d), rows))
            .collect(),
    })
}

/// How an output differs from the one expected, period by period.
fn describe_seen_diff(want: &Option<PeriodsSeen>, got: &Option<PeriodsSeen>) -> String {
    let (Some(want), Some(got)) = (want, got) else {
        return format!(
            "expected {}, got {}",
            if want.is_some() {
                "an output"
            } else {
                "nothing published"
            },
            if got.is_some() {
                "an output"
            } else {
                "nothing published"
            }
        );
    };
    let mut diffs = Vec::new();
    if want.start != got.start {
        diffs.push(format!("start {} not {}", got.start, want.start));
    }
    let periods: std::collections::BTreeSet<&String> = want
        .records
        .keys()
        .chain(got.records.keys())
        .chain(want.rows.keys())
        .chain(got.rows.keys())
        .collect();
    for p in periods {
        let (wr, gr) = (want.records.get(p), got.records.get(p));
        if wr != gr {
            let show = |r: Option<&Vec<Recorded>>| {
                r.map_or("not computed".to_string(), |files| {
                    files
                        .iter()
                        .map(|f| format!("{}({}B,{}rows)", f.name, f.size, f.rows))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            };
            diffs.push(format!(
                "{p}: records [{}], expected [{}]",
                show(gr),
                show(wr)
            ));
        }
        let (wr, gr) = (want.rows.get(p), got.rows.get(p));
        if wr != gr {
            diffs.push(format!(
                "{p}: {} rows, expected {}",
                gr.map_or(0, Vec::len),
                wr.map_or(0, Vec::len)
            ));
        }
    }
    diffs.join("; ")
}

/// The input files of each day, for a failure message.
fn describe_current(current: &Current) -> String {
    current
        .iter()
        .map(|(d, files): (&Day, _)| {
            let files: Vec<String> = files
                .iter()
                .map(|f| format!("{}:{}", f.version.name, f.rows.len()))
                .collect();
            format!("{} [{}]", &day_name(*d)[5..], files.join(" "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A report's or status's late counts: (on time, in window, beyond, deleted).
fn counts_of(v: &serde_json::Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    (
        n("rows_on_time"),
        n("rows_late_in_window"),
        n("rows_late_beyond_window"),
        n("rows_deleted"),
    )
}

/// A list of periods needing a backfill: (period, late rows, deleted rows).
fn backlog_of(v: &serde_json::Value) -> Vec<(String, u64, u64)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["period"].as_str().unwrap_or_default().to_string(),
                b["rows_late"].as_u64().unwrap_or(u64::MAX),
                b["rows_deleted"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn backlog_want(plan: &Plan) -> Vec<(String, u64, u64)> {
    plan.backlog
        .iter()
        .map(|(d, late, deleted)| (day_name(*d), *late, *deleted))
        .collect()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect()
}

/// A model's report without its list of output files and units, for a failure message.
fn brief(model: &serde_json::Value) -> serde_json::Value {
    let mut model = super::brief(model);
    if let Some(m) = model.as_object_mut() {
        m.remove("units");
    }
    model
}
