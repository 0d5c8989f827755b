//! `sluice sql`: one transform (a SQL file or `-e` text) over named tables, printed as a
//! table or written to an output with the same sink and commit protocol as a pipeline.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;

use crate::catalog;
use crate::config::{Format, PartitionCol, SourceConfig, WriteMode};
use crate::dag::{self, PlanError};
use crate::describe::describe_datafusion;
use crate::engine::{Engine, EngineOptions};
use crate::error::Error;
use crate::progress::Progress;
use crate::sink::{self, SinkSpec};
use crate::store::{Location, StoreRegistry};

/// Where `sluice sql --out` writes.
#[derive(Debug, Clone)]
pub struct OutputTarget {
    /// Output folder (absolute path or URL).
    pub location: String,
    /// File format.
    pub format: Format,
    /// Hive partition columns.
    pub partition_by: Vec<String>,
    /// What happens to existing output.
    pub mode: WriteMode,
    /// Rows per file.
    pub target_rows_per_file: usize,
    /// Bytes per file.
    pub target_file_size: u64,
    /// How Parquet files are compressed.
    pub compression: crate::config::ParquetCompression,
    /// Take the files of a folder without a manifest as its current version.
    pub adopt: bool,
}

/// A table given with `--table NAME=LOCATION`.
#[derive(Debug, Clone)]
pub struct TableArg {
    /// The table name.
    pub name: String,
    /// Absolute path or URL: a file, folder or glob.
    pub location: String,
    /// The format, if known; `None` (as from `--table`) guesses it from the files.
    pub format: Option<Format>,
    /// Hive partition columns.
    pub partition_cols: Vec<PartitionCol>,
}

/// Everything `sluice sql` needs.
#[derive(Debug, Clone)]
pub struct SqlOptions {
    /// The SQL text.
    pub sql: String,
    /// Where it came from, for messages: the file, or `-e`.
    pub origin: PathBuf,
    /// `--var KEY=VALUE`.
    pub vars: BTreeMap<String, String>,
    /// The tables.
    pub tables: Vec<TableArg>,
    /// `--out`, or print.
    pub out: Option<OutputTarget>,
    /// Engine options.
    pub engine: EngineOptions,
    /// At most this many rows are printed.
    pub max_rows: usize,
    /// `--cluster`: run the query on this Ballista cluster.
    pub cluster: Option<crate::config::ClusterTarget>,
}

/// What `sluice sql` did.
#[derive(Debug, Clone)]
pub struct SqlSummary {
    /// Rows the query produced.
    pub rows: u64,
    /// Files written (with `--out`).
    pub files: Vec<String>,
}

/// Runs the transform: prints its result to stdout, or writes it with `--out` and says how
/// much it wrote.
pub async fn execute(opts: &SqlOptions, cx: &super::Context<'_>) -> Result<i32, Error> {
    let mut stdout = std::io::stdout().lock();
    let summary = run_sql(opts, cx.env.clone(), cx.progress, &mut stdout).await?;
    if opts.out.is_some() && !cx.quiet {
        eprintln!(
            "wrote {} rows in {} files",
            summary.rows,
            summary.files.len()
        );
    }
    stdout.flush().map_err(|source| Error::Io {
        path: "stdout".into(),
        source,
    })?;
    Ok(crate::error::EXIT_OK)
}

