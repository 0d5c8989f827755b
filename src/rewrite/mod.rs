//! Rewrites of the plan that sluice adds to DataFusion's optimizers, each a rule of its own
//! module, so that a query DataFusion would plan badly, or run out of memory on, is planned
//! as a better equivalent one.
//!
//! - [`distinct`]: `COUNT(DISTINCT x)` beside `COUNT(*)` split into two groupings, which
//!   both spill, instead of one per-group set of values, which cannot.
//! - [`split_distinct`]: distinct aggregates of several arguments computed by one
//!   aggregation per argument (which the rule above and DataFusion's then split), joined on
//!   the keys.
//! - [`join_order`]: inner joins reordered by estimated size (run from the engine's query
//!   planner, where the relations' statistics can be read).
//! - [`topk`] (physical): `ORDER BY … LIMIT k` with a `k` too large for the memory limit
//!   sorted in full, which spills, instead of in a top-k heap, which cannot.

mod distinct;
pub(crate) mod join_order;
mod split_distinct;
mod topk;

use std::sync::Arc;

use datafusion::optimizer::OptimizerRule;
use datafusion::optimizer::optimizer::Optimizer;
use datafusion::physical_optimizer::PhysicalOptimizerRule;

/// DataFusion's logical optimizer rules, with sluice's inserted where they must run.
pub(crate) fn logical_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let mut rules = Optimizer::new().rules;
    // Before DataFusion's own split of single-distinct aggregates, which it prepares for.
    let at = rules
        .iter()
        .position(|r| r.name() == "single_distinct_aggregation_to_group_by")
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(distinct::CountsBesideDistinct));
    rules.insert(at, Arc::new(split_distinct::DistinctsApart));
    rules
}

/// `rules` (DataFusion's physical optimizer rules, as the join layer arranged them) with
/// sluice's physical rewrites for a session whose pool is `memory_limit`.
pub(crate) fn physical_rules(
    mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
    memory_limit: Option<usize>,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    if let Some(limit) = memory_limit {
        // After DataFusion has pushed every limit into its sort (LimitPushdown), and before
        // filters are pushed into scans for the last time, so no scan is handed the top-k
        // heap's threshold filter.
        let at = rules
            .iter()
            .position(|r| r.name() == "EnsureCooperative")
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(topk::SpillingTopK::new(limit)));
    }
    rules
}
