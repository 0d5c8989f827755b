//! The output-table format: how a published output is laid out in its folder, whoever writes
//! or reads it.
//!
//! - [`manifest`]: the `_MANIFEST`, the list of files of the current version;
//! - [`commit`]: the protocol that stages, moves and commits files, and cleans up after;
//! - [`staging`]: where writers stage, beside the output, and the leases that say they live;
//! - [`swap`]: the commit point, a compare-and-swap of the manifest on every store;
//! - [`heal`]: what crashed writers left, found and deleted by the next command;
//! - [`hive`]: `key=value/` partition folders: segment encoding, the NULL folder, values;
//! - [`schema`]: whether a write may add to an output with the columns it has;
//! - [`view`]: one version's files as a read-only object store, for readers.

pub(crate) mod commit;
pub(crate) mod heal;
pub(crate) mod hive;
pub(crate) mod manifest;
pub(crate) mod schema;
pub(crate) mod staging;
pub(crate) mod swap;
pub(crate) mod view;

pub(crate) use commit::{
    CommitError, CommitFailure, Existing, NewVersion, Output, PeriodWrite, StagedFile, kept_files,
};
pub(crate) use heal::Ended;
pub(crate) use manifest::{Manifest, ManifestFile, manifest_columns};

/// Whether a relative path inside an output folder is a data file (not the manifest, the
/// marker, staging, or a hidden `_` / `.` entry).
pub(crate) fn is_data_file(path: &str) -> bool {
    !path.split('/').any(crate::config::is_hidden)
}

/// A new run id: UTC time plus a random suffix, sortable and unique. Data files carry it in
/// their names (see [`run_of_file`]).
pub(crate) fn new_run_id() -> String {
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &rand[..6]
    )
}

/// The run that wrote a file, if its name is one sluice writes:
/// `part-<unit key>-<attempt>-NNNNN-<run id>.<ext>`, or `part-compact-<group>-...` for units'
/// files merged at publish (older builds wrote decimal unit and attempt numbers).
pub(crate) fn run_of_file(path: &str) -> Option<&str> {
    static NAME: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    let name = path.rsplit('/').next().unwrap_or(path);
    let re = NAME
        .get_or_init(|| {
            regex::Regex::new(
                r"^part-(?:compact-)?(?:[0-9a-f]+-)*\d{5}-(\d{8}T\d{6}Z-[0-9a-f]{6})\.(?:parquet|csv|json)$",
            )
            .ok()
        })
        .as_ref()?;
    re.captures(name).and_then(|c| c.get(1)).map(|m| m.as_str())
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
        assert!(run_of_file("d=1/part-00003-20261128T003405Z-b4370f.parquet").is_some());
        assert!(run_of_file("d=1/part-0.parquet").is_none());
        assert!(run_of_file("data.csv").is_none());
        assert_eq!(
            run_of_file("d=1/part-0a-1-00003-20261128T003405Z-b4370f.csv"),
            Some("20261128T003405Z-b4370f")
        );
        // Units' files merged at publish (sink::compact): left unlisted by a killed publish,
        // they must be told apart as the run's, to be healed.
        assert_eq!(
            run_of_file(
                "part-compact-223857424197dfbc-9366c23e-00000-20261129T155855Z-355f30.parquet"
            ),
            Some("20261129T155855Z-355f30")
        );
    }
}
