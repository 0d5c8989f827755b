//! [`StageExec`]: the write of a model's rows as a plan node, so that it runs where the rows
//! are computed (a cluster's executors) instead of funnelling them through one process.
//!
//! Each output partition of its input is staged by the same writer lanes as a local write,
//! into the output's staging folder, under an attempt token of its own (a retried task never
//! writes another attempt's file names). Its output is one row per file it finished: the
//! client publishes exactly those files, so files of a failed or cancelled task attempt are
//! staged but listed by no manifest, and removed with the run's staging.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use serde::{Deserialize, Serialize};

use super::{SinkSpec, UnitSlot};
use crate::config::{Format, ParquetCompression, WriteMode};
use crate::store::Location;
use crate::table::{ManifestFile, StagedFile};

/// Where and how a [`StageExec`] writes: everything a remote process needs, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StageTarget {
    /// The output folder, as a URL.
    pub output: String,
    /// The staging area's leases folder and files folder, as URLs.
    pub staging: (String, String),
    /// The writing run.
    pub run_id: String,
    /// The unit's key.
    pub unit: String,
    /// The unit attempt's token; each task adds its own.
    pub attempt: String,
    /// `parquet`, `csv` or `json`.
    pub format: String,
    /// How Parquet files are compressed.
    #[serde(default)]
    pub compression: ParquetCompression,
    /// Hive partition columns.
    pub partition_by: Vec<String>,
    /// Rows per file.
    pub target_rows_per_file: usize,
    /// Bytes per file.
    pub target_file_size: u64,
    /// Writer lanes per task.
    pub parallelism: usize,
    /// Memory a task's writers may buffer.
    pub buffer_budget: usize,
    /// Keep each partition's row order (one lane per partition).
    pub preserve_order: bool,
}

impl StageTarget {
    /// The target of writing `spec`'s output into `staging` as `slot`.
    pub(crate) fn new(
        spec: &SinkSpec,
        staging: &crate::table::staging::StagingArea,
        run_id: &str,
        slot: &UnitSlot,
    ) -> StageTarget {
        StageTarget {
            output: spec.location.url().to_string(),
            staging: staging.urls(),
            run_id: run_id.to_string(),
            unit: slot.unit.clone(),
            attempt: slot.attempt.clone(),
            format: spec.format.name().to_string(),
            compression: spec.compression,
            partition_by: spec.partition_by.clone(),
            target_rows_per_file: spec.target_rows_per_file,
            target_file_size: spec.target_file_size,
            parallelism: spec.parallelism,
            buffer_budget: spec.buffer_budget,
            preserve_order: spec.preserve_order,
        }
    }

    /// The sink spec a task writes by (what only the publish needs is left at defaults).
    fn spec(&self, memory: Arc<dyn MemoryPool>) -> Result<SinkSpec> {
        let location = Location::parse(&self.output).map_err(external)?;
        let format = Format::parse(&self.format).ok_or_else(|| {
            DataFusionError::Plan(format!("unknown output format {:?}", self.format))
        })?;
        Ok(SinkSpec {
            location,
            append_id: None,
            format,
            partition_by: self.partition_by.clone(),
            mode: WriteMode::Overwrite,
            target_rows_per_file: self.target_rows_per_file,
            target_file_size: self.target_file_size,
            compression: self.compression,
            parallelism: self.parallelism.max(1),
            buffer_budget: self.buffer_budget,
            memory,
            preserve_order: self.preserve_order,
            adopt: false,
            staging: None,
        })
    }
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Writes its input into an output's staging folder; outputs the files it staged.
#[derive(Debug)]
pub(crate) struct StageExec {
    input: Arc<dyn ExecutionPlan>,
    target: StageTarget,
    props: Arc<PlanProperties>,
}

impl StageExec {
    /// Stages `input`'s rows as `target` says.
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, target: StageTarget) -> StageExec {
        let partitions = input.output_partitioning().partition_count();
        let props = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(staged_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        StageExec {
            input,
            target,
            props,
        }
    }

    /// Where it writes.
    pub(crate) fn target(&self) -> &StageTarget {
        &self.target
    }

    /// The files listed by batches of its output.
    pub(crate) fn files_of(batches: &[RecordBatch]) -> Result<Vec<StagedFile>> {
        let mut out = Vec::new();
        for b in batches {
            let text = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| DataFusionError::Internal("staged files: bad column".into()))
            };
            let number = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .ok_or_else(|| DataFusionError::Internal("staged files: bad column".into()))
            };
            let (staged, path, rows, bytes) = (text(0)?, text(1)?, number(2)?, number(3)?);
            for i in 0..b.num_rows() {
                out.push(StagedFile {
                    staged: staged.value(i).to_string(),
                    file: ManifestFile {
                        path: path.value(i).to_string(),
                        rows: rows.value(i),
                        bytes: bytes.value(i),
                        period: None,
                        merged: Vec::new(),
                        schema_only: false,
                    },
                });
            }
        }
        Ok(out)
    }
}

/// The output of a [`StageExec`]: one row per staged file.
fn staged_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("staged", DataType::Utf8, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
    ]))
}

impl DisplayAs for StageExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StageExec: {} {} into staging of run {}",
            self.target.format, self.target.output, self.target.run_id
        )
    }
}

impl ExecutionPlan for StageExec {
    fn name(&self) -> &str {
        "StageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| DataFusionError::Internal("StageExec takes one input".into()))?;
        Ok(Arc::new(StageExec::new(input, self.target.clone())))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let target = self.target.clone();
        // The executor's pool: its tasks' writers reserve their buffers there.
        let memory = Arc::clone(&context.runtime_env().memory_pool);
        let work = async move {
            let spec = target.spec(memory)?;
            let staging =
                crate::table::staging::StagingArea::from_urls(&target.staging.0, &target.staging.1)
                    .map_err(external)?;
            let store_url = ObjectStoreUrl::parse(spec.location.store_url().as_str())?;
            let store = context.runtime_env().object_store(&store_url)?;
            // A token per task attempt: a retried task never writes a name another attempt
            // wrote (or is still writing).
            let slot = UnitSlot {
                unit: target.unit.clone(),
                attempt: format!(
                    "{}-{partition:04x}-{:08x}",
                    target.attempt,
                    rand::random::<u32>()
                ),
            };
            let staged =
                super::stage_into(store, staging, &spec, input, &target.run_id, slot, &|_| {})
                    .await
                    .map_err(external)?;
            let files = &staged.files;
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(
                    files.iter().map(|f| f.staged.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    files.iter().map(|f| f.file.path.as_str()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    files.iter().map(|f| f.file.rows),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    files.iter().map(|f| f.file.bytes),
                )),
            ];
            Ok(RecordBatch::try_new(staged_schema(), columns)?)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            staged_schema(),
            futures::stream::once(work),
        )))
    }
}
