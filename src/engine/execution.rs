//! A running query: its output stream, and what its physical plan measured once drained —
//! rows read per table, rows its filters dropped, bytes spilled, its joins.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};

use crate::join;

/// Rows a query read, per table, and what its filters dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanRows {
    /// Rows read per table (a source, or an upstream model's output), by name; rows of a
    /// leaf that is no table (a `VALUES` list, say) under `(other)`.
    pub by_table: BTreeMap<String, u64>,
    /// Rows the query's filters dropped, known when the query is only filters and
    /// projections over one table (then rows in = rows out + filtered).
    pub filtered: Option<u64>,
}

impl ScanRows {
    /// Rows read from every table.
    pub fn total(&self) -> u64 {
        self.by_table.values().sum()
    }

    /// Adds another query's (another unit's) counts.
    pub fn merge(&mut self, other: &ScanRows) {
        for (t, n) in &other.by_table {
            *self.by_table.entry(t.clone()).or_default() += n;
        }
        self.filtered = match (self.filtered, other.filtered) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
}

/// The table a scan reads: of `tables`, the one whose location holds the scan's files most
/// closely.
fn leaf_table(
    plan: &Arc<dyn ExecutionPlan>,
    tables: &[(String, ListingTableUrl)],
) -> Option<String> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    if let Some(db) = plan.downcast_ref::<crate::database::scan::DatabaseScanExec>() {
        return Some(db.source_name().to_string());
    }
    let (store, path) = if let Some(q) = plan.downcast_ref::<crate::quarantine::QuarantineScan>() {
        let url = q.table_url();
        (url.object_store(), url.prefix().clone())
    } else {
        let scan = plan
            .downcast_ref::<DataSourceExec>()?
            .data_source()
            .downcast_ref::<FileScanConfig>()?;
        let file = scan.file_groups.iter().flat_map(|g| g.files()).next()?;
        (
            scan.object_store_url.clone(),
            file.object_meta.location.clone(),
        )
    };
    // A view over a store (an output's manifest, a unit's share) holds that store's paths.
    let store = crate::store::viewed_store(store.as_ref())
        .and_then(|u| datafusion::execution::object_store::ObjectStoreUrl::parse(u).ok())
        .unwrap_or(store);
    // The closest location wins: a source at `data/orders/` over one at `data/`.
    tables
        .iter()
        .filter(|(_, url)| {
            url.object_store() == store && (url.prefix() == &path || url.contains(&path, false))
        })
        .max_by_key(|(_, url)| url.prefix().as_ref().len())
        .map(|(name, _)| name.clone())
}

/// One version of a file: path, size, modification time (RFC 3339), etag.
pub type FileVersion = (String, u64, String, Option<String>);

/// The version of the file `m` describes.
pub fn file_version(m: &object_store::ObjectMeta) -> FileVersion {
    (
        m.location.to_string(),
        m.size,
        m.last_modified.to_rfc3339(),
        m.e_tag.clone(),
    )
}

/// The files a planned query reads (path, size, modification time, etag), after the planner
/// pruned partitions; `None` when a scan is not a plain file scan (the quarantine scan, a
/// generated table), whose files cannot be told from the plan.
pub fn files_read(plan: &Arc<dyn ExecutionPlan>) -> Option<Vec<FileVersion>> {
    use datafusion::datasource::physical_plan::FileScanConfig;
    use datafusion::datasource::source::DataSourceExec;
    let children = plan.children();
    if plan.name() == crate::physical::SHARED_READ {
        // Its files are read by the copy that computes the result.
        return Some(Vec::new());
    }
    if children.is_empty() {
        let scan = plan
            .downcast_ref::<DataSourceExec>()?
            .data_source()
            .downcast_ref::<FileScanConfig>()?;
        let mut files: Vec<_> = scan
            .file_groups
            .iter()
            .flat_map(|g| g.files())
            .map(|f| file_version(&f.object_meta))
            .collect();
        files.sort();
        return Some(files);
    }
    let mut all = Vec::new();
    for c in children {
        all.extend(files_read(c)?);
    }
    all.sort();
    all.dedup();
    Some(all)
}

