//! Preparing a run: the DAG built, the selection made, the tables the selected models read
//! registered, and every selected model's query planned. `sluice run`, `sluice plan` and
//! `sluice check` all start here, so `plan` reports exactly the errors a run would hit before
//! writing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::DataFrame;

use super::RunOptions;
use super::source_schemas::{SchemasRead, SourceSchemas};
use crate::catalog;
use crate::config::{Materialized, ModelConfig, Pipeline};
use crate::dag::{Dag, PlanError};
use crate::describe::describe_datafusion;
use crate::engine::{Engine, EngineOptions};
use crate::error::Error;
use crate::sink::SinkSpec;
use crate::store::{Location, StoreRegistry};

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
    /// What planning found worth a warning, per model (groups a batched model may split).
    pub warnings: BTreeMap<String, Vec<String>>,
    /// For a time-batched model that aggregates by keys that do not place each group in one
    /// period: the output columns of those keys, checked unique before the publish (a key
    /// two units produced is a group split over them).
    pub split_keys: BTreeMap<String, Vec<String>>,
    /// The models whose result is sorted (`ORDER BY`): their units' files are not merged at
    /// publish, which would interleave them.
    pub sorted: BTreeSet<String>,
    /// The schemas of source files registering the sources read (the state store knew
    /// them not), for the run to record.
    pub(crate) schemas_read: SchemasRead,
    /// The pools of the pipeline's databases, one each for the whole run.
    pub(crate) databases: crate::database::Databases,
    /// The threads and memory pool of the run, and where they came from.
    pub resources: crate::engine::limits::Resources,
    /// What its OpenLineage events say (with a `[lineage]`).
    pub(crate) lineage: Option<crate::lineage::Lineage>,
    /// The cluster the queries run on (`None`: this process; and for a dry run).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
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
    super::database_load::refuse_reading_loaded_tables(&pipeline, &dag)?;
    let selected = dag.select(&opts.select)?;

    let target = opts.cluster.clone().or(pipeline.settings.cluster.clone());
    if let Some(target) = &target {
        check_cluster_locations(&pipeline, &dag, &selected, target)?;
    }
    let resources = crate::engine::limits::resolve(
        opts.threads.or(pipeline.settings.threads),
        opts.memory_limit.or(pipeline.settings.memory_limit),
        &crate::engine::limits::read_cgroup(&opts.cgroup),
        EngineOptions::default().threads(),
    );
    let engine_opts = EngineOptions {
        memory_limit: resources.memory_limit,
        threads: Some(resources.threads),
        spill_dir: pipeline.settings.spill_dir.clone(),
        join: crate::config::JoinOptions {
            strategy: opts
                .join_strategy
                .unwrap_or(pipeline.settings.join.strategy),
            buckets: pipeline.settings.join.buckets,
            broadcast_limit: pipeline.settings.join.broadcast_limit,
            order: opts.join_order.unwrap_or(pipeline.settings.join.order),
        },
        cluster: target.is_some(),
        settings: opts.engine_settings(&pipeline),
    };
    let stores = Arc::new(StoreRegistry::new(pipeline.stores.clone(), env));
    let engine = Engine::new(engine_opts, stores)?;
    // The cluster is reached first: an unreachable one fails the run before any source is
    // read.
    let cluster = match &target {
        Some(target) if !opts.dry_run => Some(Arc::new(
            crate::cluster::Cluster::connect(target, resources.threads, resources.memory_limit)
                .await?,
        )),
        _ => None,
    };

    // Sources the selected models need, through the views they inline.
    let selected_set: BTreeSet<&String> = selected.iter().collect();
    let mut needed_sources = BTreeSet::new();
    let mut outside: Vec<String> = Vec::new();
    for name in &selected {
        for up in dag.upstream(name).into_iter().chain([name.clone()]) {
            let node = &dag.nodes[&up];
            let is_outside = !selected_set.contains(&up);
            if is_outside && node.materialized.is_written() {
                // Read from its existing output; its own inputs are not needed.
                if !outside.contains(&up) {
                    outside.push(up);
                }
                continue;
            }
            needed_sources.extend(node.sources.iter().cloned());
        }
    }
    // The schemas of the sources' files that earlier runs read are not read again.
    let state = super::source_schemas::open_state(&pipeline);
    let mut schemas_read = SchemasRead::default();
    // One pool per database for the whole run: its connection cap holds across models.
    let databases = crate::database::Databases::new(pipeline.databases.values());
    for name in &needed_sources {
        let Some(spec) = pipeline.sources.get(name) else {
            if let Some(db) = pipeline.database_sources.get(name) {
                catalog::register_database_source(engine.ctx(), &databases, db).await?;
            }
            continue;
        };
        let cache = SourceSchemas::load(state.as_ref(), spec);
        catalog::register_table(engine.ctx(), engine.stores(), spec, Some(&cache)).await?;
        schemas_read.push(cache);
    }
    drop(state);
    for name in &outside {
        register_output(&engine, &pipeline.models[name], None).await?;
    }
    let mut lineage = crate::lineage::Lineage::new(&pipeline);
    if let Some(lineage) = lineage.as_mut() {
        for name in needed_sources.iter().chain(&outside) {
            if let Ok(table) = engine.ctx().table_provider(name.as_str()).await {
                lineage.set_schema(name, &table.schema());
            }
        }
    }

    // Plan every model that runs or is inlined, in order; a model's table is its plan (a
    // view) until it has been written.
    let mut schemas = BTreeMap::new();
    let mut warnings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut split_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut sorted = BTreeSet::new();
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
        if let Some(lineage) = lineage.as_mut() {
            // The plans of the views the planner may have inlined into this one.
            let mut registered = BTreeMap::new();
            for table in lineage.tables() {
                if let Ok(provider) = engine.ctx().table_provider(table.as_str()).await
                    && let Some(plan) = provider.get_logical_plan()
                {
                    registered.insert(table, plan.into_owned());
                }
            }
            lineage.plan_model(name, df.logical_plan(), &registered);
            lineage.set_schema(name, &schema);
        }
        if super::groups::is_sorted(df.logical_plan()) {
            sorted.insert(name.clone());
        }
        let model = &pipeline.models[name];
        if let Some(batches) = &model.batches
            && selected_set.contains(name)
        {
            let columns: Vec<String> =
                crate::units::event_sources(&pipeline, &dag.sources_read(name))
                    .into_iter()
                    .map(|(_, c)| c)
                    .collect();
            let grid = crate::units::Grid::of(batches);
            let utc = crate::units::Grid::utc(batches.size);
            if !columns.is_empty()
                && super::groups::split_groups(df.logical_plan(), &columns, utc).is_some()
                && let Some(keys) = super::groups::key_columns(df.logical_plan())
            {
                split_keys.insert(name.clone(), keys);
            }
            // (A zone set by the user says the keys are its local dates.)
            if !columns.is_empty()
                && grid.tz.is_none()
                && let Some(why) = super::groups::split_groups(df.logical_plan(), &columns, grid)
            {
                let warning = format!(
                    "model '{name}' is batched by {}: {why}",
                    batches.size.name()
                );
                tracing::warn!("{warning}");
                warnings.entry(name.clone()).or_default().push(warning);
            }
        }
        if model.files_per_unit.is_some() {
            dag.single_source(name).map_err(|message| PlanError::Sql {
                model: name.clone(),
                file: model.sql_path.clone(),
                message,
            })?;
        }
        if let Some(batches) = &model.batches
            && batches.incremental.is_some()
            && selected_set.contains(name)
        {
            check_incremental(&pipeline, &dag, model, batches, &opts.kind)?;
        }
        if target.is_some() && model.materialized.is_written() && selected_set.contains(name) {
            // What cannot run on the cluster is refused now, by name, not midway.
            let plan = df
                .clone()
                .create_physical_plan()
                .await
                .map_err(|e| Error::Query {
                    context: format!("model '{name}'"),
                    source: e,
                })?;
            crate::cluster::check_plan(name, &plan)?;
        }
        if model.materialized.is_written() && selected_set.contains(name) {
            // The sink's location and store, resolved now so a bad one stops the run before
            // any model writes.
            let location = Location::parse(&model.sink.location)?;
            engine.stores().store_for(&location)?;
            check_sink_apart(&pipeline, model).map_err(|message| PlanError::Sql {
                model: name.clone(),
                file: model.sql_path.clone(),
                message,
            })?;
            check_sink_columns(&engine, model, &location, &schema, &opts.kind)
                .await
                .map_err(|message| PlanError::Sql {
                    model: name.clone(),
                    file: model.sql_path.clone(),
                    message,
                })?;
        }
        if model.materialized.is_written() {
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
        warnings,
        split_keys,
        sorted,
        schemas_read,
        databases,
        resources,
        lineage,
        cluster,
    })
}

