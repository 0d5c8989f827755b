//! Running one table model, as named phases: [`ModelRun::prepare`] (the sink checked),
//! [`ModelRun::already_published`] (a resumed run that published it redoes nothing),
//! [`ModelRun::run_units`] (its units, those a resumed run committed kept), [`ModelRun::count_rejects`]
//! (quarantined rows written and held against their limits), [`ModelRun::check_staged`]
//! (its checks on the staged output), and [`ModelRun::publish`] (one commit of everything the
//! units staged).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;

use super::RunCx;
use super::prepare::{register_output, sink_spec};
use super::resume;
use super::unit::{
    IncrementalWork, UnitDone, UnitFailure, UnitJob, UnitRejects, plan_units, run_unit,
};
use crate::config::{ModelConfig, OnBadRows, WriteMode};
use crate::engine::{Engine, ScanRows};
use crate::error::Error;
use crate::quarantine::{QuarantineTable, SourceRejects, rejects};
use crate::report::{ModelReport, UnitReport};
use crate::sink::{self, SinkSpec};
use crate::state::{FileSeen, UnitRecord};
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
    let run = ModelRun::prepare(cx, name, schema).await?;
    let mut result = run.run(name, report).await;
    if result.is_ok() {
        // (After the publish of the output, its mirror, or a resumed run's finding that it
        // was published.)
        let append_id = run.spec.append_id.as_deref();
        result = super::database_load::load(cx, run.model, append_id, schema, report).await;
    }
    if result.is_err() {
        run.output.release(cx.run_id).await;
    }
    result
}