/// A running query: its output stream, and its physical plan for metrics afterwards.
pub struct Execution {
    pub(super) plan: Arc<dyn ExecutionPlan>,
    pub(super) stream: Option<SendableRecordBatchStream>,
}

impl Execution {
    /// Takes the output stream (once).
    pub fn take_stream(&mut self) -> Option<SendableRecordBatchStream> {
        self.stream.take()
    }

    /// Whether the query's output is sorted (it has an ORDER BY), so writers keep row order.
    pub fn is_ordered(&self) -> bool {
        self.plan.properties().output_ordering().is_some()
    }

    /// Rows the plan read, per table (`tables`: each source and upstream output the query
    /// reads, with its location), and the rows its filters dropped when the query is only
    /// filters and projections over one table. Read once the output is drained.
    pub fn scan_rows(&self, tables: &[(String, ListingTableUrl)]) -> ScanRows {
        let mut out = ScanRows::default();
        let mut leaves = 0usize;
        let mut simple = true;
        let mut filtered = 0u64;
        fn rows(plan: &Arc<dyn ExecutionPlan>) -> u64 {
            plan.metrics()
                .and_then(|m| m.output_rows())
                .map_or(0, |r| r as u64)
        }
        /// The rows `plan` passed on: its own count, or, for an operator that counts none
        /// (`CooperativeExec`), its inputs'.
        fn rows_out(plan: &Arc<dyn ExecutionPlan>) -> u64 {
            match plan.metrics().and_then(|m| m.output_rows()) {
                Some(r) => r as u64,
                None => plan.children().into_iter().map(rows_out).sum(),
            }
        }
        fn walk(
            plan: &Arc<dyn ExecutionPlan>,
            tables: &[(String, ListingTableUrl)],
            out: &mut ScanRows,
            leaves: &mut usize,
            simple: &mut bool,
            filtered: &mut u64,
        ) {
            let children = plan.children();
            if plan.name() == crate::physical::SHARED_READ {
                // Rows of a result computed once, counted where it was computed.
                return;
            }
            if children.is_empty() {
                // A Parquet scan that filters while decoding (a join's filter, see
                // rewrite/decode_filters.rs) read the rows it dropped too.
                let n = rows(plan) + crate::physical::metric_sum(plan, "pushdown_rows_pruned");
                *leaves += 1;
                let name = leaf_table(plan, tables).unwrap_or_else(|| "(other)".to_string());
                if n > 0 || name != "(other)" {
                    *out.by_table.entry(name).or_default() += n;
                }
                return;
            }
            // The operators that pass rows on or drop them by a predicate, and no other.
            const PASS_ON: [&str; 8] = [
                "FilterExec",
                "ProjectionExec",
                "RepartitionExec",
                "CoalesceBatchesExec",
                "CoalescePartitionsExec",
                "SortExec",
                "SortPreservingMergeExec",
                "CooperativeExec",
            ];
            if !PASS_ON.contains(&plan.name()) || plan.fetch().is_some() {
                *simple = false;
            }
            if plan.name() == "FilterExec" {
                let input: u64 = children.iter().map(|c| rows_out(c)).sum();
                *filtered += input.saturating_sub(rows(plan));
            }
            for c in children {
                walk(c, tables, out, leaves, simple, filtered);
            }
        }
        walk(
            &self.plan,
            tables,
            &mut out,
            &mut leaves,
            &mut simple,
            &mut filtered,
        );
        if simple && leaves == 1 {
            out.filtered = Some(filtered);
        }
        out
    }

    /// The plan's joins: strategy, and buckets, spill and peak memory once drained.
    pub fn joins(&self) -> Vec<join::JoinReport> {
        join::join_reports(&self.plan)
    }

    /// Bytes spilled to disk by the plan's operators.
    pub fn spilled_bytes(&self) -> u64 {
        fn walk(plan: &Arc<dyn ExecutionPlan>) -> u64 {
            let own = plan
                .metrics()
                .and_then(|m| m.spilled_bytes())
                .map_or(0, |b| b as u64);
            own + plan.children().into_iter().map(walk).sum::<u64>()
        }
        walk(&self.plan)
    }
}
