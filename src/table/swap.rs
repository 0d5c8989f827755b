//! The commit point's one primitive: replace an output's `_MANIFEST` only if it is still the
//! version the writer read (compare-and-swap), so that two writers never both publish over the
//! same base and one of them silently loses the other's update.
//!
//! - Object stores: a conditional PUT, `If-Match` the ETag read (`If-None-Match: *` for the
//!   first version): S3 and S3-compatible servers, Azure Blob, GCS.
//! - Local disk: the output folder is locked (`flock`) while the current manifest is compared
//!   byte for byte and the new one written to a temporary file, fsynced, renamed over it, and
//!   the folder fsynced: atomic for readers, durable across a power loss, exclusive among
//!   writers on one host or one shared file system that honours `flock`.

use std::path::Path;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::manifest::{MANIFEST, MANIFEST_VERSION, Manifest};

/// The version of the manifest a writer read: what its compare-and-swap compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Version {
    /// There was no manifest.
    Absent,
    /// An object store's ETag (and version id, where the store has them).
    ETag(Option<String>, Option<String>),
    /// The manifest's bytes (local disk).
    Bytes(Vec<u8>),
}

/// A manifest as read, with its version.
#[derive(Debug, Clone)]
pub(crate) struct Versioned {
    /// The manifest, if there is one.
    pub manifest: Option<Manifest>,
    /// Its version.
    pub version: Version,
}

/// Why a swap did not happen.
#[derive(Debug)]
pub(crate) enum SwapError {
    /// The manifest is no longer the version read: another writer committed first.
    Moved,
    /// The store does not support conditional writes: it cannot give an atomic commit.
    Unsupported(String),
    /// The write failed; whether it landed is not known.
    Failed(String),
}

/// Reads the manifest at `key` with its version. `local` is the output folder on local disk.
pub(crate) async fn read(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    local: Option<&Path>,
) -> Result<Versioned, String> {
    if let Some(dir) = local {
        let path = dir.join(MANIFEST);
        return match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Versioned {
                manifest: Some(parse(&bytes)?),
                version: Version::Bytes(bytes),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Versioned {
                manifest: None,
                version: Version::Absent,
            }),
            Err(e) => Err(e.to_string()),
        };
    }
    match store.get(key).await {
        Ok(r) => {
            let version = Version::ETag(r.meta.e_tag.clone(), r.meta.version.clone());
            let bytes = r.bytes().await.map_err(|e| e.to_string())?;
            Ok(Versioned {
                manifest: Some(parse(&bytes)?),
                version,
            })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(Versioned {
            manifest: None,
            version: Version::Absent,
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// A manifest, if this build can read it: one written by a newer format is refused, so that
/// this build neither misreads it nor, writing the next version, drops what it records.
fn parse(bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a sluice manifest: {e}"))?;
    if m.version > MANIFEST_VERSION {
        return Err(format!(
            "written by a newer sluice (manifest version {}; this build reads up to {MANIFEST_VERSION}): \
             upgrade sluice to read or write this output",
            m.version
        ));
    }
    Ok(m)
}

/// Writes `body` as the manifest at `key` if the manifest is still at `expected`.
pub(crate) async fn swap(
    store: &dyn ObjectStore,
    key: &ObjectPath,
    local: Option<&Path>,
    expected: &Version,
    body: Vec<u8>,
    tmp_name: &str,
) -> Result<(), SwapError> {
    if let Some(dir) = local {
        let (dir, expected, tmp) = (dir.to_path_buf(), expected.clone(), tmp_name.to_string());
        return tokio::task::spawn_blocking(move || swap_local(&dir, &expected, &body, &tmp))
            .await
            .map_err(|e| SwapError::Failed(e.to_string()))?;
    }
    let mode = match expected {
        Version::Absent => PutMode::Create,
        Version::ETag(e_tag, version) => PutMode::Update(UpdateVersion {
            e_tag: e_tag.clone(),
            version: version.clone(),
        }),
        Version::Bytes(_) => {
            return Err(SwapError::Failed(
                "a local manifest version for an object store".into(),
            ));
        }
    };
    let opts = PutOptions {
        mode,
        ..Default::default()
    };
    match store.put_opts(key, PutPayload::from(body), opts).await {
        Ok(_) => Ok(()),
        Err(
            object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. },
        ) => Err(SwapError::Moved),
        Err(object_store::Error::NotImplemented { .. }) => Err(SwapError::Unsupported(
            "this store cannot write an object only if it is unchanged (a conditional put), \
             so two writers could overwrite each other's commit"
                .into(),
        )),
        Err(e) => Err(SwapError::Failed(e.to_string())),
    }
}

fn swap_local(
    dir: &Path,
    expected: &Version,
    body: &[u8],
    tmp_name: &str,
) -> Result<(), SwapError> {
    use std::io::Write;
    let failed = |what: &str, e: std::io::Error| SwapError::Failed(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| failed("cannot create the folder", e))?;
    let folder = std::fs::File::open(dir).map_err(|e| failed("cannot open the folder", e))?;
    let lock =
        crate::flock::Flock::wait(folder).map_err(|e| failed("cannot lock the folder", e))?;
    let folder = lock.file();
    let path = dir.join(MANIFEST);
    let current = match std::fs::read(&path) {
        Ok(b) => Version::Bytes(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Version::Absent,
        Err(e) => return Err(failed("cannot read the manifest", e)),
    };
    if &current != expected {
        return Err(SwapError::Moved);
    }
    let tmp = dir.join(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        folder.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed("cannot write the manifest", e)
    })
}

/// Deletes the temporary manifests that swaps killed half-way left in the local output folder
/// `dir` (a swap writes `._MANIFEST.<run id>.tmp`, then renames it over `_MANIFEST`; a kill in
/// between left it there for good). Under the folder's lock no swap is under way, so every
/// one there is such a leftover. Returns how many it deleted.
pub(crate) fn remove_killed_swaps(dir: &Path) -> std::io::Result<usize> {
    let leftovers = || -> Vec<std::path::PathBuf> {
        let prefix = format!(".{MANIFEST}.");
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".tmp"))
            })
            .map(|e| e.path())
            .collect()
    };
    if leftovers().is_empty() {
        return Ok(0);
    }
    let _lock = crate::flock::Flock::wait(std::fs::File::open(dir)?)?;
    let found = leftovers();
    for path in &found {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(found.len())
}

