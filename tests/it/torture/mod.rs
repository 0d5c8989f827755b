//! A randomised, seeded fault test of the promises that matter most (README, "What sluice
//! guarantees"): whatever happens to a run, the published output is always a state some run
//! over its inputs committed, never a mix, with no row lost or doubled; a run that exits 0
//! publishes exactly what its write mode says of the current inputs; every rejected row is in
//! the rejects; a refusal holds however often it is retried; the report's counts equal what
//! reads back.
//!
//! Each history draws a small pipeline ([`shape`]: one unit, units by file, by day or by key;
//! overwrite, append or overwrite_partitions; partitioned or not; quarantine on or off, with
//! or without `max_bad_rows`; a local or an S3 output) and a sequence of steps: input changes
//! (new, late, corrected, renamed, deleted and rewritten files; rows that do not parse; NULL,
//! unparsable and UTC-offset event times) and runs (checked in full, killed with `kill -9`
//! after a random pause or when a staging file, a moved file, a new manifest or the rejects
//! appear, with `--restart`, and unrelated commands in between). After every step the output
//! is checked against the [`oracle`], computed from the CSV files themselves ([`inputs`]),
//! independently of sluice.
//!
//! The incremental histories ([`incremental`], a test of their own) do the same for an
//! incremental model (issue 13 §8: a kill at any point of an incremental or reconcile run,
//! then a rerun, gives what an uninterrupted run gives; arrival records are committed with
//! the publish that used them): by day, in UTC or a zone; a late window, a lookback, a
//! `start` or none, warn or fail beyond the window, a dimension source or none; day files,
//! late files inside and beyond the window, rewrites, renames and deletions while the clock
//! (`--as-of`) moves on; `run`, `--no-reconcile`, `reconcile`, `backfill` and
//! `--full-refresh`, checked in full or killed and run again. Their oracle ([`periods`])
//! simulates docs/incremental.md: per period, the input file versions applied at its last
//! computation; which periods a run computes and why; the late-arrival counts, the periods
//! left to reconcile and those needing a backfill (also as `status` lists them). After every
//! step each period's rows and the file versions its manifest records must be those of a
//! state some run committed.
//!
//! The test command runs a few histories of each; `SLUICE_TORTURE=N` runs N of each from
//! `SLUICE_TORTURE_SEED` (`scripts/torture N [SEED]`; `cargo test --test it
//! torture::incremental_` runs the incremental ones alone). A failure prints its seed, the
//! pipeline and the steps so far; `SLUICE_TORTURE_SEED=<seed> SLUICE_TORTURE=1` replays it.
//! Every history runs even when one fails; the failing seeds are listed at the end.
//!
//! Switches (`=1`): `SLUICE_TORTURE_VERBOSE` prints every history's steps;
//! `SLUICE_TORTURE_KEEP` copies a failing history's folder to `$TMPDIR/torture-<seed>`;
//! `SLUICE_TORTURE_S3` writes every history to S3 (else one in 12 when `SLUICE_MOTO_SERVER`
//! is set).
//!
//! What it found, each fixed with a regression test of its own (tests/it/reliability.rs):
//! key units over a quarantined source of several files did not balance their rows; a write
//! killed half-way left the store's temporary `<file>#N` in `_staging/` for good; a bad row
//! met while planning time units named no file; the run completing a killed run that had
//! published reported no rejects; a resumed append whose inputs changed after its publish
//! exited 0 without them; a resumed run with no bad rows left kept an earlier attempt's
//! rejects.
//!
//! The incremental histories found (tests/it/incremental.rs): a commit to a local output
//! killed between writing `._MANIFEST.<run id>.tmp` and renaming it left that file for good
//! (fixed: healing removes it). And four bugs of src/run/model.rs, each fixed with a test of
//! its own (`incremental::bug_*`): a run with nothing to compute before anything was
//! published exited 1 ("it is not selected and has no output"); a run with nothing to
//! compute left its staging lease, and, resuming a killed run, the files that run had staged
//! and moved into the output folder (unlisted, seen by readers that list the folder) until
//! the next run; a resumed run that found its units published reported the rows beyond the
//! window its plan counted without recording them, so the next run counted them (and, with
//! `on_late_beyond_window = "fail"`, failed for them) again.

