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
}

impl Shape {
    /// Draws a pipeline.
    pub fn draw(rng: &mut Rng, flags: Flags) -> Shape {
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

    /// Whether the model is split into periods of event time (so every row needs one).
    pub fn time_units(&self) -> bool {
        self.units == Units::Days
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
        let mut toml = format!("mode = \"{mode}\"\n");
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
