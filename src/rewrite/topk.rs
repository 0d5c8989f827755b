//! `ORDER BY … LIMIT k` with a `k` too large for the memory limit: a sort that spills, then
//! the limit, instead of DataFusion's top-k heap.
//!
//! DataFusion runs a sort with a fetch as a top-k heap that keeps the best `k` rows in
//! memory and cannot spill: `ORDER BY x LIMIT 10 OFFSET 3000000` under a 64 MiB limit fails
//! with "Additional allocation failed for TopK". A full sort spills its runs to disk and
//! merges them; its first `k` rows are the answer. Small `k` (the usual "top 100") keeps
//! the heap, which reads the input once and holds almost nothing.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// Share of a partition's part of the pool a top-k heap may be expected to hold: the heap
/// keeps whole input batches alive while any of their rows is among the best `k`, so it
/// holds several times `k` rows' bytes between compactions.
const HEAP_SHARE: usize = 4;

/// Replaces a sort's top-k heap by a full, spilling sort and a limit when the heap of `k`
/// rows would not fit its partition's share of `memory_limit`.
#[derive(Debug)]
pub(crate) struct SpillingTopK {
    memory_limit: usize,
}

impl SpillingTopK {
    pub(crate) fn new(memory_limit: usize) -> Self {
        SpillingTopK { memory_limit }
    }

    /// The largest `k` whose heap fits: a partition's share of the pool, over the row width.
    fn max_fetch(&self, schema: &Schema, partitions: usize) -> usize {
        let row = super::row_width(schema).max(1);
        self.memory_limit / partitions.max(1) / HEAP_SHARE / row
    }
}

impl PhysicalOptimizerRule for SpillingTopK {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partitions = config.execution.target_partitions;
        plan.transform_up(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(fetch) = sort.fetch() else {
                return Ok(Transformed::no(node));
            };
            let input = sort.input();
            // The heap's rows are the sort's input rows (each of its partitions keeps `k`).
            let heaps = if sort.preserve_partitioning() {
                input.output_partitioning().partition_count()
            } else {
                1
            };
            if fetch <= self.max_fetch(&input.schema(), heaps.max(partitions)) {
                return Ok(Transformed::no(node));
            }
            let full: Arc<dyn ExecutionPlan> = Arc::new(sort.with_fetch(None));
            // The limit goes where the heap cut: per partition when the sort kept them apart.
            let limited: Arc<dyn ExecutionPlan> = if sort.preserve_partitioning() {
                Arc::new(LocalLimitExec::new(full, fetch))
            } else {
                Arc::new(GlobalLimitExec::new(full, 0, Some(fetch)))
            };
            Ok(Transformed::yes(limited))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_spilling_top_k"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
