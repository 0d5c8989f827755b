//! The commit protocol: how staged files become a model's published output atomically.
//!
//! An output folder holds data files (`key=value/part-NNNNN-<run>.ext`), a `_MANIFEST` listing
//! the files of the current version with their row counts, and a `_SUCCESS` marker. A write:
//!
//! 1. **stages** every new file under `_staging/<run>/` (readers never look there: DataFusion
//!    skips nested non-partition folders, Spark and Hive skip `_` folders);
//! 2. **moves** each staged file to its final key. Names carry the run id, so a move never
//!    replaces a file the current manifest lists: readers of the old version are unaffected;
//! 3. **commits** by writing `_MANIFEST` in one PUT. A PUT of one object is atomic on every
//!    object store (and a rename on local disk), so the manifest names either the old complete
//!    file set or the new one, never a mix. This is the commit point, and it needs no rename;
//! 4. **cleans up**: deletes every data file the new manifest does not list (replaced files,
//!    orphans of an earlier crashed publish), writes `_SUCCESS`, and removes the staging folder.
//!
//! A failure before step 3 deletes what this run staged or moved and leaves the old manifest
//! and files exactly as they were. A crash before step 3 leaves only unlisted files, which the
//! next write to the same output deletes; a crash after step 3 leaves a committed output whose
//! leftovers the next write deletes too.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

use super::is_data_file;
use super::is_sluice_file;
use super::manifest::{MANIFEST, Manifest, ManifestColumn, ManifestFile, STAGING, SUCCESS};
use crate::config::WriteMode;
use crate::store::Location;

/// A file staged by one unit: where it is in the run's staging folder, and what it becomes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StagedFile {
    /// Path relative to the run's staging folder (`<unit>/<partition>/<name>`).
    pub staged: String,
    /// The file as the manifest will list it (path relative to the output folder).
    pub file: ManifestFile,
}

/// A failed step of the protocol, with the object key it concerned.
#[derive(Debug)]
pub struct CommitError {
    /// The object key (as a user would recognise it).
    pub key: String,
    /// What failed.
    pub message: String,
}

/// An output folder and the store that holds it.
pub(crate) struct Output {
    store: Arc<dyn ObjectStore>,
    location: Location,
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
}

/// The files of the current version that the next one keeps beside the staged files: all of
/// them in append mode, those of partitions the staged files do not rewrite in
/// overwrite_partitions mode, none otherwise.
pub(crate) fn kept_files(
    existing: &Existing,
    mode: WriteMode,
    partition_by: &[String],
    staged: &[StagedFile],
) -> Vec<ManifestFile> {
    let new_partitions: BTreeSet<&str> = staged.iter().map(|f| f.file.partition()).collect();
    match mode {
        WriteMode::Overwrite | WriteMode::ErrorIfExists => Vec::new(),
        // Without partitions, the whole output is the one partition.
        WriteMode::OverwritePartitions if partition_by.is_empty() => Vec::new(),
        WriteMode::Append => existing.current_files(),
        WriteMode::OverwritePartitions => existing
            .current_files()
            .into_iter()
            .filter(|f| !new_partitions.contains(f.partition()))
            .collect(),
    }
}

/// What the folder held before this write.
#[derive(Debug, Default)]
pub(crate) struct Existing {
    /// The current manifest, if there is one.
    pub manifest: Option<Manifest>,
    /// Every data file found by listing (relative paths), listed or not.
    pub data_files: Vec<(String, u64)>,
}

impl Existing {
    /// The files of the current version: the manifest's, or (for a folder sluice did not
    /// write) every data file found, except files named like sluice's own: with no manifest,
    /// those are leftovers of a first publish that crashed before its commit.
    pub(crate) fn current_files(&self) -> Vec<ManifestFile> {
        match &self.manifest {
            Some(m) => m.files.clone(),
            None => self
                .data_files
                .iter()
                .filter(|(path, _)| !is_sluice_file(path))
                .map(|(path, bytes)| ManifestFile {
                    path: path.clone(),
                    rows: 0,
                    bytes: *bytes,
                })
                .collect(),
        }
    }
}

