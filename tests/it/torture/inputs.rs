//! The source's files: written by the generator ([`Files`]), and read back by the oracle
//! ([`Inputs::read`]), which parses the CSV text itself, independently of sluice, into good
//! rows, rows that do not parse and rows without an event time.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Rng;
use super::shape::Shape;

/// A row of the model's output: `(id, n, g)`.
pub type Row = (i64, i64, i64);

/// A row of an input file, by file name and line (the header is line 1).
pub type Line = (String, u64);

/// What identifies the source's files for sluice (path, size, modification time, and the
/// inode that the local store's etag holds): an append is the same append when this is the
/// same.
pub type Identity = Vec<(String, u64, i64, i64, u64)>;

/// The generator's side of the source folder `data/`: writes new, late, corrected, renamed,
/// deleted and rewritten files, with fresh ids so no two rows are alike.
pub struct Files {
    dir: PathBuf,
    next_id: i64,
    next_name: u64,
}

impl Files {
    pub fn new(pipeline: &Path) -> Files {
        Files {
            dir: pipeline.join("data"),
            next_id: 0,
            next_name: 0,
        }
    }

    /// The names of the files in the folder, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A new file of fresh rows; `late` ones hold only the first day's rows and sort before
    /// every other file.
    pub fn add(&mut self, rng: &mut Rng, shape: &Shape, late: bool) -> String {
        self.next_name += 1;
        let name = if late {
            format!("a-late{}.csv", self.next_name)
        } else {
            format!("f{}.csv", self.next_name)
        };
        let text = self.text(rng, shape, late);
        self.write(&name, &text);
        format!("add {name} ({})", summary(&text))
    }

    /// An existing file rewritten with fresh rows (bad rows corrected, or new ones).
    pub fn correct(&mut self, rng: &mut Rng, shape: &Shape) -> String {
        let name = self.pick(rng);
        let text = self.text(rng, shape, false);
        self.write(&name, &text);
        format!("correct {name} ({})", summary(&text))
    }

    /// An existing file moved to a new name: the same rows.
    pub fn rename(&mut self, rng: &mut Rng) -> String {
        let from = self.pick(rng);
        self.next_name += 1;
        let to = format!("f{}.csv", self.next_name);
        std::fs::rename(self.dir.join(&from), self.dir.join(&to)).unwrap();
        format!("rename {from} -> {to}")
    }

    /// An existing file deleted (never the last one: a source with no files is an error of
    /// its own).
    pub fn delete(&mut self, rng: &mut Rng) -> Option<String> {
        if self.names().len() < 2 {
            return None;
        }
        let name = self.pick(rng);
        std::fs::remove_file(self.dir.join(&name)).unwrap();
        Some(format!("delete {name}"))
    }

    /// An existing file rewritten with the same bytes: a new modification time, the same rows.
    pub fn touch(&mut self, rng: &mut Rng) -> String {
        let name = self.pick(rng);
        let text = std::fs::read_to_string(self.dir.join(&name)).unwrap();
        self.write(&name, &text);
        format!("rewrite {name} unchanged")
    }

    /// A new file named `<prefix><n>.csv` of 1 to 12 fresh rows whose event times fall on
    /// the days `days` (of the incremental model's zone; each day gets at least one row).
    pub fn add_on(&mut self, rng: &mut Rng, shape: &Shape, days: &[i64], prefix: &str) -> String {
        self.next_name += 1;
        let name = format!("{prefix}{}.csv", self.next_name);
        let text = self.text_on(rng, shape, days);
        self.write(&name, &text);
        let tz = shape.incremental().map_or(0, |i| i.tz_h);
        format!("add {name} ({})", summary_days(&text, tz))
    }

