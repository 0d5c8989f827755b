//! DataFusion's estimate of a filter that its statistics cannot judge, set from the sample
//! the join order measured it on ([`super::selectivity`]).
//!
//! DataFusion estimates a filter it cannot analyse (`p_name LIKE '%green%'`) at its
//! `default_filter_selectivity`, a fifth of its input, and the estimate is carried up
//! through the joins above it: it picks each hash join's build side and whether it is
//! broadcast. In TPC-H q9 the green parts (5 %) joined with `lineitem` were estimated at 12 M
//! rows, not 3.3 M, so the join with `orders` built its hash table on the 15 M orders and
//! probed it with the lines, instead of the reverse. The engine's planner wraps each relation
//! whose filter was sampled in a [`Sampled`] node, which plans as the relation with that
//! filter's default selectivity set to the share the sample kept. Nothing but estimates
//! changes: the filter is the same.
//!
//! A filter that DataFusion can analyse (a comparison of a string column with a constant,
//! which it estimates as keeping every row) is estimated its way still: its default
//! selectivity is not read.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, Result};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};

use super::join_order::Estimates;

/// A relation whose topmost filter keeps `percent` of its input, as sampled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Sampled {
    input: LogicalPlan,
    percent: u8,
}

// (Nodes are ordered by their share, and unordered where that is all they share: a plan
// has no order, and equal nodes must compare equal.)
impl PartialOrd for Sampled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.percent.cmp(&other.percent) {
            Ordering::Equal if self != other => None,
            order => Some(order),
        }
    }
}

impl UserDefinedLogicalNodeCore for Sampled {
    fn name(&self) -> &str {
        "SampledFilter"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SampledFilter: keeps {}%", self.percent)
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        Ok(Sampled {
            input: inputs.pop().unwrap_or_else(|| self.input.clone()),
            percent: self.percent,
        })
    }
}

/// `plan` with each relation whose filter was sampled (in `estimates`) wrapped in a
/// [`Sampled`] node.
pub(crate) fn mark(plan: LogicalPlan, estimates: &Estimates) -> Result<LogicalPlan> {
    plan.transform_down(|node| {
        let Some(share) = estimates.of(&node).and_then(|e| e.filter_share) else {
            return Ok(Transformed::no(node));
        };
        // (DataFusion's selectivities are whole percents, at least one.)
        let percent = (share * 100.0).round().clamp(1.0, 100.0) as u8;
        let sampled = LogicalPlan::Extension(Extension {
            node: Arc::new(Sampled {
                input: node,
                percent,
            }),
        });
        Ok(Transformed::new(sampled, true, TreeNodeRecursion::Jump))
    })
    .map(|t| t.data)
}

/// Plans a [`Sampled`] node: its relation, the topmost filter's default selectivity set.
#[derive(Debug)]
pub(crate) struct SampledPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for SampledPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let (Some(sampled), [input]) = (node.as_any().downcast_ref::<Sampled>(), physical_inputs)
        else {
            return Ok(None);
        };
        let planned = Arc::clone(input).transform_down(|p| {
            let Some(filter) = p.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(p));
            };
            let estimated = FilterExecBuilder::from(filter)
                .with_default_selectivity(sampled.percent)
                .build()?;
            Ok(Transformed::new(
                Arc::new(estimated) as Arc<dyn ExecutionPlan>,
                true,
                TreeNodeRecursion::Stop,
            ))
        })?;
        Ok(Some(planned.data))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::common::tree_node::TreeNode;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::prelude::{SessionConfig, SessionContext};

    fn session(sampled: bool) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features();
        let state = if sampled {
            state.with_query_planner(Arc::new(crate::rewrite::testing::Planner {
                narrow: false,
                reorder: true,
            }))
        } else {
            state
        };
        SessionContext::new_with_state(state.build())
    }

    /// A `LIKE` that keeps 3 % of its table is estimated at 3 % where the join order
    /// sampled it, not DataFusion's default fifth; the answer is the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sampled_filter_is_estimated_at_its_samples_share() {
        let (mut selectivities, mut answers) = (Vec::new(), Vec::new());
        for sampled in [true, false] {
            let ctx = session(sampled);
            let names = Arc::new(Schema::new(vec![
                Field::new("k1", DataType::Int64, false),
                Field::new("name", DataType::Utf8, false),
            ]));
            let columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(0..10_000)),
                Arc::new(StringArray::from_iter_values((0..10_000).map(|i| {
                    if i % 100 < 3 {
                        format!("dark green {i}")
                    } else {
                        format!("pale blue {i}")
                    }
                }))),
            ];
            let batch = RecordBatch::try_new(Arc::clone(&names), columns).unwrap();
            let t1 = MemTable::try_new(names, vec![vec![batch]]).unwrap();
            let keys = Arc::new(Schema::new(vec![Field::new("k2", DataType::Int64, false)]));
            let column: ArrayRef = Arc::new(Int64Array::from_iter_values(
                (0..20_000).map(|i| i % 10_000),
            ));
            let batch = RecordBatch::try_new(Arc::clone(&keys), vec![column]).unwrap();
            let t2 = MemTable::try_new(keys, vec![vec![batch]]).unwrap();
            ctx.register_table("t1", Arc::new(t1)).unwrap();
            ctx.register_table("t2", Arc::new(t2)).unwrap();
            let df = ctx
                .sql("SELECT COUNT(*) AS n FROM t1 JOIN t2 ON k1 = k2 WHERE name LIKE '%green%'")
                .await
                .unwrap();
            let plan = df.clone().create_physical_plan().await.unwrap();
            let mut found = Vec::new();
            plan.apply(|p| {
                if let Some(f) = p.downcast_ref::<FilterExec>() {
                    found.push(f.default_selectivity());
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
            .unwrap();
            selectivities.push(found);
            let batches = df.collect().await.unwrap();
            let n = batches[0]
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .value(0);
            answers.push(n);
        }
        assert_eq!(selectivities, vec![vec![3], vec![20]]);
        // 300 green names, each key twice in t2.
        assert_eq!(answers, vec![600, 600]);
    }
}
