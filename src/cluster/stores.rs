//! How the pipeline's object stores reach the executors: the client puts every store it
//! uses, with its options resolved (`[stores.*]` and the environment's credentials), into the
//! job's session settings (`sluice.stores`), which Ballista sends to the scheduler and with
//! every task; an executor builds the stores from them, so it needs no credentials of its
//! own. The settings travel over the cluster's gRPC connections as they are: keep the
//! cluster on a trusted network (see the README).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use url::Url;

use ballista_core::serde::protobuf::KeyValuePair;

use crate::store::{Location, StoreRegistry};

/// sluice's settings of a job on a cluster (`sluice.*`).
///
/// Written out by hand rather than with DataFusion's `extensions_options!`, whose entries
/// are listed without their prefix: Ballista sends a job's settings on to its tasks by
/// those names, and `stores` alone would be dropped on the way.
#[derive(Clone, Default)]
pub(crate) struct ClusterOptions {
    /// The stores the job reads and writes: JSON, store URL → object_store options. Holds
    /// credentials: never printed (see the `Debug` impl).
    pub(crate) stores: String,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClusterOptions {{ stores: {} bytes }}",
            self.stores.len()
        )
    }
}

impl ConfigExtension for ClusterOptions {
    const PREFIX: &'static str = "sluice";
}

impl ExtensionOptions for ClusterOptions {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "stores" => {
                self.stores = value.to_string();
                Ok(())
            }
            other => Err(DataFusionError::Configuration(format!(
                "unknown setting sluice.{other}"
            ))),
        }
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: format!("{}.stores", Self::PREFIX),
            value: Some(self.stores.clone()),
            description: "the stores a job reads and writes, with their options",
        }]
    }
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

/// The settings a job carries to the scheduler and its tasks, as Ballista sends them on
/// (its `to_key_value_pairs`).
pub(crate) fn job_settings(config: &SessionConfig) -> Vec<KeyValuePair> {
    use ballista_core::extension::SessionConfigHelperExt;
    config.to_key_value_pairs()
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

#[cfg(test)]
mod tests {
    use super::*;
    use ballista_core::extension::{SessionConfigExt, SessionConfigHelperExt};

    /// The client's stores, credentials from its environment included, reach a process whose
    /// environment has none, through the job's settings as Ballista sends them.
    #[test]
    fn the_clients_stores_travel_in_the_jobs_settings() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "AKIDCLIENT"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_REGION", "us-east-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let client = StoreRegistry::new(Vec::new(), env);
        client
            .store_for(&Location::parse("s3://lake/raw/").unwrap())
            .unwrap();
        let config = with_stores(SessionConfig::new(), &client).unwrap();
        let sent = job_settings(&config);
        // The scheduler's side, then an executor's (each its own settings, updated with what
        // came, which the scheduler sends on with every task).
        let ours =
            || SessionConfig::new_with_ballista().with_option_extension(ClusterOptions::default());
        let scheduler = ours().update_from_key_value_pair(&sent);
        let received = ours().update_from_key_value_pair(&job_settings(&scheduler));
        let shipped = ShippedStores::of(&received).unwrap();
        let resolved = shipped.stores.resolved().unwrap();
        let options = &resolved["s3://lake/"];
        assert_eq!(options["aws_access_key_id"], "AKIDCLIENT");
        assert_eq!(options["aws_secret_access_key"], "s3cr3t");
        assert_eq!(options["aws_endpoint"], "http://127.0.0.1:9");
        // A view of the store (a manifest's files) reads through the same store.
        let url = Url::parse(&crate::store::view_url(
            "manifest",
            3,
            &Url::parse("s3://lake/").unwrap(),
        ))
        .unwrap();
        assert!(shipped.get_store(&url).is_ok());
        // The settings never print the credentials through the registry's Debug.
        assert!(!format!("{shipped:?}").contains("s3cr3t"));
    }
}
