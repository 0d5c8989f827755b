//! Healing an output: finding what crashed writers left behind, and deleting it — only files
//! sluice wrote, only once their writer has ended (see [`super::staging`] for how a writer's
//! lease tells).
//!
//! Any command that opens a pipeline heals its outputs first, and every write heals its output
//! before it stages anything, so a crash's leftovers are visible to folder-listing readers until
//! the next command at most (and, for a writer whose process died without a trace of its end,
//! until its lease expires).

use std::collections::{BTreeMap, BTreeSet};

use super::commit::{CommitError, Output};
use super::manifest::{MANIFEST, STAGING};
use super::staging::LEASE;
use super::swap::Versioned;
use super::{is_data_file, run_of_file};

/// Writers of an output known to have ended, whatever their leases say: the other runs of the
/// pipeline whose run lock this process holds, or whose lock is free.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ended {
    /// The runs.
    pub runs: BTreeSet<String>,
    /// When they were known to have ended: a run that writes its lease after that is alive
    /// again (a resumed run keeps its id), whatever `runs` says.
    pub as_of: Option<chrono::DateTime<chrono::Utc>>,
    /// One of them that the next run may resume: its moved files go, its staging (the units
    /// it committed) stays.
    pub resumable: Option<String>,
}

/// What a writer's lease says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    /// Its lease is live: it may be publishing.
    Live,
    /// Its lease expired, or it is known to have ended with its lease still there: it crashed.
    Crashed,
    /// It has no lease: its publish ended (committed, or rolled back).
    Ended,
}

/// An output folder as healing left it.
#[derive(Debug)]
pub(crate) struct Survey {
    /// The manifest and its version.
    pub versioned: Versioned,
    /// Folders inside it that are outputs of their own (they hold a `_MANIFEST`), relative,
    /// with a trailing `/`: nothing in them is this output's.
    pub nested: Vec<String>,
    /// The data files in the folder (relative path, size), leftovers deleted.
    pub data_files: Vec<(String, u64)>,
    /// Without a manifest: files sluice published (their writer ended) — the manifest was lost.
    pub lost: Vec<String>,
    /// Files of writers publishing now (not in `data_files`).
    pub in_flight: Vec<String>,
    /// Files deleted.
    pub deleted: usize,
}

