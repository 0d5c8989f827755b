//! `sluice gen tpch` and `sluice bench tpch`: TPC-H sample data, and the 22 queries over it
//! with every answer checked.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Context, write_file};
use crate::config::Format;
use crate::engine::{Engine, EngineOptions};
use crate::error::{EXIT_OK, Error};
use crate::store::{Location, StoreRegistry};
use crate::tpch;

/// What `sluice gen tpch` was asked to write.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Scale factor (1 = about 1 GB of CSV).
    pub scale: f64,
    /// Parquet or CSV.
    pub format: Format,
    /// The output folder.
    pub out: Location,
}

/// Generates the data, one committed output per table.
pub async fn generate(opts: &GenOptions, cx: &Context<'_>) -> Result<i32, Error> {
    let engine = Engine::new(
        EngineOptions::default(),
        Arc::new(StoreRegistry::new(Vec::new(), cx.env.clone())),
    )?;
    let tables = tpch::generate(&engine, opts.scale, opts.format, &opts.out, cx.progress).await?;
    if !cx.quiet {
        for t in &tables {
            eprintln!(
                "  {:<10} {:>12} rows  {:>3} files",
                t.table, t.rows, t.files
            );
        }
        eprintln!(
            "wrote TPC-H SF {} ({}) to {}",
            opts.scale,
            opts.format.name(),
            opts.out
        );
    }
    Ok(EXIT_OK)
}

/// What `sluice bench tpch` was asked to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The data folder as the user gave it (for the report).
    pub data: String,
    /// The data folder.
    pub location: Location,
    /// The queries, 1–22.
    pub queries: Vec<u8>,
    /// Runs of each query.
    pub iterations: usize,
    /// `--json FILE`: the timings as JSON.
    pub json: Option<PathBuf>,
    /// Memory limit, threads, join strategy.
    pub engine: EngineOptions,
    /// `--cluster`: run the queries on this Ballista cluster.
    pub cluster: Option<crate::config::ClusterTarget>,
}

/// Runs the queries and prints their timings.
pub async fn bench(opts: &BenchOptions, cx: &Context<'_>) -> Result<i32, Error> {
    let engine = Engine::new(
        opts.engine.clone(),
        Arc::new(StoreRegistry::new(Vec::new(), cx.env.clone())),
    )?;
    let scale = tpch::register_tables(&engine, &opts.location).await?;
    let cluster = match &opts.cluster {
        Some(target) => Some(
            crate::cluster::Cluster::connect(
                target,
                opts.engine.threads(),
                opts.engine.memory_limit,
            )
            .await?,
        ),
        None => None,
    };
    let report = tpch::bench(
        &engine,
        &opts.data,
        scale,
        &opts.queries,
        opts.iterations,
        cx.progress,
        cluster.as_ref(),
    )
    .await?;
    print!("{}", report.table());
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        write_file(path, &json)?;
    }
    Ok(EXIT_OK)
}
