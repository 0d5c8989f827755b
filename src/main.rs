//! The `sluice` binary: parse flags, set up logging and the runtime, hand the validated options
//! to the command, and turn its result into output and an exit status. Nothing else lives here.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use sluice::commands::{self, Context};
use sluice::error::{EXIT_FAILED, Error};
use sluice::progress::Progress;

use cli::args::{BenchCommand, Cli, Command, GenCommand};
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
    let progress = Progress::new(!cli.quiet);
    let cx = Context {
        // The library never reads the process environment: it is handed in here.
        // (A variable that is not UTF-8 is passed over, not a panic.)
        env: std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
        cwd: std::env::current_dir().unwrap_or_else(|_| ".".into()),
        quiet: cli.quiet,
        progress: &progress,
    };
    let code = match runtime.block_on(dispatch(&cli.command, &cx)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    };
    ExitCode::from(code as u8)
}

/// Runs the command: stage two of the flags, then the command itself.
async fn dispatch(command: &Command, cx: &Context<'_>) -> Result<i32, Error> {
    match command {
        Command::Run(args) => commands::run::execute(&options::run(args), cx).await,
        Command::Plan(args) => {
            let opts = options::run_options(&args.pipeline, true, false);
            commands::plan::execute(&args.pipeline.path, &opts, cx).await
        }
        Command::Check(args) => {
            let opts = options::run_options(&args.pipeline, true, false);
            commands::check::execute(&args.pipeline.path, &opts, args.json, cx).await
        }
        Command::Runs(args) => commands::runs::execute(&options::runs(args), cx),
        Command::Sql(args) => commands::sql::execute(&options::sql(args, &cx.cwd)?, cx).await,
        Command::Gen(GenCommand::Tpch(args)) => {
            commands::tpch::generate(&options::gen_tpch(args, &cx.cwd)?, cx).await
        }
        Command::Bench(BenchCommand::Tpch(args)) => {
            commands::tpch::bench(&options::bench_tpch(args, &cx.cwd)?, cx).await
        }
    }
}
