//! Process setup before a command runs: logging, and the open-file limit.

pub fn init_logging(quiet: bool, verbose: u8) {
    // Ballista's scheduler and executor (in `sluice cluster` and a standalone cluster) warn
    // of what they do by design, such as overriding settings: shown from -v on.
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn,ballista_scheduler=error,ballista_executor=error,ballista_core=error",
        (false, 1) => "sluice=info,warn",
        (false, 2) => "sluice=debug,info",
        // (Never Ballista's trace: it logs each task's settings, where a job's stores carry
        // their credentials.)
        _ => "trace,ballista_core=debug,ballista_scheduler=debug,ballista_executor=debug",
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

/// Raises the soft limit on open files to the hard one: a join partitioned to disk holds
/// one bucket file per bucket and input partition open (hundreds), over the common soft
/// default of 1024 when several run at once.
pub fn raise_open_file_limit() {
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
