//! `sluice run` and `sluice plan`: a pipeline from configuration to published outputs.
//!
//! The data flows one way: [`Pipeline`] (config) → [`Dag`] (plan) → tables registered in the
//! engine's catalog → each model's query validated up front → executed in dependency order,
//! each table model streamed into its sink and committed → [`RunReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::prelude::DataFrame;

use crate::catalog;
use crate::config::{Materialized, ModelConfig, Pipeline};
use crate::engine::{Engine, EngineOptions, ScanRows};
use crate::error::{Error, describe_datafusion};
use crate::join::JoinReport;
use crate::plan::{Dag, PlanError};
use crate::progress::Progress;
use crate::report::{ModelReport, RunReport, UnitReport};
use crate::sink::commit::ManifestColumn;
use crate::sink::{self, SinkSpec};
use crate::state::{Holder, StateStore, UnitRecord};
use crate::store::{Location, StoreRegistry};
use crate::units::{self, Unit};
use futures::StreamExt;

/// What `sluice run` was asked to do, beyond the pipeline itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--select`: models to run (`a`, `a+`, `+a`); empty means all.
    pub select: Vec<String>,
    /// `--var KEY=VALUE`, over the pipeline's `[vars]`.
    pub vars: BTreeMap<String, String>,
    /// `--memory-limit` in bytes, over `settings.memory_limit`.
    pub memory_limit: Option<usize>,
    /// `--threads`, over `settings.threads`.
    pub threads: Option<usize>,
    /// `--join-strategy`, over `settings.join_strategy`.
    pub join_strategy: Option<crate::config::JoinStrategy>,
    /// `--dry-run`: validate and plan, write nothing.
    pub dry_run: bool,
    /// `--restart`: do not resume an unfinished run; start afresh.
    pub restart: bool,
}

/// A new run id: UTC time plus a random suffix, sortable and unique.
pub fn new_run_id() -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &rand[..6]
    )
}

/// The current time as the reports write it (RFC 3339, UTC, milliseconds).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A pipeline prepared to run: DAG built, selection made, tables registered, every selected
/// model's query planned. Both `run` and `plan` start here, so `plan` reports exactly the
/// errors a run would hit before writing anything.
pub struct Prepared {
    /// The pipeline.
    pub pipeline: Pipeline,
    /// Its DAG.
    pub dag: Dag,
    /// Selected models in run order.
    pub selected: Vec<String>,
    /// The engine, with sources and upstream models registered.
    pub engine: Engine,
    /// Each selected model's output schema.
    pub schemas: BTreeMap<String, SchemaRef>,
}

