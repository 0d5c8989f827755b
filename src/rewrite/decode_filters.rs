//! A join's dynamic filter applied while a Parquet scan decodes, when it drops nearly every
//! row.
//!
//! A hash join hands the scan of its probe side a filter built from its build side (its
//! keys' bounds and a set or hash table of them: DataFusion's dynamic filters). With
//! Parquet's filter pushdown off, as DataFusion has it by default, the scan uses that filter
//! only to skip row groups and pages by their statistics: every other row is decoded and
//! passed on, to be repartitioned, probed and dropped by the join. In TPC-H q17 and q18 the
//! build side keeps a few hundred to a few thousand keys of millions, and carrying all of
//! `lineitem` to the join was most of the query.
//!
//! Evaluated on every row, the same filters cost more than they save once they keep more
//! than a few rows in a hundred (measured at TPC-H scale 10, 2 threads: a filter keeping
//! 5 % made q9 6.4 → 8.1 s, one keeping 15 % q5 3.5 → 4.6 s; those keeping under 1 % made
//! q17 5.6 → 3.6–4.1 s and q18 9.1 → 4.7–6.1 s), and how many rows a filter keeps is known
//! only once its join has built its side. So the choice is made while the scan runs:
//! [`DynamicFiltersWhileDecoding`] turns pushdown on for a scan whose whole predicate is
//! dynamic filters, wrapped in a [`WhileSelective`] that measures the share of rows each
//! filter keeps and evaluates only those keeping at most [`KEEPS_AT_MOST`] (sampling the
//! others, one batch in [`SAMPLE_EVERY`], to notice a change).

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::physical_plan::{
    FileScanConfig, FileScanConfigBuilder, FileSource, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::expressions::{DynamicFilterPhysicalExpr, Literal};
use datafusion::physical_expr::{PhysicalExpr, conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

/// The largest share of rows a dynamic filter may keep and still be evaluated while
/// decoding. (TPC-H at scale 10 over thresholds of 1, 3, 7 and 20 %: every filter kept
/// under 1 % paid, filters keeping 2 % were even, 4 % to 15 % cost.)
const KEEPS_AT_MOST: f64 = 0.01;

/// Rows a filter is measured on before its share decides whether it is evaluated.
const WINDOW_ROWS: u64 = 131_072;

/// While a filter is not evaluated, one batch in this many still is, to measure it.
const SAMPLE_EVERY: u64 = 64;

/// Turns on Parquet filter pushdown for each scan whose whole predicate is joins' (or top-k
/// sorts') dynamic filters, wrapped together in a [`WhileSelective`]. (Not on a Ballista
/// cluster: its executors could not decode the wrapper.)
#[derive(Debug, Default)]
pub(crate) struct DynamicFiltersWhileDecoding;

impl PhysicalOptimizerRule for DynamicFiltersWhileDecoding {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(match with_filters_while_decoding(&node) {
                Some(scan) => Transformed::yes(scan),
                None => Transformed::no(node),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_dynamic_filters_while_decoding"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` as a Parquet scan that applies its dynamic filters while decoding, if it is a
/// Parquet scan without pushdown whose predicate is dynamic filters alone.
fn with_filters_while_decoding(node: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let config = node
        .downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()?;
    let source = config.file_source().downcast_ref::<ParquetSource>()?;
    if source.table_parquet_options().global.pushdown_filters {
        return None;
    }
    let predicate = source.filter()?;
    let conjuncts = split_conjunction(&predicate);
    if !conjuncts
        .iter()
        .all(|c| c.is::<DynamicFilterPhysicalExpr>())
    {
        return None;
    }
    // One predicate for all of them: the decoder reads the columns of each predicate it is
    // given in a pass of its own, and most of the filters are not evaluated.
    let filters = conjuncts.into_iter().cloned().collect();
    let source = source
        .with_predicate(Arc::new(WhileSelective::new(filters)))
        .with_pushdown_filters(true);
    let config = FileScanConfigBuilder::from(config.clone())
        .with_source(Arc::new(source))
        .build();
    Some(DataSourceExec::from_data_source(config))
}

/// A scan's dynamic filters, each evaluated only while it keeps at most [`KEEPS_AT_MOST`]
/// of the rows it is measured on; a row is kept when every evaluated filter keeps it (the
/// join then probes it). Pruning by statistics sees the filters themselves
/// ([`PhysicalExpr::snapshot`]).
#[derive(Debug)]
pub(crate) struct WhileSelective {
    filters: Vec<Arc<dyn PhysicalExpr>>,
    /// One per filter, shared by the copies of this expression in every file and partition
    /// of the scan.
    measures: Vec<Arc<Measure>>,
}

/// What a [`WhileSelective`] has measured of one filter.
#[derive(Debug, Default)]
struct Measure {
    /// Whether the filter is left unevaluated, for keeping too many rows.
    passing: AtomicBool,
    /// Batches seen, to pick the samples while passing.
    batches: AtomicU64,
    /// Rows evaluated, rows kept and nanoseconds spent in the current window.
    window: Mutex<(u64, u64, u64)>,
}

impl WhileSelective {
    fn new(filters: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        let measures = filters.iter().map(|_| Arc::default()).collect();
        Self { filters, measures }
    }

    /// Whether `filter` has been given its rows: a join's or a sort's dynamic filter keeps
    /// every row (`true`) until then, which says nothing of its share.
    fn is_set(filter: &Arc<dyn PhysicalExpr>) -> Result<bool> {
        let Some(dynamic) = filter.downcast_ref::<DynamicFilterPhysicalExpr>() else {
            return Ok(true);
        };
        let current = dynamic.current()?;
        let unset = current
            .downcast_ref::<Literal>()
            .is_some_and(|l| l.value() == &ScalarValue::Boolean(Some(true)));
        Ok(!unset)
    }

    /// Records that filter `i` kept `kept` of `rows` evaluated rows in `nanos`, and at the
    /// end of a window decides whether it is evaluated from now on.
    fn record(&self, i: usize, rows: u64, kept: u64, nanos: u64) {
        let measure = &self.measures[i];
        let Ok(mut window) = measure.window.lock() else {
            return;
        };
        window.0 += rows;
        window.1 += kept;
        window.2 += nanos;
        if window.0 >= WINDOW_ROWS {
            let share = window.1 as f64 / window.0 as f64;
            let passing = share > KEEPS_AT_MOST;
            let was = measure.passing.swap(passing, Ordering::Relaxed);
            tracing::debug!(
                "dynamic filter {}: keeps {:.1} % of rows, {:.1} ns a row, {} (was {})",
                self.filters[i],
                share * 100.0,
                window.2 as f64 / window.0 as f64,
                if passing { "passing" } else { "evaluated" },
                if was { "passing" } else { "evaluated" },
            );
            *window = (0, 0, 0);
        }
    }
}

impl fmt::Display for WhileSelective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "while_selective(")?;
        for (i, filter) in self.filters.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{filter}")?;
        }
        write!(f, ")")
    }
}

impl PartialEq for WhileSelective {
    fn eq(&self, other: &Self) -> bool {
        self.filters.len() == other.filters.len()
            && self
                .filters
                .iter()
                .zip(&other.filters)
                .all(|(a, b)| a.as_ref() == b.as_ref())
    }
}

impl Eq for WhileSelective {}

impl Hash for WhileSelective {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for filter in &self.filters {
            filter.hash(state);
        }
    }
}

