//! Command-line flags (stage one of two): clap parses argv into these structs, each value
//! already of its type (sizes, strategies, formats are parsed by the `value_parser`s below, so
//! a bad one is a usage error naming the flag). [`super::options`] turns them into the
//! library's option types (stage two).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sluice::config::{ClusterTarget, JoinOrder, JoinStrategy};
use sluice::config::{Format, ParquetCompression, WriteMode, parse_size};

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
    /// How progress is shown: `bar` (on stderr, when it is a terminal) or `json` (one JSON
    /// object per line on stdout: model_started, unit_done, model_finished; for programs
    /// that heartbeat per unit).
    #[arg(long, global = true, value_enum, default_value = "bar")]
    pub progress: ProgressFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressFormat {
    Bar,
    Json,
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
    /// Recompute only the periods of incremental models that late input touched inside
    /// their late window.
    Reconcile(ReconcileArgs),
    /// Recompute exactly the periods of incremental models in [--from, --to), whatever
    /// their late window.
    Backfill(BackfillArgs),
    /// Incremental models: periods computed, due, to reconcile, needing a backfill, and the
    /// late-arrival history. Writes nothing.
    Status(StatusArgs),
    /// Run pipelines on their [schedule]s as a long-lived process: no overlapping runs,
    /// units only inside run windows, /metrics and /healthz on --listen.
    Schedule(ScheduleArgs),
    /// Generate sample data.
    #[command(subcommand)]
    Gen(GenCommand),
    /// Run benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a process of an Apache DataFusion Ballista cluster that pipelines run on
    /// (`[settings] cluster`, `--cluster`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `sluice cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// The scheduler: plans each job into stages and hands tasks to executors.
    Scheduler(SchedulerArgs),
    /// An executor: runs tasks, serves their shuffle output to other executors.
    Executor(ExecutorArgs),
}

/// `sluice cluster scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Where its gRPC service listens (clients and executors connect there).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50050")]
    pub bind: std::net::SocketAddr,
    /// How long an executor may be silent before it is taken for dead and its tasks are run
    /// elsewhere (executors poll for work several times a second).
    #[arg(long, value_name = "DURATION", default_value = "180s", value_parser = duration)]
    pub executor_timeout: std::time::Duration,
}

/// `sluice cluster executor`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler, `df://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    pub scheduler: String,
    /// Its own gRPC address (HOST is also where its Arrow Flight service listens, and the
    /// host others reach it at).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:50052")]
    pub bind: std::net::SocketAddr,
    /// The port of its Arrow Flight service, which serves its tasks' shuffle output (each
    /// executor of a host needs its own).
    #[arg(long, value_name = "PORT", default_value = "50051")]
    pub flight_port: u16,
    /// Tasks it runs at once (default: its cores).
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    pub slots: Option<usize>,
    /// Where it writes shuffle files and spills (default: a folder in the temporary folder).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Its memory pool, shared out to its tasks; operators spill beyond it (e.g. 4GiB).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub memory_limit: Option<usize>,
}

/// `sluice schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// The pipeline folders (or their sluice.toml), each with a [schedule].
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Serve /metrics (Prometheus) and /healthz on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// After SIGTERM, how long running units may finish before they are cancelled.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub grace: std::time::Duration,
    /// Work units running at once, over all the pipelines.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_units: Option<u32>,
    /// Write each run's JSON report into this folder, as PIPELINE-RUN_ID.json.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// A variable for `{{ KEY }}` in SQL (repeatable), for every pipeline.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
    pub vars: Vec<(String, String)>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// For tests: the clock starts at this time (RFC 3339) ...
    #[arg(long, value_name = "TIME", value_parser = as_of, hide = true)]
    pub clock_start: Option<chrono::DateTime<chrono::Utc>>,
    /// ... and runs this many times faster than real time.
    #[arg(long, value_name = "N", default_value = "1", hide = true)]
    pub clock_speed: f64,
    /// For tests: stop as SIGTERM would when the clock reaches this time.
    #[arg(long, value_name = "TIME", value_parser = as_of, hide = true)]
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    sluice::config::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (examples: 30s, 5m, 1h)"))
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
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
    pub vars: Vec<(String, String)>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The clock of incremental models.
#[derive(Debug, Args)]
pub struct ClockArgs {
    /// The run's "now" for incremental models: an RFC 3339 timestamp or a date (UTC);
    /// default: now (a resumed run keeps the clock it started with).
    #[arg(long, value_name = "TIME", value_parser = as_of)]
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
}

