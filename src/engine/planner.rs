//! [`Planner`]: sluice's query planner, DataFusion's with the plan rewrites that need the
//! relations' statistics, which only planning them gives (the join order).

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

/// Plans an optimized logical plan: inner joins reordered by estimated size
/// ([`crate::rewrite::join_order`]) when `reorder_joins`, then DataFusion's planner.
#[derive(Debug)]
pub(crate) struct Planner {
    pub(crate) reorder_joins: bool,
}

#[async_trait::async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner = DefaultPhysicalPlanner::default();
        if !self.reorder_joins {
            return planner.create_physical_plan(plan, state).await;
        }
        let plan = crate::rewrite::join_order::reorder(plan, state).await?;
        planner.create_physical_plan(&plan, state).await
    }
}
