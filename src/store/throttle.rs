//! A store's I/O quotas and counts: [`Throttled`] wraps an object store, paces its requests
//! (`max_requests_per_second`) and bytes (`max_bytes_per_second`, read and written alike),
//! caps the requests in flight (`max_concurrent_requests`: a GET holds its slot until its
//! response arrives; its body is then paced by the bytes), and counts the bytes and the time
//! spent waiting. A quota is one per store (URL and endpoint) in the process, shared by every
//! model, unit and run; the counts are the run's. Ranged reads go through `get_opts` (the
//! trait's own `get_ranges`), one request each.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
    UploadPart,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::StoreQuota;

/// Paces an amount per second: each use reserves its share of time after the uses before
/// it, and waits for its turn (no burst beyond the first use).
#[derive(Debug)]
struct Pacer {
    per_second: f64,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(per_second: f64) -> Pacer {
        Pacer {
            per_second,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Reserves `amount`; how long to wait before using it.
    fn reserve(&self, amount: f64) -> Duration {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let start = (*next).max(now);
        // (Clamped: a pace validated above 0 may still be absurdly slow.)
        let share = (amount / self.per_second).clamp(0.0, 86_400.0);
        *next = start + Duration::from_secs_f64(share);
        start - now
    }
}

/// A quota in use: the store URL and limits it was made for.
type Shared = (String, StoreQuota, Arc<Quota>);

/// One store's quotas, shared by the whole process.
#[derive(Debug)]
pub(crate) struct Quota {
    bytes: Option<Pacer>,
    requests: Option<Pacer>,
    slots: Option<Arc<Semaphore>>,
}

impl Quota {
    /// The quota of the store `key` (its URL and endpoint) in this process: made on first
    /// use from `limits`. Every run of the process then shares it; a pipeline that gives the
    /// same store other limits gets the first ones, with a warning.
    pub(crate) fn shared(key: &str, limits: &StoreQuota) -> Option<Arc<Quota>> {
        if limits.is_unlimited() {
            return None;
        }
        static QUOTAS: OnceLock<Mutex<Vec<Shared>>> = OnceLock::new();
        let mut all = QUOTAS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((_, first, q)) = all.iter().find(|(k, _, _)| k == key) {
            if first != limits {
                tracing::warn!(
                    "store {key}: other I/O quotas than another pipeline's in this process; \
                     the first ones hold ({first:?})"
                );
            }
            return Some(Arc::clone(q));
        }
        let quota = Arc::new(Quota {
            bytes: limits.bytes_per_second.map(|n| Pacer::new(n as f64)),
            requests: limits.requests_per_second.map(Pacer::new),
            slots: limits
                .concurrent_requests
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
        });
        all.push((key.to_string(), limits.clone(), Arc::clone(&quota)));
        Some(quota)
    }
}

/// What a run did with one store.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// Microseconds requests waited for the store's quotas.
    pub(crate) throttled_us: AtomicU64,
}

/// An object store under a [`Quota`] (if it has one), counting into [`Counts`].
pub(crate) struct Throttled {
    inner: Arc<dyn ObjectStore>,
    quota: Option<Arc<Quota>>,
    counts: Arc<Counts>,
}

impl Throttled {
    pub(crate) fn new(
        inner: Arc<dyn ObjectStore>,
        quota: Option<Arc<Quota>>,
        counts: Arc<Counts>,
    ) -> Throttled {
        Throttled {
            inner,
            quota,
            counts,
        }
    }
}

impl fmt::Debug for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Throttled({})", self.inner)
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Throttled({})", self.inner)
    }
}

/// Waits for a request's turn and slot; the slot is held as long as the permit.
async fn request(quota: Option<Arc<Quota>>, counts: &Counts) -> Option<OwnedSemaphorePermit> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let quota = quota?;
    let start = Instant::now();
    // The slot first: a request waiting for one does not use up its turn meanwhile.
    let permit = match &quota.slots {
        Some(s) => Arc::clone(s).acquire_owned().await.ok(),
        None => None,
    };
    if let Some(p) = &quota.requests {
        tokio::time::sleep(p.reserve(1.0)).await;
    }
    waited(counts, start.elapsed());
    permit
}

/// Waits for `n` bytes' turn.
async fn bytes(quota: Option<&Quota>, counts: &Counts, n: usize) {
    if let Some(p) = quota.and_then(|q| q.bytes.as_ref()) {
        let wait = p.reserve(n as f64);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            waited(counts, wait);
        }
    }
}

fn waited(counts: &Counts, d: Duration) {
    counts
        .throttled_us
        .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
}