/// Flags of every command that runs a pipeline (`run`, `reconcile`, `backfill`).
#[derive(Debug, Args)]
pub struct RunFlags {
    /// Write the JSON run report to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Validate and plan, but write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not resume an unfinished run of the same work: start afresh.
    #[arg(long)]
    pub restart: bool,
    #[command(flatten)]
    pub clock: ClockArgs,
    /// Start only inside this run window (repeatable): "01:00-05:00", "22:00-04:00",
    /// "Sat 00:00-Sun 23:59". Started outside, nothing runs and sluice exits 75.
    #[arg(long, value_name = "WINDOW", value_parser = window)]
    pub window: Vec<sluice::config::window::Window>,
    /// The time zone of --window (default UTC), e.g. Europe/Berlin.
    #[arg(long, value_name = "ZONE", value_parser = timezone, requires = "window")]
    pub timezone: Option<chrono_tz::Tz>,
    /// Write the run's metrics in Prometheus's text format to this file (for the node
    /// exporter's textfile collector, or a Pushgateway).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// The wall clock --window is checked against (RFC 3339): for tests.
    #[arg(long, value_name = "TIME", value_parser = as_of, hide = true)]
    pub now: Option<chrono::DateTime<chrono::Utc>>,
}

fn window(s: &str) -> Result<sluice::config::window::Window, String> {
    sluice::config::window::Window::parse(s)
}

fn timezone(s: &str) -> Result<chrono_tz::Tz, String> {
    s.parse::<chrono_tz::Tz>()
        .map_err(|_| format!("{s:?} is not a time zone (examples: UTC, Europe/Berlin)"))
}

/// `sluice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub flags: RunFlags,
    /// Apply an append even if the output already holds it (the same model, SQL and input
    /// files appended before).
    #[arg(long)]
    pub force_append: bool,
    /// Incremental models compute new periods only; late input inside the window is left
    /// for `sluice reconcile`.
    #[arg(long, conflicts_with = "full_refresh")]
    pub no_reconcile: bool,
    /// Incremental models compute every period again, as a first run.
    #[arg(long)]
    pub full_refresh: bool,
}

/// `sluice reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub flags: RunFlags,
}

/// `sluice backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub flags: RunFlags,
    /// The first period to recompute (a date or date-time, UTC).
    #[arg(long, value_name = "TIME", value_parser = date_time)]
    pub from: chrono::NaiveDateTime,
    /// The end of the range, exclusive (a date or date-time, UTC).
    #[arg(long, value_name = "TIME", value_parser = date_time)]
    pub to: chrono::NaiveDateTime,
}

/// `sluice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub clock: ClockArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sluice plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub clock: ClockArgs,
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
    #[arg(long = "table", value_name = "NAME=LOCATION", value_parser = name_location)]
    pub tables: Vec<(String, String)>,
    /// Write the result here (a folder) instead of printing it.
    #[arg(long, value_name = "LOCATION")]
    pub out: Option<String>,
    /// Output format: parquet, csv or json.
    #[arg(long, default_value = "parquet", value_parser = format)]
    pub format: Format,
    /// Hive partition columns of the output (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub partition_by: Vec<String>,
    /// overwrite, append, overwrite_partitions or error_if_exists.
    #[arg(long, default_value = "overwrite", value_parser = write_mode)]
    pub mode: WriteMode,
    /// Rows per output file.
    #[arg(long, value_parser = at_least_one)]
    pub target_rows_per_file: Option<usize>,
    /// Bytes per output file, such as 512MiB (the default) or 1GiB; at most 4GiB on S3.
    #[arg(long, value_parser = size)]
    pub target_file_size: Option<usize>,
    /// Parquet compression of the --out files: zstd (level 1, the default), zstd(N) for N
    /// from 1 to 22, snappy, lz4 or none.
    #[arg(long, value_name = "CODEC", value_parser = ParquetCompression::parse)]
    pub compression: Option<ParquetCompression>,
    /// The --out folder has files but no _MANIFEST: take them as the output's current version
    /// instead of refusing to write there.
    #[arg(long)]
    pub adopt: bool,
    /// A variable for `{{ KEY }}` in SQL (repeatable).
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
    pub vars: Vec<(String, String)>,
    #[command(flatten)]
    pub engine: EngineArgs,
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
    #[arg(long, default_value = "parquet", value_parser = tpch_format)]
    pub format: Format,
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
    #[arg(long, value_parser = query_list)]
    pub queries: Option<QueryList>,
    /// Runs of each query.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub iterations: usize,
    /// Write the timings as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The engine flags `run`, `plan`, `check`, `sql` and `bench tpch` share.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Query memory pool, e.g. 2GiB; operators spill to disk beyond it.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    pub memory_limit: Option<usize>,
    /// Worker threads / target partitions.
    #[arg(long, value_parser = at_least_one)]
    pub threads: Option<usize>,
    /// How hash joins run: auto (partition to disk when the build side does not fit the
    /// memory limit), in_memory (DataFusion's hash join), grace (always partition),
    /// sort_merge (DataFusion's sort-merge join).
    #[arg(long, value_name = "STRATEGY", value_parser = join_strategy)]
    pub join_strategy: Option<JoinStrategy>,
    /// The order inner joins run in: cost (the order estimated cheapest from the tables'
    /// statistics; the default) or as_written (the SQL's).
    #[arg(long, value_name = "ORDER", value_parser = join_order)]
    pub join_order: Option<JoinOrder>,
    /// A DataFusion configuration option, or a sluice rewrite turned off, after sluice's own
    /// settings (repeatable): `--set datafusion.execution.batch_size=16384`,
    /// `--set sluice.decimal_arith=false`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = key_value)]
    pub settings: Vec<(String, String)>,
    /// Run the queries on an Apache DataFusion Ballista cluster: its scheduler
    /// (`df://HOST:PORT`), or `standalone` (a scheduler and executors in this process).
    #[arg(long, value_name = "URL", value_parser = cluster)]
    pub cluster: Option<ClusterTarget>,
    /// Read the cgroup limits from a copy of a machine's cgroup files under DIR
    /// (DIR/proc-self-cgroup, DIR/sys-fs-cgroup/) instead of this machine's: for tests.
    #[arg(long, value_name = "DIR", hide = true)]
    pub cgroup_root: Option<PathBuf>,
}

