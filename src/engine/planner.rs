//! [`Planner`]: sluice's query planner, DataFusion's with the plan rewrites that need the
//! relations' statistics, which only planning them gives (the groups an aggregation joined
//! on a key needs, the join order).

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

/// Plans an optimized logical plan: aggregations joined on a key narrowed to the keys the
/// join can match ([`crate::rewrite::needed_groups`]) when `narrow_groups`, inner joins
/// reordered by estimated size ([`crate::rewrite::join_order`]) when `reorder_joins`, then
/// DataFusion's planner.
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
        let mut plan = Cow::Borrowed(plan);
        // (Each relation is planned and sampled once, for both rewrites.)
        let mut estimates = crate::rewrite::join_order::Estimates::default();
        if self.narrow_groups {
            let narrowed = crate::rewrite::needed_groups::narrow(&plan, state, &mut estimates);
            plan = Cow::Owned(narrowed.await?);
        }
        if self.reorder_joins {
            let reordered = crate::rewrite::join_order::reorder(&plan, state, &mut estimates);
            plan = Cow::Owned(reordered.await?);
        }
        DefaultPhysicalPlanner::default()
            .create_physical_plan(&plan, state)
            .await
    }
}
