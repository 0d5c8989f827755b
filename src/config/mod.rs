//! `sluice.toml`: reading, validating and resolving a pipeline's configuration.
//!
//! Loading happens in two stages, like a compiler front end: the file is deserialised into raw
//! structs that mirror the TOML (`raw`, so serde reports unknown keys and wrong types with
//! their line and column), then validated (`validate`) into a [`Pipeline`] whose values are
//! ready to use: sizes in bytes, enums instead of strings, each model's SQL read from its file,
//! `${env:NAME}` resolved. How each kind of value is parsed (sizes, durations, date-times,
//! locations, compression suffixes, ...) is written once, in `values`.
//!
//! This is the bottom layer, the vocabulary of the others: it imports nothing from the rest of
//! the crate. The settings of other layers that `sluice.toml` sets are defined here for that
//! reason: [`JoinStrategy`] and [`JoinOptions`] (used by the `join` module), and [`Check`] and
//! [`Severity`] (run by the `checks` module).

mod databases;
mod raw;
pub mod schedule;
#[cfg(test)]
mod tests;
mod validate;
mod values;
pub mod window;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use databases::{
    BoundValue, DatabaseConfig, DatabaseKind, DatabaseSinkConfig, DatabaseSourceConfig,
    DatabaseUrl, Guards, LatencyGuard, Relation, TableWrite, Tls, TlsMode,
};
pub(crate) use values::folder_identity;
pub use values::{
    EnvLookup, S3_COPY_LIMIT, S3_MAX_TARGET_FILE_SIZE, format_duration, interpolate_env, is_hidden,
    line_col, max_copy_bytes, parse_datetime, parse_duration, parse_size, parse_timestamp,
    refuse_target_file_size, resolve_location, split_compression, timestamp_now, too_large_to_copy,
};

use validate::Validator;

/// The file name of a pipeline's configuration inside its folder.
pub const CONFIG_FILE: &str = "sluice.toml";

/// Errors in `sluice.toml`, a model's SQL file or a command-line value. All are usage errors
/// (exit status 2) and name the file, and the line and column where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path that was read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the expected shape.
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed TOML but not a valid setting.
    #[error("{}{}: {key}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The configuration file (or `command line`).
        path: PathBuf,
        /// The line of the setting in the file, when it can be found.
        line: Option<usize>,
        /// The dotted key of the setting, e.g. `models.daily.sink.mode`.
        key: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A `${env:NAME}` reference names a variable that is not set.
    #[error("{path}: {key}: environment variable {name} is not set")]
    MissingEnv {
        /// The configuration file.
        path: PathBuf,
        /// The key whose value referenced the variable.
        key: String,
        /// The variable's name.
        name: String,
    },
}

/// What a model is materialised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Materialized {
    /// Written to its sink, and read from there by downstream models.
    Table,
    /// Not written: inlined into the queries of the models that use it.
    View,
    /// Written by periods of event time: a run computes only the periods that are new or
    /// that late input touched inside the late window (`[models.NAME.batches]`).
    Incremental,
}

impl Materialized {
    /// Whether the model is written to a sink (a table or an incremental model).
    pub fn is_written(self) -> bool {
        self != Materialized::View
    }

    /// The name as written in `sluice.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Materialized::Table => "table",
            Materialized::View => "view",
            Materialized::Incremental => "incremental",
        }
    }
}

/// A file format for sources and sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Apache Parquet.
    Parquet,
    /// Comma- (or otherwise) separated values.
    Csv,
    /// JSON lines: one object per line.
    Json,
}

impl Format {
    /// The format's name as written in `sluice.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }

    /// The file extension sluice writes and looks for, without the dot.
    pub fn extension(self) -> &'static str {
        self.name()
    }

    /// Parses a format name as a user types it (`--format`), case-insensitively.
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "parquet" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    }

    /// Guesses a format from a file name or location, ignoring compression suffixes.
    pub fn from_path(path: &str) -> Option<Format> {
        let (trimmed, _) = split_compression(path);
        let ext = trimmed.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" | "tsv" => Some(Format::Csv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    }
}

/// How a Parquet sink compresses its files' pages (`compression` on a sink, `--compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParquetCompression {
    /// Zstandard at a level from 1 (fastest) to 22 (smallest).
    Zstd(u8),
    /// Snappy: fast, larger files; DuckDB's and Spark's default.
    Snappy,
    /// LZ4 (Parquet's `LZ4_RAW`): about as fast as Snappy.
    Lz4,
    /// No compression.
    None,
}

