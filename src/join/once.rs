//! [`OnceExec`]: the leaf plans the grace join feeds its in-memory hash joins with, each
//! partition a stream opened on first poll, once.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{Stream, StreamExt};

/// Opens one partition's stream, when it is first polled.
pub(super) type Opener = Box<dyn FnOnce() -> Result<SendableRecordBatchStream> + Send>;

/// A leaf plan whose partitions are streams opened on first poll, each once: the probe
/// side of the in-memory join (the child's partitions), or a bucket's rows.
pub(super) struct OnceExec {
    openers: Vec<Mutex<Option<Opener>>>,
    props: Arc<PlanProperties>,
    schema: SchemaRef,
}

impl OnceExec {
    pub(super) fn plan(schema: SchemaRef, openers: Vec<Opener>) -> Arc<dyn ExecutionPlan> {
        Arc::new(OnceExec {
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&schema)),
                Partitioning::UnknownPartitioning(openers.len()),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            openers: openers.into_iter().map(|o| Mutex::new(Some(o))).collect(),
            schema,
        })
    }
}

impl fmt::Debug for OnceExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GraceJoinInput")
    }
}

impl DisplayAs for OnceExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GraceJoinInput")
    }
}

impl ExecutionPlan for OnceExec {
    fn name(&self) -> &str {
        "GraceJoinInput"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    crate::physical::leaf_plan_methods!();

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let opener = self
            .openers
            .get(partition)
            .and_then(|o| o.lock().ok().and_then(|mut o| o.take()))
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "grace join: input partition {partition} opened twice"
                ))
            })?;
        Ok(Box::pin(LazyStream {
            opener: Some(opener),
            inner: None,
            schema: Arc::clone(&self.schema),
        }))
    }
}

/// Opens its stream on first poll.
struct LazyStream {
    opener: Option<Opener>,
    inner: Option<SendableRecordBatchStream>,
    schema: SchemaRef,
}

impl Stream for LazyStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(open) = self.opener.take() {
            match open() {
                Ok(s) => self.inner = Some(s),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        match self.inner.as_mut() {
            Some(s) => s.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

impl RecordBatchStream for LazyStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
