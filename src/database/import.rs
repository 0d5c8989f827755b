//! One import of a database source: its ranges, read by a few workers (at most the
//! database's `max_connections`) that share one consistent snapshot of the database.
//!
//! The first worker to hold a connection opens a REPEATABLE READ transaction, exports its
//! snapshot (`pg_export_snapshot()`) and starts reading ranges; every other worker opens its
//! transaction with that snapshot (`SET TRANSACTION SNAPSHOT`), so all ranges see the
//! database as of one instant, whatever commits meanwhile. The exporting transaction must
//! stay open while another imports its snapshot: when the ranges are all taken, the exporter
//! waits for imports under way, then closes the group (a worker arriving later finds no
//! range left and reads nothing). No connection is spent on coordination alone.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

/// The SQL of each range still to read, and how the snapshot is shared.
pub(crate) struct ImportGroup {
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// Ranges not yet taken (their SELECT statements).
    ranges: VecDeque<String>,
    /// Whether a worker is exporting (or has exported) the snapshot.
    claimed: bool,
    /// The exported snapshot, once there.
    snapshot: Option<String>,
    /// Why the exporter failed, for the workers waiting for its snapshot.
    failed: Option<String>,
    /// Workers importing the snapshot now.
    importing: usize,
    /// The exporter's transaction is ending: the snapshot cannot be imported any more.
    closed: bool,
}

/// What a worker is to do once it holds a connection.
pub(crate) enum Role {
    /// Export the snapshot ([`ImportGroup::exported`] once done), then read ranges.
    Export,
    /// Import this snapshot ([`ImportGroup::imported`] once done), then read ranges.
    Import(String),
    /// Nothing is left to read.
    Idle,
}

