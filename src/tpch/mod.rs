//! TPC-H sample data and benchmark: `sluice gen tpch` and `sluice bench tpch`.
//!
//! Data comes from the `tpchgen` crates (the same rows as the TPC's `dbgen`), generated in
//! parallel parts and written through the ordinary [`crate::sink`], so every table folder is
//! a committed output with a manifest. The 22 queries are `queries/tpch/qN.sql`, compiled
//! into the binary; answers are checked by [`answers`].

pub mod answers;

use std::time::Instant;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchReader};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::catalog;
use crate::config::{DEFAULT_FILE_SIZE, DEFAULT_ROWS_PER_FILE, Format, SourceConfig, WriteMode};
use crate::engine::Engine;
use crate::error::Error;
use crate::progress::Progress;
use crate::sink::{self, SinkSpec};
use crate::store::Location;

/// The eight TPC-H tables, in generation order.
pub const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// The 22 queries, compiled in from `queries/tpch/`.
pub const QUERIES: [&str; 22] = [
    include_str!("../../queries/tpch/q1.sql"),
    include_str!("../../queries/tpch/q2.sql"),
    include_str!("../../queries/tpch/q3.sql"),
    include_str!("../../queries/tpch/q4.sql"),
    include_str!("../../queries/tpch/q5.sql"),
    include_str!("../../queries/tpch/q6.sql"),
    include_str!("../../queries/tpch/q7.sql"),
    include_str!("../../queries/tpch/q8.sql"),
    include_str!("../../queries/tpch/q9.sql"),
    include_str!("../../queries/tpch/q10.sql"),
    include_str!("../../queries/tpch/q11.sql"),
    include_str!("../../queries/tpch/q12.sql"),
    include_str!("../../queries/tpch/q13.sql"),
    include_str!("../../queries/tpch/q14.sql"),
    include_str!("../../queries/tpch/q15.sql"),
    include_str!("../../queries/tpch/q16.sql"),
    include_str!("../../queries/tpch/q17.sql"),
    include_str!("../../queries/tpch/q18.sql"),
    include_str!("../../queries/tpch/q19.sql"),
    include_str!("../../queries/tpch/q20.sql"),
    include_str!("../../queries/tpch/q21.sql"),
    include_str!("../../queries/tpch/q22.sql"),
];

/// Rows in one generated batch.
const BATCH_ROWS: usize = 8192;

