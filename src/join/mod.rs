//! Joins that finish under a memory limit.
//!
//! DataFusion's hash join holds its whole build side in memory and cannot spill: under a
//! memory limit a large join fails with "Resources exhausted ... HashJoinInput". sluice
//! replaces each hash join, when a memory limit is set, by a [`GraceHashJoinExec`] that
//! hash-partitions both inputs into bucket files when the build side does not fit and joins
//! bucket by bucket; the decision is made per join by a physical optimizer rule ([`rule`])
//! and shown by EXPLAIN and `sluice plan`.
//!
//! The join itself is split the way DataFusion splits its hash join: the plan node in
//! [`exec`], the work of one output partition in [`job`] (the shared preparation) and
//! [`bucket`] (one bucket pair, re-partitioning, hot keys), its metrics in [`metrics`], the
//! leaf plans that feed its in-memory joins in [`once`]; bucket files are in [`spill`]; the
//! filter it pushes into its probe side's scan, as DataFusion's hash join does, in
//! [`filter`].
//!
//! The rest of a query is planned and run by DataFusion unchanged.

mod bucket;
mod exec;
mod filter;
mod job;
mod metrics;
mod once;
mod rule;
mod spill;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::joins::{HashJoinExec, SortMergeJoinExec};
use serde::Serialize;

use crate::config::JoinOptions;
use crate::physical::{metric_max, metric_sum};

pub(crate) use exec::{Choice, Distribution, GraceHashJoinExec};
pub(crate) use rule::GraceJoinRule;

/// DataFusion's physical optimizer rules with [`GraceJoinRule`] inserted where it must run:
/// after `JoinSelection` and before `EnsureRequirements`.
pub(crate) fn physical_rules(
    options: JoinOptions,
    memory_limit: Option<usize>,
    cluster: bool,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "EnsureRequirements")
        .unwrap_or(rules.len());
    rules.insert(
        at,
        Arc::new(GraceJoinRule::new(options, memory_limit, cluster)),
    );
    rules
}

/// What one join of a query did, for the run report and `sluice plan`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JoinReport {
    /// Join type and keys, e.g. `Inner join on o_orderkey = l_orderkey`.
    pub join: String,
    /// `in_memory`, `sort_merge`, `adaptive` or `grace(N)`.
    pub strategy: String,
    /// Why that strategy.
    pub reason: String,
    /// Runs (work units) in which the join ran in memory.
    pub ran_in_memory: u64,
    /// Runs in which it partitioned its inputs into buckets on disk.
    pub ran_partitioned: u64,
    /// Buckets created at every level, and the deepest level.
    pub buckets: u64,
    pub max_depth: u64,
    /// Buckets holding one key too large to split, joined in chunks.
    pub skewed_buckets: u64,
    /// Bytes written to bucket files.
    pub spilled_bytes: u64,
    /// Largest memory one partition of the join held, in bytes.
    pub peak_memory: u64,
}

/// The joins of a physical plan, with their run-time figures once it has run.
pub(crate) fn join_reports(plan: &Arc<dyn ExecutionPlan>) -> Vec<JoinReport> {
    let mut out = Vec::new();
    collect(plan, &mut out);
    out
}

fn collect(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<JoinReport>) {
    let metric = |name: &str| metric_sum(plan, name);
    let max_metric = |name: &str| metric_max(plan, name);
    if let Some(g) = plan.downcast_ref::<GraceHashJoinExec>() {
        out.push(JoinReport {
            join: g.describe(),
            strategy: g.choice().strategy.to_string(),
            reason: g.choice().reason.clone(),
            ran_in_memory: metric("ran_in_memory"),
            ran_partitioned: metric("ran_partitioned"),
            buckets: metric("buckets"),
            max_depth: max_metric("max_depth"),
            skewed_buckets: metric("skewed_buckets"),
            spilled_bytes: metric("spilled_bytes"),
            peak_memory: max_metric("peak_mem_used"),
        });
    } else if let Some(h) = plan.downcast_ref::<HashJoinExec>() {
        let on = h
            .on()
            .iter()
            .map(|(l, r)| format!("{l} = {r}"))
            .collect::<Vec<_>>()
            .join(" AND ");
        out.push(JoinReport {
            join: format!("{:?} join on {on}", h.join_type()),
            strategy: "in_memory".into(),
            reason: match h.partition_mode() {
                datafusion::physical_plan::joins::PartitionMode::CollectLeft => {
                    "small build side: one shared in-memory hash table (broadcast)".into()
                }
                _ => "no memory limit: DataFusion's in-memory hash join".into(),
            },
            ran_in_memory: 0,
            ran_partitioned: 0,
            buckets: 0,
            max_depth: 0,
            skewed_buckets: 0,
            spilled_bytes: 0,
            peak_memory: max_metric("build_mem_used"),
        });
    } else if let Some(s) = plan.downcast_ref::<SortMergeJoinExec>() {
        out.push(JoinReport {
            join: format!("{:?} join", s.join_type()),
            strategy: "sort_merge".into(),
            reason: "planned as a sort-merge join".into(),
            ran_in_memory: 0,
            ran_partitioned: 0,
            buckets: 0,
            max_depth: 0,
            skewed_buckets: 0,
            spilled_bytes: metric("spilled_bytes"),
            peak_memory: max_metric("peak_mem_used"),
        });
    }
    for child in plan.children() {
        collect(child, out);
    }
}

/// Adds the joins of one more run of the same query (another work unit) to `into`: the
/// same joins in the same order, their figures summed (peaks: the larger).
pub(crate) fn merge_reports(into: &mut Vec<JoinReport>, more: Vec<JoinReport>) {
    if into.is_empty() || into.len() != more.len() {
        if into.is_empty() {
            *into = more;
        }
        return;
    }
    for (a, b) in into.iter_mut().zip(more) {
        a.ran_in_memory += b.ran_in_memory;
        a.ran_partitioned += b.ran_partitioned;
        a.buckets += b.buckets;
        a.max_depth = a.max_depth.max(b.max_depth);
        a.skewed_buckets += b.skewed_buckets;
        a.spilled_bytes += b.spilled_bytes;
        a.peak_memory = a.peak_memory.max(b.peak_memory);
    }
}

/// `1536` → `1.5 KiB`.
pub(crate) fn human_bytes(n: usize) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
