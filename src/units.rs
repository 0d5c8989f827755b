//! Work units: how a model is split into batches — periods of event time, groups of files,
//! or buckets of join keys — as pure arithmetic over the configuration. What a unit reads is
//! set up by the run (`run::unit_context`): every source that declares `event_time` becomes a
//! view filtered to the unit's `[start, end)`, which reaches the scan (Parquet row-group
//! statistics and Hive partitions prune), so a unit reads only its slice.

use std::collections::BTreeSet;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Timelike};

use crate::config::{BatchSize, Pipeline};

/// One work unit of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unit {
    /// Position in the model's units (also its staging folder and file-name prefix).
    pub index: usize,
    /// The unit's name: its period (`1992-01`, `1992-01-31`, `1992-01-31T05`, `1992`), its
    /// first file, its key bucket (`key 03 of 16`), or `all` for an unbatched model.
    pub name: String,
    /// What of the input the unit reads.
    pub kind: UnitKind,
}

/// The key of the unit of an unbatched model (and of a one-off write, `sluice sql`).
pub(crate) const WHOLE_KEY: &str = "0000000000000000";

impl Unit {
    /// The unit's identity, from its name (its period, first file or bucket), never its
    /// position: 16 hex digits, stable across builds and processes. A unit's staging folder
    /// and file names carry it, so a resumed run whose plan shifted (a late file, an earlier
    /// row) never writes where a kept unit's files are.
    pub(crate) fn key(&self) -> String {
        if self.kind == UnitKind::Whole {
            return WHOLE_KEY.to_string();
        }
        format!("{:016x}", stable_hash(&self.name))
    }
}

/// A hash of `text` that is the same in every build, process and platform (FNV-1a), unlike
/// std's hasher: for names and fingerprints that are stored and compared later.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What of a model's input one unit reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitKind {
    /// All of it: the single unit of an unbatched model.
    Whole,
    /// The rows whose event time is in `[start, end)`.
    Period {
        /// The first instant of the range.
        start: NaiveDateTime,
        /// The first instant after the range.
        end: NaiveDateTime,
    },
    /// These files of the model's one input source.
    Files {
        /// The source.
        source: String,
        /// Its files this unit reads.
        files: Vec<object_store::ObjectMeta>,
    },
    /// The rows whose join keys hash to `bucket` of `buckets`.
    KeyBucket {
        /// This unit's bucket, `0..buckets`.
        bucket: usize,
        /// The number of buckets.
        buckets: usize,
    },
}

/// The start of the period of `size` that contains `t`.
pub(crate) fn truncate(size: BatchSize, t: NaiveDateTime) -> NaiveDateTime {
    let d = t.date();
    let day = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).and_then(|d| d.and_hms_opt(0, 0, 0));
    match size {
        BatchSize::Hour => t.date().and_hms_opt(t.hour(), 0, 0),
        BatchSize::Day => day(d.year(), d.month(), d.day()),
        BatchSize::Month => day(d.year(), d.month(), 1),
        BatchSize::Year => day(d.year(), 1, 1),
    }
    .unwrap_or(t)
}

/// The start of the period after the one starting at `t`.
pub(crate) fn next(size: BatchSize, t: NaiveDateTime) -> NaiveDateTime {
    match size {
        BatchSize::Hour => t + Duration::hours(1),
        BatchSize::Day => t + Duration::days(1),
        BatchSize::Month => t
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(t + Duration::days(31)),
        BatchSize::Year => t
            .checked_add_months(chrono::Months::new(12))
            .unwrap_or(t + Duration::days(366)),
    }
}

/// The name of the period of `size` starting at `t`.
pub(crate) fn period_name(size: BatchSize, t: NaiveDateTime) -> String {
    match size {
        BatchSize::Hour => t.format("%Y-%m-%dT%H").to_string(),
        BatchSize::Day => t.format("%Y-%m-%d").to_string(),
        BatchSize::Month => t.format("%Y-%m").to_string(),
        BatchSize::Year => t.format("%Y").to_string(),
    }
}

/// The periods of a time-batched model: a size, in a time zone. Period starts are UTC
/// instants (what event times are compared with); names and boundaries are local wall time,
/// so a day in a zone with daylight saving time lasts 23 or 25 hours. Without a zone, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// The period size.
    pub size: BatchSize,
    /// The zone; `None`: UTC.
    pub tz: Option<chrono_tz::Tz>,
}

impl Grid {
    /// A grid of `size` in UTC.
    pub fn utc(size: BatchSize) -> Grid {
        Grid { size, tz: None }
    }

    /// The grid of a model's `[batches]`.
    pub fn of(batches: &crate::config::BatchConfig) -> Grid {
        Grid {
            size: batches.size,
            tz: batches.timezone,
        }
    }

