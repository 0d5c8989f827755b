//! The output-table format: how a published output is laid out in its folder, whoever writes
//! or reads it.
//!
//! - [`manifest`]: the `_MANIFEST`, the list of files of the current version;
//! - [`commit`]: the protocol that stages, moves and commits files, and cleans up after;
//! - [`hive`]: `key=value/` partition folders: segment encoding, the NULL folder, values;
//! - [`schema`]: whether a write may add to an output with the columns it has;
//! - [`view`]: one version's files as a read-only object store, for readers.

pub(crate) mod commit;
pub(crate) mod hive;
pub(crate) mod manifest;
pub(crate) mod schema;
pub(crate) mod view;

pub(crate) use commit::{CommitError, Existing, NewVersion, Output, StagedFile, kept_files};
pub(crate) use manifest::{Manifest, ManifestColumn, ManifestFile, manifest_columns};

/// Whether a relative path inside an output folder is a data file (not the manifest, the
/// marker, staging, or a hidden `_` / `.` entry).
pub(crate) fn is_data_file(path: &str) -> bool {
    !path.split('/').any(crate::config::is_hidden)
}

/// A new run id: UTC time plus a random suffix, sortable and unique. Data files carry it in
/// their names (see [`is_sluice_file`]).
pub(crate) fn new_run_id() -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &rand[..6]
    )
}

/// Whether a file name is one sluice writes: `part-<unit key>-<attempt>-NNNNN-<run id>.<ext>`
/// (older builds wrote decimal unit and attempt numbers).
pub(crate) fn is_sluice_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    regex::Regex::new(r"^part-([0-9a-f]+-)*\d{5}-\d{8}T\d{6}Z-[0-9a-f]{6}\.(parquet|csv|json)$")
        .map(|re| re.is_match(name))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_files_exclude_control_and_hidden_entries() {
        assert!(is_data_file("part-0.parquet"));
        assert!(is_data_file("d=2024-01-01/part-0.parquet"));
        assert!(is_data_file("d=__HIVE_DEFAULT_PARTITION__/part-0.parquet"));
        assert!(!is_data_file("_MANIFEST"));
        assert!(!is_data_file("_SUCCESS"));
        assert!(!is_data_file("_staging/r1/part-0.parquet"));
        assert!(!is_data_file(".hidden/part-0.parquet"));
    }

    #[test]
    fn sluice_file_names_are_recognised() {
        assert!(is_sluice_file(
            "d=1/part-00003-20261128T003405Z-b4370f.parquet"
        ));
        assert!(!is_sluice_file("d=1/part-0.parquet"));
        assert!(!is_sluice_file("data.csv"));
    }
}