mod incremental;
mod inputs;
mod oracle;
mod output;
mod periods;
mod shape;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inputs::{Files, Inputs};
use oracle::{Expect, Oracle, Refusal};
use output::Output;
use shape::{Flags, Mode, Shape, Sink, Units};

use crate::support::{OneModel, Run, sluice_env};

/// A small deterministic generator (SplitMix64), so a failing seed replays exactly.
pub struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True one time in `n`.
    pub fn chance(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// What the histories did, for the totals line.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    histories: usize,
    steps: usize,
    runs: usize,
    kills: usize,
    /// Runs to kill that ended first.
    unkilled: usize,
    refusals: usize,
    skipped: usize,
    unrelated: usize,
    s3: usize,
}

impl Counts {
    fn add(&mut self, o: Counts) {
        self.histories += o.histories;
        self.steps += o.steps;
        self.runs += o.runs;
        self.kills += o.kills;
        self.unkilled += o.unkilled;
        self.refusals += o.refusals;
        self.skipped += o.skipped;
        self.unrelated += o.unrelated;
        self.s3 += o.s3;
    }
}

/// When a killed run is killed.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// After this many milliseconds.
    After(u64),
    /// When the first file appears in the staging area.
    Staged,
    /// When a data file the manifest does not list appears (a publish under way), or, if
    /// that was too brief to see, when `_MANIFEST` changes.
    Moved,
    /// When `_MANIFEST` changes (the commit point passed; clean-up under way).
    Manifest,
    /// When a new run's folder appears among the rejects.
    Rejects,
}

impl Moment {
    /// A moment; the rejects only where a source is quarantined.
    fn draw(rng: &mut Rng, quarantine: bool) -> Moment {
        match rng.below(8) {
            0 => Moment::Staged,
            1 => Moment::Moved,
            2 => Moment::Manifest,
            3 if quarantine => Moment::Rejects,
            3 => Moment::Staged,
            _ => Moment::After(rng.below(120)),
        }
    }
}

/// How a run that was to be killed ended.
enum Ended {
    Killed,
    /// It exited before the kill, with this status.
    Exited(i32),
}

/// One history: its pipeline, its output, the generator of its input files, the oracle, and
/// the steps so far (printed when a check fails).
struct History {
    seed: u64,
    shape: Shape,
    dir: tempfile::TempDir,
    out: Output,
    files: Files,
    oracle: Oracle,
    log: Vec<String>,
    counts: Counts,
    /// An incremental history's clock and state.
    inc: Option<incremental::Timeline>,
}