impl ModelRun<'_> {
    /// The phases after [`ModelRun::prepare`].
    async fn run(&self, name: &str, report: &mut ModelReport) -> Result<(), Error> {
        let run = self;
        let cx = self.cx;
        let planning = super::unit::Planning {
            clock: cx.clock,
            state: cx.state,
            run_id: cx.run_id,
        };
        let plan = plan_units(cx.engine, cx.pipeline, cx.dag, run.model, &planning)
            .await
            .map_err(|e| run.error(e))?;
        if let Some(work) = &plan.incremental {
            let mut late = run.late_report(work);
            if work.plan.todo.is_empty() {
                // Nothing new, nothing late inside the window: the output stays as it is. (A
                // resumed run whose earlier attempt published the model reports what that
                // attempt counted.)
                let recorded = cx
                    .state
                    .map(|s| s.late_of_run(cx.run_id, name))
                    .transpose()?;
                match recorded.flatten() {
                    Some(recorded) => late.set_counts(recorded),
                    None => run.record_late(work)?,
                }
                report.late = Some(late);
                report.units_total = 0;
                run.publish_nothing().await?;
                return Ok(());
            }
            report.late = Some(late);
        }
        let planned = resume::unit_inputs(cx, name, &plan).await?;
        let inputs = &planned.by_unit;
        let published = run.already_published(inputs, report).await?;
        if published == Published::Done {
            if let Some(work) = &plan.incremental {
                // What this run counts now (its inputs may have grown since the publish it
                // finds), in place of what its killed attempt recorded.
                run.record_late(work)?;
            }
            return Ok(());
        }
        if run.already_appended(report).await? {
            run.output
                .abandon(cx.run_id, run.existing.own_unlisted_files(cx.run_id))
                .await;
            return Ok(());
        }
        let units = &plan.units;
        // A stale publish's units are all run again (their files are in the output already).
        let keep = published == Published::No;
        let kept = resume::kept_units(cx, name, units, inputs, keep, &run.output).await?;
        let all_ran_now = kept.is_empty();
        // A kept unit's files may have been moved out of staging by a publish that was
        // killed: not merged again.
        let kept_files: std::collections::BTreeSet<String> = kept
            .values()
            .flat_map(|u| u.files.iter().map(|f| f.staged.clone()))
            .collect();
        let ran = run
            .run_units(
                units,
                plan.events.as_ref(),
                &plan.files,
                inputs,
                kept,
                report,
            )
            .await;
        // A unit that failed on a file replaced meanwhile (a Parquet footer no longer where
        // its planned size says) failed for that reason: say so, and that a rerun reads it.
        let (records, scanned, mut unit_rejects) = match ran {
            Ok(ran) => ran,
            Err(e) if cx.interrupt.stopping().is_some() => return Err(e),
            Err(e) => match planned.changed_file(cx).await {
                Ok(Some(file)) => return Err(run.replaced(&file)),
                _ => return Err(e),
            },
        };
        // Planning time units read every file of a quarantined source.
        if let Some(events) = plan.events {
            unit_rejects.extend(events.rejects);
        }
        let incremental = plan.incremental.is_some();
        let files: Vec<table::StagedFile> = records
            .into_iter()
            .flat_map(|r| {
                let period = incremental.then(|| r.unit.clone());
                r.files.into_iter().map(move |mut f| {
                    f.file.period = period.clone();
                    f
                })
            })
            .collect();
        let rejected = run.count_rejects(unit_rejects, report).await?;
        // Rows read = rows the scans passed on + rows set aside.
        report.rows_in += report.rows_rejected;
        // Rows read per table are known when every unit ran now (a kept unit recorded its total).
        let scanned = scanned.filter(|_| all_ran_now);
        if let Some(scan) = &scanned {
            report.rows_in_by_source = scan.by_table.clone();
            for (source, n) in &rejected {
                *report.rows_in_by_source.entry(source.clone()).or_default() += n;
            }
        }
        if let Some(file) = planned.changed_file(cx).await? {
            return Err(run.replaced(&file));
        }
        let files = run.compact(files, &kept_files, report).await?;
        let periods = plan.incremental.as_ref().map(|work| run.period_write(work));
        run.check_staged(&files, periods.as_ref(), report).await?;
        if let Some(work) = &plan.incremental {
            // Before the publish: a run killed after it is resumed, plans nothing, and
            // reports these.
            run.record_late(work)?;
        }
        run.publish(files, periods.as_ref(), report).await?;
        if let Some(filtered) = scanned.and_then(|s| s.filtered) {
            report.balance(filtered);
        }
        Ok(())
    }

    /// The error of a model whose input `file` was replaced or removed while it ran.
    fn replaced(&self, file: &str) -> Error {
        let file = self.display(file);
        self.error(format!(
            "input file {file} was replaced or removed while the model ran, so its units may \
             have read either version: nothing was published; run the command again (the \
             units that read it run again, the others are kept)"
        ))
    }

    /// Ends a run of the model that publishes nothing: its staging and lease go, and files
    /// an earlier, killed attempt of the run moved into the output; the output (none yet: an
    /// empty table of the model's columns) is the model's table downstream.
    async fn publish_nothing(&self) -> Result<(), Error> {
        let cx = self.cx;
        self.output
            .abandon(cx.run_id, self.existing.own_unlisted_files(cx.run_id))
            .await;
        if self.existing.manifest.is_some() {
            return register_output(cx.engine, self.model, Some(self.schema)).await;
        }
        let name = self.model.name.as_str();
        let ctx = cx.engine.ctx();
        let empty = datafusion::datasource::empty::EmptyTable::new(Arc::clone(self.schema));
        let register = ctx
            .deregister_table(name)
            .and_then(|_| ctx.register_table(name, Arc::new(empty)));
        register.map_err(|e| self.error(crate::describe::describe_datafusion(&e)))?;
        Ok(())
    }

    /// Records the late-arrival counts of an incremental model in this run, and the file
    /// versions whose rows it counted as later than the window (so they are counted once).
    fn record_late(&self, work: &IncrementalWork) -> Result<(), Error> {
        let Some(state) = self.cx.state else {
            return Ok(());
        };
        let counted: Vec<_> = work
            .plan
            .counted
            .iter()
            .map(|(period, f)| (period.clone(), FileSeen::of(f), f.rows))
            .collect();
        state.record_late(
            self.cx.run_id,
            &self.model.name,
            &work.plan.by_source,
            &counted,
        )?;
        Ok(())
    }

    /// The `late` entry of the report.
    fn late_report(&self, work: &IncrementalWork) -> crate::report::LateReport {
        let (cx, plan) = (self.cx, &work.plan);
        let grid = work.grid;
        let window = self
            .model
            .batches
            .as_ref()
            .and_then(|b| b.incremental.as_ref())
            .map(|i| i.late_window)
            .unwrap_or_default();
        crate::report::LateReport {
            as_of: cx.clock.as_of.and_utc().to_rfc3339(),
            kind: cx.clock.kind.name().to_string(),
            late_window: crate::config::format_duration(window),
            counts: plan.counts.clone(),
            rate: plan.counts.rate(),
            periods_processed: plan
                .todo
                .iter()
                .map(|(p, reason)| crate::report::PeriodReason {
                    period: grid.name(*p),
                    reason: *reason,
                })
                .collect(),
            periods_to_reconcile: plan.to_reconcile.clone(),
            periods_needing_backfill: plan
                .backlog
                .iter()
                .map(|b| crate::report::Backlog {
                    files: b
                        .files
                        .iter()
                        .map(|f| super::incremental::show_file(cx.pipeline, f))
                        .collect(),
                    ..b.clone()
                })
                .collect(),
            backfill_command: plan.backlog.first().zip(plan.backlog.last()).and_then(
                |(first, last)| {
                    super::incremental::backfill_range(
                        cx.pipeline,
                        grid,
                        &first.period,
                        &last.period,
                    )
                },
            ),
            by_source: plan.by_source.clone(),
            dimensions_changed: plan.dimensions_changed,
        }
    }

    /// What this run's publish does to the periods of an incremental output.
    fn period_write(&self, work: &IncrementalWork) -> table::PeriodWrite {
        let grid = work.grid;
        let entries = work
            .plan
            .todo
            .iter()
            .map(|(p, _)| {
                (
                    grid.name(*p),
                    table::manifest::PeriodEntry {
                        run_id: self.cx.run_id.to_string(),
                        dims: work.dims.clone(),
                        inputs: work.current.get(p).cloned().unwrap_or_default(),
                    },
                )
            })
            .collect();
        table::PeriodWrite {
            grid: grid.label(),
            start: work.plan.start.map(|s| grid.name(s)).unwrap_or_default(),
            full: work.plan.full,
            entries,
        }
    }
}

