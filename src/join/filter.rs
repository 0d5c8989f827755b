//! The filter a grace join pushes into its probe side, as DataFusion's own hash join does:
//! once the build side is read, probe rows whose keys cannot match are skipped by the scan
//! (row groups and pages pruned by their statistics), so a memory limit never makes a query
//! read more than it does without one.
//!
//! DataFusion's filter pushdown gives the join a [`DynamicFilterPhysicalExpr`], shared with
//! the probe-side scan, that starts as `true`. When the build side fits in memory, the
//! wrapped hash join fills it itself (bounds and membership). When the build side goes into
//! buckets, there is no one hash table: [`KeyBounds`] gathers each key's minimum and
//! maximum while the build side is read, and fills the filter with `key BETWEEN min AND max`
//! before the probe side is read.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{NullEquality, Result, ScalarValue};
use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
use datafusion::logical_expr::{Accumulator, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, DynamicFilterPhysicalExpr, IsNullExpr, lit,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::HashJoinExec;

/// The dynamic filter `join` fills at run time: the one DataFusion's filter pushdown gave
/// it, if the session allows join filters and a node of the probe side consumes it.
pub(super) fn probe_filter(
    join: &HashJoinExec,
    config: &ConfigOptions,
) -> Option<Arc<DynamicFilterPhysicalExpr>> {
    if !config.optimizer.enable_join_dynamic_filter_pushdown {
        return None;
    }
    let filter = join
        .dynamic_expressions_produced()
        .into_iter()
        .find_map(|e| (e as Arc<dyn std::any::Any + Send + Sync>).downcast().ok())?;
    let filter: Arc<DynamicFilterPhysicalExpr> = filter;
    let id = filter.expression_id()?;
    consumes(join.right(), id).then_some(filter)
}

/// Whether a node of `plan` holds the expression `id`.
fn consumes(plan: &Arc<dyn ExecutionPlan>, id: u64) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        node.apply_expressions(&mut |root| {
            root.apply(|e| {
                found |= e.expression_id() == Some(id);
                Ok(if found {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            })
        })?;
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// One join key: its build expression, its probe expression, and the build values'
/// minimum and maximum so far (`None`: a type without an order, left unbounded).
type Key = (
    Arc<dyn PhysicalExpr>,
    Arc<dyn PhysicalExpr>,
    Option<(MinAccumulator, MaxAccumulator)>,
);

/// The minimum and maximum of each build-side join key, gathered batch by batch.
pub(super) struct KeyBounds {
    keys: Vec<Key>,
    probe_schema: SchemaRef,
    null_equality: NullEquality,
    rows: usize,
}

impl KeyBounds {
    /// Bounds of `join`'s build keys, to filter its probe side.
    pub(super) fn new(join: &HashJoinExec) -> Result<KeyBounds> {
        let build_schema = join.left().schema();
        let keys = join
            .on()
            .iter()
            .map(|(build, probe)| {
                // Min and max work on a dictionary's values.
                let mut t = build.data_type(&build_schema)?;
                while let DataType::Dictionary(_, v) = t {
                    t = *v;
                }
                let acc = MinAccumulator::try_new(&t)
                    .and_then(|min| Ok((min, MaxAccumulator::try_new(&t)?)))
                    .ok();
                Ok((Arc::clone(build), Arc::clone(probe), acc))
            })
            .collect::<Result<_>>()?;
        Ok(KeyBounds {
            keys,
            probe_schema: join.right().schema(),
            null_equality: join.null_equality(),
            rows: 0,
        })
    }

    /// Takes in one build-side batch.
    pub(super) fn update(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        for (build, _, acc) in &mut self.keys {
            if let Some((min, max)) = acc {
                let values = build.evaluate(batch)?.into_array(batch.num_rows())?;
                min.update_batch(std::slice::from_ref(&values))?;
                max.update_batch(std::slice::from_ref(&values))?;
            }
        }
        Ok(())
    }

    /// Fills `filter` with the bounds gathered and marks it complete: probe rows outside
    /// them match no build row. An empty build side leaves it as it is, as DataFusion does.
    pub(super) fn publish(self, filter: &DynamicFilterPhysicalExpr) -> Result<()> {
        let mut predicate: Option<Arc<dyn PhysicalExpr>> = None;
        let mut nullable_keys = Vec::new();
        if self.rows > 0 {
            for (_, probe, acc) in self.keys {
                if probe.nullable(&self.probe_schema)? {
                    nullable_keys.push(Arc::clone(&probe));
                }
                let Some((mut min, mut max)) = acc else {
                    continue;
                };
                let (min, max) = (min.evaluate()?, max.evaluate()?);
                // Only NULL keys: nothing to bound by.
                if min.is_null() || max.is_null() {
                    continue;
                }
                let range = and(
                    compare(&probe, Operator::GtEq, min),
                    compare(&probe, Operator::LtEq, max),
                );
                predicate = Some(match predicate {
                    Some(p) => and(p, range),
                    None => range,
                });
            }
        }
        if let Some(mut p) = predicate {
            // A join where NULL equals NULL matches NULL probe keys too.
            if self.null_equality == NullEquality::NullEqualsNull {
                for key in nullable_keys {
                    p = Arc::new(BinaryExpr::new(
                        Arc::new(IsNullExpr::new(key)),
                        Operator::Or,
                        p,
                    ));
                }
            }
            filter.update(p)?;
        }
        filter.mark_complete();
        Ok(())
    }
}

fn compare(key: &Arc<dyn PhysicalExpr>, op: Operator, value: ScalarValue) -> Arc<dyn PhysicalExpr> {
    Arc::new(BinaryExpr::new(Arc::clone(key), op, lit(value)))
}

fn and(a: Arc<dyn PhysicalExpr>, b: Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
    Arc::new(BinaryExpr::new(a, Operator::And, b))
}