impl History {
    /// Draws the pipeline of `seed` and writes it with its first input files.
    fn new(seed: u64, rng: &mut Rng, flags: Flags) -> History {
        let shape = Shape::draw(rng, flags);
        let dir = OneModel::new("events", "m")
            .source_toml(&shape.source_toml())
            .query(shape.query())
            .sink_location(shape.location())
            .sink_toml(&shape.sink_toml())
            .build();
        let out = match shape.sink {
            Sink::Local => Output::local(dir.path()),
            Sink::S3 => Output::s3(),
        };
        let counts = Counts {
            histories: 1,
            s3: usize::from(shape.sink == Sink::S3),
            ..Counts::default()
        };
        let mut h = History {
            seed,
            files: Files::new(dir.path()),
            shape,
            dir,
            out,
            oracle: Oracle::new(),
            log: Vec::new(),
            counts,
            inc: None,
        };
        if h.shape.incremental().is_some() {
            // (Its files are written by its timeline.)
            return h;
        }
        for _ in 0..2 + rng.below(3) {
            let what = h.files.add(rng, &h.shape, false);
            h.log.push(what);
        }
        h
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    /// Fails the history: the check, the seed, the pipeline, the steps, the oracle's states.
    fn fail(&self, what: &str) -> ! {
        let states: Vec<String> = self
            .oracle
            .states
            .iter()
            .map(|s| {
                format!(
                    "{} rows, {} appends",
                    s.rows.as_ref().map_or("no".into(), |r| r.len().to_string()),
                    s.appended.len()
                )
            })
            .collect();
        let kept = if env_flag("SLUICE_TORTURE_KEEP") {
            let to = std::env::temp_dir().join(format!("torture-{}", self.seed));
            let _ = std::fs::remove_dir_all(&to);
            let status = Command::new("cp").arg("-a").arg(self.d()).arg(&to).status();
            format!(
                "\n  pipeline folder copied to {} ({status:?})",
                to.display()
            )
        } else {
            String::new()
        };
        let (states, test) = match &self.inc {
            Some(t) => (t.describe(), "torture::incremental_"),
            None => (format!("{states:?}"), "torture::the_output"),
        };
        panic!(
            "torture seed {seed}: {what}{kept}\n  pipeline: {shape:?}\n  sluice.toml:\n{toml}\n  steps:\n    {steps}\n  oracle states before the check: {states}\n  replay: {flags}SLUICE_TORTURE_SEED={seed} SLUICE_TORTURE=1 cargo test --test it {test} -- --nocapture",
            seed = self.seed,
            flags = self.replay_flags(),
            shape = self.shape,
            toml = std::fs::read_to_string(self.d().join("sluice.toml")).unwrap_or_default(),
            steps = self.log.join("\n    "),
        );
    }

    /// The switches a replay of this history needs.
    fn replay_flags(&self) -> String {
        let mut flags = String::new();
        if self.shape.sink == Sink::S3 {
            flags.push_str("SLUICE_TORTURE_S3=1 ");
        }
        flags
    }

    fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(&what());
        }
    }

    /// Changes the input files, or not.
    fn mutate(&mut self, rng: &mut Rng) {
        let shape = self.shape.clone();
        let what = match rng.below(12) {
            0 | 1 => Some(self.files.add(rng, &shape, false)),
            2 => Some(self.files.add(rng, &shape, true)),
            3 | 4 => Some(self.files.correct(rng, &shape)),
            5 => Some(self.files.rename(rng)),
            6 => self.files.delete(rng),
            7 => Some(self.files.touch(rng)),
            _ => None,
        };
        if let Some(what) = what {
            self.log.push(what);
        }
    }

    /// Runs something: a run checked in full, a killed run, or an unrelated command.
    fn act(&mut self, rng: &mut Rng) {
        match rng.below(10) {
            0..=3 => {
                let restart = rng.chance(6);
                // A refusal must hold when the same command runs again, also after a kill.
                if !self.run(restart) && rng.chance(2) {
                    if rng.chance(2) {
                        self.kill(rng, restart);
                    }
                    self.run(restart);
                }
            }
            4..=7 => {
                let restart = rng.chance(6);
                self.kill(rng, restart)
            }
            8 => self.unrelated(rng),
            _ => {
                let _ = self.run(true);
            }
        }
    }

    /// `sluice run .` arguments.
    fn args(restart: bool, report: bool) -> Vec<&'static str> {
        let mut args = vec!["-q", "run", "."];
        if restart {
            args.push("--restart");
        }
        if report {
            args.extend(["--report", "r.json"]);
        }
        args
    }

    /// A run that is not killed: its exit status, report, rejects and output checked against
    /// what the oracle expects of the current inputs. False when it was to be refused.
    fn run(&mut self, restart: bool) -> bool {
        let inputs = Inputs::read(self.d());
        let expect = Expect::of(&self.shape, &inputs);
        let _ = std::fs::remove_file(self.d().join("r.json"));
        let published_by = self.out.run_id();
        let run = sluice_env(self.d(), &Self::args(restart, true), &self.out.env());
        self.counts.runs += 1;
        let flag = if restart { " --restart" } else { "" };
        self.log.push(format!("run{flag}: exit {}", run.code));
        self.check(
            !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
            || format!("a panic reached the user:\n{}", run.stderr),
        );
        let report = std::fs::read_to_string(self.d().join("r.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .unwrap_or_else(|| self.fail(&format!("no report; stderr:\n{}", run.stderr)));
        let publishes = matches!(expect, Expect::Publish { .. });
        // A resumed run whose killed process had published.
        let completes =
            published_by.is_some() && published_by == report["run_id"].as_str().map(String::from);
        match &expect {
            Expect::Publish { .. } => self.published(&run, &report, &expect, completes),
            Expect::Refuse(why) => {
                self.refused(&run, &report, why);
                self.observe("after the run");
            }
        }
        publishes
    }

    /// Checks a run that was to publish: exit 0, the report's counts, the rejects, and which
    /// states it may have left. `completes`: the run resumed a killed one that had already
    /// published (the manifest carried its run id before it started).
    fn published(
        &mut self,
        run: &Run,
        report: &serde_json::Value,
        expect: &Expect,
        completes: bool,
    ) {
        let Expect::Publish {
            rows,
            rejected,
            untimed,
            days,
            ..
        } = expect
        else {
            unreachable!()
        };
        self.check(run.code == 0, || {
            format!(
                "a run over good inputs exited {}, not 0:\n{}",
                run.code, run.stderr
            )
        });
        let model = &report["models"][0];
        let status = model["status"].as_str().unwrap_or_default();
        let skipped = status == "skipped";
        self.check(status == "success" || skipped, || {
            format!("model status {status:?}: {model}")
        });
        self.check(!skipped || self.shape.mode == Mode::Append, || {
            format!("only an append may be skipped: {model}")
        });
        if skipped {
            self.counts.skipped += 1;
            *self.log.last_mut().unwrap() += " (skipped: already appended)";
        }
        let (mode, states) = (self.shape.mode, self.oracle.states.len());
        if completes {
            *self.log.last_mut().unwrap() += " (completes the killed run, which had published)";
            self.oracle.completed(mode, expect);
        } else {
            self.oracle.published(mode, expect, skipped);
        }
        self.check(!self.oracle.states.is_empty(), || {
            format!(
                "the run was {}, which none of the {states} states the output may be in allows",
                if completes {
                    "the completion of a published run"
                } else if skipped {
                    "skipped"
                } else {
                    "not skipped"
                }
            )
        });
        // The output first, then what the report says of it.
        self.observe("after the run");
        if skipped {
            return;
        }
        let count = |k: &str| model[k].as_u64().unwrap_or(u64::MAX);
        let brief = brief(model);
        self.check(count("rows_out") == rows.len() as u64, || {
            format!(
                "the report says rows_out {}, the inputs have {} rows: {brief}",
                model["rows_out"],
                rows.len()
            )
        });
        self.check(
            count("rows_rejected") == rejected.len() as u64,
            || {
                format!(
                    "the report says rows_rejected {}, the inputs have {} bad rows {rejected:?}: {brief}",
                    model["rows_rejected"],
                    rejected.len()
                )
            },
        );
        self.check_rejects(report, rejected, untimed);
        if matches!(self.shape.units, Units::Whole | Units::Files(_)) {
            let want = (rows.len() + rejected.len()) as u64;
            self.check(count("rows_in") == want, || {
                format!("rows_in should be {want} (good + rejected): {brief}")
            });
        }
        self.check_balance(model);
        if self.shape.time_units() {
            self.check_days(model, days);
        }
        self.check_clean();
    }

    /// The rejects the run wrote are exactly the rows the oracle finds bad, each once; those
    /// `untimed` with a reason that names the event time.
    fn check_rejects(
        &self,
        report: &serde_json::Value,
        rejected: &BTreeSet<inputs::Line>,
        untimed: &BTreeSet<inputs::Line>,
    ) {
        let run_id = report["run_id"].as_str().unwrap_or_default();
        let got = output::rejects_of_run(self.d(), run_id).unwrap_or_default();
        self.check(
            got.len() == rejected.len() && &output::lines(&got) == rejected,
            || format!("run {run_id} wrote rejects {got:?}, expected exactly {rejected:?}"),
        );
        for r in got
            .iter()
            .filter(|r| untimed.contains(&(r.file.clone(), r.line)))
        {
            self.check(r.reason.contains("event time"), || {
                format!("a row without an event time is rejected for another reason: {r:?}")
            });
        }
    }

    /// When the report states a row balance, it holds: in = out + filtered + rejected.
    fn check_balance(&self, model: &serde_json::Value) {
        let Some(balance) = model["row_balance"].as_str() else {
            return;
        };
        let n = |k: &str| model[k].as_u64().unwrap_or(0);
        let holds = n("rows_in") == n("rows_out") + n("rows_filtered") + n("rows_rejected");
        self.check(holds && !balance.contains("does not balance"), || {
            format!("the row balance does not hold: {}", brief(model))
        });
    }

    /// Each day's unit wrote exactly the rows whose event time falls on that UTC day.
    fn check_days(&self, model: &serde_json::Value, days: &BTreeMap<String, u64>) {
        let got: BTreeMap<String, u64> = model["units"]
            .as_array()
            .map(|units| {
                units
                    .iter()
                    .map(|u| {
                        (
                            u["unit"].as_str().unwrap_or_default().to_string(),
                            u["rows_out"].as_u64().unwrap_or(0),
                        )
                    })
                    .filter(|(_, n)| *n > 0)
                    .collect()
            })
            .unwrap_or_default();
        self.check(&got == days, || {
            format!("rows per day unit {got:?}, expected {days:?}")
        });
    }

    /// After a publish the folder holds exactly the listed files: no staging (a killed
    /// write's temporary `<file>#N` included), no orphan.
    fn check_clean(&self) {
        let staging = self.out.staging();
        let unlisted = self.out.unlisted();
        self.check(staging.is_empty() && unlisted.is_empty(), || {
            format!("after a publish: staging {staging:?}, unlisted data files {unlisted:?}")
        });
    }

    /// Checks a run that was to be refused: exit 1, its message, and for a bad-row limit the
    /// rejects it wrote all the same. The output stays as it was.
    fn refused(&mut self, run: &Run, report: &serde_json::Value, why: &Refusal) {
        self.counts.refusals += 1;
        self.check(run.code == 1, || {
            format!(
                "expected a refusal ({why:?}), got exit {}:\n{}",
                run.code, run.stderr
            )
        });
        let e = &run.stderr;
        match why {
            Refusal::BadRows(bad) => self.check(
                bad.iter().any(|(f, l)| e.contains(&format!("{f}:{l}:"))),
                || format!("the message names no bad row of {bad:?}:\n{e}"),
            ),
            Refusal::Untimed(n) => self.check(
                e.contains(&format!("{n} row")) && e.contains("no event time"),
                || format!("the message does not count {n} rows without an event time:\n{e}"),
            ),
            Refusal::Both => {}
            Refusal::OverLimit { rejected, limit } => {
                let n = rejected.len();
                self.check(
                    e.contains(&format!(
                        "{n} bad rows (max_bad_rows = {limit}), nothing published"
                    )),
                    || format!("the message does not refuse {n} bad rows over {limit}:\n{e}"),
                );
                let model = &report["models"][0];
                self.check(model["rows_rejected"] == n as u64, || {
                    format!(
                        "a refused run reports rows_rejected {}, not {n}",
                        model["rows_rejected"]
                    )
                });
                self.check_rejects(report, rejected, &Default::default());
            }
        }
        *self.log.last_mut().unwrap() += &format!(" (refused: {})", why.name());
    }

    /// A run killed with `kill -9` at a drawn moment: the output is before or after its
    /// publish.
    fn kill(&mut self, rng: &mut Rng, restart: bool) {
        let expect = Expect::of(&self.shape, &Inputs::read(self.d()));
        let moment = Moment::draw(rng, self.shape.quarantine);
        let before = (self.out.manifest(), output::reject_runs(self.d()));
        let mut child = self.spawn(&Self::args(restart, false));
        let ended = self.kill_at(&mut child, moment, &before);
        let flag = if restart { " --restart" } else { "" };
        match ended {
            Ended::Killed => {
                self.counts.kills += 1;
                self.log.push(format!("run{flag}: killed at {moment:?}"));
            }
            Ended::Exited(code) => {
                self.counts.unkilled += 1;
                self.log.push(format!(
                    "run{flag}: to kill at {moment:?}, exited {code} first"
                ));
                let want = if matches!(expect, Expect::Publish { .. }) {
                    0
                } else {
                    1
                };
                self.check(code == want, || {
                    format!(
                        "the run exited {code}, expected {want} ({})",
                        expect.describe()
                    )
                });
            }
        }
        self.oracle.killed(self.shape.mode, &expect);
        self.observe("after the killed run");
    }

    /// Starts `sluice ARGS` in the pipeline folder.
    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .current_dir(self.d())
            .envs(self.out.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the sluice binary starts")
    }

    /// Waits for `moment` (at most 10 s, or until the run ends), then `kill -9`.
    fn kill_at(
        &self,
        child: &mut Child,
        moment: Moment,
        before: &(Option<Vec<u8>>, usize),
    ) -> Ended {
        let started = Instant::now();
        let reached = || match moment {
            Moment::After(ms) => started.elapsed() >= Duration::from_millis(ms),
            Moment::Staged => !self.out.staging().is_empty(),
            Moment::Moved => !self.out.unlisted().is_empty() || self.out.manifest() != before.0,
            Moment::Manifest => self.out.manifest() != before.0,
            Moment::Rejects => output::reject_runs(self.d()) > before.1,
        };
        while !reached() && started.elapsed() < Duration::from_secs(10) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(9) => Ended::Killed,
            _ => Ended::Exited(status.code().unwrap_or(-1)),
        }
    }

    /// A command that must not change the output: `plan`, `runs`, or `run --dry-run`.
    fn unrelated(&mut self, rng: &mut Rng) {
        let args: &[&str] = match rng.below(3) {
            0 => &["-q", "plan", "."],
            1 => &["-q", "runs", "."],
            _ => &["-q", "run", ".", "--dry-run"],
        };
        let before = self.out.manifest();
        let run = sluice_env(self.d(), args, &self.out.env());
        self.counts.unrelated += 1;
        self.log
            .push(format!("{}: exit {}", args[1..].join(" "), run.code));
        self.check(
            (run.code == 0 || run.code == 1) && !run.stderr.contains("panicked"),
            || format!("{args:?} exited {}:\n{}", run.code, run.stderr),
        );
        self.check(self.out.manifest() == before, || {
            format!("{args:?} changed the published manifest")
        });
        self.observe("after an unrelated command");
    }

    /// The published output is one of the states the oracle allows.
    fn observe(&mut self, when: &str) {
        let rows = self
            .out
            .rows(self.shape.partitioned)
            .unwrap_or_else(|e| self.fail(&format!("{when}: the published output: {e}")));
        if let (Some(rows), Some(listed)) = (&rows, self.out.manifest_rows()) {
            self.check(rows.len() as u64 == listed, || {
                format!(
                    "{when}: the manifest says {listed} rows, its files hold {}",
                    rows.len()
                )
            });
        }
        let states = self.oracle.clone();
        if !self.oracle.observe(&rows) {
            self.oracle = states;
            let got = rows.as_ref().map(|r| r.len());
            let closest = self
                .oracle
                .states
                .iter()
                .map(|s| describe_diff(s.rows.as_ref(), rows.as_ref()))
                .collect::<Vec<_>>();
            self.fail(&format!(
                "{when}: the output ({got:?} rows) is no state the history allows; against each: {closest:?}"
            ));
        }
    }
}

