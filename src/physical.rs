//! What sluice's own physical operators (the grace join's inputs, the quarantine scan) share.
//! A leaf: any layer may use it, and it uses nothing of the crate.

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
