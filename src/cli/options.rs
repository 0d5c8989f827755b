//! Stage two of argument parsing: the flags clap parsed ([`super::args`]) checked against each
//! other and turned into the library's option types, with relative locations resolved against
//! the working folder. Nothing here runs anything.

use std::path::{Path, PathBuf};

use sluice::commands::{self, usage};
use sluice::config::JoinOptions;
use sluice::config::{self, DEFAULT_FILE_SIZE, DEFAULT_ROWS_PER_FILE};
use sluice::engine::EngineOptions;
use sluice::error::Error;
use sluice::run::RunOptions;
use sluice::store::Location;

use sluice::run::incremental::RunKind;

use super::args::{
    BackfillArgs, BenchTpchArgs, EngineArgs, ExecutorArgs, GenTpchArgs, PipelineArgs,
    ReconcileArgs, RunArgs, RunFlags, RunsArgs, ScheduleArgs, SqlArgs,
};

/// The engine options of the flags (`buckets`, the broadcast limit and the spill folder come
/// from a pipeline only).
fn engine(args: &EngineArgs) -> EngineOptions {
    EngineOptions {
        memory_limit: args.memory_limit,
        threads: args.threads,
        spill_dir: None,
        join: JoinOptions {
            strategy: args.join_strategy.unwrap_or_default(),
            buckets: None,
            broadcast_limit: None,
            order: args.join_order.unwrap_or_default(),
        },
        cluster: args.cluster.is_some(),
        settings: args.settings.clone(),
    }
}

/// The options of `sluice cluster executor`.
pub fn executor(args: &ExecutorArgs) -> Result<sluice::cluster::serve::ExecutorOptions, Error> {
    // (`HOST:PORT` alone is taken too: a scheduler is what the flag names.)
    let url = if args.scheduler.contains("://") {
        args.scheduler.clone()
    } else {
        format!("df://{}", args.scheduler)
    };
    let scheduler = match config::ClusterTarget::parse(&url) {
        Ok(config::ClusterTarget::Remote { host, port }) => (host, port),
        Ok(config::ClusterTarget::Standalone) => {
            return Err(usage(
                "--scheduler",
                "give the scheduler's URL, df://HOST:PORT",
            ));
        }
        Err(message) => return Err(usage("--scheduler", message)),
    };
    if args.flight_port == args.bind.port() {
        return Err(usage(
            "--flight-port",
            format!(
                "{} is also the --bind port: the Arrow Flight service needs a port of its own",
                args.flight_port
            ),
        ));
    }
    Ok(sluice::cluster::serve::ExecutorOptions {
        scheduler,
        bind: std::net::SocketAddr::new(args.bind.ip(), args.flight_port),
        grpc_port: args.bind.port(),
        external_host: None,
        slots: args
            .slots
            .unwrap_or_else(|| sluice::engine::EngineOptions::default().threads()),
        work_dir: args.work_dir.clone(),
        memory_limit: args.memory_limit.map(|m| m as u64),
    })
}

/// The options of `run`, `plan` and `check`.
pub fn run_options(args: &PipelineArgs, dry_run: bool, restart: bool) -> RunOptions {
    RunOptions {
        select: args
            .select
            .iter()
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .collect(),
        vars: args.vars.iter().cloned().collect(),
        memory_limit: args.engine.memory_limit,
        threads: args.engine.threads,
        cgroup: args
            .engine
            .cgroup_root
            .as_deref()
            .map(sluice::engine::limits::CgroupPaths::under)
            .unwrap_or_default(),
        join_strategy: args.engine.join_strategy,
        join_order: args.engine.join_order,
        settings: args.engine.settings.clone(),
        cluster: args.engine.cluster.clone(),
        dry_run,
        restart,
        interrupt: Default::default(),
        unit_slots: None,
        force_append: false,
        as_of: None,
        kind: RunKind::Run,
    }
}

/// `sluice schedule`.
pub fn schedule(args: &ScheduleArgs) -> commands::schedule::Options {
    let pipeline = PipelineArgs {
        path: PathBuf::new(),
        select: Vec::new(),
        vars: args.vars.clone(),
        engine: args.engine.clone(),
    };
    commands::schedule::Options {
        paths: args.paths.clone(),
        run: run_options(&pipeline, false, false),
        listen: args.listen,
        grace: args.grace,
        max_concurrent_units: args.max_concurrent_units.map(|n| n as usize),
        report_dir: args.report_dir.clone(),
        clock: match args.clock_start {
            Some(start) => commands::schedule::Clock::simulated(start, args.clock_speed),
            None => commands::schedule::Clock::system(),
        },
        until: args.until,
    }
}