/// Builds the DAG, registers what the selected models read, and plans every selected model.
pub async fn prepare(
    pipeline: Pipeline,
    opts: &RunOptions,
    env: Vec<(String, String)>,
) -> Result<Prepared, Error> {
    let mut vars = pipeline.vars.clone();
    vars.extend(opts.vars.clone());
    let dag = Dag::build(&pipeline, &vars)?;
    let selected = dag.select(&opts.select)?;

    let engine_opts = EngineOptions {
        memory_limit: opts.memory_limit.or(pipeline.settings.memory_limit),
        threads: opts.threads.or(pipeline.settings.threads),
        spill_dir: pipeline.settings.spill_dir.clone(),
        join: crate::config::JoinOptions {
            strategy: opts
                .join_strategy
                .unwrap_or(pipeline.settings.join.strategy),
            buckets: pipeline.settings.join.buckets,
        },
    };
    let stores = Arc::new(StoreRegistry::new(pipeline.stores.clone(), env));
    let engine = Engine::new(engine_opts, stores)?;

    // Sources the selected models need, through the views they inline.
    let selected_set: BTreeSet<&String> = selected.iter().collect();
    let mut needed_sources = BTreeSet::new();
    let mut outside: Vec<String> = Vec::new();
    for name in &selected {
        for up in dag.upstream(name).into_iter().chain([name.clone()]) {
            let node = &dag.nodes[&up];
            let is_outside = !selected_set.contains(&up);
            if is_outside && node.materialized == Materialized::Table {
                // Read from its existing output; its own inputs are not needed.
                if !outside.contains(&up) {
                    outside.push(up);
                }
                continue;
            }
            needed_sources.extend(node.sources.iter().cloned());
        }
    }
    for name in &needed_sources {
        catalog::register_table(engine.ctx(), engine.stores(), &pipeline.sources[name]).await?;
    }
    for name in &outside {
        register_output(&engine, &pipeline.models[name], None).await?;
    }

    // Plan every model that runs or is inlined, in order; a model's table is its plan (a
    // view) until it has been written.
    let mut schemas = BTreeMap::new();
    for name in &dag.order {
        let node = &dag.nodes[name];
        let needed = selected_set.contains(name)
            || (node.materialized == Materialized::View
                && selected.iter().any(|s| dag.upstream(s).contains(name)));
        if !needed {
            continue;
        }
        let df = plan_model(&engine, &pipeline.models[name], &node.sql).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let model = &pipeline.models[name];
        if model.files_per_unit.is_some() {
            let inputs = sources_read(&dag, &pipeline, name);
            if inputs.len() != 1 {
                return Err(PlanError::Sql {
                    model: name.clone(),
                    file: model.sql_path.clone(),
                    message: format!(
                        "by = \"file\" needs exactly one input source; the model reads {}",
                        if inputs.is_empty() {
                            "none".to_string()
                        } else {
                            inputs.into_iter().collect::<Vec<_>>().join(", ")
                        }
                    ),
                }
                .into());
            }
        }
        if model.materialized == Materialized::Table && selected_set.contains(name) {
            // The sink's location and store, resolved now so a bad one stops the run before
            // any model writes.
            let location = Location::parse(&model.sink.location)?;
            engine.stores().store_for(&location)?;
        }
        if model.materialized == Materialized::Table {
            for col in &model.sink.partition_by {
                if schema.index_of(col).is_err() {
                    return Err(PlanError::Sql {
                        model: name.clone(),
                        file: model.sql_path.clone(),
                        message: format!(
                            "sink.partition_by column '{col}' is not in the result (columns: {})",
                            column_list(&schema)
                        ),
                    }
                    .into());
                }
            }
        }
        engine
            .ctx()
            .register_table(name.as_str(), df.into_view())
            .map_err(|e| Error::Query {
                context: format!("model '{name}'"),
                source: e,
            })?;
        schemas.insert(name.clone(), schema);
    }
    Ok(Prepared {
        pipeline,
        dag,
        selected,
        engine,
        schemas,
    })
}

fn column_list(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans a model's SQL into a DataFrame; planning errors are the user's SQL (exit status 2).
async fn plan_model(engine: &Engine, model: &ModelConfig, sql: &str) -> Result<DataFrame, Error> {
    engine.ctx().sql(sql).await.map_err(|e| {
        PlanError::Sql {
            model: model.name.clone(),
            file: model.sql_path.clone(),
            message: describe_datafusion(&e),
        }
        .into()
    })
}

/// The sink spec of a table model.
fn sink_spec(engine: &Engine, model: &ModelConfig) -> Result<SinkSpec, Error> {
    Ok(SinkSpec {
        location: Location::parse(&model.sink.location)?.as_folder(),
        format: model.sink.format,
        partition_by: model.sink.partition_by.clone(),
        mode: model.sink.mode,
        target_rows_per_file: model.sink.target_rows_per_file,
        parallelism: engine.options().threads(),
        buffer_budget: engine.write_buffer_budget(),
        preserve_order: false,
    })
}

/// Registers a table model's published output as its table, so downstream models read it.
/// With `schema` (the model's planned schema) columns keep the planned order and types.
async fn register_output(
    engine: &Engine,
    model: &ModelConfig,
    schema: Option<&SchemaRef>,
) -> Result<(), Error> {
    let location = Location::parse(&model.sink.location)?.as_folder();
    let store = engine.stores().store_for(&location)?;
    let output = crate::sink::commit::Output::new(Arc::clone(&store), location.clone());
    let manifest = output.read_manifest().await.map_err(|e| Error::Model {
        model: model.name.clone(),
        message: format!("cannot read {}: {}", e.key, e.message),
    })?;
    let Some(manifest) = manifest else {
        return Err(Error::Model {
            model: model.name.clone(),
            message: format!(
                "it is not selected and has no output at {} yet: run it first, or select it too (e.g. --select +{})",
                model.sink.location, model.name
            ),
        });
    };
    catalog::register_manifest(
        engine.ctx(),
        &model.name,
        &location,
        store,
        &manifest,
        schema,
    )
    .await?;
    Ok(())
}

/// Runs a prepared pipeline under its lock, recorded in its state store: every selected model
/// in order. A failed model fails the run and skips the models downstream of it; independent
/// models still run. A dry run takes no lock and records nothing.
///
/// Unless `opts.restart`, a run resumes the last run of the pipeline if that one did not
/// finish and did the same work (same selection, variables, SQL and sinks): it keeps that
/// run's id, so the units it committed (staged and recorded) are not redone, and models it
/// already published are not published again.
pub async fn run(
    prepared: Prepared,
    opts: &RunOptions,
    progress: &Progress,
) -> Result<RunReport, Error> {
    let mut run_id = new_run_id();
    let started_at = now();
    if opts.dry_run {
        return Ok(run_models(prepared, opts, progress, None, run_id, started_at).await);
    }
    let state = Arc::new(StateStore::open(&prepared.pipeline.settings.state)?);
    let me = Holder::current();
    let pipeline = prepared.pipeline.name.clone();
    if let Some(old) = state.acquire(&pipeline, &run_id, &me, &started_at)? {
        tracing::warn!("took over the lock of run {old}, whose process is gone");
    }
    let fingerprint = fingerprint(&prepared, opts);
    let resumed = if opts.restart {
        Ok(None)
    } else {
        state.resumable_run(&pipeline, &fingerprint)
    };
    let resumed = match resumed.and_then(|old| match old {
        Some(old) => state.relock(&run_id, &old).map(|()| Some(old)),
        None => Ok(None),
    }) {
        Ok(r) => r,
        Err(e) => {
            // Never leave the lock behind on an error.
            let _ = state.release(&run_id);
            return Err(e.into());
        }
    };
    if let Some(old) = resumed {
        tracing::warn!(
            "resuming run {old}: its committed units are kept (--restart starts afresh)"
        );
        run_id = old;
    }
    let selection = prepared.selected.join(",");
    let vars = opts
        .vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let result = async {
        state.start_run(
            &run_id,
            &pipeline,
            &started_at,
            &selection,
            &vars,
            &fingerprint,
            &me,
        )?;
        // The heartbeat tells other hosts sharing the state file that this run is alive.
        let beat = {
            let state = Arc::clone(&state);
            let run_id = run_id.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(crate::state::HEARTBEAT_EVERY).await;
                    if let Err(e) = state.heartbeat(&run_id, &now()) {
                        tracing::warn!("cannot write the heartbeat: {e}");
                    }
                }
            })
        };
        let report = run_models(
            prepared,
            opts,
            progress,
            Some(&state),
            run_id.clone(),
            started_at,
        )
        .await;
        beat.abort();
        state.finish_run(&report)?;
        Ok(report)
    }
    .await;
    if let Err(e) = state.release(&run_id) {
        tracing::warn!("cannot release the lock: {e}");
    }
    result
}

