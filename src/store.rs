//! Locations and the object-store registry: one place that maps a URL or a local path to the
//! `ObjectStore` that serves it.
//!
//! Local files go through object_store's `LocalFileSystem` like every other backend, so the
//! sink and its commit protocol have one code path. Remote stores are built from the matching
//! `[stores.*]` entry of `sluice.toml` (by scheme and bucket), on top of the standard
//! environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), which the caller passes in: the library never
//! reads the process environment itself. Credentials are never logged or printed.

mod throttle;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::config::StoreConfig;

/// Errors resolving a location or building a store: all of them the user's configuration
/// (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The location is neither a path nor a URL sluice understands.
    #[error("invalid location {location:?}: {message}")]
    InvalidLocation {
        /// The location as written.
        location: String,
        /// Why it is invalid.
        message: String,
    },
    /// A `[stores.*]` option is not one the backend knows.
    #[error("stores.{store}: unknown option '{key}' for {scheme} stores")]
    UnknownOption {
        /// The store's name.
        store: String,
        /// The unknown key.
        key: String,
        /// The store's URL scheme.
        scheme: String,
    },
    /// The backend rejected the configuration (e.g. a missing region or bad endpoint).
    #[error("cannot configure the store for {url}: {source}")]
    Build {
        /// The store URL (scheme and bucket; never credentials).
        url: String,
        /// object_store's error.
        #[source]
        source: object_store::Error,
    },
}

/// A resolved location: a URL for remote stores, a `file://` URL for local paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    url: Url,
    display: String,
    /// The key prefix inside the store, validated once: a URL such as `s3://b//x/` (an empty
    /// segment) is an error, never silently the root of the bucket.
    path: ObjectPath,
}

impl Location {
    /// Parses an absolute path or a URL (see [`crate::config::resolve_location`] for relative
    /// paths). A trailing `/` marks a folder / prefix.
    pub fn parse(location: &str) -> Result<Location, StoreError> {
        let invalid = |message: String| StoreError::InvalidLocation {
            location: location.to_string(),
            message,
        };
        let url = if location.contains("://") {
            Url::parse(location).map_err(|e| invalid(e.to_string()))?
        } else {
            let path = std::path::Path::new(location);
            if !path.is_absolute() {
                return Err(invalid("a local path must be absolute here".to_string()));
            }
            let mut url = Url::from_file_path(path)
                .map_err(|()| invalid("not a valid file path".to_string()))?;
            if location.ends_with('/') && !url.path().ends_with('/') {
                url.set_path(&format!("{}/", url.path()));
            }
            url
        };
        match url.scheme() {
            "file" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "adl" | "azure" | "http"
            | "https" | "memory" => {}
            // Views sluice registers itself (see StoreRegistry::insert).
            s if s.starts_with("sluice-") => {}
            other => return Err(invalid(format!("unsupported scheme '{other}://'"))),
        }
        let path = ObjectPath::from_url_path(url.path()).map_err(|e| invalid(e.to_string()))?;
        Ok(Location {
            url,
            display: location.to_string(),
            path,
        })
    }

    /// The location of URL `url` written as `display`: a location sent to another process
    /// as its [`Location::url`] and its `Display` (which is relative to this one's folder).
    pub fn from_parts(url: &str, display: &str) -> Result<Location, StoreError> {
        let mut location = Location::parse(url)?;
        location.display = display.to_string();
        Ok(location)
    }

    /// The same location, marked as a folder / prefix (with a trailing `/`).
    pub fn as_folder(&self) -> Location {
        let mut loc = self.clone();
        if !loc.url.path().ends_with('/') {
            let path = format!("{}/", loc.url.path());
            loc.url.set_path(&path);
        }
        if !loc.display.ends_with('/') {
            loc.display.push('/');
        }
        loc
    }

