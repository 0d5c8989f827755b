//! A database source as a DataFusion table ([`DatabaseTable`]), and the plan node that reads
//! it ([`DatabaseScanExec`]): the projected columns of the table or query, read with the
//! database's bulk path (PostgreSQL: binary COPY; MySQL and MariaDB: the binary protocol's
//! rows) on a session of the database's pool, and decoded into batches as they arrive, in
//! ranges of its `partition_column` when it has one ([`super::import`]), with the filters
//! the database can apply exactly ([`super::pushdown`]). The SQL sent is shown in EXPLAIN
//! and logged.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result, ScalarValue};
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
use mysql_async::prelude::Queryable;

use super::guard::LagConn;
use super::import::{ImportGroup, Role};
use super::mysql::decode::{RowDecoder, Wire as MyWire};
use super::postgres::copy_decode::{CopyDecoder, Wire as PgWire};
use super::pushdown::Dialect;
use super::{DatabaseError, Pool, UNSUPPORTED, mysql, postgres};
use crate::config::{BoundValue, DatabaseKind, DatabaseSourceConfig, Relation};

/// How each column of a source is read, by the kind of its database (`None`: a type sluice
/// cannot read).
#[derive(Debug, Clone)]
enum Reads {
    Postgres(Vec<Option<PgWire>>),
    Mysql(Vec<Option<MyWire>>),
}

/// How the columns a scan selects are read.
#[derive(Debug, Clone)]
enum Wires {
    Postgres(Vec<PgWire>),
    Mysql(Vec<MyWire>),
}

impl Reads {
    /// The wires of `columns`, or the first of them sluice cannot read.
    fn project(&self, columns: &[usize]) -> Result<Wires, usize> {
        fn pick<W: Copy>(all: &[Option<W>], columns: &[usize]) -> Result<Vec<W>, usize> {
            columns
                .iter()
                .map(|&i| all.get(i).copied().flatten().ok_or(i))
                .collect()
        }
        Ok(match self {
            Reads::Postgres(all) => Wires::Postgres(pick(all, columns)?),
            Reads::Mysql(all) => Wires::Mysql(pick(all, columns)?),
        })
    }

    /// Whether column `i` can be split in ranges (a whole-number column).
    fn is_whole_number(&self, i: usize) -> bool {
        match self {
            Reads::Postgres(all) => matches!(
                all.get(i).copied().flatten(),
                Some(PgWire::Int2 | PgWire::Int4 | PgWire::Int8)
            ),
            Reads::Mysql(all) => all
                .get(i)
                .copied()
                .flatten()
                .is_some_and(MyWire::is_whole_number),
        }
    }
}

/// What a `partition_column` is split as: whole numbers, days or microseconds since 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeKind {
    Whole,
    Date,
    Timestamp,
}

impl RangeKind {
    /// A configured bound as this kind's number.
    fn bound(self, b: &BoundValue) -> Option<i128> {
        match (self, b) {
            (RangeKind::Whole, BoundValue::Int(i)) => Some(*i),
            (RangeKind::Date, b) => Some(i128::from(b.micros()?.div_euclid(MICROS_A_DAY))),
            (RangeKind::Timestamp, b) => b.micros().map(i128::from),
            _ => None,
        }
    }