/// Runs one transform. Printed output goes to `out`.
pub async fn run_sql(
    opts: &SqlOptions,
    env: Vec<(String, String)>,
    progress: &Progress,
    out: &mut dyn Write,
) -> Result<SqlSummary, Error> {
    let sql = dag::render(&opts.sql, &opts.vars, &opts.origin)?;
    // Parse first, so a syntax error names the file before any table is touched. `EXPLAIN
    // query` (any of DataFusion's forms) shows the plan, with each join's strategy.
    let explain = dag::is_explain(&sql, &opts.origin)?;
    let stores = Arc::new(StoreRegistry::new(Vec::new(), env));
    let engine = Engine::new(opts.engine.clone(), stores)?;
    // (EXPLAIN only plans, here: with the settings of the cluster it would run on.)
    let cluster = match &opts.cluster {
        Some(target) if !explain => {
            refuse_local_paths(opts, target)?;
            Some(
                crate::cluster::Cluster::connect(
                    target,
                    engine.options().threads(),
                    engine.options().memory_limit,
                )
                .await?,
            )
        }
        _ => None,
    };
    for t in &opts.tables {
        let format = match t.format {
            Some(f) => f,
            None => {
                let loc = Location::parse(&t.location)?;
                catalog::guess_format(engine.stores(), &loc).await?
            }
        };
        let mut spec = SourceConfig::new(&t.name, &t.location, format);
        spec.partition_cols = t.partition_cols.clone();
        catalog::register_table(engine.ctx(), engine.stores(), &spec, None).await?;
    }
    let df = engine.ctx().sql(&sql).await.map_err(|e| PlanError::Query {
        file: opts.origin.clone(),
        message: describe_datafusion(&e),
    })?;
    let query_err = |e: datafusion::error::DataFusionError| Error::Query {
        context: opts.origin.display().to_string(),
        source: e,
    };
    // With --out, check the output first (error_if_exists, leftovers) so a refused write
    // costs no query.
    let target = match &opts.out {
        Some(target) => {
            let spec = SinkSpec {
                location: Location::parse(&target.location)?.as_folder(),
                append_id: None,
                format: target.format,
                partition_by: target.partition_by.clone(),
                mode: target.mode,
                target_rows_per_file: target.target_rows_per_file,
                target_file_size: target.target_file_size,
                compression: target.compression,
                parallelism: engine.options().threads(),
                buffer_budget: engine.write_buffer_budget(),
                memory: engine.memory_pool(),
                preserve_order: false,
                adopt: target.adopt,
                staging: None,
            };
            let store = engine.stores().store_for(&spec.location)?;
            let run_id = crate::table::new_run_id();
            let prepared =
                sink::prepare(store, &spec, &run_id, &crate::table::Ended::default()).await?;
            if let Some(why) = crate::table::schema::refuse_changed_columns(
                prepared.1.manifest.as_ref(),
                spec.mode,
                &spec.partition_by,
                df.schema().as_arrow(),
            ) {
                prepared.0.release(&run_id).await;
                return Err(sink::SinkError::Invalid {
                    location: target.location.clone(),
                    message: format!(
                        "{why}. Select the output's columns in its order with its types, or \
                         use --mode overwrite to replace the output with the new columns"
                    ),
                }
                .into());
            }
            Some((spec, run_id, prepared))
        }
        None => None,
    };
    // A write that stops before its publish leaves nothing behind, its lease included.
    let abandon = async |target: &Option<(
        SinkSpec,
        String,
        (crate::table::Output, crate::table::Existing),
    )>| {
        if let Some((_, run_id, (output, _))) = target {
            output.release(run_id).await;
        }
    };
    if let Some(cluster) = &cluster {
        let result = on_cluster(cluster, &engine, df, target.as_ref(), opts, out).await;
        if result.is_err() {
            abandon(&target).await;
        }
        return result;
    }
    let mut exec = match engine.execute(df).await {
        Ok(exec) => exec,
        Err(e) => {
            abandon(&target).await;
            return Err(query_err(e));
        }
    };
    let ordered = exec.is_ordered();
    let Some(mut stream) = exec.take_stream() else {
        abandon(&target).await;
        return Ok(SqlSummary {
            rows: 0,
            files: Vec::new(),
        });
    };
    match target {
        Some((mut spec, run_id, (output, existing))) => {
            spec.preserve_order = ordered;
            let task = progress.task("sql");
            let staged = sink::stage_unit(
                &output,
                &spec,
                stream,
                &run_id,
                sink::UnitSlot::attempt(crate::units::WHOLE_KEY),
                &|r| task.inc(r),
            )
            .await;
            task.finish();
            let staged = match staged {
                Ok(staged) => staged,
                Err(e) => {
                    output.release(&run_id).await;
                    return Err(match e {
                        sink::SinkError::Input(e) => query_err(e),
                        other => other.into(),
                    });
                }
            };
            let committed = sink::publish(
                &output,
                &existing,
                &spec,
                &run_id,
                &staged.schema,
                staged.files,
                None,
            )
            .await?;
            Ok(SqlSummary {
                rows: committed.rows,
                files: committed.new_files,
            })
        }
        None => print_result(&mut stream, opts.max_rows, out)
            .await
            .map(|rows| SqlSummary {
                rows,
                files: Vec::new(),
            })
            .map_err(|e| match e {
                PrintError::Query(e) => query_err(e),
                PrintError::Io(source) => Error::Io {
                    path: "stdout".into(),
                    source,
                },
            }),
    }
}