    /// The folder `name` inside this folder.
    pub fn join_folder(&self, name: &str) -> Result<Location, StoreError> {
        let base = self.as_folder();
        let url = base
            .url
            .join(&format!("{name}/"))
            .map_err(|e| StoreError::InvalidLocation {
                location: format!("{base}{name}/"),
                message: e.to_string(),
            })?;
        let path =
            ObjectPath::from_url_path(url.path()).map_err(|e| StoreError::InvalidLocation {
                location: format!("{base}{name}/"),
                message: e.to_string(),
            })?;
        Ok(Location {
            url,
            display: format!("{}{name}/", base.display),
            path,
        })
    }

    /// The folder that holds this one, and this one's name as its URL spells it; `None` at
    /// the root of a store.
    pub fn parent_folder(&self) -> Option<(Location, String)> {
        let folder = self.as_folder();
        let path = folder.url.path().trim_end_matches('/');
        let (parent, name) = path.rsplit_once('/')?;
        if name.is_empty() {
            return None;
        }
        let mut url = folder.url.clone();
        url.set_path(&format!("{parent}/"));
        let key = ObjectPath::from_url_path(url.path()).ok()?;
        let display = folder.display.trim_end_matches('/');
        let display = display
            .rsplit_once('/')
            .map_or_else(|| format!("{parent}/"), |(d, _)| format!("{d}/"));
        Some((
            Location {
                url,
                display,
                path: key,
            },
            name.to_string(),
        ))
    }

    /// The full URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The URL of the store that serves this location: scheme and authority (bucket) only.
    pub fn store_url(&self) -> Url {
        let mut u = self.url.clone();
        u.set_path("/");
        u.set_query(None);
        u.set_fragment(None);
        u
    }

    /// The object key (prefix) inside the store.
    pub fn path(&self) -> ObjectPath {
        self.path.clone()
    }

    /// Whether the location is the root of its store (a bucket, or `/`).
    pub fn is_root(&self) -> bool {
        self.path.parts().next().is_none()
    }

    /// A key inside this folder. `relative` is in object_store's path form (segments already
    /// encoded, as in a manifest or a listing), so it is joined as it is, never re-encoded.
    pub fn child(&self, relative: &str) -> ObjectPath {
        let rel = relative.trim_matches('/');
        let base = self.path.as_ref();
        let joined = match (base.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => base.to_string(),
            (false, false) => format!("{base}/{rel}"),
        };
        // Relative paths come from sluice itself (manifests, listings, partition folders
        // built with PathPart), so they parse; fall back to encoding each segment if not.
        ObjectPath::parse(&joined).unwrap_or_else(|_| {
            ObjectPath::from_iter(
                self.path.parts().chain(
                    rel.split('/')
                        .filter(|p| !p.is_empty())
                        .map(object_store::path::PathPart::from),
                ),
            )
        })
    }

