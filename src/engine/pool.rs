//! The memory pool a run's operators share: DataFusion's fair pool, with a bounded overdraft
//! for the merges of sorted data, and a partial aggregation's table kept small.
//!
//! ## Merges of sorted data
//!
//! DataFusion counts a sort's rows twice when they fit in memory: the sorter keeps its
//! reservation for the sorted batches while the merge that reads them reserves each batch
//! again (and a merge cannot spill). A sort whose input almost fits its share of the pool
//! therefore fails in that merge, although the rows are in memory once and a smaller
//! input, which spills, succeeds (apache/datafusion#16979: at 64 MiB, 2 threads, a sort of
//! 400 K lineitem rows failed where 6 M succeed). A merge may therefore reserve beyond the
//! pool, up to [`MERGE_OVERDRAFT`] of it in all; everything else keeps the pool's limit,
//! and while a merge is overdrawn the operators that can spill find the pool full and
//! spill.
//!
//! ## Partial aggregations
//!
//! A partial aggregation (the first of an aggregation's two phases, before its rows are
//! repartitioned by their keys) that finds its reservation refused hands on the groups it
//! holds and goes on with an empty table: the final phase merges the groups' states. A
//! grouping of millions of keys (TPC-H q18's `GROUP BY l_orderkey`: 15 M groups of 60 M rows
//! at scale 10) otherwise grows each partition's table to hundreds of megabytes, and every
//! row's lookup misses the processor's caches. Rows of one key usually come together (the
//! lines of an order), so a table of [`PARTIAL_TABLE`] bytes, handed on whenever it would
//! grow past that, reduces the rows about as much, at a fraction of the cost. The cap holds
//! with or without a memory limit (under one, the pool may refuse sooner).

use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The share of the pool merges of sorted data may reserve beyond it, in all.
pub const MERGE_OVERDRAFT: f64 = 0.5;

/// Names DataFusion gives the reservations of merges of sorted data (`ExternalSorterMerge[0]`,
/// `SortPreservingMergeExec[0]`).
const MERGES: [&str; 2] = ["ExternalSorterMerge[", "SortPreservingMergeExec["];

/// The most a partial aggregation's table may hold (per partition) before it hands on its
/// groups and starts again empty.
pub const PARTIAL_TABLE: usize = 4 << 20;

/// The name DataFusion gives the reservation of a partial aggregation's table
/// (`PartialHashAggregateStream[0]`).
const PARTIAL_AGGREGATION: &str = "PartialHashAggregateStream[";

/// DataFusion's pool `inner` with sluice's two policies: merges of sorted data may overdraw
/// it by a bounded amount (under a memory limit), and a partial aggregation's reservation is
/// refused past [`PARTIAL_TABLE`], which makes it hand on its groups.
#[derive(Debug)]
pub struct SluicePool<P> {
    inner: P,
    /// The most the pool may hold in all, merges' overdraft included (`None`: no limit).
    ceiling: Option<usize>,
}

impl<P: MemoryPool> SluicePool<P> {
    /// `inner`, a pool of `limit` bytes (`None`: unbounded), with merges allowed up to
    /// `limit * (1 + MERGE_OVERDRAFT)` in all.
    pub fn new(inner: P, limit: Option<usize>) -> Self {
        SluicePool {
            inner,
            ceiling: limit.map(|limit| limit + (limit as f64 * MERGE_OVERDRAFT) as usize),
        }
    }
}

impl<P: std::fmt::Display> std::fmt::Display for SluicePool<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.inner)?;
        if let Some(ceiling) = self.ceiling {
            write!(f, " (sort merges up to {ceiling} bytes)")?;
        }
        Ok(())
    }
}

fn is_merge(reservation: &MemoryReservation) -> bool {
    let name = reservation.consumer().name();
    MERGES.iter().any(|m| name.starts_with(m))
}

