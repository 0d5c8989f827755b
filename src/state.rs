//! The state store: an embedded SQLite database (`settings.state`, default
//! `.sluice/state.db`) that is the pipeline's run ledger and holds its run lock.
//!
//! Tables: `runs` (one row a run), `models` (one row a model of a run), `units` (one row a
//! work unit of a model: its attempts, rows, timings, files, error), `checks` (one row a
//! check of a model of a run: its status and failing rows), and `lock` (at most one row: the
//! run that holds the pipeline, with [`RunLock`] as its guard). The schema is versioned in `meta`, so later
//! versions can add tables (watermarks, late-arrival counts) with migrations. Two tables are
//! caches, keyed by input file version (path, size, modification time, etag): `file_periods`
//! (the rows per period of each file, [`StateStore::file_periods`]) and `file_schemas` (the
//! schema each source file was read with, [`StateStore::file_schemas`]).
//!
//! The lock makes runs of one pipeline never overlap. It records the holder's pid, the
//! pid's start time (so a recycled pid is not mistaken for the holder) and host, and a
//! heartbeat. A lock whose holder is gone (same host: the process no longer exists; another
//! host: no heartbeat for [`STALE_AFTER`]) is taken over, with a warning.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::engine::FileVersion;
use crate::report::{ModelReport, RunReport};
use crate::status::{RunStatus, UnitStatus};

/// A lock whose holder has not written a heartbeat for this long is stale (other hosts).
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// How often a running process refreshes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);

/// The schema version this build writes.
const SCHEMA_VERSION: i64 = 1;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened, read or written.
    #[error("state store {path}: {message}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// SQLite's message.
        message: String,
    },
    /// Another run of the pipeline holds the lock.
    #[error(
        "pipeline '{pipeline}' is already running: run {run_id} (pid {pid} on {host}, since {since}); \
         wait for it to finish, or stop it"
    )]
    Locked {
        /// The pipeline.
        pipeline: String,
        /// The holder's run.
        run_id: String,
        /// The holder's process id.
        pid: i64,
        /// The holder's host.
        host: String,
        /// When it took the lock.
        since: String,
    },
}

/// The identity of this process, as the lock records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Process id.
    pub pid: i64,
    /// The process's start time (from /proc), to tell a recycled pid apart.
    pub start: Option<String>,
    /// Host name.
    pub host: String,
}

impl Holder {
    /// This process.
    pub fn current() -> Holder {
        let pid = i64::from(std::process::id());
        Holder {
            pid,
            start: process_start(pid),
            host: hostname(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

/// The start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), or
/// `None` if there is no such process (or no /proc).
fn process_start(pid: i64) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().nth(19).map(str::to_string)
}

/// A pipeline's lock while a run holds it: released when the guard is dropped, whichever way
/// the run ends (an error, a panic unwinding, a cancelled future).
#[derive(Debug)]
pub struct RunLock {
    state: Arc<StateStore>,
    run_id: String,
    /// The OS lock on `<state>.lock`, held as long as the run.
    _os: crate::flock::Flock,
}

impl RunLock {
    /// Takes the lock of `pipeline` for `run_id` (see [`StateStore::acquire`]). Returns the
    /// guard, and the run id of a stale lock taken over, if any.
    pub fn take(
        state: &Arc<StateStore>,
        pipeline: &str,
        run_id: &str,
        me: &Holder,
        now: &str,
    ) -> Result<(RunLock, Option<String>), StateError> {
        // First the OS lock: among processes of one machine (containers with their own PID
        // namespaces, and systems without /proc, included) it alone decides, and the kernel
        // releases it when its holder dies. The database row then says who holds the run,
        // and decides among machines sharing the state file (by heartbeat).
        let path = state.path.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StateError::Db {
                path: path.clone(),
                message: format!("cannot open the run lock: {e}"),
            })?;
        let os = crate::flock::Flock::try_take(file).map_err(|e| StateError::Db {
            path: path.clone(),
            message: format!("cannot take the run lock: {e}"),
        })?;
        let Some(os) = os else {
            return Err(state.held_by_another(pipeline)?);
        };
        let taken_over = state.acquire_with(pipeline, run_id, me, now, true)?;
        let lock = RunLock {
            state: Arc::clone(state),
            run_id: run_id.to_string(),
            _os: os,
        };
        Ok((lock, taken_over))
    }

    /// Moves the lock to another run id: the run being resumed.
    pub fn move_to(&mut self, run_id: &str) -> Result<(), StateError> {
        self.state.relock(&self.run_id, run_id)?;
        self.run_id = run_id.to_string();
        Ok(())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Err(e) = self.state.release(&self.run_id) {
            tracing::warn!("cannot release the lock: {e}");
        }
    }
}

/// One work unit as the state store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitRecord {
    /// The unit's name (its period, or `all`).
    pub unit: String,
    /// `running`, `done`, `retrying` or `failed`.
    pub status: UnitStatus,
    /// Attempts so far.
    pub attempts: u32,
    /// Rows its scans read.
    pub rows_in: u64,
    /// Rows it wrote.
    pub rows_out: u64,
    /// When its last attempt started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Wall time of its last attempt.
    pub elapsed_ms: u64,
    /// Peak memory reserved in the pool while it ran.
    pub peak_memory: u64,
    /// Bytes its operators spilled.
    pub spilled_bytes: u64,
    /// The files it staged.
    pub files: Vec<crate::table::StagedFile>,
    /// Why its last attempt failed.
    pub error: Option<String>,
    /// What it read, as a hash of its input files' versions (path, size, modification
    /// time, etag) and of the upstream outputs' versions: a resumed run keeps the unit only
    /// if its inputs are still these.
    pub inputs: String,
}

/// When a pipeline, and each of its models, last succeeded: the end of the run, RFC 3339.
#[derive(Debug, Clone, Default)]
pub struct LastSuccess {
    /// The last run in which every model succeeded.
    pub pipeline: Option<String>,
    /// Per model, the last run in which it succeeded.
    pub models: std::collections::BTreeMap<String, String>,
}

/// One row of the run ledger, as `sluice runs` prints it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RunRow {
    /// The run id.
    pub run_id: String,
    /// The pipeline.
    pub pipeline: String,
    /// Start time.
    pub started_at: String,
    /// End time, if finished.
    pub finished_at: Option<String>,
    /// `running`, `success`, `failed`, or `interrupted` (its process died).
    pub status: RunStatus,
    /// Rows read by its models.
    pub rows_in: i64,
    /// Rows written.
    pub rows_out: i64,
    /// Rows rejected.
    pub rows_rejected: i64,
    /// Models that succeeded / were run.
    pub models_ok: i64,
    /// Models in the run.
    pub models_total: i64,
    /// Why it failed, if it did before any model ran.
    pub error: Option<String>,
    /// What it was asked to do: `run`, `reconcile`, `backfill`...
    pub kind: String,
    /// Late rows its incremental models applied inside the window, if it ran any.
    pub late_in_window: Option<i64>,
    /// Late rows its incremental models found beyond the window.
    pub late_beyond_window: Option<i64>,
}

