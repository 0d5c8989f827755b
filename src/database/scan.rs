//! A database source as a DataFusion table ([`DatabaseTable`]), and the plan node that reads
//! it ([`DatabaseScanExec`]): the projected columns of the table or query, copied out with
//! the database's bulk path (PostgreSQL: binary COPY) on a session of the database's pool,
//! and decoded into batches as they arrive, in ranges of its `partition_column` when it has
//! one ([`super::import`]), with the filters the database can apply exactly
//! ([`super::pushdown`]). The SQL sent is shown in EXPLAIN and logged.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::{RecordBatchReceiverStream, RecordBatchStreamAdapter};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

use super::import::{ImportGroup, Role};
use super::postgres::copy_decode::{CopyDecoder, Wire};
use super::postgres::{self, UNSUPPORTED};
use super::{DatabaseError, Pool};
use crate::config::{BoundValue, DatabaseSourceConfig, Relation};

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
        session.park().await;
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

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // (Applied again by DataFusion after the scan: the database only narrows the read.)
        Ok(filters
            .iter()
            .map(|f| match super::pushdown::render(f, &self.schema) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
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
        let from = postgres::from_item(&self.spec.relation);
        let ranges = self
            .ranges()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let pushed: Vec<String> = filters
            .iter()
            .filter_map(|f| super::pushdown::render(f, &self.schema))
            .collect();
        let queries: Vec<String> = ranges
            .iter()
            .map(|r| {
                let conditions: Vec<String> = r
                    .iter()
                    .map(|c| format!("({c})"))
                    .chain(pushed.iter().cloned())
                    .collect();
                if conditions.is_empty() {
                    format!("SELECT {select} FROM {from}")
                } else {
                    format!(
                        "SELECT {select} FROM {from} WHERE {}",
                        conditions.join(" AND ")
                    )
                }
            })
            .collect();
        tracing::info!(
            source = %self.spec.name,
            ranges = queries.len(),
            "reading database '{}': {}",
            self.pool.config.name,
            queries.first().map_or("", String::as_str)
        );
        let workers = queries.len().min(self.pool.config.max_connections).max(1);
        let sql = match queries.as_slice() {
            [one] => one.clone(),
            [first, ..] => format!("{first} (and {} more ranges)", queries.len() - 1),
            [] => String::new(),
        };
        Ok(Arc::new(DatabaseScanExec {
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&out_schema)),
                Partitioning::UnknownPartitioning(workers),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            source: self.spec.name.clone(),
            what: self.what(),
            pool: Arc::clone(&self.pool),
            schema: out_schema,
            wires,
            sql,
            ranges: queries.len(),
            group: Arc::new(ImportGroup::new(queries.clone())),
            queries,
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

impl DatabaseTable {
    /// The conditions of the ranges a scan reads (one `None`: the whole relation at once).
    async fn ranges(&self) -> Result<Vec<Option<String>>, DatabaseError> {
        let Some(column) = &self.spec.partition_column else {
            return Ok(vec![None]);
        };
        let n = self
            .spec
            .partitions
            .unwrap_or(self.pool.config.max_connections);
        let index = self.schema.index_of(column).map_err(|_| {
            self.pool.error(
                format!(
                    "source '{}': partition_column '{column}' is not a column of {}",
                    self.spec.name,
                    self.what()
                ),
                false,
            )
        })?;
        if !matches!(
            self.wires[index],
            Some(Wire::Int2 | Wire::Int4 | Wire::Int8)
        ) {
            return Err(self.pool.error(
                format!(
                    "source '{}': partition_column '{column}' is of type {}: ranges are of \
                     whole-number columns (smallint, integer, bigint)",
                    self.spec.name,
                    self.schema.field(index).data_type()
                ),
                false,
            ));
        }
        let quoted = postgres::quote_ident(column);
        let (lo, hi) = match &self.spec.bounds {
            Some((BoundValue::Int(lo), BoundValue::Int(hi))) => (*lo, *hi),
            Some(_) => {
                return Err(self.pool.error(
                    format!(
                        "source '{}': lower_bound and upper_bound of '{column}' must be whole \
                         numbers",
                        self.spec.name
                    ),
                    false,
                ));
            }
            None => {
                let session = postgres::connect(&self.pool).await?;
                let sql = format!(
                    "SELECT min({quoted})::int8, max({quoted})::int8 FROM {}",
                    postgres::from_item(&self.spec.relation)
                );
                let doing = format!("reading the bounds of {column} in {}", self.what());
                let row = session
                    .client()
                    .query_one(&sql, &[])
                    .await
                    .map_err(|e| postgres::server_error(&self.pool, &e, &doing))?;
                session.park().await;
                let lo: Option<i64> = row.get(0);
                let hi: Option<i64> = row.get(1);
                match (lo, hi) {
                    (Some(lo), Some(hi)) => (lo, hi),
                    // No value: one range reads whatever there is (NULLs).
                    _ => return Ok(vec![None]),
                }
            }
        };
        Ok(super::import::int_ranges(&quoted, lo, hi, n))
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
    /// The first range's SQL (and how many more), for EXPLAIN.
    sql: String,
    ranges: usize,
    /// The SQL of every range.
    queries: Vec<String>,
    group: Arc<ImportGroup>,
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
            "DatabaseScanExec: source={} database={} ranges={} sql={}",
            self.source, self.pool.config.name, self.ranges, self.sql
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
        let (pool, group, schema) = (
            Arc::clone(&self.pool),
            Arc::clone(&self.group),
            Arc::clone(&self.schema),
        );
        let (wires, reading) = (self.wires.clone(), format!("reading {}", self.what));
        let batch_rows = context.session_config().batch_size();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        // The worker starts (and takes a connection) when the stream is first polled, not
        // when it is created: a join creates its probe side's stream before it has read its
        // build side, and a probe side holding every connection would starve the build side.
        let start = {
            let schema = Arc::clone(&schema);
            async move {
                let mut builder = RecordBatchReceiverStream::builder(Arc::clone(&schema), 2);
                let worker = Worker {
                    tx: builder.tx(),
                    pool,
                    group,
                    schema,
                    wires,
                    reading,
                    batch_rows,
                    baseline,
                };
                builder.spawn(async move { worker.run().await });
                builder.build()
            }
        };
        let stream = futures::stream::once(start).flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        // A recursive query runs its recursive part again: with its ranges all to read.
        Ok(Arc::new(DatabaseScanExec {
            props: Arc::clone(&self.props),
            source: self.source.clone(),
            what: self.what.clone(),
            pool: Arc::clone(&self.pool),
            schema: Arc::clone(&self.schema),
            wires: self.wires.clone(),
            sql: self.sql.clone(),
            ranges: self.ranges,
            queries: self.queries.clone(),
            group: Arc::new(ImportGroup::new(self.queries.clone())),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

/// One partition of a scan: a connection that reads ranges of the import until none is left.
struct Worker {
    tx: tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    pool: Arc<Pool>,
    group: Arc<ImportGroup>,
    schema: SchemaRef,
    wires: Vec<Wire>,
    reading: String,
    batch_rows: usize,
    baseline: BaselineMetrics,
}

impl Worker {
    fn fail(e: DatabaseError) -> DataFusionError {
        DataFusionError::External(Box::new(e))
    }

    async fn run(self) -> Result<()> {
        let session = postgres::connect(&self.pool).await.map_err(Self::fail)?;
        let client = session.client();
        let begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
        let role = self
            .group
            .role()
            .await
            .map_err(|e| Self::fail(self.pool.error(e, false)))?;
        let exporter = match role {
            Role::Idle => {
                session.park().await;
                return Ok(());
            }
            Role::Export => {
                let exported = async {
                    client.batch_execute(begin).await?;
                    let row = client.query_one("SELECT pg_export_snapshot()", &[]).await?;
                    row.try_get::<_, String>(0)
                }
                .await;
                match exported {
                    Ok(id) => self.group.exported(Ok(id)),
                    Err(e) => {
                        let e = postgres::server_error(&self.pool, &e, "exporting a snapshot");
                        self.group.exported(Err(e.to_string()));
                        return Err(Self::fail(e));
                    }
                }
                true
            }
            Role::Import(id) => {
                let imported = client
                    .batch_execute(&format!("{begin}; SET TRANSACTION SNAPSHOT '{id}'"))
                    .await;
                self.group.imported();
                imported.map_err(|e| {
                    Self::fail(postgres::server_error(
                        &self.pool,
                        &e,
                        "taking the import's snapshot",
                    ))
                })?;
                false
            }
        };
        let read = self.read_ranges(&session).await;
        if exporter {
            match &read {
                // Another worker may still be taking the snapshot: the transaction stays
                // open until it has.
                Ok(_) => self.group.close().await,
                Err(e) => self.group.fail(e.to_string()),
            }
        }
        // Only a session that read to the end is committed and reused: one left mid-COPY
        // (the consumer went away, a value failed to decode) would first have to page
        // through the rest of the rows; it is dropped, which cuts it.
        if let Ok(true) = read
            && client.batch_execute("COMMIT").await.is_ok()
        {
            // Healthy, outside any transaction: the next asker may use it.
            session.park().await;
        }
        read.map(|_| ())
    }

    /// Reads ranges until none is left; `Ok(false)` when the consumer went away.
    async fn read_ranges(&self, session: &postgres::Session) -> Result<bool> {
        while let Some(sql) = self.group.next_range() {
            let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
            let stream = session
                .client()
                .copy_out(copy.as_str())
                .await
                .map_err(|e| Self::fail(postgres::server_error(&self.pool, &e, &self.reading)))?;
            let mut stream = std::pin::pin!(stream);
            let mut decoder = CopyDecoder::new(
                Arc::clone(&self.schema),
                self.wires.clone(),
                self.batch_rows,
            );
            let decode_err = |e: super::postgres::copy_decode::DecodeError| {
                Self::fail(self.pool.error(format!("{}: {e}", self.reading), false))
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    Self::fail(postgres::server_error(&self.pool, &e, &self.reading))
                })?;
                for batch in decoder.push(&chunk).map_err(decode_err)? {
                    self.baseline.record_output(batch.num_rows());
                    if self.tx.send(Ok(batch)).await.is_err() {
                        // The consumer is gone (a LIMIT, a failed query): dropping the
                        // session ends the COPY.
                        return Ok(false);
                    }
                }
            }
            if let Some(batch) = decoder.finish().map_err(decode_err)? {
                self.baseline.record_output(batch.num_rows());
                if self.tx.send(Ok(batch)).await.is_err() {
                    return Ok(false);
                }
            }
        }
        self.baseline.done();
        Ok(true)
    }
}
