//! `sluice check`: the selected models' checks, run on their published outputs.

use std::path::Path;

use super::Context;
use crate::checks::CheckResult;
use crate::error::{EXIT_FAILED, EXIT_OK, Error};
use crate::run::{Prepared, RunOptions, register_output};

/// Runs the checks of the selected models on their published outputs and prints them (as
/// JSON with `json`). Exit status 1 when a check that blocks failed.
pub async fn execute(
    path: &Path,
    opts: &RunOptions,
    json: bool,
    cx: &Context<'_>,
) -> Result<i32, Error> {
    let pipeline = cx.load_pipeline(path)?;
    let prepared = crate::run::prepare(pipeline, opts, cx.env.clone()).await?;
    let ended = crate::run::heal::ended_runs(&prepared.pipeline);
    crate::run::heal::heal_outputs(&prepared, None, &ended).await;
    let results = check(&prepared).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&results).unwrap_or_default()
        );
    } else {
        print!("{}", describe_checks(&results));
    }
    let failed = results
        .iter()
        .any(|(_, checks)| checks.iter().any(|c| c.blocks()));
    Ok(if failed { EXIT_FAILED } else { EXIT_OK })
}

/// `sluice check`: each selected table model's checks, on its published output. Models
/// without checks are left out; a model never run is an error naming it.
async fn check(prepared: &Prepared) -> Result<Vec<(String, Vec<CheckResult>)>, Error> {
    let mut out = Vec::new();
    let state = crate::state::StateStore::open_existing(&prepared.pipeline.settings.state)?;
    for name in &prepared.selected {
        let model = &prepared.pipeline.models[name];
        if model.checks.is_empty() || !model.materialized.is_written() {
            continue;
        }
        register_output(&prepared.engine, model, prepared.schemas.get(name)).await?;
        // `late_rate`: the model's last recorded run.
        let late = match &state {
            Some(s) => s
                .late_history(name, 1)?
                .first()
                .map(|h| h.counts.late_rows()),
            None => None,
        };
        let results = crate::checks::run(prepared.engine.ctx(), name, &model.checks, late).await;
        out.push((name.clone(), results));
    }
    Ok(out)
}

/// `sluice check`'s text: a line per check, and a summary.
fn describe_checks(results: &[(String, Vec<CheckResult>)]) -> String {
    let mut out = String::new();
    let (mut total, mut blocking, mut warned) = (0, 0, 0);
    for (model, checks) in results {
        for c in checks {
            total += 1;
            blocking += usize::from(c.blocks());
            warned += usize::from(c.status == crate::status::CheckStatus::Warn);
            out.push_str(&format!(
                "  {model:<20} {:<5} {:<40} {}\n",
                c.status,
                c.check,
                c.message.as_deref().unwrap_or("")
            ));
        }
    }
    out.push_str(&format!(
        "{total} checks: {} passed, {blocking} failed, {warned} warnings\n",
        total - blocking - warned
    ));
    out
}
