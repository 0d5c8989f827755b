//! The engine: a DataFusion session configured for batch work (memory pool that spills,
//! thread count, spill folder, object stores), and the execution of one query into a stream
//! with its metrics.
//!
//! - [`execution`]: a running query, and what its plan measured (rows per table, spills, joins);
//! - [`limits`]: the threads and memory a run uses, from the settings or the cgroup's limits;
//! - [`pool`]: the memory pool, with a bounded overdraft for merges of sorted data and
//!   partial aggregations' tables capped;
//! - [`settings`]: the user's settings, DataFusion's options and sluice's rewrite switches;
//! - [`spill`]: the process's spill folder, and the removal of those of killed processes;
//! - [`udf`]: sluice's SQL functions.

mod execution;
pub mod limits;
mod planner;
pub mod pool;
pub mod settings;
pub(crate) mod spill;
pub mod udf;

pub use execution::{Execution, FileVersion, ScanRows, file_version, files_read};

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryPool, TrackConsumersPool, UnboundedMemoryPool,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

use crate::config::{JoinOptions, JoinStrategy};
use crate::join;
use crate::store::StoreRegistry;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The spill folder cannot be created.
    #[error("cannot create the spill folder {} (spill_dir): {source}", path.display())]
    SpillDir {
        /// The folder (`spill_dir`).
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// DataFusion's runtime (memory pool, disk manager) cannot be built.
    #[error("cannot start the query engine: {0}")]
    Runtime(#[source] datafusion::error::DataFusionError),
    /// A setting of [`EngineOptions::settings`] names no option, or a value it cannot take.
    #[error("engine setting {key} = {value:?} (--set, [settings.options]): {message}")]
    Setting {
        /// The setting's key (`datafusion.…` or `sluice.…`).
        key: String,
        /// The value given.
        value: String,
        /// Why it cannot be set.
        message: String,
    },
}

impl EngineError {
    /// Whether the error is in what the user asked for (a setting), not in the machine.
    pub fn is_usage(&self) -> bool {
        matches!(self, EngineError::Setting { .. })
    }
}

/// How the engine may use the machine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Query memory pool in bytes (`None`: unbounded). Sorts, aggregations and sort-merge
    /// joins spill to disk beyond it.
    pub memory_limit: Option<usize>,
    /// Worker threads and target partitions (`None`: the number of cores).
    pub threads: Option<usize>,
    /// Folder in which the process makes its spill folder (`None`: the system's temporary
    /// folder, `std::env::temp_dir`).
    pub spill_dir: Option<PathBuf>,
    /// How hash joins run under the memory limit.
    pub join: JoinOptions,
    /// Plan for a Ballista cluster: with the settings Ballista needs of a plan it splits
    /// into stages.
    pub cluster: bool,
    /// Settings applied after sluice's own, in order (a later one wins): DataFusion's
    /// configuration options (`datafusion.execution.parquet.pushdown_filters` = `true`), and
    /// sluice's rewrites turned off or on (`sluice.decimal_arith` = `false`); see
    /// [`settings`].
    pub settings: Vec<(String, String)>,
}

impl EngineOptions {
    /// The thread count in effect.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(NonZeroUsize::get)
                .unwrap_or(2)
        })
    }
}

/// The largest build side a local join reads whole in every partition, unless
/// `broadcast_join_limit` says otherwise.
pub const LOCAL_BROADCAST_LIMIT: usize = 16 << 20;

/// A configured DataFusion session plus the stores it reads and writes.
pub struct Engine {
    ctx: SessionContext,
    stores: Arc<StoreRegistry>,
    options: EngineOptions,
    /// The folder spills go to (`spill_dir`, or the system's temporary folder).
    spill_root: PathBuf,
    /// This process's folder in it, where DataFusion spills (after `ctx`: the session goes
    /// first). `None`: the system's temporary folder could not take one (read-only), and
    /// DataFusion makes its own there on the first spill.
    _spill: Option<spill::SpillFolder>,
}

