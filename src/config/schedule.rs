//! `[schedule]`: when `sluice schedule` starts a pipeline's runs (a cron expression in a time
//! zone), the run windows its units may run in, what happens when a window closes on a
//! running run, which runs missed while the process was down are made up, and how long a run
//! may take.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::window::Window;

/// A pipeline's `[schedule]`, validated.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// When runs start.
    pub cron: Cron,
    /// The zone of the cron expression and the windows (default UTC).
    pub timezone: Tz,
    /// The windows units may run in (none: any time).
    pub windows: Vec<Window>,
    /// What a window's end does to a run still going.
    pub on_window_end: OnWindowEnd,
    /// Which runs missed while no scheduler was up are made up.
    pub catch_up: CatchUp,
    /// A run still going this long after it started (or resumed) is cancelled; the next run
    /// resumes it.
    pub max_run_time: Option<Duration>,
}

/// `on_window_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnWindowEnd {
    /// Let the running units finish, start no more; resume at the next window.
    #[default]
    Pause,
    /// Cancel the running units too (they rerun when the run resumes).
    Cancel,
}

/// `catch_up`: runs whose time passed while no scheduler was up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// One run for all of them, now.
    #[default]
    Latest,
    /// One run for each, in order (each with its scheduled time as the clock, `--as-of`).
    All,
    /// None: wait for the next scheduled time.
    None,
}

/// A cron expression: five fields (minute hour day-of-month month day-of-week), or six with
/// seconds first. Read by `croner`; its times are wall-clock times of the schedule's zone. A
/// time that the zone skips (the hour clocks jump over) fires at the end of the gap; a time
/// that happens twice (the hour repeated when clocks go back) fires once, the first time.
#[derive(Debug, Clone)]
pub struct Cron {
    cron: croner::Cron,
    text: String,
}