/// `sluice run`.
pub fn run(args: &RunArgs) -> commands::run::Options {
    let kind = if args.full_refresh {
        RunKind::FullRefresh
    } else if args.no_reconcile {
        RunKind::NoReconcile
    } else {
        RunKind::Run
    };
    let mut opts = running(&args.pipeline, &args.flags, kind);
    opts.run.force_append = args.force_append;
    opts
}

/// `sluice reconcile`.
pub fn reconcile(args: &ReconcileArgs) -> commands::run::Options {
    running(&args.pipeline, &args.flags, RunKind::Reconcile)
}

/// `sluice backfill`: `--from` before `--to`.
pub fn backfill(args: &BackfillArgs) -> Result<commands::run::Options, Error> {
    if args.from >= args.to {
        return Err(usage(
            "--to",
            format!("{} is not after --from {}", args.to, args.from),
        ));
    }
    let kind = RunKind::Backfill {
        from: args.from,
        to: args.to,
    };
    Ok(running(&args.pipeline, &args.flags, kind))
}

/// A command that runs the pipeline (`run`, `reconcile`, `backfill`).
fn running(args: &PipelineArgs, flags: &RunFlags, kind: RunKind) -> commands::run::Options {
    let mut run = run_options(args, flags.dry_run, flags.restart);
    run.as_of = flags.clock.as_of;
    run.kind = kind;
    commands::run::Options {
        path: args.path.clone(),
        run,
        report: flags.report.clone(),
        window: (!flags.window.is_empty()).then(|| (flags.window.clone(), flags.timezone)),
        now: flags.now,
        metrics: flags.metrics_file.clone(),
    }
}

/// `sluice runs`.
pub fn runs(args: &RunsArgs) -> commands::runs::Options {
    commands::runs::Options {
        path: args.path.clone(),
        limit: args.limit,
        json: args.json,
    }
}

/// `sluice sql`: reads the SQL file.
pub fn sql(args: &SqlArgs, cwd: &Path) -> Result<commands::sql::SqlOptions, Error> {
    let (sql, origin) = match (&args.execute, &args.file) {
        (Some(sql), _) => (sql.clone(), PathBuf::from("-e")),
        (None, Some(file)) => {
            let text =
                std::fs::read_to_string(file).map_err(|source| config::ConfigError::Read {
                    path: file.clone(),
                    source,
                })?;
            (text, file.clone())
        }
        (None, None) => return Err(usage("sql", "give a SQL file or -e SQL")),
    };
    let tables = args
        .tables
        .iter()
        .map(|(name, location)| commands::sql::TableArg {
            name: name.clone(),
            location: config::resolve_location(location, cwd),
            format: None,
            partition_cols: Vec::new(),
        })
        .collect();
    let target_file_size = args
        .target_file_size
        .map_or(DEFAULT_FILE_SIZE, |b| b as u64);
    let out = args.out.as_ref().map(|loc| commands::sql::OutputTarget {
        location: config::resolve_location(loc, cwd),
        format: args.format,
        partition_by: args.partition_by.clone(),
        mode: args.mode,
        target_rows_per_file: args.target_rows_per_file.unwrap_or(DEFAULT_ROWS_PER_FILE),
        target_file_size,
        compression: args.compression.unwrap_or_default(),
        adopt: args.adopt,
    });
    if args.compression.is_some() && args.format != config::Format::Parquet {
        return Err(usage(
            "sql",
            format!(
                "--compression compresses Parquet files: --format {} files are written \
                 uncompressed",
                args.format.name()
            ),
        ));
    }
    if let Some(why) = out
        .as_ref()
        .and_then(|o| config::refuse_target_file_size(&o.location, target_file_size))
    {
        return Err(usage("sql", format!("--target-file-size {why}")));
    }
    Ok(commands::sql::SqlOptions {
        sql,
        origin,
        vars: args.vars.iter().cloned().collect(),
        tables,
        out,
        engine: engine(&args.engine),
        cluster: args.engine.cluster.clone(),
        max_rows: args.max_rows,
    })
}

/// `sluice gen tpch`.
pub fn gen_tpch(args: &GenTpchArgs, cwd: &Path) -> Result<commands::tpch::GenOptions, Error> {
    Ok(commands::tpch::GenOptions {
        scale: args.scale,
        format: args.format,
        out: Location::parse(&config::resolve_location(&args.out, cwd))?,
    })
}

/// `sluice bench tpch`.
pub fn bench_tpch(args: &BenchTpchArgs, cwd: &Path) -> Result<commands::tpch::BenchOptions, Error> {
    Ok(commands::tpch::BenchOptions {
        data: args.data.clone(),
        location: Location::parse(&config::resolve_location(&args.data, cwd))?,
        queries: args
            .queries
            .as_ref()
            .map_or_else(|| (1..=22).collect(), |q| q.0.clone()),
        iterations: args.iterations,
        json: args.json.clone(),
        engine: engine(&args.engine),
        cluster: args.engine.cluster.clone(),
    })
}