/// A remote cluster's executors cannot read or write this machine's files.
fn refuse_local_paths(
    opts: &SqlOptions,
    target: &crate::config::ClusterTarget,
) -> Result<(), Error> {
    if target.shares_local_files() {
        return Ok(());
    }
    let places = opts
        .tables
        .iter()
        .map(|t| (format!("--table {}", t.name), &t.location))
        .chain(opts.out.iter().map(|o| ("--out".to_string(), &o.location)));
    for (flag, location) in places {
        if Location::parse(location).is_ok_and(|l| l.is_local()) {
            return Err(super::usage(
                &flag,
                format!(
                    "{location} is a local path, which the executors of the cluster {target} \
                     cannot reach: use object storage (s3://...), or --cluster standalone"
                ),
            ));
        }
    }
    Ok(())
}

/// Runs the query on `cluster`: prints its rows, or has the executors write them into the
/// output's staging and publishes them.
async fn on_cluster(
    cluster: &crate::cluster::Cluster,
    engine: &Engine,
    df: datafusion::prelude::DataFrame,
    target: Option<&(
        SinkSpec,
        String,
        (crate::table::Output, crate::table::Existing),
    )>,
    opts: &SqlOptions,
    out: &mut dyn Write,
) -> Result<SqlSummary, Error> {
    let query_err = |e: datafusion::error::DataFusionError| Error::Query {
        context: opts.origin.display().to_string(),
        source: e,
    };
    let plan = df.create_physical_plan().await.map_err(query_err)?;
    crate::cluster::check_plan("sql", &plan)?;
    let config = crate::cluster::job_config(engine.ctx(), engine.stores())?;
    let Some((spec, run_id, (output, existing))) = target else {
        let (batches, _) = cluster.collect(plan, &config, "sql", &|_| {}).await?;
        let schema = batches.first().map_or_else(
            || std::sync::Arc::new(datafusion::arrow::datatypes::Schema::empty()),
            |b| b.schema(),
        );
        let mut stream: datafusion::physical_plan::SendableRecordBatchStream = Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema,
                futures::stream::iter(batches.into_iter().map(Ok)),
            ),
        );
        let rows = print_result(&mut stream, opts.max_rows, out)
            .await
            .map_err(|e| match e {
                PrintError::Query(e) => query_err(e),
                PrintError::Io(source) => Error::Io {
                    path: "stdout".into(),
                    source,
                },
            })?;
        return Ok(SqlSummary {
            rows,
            files: Vec::new(),
        });
    };
    let mut spec = spec.clone();
    spec.preserve_order = plan.properties().output_ordering().is_some();
    let staging = output
        .staging()
        .cloned()
        .ok_or_else(|| sink::SinkError::Invalid {
            location: spec.location.to_string(),
            message: "refusing to write an output at the root of a store: name a folder".into(),
        })?;
    let slot = sink::UnitSlot::attempt(crate::units::WHOLE_KEY);
    let stage = sink::exec::StageTarget::new(&spec, &staging, run_id, &slot);
    let schema = plan.schema();
    let staged = cluster.stage(plan, stage, &config, "sql", &|_| {}).await;
    let mut files = match staged {
        Ok((files, _)) => files,
        Err(e) => {
            let _ = output.discard_staging(run_id, Some(&slot.unit)).await;
            return Err(e.into());
        }
    };
    files.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    let committed = sink::publish(output, existing, &spec, run_id, &schema, files, None).await?;
    Ok(SqlSummary {
        rows: committed.rows,
        files: committed.new_files,
    })
}

/// Why printing a result failed.
enum PrintError {
    Query(datafusion::error::DataFusionError),
    Io(std::io::Error),
}

/// Prints the first `max_rows` rows of `stream` as a table, and how many rows it had.
/// Returns that number.
async fn print_result(
    stream: &mut datafusion::physical_plan::SendableRecordBatchStream,
    max_rows: usize,
    out: &mut dyn Write,
) -> Result<u64, PrintError> {
    let mut shown: Vec<RecordBatch> = Vec::new();
    let mut shown_rows = 0usize;
    let mut total = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(PrintError::Query)?;
        total += batch.num_rows() as u64;
        if shown_rows < max_rows {
            let take = (max_rows - shown_rows).min(batch.num_rows());
            shown.push(batch.slice(0, take));
            shown_rows += take;
        }
    }
    // (With the schema: a result of no rows still shows its columns.)
    let table =
        datafusion::arrow::util::pretty::pretty_format_batches_with_schema(stream.schema(), &shown)
            .map_err(|e| PrintError::Query(e.into()))?;
    writeln!(out, "{table}").map_err(PrintError::Io)?;
    let more = if total > shown_rows as u64 {
        format!(" (first {shown_rows} shown)")
    } else {
        String::new()
    };
    writeln!(out, "{total} row(s){more}").map_err(PrintError::Io)?;
    Ok(total)
}
