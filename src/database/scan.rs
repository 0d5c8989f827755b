//! A database source as a DataFusion table ([`DatabaseTable`]), and the plan node that reads
//! it ([`DatabaseScanExec`]): the projected columns of the table or query, copied out with
//! the database's bulk path (PostgreSQL: binary COPY) on a session of the database's pool,
//! and decoded into batches as they arrive. Filters are applied by DataFusion above the scan
//! (pushing them into the SQL is the next step of issue 14). The SQL sent is shown in
//! EXPLAIN.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

use super::postgres::copy_decode::{CopyDecoder, Wire};
use super::postgres::{self, UNSUPPORTED};
use super::{DatabaseError, Pool};
use crate::config::{DatabaseSourceConfig, Relation};

/// A database source, registered under its name.
#[derive(Debug)]
pub(crate) struct DatabaseTable {
    /// The source's definition.
    pub(crate) spec: DatabaseSourceConfig,
    pool: Arc<Pool>,
    schema: SchemaRef,
    wires: Vec<Option<Wire>>,
}

impl DatabaseTable {
    /// The source `spec` over `pool`'s database: its columns as the server describes them.
    pub(crate) async fn open(
        spec: DatabaseSourceConfig,
        pool: Arc<Pool>,
    ) -> Result<DatabaseTable, DatabaseError> {
        if !super::readable(pool.config.url.kind) {
            return Err(pool.error(
                format!(
                    "source '{}': reading {} databases is not built yet (PostgreSQL is)",
                    spec.name,
                    pool.config.url.kind.name()
                ),
                false,
            ));
        }
        let session = postgres::connect(&pool).await?;
        let (schema, wires) = postgres::describe(&pool, &session, &spec.relation).await?;
        Ok(DatabaseTable {
            spec,
            pool,
            schema,
            wires,
        })
    }

    /// What the source reads, for messages: `table public.orders` or `the query of source x`.
    fn what(&self) -> String {
        match &self.spec.relation {
            Relation::Table(t) => format!("table {t}"),
            Relation::Query(_) => format!("the query of source '{}'", self.spec.name),
        }
    }
}

#[async_trait]
impl TableProvider for DatabaseTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut wires = Vec::new();
        for &i in &columns {
            match self.wires.get(i).copied().flatten() {
                Some(w) => wires.push(w),
                None => {
                    let field = self.schema.field(i);
                    let ty = field
                        .metadata()
                        .get(UNSUPPORTED)
                        .cloned()
                        .unwrap_or_default();
                    return Err(DataFusionError::External(Box::new(self.pool.error(
                        format!(
                            "{}: column {} has type {ty}, which sluice cannot read; select it \
                             cast to text in a `query` source (e.g. {}::text AS {})",
                            self.what(),
                            field.name(),
                            postgres::quote_ident(field.name()),
                            postgres::quote_ident(field.name()),
                        ),
                        false,
                    ))));
                }
            }
        }
        let out_schema = Arc::new(self.schema.project(&columns)?);
        let select = if columns.is_empty() {
            // (Only the row count is wanted: COPY sends rows of no fields.)
            String::new()
        } else {
            columns
                .iter()
                .map(|&i| postgres::quote_ident(self.schema.field(i).name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql = format!(
            "SELECT {select} FROM {}",
            postgres::from_item(&self.spec.relation)
        );
        Ok(Arc::new(DatabaseScanExec {
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&out_schema)),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            source: self.spec.name.clone(),
            what: self.what(),
            pool: Arc::clone(&self.pool),
            schema: out_schema,
            wires,
            sql,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

/// Reads a database source's rows: one query, copied out in the database's bulk format.
pub(crate) struct DatabaseScanExec {
    props: Arc<PlanProperties>,
    source: String,
    what: String,
    pool: Arc<Pool>,
    schema: SchemaRef,
    wires: Vec<Wire>,
    sql: String,
    metrics: ExecutionPlanMetricsSet,
}

impl DatabaseScanExec {
    /// The source it reads.
    pub(crate) fn source_name(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for DatabaseScanExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseScanExec({})", self.source)
    }
}

impl DisplayAs for DatabaseScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "DatabaseScanExec: source={} database={} sql={}",
            self.source, self.pool.config.name, self.sql
        )
    }
}

impl ExecutionPlan for DatabaseScanExec {
    fn name(&self) -> &str {
        "DatabaseScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    crate::physical::leaf_plan_methods!();

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let mut builder = RecordBatchReceiverStream::builder(Arc::clone(&self.schema), 2);
        let tx = builder.tx();
        let pool = Arc::clone(&self.pool);
        let (schema, wires) = (Arc::clone(&self.schema), self.wires.clone());
        let copy = format!("COPY ({}) TO STDOUT (FORMAT binary)", self.sql);
        let what = self.what.clone();
        let batch_rows = context.session_config().batch_size();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        builder.spawn(async move {
            let fail = |e: DatabaseError| DataFusionError::External(Box::new(e));
            let session = postgres::connect(&pool).await.map_err(fail)?;
            let reading = format!("reading {what}");
            let stream = session
                .client
                .copy_out(copy.as_str())
                .await
                .map_err(|e| fail(postgres::server_error(&pool, &e, &reading)))?;
            let mut stream = std::pin::pin!(stream);
            let mut decoder = CopyDecoder::new(schema, wires, batch_rows);
            let decode_err = |e: super::postgres::copy_decode::DecodeError| {
                fail(pool.error(format!("{reading}: {e}"), false))
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| fail(postgres::server_error(&pool, &e, &reading)))?;
                for batch in decoder.push(&chunk).map_err(decode_err)? {
                    baseline.record_output(batch.num_rows());
                    if tx.send(Ok(batch)).await.is_err() {
                        // The consumer is gone (a LIMIT, a failed query): dropping the
                        // session ends the COPY.
                        return Ok(());
                    }
                }
            }
            if let Some(batch) = decoder.finish().map_err(decode_err)? {
                baseline.record_output(batch.num_rows());
                let _ = tx.send(Ok(batch)).await;
            }
            baseline.done();
            drop(session);
            Ok(())
        });
        Ok(builder.build())
    }
}