impl ParquetCompression {
    /// What a sink writes unless told otherwise (measured: `docs/outputs.md#compression`).
    pub const DEFAULT: ParquetCompression = ParquetCompression::Zstd(1);

    /// Parses `zstd`, `zstd(N)`, `snappy`, `lz4` or `none`, case-insensitively; the error
    /// says what is accepted.
    pub fn parse(text: &str) -> Result<ParquetCompression, String> {
        let t = text.trim().to_ascii_lowercase();
        let level = t
            .strip_prefix("zstd(")
            .and_then(|r| r.strip_suffix(')'))
            .map(|n| n.trim().parse::<u8>().ok().filter(|n| (1..=22).contains(n)));
        Ok(match (t.as_str(), level) {
            ("zstd", _) => ParquetCompression::Zstd(1),
            (_, Some(Some(n))) => ParquetCompression::Zstd(n),
            ("snappy", _) => ParquetCompression::Snappy,
            ("lz4" | "lz4_raw", _) => ParquetCompression::Lz4,
            ("none" | "uncompressed", _) => ParquetCompression::None,
            (_, Some(None)) => {
                return Err(format!(
                    "{text:?}: a zstd level is a whole number from 1 to 22, as in \"zstd(3)\""
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?} is not a Parquet compression: use \"zstd\", \"zstd(N)\" (N from 1 \
                     to 22), \"snappy\", \"lz4\" or \"none\""
                ));
            }
        })
    }
}

impl Default for ParquetCompression {
    fn default() -> ParquetCompression {
        ParquetCompression::DEFAULT
    }
}

impl std::fmt::Display for ParquetCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParquetCompression::Zstd(n) => write!(f, "zstd({n})"),
            ParquetCompression::Snappy => f.write_str("snappy"),
            ParquetCompression::Lz4 => f.write_str("lz4"),
            ParquetCompression::None => f.write_str("none"),
        }
    }
}

/// How a sink treats output that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Replace the whole output.
    Overwrite,
    /// Add the new files to the existing output.
    Append,
    /// Replace exactly the partitions present in the new result; leave the others.
    OverwritePartitions,
    /// Fail if any output exists.
    ErrorIfExists,
}

impl WriteMode {
    /// The mode's name as written in `sluice.toml`.
    pub fn name(self) -> &'static str {
        match self {
            WriteMode::Overwrite => "overwrite",
            WriteMode::Append => "append",
            WriteMode::OverwritePartitions => "overwrite_partitions",
            WriteMode::ErrorIfExists => "error_if_exists",
        }
    }

    /// Parses a mode as a user types it (`--mode`).
    pub fn parse(s: &str) -> Option<WriteMode> {
        match s {
            "overwrite" => Some(WriteMode::Overwrite),
            "append" => Some(WriteMode::Append),
            "overwrite_partitions" | "overwrite-partitions" => Some(WriteMode::OverwritePartitions),
            "error_if_exists" | "error-if-exists" => Some(WriteMode::ErrorIfExists),
            _ => None,
        }
    }
}

/// What to do with rows that do not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRows {
    /// Fail the model, naming the file and line.
    #[default]
    Fail,
    /// Send bad rows to the rejects output and go on.
    Quarantine,
}

/// What to do when the files of one source do not all have the same columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaEvolution {
    /// Refuse the source, naming two files and the columns that differ.
    #[default]
    Fail,
    /// Merge the columns by name; a column a file lacks reads as NULL; a column with two
    /// types is an error.
    Union,
}

/// Compression of a text source's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Plain files.
    #[default]
    None,
    /// `.gz` files.
    Gzip,
    /// `.zst` files.
    Zstd,
    /// `.bz2` files.
    Bzip2,
    /// `.xz` files.
    Xz,
}

impl Compression {
    /// The compression a file name's suffix implies (`.gz`, `.zst`, `.bz2`, `.xz`).
    pub fn from_path(path: &str) -> Compression {
        split_compression(path).1
    }

    /// The file name suffix of this compression (`.gz`, ...), `""` for none.
    pub fn suffix(self) -> &'static str {
        values::compression_suffix(self)
    }
}

