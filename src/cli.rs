//! Command-line flags (stage one of two): clap parses argv into these raw structs, and
//! `main` validates them into the library's option types (stage two).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// sluice: batch SQL transformations over Parquet, CSV and JSON, on local disk or object storage.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// Print only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More logging (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: every selected model, in dependency order.
    Run(RunArgs),
    /// Validate a pipeline and print its DAG, inputs, sinks and work units; runs nothing.
    Plan(PlanArgs),
    /// Run the selected models' checks on their published outputs; exit 1 if one fails.
    Check(CheckArgs),
    /// Run one SQL transform over named tables; print it or write it with --out.
    Sql(SqlArgs),
    /// Run history from the state store: id, start, end, status, rows in / out / rejected.
    Runs(RunsArgs),
    /// Generate sample data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Run benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Options shared by `run` and `plan`.
#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline folder (holding sluice.toml) or the sluice.toml file.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Only these models (comma-separated; `a+` adds downstream, `+a` upstream).
    #[arg(long, value_delimiter = ',')]
    pub select: Vec<String>,
    /// A variable for `{{ KEY }}` in SQL (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// Query memory pool, e.g. 2GiB; operators spill to disk beyond it.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Worker threads / target partitions.
    #[arg(long)]
    pub threads: Option<usize>,
    /// How hash joins run: auto (partition to disk when the build side does not fit the
    /// memory limit), in_memory (DataFusion's hash join), grace (always partition),
    /// sort_merge (DataFusion's sort-merge join).
    #[arg(long, value_name = "STRATEGY")]
    pub join_strategy: Option<String>,
}

/// `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Write the JSON run report to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Validate and plan, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not resume an unfinished run of the same work: start afresh.
    #[arg(long)]
    pub restart: bool,
}

/// `sluice plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
}

/// `sluice check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `sluice runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// The pipeline folder (holding sluice.toml) or the sluice.toml file.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Show at most this many runs, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `sluice sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// A file holding one SQL query.
    #[arg(conflicts_with = "execute", required_unless_present = "execute")]
    pub file: Option<PathBuf>,
    /// The SQL text itself.
    #[arg(short = 'e', long = "execute", value_name = "SQL")]
    pub execute: Option<String>,
    /// A table: NAME=LOCATION (a file, folder or glob; local path or URL). Repeatable.
    #[arg(long = "table", value_name = "NAME=LOCATION")]
    pub tables: Vec<String>,
    /// Write the result here (a folder) instead of printing it.
    #[arg(long, value_name = "LOCATION")]
    pub out: Option<String>,
    /// Output format: parquet, csv or json.
    #[arg(long, default_value = "parquet")]
    pub format: String,
    /// Hive partition columns of the output (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub partition_by: Vec<String>,
    /// overwrite, append, overwrite_partitions or error_if_exists.
    #[arg(long, default_value = "overwrite")]
    pub mode: String,
    /// Rows per output file.
    #[arg(long)]
    pub target_rows_per_file: Option<usize>,
    /// A variable for `{{ KEY }}` in SQL (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,
    /// Query memory pool, e.g. 2GiB.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Worker threads / target partitions.
    #[arg(long)]
    pub threads: Option<usize>,
    /// How hash joins run: auto (partition to disk when the build side does not fit the
    /// memory limit), in_memory (DataFusion's hash join), grace (always partition),
    /// sort_merge (DataFusion's sort-merge join).
    #[arg(long, value_name = "STRATEGY")]
    pub join_strategy: Option<String>,
    /// Print at most this many rows.
    #[arg(long, default_value_t = 40)]
    pub max_rows: usize,
}

/// `sluice gen ...`.
#[derive(Debug, Subcommand)]
pub enum GenCommand {
    /// TPC-H data, one folder per table.
    Tpch(GenTpchArgs),
}

/// `sluice gen tpch`.
#[derive(Debug, Args)]
pub struct GenTpchArgs {
    /// Scale factor (1 = about 1 GB of CSV; 0.01 for tests).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// parquet or csv.
    #[arg(long, default_value = "parquet")]
    pub format: String,
    /// Output folder or URL.
    #[arg(long, value_name = "LOCATION")]
    pub out: String,
}

/// `sluice bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// TPC-H Q1-Q22.
    Tpch(BenchTpchArgs),
}

/// `sluice bench tpch`.
#[derive(Debug, Args)]
pub struct BenchTpchArgs {
    /// The data folder (as written by `sluice gen tpch`).
    #[arg(long, value_name = "LOCATION")]
    pub data: String,
    /// Queries to run, e.g. 1,3,5-9 (default all 22).
    #[arg(long)]
    pub queries: Option<String>,
    /// Runs of each query.
    #[arg(long, default_value_t = 1)]
    pub iterations: usize,
    /// Write the timings as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Query memory pool, e.g. 2GiB.
    #[arg(long, value_name = "SIZE")]
    pub memory_limit: Option<String>,
    /// Worker threads / target partitions.
    #[arg(long)]
    pub threads: Option<usize>,
    /// How hash joins run: auto (partition to disk when the build side does not fit the
    /// memory limit), in_memory (DataFusion's hash join), grace (always partition),
    /// sort_merge (DataFusion's sort-merge join).
    #[arg(long, value_name = "STRATEGY")]
    pub join_strategy: Option<String>,
}