impl PhysicalExpr for WhileSelective {
    fn return_field(&self, _input_schema: &Schema) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            "while_selective",
            DataType::Boolean,
            true,
        )))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let rows = batch.num_rows();
        let mut mask: Option<BooleanArray> = None;
        for (i, filter) in self.filters.iter().enumerate() {
            if !Self::is_set(filter)? {
                continue;
            }
            let measure = &self.measures[i];
            let batch_no = measure.batches.fetch_add(1, Ordering::Relaxed);
            if measure.passing.load(Ordering::Relaxed) && !batch_no.is_multiple_of(SAMPLE_EVERY) {
                continue;
            }
            let started = std::time::Instant::now();
            let kept = filter.evaluate(batch)?.into_array(rows)?;
            let kept = kept.as_boolean_opt().cloned().ok_or_else(|| {
                datafusion::common::DataFusionError::Internal(format!(
                    "dynamic filter {filter} gave {}, not booleans",
                    kept.data_type()
                ))
            })?;
            // (NULL counts as not kept, as a filter takes it.)
            let count = kept.true_count();
            self.record(
                i,
                rows as u64,
                count as u64,
                started.elapsed().as_nanos() as u64,
            );
            mask = Some(match mask {
                None => kept,
                Some(mask) => datafusion::arrow::compute::and(&mask, &kept)?,
            });
        }
        let mask = mask.unwrap_or_else(|| BooleanArray::new(BooleanBuffer::new_set(rows), None));
        Ok(ColumnarValue::Array(Arc::new(mask)))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.filters.iter().collect()
    }

    /// Its answer for the same rows changes as it measures: it must not be folded into a
    /// constant (as a file's simplifier does with an expression of literals).
    fn is_volatile_node(&self) -> bool {
        true
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        if children.len() != self.filters.len() {
            return Err(datafusion::common::DataFusionError::Internal(format!(
                "while_selective has {} filters, given {}",
                self.filters.len(),
                children.len()
            )));
        }
        Ok(Arc::new(Self {
            filters: children,
            measures: self.measures.clone(),
        }))
    }

    /// The filters as they are: pruning row groups and pages by statistics keeps all of them.
    fn snapshot(&self) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        Ok(Some(conjunction(self.filters.iter().cloned())))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, filter) in self.filters.iter().enumerate() {
            if i > 0 {
                write!(f, " AND ")?;
            }
            filter.fmt_sql(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::datasource::physical_plan::{FileScanConfig, FileSource, ParquetSource};
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_expr::split_conjunction;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
    use rand::{Rng, SeedableRng};

    use super::{DynamicFiltersWhileDecoding, WhileSelective};

    const FACTS: usize = 200_000;
    const KEYS: i64 = 50_000;
    const SMALL_KEYS: i64 = 2_000;

    /// Writes `fact(k, j, v)` (`FACTS` rows, keys `k` drawn from 0..`KEYS` and `j` from
    /// 0..`SMALL_KEYS`, in row groups of 20,000 that each span nearly every key), `dim(k, w)`
    /// and `small(j, w)` (each key once, `w` in 0..1000) into `dir`, and returns their rows.
    fn write_tables(dir: &std::path::Path, seed: u64) -> [RecordBatch; 3] {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut column = |range: std::ops::Range<i64>| {
            Arc::new(Int64Array::from_iter_values(
                (0..FACTS).map(|_| rng.random_range(range.clone())),
            )) as _
        };
        let fact = RecordBatch::try_from_iter(vec![
            ("k", column(0..KEYS)),
            ("j", column(0..SMALL_KEYS)),
            ("v", column(-1000..1000)),
        ])
        .unwrap();
        let mut dimension = |key: &str, keys: i64| {
            RecordBatch::try_from_iter(vec![
                (key, Arc::new(Int64Array::from_iter_values(0..keys)) as _),
                (
                    "w",
                    Arc::new(Int64Array::from_iter_values(
                        (0..keys).map(|_| rng.random_range(0..1000)),
                    )) as _,
                ),
            ])
            .unwrap()
        };
        let (dim, small) = (dimension("k", KEYS), dimension("j", SMALL_KEYS));
        for (name, batch) in [("fact", &fact), ("dim", &dim), ("small", &small)] {
            let file = std::fs::File::create(dir.join(format!("{name}.parquet"))).unwrap();
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(20_000))
                .build();
            let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
            writer.write(batch).unwrap();
            writer.close().unwrap();
        }
        [fact, dim, small]
    }

    async fn session(dir: &std::path::Path, rule: bool) -> SessionContext {
        let mut state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features();
        if rule {
            state = state.with_physical_optimizer_rule(Arc::new(DynamicFiltersWhileDecoding));
        }
        let ctx = SessionContext::new_with_state(state.build());
        for name in ["fact", "dim", "small"] {
            let path = dir.join(format!("{name}.parquet"));
            ctx.register_parquet(name, path.to_str().unwrap(), ParquetReadOptions::default())
                .await
                .unwrap();
        }
        ctx
    }

    /// The scans of `plan` whose predicate was wrapped, with whether each of their filters
    /// was passing (not evaluated) when the scan ended, in order.
    fn wrapped_scans(plan: &Arc<dyn ExecutionPlan>) -> Vec<(Arc<dyn ExecutionPlan>, Vec<bool>)> {
        let mut found = Vec::new();
        let mut stack = vec![Arc::clone(plan)];
        while let Some(node) = stack.pop() {
            stack.extend(node.children().into_iter().cloned());
            let Some(source) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|s| s.data_source().downcast_ref::<FileScanConfig>())
                .and_then(|c| c.file_source().downcast_ref::<ParquetSource>())
            else {
                continue;
            };
            let predicate = source.filter();
            let mut passing: Vec<bool> = predicate
                .iter()
                .flat_map(split_conjunction)
                .filter_map(|c| c.downcast_ref::<WhileSelective>())
                .flat_map(|w| w.measures.iter())
                .map(|m| m.passing.load(Ordering::Relaxed))
                .collect();
            passing.sort();
            if !passing.is_empty() {
                found.push((Arc::clone(&node), passing));
            }
        }
        found
    }

    /// The count and sum of `v` of the facts whose `k` has a `w` below `below_k` in `dim`
    /// and whose `j` one below `below_j` in `small` (if given), with the plan that answered.
    async fn run(
        ctx: &SessionContext,
        below_k: i64,
        below_j: Option<i64>,
    ) -> (Arc<dyn ExecutionPlan>, (i64, i64)) {
        let sql = match below_j {
            None => format!(
                "SELECT count(*) AS n, coalesce(sum(f.v), 0) AS s FROM fact f \
                 JOIN dim d ON f.k = d.k WHERE d.w < {below_k}"
            ),
            Some(below_j) => format!(
                "SELECT count(*) AS n, coalesce(sum(f.v), 0) AS s FROM fact f \
                 JOIN dim d ON f.k = d.k JOIN small e ON f.j = e.j \
                 WHERE d.w < {below_k} AND e.w < {below_j}"
            ),
        };
        let plan = ctx
            .sql(&sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let n = batches[0].column(0).as_primitive::<Int64Type>().value(0);
        let s = batches[0].column(1).as_primitive::<Int64Type>().value(0);
        (plan, (n, s))
    }

    /// A join filter that keeps few facts is applied while `fact` is decoded (the scan
    /// passes about the matching rows, not all 200,000); one that keeps most is measured,
    /// then no longer evaluated; of two, only the selective one is evaluated. Every answer is
    /// what the rows say and what DataFusion answers without the rule.
    #[tokio::test]
    async fn a_selective_join_filter_is_applied_while_decoding_and_an_unselective_one_is_not() {
        for seed in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let [fact, dim, small] = write_tables(dir.path(), seed);
            let (ours, theirs) = (
                session(dir.path(), true).await,
                session(dir.path(), false).await,
            );
            let w = dim.column(1).as_primitive::<Int64Type>().values();
            let small_w = small.column(1).as_primitive::<Int64Type>().values();
            let [k, j, v] = [0, 1, 2].map(|c| fact.column(c).as_primitive::<Int64Type>().values());
            // (below k, below j, filters passing at the end, most rows the scan may pass,
            // fewest)
            let cases = [
                (3, None, vec![false], FACTS / 50, 0),
                (700, None, vec![true], FACTS, FACTS * 3 / 4),
                (700, Some(3), vec![false, true], FACTS / 50, 0),
            ];
            for (below_k, below_j, want_passing, most, fewest) in cases {
                let case = format!("seed {seed}, w < {below_k}, {below_j:?}");
                // The oracle: the rows themselves.
                let want = (0..FACTS)
                    .filter(|&r| w[k[r] as usize] < below_k)
                    .filter(|&r| below_j.is_none_or(|b| small_w[j[r] as usize] < b))
                    .fold((0, 0), |(n, s), r| (n + 1, s + v[r]));

                let (plan, got) = run(&ours, below_k, below_j).await;
                assert_eq!(got, want, "{case}");
                assert_eq!(run(&theirs, below_k, below_j).await.1, want, "{case}");

                let scans = wrapped_scans(&plan);
                assert_eq!(scans.len(), 1, "{case}: the fact scan");
                let (scan, passing) = &scans[0];
                assert_eq!(passing, &want_passing, "{case}");
                let decoded = scan.metrics().unwrap().output_rows().unwrap();
                assert!(
                    (fewest..=most).contains(&decoded) && decoded >= want.0 as usize,
                    "{case}: the scan passed {decoded} rows"
                );
            }
        }
    }
}
