//! The pipeline a history runs, drawn from its seed: one CSV source `events` (`id, n, g, ts`,
//! event time `ts`) and one model `m` = `SELECT id, n, g FROM events`, with a unit kind, a
//! write mode, a partitioning, a bad-row policy and the kinds of bad input the history may
//! write.

use super::Rng;

/// How the model is split into work units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// One unit.
    Whole,
    /// `by = "file"`, this many files per unit.
    Files(u64),
    /// `size = "day"`: one unit per UTC day of `ts`.
    Days,
    /// `by = "key"` on `id`, this many buckets.
    Keys(u64),
    /// `materialized = "incremental"`, by UTC day.
    Incremental(Incremental),
}

/// An incremental model's `[models.m.batches]` (by UTC day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incremental {
    /// `late_window`, in hours.
    pub window_h: i64,
    /// `lookback`.
    pub lookback: u32,
    /// `start`, as a day index (days since 2024-01-01); `None`: the earliest data.
    pub start: Option<i64>,
    /// `on_late_beyond_window = "fail"`.
    pub fail_beyond: bool,
    /// `timezone`, as its offset from UTC in hours (a zone without daylight saving time); 0:
    /// none (UTC). Periods are its days; `start` and `backfill --from`/`--to` its wall times.
    pub tz_h: i64,
    /// The model joins a dimension source `dims` (`dims.csv`: `g, k`, no event time) and
    /// outputs `n + k`: when it changes, the periods inside the window are computed again.
    pub dims: bool,
}

impl Incremental {
    /// The `timezone` of `tz_h`.
    pub fn zone(&self) -> Option<&'static str> {
        match self.tz_h {
            0 => None,
            4 => Some("Asia/Dubai"),
            -5 => Some("America/Bogota"),
            h => panic!("no zone drawn at UTC{h:+}"),
        }
    }
}

/// The sink's write mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Overwrite,
    Append,
    OverwritePartitions,
}

/// Where the output is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// `out/m/` in the pipeline folder.
    Local,
    /// `s3://lake/out/m/` on a moto server started for the history.
    S3,
}

/// One drawn pipeline, and what its history may write into the source folder.
#[derive(Debug, Clone)]
pub struct Shape {
    pub units: Units,
    pub mode: Mode,
    /// `partition_by = ["g"]` (always with `overwrite_partitions`).
    pub partitioned: bool,
    /// `on_bad_rows = "quarantine"` on the source.
    pub quarantine: bool,
    /// `max_bad_rows` (only with quarantine).
    pub max_bad_rows: Option<u64>,
    /// `max_concurrent_units`.
    pub concurrency: u64,
    /// Some files hold rows that do not parse: a non-integer in an INT column, or the wrong
    /// number of fields.
    pub bad_rows: bool,
    /// Some rows have a NULL (empty) or unparsable `ts`.
    pub bad_times: bool,
    /// Timestamps are written with UTC offsets (`+02:00`, `Z`...) and `T` or space between
    /// date and time; otherwise always `2024-01-0D HH:MM:SS`.
    pub offsets: bool,
    pub sink: Sink,
}

/// Switches read from the environment that widen what a history may draw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    /// `SLUICE_MOTO_SERVER` is set: a few histories (one in 12) write to S3.
    pub s3: bool,
    /// `SLUICE_TORTURE_S3=1`: every history writes to S3.
    pub s3_all: bool,
    /// Draw an incremental model (the incremental histories).
    pub incremental: bool,
}

impl Shape {
    /// Draws a pipeline.
    pub fn draw(rng: &mut Rng, flags: Flags) -> Shape {
        if flags.incremental {
            return Shape::draw_incremental(rng, flags);
        }
        let units = match rng.below(4) {
            0 => Units::Whole,
            1 => Units::Files(1 + rng.below(2)),
            2 => Units::Days,
            _ => Units::Keys(2 + rng.below(3)),
        };
        let mode = match rng.below(3) {
            0 => Mode::Overwrite,
            1 => Mode::Append,
            _ => Mode::OverwritePartitions,
        };
        let partitioned = mode == Mode::OverwritePartitions || rng.chance(3);
        let quarantine = rng.chance(2);
        let max_bad_rows = (quarantine && rng.chance(3)).then(|| rng.below(4));
        // Without quarantine a bad row fails every run until its file is corrected: fewer.
        let bad_rows = if quarantine {
            !rng.chance(4)
        } else {
            rng.chance(3)
        };
        let bad_times = rng.chance(2);
        let offsets = rng.chance(2);
        let concurrency = 1 + rng.below(2);
        // Drawn whether or not S3 is available, so a seed draws the same steps either way.
        let s3 = rng.chance(12);
        let sink = if flags.s3_all || (flags.s3 && s3) {
            Sink::S3
        } else {
            Sink::Local
        };
        Shape {
            units,
            mode,
            partitioned,
            quarantine,
            max_bad_rows,
            concurrency,
            bad_rows,
            bad_times,
            offsets,
            sink,
        }
    }