impl<P: MemoryPool> MemoryPool for SluicePool<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if reservation.size().saturating_add(additional) > PARTIAL_TABLE
            && reservation
                .consumer()
                .name()
                .starts_with(PARTIAL_AGGREGATION)
        {
            // (DataFusion's partial aggregation emits on this error, and only this one.)
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} holds its table's {PARTIAL_TABLE} bytes",
                reservation.consumer().name()
            )));
        }
        match self.inner.try_grow(reservation, additional) {
            Err(_)
                if is_merge(reservation)
                    && self.ceiling.is_some_and(|ceiling| {
                        self.inner.reserved().saturating_add(additional) <= ceiling
                    }) =>
            {
                self.inner.grow(reservation, additional);
                Ok(())
            }
            other => other,
        }
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::memory_pool::{MemoryPool, UnboundedMemoryPool};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::SluicePool;

    /// A session over `pool` with `t(k, v)` in two partitions of 400 K rows, each holding
    /// every key of 0..200 K twice, 200 K rows apart; `v` is the row's number.
    fn session(pool: Arc<dyn MemoryPool>) -> SessionContext {
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool)
            .build_arc()
            .unwrap();
        let mut config = SessionConfig::new().with_target_partitions(2);
        // (Its first rows are all of other keys: DataFusion would stop aggregating them.)
        config
            .options_mut()
            .execution
            .skip_partial_aggregation_probe_ratio_threshold = 1.1;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let partition = |from: i64| -> Vec<RecordBatch> {
            (from..from + 400_000)
                .step_by(8192)
                .map(|start| {
                    let end = (start + 8192).min(from + 400_000);
                    let keys = (start..end).map(|i| i % 200_000);
                    RecordBatch::try_new(
                        Arc::clone(&schema),
                        vec![
                            Arc::new(Int64Array::from_iter_values(keys)),
                            Arc::new(Int64Array::from_iter_values(start..end)),
                        ],
                    )
                    .unwrap()
                })
                .collect()
        };
        let table =
            MemTable::try_new(Arc::clone(&schema), vec![partition(0), partition(400_000)]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    /// The answer of a grouping of 200 K keys, and the rows its partial aggregation handed on.
    async fn grouped(pool: Arc<dyn MemoryPool>) -> (Vec<(i64, i64)>, usize) {
        let ctx = session(pool);
        let plan = ctx
            .sql("SELECT k, sum(v) FROM t GROUP BY k")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        let mut answer = Vec::new();
        for b in &batches {
            let k = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let s = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            answer.extend(k.values().iter().copied().zip(s.values().iter().copied()));
        }
        answer.sort_unstable();
        fn partial_rows(plan: &Arc<dyn ExecutionPlan>) -> usize {
            let own = match plan.downcast_ref::<AggregateExec>() {
                Some(agg) if agg.mode() == &AggregateMode::Partial => {
                    plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0)
                }
                _ => 0,
            };
            own + plan.children().into_iter().map(partial_rows).sum::<usize>()
        }
        (answer, partial_rows(&plan))
    }

    /// Capped, a partial aggregation of more groups than its table holds hands them on in
    /// parts (a key's two rows, far apart, reach the final phase apart), and the answer is
    /// the one computed by hand.
    #[tokio::test]
    async fn a_partial_aggregation_hands_on_its_groups_past_the_cap() {
        let (capped, handed_on) = grouped(Arc::new(SluicePool::new(
            UnboundedMemoryPool::default(),
            None,
        )))
        .await;
        let (uncapped, whole) = grouped(Arc::new(UnboundedMemoryPool::default())).await;
        // (Key k is in rows k, k + 200 K, k + 400 K and k + 600 K.)
        let truth: Vec<(i64, i64)> = (0..200_000).map(|k| (k, 4 * k + 1_200_000)).collect();
        assert_eq!(capped, truth);
        assert_eq!(uncapped, truth);
        // Uncapped, each partition's table ends with each key once; capped, most keys' two
        // rows in a partition are handed on apart.
        assert_eq!(whole, 400_000);
        assert!(handed_on > 600_000, "{handed_on} rows handed on");
    }
}
