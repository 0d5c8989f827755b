//! Where a writer stages the files of a new version, and how it tells other writers it is alive.
//!
//! Staging is **outside** the output folder: a sibling `_sluice_staging/<output name>/` on the
//! same store (`lake/orders/` stages in `lake/_sluice_staging/orders/`). A reader that lists
//! the output folder, however deep its glob (DuckDB's `**/*.parquet`), never sees a staged
//! file; and a move from staging to the output is a rename on the same store.
//!
//! Each writing run has a folder `<run id>/` there, holding its units' files and a **lease**
//! (`<run id>/_LEASE`): who writes, until when. The lease is written before anything is staged
//! and renewed every [`RENEW_EVERY`] while the writer lives ([`LeaseKeeper`]); it is deleted last,
//! with the run's staging, once the publish committed or rolled back. So for any data file of
//! the output that its manifest does not list, the writer's lease says what it is:
//!
//! - **lease live**: a publish in flight (files moved, manifest not yet written): not to touch;
//! - **lease expired** (or the writer is known dead): leftovers of a crashed publish: garbage;
//! - **no lease**: the publish that wrote the file ended. Beside a manifest, the file was
//!   replaced by a later version (its clean-up did not finish): garbage. Without a manifest, the
//!   manifest was lost: the files are a committed version, and nothing may delete them.
//!
//! Clocks of different hosts are compared with [`CLOCK_SLACK`] to spare.

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::store::Location;

/// The folder beside an output that holds the staging of its writers.
pub(crate) const STAGING_AREA: &str = "_sluice_staging";

/// A run's lease object, inside its staging folder.
pub(crate) const LEASE: &str = "_LEASE";

/// How long a lease lasts without renewal.
pub(crate) const LEASE_FOR: Duration = Duration::from_secs(600);

/// How often a live writer renews its lease.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(60);

/// How far apart two hosts' clocks may be: a lease is only taken as expired this long after
/// the time it names.
pub(crate) const CLOCK_SLACK: Duration = Duration::from_secs(120);

/// The staging area of one output: `<parent>/_sluice_staging/<output name>/`, where its
/// writers' leases always are (every writer of the output must find them), and where their
/// files are staged unless `[settings] staging` puts them elsewhere on the same store.
#[derive(Debug, Clone)]
pub(crate) struct StagingArea {
    root: Location,
    /// Where runs stage their files (`root`, or a folder of the configured staging root).
    files: Location,
}

/// What a lease says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// The writing run.
    pub run_id: String,
    /// The writer's host and process, for people reading it.
    pub holder: String,
    /// Until when the writer promises to renew it (RFC 3339, UTC).
    pub expires_at: String,
}

