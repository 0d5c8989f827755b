//! How the pipeline's object stores reach the executors: the client puts every store it
//! uses, with its options resolved (`[stores.*]` and the environment's credentials), into the
//! job's session settings (`sluice.stores`), which Ballista sends to the scheduler and with
//! every task; an executor builds the stores from them, so it needs no credentials of its
//! own. The settings travel over the cluster's gRPC connections as they are: keep the
//! cluster on a trusted network (see the README).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::common::config::ConfigExtension;
use datafusion::common::{DataFusionError, Result, extensions_options};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use url::Url;

use crate::store::{Location, StoreRegistry};

extensions_options! {
    /// sluice's settings of a job on a cluster.
    pub struct ClusterOptions {
        /// The stores the job reads and writes: JSON, store URL → object_store options.
        /// Holds credentials: never logged by sluice.
        pub stores: String, default = String::new()
    }
}

impl ConfigExtension for ClusterOptions {
    const PREFIX: &'static str = "sluice";
}

/// `config` with the stores of `stores` in its `sluice.stores` setting.
pub(crate) fn with_stores(
    mut config: SessionConfig,
    stores: &StoreRegistry,
) -> Result<SessionConfig, crate::store::StoreError> {
    let resolved = stores.resolved()?;
    let json = serde_json::to_string(&resolved).unwrap_or_default();
    let options = config.options_mut();
    if options.extensions.get::<ClusterOptions>().is_none() {
        options.extensions.insert(ClusterOptions::default());
    }
    if let Some(ext) = options.extensions.get_mut::<ClusterOptions>() {
        ext.stores = json;
    }
    Ok(config)
}

/// The object stores an executor reads and writes for the jobs of one session: the stores
/// its settings carry, built once each; local files; and sluice's views of them (a
/// manifest's files) read as the store they view.
#[derive(Debug)]
pub(crate) struct ShippedStores {
    stores: StoreRegistry,
    local: Arc<dyn ObjectStore>,
    /// Stores registered by the engine itself (none is expected).
    registered: Mutex<BTreeMap<String, Arc<dyn ObjectStore>>>,
}

impl ShippedStores {
    /// The stores of `config`'s `sluice.stores` setting.
    pub(crate) fn of(config: &SessionConfig) -> Result<ShippedStores> {
        let json = config
            .options()
            .extensions
            .get::<ClusterOptions>()
            .map(|o| o.stores.clone())
            .unwrap_or_default();
        let resolved: BTreeMap<String, BTreeMap<String, String>> = if json.is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&json).map_err(|e| {
                DataFusionError::Configuration(format!("sluice.stores is not valid: {e}"))
            })?
        };
        Ok(ShippedStores {
            stores: StoreRegistry::from_resolved(&resolved),
            local: Arc::new(LocalFileSystem::new()),
            registered: Mutex::default(),
        })
    }
}

impl ObjectStoreRegistry for ShippedStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(url.to_string(), store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let mut key = url.clone();
        key.set_path("/");
        if let Some(s) = self
            .registered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key.as_str())
        {
            return Ok(Arc::clone(s));
        }
        let url = crate::store::viewed_store(url).unwrap_or_else(|| url.clone());
        if url.scheme() == "file" {
            return Ok(Arc::clone(&self.local));
        }
        let location = Location::parse(url.as_str())
            .map_err(|e| DataFusionError::Configuration(e.to_string()))?;
        self.stores.store_for(&location).map_err(|e| {
            DataFusionError::Configuration(format!(
                "{e} (the job did not bring this store's settings: is it a [stores.*] of the \
                 pipeline?)"
            ))
        })
    }
}
