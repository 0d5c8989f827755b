//! The `_MANIFEST` of an output folder: the list of files that make up its current version,
//! with row counts and the result's columns. Its single PUT is the commit point of
//! [`super::commit`].

use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

/// The manifest's object name inside an output folder.
pub(crate) const MANIFEST: &str = "_MANIFEST";
/// The success marker's object name inside an output folder.
pub(crate) const SUCCESS: &str = "_SUCCESS";
/// The staging folder inside an output folder of builds before the staging area
/// ([`super::staging`]): healed away when found.
pub(crate) const STAGING: &str = "_staging";

/// The newest version of the manifest format this build reads and writes. Version 2 added
/// the periods of incremental outputs; a manifest without them is still written as version 1,
/// so older builds keep reading and writing every other output.
pub(crate) const MANIFEST_VERSION: u32 = 2;

/// The version of a manifest that records periods.
pub(crate) const PERIODS_VERSION: u32 = 2;

/// The list of files that make up one published version of an output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Manifest {
    /// Manifest format version.
    pub version: u32,
    /// The run that committed this version.
    pub run_id: String,
    /// When it was committed (RFC 3339, UTC).
    pub committed_at: String,
    /// The files' format.
    pub format: String,
    /// Hive partition columns.
    pub partition_by: Vec<String>,
    /// Total rows over all files.
    pub rows: u64,
    /// The result's columns in order, partition columns included, with their Arrow types,
    /// so readers get the exact schema back.
    #[serde(default)]
    pub columns: Vec<ManifestColumn>,
    /// The files, relative to the output folder, in object_store's path form.
    pub files: Vec<ManifestFile>,
    /// In append mode: the identity of every append this version holds (a hash of the model,
    /// its rendered SQL, its sink and its input files), so the same append is never applied
    /// twice, whatever the state store remembers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub appended: Vec<String>,
    /// For the output of an incremental model: the periods it holds, each with the input
    /// files that were applied to it. Files of such an output record their period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periods: Option<Periods>,
}

/// The periods an incremental model's output holds, and what each was computed from: what
/// the next run compares the inputs with to find the periods late or changed input touched.
/// It is in the manifest, the commit point, so what was applied is recorded in the same
/// atomic write that applies it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Periods {
    /// The period grid (`day`, `month`...): a run on another grid recomputes every period.
    pub grid: String,
    /// The first period processed: an earlier one is only ever computed by a backfill.
    pub start: String,
    /// Each period, by name (`2024-01-10`).
    pub entries: std::collections::BTreeMap<String, PeriodEntry>,
}

/// One period of an incremental output: which run computed it, and from what.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PeriodEntry {
    /// The run that last computed it.
    pub run_id: String,
    /// A hash of the inputs without event time (dimension sources, tables upstream) when it
    /// was computed: when they change, the periods inside the late window are redone.
    pub dims: String,
    /// The input files that held rows of the period, each with its rows in it.
    pub inputs: Vec<AppliedFile>,
}

/// One version of an input file, and its rows in one period.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct AppliedFile {
    /// The source it belongs to.
    pub source: String,
    /// Its object path.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time (RFC 3339).
    pub modified: String,
    /// Its entity tag, where the store gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// Its rows in the period.
    pub rows: u64,
}

impl AppliedFile {
    /// The file version, without the rows: two records of the same version compare equal.
    pub(crate) fn version(&self) -> (&str, &str, u64, &str, Option<&str>) {
        (
            &self.source,
            &self.path,
            self.size,
            &self.modified,
            self.etag.as_deref(),
        )
    }
}

/// One column of an output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ManifestColumn {
    /// The column name.
    pub name: String,
    /// The Arrow type, as Arrow displays it (`Int64`, `Date32`, `Decimal128(12, 2)`...).
    pub data_type: String,
}

impl Manifest {
    /// The output's schema (file columns and partition columns, in result order), if the
    /// manifest records it and every type parses.
    pub(crate) fn schema(&self) -> Option<datafusion::arrow::datatypes::Schema> {
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        if self.columns.is_empty() {
            return None;
        }
        let fields = self
            .columns
            .iter()
            .map(|c| {
                c.data_type
                    .parse::<DataType>()
                    .ok()
                    .map(|t| Field::new(&c.name, t, true))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Schema::new(fields))
    }
}

/// One file of a published output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the output folder, e.g. `order_date=2024-01-01/part-00000-<run>.parquet`.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// In an incremental model's output, the period whose unit wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// The units' small files this file was merged from at publish (their paths, had they
    /// been published): a resumed run tells from them that its units' files are published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
    /// A file of no rows that only carries the output's columns: a version with no rows
    /// lists one, so that readers of the folder (DuckDB's and Spark's globs, pyarrow's
    /// datasets) find a file and its schema (see [`crate::sink::stage_schema_file`]).
    /// sluice's own reads skip it, and the next version with rows drops it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub schema_only: bool,
}

impl ManifestFile {
    /// The partition folder the file lives in (`""` when unpartitioned).
    pub fn partition(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }
}

impl Manifest {
    /// The manifest of a new version written by `run_id`, committed now: `rows` is the sum of
    /// the files' rows. The one way sluice builds a manifest.
    pub(crate) fn new(
        run_id: &str,
        format: &str,
        partition_by: &[String],
        columns: Vec<ManifestColumn>,
        files: Vec<ManifestFile>,
    ) -> Manifest {
        Manifest {
            version: 1,
            run_id: run_id.to_string(),
            committed_at: crate::config::timestamp_now(),
            format: format.to_string(),
            partition_by: partition_by.to_vec(),
            rows: files.iter().map(|f| f.rows).sum(),
            columns,
            files,
            appended: Vec::new(),
            periods: None,
        }
    }
}

impl Manifest {
    /// When this version was committed (now, for a manifest whose time does not parse).
    pub(crate) fn committed(&self) -> chrono::DateTime<chrono::Utc> {
        crate::config::parse_timestamp(&self.committed_at).unwrap_or_else(chrono::Utc::now)
    }

    /// The version's files of rows: every file but a [`ManifestFile::schema_only`] one.
    pub(crate) fn data_files(&self) -> impl Iterator<Item = &ManifestFile> {
        self.files.iter().filter(|f| !f.schema_only)
    }

    /// The version's files of rows as objects of the output folder at `location`, sorted by
    /// key: exact sizes, the commit time as their modification time.
    pub(crate) fn objects(
        &self,
        location: &crate::store::Location,
    ) -> Vec<object_store::ObjectMeta> {
        let committed = self.committed();
        let mut files: Vec<_> = self
            .data_files()
            .map(|f| object_store::ObjectMeta {
                location: location.child(&f.path),
                last_modified: committed,
                size: f.bytes,
                e_tag: None,
                version: None,
            })
            .collect();
        files.sort_by(|a, b| a.location.cmp(&b.location));
        files
    }
}

/// The columns of a schema as a manifest records them.
pub(crate) fn manifest_columns(schema: &SchemaRef) -> Vec<ManifestColumn> {
    schema
        .fields()
        .iter()
        .map(|f| ManifestColumn {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_the_folder() {
        let f = |p: &str| ManifestFile {
            path: p.into(),
            rows: 1,
            bytes: 1,
            period: None,
            merged: Vec::new(),
            schema_only: false,
        };
        assert_eq!(f("a=1/b=2/part.parquet").partition(), "a=1/b=2");
        assert_eq!(f("part.parquet").partition(), "");
    }
}
