//! The `sluice` binary: parse flags, set up logging and the runtime, hand the validated options
//! to the command, and turn its result into output and an exit status. Nothing else lives here.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use sluice::commands::{self, Context};
use sluice::error::{EXIT_FAILED, Error};
use sluice::progress::Progress;
use sluice::run::Interrupt;

use cli::args::{BenchCommand, Cli, ClusterCommand, Command, GenCommand, ProgressFormat};
use cli::options;

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::setup::init_logging(cli.quiet, cli.verbose);
    cli::setup::raise_open_file_limit();
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
    let progress = match cli.progress {
        ProgressFormat::Json => Progress::json(),
        ProgressFormat::Bar => Progress::new(!cli.quiet),
    };
    let interrupt = Arc::new(Interrupt::default());
    runtime.spawn(listen_for_signals(Arc::clone(&interrupt)));
    let cx = Context {
        // The library never reads the process environment: it is handed in here.
        // (A variable that is not UTF-8 is passed over, not a panic.)
        env: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
        cwd: std::env::current_dir().unwrap_or_else(|_| ".".into()),
        quiet: cli.quiet,
        progress: &progress,
        interrupt: Arc::clone(&interrupt),
    };
    let code = runtime.block_on(async {
        let command = dispatch(&cli.command, &cx);
        // `run` stops itself on a signal (and records it); any other command just ends.
        let stops_itself = matches!(cli.command, Command::Run(_) | Command::Schedule(_));
        tokio::select! {
            result = command => match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e}");
                    e.exit_code()
                }
            },
            () = interrupt.wait(), if !stops_itself => {
                let signal = interrupt.signal().unwrap_or(2);
                eprintln!("error: interrupted ({})", Interrupt::describe(signal));
                128 + signal
            }
        }
    });
    ExitCode::from(code as u8)
}

/// SIGINT and SIGTERM ask the command to stop; a second one ends the process at once.
async fn listen_for_signals(interrupt: Arc<Interrupt>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let mut first = true;
        loop {
            let signal = tokio::select! {
                _ = int.recv() => 2,
                _ = term.recv() => 15,
            };
            if !first {
                std::process::exit(128 + signal);
            }
            first = false;
            interrupt.raise(signal);
        }
    }
}

/// Runs the command: stage two of the flags, then the command itself.
async fn dispatch(command: &Command, cx: &Context<'_>) -> Result<i32, Error> {
    match command {
        Command::Run(args) => commands::run::execute(&options::run(args), cx).await,
        Command::Plan(args) => {
            let mut opts = options::run_options(&args.pipeline, true, false);
            opts.as_of = args.clock.as_of;
            commands::plan::execute(&args.pipeline.path, &opts, cx).await
        }
        Command::Reconcile(args) => commands::run::execute(&options::reconcile(args), cx).await,
        Command::Backfill(args) => commands::run::execute(&options::backfill(args)?, cx).await,
        Command::Status(args) => {
            let mut opts = options::run_options(&args.pipeline, true, false);
            opts.as_of = args.clock.as_of;
            commands::status::execute(&args.pipeline.path, &opts, args.json, cx).await
        }
        Command::Check(args) => {
            let opts = options::run_options(&args.pipeline, true, false);
            commands::check::execute(&args.pipeline.path, &opts, args.json, cx).await
        }
        Command::Runs(args) => commands::runs::execute(&options::runs(args), cx),
        Command::Schedule(args) => commands::schedule::execute(&options::schedule(args), cx).await,
        Command::Sql(args) => commands::sql::execute(&options::sql(args, &cx.cwd)?, cx).await,
        Command::Gen(GenCommand::Tpch(args)) => {
            commands::tpch::generate(&options::gen_tpch(args, &cx.cwd)?, cx).await
        }
        Command::Bench(BenchCommand::Tpch(args)) => {
            commands::tpch::bench(&options::bench_tpch(args, &cx.cwd)?, cx).await
        }
        Command::Cluster(ClusterCommand::Scheduler(args)) => {
            commands::cluster::scheduler(args.bind, args.executor_timeout).await
        }
        Command::Cluster(ClusterCommand::Executor(args)) => {
            commands::cluster::executor(&options::executor(args)?).await
        }
    }
}