/// A model's report without its list of output files, for a failure message.
fn brief(model: &serde_json::Value) -> serde_json::Value {
    let mut model = model.clone();
    if let Some(m) = model.as_object_mut() {
        m.remove("outputs");
    }
    model
}

/// How `got` differs from `want`: rows missing and rows extra (the first few of each).
fn describe_diff(want: Option<&Vec<inputs::Row>>, got: Option<&Vec<inputs::Row>>) -> String {
    let (Some(want), Some(got)) = (want, got) else {
        return format!(
            "expected {:?} rows, got {:?}",
            want.map(Vec::len),
            got.map(Vec::len)
        );
    };
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < want.len() || j < got.len() {
        match (want.get(i), got.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                missing.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                missing.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                extra.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    format!(
        "{} missing {:?}, {} extra {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    )
}

impl Refusal {
    fn name(&self) -> &'static str {
        match self {
            Refusal::BadRows(_) => "bad rows",
            Refusal::Untimed(_) => "rows without event time",
            Refusal::Both => "bad rows and rows without event time",
            Refusal::OverLimit { .. } => "over max_bad_rows",
        }
    }
}

/// One history of `seed`: its pipeline, its first files, then random steps each checked
/// against the oracle, then a final run checked in full.
fn history(seed: u64, flags: Flags) -> Counts {
    let mut rng = Rng(seed);
    let mut h = History::new(seed, &mut rng, flags);
    let steps = 4 + rng.below(5);
    for _ in 0..steps {
        h.mutate(&mut rng);
        h.act(&mut rng);
        h.counts.steps += 1;
    }
    // A final run: what the current inputs give.
    let _ = h.run(false);
    if env_flag("SLUICE_TORTURE_VERBOSE") {
        eprintln!("seed {seed}: {:?}\n    {}", h.shape, h.log.join("\n    "));
    }
    h.counts
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

#[test]
fn the_output_is_always_a_state_some_run_published() {
    histories("", 6, history);
}

/// The incremental histories ([`incremental`]): `SLUICE_TORTURE=N cargo test --test it
/// torture::incremental_` runs N of them alone.
#[test]
fn incremental_runs_killed_anywhere_end_as_uninterrupted_runs() {
    histories("incremental ", 4, incremental::history);
}

/// Runs `SLUICE_TORTURE` histories (else `default`) from `SLUICE_TORTURE_SEED`, each even
/// when one fails; prints the totals, then fails listing the failing seeds.
fn histories(what: &str, default: u64, history: fn(u64, Flags) -> Counts) {
    let n: u64 = std::env::var("SLUICE_TORTURE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let first: u64 = std::env::var("SLUICE_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let flags = Flags {
        s3: std::env::var("SLUICE_MOTO_SERVER").is_ok_and(|v| !v.is_empty()),
        s3_all: env_flag("SLUICE_TORTURE_S3"),
        incremental: false,
    };
    let started = Instant::now();
    let mut total = Counts::default();
    let mut failed = Vec::new();
    for seed in first..first + n {
        match std::panic::catch_unwind(|| history(seed, flags)) {
            Ok(c) => total.add(c),
            Err(_) => failed.push(seed),
        }
    }
    eprintln!(
        "torture: {} {what}histories ({} on S3), {} steps, {} runs checked ({} refused, {} appends skipped), {} runs killed ({} more ended before the kill), {} unrelated commands, {} failures, {:.0?}",
        n,
        total.s3,
        total.steps,
        total.runs,
        total.refusals,
        total.skipped,
        total.kills,
        total.unkilled,
        total.unrelated,
        failed.len(),
        started.elapsed()
    );
    assert!(failed.is_empty(), "failing {what}seeds: {failed:?}");
}
