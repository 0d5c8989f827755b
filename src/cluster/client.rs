//! The client side of a job: submit a physical plan to the scheduler, follow it to its end,
//! fetch its output from the executors, read its metrics, cancel it.
//!
//! sluice submits *physical* plans (Ballista's `Query::PhysicalPlan`), planned here with
//! sluice's own optimizer rules: the scheduler only cuts them into stages (with its static
//! planner: no adaptive re-planning drops the grace join). The loop is Ballista's own
//! `execute_query_pull`, kept here because sluice needs the job's id (to cancel it when a
//! unit times out, to report it) and its metrics.

use std::sync::Arc;
use std::time::Duration;

use ballista_core::client::BallistaClient;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobMetricsParams, GetJobStatusParams, JobStageMetrics,
    KeyValuePair, OperatorWithMetrics, PartitionLocation, SuccessfulJob,
    execute_query_params::Query, execute_query_result, job_status, operator_metric::Metric,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;
use tonic::transport::Channel;

use super::ClusterError;
use super::codec::SluiceCodec;

/// Largest gRPC message sluice sends or takes (plans with many files are large).
const MAX_MESSAGE: usize = 256 << 20;

/// How long a job may be unknown to the scheduler before it is taken for lost (a job is
/// known from its submission on, so only a scheduler's restart makes it unknown).
const JOB_FORGOTTEN: Duration = Duration::from_secs(30);

/// A connection to a scheduler.
#[derive(Clone)]
pub(crate) struct Scheduler {
    url: String,
    client: SchedulerGrpcClient<Channel>,
}

impl Scheduler {
    /// Connects to the scheduler at `url` (`http://host:port`).
    pub(crate) async fn connect(url: &str) -> Result<Scheduler, ClusterError> {
        let unreachable = |message: String| ClusterError::Unreachable {
            url: url.to_string(),
            message,
        };
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(chain(&e)))?;
        Ok(Scheduler {
            url: url.to_string(),
            client: SchedulerGrpcClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        })
    }

    /// The scheduler's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Submits `plan` as a job named `name`, in session `session` with `config`'s settings.
    pub(crate) async fn submit(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        codec: &SluiceCodec,
        session: &str,
        name: &str,
        config: &SessionConfig,
    ) -> Result<Job, ClusterError> {
        let node = PhysicalPlanNode::try_from_physical_plan(plan, codec)
            .map_err(|e| ClusterError::Plan(e.to_string()))?;
        let mut bytes = Vec::new();
        node.try_encode(&mut bytes)
            .map_err(|e| ClusterError::Plan(e.to_string()))?;
        let mut settings = super::stores::job_settings(config);
        settings.push(KeyValuePair {
            key: "ballista.job.name".into(),
            value: Some(name.to_string()),
        });
        let mut request = tonic::Request::new(ExecuteQueryParams {
            query: Some(Query::PhysicalPlan(bytes)),
            settings,
            session_id: session.to_string(),
            operation_id: uuid::Uuid::new_v4().to_string(),
        });
        ballista_core::version::insert_version_header(request.metadata_mut());
        // The request runs on a task of its own, which outlives this future: a unit that
        // times out (or is interrupted) while it waits for the job's id drops this future,
        // and the task then cancels the job as soon as the id arrives.
        let abandoned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut guard = Abandoned {
            flag: Arc::clone(&abandoned),
            armed: true,
        };
        let mut client = self.client.clone();
        let sent = tokio::spawn(async move {
            let response = client.execute_query(request).await;
            if abandoned.load(std::sync::atomic::Ordering::SeqCst)
                && let Ok(r) = &response
                && let Some(execute_query_result::Result::Success(ok)) = &r.get_ref().result
            {
                let job_id = ok.job_id.clone();
                let _ = client.cancel_job(CancelJobParams { job_id }).await;
            }
            response
        });
        let response = sent
            .await
            .map_err(|e| ClusterError::Rejected(e.to_string()))?
            .map_err(|e| self.failed(&e))?
            .into_inner();
        guard.armed = false;
        match response.result {
            Some(execute_query_result::Result::Success(ok)) => Ok(Job {
                id: ok.job_id,
                scheduler: self.clone(),
                finished: false,
            }),
            Some(execute_query_result::Result::Failure(f)) => {
                Err(ClusterError::Rejected(format!("{f:?}")))
            }
            None => Err(ClusterError::Rejected("no answer".into())),
        }
    }

    fn failed(&self, status: &tonic::Status) -> ClusterError {
        if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ) {
            ClusterError::Unreachable {
                url: self.url.clone(),
                message: status.message().to_string(),
            }
        } else {
            ClusterError::Rejected(status.message().to_string())
        }
    }
}

