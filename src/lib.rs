//! sluice: a batch data-transformation engine on Apache DataFusion.
//!
//! A pipeline is a folder: `sluice.toml` plus SQL files in `queries/`. Each model is one query
//! over sources and other models; sluice infers the DAG, runs it, and writes each model to a
//! sink, Hive-partitioned, atomically and idempotently.
//!
//! # Layout
//!
//! The modules form layers. A module uses only modules of the layers below it, and within a
//! layer only the few edges `tests/it/layers.rs` lists; that test reads every `crate::` path
//! in `src/` and fails on any other, so this map stays true.
//!
//! - **Leaves**, usable from anywhere: [`describe`] (engine and storage errors in words a user
//!   can act on, and whether retrying could help), [`flock`] (OS file locks), [`physical`]
//!   (what sluice's own physical operators share), [`status`] (how runs, models, units and
//!   checks end).
//! - **0 Vocabulary**: [`config`], `sluice.toml` → a validated [`config::Pipeline`] (file,
//!   line and column in every error); the types every other layer speaks.
//! - **1 Planning**: [`dag`] (each model's SQL parsed → table references → the DAG,
//!   `--select`, what a model reads), [`units`] (work units as pure arithmetic).
//! - **2 Storage and the table format**: [`store`] (locations → object stores),
//!   [`database`] (database sources and sinks: pools under a cap, read-only sessions, bulk
//!   reads, loads in one transaction),
//!   [`table`] (the output format: `_MANIFEST`, the commit protocol, Hive folders, a
//!   version's files as a read-only store).
//! - **3 Engine**: [`join`] (the grace hash join), [`rewrite`] (logical rewrites added to
//!   DataFusion's optimizer), [`quarantine`] (the scan that sets bad rows aside), [`catalog`] (sources and outputs registered as tables), [`engine`] (the
//!   DataFusion session, query execution and its metrics, UDFs), [`checks`], [`diagnose`]
//!   (naming the file at fault).
//! - **4 Output**: [`sink`] (result streams → partitioned files in staging, by writer lanes),
//!   [`cluster`] (the same queries and writes as jobs on an Apache DataFusion Ballista
//!   cluster: its processes, the codec for sluice's operators, stores shipped to executors).
//! - **5 Orchestration**: [`run`] (prepare, one model, its units with retries, resume),
//!   [`state`] (the SQLite run ledger and lock), [`report`], [`metrics`] (the report in
//!   Prometheus's text format), [`lineage`] (OpenLineage events: datasets, schemas, column
//!   lineage from each model's plan), [`progress`], [`tpch`]; and
//!   [`error`], the one public [`Error`] into which every layer's error folds, with its exit
//!   status.
//! - **6 Commands**: [`commands`], one module per subcommand: the only thing the binary calls.
//!
//! The binary (`main.rs`, `cli/`) parses flags in two stages, raw flags → validated options,
//! and hands the process environment in: the library never reads argv or the environment.
//!
//! Only what the binary, the tests and the fuzz targets use is `pub`; the other modules are
//! `pub(crate)`, and with `unreachable_pub` on, the compiler reports what in them is unused.

#![warn(unreachable_pub)]

pub(crate) mod catalog;
pub(crate) mod checks;
pub mod cluster;
pub mod commands;
pub mod config;
pub(crate) mod dag;
pub(crate) mod database;
pub(crate) mod describe;
pub(crate) mod diagnose;
pub mod engine;
pub mod error;
pub(crate) mod flock;
pub(crate) mod join;
pub(crate) mod lineage;
pub(crate) mod metrics;
pub(crate) mod physical;
pub mod progress;
pub mod quarantine;
pub mod report;
pub(crate) mod rewrite;
pub mod run;
pub(crate) mod sink;
pub mod state;
pub mod status;
pub mod store;
pub(crate) mod table;
pub mod tpch;
pub(crate) mod units;

pub use error::{Error, Result};
