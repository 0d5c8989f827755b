//! `sluice runs`: a pipeline's run history from its state store.

use std::path::PathBuf;

use super::Context;
use crate::error::{EXIT_OK, Error};
use crate::state::{StateStore, format_runs};

/// What `sluice runs` was asked to show.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pipeline folder, or its sluice.toml.
    pub path: PathBuf,
    /// At most this many runs, newest first.
    pub limit: usize,
    /// JSON instead of a table.
    pub json: bool,
}

/// Prints the runs.
pub fn execute(opts: &Options, cx: &Context<'_>) -> Result<i32, Error> {
    let pipeline = cx.load_pipeline(&opts.path)?;
    let state = StateStore::open(&pipeline.settings.state)?;
    let rows = state.runs(opts.limit)?;
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else if rows.is_empty() {
        eprintln!("no runs recorded in {}", state.path().display());
    } else {
        print!("{}", format_runs(&rows));
    }
    Ok(EXIT_OK)
}
