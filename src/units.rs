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

/// The units covering `[start, end)`: the first starts at `start`'s period.
pub(crate) fn periods(size: BatchSize, start: NaiveDateTime, end: NaiveDateTime) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut t = truncate(size, start);
    while t < end {
        let n = next(size, t);
        out.push(Unit {
            index: out.len(),
            name: period_name(size, t),
            kind: UnitKind::Period {
                start: t.max(start),
                end: n.min(end),
            },
        });
        t = n;
    }
    out
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
            let src = pipeline.sources.get(s)?;
            src.event_time.clone().map(|et| (s.clone(), et))
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
        let u = periods(BatchSize::Month, at("1992-01-15"), at("1992-04-01"));
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
            periods(
                BatchSize::Hour,
                at("2024-01-01T22:30:00"),
                at("2024-01-02T01:00:00")
            )
            .len(),
            3
        );
        assert_eq!(
            periods(BatchSize::Day, at("2024-02-27"), at("2024-03-01")).len(),
            3
        );
        let y = periods(BatchSize::Year, at("1992-01-01"), at("1999-01-01"));
        assert_eq!(y.len(), 7);
        assert_eq!(y[6].name, "1998");
    }

    #[test]
    fn sizing_rule_of_thumb() {
        assert!(sizing_warnings(80, &[100_000; 80]).is_empty());
        let w = sizing_warnings(3, &[5_000, 600_000, 20_000]);
        assert_eq!(w.len(), 3, "{w:?}");
    }
}
