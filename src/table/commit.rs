//! The commit protocol: how staged files become a model's published output atomically, even
//! with other writers at work on the same output.
//!
//! An output folder holds data files (`key=value/part-...-<run>.ext`), a `_MANIFEST` listing
//! the files of the current version with their row counts, and a `_SUCCESS` marker. A write:
//!
//! 1. **heals and stages**: deletes what crashed writers left (see [`super::heal`]), takes a
//!    lease, and stages every new file in the writer's folder of the output's staging area,
//!    *outside* the output folder (see [`super::staging`]): no reader of the folder sees it;
//! 2. **moves** each staged file to its final key. Names carry the run id, so a move never
//!    replaces a file the current manifest lists: readers of the old version are unaffected.
//!    On local disk the files and their folders are then fsynced;
//! 3. **commits** by replacing `_MANIFEST` only if it is still the version read at step 1 (a
//!    compare-and-swap, [`super::swap`]): the manifest names either the old complete file set
//!    or the new one, never a mix, and two writers never both commit over one base. A writer
//!    whose base moved re-reads it and rebases where its mode allows (an append; an overwrite
//!    of partitions nobody else rewrote), or fails and removes what it moved;
//! 4. **cleans up**: deletes the files of the replaced version the new one does not list,
//!    writes `_SUCCESS`, and removes its staging and lease.
//!
//! A failure before step 3 deletes what this run moved and leaves the old manifest and files
//! exactly as they were. A commit whose outcome is unknown (the store did not answer) deletes
//! nothing. A crash leaves files no manifest lists, which the next command heals once the
//! writer's lease shows it ended. Clean-up only ever deletes files a manifest listed or files
//! named as sluice names them: another program's files in the folder are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

use super::heal::Ended;
use super::hive::partition_key;
use super::manifest::{
    MANIFEST, Manifest, ManifestColumn, ManifestFile, PeriodEntry, Periods, SUCCESS,
};
use super::staging::{LeaseKeeper, StagingArea};
use super::swap::{self, SwapError, Version, Versioned};
use crate::config::WriteMode;
use crate::store::Location;

/// How many times a writer whose base moved rebases and tries again before it gives up.
const REBASES: usize = 64;

/// How long a writer's lease must still hold when it commits: a commit is one small PUT.
const COMMIT_MARGIN: Duration = Duration::from_secs(240);

/// A file staged by one unit: where it is in the run's staging folder, and what it becomes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedFile {
    /// Path relative to the run's staging folder (`<unit>/<partition>/<name>`).
    pub staged: String,
    /// The file as the manifest will list it (path relative to the output folder).
    pub file: ManifestFile,
}

/// What kind of failure a [`CommitError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitFailure {
    /// Reading, writing or deleting an object failed.
    Io,
    /// Another writer committed a version this one cannot be rebased onto.
    Conflict,
    /// The commit's outcome is not known: nothing was deleted.
    Unknown,
    /// The folder holds files sluice did not write, and no manifest.
    NotEmpty,
    /// The folder holds files sluice published, but its manifest is gone.
    ManifestLost,
    /// The store cannot commit atomically.
    Unsupported,
}

/// A failed step of the protocol, with the object key it concerned.
#[derive(Debug)]
pub struct CommitError {
    /// The object key (as a user would recognise it).
    pub key: String,
    /// What failed, and what it left.
    pub message: String,
    /// The kind of failure.
    pub kind: CommitFailure,
}

/// An output folder and the store that holds it.
pub(crate) struct Output {
    store: Arc<dyn ObjectStore>,
    location: Location,
    staging: Option<StagingArea>,
    lease: Mutex<Option<LeaseKeeper>>,
    /// A commit's outcome is unknown: the lease and files stay as they are.
    unknown: std::sync::atomic::AtomicBool,
}

/// What one write adds: the staged files and what the new manifest says about them.
pub(crate) struct NewVersion<'a> {
    /// The run writing it.
    pub run_id: &'a str,
    /// How it combines with the current version.
    pub mode: WriteMode,
    /// The files' format name.
    pub format: &'a str,
    /// Hive partition columns.
    pub partition_by: &'a [String],
    /// The result's columns.
    pub columns: Vec<ManifestColumn>,
    /// The staged files.
    pub files: Vec<StagedFile>,
    /// In append mode, the identity of this append (recorded in the manifest).
    pub append_id: Option<&'a str>,
    /// For an incremental model's output: the periods this write recomputes. Their files
    /// are replaced by the staged ones, whatever `mode` and the partitions say; the other
    /// periods' files are kept.
    pub periods: Option<&'a PeriodWrite>,
}

/// What an incremental model's write does to the periods of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeriodWrite {
    /// The period grid.
    pub grid: String,
    /// The first period processed.
    pub start: String,
    /// Every period of the current version is replaced: a first run, a full refresh.
    pub full: bool,
    /// The periods this write computes, with what each was computed from. A period here
    /// loses all its current files, even if no staged file is of it (its rows are gone).
    pub entries: BTreeMap<String, PeriodEntry>,
}

impl PeriodWrite {
    /// Whether the new version keeps `file` of the current one.
    fn keeps(&self, file: &ManifestFile) -> bool {
        !self.full
            && file
                .period
                .as_ref()
                .is_some_and(|p| !self.entries.contains_key(p))
    }

    /// The periods of the version written over `base`: `base`'s (unless this write replaces
    /// them all) with this write's entries in place of the ones it recomputes.
    fn merged(&self, base: Option<&Manifest>) -> Periods {
        let mut entries = match base.and_then(|m| m.periods.as_ref()) {
            Some(p) if !self.full => p.entries.clone(),
            _ => BTreeMap::new(),
        };
        entries.extend(self.entries.clone());
        let start = match base.and_then(|m| m.periods.as_ref()) {
            Some(p) if !self.full => p.start.clone().min(self.start.clone()),
            _ => self.start.clone(),
        };
        Periods {
            grid: self.grid.clone(),
            start,
            entries,
        }
    }
}