/// The state store of one pipeline.
pub struct StateStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

impl StateStore {
    /// Opens (creating if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<StateStore, StateError> {
        let err = |e: &dyn std::fmt::Display| StateError::Db {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let conn = Connection::open(path).map_err(|e| err(&e))?;
        // WAL lets `sluice runs` read while a run writes; the busy timeout lets two processes
        // take turns instead of failing on a locked database.
        let busy = Duration::from_secs(10);
        conn.busy_timeout(busy).map_err(|e| err(&e))?;
        // Switching a new database to WAL needs it alone, and SQLite answers "locked" at once,
        // without waiting out the busy timeout, while another process opens it too (two
        // schedulers started together): that one switch is retried for as long.
        let deadline = std::time::Instant::now() + busy;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Ok(()) => break,
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(err(&e)),
            }
        }
        // In WAL mode, NORMAL survives a killed process (the guarantee resume relies on) and
        // skips an fsync per commit; only a power loss can drop the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| err(&e))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS runs (
                 run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, started_at TEXT NOT NULL,
                 finished_at TEXT, status TEXT NOT NULL, selection TEXT NOT NULL DEFAULT '',
                 vars TEXT NOT NULL DEFAULT '', fingerprint TEXT NOT NULL DEFAULT '',
                 pid INTEGER, host TEXT, error TEXT, as_of TEXT,
                 kind TEXT NOT NULL DEFAULT 'run');
             CREATE TABLE IF NOT EXISTS models (
                 run_id TEXT NOT NULL, model TEXT NOT NULL, status TEXT NOT NULL,
                 materialized TEXT NOT NULL, rows_in INTEGER NOT NULL DEFAULT 0,
                 rows_out INTEGER NOT NULL DEFAULT 0, rows_rejected INTEGER NOT NULL DEFAULT 0,
                 units_total INTEGER NOT NULL DEFAULT 0, units_done INTEGER NOT NULL DEFAULT 0,
                 elapsed_ms INTEGER NOT NULL DEFAULT 0, spilled_bytes INTEGER NOT NULL DEFAULT 0,
                 outputs TEXT NOT NULL DEFAULT '[]', error TEXT,
                 PRIMARY KEY (run_id, model));
             CREATE TABLE IF NOT EXISTS units (
                 run_id TEXT NOT NULL, model TEXT NOT NULL, unit TEXT NOT NULL,
                 status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
                 rows_in INTEGER NOT NULL DEFAULT 0, rows_out INTEGER NOT NULL DEFAULT 0,
                 started_at TEXT, finished_at TEXT, elapsed_ms INTEGER NOT NULL DEFAULT 0,
                 peak_memory INTEGER NOT NULL DEFAULT 0, spilled_bytes INTEGER NOT NULL DEFAULT 0,
                 files TEXT NOT NULL DEFAULT '[]', error TEXT, inputs TEXT NOT NULL DEFAULT '',
                 PRIMARY KEY (run_id, model, unit));
             CREATE TABLE IF NOT EXISTS checks (
                 run_id TEXT NOT NULL, model TEXT NOT NULL, position INTEGER NOT NULL,
                 name TEXT NOT NULL, severity TEXT NOT NULL, status TEXT NOT NULL,
                 failing_rows INTEGER NOT NULL DEFAULT 0, message TEXT,
                 PRIMARY KEY (run_id, model, position));
             CREATE TABLE IF NOT EXISTS lock (
                 id INTEGER PRIMARY KEY CHECK (id = 1), run_id TEXT NOT NULL,
                 pid INTEGER NOT NULL, pid_start TEXT, host TEXT NOT NULL,
                 acquired_at TEXT NOT NULL, heartbeat_at TEXT NOT NULL);",
        )
        .map_err(|e| err(&e))?;
        // A database from before units recorded their inputs: add the column (empty: such a
        // unit is never kept, as its inputs are unknown). Another process opening it at the
        // same moment may add it first: then it is there.
        let has_inputs = |c: &Connection| c.prepare("SELECT inputs FROM units LIMIT 0").is_ok();
        if !has_inputs(&conn)
            && let Err(e) =
                conn.execute_batch("ALTER TABLE units ADD COLUMN inputs TEXT NOT NULL DEFAULT ''")
            && !has_inputs(&conn)
        {
            return Err(err(&e));
        }
        // Incremental models (additive: builds before them ignore these).
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS late_counted (
                 model TEXT NOT NULL, period TEXT NOT NULL, source TEXT NOT NULL,
                 path TEXT NOT NULL, size INTEGER NOT NULL, modified TEXT NOT NULL,
                 etag TEXT NOT NULL DEFAULT '', rows INTEGER NOT NULL, run_id TEXT NOT NULL,
                 PRIMARY KEY (model, period, source, path, size, modified, etag));
             CREATE TABLE IF NOT EXISTS late (
                 run_id TEXT NOT NULL, model TEXT NOT NULL, source TEXT NOT NULL,
                 rows_on_time INTEGER NOT NULL DEFAULT 0,
                 rows_late_in_window INTEGER NOT NULL DEFAULT 0,
                 rows_late_beyond_window INTEGER NOT NULL DEFAULT 0,
                 rows_deleted INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (run_id, model, source));",
        )
        .map_err(|e| err(&e))?;
        // A cache of the periods each input file version holds (see [`FilePeriodsKey`]).
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS file_periods (
                 source TEXT NOT NULL, spec TEXT NOT NULL, grid TEXT NOT NULL,
                 path TEXT NOT NULL, size INTEGER NOT NULL, modified TEXT NOT NULL,
                 etag TEXT NOT NULL DEFAULT '', periods TEXT NOT NULL,
                 first_seen_at TEXT NOT NULL,
                 PRIMARY KEY (source, spec, grid, path, size, modified, etag));",
        )
        .map_err(|e| err(&e))?;
        // The last time `sluice schedule` started (or chose to skip) a scheduled run of each
        // pipeline: what it had missed while down is counted from there.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schedule (
                 pipeline TEXT PRIMARY KEY, last_fire TEXT NOT NULL);",
        )
        .map_err(|e| err(&e))?;
        // A cache of the schema each source file version was read with (see
        // [`StateStore::file_schemas`]): one version per path, the last read.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS file_schemas (
                 source TEXT NOT NULL, spec TEXT NOT NULL, path TEXT NOT NULL,
                 size INTEGER NOT NULL, modified TEXT NOT NULL, etag TEXT NOT NULL DEFAULT '',
                 schema BLOB NOT NULL, read_at TEXT NOT NULL,
                 PRIMARY KEY (source, spec, path));",
        )
        .map_err(|e| err(&e))?;
        // A database from before incremental models: add the run's clock and kind. Another
        // process opening it at the same moment may add them first: then they are there.
        for (column, ddl) in [
            ("as_of", "ALTER TABLE runs ADD COLUMN as_of TEXT"),
            (
                "kind",
                "ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'run'",
            ),
        ] {
            let has = |c: &Connection| {
                c.prepare(&format!("SELECT {column} FROM runs LIMIT 0"))
                    .is_ok()
            };
            if !has(&conn) && conn.execute_batch(ddl).is_err() && !has(&conn) {
                return Err(err(&format!("cannot add column runs.{column}")));
            }
        }
        let version: Option<i64> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| err(&e))?
            .and_then(|v| v.parse().ok());
        match version {
            None => {
                // Two processes may create the database at once: the second insert is a no-op.
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(|e| err(&e))?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(err(&format!(
                    "written by a newer sluice (schema version {v}, this build knows {SCHEMA_VERSION})"
                )));
            }
            Some(_) => {}
        }
        Ok(StateStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Opens the state database at `path` if there is one (for commands that only read it:
    /// they create none).
    pub fn open_existing(path: &Path) -> Result<Option<StateStore>, StateError> {
        path.exists().then(|| StateStore::open(path)).transpose()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        // A poisoned mutex means a panic mid-call; SQLite's own transaction keeps the file
        // consistent, so the connection is still usable.
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut conn).map_err(|e| StateError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// Takes the pipeline's lock for `run_id`, or says who holds it. A stale lock (its
    /// holder died) is taken over; the run it belonged to is marked `interrupted`. Returns
    /// the run id of a taken-over lock, if any.
    pub fn acquire(
        &self,
        pipeline: &str,
        run_id: &str,
        me: &Holder,
        now: &str,
    ) -> Result<Option<String>, StateError> {
        self.acquire_with(pipeline, run_id, me, now, false)
    }

    /// [`StateStore::acquire`]; with `os_locked` (this process holds the OS run lock), a
    /// holder recorded on this host is known to be gone, whatever its pid shows.
    fn acquire_with(
        &self,
        pipeline: &str,
        run_id: &str,
        me: &Holder,
        now: &str,
        os_locked: bool,
    ) -> Result<Option<String>, StateError> {
        self.with(|conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held: Option<(String, i64, Option<String>, String, String, String)> = tx
                .query_row(
                    "SELECT run_id, pid, pid_start, host, acquired_at, heartbeat_at FROM lock WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )
                .optional()?;
            let mut taken_over = None;
            if let Some((held_run, pid, pid_start, host, since, heartbeat)) = held {
                let same_host_gone = os_locked && host == me.host;
                if !same_host_gone
                    && holder_alive(pid, pid_start.as_deref(), &host, &heartbeat, me)
                {
                    return Ok(Err((held_run, pid, host, since)));
                }
                tx.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = COALESCE(finished_at, ?2)
                     WHERE run_id = ?1 AND status = 'running'",
                    params![held_run, now],
                )?;
                taken_over = Some(held_run);
            }
            tx.execute(
                "INSERT OR REPLACE INTO lock (id, run_id, pid, pid_start, host, acquired_at, heartbeat_at)
                 VALUES (1, ?1, ?2, ?3, ?4, ?5, ?5)",
                params![run_id, me.pid, me.start, me.host, now],
            )?;
            tx.commit()?;
            Ok(Ok(taken_over))
        })?
        .map_err(|(run_id, pid, host, since)| StateError::Locked {
            pipeline: pipeline.to_string(),
            run_id,
            pid,
            host,
            since,
        })
    }

    /// The error for a run lock another process holds: who, as the lock row says.
    fn held_by_another(&self, pipeline: &str) -> Result<StateError, StateError> {
        let held: Option<(String, i64, String, String)> = self.with(|c| {
            c.query_row(
                "SELECT run_id, pid, host, acquired_at FROM lock WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        let (run_id, pid, host, since) =
            held.unwrap_or_else(|| ("(starting)".into(), 0, "this host".into(), "now".into()));
        Ok(StateError::Locked {
            pipeline: pipeline.to_string(),
            run_id,
            pid,
            host,
            since,
        })
    }

    /// Refreshes the heartbeat of `run_id`'s lock.
    pub fn heartbeat(&self, run_id: &str, now: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE lock SET heartbeat_at = ?2 WHERE id = 1 AND run_id = ?1",
                params![run_id, now],
            )
            .map(|_| ())
        })
    }

    /// Releases `run_id`'s lock (a no-op if it does not hold it).
    pub fn release(&self, run_id: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM lock WHERE id = 1 AND run_id = ?1",
                params![run_id],
            )
            .map(|_| ())
        })
    }

    /// Records the start of a run. `fingerprint` identifies what it runs (selection, vars,
    /// SQL, sinks), so only a run of the same work is resumed. A resumed run keeps its row
    /// (and its start time) and is marked running again.
    #[allow(clippy::too_many_arguments)]
    pub fn start_run(
        &self,
        run_id: &str,
        pipeline: &str,
        started_at: &str,
        selection: &str,
        vars: &str,
        fingerprint: &str,
        me: &Holder,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO runs (run_id, pipeline, started_at, status, selection, vars, fingerprint, pid, host)
                 VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL,
                     error = NULL, pid = ?7, host = ?8",
                params![run_id, pipeline, started_at, selection, vars, fingerprint, me.pid, me.host],
            )
            .map(|_| ())
        })
    }

    /// The most recent run of `pipeline` that did not finish (interrupted or failed) and did
    /// the same work (`fingerprint`): the run a new run resumes.
    pub fn resumable_run(
        &self,
        pipeline: &str,
        fingerprint: &str,
    ) -> Result<Option<String>, StateError> {
        let Some(run_id) = self.last_unfinished_run(pipeline)? else {
            return Ok(None);
        };
        let fp: String = self.with(|c| {
            c.query_row(
                "SELECT fingerprint FROM runs WHERE run_id = ?1",
                params![run_id],
                |r| r.get(0),
            )
        })?;
        Ok((fp == fingerprint && !fp.is_empty()).then_some(run_id))
    }

    /// Moves the lock to another run id (the run being resumed).
    pub fn relock(&self, from: &str, to: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE lock SET run_id = ?2 WHERE id = 1 AND run_id = ?1",
                params![from, to],
            )
            .map(|_| ())
        })
    }

    /// Records a unit's state (an attempt started, finished or failed).
    pub fn record_unit(&self, run_id: &str, model: &str, u: &UnitRecord) -> Result<(), StateError> {
        let files = serde_json::to_string(&u.files).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO units (run_id, model, unit, status, attempts, rows_in, rows_out,
                     started_at, finished_at, elapsed_ms, peak_memory, spilled_bytes, files, error,
                     inputs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    run_id,
                    model,
                    u.unit,
                    u.status.as_str(),
                    u.attempts,
                    u.rows_in as i64,
                    u.rows_out as i64,
                    u.started_at,
                    u.finished_at,
                    u.elapsed_ms as i64,
                    u.peak_memory as i64,
                    u.spilled_bytes as i64,
                    files,
                    u.error,
                    u.inputs
                ],
            )
            .map(|_| ())
        })
    }

    /// The units of `model` that `run_id` committed (status `done`), with what they staged.
    pub fn done_units(&self, run_id: &str, model: &str) -> Result<Vec<UnitRecord>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT unit, status, attempts, rows_in, rows_out, started_at, finished_at, elapsed_ms,
                        peak_memory, spilled_bytes, files, error, inputs
                 FROM units WHERE run_id = ?1 AND model = ?2 AND status = 'done'",
            )?;
            let rows = stmt.query_map(params![run_id, model], |r| {
                let files: String = r.get(10)?;
                // A unit whose file list cannot be read cannot be kept: read as no files, it
                // would count as done with no rows, and its rows would be lost.
                let files = serde_json::from_str(&files).map_err(|e| {
                    let unit: String = r.get(0).unwrap_or_default();
                    rusqlite::Error::FromSqlConversionFailure(
                        10,
                        rusqlite::types::Type::Text,
                        format!("unit '{unit}' of model '{model}': its list of staged files cannot be read ({e}); run with --restart").into(),
                    )
                })?;
                Ok(UnitRecord {
                    unit: r.get(0)?,
                    status: status(r, 1)?,
                    attempts: r.get(2)?,
                    rows_in: r.get::<_, i64>(3)? as u64,
                    rows_out: r.get::<_, i64>(4)? as u64,
                    started_at: r.get(5)?,
                    finished_at: r.get(6)?,
                    elapsed_ms: r.get::<_, i64>(7)? as u64,
                    peak_memory: r.get::<_, i64>(8)? as u64,
                    spilled_bytes: r.get::<_, i64>(9)? as u64,
                    files,
                    error: r.get(11)?,
                    inputs: r.get(12)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Records a model's outcome.
    pub fn record_model(&self, run_id: &str, m: &ModelReport) -> Result<(), StateError> {
        let outputs = serde_json::to_string(&m.outputs).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO models (run_id, model, status, materialized, rows_in, rows_out,
                     rows_rejected, units_total, units_done, elapsed_ms, spilled_bytes, outputs, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    run_id,
                    m.name,
                    m.status.as_str(),
                    m.materialized,
                    m.rows_in as i64,
                    m.rows_out as i64,
                    m.rows_rejected as i64,
                    m.units_total as i64,
                    m.units_done as i64,
                    m.elapsed_ms as i64,
                    m.spilled_bytes as i64,
                    outputs,
                    m.error
                ],
            )?;
            for (i, check) in m.checks.iter().enumerate() {
                c.execute(
                    "INSERT OR REPLACE INTO checks (run_id, model, position, name, severity,
                         status, failing_rows, message)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        run_id,
                        m.name,
                        i as i64,
                        check.check,
                        check.severity,
                        check.status.as_str(),
                        check.failing_rows as i64,
                        check.message
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// The check results recorded for `model` in `run_id`: (name, status, failing rows).
    pub fn checks(
        &self,
        run_id: &str,
        model: &str,
    ) -> Result<Vec<(String, String, u64)>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, status, failing_rows FROM checks
                 WHERE run_id = ?1 AND model = ?2 ORDER BY position",
            )?;
            let rows = stmt.query_map(params![run_id, model], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })?;
            rows.collect()
        })
    }

    /// Records the end of a run, from its report (models included).
    pub fn finish_run(&self, report: &RunReport) -> Result<(), StateError> {
        for m in &report.models {
            self.record_model(&report.run_id, m)?;
        }
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = ?2, finished_at = ?3, error = ?4 WHERE run_id = ?1",
                params![
                    report.run_id,
                    report.status.as_str(),
                    report.finished_at,
                    report.error
                ],
            )
            .map(|_| ())
        })
    }

    /// The id of every run in the ledger that has ended, for a command that does not run
    /// the pipeline: all of them if the OS run lock is free (no run of the pipeline is alive
    /// on this machine, whatever the ledger says of a killed one), else those not marked
    /// running.
    pub fn ended_run_ids(&self) -> Result<Vec<String>, StateError> {
        let free = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_extension("lock"))
            .ok()
            .and_then(|f| crate::flock::Flock::try_take(f).ok().flatten());
        let sql = if free.is_some() {
            "SELECT run_id FROM runs"
        } else {
            "SELECT run_id FROM runs WHERE status <> 'running'"
        };
        let mut ids: Vec<String> = self.with(|c| {
            let mut stmt = c.prepare(sql)?;
            let ids = stmt.query_map([], |r| r.get(0))?;
            ids.collect()
        })?;
        drop(free);
        // A holder on another machine (sharing the state file over a file system whose
        // `flock` does not reach it) is alive while its heartbeat is.
        let me = Holder::current();
        let holder: Option<(String, String, String)> = self.with(|c| {
            c.query_row(
                "SELECT run_id, host, heartbeat_at FROM lock WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        if let Some((run, host, heartbeat)) = holder
            && host != me.host
            && crate::config::parse_timestamp(&heartbeat).is_some_and(|t| {
                chrono::Utc::now()
                    .signed_duration_since(t)
                    .to_std()
                    .map_or(true, |a| a < STALE_AFTER)
            })
        {
            ids.retain(|id| *id != run);
        }
        Ok(ids)
    }

    /// The run of `pipeline` the next run may resume (see [`StateStore::resumable_run`],
    /// whatever its fingerprint): the last that did work, if it was interrupted or failed.
    pub fn last_unfinished_run(&self, pipeline: &str) -> Result<Option<String>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT run_id, status FROM runs WHERE pipeline = ?1 AND fingerprint != ''
                 ORDER BY started_at DESC, run_id DESC LIMIT 1",
                params![pipeline],
                |r| Ok((r.get::<_, String>(0)?, status::<RunStatus>(r, 1)?)),
            )
            .optional()
        })
        .map(|row| {
            row.filter(|(_, s)| {
                matches!(
                    s,
                    RunStatus::Interrupted | RunStatus::Failed | RunStatus::Paused
                )
            })
            .map(|(id, _)| id)
        })
    }

    /// The id of every run in the ledger.
    pub fn run_ids(&self) -> Result<Vec<String>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT run_id FROM runs")?;
            let ids = stmt.query_map([], |r| r.get(0))?;
            ids.collect()
        })
    }

    /// Marks a run that failed with all its work done as not to be resumed.
    pub fn complete_run(&self, run_id: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET fingerprint = '' WHERE run_id = ?1",
                params![run_id],
            )
            .map(|_| ())
        })
    }

    /// Records the clock of a run (`--as-of`, or when it started) and what it was asked to
    /// do (`run`, `reconcile`, `backfill`...): a resumed run keeps its clock.
    pub fn set_clock(&self, run_id: &str, as_of: &str, kind: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET as_of = ?2, kind = ?3 WHERE run_id = ?1",
                params![run_id, as_of, kind],
            )
            .map(|_| ())
        })
    }

    /// The clock a run recorded, if any.
    pub fn clock(&self, run_id: &str) -> Result<Option<String>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT as_of FROM runs WHERE run_id = ?1",
                params![run_id],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }

    /// The periods of every file version of a source mapped before under `key`: rows per
    /// period start, by (path, size, modification time, etag).
    pub fn file_periods(
        &self,
        key: &FilePeriodsKey,
    ) -> Result<HashMap<FileVersion, BTreeMap<chrono::NaiveDateTime, u64>>, StateError> {
        let rows: Vec<(FileVersion, String)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT path, size, modified, etag, periods FROM file_periods
                 WHERE source = ?1 AND spec = ?2 AND grid = ?3",
            )?;
            let rows = stmt.query_map(params![key.source, key.spec, key.grid], |r| {
                Ok((file_version_of(r)?, r.get(4)?))
            })?;
            rows.collect()
        })?;
        // A row that does not parse is left out: its file is read again.
        Ok(rows
            .into_iter()
            .filter_map(|(version, periods)| {
                let periods: Vec<(String, u64)> = serde_json::from_str(&periods).ok()?;
                let periods = periods
                    .into_iter()
                    .map(|(p, n)| Some((crate::config::parse_datetime(&p)?, n)))
                    .collect::<Option<BTreeMap<_, _>>>()?;
                Some((version, periods))
            })
            .collect())
    }

    /// Records the periods of file versions of a source, under `key`.
    pub fn record_file_periods(
        &self,
        key: &FilePeriodsKey,
        files: &[(FileVersion, BTreeMap<chrono::NaiveDateTime, u64>)],
    ) -> Result<(), StateError> {
        if files.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO file_periods
                         (source, spec, grid, path, size, modified, etag, periods, first_seen_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT DO UPDATE SET periods = excluded.periods",
                )?;
                let now = crate::config::timestamp_now();
                for ((path, size, modified, etag), periods) in files {
                    let periods: Vec<(String, u64)> = periods
                        .iter()
                        .map(|(p, n)| (p.format("%Y-%m-%dT%H:%M:%S").to_string(), *n))
                        .collect();
                    stmt.execute(params![
                        key.source,
                        key.spec,
                        key.grid,
                        path,
                        *size as i64,
                        modified,
                        etag.as_deref().unwrap_or(""),
                        serde_json::to_string(&periods).unwrap_or_default(),
                        now
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// The schema each file version of `source` was read with before, under `spec` (a hash
    /// of the source's definition and of what reads it), by (path, size, modification time,
    /// etag): a file whose version is not here is read again.
    pub fn file_schemas(
        &self,
        source: &str,
        spec: &str,
    ) -> Result<HashMap<FileVersion, SchemaRef>, StateError> {
        let rows: Vec<(FileVersion, Vec<u8>)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT path, size, modified, etag, schema FROM file_schemas
                 WHERE source = ?1 AND spec = ?2",
            )?;
            let rows = stmt.query_map(params![source, spec], |r| {
                Ok((file_version_of(r)?, r.get(4)?))
            })?;
            rows.collect()
        })?;
        // Files of one source mostly share a schema: each one decoded once. A row that does
        // not decode is left out: its file is read again.
        let mut decoded: HashMap<Vec<u8>, Option<SchemaRef>> = HashMap::new();
        Ok(rows
            .into_iter()
            .filter_map(|(version, bytes)| {
                let schema = decoded
                    .entry(bytes)
                    .or_insert_with_key(|b| decode_schema(b).map(Arc::new))
                    .clone()?;
                Some((version, schema))
            })
            .collect())
    }

    /// Records the schemas file versions of `source` were read with, under `spec`, each
    /// replacing what was recorded of an older version of its path. A schema that would not
    /// read back exactly as it is is not recorded (its file is read again next time).
    pub fn record_file_schemas(
        &self,
        source: &str,
        spec: &str,
        files: &[(FileVersion, SchemaRef)],
    ) -> Result<(), StateError> {
        if files.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare(
                    "INSERT INTO file_schemas
                         (source, spec, path, size, modified, etag, schema, read_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT DO UPDATE SET size = excluded.size,
                         modified = excluded.modified, etag = excluded.etag,
                         schema = excluded.schema, read_at = excluded.read_at",
                )?;
                let now = crate::config::timestamp_now();
                let mut encoded: HashMap<*const Schema, Option<Vec<u8>>> = HashMap::new();
                for ((path, size, modified, etag), schema) in files {
                    let Some(bytes) = &*encoded
                        .entry(Arc::as_ptr(schema))
                        .or_insert_with(|| encode_schema(schema))
                    else {
                        continue;
                    };
                    stmt.execute(params![
                        source,
                        spec,
                        path,
                        *size as i64,
                        modified,
                        etag.as_deref().unwrap_or(""),
                        bytes,
                        now
                    ])?;
                }
            }
            tx.commit()
        })
    }

    /// The file versions, by period, whose rows runs other than `run_id` counted for
    /// `model` as later than the window.
    pub fn counted_late(
        &self,
        model: &str,
        run_id: &str,
    ) -> Result<std::collections::HashSet<(String, FileSeen)>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT period, source, path, size, modified, etag FROM late_counted
                 WHERE model = ?1 AND run_id <> ?2",
            )?;
            let rows = stmt.query_map(params![model, run_id], |r| {
                Ok((
                    r.get(0)?,
                    FileSeen {
                        source: r.get(1)?,
                        path: r.get(2)?,
                        size: r.get::<_, i64>(3)? as u64,
                        modified: r.get(4)?,
                        etag: r.get(5)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Records, in one transaction, one incremental model's late-arrival counts in one run
    /// (per source) and the file versions whose rows it counted as later than the window. A
    /// resumed run replaces what its earlier attempt recorded.
    pub fn record_late(
        &self,
        run_id: &str,
        model: &str,
        by_source: &BTreeMap<String, crate::report::LateCounts>,
        counted: &[(String, FileSeen, u64)],
    ) -> Result<(), StateError> {
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "DELETE FROM late WHERE run_id = ?1 AND model = ?2",
                params![run_id, model],
            )?;
            tx.execute(
                "DELETE FROM late_counted WHERE run_id = ?1 AND model = ?2",
                params![run_id, model],
            )?;
            // A row even without counts, so the history shows every run.
            let none = BTreeMap::from([(String::new(), crate::report::LateCounts::default())]);
            let rows = if by_source.is_empty() {
                &none
            } else {
                by_source
            };
            for (source, n) in rows {
                tx.execute(
                    "INSERT INTO late (run_id, model, source, rows_on_time,
                         rows_late_in_window, rows_late_beyond_window, rows_deleted)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        run_id,
                        model,
                        source,
                        n.rows_on_time as i64,
                        n.rows_late_in_window as i64,
                        n.rows_late_beyond_window as i64,
                        n.rows_deleted as i64
                    ],
                )?;
            }
            for (period, f, rows) in counted {
                tx.execute(
                    "INSERT OR REPLACE INTO late_counted
                         (model, period, source, path, size, modified, etag, rows, run_id)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        model,
                        period,
                        f.source,
                        f.path,
                        f.size as i64,
                        f.modified,
                        f.etag,
                        *rows as i64,
                        run_id
                    ],
                )?;
            }
            tx.commit()
        })
    }

    /// The late-arrival counts `run_id` recorded for `model`, per source, if it recorded any
    /// (a resumed run whose earlier attempt published the model).
    pub fn late_of_run(
        &self,
        run_id: &str,
        model: &str,
    ) -> Result<Option<BTreeMap<String, crate::report::LateCounts>>, StateError> {
        let rows: Vec<(String, crate::report::LateCounts)> = self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT source, rows_on_time, rows_late_in_window, rows_late_beyond_window,
                        rows_deleted
                 FROM late WHERE run_id = ?1 AND model = ?2",
            )?;
            let rows = stmt.query_map(params![run_id, model], |r| {
                Ok((
                    r.get(0)?,
                    crate::report::LateCounts {
                        rows_on_time: r.get::<_, i64>(1)? as u64,
                        rows_late_in_window: r.get::<_, i64>(2)? as u64,
                        rows_late_beyond_window: r.get::<_, i64>(3)? as u64,
                        rows_deleted: r.get::<_, i64>(4)? as u64,
                    },
                ))
            })?;
            rows.collect()
        })?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            rows.into_iter().filter(|(s, _)| !s.is_empty()).collect(),
        ))
    }

    /// The late-arrival counts of `model` in its last `limit` runs that recorded any, newest
    /// first: (run, as of, counts over its sources).
    pub fn late_history(&self, model: &str, limit: usize) -> Result<Vec<LateRow>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT l.run_id, COALESCE(r.as_of, r.started_at), COALESCE(r.kind, 'run'),
                        SUM(l.rows_on_time), SUM(l.rows_late_in_window),
                        SUM(l.rows_late_beyond_window), SUM(l.rows_deleted)
                 FROM late l LEFT JOIN runs r ON r.run_id = l.run_id
                 WHERE l.model = ?1 GROUP BY l.run_id
                 ORDER BY r.started_at DESC, l.run_id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![model, limit as i64], |r| {
                Ok(LateRow {
                    run_id: r.get(0)?,
                    as_of: r.get(1)?,
                    kind: r.get(2)?,
                    counts: crate::report::LateCounts {
                        rows_on_time: r.get::<_, i64>(3)? as u64,
                        rows_late_in_window: r.get::<_, i64>(4)? as u64,
                        rows_late_beyond_window: r.get::<_, i64>(5)? as u64,
                        rows_deleted: r.get::<_, i64>(6)? as u64,
                    },
                })
            })?;
            rows.collect()
        })
    }

    /// When the pipeline `pipeline` (of `models` models) last succeeded whole, and each of
    /// its models last succeeded, as the runs recorded here say: plain runs only (a
    /// backfill or a reconcile brings nothing up to date), the pipeline's with every model.
    pub fn last_successes(&self, pipeline: &str, models: usize) -> Result<LastSuccess, StateError> {
        self.with(|c| {
            let whole: Option<String> = c.query_row(
                "SELECT max(finished_at) FROM runs r WHERE pipeline = ?1 AND status = 'success'
                   AND kind = 'run'
                   AND (SELECT count(*) FROM models m WHERE m.run_id = r.run_id) >= ?2",
                params![pipeline, models as i64],
                |r| r.get(0),
            )?;
            let mut stmt = c.prepare(
                "SELECT m.model, max(r.finished_at) FROM models m JOIN runs r USING (run_id)
                 WHERE r.pipeline = ?1 AND m.status = 'success' AND r.finished_at IS NOT NULL
                   AND r.kind = 'run'
                 GROUP BY m.model",
            )?;
            let models = stmt
                .query_map(params![pipeline], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(LastSuccess {
                pipeline: whole,
                models,
            })
        })
    }

    /// The scheduled time of `pipeline`'s last run started by `sluice schedule` (or passed
    /// over by its `catch_up`), RFC 3339.
    pub fn last_fire(&self, pipeline: &str) -> Result<Option<String>, StateError> {
        self.with(|c| {
            c.query_row(
                "SELECT last_fire FROM schedule WHERE pipeline = ?1",
                params![pipeline],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Records `at` (RFC 3339) as `pipeline`'s last scheduled time.
    pub fn set_last_fire(&self, pipeline: &str, at: &str) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO schedule (pipeline, last_fire) VALUES (?1, ?2)
                 ON CONFLICT (pipeline) DO UPDATE SET last_fire = excluded.last_fire",
                params![pipeline, at],
            )
            .map(|_| ())
        })
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRow>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT r.run_id, r.pipeline, r.started_at, r.finished_at, r.status, r.error,
                        COALESCE(SUM(m.rows_in), 0), COALESCE(SUM(m.rows_out), 0),
                        COALESCE(SUM(m.rows_rejected), 0),
                        COALESCE(SUM(m.status = 'success'), 0), COUNT(m.model),
                        COALESCE(r.kind, 'run'),
                        (SELECT SUM(rows_late_in_window) FROM late l WHERE l.run_id = r.run_id),
                        (SELECT SUM(rows_late_beyond_window) FROM late l WHERE l.run_id = r.run_id)
                 FROM runs r LEFT JOIN models m ON m.run_id = r.run_id
                 GROUP BY r.run_id ORDER BY r.started_at DESC, r.run_id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                Ok(RunRow {
                    run_id: r.get(0)?,
                    pipeline: r.get(1)?,
                    started_at: r.get(2)?,
                    finished_at: r.get(3)?,
                    status: status(r, 4)?,
                    error: r.get(5)?,
                    rows_in: r.get(6)?,
                    rows_out: r.get(7)?,
                    rows_rejected: r.get(8)?,
                    models_ok: r.get(9)?,
                    models_total: r.get(10)?,
                    kind: r.get(11)?,
                    late_in_window: r.get(12)?,
                    late_beyond_window: r.get(13)?,
                })
            })?;
            rows.collect()
        })
    }
}

