//! The commands `main` calls: one module per subcommand, each an `execute` that takes the
//! command's validated options and a [`Context`], prints what the command prints, and returns
//! the exit status. The library below never reads argv or the process environment: the
//! binary hands both in here.

pub mod check;
pub mod cluster;
pub mod plan;
pub mod run;
pub mod runs;
pub mod schedule;
pub mod sql;
pub mod status;
pub mod tpch;

use std::path::{Path, PathBuf};

use crate::config::{ConfigError, Pipeline};
use crate::error::Error;
use crate::progress::Progress;

/// What every command gets from the process it runs in.
pub struct Context<'a> {
    /// The process environment: `${env:NAME}` in sluice.toml, and the stores' credentials.
    pub env: Vec<(String, String)>,
    /// The folder that relative locations on the command line are resolved against.
    pub cwd: PathBuf,
    /// `--quiet`: print only errors.
    pub quiet: bool,
    /// Progress bars (hidden with `--quiet`).
    pub progress: &'a Progress,
    /// Raised by the binary when the process receives SIGINT or SIGTERM.
    pub interrupt: std::sync::Arc<crate::run::Interrupt>,
}

impl Context<'_> {
    /// The value of environment variable `name`, if set.
    pub fn var(&self, name: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    /// Loads the pipeline at `path` (a folder or its sluice.toml), with `${env:}` from the
    /// process environment.
    pub fn load_pipeline(&self, path: &Path) -> Result<Pipeline, ConfigError> {
        Pipeline::load(path, &|name| self.var(name))
    }
}

/// An error for a bad command-line value: `key` is the flag, e.g. `--var`.
pub fn usage(key: &str, message: impl Into<String>) -> Error {
    ConfigError::Invalid {
        path: PathBuf::from("command line"),
        line: None,
        key: key.to_string(),
        message: message.into(),
    }
    .into()
}

/// Writes `text` to the file at `path`.
pub(crate) fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}