    /// The local folder of a `file://` location.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        self.url.to_file_path().ok()
    }

    /// Whether the location is on local disk.
    pub fn is_local(&self) -> bool {
        self.url.scheme() == "file"
    }

    /// The largest file that can be published at this location, if its store limits it
    /// (S3: see [`crate::config::max_copy_bytes`]).
    pub fn max_copy_bytes(&self) -> Option<u64> {
        crate::config::max_copy_bytes(self.url.scheme())
    }

    /// How to show an object key of this store to a user: a local path, or the full URL.
    pub fn display_key(&self, key: &ObjectPath) -> String {
        if self.is_local() {
            format!("/{key}")
        } else {
            format!("{}{key}", self.store_url())
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// The URL of a view sluice registers over the store at `store` (a manifest's files, a work
/// unit's share): `sluice-KIND-N-SCHEME://HOST/`, unique per `n`, and naming the store it
/// views so that another process (a cluster's executor) reads the same files through
/// [`viewed_store`].
pub(crate) fn view_url(kind: &str, n: usize, store: &Url) -> String {
    format!(
        "sluice-{kind}-{n}-{}://{}/",
        store.scheme(),
        store.host_str().unwrap_or("local")
    )
}

/// The store a [`view_url`] views (`s3://bucket/`), or `None` for another URL.
pub(crate) fn viewed_store(url: &Url) -> Option<Url> {
    let rest = url.scheme().strip_prefix("sluice-")?;
    // KIND-N-SCHEME: the scheme is what follows the number.
    let mut parts = rest.splitn(3, '-');
    let (_kind, n, scheme) = (parts.next()?, parts.next()?, parts.next()?);
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match (scheme, url.host_str()) {
        ("file", _) => Url::parse("file:///").ok(),
        (scheme, Some(host)) => Url::parse(&format!("{scheme}://{host}/")).ok(),
        _ => None,
    }
}

/// Maps locations to object stores, building each store once from `[stores.*]` and the
/// environment, and registers them with DataFusion so SQL can read from them.
pub struct StoreRegistry {
    configs: Vec<StoreConfig>,
    env: BTreeMap<String, String>,
    built: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    /// What this registry's stores (all but local files) read, wrote and waited, by URL.
    counts: Mutex<BTreeMap<String, Arc<throttle::Counts>>>,
}

/// What the run report says of one object store (local files are not counted).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreReport {
    /// Its name in `sluice.toml`, if it has one there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The store's URL (scheme and bucket), e.g. `s3://lake/`.
    pub url: String,
    /// Bytes of object bodies read and written.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Requests made (a GET, a PUT, a part of an upload, a listing...).
    pub requests: u64,
    /// Time requests waited for the store's quotas.
    pub throttled_ms: u64,
}

impl fmt::Debug for StoreRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print options or the environment: they hold credentials.
        let names: Vec<_> = self.configs.iter().map(|c| c.name.as_str()).collect();
        f.debug_struct("StoreRegistry")
            .field("stores", &names)
            .finish()
    }
}

