//! The rows a relation's filter keeps, measured on a sample of its input where statistics
//! cannot tell.
//!
//! DataFusion estimates a filter from its input's value ranges (min/max statistics): a
//! comparison of a number or date with a constant narrows the range, and the rows with it.
//! Anything else it cannot judge: `p_type = 'ECONOMY ANODIZED STEEL'` (a string's range says
//! nothing of how many rows hold one value) keeps every row in its estimate, `p_name LIKE
//! '%green%'` a fifth. For join ordering a wrong guess there is the difference between
//! joining a 1-in-150 dimension first or last, so the conjuncts that ranges cannot judge
//! are evaluated on a sample of the filter's input: up to [`SAMPLE_ROWS`] rows, read only
//! when that input is a plain scan (no join or aggregation to compute first). A scan of files
//! is sampled at [`SPREAD`] points spread evenly over its files' bytes, the first rows of a
//! byte range at each (for Parquet, of the row groups that start in it): a table stored in
//! the order of the filtered column (a category, a name) gets a sample of all its values,
//! where its first rows would hold one or two. (The sampled scan prunes no row group by the
//! filter: the share must be of all rows.) Any other scan (a table in memory, a
//! quarantined source) gives the first rows of each of its partitions.
//!
//! The sample is not a random draw of rows: a value held only by rows between two points is
//! missed (estimated rare), and one point's rows are one stretch of the file. Ranges stay
//! DataFusion's to judge, since a table stored by date is common and its min/max statistics
//! judge a date range better than a sample can.

use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};
use datafusion::physical_expr::{PhysicalExpr, conjunction, split_conjunction};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use futures::StreamExt;

/// Rows read, at most, to judge a filter.
pub(super) const SAMPLE_ROWS: usize = 16_384;

/// Points of a scan's files sampled: [`SAMPLE_ROWS`] / `SPREAD` rows at each.
const SPREAD: usize = 32;

/// Nodes a filter's input may be made of to be sampled: a scan and what streams its rows on.
const STREAMING: [&str; 6] = [
    "DataSourceExec",
    "ProjectionExec",
    "RepartitionExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "CooperativeExec",
];

/// Whether DataFusion's range analysis judges `e` over an input of `schema` with `stats`:
/// comparisons with a constant of a number, decimal, date or time column whose range is
/// known, their `AND`, `OR` and `NOT`, and `IS [NOT] NULL`.
fn judged_by_ranges(e: &Arc<dyn PhysicalExpr>, schema: &Schema, stats: &Statistics) -> bool {
    let ranged = |e: &Arc<dyn PhysicalExpr>| {
        e.downcast_ref::<Column>().is_some_and(|c| {
            let t = schema.field(c.index()).data_type();
            let known = stats.column_statistics.get(c.index()).is_some_and(|s| {
                s.min_value.get_value().is_some() && s.max_value.get_value().is_some()
            });
            known && (t.is_numeric() || t.is_temporal() || matches!(t, DataType::Decimal128(..)))
        })
    };
    let constant = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Literal>().is_some();
    if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        return match b.op() {
            Operator::And | Operator::Or => {
                judged_by_ranges(b.left(), schema, stats)
                    && judged_by_ranges(b.right(), schema, stats)
            }
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq => {
                (ranged(b.left()) && constant(b.right()))
                    || (constant(b.left()) && ranged(b.right()))
            }
            _ => false,
        };
    }
    if let Some(n) = e.downcast_ref::<NotExpr>() {
        return judged_by_ranges(n.arg(), schema, stats);
    }
    e.downcast_ref::<IsNullExpr>().is_some() || e.downcast_ref::<IsNotNullExpr>().is_some()
}

/// Whether `plan` only streams rows from a scan.
fn streams_a_scan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    STREAMING.contains(&plan.name()) && plan.children().into_iter().all(streams_a_scan)
}

