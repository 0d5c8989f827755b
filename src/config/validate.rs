//! The validator: raw TOML shapes ([`super::raw`]) → the validated types of [`super`], with
//! the file, and the line where it can be found, in every error. This file validates the
//! pipeline, `[settings]`, `[stores.NAME]` and `[sources.NAME]`; [`models`] the models.

mod models;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::raw::{RawPipeline, RawSettings, RawSource, RawStore};
use super::values::{
    self, EnvLookup, empty_segment, empty_variable, interpolate_env, key_line, local_folder_format,
    parse_duration, parse_size, resolve_location, valid_name,
};
use super::{
    Compression, ConfigError, CsvOptions, Format, JoinOptions, JoinStrategy, OnBadRows,
    PartitionCol, Pipeline, Settings, SourceConfig, StoreConfig, UnitSettings,
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
        let mut sources = BTreeMap::new();
        for (name, s) in raw.sources {
            let src = self.source(&name, s)?;
            sources.insert(name, src);
        }
        let models = self.models(raw.models, &sources)?;
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
            sources,
            models,
            vars,
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
            None => JoinStrategy::Auto,
            Some(s) => JoinStrategy::parse(s).ok_or_else(|| {
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
            join: JoinOptions {
                strategy,
                buckets: raw.join_buckets,
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
        Ok(StoreConfig { name, url, options })
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
            location: self.location_value(&key("location"), &raw.location)?,
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
            rejects: raw
                .rejects
                .map(|r| self.location_value(&key("rejects"), &r))
                .transpose()?,
            event_time: raw.event_time,
        })
    }
}