impl Output {
    /// The output folder at `location` (a folder) in `store`.
    pub(crate) fn new(store: Arc<dyn ObjectStore>, location: Location) -> Output {
        Output {
            store,
            location: location.as_folder(),
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

    /// The object key of a path relative to the output folder.
    pub(crate) fn key(&self, relative: &str) -> ObjectPath {
        self.location.child(relative)
    }

    /// The staging folder (relative) of a run.
    pub(crate) fn staging_dir(run_id: &str) -> String {
        format!("{STAGING}/{run_id}")
    }

    fn err(&self, key: &ObjectPath, e: impl std::fmt::Display) -> CommitError {
        CommitError {
            key: self.location.display_key(key),
            message: e.to_string(),
        }
    }

    /// Reads the manifest, if any.
    pub(crate) async fn read_manifest(&self) -> Result<Option<Manifest>, CommitError> {
        let key = self.key(MANIFEST);
        match self.store.get(&key).await {
            Ok(r) => {
                let bytes = r.bytes().await.map_err(|e| self.err(&key, e))?;
                let m: Manifest = serde_json::from_slice(&bytes)
                    .map_err(|e| self.err(&key, format!("not a sluice manifest: {e}")))?;
                Ok(Some(m))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(&key, e)),
        }
    }

    /// The objects under `prefix`.
    async fn objects_under(&self, prefix: &ObjectPath) -> Result<Vec<ObjectMeta>, CommitError> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(|e| self.err(prefix, e))
    }

    /// Lists everything under the folder as (relative path, size).
    async fn list(&self) -> Result<Vec<(String, u64)>, CommitError> {
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

    /// Reads the folder's state, and deletes staging leftovers of other runs (crashed runs:
    /// runs of one pipeline never overlap).
    pub(crate) async fn inspect(&self, run_id: &str) -> Result<Existing, CommitError> {
        let manifest = self.read_manifest().await?;
        let mine = format!("{}/", Output::staging_dir(run_id));
        let mut data_files = Vec::new();
        let mut stale = Vec::new();
        for (path, size) in self.list().await? {
            if path.starts_with(&format!("{STAGING}/")) {
                if !path.starts_with(&mine) {
                    stale.push(path);
                }
            } else if is_data_file(&path) {
                data_files.push((path, size));
            }
        }
        self.delete_all(stale).await?;
        // On local disk, a write killed half-way leaves the store's temporary `<file>#N`,
        // which listings do not show: other runs' staging folders go whole.
        if let Some(root) = self.location.local_path()
            && let Ok(entries) = std::fs::read_dir(root.join(STAGING))
        {
            for entry in entries.flatten() {
                if entry.file_name().to_str() != Some(run_id) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        Ok(Existing {
            manifest,
            data_files,
        })
    }

    /// Deletes the given relative paths (missing ones are fine).
    pub(crate) async fn delete_all(&self, paths: Vec<String>) -> Result<(), CommitError> {
        let keys: Vec<ObjectPath> = paths.iter().map(|p| self.key(p)).collect();
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

    /// Deletes this run's staging folder, or one unit's part of it.
    pub(crate) async fn discard_staging(
        &self,
        run_id: &str,
        unit: Option<&str>,
    ) -> Result<(), CommitError> {
        let dir = match unit {
            Some(u) => format!("{}/{u}", Output::staging_dir(run_id)),
            None => Output::staging_dir(run_id),
        };
        let metas = self.objects_under(&self.key(&dir)).await?;
        let results: Vec<_> = futures::stream::iter(metas)
            .map(|m| async move {
                match self.store.delete(&m.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.err(&m.location, e)),
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        // On local disk, moves leave the (now empty) staging folders behind; object stores
        // have no folders.
        if let Some(root) = self.location.local_path() {
            let _ = std::fs::remove_dir_all(root.join(&dir));
            if unit.is_none() {
                let _ = std::fs::remove_dir(root.join(STAGING));
            }
        }
        results.into_iter().collect()
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
        } = version;
        let kept = kept_files(existing, mode, partition_by, &staged);
        // A version never lists a path twice: two units writing one name would mean one
        // file's rows lost and another's counted twice. Refused before anything moves.
        let mut paths = BTreeSet::new();
        let twice = kept
            .iter()
            .map(|f| &f.path)
            .chain(staged.iter().map(|f| &f.file.path))
            .find(|p| !paths.insert(p.as_str()));
        if let Some(path) = twice {
            return Err(CommitError {
                key: self.location.display_key(&self.key(path)),
                message: "two files of the new version have this name; nothing was published"
                    .into(),
            });
        }

        // Step 2: move staged files to their final keys. A file already moved (a resumed
        // run that was killed during an earlier publish) is found at its final key.
        let staging = Output::staging_dir(run_id);
        let moves: Vec<(ObjectPath, ObjectPath)> = staged
            .iter()
            .map(|f| {
                (
                    self.key(&format!("{staging}/{}", f.staged)),
                    self.key(&f.file.path),
                )
            })
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
        if let Some(first_err) = moved.iter().find_map(|r| r.as_ref().err()) {
            let first_err = CommitError {
                key: first_err.key.clone(),
                message: first_err.message.clone(),
            };
            // Roll back: nothing of this run may stay visible beside the old version.
            let done: Vec<String> = staged.iter().map(|f| f.path.clone()).collect();
            let _ = self.delete_all(done).await;
            let _ = self.discard_staging(run_id, None).await;
            return Err(first_err);
        }

        tracing::debug!(output = %self.location, files = moved.len(), "staged files moved");
        // Step 3: the commit point.
        let mut files = kept;
        files.extend(staged);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut manifest = Manifest::new(run_id, format, partition_by, columns, files);
        if mode == WriteMode::Append {
            manifest.appended = existing
                .manifest
                .as_ref()
                .map(|m| m.appended.clone())
                .unwrap_or_default();
            manifest.appended.extend(append_id.map(str::to_string));
        }
        let body =
            serde_json::to_vec_pretty(&manifest).map_err(|e| self.err(&self.key(MANIFEST), e))?;
        let key = self.key(MANIFEST);
        if let Err(e) = self.store.put(&key, PutPayload::from(body)).await {
            // The PUT may have landed even though the client saw an error (a timeout after
            // the server stored it): only roll back if the manifest is not ours.
            let landed = matches!(self.read_manifest().await, Ok(Some(m)) if m.run_id == run_id);
            if !landed {
                let err = self.err(&key, e);
                let old = existing.current_files();
                let done: Vec<String> = manifest
                    .files
                    .iter()
                    .filter(|f| !old.contains(f))
                    .map(|f| f.path.clone())
                    .collect();
                let _ = self.delete_all(done).await;
                let _ = self.discard_staging(run_id, None).await;
                return Err(err);
            }
        }

        tracing::info!(
            output = %self.location,
            files = manifest.files.len(),
            rows = manifest.rows,
            "committed"
        );
        // Step 4: clean up. The output is committed; a failure here is healed by the next write.
        self.clean_up(existing, &manifest, run_id).await;
        Ok(manifest)
    }
}

impl Output {
    /// Step 4 of the protocol, after a commit: deletes the data files `manifest` does not list,
    /// writes `_SUCCESS`, removes the run's staging. Failures are warnings: the output is
    /// committed, and the next write heals them.
    pub(crate) async fn clean_up(&self, existing: &Existing, manifest: &Manifest, run_id: &str) {
        let listed: BTreeSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        let garbage: Vec<String> = existing
            .data_files
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| !listed.contains(p.as_str()))
            .collect();
        if let Err(e) = self.delete_all(garbage).await {
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
        if let Err(e) = self.discard_staging(run_id, None).await {
            tracing::warn!(
                "output committed, but staging could not be removed: {} ({})",
                e.key,
                e.message
            );
        }
    }

    /// Whether every staged file is still there: in the run's staging, or at its final key
    /// (moved by an interrupted publish).
    pub(crate) async fn files_present(&self, run_id: &str, files: &[StagedFile]) -> bool {
        let staging = Output::staging_dir(run_id);
        for f in files {
            let staged = self.key(&format!("{staging}/{}", f.staged));
            if self.store.head(&staged).await.is_err()
                && self.store.head(&self.key(&f.file.path)).await.is_err()
            {
                return false;
            }
        }
        true
    }
}