/// The topmost filter of `plan`, under nodes that pass rows on.
fn top_filter(plan: &Arc<dyn ExecutionPlan>) -> Option<&FilterExec> {
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        return Some(f);
    }
    match plan.children().as_slice() {
        [child] if STREAMING.contains(&plan.name()) => top_filter(child),
        _ => None,
    }
}

/// What a sample tells of a relation's filter.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sampled {
    /// The rows the relation is estimated to give.
    pub(super) rows: f64,
    /// The share of its input the filter is estimated to keep.
    pub(super) share: f64,
}

/// The rows `plan` is estimated to give when its topmost filter has conjuncts that ranges
/// cannot judge and its input is a scan: DataFusion's estimate for the other conjuncts,
/// times the share of a sample of the input that passes these. `None` when there is no such
/// filter, or the sample cannot be read or is empty.
pub(super) async fn sampled_rows(
    plan: &Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
) -> Option<Sampled> {
    let filter = top_filter(plan)?;
    let input = filter.input();
    if !streams_a_scan(input) {
        return None;
    }
    let schema = input.schema();
    let stats = StatisticsContext::new()
        .compute(input.as_ref(), &StatisticsArgs::new())
        .ok()?;
    let input_rows = stats.num_rows.get_value().copied();
    let (judged, sampled): (Vec<_>, Vec<_>) = split_conjunction(filter.predicate())
        .into_iter()
        .cloned()
        .partition(|e| judged_by_ranges(e, &schema, &stats));
    if sampled.is_empty() {
        return None;
    }
    let spread = spread_over_files(input);
    let share = passing_share(spread.as_ref().unwrap_or(input), &conjunction(sampled), ctx)
        .await
        .ok()??;
    let rows_before = if judged.is_empty() {
        Arc::clone(input)
    } else {
        Arc::new(FilterExec::try_new(conjunction(judged), Arc::clone(input)).ok()?)
    };
    let stats = StatisticsContext::new()
        .compute(rows_before.as_ref(), &StatisticsArgs::new())
        .ok()?;
    let rows = *stats.num_rows.get_value()? as f64 * share;
    let input_rows = match input_rows {
        Some(n) if n > 0 => n as f64,
        _ => return None,
    };
    Some(Sampled {
        rows,
        share: (rows / input_rows).min(1.0),
    })
}

/// `input` reading its scan's files at [`SPREAD`] points spread evenly over their bytes,
/// each point a partition (an [`SPREAD`]th of the bytes from there; repartitions and merges
/// above the scan removed, so that partitions are points): its partitions' first rows are
/// rows from all over the files. `None` when the scan is not of files.
fn spread_over_files(input: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let mut files_scanned = false;
    let spread = Arc::clone(input)
        .transform_up(|node| {
            if matches!(node.name(), "RepartitionExec" | "CoalescePartitionsExec")
                && let [child] = node.children().as_slice()
            {
                return Ok(Transformed::yes(Arc::clone(*child)));
            }
            let Some(config) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
            else {
                return Ok(Transformed::no(node));
            };
            let config_source = Arc::clone(config.file_source());
            // Each file once, whole (the scan may read a file in ranges).
            let mut seen = std::collections::HashSet::new();
            let mut files: Vec<PartitionedFile> = Vec::new();
            for f in config.file_groups.iter().flat_map(|g| g.files()) {
                if seen.insert(&f.object_meta.location) {
                    let mut whole = f.clone();
                    whole.range = None;
                    files.push(whole);
                }
            }
            let total: u64 = files.iter().map(|f| f.object_meta.size).sum();
            if total == 0 {
                return Ok(Transformed::no(node));
            }
            let step = total.div_ceil(SPREAD as u64);
            let mut groups = Vec::with_capacity(SPREAD);
            let mut offset = 0u64;
            for f in &files {
                let size = f.object_meta.size;
                let mut at = offset.next_multiple_of(step) - offset;
                while at < size {
                    let end = (at + step).min(size);
                    let point = f.clone().with_range(at as i64, end as i64);
                    groups.push(FileGroup::new(vec![point]));
                    at += step;
                }
                offset += size;
            }
            files_scanned = true;
            let mut config = FileScanConfigBuilder::from(config.clone()).with_file_groups(groups);
            // Without the filter the scan prunes row groups by: the share is of every row,
            // not of the row groups whose ranges could hold a passing row.
            if let Some(parquet) = config_source.downcast_ref::<ParquetSource>()
                && parquet.filter().is_some()
            {
                let everything = Arc::new(Literal::new(ScalarValue::Boolean(Some(true))));
                config = config.with_source(Arc::new(parquet.with_predicate(everything)));
            }
            let config = config.build();
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
            ))
        })
        .ok()?;
    files_scanned.then_some(spread.data)
}