    /// An incremental model over good rows only (late data is its subject, not bad rows):
    /// a late window, a lookback, a start or not, warn or fail beyond the window,
    /// partitioned or not, event times with UTC offsets or not.
    fn draw_incremental(rng: &mut Rng, flags: Flags) -> Shape {
        let window_h = [0, 12, 24, 36, 48, 120][rng.below(6) as usize];
        let lookback = [0, 0, 1, 2][rng.below(4) as usize];
        let start = match rng.below(4) {
            0 | 1 => Some(0),
            2 => Some(1),
            _ => None,
        };
        let fail_beyond = rng.chance(4);
        let tz_h = [0, 0, 0, 0, 4, -5][rng.below(6) as usize];
        let dims = rng.chance(3);
        let partitioned = rng.chance(3);
        let offsets = rng.chance(2);
        let concurrency = 1 + rng.below(2);
        let s3 = rng.chance(12);
        let sink = if flags.s3_all || (flags.s3 && s3) {
            Sink::S3
        } else {
            Sink::Local
        };
        Shape {
            units: Units::Incremental(Incremental {
                window_h,
                lookback,
                start,
                fail_beyond,
                tz_h,
                dims,
            }),
            mode: Mode::Overwrite,
            partitioned,
            quarantine: false,
            max_bad_rows: None,
            concurrency,
            bad_rows: false,
            bad_times: false,
            offsets,
            sink,
        }
    }

    /// The model's query.
    pub fn query(&self) -> &'static str {
        match self.incremental() {
            Some(i) if i.dims => {
                "SELECT e.id, e.n + d.k AS n, e.g FROM events e JOIN dims d ON e.g = d.g"
            }
            _ => "SELECT id, n, g FROM events",
        }
    }

    /// The incremental settings, for an incremental model.
    pub fn incremental(&self) -> Option<Incremental> {
        match self.units {
            Units::Incremental(i) => Some(i),
            _ => None,
        }
    }

    /// Whether the model is split into periods of event time (so every row needs one).
    pub fn time_units(&self) -> bool {
        matches!(self.units, Units::Days | Units::Incremental(_))
    }

    /// Where the sink writes.
    pub fn location(&self) -> &'static str {
        match self.sink {
            Sink::Local => "out/m/",
            Sink::S3 => "s3://lake/out/m/",
        }
    }

    /// The lines of the source's table.
    pub fn source_toml(&self) -> String {
        let mut toml =
            "format = \"csv\"\nschema = \"id INT, n INT, g INT, ts VARCHAR\"\nevent_time = \"ts\"\n"
                .to_string();
        if self.quarantine {
            toml.push_str("on_bad_rows = \"quarantine\"\n");
        }
        if let Some(k) = self.max_bad_rows {
            toml.push_str(&format!("max_bad_rows = {k}\n"));
        }
        toml
    }

    /// The lines of the model's sink table, then its batches and the settings.
    pub fn sink_toml(&self) -> String {
        let mode = match self.mode {
            Mode::Overwrite => "overwrite",
            Mode::Append => "append",
            Mode::OverwritePartitions => "overwrite_partitions",
        };
        let mut toml = if self.incremental().is_some() {
            // (An incremental model replaces periods: its sink takes no mode.)
            String::new()
        } else {
            format!("mode = \"{mode}\"\n")
        };
        if self.partitioned {
            toml.push_str("partition_by = [\"g\"]\n");
        }
        match self.units {
            Units::Whole => {}
            Units::Files(n) => {
                toml.push_str(&format!(
                    "[models.m.batches]\nby = \"file\"\nfiles_per_unit = {n}\n"
                ));
            }
            Units::Days => toml.push_str("[models.m.batches]\nsize = \"day\"\n"),
            Units::Keys(n) => toml.push_str(&format!(
                "[models.m.batches]\nby = \"key\"\nbuckets = {n}\nkeys = {{ events = \"id\" }}\n"
            )),
            Units::Incremental(i) => {
                toml.push_str(&format!(
                    "[models.m]\nmaterialized = \"incremental\"\n[models.m.batches]\nsize = \"day\"\nlate_window = \"{}h\"\nlookback = {}\n",
                    i.window_h, i.lookback
                ));
                if let Some(start) = i.start {
                    toml.push_str(&format!("start = \"{}\"\n", super::inputs::day_name(start)));
                }
                if i.fail_beyond {
                    toml.push_str("on_late_beyond_window = \"fail\"\n");
                }
                if let Some(zone) = i.zone() {
                    toml.push_str(&format!("timezone = \"{zone}\"\n"));
                }
                if i.dims {
                    toml.push_str(
                        "[sources.dims]\nlocation = \"dims.csv\"\nformat = \"csv\"\nschema = \"g INT, k INT\"\n",
                    );
                }
            }
        }
        toml.push_str(&format!(
            "[settings]\nmax_concurrent_units = {}\n",
            self.concurrency
        ));
        if self.sink == Sink::S3 {
            toml.push_str(
                "[stores.lake]\nurl = \"s3://lake\"\nendpoint = \"${env:AWS_ENDPOINT_URL}\"\nregion = \"us-east-1\"\nallow_http = true\n",
            );
        }
        toml
    }
}
