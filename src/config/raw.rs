//! The serde shapes of `sluice.toml`: structs that mirror the TOML, so serde reports unknown
//! keys and wrong types with their line and column. Strings stay strings here; the
//! [`Validator`](super::validate::Validator) turns them into the validated types.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{BatchSize, Compression, Format, Materialized, OnBadRows, SchemaEvolution, WriteMode};

/// The whole file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPipeline {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) settings: RawSettings,
    #[serde(default)]
    pub(super) stores: BTreeMap<String, RawStore>,
    #[serde(default)]
    pub(super) databases: BTreeMap<String, RawDatabase>,
    #[serde(default)]
    pub(super) sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    pub(super) models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, toml::Value>,
    pub(super) schedule: Option<RawSchedule>,
    pub(super) lineage: Option<RawLineage>,
}

/// `[lineage]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLineage {
    pub(super) file: Option<String>,
    pub(super) url: Option<String>,
    pub(super) namespace: Option<String>,
}

/// `[schedule]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub(super) cron: Option<String>,
    pub(super) timezone: Option<String>,
    pub(super) window: Option<OneOrMany>,
    pub(super) on_window_end: Option<String>,
    pub(super) catch_up: Option<String>,
    pub(super) max_run_time: Option<String>,
}

/// `[settings]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSettings {
    pub(super) memory_limit: Option<String>,
    pub(super) threads: Option<usize>,
    pub(super) spill_dir: Option<String>,
    pub(super) state: Option<String>,
    pub(super) staging: Option<String>,
    pub(super) unit_timeout: Option<String>,
    pub(super) retries: Option<u32>,
    pub(super) max_concurrent_units: Option<usize>,
    pub(super) join_strategy: Option<String>,
    pub(super) join_buckets: Option<usize>,
    pub(super) broadcast_join_limit: Option<String>,
    pub(super) join_order: Option<String>,
    pub(super) cluster: Option<String>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, toml::Value>,
}

/// `[stores.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) url: String,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) allow_http: Option<bool>,
    pub(super) access_key_id: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) session_token: Option<String>,
    pub(super) max_bytes_per_second: Option<String>,
    pub(super) max_requests_per_second: Option<f64>,
    pub(super) max_concurrent_requests: Option<usize>,
    #[serde(default)]
    pub(super) options: BTreeMap<String, String>,
}

/// `[databases.NAME]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: String,
    pub(super) max_connections: Option<usize>,
    pub(super) statement_timeout: Option<String>,
    pub(super) read_only: Option<bool>,
    pub(super) max_replica_lag: Option<String>,
    pub(super) lag_wait: Option<String>,
    pub(super) pause_when_latency_over: Option<String>,
    pub(super) probe: Option<String>,
    pub(super) probe_interval: Option<String>,
    pub(super) max_pause: Option<String>,
    pub(super) max_rows_per_second: Option<u64>,
}

/// `[sources.NAME]`: files (`location`) or a database (`database`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) location: Option<String>,
    pub(super) database: Option<String>,
    pub(super) table: Option<String>,
    pub(super) query: Option<String>,
    pub(super) partition_column: Option<String>,
    pub(super) partitions: Option<usize>,
    pub(super) lower_bound: Option<toml::Value>,
    pub(super) upper_bound: Option<toml::Value>,
    pub(super) format: Option<Format>,
    #[serde(default)]
    pub(super) partition_cols: Vec<String>,
    pub(super) has_header: Option<bool>,
    pub(super) delimiter: Option<String>,
    pub(super) quote: Option<String>,
    pub(super) escape: Option<String>,
    pub(super) null_value: Option<String>,
    pub(super) compression: Option<Compression>,
    pub(super) schema: Option<String>,
    #[serde(default)]
    pub(super) on_bad_rows: OnBadRows,
    #[serde(default)]
    pub(super) schema_evolution: SchemaEvolution,
    pub(super) max_bad_rows: Option<u64>,
    pub(super) max_bad_ratio: Option<f64>,
    pub(super) rejects: Option<String>,
    pub(super) event_time: Option<String>,
}

/// `[models.NAME]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) sql: Option<String>,
    pub(super) materialized: Option<Materialized>,
    pub(super) sink: Option<RawSink>,
    pub(super) batches: Option<RawBatches>,
    #[serde(default)]
    pub(super) checks: Vec<RawCheck>,
}

/// One `[[models.NAME.checks]]` entry: exactly one kind, and a severity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) not_null: Option<OneOrMany>,
    pub(super) unique: Option<OneOrMany>,
    pub(super) accepted_values: Option<RawAcceptedValues>,
    pub(super) row_count: Option<RawRowCount>,
    pub(super) expression: Option<String>,
    pub(super) sql: Option<String>,
    pub(super) late_rate: Option<RawLateRate>,
    pub(super) severity: Option<String>,
}

/// `late_rate = { max = ... }` of a check.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLateRate {
    pub(super) max: f64,
}

/// A column or a list of columns (`not_null = "a"` or `not_null = ["a", "b"]`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The columns as a list.
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `accepted_values = { column = ..., values = [...] }` of a check.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcceptedValues {
    pub(super) column: String,
    pub(super) values: Vec<toml::Value>,
}

/// `row_count = { min = ..., max = ... }` of a check.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRowCount {
    pub(super) min: Option<u64>,
    pub(super) max: Option<u64>,
}

/// `[models.NAME.batches]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatches {
    pub(super) by: Option<String>,
    pub(super) files_per_unit: Option<usize>,
    pub(super) buckets: Option<usize>,
    pub(super) keys: Option<BTreeMap<String, String>>,
    pub(super) size: Option<BatchSize>,
    pub(super) start: Option<String>,
    pub(super) end: Option<String>,
    pub(super) unit_timeout: Option<String>,
    pub(super) retries: Option<u32>,
    pub(super) max_concurrent_units: Option<usize>,
    pub(super) timezone: Option<String>,
    pub(super) late_window: Option<String>,
    pub(super) lookback: Option<u32>,
    pub(super) on_late_beyond_window: Option<super::OnLate>,
}

/// `[models.NAME.sink]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSink {
    pub(super) location: Option<String>,
    pub(super) format: Option<Format>,
    #[serde(default)]
    pub(super) partition_by: Vec<String>,
    pub(super) mode: Option<RawWriteMode>,
    pub(super) target_rows_per_file: Option<usize>,
    pub(super) target_file_size: Option<String>,
    pub(super) compression: Option<String>,
    #[serde(default)]
    pub(super) adopt: bool,
    pub(super) database: Option<String>,
    pub(super) table: Option<String>,
    pub(super) key: Option<Vec<String>>,
}

/// `mode` of a sink: the file modes, and `upsert`, which only a database sink has.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawWriteMode {
    Overwrite,
    Append,
    OverwritePartitions,
    ErrorIfExists,
    Upsert,
}

impl RawWriteMode {
    /// The mode's name as written in `sluice.toml`.
    pub(super) fn name(self) -> &'static str {
        match self.file_mode() {
            Some(m) => m.name(),
            None => "upsert",
        }
    }

    /// The mode of a sink of files (`None`: upsert).
    pub(super) fn file_mode(self) -> Option<WriteMode> {
        Some(match self {
            RawWriteMode::Overwrite => WriteMode::Overwrite,
            RawWriteMode::Append => WriteMode::Append,
            RawWriteMode::OverwritePartitions => WriteMode::OverwritePartitions,
            RawWriteMode::ErrorIfExists => WriteMode::ErrorIfExists,
            RawWriteMode::Upsert => return None,
        })
    }
}