/// Run-wide settings (`[settings]`), all optional.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Query memory pool in bytes; operators spill beyond it.
    pub memory_limit: Option<usize>,
    /// Worker threads and DataFusion target partitions.
    pub threads: Option<usize>,
    /// Folder for spill files.
    pub spill_dir: Option<PathBuf>,
    /// The state store file, absolute.
    pub state: PathBuf,
    /// Where writers stage files (a folder on the outputs' store), instead of beside each
    /// output.
    pub staging: Option<String>,
    /// Default timeout, retries and concurrency of work units.
    pub units: UnitSettings,
    /// How hash joins run (`join_strategy`, `join_buckets`).
    pub join: JoinOptions,
    /// Where queries run (`cluster`): `None` in this process.
    pub cluster: Option<ClusterTarget>,
    /// `[settings.options]`: DataFusion's configuration options and sluice's rewrite
    /// switches, by key (checked when the engine starts: `EngineOptions::settings`).
    pub options: Vec<(String, String)>,
}

/// A Ballista cluster queries run on (`[settings] cluster`, `--cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// A scheduler and executors started inside this process (`"standalone"`): to try the
    /// cluster path, and for tests. Local paths are allowed, the executors being here.
    Standalone,
    /// The scheduler at `df://HOST:PORT` (port 50050 when not given).
    Remote {
        /// The scheduler's host.
        host: String,
        /// Its gRPC port.
        port: u16,
    },
}

impl ClusterTarget {
    /// The port a scheduler listens on unless told otherwise.
    pub const DEFAULT_PORT: u16 = 50050;

    /// Parses `standalone` or `df://HOST[:PORT]` (also `http://`, as Ballista accepts).
    pub fn parse(s: &str) -> Result<ClusterTarget, String> {
        let s = s.trim();
        if s == "standalone" {
            return Ok(ClusterTarget::Standalone);
        }
        let expected = || {
            format!(
                "{s:?} is not a cluster: expected \"standalone\" or a scheduler URL such as \
                 \"df://scheduler:50050\""
            )
        };
        let rest = s
            .strip_prefix("df://")
            .or_else(|| s.strip_prefix("http://"))
            .ok_or_else(expected)?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| expected())?),
            None => (rest, Self::DEFAULT_PORT),
        };
        if host.is_empty() || host.contains('/') {
            return Err(expected());
        }
        Ok(ClusterTarget::Remote {
            host: host.to_string(),
            port,
        })
    }

    /// Whether its executors share this machine's files: a standalone cluster, or a scheduler
    /// on a loopback address (which only processes of this machine can reach, its executors
    /// included).
    pub fn shares_local_files(&self) -> bool {
        match self {
            ClusterTarget::Standalone => true,
            ClusterTarget::Remote { host, .. } => {
                host == "localhost"
                    || host
                        .trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// The scheduler's gRPC URL, for a remote cluster.
    pub fn scheduler_url(&self) -> Option<String> {
        match self {
            ClusterTarget::Standalone => None,
            ClusterTarget::Remote { host, port } => Some(format!("http://{host}:{port}")),
        }
    }
}

impl fmt::Display for ClusterTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterTarget::Standalone => f.write_str("standalone"),
            ClusterTarget::Remote { host, port } => write!(f, "df://{host}:{port}"),
        }
    }
}

/// How hash joins run (`join_strategy` in `[settings]`, `--join-strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JoinStrategy {
    /// With a memory limit, every hash join may partition when its build side does not fit;
    /// without one, DataFusion's in-memory hash join.
    #[default]
    Auto,
    /// DataFusion's in-memory hash join always (fails when the build side does not fit).
    InMemory,
    /// Partition every hash join into buckets on disk, even when it would fit.
    Grace,
    /// DataFusion's sort-merge join (sorts both inputs, spilling sorted runs), for
    /// comparison and for inputs already sorted on the join keys.
    SortMerge,
}

impl JoinStrategy {
    /// Parses `auto`, `in_memory`, `grace` or `sort_merge`.
    pub fn parse(s: &str) -> Option<JoinStrategy> {
        match s {
            "auto" => Some(JoinStrategy::Auto),
            "in_memory" => Some(JoinStrategy::InMemory),
            "grace" => Some(JoinStrategy::Grace),
            "sort_merge" => Some(JoinStrategy::SortMerge),
            _ => None,
        }
    }
}