/// A boxed generator of one part of one table.
type PartIter = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// The generator of part `part` (1-based) of `parts` of a table.
fn generator(table: &str, scale: f64, part: i32, parts: i32) -> Option<(SchemaRef, PartIter)> {
    use tpchgen::generators as g;
    use tpchgen_arrow as a;
    fn boxed<I: RecordBatchReader + Send + 'static>(it: I) -> (SchemaRef, PartIter) {
        (it.schema(), Box::new(it))
    }
    Some(match table {
        "region" => boxed(
            a::RegionArrow::new(g::RegionGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "nation" => boxed(
            a::NationArrow::new(g::NationGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "supplier" => boxed(
            a::SupplierArrow::new(g::SupplierGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "customer" => boxed(
            a::CustomerArrow::new(g::CustomerGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "part" => boxed(
            a::PartArrow::new(g::PartGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "partsupp" => boxed(
            a::PartSuppArrow::new(g::PartSuppGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "orders" => boxed(
            a::OrderArrow::new(g::OrderGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        "lineitem" => boxed(
            a::LineItemArrow::new(g::LineItemGenerator::new(scale, part, parts))
                .with_batch_size(BATCH_ROWS),
        ),
        _ => return None,
    })
}

/// One generated table.
#[derive(Debug, Clone, Serialize)]
pub struct GeneratedTable {
    /// The table.
    pub table: String,
    /// Rows written.
    pub rows: u64,
    /// Files written.
    pub files: usize,
}

/// Writes TPC-H data at scale `scale` under `out`, one folder per table (`out/lineitem/`...),
/// each a committed output with `_MANIFEST` and `_SUCCESS`.
pub async fn generate(
    engine: &Engine,
    scale: f64,
    format: Format,
    out: &Location,
    progress: &Progress,
) -> Result<Vec<GeneratedTable>, Error> {
    if !(scale > 0.0 && scale.is_finite()) {
        return Err(crate::config::ConfigError::Invalid {
            line: None,
            path: "command line".into(),
            key: "--scale".into(),
            message: format!("must be a positive number, got {scale}"),
        }
        .into());
    }
    let threads = engine.options().threads();
    let run_id = crate::table::new_run_id();
    let mut done = Vec::new();
    for table in TABLES {
        // Small tables in one part; big ones in one part per thread, generated concurrently.
        let parts: i32 = match table {
            "region" | "nation" => 1,
            _ if scale < 0.1 => 1,
            _ => threads.max(1) as i32,
        };
        let Some((schema, _)) = generator(table, scale, 1, parts) else {
            continue;
        };
        let (tx, rx) = mpsc::channel::<datafusion::error::Result<RecordBatch>>(4);
        for part in 1..=parts {
            let tx = tx.clone();
            let table = table.to_string();
            tokio::task::spawn_blocking(move || {
                if let Some((_, batches)) = generator(&table, scale, part, parts) {
                    for batch in batches {
                        if tx.blocking_send(batch.map_err(Into::into)).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        drop(tx);
        let stream = RecordBatchStreamAdapter::new(
            schema,
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) }),
        );
        let spec = SinkSpec {
            location: out.as_folder().join_folder(table)?,
            append_id: None,
            format,
            partition_by: Vec::new(),
            mode: WriteMode::Overwrite,
            target_rows_per_file: DEFAULT_ROWS_PER_FILE,
            target_file_size: DEFAULT_FILE_SIZE,
            compression: crate::config::ParquetCompression::DEFAULT,
            parallelism: threads,
            buffer_budget: engine.write_buffer_budget(),
            memory: engine.memory_pool(),
            preserve_order: false,
            adopt: false,
            staging: None,
        };
        let store = engine.stores().store_for(&spec.location)?;
        let task = progress.task(table);
        let committed =
            sink::write(store, &spec, Box::pin(stream), &run_id, &|r| task.inc(r)).await;
        task.finish();
        let committed = committed?;
        done.push(GeneratedTable {
            table: table.to_string(),
            rows: committed.rows,
            files: committed.new_files.len(),
        });
    }
    Ok(done)
}

/// Registers the eight tables found under `data` (each folder's format guessed from its
/// files) and returns the scale factor, computed from the supplier count (10,000 × SF).
pub async fn register_tables(engine: &Engine, data: &Location) -> Result<f64, Error> {
    let data = data.as_folder();
    for table in TABLES {
        let location = data.join_folder(table)?;
        let format = catalog::guess_format(engine.stores(), &location).await?;
        let spec = SourceConfig::new(table, location.url().as_str(), format);
        catalog::register_table(engine.ctx(), engine.stores(), &spec, None).await?;
    }
    let count_err = |e| Error::Query {
        context: "counting suppliers".into(),
        source: e,
    };
    let batches = engine
        .ctx()
        .sql("SELECT COUNT(*) FROM supplier")
        .await
        .map_err(count_err)?
        .collect()
        .await
        .map_err(count_err)?;
    let count = batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0);
    Ok(count as f64 / 10_000.0)
}

/// Parses a query list such as `1,3,5-9`.
pub fn parse_query_list(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?),
            None => {
                let n = part.parse::<u8>().ok()?;
                (n, n)
            }
        };
        if a == 0 || b > 22 || a > b {
            return None;
        }
        out.extend(a..=b);
    }
    (!out.is_empty()).then_some(out)
}

/// The timings and check of one query.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// Query number, 1 to 22.
    pub query: u8,
    /// Rows returned.
    pub rows: usize,
    /// Wall time of each iteration, in milliseconds.
    pub iterations_ms: Vec<f64>,
    /// What the answer check verified: `values`, `row count` or `not checked`.
    pub check: String,
    /// An order-insensitive digest of the first iteration's rows ([`answers::result_digest`]):
    /// two runs over the same data (local and on a cluster, say) agree on it when they
    /// returned the same answer, at any scale factor.
    pub digest: String,
    /// On a cluster, the first iteration's job: stages, tasks, shuffle bytes, time queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::cluster::JobReport>,
}

/// A whole benchmark run (the JSON of `--json FILE`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The data location.
    pub data: String,
    /// Scale factor found in the data.
    pub scale: f64,
    /// Threads used.
    pub threads: usize,
    /// One entry per query.
    pub queries: Vec<QueryResult>,
    /// Sum of the best iteration of each query, in milliseconds.
    pub total_best_ms: f64,
}

/// Runs the selected queries `iterations` times each over the tables registered by
/// [`register_tables`], checking every answer; a wrong answer is an error.
pub async fn bench(
    engine: &Engine,
    data: &str,
    scale: f64,
    queries: &[u8],
    iterations: usize,
    progress: &Progress,
    cluster: Option<&crate::cluster::Cluster>,
) -> Result<BenchReport, Error> {
    let mut results = Vec::new();
    for &q in queries {
        let sql = QUERIES[usize::from(q) - 1];
        let mut times = Vec::new();
        let mut rows = 0;
        let mut check = String::new();
        let mut digest = String::new();
        let mut job = None;
        let task = progress.task(&format!("q{q}"));
        for i in 0..iterations.max(1) {
            let start = Instant::now();
            let query_err = |e| Error::Query {
                context: format!("TPC-H q{q}"),
                source: e,
            };
            let df = engine.ctx().sql(sql).await.map_err(query_err)?;
            let batches = match cluster {
                None => df.collect().await.map_err(query_err)?,
                Some(cluster) => {
                    // Planned here, with sluice's rules; run by the cluster's executors.
                    let plan = df.create_physical_plan().await.map_err(query_err)?;
                    let config = crate::cluster::job_config(engine.ctx(), engine.stores())?;
                    let (batches, report) = cluster
                        .collect(plan, &config, &format!("tpch/q{q}"), &|_| {})
                        .await?;
                    job.get_or_insert(report);
                    batches
                }
            };
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            if i == 0 {
                rows = batches.iter().map(|b| b.num_rows()).sum();
                task.inc(rows as u64);
                check = answers::check_answer(q, scale, &batches)
                    .map_err(Error::WrongAnswer)?
                    .to_string();
                digest = answers::result_digest(&batches)
                    .map_err(|e| Error::WrongAnswer(format!("Q{q}: {e}")))?;
            }
        }
        task.finish();
        results.push(QueryResult {
            query: q,
            rows,
            iterations_ms: times,
            check,
            digest,
            job,
        });
    }
    let total_best_ms = results
        .iter()
        .map(|r| {
            r.iterations_ms
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min)
        })
        .sum();
    Ok(BenchReport {
        data: data.to_string(),
        scale,
        threads: engine.options().threads(),
        queries: results,
        total_best_ms,
    })
}

impl BenchReport {
    /// The timing table printed by `sluice bench tpch`.
    pub fn table(&self) -> String {
        let mut out = format!(
            "TPC-H SF {} over {} ({} threads)\n{:<6} {:>8} {:>10} {:>10} {:>10}  {}\n",
            self.scale,
            self.data,
            self.threads,
            "query",
            "rows",
            "best ms",
            "mean ms",
            "worst ms",
            "check"
        );
        for r in &self.queries {
            let best = r
                .iterations_ms
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            let worst = r.iterations_ms.iter().copied().fold(0.0, f64::max);
            let mean = r.iterations_ms.iter().sum::<f64>() / r.iterations_ms.len().max(1) as f64;
            // On a cluster: the job's stages, tasks and shuffle volume.
            let job = r.job.as_ref().map_or(String::new(), |j| {
                format!(
                    "  ({} stages, {} tasks, {} shuffled, {} ms queued)",
                    j.stages,
                    j.tasks,
                    crate::engine::limits::human_bytes(j.shuffle_bytes),
                    j.queued_ms
                )
            });
            out.push_str(&format!(
                "q{:<5} {:>8} {:>10.1} {:>10.1} {:>10.1}  {}{job}\n",
                r.query, r.rows, best, mean, worst, r.check
            ));
        }
        out.push_str(&format!(
            "total (best of each): {:.1} ms\n",
            self.total_best_ms
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_lists_parse_ranges() {
        assert_eq!(parse_query_list("1,3,5-7"), Some(vec![1, 3, 5, 6, 7]));
        assert_eq!(parse_query_list("22"), Some(vec![22]));
        assert_eq!(parse_query_list("0"), None);
        assert_eq!(parse_query_list("5-23"), None);
        assert_eq!(parse_query_list("x"), None);
    }
}
