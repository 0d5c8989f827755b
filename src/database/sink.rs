//! Loading a model's result into a database table, whichever the database: the check made
//! before any unit runs, and the load, in one transaction of the database with its commit
//! record (`_sluice_commits`, in the target table's schema), so that a load is applied at
//! most once per commit id whenever the process is killed.
//!
//! - PostgreSQL: [`super::postgres::sink`] (binary `COPY`);
//! - MySQL and MariaDB: [`super::mysql::sink`] (`LOAD DATA LOCAL INFILE`, or multi-row
//!   `INSERT`s where the server refuses local files).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;

use super::{DatabaseError, Pool};
use crate::config::{DatabaseKind, DatabaseSinkConfig};

/// The table sluice keeps its commit records in, in the target table's schema.
pub(crate) const COMMITS: &str = "_sluice_commits";

/// Who commits a load, recorded with it in `_sluice_commits`.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    /// The pipeline's name.
    pub(crate) pipeline: String,
    /// The model's name.
    pub(crate) model: String,
    /// What this load loads (the same id on a rerun of the same load).
    pub(crate) commit_id: String,
    /// The run that loads it.
    pub(crate) run_id: String,
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Loaded {
    /// Rows sent to the table.
    pub(crate) rows: u64,
    /// Bytes of data sent.
    pub(crate) bytes: u64,
    /// How they were sent: `copy`, `load data` or `insert` (empty: nothing was sent).
    pub(crate) method: &'static str,
    /// The load was committed before, by this run (a killed attempt) or the run named:
    /// nothing was sent.
    pub(crate) already: Option<String>,
}

/// What [`check`] found: the table exists and takes the result, or will be created.
pub(crate) fn describe_target(exists: bool) -> &'static str {
    if exists {
        "exists, compatible"
    } else {
        "missing: created by the load"
    }
}

/// Checks, before any work, that the result (`schema`) can be loaded into the sink's table:
/// `Ok(true)` when it exists and takes it, `Ok(false)` when it is missing (the load creates
/// it); an error saying why not otherwise.
pub(crate) async fn check(
    pool: &Arc<Pool>,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
) -> Result<bool, DatabaseError> {
    match pool.config.url.kind {
        DatabaseKind::Postgres => super::postgres::sink::check(pool, sink, schema).await,
        DatabaseKind::Mysql => super::mysql::sink::check(pool, sink, schema).await,
    }
}

/// Loads `rows` (batches of `schema`) into the sink's table in one transaction, with its
/// commit record; does nothing when the record shows the load was committed already.
/// Waits for the latency guard's gate first (a load is not paused once it has begun).
pub(crate) async fn load(
    pool: &Arc<Pool>,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
    commit: &Commit,
    rows: SendableRecordBatchStream,
) -> Result<Loaded, DatabaseError> {
    let _active = super::guard::enter(pool);
    pool.guard.gate(pool, 0).await?;
    let loaded = match pool.config.url.kind {
        DatabaseKind::Postgres => {
            super::postgres::sink::load(pool, sink, schema, commit, rows).await?
        }
        DatabaseKind::Mysql => super::mysql::sink::load(pool, sink, schema, commit, rows).await?,
    };
    let stats = pool.guard.stats();
    if loaded.already.is_none() {
        stats.rows_written.fetch_add(loaded.rows, Ordering::Relaxed);
    }
    stats
        .bytes_written
        .fetch_add(loaded.bytes, Ordering::Relaxed);
    Ok(loaded)
}

/// The table's name without its schema (`"schema.table"` or `"table"`).
pub(crate) fn table_name(sink: &DatabaseSinkConfig) -> &str {
    sink.table.rsplit('.').next().unwrap_or(&sink.table)
}

/// The schema (MySQL: the database) part of the sink's table name, if given.
pub(crate) fn schema_name(sink: &DatabaseSinkConfig) -> Option<&str> {
    sink.table.split_once('.').map(|(s, _)| s)
}

/// A target table's column, as the check of a result against the table sees it (each
/// database's sink describes its own columns so).
pub(crate) trait TargetColumn {
    /// Its name.
    fn name(&self) -> &str;
    /// Its type as the catalog shows it, for messages: `numeric(12,2)`, `int(11)`.
    fn shown(&self) -> &str;
    /// A generated column, which cannot be loaded.
    fn generated(&self) -> bool;
    /// NOT NULL without a default: a result must have it.
    fn required(&self) -> bool;
}

/// How each result column goes into the table's column of its name (`put_of`: how values
/// of a field go into a column, or why they cannot), or why the table cannot take the
/// result: a column it lacks, a generated one, a pair of types, a required one the result
/// lacks.
pub(crate) fn match_columns<C: TargetColumn, P>(
    schema: &SchemaRef,
    columns: &[C],
    put_of: impl Fn(&datafusion::arrow::datatypes::Field, &C) -> Result<P, String>,
) -> Result<Vec<P>, String> {
    let mut puts = Vec::new();
    for field in schema.fields() {
        let Some(col) = columns.iter().find(|c| c.name() == field.name()) else {
            return Err(format!(
                "has no column {:?}, which the result has (its columns: {})",
                field.name(),
                columns
                    .iter()
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        if col.generated() {
            return Err(format!(
                "column {} is generated: it cannot be loaded",
                col.name()
            ));
        }
        let put = put_of(field, col).map_err(|why| {
            format!(
                "column {} is {}, and the result's {} is {}: {why}",
                col.name(),
                col.shown(),
                field.name(),
                field.data_type()
            )
        })?;
        puts.push(put);
    }
    if let Some(col) = columns
        .iter()
        .find(|c| c.required() && !schema.fields().iter().any(|f| f.name() == c.name()))
    {
        return Err(format!(
            "column {} is NOT NULL without a default, and the result has no column {0}",
            col.name()
        ));
    }
    Ok(puts)
}

/// An upsert's key columns must be columns of the result.
pub(crate) fn key_in_result(sink: &DatabaseSinkConfig, schema: &SchemaRef) -> Result<(), String> {
    match sink
        .key
        .iter()
        .find(|k| !schema.fields().iter().any(|f| f.name() == *k))
    {
        Some(k) => Err(format!(
            "the upsert key {k:?} is not a column of the result"
        )),
        None => Ok(()),
    }
}