impl Output {
    /// Heals the output (see the module documentation): deletes the data files and staging of
    /// writers that crashed, and the data files a committed version replaced. `me` is the
    /// writing run, whose own files are never leftovers.
    pub(crate) async fn heal(
        &self,
        me: Option<&str>,
        ended: &Ended,
    ) -> Result<Survey, CommitError> {
        // A writer that commits while the folder is surveyed changes what its files are
        // (listed, where they looked like leftovers or a lost manifest's): survey again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.survey(me, ended, attempts >= 8).await? {
                Some(survey) => return Ok(survey),
                None => {
                    tracing::debug!(output = %self.location(), "a writer committed during the survey: again")
                }
            }
        }
    }

    /// One survey and its deletions; `None` if the manifest changed meanwhile (unless
    /// `last`: then what was found stands, and nothing is deleted but staging).
    async fn survey(
        &self,
        me: Option<&str>,
        ended: &Ended,
        last: bool,
    ) -> Result<Option<Survey>, CommitError> {
        let versioned = self.read_versioned().await?;
        // Only files where an output puts its files are its own: in `col=value` partition
        // folders (its own partitioning, or one it had before: an overwrite may change it), and
        // not in a folder that is an output of its own (a `_MANIFEST` of its own).
        let fits = in_partition_folders;
        let objects = self.list().await?;
        let nested: Vec<String> = objects
            .iter()
            .filter_map(|(p, _)| p.strip_suffix(&format!("/{MANIFEST}")))
            .map(|dir| format!("{dir}/"))
            .collect();
        let listed: BTreeSet<&str> = versioned
            .manifest
            .iter()
            .flat_map(|m| m.files.iter().map(|f| f.path.as_str()))
            .collect();
        let mut states: BTreeMap<String, WriterState> = BTreeMap::new();
        let mut data_files = Vec::new();
        let mut garbage = Vec::new();
        let mut lost = Vec::new();
        let mut in_flight = Vec::new();
        let mut legacy_staging = false;
        for (path, size) in objects {
            if path.starts_with(&format!("{STAGING}/")) {
                legacy_staging = true;
                continue;
            }
            if !is_data_file(&path) || nested.iter().any(|n| path.starts_with(n.as_str())) {
                continue;
            }
            let writer = run_of_file(&path)
                .filter(|run| Some(*run) != me)
                .filter(|_| fits(&path));
            match writer {
                Some(run) if !listed.contains(path.as_str()) => {
                    let state = match states.get(run) {
                        Some(s) => *s,
                        None => {
                            let s = self.writer_state(run, ended).await?;
                            states.insert(run.to_string(), s);
                            s
                        }
                    };
                    match (state, &versioned.manifest) {
                        (WriterState::Live, _) => in_flight.push(path),
                        (WriterState::Crashed, _) | (WriterState::Ended, Some(_)) => {
                            garbage.push(path)
                        }
                        (WriterState::Ended, None) => {
                            lost.push(path.clone());
                            data_files.push((path, size));
                        }
                    }
                }
                _ => data_files.push((path, size)),
            }
        }
        // A writer that committed since the manifest was read may list some of them now.
        if !garbage.is_empty() || !lost.is_empty() {
            let now = self.read_versioned().await?;
            if now.version != versioned.version {
                if !last {
                    return Ok(None);
                }
                garbage.clear();
            }
        }
        let deleted = garbage.len();
        if deleted > 0 {
            tracing::info!(output = %self.location(), files = deleted, "deleting leftovers of crashed or replaced writes");
        }
        self.delete_all(garbage).await?;
        self.heal_staging(me, ended, &mut states).await?;
        // On local disk, a commit killed between writing its temporary manifest and renaming
        // it over `_MANIFEST` leaves the temporary file.
        if let Some(root) = self.location().local_path() {
            match super::swap::remove_killed_swaps(&root) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(output = %self.location(), files = n, "deleted the temporary manifests of killed commits")
                }
                Err(e) => {
                    tracing::warn!(output = %self.location(), "cannot delete the temporary manifests of killed commits: {e}")
                }
            }
        }
        let legacy_local = self
            .location()
            .local_path()
            .is_some_and(|root| root.join(STAGING).exists());
        if legacy_staging || legacy_local {
            self.remove_legacy_staging(me).await?;
        }
        Ok(Some(Survey {
            versioned,
            nested,
            data_files,
            lost,
            in_flight,
            deleted,
        }))
    }

    async fn writer_state(&self, run: &str, ended: &Ended) -> Result<WriterState, CommitError> {
        let Some(area) = self.staging() else {
            return Ok(WriterState::Ended);
        };
        let lease = area
            .read_lease(self.store().as_ref(), run)
            .await
            .map_err(|e| self.err(&area.lease_key(run), e))?;
        Ok(match lease {
            None => WriterState::Ended,
            Some(l) if ended.runs.contains(run) && !l.written_after(ended.as_of) => {
                WriterState::Crashed
            }
            Some(l) if l.expired() => WriterState::Crashed,
            Some(_) => WriterState::Live,
        })
    }

    /// Deletes the staging folders of writers that are not live.
    async fn heal_staging(
        &self,
        me: Option<&str>,
        ended: &Ended,
        states: &mut BTreeMap<String, WriterState>,
    ) -> Result<(), CommitError> {
        let Some(area) = self.staging() else {
            return Ok(());
        };
        let mut runs: BTreeSet<String> = BTreeSet::new();
        for place in area.locations() {
            let prefix = place.path();
            let metas = self.objects_under(&prefix).await?;
            let base = prefix.parts().count();
            for m in &metas {
                if let Some(run) = m.location.parts().nth(base) {
                    runs.insert(run.as_ref().to_string());
                }
            }
            // On local disk, a write killed half-way leaves temporary files listings do not
            // show.
            if let Some(root) = place.local_path()
                && let Ok(entries) = std::fs::read_dir(&root)
            {
                runs.extend(
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().to_str().map(str::to_string)),
                );
            }
        }
        for run in runs {
            // Only folders named as runs are: anything else there is not sluice's.
            if Some(run.as_str()) == me
                || ended.resumable.as_deref() == Some(run.as_str())
                || !is_run_id(&run)
            {
                continue;
            }
            let state = match states.get(&run) {
                Some(s) => *s,
                None => self.writer_state(&run, ended).await?,
            };
            states.insert(run.clone(), state);
            if state != WriterState::Live && !self.lease_being_written(&run) {
                self.discard_staging(&run, None).await?;
            }
        }
        Ok(())
    }

    /// On local disk, whether run `run`'s folder is a lease being written: the store creates
    /// the folder, then a temporary `_LEASE#N`, then renames it, so a writer that has just
    /// started shows a folder with no lease for a moment. (Object stores show no folder
    /// before the lease.)
    fn lease_being_written(&self, run: &str) -> bool {
        let Some(dir) = self
            .staging()
            .and_then(|a| a.location().local_path())
            .map(|d| d.join(run))
        else {
            return false;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return false;
        };
        let names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        // A lease there decided the writer's state; a temporary one beside it is a renewal
        // (or a write a kill cut short). Only a folder without a lease, made a moment ago, is
        // a lease on its way.
        if names.iter().any(|n| n == LEASE) {
            return false;
        }
        let young = |path: &std::path::Path| {
            std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| {
                    t.elapsed()
                        .is_ok_and(|age| age < std::time::Duration::from_secs(60))
                })
        };
        let writing = names
            .iter()
            .any(|n| n.starts_with(&format!("{LEASE}#")) && young(&dir.join(n)));
        writing || (names.is_empty() && young(&dir))
    }

    /// Deletes `_staging/` inside the output, where builds before the staging area staged.
    async fn remove_legacy_staging(&self, me: Option<&str>) -> Result<(), CommitError> {
        let prefix = self.key(STAGING);
        let metas = self.objects_under(&prefix).await?;
        let base = prefix.parts().count();
        // Only run folders are sluice's: anything else there is left as it is.
        let stale: Vec<String> = metas
            .into_iter()
            .filter(|m| {
                m.location
                    .parts()
                    .nth(base)
                    .is_some_and(|p| is_run_id(p.as_ref()) && Some(p.as_ref()) != me)
            })
            .map(|m| {
                let parts: Vec<String> =
                    m.location.parts().map(|p| p.as_ref().to_string()).collect();
                parts[base - 1..].join("/")
            })
            .collect();
        self.delete_all(stale).await?;
        // On local disk, a write killed half-way leaves temporary files listings do not show.
        if let Some(root) = self.location().local_path() {
            if let Ok(entries) = std::fs::read_dir(root.join(STAGING)) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let name = name.to_str().unwrap_or_default();
                    if is_run_id(name) && Some(name) != me {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(root.join(STAGING));
        }
        Ok(())
    }
}

