//! The validator: raw TOML shapes ([`super::raw`]) → the validated types of [`super`], with
//! the file, and the line where it can be found, in every error. This file validates the
//! pipeline, `[settings]`, `[stores.NAME]` and `[sources.NAME]`; [`models`] the models.

mod models;
mod schedule;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawDatabase, RawPipeline, RawSettings, RawSource, RawStore};
use super::values::{
    self, EnvLookup, empty_segment, empty_variable, interpolate_env, key_line, local_folder_format,
    parse_duration, parse_size, resolve_location, valid_name,
};
use super::{
    BoundValue, Compression, ConfigError, CsvOptions, DatabaseConfig, DatabaseSourceConfig,
    DatabaseUrl, Format, Guards, JoinOptions, JoinStrategy, LatencyGuard, OnBadRows, PartitionCol,
    Pipeline, Relation, Settings, SourceConfig, StoreConfig, StoreQuota, UnitSettings,
};

/// A one-character setting (`delimiter`, `quote`, `escape`): `default` when it is not set.
fn single_byte(
    v: &Option<String>,
    key: &str,
    file: &Path,
    default: Option<u8>,
) -> Result<Option<u8>, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match values::single_byte(s) {
            Some(b) => Ok(Some(b)),
            None => Err(ConfigError::Invalid {
                path: file.to_path_buf(),
                line: None,
                key: key.to_string(),
                message: format!("expected a single ASCII character, got {s:?}"),
            }),
        },
    }
}

/// Validates one `sluice.toml`; the file and its text name and place each error.
pub(super) struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    root: &'a Path,
    env: EnvLookup<'a>,
    /// `[settings]`' unit settings, which a model's `[models.NAME.batches]` overrides.
    default_units: UnitSettings,
}