/// On a cluster, executors read and write every location themselves: a local path (a
/// folder of this machine only) is refused, unless the executors are on this machine
/// (`standalone`, or a scheduler on a loopback address); databases cannot be read or loaded
/// by executors yet.
fn check_cluster_locations(
    pipeline: &Pipeline,
    dag: &Dag,
    selected: &[String],
    target: &crate::config::ClusterTarget,
) -> Result<(), Error> {
    let remote = !target.shares_local_files();
    let local = |location: &str| {
        remote && Location::parse(location).is_ok_and(|l| l.url().scheme() == "file")
    };
    let local_message = |what: &str, location: &str| {
        format!(
            "{what} {location:?} is a local path, which the executors of the cluster {target} \
             cannot reach: use object storage (s3://...), or run with cluster = \"standalone\" \
             or without a cluster"
        )
    };
    let mut sources = BTreeSet::new();
    for name in selected {
        sources.extend(dag.sources_read(name));
    }
    for name in &sources {
        if let Some(spec) = pipeline.sources.get(name)
            && local(&spec.location)
        {
            return Err(pipeline
                .invalid(
                    &format!("sources.{name}.location"),
                    local_message("the source's location", &spec.location),
                )
                .into());
        }
        if pipeline.database_sources.contains_key(name) {
            return Err(pipeline
                .invalid(
                    &format!("sources.{name}.database"),
                    format!(
                        "a database source cannot be read on a cluster ({target}) yet: run the \
                         models that read it without a cluster"
                    ),
                )
                .into());
        }
    }
    // The outputs of upstream models that are not run read as they are.
    let mut outputs_read: BTreeSet<&String> = BTreeSet::new();
    for name in selected {
        for up in dag.upstream(name) {
            if !selected.contains(&up)
                && let Some((key, _)) = pipeline.models.get_key_value(&up)
            {
                outputs_read.insert(key);
            }
        }
    }
    for name in outputs_read {
        let model = &pipeline.models[name];
        if model.materialized.is_written() && local(&model.sink.location) {
            return Err(pipeline
                .invalid(
                    &format!("models.{name}.sink.location"),
                    local_message("the output read by the models run", &model.sink.location),
                )
                .into());
        }
    }
    for name in selected {
        let model = &pipeline.models[name];
        if !model.materialized.is_written() {
            continue;
        }
        if model.sink.database.is_some() {
            return Err(pipeline
                .invalid(
                    &format!("models.{name}.sink.database"),
                    format!(
                        "a database sink cannot be loaded from a cluster ({target}) yet: run the \
                         model without a cluster"
                    ),
                )
                .into());
        }
        if local(&model.sink.location) {
            return Err(pipeline
                .invalid(
                    &format!("models.{name}.sink.location"),
                    local_message("the sink's location", &model.sink.location),
                )
                .into());
        }
    }
    // A store's quota paces one process; a cluster's executors would each read and write
    // at the full rate.
    if let Some(store) = pipeline.stores.iter().find(|s| !s.quota.is_unlimited()) {
        let key = match &store.quota {
            q if q.bytes_per_second.is_some() => "max_bytes_per_second",
            q if q.requests_per_second.is_some() => "max_requests_per_second",
            _ => "max_concurrent_requests",
        };
        return Err(pipeline
            .invalid(
                &format!("stores.{}.{key}", store.name),
                format!(
                    "store '{}' has I/O quotas, which pace one process: on a cluster ({target}) \
                     each executor would read and write at the full rate. Remove the quotas to \
                     run on the cluster, or run without one",
                    store.name
                ),
            )
            .into());
    }
    if let Some(staging) = &pipeline.settings.staging
        && local(staging)
    {
        return Err(pipeline
            .invalid(
                "settings.staging",
                local_message("the staging folder", staging),
            )
            .into());
    }
    Ok(())
}