/// Whether `name` is a run id (`20261129T101424Z-b7fdc8`).
fn is_run_id(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 23
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'Z'
        && b[16] == b'-'
        && b[17..].iter().all(|c| c.is_ascii_hexdigit())
}

/// Whether `path` (relative to an output folder) is where an output puts a file: in
/// `col=value` partition folders, however many (none for an unpartitioned output).
pub(crate) fn in_partition_folders(path: &str) -> bool {
    path.split('/')
        .rev()
        .skip(1)
        .all(|part| part.split_once('=').is_some_and(|(k, _)| !k.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_partition_folders_are_an_outputs_own() {
        assert!(in_partition_folders("dt=1/r=EU/part-x.parquet"));
        assert!(in_partition_folders("dt=1/part-x.parquet"));
        assert!(in_partition_folders("part-x.parquet"));
        assert!(!in_partition_folders("sub/dt=1/part-x.parquet"));
        assert!(!in_partition_folders("sub/part-x.parquet"));
        assert!(!in_partition_folders("=1/part-x.parquet"));
    }

    #[test]
    fn run_ids_are_told_from_other_names() {
        assert!(is_run_id("20261129T101424Z-b7fdc8"));
        assert!(!is_run_id("notes.txt"));
        assert!(!is_run_id("keep"));
        assert!(!is_run_id("20261129T101424Z-b7fdc8x"));
    }
}