fn size(s: &str) -> Result<usize, String> {
    parse_size(s).ok_or_else(|| format!("{s:?} is not a size (examples: 512MiB, 4GiB)"))
}

fn cluster(s: &str) -> Result<ClusterTarget, String> {
    ClusterTarget::parse(s)
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number")),
    }
}

fn join_order(s: &str) -> Result<JoinOrder, String> {
    JoinOrder::parse(s)
        .ok_or_else(|| format!("unknown join order {s:?} (expected cost or as_written)"))
}

fn join_strategy(s: &str) -> Result<JoinStrategy, String> {
    JoinStrategy::parse(s).ok_or_else(|| {
        format!("unknown join strategy {s:?} (expected auto, in_memory, grace or sort_merge)")
    })
}

fn format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("unknown format {s:?} (expected parquet, csv or json)"))
}

fn tpch_format(s: &str) -> Result<Format, String> {
    match format(s)? {
        Format::Json => Err("TPC-H data is written as parquet or csv".into()),
        f => Ok(f),
    }
}

fn write_mode(s: &str) -> Result<WriteMode, String> {
    WriteMode::parse(s).ok_or_else(|| {
        format!(
            "unknown mode {s:?} (expected overwrite, append, overwrite_partitions or error_if_exists)"
        )
    })
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// `--as-of`: an RFC 3339 timestamp (any offset), or a date or date-time read as UTC.
fn as_of(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    sluice::config::parse_timestamp(s)
        .or_else(|| sluice::config::parse_datetime(s).map(|t| t.and_utc()))
        .ok_or_else(|| format!("{s:?} is not a time (examples: 2024-01-13, 2024-01-13T06:00:00Z)"))
}

/// `--from` / `--to`: a date or date-time (UTC).
fn date_time(s: &str) -> Result<chrono::NaiveDateTime, String> {
    sluice::config::parse_datetime(s)
        .or_else(|| sluice::config::parse_timestamp(s).map(|t| t.naive_utc()))
        .ok_or_else(|| format!("{s:?} is not a date (examples: 2024-01-02, 2024-01-02T06:00:00)"))
}

fn name_location(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .ok_or_else(|| format!("expected NAME=LOCATION, got {s:?}"))
}

/// TPC-H query numbers, 1–22 (a type of its own: clap reads an `Option<Vec<_>>` as a flag
/// given several times).
#[derive(Debug, Clone)]
pub struct QueryList(pub Vec<u8>);

fn query_list(s: &str) -> Result<QueryList, String> {
    sluice::tpch::parse_query_list(s)
        .map(QueryList)
        .ok_or_else(|| format!("{s:?} is not a list of queries 1-22 such as 1,3,5-9"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every flag of every subcommand, read back: a flag whose type clap cannot give back
    /// panics here rather than in a user's hands.
    #[test]
    fn every_subcommand_parses_with_all_its_flags() {
        let engine = [
            "--memory-limit",
            "64MiB",
            "--threads",
            "2",
            "--join-strategy",
            "grace",
        ];
        let pipeline = [
            &["p", "--select", "a,b+", "--var", "k=v=w"][..],
            &engine[..],
        ]
        .concat();
        let run = parse(
            &[
                &["run"][..],
                &pipeline,
                &["--report", "r.json", "--dry-run", "--no-reconcile"],
            ]
            .concat(),
        )
        .unwrap();
        let Command::Run(run) = run.command else {
            panic!()
        };
        assert_eq!(
            run.pipeline.vars,
            vec![("k".to_string(), "v=w".to_string())]
        );
        assert_eq!(run.pipeline.engine.memory_limit, Some(64 << 20));
        assert_eq!(run.pipeline.engine.join_strategy, Some(JoinStrategy::Grace));
        parse(&[&["plan"][..], &pipeline, &["--as-of", "2024-01-13"]].concat()).unwrap();
        let run = parse(&[
            "run",
            "p",
            "--as-of",
            "2024-01-13T06:00:00+02:00",
            "--full-refresh",
        ])
        .unwrap();
        let Command::Run(run) = run.command else {
            panic!()
        };
        assert!(run.full_refresh);
        assert_eq!(
            run.flags.clock.as_of.map(|t| t.to_rfc3339()),
            Some("2024-01-13T04:00:00+00:00".to_string())
        );
        parse(&[
            "reconcile",
            "p",
            "--as-of",
            "2024-01-13",
            "--report",
            "r.json",
        ])
        .unwrap();
        parse(&[
            "backfill",
            "p",
            "--from",
            "2024-01-02",
            "--to",
            "2024-01-03",
            "--select",
            "m+",
        ])
        .unwrap();
        parse(&["status", "p", "--as-of", "2024-01-13", "--json"]).unwrap();
        parse(&[&["check"][..], &pipeline, &["--json"]].concat()).unwrap();
        parse(&["runs", "p", "--limit", "3", "--json"]).unwrap();
        let sql = parse(
            &[
                &[
                    "sql",
                    "-e",
                    "SELECT 1",
                    "--table",
                    "t = a.csv",
                    "--out",
                    "o",
                ][..],
                &[
                    "--format",
                    "csv",
                    "--partition-by",
                    "a,b",
                    "--mode",
                    "append",
                ],
                &["--target-rows-per-file", "5", "--max-rows", "3"],
                &engine,
            ]
            .concat(),
        )
        .unwrap();
        let Command::Sql(sql) = sql.command else {
            panic!()
        };
        assert_eq!(sql.tables, vec![("t".to_string(), "a.csv".to_string())]);
        assert_eq!((sql.format, sql.mode), (Format::Csv, WriteMode::Append));
        parse(&[
            "gen", "tpch", "--scale", "0.01", "--format", "csv", "--out", "d",
        ])
        .unwrap();
        let bench = parse(
            &[
                &["bench", "tpch", "--data", "d", "--queries", "1,3-5"][..],
                &["--iterations", "2", "--json", "b.json"],
                &engine,
            ]
            .concat(),
        )
        .unwrap();
        let Command::Bench(BenchCommand::Tpch(bench)) = bench.command else {
            panic!()
        };
        assert_eq!(bench.queries.map(|q| q.0), Some(vec![1, 3, 4, 5]));
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        for (args, says) in [
            (&["plan", "--memory-limit", "lots"][..], "is not a size"),
            (&["plan", "--threads", "0"], "must be at least 1"),
            (
                &["plan", "--join-strategy", "fast"],
                "unknown join strategy \"fast\"",
            ),
            (&["plan", "--var", "novalue"], "expected KEY=VALUE"),
            (&["run", "--as-of", "tomorrow"], "is not a time"),
            (
                &["run", "--no-reconcile", "--full-refresh"],
                "cannot be used with",
            ),
            (&["backfill", "--from", "2024-01-02"], "--to"),
            (
                &["backfill", "--from", "x", "--to", "2024-01-03"],
                "is not a date",
            ),
            (&["sql", "-e", "x", "--format", "xml"], "unknown format"),
            (&["sql", "-e", "x", "--mode", "merge"], "unknown mode"),
            (
                &["gen", "tpch", "--out", "d", "--format", "json"],
                "parquet or csv",
            ),
            (
                &["bench", "tpch", "--data", "d", "--queries", "23"],
                "queries 1-22",
            ),
            (
                &["bench", "tpch", "--data", "d", "--iterations", "0"],
                "at least 1",
            ),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
    }
}