    /// `day`, or `day@America/New_York`: how manifests and the state store name the grid.
    pub fn label(&self) -> String {
        match self.tz {
            None => self.size.name().to_string(),
            Some(tz) => format!("{}@{}", self.size.name(), tz.name()),
        }
    }

    /// The wall time of the UTC instant `t` in the grid's zone.
    pub fn local(&self, t: NaiveDateTime) -> NaiveDateTime {
        match self.tz {
            None => t,
            Some(tz) => chrono::TimeZone::from_utc_datetime(&tz, &t).naive_local(),
        }
    }

    /// The UTC instant of the wall time `local`: the earlier of two (a wall time repeated
    /// when clocks go back), or the first instant after a gap (one skipped when they go
    /// forward: a zone whose midnight was skipped starts that day at 01:00).
    pub fn instant_of(&self, local: NaiveDateTime) -> NaiveDateTime {
        let Some(tz) = self.tz else {
            return local;
        };
        let mut probe = local;
        // Gaps are at most a few hours long; step forward by minutes until out of it.
        for _ in 0..(26 * 60) {
            match chrono::TimeZone::from_local_datetime(&tz, &probe) {
                chrono::LocalResult::Single(t) => return t.naive_utc(),
                chrono::LocalResult::Ambiguous(a, b) => return a.naive_utc().min(b.naive_utc()),
                chrono::LocalResult::None => probe += Duration::minutes(1),
            }
        }
        local
    }

    /// The start of the period holding the UTC instant `t`.
    pub fn truncate(&self, t: NaiveDateTime) -> NaiveDateTime {
        self.instant_of(truncate(self.size, self.local(t)))
    }

    /// The start of the period after the one starting at `p`.
    pub fn next(&self, p: NaiveDateTime) -> NaiveDateTime {
        self.instant_of(next(self.size, truncate(self.size, self.local(p))))
    }

    /// The name of the period starting at `p` (its local start).
    pub fn name(&self, p: NaiveDateTime) -> String {
        period_name(self.size, truncate(self.size, self.local(p)))
    }

    /// The start of the period named `name`, if it names one of this grid.
    pub fn parse(&self, name: &str) -> Option<NaiveDateTime> {
        let text = match name.len() {
            4 => format!("{name}-01-01"),
            7 => format!("{name}-01"),
            13 => format!("{name}:00:00"),
            _ => name.to_string(),
        };
        crate::config::parse_datetime(&text).map(|local| self.instant_of(local))
    }

    /// The units covering `[start, end)` (UTC instants): the first starts at `start`'s
    /// period.
    pub(crate) fn periods(&self, start: NaiveDateTime, end: NaiveDateTime) -> Vec<Unit> {
        let mut out = Vec::new();
        let mut t = self.truncate(start);
        while t < end {
            let n = self.next(t);
            out.push(Unit {
                index: out.len(),
                name: self.name(t),
                kind: UnitKind::Period {
                    start: t.max(start),
                    end: n.min(end),
                },
            });
            t = n;
        }
        out
    }
}

/// The `n` units of a model by key, named `key 03 of 16`.
pub(crate) fn by_key(n: usize) -> Vec<Unit> {
    let width = (n.max(2) - 1).to_string().len();
    (0..n)
        .map(|i| Unit {
            index: i,
            name: format!("key {i:0width$} of {n}"),
            kind: UnitKind::KeyBucket {
                bucket: i,
                buckets: n,
            },
        })
        .collect()
}

/// The single unit of an unbatched model.
pub(crate) fn whole() -> Vec<Unit> {
    vec![Unit {
        index: 0,
        name: "all".into(),
        kind: UnitKind::Whole,
    }]
}

/// Units of `per_unit` files each over `files` of `source` (sorted by path), named after their
/// first file (relative to `prefix`).
pub(crate) fn by_files(
    source: &str,
    files: Vec<object_store::ObjectMeta>,
    per_unit: usize,
    prefix: &str,
) -> Vec<Unit> {
    files
        .chunks(per_unit.max(1))
        .enumerate()
        .map(|(index, chunk)| {
            let first = chunk[0].location.as_ref();
            let rel = first
                .strip_prefix(prefix)
                .unwrap_or(first)
                .trim_start_matches('/');
            let name = if chunk.len() == 1 {
                rel.to_string()
            } else {
                format!("{rel} (+{} files)", chunk.len() - 1)
            };
            Unit {
                index,
                name,
                kind: UnitKind::Files {
                    source: source.to_string(),
                    files: chunk.to_vec(),
                },
            }
        })
        .collect()
}

/// The event-time sources a model reads (directly or through the views it inlines), with
/// their event-time columns.
pub(crate) fn event_sources(
    pipeline: &Pipeline,
    sources: &BTreeSet<String>,
) -> Vec<(String, String)> {
    sources
        .iter()
        .filter_map(|s| {
            let event_time = match pipeline.sources.get(s) {
                Some(src) => src.event_time.clone(),
                None => pipeline.database_sources.get(s)?.event_time.clone(),
            };
            event_time.map(|et| (s.clone(), et))
        })
        .collect()
}

