//! The spill folder of one process: `sluice-spill-<16 hex digits>/` inside the configured `spill_dir` (or
//! the system's temporary folder), where DataFusion's disk manager makes its own temporary
//! folder for the spill files of sorts, aggregations and grace joins.
//!
//! DataFusion removes its temporary folder when the process ends normally; a process killed
//! with SIGKILL (an out-of-memory kill, a scheduler's timeout) leaves it behind, with
//! gigabytes of spill files in it, and nothing would ever remove it. So each process holds an
//! exclusive lock (`flock`) on `sluice-spill-<digits>.lock` beside its folder for as long as it
//! runs, and every new process removes the folders whose lock it can take: their process has
//! ended, however it ended (the kernel releases the lock of a dead process). Processes of
//! other machines sharing the folder over NFS are not told apart (`flock` is local): give
//! each machine its own `spill_dir`.
//!
//! The lock file is made under a temporary name, locked, then renamed: a `.lock` name is
//! locked from the moment it can be seen, so a new process's folder is never taken for a
//! dead one's.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::flock::Flock;

const PREFIX: &str = "sluice-spill-";
const LOCK: &str = ".lock";

/// Whether `name` is a spill folder's name: [`PREFIX`] and 16 hexadecimal digits, nothing
/// else (other folders of the temporary folder are never touched).
fn is_spill_folder(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|t| t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// This process's spill folder: removed when dropped; while it lives, no other process
/// removes it.
#[derive(Debug)]
pub(crate) struct SpillFolder {
    path: PathBuf,
    lock_path: PathBuf,
    _lock: Flock,
}

impl SpillFolder {
    /// Removes the folders of ended processes in `root` (creating `root` if needed), logging
    /// what it freed, then makes and locks this process's. Returns it and what was removed.
    pub(crate) fn create(root: &Path) -> io::Result<(SpillFolder, Removed)> {
        std::fs::create_dir_all(root)?;
        let removed = sweep(root);
        if removed.folders > 0 {
            tracing::info!(
                folder = %root.display(),
                "removed {} spill folder(s) of ended sluice processes ({} bytes)",
                removed.folders,
                removed.bytes
            );
        }
        let token = format!("{:016x}", rand::random::<u64>());
        let name = format!("{PREFIX}{token}");
        let pending = root.join(format!(".{name}.tmp"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&pending)?;
        let lock = Flock::wait(file)?;
        let lock_path = root.join(format!("{name}{LOCK}"));
        std::fs::rename(&pending, &lock_path)?;
        let path = root.join(&name);
        std::fs::create_dir(&path)?;
        Ok((
            SpillFolder {
                path,
                lock_path,
                _lock: lock,
            },
            removed,
        ))
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SpillFolder {
    fn drop(&mut self) {
        // The folder first, then the lock that keeps others from removing it.
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// What a sweep removed: the folders of ended processes, and the bytes of their files.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    pub folders: usize,
    pub bytes: u64,
}

/// Removes every spill folder of `root` whose lock is free (its process ended) or that
/// has no lock file (its process ended while a sweep removed it). Errors are skipped: a
/// folder that cannot be removed now is tried again by the next process.
fn sweep(root: &Path) -> Removed {
    let mut removed = Removed::default();
    let Ok(entries) = std::fs::read_dir(root) else {
        return removed;
    };
    let names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut remove = |folder: &Path| {
        let bytes = size_of(folder);
        let gone = std::fs::remove_dir_all(folder).is_ok() || !folder.exists();
        if gone {
            removed.folders += 1;
            removed.bytes += bytes;
        }
        gone
    };
    for name in &names {
        let Some(folder) = name.strip_suffix(LOCK).filter(|n| is_spill_folder(n)) else {
            continue;
        };
        let lock = root.join(name);
        let Ok(file) = File::open(&lock) else {
            continue;
        };
        // Held (or unreadable): a live process's folder, left alone.
        let Ok(Some(_held)) = Flock::try_take(file) else {
            continue;
        };
        if remove(&root.join(folder)) {
            let _ = std::fs::remove_file(&lock);
        }
    }
    // Folders whose lock file is gone: a sweep that removed the lock but not the folder.
    // (Looked for now, not in the listing: a new process makes its lock before its folder.)
    for name in names.iter().filter(|n| is_spill_folder(n)) {
        let folder = root.join(name);
        let is_folder = std::fs::symlink_metadata(&folder).is_ok_and(|m| m.is_dir());
        if is_folder && !root.join(format!("{name}{LOCK}")).exists() {
            remove(&folder);
        }
    }
    removed
}

/// The bytes of the files under `path` (links not followed).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| size_of(&e.path()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A live process's folder (its lock held) stays; an ended one's (its lock free, or no
    /// lock file) goes with its files; what is not sluice's stays.
    #[test]
    fn folders_of_ended_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("datafusion-other")).unwrap();
        std::fs::write(root.join("unrelated.txt"), b"x").unwrap();
        // Other programs' (and sluice's other) folders of the temporary folder.
        for other in [
            "sluice-executor-4000",
            "sluice-spill-xyz",
            "sluice-spill-00000000000000cc1",
        ] {
            std::fs::create_dir(root.join(other)).unwrap();
        }

        let (live, _) = SpillFolder::create(root).unwrap();
        std::fs::write(live.path().join("spill"), vec![0u8; 1000]).unwrap();

        // An ended process: its lock file unlocked, a spill file in its folder.
        let dead = root.join("sluice-spill-00000000000000aa");
        std::fs::create_dir_all(dead.join("datafusion-x")).unwrap();
        std::fs::write(dead.join("datafusion-x/spill"), vec![0u8; 4096]).unwrap();
        std::fs::write(root.join("sluice-spill-00000000000000aa.lock"), b"").unwrap();
        // Another whose lock file a sweep removed before its folder.
        let orphan = root.join("sluice-spill-00000000000000bb");
        std::fs::create_dir_all(&orphan).unwrap();
        std::fs::write(orphan.join("spill"), vec![0u8; 100]).unwrap();

        let (next, removed) = SpillFolder::create(root).unwrap();
        assert_eq!(
            removed,
            Removed {
                folders: 2,
                bytes: 4196
            }
        );
        assert!(!dead.exists() && !orphan.exists());
        assert!(live.path().join("spill").exists());
        assert!(root.join("datafusion-other").exists() && root.join("unrelated.txt").exists());

        // Dropped, each removes its own folder and lock file.
        let live_name = live
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        drop(live);
        drop(next);
        assert_eq!(
            entries(root),
            vec![
                "datafusion-other",
                "sluice-executor-4000",
                "sluice-spill-00000000000000cc1",
                "sluice-spill-xyz",
                "unrelated.txt"
            ],
            "{live_name}"
        );
    }
}