/// A schema as the state store keeps it: Arrow's IPC encoding of it (a flatbuffer), with
/// every field's type, nullability and metadata and the schema's metadata; `None` if it does
/// not decode back to exactly `schema`.
/// The file version in the first four columns of a cache row (`path, size, modified, etag`,
/// the etag `''` for none).
fn file_version_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileVersion> {
    let etag: String = r.get(3)?;
    Ok((
        r.get(0)?,
        r.get::<_, i64>(1)? as u64,
        r.get(2)?,
        (!etag.is_empty()).then_some(etag),
    ))
}

fn encode_schema(schema: &Schema) -> Option<Vec<u8>> {
    use datafusion::arrow::ipc::convert::IpcSchemaEncoder;
    use datafusion::arrow::ipc::writer::DictionaryTracker;
    let mut dictionaries = DictionaryTracker::new(false);
    let bytes = IpcSchemaEncoder::new()
        .with_dictionary_tracker(&mut dictionaries)
        .schema_to_fb(schema)
        .finished_data()
        .to_vec();
    (decode_schema(&bytes).as_ref() == Some(schema)).then_some(bytes)
}

/// A schema [`encode_schema`] encoded; `None` if the bytes are not one.
fn decode_schema(bytes: &[u8]) -> Option<Schema> {
    use datafusion::arrow::ipc::{convert::fb_to_schema, root_as_schema};
    root_as_schema(bytes).ok().map(fb_to_schema)
}

