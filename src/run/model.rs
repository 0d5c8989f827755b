//! Running one table model: its units (those a resumed run already committed are kept), then
//! its rejects counted against their limits, its checks on the staged output, and one publish
//! of everything the units staged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;

use super::RunCx;
use super::prepare::{register_output, sink_spec};
use super::unit::{UnitDone, UnitJob, plan_units, run_unit};
use crate::catalog;
use crate::config::ModelConfig;
use crate::engine::{Engine, ScanRows};
use crate::error::Error;
use crate::report::{ModelReport, UnitReport};
use crate::sink;
use crate::state::UnitRecord;
use crate::store::Location;
use crate::table;
use crate::units::{self, Unit};

/// Runs one table model: its units (those a resumed run already committed are kept), then
/// one publish of everything they staged, then registers the output for downstream models.
pub(super) async fn run_table_model(
    cx: &RunCx<'_>,
    name: &str,
    schema: &SchemaRef,
    report: &mut ModelReport,
) -> Result<(), Error> {
    let model = &cx.pipeline.models[name];
    let model_err = |message: String| Error::Model {
        model: model.name.clone(),
        message,
    };
    let spec = sink_spec(cx.engine, model)?;
    let store = cx.engine.stores().store_for(&spec.location)?;
    let (output, existing) = sink::prepare(store, &spec, cx.run_id)
        .await
        .map_err(|e| model_err(e.to_string()))?;
    let to_display = |f: &str| {
        std::path::Path::new(f)
            .strip_prefix(&cx.pipeline.root)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| f.to_string())
    };

    // A resumed run that already published this model: nothing to redo.
    if let Some(m) = &existing.manifest
        && m.run_id == cx.run_id
    {
        tracing::info!(model = %name, "already published by this run");
        output.clean_up(&existing, m, cx.run_id).await;
        let mine: Vec<_> = m
            .files
            .iter()
            .filter(|f| f.path.contains(cx.run_id))
            .collect();
        report.rows_out = mine.iter().map(|f| f.rows).sum();
        report.outputs = mine
            .iter()
            .map(|f| to_display(&output.location().display_key(&output.key(&f.path))))
            .collect();
        let done = cx
            .state
            .map(|s| s.done_units(cx.run_id, name))
            .transpose()?
            .unwrap_or_default();
        report.units_total = done.len() as u64;
        report.units_done = done.len() as u64;
        report.rows_in = done.iter().map(|u| u.rows_in).sum();
        report.units = done.into_iter().map(unit_report).collect();
        register_output(cx.engine, model, Some(schema)).await?;
        return Ok(());
    }

    let units = plan_units(cx.engine, cx.pipeline, cx.dag, model)
        .await
        .map_err(model_err)?;
    let event_sources = units::event_sources(cx.pipeline, &cx.dag.sources_read(name));
    let planned: BTreeSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
    let mut done: BTreeMap<String, UnitRecord> = cx
        .state
        .map(|s| s.done_units(cx.run_id, name))
        .transpose()?
        .unwrap_or_default()
        .into_iter()
        .filter(|u| planned.contains(u.unit.as_str()))
        .map(|u| (u.unit.clone(), u))
        .collect();
    // Leftovers of units not done are removed first; then a kept unit must still have every
    // file it recorded (in staging, or already moved by an interrupted publish), or it runs
    // again.
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
        tracing::warn!(model = %name, unit = %unit, "a kept unit's files are gone: running it again");
        done.remove(&unit);
    }
    report.units_total = units.len() as u64;
    let pending: Vec<&Unit> = units
        .iter()
        .filter(|u| !done.contains_key(&u.name))
        .collect();
    if !done.is_empty() {
        tracing::info!(model = %name, kept = done.len(), pending = pending.len(), "resuming: committed units are kept");
    }
    let bar = cx.progress.units(name, units.len() as u64);
    for _ in 0..done.len() {
        bar.unit_done();
    }
    let job = UnitJob {
        model,
        spec: &spec,
        output: &output,
        event_sources: &event_sources,
    };
    let kept = done.len();
    let results: Vec<Result<UnitDone, String>> = futures::stream::iter(pending)
        .map(|u| run_unit(cx, &job, u, &bar))
        .buffer_unordered(model.units.max_concurrent.max(1))
        .collect()
        .await;
    bar.finish();
    let mut records: Vec<UnitRecord> = done.into_values().collect();
    let mut first_error = None;
    // Rows read per table, known for the units run now (a kept unit recorded only its total).
    let mut scanned: Option<ScanRows> = None;
    for r in results {
        match r {
            Ok((rec, _, joins, scan)) => {
                crate::join::merge_reports(&mut report.joins, joins);
                records.push(rec);
                match &mut scanned {
                    Some(all) => all.merge(&scan),
                    None => scanned = Some(scan),
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    records.sort_by(|a, b| a.unit.cmp(&b.unit));
    report.units_done = records.len() as u64;
    report.rows_in = records.iter().map(|u| u.rows_in).sum();
    report.spilled_bytes = records.iter().map(|u| u.spilled_bytes).sum();
    report.units = records.iter().cloned().map(unit_report).collect();
    if let Some(e) = first_error {
        return Err(model_err(e));
    }
    let files: Vec<table::StagedFile> = records.into_iter().flat_map(|r| r.files).collect();
    // Rows quarantined while reading: written out and counted, and past a source's
    // max_bad_rows the model fails here, before anything is published.
    let rejected = collect_rejects(cx, model).await.map_err(model_err)?;
    report.rows_rejected = rejected.values().sum();
    // Rows read = rows the scans passed on + rows set aside.
    report.rows_in += report.rows_rejected;
    let scanned = scanned.filter(|_| kept == 0);
    if let Some(scan) = &scanned {
        report.rows_in_by_source = scan.by_table.clone();
        for (source, n) in &rejected {
            *report.rows_in_by_source.entry(source.clone()).or_default() += n;
        }
    }
    if !model.checks.is_empty() {
        // Write, audit, publish: the checks read the staged files where they will be
        // published; a failed error check fails the model with the previous output intact.
        register_staged(
            cx.engine, model, &output, &existing, &spec, cx.run_id, schema, &files,
        )
        .await
        .map_err(|e| model_err(e.to_string()))?;
        report.checks = crate::checks::run(cx.engine.ctx(), &model.name, &model.checks).await;
        let blocking: Vec<String> = report
            .checks
            .iter()
            .filter(|c| c.blocks())
            .map(|c| format!("{}: {}", c.check, c.message.as_deref().unwrap_or("failed")))
            .collect();
        if !blocking.is_empty() {
            let _ = cx.engine.ctx().deregister_table(model.name.as_str());
            return Err(model_err(format!(
                "{} failed, nothing published: {}",
                if blocking.len() == 1 {
                    "a check".to_string()
                } else {
                    format!("{} checks", blocking.len())
                },
                blocking.join("; ")
            )));
        }
    }
    let committed = sink::publish(
        &output,
        &existing,
        &spec,
        cx.run_id,
        table::manifest_columns(schema),
        files,
    )
    .await
    .map_err(|e| model_err(e.to_string()))?;
    register_output(cx.engine, model, Some(schema)).await?;
    report.rows_out = committed.rows;
    report.outputs = committed.new_files.iter().map(|f| to_display(f)).collect();
    if let Some(filtered) = scanned.and_then(|s| s.filtered) {
        report.balance(filtered);
    }
    Ok(())
}

/// The rejects of the quarantined sources `model` read in this run: each source's written as
/// Parquet (file, line, raw, reason) to `<rejects>/run=<run_id>/rejects.parquet` (default
/// rejects folder `.sluice/rejects/<source>/`), counted; a source past its `max_bad_rows` is
/// an error naming it, the count and the first reasons. Returns the count per source.
async fn collect_rejects(
    cx: &RunCx<'_>,
    model: &ModelConfig,
) -> Result<BTreeMap<String, u64>, String> {
    use datafusion::arrow::array::{StringArray, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut total = BTreeMap::new();
    for source in cx.dag.sources_read(&model.name) {
        let spec = &cx.pipeline.sources[&source];
        if spec.on_bad_rows != crate::config::OnBadRows::Quarantine {
            continue;
        }
        let Ok(Some(provider)) = cx
            .engine
            .ctx()
            .table_provider(source.as_str())
            .await
            .map(Some)
        else {
            continue;
        };
        let Some(table) = provider.downcast_ref::<crate::quarantine::QuarantineTable>() else {
            continue;
        };
        let (rejects, good) = table.sink.take();
        if rejects.is_empty() {
            continue;
        }
        let count = rejects.len() as u64;
        total.insert(source.clone(), count);
        let schema = Arc::new(Schema::new(vec![
            Field::new("file", DataType::Utf8, false),
            Field::new("line", DataType::UInt64, false),
            Field::new("raw", DataType::Utf8, false),
            Field::new("reason", DataType::Utf8, false),
        ]));
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rejects.iter().map(|r| &r.file),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    rejects.iter().map(|r| r.line),
                )),
                Arc::new(StringArray::from_iter_values(
                    rejects.iter().map(|r| &r.raw),
                )),
                Arc::new(StringArray::from_iter_values(
                    rejects.iter().map(|r| &r.reason),
                )),
            ],
        )
        .map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        {
            let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None)
                .map_err(|e| e.to_string())?;
            w.write(&batch).map_err(|e| e.to_string())?;
            w.close().map_err(|e| e.to_string())?;
        }
        let folder = spec.rejects.clone().unwrap_or_else(|| {
            crate::config::resolve_location(
                &format!(".sluice/rejects/{source}/"),
                &cx.pipeline.root,
            )
        });
        let location = Location::parse(&folder)
            .map_err(|e| e.to_string())?
            .as_folder();
        let store = cx
            .engine
            .stores()
            .store_for(&location)
            .map_err(|e| e.to_string())?;
        let key = location.child(&format!("run={}/rejects.parquet", cx.run_id));
        object_store::ObjectStoreExt::put(store.as_ref(), &key, bytes.into())
            .await
            .map_err(|e| {
                format!("cannot write the rejects of source '{source}' to {folder}: {e}")
            })?;
        tracing::warn!(source = %source, count, "rows quarantined to {folder}");
        let ratio = count as f64 / (count + good).max(1) as f64;
        let over = match (spec.max_bad_rows, spec.max_bad_ratio) {
            (Some(max), _) if count > max => Some(format!("max_bad_rows = {max}")),
            (_, Some(max)) if ratio > max => Some(format!(
                "{:.2} % of {} rows, max_bad_ratio = {max}",
                ratio * 100.0,
                count + good
            )),
            _ => None,
        };
        if let Some(limit) = over {
            let first: Vec<String> = rejects
                .iter()
                .take(3)
                .map(|r| format!("{}:{}: {}", r.file, r.line, r.reason))
                .collect();
            return Err(format!(
                "source '{source}': {count} bad rows ({limit}), nothing published; \
                 first: {}; all of them in {folder}",
                first.join("; ")
            ));
        }
    }
    Ok(total)
}