/// Join settings for the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinOptions {
    /// The strategy.
    pub strategy: JoinStrategy,
    /// Buckets to partition into (`None`: from the build side's estimated size).
    pub buckets: Option<usize>,
    /// The largest build side, in bytes, that every partition of a join reads whole (a
    /// broadcast join) rather than both sides being hash-partitioned by the join keys
    /// (`broadcast_join_limit`; `None`: 16 MiB locally, Ballista's 128 MiB on a cluster).
    /// A build side of unknown size is judged by its rows: an eighth as many.
    pub broadcast_limit: Option<usize>,
    /// The order inner joins run in.
    pub order: JoinOrder,
}

/// The order a query's inner joins run in (`join_order`, `--join-order`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JoinOrder {
    /// The order estimated cheapest from the tables' statistics and samples of their
    /// filters (`cost`, the default: it wins on the whole of TPC-H at SF 1 and SF 10,
    /// docs/running.md#join-order).
    #[default]
    Cost,
    /// The order the SQL writes them in (`as_written`).
    AsWritten,
}

impl JoinOrder {
    /// Parses `cost` or `as_written`.
    pub fn parse(s: &str) -> Option<JoinOrder> {
        match s {
            "cost" => Some(JoinOrder::Cost),
            "as_written" => Some(JoinOrder::AsWritten),
            _ => None,
        }
    }
}

/// One object store (`[stores.NAME]`), selected by URL prefix.
#[derive(Clone, Default)]
pub struct StoreConfig {
    /// The store's name in `sluice.toml`.
    pub name: String,
    /// The URL prefix the store serves, e.g. `s3://lake`.
    pub url: String,
    /// Further object_store options (`endpoint`, `region`, `allow_http`, credentials...), with
    /// `${env:NAME}` already resolved. Keys use object_store's names (`aws_endpoint`, ...) or
    /// the short forms of the spec (`endpoint`, `region`, `allow_http`).
    pub options: BTreeMap<String, String>,
    /// Its I/O quotas.
    pub quota: StoreQuota,
}

/// A store's I/O quotas (`[stores.NAME] max_bytes_per_second`, `max_requests_per_second`,
/// `max_concurrent_requests`): one pace for the whole process, read and write alike.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreQuota {
    /// Bytes read and written per second.
    pub bytes_per_second: Option<u64>,
    /// Requests started per second.
    pub requests_per_second: Option<f64>,
    /// Requests in flight at once.
    pub concurrent_requests: Option<usize>,
}

impl StoreQuota {
    /// No quota at all.
    pub fn is_unlimited(&self) -> bool {
        self == &StoreQuota::default()
    }
}

impl std::fmt::Debug for StoreConfig {
    /// Shows option names only: values may be credentials, which are never printed or logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("quota", &self.quota)
            .finish()
    }
}

/// CSV reading options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CsvOptions {
    /// Whether the first line names the columns.
    pub has_header: bool,
    /// Field separator.
    pub delimiter: u8,
    /// Quote character.
    pub quote: u8,
    /// Escape character inside quoted fields, if any.
    pub escape: Option<u8>,
    /// A string read as NULL (besides the empty field).
    pub null_value: Option<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            has_header: true,
            delimiter: b',',
            quote: b'"',
            escape: None,
            null_value: None,
        }
    }
}

/// A source (`[sources.NAME]`): files a model's SQL reads as a table.
#[derive(Debug, Clone, Serialize)]
pub struct SourceConfig {
    /// The table name models use.
    pub name: String,
    /// A file, folder / prefix, or glob; relative to the pipeline folder or a URL.
    pub location: String,
    /// The files' format.
    pub format: Format,
    /// Hive-style partition columns (`key=value` folders), with optional SQL types.
    pub partition_cols: Vec<PartitionCol>,
    /// CSV options.
    pub csv: CsvOptions,
    /// Compression of CSV / JSON files.
    pub compression: Compression,
    /// The declared schema, as a SQL column list (`id BIGINT, name VARCHAR`); inferred if absent.
    pub schema: Option<String>,
    /// What to do with rows that do not parse.
    pub on_bad_rows: OnBadRows,
    /// Files with different columns: fail (default) or union.
    pub schema_evolution: SchemaEvolution,
    /// With quarantine: the most rejected rows tolerated.
    pub max_bad_rows: Option<u64>,
    /// With quarantine: the largest share of a source's rows that may be rejected (0–1).
    pub max_bad_ratio: Option<f64>,
    /// Where quarantined rows go.
    pub rejects: Option<String>,
    /// The column that places a row in time (used by batches and incremental models).
    pub event_time: Option<String>,
}

