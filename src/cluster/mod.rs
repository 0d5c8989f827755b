//! Running on an Apache DataFusion Ballista cluster: the same pipelines, their queries
//! distributed by Ballista, their outputs committed by sluice.
//!
//! - [`serve`]: the scheduler and executor processes (`sluice cluster ...`), and the same
//!   in-process for `cluster = "standalone"`;
//! - [`codec`]: how sluice's own plan nodes (the grace hash join, the staged write) and SQL
//!   functions travel to the scheduler and executors;
//! - [`stores`]: how the pipeline's object stores and their credentials reach the executors;
//! - [`client`]: submitting a physical plan as a job, following it, fetching its output,
//!   cancelling it.
//!
//! What runs where: the client (`sluice run`) plans each unit's query with sluice's rules,
//! wraps it in a [`StageExec`] and submits it. Executors compute the query and write the
//! output's files straight into its staging folder, each task under its own attempt token;
//! the job's output is the list of files they finished. The client then publishes exactly
//! those files (move, one `_MANIFEST` write, cleanup) and records the unit in its state
//! store, as a local run does; files of failed task attempts are never listed, and go with
//! the run's staging.

pub(crate) mod client;
pub(crate) mod codec;
pub mod serve;
pub(crate) mod stores;

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionConfig;

pub use client::JobReport;
use client::Scheduler;
use codec::SluiceCodec;

use crate::config::ClusterTarget;
use crate::join::Distribution;
use crate::sink::exec::{StageExec, StageTarget};
use crate::table::StagedFile;

/// What can go wrong on a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The scheduler cannot be reached.
    #[error("cannot reach the Ballista scheduler at {url}: {message}")]
    Unreachable {
        /// Its URL.
        url: String,
        /// The connection's error.
        message: String,
    },
    /// A model's plan holds an operator that cannot run on a cluster yet.
    #[error(
        "model '{model}' cannot run on a cluster: its plan uses {operator}, which cannot run \
         on a cluster yet; run it locally (without `cluster`)"
    )]
    Unsupported {
        /// The model.
        model: String,
        /// The operator, by name.
        operator: String,
    },
    /// The plan could not be encoded for the scheduler.
    #[error("cannot send the plan to the cluster: {0}")]
    Plan(String),
    /// The scheduler refused the job.
    #[error("the cluster refused the job: {0}")]
    Rejected(String),
    /// The job failed on the cluster (after Ballista's own task retries).
    #[error("job {job_id} failed on the cluster: {message}")]
    JobFailed {
        /// Ballista's job id.
        job_id: String,
        /// The scheduler's message.
        message: String,
    },
    /// A job finished with rows read twice between its stages (see `client::rows_read_twice`):
    /// its output was not used.
    #[error(
        "job {job_id} read rows twice between its stages ({detail}): Ballista ran a stage \
         again after an executor was lost and kept its first attempt's output too; the job's \
         output was not used"
    )]
    ReadTwice {
        /// Ballista's job id.
        job_id: String,
        /// Which stage read how many rows of which stage.
        detail: String,
    },
    /// A finished job's metrics, which show whether its output can be used, could not be
    /// read: its output was not used.
    #[error(
        "job {job_id} finished, but its metrics, which show whether its output can be used, \
         could not be read: {message}"
    )]
    Unchecked {
        /// Ballista's job id.
        job_id: String,
        /// The scheduler's answer.
        message: String,
    },
    /// A job's output could not be fetched from an executor.
    #[error("cannot fetch a job's output: {0}")]
    Fetch(String),
    /// A scheduler or executor could not start or stopped.
    #[error("{0}")]
    Serve(String),
}

impl ClusterError {
    /// Whether it is a usage error (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, ClusterError::Unsupported { .. })
    }

    /// Whether another attempt could succeed: the cluster was unreachable, a job's output
    /// could not be fetched, or a job failed for want of an executor, a connection or a
    /// store (Ballista reports a failure as text: it is told by its words). A job that
    /// failed on its data or its plan (a cast, a bad row, memory) would fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Unreachable { .. }
            | ClusterError::Fetch(_)
            | ClusterError::ReadTwice { .. }
            | ClusterError::Unchecked { .. } => true,
            ClusterError::JobFailed { message, .. } => {
                const PASSING: [&str; 12] = [
                    "FetchPartitionError",
                    "FetchFailed",
                    "xecutor lost",
                    "no longer knows the job",
                    "onnection",
                    "transport error",
                    "Unavailable",
                    "timed out",
                    "IoError",
                    "Object Store error",
                    "SlowDown",
                    "503",
                ];
                let data = message.contains("Resources exhausted")
                    || message.contains("ResourcesExhausted");
                !data && PASSING.iter().any(|w| message.contains(w))
            }
            _ => false,
        }
    }
}

