//! Databases as sources (issue 14; the plan: `docs/design/databases.md`): connections under
//! a cap that holds for the whole run, read-only sessions, and tables whose rows are read
//! with the database's bulk path and decoded straight into Arrow.
//!
//! - [`Databases`]: one [`Pool`] per `[databases.NAME]`, shared by every model, unit and scan
//!   of the process;
//! - [`postgres`]: PostgreSQL sessions, column types, and the binary COPY decoder;
//! - [`scan`]: a database source as a DataFusion table, and the plan node that reads it.
//!
//! Errors name the database by its URL without the password, and the table; the password
//! is never in a message.

pub(crate) mod postgres;
pub(crate) mod scan;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{DatabaseConfig, DatabaseKind};

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

/// The connections of one database: at most `max_connections` at once, whoever asks.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The database.
    pub(crate) config: DatabaseConfig,
    permits: Arc<Semaphore>,
}

impl Pool {
    fn new(config: DatabaseConfig) -> Pool {
        let permits = Arc::new(Semaphore::new(config.max_connections));
        Pool { config, permits }
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

    /// Waits for a connection slot: the connection opened under it counts against the cap
    /// until the permit is dropped.
    pub(crate) async fn slot(&self) -> Result<OwnedSemaphorePermit, DatabaseError> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| self.error("the connection pool was closed", false))
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

    /// The pool of database `name`.
    pub(crate) fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.get(name).cloned()
    }
}

/// Whether sluice can read this kind of database yet.
pub(crate) fn readable(kind: DatabaseKind) -> bool {
    kind == DatabaseKind::Postgres
}
