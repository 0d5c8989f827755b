//! The scheduler's clock: the wall clock, or (for tests) a simulated one that starts at a
//! given instant and runs some times faster, so a night of schedules and windows passes in
//! seconds while runs do real work.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Longest real sleep between looks at the clock: a wall clock that jumps (a suspended
/// machine, a corrected time) is noticed within it.
const MAX_NAP: Duration = Duration::from_secs(30);

/// What time it is for the scheduler.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// `Some((start, real start, speed))`: simulated; `None`: the wall clock.
    simulated: Option<(DateTime<Utc>, Instant, f64)>,
}

impl Clock {
    /// The wall clock.
    pub fn system() -> Clock {
        Clock { simulated: None }
    }

    /// A clock reading `start` now and advancing `speed` times faster than real time.
    pub fn simulated(start: DateTime<Utc>, speed: f64) -> Clock {
        Clock {
            simulated: Some((start, Instant::now(), speed.max(f64::MIN_POSITIVE))),
        }
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        match self.simulated {
            None => Utc::now(),
            Some((start, real, speed)) => {
                let elapsed = real.elapsed().as_secs_f64() * speed;
                start + chrono::Duration::microseconds((elapsed * 1e6) as i64)
            }
        }
    }

    /// How long `d` of this clock's time lasts in real time.
    pub fn real(&self, d: Duration) -> Duration {
        match self.simulated {
            None => d,
            Some((_, _, speed)) => d.div_f64(speed),
        }
    }

    /// Returns once the clock reads `t` or later.
    pub async fn sleep_until(&self, t: DateTime<Utc>) {
        loop {
            let left = (t - self.now()).to_std().unwrap_or(Duration::ZERO);
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(self.real(left).min(MAX_NAP)).await;
        }
    }
}
