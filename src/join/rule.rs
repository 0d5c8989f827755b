//! [`GraceJoinRule`]: the physical optimizer rule that decides, for each hash join, whether it
//! stays DataFusion's in-memory hash join or becomes a [`GraceHashJoinExec`].
//!
//! It runs after DataFusion's `JoinSelection` (build side chosen, partition mode fixed) and
//! before `EnsureRequirements`, which then puts the hash repartitioning under the new
//! operator and a sort above it if a parent needs one (the grace join promises no order).

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, StatisticsArgs, StatisticsContext,
};

use super::exec::{Choice, GraceHashJoinExec, Strategy};
use super::human_bytes;
use crate::config::{JoinOptions, JoinStrategy};

/// Share of the memory limit the joins of one query may hold between them; the rest is for
/// scans, aggregations and sorts running beside them.
const JOIN_SHARE: f64 = 0.75;

/// The memory joins may take of a pool of `pool` bytes.
pub(super) fn join_budget(pool: usize) -> usize {
    ((pool as f64 * JOIN_SHARE) as usize).max(1 << 20)
}

/// The rule; see the module documentation.
#[derive(Debug)]
pub(crate) struct GraceJoinRule {
    options: JoinOptions,
    memory_limit: Option<usize>,
    /// The query runs on a cluster, whose executors' memory pools are bounded whatever
    /// this session's limit: `auto` wraps every join there.
    cluster: bool,
}

impl GraceJoinRule {
    /// A rule for a session with `memory_limit` (bytes, `None`: unbounded), planning for a
    /// cluster or not.
    pub(crate) fn new(
        options: JoinOptions,
        memory_limit: Option<usize>,
        cluster: bool,
    ) -> GraceJoinRule {
        GraceJoinRule {
            options,
            memory_limit,
            cluster,
        }
    }

    /// The decision for `join` (`None`: keep DataFusion's join).
    fn choose(&self, join: &HashJoinExec, partitions: usize) -> Result<Option<Choice>> {
        // NOT IN needs to see every build row at once (one NULL changes every answer); an
        // unbounded input never ends; a fetch belongs to the exact join; `Auto` is resolved
        // by JoinSelection before this rule runs.
        if join.null_aware
            || join.fetch().is_some()
            || *join.partition_mode() == PartitionMode::Auto
            || join.left().boundedness().is_unbounded()
            || join.right().boundedness().is_unbounded()
        {
            return Ok(None);
        }
        // Both sides must hash the same types, or equal keys would land in different buckets.
        let (ls, rs) = (join.left().schema(), join.right().schema());
        for (l, r) in join.on() {
            if l.data_type(&ls)? != r.data_type(&rs)? {
                return Ok(None);
            }
        }
        let partitions = partitions.max(1);
        let total_budget = self.memory_limit.map(join_budget);
        let budget = total_budget.map(|b| (b / partitions).max(1 << 20));
        let estimate = build_estimate(join.left().as_ref());
        let forced = self.options.strategy == JoinStrategy::Grace;
        let collect_left = *join.partition_mode() == PartitionMode::CollectLeft;
        let need = estimate.map(|(b, r, _)| super::job::join_memory(b, r));
        // Buckets of a quarter of a partition's budget, at least two per partition.
        let buckets = self.options.buckets.unwrap_or_else(|| {
            let per_bucket = budget.map_or(64 << 20, |b| (b / 4).max(1));
            need.unwrap_or(0)
                .div_ceil(per_bucket)
                .max(2 * partitions)
                .next_power_of_two()
                .clamp(8, 512)
        });
        let size_text = match estimate {
            Some((bytes, _, exact)) => format!(
                "build side {}{}",
                if exact { "" } else { "≈ " },
                human_bytes(bytes)
            ),
            None => "build side size unknown".to_string(),
        };
        let budget_text = match total_budget {
            Some(b) => format!(
                "{} ({}% of the {} memory limit)",
                human_bytes(b),
                (JOIN_SHARE * 100.0) as u32,
                human_bytes(self.memory_limit.unwrap_or(0)),
            ),
            None if self.cluster => "its share of the executor's memory pool".to_string(),
            None => "no memory limit".to_string(),
        };
        let (strategy, reason) = match (need, total_budget) {
            // A small broadcast join stays as it is.
            (Some(need), Some(total)) if collect_left && !forced && need <= total => {
                return Ok(None);
            }
            _ if forced => (
                Strategy::Partitioned(buckets),
                format!("join_strategy = grace; {size_text}"),
            ),
            (Some(need), Some(total)) if need > total => (
                Strategy::Partitioned(buckets),
                format!(
                    "{size_text} needs {} to join in memory, over {budget_text}",
                    human_bytes(need)
                ),
            ),
            _ => (
                Strategy::Adaptive,
                format!("{size_text}: in memory unless it outgrows {budget_text}"),
            ),
        };
        Ok(Some(Choice {
            strategy,
            reason,
            budget,
            total_budget,
            buckets,
            broadcast: collect_left,
        }))
    }
}

/// The build side's size: (bytes, rows, exact) from DataFusion's statistics, bytes estimated
/// from rows and column types when only rows are known, and at most that when inexact.
fn build_estimate(plan: &dyn ExecutionPlan) -> Option<(usize, usize, bool)> {
    let stats = StatisticsContext::new()
        .compute(plan, &StatisticsArgs::new())
        .ok()?;
    let rows = stats.num_rows.get_value().copied();
    let exact = matches!(stats.total_byte_size, Precision::Exact(_))
        && matches!(stats.num_rows, Precision::Exact(_));
    let width: usize = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.data_type().primitive_width().unwrap_or(24))
        .sum();
    let from_rows = rows.map(|r| r * width);
    // An estimated byte size of a join's output carries its columns' bytes unscaled from
    // their tables (see `rewrite::build_side`), so it is taken at most at rows × width.
    let bytes = match (stats.total_byte_size.get_value(), from_rows) {
        (Some(b), Some(r)) if !exact => (*b).min(r),
        (Some(b), _) => *b,
        (None, r) => r?,
    };
    Some((bytes, rows.unwrap_or(bytes / 32), exact))
}

impl PhysicalOptimizerRule for GraceJoinRule {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let active = match self.options.strategy {
            JoinStrategy::InMemory | JoinStrategy::SortMerge => false,
            JoinStrategy::Grace => true,
            JoinStrategy::Auto => self.memory_limit.is_some() || self.cluster,
        };
        if !active {
            return Ok(plan);
        }
        let partitions = config.execution.target_partitions;
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            match self.choose(join, partitions)? {
                Some(choice) => Ok(Transformed::yes(Arc::new(GraceHashJoinExec::try_new(
                    join, choice,
                )?)
                    as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "GraceJoin"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