/// What the periods of a source's files are cached under: the source, a hash of its
/// definition and event-time column (a changed one maps the files again), and the grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePeriodsKey {
    /// The source.
    pub source: String,
    /// A hash of its definition and event-time column.
    pub spec: String,
    /// The period size.
    pub grid: String,
}

/// One version of an input file, as the state store records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileSeen {
    /// The source.
    pub source: String,
    /// The object path.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Its modification time (RFC 3339).
    pub modified: String,
    /// Its entity tag (`""` when the store gives none).
    pub etag: String,
}

impl FileSeen {
    /// The version of an input file a manifest or a plan records.
    pub(crate) fn of(f: &crate::table::manifest::AppliedFile) -> FileSeen {
        FileSeen {
            source: f.source.clone(),
            path: f.path.clone(),
            size: f.size,
            modified: f.modified.clone(),
            etag: f.etag.clone().unwrap_or_default(),
        }
    }
}

/// One run's late-arrival counts of a model, from the state store.
#[derive(Debug, Clone, Serialize)]
pub struct LateRow {
    /// The run.
    pub run_id: String,
    /// Its clock.
    pub as_of: String,
    /// What it was asked to do.
    pub kind: String,
    /// Its counts over the model's sources.
    #[serde(flatten)]
    pub counts: crate::report::LateCounts,
}

