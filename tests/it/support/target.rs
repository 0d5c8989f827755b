//! An output folder on local disk, under a bucket prefix on a real S3-compatible server (moto
//! on 127.0.0.1) or under a container prefix on an Azure Blob emulator (Azurite), with the
//! means to write to it with `sluice sql` and to inspect it: the storage conformance suite
//! runs the same checks on each.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::azure::AzureServer;
use super::s3::S3Server;
use super::{Run, orders_arg, query_output_in, rows, sluice_env};

/// Where a suite writes: a local folder or a bucket prefix, with the means to inspect it.
pub struct Target {
    /// The output folder as sluice takes it (path or URL, trailing `/`).
    pub url: String,
    /// Environment for the sluice process.
    pub env: Vec<(String, String)>,
    pub store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    store_url: Option<url::Url>,
    /// Working folder for the sluice process.
    pub dir: tempfile::TempDir,
    /// The server, kept alive as long as the target.
    _server: Option<Box<dyn std::any::Any>>,
}

impl Target {
    pub fn local() -> Target {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let url = format!("{}/", out.display());
        let prefix = ObjectPath::from_filesystem_path(dir.path())
            .unwrap()
            .clone()
            .join("out");
        Target {
            url,
            env: Vec::new(),
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            prefix,
            store_url: None,
            dir,
            _server: None,
        }
    }

    pub fn s3() -> Target {
        let server = S3Server::start();
        server.create_bucket("lake");
        Target {
            url: "s3://lake/warehouse/out/".into(),
            env: server.env(),
            store: server.store("lake"),
            prefix: ObjectPath::from("warehouse/out"),
            store_url: Some(url::Url::parse("s3://lake").unwrap()),
            dir: tempfile::tempdir().unwrap(),
            _server: Some(Box::new(server)),
        }
    }

    /// `az://lake/warehouse/out/` on a fresh Azurite.
    pub fn azure() -> Target {
        let server = AzureServer::start();
        server.create_container("lake");
        Target {
            url: "az://lake/warehouse/out/".into(),
            env: server.env(),
            store: server.store("lake"),
            prefix: ObjectPath::from("warehouse/out"),
            store_url: Some(url::Url::parse("az://lake").unwrap()),
            dir: tempfile::tempdir().unwrap(),
            _server: Some(Box::new(server)),
        }
    }

    /// A container prefix on a running Azurite (the caller keeps the server alive).
    pub fn for_container_prefix(server: &AzureServer, container: &str, prefix: &str) -> Target {
        Target {
            url: format!("az://{container}/{prefix}/"),
            env: server.env(),
            store: server.store(container),
            prefix: ObjectPath::from(prefix),
            store_url: Some(url::Url::parse(&format!("az://{container}")).unwrap()),
            dir: tempfile::tempdir().unwrap(),
            _server: None,
        }
    }

    /// Whether the output is on local disk.
    pub fn is_local(&self) -> bool {
        self.store_url.is_none()
    }

    /// A bucket prefix on a running server (the caller keeps the server alive).
    pub fn for_bucket_prefix(server: &S3Server, bucket: &str, prefix: &str) -> Target {
        Target {
            url: format!("s3://{bucket}/{prefix}/"),
            env: server.env(),
            store: server.store(bucket),
            prefix: ObjectPath::from(prefix),
            store_url: Some(url::Url::parse(&format!("s3://{bucket}")).unwrap()),
            dir: tempfile::tempdir().unwrap(),
            _server: None,
        }
    }

    /// The key of every object under the output, relative to it, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .store
            .list(Some(&self.prefix))
            .map_ok(|m| self.relative(&m.location))
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// The key of `rel` inside the output folder.
    pub fn key(&self, rel: &str) -> ObjectPath {
        ObjectPath::parse(format!("{}/{rel}", self.prefix)).unwrap()
    }

    /// The key of `rel` inside the output's staging area (`<parent>/_sluice_staging/out/`).
    pub fn staging_key(&self, rel: &str) -> ObjectPath {
        let prefix = self.prefix.as_ref();
        let parent = prefix.rsplit_once('/').map_or("", |(p, _)| p);
        let area = if parent.is_empty() {
            "_sluice_staging/out".to_string()
        } else {
            format!("{parent}/_sluice_staging/out")
        };
        ObjectPath::parse(format!("{area}/{rel}")).unwrap()
    }

    /// Writes an object.
    pub async fn put(&self, key: &ObjectPath, bytes: impl Into<Vec<u8>>) {
        self.store
            .put(key, object_store::PutPayload::from(bytes.into()))
            .await
            .unwrap();
    }

    fn relative(&self, key: &ObjectPath) -> String {
        key.as_ref()[self.prefix.as_ref().len() + 1..].to_string()
    }

    /// Every object under the output, with its bytes.
    pub async fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .unwrap();
        let mut out = BTreeMap::new();
        for m in metas {
            let rel = self.relative(&m.location);
            let bytes = self
                .store
                .get(&m.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            out.insert(rel, bytes.to_vec());
        }
        out
    }

    /// A local folder holding a copy of every object under the output, each at its key
    /// (relative to the output) as it is on the store: to read an S3 output with a reader
    /// that cannot reach the server, or to see the names as a local reader would.
    pub async fn mirror(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (key, bytes) in self.snapshot().await {
            let path = dir.path().join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
        }
        dir
    }

    /// Reads the output with plain DataFusion and runs `sql` over it as table `t`.
    pub async fn query(&self, format: &str, partitions: &[&str], sql: &str) -> Vec<RecordBatch> {
        let store = self
            .store_url
            .as_ref()
            .map(|u| (u, Arc::clone(&self.store)));
        query_output_in(store, &self.url, format, partitions, sql).await
    }

    /// The number of rows of the output (as [`Target::query`] reads it).
    pub async fn count(&self, format: &str, partitions: &[&str]) -> u64 {
        let b = self
            .query(
                format,
                partitions,
                "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t",
            )
            .await;
        rows(&b, &["n"])[0][0].parse().unwrap()
    }

    /// Runs `sluice sql -e SQL` over the shop's raw orders (table `o`, [`orders_arg`]),
    /// writing to the target.
    pub fn write(&self, sql: &str, extra: &[&str]) -> Run {
        let table = orders_arg();
        let mut args = vec!["sql", "-e", sql, "--table", &table, "--out", &self.url];
        args.extend_from_slice(extra);
        sluice_env(self.dir.path(), &args, &self.env)
    }
}

/// Tests that run `suite` (an `async fn(Target)`) on every backend the suite can run on:
/// local disk, the S3 server (moto) and Azure Blob (Azurite). GCS is not among them:
/// fake-gcs-server, the GCS emulator the registries carry, does not implement the XML API
/// object_store writes through (`PUT /bucket/key` answers 400 "invalid uploadType"), so no
/// sink can be tested there (see docs/development.md).
macro_rules! on_every_backend {
    ($suite:ident: $local:ident, $s3:ident, $azure:ident) => {
        #[tokio::test]
        async fn $local() {
            $suite($crate::support::Target::local()).await;
        }

        #[tokio::test]
        async fn $s3() {
            $suite($crate::support::Target::s3()).await;
        }

        #[tokio::test]
        async fn $azure() {
            $suite($crate::support::Target::azure()).await;
        }
    };
}
pub(crate) use on_every_backend;