impl StoreRegistry {
    /// A registry over the pipeline's `[stores.*]` entries and the given environment variables
    /// (only `AWS_*`, `GOOGLE_*` and `AZURE_*` ones are used).
    pub fn new(configs: Vec<StoreConfig>, env: impl IntoIterator<Item = (String, String)>) -> Self {
        let env = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
            })
            .collect();
        StoreRegistry {
            configs,
            env,
            built: Mutex::new(HashMap::new()),
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    /// What each object store did so far in this registry's run.
    pub fn usage(&self) -> Vec<StoreReport> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|(url, c)| {
                let name = Url::parse(url).ok().and_then(|u| {
                    self.configs
                        .iter()
                        .find(|cfg| Self::serves(cfg, &u))
                        .map(|cfg| cfg.name.clone())
                });
                let get =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                StoreReport {
                    name,
                    url: url.clone(),
                    bytes_read: get(&c.bytes_read),
                    bytes_written: get(&c.bytes_written),
                    requests: get(&c.requests),
                    throttled_ms: get(&c.throttled_us) / 1000,
                }
            })
            .collect()
    }

    /// Whether `config` serves the store at `url`.
    fn serves(config: &StoreConfig, url: &Url) -> bool {
        Url::parse(&config.url)
            .is_ok_and(|u| u.scheme() == url.scheme() && u.host_str() == url.host_str())
    }

    /// The store that serves `location`, built on first use.
    pub fn store_for(&self, location: &Location) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let key = location.store_url().to_string();
        if let Some(store) = self.lock().get(&key) {
            return Ok(Arc::clone(store));
        }
        let store = self.build(location)?;
        self.lock().insert(key, Arc::clone(&store));
        Ok(store)
    }

    /// Serves `url` (scheme and authority) with `store`: a view sluice builds over another
    /// store, the files of one work unit, for as long as its [`UnitViews`] lives.
    fn insert(&self, url: &Url, store: Arc<dyn ObjectStore>) {
        self.lock().insert(Self::view_key(url), store);
    }

    /// Stops serving `url`, a view [`StoreRegistry::insert`] served.
    fn remove(&self, url: &Url) {
        self.lock().remove(&Self::view_key(url));
    }

    /// The key a view at `url` is served under: its scheme and authority.
    fn view_key(url: &Url) -> String {
        let mut key = url.clone();
        key.set_path("/");
        key.to_string()
    }

    /// Makes the store for `location` known to DataFusion's runtime, so that tables over it
    /// can be scanned.
    pub fn register(&self, location: &Location, runtime: &RuntimeEnv) -> Result<(), StoreError> {
        let store = self.store_for(location)?;
        runtime.register_object_store(&location.store_url(), store);
        Ok(())
    }

    /// Every remote store this registry serves or has built, with its object_store options
    /// resolved (the environment's and `[stores.*]`'s): what another process needs to reach
    /// the same stores with the same credentials. Never print it.
    pub(crate) fn resolved(
        &self,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, StoreError> {
        let mut urls: Vec<String> = self.configs.iter().map(|c| c.url.clone()).collect();
        urls.extend(self.lock().keys().cloned());
        let mut out = BTreeMap::new();
        for url in urls {
            let Ok(location) = Location::parse(&url) else {
                continue;
            };
            let store_url = location.store_url();
            if matches!(store_url.scheme(), "file" | "memory")
                || store_url.scheme().starts_with("sluice-")
            {
                continue;
            }
            out.insert(store_url.to_string(), self.options_for(&location)?);
        }
        Ok(out)
    }

    /// A registry of the stores of [`StoreRegistry::resolved`], in another process.
    pub(crate) fn from_resolved(resolved: &BTreeMap<String, BTreeMap<String, String>>) -> Self {
        let configs = resolved
            .iter()
            .map(|(url, options)| StoreConfig {
                name: url.clone(),
                url: url.clone(),
                options: options.clone(),
                quota: Default::default(),
            })
            .collect();
        StoreRegistry::new(configs, [])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<dyn ObjectStore>>> {
        // A poisoned lock only means another thread panicked while inserting; the map is
        // still consistent (inserts are single operations).
        self.built.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config_for(&self, location: &Location) -> Option<&StoreConfig> {
        let target = location.store_url();
        self.configs.iter().find(|c| Self::serves(c, &target))
    }

    fn build(&self, location: &Location) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let url = location.store_url();
        let scheme = url.scheme().to_string();
        if scheme == "file" {
            return Ok(Arc::new(
                LocalFileSystem::new().with_automatic_cleanup(true),
            ));
        }
        let options = self.options_for(location)?;
        let (store, _) =
            object_store::parse_url_opts(&url, options).map_err(|source| StoreError::Build {
                url: url.to_string(),
                source,
            })?;
        let quota = self.config_for(location).and_then(|c| {
            let endpoint = c.options.get("endpoint").map_or("", String::as_str);
            throttle::Quota::shared(&format!("{url} at {endpoint}"), &c.quota)
        });
        let counts = Arc::clone(
            self.counts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(url.to_string())
                .or_default(),
        );
        Ok(Arc::new(throttle::Throttled::new(
            Arc::from(store),
            quota,
            counts,
        )))
    }

    /// The object_store options for the store serving `location`: the environment, then the
    /// matching `[stores.*]` entry's options, which win.
    fn options_for(&self, location: &Location) -> Result<BTreeMap<String, String>, StoreError> {
        let scheme = location.store_url().scheme().to_string();
        let env_prefix = match scheme.as_str() {
            "s3" | "s3a" => Some("AWS_"),
            "gs" => Some("GOOGLE_"),
            "az" | "abfs" | "abfss" | "adl" | "azure" => Some("AZURE_"),
            _ => None,
        };
        // The environment first, then the store's own options, which win.
        let mut options: BTreeMap<String, String> = BTreeMap::new();
        if scheme == "http" {
            // The user wrote http:// explicitly; object_store refuses plain HTTP otherwise.
            options.insert("allow_http".into(), "true".into());
        }
        // Keys are stored under object_store's canonical names, so that two spellings of one
        // option (`AZURE_STORAGE_ENDPOINT` and `endpoint`) are one entry and the later wins.
        if let Some(prefix) = env_prefix {
            for (k, v) in &self.env {
                if !k.starts_with(prefix) {
                    continue;
                }
                if let Some(key) = canonical_key(&scheme, &k.to_ascii_lowercase()) {
                    options.insert(key, v.clone());
                }
            }
        }
        if let Some(cfg) = self.config_for(location) {
            for (k, v) in &cfg.options {
                let Some(key) = canonical_key(&scheme, &k.to_ascii_lowercase()) else {
                    return Err(StoreError::UnknownOption {
                        store: cfg.name.clone(),
                        key: k.clone(),
                        scheme,
                    });
                };
                options.insert(key, v.clone());
            }
        }
        if is_azure(&scheme) {
            azure_emulator_at_endpoint(&mut options);
        }
        Ok(options)
    }
}

fn is_azure(scheme: &str) -> bool {
    matches!(scheme, "az" | "abfs" | "abfss" | "adl" | "azure")
}

/// object_store's canonical name of `key` for the backend of `scheme`, or `None` if that
/// backend has no such option. For GCS, `endpoint` (the short form `[stores.*]` documents for
/// every backend) is the base URL requests go to, object_store's `google_base_url`.
fn canonical_key(scheme: &str, key: &str) -> Option<String> {
    use object_store::aws::AmazonS3ConfigKey;
    use object_store::azure::AzureConfigKey;
    use object_store::gcp::GoogleConfigKey;
    match scheme {
        "s3" | "s3a" => AmazonS3ConfigKey::from_str(key)
            .ok()
            .map(|k| k.as_ref().to_string()),
        "gs" if matches!(key, "endpoint" | "google_endpoint") => {
            Some(GoogleConfigKey::BaseUrl.as_ref().to_string())
        }
        "gs" => GoogleConfigKey::from_str(key)
            .ok()
            .map(|k| k.as_ref().to_string()),
        s if is_azure(s) => AzureConfigKey::from_str(key)
            .ok()
            .map(|k| k.as_ref().to_string()),
        _ => object_store::ClientConfigKey::from_str(key)
            .ok()
            .map(|k| k.as_ref().to_string()),
    }
}

/// Azurite's development account, the same in every Azurite (public, documented by Microsoft).
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// `use_emulator` with an `endpoint`: object_store's emulator mode ignores the endpoint (it
/// goes to `$AZURITE_BLOB_STORAGE_URL` or 127.0.0.1:10000), so an Azurite elsewhere would be
/// missed, or another one reached. Spell it as the account endpoint it is instead: path-style
/// `ENDPOINT/ACCOUNT`, the development account and key unless others are given, plain HTTP
/// allowed.
fn azure_emulator_at_endpoint(options: &mut BTreeMap<String, String>) {
    use object_store::azure::AzureConfigKey as K;
    let emulator = options.get(K::UseEmulator.as_ref()).is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "true" | "on" | "yes" | "y"
        )
    });
    let Some(endpoint) = options.get(K::Endpoint.as_ref()).cloned() else {
        return;
    };
    if !emulator {
        return;
    }
    options.remove(K::UseEmulator.as_ref());
    let account = options
        .entry(K::AccountName.as_ref().to_string())
        .or_insert_with(|| AZURITE_ACCOUNT.to_string())
        .clone();
    let credentials = [K::AccessKey, K::SasKey, K::Token];
    if !credentials.iter().any(|k| options.contains_key(k.as_ref())) {
        options.insert(K::AccessKey.as_ref().to_string(), AZURITE_KEY.to_string());
    }
    let bare = Url::parse(&endpoint).is_ok_and(|u| u.path().trim_matches('/').is_empty());
    if bare {
        let endpoint = format!("{}/{account}", endpoint.trim_end_matches('/'));
        options.insert(K::Endpoint.as_ref().to_string(), endpoint);
    }
    options.insert(
        object_store::ClientConfigKey::AllowHttp
            .as_ref()
            .to_string(),
        "true".to_string(),
    );
}

