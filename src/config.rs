//! `sluice.toml`: reading, validating and resolving a pipeline's configuration.
//!
//! Loading happens in two stages, like a compiler front end: the file is deserialised into raw
//! structs that mirror the TOML (so serde reports unknown keys and wrong types with their line
//! and column), then validated into a [`Pipeline`] whose values are ready to use: sizes in bytes,
//! enums instead of strings, each model's SQL read from its file, `${env:NAME}` resolved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
}

/// A file format for sources and sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
        let lower = path.to_ascii_lowercase();
        let trimmed = [".gz", ".zst", ".bz2", ".xz"]
            .iter()
            .find_map(|c| lower.strip_suffix(c))
            .unwrap_or(&lower);
        let ext = trimmed.rsplit_once('.').map(|(_, e)| e)?;
        match ext {
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" | "tsv" => Some(Format::Csv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    }
}

/// How a sink treats output that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRows {
    /// Fail the model, naming the file and line.
    #[default]
    Fail,
    /// Send bad rows to the rejects output and go on.
    Quarantine,
}

/// What to do when the files of one source do not all have the same columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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
        let l = path.to_ascii_lowercase();
        if l.ends_with(".gz") {
            Compression::Gzip
        } else if l.ends_with(".zst") {
            Compression::Zstd
        } else if l.ends_with(".bz2") {
            Compression::Bzip2
        } else if l.ends_with(".xz") {
            Compression::Xz
        } else {
            Compression::None
        }
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
    /// Default timeout, retries and concurrency of work units.
    pub units: UnitSettings,
    /// How hash joins run (`join_strategy`, `join_buckets`).
    pub join: crate::join::JoinOptions,
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
}

impl std::fmt::Debug for StoreConfig {
    /// Shows option names only: values may be credentials, which are never printed or logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// CSV reading options.
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone)]
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
}

/// The default number of rows in one output file.
pub const DEFAULT_ROWS_PER_FILE: usize = 1_000_000;

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
    pub checks: Vec<crate::checks::Check>,
    /// Timeout, retries and concurrency of its work units.
    pub units: UnitSettings,
}

/// `[models.NAME.batches] by = "key"`: the model runs as `buckets` work units, unit `i`
/// reading, of each listed source, the rows whose key hashes to bucket `i`. For a join of
/// large inputs on that key, each unit joins 1/`buckets` of the keys, and is committed (and
/// resumed) on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBuckets {
    /// Number of units.
    pub buckets: usize,
    /// Source name → its key column.
    pub keys: BTreeMap<String, String>,
}

/// The period of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
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

/// Parses a duration such as `30m`, `90s`, `2h`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => std::time::Duration::from_millis(n),
            "s" | "" => std::time::Duration::from_secs(n),
            "m" | "min" => std::time::Duration::from_secs(n * 60),
            "h" => std::time::Duration::from_secs(n * 3600),
            "d" => std::time::Duration::from_secs(n * 86400),
            _ => return None,
        };
    }
    Some(total)
}

/// Parses `2024-01-01` or `2024-01-01T06:00:00` (or with a space).
pub fn parse_datetime(s: &str) -> Option<chrono::NaiveDateTime> {
    let s = s.trim();
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S"))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
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
    /// `[sources.*]`, by name.
    pub sources: BTreeMap<String, SourceConfig>,
    /// Models, by name: `[models.*]` plus every `queries/*.sql`.
    pub models: BTreeMap<String, ModelConfig>,
    /// Default values of `{{ KEY }}` variables (`[vars]`), overridden by `--var`.
    pub vars: BTreeMap<String, String>,
}

/// Looks up environment variables. The library never reads the process environment itself:
/// `main` passes it in, and tests pass their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