impl Engine {
    /// Builds a session with the memory pool, spill folder and parallelism of `options`.
    pub fn new(options: EngineOptions, stores: Arc<StoreRegistry>) -> Result<Engine, EngineError> {
        let threads = options.threads();
        let mut config = SessionConfig::new()
            .with_target_partitions(threads)
            .with_information_schema(true)
            // The CSV/JSON scans' chunks in flight, counted together against the pool.
            .with_extension(Arc::new(crate::quarantine::ScanBudget::default()));
        if let Some(limit) = options.memory_limit {
            // Text read from Parquet as plain strings, not string views: a batch of views is
            // counted as every buffer it points into, and a sorted or sliced batch points
            // into all the pages it came from, so under a limit sorts and merges counted
            // each row several times and failed with the rows fitting (apache/datafusion
            // #16979); a sort of 400 K lineitem rows failed under 64 MiB.
            config
                .options_mut()
                .execution
                .parquet
                .schema_force_view_types = false;
            // Each sorting partition reserves this much up front for its final merge; the
            // default (10 MB) alone would exhaust a small pool. A share of the pool per thread
            // keeps small limits usable.
            let exec = &mut config.options_mut().execution;
            exec.sort_spill_reservation_bytes = exec
                .sort_spill_reservation_bytes
                .min(limit / (4 * threads.max(1)));
        }
        // A hash repartition that cannot reserve memory for a batch spills it to a spill pool
        // per output, shared by its input tasks. In DataFusion 55, two tasks spilling at once
        // leave the pool two open files; the output's reader waits on the older one for a
        // batch that is in the newer, the writers wait for the reader, and the query hangs
        // with no error (apache/datafusion#24883, fixed after 55). A file per spilled batch
        // is finished as it is written, so no reader ever waits on an open file. (Only
        // repartitions read this setting; it costs a file per spilled batch.)
        config.options_mut().execution.max_spill_file_size_bytes =
            datafusion::common::config::ConfigNonZeroUsize::try_new(1)
                .map_err(EngineError::Runtime)?;
        if options.cluster {
            // What Ballista needs of a plan it cuts into stages run by other processes: no
            // dynamic filters (a scan in one stage would wait forever for a join's in
            // another), no physical scalar subqueries (their result cannot cross a stage),
            // no round-robin repartitions (each would be a shuffle), no view types (too
            // large for Flight frames); see Ballista's `ballista_restricted_configuration`.
            use ballista_core::extension::SessionConfigHelperExt;
            // (It also raises DataFusion's broadcast-join limit to Ballista's 128 MiB: each
            // task of a join's stage reading a build side that large is cheaper than a
            // shuffle of both sides while the probe side is much larger; measured in
            // docs/benchmarks.md.)
            config = config.ballista_restricted_configuration();
        }
        // Locally, build sides up to 16 MiB are read whole by every partition, where
        // DataFusion's default is 1 MiB: a hash join of two partitioned inputs
        // repartitions its probe side by the keys, usually the larger input, to build
        // tables of a few MiB in parallel. At TPC-H SF 10 on 2 threads that made q8, q9
        // and q17 20-30 % faster; the other plans that changed were faster too
        // (docs/benchmarks.md).
        // (A cluster keeps Ballista's 128 MiB, set above.)
        let broadcast_limit = options
            .join
            .broadcast_limit
            .or((!options.cluster).then_some(LOCAL_BROADCAST_LIMIT));
        if let Some(limit) = broadcast_limit {
            // A larger join has both sides hash-partitioned by its keys (on a cluster, each
            // task joining its share: `Cluster::distributed`).
            // (A build side whose size is unknown is judged by its rows, at DataFusion's own
            // ratio of its two defaults: 1 MiB, 128 Ki rows.)
            let optimizer = &mut config.options_mut().optimizer;
            optimizer.hash_join_single_partition_threshold = limit;
            optimizer.hash_join_single_partition_threshold_rows = limit / 8;
        }
        // (Ballista prefers sort-merge joins for want of a hash join that spills: sluice's
        // grace join spills, so the join strategy stays sluice's.)
        config.options_mut().optimizer.prefer_hash_join =
            options.join.strategy != JoinStrategy::SortMerge;
        // The user's settings last, so that they win over sluice's choices above.
        let switches = settings::apply(&mut config, &options.settings)?;
        let mut runtime = RuntimeEnvBuilder::new();
        let pool: Arc<dyn MemoryPool> = match options.memory_limit {
            Some(limit) => Arc::new(TrackConsumersPool::new(
                pool::SluicePool::new(FairSpillPool::new(limit), Some(limit)),
                NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
            )),
            None => Arc::new(pool::SluicePool::new(UnboundedMemoryPool::default(), None)),
        };
        runtime = runtime.with_memory_pool(pool);
        // Spilling sorts merge at most 16 runs at once: with the default fan-in a tight pool
        // fails with "Not enough memory to continue external sort".
        let spill_root = options.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
        let spill = match spill::SpillFolder::create(&spill_root) {
            Ok((spill, _)) => Some(spill),
            Err(source) if options.spill_dir.is_some() => {
                return Err(EngineError::SpillDir {
                    path: spill_root,
                    source,
                });
            }
            // Not asked for: a read-only temporary folder (a container's read-only root)
            // fails only a query that spills, as with DataFusion alone.
            Err(e) => {
                tracing::debug!(folder = %spill_root.display(), "no spill folder: {e}");
                None
            }
        };
        let mut disk = DiskManagerBuilder::default().with_max_spill_merge_fan_in(16);
        if let Some(spill) = &spill {
            disk = disk.with_mode(DiskManagerMode::Directories(vec![
                spill.path().to_path_buf(),
            ]));
        }
        runtime = runtime.with_disk_manager_builder(disk);
        // No listing cache: outputs change within a run (a model publishes, then downstream
        // models read it) and views of one folder hold different files (a manifest's, a work
        // unit's); DataFusion's cache is keyed by path and would serve a stale listing.
        runtime = runtime.with_cache_manager(
            datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                .with_list_files_cache_limit(0),
        );
        let runtime = runtime.build_arc().map_err(EngineError::Runtime)?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_optimizer_rules(
                crate::rewrite::logical_rules(options.memory_limit)
                    .into_iter()
                    .filter(|r| switches.keeps(r.name()))
                    .collect(),
            )
            .with_query_planner(Arc::new(planner::Planner {
                narrow_groups: switches.keeps(crate::rewrite::NEEDED_GROUPS),
                reorder_joins: options.join.order == crate::config::JoinOrder::Cost,
            }))
            // (On a cluster, joins run under the executors' pools, not this one: they take
            // their budget from the pool they run in.)
            .with_physical_optimizer_rules(
                crate::rewrite::physical_rules(
                    join::physical_rules(
                        options.join,
                        options.memory_limit.filter(|_| !options.cluster),
                        options.cluster,
                    ),
                    options.memory_limit.filter(|_| !options.cluster),
                    options.cluster,
                )
                .into_iter()
                .filter(|r| switches.keeps(r.name()))
                .collect(),
            )
            .build();
        let ctx = SessionContext::new_with_state(state);
        Ok(Engine {
            ctx,
            stores,
            options,
            spill_root,
            _spill: spill,
        })
    }