/// Marks a submission as abandoned when dropped (see [`Scheduler::submit`]).
struct Abandoned {
    flag: Arc<std::sync::atomic::AtomicBool>,
    armed: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// A submitted job. Dropped before it finished, it is cancelled on the scheduler.
pub(crate) struct Job {
    id: String,
    scheduler: Scheduler,
    finished: bool,
}

/// What a job did, for the run report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobReport {
    /// Ballista's job id.
    pub job_id: String,
    /// Stages the scheduler cut the plan into.
    pub stages: u64,
    /// Tasks run (a stage's partitions).
    pub tasks: u64,
    /// Bytes stages read from the shuffle files of the stages before (as Arrow, decoded):
    /// what moved between stages.
    pub shuffle_bytes: u64,
    /// Of those, the bytes read by tasks that each read a stage's whole output (a join's
    /// build side, which every task of the join's stage reads): they grow with the tasks.
    pub whole_read_bytes: u64,
    /// Rows executors wrote to shuffle files.
    pub shuffle_rows: u64,
    /// Bytes operators spilled to the executors' disks.
    pub spilled_bytes: u64,
    /// Tasks in which a grace hash join ran in memory, and in which it partitioned its
    /// inputs to the executor's disk.
    pub joins_in_memory: u64,
    pub joins_partitioned: u64,
    /// Time the job waited in the scheduler's queue and ran, in milliseconds.
    pub queued_ms: u64,
    /// Time it ran, in milliseconds.
    pub run_ms: u64,
    /// Each operator's name, for each stage (the stage plan).
    pub operators: Vec<String>,
    /// The scans: each one's description (which names its files) and the rows it read.
    #[serde(skip)]
    pub scans: Vec<(String, u64)>,
}