/// The views of one work unit (its share of a source's files), served by a registry and
/// DataFusion's runtime until this is dropped: a run of many units would otherwise hold
/// every unit's file list until it ends (1,000 units over a 10,000-file source: 10 million
/// entries).
pub(crate) struct UnitViews {
    stores: Arc<StoreRegistry>,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    urls: Vec<Url>,
}

impl UnitViews {
    /// No views yet, of `stores` and (once a table over one is registered) `runtime`.
    pub(crate) fn new(
        stores: Arc<StoreRegistry>,
        runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    ) -> UnitViews {
        UnitViews {
            stores,
            runtime,
            urls: Vec::new(),
        }
    }

    /// Serves `url` with `store`, as [`StoreRegistry::insert`] does, until this is dropped.
    pub(crate) fn insert(&mut self, url: &Url, store: Arc<dyn ObjectStore>) {
        self.stores.insert(url, store);
        self.urls.push(url.clone());
    }

    /// The registry that serves the views.
    pub(crate) fn stores(&self) -> &Arc<StoreRegistry> {
        &self.stores
    }
}

impl Drop for UnitViews {
    fn drop(&mut self) {
        for url in &self.urls {
            self.stores.remove(url);
            // (Not registered there when the unit failed before its table was.)
            let _ = self.runtime.object_store_registry.deregister_store(url);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unit's view is served by the registry and the runtime while its guard lives, and by
    /// neither once it is dropped; other stores stay.
    #[test]
    fn a_units_views_are_removed_when_it_ends() {
        let stores = Arc::new(StoreRegistry::new(Vec::new(), Vec::new()));
        let runtime = Arc::new(datafusion::execution::runtime_env::RuntimeEnv::default());
        let local = Location::parse("/tmp/x/").unwrap();
        stores.register(&local, &runtime).unwrap();
        let view = Url::parse(&view_url("files", 7, &local.store_url())).unwrap();
        let in_memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let served = |stores: &StoreRegistry| stores.lock().contains_key(view.as_str());
        {
            let mut views = UnitViews::new(Arc::clone(&stores), Arc::clone(&runtime));
            views.insert(&view, Arc::clone(&in_memory));
            let viewed = Location::parse(&format!("{view}data/")).unwrap();
            stores.register(&viewed, &runtime).unwrap();
            assert!(served(&stores));
            assert!(runtime.object_store_registry.get_store(&view).is_ok());
        }
        assert!(!served(&stores));
        assert!(runtime.object_store_registry.get_store(&view).is_err());
        assert!(
            runtime
                .object_store_registry
                .get_store(&local.store_url())
                .is_ok()
        );
        assert!(stores.lock().contains_key(local.store_url().as_str()));
    }

    #[test]
    fn local_paths_become_file_urls() {
        let loc = Location::parse("/tmp/out/daily/").unwrap();
        assert_eq!(loc.url().as_str(), "file:///tmp/out/daily/");
        assert_eq!(loc.path().as_ref(), "tmp/out/daily");
        assert_eq!(
            loc.child("a=1/part-0.parquet").as_ref(),
            "tmp/out/daily/a=1/part-0.parquet"
        );
        assert!(loc.is_local());
    }

    #[test]
    fn s3_urls_keep_bucket_and_prefix() {
        let loc = Location::parse("s3://lake/raw/orders/").unwrap();
        assert_eq!(loc.store_url().as_str(), "s3://lake/");
        assert_eq!(loc.path().as_ref(), "raw/orders");
        assert_eq!(
            loc.display_key(&loc.child("x.csv")),
            "s3://lake/raw/orders/x.csv"
        );
    }

    #[test]
    fn empty_segments_are_rejected_not_read_as_the_root() {
        let err = Location::parse("s3://lake//orders/").unwrap_err();
        assert!(err.to_string().contains("s3://lake//orders/"), "{err}");
        assert!(Location::parse("s3://lake/").unwrap().is_root());
        assert!(!Location::parse("s3://lake/x/").unwrap().is_root());
    }

    #[test]
    fn children_are_joined_without_re_encoding() {
        let loc = Location::parse("s3://lake/out/").unwrap();
        assert_eq!(
            loc.child("r=EU%2FUK/part-0.csv").as_ref(),
            "out/r=EU%2FUK/part-0.csv"
        );
    }

    #[test]
    fn unsupported_schemes_and_relative_paths_are_rejected() {
        assert!(Location::parse("ftp://host/x").is_err());
        assert!(Location::parse("relative/x").is_err());
    }

    fn store_options(url: &str, options: &[(&str, &str)], env: &[(&str, &str)]) -> Vec<String> {
        let cfg = StoreConfig {
            quota: Default::default(),
            name: "x".into(),
            url: url.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let reg = StoreRegistry::new(vec![cfg], env);
        let loc = Location::parse(&format!("{url}/out/")).unwrap();
        let opts = reg.options_for(&loc).unwrap();
        // The stores build with them.
        reg.store_for(&loc).unwrap();
        opts.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    #[test]
    fn gcs_endpoint_is_the_base_url() {
        assert_eq!(
            store_options(
                "gs://lake",
                &[
                    ("endpoint", "http://127.0.0.1:4443"),
                    ("skip_signature", "true")
                ],
                &[("GOOGLE_BASE_URL", "http://elsewhere"), ("AWS_REGION", "x")],
            ),
            [
                "google_base_url=http://127.0.0.1:4443",
                "google_skip_signature=true"
            ]
        );
    }

    #[test]
    fn azure_emulator_with_an_endpoint_goes_there() {
        assert_eq!(
            store_options(
                "az://lake",
                &[
                    ("use_emulator", "true"),
                    ("endpoint", "http://azurite:10001/")
                ],
                &[],
            ),
            [
                "allow_http=true",
                &format!("azure_storage_account_key={AZURITE_KEY}"),
                "azure_storage_account_name=devstoreaccount1",
                "azure_storage_endpoint=http://azurite:10001/devstoreaccount1",
            ]
        );
        // Another account, given with its key and a full endpoint, is kept as given.
        assert_eq!(
            store_options(
                "az://lake",
                &[
                    ("use_emulator", "yes"),
                    ("account_name", "acct"),
                    ("access_key", "a2V5")
                ],
                &[("AZURE_STORAGE_ENDPOINT", "http://h:1/acct")],
            ),
            [
                "allow_http=true",
                "azure_storage_account_key=a2V5",
                "azure_storage_account_name=acct",
                "azure_storage_endpoint=http://h:1/acct",
            ]
        );
        // Without an endpoint, object_store's emulator mode is left to do its own thing.
        assert_eq!(
            store_options("az://lake", &[("use_emulator", "true")], &[]),
            ["azure_storage_use_emulator=true"]
        );
    }

    #[test]
    fn unknown_store_options_are_named() {
        let cfg = StoreConfig {
            quota: Default::default(),
            name: "lake".into(),
            url: "s3://lake".into(),
            options: [("endpoit".to_string(), "http://x".to_string())].into(),
        };
        let reg = StoreRegistry::new(vec![cfg], Vec::new());
        let err = reg
            .store_for(&Location::parse("s3://lake/x/").unwrap())
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown option 'endpoit'"),
            "{err}"
        );
    }
}