/// What a run does, as a hash: the selected models' rendered SQL, sinks and batches, the
/// sources they read, the selection and the variables. A run is only resumed by a run with
/// the same fingerprint.
fn fingerprint(prepared: &Prepared, opts: &RunOptions) -> String {
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
        for src in sources_read(&prepared.dag, &prepared.pipeline, name) {
            text.push_str(&format!("|{src}:{:?}", prepared.pipeline.sources[&src]));
        }
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Records a run that stopped before any model ran (invalid SQL, unreadable source...) in the
/// pipeline's ledger, so `sluice runs` shows it.
pub fn record_not_run(pipeline: &Pipeline, report: &RunReport) -> Result<(), Error> {
    let state = StateStore::open(&pipeline.settings.state)?;
    state.start_run(
        &report.run_id,
        &report.pipeline,
        &report.started_at,
        "",
        "",
        "",
        &Holder::current(),
    )?;
    state.finish_run(report)?;
    Ok(())
}

/// What every model of a run shares.
struct RunCx<'a> {
    engine: &'a Engine,
    pipeline: &'a Pipeline,
    dag: &'a Dag,
    state: Option<&'a StateStore>,
    run_id: &'a str,
    progress: &'a Progress,
}

async fn run_models(
    prepared: Prepared,
    opts: &RunOptions,
    progress: &Progress,
    state: Option<&StateStore>,
    run_id: String,
    started_at: String,
) -> RunReport {
    let Prepared {
        pipeline,
        dag,
        selected,
        engine,
        schemas,
    } = prepared;
    let cx = RunCx {
        engine: &engine,
        pipeline: &pipeline,
        dag: &dag,
        state,
        run_id: &run_id,
        progress,
    };
    let mut reports = Vec::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for name in &selected {
        let model = &pipeline.models[name];
        let kind = match model.materialized {
            Materialized::Table => "table",
            Materialized::View => "view",
        };
        if opts.dry_run {
            reports.push(ModelReport::new(name, kind, "planned"));
            continue;
        }
        if let Some(up) = dag.upstream(name).iter().find(|u| failed.contains(*u)) {
            let mut r = ModelReport::new(name, kind, "skipped");
            r.error = Some(format!("upstream model '{up}' failed"));
            failed.insert(name.clone());
            reports.push(r);
            continue;
        }
        if model.materialized == Materialized::View {
            let mut r = ModelReport::new(name, kind, "success");
            r.units_total = 0;
            reports.push(r);
            continue;
        }
        let start = Instant::now();
        tracing::info!(model = %name, run_id = %run_id, "running");
        let mut report = ModelReport::new(name, kind, "success");
        if let Err(e) = run_table_model(&cx, name, &schemas[name], &mut report).await {
            report.status = "failed".into();
            report.error = Some(match e {
                Error::Model { message, .. } => message,
                other => other.to_string(),
            });
            failed.insert(name.clone());
        }
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            model = %name,
            status = %report.status,
            rows_in = report.rows_in,
            rows_out = report.rows_out,
            units = report.units_total,
            elapsed_ms = report.elapsed_ms,
            "finished"
        );
        if let Some(state) = state
            && let Err(e) = state.record_model(&run_id, &report)
        {
            tracing::warn!("cannot record model {name}: {e}");
        }
        reports.push(report);
    }
    let status = if opts.dry_run {
        "planned"
    } else if failed.is_empty() {
        "success"
    } else {
        "failed"
    };
    RunReport {
        run_id,
        pipeline: pipeline.name.clone(),
        status: status.into(),
        started_at,
        finished_at: now(),
        models: reports,
        error: None,
    }
}

