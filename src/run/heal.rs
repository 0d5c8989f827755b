//! Healing a pipeline's outputs when a command opens it: what crashed writers left in or
//! beside an output folder (moved but uncommitted files, files a committed version replaced,
//! staging) is deleted before anything else happens, so readers that list the folders see
//! only committed files from then on (see [`crate::table::heal`] for what counts as a
//! leftover, and who decides a writer has ended).

use std::sync::Arc;

use super::Prepared;
use crate::config::Pipeline;
use crate::state::StateStore;
use crate::store::Location;
use crate::table::{Ended, Output};

/// The pipeline's runs that have ended, by its state store (none if it has none yet; see
/// [`StateStore::ended_run_ids`]), and the one the next run may resume, whose staging stays.
/// Enough for a command that does not hold the run lock: a run that starts later has a new id.
pub(crate) fn ended_runs(pipeline: &Pipeline) -> Ended {
    if !pipeline.settings.state.exists() {
        return Ended::default();
    }
    let as_of = chrono::Utc::now();
    let state = StateStore::open(&pipeline.settings.state);
    match state.and_then(|s| Ok((s.ended_run_ids()?, s.last_unfinished_run(&pipeline.name)?))) {
        Ok((ids, resumable)) => Ended {
            runs: ids.into_iter().collect(),
            as_of: Some(as_of),
            resumable,
        },
        Err(e) => {
            tracing::warn!("cannot read the state store to heal outputs: {e}");
            Ended::default()
        }
    }
}

/// Heals the output of every table model of the pipeline (selected or not). A failure is a
/// warning: the write that comes next heals its own output again, and fails if it must.
pub(crate) async fn heal_outputs(prepared: &Prepared, me: Option<&str>, ended: &Ended) {
    for model in prepared.pipeline.models.values() {
        if !model.materialized.is_written() {
            continue;
        }
        let Ok(location) = Location::parse(&model.sink.location).map(|l| l.as_folder()) else {
            continue;
        };
        let Ok(store) = prepared.engine.stores().store_for(&location) else {
            continue;
        };
        let mut output = Output::new(Arc::clone(&store), location);
        // Files staged in `[settings] staging` are healed there.
        if let Some(root) = prepared.pipeline.settings.staging.as_deref()
            && let Ok(root) = Location::parse(root)
        {
            match output.with_staging_root(&root) {
                Ok(o) => output = o,
                Err(_) => continue,
            }
        }
        match output.heal(me, ended).await {
            Ok(survey) if survey.deleted > 0 => tracing::info!(
                model = %model.name,
                files = survey.deleted,
                "healed the output: deleted what crashed or replaced writes left"
            ),
            Ok(survey) if !survey.in_flight.is_empty() => tracing::info!(
                model = %model.name,
                files = survey.in_flight.len(),
                "another writer is publishing the output"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                model = %model.name,
                "cannot heal the output: {} ({})",
                e.key,
                e.message
            ),
        }
    }
}
