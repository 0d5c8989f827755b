//! How sluice's own plan nodes travel to a cluster: a datafusion-proto extension codec that
//! the client, the scheduler and every executor install (the same one in all three).
//!
//! It encodes [`GraceHashJoinExec`] and [`StageExec`], and sluice's SQL functions, and hands
//! everything else to Ballista's codec (its shuffle nodes, DataFusion's file formats). A node
//! neither knows is refused by name: [`check`] finds it before a job is submitted.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion_proto::physical_plan::{
    AsExecutionPlan, PhysicalExtensionCodec, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::PhysicalPlanNode;
use serde::{Deserialize, Serialize};

use crate::join::{Choice, Distribution, GraceHashJoinExec};
use crate::quarantine::QuarantineScan;
use crate::quarantine::wire::ScanWire;
use crate::sink::exec::{StageExec, StageTarget};

/// Marks a node encoded by this codec: a first byte no protobuf message starts with, so it
/// is never taken for one of Ballista's nodes (nor theirs for ours).
const MAGIC: &[u8] = b"\xffsluice\x01";

/// A sluice node on the wire (its inputs travel as the plan's children).
#[derive(Serialize, Deserialize)]
enum Node {
    /// A grace hash join: the hash join it runs, encoded by DataFusion over placeholder
    /// inputs, and the plan-time decision.
    GraceJoin {
        join: Vec<u8>,
        choice: Choice,
        /// `GraceHashJoinExec::distribution`.
        distribution: Option<Distribution>,
    },
    /// A staged write.
    Stage(StageTarget),
    /// sluice's scan of CSV and JSON files.
    Quarantine(ScanWire),
}

/// sluice's physical extension codec, over Ballista's.
#[derive(Debug, Default)]
pub(crate) struct SluiceCodec {
    inner: BallistaPhysicalExtensionCodec,
}

fn bad(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("cannot decode a sluice {what}: {e}"))
}

impl PhysicalExtensionCodec for SluiceCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(body) = buf.strip_prefix(MAGIC) else {
            return self.inner.try_decode(buf, inputs, ctx, converter);
        };
        let node: Node = serde_json::from_slice(body).map_err(|e| bad("plan node", e))?;
        match node {
            Node::Stage(target) => {
                let [input] = inputs else {
                    return Err(bad("write", "it takes one input"));
                };
                Ok(Arc::new(StageExec::new(Arc::clone(input), target)))
            }
            Node::Quarantine(wire) => Ok(Arc::new(QuarantineScan::from_wire(wire, ctx)?)),
            Node::GraceJoin {
                join,
                choice,
                distribution,
            } => {
                let placeholder = replace_children_if_necessary(
                    PhysicalPlanNode::try_decode(&join)?.try_into_physical_plan(ctx, self)?,
                    inputs.to_vec(),
                )?;
                let join = placeholder
                    .downcast_ref::<HashJoinExec>()
                    .ok_or_else(|| bad("join", "not a hash join"))?;
                let grace = GraceHashJoinExec::try_new(join, choice)?;
                Ok(Arc::new(match distribution {
                    Some(distribution) => grace.distributed(distribution),
                    None => grace,
                }))
            }
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let ours = if let Some(stage) = node.downcast_ref::<StageExec>() {
            Node::Stage(stage.target().clone())
        } else if let Some(scan) = node.downcast_ref::<QuarantineScan>() {
            Node::Quarantine(
                scan.to_wire()?
                    .ok_or_else(|| DataFusionError::NotImplemented(SETS_ASIDE.into()))?,
            )
        } else if let Some(grace) = node.downcast_ref::<GraceHashJoinExec>() {
            // The hash join alone: its inputs are replaced by empty placeholders of their
            // schemas, and put back from the decoded children.
            let join = Arc::clone(grace.join()) as Arc<dyn ExecutionPlan>;
            let placeholders = join
                .children()
                .iter()
                .map(|c| Arc::new(EmptyExec::new(c.schema())) as Arc<dyn ExecutionPlan>)
                .collect();
            let join = replace_children_if_necessary(join, placeholders)?;
            let mut bytes = Vec::new();
            PhysicalPlanNode::try_from_physical_plan(join, self)?.try_encode(&mut bytes)?;
            Node::GraceJoin {
                join: bytes,
                choice: grace.choice().clone(),
                distribution: grace.distribution(),
            }
        } else {
            return self
                .inner
                .try_encode(Arc::clone(&node), buf, converter)
                .map_err(|_| {
                    DataFusionError::NotImplemented(format!(
                        "{} cannot run on a cluster yet",
                        node.name()
                    ))
                });
        };
        buf.extend_from_slice(MAGIC);
        serde_json::to_writer(buf, &ours).map_err(|e| DataFusionError::External(Box::new(e)))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        match crate::engine::udf::key_buckets(node) {
            Some(n) => {
                buf.extend_from_slice(MAGIC);
                buf.extend_from_slice(n.to_string().as_bytes());
                Ok(())
            }
            None => self.inner.try_encode_udf(node, buf),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        match buf.strip_prefix(MAGIC) {
            Some(n) => {
                let n: usize = std::str::from_utf8(n)
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| bad("function", name))?;
                Ok(Arc::new(crate::engine::udf::key_bucket(n)))
            }
            None => self.inner.try_decode_udf(name, buf),
        }
    }
}

/// What a quarantine scan that sets bad rows aside is called when it is refused.
const SETS_ASIDE: &str = "QuarantineScan of a source with on_bad_rows = \"quarantine\" (its \
                          rejects would be gathered by the executors, not the run)";

/// The first node of `plan` that cannot travel to a cluster, by name, or `None` when the
/// whole plan can. (Encoding it is the test: exactly what submitting would do.)
pub(crate) fn check(plan: &Arc<dyn ExecutionPlan>, codec: &SluiceCodec) -> Option<String> {
    match PhysicalPlanNode::try_from_physical_plan(Arc::clone(plan), codec) {
        Ok(_) => None,
        Err(e) => Some(unsupported_node(plan, codec).unwrap_or_else(|| e.to_string())),
    }
}

/// The deepest node whose own encoding fails (its children encode).
fn unsupported_node(plan: &Arc<dyn ExecutionPlan>, codec: &SluiceCodec) -> Option<String> {
    for child in plan.children() {
        if PhysicalPlanNode::try_from_physical_plan(Arc::clone(child), codec).is_err() {
            return unsupported_node(child, codec);
        }
    }
    match plan.downcast_ref::<QuarantineScan>() {
        Some(_) => Some(SETS_ASIDE.to_string()),
        None => Some(plan.name().to_string()),
    }
}
