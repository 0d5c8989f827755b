//! The metrics of a [`super::GraceHashJoinExec`], one set per output partition.

use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder, SpillMetrics,
};

/// Per-partition metrics; summed over partitions in the plan's metrics.
#[derive(Clone)]
pub(super) struct JoinMetrics {
    pub(super) baseline: BaselineMetrics,
    pub(super) spill: SpillMetrics,
    /// 1 when the build side fitted in memory.
    pub(super) in_memory: Count,
    /// 1 when the inputs were split into buckets.
    pub(super) partitioned: Count,
    /// Buckets created, at every level.
    pub(super) buckets: Count,
    /// Deepest re-partitioning level reached (1: the first split).
    pub(super) depth: Gauge,
    /// Buckets joined in chunks because one key's rows did not fit.
    pub(super) skewed: Count,
    /// Peak memory of the join: its buffer, or the in-memory join's build side.
    pub(super) peak: Gauge,
}

impl JoinMetrics {
    pub(super) fn new(m: &ExecutionPlanMetricsSet, p: usize) -> JoinMetrics {
        JoinMetrics {
            baseline: BaselineMetrics::new(m, p),
            spill: SpillMetrics::new(m, p),
            in_memory: MetricBuilder::new(m).counter("ran_in_memory", p),
            partitioned: MetricBuilder::new(m).counter("ran_partitioned", p),
            buckets: MetricBuilder::new(m).counter("buckets", p),
            depth: MetricBuilder::new(m).gauge("max_depth", p),
            skewed: MetricBuilder::new(m).counter("skewed_buckets", p),
            peak: MetricBuilder::new(m).gauge("peak_mem_used", p),
        }
    }
}
