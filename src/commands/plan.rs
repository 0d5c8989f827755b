//! `sluice plan`: a pipeline's sources, and its models in run order with their inputs, sinks,
//! schemas, work units and joins. Runs nothing.

use std::path::Path;

use super::Context;
use crate::config::{Materialized, ModelConfig, Pipeline};
use crate::error::{EXIT_OK, Error};
use crate::run::incremental::Clock;
use crate::run::unit::Planning;
use crate::run::unit::plan_units;
use crate::run::{Prepared, RunOptions};
use crate::units::{self, UnitKind};

/// Prints the plan of the pipeline at `path`: every error a run would hit before writing
/// anything is found here.
pub async fn execute(path: &Path, opts: &RunOptions, cx: &Context<'_>) -> Result<i32, Error> {
    let pipeline = cx.load_pipeline(path)?;
    let prepared = crate::run::prepare(pipeline, opts, cx.env.clone()).await?;
    let ended = crate::run::heal::ended_runs(&prepared.pipeline);
    crate::run::heal::heal_outputs(&prepared, None, &ended).await;
    let state = crate::state::StateStore::open_existing(&prepared.pipeline.settings.state)?;
    let planning = Planning {
        clock: &crate::run::clock_of(opts),
        state: state.as_ref(),
        run_id: "",
    };
    print!("{}", describe_plan(&prepared, &planning).await);
    Ok(EXIT_OK)
}

