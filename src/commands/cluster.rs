//! `sluice cluster scheduler` and `sluice cluster executor`: the processes of a Ballista
//! cluster, from this binary, with sluice's operators, settings and stores installed (see
//! [`crate::cluster::serve`]). Each runs until the process is stopped.

use crate::cluster::serve::{self, ExecutorOptions};
use crate::error::Error;

/// Serves a scheduler on `bind` until the process ends; an executor silent for
/// `executor_timeout` is taken for dead.
pub async fn scheduler(
    bind: std::net::SocketAddr,
    executor_timeout: std::time::Duration,
) -> Result<i32, Error> {
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        crate::cluster::ClusterError::Serve(format!("cannot listen on {bind}: {e}"))
    })?;
    eprintln!("sluice cluster scheduler listening on df://{bind}");
    serve::scheduler(listener, executor_timeout).await?;
    Ok(0)
}

/// Runs an executor until the process ends.
pub async fn executor(options: &ExecutorOptions) -> Result<i32, Error> {
    let (host, port) = &options.scheduler;
    eprintln!(
        "sluice cluster executor on {} ({} slots), scheduler df://{host}:{port}",
        options.bind, options.slots
    );
    serve::executor(options.clone()).await?;
    Ok(0)
}