impl SourceConfig {
    /// A source with default options: `location` (absolute path or URL) in `format`.
    pub fn new(name: &str, location: &str, format: Format) -> SourceConfig {
        SourceConfig {
            name: name.to_string(),
            location: location.to_string(),
            format,
            partition_cols: Vec::new(),
            csv: CsvOptions::default(),
            compression: Compression::default(),
            schema: None,
            on_bad_rows: OnBadRows::default(),
            schema_evolution: SchemaEvolution::default(),
            max_bad_rows: None,
            max_bad_ratio: None,
            rejects: None,
            event_time: None,
        }
    }
}

/// A Hive partition column of a source, e.g. `dt` or `dt:date`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionCol {
    /// The column name (the `key` of `key=value`).
    pub name: String,
    /// Its SQL type; values are read as strings when absent.
    pub sql_type: Option<String>,
}

impl PartitionCol {
    /// Parses `name` or `name:type`.
    pub fn parse(s: &str) -> PartitionCol {
        match s.split_once(':') {
            Some((name, ty)) => PartitionCol {
                name: name.trim().to_string(),
                sql_type: Some(ty.trim().to_string()),
            },
            None => PartitionCol {
                name: s.trim().to_string(),
                sql_type: None,
            },
        }
    }
}

/// Where and how a model's output is written (`[models.NAME.sink]`).
#[derive(Debug, Clone, Serialize)]
pub struct SinkConfig {
    /// The output folder / prefix; relative to the pipeline folder or a URL.
    pub location: String,
    /// The output format.
    pub format: Format,
    /// Hive partition columns of the output.
    pub partition_by: Vec<String>,
    /// What happens to existing output.
    pub mode: WriteMode,
    /// Rows per output file before a new file is started.
    pub target_rows_per_file: usize,
    /// Bytes per output file before a new file is started (see `docs/outputs.md#file-sizes`).
    pub target_file_size: u64,
    /// How Parquet files are compressed.
    pub compression: ParquetCompression,
    /// A folder without a `_MANIFEST` that holds files: take them as the output's current
    /// version (`true`), or refuse to write there (the default).
    pub adopt: bool,
    /// The database table the output is loaded into, after it is written to `location` (then
    /// a mirror of what the last run loaded, in Parquet).
    pub database: Option<DatabaseSinkConfig>,
}

/// The default number of rows in one output file.
pub const DEFAULT_ROWS_PER_FILE: usize = 1_000_000;

/// The default size of one output file: 512 MiB. Large enough for efficient scans (Iceberg's
/// default target too), small enough that a file is published (on S3, copied) in seconds and
/// well under the 5 GiB an S3 copy takes. With typical rows the 1,000,000-row target rolls
/// files first; this bounds wide rows.
pub const DEFAULT_FILE_SIZE: u64 = 512 << 20;

/// A model (`[models.NAME]` and/or `queries/NAME.sql`): one query and where its result goes.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model's name, which other models use as a table name.
    pub name: String,
    /// The SQL file, absolute.
    pub sql_path: PathBuf,
    /// The SQL text as read from the file (variables not yet substituted).
    pub sql: String,
    /// Table or view.
    pub materialized: Materialized,
    /// Where the output goes (table models).
    pub sink: SinkConfig,
    /// How the model is split into work units by event time (`[models.NAME.batches]` with a
    /// `size`); `None`: not by time.
    pub batches: Option<BatchConfig>,
    /// `by = "file"`: one work unit per this many input files (a map-only model over one
    /// source); `None`: not by file.
    pub files_per_unit: Option<usize>,
    /// `by = "key"`: one work unit per bucket of a hash of the join key; `None`: not by key.
    pub key_buckets: Option<KeyBuckets>,
    /// Checks run on the staged output before it is published.
    pub checks: Vec<Check>,
    /// Timeout, retries and concurrency of its work units.
    pub units: UnitSettings,
}

/// How much a failed check matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The model fails; nothing is published.
    Error,
    /// Reported; the output is published.
    Warn,
}

impl Severity {
    /// `error` or `warn`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warn => "warn",
        }
    }
}