/// Registers a model's output as it will be once published — its staged files, not yet
/// published, beside the current files the new version keeps (append, overwrite_partitions)
/// — as its table: each file shown at the key it will be published at, so partitions read as
/// they will after the publish.
#[allow(clippy::too_many_arguments)]
async fn register_staged(
    engine: &Engine,
    model: &ModelConfig,
    output: &table::Output,
    existing: &table::Existing,
    spec: &sink::SinkSpec,
    run_id: &str,
    schema: &SchemaRef,
    files: &[table::StagedFile],
) -> Result<(), Error> {
    let staging = table::Output::staging_dir(run_id);
    // The output as it will be once published: in append and overwrite_partitions mode the
    // files the new version keeps, beside the staged ones.
    let kept = table::kept_files(existing, spec.mode, &spec.partition_by, files);
    let view = crate::table::view::ManifestStore::aliased(
        output.store(),
        files
            .iter()
            .map(|f| {
                (
                    output.key(&f.file.path),
                    output.key(&format!("{staging}/{}", f.staged)),
                    f.file.bytes,
                )
            })
            .chain(kept.iter().map(|f| {
                let key = output.key(&f.path);
                (key.clone(), key, f.bytes)
            })),
        chrono::Utc::now(),
    );
    let manifest = table::Manifest::new(
        run_id,
        spec.format.name(),
        &spec.partition_by,
        table::manifest_columns(schema),
        files
            .iter()
            .map(|f| f.file.clone())
            .chain(kept.iter().cloned())
            .collect(),
    );
    catalog::register_manifest(
        engine.ctx(),
        &model.name,
        output.location(),
        Arc::new(view),
        &manifest,
        Some(schema),
    )
    .await?;
    Ok(())
}

fn unit_report(u: UnitRecord) -> UnitReport {
    UnitReport {
        unit: u.unit,
        status: u.status,
        attempts: u.attempts,
        rows_in: u.rows_in,
        rows_out: u.rows_out,
        elapsed_ms: u.elapsed_ms,
        peak_memory: u.peak_memory,
        spilled_bytes: u.spilled_bytes,
        error: u.error,
    }
}
