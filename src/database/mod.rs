//! Databases as sources and sinks (issue 14; the plan: `docs/design/databases.md`):
//! connections under a cap that holds for the whole run, read-only sessions, tables whose
//! rows are read with the database's bulk path and decoded straight into Arrow, and loads
//! into tables in one transaction each.
//!
//! - [`Databases`]: one [`Pool`] per `[databases.NAME]`, shared by every model, unit and scan
//!   of the process;
//! - [`postgres`]: PostgreSQL sessions, column types, the binary COPY decoder and encoder,
//!   and loads;
//! - [`mysql`]: MySQL and MariaDB sessions, column types, the decoder of their rows, and
//!   loads;
//! - [`sink`]: a load into a table of either, and its commit record;
//! - [`guard`]: the replica-lag, latency and rate guards, and what they saw;
//! - [`scan`]: a database source as a DataFusion table, and the plan node that reads it;
//! - [`import`]: the ranges of one import, and the snapshot its connections share;
//! - [`pushdown`]: the filters sent to the database with the read;
//! - [`tls`]: TLS for the connections of both, as the URL's settings ask.
//!
//! Errors name the database by its URL without the password, and the table; the password
//! is never in a message.

pub(crate) mod guard;
pub(crate) mod import;
pub(crate) mod mysql;
pub(crate) mod postgres;
pub(crate) mod pushdown;
pub(crate) mod scan;
pub(crate) mod sink;
pub(crate) mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::DatabaseConfig;

/// The field metadata key that marks a column sluice cannot read; its value is the type's
/// name. Such a column is a `Null` field, refused by a scan that selects it.
pub(crate) const UNSUPPORTED: &str = "sluice.unsupported_type";

/// A failure talking to a database.
#[derive(Debug, thiserror::Error)]
#[error("database '{database}' ({url}): {message}")]
pub struct DatabaseError {
    /// The database's name in `sluice.toml`.
    pub database: String,
    /// Its URL, without the password.
    pub url: String,
    /// What went wrong (the server's message, and where).
    pub message: String,
    /// Whether another attempt could succeed (a dropped connection, too many clients).
    pub transient: bool,
}

/// The connections of one database: at most `max_connections` open at once, whoever asks,
/// counted from opening until the connection has ended. A session handed back healthy is
/// kept idle and given to the next asker, so the server sees few connections come and go.
pub(crate) struct Pool {
    /// The database.
    pub(crate) config: DatabaseConfig,
    /// Its guards, and what they saw.
    pub(crate) guard: guard::Guard,
    state: tokio::sync::Mutex<PoolState>,
    freed: tokio::sync::Notify,
    /// The latency probe holds a connection (one of the open ones), which reads and loads
    /// do not count against theirs.
    probe_holds: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.config.name)
    }
}

/// The pool's connections.
#[derive(Default)]
struct PoolState {
    /// Open connections: in use, idle, or ending.
    open: usize,
    /// Healthy connections no one uses.
    idle: Idle,
}

/// The sessions a pool keeps idle, by kind (a pool holds sessions of its database's kind
/// only).
#[derive(Default)]
pub(crate) struct Idle {
    postgres: Vec<postgres::Session>,
    mysql: Vec<mysql::Session>,
}

/// A session a [`Pool`] can keep idle.
pub(crate) trait Pooled: Sized + Send {
    /// Where the pool keeps idle sessions of this kind.
    fn shelf(idle: &mut Idle) -> &mut Vec<Self>;
    /// Whether it may still be used (its connection has not ended).
    fn usable(&self) -> bool;
}

impl Pooled for postgres::Session {
    fn shelf(idle: &mut Idle) -> &mut Vec<Self> {
        &mut idle.postgres
    }
    fn usable(&self) -> bool {
        !self.client().is_closed()
    }
}

impl Pooled for mysql::Session {
    fn shelf(idle: &mut Idle) -> &mut Vec<Self> {
        &mut idle.mysql
    }
    fn usable(&self) -> bool {
        self.usable()
    }
}

/// The longest a read waits for a connection of its database.
const CONNECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A read or a load.
    Work,
    /// The latency probe, which has a connection of the cap kept for it.
    Probe,
}

/// What a connection request got.
pub(crate) enum Lease<S> {
    /// An idle session, ready.
    Idle(S),
    /// Room for a new connection: open it, or [`Pool::opened_nothing`].
    Open,
}