    /// An existing file rewritten with fresh rows on the days it held (a correction).
    pub fn rewrite_on(&mut self, rng: &mut Rng, shape: &Shape) -> String {
        let name = self.pick(rng);
        let old = std::fs::read_to_string(self.dir.join(&name)).unwrap();
        let tz = shape.incremental().map_or(0, |i| i.tz_h);
        let days: BTreeSet<i64> = old
            .lines()
            .skip(1)
            .filter_map(|l| utc_minute(l.rsplit(',').next()?))
            .map(|m| local_day(m, tz))
            .collect();
        let days: Vec<i64> = days.into_iter().collect();
        let text = self.text_on(rng, shape, &days);
        self.write(&name, &text);
        format!("correct {name} ({})", summary_days(&text, tz))
    }

    /// Fresh rows on `days`, at least one each.
    fn text_on(&mut self, rng: &mut Rng, shape: &Shape, days: &[i64]) -> String {
        let rows = (1 + rng.below(12)).max(days.len() as u64);
        let mut text = String::from("id,n,g,ts\n");
        for i in 0..rows {
            let day = match days.get(i as usize) {
                Some(d) => *d,
                None => days[rng.below(days.len() as u64) as usize],
            };
            self.next_id += 1;
            let tz = shape.incremental().map_or(0, |i| i.tz_h);
            let ts = timestamp_on(rng, shape.offsets, day, tz);
            text.push_str(&format!(
                "{},{},{},{ts}\n",
                self.next_id,
                rng.below(1000),
                rng.below(3)
            ));
        }
        text
    }

    fn pick(&self, rng: &mut Rng) -> String {
        let names = self.names();
        names[rng.below(names.len() as u64) as usize].clone()
    }

    /// Writes `text` to `data/<name>` (see [`write_new`]).
    fn write(&self, name: &str, text: &str) {
        write_new(&self.dir.join(name), text);
    }

    /// The dimension source `dims.csv` (beside `data/`) written: `k` for `g` 0 to 2, fresh
    /// values, or the same ones again (a new version all the same).
    pub fn dims(&mut self, rng: &mut Rng, fresh: bool) -> String {
        let path = self.dir.parent().unwrap().join("dims.csv");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) if !fresh => text,
            _ => {
                let mut text = String::from("g,k\n");
                for g in 0..3 {
                    text.push_str(&format!("{g},{}\n", rng.below(100)));
                }
                text
            }
        };
        write_new(&path, &text);
        let k: Vec<&str> = text.lines().skip(1).collect();
        format!(
            "dims.csv{}: {}",
            if fresh { "" } else { " rewritten unchanged" },
            k.join(" ")
        )
    }
}