impl<'a> Validator<'a> {
    /// A validator of `text`, read from `file`; relative locations resolve against `root`.
    pub(super) fn new(
        file: &'a Path,
        text: &'a str,
        root: &'a Path,
        env: EnvLookup<'a>,
    ) -> Validator<'a> {
        Validator {
            file,
            text,
            root,
            env,
            default_units: UnitSettings::default(),
        }
    }

    /// An invalid setting `key`, with the line it is on when it can be found.
    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        ConfigError::Invalid {
            path: self.file.to_path_buf(),
            line: key_line(self.text, &key),
            key,
            message: message.into(),
        }
    }

    /// `value` with its `${env:NAME}` references replaced; `key` names it when one is unset.
    fn env_value(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        interpolate_env(value, self.env).map_err(|name| ConfigError::MissingEnv {
            path: self.file.to_path_buf(),
            key: key.to_string(),
            name,
        })
    }

    /// The location `value` of setting `key`, its `${env:NAME}` references replaced and
    /// resolved against the pipeline folder; an empty path segment (an empty variable, most
    /// likely) is refused: it would name a wider folder than meant, whose files the write
    /// would replace.
    pub(super) fn location_value(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let location = self.env_value(key, value)?;
        if let Some(name) = empty_variable(value, self.env) {
            return Err(self.invalid(
                key.to_string(),
                format!(
                    "${{env:{name}}} is empty, so {value:?} would name another, wider folder \
                     ({location:?})"
                ),
            ));
        }
        // " out/x/" is a folder named " out" beside out/: almost surely a typo, and invisible in
        // most listings.
        if location.trim() != location {
            return Err(self.invalid(
                key.to_string(),
                format!("{location:?} begins or ends with white space: remove it (a folder name with spaces at its ends is not supported)"),
            ));
        }
        if empty_segment(&location) {
            let hint = if value.contains("${env:") {
                " (is a variable in it empty?)"
            } else {
                ""
            };
            return Err(self.invalid(
                key.to_string(),
                format!(
                    "{location:?} has an empty path segment{hint}: it would name another folder"
                ),
            ));
        }
        Ok(resolve_location(&location, self.root))
    }

    /// The whole pipeline.
    pub(super) fn pipeline(&mut self, raw: RawPipeline) -> Result<Pipeline, ConfigError> {
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
        // A database a model loads into is written to unless it says read_only = true (then
        // the sink is refused).
        let loaded: std::collections::BTreeSet<&str> = raw
            .models
            .values()
            .filter_map(|m| m.sink.as_ref()?.database.as_deref())
            .collect();
        let mut databases = BTreeMap::new();
        for (name, d) in raw.databases {
            let read_only = d.read_only;
            let mut db = self.database(&name, d)?;
            if read_only.is_none() && loaded.contains(name.as_str()) {
                db.read_only = false;
            }
            databases.insert(name, db);
        }
        let mut sources = BTreeMap::new();
        let mut database_sources = BTreeMap::new();
        for (name, s) in raw.sources {
            if s.database.is_some() {
                let src = self.database_source(&name, s, &databases)?;
                database_sources.insert(name, src);
            } else {
                let src = self.source(&name, s)?;
                sources.insert(name, src);
            }
        }
        let all_sources: Vec<&String> = sources.keys().chain(database_sources.keys()).collect();
        let models = self.models(raw.models, &all_sources, &databases)?;
        let schedule = raw.schedule.map(|s| self.schedule(s)).transpose()?;
        let lineage = raw.lineage.map(|l| self.lineage(l)).transpose()?;
        self.check_staging_apart(settings.staging.as_deref(), &sources)?;
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
            databases,
            sources,
            database_sources,
            models,
            vars,
            schedule,
            lineage,
        })
    }

    /// `[lineage]`: a file, a URL, or both.
    fn lineage(&self, raw: super::raw::RawLineage) -> Result<super::LineageConfig, ConfigError> {
        if raw.file.is_none() && raw.url.is_none() {
            return Err(self.invalid(
                "lineage",
                "give `file` (a JSON-lines file) or `url` (an OpenLineage HTTP endpoint), or both",
            ));
        }
        let url = raw
            .url
            .map(|u| {
                let u = self.env_value("lineage.url", &u)?;
                match url::Url::parse(&u) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(u),
                    _ => Err(self.invalid("lineage.url", format!("{u:?} is not an http(s) URL"))),
                }
            })
            .transpose()?;
        let file = raw
            .file
            .map(|f| {
                self.env_value("lineage.file", &f)
                    .map(|f| self.root.join(f))
            })
            .transpose()?;
        Ok(super::LineageConfig {
            file,
            url,
            namespace: raw.namespace.unwrap_or_else(|| "sluice".to_string()),
        })
    }

    /// Staged files are no source's input and no source's rejects: a staging folder that
    /// holds or lies in a source's folder or rejects folder is refused.
    fn check_staging_apart(
        &self,
        staging: Option<&str>,
        sources: &BTreeMap<String, SourceConfig>,
    ) -> Result<(), ConfigError> {
        let Some(staging) = staging else {
            return Ok(());
        };
        let folder = |location: &str| {
            // A glob or a file stands for its folder.
            let cut = location.find(['*', '?', '[']).unwrap_or(location.len());
            let head = &location[..cut];
            let head = if cut < location.len() || !head.ends_with('/') {
                head.rsplit_once('/').map_or(head, |(d, _)| d)
            } else {
                head
            };
            super::folder_identity(head)
        };
        let ours = super::folder_identity(staging);
        for s in sources.values() {
            let places = std::iter::once(("source", folder(&s.location))).chain(
                s.rejects
                    .iter()
                    .map(|r| ("the rejects of source", super::folder_identity(r))),
            );
            for (what, place) in places {
                if ours.starts_with(&place) || place.starts_with(&ours) {
                    return Err(self.invalid(
                        "settings.staging",
                        format!(
                            "{staging} overlaps {what} '{}' ({place}): staged files would be read as \
                             its input, or its files deleted with the staging; give staging a folder of its own",
                            s.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[settings]`.
    fn settings(&self, raw: RawSettings) -> Result<Settings, ConfigError> {
        let size = |key: &str, value: Option<String>| {
            value
                .map(|s| {
                    parse_size(&s).ok_or_else(|| {
                        self.invalid(
                            key,
                            format!("{s:?} is not a size (examples: \"1MiB\", \"4GiB\")"),
                        )
                    })
                })
                .transpose()
        };
        let memory_limit = size("settings.memory_limit", raw.memory_limit)?;
        let broadcast_limit = size("settings.broadcast_join_limit", raw.broadcast_join_limit)?;
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
            None => JoinStrategy::Auto,
            Some(s) => JoinStrategy::parse(s).ok_or_else(|| {
                self.invalid(
                    "settings.join_strategy",
                    format!("unknown join strategy {s:?} (expected auto, in_memory, grace or sort_merge)"),
                )
            })?,
        };
        let order = match raw.join_order.as_deref() {
            None => super::JoinOrder::default(),
            Some(s) => super::JoinOrder::parse(s).ok_or_else(|| {
                self.invalid(
                    "settings.join_order",
                    format!("unknown join order {s:?} (expected cost or as_written)"),
                )
            })?,
        };
        if let Some(n) = raw.join_buckets
            && !(2..=4096).contains(&n)
        {
            return Err(self.invalid("settings.join_buckets", "must be between 2 and 4096"));
        }
        let cluster = raw
            .cluster
            .map(|c| {
                let c = self.env_value("settings.cluster", &c)?;
                super::ClusterTarget::parse(&c).map_err(|m| self.invalid("settings.cluster", m))
            })
            .transpose()?;
        // Checked against DataFusion's options when the engine starts; here, that each is a
        // setting of one of the two kinds, with a plain value. (TOML has no order within a
        // table: they come in the keys' order.)
        let mut options = Vec::new();
        for (key, value) in raw.options {
            let at = format!("settings.options.{key:?}");
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Table(_) => {
                    return Err(self.invalid(
                        at,
                        "a key with dots names a table in TOML: write the whole key in quotes \
                         (\"datafusion.execution.batch_size\" = 16384)",
                    ));
                }
                _ => return Err(self.invalid(at, "expected a string, a number or true/false")),
            };
            if !key.starts_with("datafusion.") && !key.starts_with("sluice.") {
                return Err(self.invalid(
                    at,
                    "expected a DataFusion option (\"datafusion.…\") or a sluice rewrite \
                     (\"sluice.…\")",
                ));
            }
            options.push((key, value));
        }
        Ok(Settings {
            memory_limit,
            threads: raw.threads,
            options,
            cluster,
            join: JoinOptions {
                strategy,
                buckets: raw.join_buckets,
                broadcast_limit,
                order,
            },
            spill_dir: raw
                .spill_dir
                .map(|d| PathBuf::from(resolve_location(&d, self.root))),
            state: PathBuf::from(resolve_location(state, self.root)),
            staging: raw
                .staging
                .map(|s| self.location_value("settings.staging", &s))
                .transpose()?,
            units,
        })
    }

    /// Unit settings under `prefix` (`settings` or `models.NAME.batches`); what is not set
    /// there is taken from `base`.
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

    /// `[stores.NAME]`, `${env:NAME}` resolved in every value.
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
        let bytes_per_second = raw
            .max_bytes_per_second
            .map(|s| match parse_size(&s) {
                Some(n) if n > 0 => Ok(n as u64),
                _ => Err(self.invalid(
                    key("max_bytes_per_second"),
                    format!("{s:?} is not a size above 0 (examples: \"50MiB\", \"1GB\")"),
                )),
            })
            .transpose()?;
        if let Some(r) = raw.max_requests_per_second
            && !(r > 0.0 && r.is_finite())
        {
            return Err(self.invalid(key("max_requests_per_second"), "must be above 0"));
        }
        if raw.max_concurrent_requests == Some(0) {
            return Err(self.invalid(key("max_concurrent_requests"), "must be at least 1"));
        }
        let quota = StoreQuota {
            bytes_per_second,
            requests_per_second: raw.max_requests_per_second,
            concurrent_requests: raw.max_concurrent_requests,
        };
        Ok(StoreConfig {
            name,
            url,
            options,
            quota,
        })
    }

    /// `[databases.NAME]`, `${env:NAME}` resolved in its URL.
    fn database(&self, name: &str, raw: RawDatabase) -> Result<DatabaseConfig, ConfigError> {
        let key = |k: &str| format!("databases.{name}.{k}");
        if !valid_name(name) {
            return Err(self.invalid(
                format!("databases.{name}"),
                "a database name must be a lower-case SQL identifier (a-z, 0-9, _)",
            ));
        }
        let url = self.env_value(&key("url"), &raw.url)?;
        let mut url = DatabaseUrl::parse(&url).map_err(|e| self.invalid(key("url"), e))?;
        // A CA file named in the URL is found as every other path is: from the pipeline.
        if let Some(ca) = &url.tls.root_cert {
            url.tls.root_cert = Some(self.root.join(ca));
        }
        let max_connections = raw.max_connections.unwrap_or(4);
        if max_connections == 0 {
            return Err(self.invalid(
                key("max_connections"),
                "must be at least 1 (the most connections sluice opens to this database at once)",
            ));
        }
        let duration = |k: &str, v: Option<String>| {
            v.map(|v| {
                parse_duration(&v).ok_or_else(|| {
                    self.invalid(
                        key(k),
                        format!("{v:?} is not a duration (e.g. \"90s\", \"10m\", \"1h\")"),
                    )
                })
            })
            .transpose()
        };
        let statement_timeout = duration("statement_timeout", raw.statement_timeout)?;
        if statement_timeout.is_some_and(|t| t.as_millis() > i32::MAX as u128) {
            return Err(self.invalid(
                key("statement_timeout"),
                "is longer than PostgreSQL allows (about 24 days)",
            ));
        }
        let max_replica_lag = duration("max_replica_lag", raw.max_replica_lag)?;
        let lag_wait = duration("lag_wait", raw.lag_wait)?;
        if lag_wait.is_some() && max_replica_lag.is_none() {
            return Err(self.invalid(key("lag_wait"), "applies with max_replica_lag"));
        }
        let over = duration("pause_when_latency_over", raw.pause_when_latency_over)?;
        let probe_keys = [
            ("probe", raw.probe.is_some()),
            ("probe_interval", raw.probe_interval.is_some()),
            ("max_pause", raw.max_pause.is_some()),
        ];
        if over.is_none()
            && let Some((k, _)) = probe_keys.iter().find(|(_, set)| *set)
        {
            return Err(self.invalid(key(k), "applies with pause_when_latency_over"));
        }
        let latency = match over {
            None => None,
            Some(over) => {
                if max_connections < 2 {
                    return Err(self.invalid(
                        key("pause_when_latency_over"),
                        "the latency probe holds a connection of its own: set \
                         max_connections to 2 or more",
                    ));
                }
                let probe = raw.probe.unwrap_or_else(|| "SELECT 1".to_string());
                if probe.trim().is_empty() {
                    return Err(self.invalid(key("probe"), "is empty"));
                }
                Some(LatencyGuard {
                    over,
                    probe,
                    interval: duration("probe_interval", raw.probe_interval)?
                        .unwrap_or(Duration::from_secs(1)),
                    max_pause: duration("max_pause", raw.max_pause)?
                        .unwrap_or(Duration::from_secs(600)),
                })
            }
        };
        if raw.max_rows_per_second == Some(0) {
            return Err(self.invalid(key("max_rows_per_second"), "must be at least 1"));
        }
        Ok(DatabaseConfig {
            name: name.to_string(),
            url,
            max_connections,
            statement_timeout,
            read_only: raw.read_only.unwrap_or(true),
            guards: Guards {
                max_replica_lag,
                lag_wait: lag_wait.unwrap_or(Duration::from_secs(600)),
                latency,
                max_rows_per_second: raw.max_rows_per_second,
            },
        })
    }

    /// `[sources.NAME]` with `database = ...`: a table or query of a `[databases.*]` entry.
    fn database_source(
        &self,
        name: &str,
        raw: RawSource,
        databases: &BTreeMap<String, DatabaseConfig>,
    ) -> Result<DatabaseSourceConfig, ConfigError> {
        let key = |k: &str| format!("sources.{name}.{k}");
        if !valid_name(name) {
            return Err(self.invalid(
                format!("sources.{name}"),
                "a source name must be a lower-case SQL identifier (a-z, 0-9, _)",
            ));
        }
        let database = raw.database.unwrap_or_default();
        if !databases.contains_key(&database) {
            let known: Vec<&str> = databases.keys().map(String::as_str).collect();
            return Err(self.invalid(
                key("database"),
                if known.is_empty() {
                    format!("no [databases.{database}] is declared")
                } else {
                    format!(
                        "no [databases.{database}] is declared (declared: {})",
                        known.join(", ")
                    )
                },
            ));
        }
        // The keys of file sources mean nothing here.
        let file_keys = [
            ("location", raw.location.is_some()),
            ("format", raw.format.is_some()),
            ("partition_cols", !raw.partition_cols.is_empty()),
            ("has_header", raw.has_header.is_some()),
            ("delimiter", raw.delimiter.is_some()),
            ("quote", raw.quote.is_some()),
            ("escape", raw.escape.is_some()),
            ("null_value", raw.null_value.is_some()),
            ("compression", raw.compression.is_some()),
            ("schema", raw.schema.is_some()),
            ("on_bad_rows", raw.on_bad_rows != OnBadRows::Fail),
            ("max_bad_rows", raw.max_bad_rows.is_some()),
            ("max_bad_ratio", raw.max_bad_ratio.is_some()),
            ("rejects", raw.rejects.is_some()),
        ];
        if let Some((k, _)) = file_keys.iter().find(|(_, set)| *set) {
            return Err(self.invalid(
                key(k),
                format!(
                    "`{k}` is a setting of sources of files; source '{name}' reads database \
                     '{database}' (its columns and types come from the database)"
                ),
            ));
        }
        let relation = match (raw.table, raw.query) {
            (Some(t), None) if !t.trim().is_empty() => Relation::Table(t),
            (None, Some(q)) if !q.trim().is_empty() => Relation::Query(q),
            (Some(_), Some(_)) => {
                return Err(self.invalid(key("query"), "set `table` or `query`, not both"));
            }
            _ => {
                return Err(self.invalid(
                    key("database"),
                    "a database source reads a `table` (table = \"public.orders\") or a \
                     `query` (query = \"SELECT ...\"): set one",
                ));
            }
        };
        let bound = |k: &str, v: toml::Value| match v {
            toml::Value::Integer(i) => Ok(BoundValue::Int(i128::from(i))),
            // (A whole number past TOML's, in quotes: a BIGINT UNSIGNED bound.)
            toml::Value::String(s) => match s.trim().parse::<i128>() {
                Ok(i) => Ok(BoundValue::Int(i)),
                Err(_) => {
                    let b = BoundValue::Text(s);
                    match b.micros() {
                        Some(_) => Ok(b),
                        None => Err(self.invalid(
                            key(k),
                            format!(
                                "{b} is not a bound: give a whole number, a date \
                                 (\"2024-01-09\") or a date-time (\"2024-01-09 10:00:00\")"
                            ),
                        )),
                    }
                }
            },
            toml::Value::Datetime(d) => {
                let b = BoundValue::Text(d.to_string());
                match b.micros() {
                    Some(_) => Ok(b),
                    None => Err(self.invalid(
                        key(k),
                        format!("{d} is not a bound: give a date or a date-time, not a time"),
                    )),
                }
            }
            other => Err(self.invalid(
                key(k),
                format!("{other} is not a bound: give a whole number, a date or a date-time"),
            )),
        };
        let bounds = match (raw.lower_bound, raw.upper_bound) {
            (None, None) => None,
            (Some(lo), Some(hi)) => {
                let (lo, hi) = (bound("lower_bound", lo)?, bound("upper_bound", hi)?);
                let above = match (&lo, &hi) {
                    (BoundValue::Int(l), BoundValue::Int(h)) => l > h,
                    (BoundValue::Text(_), BoundValue::Text(_)) => {
                        lo.micros().zip(hi.micros()).is_some_and(|(l, h)| l > h)
                    }
                    _ => {
                        return Err(self.invalid(
                            key("lower_bound"),
                            format!(
                                "{lo} and upper_bound {hi} are of different kinds: give two \
                                 whole numbers, or two dates or date-times"
                            ),
                        ));
                    }
                };
                if above {
                    return Err(self.invalid(
                        key("lower_bound"),
                        format!("{lo} is above upper_bound {hi}"),
                    ));
                }
                Some((lo, hi))
            }
            (Some(_), None) => {
                return Err(self.invalid(key("lower_bound"), "give `upper_bound` too"));
            }
            (None, Some(_)) => {
                return Err(self.invalid(key("upper_bound"), "give `lower_bound` too"));
            }
        };
        if raw.partition_column.is_none() {
            let without = [
                ("partitions", raw.partitions.is_some()),
                ("lower_bound", bounds.is_some()),
            ];
            if let Some((k, _)) = without.iter().find(|(_, set)| *set) {
                return Err(self.invalid(
                    key(k),
                    "ranges are of a `partition_column`: set one (e.g. partition_column = \"id\")",
                ));
            }
        }
        if raw.partitions == Some(0) {
            return Err(self.invalid(key("partitions"), "must be at least 1"));
        }
        Ok(DatabaseSourceConfig {
            name: name.to_string(),
            database,
            relation,
            partition_column: raw.partition_column,
            partitions: raw.partitions,
            bounds,
            event_time: raw.event_time,
        })
    }

    /// `[sources.NAME]`: its format, when not set, from the location's extension or the first
    /// file of a local folder.
    fn source(&self, name: &str, raw: RawSource) -> Result<SourceConfig, ConfigError> {
        let key = |k: &str| format!("sources.{name}.{k}");
        if !valid_name(name) {
            return Err(self.invalid(
                format!("sources.{name}"),
                "a source name must be a lower-case SQL identifier (a-z, 0-9, _)",
            ));
        }
        let db_keys = [
            ("table", raw.table.is_some()),
            ("query", raw.query.is_some()),
            ("partition_column", raw.partition_column.is_some()),
            ("partitions", raw.partitions.is_some()),
            ("lower_bound", raw.lower_bound.is_some()),
            ("upper_bound", raw.upper_bound.is_some()),
        ];
        if let Some((k, _)) = db_keys.iter().find(|(_, set)| *set) {
            return Err(self.invalid(
                key(k),
                format!(
                    "`{k}` is a setting of database sources: add database = \"NAME\" (a \
                     [databases.NAME] entry), or remove it"
                ),
            ));
        }
        let Some(location) = raw.location.clone() else {
            return Err(self.invalid(
                format!("sources.{name}"),
                "a source reads files (location = \"data/orders/\") or a database \
                 (database = \"NAME\"): set one",
            ));
        };
        let resolved = resolve_location(&location, self.root);
        let format = raw
            .format
            .or_else(|| Format::from_path(&location))
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
            location: self.location_value(&key("location"), &location)?,
            format,
            partition_cols: raw
                .partition_cols
                .iter()
                .map(|s| PartitionCol::parse(s))
                .collect(),
            csv,
            compression: raw
                .compression
                .unwrap_or_else(|| Compression::from_path(&location)),
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
            rejects: raw
                .rejects
                .map(|r| self.location_value(&key("rejects"), &r))
                .transpose()?,
            event_time: raw.event_time,
        })
    }
}
