//! Compaction at publish: many units each write their own small files (a year of daily
//! units over a three-partition sink: 1,095 files of a few rows). Before the publish, the
//! small staged files of each partition are rewritten into files of the sink's target size,
//! so readers list and open a few files, not one per unit.
//!
//! Files are merged within one partition folder and, in an incremental model's output, one
//! period (a reprocessed period replaces exactly its own files). Only staged files are
//! merged, never files already published. The merged files are staged under a slot of their
//! own; the units' files stay in staging until the commit removes it, so a run killed after
//! compacting resumes from its units and compacts again. A sorted result is not compacted
//! (merging would interleave the units' sorted files).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::{SinkError, SinkSpec, UnitSlot};
use crate::table::{ManifestFile, Output, StagedFile};

/// What compaction did, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Compacted {
    /// Small files merged.
    pub files_in: u64,
    /// Files they were merged into.
    pub files_out: u64,
}

/// Merges, per partition folder and period, the staged files below half the sink's target
/// size (in bytes and in rows) when there are two or more, into files of the target size.
/// Returns the files to publish: the untouched ones and the merged ones. Of `kept` (staged
/// names of a resumed run's kept units), those no longer in staging (moved to the output by
/// a publish that was killed) are published as they are.
pub(crate) async fn compact(
    main: &SessionContext,
    output: &Output,
    spec: &SinkSpec,
    run_id: &str,
    schema: &SchemaRef,
    files: Vec<StagedFile>,
    kept: &BTreeSet<String>,
) -> Result<(Vec<StagedFile>, Compacted), SinkError> {
    let small = |f: &StagedFile| {
        f.file.bytes < spec.target_file_size / 2
            && f.file.rows < (spec.target_rows_per_file / 2) as u64
    };
    let moved = moved_files(output, run_id, &files, kept).await?;
    let mut keep = Vec::new();
    let mut groups: BTreeMap<(String, Option<String>), Vec<StagedFile>> = BTreeMap::new();
    for f in files {
        if small(&f) && !moved.contains(&f.staged) {
            let key = (f.file.partition().to_string(), f.file.period.clone());
            groups.entry(key).or_default().push(f);
        } else {
            keep.push(f);
        }
    }
    let mut done = Compacted::default();
    for ((partition, period), mut group) in groups {
        if group.len() < 2 {
            keep.append(&mut group);
            continue;
        }
        // (In the order the units wrote them: the slot's name is stable for the group.)
        group.sort_by(|a, b| a.staged.cmp(&b.staged));
        let mut merged = merge(main, output, spec, run_id, schema, &partition, &group).await?;
        done.files_in += group.len() as u64;
        done.files_out += merged.len() as u64;
        for f in &mut merged {
            f.file.period = period.clone();
        }
        if let Some(first) = merged.first_mut() {
            first.file.merged = group.iter().map(|f| f.file.path.clone()).collect();
        }
        keep.append(&mut merged);
    }
    if done.files_in > 0 {
        tracing::info!(
            files = done.files_in,
            into = done.files_out,
            "compacted {} small staged files into {}",
            done.files_in,
            done.files_out
        );
    }
    Ok((keep, done))
}

/// Of `files`, those of `kept` that are not in staging any more.
async fn moved_files(
    output: &Output,
    run_id: &str,
    files: &[StagedFile],
    kept: &BTreeSet<String>,
) -> Result<BTreeSet<String>, SinkError> {
    let store = output.store();
    let checks = files.iter().filter(|f| kept.contains(&f.staged)).map(|f| {
        let store = Arc::clone(&store);
        let key = output.staged_key(run_id, &f.staged);
        async move {
            match store.head(&key).await {
                Ok(_) => Ok(None),
                Err(object_store::Error::NotFound { .. }) => Ok(Some(f.staged.clone())),
                Err(e) => Err(SinkError::Write {
                    key: key.to_string(),
                    message: e.to_string(),
                    transient: crate::describe::is_transient(&e),
                }),
            }
        }
    });
    let found: Vec<Result<Option<String>, SinkError>> = futures::stream::iter(checks)
        .buffer_unordered(16)
        .collect()
        .await;
    let mut moved = BTreeSet::new();
    for f in found {
        moved.extend(f?);
    }
    Ok(moved)
}

/// Rewrites `group` (staged files of one partition folder) into files of the target size,
/// staged under a slot named for the group.
async fn merge(
    main: &SessionContext,
    output: &Output,
    spec: &SinkSpec,
    run_id: &str,
    schema: &SchemaRef,
    partition: &str,
    group: &[StagedFile],
) -> Result<Vec<StagedFile>, SinkError> {
    let ctx = crate::engine::sibling_context(main);
    let name = "sluice_compaction";
    register_staged(&ctx, name, output, spec, run_id, schema, group, &[]).await?;
    let input = |e: datafusion::error::DataFusionError| SinkError::Input(e);
    let stream = ctx
        .table(name)
        .await
        .map_err(input)?
        .execute_stream()
        .await
        .map_err(input)?;
    let names: Vec<&str> = group.iter().map(|f| f.staged.as_str()).collect();
    let key = format!(
        "compact-{:016x}",
        crate::units::stable_hash(&format!("{partition}\n{}", names.join("\n")))
    );
    let mut spec = spec.clone();
    spec.preserve_order = false;
    let staged = super::stage_unit(
        output,
        &spec,
        stream,
        run_id,
        UnitSlot::attempt(&key),
        &|_| {},
    )
    .await?;
    Ok(staged.files)
}

/// Registers in `ctx`, as `name`, an output as it will be once published: the `staged`
/// files (read from staging, each shown at the key it will be published at, so partition
/// values read as they will) beside the published files the new version keeps, `kept`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn register_staged(
    ctx: &SessionContext,
    name: &str,
    output: &Output,
    spec: &SinkSpec,
    run_id: &str,
    schema: &SchemaRef,
    staged: &[StagedFile],
    kept: &[ManifestFile],
) -> Result<(), SinkError> {
    let view = crate::table::view::ManifestStore::aliased(
        output.store(),
        staged
            .iter()
            .map(|f| {
                (
                    output.key(&f.file.path),
                    output.staged_key(run_id, &f.staged),
                    f.file.bytes,
                )
            })
            .chain(kept.iter().map(|f| {
                let key = output.key(&f.path);
                (key.clone(), key, f.bytes)
            })),
        chrono::Utc::now(),
    );
    let manifest = crate::table::Manifest::new(
        run_id,
        spec.format.name(),
        &spec.partition_by,
        crate::table::manifest_columns(schema),
        staged
            .iter()
            .map(|f| f.file.clone())
            .chain(kept.iter().cloned())
            .collect(),
    );
    crate::catalog::register_manifest(
        ctx,
        name,
        output.location(),
        Arc::new(view),
        &manifest,
        Some(schema),
    )
    .await
    .map_err(|e| SinkError::Input(datafusion::error::DataFusionError::External(Box::new(e))))?;
    Ok(())
}
