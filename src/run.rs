//! `sluice run` and `sluice plan`: a pipeline from configuration to published outputs.
//!
//! The data flows one way: [`Pipeline`] (config) → [`Dag`] (plan) → tables registered in the
//! engine's catalog → each model's query validated up front → executed in dependency order,
//! each table model streamed into its sink and committed → [`RunReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::DataFrame;

use crate::catalog;
use crate::config::{Materialized, ModelConfig, Pipeline};
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, describe_datafusion};
use crate::plan::{Dag, PlanError};
use crate::progress::Progress;
use crate::report::{ModelReport, RunReport};
use crate::sink::{self, SinkSpec};
use crate::state::{Holder, StateStore};
use crate::store::{Location, StoreRegistry};

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
    /// `--dry-run`: validate and plan, write nothing.
    pub dry_run: bool,
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
pub async fn run(
    prepared: Prepared,
    opts: &RunOptions,
    progress: &Progress,
) -> Result<RunReport, Error> {
    let run_id = new_run_id();
    let started_at = now();
    if opts.dry_run {
        return Ok(run_models(prepared, opts, progress, run_id, started_at).await);
    }
    let state = Arc::new(StateStore::open(&prepared.pipeline.settings.state)?);
    let me = Holder::current();
    let pipeline = prepared.pipeline.name.clone();
    if let Some(old) = state.acquire(&pipeline, &run_id, &me, &started_at)? {
        tracing::warn!("took over the lock of run {old}, whose process is gone");
    }
    let selection = prepared.selected.join(",");
    let vars = opts
        .vars
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let result = async {
        state.start_run(&run_id, &pipeline, &started_at, &selection, &vars, &me)?;
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
        let report = run_models(prepared, opts, progress, run_id.clone(), started_at).await;
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
        &Holder::current(),
    )?;
    state.finish_run(report)?;
    Ok(())
}

async fn run_models(
    prepared: Prepared,
    opts: &RunOptions,
    progress: &Progress,
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
        match run_table_model(
            &engine,
            &pipeline,
            &dag,
            name,
            &schemas[name],
            &run_id,
            progress,
        )
        .await
        {
            Ok(done) => {
                report.rows_in = done.rows_in;
                report.rows_out = done.rows_out;
                report.spilled_bytes = done.spilled;
                report.units_done = 1;
                report.outputs = done.outputs;
            }
            Err(e) => {
                report.status = "failed".into();
                report.error = Some(match e {
                    Error::Model { message, .. } => message,
                    other => other.to_string(),
                });
                failed.insert(name.clone());
            }
        }
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            model = %name,
            status = %report.status,
            rows_in = report.rows_in,
            rows_out = report.rows_out,
            elapsed_ms = report.elapsed_ms,
            "finished"
        );
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
fn sources_read(dag: &Dag, pipeline: &Pipeline, name: &str) -> BTreeSet<String> {
    let mut out = dag.nodes[name].sources.clone();
    let mut frontier: Vec<&String> = dag.nodes[name].upstream_models.iter().collect();
    while let Some(up) = frontier.pop() {
        if pipeline.models[up].materialized == Materialized::View {
            out.extend(dag.nodes[up].sources.iter().cloned());
            frontier.extend(dag.nodes[up].upstream_models.iter());
        }
    }
    out
}

struct ModelDone {
    rows_in: u64,
    rows_out: u64,
    spilled: u64,
    outputs: Vec<String>,
}

/// Executes one table model into its sink and publishes it, then registers its output.
async fn run_table_model(
    engine: &Engine,
    pipeline: &Pipeline,
    dag: &Dag,
    name: &str,
    schema: &SchemaRef,
    run_id: &str,
    progress: &Progress,
) -> Result<ModelDone, Error> {
    let model = &pipeline.models[name];
    let sql = &dag.nodes[name].sql;
    let model_err = |message: String| Error::Model {
        model: model.name.clone(),
        message,
    };
    let mut spec = sink_spec(engine, model)?;
    let store = engine.stores().store_for(&spec.location)?;
    let (output, existing) = sink::prepare(store, &spec, run_id)
        .await
        .map_err(|e| model_err(e.to_string()))?;
    let df = plan_model(engine, model, sql).await?;
    let mut exec = engine
        .execute(df)
        .await
        .map_err(|e| model_err(describe_datafusion(&e)))?;
    spec.preserve_order = exec.is_ordered();
    let Some(stream) = exec.take_stream() else {
        return Err(model_err("the query produced no stream".into()));
    };
    let task = progress.task(&model.name);
    let staged = sink::stage(output, existing, &spec, stream, run_id, &|rows| {
        task.inc(rows)
    })
    .await;
    task.finish();
    let staged = match staged {
        Ok(s) => s,
        Err(sink::SinkError::Input(e)) => {
            let sources = sources_read(dag, pipeline, name);
            let message = crate::diagnose::explain(engine, pipeline, &sources, &e).await;
            return Err(model_err(message));
        }
        Err(e) => return Err(model_err(e.to_string())),
    };
    let committed = sink::publish(staged, &spec)
        .await
        .map_err(|e| model_err(e.to_string()))?;
    register_output(engine, model, Some(schema)).await?;
    let outputs = committed
        .new_files
        .iter()
        .map(|f| {
            std::path::Path::new(f)
                .strip_prefix(&pipeline.root)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| f.clone())
        })
        .collect();
    Ok(ModelDone {
        rows_in: exec.rows_scanned(),
        rows_out: committed.rows,
        spilled: exec.spilled_bytes(),
        outputs,
    })
}

/// The text of `sluice plan`: sources, then models in run order with inputs and sinks.
pub fn describe_plan(prepared: &Prepared) -> String {
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
            out.push_str("       units:  1 (the whole model)\n");
        } else {
            out.push_str("       inlined into the models that read it\n");
        }
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