/// Times a job is run when its stages read rows twice ([`ClusterError::ReadTwice`]).
const JOB_ATTEMPTS: u32 = 3;

/// DataFusion's joins that collect their build side whole (NOT IN's null-aware hash join,
/// the nested-loop join) and also emit build rows (left, full, left semi / anti / mark):
/// the same join with its probe side in one partition, as one task. Ballista gives each task
/// the whole build side and its share of the probe side, and each task would emit the build
/// rows its share did not match (a NOT IN kept rows that another task's share excluded:
/// TPC-H q16 at SF 10 counted some suppliers once too often). The grace join, which wraps
/// the other hash joins, is split by `Cluster::distributed` itself; these are the joins it
/// leaves alone (NOT IN, and joins without equal keys). `None`: not such a join.
fn collects_build_emits_it(
    node: &Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Option<Arc<dyn ExecutionPlan>>> {
    use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
    let join_type = if let Some(join) = node.downcast_ref::<HashJoinExec>() {
        // (Ballista's planner turns a hash join of the other kinds that collects its build
        // side into a partitioned one itself.)
        if *join.partition_mode() != PartitionMode::CollectLeft || !join.null_aware {
            return Ok(None);
        }
        *join.join_type()
    } else if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
        *join.join_type()
    } else {
        return Ok(None);
    };
    let children: Vec<Arc<dyn ExecutionPlan>> = node.children().into_iter().cloned().collect();
    let [build, probe] = <[_; 2]>::try_from(children).map_err(|_| {
        datafusion::error::DataFusionError::Internal("a join has two inputs".into())
    })?;
    if probe_driven(&join_type) || probe.output_partitioning().partition_count() <= 1 {
        return Ok(None);
    }
    // One partition through an exchange of its own: a `CoalescePartitionsExec` would not
    // do, as Ballista's planner runs DataFusion's EnforceDistribution on each stage, which
    // removes a merge the join does not ask for.
    let one = datafusion::physical_plan::Partitioning::Hash(
        vec![datafusion::physical_expr::expressions::lit(0i32)],
        1,
    );
    let probe: Arc<dyn ExecutionPlan> =
        Arc::new(datafusion::physical_plan::repartition::RepartitionExec::try_new(probe, one)?);
    Ok(Some(
        datafusion::physical_plan::replace_children_if_necessary(
            Arc::clone(node),
            vec![build, probe],
        )?,
    ))
}

/// `side` hash-partitioned by `keys` into `partitions` (a shuffle on a cluster), unless it
/// already is.
fn hashed(
    side: Arc<dyn ExecutionPlan>,
    keys: Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
    partitions: usize,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_plan::Partitioning;
    use datafusion::physical_plan::repartition::RepartitionExec;
    if let Partitioning::Hash(exprs, n) = side.output_partitioning()
        && *n == partitions
        && exprs.len() == keys.len()
        && exprs.iter().zip(&keys).all(|(a, b)| a.eq(b))
    {
        return Ok(side);
    }
    Ok(Arc::new(RepartitionExec::try_new(
        side,
        Partitioning::Hash(keys, partitions),
    )?))
}

/// Whether every output row of a join of `join_type` comes from a probe (right) row, so that
/// tasks joining the whole build side with shares of the probe side together give the join
/// (Ballista's own `collect_left_broadcast_safe`).
fn probe_driven(join_type: &datafusion::common::JoinType) -> bool {
    use datafusion::common::JoinType;
    matches!(
        join_type,
        JoinType::Inner
            | JoinType::Right
            | JoinType::RightSemi
            | JoinType::RightAnti
            | JoinType::RightMark
    )
}

/// Refuses `model`'s plan if a node of it cannot run on a cluster, naming it.
pub(crate) fn check_plan(model: &str, plan: &Arc<dyn ExecutionPlan>) -> Result<(), ClusterError> {
    let plan =
        Cluster::distributed(Arc::clone(plan)).map_err(|e| ClusterError::Plan(e.to_string()))?;
    match codec::check(&plan, &SluiceCodec::default()) {
        None => Ok(()),
        Some(operator) => Err(ClusterError::Unsupported {
            model: model.to_string(),
            operator,
        }),
    }
}