/// Flushes files and the folders that name them to disk (local outputs): the data files a
/// manifest is about to list must be on disk before it is.
pub(crate) fn sync_files(root: &Path, files: &[std::path::PathBuf]) -> std::io::Result<()> {
    let mut folders = std::collections::BTreeSet::new();
    for f in files {
        std::fs::File::open(f)?.sync_all()?;
        let mut dir = f.parent();
        while let Some(d) = dir {
            folders.insert(d.to_path_buf());
            if d == root || !d.starts_with(root) {
                break;
            }
            dir = d.parent();
        }
    }
    for d in folders {
        std::fs::File::open(&d)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_swap_only_replaces_the_version_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new();
        let key = ObjectPath::from("unused");
        let m = |run: &str| {
            serde_json::to_vec(&Manifest::new(run, "csv", &[], vec![], vec![])).unwrap()
        };
        let read = || read(&store, &key, Some(dir.path()));
        let v0 = read().await.unwrap();
        assert_eq!(v0.version, Version::Absent);
        swap(&store, &key, Some(dir.path()), &v0.version, m("a"), ".t")
            .await
            .unwrap();
        // A second writer that read "no manifest" loses.
        assert!(matches!(
            swap(&store, &key, Some(dir.path()), &v0.version, m("b"), ".t").await,
            Err(SwapError::Moved)
        ));
        let v1 = read().await.unwrap();
        assert_eq!(v1.manifest.as_ref().unwrap().run_id, "a");
        swap(&store, &key, Some(dir.path()), &v1.version, m("c"), ".t")
            .await
            .unwrap();
        assert!(matches!(
            swap(&store, &key, Some(dir.path()), &v1.version, m("d"), ".t").await,
            Err(SwapError::Moved)
        ));
        assert_eq!(read().await.unwrap().manifest.unwrap().run_id, "c");
        assert!(!dir.path().join(".t").exists());
    }

    #[test]
    fn the_temporary_manifest_of_a_killed_swap_is_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(remove_killed_swaps(d).unwrap(), 0);
        for name in [
            "._MANIFEST.20240101T000000Z-abcdef.tmp",
            "_MANIFEST",
            ".other.tmp",
            "part-0.parquet",
        ] {
            std::fs::write(d.join(name), "x").unwrap();
        }
        assert_eq!(remove_killed_swaps(d).unwrap(), 1);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![".other.tmp", "_MANIFEST", "part-0.parquet"]);
    }
}
