//! What keeps sluice from hurting a production database while it reads and loads, besides
//! the connection cap and read-only sessions: the replica-lag guard, the latency gate (a
//! probe query timed on a connection of its own; reads and loads pause while it is slow),
//! and a rate limit on rows; and the figures the run report gives per database
//! ([`crate::report::DatabaseReport`]).
//!
//! Readers and loads call [`Guard::gate`] before each range and after each batch of rows:
//! it waits while the gate is closed and while the rate limit says so. A reader that stops
//! asking for rows pauses the server's side too (TCP backpressure on the COPY).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{DatabaseError, Pool};
use crate::config::{DatabaseKind, Guards};

/// The latency gate: not yet measured, open, closed while the probe is slow, or failed.
#[derive(Debug, Clone, PartialEq)]
enum Gate {
    /// No probe has answered yet (none runs, or its first is under way): reads wait.
    Unknown,
    Open,
    /// Closed since then; the probe's last time.
    Closed {
        since: Instant,
        probe: Duration,
    },
    /// The probe failed, or the gate stayed closed past `max_pause`: readers fail with this.
    Failed(String),
}

/// A database's guards and what they saw in this run.
pub(crate) struct Guard {
    config: Guards,
    gate: tokio::sync::watch::Sender<Gate>,
    /// Readers and loads under way (the probe runs while there are some).
    active: AtomicUsize,
    probe_running: std::sync::Mutex<bool>,
    /// Since when the probe has been failing to run (a dropped connection), if it is.
    probe_broken: std::sync::Mutex<Option<Instant>>,
    bucket: std::sync::Mutex<Bucket>,
    stats: Stats,
}

/// Counters behind [`DatabaseReport`].
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) peak_connections: AtomicUsize,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) rows_read: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) rows_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) paused_ms: AtomicU64,
    pub(crate) pauses: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) max_probe_us: AtomicU64,
    pub(crate) throttled_ms: AtomicU64,
    pub(crate) lag_max_ms: AtomicU64,
    pub(crate) lag_waited_ms: AtomicU64,
    /// 0 unknown, 1 a primary, 2 a replica.
    replica: AtomicU64,
    server: std::sync::Mutex<Option<String>>,
}