impl Lease {
    fn new(run_id: &str) -> Lease {
        let host = hostname();
        Lease {
            run_id: run_id.to_string(),
            holder: format!("{host} pid {}", std::process::id()),
            expires_at: (chrono::Utc::now()
                + chrono::Duration::from_std(LEASE_FOR).unwrap_or_default())
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }

    /// Whether the lease has expired, with [`CLOCK_SLACK`] to spare. A lease whose time does
    /// not parse has expired.
    pub(crate) fn expired(&self) -> bool {
        crate::config::parse_timestamp(&self.expires_at).is_none_or(|t| {
            let slack = chrono::Duration::from_std(CLOCK_SLACK).unwrap_or_default();
            chrono::Utc::now() > t + slack
        })
    }

    /// Whether the lease was written (or renewed) after `time` (never, for no time): its
    /// writer was alive then.
    pub(crate) fn written_after(&self, time: Option<chrono::DateTime<chrono::Utc>>) -> bool {
        let (Some(time), Some(expires)) = (time, crate::config::parse_timestamp(&self.expires_at))
        else {
            return false;
        };
        let lasts = chrono::Duration::from_std(LEASE_FOR).unwrap_or_default();
        expires - lasts > time
    }

    /// Whether the lease will still hold for `margin` by this host's clock (the writer's own
    /// check before it commits).
    pub(crate) fn holds_for(&self, margin: Duration) -> bool {
        crate::config::parse_timestamp(&self.expires_at).is_some_and(|t| {
            let margin = chrono::Duration::from_std(margin).unwrap_or_default();
            chrono::Utc::now() + margin < t
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}

impl StagingArea {
    /// The staging area of the output folder at `output` (not the root of a store).
    pub(crate) fn of(output: &Location) -> Option<StagingArea> {
        let (parent, name) = output.parent_folder()?;
        let root = parent.join_folder(STAGING_AREA).ok()?;
        let root = root.join_folder(&name).ok()?;
        Some(StagingArea {
            files: root.clone(),
            root,
        })
    }

    /// The area's two folders, as URLs: the leases' and the files' (to send it to another
    /// process).
    pub(crate) fn urls(&self) -> (String, String) {
        (self.root.url().to_string(), self.files.url().to_string())
    }

    /// The area of [`StagingArea::urls`].
    pub(crate) fn from_urls(
        root: &str,
        files: &str,
    ) -> Result<StagingArea, crate::store::StoreError> {
        Ok(StagingArea {
            root: Location::parse(root)?.as_folder(),
            files: Location::parse(files)?.as_folder(),
        })
    }

    /// The same area, with files staged in `folder` (on the same store) instead.
    pub(crate) fn with_files(mut self, folder: Location) -> StagingArea {
        self.files = folder.as_folder();
        self
    }

    /// The folders runs have folders in: the leases' and, if elsewhere, the files'.
    pub(crate) fn locations(&self) -> Vec<&Location> {
        if self.files == self.root {
            vec![&self.root]
        } else {
            vec![&self.root, &self.files]
        }
    }

    /// The area's folder.
    pub(crate) fn location(&self) -> &Location {
        &self.root
    }

    /// The key of a file `relative` (in object_store's path form) staged by run `run_id`.
    pub(crate) fn key(&self, run_id: &str, relative: &str) -> ObjectPath {
        self.files.child(&format!("{run_id}/{relative}"))
    }

    /// The prefixes of run `run_id`'s folders (its lease's and its files').
    pub(crate) fn run_prefixes(&self, run_id: &str) -> Vec<ObjectPath> {
        self.locations().iter().map(|l| l.child(run_id)).collect()
    }

    /// The key of run `run_id`'s lease.
    pub(crate) fn lease_key(&self, run_id: &str) -> ObjectPath {
        self.root.child(&format!("{run_id}/{LEASE}"))
    }

    /// Writes (or renews) run `run_id`'s lease.
    pub(crate) async fn write_lease(
        &self,
        store: &dyn ObjectStore,
        run_id: &str,
    ) -> object_store::Result<Lease> {
        let lease = Lease::new(run_id);
        let body = serde_json::to_vec(&lease).unwrap_or_default();
        // On local disk another writer's clean-up may remove the (empty) area folder just as
        // the store made it for this lease: try again.
        let mut tries = 0;
        loop {
            tries += 1;
            match store
                .put(&self.lease_key(run_id), PutPayload::from(body.clone()))
                .await
            {
                Ok(_) => return Ok(lease),
                Err(_) if tries < 3 && self.root.is_local() => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads run `run_id`'s lease: `Ok(None)` if there is none, an expired lease if it does
    /// not parse (a write cut short).
    pub(crate) async fn read_lease(
        &self,
        store: &dyn ObjectStore,
        run_id: &str,
    ) -> object_store::Result<Option<Lease>> {
        match store.get(&self.lease_key(run_id)).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                Ok(Some(serde_json::from_slice(&bytes).unwrap_or(Lease {
                    run_id: run_id.to_string(),
                    holder: String::new(),
                    expires_at: String::new(),
                })))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Renews a run's lease in the background while it lives; stops when dropped (a process that
/// dies stops renewing, and its lease expires).
pub(crate) struct LeaseKeeper {
    task: tokio::task::JoinHandle<()>,
    /// Set when renewals were so far apart (the process was stopped, the machine suspended)
    /// that the lease may have expired in between, and a healer taken this writer for dead.
    lapsed: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseKeeper {
    /// Starts renewing `run_id`'s lease in `area` every [`RENEW_EVERY`].
    pub(crate) fn start(store: Arc<dyn ObjectStore>, area: StagingArea, run_id: &str) -> Self {
        let run_id = run_id.to_string();
        let lapsed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&lapsed);
        let task = tokio::spawn(async move {
            loop {
                let asleep = std::time::Instant::now();
                tokio::time::sleep(RENEW_EVERY).await;
                if asleep.elapsed() > LEASE_FOR.saturating_sub(CLOCK_SLACK) {
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                if let Err(e) = area.write_lease(store.as_ref(), &run_id).await {
                    tracing::warn!(
                        "cannot renew the lease {}: {e}",
                        area.root.display_key(&area.lease_key(&run_id))
                    );
                }
            }
        });
        LeaseKeeper { task, lapsed }
    }

    /// Whether the lease may have expired while this writer was not running.
    pub(crate) fn lapsed(&self) -> bool {
        self.lapsed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_is_a_sibling_of_the_output() {
        let out = Location::parse("s3://b/lake/orders/").unwrap();
        let area = StagingArea::of(&out).unwrap();
        assert_eq!(
            area.location().path().as_ref(),
            "lake/_sluice_staging/orders"
        );
        assert_eq!(
            area.key("r1", "u/p=1/f.parquet").as_ref(),
            "lake/_sluice_staging/orders/r1/u/p=1/f.parquet"
        );
        let top = Location::parse("s3://b/orders/").unwrap();
        assert_eq!(
            StagingArea::of(&top).unwrap().location().path().as_ref(),
            "_sluice_staging/orders"
        );
        assert!(StagingArea::of(&Location::parse("s3://b/").unwrap()).is_none());
        let elsewhere = area.with_files(Location::parse("s3://b/tmp/x").unwrap());
        assert_eq!(elsewhere.key("r1", "f").as_ref(), "tmp/x/r1/f");
        assert_eq!(
            elsewhere.lease_key("r1").as_ref(),
            "lake/_sluice_staging/orders/r1/_LEASE"
        );
    }

    #[test]
    fn leases_expire_with_slack() {
        let mut lease = Lease::new("r");
        assert!(!lease.expired());
        assert!(lease.holds_for(Duration::from_secs(60)));
        lease.expires_at = (chrono::Utc::now() - chrono::Duration::seconds(60))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        assert!(!lease.expired(), "within the clock slack");
        assert!(!lease.holds_for(Duration::ZERO));
        lease.expires_at = (chrono::Utc::now() - chrono::Duration::seconds(600))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        assert!(lease.expired());
        lease.expires_at = "garbage".into();
        assert!(lease.expired());
        // Written (expiry minus its length) after a time: its writer lived then.
        let now = chrono::Utc::now();
        let fresh = Lease::new("r");
        assert!(fresh.written_after(Some(now - chrono::Duration::seconds(5))));
        assert!(!fresh.written_after(Some(now + chrono::Duration::seconds(5))));
        assert!(!fresh.written_after(None));
    }
}
