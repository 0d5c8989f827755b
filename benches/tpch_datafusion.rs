//! Baseline for `sluice bench tpch`: the same 22 queries on plain DataFusion, with no sluice
//! layer at all (default session, Parquet tables registered directly), so the cost of sluice's
//! layers can be measured as a difference. Whole-process timing is done from outside:
//!
//! ```sh
//! cargo bench --bench tpch_datafusion -- /data/tpch-sf1 [ITERATIONS]
//! ```
//!
//! Prints one line per query (best of ITERATIONS, in ms) and the total. DataFusion's own
//! `DATAFUSION_*` environment variables set its options (for instance
//! `DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS=true`), so a setting can be measured here
//! before sluice adopts it.

use std::time::Instant;

use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

const TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

#[tokio::main]
async fn main() -> datafusion::error::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let Some(data) = args.next() else {
        eprintln!("usage: tpch_datafusion DATA_DIR [ITERATIONS]");
        std::process::exit(2);
    };
    let iterations: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let ctx = SessionContext::new_with_config(SessionConfig::from_env()?);
    for t in TABLES {
        ctx.register_parquet(t, format!("{data}/{t}/"), ParquetReadOptions::default())
            .await?;
    }
    let mut total = 0.0;
    for q in 1..=22 {
        let sql = std::fs::read_to_string(format!(
            "{}/queries/tpch/q{q}.sql",
            env!("CARGO_MANIFEST_DIR")
        ))?;
        let mut best = f64::INFINITY;
        let mut rows = 0;
        for _ in 0..iterations.max(1) {
            let start = Instant::now();
            let batches = ctx.sql(&sql).await?.collect().await?;
            best = best.min(start.elapsed().as_secs_f64() * 1000.0);
            rows = batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        total += best;
        println!("q{q:<5} {rows:>8} {best:>10.1}");
    }
    println!("total (best of each): {total:.1} ms");
    Ok(())
}
