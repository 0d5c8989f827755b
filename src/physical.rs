//! What sluice's own physical operators (the grace join's inputs, the quarantine scan) share,
//! and reading metrics off a plan once it has run. A leaf: any layer may use it, and it uses
//! nothing of the crate.

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;

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

/// The name of the leaf that reads a subplan's result computed once for several places of
/// a plan (rewrite/shared_subplans.rs): a walk over a plan's metrics skips it, its rows
/// being counted under the copy that computed them.
pub(crate) const SHARED_READ: &str = "SharedReadExec";

/// The sum over partitions of the metric `name` of `plan` (0 if none).
pub(crate) fn metric_sum(plan: &Arc<dyn ExecutionPlan>, name: &str) -> u64 {
    let Some(m) = plan.metrics() else { return 0 };
    // DataFusion's own spill metric is not found by name.
    let v = if name == "spilled_bytes" {
        m.spilled_bytes()
    } else {
        m.sum_by_name(name).map(|v| v.as_usize())
    };
    v.unwrap_or(0) as u64
}

/// The largest per-partition value of the metric `name` of `plan`.
pub(crate) fn metric_max(plan: &Arc<dyn ExecutionPlan>, name: &str) -> u64 {
    plan.metrics().map_or(0, |m| {
        m.iter()
            .filter(|x| x.value().name() == name)
            .map(|x| x.value().as_usize() as u64)
            .max()
            .unwrap_or(0)
    })
}