impl Pool {
    fn new(config: DatabaseConfig) -> Pool {
        Pool {
            guard: guard::Guard::new(config.guards.clone()),
            config,
            state: tokio::sync::Mutex::new(PoolState::default()),
            freed: tokio::sync::Notify::new(),
            probe_holds: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How many connections reads and loads may hold at once: all of the cap, less the
    /// latency probe's connection.
    pub(crate) fn reader_slots(&self) -> usize {
        let probe = usize::from(self.config.guards.latency.is_some());
        self.config.max_connections.saturating_sub(probe).max(1)
    }

    /// An error about this database.
    pub(crate) fn error(&self, message: impl Into<String>, transient: bool) -> DatabaseError {
        DatabaseError {
            database: self.config.name.clone(),
            url: self.config.url.to_string(),
            message: message.into(),
            transient,
        }
    }

    /// An idle session, or room for a new connection once there is some. Waits at most
    /// [`CONNECTION_WAIT`]: reads of one run that each hold a connection while waiting for
    /// another's rows (a join of two sources of the database, `max_connections = 1`) would
    /// otherwise wait for ever.
    async fn lease<S: Pooled>(&self, purpose: Purpose) -> Result<Lease<S>, DatabaseError> {
        // One connection is kept for the latency probe: reads and loads together never take
        // it, or the probe could wait, unmeasured, behind them.
        let limit = match purpose {
            Purpose::Probe => self.config.max_connections,
            Purpose::Work => self.reader_slots(),
        };
        let deadline = tokio::time::Instant::now() + CONNECTION_WAIT;
        loop {
            // Registered before the state is looked at: a room freed after the look wakes
            // this waiter (a wake-up stored for no one would serve only one of several).
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut st = self.state.lock().await;
                let order = Ordering::SeqCst;
                // (Reads and loads count the connections open but the probe's: the probe
                // is kept one of its own, not one more.)
                let others = match purpose {
                    Purpose::Work => usize::from(self.probe_holds.load(order)),
                    Purpose::Probe => 0,
                };
                while let Some(s) = S::shelf(&mut st.idle).pop() {
                    if s.usable() {
                        if purpose == Purpose::Probe {
                            self.probe_holds.store(true, order);
                        }
                        return Ok(Lease::Idle(s));
                    }
                    // (Dropped: it counts as open until its connection has ended.)
                }
                if st.open.saturating_sub(others) < limit {
                    st.open += 1;
                    self.guard.opened(st.open);
                    if purpose == Purpose::Probe {
                        self.probe_holds.store(true, order);
                    }
                    return Ok(Lease::Open);
                }
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(self.error(
                    format!(
                        "waited {}s for a connection: all {} (max_connections) stayed in use by \
                         other reads of this run; raise max_connections",
                        CONNECTION_WAIT.as_secs(),
                        self.config.max_connections
                    ),
                    false,
                ));
            }
        }
    }

    /// A session for `purpose`: an idle one, or a new one `open` opens in the room the cap
    /// gives (freed again if it fails).
    pub(crate) async fn session<S: Pooled, F>(
        &self,
        purpose: Purpose,
        open: impl FnOnce() -> F,
    ) -> Result<S, DatabaseError>
    where
        F: std::future::Future<Output = Result<S, DatabaseError>>,
    {
        match self.lease::<S>(purpose).await? {
            Lease::Idle(session) => Ok(session),
            Lease::Open => match open().await {
                Ok(session) => Ok(session),
                Err(e) => {
                    if purpose == Purpose::Probe {
                        self.probe_released();
                    }
                    self.opened_nothing().await;
                    Err(e)
                }
            },
        }
    }

    /// The latency probe is done with its connection (handed back, or dropped).
    pub(crate) fn probe_released(&self) {
        self.probe_holds.store(false, Ordering::SeqCst);
        self.freed.notify_one();
    }

    /// The room a [`Lease::Open`] gave was not used (the connection failed).
    async fn opened_nothing(&self) {
        self.closed().await;
    }

    /// A connection has ended.
    pub(crate) async fn closed(&self) {
        let mut st = self.state.lock().await;
        st.open = st.open.saturating_sub(1);
        drop(st);
        self.freed.notify_one();
    }

    /// A healthy session handed back for the next asker.
    pub(crate) async fn park<S: Pooled>(&self, session: S) {
        S::shelf(&mut self.state.lock().await.idle).push(session);
        self.freed.notify_one();
    }
}

/// Every declared database's pool.
#[derive(Debug, Default, Clone)]
pub(crate) struct Databases {
    pools: BTreeMap<String, Arc<Pool>>,
}

impl Databases {
    /// Pools for `configs` (no connection is opened yet).
    pub(crate) fn new<'a>(configs: impl IntoIterator<Item = &'a DatabaseConfig>) -> Databases {
        Databases {
            pools: configs
                .into_iter()
                .map(|c| (c.name.clone(), Arc::new(Pool::new(c.clone()))))
                .collect(),
        }
    }

    /// Every pool, by name.
    pub(crate) fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    /// The pool of database `name`.
    pub(crate) fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.get(name).cloned()
    }
}
