//! Resuming a killed run: what a run does, as a fingerprint (a run is resumed only by one
//! with the same fingerprint), and which of a model's units the resumed run keeps.

use std::collections::{BTreeMap, BTreeSet};

use super::prepare::Prepared;
use super::{RunCx, RunOptions};
use crate::error::Error;
use crate::state::UnitRecord;
use crate::table::Output;
use crate::units::Unit;

/// What a run does, as a hash: the selected models' rendered SQL, sinks and batches, the
/// sources they read, the selection and the variables. A run is only resumed by a run with
/// the same fingerprint.
pub(super) fn fingerprint(prepared: &Prepared, opts: &RunOptions) -> String {
    let mut text = format!("{:?}|{:?}", prepared.selected, opts.vars);
    for name in &prepared.selected {
        let m = &prepared.pipeline.models[name];
        text.push_str(&format!(
            "|{name}:{}:{}:{}:{:?}:{}:{}:{:?}:{:?}:{:?}",
            prepared.dag.nodes[name].sql,
            m.sink.location,
            m.sink.format.name(),
            m.sink.partition_by,
            m.sink.mode.name(),
            m.sink.target_rows_per_file,
            m.batches,
            m.files_per_unit,
            m.key_buckets
        ));
        // Everything upstream: the SQL of the models it reads (views are inlined into it) and
        // the full definition of its sources.
        for up in prepared.dag.upstream(name) {
            text.push_str(&format!("|{up}:{}", prepared.dag.nodes[&up].sql));
        }
        for src in prepared.dag.sources_read(name) {
            text.push_str(&format!("|{src}:{:?}", prepared.pipeline.sources[&src]));
        }
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// The units of `model` that this run (a resumed one) already committed and that it keeps,
/// by name: those of the current plan whose recorded files are all still there (in staging,
/// or already moved by an interrupted publish). The staging leftovers of every other unit
/// are removed first, so those run again from nothing.
pub(super) async fn kept_units(
    cx: &RunCx<'_>,
    model: &str,
    units: &[Unit],
    output: &Output,
) -> Result<BTreeMap<String, UnitRecord>, Error> {
    let planned: BTreeSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
    let mut done: BTreeMap<String, UnitRecord> = cx
        .state
        .map(|s| s.done_units(cx.run_id, model))
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .filter(|u| planned.contains(u.unit.as_str()))
        .map(|u| (u.unit.clone(), u))
        .collect();
    for u in units.iter().filter(|u| !done.contains_key(&u.name)) {
        let _ = output.discard_staging(cx.run_id, Some(u.index)).await;
    }
    let mut lost = Vec::new();
    for (unit, record) in &done {
        if !output.files_present(cx.run_id, &record.files).await {
            lost.push(unit.clone());
        }
    }
    for unit in lost {
        tracing::warn!(model = %model, unit = %unit, "a kept unit's files are gone: running it again");
        done.remove(&unit);
    }
    Ok(done)
}
