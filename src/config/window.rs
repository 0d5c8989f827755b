//! Run windows: the hours when a batch job may run, when production traffic is low.
//! `01:00-05:00` every day, `22:00-04:00` over midnight, `Sat 00:00-Sun 23:59` over a weekend;
//! in a time zone, with its daylight saving time (a window opens and closes at its wall-clock
//! times, whatever the offset that day).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// One window: from a wall-clock time (on a weekday, or every day) to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The day it opens (`None`: every day).
    pub from_day: Option<Weekday>,
    /// When it opens.
    pub from: NaiveTime,
    /// The day it closes (with `from_day`).
    pub to_day: Option<Weekday>,
    /// When it closes (exclusive).
    pub to: NaiveTime,
    /// As written.
    pub text: String,
}

impl Window {
    /// Parses `HH:MM-HH:MM` or `Day HH:MM-Day HH:MM` (days `Mon` ... `Sun`).
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || {
            format!(
                "{text:?} is not a run window: give \"HH:MM-HH:MM\" (e.g. \"01:00-05:00\") or \
                 \"Day HH:MM-Day HH:MM\" (e.g. \"Sat 00:00-Sun 23:59\")"
            )
        };
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let end = |s: &str| -> Result<(Option<Weekday>, NaiveTime), String> {
            let s = s.trim();
            let (day, time) = match s.split_once(char::is_whitespace) {
                Some((day, time)) => (Some(day.parse::<Weekday>().map_err(|_| bad())?), time),
                None => (None, s),
            };
            let time = NaiveTime::parse_from_str(time.trim(), "%H:%M").map_err(|_| bad())?;
            Ok((day, time))
        };
        let ((from_day, from), (to_day, to)) = (end(a)?, end(b)?);
        if from_day.is_some() != to_day.is_some() {
            return Err(format!(
                "{text:?}: give a day at both ends of the window, or at neither"
            ));
        }
        if from_day.is_none() && from == to {
            return Err(format!("{text:?} is an empty window"));
        }
        Ok(Window {
            from_day,
            from,
            to_day,
            to,
            text: text.trim().to_string(),
        })
    }

    /// The openings of this window on the local day `day` (none, or one) as the span of
    /// wall-clock times it covers, `[open, close)`, as dates and times.
    pub(super) fn on(
        &self,
        day: NaiveDate,
    ) -> Option<(NaiveDate, NaiveTime, NaiveDate, NaiveTime)> {
        match (self.from_day, self.to_day) {
            (Some(from_day), Some(to_day)) => {
                if day.weekday() != from_day {
                    return None;
                }
                let mut days = (i64::from(to_day.num_days_from_monday())
                    - i64::from(from_day.num_days_from_monday()))
                .rem_euclid(7);
                if days == 0 && self.to <= self.from {
                    days = 7;
                }
                Some((day, self.from, day + Duration::days(days), self.to))
            }
            _ => {
                let close_day = if self.to > self.from {
                    day
                } else {
                    day + Duration::days(1)
                };
                Some((day, self.from, close_day, self.to))
            }
        }
    }
}