/// Writes `text` to `path`, so that sluice can tell the new file from the old one: when the
/// size stays and the clock has not moved on (a coarse file-system timestamp), it writes
/// again after a pause.
fn write_new(path: &Path, text: &str) {
    let before = std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.mtime_nsec(), m.mtime()));
    loop {
        std::fs::write(path, text).unwrap();
        let m = std::fs::metadata(path).unwrap();
        if before != Some((m.len(), m.mtime_nsec(), m.mtime())) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Files {
    /// A file's text: a header and 1 to 30 rows; in a pipeline with bad rows, a quarter of
    /// the files hold some; in one with bad event times, an eighth of the rows lack one.
    fn text(&mut self, rng: &mut Rng, shape: &Shape, late: bool) -> String {
        let bad_file = shape.bad_rows && rng.chance(4);
        let rows = 1 + rng.below(30);
        let mut text = String::from("id,n,g,ts\n");
        let mut bad = 0;
        for i in 0..rows {
            let must_be_bad = bad_file && bad == 0 && i + 1 == rows;
            let line = if must_be_bad || (bad_file && rng.chance(3)) {
                bad += 1;
                self.bad_row(rng, shape, late)
            } else {
                self.row(rng, shape, late)
            };
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// A good row (its event time possibly missing, in a pipeline with bad event times).
    fn row(&mut self, rng: &mut Rng, shape: &Shape, late: bool) -> String {
        self.next_id += 1;
        let ts = if shape.bad_times && rng.chance(8) {
            ["", "soon"][rng.below(2) as usize].to_string()
        } else {
            timestamp(rng, shape, late)
        };
        format!("{},{},{},{ts}", self.next_id, rng.below(1000), rng.below(3))
    }

    /// A row that does not parse: a non-integer in an INT column, or too few or too many
    /// fields.
    fn bad_row(&mut self, rng: &mut Rng, shape: &Shape, late: bool) -> String {
        self.next_id += 1;
        let (id, n, g) = (self.next_id, rng.below(1000), rng.below(3));
        let ts = timestamp(rng, shape, late);
        match rng.below(5) {
            0 => format!("{id},x{n},{g},{ts}"),
            1 => format!("{id},{n}.5,{g},{ts}"),
            2 => format!("{id},{n},9999999999,{ts}"),
            3 => format!("{id},{n}"),
            _ => format!("{id},{n},{g},{ts},extra"),
        }
    }
}

/// A valid event time in January 2024 (day 1 for a late row), with a UTC offset and either
/// separator when the pipeline draws them.
fn timestamp(rng: &mut Rng, shape: &Shape, late: bool) -> String {
    let day = if late { 1 } else { 1 + rng.below(5) };
    let (hour, minute) = (rng.below(24), rng.below(60));
    let (sep, offset) = if shape.offsets {
        let sep = if rng.chance(2) { 'T' } else { ' ' };
        let offset = ["", "Z", "+02:00", "-05:00", "+05:30"][rng.below(5) as usize];
        (sep, offset)
    } else {
        (' ', "")
    };
    format!("2024-01-{day:02}{sep}{hour:02}:{minute:02}:00{offset}")
}

/// Days since 2024-01-01 of the proleptic Gregorian calendar's day 0 (1970-01-01).
fn epoch_2024() -> i64 {
    days_from_civil(2024, 1, 1)
}

/// A valid event time on day `day` (days since 2024-01-01) of the zone `tz` hours east of
/// UTC, written with a UTC offset and either separator when `offsets` (so its written date
/// may be another day), else as a naive (UTC) timestamp.
pub fn timestamp_on(rng: &mut Rng, offsets: bool, day: i64, tz: i64) -> String {
    let utc = day * 1440 - tz * 60 + rng.below(1440) as i64;
    let (sep, offset, minutes) = if offsets {
        let sep = if rng.chance(2) { 'T' } else { ' ' };
        let (offset, minutes) = [
            ("", 0),
            ("Z", 0),
            ("+02:00", 120),
            ("-05:00", -300),
            ("+05:30", 330),
        ][rng.below(5) as usize];
        (sep, offset, minutes)
    } else {
        (' ', "", 0)
    };
    let local = utc + minutes;
    let (y, mo, d) = civil_from_days(epoch_2024() + local.div_euclid(1440));
    let m = local.rem_euclid(1440);
    format!(
        "{y:04}-{mo:02}-{d:02}{sep}{:02}:{:02}:00{offset}",
        m / 60,
        m % 60
    )
}

/// The day (since 2024-01-01) of the zone `tz` hours east of UTC holding the instant `minute`
/// (minutes since 2024-01-01 00:00 UTC).
pub fn local_day(minute: i64, tz: i64) -> i64 {
    (minute + tz * 60).div_euclid(1440)
}

/// The day index (days since 2024-01-01) of a UTC day `2024-01-03`.
pub fn day_index(day: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| day.get(r)?.parse::<i64>().ok();
    Some(days_from_civil(num(0..4)?, num(5..7)?, num(8..10)?) - epoch_2024())
}

/// The UTC day `2024-01-03` of a day index.
pub fn day_name(day: i64) -> String {
    let (y, m, d) = civil_from_days(epoch_2024() + day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A file's rows and the days (of the zone `tz` hours east of UTC) they fall on, for the
/// history's log.
fn summary_days(text: &str, tz: i64) -> String {
    let mut days: BTreeMap<i64, u64> = BTreeMap::new();
    for m in text
        .lines()
        .skip(1)
        .filter_map(|l| utc_minute(l.rsplit(',').next()?))
    {
        *days.entry(local_day(m, tz)).or_default() += 1;
    }
    let days: Vec<String> = days
        .iter()
        .map(|(d, n)| format!("{}:{n}", &day_name(*d)[5..]))
        .collect();
    format!("rows by day {}", days.join(" "))
}

/// A file's rows and size, for the history's log.
fn summary(text: &str) -> String {
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let first = rows.first().copied().unwrap_or("");
    format!("{} rows, first {first:?}", rows.len())
}

/// The current input files as the oracle reads them.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Every row that parses, with the UTC day of its event time (`None`: no event time).
    pub rows: Vec<(Row, Option<String>)>,
    /// Rows that do not parse (wrong field count, a value not an INT).
    pub bad: BTreeSet<Line>,
    /// Rows that parse but whose event time is NULL or not a timestamp.
    pub untimed: BTreeSet<Line>,
    /// The files as sluice identifies them.
    pub identity: Identity,
    /// Each file (sorted by name) with its rows that parse.
    pub files: Vec<InputFile>,
}

/// One input file as the oracle reads it: its version as sluice records it (name, size,
/// modification time) and its rows that parse, each with its event time in minutes since
/// 2024-01-01 00:00 UTC (`None`: no event time).
#[derive(Debug, Clone)]
pub struct InputFile {
    pub name: String,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rows: Vec<(Row, Option<i64>)>,
}

impl Inputs {
    /// Reads every CSV file of `<pipeline>/data/`.
    pub fn read(pipeline: &Path) -> Inputs {
        let dir = pipeline.join("data");
        let mut inputs = Inputs {
            rows: Vec::new(),
            bad: BTreeSet::new(),
            untimed: BTreeSet::new(),
            identity: Vec::new(),
            files: Vec::new(),
        };
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let m = std::fs::metadata(&path).unwrap();
            inputs
                .identity
                .push((name.clone(), m.len(), m.mtime(), m.mtime_nsec(), m.ino()));
            let text = std::fs::read_to_string(&path).unwrap();
            let mut file = InputFile {
                name: name.clone(),
                size: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                rows: Vec::new(),
            };
            for (i, line) in text.lines().enumerate().skip(1) {
                if line.is_empty() {
                    continue;
                }
                let at = (name.clone(), i as u64 + 1);
                match parse_row(line) {
                    None => {
                        inputs.bad.insert(at);
                    }
                    Some((row, day)) => {
                        if day.is_none() {
                            inputs.untimed.insert(at);
                        }
                        file.rows
                            .push((row, line.rsplit(',').next().and_then(utc_minute)));
                        inputs.rows.push((row, day));
                    }
                }
            }
            inputs.files.push(file);
        }
        inputs
    }

    /// Every row that parses, sorted.
    pub fn all_rows(&self) -> Vec<Row> {
        sorted(self.rows.iter().map(|(r, _)| *r))
    }

    /// The rows that parse and have an event time, sorted.
    pub fn timed_rows(&self) -> Vec<Row> {
        sorted(
            self.rows
                .iter()
                .filter(|(_, d)| d.is_some())
                .map(|(r, _)| *r),
        )
    }

    /// The number of timed rows of each UTC day.
    pub fn days(&self) -> BTreeMap<String, u64> {
        let mut days = BTreeMap::new();
        for day in self.rows.iter().filter_map(|(_, d)| d.clone()) {
            *days.entry(day).or_default() += 1;
        }
        days
    }
}

fn sorted(rows: impl Iterator<Item = Row>) -> Vec<Row> {
    let mut rows: Vec<Row> = rows.collect();
    rows.sort();
    rows
}

/// A CSV line `id,n,g,ts` as the declared schema reads it: `None` when it has the wrong
/// number of fields or an INT column does not hold a 32-bit integer; with the UTC day of `ts`
/// when it is a timestamp.
fn parse_row(line: &str) -> Option<(Row, Option<String>)> {
    let fields: Vec<&str> = line.split(',').collect();
    if fields.len() != 4 {
        return None;
    }
    let int = |s: &str| s.parse::<i32>().ok().map(i64::from);
    let row = (int(fields[0])?, int(fields[1])?, int(fields[2])?);
    Some((row, utc_day(fields[3])))
}

/// The UTC day (`2024-01-03`) of a timestamp `YYYY-MM-DD[T ]HH:MM:SS[Z|±HH:MM]` (no offset:
/// UTC); `None` for anything else.
pub fn utc_day(ts: &str) -> Option<String> {
    Some(day_name(utc_minute(ts)?.div_euclid(1440)))
}

/// The instant of a timestamp `YYYY-MM-DD[T ]HH:MM:SS[Z|±HH:MM]` (no offset: UTC), in minutes
/// since 2024-01-01 00:00 UTC; `None` for anything else.
pub fn utc_minute(ts: &str) -> Option<i64> {
    let b = ts.as_bytes();
    if b.len() < 19 || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| ts.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if &ts[4..5] != "-" || &ts[7..8] != "-" || &ts[13..14] != ":" || &ts[16..17] != ":" {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let offset = match &ts[19..] {
        "" | "Z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let m = o[1..3].parse::<i64>().ok()? * 60 + o[4..6].parse::<i64>().ok()?;
            if o.starts_with('+') { m } else { -m }
        }
        _ => return None,
    };
    Some((days_from_civil(y, mo, d) - epoch_2024()) * 1440 + h * 60 + mi - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[test]
fn the_oracle_places_timestamps_by_their_utc_day() {
    assert_eq!(
        utc_day("2024-01-03 10:00:00").as_deref(),
        Some("2024-01-03")
    );
    assert_eq!(
        utc_day("2024-01-03T10:00:00Z").as_deref(),
        Some("2024-01-03")
    );
    assert_eq!(
        utc_day("2024-01-01T01:00:00+02:00").as_deref(),
        Some("2023-12-31")
    );
    assert_eq!(
        utc_day("2024-01-05 22:00:00-05:00").as_deref(),
        Some("2024-01-06")
    );
    assert_eq!(
        utc_day("2024-02-29 23:59:00-00:30").as_deref(),
        Some("2024-03-01")
    );
    assert_eq!(utc_day(""), None);
    assert_eq!(utc_day("soon"), None);
    assert_eq!(parse_row("1,2,9999999999,2024-01-01 00:00:00"), None);
    assert_eq!(parse_row("1,x2,0,2024-01-01 00:00:00"), None);
    assert_eq!(parse_row("1,2"), None);
    assert_eq!(
        parse_row("1,2,0,"),
        Some(((1, 2, 0), None)),
        "a NULL event time parses"
    );
}

#[test]
fn generated_event_times_fall_on_their_utc_day() {
    let mut rng = Rng(7);
    for day in -3..70 {
        assert_eq!(day_index(&day_name(day)), Some(day));
        for _ in 0..40 {
            let ts = timestamp_on(&mut rng, true, day, 0);
            assert_eq!(utc_day(&ts), Some(day_name(day)), "{ts}");
            for tz in [-5, 4] {
                let ts = timestamp_on(&mut rng, true, day, tz);
                assert_eq!(local_day(utc_minute(&ts).unwrap(), tz), day, "{ts} in {tz}");
            }
        }
    }
    assert_eq!(day_name(0), "2024-01-01");
    assert_eq!(day_name(-1), "2023-12-31");
    assert_eq!(day_name(59), "2024-02-29");
}