/// The files of the current version that the next one keeps beside the staged files: all of
/// them in append mode, those of partitions the staged files do not rewrite in
/// overwrite_partitions mode, none otherwise.
pub(crate) fn kept_files(
    existing: &Existing,
    mode: WriteMode,
    partition_by: &[String],
    staged: &[StagedFile],
    periods: Option<&PeriodWrite>,
) -> Vec<ManifestFile> {
    kept_of(
        &existing.current_files(),
        mode,
        partition_by,
        staged,
        periods,
    )
}

fn kept_of(
    current: &[ManifestFile],
    mode: WriteMode,
    partition_by: &[String],
    staged: &[StagedFile],
    periods: Option<&PeriodWrite>,
) -> Vec<ManifestFile> {
    // A file of the schema alone is never kept: a new version with no rows lists its own.
    let current: Vec<ManifestFile> = current.iter().filter(|f| !f.schema_only).cloned().collect();
    if let Some(periods) = periods {
        return current.into_iter().filter(|f| periods.keeps(f)).collect();
    }
    // (A file of the schema alone, in the NULL partition's folder, rewrites no partition.)
    let new_partitions: BTreeSet<String> = staged
        .iter()
        .filter(|f| !f.file.schema_only)
        .map(|f| partition_key(f.file.partition()))
        .collect();
    match mode {
        WriteMode::Overwrite | WriteMode::ErrorIfExists => Vec::new(),
        // Without partitions, the whole output is the one partition.
        WriteMode::OverwritePartitions if partition_by.is_empty() => Vec::new(),
        WriteMode::Append => current,
        WriteMode::OverwritePartitions => current
            .into_iter()
            .filter(|f| !new_partitions.contains(&partition_key(f.partition())))
            .collect(),
    }
}

/// What the folder held before this write.
#[derive(Debug)]
pub(crate) struct Existing {
    /// The current manifest, if there is one.
    pub manifest: Option<Manifest>,
    /// Its version, which the commit compares with.
    version: Version,
    /// Every data file found by listing (relative paths), leftovers of crashes deleted.
    pub data_files: Vec<(String, u64)>,
    /// Without a manifest, the files taken as the current version (`adopt`).
    adopted: Vec<ManifestFile>,
}

impl Existing {
    /// Files of run `run_id` in the folder that `manifest` does not list: moved by an earlier,
    /// interrupted publish of the same run (resumed), for units it has run again since.
    pub(crate) fn own_unlisted(&self, run_id: &str, manifest: &Manifest) -> Vec<String> {
        let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        self.data_files
            .iter()
            .map(|(p, _)| p)
            .filter(|p| super::run_of_file(p) == Some(run_id) && !listed.contains(p.as_str()))
            .cloned()
            .collect()
    }

    /// Files of run `run_id` in the folder that the current version does not list (all of
    /// them when there is no manifest yet): moved by a killed attempt of the run.
    pub(crate) fn own_unlisted_files(&self, run_id: &str) -> Vec<String> {
        match &self.manifest {
            Some(m) => self.own_unlisted(run_id, m),
            None => self
                .data_files
                .iter()
                .map(|(p, _)| p)
                .filter(|p| super::run_of_file(p) == Some(run_id))
                .cloned()
                .collect(),
        }
    }

    /// The files of the current version: the manifest's, or those adopted.
    pub(crate) fn current_files(&self) -> Vec<ManifestFile> {
        match &self.manifest {
            Some(m) => m.files.clone(),
            None => self.adopted.clone(),
        }
    }
}

impl Output {
    /// The output folder at `location` (a folder) in `store`.
    pub(crate) fn new(store: Arc<dyn ObjectStore>, location: Location) -> Output {
        let location = location.as_folder();
        // Writers reaching one local folder by different paths (a symbolic link) must find
        // each other's leases: the staging area is the folder's as the file system knows it.
        let identity = location
            .local_path()
            .and_then(|p| {
                Location::parse(&crate::config::folder_identity(&p.to_string_lossy())).ok()
            })
            .unwrap_or_else(|| location.clone());
        Output {
            store,
            staging: StagingArea::of(&identity),
            location,
            lease: Mutex::new(None),
            unknown: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The store holding the output.
    pub(crate) fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// The output's location.
    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    /// Stages this output's files under `root` (`[settings] staging`, on the output's store)
    /// instead of beside it: in a folder of its own there, named after the output.
    pub(crate) fn with_staging_root(mut self, root: &Location) -> Result<Output, CommitError> {
        if root.store_url() != self.location.store_url() {
            return Err(self.failure(
                &self.key(""),
                CommitFailure::Unsupported,
                format!(
                    "settings.staging ({root}) is not on the output's store: staged files are \
                     moved into the output by a rename, which only works within one store"
                ),
            ));
        }
        let name = self
            .location
            .parent_folder()
            .map_or_else(|| "output".to_string(), |(_, n)| n);
        let tag = crate::units::stable_hash(self.location.url().as_str());
        let folder = root
            .as_folder()
            .join_folder(&format!("{name}-{:08x}", tag & 0xffff_ffff))
            .map_err(|e| self.err(&self.key(""), e))?;
        self.staging = self.staging.take().map(|a| a.with_files(folder));
        Ok(self)
    }

    /// The output's staging area (none at the root of a store).
    pub(crate) fn staging(&self) -> Option<&StagingArea> {
        self.staging.as_ref()
    }

    /// The object key of a path relative to the output folder.
    pub(crate) fn key(&self, relative: &str) -> ObjectPath {
        self.location.child(relative)
    }

    /// The key of a file staged by run `run_id` (`staged` relative to the run's folder).
    pub(crate) fn staged_key(&self, run_id: &str, staged: &str) -> ObjectPath {
        match &self.staging {
            Some(area) => area.key(run_id, staged),
            // Never used: writes at the root of a store are refused.
            None => self.key(&format!("{}/{run_id}/{staged}", super::manifest::STAGING)),
        }
    }

    pub(crate) fn err(&self, key: &ObjectPath, e: impl std::fmt::Display) -> CommitError {
        self.failure(
            key,
            CommitFailure::Io,
            crate::describe::describe_storage(&e.to_string()),
        )
    }

    fn failure(&self, key: &ObjectPath, kind: CommitFailure, message: String) -> CommitError {
        CommitError {
            key: self.location.display_key(key),
            message,
            kind,
        }
    }

    /// Reads the manifest, if any.
    pub(crate) async fn read_manifest(&self) -> Result<Option<Manifest>, CommitError> {
        Ok(self.read_versioned().await?.manifest)
    }

    /// Reads the manifest with its version.
    pub(crate) async fn read_versioned(&self) -> Result<Versioned, CommitError> {
        let key = self.key(MANIFEST);
        let local = self.location.local_path();
        swap::read(self.store.as_ref(), &key, local.as_deref())
            .await
            .map_err(|e| self.err(&key, e))
    }

    /// The objects under `prefix`.
    pub(super) async fn objects_under(
        &self,
        prefix: &ObjectPath,
    ) -> Result<Vec<ObjectMeta>, CommitError> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(prefix, e))
    }