    /// The DataFusion session.
    pub fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    /// The object stores.
    pub fn stores(&self) -> &Arc<StoreRegistry> {
        &self.stores
    }

    /// The options the engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The folder the engine spills into (`spill_dir`, or the system's temporary folder), in
    /// which this process has its own folder.
    pub fn spill_folder(&self) -> &std::path::Path {
        &self.spill_root
    }

    /// The pool the session's operators reserve memory in (unbounded without a limit).
    pub fn memory_pool(&self) -> Arc<dyn MemoryPool> {
        Arc::clone(&self.ctx.runtime_env().memory_pool)
    }

    /// Memory writers may buffer before flushing early: a quarter of the pool, or 256 MiB.
    pub fn write_buffer_budget(&self) -> usize {
        self.options
            .memory_limit
            .map_or(256 << 20, |l| (l / 4).max(8 << 20))
    }

    /// Plans `df` and starts executing it; the returned [`Execution`] yields the stream and,
    /// once it is drained, the scan metrics.
    pub async fn execute(&self, df: DataFrame) -> datafusion::error::Result<Execution> {
        let plan = df.create_physical_plan().await?;
        let stream = execute_stream(Arc::clone(&plan), self.ctx.task_ctx())?;
        Ok(Execution {
            plan,
            stream: Some(stream),
        })
    }
}

