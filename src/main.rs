//! The `sluice` binary: parse flags, set up logging and the runtime, dispatch to the library,
//! and turn its result into output and an exit status. Nothing else lives here.

mod cli;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use sluice::config::{self, ConfigError, Format, JoinOptions, JoinStrategy, Pipeline, WriteMode};
use sluice::engine::{Engine, EngineOptions};
use sluice::error::{EXIT_FAILED, EXIT_OK};
use sluice::progress::Progress;
use sluice::report::RunReport;
use sluice::store::{Location, StoreRegistry};
use sluice::{Error, run, sql, tpch};
use std::sync::Arc;

use cli::{BenchCommand, Cli, Command, GenCommand, PipelineArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED as u8);
        }
    };
    let progress = Progress::new(!cli.quiet);
    let code = match runtime.block_on(dispatch(cli.command, &progress, cli.quiet)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "sluice=info,warn",
        (false, 2) => "sluice=debug,info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// The process environment, handed to the library (which never reads it itself).
fn environment() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn usage(key: &str, message: impl Into<String>) -> Error {
    ConfigError::Invalid {
        path: PathBuf::from("command line"),
        line: None,
        key: key.to_string(),
        message: message.into(),
    }
    .into()
}

fn parse_vars(vars: &[String]) -> Result<BTreeMap<String, String>, Error> {
    vars.iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| usage("--var", format!("expected KEY=VALUE, got {kv:?}")))
        })
        .collect()
}

fn parse_memory(flag: &Option<String>) -> Result<Option<usize>, Error> {
    flag.as_deref()
        .map(|s| {
            config::parse_size(s).ok_or_else(|| {
                usage(
                    "--memory-limit",
                    format!("{s:?} is not a size (examples: 512MiB, 4GiB)"),
                )
            })
        })
        .transpose()
}

fn parse_threads(t: Option<usize>) -> Result<Option<usize>, Error> {
    match t {
        Some(0) => Err(usage("--threads", "must be at least 1")),
        other => Ok(other),
    }
}

fn parse_format(s: &str) -> Result<Format, Error> {
    Format::parse(s).ok_or_else(|| {
        usage(
            "--format",
            format!("unknown format {s:?} (expected parquet, csv or json)"),
        )
    })
}

fn parse_join_strategy(arg: &Option<String>) -> Result<Option<JoinStrategy>, Error> {
    arg.as_deref()
        .map(|s| {
            JoinStrategy::parse(s).ok_or_else(|| {
                usage(
                    "--join-strategy",
                    format!("unknown join strategy {s:?} (expected auto, in_memory, grace or sort_merge)"),
                )
            })
        })
        .transpose()
}

fn run_options(
    args: &PipelineArgs,
    dry_run: bool,
    restart: bool,
) -> Result<run::RunOptions, Error> {
    Ok(run::RunOptions {
        select: args
            .select
            .iter()
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .collect(),
        vars: parse_vars(&args.vars)?,
        memory_limit: parse_memory(&args.memory_limit)?,
        threads: parse_threads(args.threads)?,
        join_strategy: parse_join_strategy(&args.join_strategy)?,
        dry_run,
        restart,
    })
}

fn write_report(file: &mut std::fs::File, path: &Path, report: &RunReport) -> Result<(), Error> {
    file.write_all(report.to_json().as_bytes())
        .map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })
}