/// The folder a location names, as a comparable key: store URL and path, `/`-terminated (a
/// file or a glob names its folder).
fn folder_key(location: &str) -> Option<String> {
    if !location.contains("://") {
        // A path: the folder the file system resolves it to (links followed).
        let (folder, last) = location.rsplit_once('/').unwrap_or(("", location));
        // A glob stands for its folder; a single file for itself.
        let place = if last.contains(['*', '?', '[']) {
            folder
        } else {
            location
        };
        return Some(crate::config::folder_identity(place));
    }
    let url = datafusion::datasource::listing::ListingTableUrl::parse(location).ok()?;
    let prefix = url.prefix().as_ref().trim_end_matches('/');
    let store = url.object_store();
    let store = store.as_str().trim_end_matches('/');
    Some(if prefix.is_empty() {
        format!("{store}/")
    } else {
        format!("{store}/{prefix}/")
    })
}

/// Refuses a sink whose folder holds, or lies inside, a source's folder, a rejects folder,
/// or the pipeline folder itself: its overwrite deletes what the folder holds, and those
/// files are not its own.
fn check_sink_apart(pipeline: &Pipeline, model: &ModelConfig) -> Result<(), String> {
    let Some(sink) = folder_key(&model.sink.location) else {
        return Ok(());
    };
    let root = pipeline.root.display().to_string();
    let others = pipeline
        .sources
        .values()
        .map(|s| (format!("source '{}'", s.name), s.location.clone()))
        .chain(pipeline.sources.values().filter_map(|s| {
            Some((
                format!("the rejects of source '{}'", s.name),
                s.rejects.clone()?,
            ))
        }))
        .chain(pipeline.settings.state.parent().map(|state| {
            (
                "the state folder (and the default rejects folders)".to_string(),
                format!("{}/", state.display()),
            )
        }))
        .chain(
            pipeline
                .settings
                .staging
                .clone()
                .map(|s| ("the staging folder (settings.staging)".to_string(), s)),
        )
        .chain([
            ("the queries folder".to_string(), format!("{root}/queries/")),
            ("the pipeline folder".to_string(), format!("{root}/")),
        ]);
    for (what, location) in others {
        let Some(other) = folder_key(&location) else {
            continue;
        };
        let pipeline_folder = what == "the pipeline folder";
        let overlaps = if pipeline_folder {
            other.starts_with(&sink)
        } else {
            other.starts_with(&sink) || sink.starts_with(&other)
        };
        if overlaps {
            return Err(format!(
                "sink.location {} overlaps {what} at {location}: writing the sink would delete \
                 or mix with files that are not its own; give it a folder of its own",
                model.sink.location
            ));
        }
    }
    Ok(())
}