/// The share of the first rows of each partition of `input` (at most [`SAMPLE_ROWS`] in
/// all) for which `predicate` is true; `None` for no rows. Half a row is added to what
/// passes and one to what is read, so that a sample where nothing passes says "rare", not
/// "never".
async fn passing_share(
    input: &Arc<dyn ExecutionPlan>,
    predicate: &Arc<dyn PhysicalExpr>,
    ctx: Arc<TaskContext>,
) -> Result<Option<f64>> {
    let partitions = input
        .properties()
        .output_partitioning()
        .partition_count()
        .max(1);
    let per_partition = SAMPLE_ROWS.div_ceil(partitions);
    let (mut read, mut passed) = (0usize, 0usize);
    for p in 0..partitions {
        let mut stream = input.execute(p, Arc::clone(&ctx))?;
        let mut here = 0;
        while here < per_partition {
            let Some(batch) = stream.next().await else {
                break;
            };
            let batch = batch?;
            let rows = batch.num_rows().min(per_partition - here);
            let batch = batch.slice(0, rows);
            let result = predicate.evaluate(&batch)?.into_array(rows)?;
            if let Some(b) = result.as_any().downcast_ref::<BooleanArray>() {
                passed += b.true_count();
            }
            here += rows;
        }
        read += here;
    }
    Ok((read > 0).then(|| (passed as f64 + 0.5) / (read as f64 + 1.0)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rand::{Rng, SeedableRng};

    /// `d`: 200,000 rows in 4 partitions of 50,000, a category `cat` of 100 values drawn
    /// at random and a number `n` drawn from 0..100,000; and the rows, to count by.
    fn table(ctx: &SessionContext) -> Vec<(String, i64)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let rows: Vec<(String, i64)> = (0..200_000)
            .map(|_| {
                (
                    format!("c{}", rng.random_range(0..100)),
                    rng.random_range(0..100_000),
                )
            })
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("cat", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let partitions = rows
            .chunks(50_000)
            .map(|part| {
                part.chunks(8192)
                    .map(|b| {
                        let cat: StringArray = b.iter().map(|r| Some(r.0.as_str())).collect();
                        let n: Int64Array = b.iter().map(|r| r.1).collect();
                        RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(cat), Arc::new(n)])
                            .unwrap()
                    })
                    .collect()
            })
            .collect();
        let t = MemTable::try_new(schema, partitions).unwrap();
        ctx.register_table("d", Arc::new(t)).unwrap();
        rows
    }

    async fn sampled(ctx: &SessionContext, sql: &str) -> Option<f64> {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        super::sampled_rows(&plan, ctx.task_ctx())
            .await
            .map(|s| s.rows)
    }

    /// Filters on a string (equality, `LIKE`) are estimated from the sample within a third of
    /// the true count, with a range of a number judged as DataFusion judges it; filters that
    /// ranges judge alone, or over an aggregation, are not sampled.
    #[tokio::test]
    async fn string_filters_are_estimated_from_a_sample() {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
        let rows = table(&ctx);
        let count = |keep: &dyn Fn(&(String, i64)) -> bool| rows.iter().filter(|r| keep(r)).count();
        for (sql, truth) in [
            ("SELECT * FROM d WHERE cat = 'c7'", count(&|r| r.0 == "c7")),
            (
                "SELECT * FROM d WHERE cat LIKE 'c1%'",
                count(&|r| r.0.starts_with("c1")),
            ),
            // No ranges are known of the table in memory: the range is sampled too.
            (
                "SELECT cat FROM d WHERE cat IN ('c3', 'c4', 'c5') AND n < 50000",
                count(&|r| ["c3", "c4", "c5"].contains(&r.0.as_str()) && r.1 < 50_000),
            ),
        ] {
            let got = sampled(&ctx, sql).await.unwrap();
            let truth = truth as f64;
            assert!(
                (got - truth).abs() < truth / 3.0,
                "{sql}: estimated {got}, true {truth}"
            );
        }
        for sql in ["SELECT cat, count(*) AS c FROM d GROUP BY cat HAVING count(*) > 7"] {
            assert_eq!(sampled(&ctx, sql).await, None, "{sql}");
        }

        // From Parquet, whose statistics give the ranges: a range alone is DataFusion's to
        // judge; beside a string filter, DataFusion's share times the sample's.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.parquet");
        ctx.sql("SELECT * FROM d")
            .await
            .unwrap()
            .write_parquet(
                path.to_str().unwrap(),
                datafusion::dataframe::DataFrameWriteOptions::new(),
                None,
            )
            .await
            .unwrap();
        ctx.register_parquet("p", path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        assert_eq!(sampled(&ctx, "SELECT * FROM p WHERE n < 5000").await, None);
        let truth = count(&|r| r.0 == "c7" && r.1 < 50_000) as f64;
        let got = sampled(&ctx, "SELECT * FROM p WHERE cat = 'c7' AND n < 50000")
            .await
            .unwrap();
        assert!(
            (got - truth).abs() < truth / 3.0,
            "estimated {got}, true {truth}"
        );
    }

    /// A Parquet file stored in the order of the filtered column (49 row groups sorted by
    /// `cat`): the sample spread over the file estimates filters on `cat` within a third of
    /// the true count, where the first rows of the scan's own partitions are off by more than
    /// three times for `LIKE 'c1%'` (the values at 1-12 % of the file: the scan prunes the
    /// row groups that cannot hold them, and its first rows are those of the few left).
    #[tokio::test]
    async fn a_file_stored_in_the_filtered_columns_order_is_sampled_all_over() {
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::file::properties::WriterProperties;

        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(4));
        let mut rows = table(&ctx);
        rows.sort();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sorted.parquet");
        let sorted = ctx
            .sql("SELECT * FROM d ORDER BY cat, n")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(4096))
            .build();
        let file = std::fs::File::create(&path).unwrap();
        let mut w = ArrowWriter::try_new(file, sorted[0].schema(), Some(props)).unwrap();
        for b in &sorted {
            w.write(b).unwrap();
        }
        w.close().unwrap();
        ctx.register_parquet("s", path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        let count = |keep: &dyn Fn(&str) -> bool| rows.iter().filter(|r| keep(&r.0)).count();
        for (sql, truth) in [
            (
                "SELECT * FROM s WHERE cat LIKE 'c1%'",
                count(&|c| c.starts_with("c1")),
            ),
            ("SELECT * FROM s WHERE cat < 'c5'", count(&|c| c < "c5")),
        ] {
            let got = sampled(&ctx, sql).await.unwrap();
            let truth = truth as f64;
            assert!(
                (got - truth).abs() < truth / 3.0,
                "{sql}: estimated {got}, true {truth}"
            );
        }
        // What the first rows of the scan's partitions say of `LIKE 'c1%'`.
        let plan = ctx
            .sql("SELECT * FROM s WHERE cat LIKE 'c1%'")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let filter = super::top_filter(&plan).unwrap();
        let first = super::passing_share(filter.input(), filter.predicate(), ctx.task_ctx())
            .await
            .unwrap()
            .unwrap();
        let truth = count(&|c| c.starts_with("c1")) as f64 / rows.len() as f64;
        assert!(
            first < truth / 3.0 || first > truth * 3.0,
            "first rows: {first}, true {truth}"
        );
    }
}
