//! The cluster's processes, from this binary: Ballista's scheduler and executor, started from
//! the ballista-scheduler and ballista-executor libraries with sluice's codec, settings and
//! object stores installed; and the same in-process for `cluster = "standalone"`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::{ConfigProducer, RuntimeProducer};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use super::ClusterError;
use super::codec::SluiceCodec;
use super::stores::{ClusterOptions, ShippedStores};

/// How an executor runs (`sluice cluster executor`).
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: (String, u16),
    /// Where its Arrow Flight service (which serves its shuffle files) listens.
    pub bind: SocketAddr,
    /// The port of its own gRPC service (used when the scheduler pushes tasks).
    pub grpc_port: u16,
    /// The host it tells the scheduler and other executors to reach it at (default: the bind
    /// address's).
    pub external_host: Option<String>,
    /// Tasks it runs at once.
    pub slots: usize,
    /// Where it writes shuffle files and spills.
    pub work_dir: Option<PathBuf>,
    /// Its memory pool, shared by its tasks (`None`: a share of the machine's memory).
    pub memory_limit: Option<u64>,
}

/// Every process's session settings: Ballista's, with sluice's registered.
fn config() -> SessionConfig {
    SessionConfig::new_with_ballista().with_option_extension(ClusterOptions::default())
}

fn codec() -> Arc<SluiceCodec> {
    Arc::new(SluiceCodec::default())
}

/// Serves a scheduler on `listener` until the process ends; an executor silent for
/// `executor_timeout` is taken for dead (its tasks run again elsewhere).
pub async fn scheduler(
    listener: tokio::net::TcpListener,
    executor_timeout: std::time::Duration,
) -> Result<(), ClusterError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ClusterError::Serve(e.to_string()))?;
    let producer: ConfigProducer = Arc::new(config);
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host: addr.ip().to_string(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        executor_timeout_seconds: executor_timeout.as_secs().max(2),
        expire_dead_executor_interval_seconds: (executor_timeout.as_secs() / 3).clamp(1, 15),
        no_executors_grace_period_seconds: executor_timeout.as_secs().max(2),
        override_config_producer: Some(producer),
        // The scheduler decodes each job's plan, whose scans name their stores: it gets the
        // stores the job's settings bring, as executors do.
        override_session_builder: Some(Arc::new(|config: SessionConfig| {
            let runtime = RuntimeEnvBuilder::new()
                .with_object_store_registry(Arc::new(ShippedStores::of(&config)?))
                .build_arc()?;
            Ok(SessionStateBuilder::new()
                .with_config(config)
                .with_runtime_env(runtime)
                .with_default_features()
                .build())
        })),
        override_physical_codec: Some(codec()),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ClusterError::Serve(e.to_string()))?;
    let server = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
        .await
        .map_err(|e| ClusterError::Serve(e.to_string()))?;
    start_grpc_service_with_listener(listener, server)
        .await
        .map_err(|e| ClusterError::Serve(e.to_string()))
}

/// Runs an executor until the process ends (or SIGINT, when it says goodbye to the
/// scheduler).
pub async fn executor(options: ExecutorOptions) -> Result<(), ClusterError> {
    let work_dir = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("sluice-executor-{}", options.bind.port())),
    };
    // The executor's own spill folder in the work folder; those of executors killed before
    // (with their spill files) are removed.
    let (spill_folder, _) = crate::engine::spill::SpillFolder::create(&work_dir).map_err(|e| {
        ClusterError::Serve(format!(
            "cannot create a spill folder in {}: {e}",
            work_dir.display()
        ))
    })?;
    let spill = spill_folder.path().to_path_buf();
    // Each job's runtime: the stores its settings bring, spills in the work folder.
    // (Ballista wraps it with each task's share of the memory pool.)
    let runtime: RuntimeProducer = Arc::new(move |config: &SessionConfig| {
        let disk = DiskManagerBuilder::default()
            .with_max_spill_merge_fan_in(16)
            .with_mode(DiskManagerMode::Directories(vec![spill.clone()]));
        Ok(Arc::new(
            RuntimeEnvBuilder::new()
                .with_object_store_registry(Arc::new(ShippedStores::of(config)?))
                .with_disk_manager_builder(disk)
                .build()?,
        ))
    });
    let (host, port) = options.scheduler.clone();
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: Some(
            options
                .external_host
                .clone()
                .unwrap_or_else(|| options.bind.ip().to_string()),
        ),
        port: options.bind.port(),
        grpc_port: options.grpc_port,
        scheduler_host: host,
        scheduler_port: port,
        vcores: options.slots.max(1),
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(work_dir.display().to_string()),
        memory_pool_size: options.memory_limit,
        // Shuffle files of jobs that ended are removed within the hour (Ballista keeps them
        // a week by default, and never looks unless told to).
        job_data_ttl_seconds: 3600,
        job_data_clean_up_interval_seconds: 300,
        override_config_producer: Some(Arc::new(config)),
        override_runtime_producer: Some(runtime),
        override_physical_codec: Some(codec()),
        override_function_registry: Some(Arc::new(functions())),
        ..Default::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ClusterError::Serve(e.to_string()))
}

/// The SQL functions executors know: DataFusion's and sluice's.
fn functions() -> ballista_core::registry::BallistaFunctionRegistry {
    let state = SessionStateBuilder::new().with_default_features().build();
    let mut registry = ballista_core::registry::BallistaFunctionRegistry::from(&state);
    let bucket = crate::engine::udf::key_bucket(1);
    registry
        .scalar_functions
        .insert(bucket.name().to_string(), Arc::new(bucket));
    registry
}

/// A scheduler and `executors` executors of `slots` slots each, started in this process on
/// 127.0.0.1: the scheduler's URL. They live as long as the process.
pub async fn standalone(
    executors: usize,
    slots: usize,
    memory_limit: Option<u64>,
) -> Result<String, ClusterError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| ClusterError::Serve(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ClusterError::Serve(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = scheduler(listener, std::time::Duration::from_secs(180)).await {
            tracing::error!("standalone scheduler stopped: {e}");
        }
    });
    for _ in 0..executors {
        // Shuffle files and spills in a folder removed with the executor's task, when the
        // process's runtime ends.
        let work = tempfile::Builder::new()
            .prefix("sluice-executor-")
            .tempdir()
            .map_err(|e| ClusterError::Serve(format!("cannot create a work folder: {e}")))?;
        // Ballista binds the port it is given: take a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| ClusterError::Serve(e.to_string()))?
            .port();
        let options = ExecutorOptions {
            scheduler: ("127.0.0.1".into(), addr.port()),
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            grpc_port: 0,
            external_host: None,
            slots,
            work_dir: Some(work.path().to_path_buf()),
            memory_limit,
        };
        tokio::spawn(async move {
            let _work = work;
            if let Err(e) = executor(options).await {
                tracing::error!("standalone executor stopped: {e}");
            }
        });
    }
    Ok(format!("http://{addr}"))
}