    /// What the bounds of this kind must be, for messages.
    fn bounds_are(self) -> &'static str {
        match self {
            RangeKind::Whole => "whole numbers",
            RangeKind::Date => "dates (\"2024-01-09\")",
            RangeKind::Timestamp => "dates or date-times (\"2024-01-09 10:00:00\")",
        }
    }

    /// The unit of this kind's numbers, for messages.
    fn unit(self) -> &'static str {
        match self {
            RangeKind::Whole => "",
            RangeKind::Date => "days since 1970-01-01",
            RangeKind::Timestamp => "microseconds since 1970-01-01",
        }
    }

    /// SQL of the value of `expr` (a column's min or max) as this kind's whole number.
    fn as_whole_number(self, expr: &str, dialect: Dialect) -> String {
        match (self, dialect) {
            (RangeKind::Whole, Dialect::Postgres) => format!("({expr})::int8"),
            (RangeKind::Whole, Dialect::Mysql) => expr.to_string(),
            (RangeKind::Date, Dialect::Postgres) => format!("(({expr}) - DATE '1970-01-01')::int8"),
            (RangeKind::Date, Dialect::Mysql) => format!("DATEDIFF({expr}, '1970-01-01')"),
            // (A timestamp without time zone is taken as UTC, as sluice reads it.)
            (RangeKind::Timestamp, Dialect::Postgres) => {
                format!("floor(extract(epoch FROM {expr}) * 1000000)::int8")
            }
            (RangeKind::Timestamp, Dialect::Mysql) => {
                format!("TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', {expr})")
            }
        }
    }

    /// The literal of this kind's number `v` compared with a column of `data_type`.
    fn literal(self, v: i128, data_type: &DataType, dialect: Dialect) -> Option<String> {
        let value = match self {
            RangeKind::Whole => return Some(v.to_string()),
            RangeKind::Date => ScalarValue::Date32(Some(i32::try_from(v).ok()?)),
            RangeKind::Timestamp => {
                let tz = match data_type {
                    DataType::Timestamp(_, tz) => tz.clone(),
                    _ => None,
                };
                ScalarValue::TimestampMicrosecond(Some(i64::try_from(v).ok()?), tz)
            }
        };
        super::pushdown::literal(&value, data_type, false, dialect)
    }
}

/// Microseconds in a day.
const MICROS_A_DAY: i64 = 86_400_000_000;

/// A database source, registered under its name.
#[derive(Debug)]
pub(crate) struct DatabaseTable {
    /// The source's definition.
    pub(crate) spec: DatabaseSourceConfig,
    pool: Arc<Pool>,
    schema: SchemaRef,
    reads: Reads,
}

impl DatabaseTable {
    /// The source `spec` over `pool`'s database: its columns as the server describes them.
    pub(crate) async fn open(
        spec: DatabaseSourceConfig,
        pool: Arc<Pool>,
    ) -> Result<DatabaseTable, DatabaseError> {
        let (schema, reads) = match pool.config.url.kind {
            DatabaseKind::Postgres => {
                let session = postgres::connect(&pool).await?;
                let (schema, wires) = postgres::describe(&pool, &session, &spec.relation).await?;
                session.park().await;
                (schema, Reads::Postgres(wires))
            }
            DatabaseKind::Mysql => {
                let mut session = mysql::connect(&pool).await?;
                let (schema, wires) = mysql::describe(&pool, &mut session, &spec.relation).await?;
                session.park().await;
                (schema, Reads::Mysql(wires))
            }
        };
        Ok(DatabaseTable {
            spec,
            pool,
            schema,
            reads,
        })
    }

    /// The SQL dialect of the database.
    fn dialect(&self) -> Dialect {
        Dialect::of(self.pool.config.url.kind)
    }