/// The work units `sluice plan` shows for a model: each unit's rows counted from the inputs'
/// event-time column (a read of that one column; the model itself does not run), and the
/// warnings of the sizing rule of thumb.
async fn describe_units(
    prepared: &Prepared,
    model: &ModelConfig,
    planning: &Planning<'_>,
) -> String {
    let clock = planning.clock;
    if let Some(per_unit) = model.files_per_unit {
        return match plan_units(
            &prepared.engine,
            &prepared.pipeline,
            &prepared.dag,
            model,
            planning,
        )
        .await
        {
            Err(e) => format!("       units:  cannot plan: {e}\n"),
            Ok(plan) => {
                let units = plan.units;
                let mut out = format!(
                    "       units:  {} (by file, {per_unit} a unit)\n",
                    units.len()
                );
                for u in units.iter().take(12) {
                    let bytes: u64 = match &u.kind {
                        UnitKind::Files { files, .. } => files.iter().map(|m| m.size).sum(),
                        _ => 0,
                    };
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
    let (units, events) = match plan_units(
        &prepared.engine,
        &prepared.pipeline,
        &prepared.dag,
        model,
        planning,
    )
    .await
    {
        Ok(plan) => {
            if let Some(work) = &plan.incremental {
                return describe_incremental(prepared, model, clock, &plan, work);
            }
            (plan.units, plan.events.unwrap_or_default())
        }
        Err(e) => return format!("       units:  cannot plan: {e}\n"),
    };
    let rows: Vec<u64> = units
        .iter()
        .map(|u| match u.kind {
            UnitKind::Period { start, .. } => events.rows_of_period(start),
            _ => 0,
        })
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

/// The periods an incremental model's run would compute, and why; its late rows, the
/// periods left for `sluice reconcile`, and those needing a backfill, with the command.
fn describe_incremental(
    prepared: &Prepared,
    model: &ModelConfig,
    clock: &Clock,
    plan: &crate::run::unit::UnitPlan,
    work: &crate::run::unit::IncrementalWork,
) -> String {
    let Some(batches) = &model.batches else {
        return String::new();
    };
    let window = batches
        .incremental
        .as_ref()
        .map(|i| crate::config::format_duration(i.late_window))
        .unwrap_or_default();
    let events = plan.events.as_ref();
    let mut out = format!(
        "       units:  {} (incremental by {}, as of {}, late window {window}{})\n",
        plan.units.len(),
        batches.size.name(),
        clock.as_of.and_utc().to_rfc3339(),
        if work.plan.full { ", every period" } else { "" }
    );
    for (u, (p, reason)) in plan.units.iter().zip(&work.plan.todo).take(24) {
        let rows = events.map_or(0, |e| e.rows_of_period(*p));
        let reason = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "         {:<16} {reason:<12} {rows:>12} rows\n",
            u.name
        ));
    }
    if plan.units.len() > 24 {
        out.push_str(&format!("         ... {} more\n", plan.units.len() - 24));
    }
    let c = &work.plan.counts;
    out.push_str(&format!(
        "       late:   {} on time, {} late inside the window, {} beyond it, {} deleted\n",
        c.rows_on_time, c.rows_late_in_window, c.rows_late_beyond_window, c.rows_deleted
    ));
    if !work.plan.to_reconcile.is_empty() {
        out.push_str(&format!(
            "       to reconcile: {}\n",
            work.plan.to_reconcile.join(", ")
        ));
    }
    for b in &work.plan.backlog {
        out.push_str(&format!(
            "       needs backfill: {} ({} late rows, {} deleted): {}\n",
            b.period,
            b.rows_late,
            b.rows_deleted,
            crate::run::incremental::backfill_command(&prepared.pipeline, work.grid, &b.period)
        ));
    }
    out
}

/// The text of `sluice plan`: sources, then models in run order with inputs and sinks.
pub(crate) async fn describe_plan(prepared: &Prepared, planning: &Planning<'_>) -> String {
    let p = &prepared.pipeline;
    let r = &prepared.resources;
    let memory = r.memory_limit.map_or("unbounded".to_string(), |m| {
        crate::engine::limits::human_bytes(m as u64)
    });
    let mut out = format!(
        "pipeline {} ({} models, {} sources)\n\nresources: {} threads ({}); memory pool {memory} \
         ({})\n\nsources:\n",
        p.name,
        p.models.len(),
        p.sources.len() + p.database_sources.len(),
        r.threads,
        r.threads_from,
        r.memory_from,
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
    for s in p.database_sources.values() {
        let read = match &s.relation {
            crate::config::Relation::Table(t) => format!("table {t}"),
            crate::config::Relation::Query(_) => "a query".to_string(),
        };
        let ranges = match (&s.partition_column, s.partitions) {
            (Some(c), Some(n)) => format!("  {n} ranges of {c}"),
            (Some(c), None) => format!("  ranges of {c}"),
            _ => String::new(),
        };
        let db = &p.databases[&s.database];
        out.push_str(&format!(
            "  {:<20} {:<8} {read} of database '{}' ({}, TLS {}){ranges}\n",
            s.name,
            db.url.kind.name(),
            s.database,
            db.url,
            db.url.tls_mode_name()
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
                    .map(|m| format!("{m} ({})", Materialized::name(p.models[m].materialized))),
            )
            .collect();
        out.push_str(&format!(
            "  {}. {name}  [{}]\n",
            i + 1,
            Materialized::name(model.materialized)
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
        if model.materialized.is_written() {
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
            if let Some(db) = &sink.database {
                out.push_str(&describe_load(prepared, name, db).await);
            }
            if let Some(schema) = prepared.schemas.get(name) {
                out.push_str(&format!(
                    "       schema: {}\n",
                    crate::run::prepare::column_list(schema)
                ));
            }
            out.push_str(&describe_units(prepared, model, planning).await);
            for w in prepared.warnings.get(name).into_iter().flatten() {
                out.push_str(&format!("       warning: {w}\n"));
            }
            out.push_str(&describe_joins(prepared, name).await);
        } else {
            out.push_str("       inlined into the models that read it\n");
        }
    }
    out
}

/// Where a model is loaded into a database, and whether its table takes the result (the
/// check a run makes before its units).
async fn describe_load(
    prepared: &Prepared,
    name: &str,
    db: &crate::config::DatabaseSinkConfig,
) -> String {
    let key = if db.key.is_empty() {
        String::new()
    } else {
        format!(" on {}", db.key.join(", "))
    };
    let state = match (
        prepared.databases.pool(&db.database),
        prepared.schemas.get(name),
    ) {
        (Some(pool), Some(schema)) => match crate::database::sink::check(&pool, db, schema).await {
            Ok(exists) => crate::database::sink::describe_target(exists).to_string(),
            Err(e) => format!("REFUSED: {e}"),
        },
        _ => "not checked".to_string(),
    };
    format!(
        "       load:   table {} of database {} ({}{key}): {state}\n",
        db.table,
        db.database,
        db.mode.name(),
    )
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
    if prepared.engine.options().cluster {
        // As the cluster's scheduler will cut it.
        let config = prepared.engine.ctx().copied_config();
        let stages = crate::cluster::stage_plan(&plan, config.options())
            .unwrap_or_else(|e| format!("{e}\n"));
        out.push_str("       stages on the cluster:\n");
        for line in stages.lines() {
            out.push_str(&format!("         {line}\n"));
        }
    }
    out
}

/// A location as the user wrote it: relative to the pipeline folder when inside it.
fn display_location(p: &Pipeline, location: &str) -> String {
    std::path::Path::new(location)
        .strip_prefix(&p.root)
        .map(|r| r.display().to_string() + if location.ends_with('/') { "/" } else { "" })
        .unwrap_or_else(|_| location.to_string())
}