impl Job {
    /// The job's id on the scheduler.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the job to end: where its output partitions are, and its timings. While it
    /// runs, `progress` is told the tasks of its finished stages of `tasks` whenever that
    /// changes (read from the scheduler's metrics about once a second).
    pub(crate) async fn wait(
        &mut self,
        tasks: u64,
        progress: &(dyn Fn(super::JobProgress<'_>) + Sync),
    ) -> Result<SuccessfulJob, ClusterError> {
        let mut client = self.scheduler.client.clone();
        let mut unknown_since: Option<std::time::Instant> = None;
        let (mut polls, mut tasks_done) = (0u64, None);
        loop {
            polls += 1;
            if polls % 20 == 1
                && let Some(done) = self.tasks_done().await
                && Some(done) != tasks_done
            {
                tasks_done = Some(done);
                progress(super::JobProgress {
                    job_id: &self.id,
                    tasks_done: done,
                    tasks,
                });
            }
            let status = client
                .get_job_status(GetJobStatusParams {
                    job_id: self.id.clone(),
                })
                .await
                .map_err(|e| self.scheduler.failed(&e))?
                .into_inner()
                .status
                .and_then(|s| s.status);
            match status {
                Some(job_status::Status::Successful(done)) => {
                    self.finished = true;
                    progress(super::JobProgress {
                        job_id: &self.id,
                        tasks_done: tasks,
                        tasks,
                    });
                    return Ok(done);
                }
                Some(job_status::Status::Failed(failed)) => {
                    self.finished = true;
                    return Err(ClusterError::JobFailed {
                        job_id: self.id.clone(),
                        message: failed.error,
                    });
                }
                // A restarted scheduler forgets its jobs: past a while, this one is lost.
                None if unknown_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    > JOB_FORGOTTEN =>
                {
                    self.finished = true;
                    return Err(ClusterError::JobFailed {
                        job_id: self.id.clone(),
                        message: format!(
                            "the scheduler at {} no longer knows the job (was it restarted?)",
                            self.scheduler.url
                        ),
                    });
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
                Some(_) => {
                    unknown_since = None;
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
            }
        }
    }

    /// The tasks of the job's finished stages, when the scheduler tells.
    async fn tasks_done(&self) -> Option<u64> {
        let mut client = self.scheduler.client.clone();
        let metrics = client
            .get_job_metrics(GetJobMetricsParams {
                job_id: self.id.clone(),
            })
            .await
            .ok()?;
        Some(
            metrics
                .into_inner()
                .stages
                .iter()
                .map(|s| u64::from(s.partitions))
                .sum(),
        )
    }

    /// Reads the job's output from the executors that hold it, partition by partition.
    pub(crate) async fn fetch_all(
        &self,
        locations: Vec<PartitionLocation>,
    ) -> Result<Vec<RecordBatch>, ClusterError> {
        let mut out = Vec::new();
        for location in latest_per_partition(locations) {
            let mut stream = fetch(location).await?;
            while let Some(batch) = stream
                .try_next()
                .await
                .map_err(|e| ClusterError::Fetch(e.to_string()))?
            {
                out.push(batch);
            }
        }
        Ok(out)
    }

    /// What the job did, from the scheduler's metrics, once they show that no stage read
    /// a shuffle output twice ([`rows_read_twice`]): then the job's output is wrong, and
    /// must not be used.
    pub(crate) async fn report(&self, done: &SuccessfulJob) -> Result<JobReport, ClusterError> {
        let mut client = self.scheduler.client.clone();
        let stages = client
            .get_job_metrics(GetJobMetricsParams {
                job_id: self.id.clone(),
            })
            .await
            .map_err(|e| ClusterError::Unchecked {
                job_id: self.id.clone(),
                message: e.message().to_string(),
            })?
            .into_inner()
            .stages;
        if let Some(detail) = rows_read_twice(&stages) {
            return Err(ClusterError::ReadTwice {
                job_id: self.id.clone(),
                detail,
            });
        }
        let mut report = JobReport {
            job_id: self.id.clone(),
            queued_ms: done.started_at.saturating_sub(done.queued_at),
            run_ms: done.ended_at.saturating_sub(done.started_at),
            ..Default::default()
        };
        for stage in stages {
            report.stages += 1;
            report.tasks += u64::from(stage.partitions);
            let mut names = Vec::new();
            // The operators come depth first: those above each one are the open ones.
            let mut above: Vec<(u32, String)> = Vec::new();
            for op in stage.operators {
                names.push(op.operator_type.clone());
                above.retain(|(depth, _)| *depth < op.depth);
                let whole = op.operator_desc.contains("broadcast: true")
                    || above.iter().any(|(_, kind)| {
                        matches!(
                            kind.as_str(),
                            "CoalescePartitionsExec" | "SortPreservingMergeExec"
                        )
                    });
                above.push((op.depth, op.operator_type.clone()));
                let shuffle = op.operator_type.contains("ShuffleWriter");
                let scan = matches!(
                    op.operator_type.as_str(),
                    "DataSourceExec" | "QuarantineScan"
                );
                let mut scanned = 0;
                for m in op.metrics.iter().filter_map(|m| m.metric.as_ref()) {
                    match m {
                        Metric::SpilledBytes(b) => report.spilled_bytes += b,
                        Metric::Count(c) if c.name == "decoded_bytes" => {
                            report.shuffle_bytes += c.value;
                            if whole {
                                report.whole_read_bytes += c.value;
                            }
                        }
                        Metric::OutputRows(r) if shuffle => report.shuffle_rows += r,
                        Metric::OutputRows(r) if scan => scanned += r,
                        Metric::Count(c) if c.name == "ran_in_memory" => {
                            report.joins_in_memory += c.value;
                        }
                        Metric::Count(c) if c.name == "ran_partitioned" => {
                            report.joins_partitioned += c.value;
                        }
                        _ => {}
                    }
                }
                if scan {
                    report.scans.push((op.operator_desc.clone(), scanned));
                }
            }
            report
                .operators
                .push(format!("stage {}: {}", stage.stage_id, names.join(" <- ")));
        }
        Ok(report)
    }
}

/// Whether a stage of a finished job read more rows from a stage before it than that stage
/// wrote, and where: the job's output holds rows twice.
///
/// Ballista 55 does this when it rolls back a running stage (an executor holding part of
/// its input was lost, or a fetch from one failed): the stage runs again from scratch, but
/// the shuffle outputs its first attempt's finished tasks already handed to the next stage
/// stay listed there, so the next stage reads both attempts' rows (TPC-H q21 counted too
/// high after a kill -9 of an executor mid-query, 3 runs in 22).
///
/// The scheduler's metrics keep one execution per task (a task rerun replaces its
/// metrics), filed under the task's partition: one a task, as sluice's jobs ask
/// ([`super::job_config`]). A shuffle reader is read by its stage's tasks either in shares
/// (together at most what the stage before wrote: less where a limit or an empty join side
/// stops early) or whole by each (a broadcast, a join's build side: each exactly that). So
/// in a sound job no task reads more than was written, and tasks that together read more
/// each read all of it. Which of the two a reader is does not show in the metrics; these
/// two rules hold for both.
fn rows_read_twice(stages: &[JobStageMetrics]) -> Option<String> {
    use std::collections::BTreeMap;
    // Rows per task (the scheduler's partition of the stage).
    let per_task = |op: &OperatorWithMetrics| -> BTreeMap<u32, u64> {
        let mut rows = BTreeMap::new();
        for m in &op.metrics {
            if let Some(Metric::OutputRows(r)) = m.metric {
                *rows.entry(m.partition.unwrap_or(0)).or_default() += r;
            }
        }
        rows
    };
    // Each stage's root writes its shuffle output.
    let written: BTreeMap<u32, u64> = stages
        .iter()
        .filter_map(|stage| {
            let root = stage.operators.iter().find(|op| op.depth == 0)?;
            root.operator_type
                .contains("ShuffleWriter")
                .then(|| (stage.stage_id, per_task(root).values().sum()))
        })
        .collect();
    for stage in stages {
        for op in &stage.operators {
            if !op.operator_type.contains("ShuffleReader") {
                continue;
            }
            let Some(upstream) = upstream_stage(&op.operator_desc) else {
                continue;
            };
            let Some(&wrote) = written.get(&upstream) else {
                continue;
            };
            let tasks = per_task(op);
            let most = tasks.values().copied().max().unwrap_or(0);
            let read: u64 = tasks.values().sum();
            if most > wrote {
                return Some(format!(
                    "a task of stage {} read {most} rows from stage {upstream}, which wrote \
                     {wrote}",
                    stage.stage_id
                ));
            }
            if read > wrote && most < wrote {
                return Some(format!(
                    "stage {} read {read} rows from stage {upstream}, which wrote {wrote}",
                    stage.stage_id
                ));
            }
        }
    }
    None
}

/// The stage a shuffle reader reads, from its description
/// (`ShuffleReaderExec: upstream_stage: 3, partitioning: ...`).
fn upstream_stage(desc: &str) -> Option<u32> {
    let rest = desc.split_once("upstream_stage: ")?.1;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

impl Drop for Job {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A unit timed out, or the command was interrupted: stop the job's tasks too. The
        // request is sent before the drop returns (a task spawned on this runtime would be
        // lost if the process ends next), from a thread of its own, on a connection of its
        // own, for at most a few seconds.
        let url = self.scheduler.url.clone();
        let job_id = self.id.clone();
        let sent = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let cancel = async {
                    let mut s = Scheduler::connect(&url).await.ok()?;
                    s.client.cancel_job(CancelJobParams { job_id }).await.ok()
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), cancel).await;
            });
        });
        let _ = sent.join();
    }
}

