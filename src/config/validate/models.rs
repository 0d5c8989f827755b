//! Validating `[models.NAME]` and `queries/*.sql`: each model's SQL file, sink, work units
//! (`[models.NAME.batches]`) and checks (`[[models.NAME.checks]]`).

use std::collections::BTreeMap;

use super::super::raw::{RawBatches, RawCheck, RawModel, RawSink, RawWriteMode};
use super::super::values::{
    folder_identity, parse_datetime, parse_size, refuse_target_file_size, valid_name,
};
use super::super::{
    BatchConfig, Check, CheckKind, ConfigError, DEFAULT_FILE_SIZE, DEFAULT_ROWS_PER_FILE,
    DatabaseConfig, DatabaseSinkConfig, Format, IncrementalConfig, KeyBuckets, Materialized,
    ModelConfig, ParquetCompression, Severity, SinkConfig, TableWrite, UnitSettings, WriteMode,
};
use super::Validator;

/// How a model is split into work units (the `[models.NAME.batches]` part of a
/// [`ModelConfig`]).
struct WorkUnits {
    units: UnitSettings,
    batches: Option<BatchConfig>,
    files_per_unit: Option<usize>,
    key_buckets: Option<KeyBuckets>,
}

impl Validator<'_> {
    /// Every model: one per `queries/*.sql` and `[models.NAME]`, in name order; then no two
    /// table models may share a sink.
    pub(super) fn models(
        &self,
        raw: BTreeMap<String, RawModel>,
        sources: &[&String],
        databases: &BTreeMap<String, DatabaseConfig>,
    ) -> Result<BTreeMap<String, ModelConfig>, ConfigError> {
        let raw = self.with_query_files(raw)?;
        let mut models = BTreeMap::new();
        for (name, m) in raw {
            let model = self.model(name.clone(), m, sources, databases)?;
            models.insert(name, model);
        }
        self.check_sinks_apart(&models)?;
        Ok(models)
    }

    /// `raw` with an entry (of defaults) added for each `queries/*.sql` it does not name.
    fn with_query_files(
        &self,
        mut raw: BTreeMap<String, RawModel>,
    ) -> Result<BTreeMap<String, RawModel>, ConfigError> {
        // Every queries/*.sql is a model; [models.NAME] adds to or overrides its defaults.
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
        Ok(raw)
    }

    /// Two table models writing the same folder, or one inside the other, would delete each
    /// other's files when they publish.
    fn check_sinks_apart(&self, models: &BTreeMap<String, ModelConfig>) -> Result<(), ConfigError> {
        let tables: Vec<(&String, String)> = models
            .iter()
            .filter(|(_, m)| m.materialized.is_written())
            .map(|(n, m)| (n, folder_identity(&m.sink.location)))
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

    /// One model: its name, its SQL file, sink, work units and checks.
    fn model(
        &self,
        name: String,
        m: RawModel,
        sources: &[&String],
        databases: &BTreeMap<String, DatabaseConfig>,
    ) -> Result<ModelConfig, ConfigError> {
        if !valid_name(&name) {
            return Err(self.invalid(
                format!("models.{name}"),
                "a model name (its SQL file's name) must be a lower-case SQL identifier (a-z, 0-9, _)",
            ));
        }
        if sources.contains(&&name) {
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
        let materialized = m.materialized.unwrap_or(Materialized::Table);
        let raw_sink = m.sink.unwrap_or_default();
        if materialized == Materialized::Incremental
            && raw_sink.database.is_none()
            && let Some(mode) = raw_sink.mode.filter(|m| *m != RawWriteMode::Overwrite)
        {
            return Err(self.invalid(
                format!("models.{name}.sink.mode"),
                format!(
                    "{:?}: an incremental model's output is written period by period (a run \
                     replaces the periods it computes): remove `mode`",
                    mode.name()
                ),
            ));
        }
        if raw_sink.database.is_some() && materialized != Materialized::Table {
            return Err(self.invalid(
                format!("models.{name}.sink.database"),
                match materialized {
                    Materialized::View => {
                        "a view is inlined, not written: a database sink applies to table models"
                    }
                    _ => {
                        "loading an incremental model into a database is not built yet (see \
                         docs/databases.md, \"Not built yet\"): load a table model that reads it"
                    }
                },
            ));
        }
        let sink = self.sink(&name, raw_sink, databases)?;
        let WorkUnits {
            units,
            batches,
            files_per_unit,
            key_buckets,
        } = self.work_units(&name, m.batches.unwrap_or_default(), materialized)?;
        if materialized == Materialized::Incremental
            && batches.as_ref().is_none_or(|b| b.incremental.is_none())
        {
            return Err(self.invalid(
                format!("models.{name}.materialized"),
                "an incremental model is computed by periods of event time: set \
                 [models.NAME.batches] size = \"hour\", \"day\", \"month\" or \"year\"",
            ));
        }
        if (batches.is_some() || files_per_unit.is_some() || key_buckets.is_some())
            && materialized == Materialized::View
        {
            return Err(self.invalid(
                format!("models.{name}.batches"),
                "a view is inlined, not run: batches apply to table models",
            ));
        }
        let checks = self.checks(&name, m.checks, materialized == Materialized::Incremental)?;
        if !checks.is_empty() && materialized == Materialized::View {
            return Err(self.invalid(
                format!("models.{name}.checks"),
                "a view is inlined, not written: checks apply to table models",
            ));
        }
        Ok(ModelConfig {
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
        })
    }

    /// `[models.NAME.sink]`, defaults filled in: `out/NAME/`, Parquet, overwrite. A database
    /// sink's files are its mirror (what the last run loaded): Parquet, overwritten each run.
    fn sink(
        &self,
        model: &str,
        raw: RawSink,
        databases: &BTreeMap<String, DatabaseConfig>,
    ) -> Result<SinkConfig, ConfigError> {
        let database = self.database_sink(model, &raw, databases)?;
        let mode = match (&database, raw.mode) {
            (Some(_), _) | (None, None) => WriteMode::Overwrite,
            (None, Some(m)) => m.file_mode().ok_or_else(|| {
                self.invalid(
                    format!("models.{model}.sink.mode"),
                    "\"upsert\" applies to a sink into a database table (`database` and \
                     `table`): a sink of files is written in mode overwrite, append, \
                     overwrite_partitions or error_if_exists",
                )
            })?,
        };
        let location = raw.location.unwrap_or_else(|| format!("out/{model}/"));
        let target_rows_per_file = raw.target_rows_per_file.unwrap_or(DEFAULT_ROWS_PER_FILE);
        if target_rows_per_file == 0 {
            return Err(self.invalid(
                format!("models.{model}.sink.target_rows_per_file"),
                "must be at least 1",
            ));
        }
        let location = self.location_value(&format!("models.{model}.sink.location"), &location)?;
        let size_key = format!("models.{model}.sink.target_file_size");
        let target_file_size = match raw.target_file_size {
            None => DEFAULT_FILE_SIZE,
            Some(s) => parse_size(&s).ok_or_else(|| {
                self.invalid(
                    size_key.clone(),
                    format!("{s:?} is not a size (examples: \"512MiB\", \"1GiB\")"),
                )
            })? as u64,
        };
        if let Some(why) = refuse_target_file_size(&location, target_file_size) {
            return Err(self.invalid(size_key, why));
        }
        let format = raw.format.unwrap_or(Format::Parquet);
        let compression_key = format!("models.{model}.sink.compression");
        let compression = match raw.compression {
            None => ParquetCompression::DEFAULT,
            Some(_) if format != Format::Parquet => {
                return Err(self.invalid(
                    compression_key,
                    format!(
                        "compresses Parquet files: a {} sink's files are written uncompressed",
                        format.name()
                    ),
                ));
            }
            Some(s) => {
                ParquetCompression::parse(&s).map_err(|why| self.invalid(compression_key, why))?
            }
        };
        Ok(SinkConfig {
            location,
            format,
            partition_by: raw.partition_by,
            mode,
            target_rows_per_file,
            target_file_size,
            compression,
            adopt: raw.adopt,
            database,
        })
    }

    /// The database table of a sink with `database = ...` (`None` for a sink of files).
    fn database_sink(
        &self,
        model: &str,
        raw: &RawSink,
        databases: &BTreeMap<String, DatabaseConfig>,
    ) -> Result<Option<DatabaseSinkConfig>, ConfigError> {
        let key = |k: &str| format!("models.{model}.sink.{k}");
        let Some(database) = &raw.database else {
            if raw.table.is_some() {
                return Err(self.invalid(
                    key("table"),
                    "names the table of a sink into a database: set `database` too",
                ));
            }
            if raw.key.is_some() {
                return Err(self.invalid(
                    key("key"),
                    "is the key of an upsert into a database table: set `database`, `table` \
                     and mode = \"upsert\"",
                ));
            }
            return Ok(None);
        };
        let Some(db) = databases.get(database) else {
            let known: Vec<&str> = databases.keys().map(String::as_str).collect();
            return Err(self.invalid(
                key("database"),
                format!(
                    "no [databases.{database}] is declared{}",
                    if known.is_empty() {
                        String::new()
                    } else {
                        format!(" (declared: {})", known.join(", "))
                    }
                ),
            ));
        };
        if db.read_only {
            return Err(self.invalid(
                key("database"),
                format!(
                    "[databases.{database}] has read_only = true, and this sink writes to it: \
                     remove read_only (sources still read in read-only transactions)"
                ),
            ));
        }
        let table = match raw.table.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() && t.split('.').count() <= 2 => t.to_string(),
            Some(t) => {
                return Err(self.invalid(
                    key("table"),
                    format!("{t:?} is not a table name: expected \"table\" or \"schema.table\""),
                ));
            }
            None => {
                return Err(self.invalid(
                    key("database"),
                    "a sink into a database names its table: set table = \"schema.table\"",
                ));
            }
        };
        let mode = match raw.mode.unwrap_or(RawWriteMode::Overwrite) {
            RawWriteMode::Overwrite => TableWrite::Overwrite,
            RawWriteMode::Append => TableWrite::Append,
            RawWriteMode::Upsert => TableWrite::Upsert,
            other => {
                return Err(self.invalid(
                    key("mode"),
                    format!(
                        "{:?}: a database table is loaded in mode overwrite, append or upsert",
                        other.name()
                    ),
                ));
            }
        };
        let keys = raw.key.clone().unwrap_or_default();
        match mode {
            TableWrite::Upsert if keys.is_empty() => {
                return Err(self.invalid(
                    key("mode"),
                    "an upsert replaces rows by their key: set key = [\"column\", ...]",
                ));
            }
            TableWrite::Overwrite | TableWrite::Append if raw.key.is_some() => {
                return Err(self.invalid(key("key"), "applies to mode = \"upsert\""));
            }
            _ => {}
        }
        if let Some(dup) = keys
            .iter()
            .enumerate()
            .find(|(i, k)| keys[..*i].contains(k))
        {
            return Err(self.invalid(key("key"), format!("names {:?} twice", dup.1)));
        }
        let file_keys = [
            ("partition_by", !raw.partition_by.is_empty()),
            ("format", raw.format.is_some_and(|f| f != Format::Parquet)),
            ("adopt", raw.adopt),
        ];
        if let Some((k, _)) = file_keys.iter().find(|(_, set)| *set) {
            return Err(self.invalid(
                key(k),
                format!(
                    "is a setting of sinks of files; this sink loads table {table} of database \
                     '{database}'"
                ),
            ));
        }
        Ok(Some(DatabaseSinkConfig {
            database: database.clone(),
            table,
            mode,
            key: keys,
        }))
    }

    /// `[models.NAME.batches]`: the settings of the model's work units, and how it is split
    /// into them: by event time, by input file, by key, or not at all.
    fn work_units(
        &self,
        model: &str,
        raw: RawBatches,
        materialized: Materialized,
    ) -> Result<WorkUnits, ConfigError> {
        let incremental_keys = [
            ("late_window", raw.late_window.is_some()),
            ("lookback", raw.lookback.is_some()),
            ("on_late_beyond_window", raw.on_late_beyond_window.is_some()),
        ];
        if materialized != Materialized::Incremental
            && let Some((key, _)) = incremental_keys.iter().find(|(_, set)| *set)
        {
            return Err(self.invalid(
                format!("models.{model}.batches.{key}"),
                "applies to incremental models: set materialized = \"incremental\" on the model",
            ));
        }
        let units = self.unit_settings(
            &format!("models.{model}.batches"),
            self.default_units,
            raw.unit_timeout.as_deref(),
            raw.retries,
            raw.max_concurrent_units,
        )?;
        let (by_file, by_key) = match raw.by.as_deref() {
            None | Some("time") => (false, false),
            Some("file") => (true, false),
            Some("key") => (false, true),
            Some(other) => {
                return Err(self.invalid(
                    format!("models.{model}.batches.by"),
                    format!(
                        "{other:?}: expected \"file\" or \"key\" (or a `size` for batches \
                         of event time)"
                    ),
                ));
            }
        };
        let key_buckets = if by_key {
            Some(self.key_buckets(model, &raw)?)
        } else {
            if raw.buckets.is_some() || raw.keys.is_some() {
                return Err(self.invalid(
                    format!("models.{model}.batches"),
                    "buckets and keys apply to by = \"key\"",
                ));
            }
            None
        };
        let files_per_unit = if by_file {
            Some(self.files_per_unit(model, &raw)?)
        } else {
            None
        };
        let batches = if !by_file
            && !by_key
            && (raw.size.is_some()
                || raw.start.is_some()
                || raw.end.is_some()
                || materialized == Materialized::Incremental)
        {
            Some(self.batches(model, raw, materialized)?)
        } else {
            None
        };
        Ok(WorkUnits {
            units,
            batches,
            files_per_unit,
            key_buckets,
        })
    }

    /// `by = "key"`: the number of buckets and each source's key column.
    fn key_buckets(&self, model: &str, raw: &RawBatches) -> Result<KeyBuckets, ConfigError> {
        if raw.size.is_some()
            || raw.start.is_some()
            || raw.end.is_some()
            || raw.files_per_unit.is_some()
        {
            return Err(self.invalid(
                format!("models.{model}.batches"),
                "by = \"key\" splits by a hash of the key: size, start, end and \
                 files_per_unit do not apply",
            ));
        }
        let buckets = match raw.buckets {
            Some(n) if (2..=4096).contains(&n) => n,
            Some(_) => {
                return Err(self.invalid(
                    format!("models.{model}.batches.buckets"),
                    "must be between 2 and 4096",
                ));
            }
            None => {
                return Err(self.invalid(
                    format!("models.{model}.batches.buckets"),
                    "by = \"key\" needs `buckets` (the number of units)",
                ));
            }
        };
        let keys = raw.keys.clone().unwrap_or_default();
        if keys.is_empty() {
            return Err(self.invalid(
                format!("models.{model}.batches.keys"),
                "by = \"key\" needs `keys = { source = \"key column\", ... }`",
            ));
        }
        Ok(KeyBuckets {
            buckets,
            keys: keys
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect(),
        })
    }

    /// `by = "file"`: the number of input files per unit (default 1).
    fn files_per_unit(&self, model: &str, raw: &RawBatches) -> Result<usize, ConfigError> {
        if raw.size.is_some() || raw.start.is_some() || raw.end.is_some() {
            return Err(self.invalid(
                format!("models.{model}.batches"),
                "by = \"file\" splits by input file: size, start and end do not apply",
            ));
        }
        match raw.files_per_unit.unwrap_or(1) {
            0 => Err(self.invalid(
                format!("models.{model}.batches.files_per_unit"),
                "must be at least 1",
            )),
            n => Ok(n),
        }
    }

    /// `[models.NAME.batches]` by event time: the period, and the start and end if set.
    fn batches(
        &self,
        model: &str,
        raw: RawBatches,
        materialized: Materialized,
    ) -> Result<BatchConfig, ConfigError> {
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
        let timezone = match raw.timezone {
            None => None,
            Some(name) => Some(name.parse::<chrono_tz::Tz>().map_err(|_| {
                self.invalid(
                    key("timezone"),
                    format!(
                        "{name:?} is not a time zone of the IANA database (examples: \
                         \"America/New_York\", \"Europe/Berlin\", \"UTC\")"
                    ),
                )
            })?),
        };
        let incremental = if materialized == Materialized::Incremental {
            let late_window = match raw.late_window {
                None => chrono::Duration::zero(),
                Some(text) => crate::config::parse_duration(&text)
                    .and_then(|d| chrono::Duration::from_std(d).ok())
                    .ok_or_else(|| {
                        self.invalid(
                            key("late_window"),
                            format!(
                                "{text:?} is not a duration (examples: \"48h\", \"2d\", \"90m\")"
                            ),
                        )
                    })?,
            };
            Some(IncrementalConfig {
                late_window,
                lookback: raw.lookback.unwrap_or(0),
                on_late_beyond_window: raw.on_late_beyond_window.unwrap_or_default(),
            })
        } else {
            None
        };
        Ok(BatchConfig {
            size,
            start,
            end,
            timezone,
            incremental,
        })
    }

    /// `[[models.NAME.checks]]`: each entry one kind of check, and its severity.
    fn checks(
        &self,
        model: &str,
        raw: Vec<RawCheck>,
        materialized_incremental: bool,
    ) -> Result<Vec<Check>, ConfigError> {
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
            if let Some(r) = c.late_rate {
                if !materialized_incremental {
                    return Err(self.invalid(
                        format!("{key}.late_rate"),
                        "applies to incremental models: set materialized = \"incremental\"",
                    ));
                }
                if !(0.0..=1.0).contains(&r.max) {
                    return Err(self.invalid(
                        format!("{key}.late_rate.max"),
                        format!("{} is not a rate between 0 and 1 (0.01 is 1 %)", r.max),
                    ));
                }
                kinds.push(CheckKind::LateRate { max: r.max });
            }
            let kind = match kinds.len() {
                1 => kinds.remove(0),
                0 => {
                    return Err(self.invalid(
                        key,
                        "a check needs one of not_null, unique, accepted_values, row_count, \
                         expression, sql or late_rate",
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
}