/// The stages Ballista's scheduler cuts `plan` into, as it does for a job: each stage's
/// operators, indented, one stage after another (`sluice plan --cluster`).
pub(crate) fn stage_plan(
    plan: &Arc<dyn ExecutionPlan>,
    config: &datafusion::config::ConfigOptions,
) -> Result<String, ClusterError> {
    let plan =
        Cluster::distributed(Arc::clone(plan)).map_err(|e| ClusterError::Plan(e.to_string()))?;
    let mut out = String::new();
    for stage in query_stages(plan, config)? {
        let plan: &dyn ExecutionPlan = stage.as_ref();
        out.push_str(&format!(
            "stage {} ({} partitions):\n{}",
            stage.stage_id(),
            plan.properties().output_partitioning().partition_count(),
            datafusion::physical_plan::displayable(plan).indent(false)
        ));
    }
    Ok(out)
}

/// The stages the scheduler cuts a distributed `plan` into: Ballista's own static planner,
/// which the scheduler runs on a submitted physical plan.
fn query_stages(
    plan: Arc<dyn ExecutionPlan>,
    config: &datafusion::config::ConfigOptions,
) -> Result<Vec<Arc<dyn ballista_core::execution_plans::ShuffleWriter>>, ClusterError> {
    use ballista_scheduler::planner::{DefaultDistributedPlanner, DistributedPlanner};
    DefaultDistributedPlanner::new()
        .plan_query_stages(&ballista_core::JobId::new("plan"), plan, config)
        .map_err(|e| ClusterError::Plan(e.to_string()))
}

/// How far a job has got, for a progress display.
#[derive(Debug, Clone, Copy)]
pub struct JobProgress<'a> {
    /// Ballista's job id.
    pub job_id: &'a str,
    /// Tasks of the job's finished stages.
    pub tasks_done: u64,
    /// Tasks of all its stages.
    pub tasks: u64,
}

/// The settings of a job planned in `ctx`: its session's, with the stores `stores` serves.
pub(crate) fn job_config(
    ctx: &datafusion::prelude::SessionContext,
    stores: &crate::store::StoreRegistry,
) -> Result<SessionConfig, crate::store::StoreError> {
    use ballista_core::config::BallistaConfig;
    use datafusion::config::ExtensionOptions;
    let mut config = stores::with_stores(ctx.copied_config(), stores)?;
    // One partition a task (Ballista packs as many as an executor has free slots): the
    // scheduler files a task's metrics under its partitions, and the check of a finished
    // job (`client::rows_read_twice`) needs them per task.
    let extensions = &mut config.options_mut().extensions;
    if extensions.get::<BallistaConfig>().is_none() {
        extensions.insert(BallistaConfig::default());
    }
    if let Some(ballista) = extensions.get_mut::<BallistaConfig>() {
        // (A key Ballista knows: the unit test below sees it travel.)
        let _ = ballista.set(MAX_PARTITIONS_PER_TASK, "1");
    }
    Ok(config)
}

/// Ballista's setting of the partitions a task may take, without its `ballista.` prefix.
const MAX_PARTITIONS_PER_TASK: &str = "scheduler.max_partitions_per_task";

/// The rows a job's scans read, per table of `tables` (each source and upstream output the
/// query reads): a scan is the table whose location its description names (the closest).
pub(crate) fn scan_rows(
    job: &JobReport,
    tables: &[(String, datafusion::datasource::listing::ListingTableUrl)],
) -> crate::engine::ScanRows {
    let mut out = crate::engine::ScanRows::default();
    for (desc, rows) in &job.scans {
        let name = tables
            .iter()
            .filter(|(_, url)| {
                let prefix = url.prefix().as_ref();
                !prefix.is_empty() && desc.contains(prefix)
            })
            .max_by_key(|(_, url)| url.prefix().as_ref().len())
            .map_or_else(|| "(other)".to_string(), |(name, _)| name.clone());
        *out.by_table.entry(name).or_default() += rows;
    }
    out
}

/// A connection to the cluster a run uses: its scheduler, and one Ballista session for the
/// run's jobs.
pub struct Cluster {
    target: ClusterTarget,
    scheduler: Scheduler,
    codec: SluiceCodec,
    session: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({})", self.target)
    }
}

