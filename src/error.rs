//! The one public error type, and the single place that decides its exit status.
//!
//! Each layer keeps its own error enum ([`ConfigError`], [`PlanError`], [`StoreError`],
//! [`CatalogError`], [`SinkError`], ...) whose variants carry the context a user needs: the file
//! and line, the model, the object key. They fold into [`Error`] here, and `main` turns an
//! [`Error`] into a message and an exit status through [`Error::exit_code`] and nothing else.

use crate::catalog::CatalogError;
use crate::cluster::ClusterError;
use crate::config::ConfigError;
use crate::dag::PlanError;
use crate::engine::EngineError;
use crate::sink::SinkError;
use crate::state::StateError;
use crate::store::StoreError;

/// Exit status of a successful command.
pub const EXIT_OK: i32 = 0;
/// Exit status when the run failed: a model, unit, file or object could not be processed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status for bad usage or an invalid pipeline.
pub const EXIT_USAGE: i32 = 2;
/// Exit status of a run started outside its run window: nothing ran, try again later
/// (sysexits' EX_TEMPFAIL).
pub const EXIT_DEFERRED: i32 = 75;

/// Everything that can go wrong in sluice, with the context a user needs to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `sluice.toml` or a command-line value is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model's SQL or the DAG is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A location or store could not be resolved or reached.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A source could not be registered (missing files, unreadable schema, ...).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The state store failed, or another run holds the pipeline.
    #[error(transparent)]
    State(#[from] StateError),
    /// The query engine could not start.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A model failed while it ran.
    #[error("model '{model}' failed: {message}")]
    Model {
        /// The model that failed.
        model: String,
        /// What went wrong, with the file or object where known.
        message: String,
    },
    /// A write or commit of an output failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The cluster could not be reached, or refused or failed a job.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A query run by `sluice sql` or `sluice bench` failed.
    #[error("{context}: {source}")]
    Query {
        /// What was being done, e.g. `query 'q1.sql'`.
        context: String,
        /// The engine's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// A benchmark answer did not match the expected one.
    #[error("{0}")]
    WrongAnswer(String),
    /// Writing the run report or printing output failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file or stream being written.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The process exit status for this error: 2 for bad usage or an invalid pipeline, 1 for
    /// a run that failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Plan(_) | Error::Store(_) => EXIT_USAGE,
            Error::Catalog(e) if e.is_usage() => EXIT_USAGE,
            Error::Sink(e) if e.is_usage() => EXIT_USAGE,
            Error::Cluster(e) if e.is_usage() => EXIT_USAGE,
            Error::Engine(e) if e.is_usage() => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

/// Result with sluice's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