/// A token bucket: `rate` rows a second, one second's worth at most saved up; a taker may
/// go into debt, and waits it off.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `n` tokens; how long to wait before going on.
    fn take(&mut self, n: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A reader or load under way: the latency probe runs while one exists.
pub(crate) struct Active {
    pool: Arc<Pool>,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.pool.guard.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A reader or load of `pool` starts: the latency probe starts with the first.
pub(crate) fn enter(pool: &Arc<Pool>) -> Active {
    let guard = &pool.guard;
    guard.active.fetch_add(1, Ordering::SeqCst);
    if guard.config.latency.is_some()
        && let Ok(mut running) = guard.probe_running.lock()
        && !*running
    {
        *running = true;
        tokio::spawn(probe(Arc::clone(pool)));
    }
    Active {
        pool: Arc::clone(pool),
    }
}

impl Guard {
    pub(crate) fn new(config: Guards) -> Guard {
        let bucket = Bucket {
            rate: config.max_rows_per_second.unwrap_or(1) as f64,
            tokens: config.max_rows_per_second.unwrap_or(1) as f64,
            at: Instant::now(),
        };
        Guard {
            config,
            gate: tokio::sync::watch::Sender::new(Gate::Unknown),
            active: AtomicUsize::new(0),
            probe_running: std::sync::Mutex::new(false),
            probe_broken: std::sync::Mutex::new(None),
            bucket: std::sync::Mutex::new(bucket),
            stats: Stats::default(),
        }
    }

    /// The counters readers and loads add to.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A connection was opened; `open` are open now.
    pub(crate) fn opened(&self, open: usize) {
        self.stats
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        self.stats
            .peak_connections
            .fetch_max(open, Ordering::Relaxed);
    }

    /// The server's version, as it says it.
    pub(crate) fn set_server(&self, version: &str) {
        if let Ok(mut s) = self.stats.server.lock() {
            s.get_or_insert_with(|| version.to_string());
        }
    }

    /// Waits while the latency gate is closed (failing once it stays closed past
    /// `max_pause`), then while `rows` just read or written put the database over
    /// `max_rows_per_second`.
    pub(crate) async fn gate(&self, pool: &Pool, rows: u64) -> Result<(), DatabaseError> {
        if self.config.latency.is_some() {
            let mut rx = self.gate.subscribe();
            loop {
                let state = rx.borrow_and_update().clone();
                match state {
                    Gate::Open => break,
                    Gate::Failed(why) => return Err(pool.error(why, false)),
                    Gate::Unknown | Gate::Closed { .. } => {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        if rows > 0 && self.config.max_rows_per_second.is_some() {
            let wait = match self.bucket.lock() {
                Ok(mut b) => b.take(rows, Instant::now()),
                Err(_) => Duration::ZERO,
            };
            if !wait.is_zero() {
                self.stats
                    .throttled_ms
                    .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    /// Before a read starts on `conn`: waits while the database is a replica further
    /// behind its primary than `max_replica_lag`, at most `lag_wait`, then fails.
    pub(crate) async fn check_lag(
        &self,
        pool: &Pool,
        mut conn: LagConn<'_>,
    ) -> Result<(), DatabaseError> {
        let Some(max) = self.config.max_replica_lag else {
            return Ok(());
        };
        let started = Instant::now();
        loop {
            let lag = match &mut conn {
                LagConn::Postgres(client) => pg_lag(pool, client).await?,
                LagConn::Mysql(conn) => mysql_lag(pool, conn).await?,
            };
            let Some(lag) = lag else {
                self.stats.replica.store(1, Ordering::Relaxed);
                return Ok(());
            };
            self.stats.replica.store(2, Ordering::Relaxed);
            if lag != UNKNOWN_LAG {
                self.stats
                    .lag_max_ms
                    .fetch_max(lag.as_millis() as u64, Ordering::Relaxed);
            }
            let waited = started.elapsed();
            if lag <= max {
                self.stats
                    .lag_waited_ms
                    .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
                return Ok(());
            }
            if waited >= self.config.lag_wait {
                self.stats
                    .lag_waited_ms
                    .fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
                return Err(pool.error(
                    format!(
                        "replica lag {} over max_replica_lag {} after waiting {}: the replica \
                         is too far behind its primary to read from now",
                        show_lag(lag),
                        show(max),
                        show(waited),
                    ),
                    true,
                ));
            }
            tracing::warn!(
                "database '{}': replica lag {} over max_replica_lag {}: waiting",
                pool.config.name,
                show_lag(lag),
                show(max)
            );
            let left = self.config.lag_wait.saturating_sub(waited);
            tokio::time::sleep(left.min(LAG_RECHECK)).await;
        }
    }

    /// What a reading of `stats` gives: peak connections, rows, pauses, lag.
    pub(crate) fn replica(&self) -> Option<bool> {
        match self.stats.replica.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => None,
        }
    }

    /// The server's version, if a connection said it.
    pub(crate) fn server(&self) -> Option<String> {
        self.stats.server.lock().ok().and_then(|v| v.clone())
    }
}

/// The connection a read's replica lag is measured on.
pub(crate) enum LagConn<'a> {
    Postgres(&'a tokio_postgres::Client),
    Mysql(&'a mut mysql_async::Conn),
}

/// The lag of a replica that has replayed nothing yet, or whose replication is stopped:
/// over any limit.
const UNKNOWN_LAG: Duration = Duration::MAX;

/// A lag as messages show it.
fn show_lag(lag: Duration) -> String {
    if lag == UNKNOWN_LAG {
        "unknown (the replica has replayed nothing yet, or its replication is stopped)".into()
    } else {
        show(lag)
    }
}

/// How often the lag is looked at again while it is over the limit.
const LAG_RECHECK: Duration = Duration::from_secs(2);

/// A duration as messages show it: `850ms`, `12.5s`, `7m12s`.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", d.as_secs_f64()),
        _ => format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// A PostgreSQL database's lag behind its primary; `None` when it is not a replica. A
/// replica that streams and has replayed everything it received has no lag, however old its
/// last transaction; one that does not stream (its primary is gone, or the role may not see
/// `pg_stat_wal_receiver`) is measured by its last replayed transaction.
async fn pg_lag(
    pool: &Pool,
    client: &tokio_postgres::Client,
) -> Result<Option<Duration>, DatabaseError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() THEN NULL \
             WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() AND EXISTS (SELECT 1 \
             FROM pg_stat_wal_receiver WHERE status = 'streaming') THEN 0 \
             ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 \
             END",
            &[],
        )
        .await
        .map_err(|e| super::postgres::server_error(pool, &e, "checking the replica lag"))?;
    let replica: bool = row.get(0);
    if !replica {
        return Ok(None);
    }
    // (No transaction replayed yet: the lag is unknown.)
    let secs: Option<f64> = row.get(1);
    Ok(Some(secs.map_or(UNKNOWN_LAG, |s| {
        Duration::from_secs_f64(s.clamp(0.0, 1e12))
    })))
}

/// A MySQL or MariaDB database's lag behind its source, as `SHOW REPLICA STATUS` gives it
/// (`Seconds_Behind_Source`, or `Seconds_Behind_Master` before MySQL 8.0.22 and on
/// MariaDB); `None` when it is not a replica. A replica whose replication threads are not
/// running shows no lag (NULL): the lag is unknown, taken as over any limit.
async fn mysql_lag(
    pool: &Pool,
    conn: &mut mysql_async::Conn,
) -> Result<Option<Duration>, DatabaseError> {
    use mysql_async::prelude::Queryable;
    let doing = "checking the replica lag (SHOW REPLICA STATUS; the user needs the \
                 REPLICATION CLIENT privilege, or REPLICA MONITOR on MariaDB)";
    let rows: Vec<mysql_async::Row> = match conn.query("SHOW REPLICA STATUS").await {
        Ok(rows) => rows,
        // (A syntax error: a server older than MySQL 8.0.22 or MariaDB 10.5.1.)
        Err(mysql_async::Error::Server(e)) if e.code == 1064 => conn
            .query("SHOW SLAVE STATUS")
            .await
            .map_err(|e| super::mysql::server_error(pool, &e, doing))?,
        Err(e) => return Err(super::mysql::server_error(pool, &e, doing)),
    };
    let mut lag: Option<Duration> = None;
    for row in &rows {
        let columns = row.columns_ref();
        let at = columns.iter().position(|c| {
            matches!(
                c.name_str().as_ref(),
                "Seconds_Behind_Source" | "Seconds_Behind_Master"
            )
        });
        let secs = at.and_then(|i| match row.as_ref(i) {
            Some(mysql_async::Value::Int(n)) => u64::try_from(*n).ok(),
            Some(mysql_async::Value::UInt(n)) => Some(*n),
            Some(mysql_async::Value::Bytes(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        });
        let this = secs.map_or(UNKNOWN_LAG, Duration::from_secs);
        lag = Some(lag.map_or(this, |l| l.max(this)));
    }
    Ok(lag)
}

/// The latency probe: on a connection of its own (one of the pool's), times the probe
/// query every `probe_interval` while reads or loads are under way, and opens and closes
/// the gate.
async fn probe(pool: Arc<Pool>) {
    let guard = &pool.guard;
    let Some(latency) = guard.config.latency.clone() else {
        return;
    };
    loop {
        probe_while_active(&pool, &latency).await;
        // Stopped unless a reader came meanwhile (it found the probe running).
        if let Ok(mut running) = guard.probe_running.lock() {
            if guard.active.load(Ordering::SeqCst) == 0
                || matches!(*guard.gate.borrow(), Gate::Failed(_))
            {
                *running = false;
                return;
            }
        } else {
            return;
        }
    }
}

/// Probes while reads or loads are under way.
async fn probe_while_active(pool: &Arc<Pool>, latency: &crate::config::LatencyGuard) {
    let guard = &pool.guard;
    let fail = |why: String| {
        guard.gate.send_replace(Gate::Failed(why));
    };
    let opened = match pool.config.url.kind {
        DatabaseKind::Postgres => super::postgres::connect_for(pool, super::Purpose::Probe)
            .await
            .map(ProbeSession::Pg),
        DatabaseKind::Mysql => super::mysql::connect_for(pool, super::Purpose::Probe)
            .await
            .map(ProbeSession::My),
    };
    let mut session = match opened {
        Ok(s) => s,
        Err(e) if e.transient => {
            broken(
                pool,
                latency,
                &format!("opening its connection: {}", e.message),
            )
            .await;
            return;
        }
        Err(e) => {
            fail(format!(
                "opening the latency probe's connection: {}",
                e.message
            ));
            return;
        }
    };
    let hold = ProbeHold(Arc::clone(pool));
    let mut dropped = None;
    while guard.active.load(Ordering::SeqCst) > 0 {
        let started = Instant::now();
        let doing = "running the latency probe";
        let probe = async {
            match &mut session {
                ProbeSession::Pg(s) => s
                    .client()
                    .simple_query(&latency.probe)
                    .await
                    .map(|_| ())
                    .map_err(|e| super::postgres::server_error(pool, &e, doing)),
                ProbeSession::My(s) => {
                    use mysql_async::prelude::Queryable;
                    s.conn()
                        .query_drop(&latency.probe)
                        .await
                        .map_err(|e| super::mysql::server_error(pool, &e, doing))
                }
            }
        };
        tokio::pin!(probe);
        let ran = match tokio::time::timeout(latency.over, &mut probe).await {
            Ok(ran) => ran,
            Err(_) => {
                // Slow already: the gate closes while the probe still runs, and a probe
                // that does not come back at all stops the reads after max_pause.
                let since = close(pool, latency, started, None);
                let left = latency.max_pause.saturating_sub(since.elapsed());
                match tokio::time::timeout(left, &mut probe).await {
                    Ok(ran) => ran,
                    Err(_) => {
                        fail(format!(
                            "latency stayed over {} for {} (probe `{}` still running after \
                             {}): stopped (max_pause)",
                            show(latency.over),
                            show(latency.max_pause),
                            latency.probe,
                            show(started.elapsed())
                        ));
                        return;
                    }
                }
            }
        };
        let took = started.elapsed();
        match ran {
            // (A dropped connection, a server restarting: the probe connects again.)
            Err(e) if e.transient => {
                dropped = Some(e.message);
                break;
            }
            Err(e) => {
                fail(format!("{} (probe `{}`)", e.message, latency.probe));
                return;
            }
            Ok(()) => {
                if let Ok(mut b) = guard.probe_broken.lock() {
                    *b = None;
                }
            }
        }
        guard.stats.probes.fetch_add(1, Ordering::Relaxed);
        guard
            .stats
            .max_probe_us
            .fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let state = guard.gate.borrow().clone();
        match (state, took > latency.over) {
            (Gate::Unknown | Gate::Open, true) => {
                close(pool, latency, started, Some(took));
            }
            (Gate::Closed { since, .. }, true) => {
                if now.duration_since(since) > latency.max_pause {
                    guard.stats.paused_ms.fetch_add(
                        now.duration_since(since).as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    fail(format!(
                        "latency stayed over {} for {} (probe `{}` took {} ms): stopped \
                         (max_pause)",
                        show(latency.over),
                        show(latency.max_pause),
                        latency.probe,
                        took.as_millis()
                    ));
                    return;
                }
                guard.gate.send_replace(Gate::Closed { since, probe: took });
            }
            (Gate::Closed { since, .. }, false) => {
                let paused = now.duration_since(since);
                guard
                    .stats
                    .paused_ms
                    .fetch_add(paused.as_millis() as u64, Ordering::Relaxed);
                tracing::info!(
                    "database '{}': latency back under {} (probe {} ms): resuming after {} ms",
                    pool.config.name,
                    show(latency.over),
                    took.as_millis(),
                    paused.as_millis()
                );
                guard.gate.send_replace(Gate::Open);
            }
            (Gate::Unknown, false) => {
                guard.gate.send_replace(Gate::Open);
            }
            _ => {}
        }
        tokio::time::sleep(latency.interval).await;
    }
    if let Some(why) = dropped {
        drop(session);
        drop(hold);
        broken(pool, latency, &why).await;
        return;
    }
    // Nothing under way: the gate waits for the next probe (a closed one is counted), the
    // connection goes back.
    if let Gate::Closed { since, .. } = guard.gate.borrow().clone() {
        guard
            .stats
            .paused_ms
            .fetch_add(since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    guard.gate.send_replace(Gate::Unknown);
    match session {
        ProbeSession::Pg(s) => s.park().await,
        ProbeSession::My(s) => s.park().await,
    }
}

/// The probe's connection holds one of the pool's; handed back (or dropped), reads may
/// count it again.
struct ProbeHold(Arc<Pool>);

impl Drop for ProbeHold {
    fn drop(&mut self) {
        self.0.probe_released();
    }
}

/// The probe could not run (its connection dropped, or could not be opened): reads wait
/// (the latency is not known) while it connects again, every `probe_interval`; once it has
/// been failing for `max_pause`, the run fails.
async fn broken(pool: &Pool, latency: &crate::config::LatencyGuard, why: &str) {
    let guard = &pool.guard;
    let since = match guard.probe_broken.lock() {
        Ok(mut b) => *b.get_or_insert_with(Instant::now),
        Err(_) => Instant::now(),
    };
    if since.elapsed() >= latency.max_pause {
        guard.gate.send_replace(Gate::Failed(format!(
            "the latency probe could not run for {} (max_pause): {why} (probe `{}`)",
            show(since.elapsed()),
            latency.probe
        )));
        return;
    }
    tracing::warn!(
        "database '{}': the latency probe failed ({why}): reads wait while it connects again",
        pool.config.name
    );
    if !matches!(*guard.gate.borrow(), Gate::Closed { .. }) {
        guard.gate.send_replace(Gate::Unknown);
    }
    tokio::time::sleep(latency.interval).await;
}

/// Closes the gate (if it is not closed already) because a probe started at `started` is
/// slow (`took`: how slow, when it has answered); returns since when it is closed.
fn close(
    pool: &Pool,
    latency: &crate::config::LatencyGuard,
    started: Instant,
    took: Option<Duration>,
) -> Instant {
    let guard = &pool.guard;
    if let Gate::Closed { since, .. } = &*guard.gate.borrow() {
        return *since;
    }
    tracing::warn!(
        "database '{}': latency over {} (probe `{}` {}): pausing reads and loads",
        pool.config.name,
        show(latency.over),
        latency.probe,
        match took {
            Some(t) => format!("took {} ms", t.as_millis()),
            None => format!("still running after {}", show(latency.over)),
        }
    );
    guard.stats.pauses.fetch_add(1, Ordering::Relaxed);
    guard.gate.send_replace(Gate::Closed {
        since: started,
        probe: took.unwrap_or(latency.over),
    });
    started
}

/// The latency probe's connection.
enum ProbeSession {
    Pg(super::postgres::Session),
    My(super::mysql::Session),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_lets_rate_rows_a_second_through() {
        let t0 = Instant::now();
        let mut b = Bucket {
            rate: 1000.0,
            tokens: 1000.0,
            at: t0,
        };
        // A second's worth at once, then debt waited off at the rate.
        assert_eq!(b.take(1000, t0), Duration::ZERO);
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        // Half a second later the debt is paid: the next 250 wait 250 ms.
        let later = t0 + Duration::from_millis(500);
        let w = b.take(250, later);
        assert!((w.as_secs_f64() - 0.25).abs() < 1e-9, "{w:?}");
        // Idle for long: no more than a second's worth is saved up.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(b.take(750, much_later), Duration::ZERO);
        assert_eq!(b.take(500, much_later), Duration::from_millis(250));
    }
}
