//! A table model whose sink is a database table: its output is written like any other (to
//! its folder, `out/NAME/` by default: the mirror of what the last run loaded), then loaded into the table in
//! one transaction of the database ([`crate::database::sink`]). The table is
//! checked before any unit runs; the load records its commit in the database with the
//! rows, so a rerun or a resumed run never applies it twice.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;

use super::RunCx;
use crate::config::{ModelConfig, Pipeline, TableWrite};
use crate::dag::Dag;
use crate::database::sink;
use crate::database::{DatabaseError, Pool};
use crate::error::Error;
use crate::report::{Loaded, ModelReport};

/// Attempts of a load that fails on a dropped connection (the commit record makes another
/// attempt safe).
const LOAD_ATTEMPTS: u32 = 3;

/// Models may read a model loaded into a database in mode overwrite only: they read its
/// mirror, which then holds the table's rows. After an append or an upsert the table holds
/// more than the mirror: they would read the wrong rows.
pub(super) fn refuse_reading_loaded_tables(pipeline: &Pipeline, dag: &Dag) -> Result<(), Error> {
    for node in dag.nodes.values() {
        for up in &node.upstream_models {
            let Some(db) = pipeline
                .models
                .get(up)
                .and_then(|m| m.sink.database.as_ref())
            else {
                continue;
            };
            if db.mode != TableWrite::Overwrite {
                return Err(pipeline
                    .invalid(
                        &format!("models.{up}.sink.mode"),
                        format!(
                            "model '{}' reads '{up}', which is loaded into table {} in mode {}: \
                             the table then holds more rows than this run computed; declare a \
                             source on the table ([sources.NAME] database = \"{}\", table = \
                             \"{}\") and read that",
                            node.name,
                            db.table,
                            db.mode.name(),
                            db.database,
                            db.table
                        ),
                    )
                    .into());
            }
        }
    }
    Ok(())
}

/// The pool of the model's database sink, if it has one.
fn pool(cx: &RunCx<'_>, model: &ModelConfig) -> Result<Option<Arc<Pool>>, Error> {
    let Some(db) = &model.sink.database else {
        return Ok(None);
    };
    cx.databases
        .pool(&db.database)
        .map(Some)
        .ok_or_else(|| error(model, format!("no [databases.{}]", db.database)))
}

fn error(model: &ModelConfig, message: String) -> Error {
    Error::Model {
        model: model.name.clone(),
        message,
    }
}

fn database_error(model: &ModelConfig, e: DatabaseError) -> Error {
    error(model, format!("nothing was loaded: {e}"))
}

/// Before any unit runs: the table takes the model's result (`schema`), or is missing and
/// will be created; an error saying why not otherwise.
pub(super) async fn check(
    cx: &RunCx<'_>,
    model: &ModelConfig,
    schema: &SchemaRef,
) -> Result<(), Error> {
    let (Some(pool), Some(db)) = (pool(cx, model)?, &model.sink.database) else {
        return Ok(());
    };
    let exists = sink::check(&pool, db, schema)
        .await
        .map_err(|e| database_error(model, e))?;
    tracing::info!(
        model = %model.name,
        "sink: database {} table {} ({}): {}",
        db.database,
        db.table,
        db.mode.name(),
        sink::describe_target(exists)
    );
    Ok(())
}

/// After the output was published: loads it into the table, unless this publish was loaded
/// already (a resumed run, killed after the load committed). `append_id` is the identity
/// the output's append was published under, for an appending model.
pub(super) async fn load(
    cx: &RunCx<'_>,
    model: &ModelConfig,
    append_id: Option<&str>,
    schema: &SchemaRef,
    report: &mut ModelReport,
) -> Result<(), Error> {
    let (Some(pool), Some(db)) = (pool(cx, model)?, &model.sink.database) else {
        return Ok(());
    };
    let started = Instant::now();
    let location = crate::store::Location::parse(&model.sink.location)?.as_folder();
    let store = cx.engine.stores().store_for(&location)?;
    let manifest = crate::table::Output::new(store, location)
        .read_manifest()
        .await
        .map_err(|e| error(model, format!("cannot read {}: {}", e.key, e.message)))?
        .ok_or_else(|| error(model, "its output has no manifest after the publish".into()))?;
    // An append is identified by what it appends (the model's SQL and input files), as
    // appends to files are: a run of the same inputs again (a scheduler's retry) does not
    // append them twice. Otherwise one id per published version: a resumed run loads the
    // version it published once; a version published again (its inputs changed) is a new load.
    // The identity is the one the output's append was published under, made before its units
    // ran: made again now, it could name files added since, which the load does not hold.
    let commit_id = if db.mode == TableWrite::Append && !cx.force_append {
        let id = match append_id {
            Some(id) => id.to_string(),
            None => super::resume::append_identity(cx, model).await?,
        };
        format!("append:{id}")
    } else {
        format!("{}@{}", manifest.run_id, manifest.committed_at)
    };
    let commit = sink::Commit {
        pipeline: cx.pipeline.name.clone(),
        model: model.name.clone(),
        commit_id,
        run_id: cx.run_id.to_string(),
    };
    let mut attempt = 1;
    let loaded = loop {
        // The rows of the version just published, in the result's column order.
        let rows = cx
            .engine
            .ctx()
            .table(model.name.as_str())
            .await
            .and_then(|t| {
                let columns: Vec<&str> =
                    schema.fields().iter().map(|f| f.name().as_str()).collect();
                t.select_columns(&columns)
            })
            .map_err(|e| error(model, crate::describe::describe_datafusion(&e)))?
            .execute_stream()
            .await
            .map_err(|e| error(model, crate::describe::describe_datafusion(&e)))?;
        match sink::load(&pool, db, schema, &commit, rows).await {
            Ok(loaded) => break loaded,
            Err(e) if e.transient && attempt < LOAD_ATTEMPTS => {
                tracing::warn!(model = %model.name, "load failed, trying again: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(database_error(model, e)),
        }
    };
    if db.mode == TableWrite::Overwrite && loaded.already.is_none() && loaded.rows == 0 {
        let w = format!(
            "the result has no rows: table {} was emptied (overwrite)",
            db.table
        );
        tracing::warn!(model = %model.name, "{w}");
        report.warnings.push(w);
    }
    match &loaded.already {
        Some(run) if run == cx.run_id => {
            tracing::info!(model = %model.name, "already loaded into table {} by this run", db.table);
        }
        Some(run) => {
            tracing::warn!(model = %model.name, "already appended into table {}: skipped", db.table);
            report.status = crate::status::ModelStatus::Skipped;
            report.error = Some(format!(
                "already appended: table {} holds this append (the same SQL and input files, \
                 loaded by run {run}), so it is not applied twice; --force-append appends it \
                 again",
                db.table
            ));
        }
        None => {}
    }
    report.loaded = Some(Loaded {
        database: db.database.clone(),
        table: db.table.clone(),
        mode: db.mode.name().to_string(),
        method: loaded.method.to_string(),
        rows: loaded.rows,
        bytes: loaded.bytes,
        commit: commit.commit_id,
        already_loaded: loaded.already.is_some(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    });
    Ok(())
}