/// Refuses a model that adds to its output (`append`, `overwrite_partitions`) a result whose
/// columns differ from the output's, before anything runs (see `table::schema`). An output
/// that cannot be read here is left to the model's run, which reports it.
async fn check_sink_columns(
    engine: &Engine,
    model: &ModelConfig,
    location: &Location,
    schema: &SchemaRef,
    kind: &super::incremental::RunKind,
) -> Result<(), String> {
    let location = location.as_folder();
    let Ok(store) = engine.stores().store_for(&location) else {
        return Ok(());
    };
    let output = crate::table::Output::new(store, location);
    let Ok(manifest) = output.read_manifest().await else {
        return Ok(());
    };
    match crate::table::schema::refuse_changed_columns(
        manifest.as_ref(),
        super::incremental::column_mode(model, manifest.as_ref(), kind),
        &model.sink.partition_by,
        schema,
    ) {
        None => Ok(()),
        Some(why) => Err(changed_columns_message(model, &why)),
    }
}

/// What an incremental model needs of the pipeline and the command: an input with event
/// time, and a backfill that does not start before its `start`.
fn check_incremental(
    pipeline: &Pipeline,
    dag: &crate::dag::Dag,
    model: &ModelConfig,
    batches: &crate::config::BatchConfig,
    kind: &super::incremental::RunKind,
) -> Result<(), Error> {
    let name = &model.name;
    let upstream = super::unit::incremental_upstream(pipeline, dag, name);
    let grid = crate::units::Grid::of(batches);
    for up in &upstream {
        let Some(theirs) = pipeline.models[up]
            .batches
            .as_ref()
            .map(crate::units::Grid::of)
        else {
            continue;
        };
        // Each of its periods must lie in one of ours: the same zone, ours as coarse or more.
        let coarser = |a: crate::config::BatchSize, b: crate::config::BatchSize| {
            let rank = |s| match s {
                crate::config::BatchSize::Hour => 0,
                crate::config::BatchSize::Day => 1,
                crate::config::BatchSize::Month => 2,
                crate::config::BatchSize::Year => 3,
            };
            rank(a) >= rank(b)
        };
        if theirs.tz != grid.tz || !coarser(grid.size, theirs.size) {
            return Err(pipeline
                .invalid(
                    &format!("models.{name}.batches.size"),
                    format!(
                        "'{name}' reads the incremental model '{up}', whose periods are by {}: \
                         its own periods ({}) must hold whole periods of '{up}' (the same zone, \
                         and as long or longer)",
                        theirs.label(),
                        grid.label()
                    ),
                )
                .into());
        }
    }
    if upstream.is_empty()
        && crate::units::event_sources(pipeline, &dag.sources_read(name)).is_empty()
    {
        let read: Vec<String> = dag.sources_read(name).into_iter().collect();
        return Err(pipeline
            .invalid(
                &format!("models.{name}.materialized"),
                format!(
                    "an incremental model needs an input with event time (a source with \
                     event_time, or an incremental model), and '{name}' reads none ({}): set \
                     event_time on the source that holds the rows' time",
                    if read.is_empty() {
                        "no sources".to_string()
                    } else {
                        read.join(", ")
                    }
                ),
            )
            .into());
    }
    if let (super::incremental::RunKind::Backfill { from, .. }, Some(start)) = (kind, batches.start)
        && *from < crate::units::truncate(batches.size, start)
    {
        return Err(pipeline
            .invalid(
                &format!("models.{name}.batches.start"),
                format!(
                    "backfill --from {from} is before the model's first period ({start}): \
                     move start, or backfill from {start}"
                ),
            )
            .into());
    }
    Ok(())
}