impl Cluster {
    /// Connects to `target`; for `standalone`, first starts a scheduler and two executors in
    /// this process (their slots and memory split from `threads` and `memory_limit`).
    pub async fn connect(
        target: &ClusterTarget,
        threads: usize,
        memory_limit: Option<usize>,
    ) -> Result<Cluster, ClusterError> {
        let url = match target.scheduler_url() {
            Some(url) => url,
            None => {
                serve::standalone(
                    2,
                    threads.div_ceil(2).max(1),
                    memory_limit.map(|m| (m / 2) as u64),
                )
                .await?
            }
        };
        let scheduler = Scheduler::connect(&url).await?;
        Ok(Cluster {
            target: target.clone(),
            scheduler,
            codec: SluiceCodec::default(),
            session: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// What it is (`standalone` or `df://host:port`).
    pub fn target(&self) -> &ClusterTarget {
        &self.target
    }

    /// The plan as it runs on the cluster. Ballista hands each task its share of a stage's
    /// partitions, narrowing only its own leaves to it: sluice's scan of several partitions
    /// becomes a union of scans of one (else every task would read it whole), and the grace
    /// join, which reads all it is given, gets either its small build side whole or both
    /// sides hash-partitioned alike, through exchanges.
    pub(crate) fn distributed(
        plan: Arc<dyn ExecutionPlan>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        plan.transform_up(|node| {
            if let Some(scan) = node.downcast_ref::<crate::quarantine::QuarantineScan>() {
                if scan.is_staged() {
                    return Ok(Transformed::no(node));
                }
                // Each group of files in a stage of its own, of one task: the scan is no leaf
                // Ballista knows how to narrow to a task's share (a task would read all its
                // partitions), but the shuffle reader the next stage reads it by is.
                let mut parts: Vec<Arc<dyn ExecutionPlan>> = scan
                    .split()?
                    .into_iter()
                    .map(|s| {
                        Arc::new(CoalescePartitionsExec::new(Arc::new(s.staged())))
                            as Arc<dyn ExecutionPlan>
                    })
                    .collect();
                return Ok(Transformed::yes(match parts.len() {
                    1 => parts.remove(0),
                    _ => UnionExec::try_new(parts)?,
                }));
            }
            if let Some(whole_probe) = collects_build_emits_it(&node)? {
                return Ok(Transformed::yes(whole_probe));
            }
            let Some(grace) = node.downcast_ref::<crate::join::GraceHashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if grace.distribution().is_some() {
                return Ok(Transformed::no(node));
            }
            let children: Vec<Arc<dyn ExecutionPlan>> =
                grace.children().into_iter().cloned().collect();
            let [build, probe] = <[_; 2]>::try_from(children).map_err(|_| {
                datafusion::error::DataFusionError::Internal("a join has two inputs".into())
            })?;
            let join = grace.join();
            let whole = |side: Arc<dyn ExecutionPlan>| -> Arc<dyn ExecutionPlan> {
                if side.output_partitioning().partition_count() > 1 {
                    Arc::new(CoalescePartitionsExec::new(side))
                } else {
                    side
                }
            };
            let (build, probe, distribution) = if grace.choice().broadcast {
                // A small build side (DataFusion's broadcast join) is read whole by each
                // task, which joins it with its share of the probe side, when every output
                // row comes from a probe row; a join that also emits the build rows no
                // probe row matched (left, full, left semi / anti / mark) would emit them
                // in each task, and runs as one task.
                if probe_driven(join.join_type()) {
                    (whole(build), probe, Distribution::Broadcast)
                } else {
                    (whole(build), whole(probe), Distribution::Single)
                }
            } else {
                // DataFusion's partitioned join: both sides hash-partitioned by the join
                // keys into the same partitions (the exchanges it planned, kept as they
                // are, so that the plan above sees the partitioning it was planned for):
                // each task joins its partitions of the two, whatever the join type.
                let partitions = build
                    .output_partitioning()
                    .partition_count()
                    .max(probe.output_partitioning().partition_count())
                    .max(1);
                let (build_keys, probe_keys): (Vec<_>, Vec<_>) = join.on().iter().cloned().unzip();
                (
                    hashed(build, build_keys, partitions)?,
                    hashed(probe, probe_keys, partitions)?,
                    Distribution::CoPartitioned,
                )
            };
            Ok(Transformed::yes(Arc::new(grace.distributed_over(
                build,
                probe,
                distribution,
            )?)))
        })
        .map(|t| t.data)
    }

    /// Runs `plan` as job `name` and returns its rows and what the job did.
    ///
    /// `progress` is told the tasks done whenever a stage finishes.
    pub async fn collect(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &SessionConfig,
        name: &str,
        progress: &(dyn Fn(JobProgress<'_>) + Sync),
    ) -> Result<(Vec<RecordBatch>, JobReport), ClusterError> {
        let plan = Self::distributed(plan).map_err(|e| ClusterError::Plan(e.to_string()))?;
        let mut attempt = 1;
        loop {
            let mut job = self
                .scheduler
                .submit(plan.clone(), &self.codec, &self.session, name, config)
                .await?;
            tracing::info!("job {} submitted to {}", job.id(), self.scheduler.url());
            // The tasks to come, for progress: the stages the scheduler cuts (counted once
            // the job is on its way, not to delay it).
            let tasks = query_stages(Arc::clone(&plan), config.options())?
                .iter()
                .map(|stage| {
                    // A stage runs a task a partition of its writer's input.
                    let stage: &dyn ExecutionPlan = stage.as_ref();
                    stage.children().first().map_or(1, |input| {
                        input.properties().output_partitioning().partition_count() as u64
                    })
                })
                .sum();
            let done = job.wait(tasks, progress).await?;
            match job.report(&done).await {
                Ok(report) => {
                    let batches = job.fetch_all(done.partition_location).await?;
                    return Ok((batches, report));
                }
                // Ballista's slip, not the job's: the same job again reads each row once
                // unless another executor is lost while it runs.
                Err(e @ ClusterError::ReadTwice { .. }) if attempt < JOB_ATTEMPTS => {
                    tracing::warn!("{e}; running it again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `plan` as job `name` whose executors write its rows into the output's staging
    /// as `target` says; returns the files they staged and what the job did (`progress` as
    /// for [`Cluster::collect`]).
    pub(crate) async fn stage(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        target: StageTarget,
        config: &SessionConfig,
        name: &str,
        progress: &(dyn Fn(JobProgress<'_>) + Sync),
    ) -> Result<(Vec<StagedFile>, JobReport), ClusterError> {
        let plan: Arc<dyn ExecutionPlan> = Arc::new(StageExec::new(plan, target));
        let (batches, report) = self.collect(plan, config, name, progress).await?;
        let files =
            StageExec::files_of(&batches).map_err(|e| ClusterError::Fetch(e.to_string()))?;
        Ok((files, report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Jobs ask for one partition a task: what the check of their metrics needs.
    #[test]
    fn a_job_asks_for_one_partition_a_task() {
        let ctx = datafusion::prelude::SessionContext::new();
        let stores = crate::store::StoreRegistry::new(Vec::new(), Vec::new());
        let config = job_config(&ctx, &stores).unwrap();
        let settings = stores::job_settings(&config);
        let setting = settings
            .iter()
            .find(|kv| kv.key == format!("ballista.{MAX_PARTITIONS_PER_TASK}"));
        assert_eq!(setting.and_then(|kv| kv.value.as_deref()), Some("1"));
    }

    #[test]
    fn a_failed_job_is_retried_only_for_what_another_attempt_could_change() {
        let failed = |m: &str| ClusterError::JobFailed {
            job_id: "j".into(),
            message: m.into(),
        };
        for m in [
            "Job failed due to stage 2 failed: FetchPartitionError(\"executor e1\")",
            "Task failed: Executor lost",
            "the scheduler at http://s:50050 no longer knows the job (was it restarted?)",
            "Object Store error: Generic S3 error: Connection reset by peer",
        ] {
            assert!(failed(m).is_transient(), "{m}");
        }
        for m in [
            "Task failed due to runtime execution error: ResourcesExhausted(\"Failed to allocate\")",
            "Arrow error: Cast error: Cannot cast string 'x' to value of Int64 type",
            "source 'orders': data/o.csv line 3: bad row",
        ] {
            assert!(!failed(m).is_transient(), "{m}");
        }
        assert!(
            !ClusterError::Unsupported {
                model: "m".into(),
                operator: "X".into()
            }
            .is_transient()
        );
    }
}