/// A new, empty session like `main`: the same configuration, memory pool, spill folder,
/// object stores, optimizer rules (sluice's rewrites and the grace join among them) and query
/// planner (the join order), its own tables.
pub fn sibling_context(main: &SessionContext) -> SessionContext {
    let state = main.state();
    SessionContext::new_with_state(
        SessionStateBuilder::new()
            .with_config(main.copied_config())
            .with_runtime_env(main.runtime_env())
            .with_default_features()
            .with_optimizer_rules(state.optimizers().to_vec())
            .with_physical_optimizer_rules(state.physical_optimizers().to_vec())
            .with_query_planner(Arc::clone(state.query_planner()))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Engine, EngineOptions, sibling_context};
    use crate::store::StoreRegistry;

    /// sluice's physical rules sit where their comments say, next to DataFusion's rules named
    /// (a renamed DataFusion rule would otherwise move them silently).
    #[test]
    fn physical_rules_sit_next_to_the_datafusion_rules_they_follow() {
        let names: Vec<String> = crate::rewrite::physical_rules(
            crate::join::physical_rules(Default::default(), Some(1 << 30), false),
            Some(1 << 30),
            false,
        )
        .iter()
        .map(|r| r.name().to_string())
        .collect();
        let at = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} in {names:?}"))
        };
        assert_eq!(
            at("sluice_build_smaller_side"),
            at("join_selection") + 1,
            "{names:?}"
        );
        assert!(
            at("sluice_build_smaller_side") < at("EnsureRequirements"),
            "{names:?}"
        );
        assert_eq!(
            at("sluice_not_in_as_anti_join") + 1,
            at("join_selection"),
            "{names:?}"
        );
        assert_eq!(
            at("sluice_compact_views") + 1,
            at("sluice_spilling_top_k"),
            "{names:?}"
        );
        assert_eq!(
            at("sluice_spilling_top_k") + 1,
            at("EnsureCooperative"),
            "{names:?}"
        );
        assert!(
            at("sluice_dynamic_filters_while_decoding") > at("FilterPushdown(Post)"),
            "{names:?}"
        );
        assert_eq!(
            at("sluice_dynamic_filters_while_decoding") + 1,
            at("sluice_share_repeated_subplans"),
            "{names:?}"
        );
        assert_eq!(
            at("sluice_share_repeated_subplans") + 1,
            at("SanityCheckPlan"),
            "{names:?}"
        );
        assert_eq!(
            at("sluice_faster_decimal_arithmetic") + 1,
            at("sluice_conjuncts_in_turn"),
            "{names:?}"
        );
        assert_eq!(
            at("sluice_mark_repeated_subplans") + 1,
            at("FilterPushdown(Post)"),
            "{names:?}"
        );
        // A cluster's executors could not decode the compacting operator, nor the filters'
        // wrapper.
        let cluster = crate::rewrite::physical_rules(
            crate::join::physical_rules(Default::default(), None, true),
            None,
            true,
        );
        assert!(cluster.iter().all(|r| r.name() != "sluice_compact_views"
            && r.name() != "sluice_dynamic_filters_while_decoding"
            && r.name() != "sluice_mark_repeated_subplans"
            && r.name() != "sluice_share_repeated_subplans"
            && r.name() != "sluice_conjuncts_in_turn"));
        assert!(
            cluster
                .iter()
                .any(|r| r.name() == "sluice_build_smaller_side")
        );
    }

    /// A work unit's session plans as the run's does: sluice's logical rewrites, physical
    /// rules and query planner (the join order) are all there.
    #[test]
    fn a_sibling_session_plans_with_the_same_rules_and_planner() {
        let stores = Arc::new(StoreRegistry::new(Vec::new(), Vec::new()));
        let engine = Engine::new(EngineOptions::default(), stores).unwrap();
        let (main, sibling) = (engine.ctx().state(), sibling_context(engine.ctx()).state());
        let names = |rules: Vec<&str>| rules.join(",");
        assert_eq!(
            names(sibling.optimizers().iter().map(|r| r.name()).collect()),
            names(main.optimizers().iter().map(|r| r.name()).collect())
        );
        assert!(
            main.optimizers()
                .iter()
                .any(|r| r.name() == "sluice_counts_beside_distinct")
        );
        assert_eq!(
            names(
                sibling
                    .physical_optimizers()
                    .iter()
                    .map(|r| r.name())
                    .collect()
            ),
            names(
                main.physical_optimizers()
                    .iter()
                    .map(|r| r.name())
                    .collect()
            )
        );
        assert!(Arc::ptr_eq(main.query_planner(), sibling.query_planner()));
    }

    /// A hash repartition whose batches all spill, from several input tasks at once, with one
    /// output read and the other not yet (as a partitioned hash join reads its build side
    /// first), finishes and delivers every row once. (On DataFusion 55's defaults it hung on
    /// the first attempt: apache/datafusion#24883.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_repartition_spilling_from_several_inputs_at_once_finishes() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::record_batch::RecordBatch;
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::execution::memory_pool::MemoryConsumer;
        use datafusion::physical_expr::expressions::col;
        use datafusion::physical_plan::repartition::RepartitionExec;
        use datafusion::physical_plan::{ExecutionPlan, Partitioning, SendableRecordBatchStream};
        use futures::StreamExt;

        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("pad", DataType::Utf8, false),
        ]));
        // Four input partitions of 40 batches of 2,000 rows: keys 0..320,000, each once.
        let (parts, batches, rows) = (4i64, 40i64, 2_000i64);
        let inputs: Vec<Vec<RecordBatch>> = (0..parts)
            .map(|p| {
                (0..batches)
                    .map(|b| {
                        let first = (p * batches + b) * rows;
                        let keys: Vec<i64> = (first..first + rows).collect();
                        let pad: Vec<String> = keys.iter().map(|k| format!("{k:0>64}")).collect();
                        RecordBatch::try_new(
                            Arc::clone(&schema),
                            vec![
                                Arc::new(Int64Array::from(keys)),
                                Arc::new(StringArray::from(pad)),
                            ],
                        )
                        .unwrap()
                    })
                    .collect()
            })
            .collect();
        let drain = |mut stream: SendableRecordBatchStream| async move {
            let mut keys = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.unwrap();
                let k = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                keys.extend(k.iter().flatten());
            }
            keys
        };
        let limit = 4 << 20;
        for attempt in 0..40 {
            let stores = Arc::new(StoreRegistry::new(Vec::new(), Vec::new()));
            let options = EngineOptions {
                memory_limit: Some(limit),
                threads: Some(2),
                ..Default::default()
            };
            let engine = Engine::new(options, stores).unwrap();
            // The whole pool held elsewhere: every batch the repartition buffers spills.
            let pool = engine.memory_pool();
            let held = MemoryConsumer::new("held").register(&pool);
            held.try_grow(limit).unwrap();
            let source =
                MemorySourceConfig::try_new_exec(&inputs, Arc::clone(&schema), None).unwrap();
            let hash = Partitioning::Hash(vec![col("k", &schema).unwrap()], 2);
            let exec = Arc::new(RepartitionExec::try_new(source, hash).unwrap());
            let task = engine.ctx().task_ctx();
            let first = exec.execute(0, Arc::clone(&task)).unwrap();
            let second = exec.execute(1, task).unwrap();
            let wait = std::time::Duration::from_secs(20);
            let mut keys = tokio::time::timeout(wait, drain(first))
                .await
                .unwrap_or_else(|_| panic!("attempt {attempt}: the repartition hung"));
            let read_first = keys.len();
            keys.extend(tokio::time::timeout(wait, drain(second)).await.unwrap());
            let spilled = exec
                .metrics()
                .and_then(|m| m.spill_count())
                .unwrap_or_default();
            assert!(spilled > 0, "attempt {attempt}: nothing spilled");
            assert!(read_first > 0 && read_first < keys.len());
            keys.sort_unstable();
            let all: Vec<i64> = (0..parts * batches * rows).collect();
            assert!(keys == all, "attempt {attempt}: rows lost or repeated");
            drop(held);
        }
    }
}
