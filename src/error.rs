//! The one public error type, and the single place that decides its exit status.
//!
//! Each layer keeps its own error enum ([`ConfigError`], [`PlanError`], [`StoreError`],
//! [`CatalogError`], [`SinkError`], ...) whose variants carry the context a user needs: the file
//! and line, the model, the object key. They fold into [`Error`] here, and `main` turns an
//! [`Error`] into a message and an exit status through [`Error::exit_code`] and nothing else.

use crate::catalog::CatalogError;
use crate::config::ConfigError;
use crate::plan::PlanError;
use crate::sink::SinkError;
use crate::state::StateError;
use crate::store::StoreError;

/// Exit status of a successful command.
pub const EXIT_OK: i32 = 0;
/// Exit status when the run failed: a model, unit, file or object could not be processed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status for bad usage or an invalid pipeline.
pub const EXIT_USAGE: i32 = 2;

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
    /// A query run by `sluice sql` or `sluice bench` failed.
    #[error("{context}: {source}")]
    Query {
        /// What was being done, e.g. `query 'q1.sql'`.
        context: String,
        /// The engine's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// A run finished but some models failed; the report holds the details.
    #[error("{failed} of {total} models failed")]
    RunFailed {
        /// How many models failed.
        failed: usize,
        /// How many models were selected.
        total: usize,
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
            Error::Config(_) | Error::Plan(_) => EXIT_USAGE,
            Error::Store(e) if e.is_usage() => EXIT_USAGE,
            Error::Catalog(e) if e.is_usage() => EXIT_USAGE,
            Error::Sink(e) if e.is_usage() => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

/// Result with sluice's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Renders a DataFusion error for a user: the innermost useful message, without the
/// "Arrow error: External error: ..." wrapping and without a backtrace.
pub fn describe_datafusion(err: &datafusion::error::DataFusionError) -> String {
    describe_storage(&describe_engine(err))
}

/// A storage failure in words a user can act on: a refusal (HTTP 403, or object_store's
/// "lacked the necessary privileges") starts with "access denied", and a server's XML error
/// body (many lines) is cut off. Other messages pass unchanged.
pub fn describe_storage(message: &str) -> String {
    let text = message
        .split("<?xml")
        .next()
        .unwrap_or(message)
        .trim_end()
        .trim_end_matches(':')
        .replace("External: ", "");
    let denied = text.contains("lacked the necessary privileges")
        || text.contains("403 Forbidden")
        || text.contains("AccessDenied");
    if denied && !text.starts_with("access denied") {
        format!("access denied (check the credentials and the bucket's policy): {text}")
    } else {
        text
    }
}

fn describe_engine(err: &datafusion::error::DataFusionError) -> String {
    use datafusion::error::DataFusionError as D;
    match err {
        D::Context(ctx, inner) => format!("{ctx}: {}", describe_engine(inner)),
        D::Shared(inner) => describe_engine(inner),
        D::External(inner) => describe_external(inner.as_ref()),
        D::ArrowError(inner, _) => describe_arrow(inner),
        D::ObjectStore(inner) => inner.to_string(),
        // (The parquet error's own text starts "Parquet error: ".)
        D::ParquetError(inner) => inner.to_string(),
        D::Collection(errs) => errs
            .first()
            .map(describe_engine)
            .unwrap_or_else(|| err.to_string()),
        other => other.strip_backtrace(),
    }
}

fn describe_arrow(err: &datafusion::arrow::error::ArrowError) -> String {
    use datafusion::arrow::error::ArrowError as A;
    match err {
        A::ExternalError(inner) => describe_external(inner.as_ref()),
        other => other.to_string(),
    }
}

fn describe_external(err: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    if let Some(df) = err.downcast_ref::<datafusion::error::DataFusionError>() {
        describe_engine(df)
    } else if let Some(arrow) = err.downcast_ref::<datafusion::arrow::error::ArrowError>() {
        describe_arrow(arrow)
    } else {
        err.to_string()
    }
}
