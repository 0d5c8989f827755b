//! Validating `[schedule]`: the cron expression, the zone, the windows (none overlapping),
//! `on_window_end`, `catch_up` and `max_run_time`.

use super::super::ConfigError;
use super::super::raw::RawSchedule;
use super::super::schedule::{CatchUp, Cron, OnWindowEnd, Schedule, overlapping};
use super::super::values::parse_duration;
use super::super::window::Window;
use super::Validator;

impl Validator<'_> {
    /// `[schedule]`.
    pub(in super::super) fn schedule(&self, raw: RawSchedule) -> Result<Schedule, ConfigError> {
        let timezone = match raw.timezone.as_deref() {
            None => chrono_tz::Tz::UTC,
            Some(name) => name.parse().map_err(|_| {
                self.invalid(
                    "schedule.timezone",
                    format!("unknown time zone {name:?} (an IANA name, e.g. \"Europe/Berlin\")"),
                )
            })?,
        };
        let windows = raw
            .window
            .map(|w| w.into_vec())
            .unwrap_or_default()
            .iter()
            .map(|w| Window::parse(w).map_err(|e| self.invalid("schedule.window", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some((a, b)) = overlapping(&windows) {
            return Err(self.invalid(
                "schedule.window",
                format!("windows {a:?} and {b:?} overlap: give each hour to one window"),
            ));
        }
        let Some(cron) = raw.cron else {
            return Err(self.invalid(
                "schedule",
                "a schedule needs `cron`, when its runs start (e.g. cron = \"0 2 * * *\"); \
                 for a one-off run inside a window, give `sluice run --window` instead",
            ));
        };
        let cron = Cron::parse(&cron).map_err(|e| self.invalid("schedule.cron", e))?;
        let epoch = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
        if cron.next_after(timezone, epoch).is_none() {
            return Err(self.invalid(
                "schedule.cron",
                format!("{:?} never fires (no such date)", cron.as_str()),
            ));
        }
        let on_window_end = match raw.on_window_end.as_deref() {
            _ if windows.is_empty() && raw.on_window_end.is_some() => {
                return Err(self.invalid(
                    "schedule.on_window_end",
                    "there is no `window` for it to end: give `window` too, or remove it",
                ));
            }
            None | Some("pause") => OnWindowEnd::Pause,
            Some("cancel") => OnWindowEnd::Cancel,
            Some(other) => {
                return Err(self.invalid(
                    "schedule.on_window_end",
                    format!("{other:?}: expected \"pause\" or \"cancel\""),
                ));
            }
        };
        let catch_up = match raw.catch_up.as_deref() {
            None | Some("latest") => CatchUp::Latest,
            Some("all") => CatchUp::All,
            Some("none") => CatchUp::None,
            Some(other) => {
                return Err(self.invalid(
                    "schedule.catch_up",
                    format!("{other:?}: expected \"latest\", \"all\" or \"none\""),
                ));
            }
        };
        let max_run_time = raw
            .max_run_time
            .map(|s| match parse_duration(&s) {
                Some(d) if !d.is_zero() => Ok(d),
                _ => Err(self.invalid(
                    "schedule.max_run_time",
                    format!("{s:?} is not a duration (examples: \"6h\", \"90m\")"),
                )),
            })
            .transpose()?;
        Ok(Schedule {
            cron,
            timezone,
            windows,
            on_window_end,
            catch_up,
            max_run_time,
        })
    }
}