// ---------------------------------------------------------------------------------------------
// Raw TOML shapes.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: Option<String>,
    #[serde(default)]
    settings: RawSettings,
    #[serde(default)]
    stores: BTreeMap<String, RawStore>,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
    #[serde(default)]
    models: BTreeMap<String, RawModel>,
    #[serde(default)]
    vars: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    memory_limit: Option<String>,
    threads: Option<usize>,
    spill_dir: Option<String>,
    state: Option<String>,
    unit_timeout: Option<String>,
    retries: Option<u32>,
    max_concurrent_units: Option<usize>,
    join_strategy: Option<String>,
    join_buckets: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: String,
    endpoint: Option<String>,
    region: Option<String>,
    allow_http: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    #[serde(default)]
    options: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    location: String,
    format: Option<Format>,
    #[serde(default)]
    partition_cols: Vec<String>,
    has_header: Option<bool>,
    delimiter: Option<String>,
    quote: Option<String>,
    escape: Option<String>,
    null_value: Option<String>,
    compression: Option<Compression>,
    schema: Option<String>,
    #[serde(default)]
    on_bad_rows: OnBadRows,
    #[serde(default)]
    schema_evolution: SchemaEvolution,
    max_bad_rows: Option<u64>,
    max_bad_ratio: Option<f64>,
    rejects: Option<String>,
    event_time: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModel {
    sql: Option<String>,
    materialized: Option<Materialized>,
    sink: Option<RawSink>,
    batches: Option<RawBatches>,
    #[serde(default)]
    checks: Vec<RawCheck>,
}

/// One `[[models.NAME.checks]]` entry: exactly one kind, and a severity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    not_null: Option<OneOrMany>,
    unique: Option<OneOrMany>,
    accepted_values: Option<RawAcceptedValues>,
    row_count: Option<RawRowCount>,
    expression: Option<String>,
    sql: Option<String>,
    severity: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcceptedValues {
    column: String,
    values: Vec<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRowCount {
    min: Option<u64>,
    max: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBatches {
    by: Option<String>,
    files_per_unit: Option<usize>,
    buckets: Option<usize>,
    keys: Option<BTreeMap<String, String>>,
    size: Option<BatchSize>,
    start: Option<String>,
    end: Option<String>,
    unit_timeout: Option<String>,
    retries: Option<u32>,
    max_concurrent_units: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSink {
    location: Option<String>,
    format: Option<Format>,
    #[serde(default)]
    partition_by: Vec<String>,
    mode: Option<WriteMode>,
    target_rows_per_file: Option<usize>,
}

impl Pipeline {
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
        let raw: RawPipeline = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: file.to_path_buf(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        let mut v = Validator {
            file,
            text,
            root,
            env,
            default_units: UnitSettings::default(),
        };
        v.pipeline(raw)
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

/// Resolves a location against a base folder: URLs stay as they are, relative paths are joined
/// to `base`, and a trailing `/` (meaning "a folder") is kept.
pub fn resolve_location(location: &str, base: &Path) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let p = Path::new(location);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let mut s = joined.to_string_lossy().into_owned();
    if location.ends_with('/') && !s.ends_with('/') {
        s.push('/');
    }
    s
}

/// 1-based line and column of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Parses a size such as `4GiB`, `512MiB`, `2GB`, `1000000` into bytes.
pub fn parse_size(s: &str) -> Option<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = num * mult;
    (bytes.is_finite() && bytes >= 1.0).then_some(bytes as usize)
}

/// Replaces every `${env:NAME}` in `value`; `Err(NAME)` for the first unset variable.
pub fn interpolate_env(value: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = after[..end].trim();
        out.push_str(&env(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn single_byte(
    v: &Option<String>,
    key: &str,
    file: &Path,
    default: Option<u8>,
) -> Result<Option<u8>, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            let s = if s == "\\t" { "\t" } else { s.as_str() };
            if s.len() == 1 {
                Ok(Some(s.as_bytes()[0]))
            } else {
                Err(ConfigError::Invalid {
                    path: file.to_path_buf(),
                    line: None,
                    key: key.to_string(),
                    message: format!("expected a single ASCII character, got {s:?}"),
                })
            }
        }
    }
}

/// The line of the setting `key` (`settings.threads`, `models.m.checks[1].severity`,
/// `models.m.batches`) in the TOML `text`: under its table's header (the n-th one for an array
/// of tables), the line that sets its last part; or the header itself for a table. `None` when
/// the setting is written another way (an inline table, dotted keys).
fn key_line(text: &str, key: &str) -> Option<usize> {
    let header_line = |table: &str, index: usize| -> Option<usize> {
        let mut seen = 0;
        for (n, line) in text.lines().enumerate() {
            let l = line.trim();
            let name = l
                .strip_prefix("[[")
                .and_then(|l| l.strip_suffix("]]"))
                .or_else(|| l.strip_prefix('[').and_then(|l| l.strip_suffix(']')));
            if name.map(str::trim) == Some(table) {
                if seen == index {
                    return Some(n);
                }
                seen += 1;
            }
        }
        None
    };
    let split_index = |t: &str| -> (String, usize) {
        match t
            .strip_suffix(']')
            .and_then(|t| t.rsplit_once('['))
            .and_then(|(t, i)| Some((t.to_string(), i.parse().ok()?)))
        {
            Some(x) => x,
            None => (t.to_string(), 0),
        }
    };
    if let Some((table, leaf)) = key.rsplit_once('.') {
        let (table, index) = split_index(table);
        if let Some(start) = header_line(&table, index) {
            for (n, line) in text.lines().enumerate().skip(start + 1) {
                let l = line.trim();
                if l.starts_with('[') {
                    break;
                }
                if let Some(rest) = l.strip_prefix(leaf)
                    && rest.trim_start().starts_with('=')
                {
                    return Some(n + 1);
                }
            }
            // A setting missing from its table (a required one): the table's header.
            if header_line(key, 0).is_none() {
                return Some(start + 1);
            }
        }
    }
    let (table, index) = split_index(key);
    header_line(&table, index).map(|n| n + 1)
}

/// The format of the first data file in a local folder (skipping `_` and `.` entries), if the
/// location is one. Remote folders are not listed while loading the configuration.
fn local_folder_format(dir: &Path) -> Option<Format> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name()?.to_string_lossy().into_owned();
            if name.starts_with('_') || name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Some(f) = Format::from_path(&name) {
                return Some(f);
            }
        }
    }
    None
}