/// The sources a model reads, directly or through the views it inlines.
/// The tables a model's query reads, with their locations: its sources (those of the views
/// it reads included) and the outputs of the table models upstream. For naming the scans of
/// its plan.
fn tables_read(dag: &Dag, pipeline: &Pipeline, name: &str) -> Vec<(String, ListingTableUrl)> {
    let (sources, models) = inputs_of(dag, pipeline, name);
    let sources = sources.into_iter().filter_map(|s| {
        let url = ListingTableUrl::parse(&pipeline.sources.get(&s)?.location).ok()?;
        Some((s, url))
    });
    let models = models.into_iter().filter_map(|m| {
        let url = ListingTableUrl::parse(&pipeline.models[&m].sink.location).ok()?;
        Some((m, url))
    });
    sources.chain(models).collect()
}

/// The sources a model reads, those of the views it reads included.
fn sources_read(dag: &Dag, pipeline: &Pipeline, name: &str) -> BTreeSet<String> {
    inputs_of(dag, pipeline, name).0
}

/// What a model's query reads once its views are inlined: sources, and table models.
fn inputs_of(dag: &Dag, pipeline: &Pipeline, name: &str) -> (BTreeSet<String>, Vec<String>) {
    let mut sources = dag.nodes[name].sources.clone();
    let mut tables = Vec::new();
    let mut frontier: Vec<&String> = dag.nodes[name].upstream_models.iter().collect();
    while let Some(up) = frontier.pop() {
        if pipeline.models[up].materialized == Materialized::View {
            sources.extend(dag.nodes[up].sources.iter().cloned());
            frontier.extend(dag.nodes[up].upstream_models.iter());
        } else {
            tables.push(up.clone());
        }
    }
    (sources, tables)
}