/// What a check asserts of a model's output.
#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// None of these columns is NULL in any row.
    NotNull(Vec<String>),
    /// No two rows share a value of these columns (together).
    Unique(Vec<String>),
    /// Every non-NULL value of `column` is one of `values` (SQL literals).
    AcceptedValues { column: String, values: Vec<String> },
    /// The output's row count is within `[min, max]`.
    RowCount { min: Option<u64>, max: Option<u64> },
    /// A boolean SQL expression every row satisfies (NULL counts as not satisfied).
    Expression(String),
    /// A query over the output (and any table of the pipeline) that returns no rows.
    Sql(String),
    /// An incremental model's late-arrival rate in the run (late rows over all rows counted)
    /// is at most `max` (0 to 1).
    LateRate {
        /// The highest rate that passes.
        max: f64,
    },
}

/// One check of a model (`[[models.NAME.checks]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What it asserts.
    pub kind: CheckKind,
    /// How much a failure matters.
    pub severity: Severity,
}

impl Check {
    /// A short name for reports: `not_null(a, b)`, `row_count(min 1)`...
    pub fn name(&self) -> String {
        match &self.kind {
            CheckKind::NotNull(c) => format!("not_null({})", c.join(", ")),
            CheckKind::Unique(c) => format!("unique({})", c.join(", ")),
            CheckKind::AcceptedValues { column, .. } => format!("accepted_values({column})"),
            CheckKind::RowCount { min, max } => {
                let mut parts = Vec::new();
                if let Some(m) = min {
                    parts.push(format!("min {m}"));
                }
                if let Some(m) = max {
                    parts.push(format!("max {m}"));
                }
                format!("row_count({})", parts.join(", "))
            }
            CheckKind::Expression(e) => format!("expression({e})"),
            CheckKind::Sql(_) => "sql".to_string(),
            CheckKind::LateRate { max } => format!("late_rate(max {max})"),
        }
    }
}

/// `[models.NAME.batches] by = "key"`: the model runs as `buckets` work units, unit `i`
/// reading, of each listed source, the rows whose key hashes to bucket `i`. For a join of
/// large inputs on that key, each unit joins 1/`buckets` of the keys, and is committed (and
/// resumed) on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyBuckets {
    /// Number of units.
    pub buckets: usize,
    /// Source name → its key column.
    pub keys: BTreeMap<String, String>,
}

/// The period of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    /// One unit per hour.
    Hour,
    /// One unit per day.
    Day,
    /// One unit per calendar month.
    Month,
    /// One unit per calendar year.
    Year,
}

impl BatchSize {
    /// The name as written in `sluice.toml`.
    pub fn name(self) -> &'static str {
        match self {
            BatchSize::Hour => "hour",
            BatchSize::Day => "day",
            BatchSize::Month => "month",
            BatchSize::Year => "year",
        }
    }
}

/// `[models.NAME.batches]`: a model run as one work unit per period of event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// The period.
    pub size: BatchSize,
    /// First period's start (inclusive); default: the earliest event time in the inputs.
    pub start: Option<chrono::NaiveDateTime>,
    /// End (exclusive); default: just past the latest event time.
    pub end: Option<chrono::NaiveDateTime>,
    /// `timezone`: periods are days (months...) of this zone's wall time, DST-correct;
    /// `None`: UTC.
    pub timezone: Option<chrono_tz::Tz>,
    /// For an incremental model: its late window and what to do beyond it.
    pub incremental: Option<IncrementalConfig>,
}

/// The settings of an incremental model, in `[models.NAME.batches]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementalConfig {
    /// `late_window`: late input for a period is applied automatically until the period's
    /// end plus this (inclusive); default 0.
    pub late_window: chrono::Duration,
    /// `lookback`: the last N computed periods are computed again on every run; default 0.
    pub lookback: u32,
    /// `on_late_beyond_window`: what a run that finds rows later than the window does.
    pub on_late_beyond_window: OnLate,
}

/// `on_late_beyond_window`: what a run that finds rows later than the late window does
/// (they are never applied without a backfill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLate {
    /// Report them; the run succeeds.
    #[default]
    Warn,
    /// Report them; the run exits 1 once everything else is published.
    Fail,
}

/// Timeout, retries and concurrency of a model's work units (`[settings]`, overridden per
/// model in `[models.NAME.batches]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitSettings {
    /// A unit running longer is cancelled (and retried).
    pub timeout: Option<std::time::Duration>,
    /// Attempts after the first, for transient failures and timeouts.
    pub retries: u32,
    /// Units of one model running at once.
    pub max_concurrent: usize,
}

