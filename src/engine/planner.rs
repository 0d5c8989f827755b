//! [`Planner`]: sluice's query planner, DataFusion's with the plan rewrites that need the
//! relations' statistics, which only planning them gives (the groups an aggregation joined
//! on a key needs, the join order, the estimates of filters statistics cannot judge).

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;

/// Plans an optimized logical plan: aggregations joined on a key narrowed to the keys the
/// join can match ([`crate::rewrite::needed_groups`]) when `narrow_groups`, inner joins
/// reordered by estimated size ([`crate::rewrite::join_order`]) when `reorder_joins`, then
/// DataFusion's planner ([`crate::rewrite::plan_with_estimates`]).
#[derive(Debug)]
pub(crate) struct Planner {
    pub(crate) narrow_groups: bool,
    pub(crate) reorder_joins: bool,
}

#[async_trait::async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        crate::rewrite::plan_with_estimates(plan, state, self.narrow_groups, self.reorder_joins)
            .await
    }
}