/// The message refusing a write of `model` whose columns changed.
pub(super) fn changed_columns_message(model: &ModelConfig, why: &str) -> String {
    let fix = if model.materialized == Materialized::Incremental {
        "or run it with --full-refresh to compute every period with the new columns"
    } else {
        "or set mode = \"overwrite\" to replace the output with the new columns"
    };
    format!(
        "output {}: {why}. Select the output's columns in its order with its types, {fix}",
        model.sink.location
    )
}

pub fn column_list(schema: &SchemaRef) -> String {
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
pub(super) fn sink_spec(
    engine: &Engine,
    pipeline: &Pipeline,
    model: &ModelConfig,
) -> Result<SinkSpec, Error> {
    Ok(SinkSpec {
        location: Location::parse(&model.sink.location)?.as_folder(),
        append_id: None,
        format: model.sink.format,
        partition_by: model.sink.partition_by.clone(),
        mode: model.sink.mode,
        target_rows_per_file: model.sink.target_rows_per_file,
        target_file_size: model.sink.target_file_size,
        compression: model.sink.compression,
        parallelism: engine.options().threads(),
        buffer_budget: engine.write_buffer_budget(),
        memory: engine.memory_pool(),
        preserve_order: false,
        adopt: model.sink.adopt,
        staging: pipeline
            .settings
            .staging
            .as_deref()
            .map(|s| Location::parse(s).map(|l| l.as_folder()))
            .transpose()?,
    })
}

/// Registers a table model's published output as its table, so downstream models read it.
/// With `schema` (the model's planned schema) columns keep the planned order and types.
pub async fn register_output(
    engine: &Engine,
    model: &ModelConfig,
    schema: Option<&SchemaRef>,
) -> Result<(), Error> {
    let location = Location::parse(&model.sink.location)?.as_folder();
    let store = engine.stores().store_for(&location)?;
    let output = crate::table::Output::new(Arc::clone(&store), location.clone());
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