impl Default for UnitSettings {
    fn default() -> Self {
        UnitSettings {
            timeout: None,
            retries: 3,
            max_concurrent: 2,
        }
    }
}

/// A validated pipeline: what `sluice run` and `sluice plan` work from.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The pipeline's name (defaults to its folder's name).
    pub name: String,
    /// The pipeline folder; relative locations resolve against it.
    pub root: PathBuf,
    /// The `sluice.toml` path.
    pub file: PathBuf,
    /// `[settings]`.
    pub settings: Settings,
    /// `[stores.*]`.
    pub stores: Vec<StoreConfig>,
    /// `[databases.*]`, by name.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// `[sources.*]` of files, by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// `[sources.*]` read from a database, by name (apart from `sources`: no file path of
    /// the code meets them).
    pub database_sources: BTreeMap<String, DatabaseSourceConfig>,
    /// Models, by name: `[models.*]` plus every `queries/*.sql`.
    pub models: BTreeMap<String, ModelConfig>,
    /// Default values of `{{ KEY }}` variables (`[vars]`), overridden by `--var`.
    pub vars: BTreeMap<String, String>,
    /// `[schedule]`: when `sluice schedule` runs it.
    pub schedule: Option<schedule::Schedule>,
    /// `[lineage]`: where its runs' OpenLineage events go.
    pub lineage: Option<LineageConfig>,
}

/// `[lineage]`: OpenLineage events to a JSON-lines file, an HTTP endpoint, or both.
#[derive(Debug, Clone, Default)]
pub struct LineageConfig {
    /// `file`: appended one event per line (relative to the pipeline folder).
    pub file: Option<PathBuf>,
    /// `url`: each event POSTed there as JSON (Marquez: `.../api/v1/lineage`).
    pub url: Option<String>,
    /// `namespace`: the job's namespace (default `sluice`); the job's name is the pipeline's.
    pub namespace: String,
}

impl Pipeline {
    /// Whether `name` is a source, of files or of a database.
    pub fn is_source(&self, name: &str) -> bool {
        self.sources.contains_key(name) || self.database_sources.contains_key(name)
    }

    /// An error in the setting `key` of this pipeline's `sluice.toml`, found after loading
    /// (where the SQL is needed to tell): with the file and the setting's line.
    pub fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        ConfigError::Invalid {
            path: self.file.clone(),
            line: values::key_line(&text, key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// Loads a pipeline from a folder holding `sluice.toml`, or from the file itself.
    pub fn load(path: &Path, env: EnvLookup<'_>) -> Result<Pipeline, ConfigError> {
        let file = if path.is_dir() {
            path.join(CONFIG_FILE)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
            path: file.clone(),
            source,
        })?;
        let root = file
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let root = std::path::absolute(&root).map_err(|source| ConfigError::Read {
            path: root.clone(),
            source,
        })?;
        Pipeline::from_toml(&text, &file, &root, env)
    }

    /// Builds a pipeline from TOML text; `file` names it in messages, `root` is its folder.
    pub fn from_toml(
        text: &str,
        file: &Path,
        root: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Pipeline, ConfigError> {
        let raw: raw::RawPipeline = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            let mut message = e.message().trim().to_string();
            if message.contains("value was too large") {
                // (TOML integers are 64-bit signed: BIGINT UNSIGNED bounds may not be.)
                message.push_str(
                    ": TOML whole numbers stop at 9223372036854775807; write a larger one in \
                     quotes (upper_bound = \"18446744073709551615\")",
                );
            }
            ConfigError::Syntax {
                path: file.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        Validator::new(file, text, root, env).pipeline(raw)
    }

    /// Resolves a location written in this pipeline (relative to its folder) to an absolute
    /// path or URL string.
    pub fn resolve(&self, location: &str) -> String {
        resolve_location(location, &self.root)
    }
}

/// What the `sluice_toml` fuzz target checks on any text, also run on the inputs it found
/// (`fuzz/regressions/`) as tests: loading never panics, and a refusal names the file.
#[doc(hidden)]
pub fn check_toml_load(text: &str) {
    let env = |name: &str| name.len().is_multiple_of(2).then(|| format!("v{name}"));
    let file = Path::new("sluice.toml");
    if let Err(e) = Pipeline::from_toml(text, file, Path::new("/nonexistent/sluice-fuzz"), &env) {
        let message = e.to_string();
        assert!(message.contains("sluice.toml"), "{message}");
    }
}
