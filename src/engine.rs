//! The engine: a DataFusion session configured for batch work (memory pool that spills,
//! thread count, spill folder, object stores), and the execution of one query into a stream
//! with its metrics.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, execute_stream};
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

use crate::config::{JoinOptions, JoinStrategy};
use crate::error::Error;
use crate::join;
use crate::store::StoreRegistry;

/// How the engine may use the machine.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Query memory pool in bytes (`None`: unbounded). Sorts, aggregations and sort-merge
    /// joins spill to disk beyond it.
    pub memory_limit: Option<usize>,
    /// Worker threads and target partitions (`None`: the number of cores).
    pub threads: Option<usize>,
    /// Folder for spill files (`None`: the system's temporary folder).
    pub spill_dir: Option<PathBuf>,
    /// How hash joins run under the memory limit.
    pub join: JoinOptions,
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

/// A configured DataFusion session plus the stores it reads and writes.
pub struct Engine {
    ctx: SessionContext,
    stores: Arc<StoreRegistry>,
    options: EngineOptions,
}

impl Engine {
    /// Builds a session with the memory pool, spill folder and parallelism of `options`.
    pub fn new(options: EngineOptions, stores: Arc<StoreRegistry>) -> Result<Engine, Error> {
        let threads = options.threads();
        let mut config = SessionConfig::new()
            .with_target_partitions(threads)
            .with_information_schema(true);
        if let Some(limit) = options.memory_limit {
            // Each sorting partition reserves this much up front for its final merge; the
            // default (10 MB) alone would exhaust a small pool. A share of the pool per thread
            // keeps small limits usable.
            let exec = &mut config.options_mut().execution;
            exec.sort_spill_reservation_bytes = exec
                .sort_spill_reservation_bytes
                .min(limit / (4 * threads.max(1)));
        }
        if options.join.strategy == JoinStrategy::SortMerge {
            config.options_mut().optimizer.prefer_hash_join = false;
        }
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = options.memory_limit {
            let pool = TrackConsumersPool::new(
                FairSpillPool::new(limit),
                NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
            );
            runtime = runtime.with_memory_pool(Arc::new(pool));
        }
        // Spilling sorts merge at most 16 runs at once: with the default fan-in a tight pool
        // fails with "Not enough memory to continue external sort".
        let mut disk = DiskManagerBuilder::default().with_max_spill_merge_fan_in(16);
        if let Some(dir) = &options.spill_dir {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
            disk = disk.with_mode(DiskManagerMode::Directories(vec![dir.clone()]));
        }
        runtime = runtime.with_disk_manager_builder(disk);
        // No listing cache: outputs change within a run (a model publishes, then downstream
        // models read it) and views of one folder hold different files (a manifest's, a work
        // unit's); DataFusion's cache is keyed by path and would serve a stale listing.
        runtime = runtime.with_cache_manager(
            datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
                .with_list_files_cache_limit(0),
        );
        let runtime = runtime.build_arc().map_err(|e| Error::Query {
            context: "cannot start the query engine".into(),
            source: e,
        })?;
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rules(join::physical_rules(options.join, options.memory_limit))
            .build();
        let ctx = SessionContext::new_with_state(state);
        Ok(Engine {
            ctx,
            stores,
            options,
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
/// object stores and physical optimizer rules (the grace join among them), its own tables.
pub fn sibling_context(main: &SessionContext) -> SessionContext {
    let state = main.state();
    SessionContext::new_with_state(
        SessionStateBuilder::new()
            .with_config(main.copied_config())
            .with_runtime_env(main.runtime_env())
            .with_default_features()
            .with_physical_optimizer_rules(state.physical_optimizers().to_vec())
            .build(),
    )
}

/// The `ExecutionPlan` methods a leaf operator writes the same way (no children, no
/// expressions, nothing to replace), for sluice's own leaves: the quarantine scan and the
/// grace join's inputs.
macro_rules! leaf_plan_methods {
    () => {
        fn children(&self) -> Vec<&std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            vec![]
        }

        fn apply_expressions(
            &self,
            _f: &mut dyn FnMut(
                &std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>,
            ) -> datafusion::common::Result<
                datafusion::common::tree_node::TreeNodeRecursion,
            >,
        ) -> datafusion::common::Result<datafusion::common::tree_node::TreeNodeRecursion> {
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        }

        fn with_new_children(
            self: std::sync::Arc<Self>,
            _children: Vec<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
        ) -> datafusion::common::Result<std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>>
        {
            Ok(self)
        }
    };
}
pub(crate) use leaf_plan_methods;

/// Rows a query read, per table, and what its filters dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanRows {
    /// Rows read per table (a source, or an upstream model's output), by name; rows of a
    /// leaf that is no table (a `VALUES` list, say) under `(other)`.
    pub by_table: BTreeMap<String, u64>,
    /// Rows the query's filters dropped, known when the query is only filters and
    /// projections over one table (then rows in = rows out + filtered).
    pub filtered: Option<u64>,
}

impl ScanRows {
    /// Rows read from every table.
    pub fn total(&self) -> u64 {
        self.by_table.values().sum()
    }

    /// Adds another query's (another unit's) counts.
    pub fn merge(&mut self, other: &ScanRows) {
        for (t, n) in &other.by_table {
            *self.by_table.entry(t.clone()).or_default() += n;
        }
        self.filtered = match (self.filtered, other.filtered) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
}

/// The table a scan reads: of `tables`, the one whose location holds the scan's files most
/// closely.
fn leaf_table(
    plan: &Arc<dyn ExecutionPlan>,
    tables: &[(String, ListingTableUrl)],
) -> Option<String> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let (store, path) = if let Some(q) = plan.downcast_ref::<crate::quarantine::QuarantineScan>() {
        let url = q.table_url();
        (url.object_store(), url.prefix().clone())
    } else {
        let scan = plan
            .downcast_ref::<DataSourceExec>()?
            .data_source()
            .downcast_ref::<FileScanConfig>()?;
        let file = scan.file_groups.iter().flat_map(|g| g.files()).next()?;
        (
            scan.object_store_url.clone(),
            file.object_meta.location.clone(),
        )
    };
    // The closest location wins: a source at `data/orders/` over one at `data/`.
    tables
        .iter()
        .filter(|(_, url)| {
            url.object_store() == store && (url.prefix() == &path || url.contains(&path, false))
        })
        .max_by_key(|(_, url)| url.prefix().as_ref().len())
        .map(|(name, _)| name.clone())
}

/// A running query: its output stream, and its physical plan for metrics afterwards.
pub struct Execution {
    plan: Arc<dyn ExecutionPlan>,
    stream: Option<SendableRecordBatchStream>,
}

impl Execution {
    /// Takes the output stream (once).
    pub fn take_stream(&mut self) -> Option<SendableRecordBatchStream> {
        self.stream.take()
    }

    /// Whether the query's output is sorted (it has an ORDER BY), so writers keep row order.
    pub fn is_ordered(&self) -> bool {
        self.plan.properties().output_ordering().is_some()
    }

    /// Rows the plan read, per table (`tables`: each source and upstream output the query
    /// reads, with its location), and the rows its filters dropped when the query is only
    /// filters and projections over one table. Read once the output is drained.
    pub fn scan_rows(&self, tables: &[(String, ListingTableUrl)]) -> ScanRows {
        let mut out = ScanRows::default();
        let mut leaves = 0usize;
        let mut simple = true;
        let mut filtered = 0u64;
        fn rows(plan: &Arc<dyn ExecutionPlan>) -> u64 {
            plan.metrics()
                .and_then(|m| m.output_rows())
                .map_or(0, |r| r as u64)
        }
        fn walk(
            plan: &Arc<dyn ExecutionPlan>,
            tables: &[(String, ListingTableUrl)],
            out: &mut ScanRows,
            leaves: &mut usize,
            simple: &mut bool,
            filtered: &mut u64,
        ) {
            let children = plan.children();
            if children.is_empty() {
                let n = rows(plan);
                *leaves += 1;
                let name = leaf_table(plan, tables).unwrap_or_else(|| "(other)".to_string());
                if n > 0 || name != "(other)" {
                    *out.by_table.entry(name).or_default() += n;
                }
                return;
            }
            // The operators that pass rows on or drop them by a predicate, and no other.
            const PASS_ON: [&str; 8] = [
                "FilterExec",
                "ProjectionExec",
                "RepartitionExec",
                "CoalesceBatchesExec",
                "CoalescePartitionsExec",
                "SortExec",
                "SortPreservingMergeExec",
                "CooperativeExec",
            ];
            if !PASS_ON.contains(&plan.name()) || plan.fetch().is_some() {
                *simple = false;
            }
            if plan.name() == "FilterExec" {
                let input: u64 = children.iter().map(|c| rows(c)).sum();
                *filtered += input.saturating_sub(rows(plan));
            }
            for c in children {
                walk(c, tables, out, leaves, simple, filtered);
            }
        }
        walk(
            &self.plan,
            tables,
            &mut out,
            &mut leaves,
            &mut simple,
            &mut filtered,
        );
        if simple && leaves == 1 {
            out.filtered = Some(filtered);
        }
        out
    }

    /// The plan's joins: strategy, and buckets, spill and peak memory once drained.
    pub fn joins(&self) -> Vec<join::JoinReport> {
        join::join_reports(&self.plan)
    }

    /// Bytes spilled to disk by the plan's operators.
    pub fn spilled_bytes(&self) -> u64 {
        fn walk(plan: &Arc<dyn ExecutionPlan>) -> u64 {
            let own = plan
                .metrics()
                .and_then(|m| m.spilled_bytes())
                .map_or(0, |b| b as u64);
            own + plan.children().into_iter().map(walk).sum::<u64>()
        }
        walk(&self.plan)
    }
}