/// Units of a plan whose `[start, end)` falls outside the sizing rule of thumb: 10K–500K rows
/// a unit and 50–200 units a job.
pub(crate) fn sizing_warnings(units: usize, rows_per_unit: &[u64]) -> Vec<String> {
    let mut out = Vec::new();
    if units > 0 && units < 50 {
        out.push(format!(
            "{units} units: fewer than 50, so a failure or a retry redoes a large share of the job"
        ));
    }
    if units > 200 {
        out.push(format!(
            "{units} units: more than 200, so per-unit overhead (planning, commits) dominates"
        ));
    }
    let small = rows_per_unit.iter().filter(|r| **r < 10_000).count();
    let big = rows_per_unit.iter().filter(|r| **r > 500_000).count();
    if small > 0 {
        out.push(format!(
            "{small} units under 10K rows: scheduling overhead dominates; use a larger size"
        ));
    }
    if big > 0 {
        out.push(format!(
            "{big} units over 500K rows: risk of timeouts and memory pressure; use a smaller size"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> NaiveDateTime {
        crate::config::parse_datetime(s).unwrap()
    }

    #[test]
    fn months_cover_the_range_with_calendar_boundaries() {
        let u = Grid::utc(BatchSize::Month).periods(at("1992-01-15"), at("1992-04-01"));
        let names: Vec<_> = u.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, vec!["1992-01", "1992-02", "1992-03"]);
        assert_eq!(
            u[0].kind,
            UnitKind::Period {
                start: at("1992-01-15"),
                end: at("1992-02-01")
            }
        );
        assert_eq!(
            u[1].kind,
            UnitKind::Period {
                start: at("1992-02-01"),
                end: at("1992-03-01")
            }
        );
        assert_eq!(u[2].index, 2);
    }

    #[test]
    fn hours_days_and_years() {
        assert_eq!(
            Grid::utc(BatchSize::Hour)
                .periods(at("2024-01-01T22:30:00"), at("2024-01-02T01:00:00"))
                .len(),
            3
        );
        assert_eq!(
            Grid::utc(BatchSize::Day)
                .periods(at("2024-02-27"), at("2024-03-01"))
                .len(),
            3
        );
        let y = Grid::utc(BatchSize::Year).periods(at("1992-01-01"), at("1999-01-01"));
        assert_eq!(y.len(), 7);
        assert_eq!(y[6].name, "1998");
    }

    /// Days in New York across both DST changes of 2024 (checked against the zone's rules:
    /// 2024-03-10 lasts 23 hours, 2024-11-03 25), and the same instants in UTC.
    #[test]
    fn periods_in_a_zone_follow_its_daylight_saving_time() {
        let ny = Grid {
            size: BatchSize::Day,
            tz: Some(chrono_tz::America::New_York),
        };
        let days = ny.periods(at("2024-03-09T05:00:00"), at("2024-03-12T04:00:00"));
        let names: Vec<_> = days.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, vec!["2024-03-09", "2024-03-10", "2024-03-11"]);
        let bounds: Vec<_> = days
            .iter()
            .map(|u| match u.kind {
                UnitKind::Period { start, end } => (start, end),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            bounds[1],
            (at("2024-03-10T05:00:00"), at("2024-03-11T04:00:00"))
        );
        assert_eq!(
            ny.next(at("2024-11-03T04:00:00")) - at("2024-11-03T04:00:00"),
            Duration::hours(25)
        );
        // 03:30 UTC on March 10 is 22:30 on March 9 in New York.
        assert_eq!(
            ny.truncate(at("2024-03-10T03:30:00")),
            at("2024-03-09T05:00:00")
        );
        assert_eq!(ny.name(at("2024-03-10T03:30:00")), "2024-03-09");
        assert_eq!(ny.parse("2024-03-10"), Some(at("2024-03-10T05:00:00")));
        assert_eq!(ny.label(), "day@America/New_York");
        // A month in Kolkata (+05:30) starts at 18:30 UTC the day before.
        let kolkata = Grid {
            size: BatchSize::Month,
            tz: Some(chrono_tz::Asia::Kolkata),
        };
        assert_eq!(
            kolkata.truncate(at("2024-02-01T00:00:00")),
            at("2024-01-31T18:30:00")
        );
        // UTC is unchanged.
        let utc = Grid::utc(BatchSize::Day);
        assert_eq!(utc.periods(at("2024-02-27"), at("2024-03-01")).len(), 3);
        assert_eq!(utc.label(), "day");
    }

    #[test]
    fn sizing_rule_of_thumb() {
        assert!(sizing_warnings(80, &[100_000; 80]).is_empty());
        let w = sizing_warnings(3, &[5_000, 600_000, 20_000]);
        assert_eq!(w.len(), 3, "{w:?}");
    }
}
