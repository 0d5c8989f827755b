//! A read-only view of an object store that holds exactly the files of one `_MANIFEST`.
//!
//! A table over a sluice output is registered on this view rather than on the store, so its
//! scans see the committed version and nothing else: not files a crashed publish moved but
//! never committed, not old files whose deletion failed, not another run's staging. Listings
//! are answered from the manifest itself (no LIST request; sizes are the manifest's exact
//! byte counts), reads go to the real store.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// The files of one committed output, served from the store that holds them.
#[derive(Debug)]
pub(crate) struct ManifestStore {
    inner: Arc<dyn ObjectStore>,
    files: Vec<ObjectMeta>,
    index: std::collections::HashSet<Path>,
    /// Files shown under another key than the one they are stored at (staged files shown
    /// where they will be published): shown key → stored key.
    aliases: std::collections::HashMap<Path, Path>,
}

impl ManifestStore {
    /// A view of `inner` holding `files` (full keys and exact sizes) as committed at
    /// `committed_at`.
    pub(crate) fn new(
        inner: Arc<dyn ObjectStore>,
        files: impl IntoIterator<Item = (Path, u64)>,
        committed_at: DateTime<Utc>,
    ) -> ManifestStore {
        let files = files
            .into_iter()
            .map(|(location, size)| ObjectMeta {
                location,
                last_modified: committed_at,
                size,
                e_tag: None,
                version: None,
            })
            .collect::<Vec<ObjectMeta>>();
        let index = files.iter().map(|m| m.location.clone()).collect();
        ManifestStore {
            inner,
            files,
            index,
            aliases: Default::default(),
        }
    }

    /// A view of `inner` showing each file `(shown, stored, size)` at `shown` while reading it
    /// from `stored`: staged files seen at the keys they will be published at.
    pub(crate) fn aliased(
        inner: Arc<dyn ObjectStore>,
        files: impl IntoIterator<Item = (Path, Path, u64)>,
        at: DateTime<Utc>,
    ) -> ManifestStore {
        let files: Vec<(Path, Path, u64)> = files.into_iter().collect();
        let mut view = ManifestStore::new(
            inner,
            files.iter().map(|(shown, _, size)| (shown.clone(), *size)),
            at,
        );
        view.aliases = files
            .into_iter()
            .map(|(shown, stored, _)| (shown, stored))
            .collect();
        view
    }

    /// The key a shown file is stored at.
    fn stored<'a>(&'a self, location: &'a Path) -> &'a Path {
        self.aliases.get(location).unwrap_or(location)
    }

    fn under<'a>(&'a self, prefix: Option<&'a Path>) -> impl Iterator<Item = &'a ObjectMeta> + 'a {
        self.files.iter().filter(move |m| match prefix {
            Some(p) => m.location.prefix_matches(p),
            None => true,
        })
    }
}

impl fmt::Display for ManifestStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ManifestStore({}, {} files)",
            self.inner,
            self.files.len()
        )
    }
}

fn read_only(op: &str) -> object_store::Error {
    object_store::Error::NotSupported {
        source: format!("{op} on a read-only view of a committed output").into(),
    }
}

#[async_trait]
impl ObjectStore for ManifestStore {
    async fn put_opts(&self, _: &Path, _: PutPayload, _: PutOptions) -> Result<PutResult> {
        Err(read_only("put"))
    }

    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        Err(read_only("put"))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        // The view holds only its files: anything else (the folder's own _MANIFEST, an
        // orphan) is not there.
        if !self.index.contains(location) {
            return Err(object_store::Error::NotFound {
                path: location.to_string(),
                source: "not in this view".into(),
            });
        }
        self.inner.get_opts(self.stored(location), options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(self.stored(location), ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        locations.map(|_| Err(read_only("delete"))).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let found: Vec<Result<ObjectMeta>> = self.under(prefix).cloned().map(Ok).collect();
        stream::iter(found).boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let depth = prefix.map_or(0, |p| p.parts().count());
        let mut dirs = BTreeSet::new();
        let mut objects = Vec::new();
        for m in self.under(prefix) {
            let parts: Vec<_> = m.location.parts().collect();
            if parts.len() == depth + 1 {
                objects.push(m.clone());
            } else if parts.len() > depth + 1 {
                dirs.insert(Path::from_iter(parts[..=depth].iter().cloned()));
            }
        }
        Ok(ListResult {
            common_prefixes: dirs.into_iter().collect(),
            objects,
        })
    }

    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> Result<()> {
        Err(read_only("copy"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn lists_only_manifest_files_and_reads_through() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for key in [
            "out/d=1/a.parquet",
            "out/d=1/orphan.parquet",
            "out/d=2/b.parquet",
            "out/_MANIFEST",
        ] {
            inner
                .put(&Path::from(key), PutPayload::from_static(b"xyz"))
                .await
                .unwrap();
        }
        let view = ManifestStore::new(
            Arc::clone(&inner),
            [
                (Path::from("out/d=1/a.parquet"), 3),
                (Path::from("out/d=2/b.parquet"), 3),
            ],
            Utc::now(),
        );
        let all: Vec<String> = view
            .list(Some(&Path::from("out")))
            .map(|m| m.unwrap().location.to_string())
            .collect()
            .await;
        assert_eq!(all, vec!["out/d=1/a.parquet", "out/d=2/b.parquet"]);
        let top = view
            .list_with_delimiter(Some(&Path::from("out")))
            .await
            .unwrap();
        let dirs: Vec<String> = top.common_prefixes.iter().map(|p| p.to_string()).collect();
        assert_eq!(dirs, vec!["out/d=1", "out/d=2"]);
        assert!(top.objects.is_empty());
        let inside = view
            .list_with_delimiter(Some(&Path::from("out/d=1")))
            .await
            .unwrap();
        assert_eq!(inside.objects.len(), 1);
        let bytes = view
            .get(&Path::from("out/d=2/b.parquet"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&bytes[..], b"xyz");
        assert!(
            view.put(&Path::from("out/x"), PutPayload::from_static(b"1"))
                .await
                .is_err()
        );
    }
}