/// One location per output partition, the last listed. When the final stage, or a task of it,
/// runs again (an executor was lost), Ballista lists the new location after the old one
/// without removing it: reading both would read the partition twice (and for a staged
/// write, publish both attempts' files).
fn latest_per_partition(locations: Vec<PartitionLocation>) -> Vec<PartitionLocation> {
    let mut by_partition: std::collections::BTreeMap<(u32, u32), PartitionLocation> =
        std::collections::BTreeMap::new();
    for location in locations {
        let key = location
            .partition_id
            .as_ref()
            .map_or((u32::MAX, location.map_partition_id), |p| {
                (p.stage_id, p.partition_id)
            });
        by_partition.insert(key, location);
    }
    by_partition.into_values().collect()
}

/// The stream of one output partition, from the executor that holds it.
async fn fetch(
    location: PartitionLocation,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream, ClusterError> {
    let fetch_err = |m: String| ClusterError::Fetch(m);
    let layout = location.layout();
    let executor = location
        .executor_meta
        .ok_or_else(|| fetch_err("no executor for an output partition".into()))?;
    let partition = location
        .partition_id
        .ok_or_else(|| fetch_err("no id for an output partition".into()))?;
    let mut client = BallistaClient::try_new(
        &executor.host,
        executor.port as u16,
        MAX_MESSAGE,
        false,
        None,
        3,
        100,
        0,
        0,
    )
    .await
    .map_err(|e| fetch_err(format!("executor {}:{}: {e}", executor.host, executor.port)))?;
    client
        .fetch_partition(
            &executor.id,
            &partition.into(),
            location.file_id,
            layout,
            true,
        )
        .await
        .map_err(|e| fetch_err(e.to_string()))
}

/// An error and its causes, as one line (tonic's own message is only "transport error").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballista_core::serde::protobuf::{ExecutorMetadata, PartitionId};

    /// Stage 2 reads stage 1's shuffle output: at most the rows stage 1 wrote is sound (a
    /// limit may read fewer), more is a stage's output read twice.
    #[test]
    fn a_stage_reading_more_rows_than_its_input_stage_wrote_is_caught() {
        use ballista_core::serde::protobuf::OperatorMetric;
        let op = |depth: u32, kind: &str, desc: &str, rows: &[u64]| OperatorWithMetrics {
            depth,
            operator_type: kind.into(),
            operator_desc: desc.into(),
            metrics: rows
                .iter()
                .enumerate()
                .map(|(task, &r)| OperatorMetric {
                    partition: Some(task as u32),
                    metric: Some(Metric::OutputRows(r)),
                })
                .collect(),
        };
        let job = |read: &[u64], broadcast: bool| {
            let reader = if broadcast {
                "ShuffleReaderExec: upstream_stage: 1, broadcast: true, upstream_partition_count: 2"
            } else {
                "ShuffleReaderExec: upstream_stage: 1, partitioning: Hash([a@0], 2)"
            };
            vec![
                JobStageMetrics {
                    stage_id: 1,
                    partitions: 2,
                    operators: vec![
                        op(
                            0,
                            "ShuffleWriterExec",
                            "ShuffleWriterExec: partitioning: x",
                            &[60, 40],
                        ),
                        op(1, "DataSourceExec", "DataSourceExec: files", &[60, 40]),
                    ],
                },
                JobStageMetrics {
                    stage_id: 2,
                    partitions: 2,
                    operators: vec![
                        op(
                            0,
                            "ShuffleWriterExec",
                            "ShuffleWriterExec: partitioning: y",
                            &[1, 1],
                        ),
                        op(1, "AggregateExec", "AggregateExec: mode=Final", &[1, 1]),
                        op(2, "ShuffleReaderExec", reader, read),
                    ],
                },
            ]
        };
        assert_eq!(rows_read_twice(&job(&[55, 45], false)), None);
        assert_eq!(rows_read_twice(&job(&[10, 0], false)), None);
        assert_eq!(
            rows_read_twice(&job(&[70, 45], false)).as_deref(),
            Some("stage 2 read 115 rows from stage 1, which wrote 100")
        );
        // Every task of a broadcast read reads all of it, once.
        assert_eq!(rows_read_twice(&job(&[100, 100], true)), None);
        assert_eq!(
            rows_read_twice(&job(&[100, 130], true)).as_deref(),
            Some("a task of stage 2 read 130 rows from stage 1, which wrote 100")
        );
        // As does every task of a join whose build side is read whole, with or without a
        // merge above the reader (Ballista's planner may drop one): told by the counts.
        assert_eq!(rows_read_twice(&job(&[100, 100], false)), None);
        assert_eq!(rows_read_twice(&job(&[100, 100, 100], false)), None);
        assert_eq!(
            rows_read_twice(&job(&[100, 130], false)).as_deref(),
            Some("a task of stage 2 read 130 rows from stage 1, which wrote 100")
        );
        assert_eq!(
            upstream_stage("ShuffleReaderExec: upstream_stage: 12, x"),
            Some(12)
        );
        assert_eq!(upstream_stage("ShuffleReaderExec: partitioning: x"), None);
    }

    /// A final stage run again lists each partition twice: each is read once, from its
    /// last location.
    #[test]
    fn a_partition_listed_twice_is_read_once_from_its_last_location() {
        let at = |partition: u32, executor: &str| PartitionLocation {
            map_partition_id: partition,
            partition_id: Some(PartitionId {
                job_id: "j".into(),
                stage_id: 3,
                partition_id: partition,
            }),
            executor_meta: Some(ExecutorMetadata {
                id: executor.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let got = latest_per_partition(vec![at(0, "a"), at(1, "a"), at(0, "b"), at(2, "b")]);
        let got: Vec<(u32, String)> = got
            .iter()
            .map(|l| {
                (
                    l.partition_id.as_ref().unwrap().partition_id,
                    l.executor_meta.as_ref().unwrap().id.clone(),
                )
            })
            .collect();
        assert_eq!(got, vec![(0, "b".into()), (1, "a".into()), (2, "b".into())]);
    }
}
