//! Resuming a killed run: what a run does, as a fingerprint (a run is resumed only by one
//! with the same fingerprint), and which of a model's units the resumed run keeps.

use super::RunOptions;
use super::prepare::Prepared;

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
