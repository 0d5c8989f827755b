//! Rewrites of the logical plan that sluice adds to DataFusion's optimizer, each a rule of
//! its own module, so that a query DataFusion would plan badly, or run out of memory on,
//! is planned as a better equivalent one.
//!
//! - [`distinct`]: `COUNT(DISTINCT x)` beside `COUNT(*)` split into two groupings, which
//!   both spill, instead of one per-group set of values, which cannot.
//! - [`join_order`]: inner joins reordered by estimated size (run from the engine's query
//!   planner, where the relations' statistics can be read).

mod distinct;
pub(crate) mod join_order;

use std::sync::Arc;

use datafusion::optimizer::OptimizerRule;
use datafusion::optimizer::optimizer::Optimizer;

/// DataFusion's logical optimizer rules, with sluice's inserted where they must run.
pub(crate) fn logical_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let mut rules = Optimizer::new().rules;
    // Before DataFusion's own split of single-distinct aggregates, which it prepares for.
    let at = rules
        .iter()
        .position(|r| r.name() == "single_distinct_aggregation_to_group_by")
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(distinct::CountsBesideDistinct));
    rules
}