/// The instant a wall-clock time is in `tz` (in a daylight-saving gap: the first instant
/// after it, the gap's end; gaps are at most a few hours).
fn instant(tz: Tz, day: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
    let local = day.and_time(time);
    (0..=6 * 60)
        .find_map(|m| {
            tz.from_local_datetime(&(local + Duration::minutes(m)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// The window of `windows` open at `now` in `tz`, if one is: its closing instant.
pub fn open_until(windows: &[Window], tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let today = now.with_timezone(&tz).date_naive();
    let mut until: Option<DateTime<Utc>> = None;
    for w in windows {
        // A window that opened up to a week ago may still be open.
        for back in 0..=7 {
            let Some((d0, t0, d1, t1)) = w.on(today - Duration::days(back)) else {
                continue;
            };
            if let (Some(open), Some(close)) = (instant(tz, d0, t0), instant(tz, d1, t1))
                && open <= now
                && now < close
            {
                until = Some(until.map_or(close, |u| u.max(close)));
            }
        }
    }
    until
}

/// When a window of `windows` next opens after `now`, in `tz`.
pub fn next_open(windows: &[Window], tz: Tz, now: DateTime<Utc>) -> Option<DateTime<Tz>> {
    let today = now.with_timezone(&tz).date_naive();
    (0..=8)
        .flat_map(|ahead| {
            windows
                .iter()
                .filter_map(move |w| w.on(today + Duration::days(ahead)))
        })
        .filter_map(|(d0, t0, _, _)| instant(tz, d0, t0))
        .filter(|open| *open > now)
        .min()
        .map(|t| t.with_timezone(&tz))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_parse_or_say_what_is_wrong() {
        let w = Window::parse("01:00-05:00").unwrap();
        assert_eq!((w.from_day, w.to_day), (None, None));
        let w = Window::parse("Sat 00:00-Sun 23:59").unwrap();
        assert_eq!(
            (w.from_day, w.to_day),
            (Some(Weekday::Sat), Some(Weekday::Sun))
        );
        for (bad, why) in [
            ("1-5", "not a run window"),
            ("25:00-05:00", "not a run window"),
            ("Xyz 01:00-Sun 02:00", "not a run window"),
            ("Sat 01:00-05:00", "at both ends"),
            ("03:00-03:00", "empty window"),
        ] {
            let e = Window::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_daily_window_is_open_in_its_hours_over_midnight_too() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let night = [Window::parse("01:00-05:00").unwrap()];
        // 02:00 in Berlin (UTC+1 in January) is 01:00 UTC.
        assert_eq!(
            open_until(&night, berlin, at("2026-01-10T01:00:00Z")),
            Some(at("2026-01-10T04:00:00Z"))
        );
        assert_eq!(open_until(&night, berlin, at("2026-01-10T04:00:00Z")), None);
        assert_eq!(
            next_open(&night, berlin, at("2026-01-10T12:00:00Z")).map(|t| t.to_rfc3339()),
            Some("2026-01-11T01:00:00+01:00".to_string())
        );
        let late = [Window::parse("22:00-04:00").unwrap()];
        assert!(open_until(&late, Tz::UTC, at("2026-01-10T23:30:00Z")).is_some());
        assert_eq!(
            open_until(&late, Tz::UTC, at("2026-01-11T03:59:00Z")),
            Some(at("2026-01-11T04:00:00Z"))
        );
        assert_eq!(open_until(&late, Tz::UTC, at("2026-01-11T04:00:00Z")), None);
    }

    #[test]
    fn windows_keep_their_wall_clock_hours_across_daylight_saving_time() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let night = [Window::parse("01:00-05:00").unwrap()];
        // 2026-03-29: clocks go from 02:00 to 03:00; the window is 3 hours long that night,
        // 01:00+01:00 to 05:00+02:00.
        assert_eq!(
            open_until(&night, berlin, at("2026-03-29T00:30:00Z")),
            Some(at("2026-03-29T03:00:00Z"))
        );
        // A window opening in the gap opens when the clocks reach 03:00.
        let gap = [Window::parse("02:15-04:00").unwrap()];
        assert_eq!(
            next_open(&gap, berlin, at("2026-03-28T12:00:00Z")).map(|t| t.to_rfc3339()),
            Some("2026-03-29T03:00:00+02:00".to_string())
        );
        // 2026-10-25: clocks go from 03:00 back to 02:00; 5 hours that night.
        assert_eq!(
            open_until(&night, berlin, at("2026-10-25T03:30:00Z")),
            Some(at("2026-10-25T04:00:00Z"))
        );
        assert_eq!(
            next_open(&night, berlin, at("2026-10-24T12:00:00Z")).map(|t| t.to_rfc3339()),
            Some("2026-10-25T01:00:00+02:00".to_string())
        );
    }

    #[test]
    fn a_weekend_window_spans_its_days() {
        // 2026-11-28 is a Saturday.
        let weekend = [
            Window::parse("Sat 00:00-Sun 23:59").unwrap(),
            Window::parse("02:00-03:00").unwrap(),
        ];
        assert!(open_until(&weekend, Tz::UTC, at("2026-11-29T18:00:00Z")).is_some());
        assert_eq!(
            open_until(&weekend, Tz::UTC, at("2026-11-28T02:30:00Z")),
            Some(at("2026-11-29T23:59:00Z"))
        );
        assert_eq!(
            open_until(&weekend, Tz::UTC, at("2026-11-30T12:00:00Z")),
            None
        );
        assert_eq!(
            next_open(&weekend, Tz::UTC, at("2026-11-30T12:00:00Z")).map(|t| t.to_rfc3339()),
            Some("2026-12-01T02:00:00+00:00".to_string())
        );
    }
}
