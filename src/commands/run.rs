//! `sluice run`: load, prepare and run a pipeline; write its report; print its summary.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Context, usage};
use crate::error::{EXIT_FAILED, EXIT_OK, Error};
use crate::report::RunReport;
use crate::run::{self, RunOptions};
use crate::status::ModelStatus;

/// What `sluice run` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pipeline folder, or its sluice.toml.
    pub path: PathBuf,
    /// Selection, variables, engine settings, `--dry-run`, `--restart`.
    pub run: RunOptions,
    /// `--report FILE`: where the JSON run report goes.
    pub report: Option<PathBuf>,
}

/// Runs the pipeline. Exit status 0 when every model succeeded, 1 when one failed; an error
/// before any model ran (an invalid pipeline, a missing source) is returned, and still
/// written to the report.
pub async fn execute(opts: &Options, cx: &Context<'_>) -> Result<i32, Error> {
    // Open the report first: a bad path is found before anything runs, and a run that stops
    // early still leaves a report saying why.
    let mut report_file = match &opts.report {
        Some(path) => Some(ReportFile::create(path)?),
        None => None,
    };
    let started_at = crate::config::timestamp_now();
    let pipeline = match cx.load_pipeline(&opts.path) {
        Ok(p) => p,
        Err(e) => {
            let e = Error::from(e);
            if let Some(file) = report_file.as_mut() {
                let report =
                    RunReport::not_run(crate::table::new_run_id(), "", started_at, e.to_string());
                file.write(&report)?;
            }
            return Err(e);
        }
    };
    let kept = pipeline.clone();
    let prepared = match run::prepare(pipeline, &opts.run, cx.env.clone()).await {
        Ok(p) => p,
        Err(e) => {
            let report = RunReport::not_run(
                crate::table::new_run_id(),
                &kept.name,
                started_at,
                e.to_string(),
            );
            if let Some(file) = report_file.as_mut() {
                file.write(&report)?;
            }
            if !opts.run.dry_run
                && let Err(state_err) = run::record_not_run(&kept, &report)
            {
                tracing::warn!("cannot record the run: {state_err}");
            }
            return Err(e);
        }
    };
    if opts.run.dry_run && !cx.quiet {
        print!("{}", super::plan::describe_plan(&prepared).await);
    }
    let report = run::run(prepared, &opts.run, cx.progress).await?;
    if let Some(file) = report_file.as_mut() {
        file.write(&report)?;
    }
    if !cx.quiet {
        eprint!("{}", report.summary());
    }
    if report.succeeded() {
        return Ok(EXIT_OK);
    }
    for m in report
        .models
        .iter()
        .filter(|m| m.status == ModelStatus::Failed)
    {
        eprintln!(
            "error: model '{}' failed: {}",
            m.name,
            m.error.as_deref().unwrap_or("unknown error")
        );
    }
    Ok(EXIT_FAILED)
}

/// The `--report` file, created before the run starts.
struct ReportFile {
    file: std::fs::File,
    path: PathBuf,
}

impl ReportFile {
    fn create(path: &Path) -> Result<ReportFile, Error> {
        let file = std::fs::File::create(path)
            .map_err(|e| usage("--report", format!("cannot write {}: {e}", path.display())))?;
        Ok(ReportFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, report: &RunReport) -> Result<(), Error> {
        self.file
            .write_all(report.to_json().as_bytes())
            .map_err(|source| Error::Io {
                path: self.path.display().to_string(),
                source,
            })
    }
}