/// Column `i` of a row read as a status enum; an unknown status is an error, not a guess.
fn status<T: std::str::FromStr<Err = String>>(
    row: &rusqlite::Row<'_>,
    i: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

/// Whether the lock's holder still runs: the same process (pid and start time) on this
/// host, or a recent heartbeat from another host.
fn holder_alive(
    pid: i64,
    pid_start: Option<&str>,
    host: &str,
    heartbeat: &str,
    me: &Holder,
) -> bool {
    if host == me.host {
        if pid == me.pid && pid_start == me.start.as_deref() {
            // This very process (a second acquire): not a different holder.
            return false;
        }
        return match process_start(pid) {
            None => false,
            Some(start) => pid_start.is_none_or(|s| s == start),
        };
    }
    crate::config::parse_timestamp(heartbeat).is_some_and(|t| {
        let age = chrono::Utc::now().signed_duration_since(t);
        age.to_std().map_or(true, |a| a < STALE_AFTER)
    })
}

/// Formats the ledger as the table `sluice runs` prints.
pub fn format_runs(rows: &[RunRow]) -> String {
    let mut out = format!(
        "{:<24} {:<24} {:<24} {:<11} {:<20} {:>12} {:>12} {:>9} {:>7} {:>15}\n",
        "run",
        "started",
        "finished",
        "status",
        "kind",
        "rows in",
        "rows out",
        "rejected",
        "models",
        "late in/beyond"
    );
    for r in rows {
        let late = match (r.late_in_window, r.late_beyond_window) {
            (Some(a), Some(b)) => format!("{a}/{b}"),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<24} {:<24} {:<24} {:<11} {:<20} {:>12} {:>12} {:>9} {:>7} {:>15}\n",
            r.run_id,
            r.started_at,
            r.finished_at.as_deref().unwrap_or("-"),
            r.status,
            r.kind,
            r.rows_in,
            r.rows_out,
            r.rows_rejected,
            format!("{}/{}", r.models_ok, r.models_total),
            late
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ModelStatus;

    /// Several processes opening a new state store at once (two schedulers started together)
    /// all open it, in WAL mode: none fails on "database is locked"; nor, opening one from
    /// before units recorded their inputs, on adding that column twice.
    #[test]
    fn a_new_store_opened_by_several_at_once_opens_for_all() {
        let mut failures = Vec::new();
        for round in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            if round % 2 == 1 {
                StateStore::open(&path).unwrap();
                let conn = Connection::open(&path).unwrap();
                conn.execute_batch("ALTER TABLE units DROP COLUMN inputs")
                    .unwrap();
            }
            let opening: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || StateStore::open(&path).map(|_| ()))
                })
                .collect();
            for o in opening {
                if let Err(e) = o.join().unwrap() {
                    failures.push(e.to_string());
                }
            }
            let conn = Connection::open(&path).unwrap();
            let mode: String = conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            assert!(conn.prepare("SELECT inputs FROM units LIMIT 0").is_ok());
        }
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            failures
        );
    }

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(&dir.path().join("s/state.db")).unwrap();
        (dir, s)
    }

    /// A file version's schema reads back exactly (types, nullability, field and schema
    /// metadata, nested and dictionary types); another version of the path is not it, and
    /// replaces it once recorded.
    #[test]
    fn file_schemas_read_back_exactly_by_version() {
        use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
        let (_d, s) = store();
        let meta = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("id", DataType::Int64, false)
                    .with_metadata(meta("PARQUET:field_id", "1")),
                Field::new("name", DataType::Utf8View, true),
                Field::new(
                    "ts",
                    DataType::Timestamp(TimeUnit::Nanosecond, Some("+01:00".into())),
                    true,
                ),
                Field::new(
                    "p",
                    DataType::Struct(
                        vec![
                            Field::new("x", DataType::Decimal128(38, 9), false),
                            Field::new_list(
                                "l",
                                Field::new("item", DataType::LargeUtf8, true),
                                true,
                            ),
                        ]
                        .into(),
                    ),
                    true,
                ),
                Field::new(
                    "d",
                    DataType::Dictionary(Box::new(DataType::Int16), Box::new(DataType::Utf8)),
                    true,
                ),
            ],
            meta("pandas", "{\"index_columns\": []}"),
        ));
        let other = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        let v1: FileVersion = (
            "data/a.parquet".into(),
            10,
            "2026-01-01T00:00:00+00:00".into(),
            Some("\"e1\"".into()),
        );
        let v2: FileVersion = (
            "data/b.parquet".into(),
            10,
            "2026-01-01T00:00:00+00:00".into(),
            None,
        );
        s.record_file_schemas(
            "src",
            "k",
            &[
                (v1.clone(), Arc::clone(&schema)),
                (v2.clone(), Arc::clone(&schema)),
            ],
        )
        .unwrap();
        let known = s.file_schemas("src", "k").unwrap();
        assert_eq!(known.len(), 2);
        assert_eq!(known[&v1], schema);
        assert_eq!(known[&v2], schema);
        assert!(s.file_schemas("src", "other spec").unwrap().is_empty());
        assert!(s.file_schemas("other source", "k").unwrap().is_empty());
        // The same path rewritten: another etag, size or time is another version.
        let mut rewritten = v1.clone();
        rewritten.3 = Some("\"e2\"".into());
        assert!(!known.contains_key(&rewritten));
        s.record_file_schemas("src", "k", &[(rewritten.clone(), Arc::clone(&other))])
            .unwrap();
        let known = s.file_schemas("src", "k").unwrap();
        assert_eq!(known.len(), 2);
        assert_eq!(known[&rewritten], other);
        assert!(!known.contains_key(&v1));
    }

    #[test]
    fn a_live_holder_keeps_the_lock_and_a_dead_one_loses_it() {
        let (_d, s) = store();
        let me = Holder::current();
        assert_eq!(
            s.acquire("p", "r1", &me, "2026-01-01T00:00:00Z").unwrap(),
            None
        );
        // Another live process on this host (pid 1 always exists: init).
        let other = Holder {
            pid: 1,
            start: process_start(1),
            host: me.host.clone(),
        };
        s.release("r1").unwrap();
        s.acquire("p", "r0", &other, "2026-01-01T00:00:00Z")
            .unwrap();
        let err = s
            .acquire("p", "r2", &me, "2026-01-01T00:00:01Z")
            .unwrap_err();
        assert!(
            err.to_string().contains("already running: run r0 (pid 1"),
            "{err}"
        );
        // A dead holder: a pid that does not exist.
        s.release("r0").unwrap();
        let dead = Holder {
            pid: i64::from(i32::MAX),
            start: Some("1".into()),
            host: me.host.clone(),
        };
        s.start_run("r3", "p", "2026-01-01T00:00:02Z", "", "", "", &dead)
            .unwrap();
        s.acquire("p", "r3", &dead, "2026-01-01T00:00:02Z").unwrap();
        let taken = s.acquire("p", "r4", &me, "2026-01-01T00:00:03Z").unwrap();
        assert_eq!(taken.as_deref(), Some("r3"));
        let runs = s.runs(10).unwrap();
        assert_eq!(runs[0].run_id, "r3");
        assert_eq!(runs[0].status, RunStatus::Interrupted);
    }

    /// A ledger written before incremental models gains the run's clock and kind; opening a
    /// new one creates them, so two processes opening it at once do not race to add them.
    #[test]
    fn an_older_ledger_gains_the_clock_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "CREATE TABLE runs (run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL,
                 started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL,
                 selection TEXT NOT NULL DEFAULT '', vars TEXT NOT NULL DEFAULT '',
                 fingerprint TEXT NOT NULL DEFAULT '', pid INTEGER, host TEXT, error TEXT);
                 INSERT INTO runs (run_id, pipeline, started_at, status) VALUES ('r1', 'p', 't', 'success');",
            )
            .unwrap();
        let store = StateStore::open(&path).unwrap();
        store
            .set_clock("r1", "2024-01-13T00:00:00+00:00", "reconcile")
            .unwrap();
        assert_eq!(
            store.clock("r1").unwrap().as_deref(),
            Some("2024-01-13T00:00:00+00:00")
        );
        assert_eq!(store.runs(5).unwrap()[0].kind, "reconcile");
        StateStore::open(&path).unwrap();
        let fresh = dir.path().join("new.db");
        StateStore::open(&fresh).unwrap();
        StateStore::open(&fresh).unwrap();
    }

    #[test]
    fn a_recycled_pid_is_not_the_holder() {
        let (_d, s) = store();
        let me = Holder::current();
        let impostor = Holder {
            pid: 1,
            start: Some("not-init's-start-time".into()),
            host: me.host.clone(),
        };
        s.acquire("p", "r0", &impostor, "2026-01-01T00:00:00Z")
            .unwrap();
        assert_eq!(
            s.acquire("p", "r1", &me, "2026-01-01T00:00:01Z")
                .unwrap()
                .as_deref(),
            Some("r0")
        );
    }

    #[test]
    fn ledger_sums_models() {
        let (_d, s) = store();
        let me = Holder::current();
        s.start_run("r1", "p", "2026-01-01T00:00:00Z", "", "", "fp", &me)
            .unwrap();
        let mut m = ModelReport::new("a", "table", ModelStatus::Success);
        m.rows_in = 10;
        m.rows_out = 4;
        let report = RunReport {
            run_id: "r1".into(),
            pipeline: "p".into(),
            status: RunStatus::Success,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:05Z".into(),
            models: vec![
                m.clone(),
                ModelReport::new("b", "table", ModelStatus::Failed),
            ],
            error: None,
            databases: Vec::new(),
            stores: Vec::new(),
            resources: None,
            exit_code: None,
            retryable: None,
            next_window: None,
        };
        s.finish_run(&report).unwrap();
        let rows = s.runs(5).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].rows_in,
                rows[0].rows_out,
                rows[0].models_ok,
                rows[0].models_total
            ),
            (10, 4, 1, 2)
        );
        assert!(format_runs(&rows).contains("success"));
        assert_eq!(
            s.resumable_run("p", "fp").unwrap(),
            None,
            "a successful run is not resumed"
        );
        let failed = RunReport {
            run_id: "r2".into(),
            status: RunStatus::Failed,
            started_at: "2026-01-01T00:01:00Z".into(),
            ..report
        };
        s.start_run("r2", "p", "2026-01-01T00:01:00Z", "", "", "fp", &me)
            .unwrap();
        s.finish_run(&failed).unwrap();
        assert_eq!(s.resumable_run("p", "fp").unwrap().as_deref(), Some("r2"));
        assert_eq!(s.resumable_run("p", "other").unwrap(), None);
    }

    #[test]
    fn a_unit_whose_file_list_cannot_be_read_fails_the_resume() {
        let (_d, s) = store();
        let unit = UnitRecord {
            unit: "2024-01".into(),
            status: UnitStatus::Done,
            attempts: 1,
            rows_in: 3,
            rows_out: 3,
            started_at: None,
            finished_at: None,
            elapsed_ms: 1,
            peak_memory: 0,
            spilled_bytes: 0,
            files: Vec::new(),
            error: None,
            inputs: "abc".into(),
        };
        s.record_unit("r1", "m", &unit).unwrap();
        assert_eq!(s.done_units("r1", "m").unwrap(), vec![unit]);
        s.with(|c| c.execute("UPDATE units SET files = '[{\"staged\": 1'", []))
            .unwrap();
        let err = s.done_units("r1", "m").unwrap_err().to_string();
        assert!(
            err.contains("unit '2024-01' of model 'm'") && err.contains("--restart"),
            "{err}"
        );
    }
}