/// Whether a resumed run already published a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    /// No (or not this run).
    No,
    /// Yes, from the inputs there are now: nothing to redo.
    Done,
    /// Yes, but its inputs changed since: it runs again from scratch.
    Stale,
}

/// What the phases of one table model's run share.
struct ModelRun<'a> {
    cx: &'a RunCx<'a>,
    model: &'a ModelConfig,
    schema: &'a SchemaRef,
    spec: SinkSpec,
    output: table::Output,
    existing: table::Existing,
}

impl<'a> ModelRun<'a> {
    /// Resolves the sink and inspects its folder (`error_if_exists`, leftovers of crashed
    /// runs) before any work.
    async fn prepare(
        cx: &'a RunCx<'a>,
        name: &str,
        schema: &'a SchemaRef,
    ) -> Result<ModelRun<'a>, Error> {
        let model = &cx.pipeline.models[name];
        let mut spec = sink_spec(cx.engine, cx.pipeline, model)?;
        if spec.mode == WriteMode::Append {
            spec.append_id = Some(super::resume::append_identity(cx, model).await?);
        }
        let store = cx.engine.stores().store_for(&spec.location)?;
        let (output, existing) = sink::prepare(store, &spec, cx.run_id, cx.ended)
            .await
            .map_err(|e| model_error(model, e.to_string()))?;
        // (Checked when the run was prepared; again here, before any unit, in case another
        // writer changed the output since.)
        if let Some(why) = table::schema::refuse_changed_columns(
            existing.manifest.as_ref(),
            super::incremental::column_mode(model, existing.manifest.as_ref(), &cx.clock.kind),
            &spec.partition_by,
            schema,
        ) {
            let message = super::prepare::changed_columns_message(model, &why);
            return Err(model_error(model, message));
        }
        super::database_load::check(cx, model, schema).await?;
        Ok(ModelRun {
            cx,
            model,
            schema,
            spec,
            output,
            existing,
        })
    }

    fn error(&self, message: String) -> Error {
        model_error(self.model, message)
    }

    /// A path or URL as the report shows it: relative to the pipeline folder when inside it.
    fn display(&self, file: &str) -> String {
        std::path::Path::new(file)
            .strip_prefix(&self.cx.pipeline.root)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| file.to_string())
    }

    /// Whether a resumed run already published this model; then nothing is redone, and the
    /// report says what that publish wrote (its rejects counted again). Unless its units'
    /// `inputs` changed since (a file corrected or added after the run was killed): then it
    /// is [`Published::Stale`], and runs again from scratch over the current inputs, as a new
    /// run would (an append is then a new append, skipped if the output already holds it).
    async fn already_published(
        &self,
        inputs: &BTreeMap<String, String>,
        report: &mut ModelReport,
    ) -> Result<Published, Error> {
        let cx = self.cx;
        let Some(m) = &self.existing.manifest else {
            return Ok(Published::No);
        };
        if m.run_id != cx.run_id {
            return Ok(Published::No);
        }
        let done = cx
            .state
            .map(|s| s.done_units(cx.run_id, &self.model.name))
            .transpose()?
            .unwrap_or_default();
        let recorded: BTreeMap<&String, &String> =
            done.iter().map(|u| (&u.unit, &u.inputs)).collect();
        let current: BTreeMap<&String, &String> = inputs.iter().collect();
        if recorded != current {
            tracing::warn!(model = %self.model.name, "published by this run, but its inputs changed since: running it again");
            return Ok(Published::Stale);
        }
        // A version this run published before its units were run again (their inputs had
        // changed) and the process was killed before publishing them: they are kept and
        // published now.
        let listed: std::collections::BTreeSet<&str> = m
            .files
            .iter()
            .flat_map(|f| std::iter::once(&f.path).chain(&f.merged))
            .map(String::as_str)
            .collect();
        if !done
            .iter()
            .flat_map(|u| &u.files)
            .all(|f| listed.contains(f.file.path.as_str()))
        {
            return Ok(Published::No);
        }
        tracing::info!(model = %self.model.name, "already published by this run");
        // The files of the version it replaced went when the folder was healed.
        self.output
            .clean_up(self.existing.own_unlisted(cx.run_id, m), cx.run_id)
            .await;
        // What its units wrote (an append this run published twice, its inputs having
        // changed in between, holds files of both under the run's id).
        let written: std::collections::BTreeSet<&str> = done
            .iter()
            .flat_map(|u| &u.files)
            .map(|f| f.file.path.as_str())
            .collect();
        // (Or the files they were merged into.)
        let mine: Vec<_> = m
            .files
            .iter()
            .filter(|f| {
                written.contains(f.path.as_str())
                    || f.merged.iter().any(|p| written.contains(p.as_str()))
            })
            .collect();
        report.rows_out = mine.iter().map(|f| f.rows).sum();
        report.outputs = mine
            .iter()
            .map(|f| {
                self.display(
                    &self
                        .output
                        .location()
                        .display_key(&self.output.key(&f.path)),
                )
            })
            .collect();
        report.units_total = done.len() as u64;
        report.units_done = done.len() as u64;
        report.rows_in = done.iter().map(|u| u.rows_in).sum();
        report.units = done.into_iter().map(unit_report).collect();
        // The process that published may have died before it reported them.
        self.count_rejects(Vec::new(), report).await?;
        report.rows_in += report.rows_rejected;
        register_output(cx.engine, self.model, Some(self.schema)).await?;
        Ok(Published::Done)
    }

    /// Whether this append is already in the output (its manifest records it): then it is
    /// not applied again, the output is the model's table for the models downstream, and the
    /// report says so. `--force-append` applies it all the same.
    async fn already_appended(&self, report: &mut ModelReport) -> Result<bool, Error> {
        let (Some(id), Some(manifest)) = (&self.spec.append_id, &self.existing.manifest) else {
            return Ok(false);
        };
        if self.cx.force_append || !manifest.appended.contains(id) {
            return Ok(false);
        }
        register_output(self.cx.engine, self.model, Some(self.schema)).await?;
        tracing::warn!(model = %self.model.name, "already appended: skipped");
        report.status = crate::status::ModelStatus::Skipped;
        report.units_total = 0;
        report.error = Some(format!(
            "already appended: the output holds this append (the same SQL and input files), \
             so it is not applied twice; --force-append appends it again (output version of run {})",
            manifest.run_id
        ));
        Ok(true)
    }

    /// Runs the units not `kept`, at most `max_concurrent_units` at once. Returns every
    /// unit's record (kept ones included, by name), the rows the units run now read per
    /// table, and what the units' own quarantine scans set aside; the first failure fails the
    /// model.
    async fn run_units(
        &self,
        units: &[Unit],
        events: Option<&super::event_map::EventMap>,
        files: &super::input_files::InputFiles,
        inputs: &BTreeMap<String, String>,
        kept: BTreeMap<String, UnitRecord>,
        report: &mut ModelReport,
    ) -> Result<(Vec<UnitRecord>, Option<ScanRows>, UnitRejects), Error> {
        let cx = self.cx;
        let name = &self.model.name;
        report.units_total = units.len() as u64;
        let pending: Vec<&Unit> = units
            .iter()
            .filter(|u| !kept.contains_key(&u.name))
            .collect();
        if !kept.is_empty() {
            tracing::info!(model = %name, kept = kept.len(), pending = pending.len(), "resuming: committed units are kept");
        }
        let bar = cx.progress.units(name, units.len() as u64);
        for unit in kept.keys() {
            bar.unit_done(unit, true);
        }
        let event_sources = units::event_sources(cx.pipeline, &cx.dag.sources_read(name));
        // Files holding rows of many of the pending units are read once, for all of them.
        let mut rejects = Vec::new();
        // (Routed files are local temporary files: executors elsewhere could not read them, so
        // on such a cluster each unit reads its source files itself.)
        let local_files = cx.cluster.is_none_or(|c| c.target().shares_local_files());
        let routes = match events {
            Some(events) if local_files => {
                let routing = super::route::route(cx, events, &event_sources, &pending);
                let (routes, routed_rejects) = tokio::select! {
                    routed = routing => routed.map_err(|e| self.error(e.to_string()))?,
                    () = cx.interrupt.wait() => {
                        let reason = cx.interrupt.cancelled().unwrap_or(super::StopReason::Signal(libc::SIGINT));
                        return Err(self.error(format!(
                            "interrupted ({reason}) while reading source files for its units"
                        )));
                    }
                };
                rejects.extend(routed_rejects);
                report.routed = routes.report();
                routes
            }
            _ => super::route::Routes::none(),
        };
        let stop = AtomicBool::new(false);
        let job = UnitJob {
            model: self.model,
            spec: &self.spec,
            output: &self.output,
            event_sources: &event_sources,
            events,
            inputs,
            routes: &routes,
            files,
            stop: &stop,
        };
        let results: Vec<Result<UnitDone, UnitFailure>> = futures::stream::iter(pending)
            .map(|u| run_unit(cx, &job, u, &bar))
            .buffer_unordered(self.model.units.max_concurrent.max(1))
            .collect()
            .await;
        bar.finish();
        let mut records: Vec<UnitRecord> = kept.into_values().collect();
        let mut first_error = None;
        let mut paused = 0usize;
        let mut scanned: Option<ScanRows> = None;
        for r in results {
            match r {
                Ok(done) => {
                    crate::join::merge_reports(&mut report.joins, done.joins);
                    report.cluster_jobs.extend(done.job);
                    records.push(done.record);
                    rejects.extend(done.rejects);
                    match &mut scanned {
                        Some(all) => all.merge(&done.scan),
                        None => scanned = Some(done.scan),
                    }
                }
                Err(UnitFailure::Failed(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(UnitFailure::Stopped) => {}
                Err(UnitFailure::Interrupted(reason)) => {
                    first_error.get_or_insert(format!(
                        "interrupted ({reason}): the units it committed are kept for a resume"
                    ));
                }
                Err(UnitFailure::Paused) => paused += 1,
            }
        }
        records.sort_by(|a, b| a.unit.cmp(&b.unit));
        report.units_done = records.len() as u64;
        report.rows_in = records.iter().map(|u| u.rows_in).sum();
        report.spilled_bytes = records.iter().map(|u| u.spilled_bytes).sum();
        report.units = records.iter().cloned().map(unit_report).collect();
        match first_error {
            Some(e) => Err(self.error(e)),
            None if paused > 0 => {
                let reason = cx
                    .interrupt
                    .stopping()
                    .unwrap_or(super::StopReason::WindowClosed);
                report.status = crate::status::ModelStatus::Paused;
                Err(self.error(format!(
                    "paused ({reason}): {paused} of {} units left for the next run, which \
                     resumes it; the {} committed are kept",
                    units.len(),
                    records.len()
                )))
            }
            None => Ok((records, scanned, rejects)),
        }
    }

    /// The rows the quarantined sources of the model set aside in this run: each source's
    /// written to its rejects folder and counted; past a source's limit the model fails here,
    /// before anything is published, with the rows rejected so far in `report`. Returns the
    /// count per source.
    async fn count_rejects(
        &self,
        unit_rejects: UnitRejects,
        report: &mut ModelReport,
    ) -> Result<BTreeMap<String, u64>, Error> {
        let cx = self.cx;
        let mut total = BTreeMap::new();
        for source in cx.dag.sources_read(&self.model.name) {
            let Some(spec) = cx.pipeline.sources.get(&source) else {
                continue;
            };
            if spec.on_bad_rows != OnBadRows::Quarantine {
                continue;
            }
            let found = self.source_rejects(&source, &unit_rejects).await?;
            let good = found.good();
            let bad = found.rejects;
            let folder = rejects::folder(spec, &cx.pipeline.root);
            let write_error = |message: String| {
                self.error(
                    rejects::RejectError::Write {
                        source_name: source.clone(),
                        folder: folder.clone(),
                        message,
                    }
                    .to_string(),
                )
            };
            let location = Location::parse(&folder)
                .map_err(|e| write_error(e.to_string()))?
                .as_folder();
            let store = cx
                .engine
                .stores()
                .store_for(&location)
                .map_err(|e| write_error(e.to_string()))?;
            if bad.is_empty() {
                // An earlier attempt of this run (resumed) may have written rejects that the
                // data, corrected since, no longer holds.
                rejects::clear(store.as_ref(), &location, cx.run_id, &self.model.name)
                    .await
                    .map_err(write_error)?;
                continue;
            }
            let count = bad.len() as u64;
            total.insert(source.clone(), count);
            report.rows_rejected += count;
            rejects::write(store.as_ref(), &location, cx.run_id, &self.model.name, &bad)
                .await
                .map_err(write_error)?;
            tracing::warn!(source = %source, count, "rows quarantined to {folder}");
            if let Some(limit) = rejects::over_limit(spec, count, good) {
                return Err(self.error(
                    rejects::RejectError::OverLimit {
                        source_name: source.clone(),
                        count,
                        limit,
                        first: rejects::first_reasons(&bad),
                        folder,
                    }
                    .to_string(),
                ));
            }
        }
        Ok(total)
    }

    /// Everything the quarantined `source` holds that is bad, and its good rows per file,
    /// each row counted once however many units read its file: what the model's and its
    /// units' scans found, plus the files no scan of this process read to its end (those of
    /// units a resumed run kept, or a query that stopped early), read again now. So the
    /// limits hold over every unit of the run, kept or new.
    async fn source_rejects(
        &self,
        source: &str,
        unit_rejects: &UnitRejects,
    ) -> Result<SourceRejects, Error> {
        let ctx = self.cx.engine.ctx();
        let Ok(provider) = ctx.table_provider(source).await else {
            return Ok(SourceRejects::default());
        };
        let Some(table) = provider.downcast_ref::<QuarantineTable>() else {
            return Ok(SourceRejects::default());
        };
        let mut found = table.sink.take();
        for (_, r) in unit_rejects.iter().filter(|(s, _)| s == source) {
            found.merge(r.clone());
        }
        let unread: Vec<_> = table
            .files()
            .iter()
            .filter(|f| !found.read.contains_key(f.location.as_ref()))
            .cloned()
            .collect();
        if !unread.is_empty() {
            let again = Arc::new(table.subset(unread));
            ctx.read_table(again.clone())
                .map_err(|e| self.error(crate::describe::describe_datafusion(&e)))?
                .count()
                .await
                .map_err(|e| self.error(crate::describe::describe_datafusion(&e)))?;
            found.merge(again.sink.take());
        }
        Ok(found)
    }

    /// The units' small staged files merged per partition (and period), unless the result
    /// is sorted.
    async fn compact(
        &self,
        files: Vec<table::StagedFile>,
        kept: &std::collections::BTreeSet<String>,
        report: &mut ModelReport,
    ) -> Result<Vec<table::StagedFile>, Error> {
        let cx = self.cx;
        if cx.sorted.contains(&self.model.name) || files.len() < 2 {
            return Ok(files);
        }
        let (files, done) = sink::compact::compact(
            cx.engine.ctx(),
            &self.output,
            &self.spec,
            cx.run_id,
            self.schema,
            files,
            kept,
        )
        .await
        .map_err(|e| self.error(e.to_string()))?;
        if done.files_in > 0 {
            report.compacted = Some(crate::report::Compacted {
                files_in: done.files_in,
                files_out: done.files_out,
            });
        }
        Ok(files)
    }

    /// Write, audit, publish: the model's checks read the staged files where they will be
    /// published; a failed error check fails the model with the previous output intact.
    async fn check_staged(
        &self,
        files: &[table::StagedFile],
        periods: Option<&table::PeriodWrite>,
        report: &mut ModelReport,
    ) -> Result<(), Error> {
        let (cx, model) = (self.cx, self.model);
        // A batched model whose group keys may fall in two periods: every key once.
        let split = cx
            .split_keys
            .get(&model.name)
            .map(|keys| crate::config::Check {
                kind: crate::config::CheckKind::Unique(keys.clone()),
                severity: crate::config::Severity::Error,
            });
        if model.checks.is_empty() && split.is_none() {
            return Ok(());
        }
        register_staged(
            cx.engine,
            model,
            &self.output,
            &self.existing,
            &self.spec,
            cx.run_id,
            self.schema,
            files,
            periods,
        )
        .await
        .map_err(|e| self.error(e.to_string()))?;
        let late = report.late.as_ref().map(|l| l.counts.late_rows());
        let checks: Vec<_> = model.checks.iter().cloned().chain(split.clone()).collect();
        report.checks = crate::checks::run(cx.engine.ctx(), &model.name, &checks, late).await;
        if let (Some(split), Some(result)) = (&split, report.checks.last_mut())
            && result.blocks()
            && result.failing_rows > 0
        {
            let size = model.batches.as_ref().map_or("period", |b| b.size.name());
            result.check = format!("one row per group ({})", split.name());
            result.message = Some(format!(
                "{} rows share a key: groups were split over two work units (batched by \
                 {size}, the keys do not place a group in one {size}); set batches.timezone if \
                 the key is a local date, or group by a period of the event time",
                result.failing_rows
            ));
        }
        let blocking: Vec<String> = report
            .checks
            .iter()
            .filter(|c| c.blocks())
            .map(|c| format!("{}: {}", c.check, c.message.as_deref().unwrap_or("failed")))
            .collect();
        if blocking.is_empty() {
            return Ok(());
        }
        let _ = cx.engine.ctx().deregister_table(model.name.as_str());
        Err(self.error(format!(
            "{} failed, nothing published: {}",
            if blocking.len() == 1 {
                "a check".to_string()
            } else {
                format!("{} checks", blocking.len())
            },
            blocking.join("; ")
        )))
    }

    /// One commit of everything the units staged; then the output is the model's table for
    /// the models downstream.
    async fn publish(
        &self,
        files: Vec<table::StagedFile>,
        periods: Option<&table::PeriodWrite>,
        report: &mut ModelReport,
    ) -> Result<(), Error> {
        let cx = self.cx;
        let committed = sink::publish(
            &self.output,
            &self.existing,
            &self.spec,
            cx.run_id,
            self.schema,
            files,
            periods,
        )
        .await
        .map_err(|e| self.error(e.to_string()))?;
        register_output(cx.engine, self.model, Some(self.schema)).await?;
        report.rows_out = committed.rows;
        report.outputs = committed
            .new_files
            .iter()
            .map(|f| self.display(f))
            .collect();
        Ok(())
    }
}

fn model_error(model: &ModelConfig, message: String) -> Error {
    Error::Model {
        model: model.name.clone(),
        message,
    }
}

/// Registers a model's output as it will be once published — its staged files, not yet
/// published, beside the current files the new version keeps (append, overwrite_partitions,
/// an incremental model's other periods) — as its table.
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
    periods: Option<&table::PeriodWrite>,
) -> Result<(), sink::SinkError> {
    let kept = table::kept_files(existing, spec.mode, &spec.partition_by, files, periods);
    sink::compact::register_staged(
        engine.ctx(),
        &model.name,
        output,
        spec,
        run_id,
        schema,
        files,
        &kept,
    )
    .await
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