impl ImportGroup {
    /// A group that reads `ranges`.
    pub(crate) fn new(ranges: Vec<String>) -> ImportGroup {
        ImportGroup {
            state: Mutex::new(State {
                ranges: ranges.into(),
                ..State::default()
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The role of a worker that now holds a connection (waits while another exports).
    pub(crate) async fn role(&self) -> Result<Role, String> {
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.lock();
                if let Some(e) = &s.failed {
                    return Err(e.clone());
                }
                if s.closed || (s.ranges.is_empty() && s.claimed) {
                    return Ok(Role::Idle);
                }
                if !s.claimed {
                    s.claimed = true;
                    return Ok(Role::Export);
                }
                if let Some(id) = s.snapshot.clone() {
                    s.importing += 1;
                    return Ok(Role::Import(id));
                }
            }
            notified.await;
        }
    }

    /// The exporter's snapshot is `Ok(id)`, or its export failed.
    pub(crate) fn exported(&self, result: Result<String, String>) {
        let mut s = self.lock();
        match result {
            Ok(id) => s.snapshot = Some(id),
            Err(e) => s.failed = Some(e),
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// An importer is done importing (whether it succeeded or not).
    pub(crate) fn imported(&self) {
        let mut s = self.lock();
        s.importing = s.importing.saturating_sub(1);
        drop(s);
        self.changed.notify_waiters();
    }

    /// The next range to read, if any.
    pub(crate) fn next_range(&self) -> Option<String> {
        self.lock().ranges.pop_front()
    }

    /// The exporter has no range left: waits until no import is under way, and closes the
    /// group, after which its transaction may end.
    pub(crate) async fn close(&self) {
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.lock();
                if s.importing == 0 {
                    s.closed = true;
                    drop(s);
                    self.changed.notify_waiters();
                    return;
                }
            }
            notified.await;
        }
    }

    /// The exporter failed after exporting: workers stop taking ranges.
    pub(crate) fn fail(&self, e: String) {
        let mut s = self.lock();
        s.failed.get_or_insert(e);
        s.ranges.clear();
        drop(s);
        self.changed.notify_waiters();
    }
}

/// The conditions that split the rows of `column` between `lo` and `hi` into `n` ranges
/// (Spark's JDBC way): the first also takes NULLs and everything below, the last everything
/// above, so every row is in exactly one range whatever the bounds. One range (no
/// condition) when there is nothing to split. The column's values are numbered as whole
/// numbers (dates as days, timestamps as microseconds since 1970): `literal` writes a
/// boundary as a literal of the column's type, or fails the split.
pub(crate) fn ranges<E>(
    column: &str,
    lo: i128,
    hi: i128,
    n: usize,
    literal: impl Fn(i128) -> Result<String, E>,
) -> Result<Vec<Option<String>>, E> {
    // (Bounds so far apart that the arithmetic would overflow: one range.)
    let Some(span) = hi.checked_sub(lo).and_then(|s| s.checked_add(1)) else {
        return Ok(vec![None]);
    };
    let n = (n as i128).min(span.max(1));
    if n <= 1 {
        return Ok(vec![None]);
    }
    let Some(stride) = span.checked_add(n - 1).map(|s| s / n) else {
        return Ok(vec![None]);
    };
    let bounds = (1..n)
        .map(|i| lo + i * stride)
        .filter(|b| *b <= hi)
        .map(literal)
        .collect::<Result<Vec<String>, E>>()?;
    let mut out = Vec::new();
    for (i, b) in bounds.iter().enumerate() {
        match i {
            0 => out.push(Some(format!("{column} < {b} OR {column} IS NULL"))),
            _ => out.push(Some(format!(
                "{column} >= {} AND {column} < {b}",
                bounds[i - 1]
            ))),
        }
    }
    if let Some(last) = bounds.last() {
        out.push(Some(format!("{column} >= {last}")));
    }
    Ok(out)
}

/// Pages a PostgreSQL table has per range at least before it is read in several: smaller
/// tables are read at once (8 MiB a range).
pub(crate) const PAGES_PER_RANGE: i64 = 1024;

/// The conditions that split a PostgreSQL table of `pages` pages into `n` ranges of pages
/// (`ctid`, read by a TID range scan since PostgreSQL 14: each connection reads its pages,
/// not the table): the first from the start, the last to the end (pages added since it was
/// measured included), so every row version is in exactly one. One range (no condition)
/// for a table under [`PAGES_PER_RANGE`] pages a range.
pub(crate) fn page_ranges(pages: i64, n: usize) -> Vec<Option<String>> {
    let n = (n as i64).min(pages / PAGES_PER_RANGE);
    if n <= 1 {
        return vec![None];
    }
    let stride = (pages + n - 1) / n;
    let tid = |page: i64| format!("ctid >= '({page},0)'::tid");
    let below = |page: i64| format!("ctid < '({page},0)'::tid");
    (0..n)
        .map(|i| {
            let (lo, hi) = (i * stride, (i + 1) * stride);
            Some(match i {
                0 => below(hi),
                _ if i == n - 1 => tid(lo),
                _ => format!("{} AND {}", tid(lo), below(hi)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ranges`] of an integer column.
    fn int_ranges(column: &str, lo: i128, hi: i128, n: usize) -> Vec<Option<String>> {
        ranges(column, lo, hi, n, |v| Ok::<_, ()>(v.to_string())).unwrap()
    }

    #[test]
    fn page_ranges_cover_every_page_once() {
        assert_eq!(page_ranges(100, 4), vec![None]);
        assert_eq!(page_ranges(3 * PAGES_PER_RANGE - 1, 8).len(), 2);
        let r = page_ranges(4000, 3);
        assert_eq!(
            r,
            vec![
                Some("ctid < '(1334,0)'::tid".to_string()),
                Some("ctid >= '(1334,0)'::tid AND ctid < '(2668,0)'::tid".to_string()),
                Some("ctid >= '(2668,0)'::tid".to_string()),
            ]
        );
    }

    /// Which range a value falls in, by the conditions' own arithmetic.
    fn range_of(ranges: &[Option<String>], v: Option<i64>) -> Vec<usize> {
        ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                let Some(r) = r else { return true };
                r.split(" OR ").any(|alt| {
                    alt.split(" AND ").all(|c| {
                        let c = c.trim();
                        if c.ends_with("IS NULL") {
                            return v.is_none();
                        }
                        let Some(v) = v else { return false };
                        let parts: Vec<&str> = c.split(' ').collect();
                        let b: i128 = parts[2].parse().unwrap();
                        match parts[1] {
                            "<" => i128::from(v) < b,
                            ">=" => i128::from(v) >= b,
                            _ => unreachable!(),
                        }
                    })
                })
            })
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn every_value_is_in_exactly_one_range() {
        for (lo, hi, n) in [
            (1, 1000, 8),
            (1, 3, 8),
            (-5, 5, 2),
            (0, 0, 4),
            (i64::MIN, i64::MAX, 7),
            (10, 1, 3),
        ] {
            let ranges = int_ranges("\"id\"", lo.into(), hi.into(), n);
            assert!(ranges.len() <= n.max(1), "{lo}..{hi}/{n}: {ranges:?}");
            let mut values = vec![None, Some(i64::MIN), Some(i64::MAX), Some(0)];
            values.extend([lo, hi, lo.saturating_sub(1), hi.saturating_add(1)].map(Some));
            values.extend((0..50).map(|i| Some(lo.saturating_add(i * 37))));
            for v in values {
                assert_eq!(
                    range_of(&ranges, v).len(),
                    1,
                    "{lo}..{hi}/{n} {v:?}: {ranges:?}"
                );
            }
        }
        assert_eq!(int_ranges("c", 1, 1000, 8).len(), 8);
        // Unsigned 64-bit columns (MySQL's BIGINT UNSIGNED) beyond i64.
        let r = int_ranges("c", 0, i128::from(u64::MAX), 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r[3].as_deref(), Some("c >= 13835058055282163712"));
    }
}