    /// The FROM item of the source's table or query.
    fn relation_sql(&self) -> String {
        self.dialect().relation_sql(&self.spec.relation)
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
            .map(
                |f| match super::pushdown::render(f, &self.schema, self.dialect()) {
                    Some(_) => TableProviderFilterPushDown::Inexact,
                    None => TableProviderFilterPushDown::Unsupported,
                },
            )
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let dialect = self.dialect();
        let wires = match self.reads.project(&columns) {
            Ok(w) => w,
            Err(i) => {
                let field = self.schema.field(i);
                let ty = field
                    .metadata()
                    .get(UNSUPPORTED)
                    .cloned()
                    .unwrap_or_default();
                let q = dialect.quote_ident(field.name());
                let hint = match dialect {
                    Dialect::Postgres => format!("e.g. {q}::text AS {q}"),
                    Dialect::Mysql => {
                        format!("e.g. CAST({q} AS CHAR) AS {q}, or ST_AsText({q}) AS {q}")
                    }
                };
                return Err(DataFusionError::External(Box::new(self.pool.error(
                    format!(
                        "{}: column {} has type {ty}, which sluice cannot read; select it \
                         cast to text in a `query` source ({hint})",
                        self.what(),
                        field.name(),
                    ),
                    false,
                ))));
            }
        };
        let out_schema = Arc::new(self.schema.project(&columns)?);
        let select = if columns.is_empty() {
            // (Only the row count is wanted: PostgreSQL's COPY sends rows of no fields;
            // MySQL needs a value.)
            match dialect {
                Dialect::Postgres => String::new(),
                Dialect::Mysql => "1".to_string(),
            }
        } else {
            columns
                .iter()
                .map(|&i| dialect.quote_ident(self.schema.field(i).name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let from = self.relation_sql();
        let ranges = self
            .ranges()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let pushed: Vec<String> = filters
            .iter()
            .filter_map(|f| super::pushdown::render(f, &self.schema, dialect))
            .collect();
        // A LIMIT with no filter to apply after the scan: each range reads at most that many
        // rows (DataFusion takes the first of them all).
        let limit = match limit {
            Some(n) if filters.is_empty() => format!(" LIMIT {n}"),
            _ => String::new(),
        };
        let queries: Vec<String> = ranges
            .iter()
            .map(|r| {
                let conditions: Vec<String> = r
                    .iter()
                    .map(|c| format!("({c})"))
                    .chain(pushed.iter().cloned())
                    .collect();
                if conditions.is_empty() {
                    format!("SELECT {select} FROM {from}{limit}")
                } else {
                    format!(
                        "SELECT {select} FROM {from} WHERE {}{limit}",
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
        let workers = queries.len().min(self.pool.reader_slots()).max(1);
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
            qualifier: match &self.spec.relation {
                Relation::Table(t) => format!("{t}."),
                Relation::Query(_) => String::new(),
            },
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
            return self.page_ranges().await;
        };
        let n = self.spec.partitions.unwrap_or(self.pool.reader_slots());
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
        let data_type = self.schema.field(index).data_type().clone();
        let kind = if self.reads.is_whole_number(index) {
            RangeKind::Whole
        } else {
            match data_type {
                DataType::Date32 => RangeKind::Date,
                DataType::Timestamp(TimeUnit::Microsecond, _) => RangeKind::Timestamp,
                _ => {
                    return Err(self.pool.error(
                        format!(
                            "source '{}': partition_column '{column}' is of type {data_type}: \
                             ranges are of whole-number, date or timestamp columns",
                            self.spec.name,
                        ),
                        false,
                    ));
                }
            }
        };
        let quoted = self.dialect().quote_ident(column);
        let (lo, hi) = match &self.spec.bounds {
            Some((lo, hi)) => match (kind.bound(lo), kind.bound(hi)) {
                (Some(lo), Some(hi)) => (lo, hi),
                _ => {
                    return Err(self.pool.error(
                        format!(
                            "source '{}': lower_bound and upper_bound of '{column}' must be {}",
                            self.spec.name,
                            kind.bounds_are()
                        ),
                        false,
                    ));
                }
            },
            None => {
                let doing = format!("reading the bounds of {column} in {}", self.what());
                let (min, max) = (format!("min({quoted})"), format!("max({quoted})"));
                let [lo, hi] = [&min, &max].map(|e| kind.as_whole_number(e, self.dialect()));
                let sql = format!("SELECT {lo}, {hi} FROM {}", self.relation_sql());
                let bounds = match self.dialect() {
                    Dialect::Postgres => {
                        let session = postgres::connect(&self.pool).await?;
                        let row = session
                            .client()
                            .query_one(&sql, &[])
                            .await
                            .map_err(|e| postgres::server_error(&self.pool, &e, &doing))?;
                        session.park().await;
                        let lo: Option<i64> = row.get(0);
                        let hi: Option<i64> = row.get(1);
                        lo.zip(hi).map(|(lo, hi)| (i128::from(lo), i128::from(hi)))
                    }
                    Dialect::Mysql => mysql::bounds(&self.pool, &sql, &doing).await?,
                };
                match bounds {
                    Some(b) => b,
                    // No value: one range reads whatever there is (NULLs).
                    None => return Ok(vec![None]),
                }
            }
        };
        let dialect = self.dialect();
        super::import::ranges(&quoted, lo, hi, n, |v| {
            kind.literal(v, &data_type, dialect).ok_or_else(|| {
                self.pool.error(
                    format!(
                        "source '{}': a range of '{column}' would start where no literal of \
                         its type can say ({v} {}; years 1-9999, a MySQL TIMESTAMP \
                         1970-2037): give lower_bound and upper_bound within them",
                        self.spec.name,
                        kind.unit()
                    ),
                    false,
                )
            })
        })
    }
}

impl DatabaseTable {
    /// A PostgreSQL table (14 or later) read without `partition_column`: ranges of its
    /// pages, one per connection the reads may hold (DuckDB's way; Spark-style ranges of a
    /// column would each scan the whole table). Other sources: one range.
    async fn page_ranges(&self) -> Result<Vec<Option<String>>, DatabaseError> {
        let n = self.pool.reader_slots();
        if n < 2 || self.dialect() != Dialect::Postgres {
            return Ok(vec![None]);
        }
        let Relation::Table(_) = &self.spec.relation else {
            return Ok(vec![None]);
        };
        let session = postgres::connect(&self.pool).await?;
        // (A plain table or materialized view: a partitioned one's pages are its
        // partitions'.)
        let row = session
            .client()
            .query_one(
                "SELECT current_setting('server_version_num')::int >= 140000 AND c.relkind IN \
                 ('r', 'm'), pg_relation_size(c.oid) / current_setting('block_size')::int8 \
                 FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&self.relation_sql()],
            )
            .await
            .map_err(|e| {
                postgres::server_error(
                    &self.pool,
                    &e,
                    &format!("measuring {} to read it in ranges", self.what()),
                )
            })?;
        session.park().await;
        let (splits, pages): (bool, i64) = (row.get(0), row.get(1));
        Ok(if splits {
            super::import::page_ranges(pages, n)
        } else {
            vec![None]
        })
    }
}

/// Reads a database source's rows: one query, copied out in the database's bulk format.
pub(crate) struct DatabaseScanExec {
    props: Arc<PlanProperties>,
    source: String,
    what: String,
    /// What columns are named after in messages (`orders.` for table `orders`).
    qualifier: String,
    pool: Arc<Pool>,
    schema: SchemaRef,
    wires: Wires,
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
        let qualifier = self.qualifier.clone();
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
                    qualifier,
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
            qualifier: self.qualifier.clone(),
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
    wires: Wires,
    reading: String,
    qualifier: String,
    batch_rows: usize,
    baseline: BaselineMetrics,
}

impl Worker {
    fn fail(e: DatabaseError) -> DataFusionError {
        DataFusionError::External(Box::new(e))
    }

    async fn run(self) -> Result<()> {
        // (The latency probe runs while a reader or load of the database is under way.)
        let _active = super::guard::enter(&self.pool);
        self.pool
            .guard
            .gate(&self.pool, 0)
            .await
            .map_err(Self::fail)?;
        match &self.wires {
            Wires::Postgres(w) => self.run_postgres(w.clone()).await,
            Wires::Mysql(w) => self.run_mysql(w.clone()).await,
        }
    }

    /// Passes `batch` on (`bytes` of it as the server sent them), counted, then waits while
    /// the database's guards say so; `Ok(false)` when the consumer went away (a LIMIT, a
    /// failed query).
    async fn emit(&self, batch: RecordBatch, bytes: u64) -> Result<bool> {
        let rows = batch.num_rows() as u64;
        self.baseline.record_output(batch.num_rows());
        let stats = self.pool.guard.stats();
        stats.rows_read.fetch_add(rows, Ordering::Relaxed);
        stats.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        if self.tx.send(Ok(batch)).await.is_err() {
            return Ok(false);
        }
        self.pool
            .guard
            .gate(&self.pool, rows)
            .await
            .map_err(Self::fail)?;
        Ok(true)
    }

    /// Reads ranges on a PostgreSQL session: the first worker exports its snapshot, the
    /// others import it.
    async fn run_postgres(&self, wires: Vec<PgWire>) -> Result<()> {
        let session = postgres::connect(&self.pool).await.map_err(Self::fail)?;
        let client = session.client();
        postgres::note_server(&self.pool, client).await;
        // (Before the transaction: waiting inside it would hold back the replica's replay.)
        self.pool
            .guard
            .check_lag(&self.pool, LagConn::Postgres(client))
            .await
            .map_err(Self::fail)?;
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
        let read = self.read_ranges(&session, &wires).await;
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
    async fn read_ranges(&self, session: &postgres::Session, wires: &[PgWire]) -> Result<bool> {
        while let Some(sql) = self.group.next_range() {
            self.pool
                .guard
                .gate(&self.pool, 0)
                .await
                .map_err(Self::fail)?;
            let copy = format!("COPY ({sql}) TO STDOUT (FORMAT binary)");
            let stream = session
                .client()
                .copy_out(copy.as_str())
                .await
                .map_err(|e| Self::fail(postgres::server_error(&self.pool, &e, &self.reading)))?;
            let mut stream = std::pin::pin!(stream);
            let mut decoder =
                CopyDecoder::new(Arc::clone(&self.schema), wires.to_vec(), self.batch_rows);
            let decode_err = |e: super::postgres::copy_decode::DecodeError| {
                Self::fail(self.pool.error(format!("{}: {e}", self.reading), false))
            };
            // Bytes received since the last batch passed on.
            let mut bytes = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    Self::fail(postgres::server_error(&self.pool, &e, &self.reading))
                })?;
                bytes += chunk.len() as u64;
                for batch in decoder.push(&chunk).map_err(decode_err)? {
                    if !self.emit(batch, std::mem::take(&mut bytes)).await? {
                        // The consumer is gone: dropping the session ends the COPY.
                        return Ok(false);
                    }
                }
            }
            if let Some(batch) = decoder.finish().map_err(decode_err)?
                && !self.emit(batch, bytes).await?
            {
                return Ok(false);
            }
        }
        self.baseline.done();
        Ok(true)
    }

    /// Reads ranges on a MySQL or MariaDB session, in a transaction of its own: MySQL
    /// cannot share a snapshot between connections, so each sees the database as of the
    /// moment its transaction started.
    async fn run_mysql(&self, wires: Vec<MyWire>) -> Result<()> {
        let mut session = mysql::connect(&self.pool).await.map_err(Self::fail)?;
        let Some(mut sql) = self.group.next_range() else {
            session.park().await;
            self.baseline.done();
            return Ok(());
        };
        // (Before the transaction, as on PostgreSQL.)
        self.pool
            .guard
            .check_lag(&self.pool, LagConn::Mysql(session.conn()))
            .await
            .map_err(Self::fail)?;
        if let Err(e) = session
            .conn()
            .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
        {
            let e = mysql::server_error(&self.pool, &e, "starting a read-only transaction");
            return Err(Self::fail(e));
        }
        loop {
            if let Err(e) = self.pool.guard.gate(&self.pool, 0).await {
                session.cut();
                return Err(Self::fail(e));
            }
            match self.read_mysql_range(&mut session, &wires, &sql).await {
                Ok(true) => {}
                Ok(false) => {
                    // The consumer is gone (a LIMIT, a failed query): the rest of the
                    // rows are not read, the connection is cut.
                    session.cut();
                    return Ok(());
                }
                Err(e) => {
                    session.cut();
                    return Err(e);
                }
            }
            match self.group.next_range() {
                Some(next) => sql = next,
                None => break,
            }
        }
        if session.conn().query_drop("COMMIT").await.is_ok() {
            // Healthy, outside any transaction: the next asker may use it.
            session.park().await;
        }
        self.baseline.done();
        Ok(())
    }

    /// Reads one range; `Ok(false)` when the consumer went away.
    async fn read_mysql_range(
        &self,
        session: &mut mysql::Session,
        wires: &[MyWire],
        sql: &str,
    ) -> Result<bool> {
        let server =
            |e: mysql_async::Error| Self::fail(mysql::server_error(&self.pool, &e, &self.reading));
        session.reading(true);
        let conn = session.conn();
        let statement = conn.prep(sql).await.map_err(server)?;
        let mut decoder = RowDecoder::new(
            Arc::clone(&self.schema),
            wires.to_vec(),
            self.qualifier.clone(),
            self.batch_rows,
        );
        let decode_err = |e: super::postgres::copy_decode::DecodeError| {
            Self::fail(self.pool.error(format!("{}: {e}", self.reading), false))
        };
        {
            let mut result = conn.exec_iter(&statement, ()).await.map_err(server)?;
            while let Some(row) = result.next().await.map_err(server)? {
                if let Some(batch) = decoder.push(&row).map_err(decode_err)? {
                    // (The protocol's bytes are not counted: the batch's are.)
                    let bytes = batch.get_array_memory_size() as u64;
                    if !self.emit(batch, bytes).await? {
                        return Ok(false);
                    }
                }
            }
        }
        if let Some(batch) = decoder.finish().map_err(decode_err)? {
            let bytes = batch.get_array_memory_size() as u64;
            if !self.emit(batch, bytes).await? {
                return Ok(false);
            }
        }
        conn.close(statement).await.map_err(server)?;
        session.reading(false);
        Ok(true)
    }
}