impl Cron {
    /// Parses `text`, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let cron = croner::Cron::new(text)
            .with_seconds_optional()
            .parse()
            .map_err(|e| format!("{text:?} is not a cron expression: {e}"))?;
        Ok(Cron {
            cron,
            text: text.to_string(),
        })
    }

    /// As written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time it fires strictly after `after`, in `tz`; `None` if it never does
    /// (before the year 5000).
    pub fn next_after(&self, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut from = after.with_timezone(&tz);
        // croner steps through wall-clock times. From inside the hour repeated when clocks go
        // back, the wall times it finds map to their first, earlier instants: those already
        // passed (or fired) and are skipped, so a wall time fires once. A wall time croner
        // cannot place (a gap longer than its hour of search) is looked past.
        for _ in 0..100_000 {
            match self.cron.find_next_occurrence(&from, false) {
                Ok(next) => {
                    let next_utc = next.with_timezone(&Utc);
                    if next_utc > after {
                        return Some(next_utc);
                    }
                    from = next;
                }
                Err(croner::errors::CronError::InvalidTime) => {
                    from =
                        (from.with_timezone(&Utc) + chrono::Duration::hours(1)).with_timezone(&tz);
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Every time it fires in `(after, until]`, at most `limit` of them (the latest), and
    /// how many there are in all.
    pub fn between(
        &self,
        tz: Tz,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, usize) {
        let mut kept = std::collections::VecDeque::new();
        let mut all = 0;
        let mut t = after;
        while let Some(next) = self.next_after(tz, t).filter(|n| *n <= until) {
            all += 1;
            if kept.len() == limit {
                kept.pop_front();
            }
            kept.push_back(next);
            t = next;
        }
        (kept.into(), all)
    }
}

/// Whether two of `windows` overlap (as wall-clock spans over two weeks): the first pair
/// that does, as written.
pub(super) fn overlapping(windows: &[Window]) -> Option<(String, String)> {
    // A Monday: every weekday window opens once in two weeks from it.
    let monday = chrono::NaiveDate::from_ymd_opt(2024, 1, 1)?;
    let spans: Vec<Vec<(chrono::NaiveDateTime, chrono::NaiveDateTime)>> = windows
        .iter()
        .map(|w| {
            (0..14)
                .filter_map(|d| w.on(monday + chrono::Duration::days(d)))
                .map(|(d0, t0, d1, t1)| (d0.and_time(t0), d1.and_time(t1)))
                .collect()
        })
        .collect();
    for i in 0..windows.len() {
        for j in i + 1..windows.len() {
            let meet = spans[i]
                .iter()
                .any(|a| spans[j].iter().any(|b| a.0 < b.1 && b.0 < a.1));
            if meet {
                return Some((windows[i].text.clone(), windows[j].text.clone()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The oracle: every minute in `(from, to)`, kept when its wall time in `tz` has the
    /// given hour and minute, and, of a wall time that happens twice, only the first; a wall
    /// time the zone skips stands for the first minute after the gap.
    fn expected(tz: Tz, from: &str, to: &str, hour: u32, minute: u32) -> Vec<DateTime<Utc>> {
        use chrono::Timelike;
        let mut out: Vec<DateTime<Utc>> = Vec::new();
        // (from, to): the times `between` looks at.
        let mut t = at(from) + chrono::Duration::minutes(1);
        let mut previous_local: Option<chrono::NaiveDateTime> = None;
        while t < at(to) {
            let local = t.with_timezone(&tz).naive_local();
            if let Some(p) = previous_local {
                // Clocks jumped forward over the wanted time: fire now, at the gap's end.
                let mut m = p + chrono::Duration::minutes(1);
                while m < local {
                    if m.hour() == hour && m.minute() == minute {
                        out.push(t);
                    }
                    m += chrono::Duration::minutes(1);
                }
            }
            let repeated = previous_local.is_some_and(|p| local <= p)
                || out
                    .iter()
                    .any(|o| o.with_timezone(&tz).naive_local() == local);
            if local.hour() == hour && local.minute() == minute && !repeated {
                out.push(t);
            }
            previous_local = Some(previous_local.map_or(local, |p| p.max(local)));
            t += chrono::Duration::minutes(1);
        }
        out
    }

    #[test]
    fn a_cron_fires_at_its_wall_clock_times_across_daylight_saving_changes() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let new_york: Tz = "America/New_York".parse().unwrap();
        for (tz, from, to) in [
            // Berlin: clocks jump 02:00 → 03:00 on 2026-03-29, fall back 03:00 → 02:00 on
            // 2026-10-25.
            (berlin, "2026-03-26T00:00:00Z", "2026-04-01T00:00:00Z"),
            (berlin, "2026-10-22T00:00:00Z", "2026-10-28T00:00:00Z"),
            (new_york, "2026-03-06T00:00:00Z", "2026-03-11T00:00:00Z"),
            (new_york, "2026-10-30T00:00:00Z", "2026-11-04T00:00:00Z"),
        ] {
            for (hour, minute) in [(2, 0), (2, 30), (1, 30), (3, 0), (0, 0)] {
                let cron = Cron::parse(&format!("{minute} {hour} * * *")).unwrap();
                let until = at(to) - chrono::Duration::seconds(1);
                let (got, _) = cron.between(tz, at(from), until, 100);
                assert_eq!(
                    got,
                    expected(tz, from, to, hour, minute),
                    "{tz} {hour:02}:{minute:02} from {from}"
                );
            }
        }
    }

    #[test]
    fn next_after_is_always_later_even_inside_a_repeated_hour() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let every_quarter = Cron::parse("*/15 * * * *").unwrap();
        // 02:10 CET, the second time 02:10 comes that night: the quarters of the repeated
        // hour fired the first time round; the next is 03:00 CET.
        let t = at("2026-10-25T01:10:00Z");
        assert_eq!(
            every_quarter.next_after(berlin, t),
            Some(at("2026-10-25T02:00:00Z"))
        );
        // And a daily 02:30 that fired at 02:30 CEST does not fire again at 02:30 CET.
        let daily = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(
            daily.next_after(berlin, at("2026-10-25T01:10:00Z")),
            Some(at("2026-10-26T01:30:00Z"))
        );
        // A gap of two hours (Troll, Antarctica: UTC+0 to UTC+2) is looked past, not a stop.
        let troll: Tz = "Antarctica/Troll".parse().unwrap();
        let night = Cron::parse("30 1 * * *").unwrap();
        let next = night.next_after(troll, at("2026-03-28T02:00:00Z")).unwrap();
        assert!(
            next > at("2026-03-28T02:00:00Z") && next < at("2026-03-30T00:00:00Z"),
            "{next}"
        );
        assert_eq!(
            Cron::parse("0 0 30 2 *").unwrap().next_after(Tz::UTC, t),
            None
        );
        let seconds = Cron::parse("*/10 * * * * *").unwrap();
        assert_eq!(
            seconds.next_after(Tz::UTC, at("2026-01-01T00:00:05Z")),
            Some(at("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn bad_cron_expressions_say_so() {
        for bad in ["", "61 * * * *", "* * *", "0 2 * * Xyz"] {
            let e = Cron::parse(bad).unwrap_err();
            assert!(e.contains("not a cron expression"), "{bad}: {e}");
        }
    }

    #[test]
    fn overlapping_windows_are_found() {
        let w = |s: &str| Window::parse(s).unwrap();
        assert_eq!(
            overlapping(&[w("01:00-05:00"), w("04:00-06:00")]),
            Some(("01:00-05:00".into(), "04:00-06:00".into()))
        );
        assert!(overlapping(&[w("01:00-05:00"), w("05:00-06:00")]).is_none());
        assert!(overlapping(&[w("22:00-02:00"), w("01:00-03:00")]).is_some());
        assert!(overlapping(&[w("01:00-05:00"), w("Sat 00:00-Sun 23:59")]).is_some());
        assert!(overlapping(&[w("Mon 01:00-Mon 05:00"), w("Sat 00:00-Sun 23:59")]).is_none());
    }
}