fn write_file(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Raises the soft limit on open files to the hard one: a join partitioned to disk holds
/// one bucket file per bucket and input partition open (hundreds), over the common soft
/// default of 1024 when several run at once.
fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                limit.rlim_cur = limit.rlim_max;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

async fn dispatch(command: Command, progress: &Progress, quiet: bool) -> Result<i32, Error> {
    match command {
        Command::Run(args) => {
            let opts = run_options(&args.pipeline, args.dry_run, args.restart)?;
            // Open the report first: a bad path is found before anything runs, and a run
            // that stops early still leaves a report saying why.
            let mut report_file = match &args.report {
                Some(path) => Some(std::fs::File::create(path).map_err(|e| {
                    usage("--report", format!("cannot write {}: {e}", path.display()))
                })?),
                None => None,
            };
            let started_at = run::now();
            let pipeline = match Pipeline::load(&args.pipeline.path, &env_lookup) {
                Ok(p) => p,
                Err(e) => {
                    let e = Error::from(e);
                    if let (Some(file), Some(path)) = (report_file.as_mut(), &args.report) {
                        let report =
                            RunReport::not_run(run::new_run_id(), "", started_at, e.to_string());
                        write_report(file, path, &report)?;
                    }
                    return Err(e);
                }
            };
            let kept = pipeline.clone();
            let prepared = match run::prepare(pipeline, &opts, environment()).await {
                Ok(p) => p,
                Err(e) => {
                    let report = RunReport::not_run(
                        run::new_run_id(),
                        &kept.name,
                        started_at,
                        e.to_string(),
                    );
                    if let (Some(file), Some(path)) = (report_file.as_mut(), &args.report) {
                        write_report(file, path, &report)?;
                    }
                    if !opts.dry_run
                        && let Err(state_err) = run::record_not_run(&kept, &report)
                    {
                        tracing::warn!("cannot record the run: {state_err}");
                    }
                    return Err(e);
                }
            };
            if opts.dry_run && !quiet {
                print!("{}", run::describe_plan(&prepared).await);
            }
            let report = run::run(prepared, &opts, progress).await?;
            if let (Some(file), Some(path)) = (report_file.as_mut(), &args.report) {
                write_report(file, path, &report)?;
            }
            if !quiet {
                eprint!("{}", report.summary());
            }
            if report.succeeded() {
                Ok(EXIT_OK)
            } else {
                for m in report.models.iter().filter(|m| m.status == "failed") {
                    eprintln!(
                        "error: model '{}' failed: {}",
                        m.name,
                        m.error.as_deref().unwrap_or("unknown error")
                    );
                }
                Ok(EXIT_FAILED)
            }
        }
        Command::Runs(args) => {
            let pipeline = Pipeline::load(&args.path, &env_lookup)?;
            let state = sluice::state::StateStore::open(&pipeline.settings.state)?;
            let rows = state.runs(args.limit)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).unwrap_or_default()
                );
            } else if rows.is_empty() {
                eprintln!("no runs recorded in {}", state.path().display());
            } else {
                print!("{}", sluice::state::format_runs(&rows));
            }
            Ok(EXIT_OK)
        }
        Command::Plan(args) => {
            let opts = run_options(&args.pipeline, true, false)?;
            let pipeline = Pipeline::load(&args.pipeline.path, &env_lookup)?;
            let prepared = run::prepare(pipeline, &opts, environment()).await?;
            print!("{}", run::describe_plan(&prepared).await);
            Ok(EXIT_OK)
        }
        Command::Check(args) => {
            let opts = run_options(&args.pipeline, true, false)?;
            let pipeline = Pipeline::load(&args.pipeline.path, &env_lookup)?;
            let prepared = run::prepare(pipeline, &opts, environment()).await?;
            let results = run::check(&prepared).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&results).unwrap_or_default()
                );
            } else {
                print!("{}", run::describe_checks(&results));
            }
            let failed = results
                .iter()
                .any(|(_, checks)| checks.iter().any(|c| c.blocks()));
            Ok(if failed { EXIT_FAILED } else { EXIT_OK })
        }
        Command::Sql(args) => {
            let (text, origin) = match (&args.execute, &args.file) {
                (Some(sql), _) => (sql.clone(), PathBuf::from("-e")),
                (None, Some(file)) => {
                    let text =
                        std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
                            path: file.clone(),
                            source,
                        })?;
                    (text, file.clone())
                }
                (None, None) => return Err(usage("sql", "give a SQL file or -e SQL")),
            };
            let base = cwd();
            let mut tables = Vec::new();
            for t in &args.tables {
                let (name, location) = t.split_once('=').ok_or_else(|| {
                    usage("--table", format!("expected NAME=LOCATION, got {t:?}"))
                })?;
                tables.push(sql::TableArg {
                    name: name.trim().to_string(),
                    location: config::resolve_location(location.trim(), &base),
                    format: None,
                    partition_cols: Vec::new(),
                });
            }
            let out = match &args.out {
                Some(loc) => Some(sql::OutputTarget {
                    location: config::resolve_location(loc, &base),
                    format: parse_format(&args.format)?,
                    partition_by: args.partition_by.clone(),
                    mode: WriteMode::parse(&args.mode).ok_or_else(|| {
                        usage(
                            "--mode",
                            format!(
                                "unknown mode {:?} (expected overwrite, append, overwrite_partitions or error_if_exists)",
                                args.mode
                            ),
                        )
                    })?,
                    target_rows_per_file: match args.target_rows_per_file {
                        Some(0) => return Err(usage("--target-rows-per-file", "must be at least 1")),
                        Some(n) => n,
                        None => config::DEFAULT_ROWS_PER_FILE,
                    },
                }),
                None => None,
            };
            let opts = sql::SqlOptions {
                sql: text,
                origin,
                vars: parse_vars(&args.vars)?,
                tables,
                out,
                engine: EngineOptions {
                    memory_limit: parse_memory(&args.memory_limit)?,
                    threads: parse_threads(args.threads)?,
                    spill_dir: None,
                    join: JoinOptions {
                        strategy: parse_join_strategy(&args.join_strategy)?.unwrap_or_default(),
                        buckets: None,
                    },
                },
                max_rows: args.max_rows,
            };
            let mut stdout = std::io::stdout().lock();
            let summary = sql::run_sql(&opts, environment(), progress, &mut stdout).await?;
            if opts.out.is_some() && !quiet {
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
            Ok(EXIT_OK)
        }
        Command::Gen(GenCommand::Tpch(args)) => {
            let format = parse_format(&args.format)?;
            if format == Format::Json {
                return Err(usage("--format", "TPC-H data is written as parquet or csv"));
            }
            let out = Location::parse(&config::resolve_location(&args.out, &cwd()))?;
            let engine = Engine::new(
                EngineOptions::default(),
                Arc::new(StoreRegistry::new(Vec::new(), environment())),
            )?;
            let tables = tpch::generate(&engine, args.scale, format, &out, progress).await?;
            if !quiet {
                for t in &tables {
                    eprintln!(
                        "  {:<10} {:>12} rows  {:>3} files",
                        t.table, t.rows, t.files
                    );
                }
                eprintln!("wrote TPC-H SF {} ({}) to {out}", args.scale, format.name());
            }
            Ok(EXIT_OK)
        }
        Command::Bench(BenchCommand::Tpch(args)) => {
            let queries = match &args.queries {
                Some(q) => tpch::parse_query_list(q).ok_or_else(|| {
                    usage(
                        "--queries",
                        format!("{q:?} is not a list of queries 1-22 such as 1,3,5-9"),
                    )
                })?,
                None => (1..=22).collect(),
            };
            if args.iterations == 0 {
                return Err(usage("--iterations", "must be at least 1"));
            }
            let data = Location::parse(&config::resolve_location(&args.data, &cwd()))?;
            let engine = Engine::new(
                EngineOptions {
                    memory_limit: parse_memory(&args.memory_limit)?,
                    threads: parse_threads(args.threads)?,
                    spill_dir: None,
                    join: JoinOptions {
                        strategy: parse_join_strategy(&args.join_strategy)?.unwrap_or_default(),
                        buckets: None,
                    },
                },
                Arc::new(StoreRegistry::new(Vec::new(), environment())),
            )?;
            let scale = tpch::register_tables(&engine, &data).await?;
            let report = tpch::bench(
                &engine,
                &args.data,
                scale,
                &queries,
                args.iterations,
                progress,
            )
            .await?;
            print!("{}", report.table());
            if let Some(path) = &args.json {
                let json = serde_json::to_string_pretty(&report).unwrap_or_default();
                write_file(path, &json)?;
            }
            Ok(EXIT_OK)
        }
    }
}
