//! sluice: a batch data-transformation engine on Apache DataFusion.
//!
//! A pipeline is a folder: `sluice.toml` plus SQL files in `queries/`. Each model is one query
//! over sources and other models; sluice infers the DAG, runs it, and writes each model to a
//! sink, Hive-partitioned, atomically and idempotently.
//!
//! # Layout
//!
//! Data flows one way, top to bottom:
//!
//! - [`config`]: `sluice.toml` → a validated [`config::Pipeline`] (file, line and column in
//!   every error).
//! - [`plan`]: each model's SQL parsed → table references → the [`plan::Dag`], `--select`.
//! - [`store`]: locations (paths, `s3://`, `gs://`, ...) → object stores, one registry.
//! - [`catalog`]: sources and model outputs registered as SQL tables; [`quarantine`]: the scan
//!   of a CSV source whose bad rows are set aside.
//! - [`engine`]: the DataFusion session (memory pool, spilling, threads) and query execution.
//! - [`join`]: the grace hash join that lets joins larger than memory finish under the limit.
//! - [`checks`]: data-quality checks run on a model's staged output before it is published.
//! - [`sink`]: result streams → partitioned files in staging → published by the
//!   [`sink::commit`] protocol (`_MANIFEST` as the atomic commit point).
//! - [`run`]: `sluice run` / `sluice plan`, tying the above together per model.
//! - [`state`]: the SQLite run ledger (`sluice runs`) and the lock that keeps runs of one
//!   pipeline from overlapping.
//! - [`units`]: work units: batches of event time, and the context one batch runs in.
//! - [`sql`]: `sluice sql`, one transform outside a pipeline.
//! - [`tpch`]: `sluice gen tpch` and `sluice bench tpch`.
//! - [`report`], [`progress`], [`diagnose`]: what the user sees of a run.
//! - [`error`]: the one public [`Error`], and its exit status.
//!
//! The library never reads argv or the process environment: the binary parses flags into
//! option structs and passes environment variables in.

pub mod catalog;
pub mod checks;
pub mod config;
pub mod describe;
pub mod diagnose;
pub mod engine;
pub mod error;
pub mod join;
pub mod physical;
pub mod plan;
pub mod progress;
pub mod quarantine;
pub mod report;
pub mod run;
pub mod sink;
pub mod sql;
pub mod state;
pub mod store;
pub mod table;
pub mod tpch;
pub mod units;

pub use error::{Error, Result};