    /// Lists everything under the folder as (relative path, size).
    pub(crate) async fn list(&self) -> Result<Vec<(String, u64)>, CommitError> {
        let prefix = self.location.path();
        let base: Vec<_> = prefix.parts().collect();
        let metas = self.objects_under(&prefix).await?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let parts: Vec<_> = m.location.parts().collect();
                parts.starts_with(&base).then(|| {
                    let rel: Vec<&str> = parts[base.len()..].iter().map(|p| p.as_ref()).collect();
                    (rel.join("/"), m.size)
                })
            })
            .collect())
    }

    /// Prepares a write by run `run_id`: heals the folder, refuses a folder sluice cannot
    /// write safely (files and no manifest: another program's, or a lost manifest's), and
    /// takes the run's lease. Returns the folder's state. With `adopt`, a folder without a
    /// manifest is written all the same: its files with the output's `extension` are taken as
    /// its current version; other files stay as they are, never listed nor deleted.
    pub(crate) async fn inspect(
        &self,
        run_id: &str,
        ended: &Ended,
        adopt: bool,
        extension: &str,
    ) -> Result<Existing, CommitError> {
        let survey = self.heal(Some(run_id), ended).await?;
        if let Some(dir) = survey.nested.first() {
            return Err(self.failure(
                &self.key(&format!("{dir}{MANIFEST}")),
                CommitFailure::NotEmpty,
                format!(
                    "the folder holds another output ({dir}, which has a {MANIFEST}): an output inside \
                     another would have its files taken for the outer one's; write them to folders side by side"
                ),
            ));
        }
        if let Some(outer) = self.outer_output().await? {
            return Err(self.failure(
                &outer,
                CommitFailure::NotEmpty,
                "the folder is inside another output (this is its manifest): an output inside \
                 another would have its files taken for the outer one's; write them to folders side by side"
                    .into(),
            ));
        }
        let mut adopted = Vec::new();
        if survey.versioned.manifest.is_none() {
            let others: Vec<&(String, u64)> = survey
                .data_files
                .iter()
                .filter(|(p, _)| super::run_of_file(p) != Some(run_id))
                .collect();
            if !others.is_empty() && !adopt {
                let example = &others[0].0;
                let (kind, message) = if survey.lost.is_empty() {
                    (
                        CommitFailure::NotEmpty,
                        format!(
                            "the folder is not empty ({} file(s) sluice did not write, e.g. {example}) and has no {MANIFEST}: \
                             refusing to write into it, so nothing of what is there is deleted or mixed with this output. \
                             Write to an empty folder, or set adopt = true on the sink (sluice sql: --adopt) to take its \
                             files as the output's current version (overwrite then replaces them)",
                            others.len()
                        ),
                    )
                } else {
                    (
                        CommitFailure::ManifestLost,
                        format!(
                            "the folder holds {} file(s) sluice published (e.g. {}) but its {MANIFEST} is gone (deleted or lost): \
                             refusing to write, as that would lose them. To recover, set adopt = true on the sink \
                             (sluice sql: --adopt) to take the files there as the output's current version, \
                             or delete the folder to start afresh",
                            others.len(),
                            survey.lost[0]
                        ),
                    )
                };
                return Err(self.failure(&self.key(MANIFEST), kind, message));
            }
            let suffix = format!(".{extension}");
            let (taken, left): (Vec<_>, Vec<_>) =
                others.into_iter().partition(|(p, _)| p.ends_with(&suffix));
            if let Some((example, _)) = left.first() {
                tracing::warn!(
                    output = %self.location,
                    "{} file(s) without the extension {suffix} (e.g. {example}) are not taken as part of the output: they stay as they are",
                    left.len()
                );
            }
            adopted = taken
                .into_iter()
                .map(|(path, bytes)| ManifestFile {
                    path: path.clone(),
                    rows: 0,
                    bytes: *bytes,
                    period: None,
                    merged: Vec::new(),
                    schema_only: false,
                })
                .collect();
        }
        self.take_lease(run_id).await?;
        Ok(Existing {
            manifest: survey.versioned.manifest,
            version: survey.versioned.version,
            data_files: survey.data_files,
            adopted,
        })
    }

    /// The manifest of an output that holds this one (in a folder above it), if any.
    async fn outer_output(&self) -> Result<Option<ObjectPath>, CommitError> {
        let path = self.location.path();
        let mut parts: Vec<_> = path.parts().collect();
        while parts.pop().is_some() {
            let key = ObjectPath::from_iter(parts.iter().cloned().chain([MANIFEST.into()]));
            match self.store.head(&key).await {
                Ok(_) => return Ok(Some(key)),
                Err(object_store::Error::NotFound { .. }) => {}
                // A folder above that this writer may not read (a bucket's root, with a policy
                // for its own prefix): nothing to find there.
                Err(object_store::Error::PermissionDenied { .. })
                | Err(object_store::Error::Unauthenticated { .. }) => {}
                Err(e) => return Err(self.err(&key, e)),
            }
        }
        Ok(None)
    }

    /// Writes run `run_id`'s lease and keeps it renewed while this output is open.
    async fn take_lease(&self, run_id: &str) -> Result<(), CommitError> {
        let Some(area) = &self.staging else {
            return Ok(());
        };
        area.write_lease(self.store.as_ref(), run_id)
            .await
            .map_err(|e| self.err(&area.lease_key(run_id), e))?;
        let keeper = LeaseKeeper::start(self.store(), area.clone(), run_id);
        *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(keeper);
        Ok(())
    }

    /// After a failed write by run `run_id`: stops renewing its lease, and deletes the lease
    /// if the run staged nothing (what it staged stays for a resumed run, its lease expiring).
    pub(crate) async fn release(&self, run_id: &str) {
        self.drop_lease();
        // A commit whose outcome is unknown keeps its lease until it expires: if the manifest
        // did land, its files must not look like an ended writer's meanwhile.
        if self.unknown.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(area) = &self.staging else {
            return;
        };
        let lease = area.lease_key(run_id);
        let mut only_lease = true;
        for prefix in area.run_prefixes(run_id) {
            match self.objects_under(&prefix).await {
                Ok(objects) if objects.iter().all(|m| m.location == lease) => {}
                _ => only_lease = false,
            }
        }
        if only_lease && let Err(e) = self.discard_staging(run_id, None).await {
            tracing::warn!("could not remove {}: {}", e.key, e.message);
        }
    }

    /// Ends a write that publishes nothing: its lease and all its staging go, and `own`
    /// (files a killed attempt of the same run moved into the folder, listed by no version).
    /// Failures are warnings: the next command heals what is left.
    pub(crate) async fn abandon(&self, run_id: &str, own: Vec<String>) {
        self.drop_lease();
        if let Err(e) = self.discard_staging(run_id, None).await {
            tracing::warn!("could not remove staging {}: {}", e.key, e.message);
        }
        if let Err(e) = self.delete_all(own).await {
            tracing::warn!("could not remove {}: {}", e.key, e.message);
        }
    }

    /// Stops renewing the lease (it is about to be deleted).
    fn drop_lease(&self) {
        self.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Deletes the given relative paths (missing ones are fine).
    pub(crate) async fn delete_all(&self, paths: Vec<String>) -> Result<(), CommitError> {
        let keys: Vec<ObjectPath> = paths.iter().map(|p| self.key(p)).collect();
        self.delete_keys(keys).await
    }

    async fn delete_keys(&self, keys: Vec<ObjectPath>) -> Result<(), CommitError> {
        let results: Vec<_> = futures::stream::iter(keys)
            .map(|k| async move {
                match self.store.delete(&k).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.err(&k, e)),
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Deletes run `run_id`'s staging folder (with its lease), or one unit's part of it.
    pub(crate) async fn discard_staging(
        &self,
        run_id: &str,
        unit: Option<&str>,
    ) -> Result<(), CommitError> {
        let Some(area) = &self.staging else {
            return Ok(());
        };
        let prefixes = match unit {
            Some(u) => vec![area.key(run_id, u)],
            None => area.run_prefixes(run_id),
        };
        let mut keys: Vec<ObjectPath> = Vec::new();
        for prefix in &prefixes {
            keys.extend(
                self.objects_under(prefix)
                    .await?
                    .into_iter()
                    .map(|m| m.location),
            );
        }
        // The lease goes last: while it is there, the folder is known as a crashed writer's.
        let lease = area.lease_key(run_id);
        keys.retain(|k| *k != lease);
        self.delete_keys(keys).await?;
        // On local disk, moves leave the (now empty) staging folders behind, and a write
        // killed half-way its temporary `<file>#N`, which listings do not show.
        for (i, place) in area.locations().into_iter().enumerate() {
            let Some(dir) = place.local_path() else {
                continue;
            };
            let run_dir = dir.join(run_id);
            match unit {
                Some(u) => {
                    let _ = std::fs::remove_dir_all(run_dir.join(u));
                }
                None => {
                    let _ = std::fs::remove_dir_all(&run_dir);
                    let _ = std::fs::remove_dir(&dir);
                    // `_sluice_staging/` beside the output, when empty (not a configured root).
                    if i == 0
                        && let Some(parent) = dir.parent()
                    {
                        let _ = std::fs::remove_dir(parent);
                    }
                }
            }
        }
        if unit.is_none() {
            self.delete_keys(vec![lease]).await?;
        }
        Ok(())
    }

    /// Refuses, before anything moves, a staged file larger than a move at this location can
    /// copy ([`Location::max_copy_bytes`]: 5 GiB on S3), so such a publish fails whole, never
    /// half-way. The writer lanes refuse such a file as they finish it; this is the guarantee.
    fn refuse_uncopyable(&self, staged: &[StagedFile]) -> Result<(), CommitError> {
        let Some(max) = self.location.max_copy_bytes() else {
            return Ok(());
        };
        match staged.iter().find(|f| f.file.bytes > max) {
            Some(f) => Err(self.failure(
                &self.key(&f.file.path),
                CommitFailure::Io,
                format!(
                    "{}; nothing was published (the previous output is unchanged)",
                    crate::config::too_large_to_copy(f.file.bytes, max)
                ),
            )),
            None => Ok(()),
        }
    }

    /// Publishes staged files (relative to this run's staging folder) as the new version of
    /// the output, following the protocol in this module's documentation.
    pub(crate) async fn publish(
        &self,
        existing: &Existing,
        version: NewVersion<'_>,
    ) -> Result<Manifest, CommitError> {
        let NewVersion {
            run_id,
            mode,
            format,
            partition_by,
            columns,
            files: staged,
            append_id,
            periods,
        } = version;
        let kept = kept_files(existing, mode, partition_by, &staged, periods);
        // A version never lists a path twice: two units writing one name would mean one
        // file's rows lost and another's counted twice. Refused before anything moves.
        let mut paths = BTreeSet::new();
        let twice = kept
            .iter()
            .map(|f| &f.path)
            .chain(staged.iter().map(|f| &f.file.path))
            .find(|p| !paths.insert(p.as_str()));
        if let Some(path) = twice {
            return Err(self.err(
                &self.key(path),
                "two files of the new version have this name; nothing was published (the previous output is unchanged)",
            ));
        }

        self.refuse_uncopyable(&staged)?;

        // Step 2: move staged files to their final keys. A file already moved (a resumed
        // run that was killed during an earlier publish) is found at its final key.
        let moves: Vec<(ObjectPath, ObjectPath)> = staged
            .iter()
            .map(|f| (self.staged_key(run_id, &f.staged), self.key(&f.file.path)))
            .collect();
        let moved: Vec<Result<ObjectPath, CommitError>> = futures::stream::iter(moves)
            .map(|(from, to)| async move {
                match self.store.rename(&from, &to).await {
                    Ok(()) => Ok(to),
                    Err(object_store::Error::NotFound { .. })
                        if self.store.head(&to).await.is_ok() =>
                    {
                        Ok(to)
                    }
                    Err(e) => Err(self.err(&to, e)),
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let staged: Vec<ManifestFile> = staged.into_iter().map(|f| f.file).collect();
        let mut failure = moved.into_iter().find_map(Result::err);
        if failure.is_none() {
            failure = self.sync_local(&staged).await.err();
        }
        if let Some(mut e) = failure {
            self.roll_back(run_id, &staged).await;
            e.message
                .push_str(" (nothing was published: the previous output is unchanged)");
            return Err(e);
        }
        tracing::debug!(output = %self.location, files = staged.len(), "staged files moved");

        // Step 3: the commit point, rebased while other writers commit first.
        let mut base = Versioned {
            manifest: existing.manifest.clone(),
            version: existing.version.clone(),
        };
        let mut base_files = existing.current_files();
        let mut rebases = 0;
        let manifest = loop {
            let mut files = kept_of(
                &base_files,
                mode,
                partition_by,
                &staged_as(&staged),
                periods,
            );
            files.extend(staged.iter().cloned());
            // A file of the schema alone only stands for a version with no other file (a
            // writer committed rows first, this one's rebase finds them).
            if files.iter().any(|f| !f.schema_only) {
                files.retain(|f| !f.schema_only);
            }
            files.sort_by(|a, b| a.path.cmp(&b.path));
            let mut manifest = Manifest::new(run_id, format, partition_by, columns.clone(), files);
            if mode == WriteMode::Append {
                manifest.appended = base
                    .manifest
                    .as_ref()
                    .map(|m| m.appended.clone())
                    .unwrap_or_default();
                manifest.appended.extend(append_id.map(str::to_string));
            }
            if let Some(periods) = periods {
                manifest.periods = Some(periods.merged(base.manifest.as_ref()));
                manifest.version = super::manifest::PERIODS_VERSION;
            }
            match self.commit(run_id, &base.version, &manifest, &staged).await {
                Ok(()) => break manifest,
                Err(Committed::Moved(now)) if rebases < REBASES => {
                    let allowed =
                        same_layout(&now, format, partition_by).and_then(|()| match periods {
                            Some(write) => periods_rebase(
                                existing.manifest.as_ref(),
                                now.manifest.as_ref(),
                                write,
                            ),
                            None => rebase_allowed(
                                existing,
                                &now,
                                mode,
                                partition_by,
                                &staged,
                                append_id,
                            ),
                        });
                    if let Err(reason) = allowed {
                        self.roll_back(run_id, &staged).await;
                        return Err(self.failure(
                            &self.key(MANIFEST),
                            CommitFailure::Conflict,
                            format!(
                                "another writer committed a new version of the output first ({reason}); nothing of this \
                                 write was published, and its files were removed: run it again"
                            ),
                        ));
                    }
                    rebases += 1;
                    tracing::info!(output = %self.location, "another writer committed first: rebasing");
                    base_files = now
                        .manifest
                        .as_ref()
                        .map(|m| m.files.clone())
                        .unwrap_or_default();
                    base = *now;
                }
                Err(Committed::Moved(_)) => {
                    self.roll_back(run_id, &staged).await;
                    return Err(self.failure(
                        &self.key(MANIFEST),
                        CommitFailure::Conflict,
                        format!("other writers committed {REBASES} times while this one tried; nothing was published"),
                    ));
                }
                Err(Committed::Not(e)) => {
                    self.roll_back(run_id, &staged).await;
                    return Err(e);
                }
                Err(Committed::Unknown(e)) => {
                    self.unknown
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(e);
                }
            }
        };

        tracing::info!(
            output = %self.location,
            files = manifest.files.len(),
            rows = manifest.rows,
            rebases,
            "committed"
        );
        // Step 4: clean up. The output is committed; a failure here is healed later.
        let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        let mut replaced: Vec<String> = base_files
            .iter()
            .chain(&staged)
            .map(|f| f.path.clone())
            .filter(|p| !listed.contains(p.as_str()))
            .collect();
        replaced.extend(existing.own_unlisted(run_id, &manifest));
        self.clean_up(replaced, run_id).await;
        Ok(manifest)
    }

    /// Writes `manifest` over the version `base` (the commit point), and says how it went.
    /// `mine`: the files this write moved (their names are this writer's alone).
    async fn commit(
        &self,
        run_id: &str,
        base: &Version,
        manifest: &Manifest,
        mine: &[ManifestFile],
    ) -> Result<(), Committed> {
        let key = self.key(MANIFEST);
        let body =
            serde_json::to_vec_pretty(manifest).map_err(|e| Committed::Not(self.err(&key, e)))?;
        // The lease must hold until the commit is done, or a healer could take this writer
        // for dead and delete the files the manifest is about to list.
        if let Some(area) = &self.staging {
            let lapsed = self
                .lease
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(LeaseKeeper::lapsed);
            match area.read_lease(self.store.as_ref(), run_id).await {
                Ok(Some(lease)) if lease.holds_for(COMMIT_MARGIN) && !lapsed => {}
                _ => {
                    area.write_lease(self.store.as_ref(), run_id)
                        .await
                        .map_err(|e| Committed::Not(self.err(&area.lease_key(run_id), e)))?;
                }
            }
        }
        // Every file this writer moved must still be there: a healer that took it for dead
        // (a lapsed lease, a run resumed under its old id), or a version of its own that
        // landed unseen and was then replaced, removes them; a manifest must never list a
        // missing file.
        if !self.all_present(mine).await {
            return Err(Committed::Not(self.failure(
                &key,
                CommitFailure::Conflict,
                "files this write moved into the output are gone (removed as a dead writer's, or \
                 a version of its own was committed unseen and then replaced by another writer's): \
                 it was not committed (again); run it again"
                    .into(),
            )));
        }
        let local = self.location.local_path();
        let tmp = format!(".{MANIFEST}.{run_id}.tmp");
        let outcome = swap::swap(
            self.store.as_ref(),
            &key,
            local.as_deref(),
            base,
            body,
            &tmp,
        )
        .await;
        let definite = match outcome {
            Ok(()) => return Ok(()),
            Err(SwapError::Unsupported(why)) => {
                return Err(Committed::Not(self.failure(
                    &key,
                    CommitFailure::Unsupported,
                    why,
                )));
            }
            Err(SwapError::Moved) => None,
            Err(SwapError::Failed(e)) => Some(e),
        };
        // Whether it landed after all (a PUT the store took but answered with an error, then
        // retried and refused as stale; a timeout after the store took it): the manifest read
        // back says, by listing a file only this writer moved (another writer may already
        // have committed on top of it).
        match self.read_versioned().await {
            Ok(now) if lists_any(now.manifest.as_ref(), mine, manifest) => Ok(()),
            Ok(now) => match definite {
                None => Err(Committed::Moved(Box::new(now))),
                // On local disk, what is read back is the whole truth.
                Some(e) if local.is_some() => Err(Committed::Not(self.err(&key, e))),
                Some(e) => Err(Committed::Unknown(self.failure(
                    &key,
                    CommitFailure::Unknown,
                    format!(
                        "{e}; the store did not say whether the new manifest was written, so nothing was deleted \
                         (the next run finds out and heals the output)"
                    ),
                ))),
            },
            Err(read) => Err(Committed::Unknown(self.failure(
                &key,
                CommitFailure::Unknown,
                format!(
                    "{}; and reading it back failed too ({}), so whether it was written is not known: nothing \
                     was deleted (the next run finds out and heals the output)",
                    definite.unwrap_or_else(|| "another writer may have committed".into()),
                    read.message
                ),
            ))),
        }
    }

    /// Whether every file is at its key.
    async fn all_present(&self, files: &[ManifestFile]) -> bool {
        let heads = futures::stream::iter(files)
            .map(|f| async move { self.store.head(&self.key(&f.path)).await.is_ok() })
            .buffer_unordered(16)
            .collect::<Vec<bool>>()
            .await;
        heads.into_iter().all(|ok| ok)
    }

    /// On local disk, flushes the moved files and their folders to disk before the manifest
    /// lists them.
    async fn sync_local(&self, files: &[ManifestFile]) -> Result<(), CommitError> {
        let Some(root) = self.location.local_path() else {
            return Ok(());
        };
        // The file paths as object_store's local store makes them from keys.
        let paths: Vec<std::path::PathBuf> = files
            .iter()
            .filter_map(|f| {
                let key = self.key(&f.path);
                let mut url = url::Url::parse("file:///").ok()?;
                url.path_segments_mut()
                    .ok()?
                    .pop_if_empty()
                    .extend(key.parts().map(|p| p.as_ref().to_string()));
                url.to_file_path().ok()
            })
            .collect();
        let dir = root.clone();
        tokio::task::spawn_blocking(move || swap::sync_files(&dir, &paths))
            .await
            .map_err(|e| self.err(&self.key(""), e))?
            .map_err(|e| {
                self.err(
                    &self.key(""),
                    format!("cannot flush the new files to disk: {e}"),
                )
            })
    }

    /// Removes what this run moved and staged: it published nothing. (A file the manifest
    /// lists is never deleted, whatever this writer believes.)
    async fn roll_back(&self, run_id: &str, moved: &[ManifestFile]) {
        let listed: BTreeSet<String> = match self.read_manifest().await {
            Ok(m) => m
                .map(|m| m.files.into_iter().map(|f| f.path).collect())
                .unwrap_or_default(),
            Err(e) => {
                tracing::warn!(
                    "cannot read {} to roll back: {}; leaving the moved files",
                    e.key,
                    e.message
                );
                self.drop_lease();
                return;
            }
        };
        let done: Vec<String> = moved
            .iter()
            .map(|f| f.path.clone())
            .filter(|p| !listed.contains(p))
            .collect();
        if let Err(e) = self.delete_all(done).await {
            tracing::warn!(
                "could not remove a file of the failed publish: {} ({})",
                e.key,
                e.message
            );
        }
        self.drop_lease();
        if let Err(e) = self.discard_staging(run_id, None).await {
            tracing::warn!("could not remove staging {}: {}", e.key, e.message);
        }
    }

    /// Step 4 of the protocol, after a commit: deletes the `replaced` files (relative paths
    /// the replaced version listed and the new one does not), writes `_SUCCESS`, removes the
    /// run's staging and lease. Failures are warnings: the output is committed, and the next
    /// command heals them.
    pub(crate) async fn clean_up(&self, replaced: Vec<String>, run_id: &str) {
        // The lease goes first: once committed, this writer's files are the output's, and a
        // lease left by a crash here would make them look like a crashed publish's.
        self.drop_lease();
        if let Err(e) = self.discard_staging(run_id, None).await {
            tracing::warn!(
                "output committed, but staging could not be removed: {} ({})",
                e.key,
                e.message
            );
        }
        if let Err(e) = self.delete_all(replaced).await {
            tracing::warn!(
                "output committed, but an old file could not be deleted: {} ({})",
                e.key,
                e.message
            );
        }
        let marker = format!("{run_id}\n");
        if let Err(e) = self
            .store
            .put(&self.key(SUCCESS), PutPayload::from(marker.into_bytes()))
            .await
        {
            tracing::warn!("output committed, but {SUCCESS} could not be written: {e}");
        }
    }

    /// Whether every staged file is still there: in the run's staging, or at its final key
    /// (moved by an interrupted publish).
    pub(crate) async fn files_present(&self, run_id: &str, files: &[StagedFile]) -> bool {
        for f in files {
            if self
                .store
                .head(&self.staged_key(run_id, &f.staged))
                .await
                .is_err()
                && self.store.head(&self.key(&f.file.path)).await.is_err()
            {
                return false;
            }
        }
        true
    }
}

/// Whether `now` (the manifest there now) holds this writer's commit: it lists a file of
/// `mine`, or (a write of no rows: no files, or a file of the schema alone, which a rebase
/// may have dropped) it is `ours`.
fn lists_any(now: Option<&Manifest>, mine: &[ManifestFile], ours: &Manifest) -> bool {
    let Some(now) = now else {
        return false;
    };
    let mine: BTreeSet<&str> = mine
        .iter()
        .filter(|f| !f.schema_only)
        .map(|f| f.path.as_str())
        .collect();
    if mine.is_empty() {
        return now == ours;
    }
    now.files.iter().any(|f| mine.contains(f.path.as_str()))
}

/// How a commit attempt went, when it did not succeed.
enum Committed {
    /// Another writer committed first: the version there now.
    Moved(Box<Versioned>),
    /// It failed and was not written.
    Not(CommitError),
    /// It failed, and may have been written.
    Unknown(CommitError),
}

/// The moved files as staged files, for [`kept_of`] (which only looks at their partitions).
fn staged_as(files: &[ManifestFile]) -> Vec<StagedFile> {
    files
        .iter()
        .map(|f| StagedFile {
            staged: String::new(),
            file: f.clone(),
        })
        .collect()
}

/// Whether a write prepared over `existing` may commit over `now`, the version another writer
/// committed meanwhile: an append may (unless the same append is there already); an overwrite
/// of partitions may if nobody else rewrote those partitions; a whole overwrite may not (it
/// would silently undo the other write).
fn rebase_allowed(
    existing: &Existing,
    now: &Versioned,
    mode: WriteMode,
    partition_by: &[String],
    staged: &[ManifestFile],
    append_id: Option<&str>,
) -> Result<(), String> {
    match mode {
        WriteMode::Append => match (append_id, &now.manifest) {
            (Some(id), Some(m)) if m.appended.iter().any(|a| a == id) => {
                Err("it already holds this same append".into())
            }
            _ => Ok(()),
        },
        WriteMode::OverwritePartitions if !partition_by.is_empty() => {
            // A file of the schema alone rewrites no partition (it stands for no rows), and
            // its dropping by another writer's version is no rewrite of one either.
            let mine: BTreeSet<String> = staged
                .iter()
                .filter(|f| !f.schema_only)
                .map(|f| partition_key(f.partition()))
                .collect();
            let by_partition = |files: &[ManifestFile]| {
                let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for f in files.iter().filter(|f| !f.schema_only) {
                    let key = partition_key(f.partition());
                    if mine.contains(&key) {
                        map.entry(key).or_default().push(f.path.clone());
                    }
                }
                map
            };
            let before = by_partition(&existing.current_files());
            let after = by_partition(
                &now.manifest
                    .as_ref()
                    .map(|m| m.files.clone())
                    .unwrap_or_default(),
            );
            match mine.iter().find(|p| before.get(*p) != after.get(*p)) {
                Some(p) => Err(format!(
                    "it rewrote partition {p}, which this write rewrites too"
                )),
                None => Ok(()),
            }
        }
        _ => Err(format!("this write is mode = \"{}\"", mode_name(mode))),
    }
}

/// Whether the version another writer committed meanwhile still has this write's format and
/// partition columns: no write rebases over another layout.
fn same_layout(now: &Versioned, format: &str, partition_by: &[String]) -> Result<(), String> {
    match &now.manifest {
        Some(m) if m.format != format || m.partition_by != partition_by => Err(format!(
            "it is now {} partitioned by [{}]",
            m.format,
            m.partition_by.join(", ")
        )),
        _ => Ok(()),
    }
}

/// Whether an incremental write prepared over `before` may commit over `now`: only if the
/// other writer left every period this write recomputes as it was (same entry, same files),
/// and kept the grid. A full refresh never rebases.
fn periods_rebase(
    before: Option<&Manifest>,
    now: Option<&Manifest>,
    write: &PeriodWrite,
) -> Result<(), String> {
    if write.full {
        return Err("this write recomputes every period".into());
    }
    let Some(after) = now.and_then(|m| m.periods.as_ref()) else {
        return Err("it no longer records the periods of an incremental model".into());
    };
    if after.grid != write.grid {
        return Err(format!("its periods are now by {}", after.grid));
    }
    let of = |m: Option<&Manifest>, period: &str| -> (Option<PeriodEntry>, Vec<String>) {
        let entry = m
            .and_then(|m| m.periods.as_ref())
            .and_then(|p| p.entries.get(period))
            .cloned();
        let files = m
            .map(|m| {
                m.files
                    .iter()
                    .filter(|f| f.period.as_deref() == Some(period))
                    .map(|f| f.path.clone())
                    .collect()
            })
            .unwrap_or_default();
        (entry, files)
    };
    match write.entries.keys().find(|p| of(before, p) != of(now, p)) {
        Some(p) => Err(format!(
            "it recomputed period {p}, which this write recomputes too"
        )),
        None => Ok(()),
    }
}

fn mode_name(mode: WriteMode) -> &'static str {
    match mode {
        WriteMode::Overwrite => "overwrite",
        WriteMode::Append => "append",
        WriteMode::OverwritePartitions => "overwrite_partitions",
        WriteMode::ErrorIfExists => "error_if_exists",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> ManifestFile {
        ManifestFile {
            path: path.into(),
            rows: 1,
            bytes: 1,
            period: None,
            merged: Vec::new(),
            schema_only: false,
        }
    }

    #[test]
    fn a_partition_spelled_by_an_older_build_is_the_same_partition() {
        let current = [
            file("p=a=b/part-old.parquet"),
            file("p=M%C3%BCnchen/part-old.parquet"),
            file("p=x/part-old.parquet"),
        ];
        let staged = staged_as(&[
            file("p=a%3Db/part-new.parquet"),
            file("p=München/part-new.parquet"),
        ]);
        let kept = kept_of(
            &current,
            WriteMode::OverwritePartitions,
            &["p".to_string()],
            &staged,
            None,
        );
        assert_eq!(kept, vec![file("p=x/part-old.parquet")]);
    }

    /// The file of the schema alone that a version of no rows lists is kept by no write:
    /// appended to, its partition overwritten or not, its periods kept or not.
    #[test]
    fn a_file_of_the_schema_alone_is_never_kept() {
        let schema = ManifestFile {
            rows: 0,
            schema_only: true,
            ..file("p=__HIVE_DEFAULT_PARTITION__/part-00000-old.parquet")
        };
        let parts = ["p".to_string()];
        let staged = staged_as(&[file("p=x/part-new.parquet")]);
        for mode in [
            WriteMode::Append,
            WriteMode::OverwritePartitions,
            WriteMode::Overwrite,
        ] {
            for staged in [&staged[..], &[]] {
                let current = [schema.clone(), file("p=y/part-old.parquet")];
                let kept = kept_of(&current, mode, &parts, staged, None);
                let want = match mode {
                    WriteMode::Overwrite => vec![],
                    _ => vec![file("p=y/part-old.parquet")],
                };
                assert_eq!(kept, want, "{mode:?}");
            }
        }
        let current = [of_period(&schema.path, "2024-01-01")];
        let current = [ManifestFile {
            schema_only: true,
            ..current[0].clone()
        }];
        let kept = kept_of(
            &current,
            WriteMode::Overwrite,
            &parts,
            &[],
            Some(&write(&["2024-01-02"], false)),
        );
        assert_eq!(kept, vec![]);
    }

    fn of_period(path: &str, period: &str) -> ManifestFile {
        ManifestFile {
            period: Some(period.into()),
            merged: Vec::new(),
            schema_only: false,
            ..file(path)
        }
    }

    fn entry(run: &str, rows: u64) -> PeriodEntry {
        PeriodEntry {
            run_id: run.into(),
            dims: String::new(),
            inputs: vec![super::super::manifest::AppliedFile {
                source: "events".into(),
                path: "data/e.csv".into(),
                size: 10,
                modified: "2024-01-01T00:00:00Z".into(),
                etag: None,
                rows,
            }],
        }
    }

    fn write(periods: &[&str], full: bool) -> PeriodWrite {
        PeriodWrite {
            grid: "day".into(),
            start: "2024-01-01".into(),
            full,
            entries: periods
                .iter()
                .map(|p| (p.to_string(), entry("new", 1)))
                .collect(),
        }
    }

    fn version(files: Vec<ManifestFile>, periods: &[(&str, PeriodEntry)]) -> Manifest {
        let mut m = Manifest::new("old", "parquet", &["region".into()], Vec::new(), files);
        m.periods = Some(Periods {
            grid: "day".into(),
            start: "2024-01-01".into(),
            entries: periods
                .iter()
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect(),
        });
        m
    }

    /// A period's files are replaced whatever partition folders they are in; a recomputed
    /// period with no staged file (its rows all gone) loses its files; a full refresh keeps
    /// nothing; the other periods' files are kept.
    #[test]
    fn an_incremental_write_replaces_exactly_its_periods() {
        let current = [
            of_period("region=eu/part-a.parquet", "2024-01-01"),
            of_period("region=us/part-a.parquet", "2024-01-01"),
            of_period("region=eu/part-b.parquet", "2024-01-02"),
            of_period("region=eu/part-c.parquet", "2024-01-03"),
        ];
        let staged = staged_as(&[of_period("region=eu/part-new.parquet", "2024-01-02")]);
        let partitions = ["region".to_string()];
        let kept = |w: &PeriodWrite| {
            kept_of(
                &current,
                WriteMode::Overwrite,
                &partitions,
                &staged,
                Some(w),
            )
            .into_iter()
            .map(|f| f.path)
            .collect::<Vec<_>>()
        };
        assert_eq!(
            kept(&write(&["2024-01-02", "2024-01-03"], false)),
            vec!["region=eu/part-a.parquet", "region=us/part-a.parquet"]
        );
        assert_eq!(
            kept(&write(&["2024-01-01"], false)),
            vec!["region=eu/part-b.parquet", "region=eu/part-c.parquet"]
        );
        assert!(kept(&write(&["2024-01-02"], true)).is_empty());

        // The entries merge: this write's win, the others are carried.
        let base = version(
            current.to_vec(),
            &[
                ("2024-01-01", entry("old", 5)),
                ("2024-01-02", entry("old", 6)),
            ],
        );
        let merged = write(&["2024-01-02"], false).merged(Some(&base));
        assert_eq!(merged.entries["2024-01-01"], entry("old", 5));
        assert_eq!(merged.entries["2024-01-02"], entry("new", 1));
        let full = write(&["2024-01-02"], true).merged(Some(&base));
        assert_eq!(full.entries.keys().collect::<Vec<_>>(), vec!["2024-01-02"]);
    }

    /// Another writer that committed first: an incremental write rebases over it only if it
    /// left the periods this write recomputes as they were.
    #[test]
    fn an_incremental_write_rebases_only_over_other_periods() {
        let before = version(
            vec![
                of_period("part-a.parquet", "2024-01-01"),
                of_period("part-b.parquet", "2024-01-02"),
            ],
            &[
                ("2024-01-01", entry("old", 5)),
                ("2024-01-02", entry("old", 6)),
            ],
        );
        // The other writer recomputed 2024-01-01.
        let other = version(
            vec![
                of_period("part-a2.parquet", "2024-01-01"),
                of_period("part-b.parquet", "2024-01-02"),
            ],
            &[
                ("2024-01-01", entry("other", 7)),
                ("2024-01-02", entry("old", 6)),
            ],
        );
        assert!(
            periods_rebase(Some(&before), Some(&other), &write(&["2024-01-02"], false)).is_ok()
        );
        let clash = periods_rebase(Some(&before), Some(&other), &write(&["2024-01-01"], false));
        assert!(clash.unwrap_err().contains("2024-01-01"));
        assert!(
            periods_rebase(Some(&before), Some(&other), &write(&["2024-01-02"], true)).is_err()
        );
        // A plain overwrite by another program dropped the periods: no rebase.
        let mut plain = other.clone();
        plain.periods = None;
        assert!(
            periods_rebase(Some(&before), Some(&plain), &write(&["2024-01-02"], false)).is_err()
        );
    }
}