/// The work units of a model: one per period for a batched model, one otherwise.
async fn plan_units(
    engine: &Engine,
    pipeline: &Pipeline,
    dag: &Dag,
    model: &ModelConfig,
) -> Result<Vec<Unit>, String> {
    if let Some(per_unit) = model.files_per_unit {
        let inputs = sources_read(dag, pipeline, &model.name);
        let [source] = inputs.iter().collect::<Vec<_>>()[..] else {
            return Err(format!(
                "by = \"file\" needs exactly one input source; the model reads {}",
                if inputs.is_empty() {
                    "none".to_string()
                } else {
                    inputs.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            ));
        };
        let spec = &pipeline.sources[source];
        let files = crate::catalog::list_source_files(engine.ctx(), engine.stores(), spec)
            .await
            .map_err(|e| e.to_string())?;
        let prefix = datafusion::datasource::listing::ListingTableUrl::parse(&spec.location)
            .map(|u| u.prefix().as_ref().to_string())
            .unwrap_or_default();
        return Ok(units::by_files(source, files, per_unit, &prefix));
    }
    if let Some(kb) = &model.key_buckets {
        let read = sources_read(dag, pipeline, &model.name);
        if let Some(missing) = kb.keys.keys().find(|k| !read.contains(*k)) {
            return Err(format!(
                "batches.keys names source '{missing}', which the model does not read (it reads {})",
                read.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        return Ok(units::by_key(kb.buckets));
    }
    let Some(batches) = &model.batches else {
        return Ok(units::whole());
    };
    let sources = units::event_sources(pipeline, &sources_read(dag, pipeline, &model.name));
    if sources.is_empty() {
        return Err("batches need at least one input source that declares event_time".into());
    }
    let (start, end) = match (batches.start, batches.end) {
        (Some(s), Some(e)) => (s, e),
        (s, e) => match units::event_range(engine.ctx(), &sources).await? {
            None => return Ok(Vec::new()),
            Some((lo, hi)) => (
                s.unwrap_or(units::truncate(batches.size, lo)),
                e.unwrap_or(units::next(batches.size, units::truncate(batches.size, hi))),
            ),
        },
    };
    Ok(units::periods(batches.size, start, end))
}

/// Whether a failure is worth retrying: storage throttling, 5xx, dropped connections and
/// timeouts. SQL, schema and parse errors are deterministic and are not retried.
fn is_transient(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "timed out",
        "timeout",
        "connection reset",
        "connection refused",
        "connection closed",
        "connection aborted",
        "error sending request",
        "reset by peer",
        "broken pipe",
        "slowdown",
        "slow down",
        "throttl",
        "too many requests",
        "(429",
        "(500",
        "(502",
        "(503",
        "(504",
        "service unavailable",
        "temporarily unavailable",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Exponential backoff with jitter for attempt `n` (1-based): about 0.5 s, 1 s, 2 s... capped
/// at 30 s, each scaled by a random factor in [0.5, 1.5).
fn backoff(n: u32) -> std::time::Duration {
    let base = 0.5 * 2f64.powi(n.saturating_sub(1).min(6) as i32);
    let jitter = 0.5 + f64::from(uuid::Uuid::new_v4().as_bytes()[0]) / 256.0;
    std::time::Duration::from_secs_f64((base * jitter).min(30.0))
}

/// What every unit of one model shares.
#[derive(Clone, Copy)]
struct UnitJob<'a> {
    model: &'a ModelConfig,
    spec: &'a SinkSpec,
    output: &'a crate::sink::commit::Output,
    event_sources: &'a [(String, String)],
}

/// A unit that ran: its record, the columns it wrote, its joins and the rows it read.
type UnitDone = (UnitRecord, Vec<ManifestColumn>, Vec<JoinReport>, ScanRows);

/// Runs one unit with its timeout and retries; stages its files and records it.
async fn run_unit(
    cx: &RunCx<'_>,
    job: &UnitJob<'_>,
    unit: &Unit,
    bar: &crate::progress::Units,
) -> Result<UnitDone, String> {
    let UnitJob { model, output, .. } = *job;
    let settings = model.units;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let started_at = now();
        let start = Instant::now();
        let mut record = UnitRecord {
            unit: unit.name.clone(),
            status: "running".into(),
            attempts: attempt,
            rows_in: 0,
            rows_out: 0,
            started_at: Some(started_at.clone()),
            finished_at: None,
            elapsed_ms: 0,
            peak_memory: 0,
            spilled_bytes: 0,
            files: Vec::new(),
            error: None,
        };
        if let Some(state) = cx.state {
            let _ = state.record_unit(cx.run_id, &model.name, &record);
        }
        // Peak memory: the pool's reservation, sampled while the unit runs.
        let pool = Arc::clone(&cx.engine.ctx().runtime_env().memory_pool);
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sampler = {
            let peak = Arc::clone(&peak);
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(pool.reserved(), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
        };
        let work = attempt_unit(cx, job, unit, attempt, bar);
        let outcome = match settings.timeout {
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {}", humanize(limit))),
            },
            None => work.await,
        };
        sampler.abort();
        record.elapsed_ms = start.elapsed().as_millis() as u64;
        record.peak_memory = peak.load(std::sync::atomic::Ordering::Relaxed) as u64;
        record.finished_at = Some(now());
        match outcome {
            Ok((staged, scan, spilled, joins)) => {
                record.status = "done".into();
                record.rows_in = scan.total();
                record.rows_out = staged.rows();
                record.spilled_bytes = spilled;
                record.files = staged.files;
                if let Some(state) = cx.state {
                    state
                        .record_unit(cx.run_id, &model.name, &record)
                        .map_err(|e| e.to_string())?;
                }
                bar.unit_done();
                return Ok((record, staged.columns, joins, scan));
            }
            Err(message) => {
                // Whatever the attempt staged is discarded (a cancelled attempt's writers may
                // still be closing files: they are removed again before a retry's files land).
                let _ = output.discard_staging(cx.run_id, Some(unit.index)).await;
                let retry = attempt <= settings.retries && is_transient(&message);
                record.status = if retry { "retrying" } else { "failed" }.into();
                record.error = Some(message.clone());
                if let Some(state) = cx.state {
                    let _ = state.record_unit(cx.run_id, &model.name, &record);
                }
                if !retry {
                    let tries = if attempt == 1 {
                        "1 attempt".to_string()
                    } else {
                        format!("{attempt} attempts")
                    };
                    return Err(format!(
                        "unit {} failed after {tries}: {message}",
                        unit.name
                    ));
                }
                let wait = backoff(attempt);
                tracing::warn!(model = %model.name, unit = %unit.name, attempt, "transient failure, retrying in {wait:?}: {message}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn humanize(d: std::time::Duration) -> String {
    if d.as_secs() >= 60 {
        let secs = d.as_secs_f64().round() as u64;
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// One attempt of a unit: plan it in its context, run it into the unit's staging folder.
/// Returns what it staged, the rows its scans read and the bytes it spilled.
async fn attempt_unit(
    cx: &RunCx<'_>,
    job: &UnitJob<'_>,
    unit: &Unit,
    attempt: u32,
    bar: &crate::progress::Units,
) -> Result<(crate::sink::UnitOutput, ScanRows, u64, Vec<JoinReport>), String> {
    let UnitJob {
        model,
        spec,
        output,
        event_sources,
    } = *job;
    let ctx = units::unit_context(
        cx.engine.ctx(),
        cx.engine.stores(),
        cx.pipeline,
        cx.dag,
        &model.name,
        event_sources,
        unit,
    )
    .await?;
    let df = ctx
        .sql(&cx.dag.nodes[&model.name].sql)
        .await
        .map_err(|e| describe_datafusion(&e))?;
    // Reading the sources starts here (Parquet footers are read while planning): an error
    // is explained by naming the file at fault.
    let explain = |e: datafusion::error::DataFusionError| async move {
        let sources = sources_read(cx.dag, cx.pipeline, &model.name);
        crate::diagnose::explain(cx.engine, cx.pipeline, &sources, &e).await
    };
    let mut exec = match cx.engine.execute(df).await {
        Ok(exec) => exec,
        Err(e) => return Err(explain(e).await),
    };
    let mut spec = spec.clone();
    spec.preserve_order = exec.is_ordered();
    let Some(stream) = exec.take_stream() else {
        return Err("the query produced no stream".into());
    };
    let slot = sink::UnitSlot {
        index: unit.index,
        attempt,
    };
    let staged = sink::stage_unit(output, &spec, stream, cx.run_id, slot, &|rows| {
        bar.rows(rows)
    })
    .await;
    match staged {
        Ok(s) => {
            let tables = tables_read(cx.dag, cx.pipeline, &model.name);
            Ok((
                s,
                exec.scan_rows(&tables),
                exec.spilled_bytes(),
                exec.joins(),
            ))
        }
        Err(sink::SinkError::Input(e)) => Err(explain(e).await),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs one table model: its units (those a resumed run already committed are kept), then
/// one publish of everything they staged, then registers the output for downstream models.
async fn run_table_model(
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
    let event_sources = units::event_sources(cx.pipeline, &sources_read(cx.dag, cx.pipeline, name));
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
    let files: Vec<sink::StagedFile> = records.into_iter().flat_map(|r| r.files).collect();
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
        sink::manifest_columns(schema),
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
    for source in sources_read(cx.dag, cx.pipeline, &model.name) {
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

/// `sluice check`: each selected table model's checks, on its published output. Models
/// without checks are left out; a model never run is an error naming it.
pub async fn check(
    prepared: &Prepared,
) -> Result<Vec<(String, Vec<crate::checks::CheckResult>)>, Error> {
    let mut out = Vec::new();
    for name in &prepared.selected {
        let model = &prepared.pipeline.models[name];
        if model.checks.is_empty() || model.materialized != Materialized::Table {
            continue;
        }
        register_output(&prepared.engine, model, prepared.schemas.get(name)).await?;
        let results = crate::checks::run(prepared.engine.ctx(), name, &model.checks).await;
        out.push((name.clone(), results));
    }
    Ok(out)
}

/// `sluice check`'s text: a line per check, and a summary.
pub fn describe_checks(results: &[(String, Vec<crate::checks::CheckResult>)]) -> String {
    let mut out = String::new();
    let (mut total, mut blocking, mut warned) = (0, 0, 0);
    for (model, checks) in results {
        for c in checks {
            total += 1;
            blocking += usize::from(c.blocks());
            warned += usize::from(c.status == "warn");
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

/// Registers a model's output as it will be once published — its staged files, not yet
/// published, beside the current files the new version keeps (append, overwrite_partitions)
/// — as its table: each file shown at the key it will be published at, so partitions read as
/// they will after the publish.
#[allow(clippy::too_many_arguments)]
async fn register_staged(
    engine: &Engine,
    model: &ModelConfig,
    output: &sink::commit::Output,
    existing: &sink::commit::Existing,
    spec: &sink::SinkSpec,
    run_id: &str,
    schema: &SchemaRef,
    files: &[sink::StagedFile],
) -> Result<(), Error> {
    let staging = sink::commit::Output::staging_dir(run_id);
    // The output as it will be once published: in append and overwrite_partitions mode the
    // files the new version keeps, beside the staged ones.
    let kept = sink::commit::kept_files(existing, spec.mode, &spec.partition_by, files);
    let view = crate::catalog::manifest_store::ManifestStore::aliased(
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
    let manifest = sink::commit::Manifest {
        version: 0,
        run_id: run_id.to_string(),
        committed_at: now(),
        format: spec.format.name().to_string(),
        partition_by: spec.partition_by.clone(),
        rows: files
            .iter()
            .map(|f| f.file.rows)
            .chain(kept.iter().map(|f| f.rows))
            .sum(),
        columns: sink::manifest_columns(schema),
        files: files
            .iter()
            .map(|f| f.file.clone())
            .chain(kept.iter().cloned())
            .collect(),
    };
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

/// The work units `sluice plan` shows for a model: each unit's rows counted from the inputs'
/// event-time column (a read of that one column; the model itself does not run), and the
/// warnings of the sizing rule of thumb.
async fn describe_units(prepared: &Prepared, model: &ModelConfig) -> String {
    if let Some(per_unit) = model.files_per_unit {
        return match plan_units(&prepared.engine, &prepared.pipeline, &prepared.dag, model).await {
            Err(e) => format!("       units:  cannot plan: {e}\n"),
            Ok(units) => {
                let mut out = format!(
                    "       units:  {} (by file, {per_unit} a unit)\n",
                    units.len()
                );
                for u in units.iter().take(12) {
                    let bytes: u64 = u
                        .files
                        .as_ref()
                        .map_or(0, |(_, f)| f.iter().map(|m| m.size).sum());
                    out.push_str(&format!("         {:<40} {bytes:>12} bytes\n", u.name));
                }
                if units.len() > 12 {
                    out.push_str(&format!("         ... {} more\n", units.len() - 12));
                }
                for w in units::sizing_warnings(units.len(), &[]) {
                    out.push_str(&format!("       warning: {w}\n"));
                }
                out
            }
        };
    }
    if let Some(kb) = &model.key_buckets {
        let keys: Vec<String> = kb.keys.iter().map(|(s, c)| format!("{s}.{c}")).collect();
        return format!(
            "       units:  {} (by key: a hash of {})\n",
            kb.buckets,
            keys.join(", ")
        );
    }
    let Some(batches) = &model.batches else {
        return "       units:  1 (the whole model)\n".into();
    };
    let units = match plan_units(&prepared.engine, &prepared.pipeline, &prepared.dag, model).await {
        Ok(u) => u,
        Err(e) => return format!("       units:  cannot plan: {e}\n"),
    };
    let sources = units::event_sources(
        &prepared.pipeline,
        &sources_read(&prepared.dag, &prepared.pipeline, &model.name),
    );
    let counts = units::rows_per_period(prepared.engine.ctx(), &sources, batches.size)
        .await
        .unwrap_or_default();
    let rows: Vec<u64> = units
        .iter()
        .map(|u| counts.get(&u.name).copied().unwrap_or(0))
        .collect();
    let mut out = format!(
        "       units:  {} ({} batches, {} .. {}), {} rows in all\n",
        units.len(),
        batches.size.name(),
        units.first().map_or("-", |u| u.name.as_str()),
        units.last().map_or("-", |u| u.name.as_str()),
        rows.iter().sum::<u64>()
    );
    for (u, r) in units.iter().zip(&rows).take(12) {
        out.push_str(&format!("         {:<16} {r:>12} rows\n", u.name));
    }
    if units.len() > 12 {
        out.push_str(&format!("         ... {} more\n", units.len() - 12));
    }
    for w in units::sizing_warnings(units.len(), &rows) {
        out.push_str(&format!("       warning: {w}\n"));
    }
    out
}

/// The text of `sluice plan`: sources, then models in run order with inputs and sinks.
pub async fn describe_plan(prepared: &Prepared) -> String {
    let p = &prepared.pipeline;
    let mut out = format!(
        "pipeline {} ({} models, {} sources)\n\nsources:\n",
        p.name,
        p.models.len(),
        p.sources.len()
    );
    for s in p.sources.values() {
        let parts = if s.partition_cols.is_empty() {
            String::new()
        } else {
            let cols: Vec<_> = s.partition_cols.iter().map(|c| c.name.as_str()).collect();
            format!("  partitioned by {}", cols.join(", "))
        };
        out.push_str(&format!(
            "  {:<20} {:<8} {}{parts}\n",
            s.name,
            s.format.name(),
            display_location(p, &s.location)
        ));
    }
    out.push_str("\nmodels (run order):\n");
    for (i, name) in prepared.selected.iter().enumerate() {
        let node = &prepared.dag.nodes[name];
        let model = &p.models[name];
        let inputs: Vec<String> = node
            .sources
            .iter()
            .map(|s| format!("{s} (source)"))
            .chain(
                node.upstream_models
                    .iter()
                    .map(|m| format!("{m} ({})", materialized_name(p.models[m].materialized))),
            )
            .collect();
        out.push_str(&format!(
            "  {}. {name}  [{}]\n",
            i + 1,
            materialized_name(model.materialized)
        ));
        out.push_str(&format!(
            "       sql:    {}\n",
            display_location(p, &model.sql_path.display().to_string())
        ));
        out.push_str(&format!(
            "       inputs: {}\n",
            if inputs.is_empty() {
                "-".to_string()
            } else {
                inputs.join(", ")
            }
        ));
        if model.materialized == Materialized::Table {
            let sink = &model.sink;
            let part = if sink.partition_by.is_empty() {
                String::new()
            } else {
                format!(", partition_by {}", sink.partition_by.join(", "))
            };
            out.push_str(&format!(
                "       sink:   {} ({}, mode {}{part})\n",
                display_location(p, &sink.location),
                sink.format.name(),
                sink.mode.name()
            ));
            if let Some(schema) = prepared.schemas.get(name) {
                out.push_str(&format!("       schema: {}\n", column_list(schema)));
            }
            out.push_str(&describe_units(prepared, model).await);
            out.push_str(&describe_joins(prepared, name).await);
        } else {
            out.push_str("       inlined into the models that read it\n");
        }
    }
    out
}

/// The joins of a model's query as the engine plans them: the strategy each got, and why.
async fn describe_joins(prepared: &Prepared, name: &str) -> String {
    let Ok(df) = prepared
        .engine
        .ctx()
        .sql(&prepared.dag.nodes[name].sql)
        .await
    else {
        return String::new();
    };
    let Ok(plan) = df.create_physical_plan().await else {
        return String::new();
    };
    let mut out = String::new();
    for j in crate::join::join_reports(&plan) {
        out.push_str(&format!(
            "       join:   {} — {} ({})\n",
            j.join, j.strategy, j.reason
        ));
    }
    out
}

fn materialized_name(m: Materialized) -> &'static str {
    match m {
        Materialized::Table => "table",
        Materialized::View => "view",
    }
}

/// A location as the user wrote it: relative to the pipeline folder when inside it.
fn display_location(p: &Pipeline, location: &str) -> String {
    std::path::Path::new(location)
        .strip_prefix(&p.root)
        .map(|r| r.display().to_string() + if location.ends_with('/') { "/" } else { "" })
        .unwrap_or_else(|_| location.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_told_from_deterministic_ones() {
        for m in [
            "Generic S3 error: Error after 10 retries: HTTP status server error (503 Service Unavailable)",
            "timed out after 30m00s",
            "error sending request: connection reset by peer",
            "SlowDown: Please reduce your request rate",
        ] {
            assert!(is_transient(m), "{m}");
        }
        for m in [
            "Schema error: No field named x",
            "Cast error: Cannot cast string 'abc' to value of type Int32",
            "Error while parsing value 'x7' as type 'Int32' for column 'quantity'",
        ] {
            assert!(!is_transient(m), "{m}");
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for n in 1..=10 {
            let d = backoff(n).as_secs_f64();
            let base = 0.5 * 2f64.powi((n - 1).min(6) as i32);
            assert!(
                d >= (base * 0.5).min(30.0) - 1e-9 && d <= (base * 1.5).min(30.0) + 1e-9,
                "{n}: {d}"
            );
        }
    }
}