impl Throttled {
    /// A stream of the inner store's, started once its request has its turn and slot (held
    /// until the stream ends).
    fn gated<T: Send + 'static>(
        &self,
        open: impl FnOnce(Arc<dyn ObjectStore>) -> BoxStream<'static, Result<T>> + Send + 'static,
    ) -> BoxStream<'static, Result<T>> {
        let (inner, quota, counts) = (
            Arc::clone(&self.inner),
            self.quota.clone(),
            Arc::clone(&self.counts),
        );
        stream::once(async move {
            let permit = request(quota, &counts).await;
            open(inner).map(move |item| {
                let _held = &permit;
                item
            })
        })
        .flatten()
        .boxed()
    }
}

#[async_trait]
impl ObjectStore for Throttled {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let _permit = request(self.quota.clone(), &self.counts).await;
        let n = payload.content_length();
        bytes(self.quota.as_deref(), &self.counts, n).await;
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.counts
            .bytes_written
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = {
            let _permit = request(self.quota.clone(), &self.counts).await;
            self.inner.put_multipart_opts(location, opts).await?
        };
        Ok(Box::new(ThrottledUpload {
            upload,
            quota: self.quota.clone(),
            counts: Arc::clone(&self.counts),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        // The slot is held until the response arrives, not while its body is read: a reader
        // that stops reading (a scan waiting for a writer to the same store) must not hold
        // the slots the writer needs.
        let r = {
            let _permit = request(self.quota.clone(), &self.counts).await;
            self.inner.get_opts(location, options).await?
        };
        let payload = match r.payload {
            GetResultPayload::Stream(s) => {
                let (quota, counts) = (self.quota.clone(), Arc::clone(&self.counts));
                GetResultPayload::Stream(
                    s.then(move |chunk| {
                        let (quota, counts) = (quota.clone(), Arc::clone(&counts));
                        async move {
                            if let Ok(b) = &chunk {
                                bytes(quota.as_deref(), &counts, b.len()).await;
                                counts
                                    .bytes_read
                                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                            }
                            chunk
                        }
                    })
                    .boxed(),
                )
            }
            other => other,
        };
        Ok(GetResult { payload, ..r })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.gated(move |inner| inner.delete_stream(locations))
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = prefix.cloned();
        self.gated(move |inner| inner.list(prefix.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (prefix, offset) = (prefix.cloned(), offset.clone());
        self.gated(move |inner| inner.list_with_offset(prefix.as_ref(), &offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let _permit = request(self.quota.clone(), &self.counts).await;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let _permit = request(self.quota.clone(), &self.counts).await;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let _permit = request(self.quota.clone(), &self.counts).await;
        self.inner.rename_opts(from, to, options).await
    }
}

/// A multipart upload whose parts are paced and counted.
#[derive(Debug)]
struct ThrottledUpload {
    upload: Box<dyn MultipartUpload>,
    quota: Option<Arc<Quota>>,
    counts: Arc<Counts>,
}

#[async_trait]
impl MultipartUpload for ThrottledUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = data.content_length();
        let part = self.upload.put_part(data);
        let (quota, counts) = (self.quota.clone(), Arc::clone(&self.counts));
        Box::pin(async move {
            let _permit = request(quota.clone(), &counts).await;
            bytes(quota.as_deref(), &counts, n).await;
            part.await?;
            counts.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
            Ok(())
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let _permit = request(self.quota.clone(), &self.counts).await;
        self.upload.complete().await
    }

    async fn abort(&mut self) -> Result<()> {
        let _permit = request(self.quota.clone(), &self.counts).await;
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[test]
    fn a_pacer_spaces_uses_by_their_share_of_a_second() {
        let p = Pacer::new(1000.0);
        assert_eq!(p.reserve(500.0), Duration::ZERO);
        let second = p.reserve(500.0);
        assert!(
            second > Duration::from_millis(490) && second <= Duration::from_millis(500),
            "{second:?}"
        );
        let third = p.reserve(1000.0);
        assert!(third > Duration::from_millis(990), "{third:?}");
    }

    #[tokio::test]
    async fn bytes_through_a_capped_store_take_their_time_and_are_counted() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let limits = StoreQuota {
            bytes_per_second: Some(1_000_000),
            requests_per_second: None,
            concurrent_requests: Some(2),
        };
        let counts = Arc::new(Counts::default());
        let store = Throttled::new(
            inner,
            Quota::shared("memory://test-bytes", &limits),
            Arc::clone(&counts),
        );
        let start = Instant::now();
        for i in 0..3 {
            let path = Path::from(format!("f{i}"));
            store.put(&path, vec![7u8; 200_000].into()).await.unwrap();
            let back = store.get(&path).await.unwrap().bytes().await.unwrap();
            assert_eq!(back.len(), 200_000);
        }
        // 1.2 MB at 1 MB/s: the first 200 KB go at once.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(950), "{took:?}");
        assert_eq!(counts.bytes_written.load(Ordering::Relaxed), 600_000);
        assert_eq!(counts.bytes_read.load(Ordering::Relaxed), 600_000);
        assert!(counts.throttled_us.load(Ordering::Relaxed) >= 900_000);
    }
}