/// Whether a table name can be written unquoted in SQL and found again: SQL folds unquoted
/// names to lower case, so upper-case letters are not allowed.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    root: &'a Path,
    env: EnvLookup<'a>,
    default_units: UnitSettings,
}

impl Validator<'_> {
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError::Invalid {
            path: self.file.to_path_buf(),
            line: key_line(self.text, &key),
            key,
            message: message.into(),
        }
    }

    fn env_value(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        interpolate_env(value, self.env).map_err(|name| ConfigError::MissingEnv {
            path: self.file.to_path_buf(),
            key: key.to_string(),
            name,
        })
    }

    fn pipeline(&mut self, raw: RawPipeline) -> Result<Pipeline, ConfigError> {
        let name = match raw.name {
            Some(n) => n,
            None => self
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "pipeline".to_string()),
        };
        let settings = self.settings(raw.settings)?;
        self.default_units = settings.units;
        let mut stores = Vec::new();
        for (name, s) in raw.stores {
            stores.push(self.store(name, s)?);
        }
        let mut sources = BTreeMap::new();
        for (name, s) in raw.sources {
            let src = self.source(&name, s)?;
            sources.insert(name, src);
        }
        let models = self.models(raw.models, &sources)?;
        let mut vars = BTreeMap::new();
        for (k, v) in raw.vars {
            let s = match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            vars.insert(k, s);
        }
        Ok(Pipeline {
            name,
            root: self.root.to_path_buf(),
            file: self.file.to_path_buf(),
            settings,
            stores,
            sources,
            models,
            vars,
        })
    }

    fn settings(&self, raw: RawSettings) -> Result<Settings, ConfigError> {
        let memory_limit = raw
            .memory_limit
            .map(|s| {
                parse_size(&s).ok_or_else(|| {
                    self.invalid(
                        "settings.memory_limit",
                        format!("{s:?} is not a size (examples: \"512MiB\", \"4GiB\")"),
                    )
                })
            })
            .transpose()?;
        if raw.threads == Some(0) {
            return Err(self.invalid("settings.threads", "must be at least 1"));
        }
        let state = raw.state.as_deref().unwrap_or(".sluice/state.db");
        let units = self.unit_settings(
            "settings",
            UnitSettings::default(),
            raw.unit_timeout.as_deref(),
            raw.retries,
            raw.max_concurrent_units,
        )?;
        let strategy = match raw.join_strategy.as_deref() {
            None => crate::join::JoinStrategy::Auto,
            Some(s) => crate::join::JoinStrategy::parse(s).ok_or_else(|| {
                self.invalid(
                    "settings.join_strategy",
                    format!("unknown join strategy {s:?} (expected auto, in_memory, grace or sort_merge)"),
                )
            })?,
        };
        if let Some(n) = raw.join_buckets
            && !(2..=4096).contains(&n)
        {
            return Err(self.invalid("settings.join_buckets", "must be between 2 and 4096"));
        }
        Ok(Settings {
            memory_limit,
            threads: raw.threads,
            join: crate::join::JoinOptions {
                strategy,
                buckets: raw.join_buckets,
            },
            spill_dir: raw
                .spill_dir
                .map(|d| PathBuf::from(resolve_location(&d, self.root))),
            state: PathBuf::from(resolve_location(state, self.root)),
            units,
        })
    }

    fn checks(
        &self,
        model: &str,
        raw: Vec<RawCheck>,
    ) -> Result<Vec<crate::checks::Check>, ConfigError> {
        use crate::checks::{Check, CheckKind, Severity};
        let mut out = Vec::new();
        for (i, c) in raw.into_iter().enumerate() {
            let key = format!("models.{model}.checks[{i}]");
            let severity = match c.severity.as_deref() {
                None | Some("error") => Severity::Error,
                Some("warn") => Severity::Warn,
                Some(other) => {
                    return Err(self.invalid(
                        format!("{key}.severity"),
                        format!("{other:?}: expected \"error\" or \"warn\""),
                    ));
                }
            };
            let mut kinds = Vec::new();
            if let Some(cols) = c.not_null {
                kinds.push(CheckKind::NotNull(cols.into_vec()));
            }
            if let Some(cols) = c.unique {
                kinds.push(CheckKind::Unique(cols.into_vec()));
            }
            if let Some(a) = c.accepted_values {
                let values = a
                    .values
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => Ok(format!("'{}'", s.replace('\'', "''"))),
                        toml::Value::Integer(n) => Ok(n.to_string()),
                        toml::Value::Float(f) => Ok(f.to_string()),
                        toml::Value::Boolean(b) => Ok(b.to_string().to_uppercase()),
                        other => Err(self.invalid(
                            format!("{key}.accepted_values.values"),
                            format!("{other} is not a string, number or boolean"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if values.is_empty() {
                    return Err(self.invalid(
                        format!("{key}.accepted_values.values"),
                        "needs at least one value",
                    ));
                }
                kinds.push(CheckKind::AcceptedValues {
                    column: a.column,
                    values,
                });
            }
            if let Some(r) = c.row_count {
                if r.min.is_none() && r.max.is_none() {
                    return Err(self.invalid(format!("{key}.row_count"), "needs min, max or both"));
                }
                kinds.push(CheckKind::RowCount {
                    min: r.min,
                    max: r.max,
                });
            }
            if let Some(e) = c.expression {
                kinds.push(CheckKind::Expression(e));
            }
            if let Some(q) = c.sql {
                kinds.push(CheckKind::Sql(q));
            }
            let kind = match kinds.len() {
                1 => kinds.remove(0),
                0 => {
                    return Err(self.invalid(
                        key,
                        "a check needs one of not_null, unique, accepted_values, row_count, \
                         expression or sql",
                    ));
                }
                _ => {
                    return Err(self.invalid(
                        key,
                        "one kind per check: write each in its own [[models.NAME.checks]]",
                    ));
                }
            };
            if let CheckKind::NotNull(cols) | CheckKind::Unique(cols) = &kind
                && cols.is_empty()
            {
                return Err(self.invalid(key, "needs at least one column"));
            }
            out.push(Check { kind, severity });
        }
        Ok(out)
    }

    fn unit_settings(
        &self,
        prefix: &str,
        base: UnitSettings,
        timeout: Option<&str>,
        retries: Option<u32>,
        max_concurrent: Option<usize>,
    ) -> Result<UnitSettings, ConfigError> {
        let timeout = match timeout {
            None => base.timeout,
            Some(t) => Some(parse_duration(t).filter(|d| !d.is_zero()).ok_or_else(|| {
                self.invalid(
                    format!("{prefix}.unit_timeout"),
                    format!("{t:?} is not a duration (examples: \"30m\", \"90s\", \"1h30m\")"),
                )
            })?),
        };
        if max_concurrent == Some(0) {
            return Err(self.invalid(
                format!("{prefix}.max_concurrent_units"),
                "must be at least 1",
            ));
        }
        Ok(UnitSettings {
            timeout,
            retries: retries.unwrap_or(base.retries),
            max_concurrent: max_concurrent.unwrap_or(base.max_concurrent),
        })
    }

    fn batches(&self, model: &str, raw: RawBatches) -> Result<BatchConfig, ConfigError> {
        let key = |k: &str| format!("models.{model}.batches.{k}");
        let Some(size) = raw.size else {
            return Err(self.invalid(
                key("size"),
                "set size = \"hour\", \"day\", \"month\" or \"year\"",
            ));
        };
        let date =
            |k: &str, v: Option<String>| -> Result<Option<chrono::NaiveDateTime>, ConfigError> {
                v.map(|v| {
                    parse_datetime(&v).ok_or_else(|| {
                        self.invalid(
                            key(k),
                            format!("{v:?} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS)"),
                        )
                    })
                })
                .transpose()
            };
        let start = date("start", raw.start)?;
        let end = date("end", raw.end)?;
        if let (Some(s), Some(e)) = (start, end)
            && s >= e
        {
            return Err(self.invalid(key("end"), "must be after start"));
        }
        Ok(BatchConfig { size, start, end })
    }

    fn store(&self, name: String, raw: RawStore) -> Result<StoreConfig, ConfigError> {
        let key = |k: &str| format!("stores.{name}.{k}");
        let url = self.env_value(&key("url"), &raw.url)?;
        if !url.contains("://") {
            return Err(self.invalid(
                key("url"),
                format!(
                    "{url:?} is not a URL (expected s3://, gs://, az://, http(s):// or file://)"
                ),
            ));
        }
        let mut options = BTreeMap::new();
        let fixed = [
            ("endpoint", raw.endpoint),
            ("region", raw.region),
            ("allow_http", raw.allow_http.map(|b| b.to_string())),
            ("access_key_id", raw.access_key_id),
            ("secret_access_key", raw.secret_access_key),
            ("session_token", raw.session_token),
        ];
        for (k, v) in fixed.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))) {
            options.insert(k.to_string(), self.env_value(&key(k), &v)?);
        }
        for (k, v) in raw.options {
            let value = self.env_value(&key(&format!("options.{k}")), &v)?;
            options.insert(k, value);
        }
        Ok(StoreConfig { name, url, options })
    }

    fn source(&self, name: &str, raw: RawSource) -> Result<SourceConfig, ConfigError> {
        let key = |k: &str| format!("sources.{name}.{k}");
        if !valid_name(name) {
            return Err(self.invalid(
                format!("sources.{name}"),
                "a source name must be a lower-case SQL identifier (a-z, 0-9, _)",
            ));
        }
        let resolved = resolve_location(&raw.location, self.root);
        let format = raw
            .format
            .or_else(|| Format::from_path(&raw.location))
            .or_else(|| local_folder_format(Path::new(&resolved)));
        let Some(format) = format else {
            return Err(self.invalid(
                key("format"),
                "cannot tell the format from the location: set format = \"parquet\", \"csv\" or \"json\"",
            ));
        };
        let defaults = CsvOptions::default();
        let csv = CsvOptions {
            has_header: raw.has_header.unwrap_or(defaults.has_header),
            delimiter: single_byte(&raw.delimiter, &key("delimiter"), self.file, Some(b','))?
                .unwrap_or(b','),
            quote: single_byte(&raw.quote, &key("quote"), self.file, Some(b'"'))?.unwrap_or(b'"'),
            escape: single_byte(&raw.escape, &key("escape"), self.file, None)?,
            null_value: raw.null_value,
        };
        if raw.on_bad_rows == OnBadRows::Quarantine && format == Format::Parquet {
            return Err(self.invalid(
                key("on_bad_rows"),
                "quarantine applies to csv and json sources; Parquet files are typed",
            ));
        }
        Ok(SourceConfig {
            name: name.to_string(),
            location: resolve_location(
                &self.env_value(&key("location"), &raw.location)?,
                self.root,
            ),
            format,
            partition_cols: raw
                .partition_cols
                .iter()
                .map(|s| PartitionCol::parse(s))
                .collect(),
            csv,
            compression: raw
                .compression
                .unwrap_or_else(|| Compression::from_path(&raw.location)),
            schema: raw.schema,
            on_bad_rows: raw.on_bad_rows,
            schema_evolution: raw.schema_evolution,
            max_bad_rows: raw.max_bad_rows,
            max_bad_ratio: match raw.max_bad_ratio {
                Some(r) if !(0.0..=1.0).contains(&r) => {
                    return Err(self.invalid(
                        key("max_bad_ratio"),
                        format!("{r} is not a share between 0 and 1"),
                    ));
                }
                r => r,
            },
            rejects: raw.rejects.map(|r| resolve_location(&r, self.root)),
            event_time: raw.event_time,
        })
    }

    fn models(
        &self,
        raw: BTreeMap<String, RawModel>,
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<BTreeMap<String, ModelConfig>, ConfigError> {
        // Every queries/*.sql is a model; [models.NAME] adds to or overrides its defaults.
        let mut raw = raw;
        let queries = self.root.join("queries");
        if queries.is_dir() {
            let entries = std::fs::read_dir(&queries).map_err(|source| ConfigError::Read {
                path: queries.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "sql")
                    && path.is_file()
                    && let Some(stem) = path.file_stem()
                {
                    raw.entry(stem.to_string_lossy().into_owned()).or_default();
                }
            }
        }
        let mut models = BTreeMap::new();
        for (name, m) in raw {
            if !valid_name(&name) {
                return Err(self.invalid(
                    format!("models.{name}"),
                    "a model name (its SQL file's name) must be a lower-case SQL identifier (a-z, 0-9, _)",
                ));
            }
            if sources.contains_key(&name) {
                return Err(self.invalid(
                    format!("models.{name}"),
                    format!("'{name}' is both a source and a model; table names must be unique"),
                ));
            }
            let sql_rel = m.sql.unwrap_or_else(|| format!("queries/{name}.sql"));
            let sql_path = self.root.join(&sql_rel);
            let sql = std::fs::read_to_string(&sql_path).map_err(|e| {
                self.invalid(
                    format!("models.{name}.sql"),
                    format!("cannot read {}: {e}", sql_path.display()),
                )
            })?;
            let raw_sink = m.sink.unwrap_or_default();
            let location = raw_sink.location.unwrap_or_else(|| format!("out/{name}/"));
            let target_rows_per_file = raw_sink
                .target_rows_per_file
                .unwrap_or(DEFAULT_ROWS_PER_FILE);
            if target_rows_per_file == 0 {
                return Err(self.invalid(
                    format!("models.{name}.sink.target_rows_per_file"),
                    "must be at least 1",
                ));
            }
            let sink = SinkConfig {
                location: resolve_location(
                    &self.env_value(&format!("models.{name}.sink.location"), &location)?,
                    self.root,
                ),
                format: raw_sink.format.unwrap_or(Format::Parquet),
                partition_by: raw_sink.partition_by,
                mode: raw_sink.mode.unwrap_or(WriteMode::Overwrite),
                target_rows_per_file,
            };
            let raw_batches = m.batches.unwrap_or_default();
            let units = self.unit_settings(
                &format!("models.{name}.batches"),
                self.default_units,
                raw_batches.unit_timeout.as_deref(),
                raw_batches.retries,
                raw_batches.max_concurrent_units,
            )?;
            let (by_file, by_key) = match raw_batches.by.as_deref() {
                None | Some("time") => (false, false),
                Some("file") => (true, false),
                Some("key") => (false, true),
                Some(other) => {
                    return Err(self.invalid(
                        format!("models.{name}.batches.by"),
                        format!(
                            "{other:?}: expected \"file\" or \"key\" (or a `size` for batches \
                             of event time)"
                        ),
                    ));
                }
            };
            let key_buckets = if by_key {
                if raw_batches.size.is_some()
                    || raw_batches.start.is_some()
                    || raw_batches.end.is_some()
                    || raw_batches.files_per_unit.is_some()
                {
                    return Err(self.invalid(
                        format!("models.{name}.batches"),
                        "by = \"key\" splits by a hash of the key: size, start, end and \
                         files_per_unit do not apply",
                    ));
                }
                let buckets = match raw_batches.buckets {
                    Some(n) if (2..=4096).contains(&n) => n,
                    Some(_) => {
                        return Err(self.invalid(
                            format!("models.{name}.batches.buckets"),
                            "must be between 2 and 4096",
                        ));
                    }
                    None => {
                        return Err(self.invalid(
                            format!("models.{name}.batches.buckets"),
                            "by = \"key\" needs `buckets` (the number of units)",
                        ));
                    }
                };
                let keys = raw_batches.keys.clone().unwrap_or_default();
                if keys.is_empty() {
                    return Err(self.invalid(
                        format!("models.{name}.batches.keys"),
                        "by = \"key\" needs `keys = { source = \"key column\", ... }`",
                    ));
                }
                Some(KeyBuckets {
                    buckets,
                    keys: keys
                        .into_iter()
                        .map(|(k, v)| (k.to_lowercase(), v))
                        .collect(),
                })
            } else {
                if raw_batches.buckets.is_some() || raw_batches.keys.is_some() {
                    return Err(self.invalid(
                        format!("models.{name}.batches"),
                        "buckets and keys apply to by = \"key\"",
                    ));
                }
                None
            };
            let files_per_unit = if by_file {
                if raw_batches.size.is_some()
                    || raw_batches.start.is_some()
                    || raw_batches.end.is_some()
                {
                    return Err(self.invalid(
                        format!("models.{name}.batches"),
                        "by = \"file\" splits by input file: size, start and end do not apply",
                    ));
                }
                match raw_batches.files_per_unit.unwrap_or(1) {
                    0 => {
                        return Err(self.invalid(
                            format!("models.{name}.batches.files_per_unit"),
                            "must be at least 1",
                        ));
                    }
                    n => Some(n),
                }
            } else {
                None
            };
            let batches = if !by_file
                && !by_key
                && (raw_batches.size.is_some()
                    || raw_batches.start.is_some()
                    || raw_batches.end.is_some())
            {
                Some(self.batches(&name, raw_batches)?)
            } else {
                None
            };
            let materialized = m.materialized.unwrap_or(Materialized::Table);
            if (batches.is_some() || files_per_unit.is_some() || key_buckets.is_some())
                && materialized == Materialized::View
            {
                return Err(self.invalid(
                    format!("models.{name}.batches"),
                    "a view is inlined, not run: batches apply to table models",
                ));
            }
            let checks = self.checks(&name, m.checks)?;
            if !checks.is_empty() && materialized == Materialized::View {
                return Err(self.invalid(
                    format!("models.{name}.checks"),
                    "a view is inlined, not written: checks apply to table models",
                ));
            }
            models.insert(
                name.clone(),
                ModelConfig {
                    name,
                    sql_path,
                    sql,
                    materialized,
                    sink,
                    batches,
                    files_per_unit,
                    key_buckets,
                    checks,
                    units,
                },
            );
        }
        self.check_sinks_apart(&models)?;
        Ok(models)
    }

    /// Two table models writing the same folder, or one inside the other, would delete each
    /// other's files when they publish.
    fn check_sinks_apart(&self, models: &BTreeMap<String, ModelConfig>) -> Result<(), ConfigError> {
        let tables: Vec<(&String, String)> = models
            .iter()
            .filter(|(_, m)| m.materialized == Materialized::Table)
            .map(|(n, m)| {
                let mut loc = m.sink.location.clone();
                if !loc.ends_with('/') {
                    loc.push('/');
                }
                (n, loc)
            })
            .collect();
        for (i, (a, la)) in tables.iter().enumerate() {
            for (b, lb) in &tables[i + 1..] {
                if la.starts_with(lb.as_str()) || lb.starts_with(la.as_str()) {
                    return Err(self.invalid(
                        format!("models.{b}.sink.location"),
                        format!("{lb} overlaps the sink of model '{a}' ({la}): each table model needs a folder of its own"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_lines_are_found_under_their_tables() {
        let text = "name = \"x\"\n[settings]\nthreads = 2\njoin_strategy = \"fast\"\n\
                    [models.m.batches]\nby = \"key\"\n[[models.m.checks]]\nunique = \"a\"\n\
                    [[models.m.checks]]\nnot_null = \"b\"\nseverity = \"x\"\n";
        assert_eq!(key_line(text, "settings.join_strategy"), Some(4));
        assert_eq!(key_line(text, "settings.threads"), Some(3));
        assert_eq!(key_line(text, "models.m.batches.by"), Some(6));
        assert_eq!(key_line(text, "models.m.batches.buckets"), Some(5));
        assert_eq!(key_line(text, "models.m.checks[1].severity"), Some(11));
        assert_eq!(key_line(text, "models.m.checks[1]"), Some(9));
        assert_eq!(key_line(text, "models.m.checks[0]"), Some(7));
        assert_eq!(key_line(text, "sources.s.format"), None);
    }

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<Pipeline, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env)
    }

    #[test]
    fn inputs_the_fuzzer_found_and_its_seeds_still_load_or_are_refused_by_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        for dir in ["regressions/sluice_toml", "corpus/sluice_toml"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                if e.path().file_name().is_some_and(|n| n == "README.md") {
                    continue;
                }
                let bytes = std::fs::read(e.path()).unwrap();
                super::check_toml_load(&String::from_utf8_lossy(&bytes));
                n += 1;
            }
        }
        assert!(n > 0, "no inputs under {}", root.display());
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("1.5 KiB"), Some(1536));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("3 parsecs"), None);
    }

    #[test]
    fn env_references_are_replaced_and_missing_ones_named() {
        let env = |k: &str| (k == "SECRET").then(|| "s3cr3t".to_string());
        assert_eq!(
            interpolate_env("a-${env:SECRET}-b", &env).unwrap(),
            "a-s3cr3t-b"
        );
        assert_eq!(interpolate_env("${env:NOPE}", &env).unwrap_err(), "NOPE");
        assert_eq!(interpolate_env("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = load("name = \"x\"\n[settings]\nthreads = \"two\"\n").unwrap_err();
        match err {
            ConfigError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 11)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = load("[settings]\nthread = 2\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `thread`"), "{msg}");
        assert!(msg.contains("sluice.toml:2:1"), "{msg}");
    }

    #[test]
    fn unknown_format_names_the_line() {
        let err = load("[sources.a]\nlocation = \"a/\"\nformat = \"xml\"\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sluice.toml:3:10"), "{msg}");
        assert!(msg.contains("xml"), "{msg}");
    }

    #[test]
    fn format_is_inferred_from_the_extension() {
        let p = load("[sources.a]\nlocation = \"data/a.csv.gz\"\n").unwrap();
        assert_eq!(p.sources["a"].format, Format::Csv);
        let err = load("[sources.a]\nlocation = \"s3://b/data/\"\n").unwrap_err();
        assert!(err.to_string().contains("sources.a.format"), "{err}");
    }

    #[test]
    fn store_secrets_are_not_in_debug_output() {
        let env = |k: &str| (k == "KEY").then(|| "hunter2".to_string());
        let p = Pipeline::from_toml(
            "[stores.lake]\nurl = \"s3://lake\"\nsecret_access_key = \"${env:KEY}\"\n",
            Path::new("sluice.toml"),
            Path::new("/tmp"),
            &env,
        )
        .unwrap();
        assert_eq!(p.stores[0].options["secret_access_key"], "hunter2");
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("secret_access_key"), "{shown}");
    }

    #[test]
    fn overlapping_sinks_and_upper_case_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("queries")).unwrap();
        for m in ["a", "b"] {
            std::fs::write(dir.path().join(format!("queries/{m}.sql")), "SELECT 1").unwrap();
        }
        let load_here =
            |text: &str| Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env);
        let err = load_here("[models.a.sink]\nlocation = \"out/\"\n").unwrap_err();
        assert!(
            err.to_string().contains("overlaps the sink of model"),
            "{err}"
        );
        assert!(load_here("").is_ok());
        let err = load_here("[sources.Orders]\nlocation = \"x.csv\"\n").unwrap_err();
        assert!(err.to_string().contains("lower-case"), "{err}");
    }

    #[test]
    fn quarantine_is_refused_for_parquet() {
        load("[sources.a]\nlocation = \"a.csv\"\non_bad_rows = \"quarantine\"\n").unwrap();
        load("[sources.a]\nlocation = \"a.jsonl\"\non_bad_rows = \"quarantine\"\n").unwrap();
        load(
            "[sources.a]\nlocation = \"d/\"\nformat = \"csv\"\npartition_cols = [\"dt\"]\n\
             on_bad_rows = \"quarantine\"\n",
        )
        .unwrap();
        let err = load("[sources.a]\nlocation = \"a.parquet\"\non_bad_rows = \"quarantine\"\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("sources.a.on_bad_rows") && msg.contains("Parquet files are typed"),
            "{msg}"
        );
    }

    #[test]
    fn durations_and_dates_parse() {
        use std::time::Duration;
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(
            parse_datetime("2024-02-01").unwrap().to_string(),
            "2024-02-01 00:00:00"
        );
        assert!(parse_datetime("2024-13-01").is_none());
    }

    #[test]
    fn batches_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("queries")).unwrap();
        std::fs::write(dir.path().join("queries/m.sql"), "SELECT 1").unwrap();
        let load_here =
            |text: &str| Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env);
        let p = load_here("[settings]\nretries = 5\n[models.m.batches]\nsize = \"month\"\nstart = \"1992-01-01\"\nunit_timeout = \"10m\"\n").unwrap();
        let m = &p.models["m"];
        assert_eq!(m.batches.as_ref().unwrap().size, BatchSize::Month);
        assert_eq!(m.units.retries, 5);
        assert_eq!(m.units.timeout, Some(std::time::Duration::from_secs(600)));
        let err = load_here("[models.m.batches]\nsize = \"week\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant `week`"), "{err}");
        let err = load_here(
            "[models.m.batches]\nsize = \"day\"\nstart = \"2024-02-01\"\nend = \"2024-01-01\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("must be after start"), "{err}");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
