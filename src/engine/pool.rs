//! The memory pool a run's operators share: DataFusion's fair pool, with a bounded overdraft
//! for the merges of sorted data.
//!
//! DataFusion counts a sort's rows twice when they fit in memory: the sorter keeps its
//! reservation for the sorted batches while the merge that reads them reserves each batch
//! again (and a merge cannot spill). A sort whose input almost fits its share of the pool
//! therefore fails in that merge, although the rows are in memory once and a smaller
//! input, which spills, succeeds (apache/datafusion#16979: at 64 MiB, 2 threads, a sort of
//! 400 K lineitem rows failed where 6 M succeed). A merge may therefore reserve beyond the
//! pool, up to [`MERGE_OVERDRAFT`] of it in all; everything else keeps the pool's limit,
//! and while a merge is overdrawn the operators that can spill find the pool full and
//! spill.

use datafusion::common::Result;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The share of the pool merges of sorted data may reserve beyond it, in all.
pub const MERGE_OVERDRAFT: f64 = 0.5;

/// Names DataFusion gives the reservations of merges of sorted data (`ExternalSorterMerge[0]`,
/// `SortPreservingMergeExec[0]`).
const MERGES: [&str; 2] = ["ExternalSorterMerge[", "SortPreservingMergeExec["];

/// A pool that lets merges of sorted data overdraw `inner` by a bounded amount.
#[derive(Debug)]
pub struct MergeOverdraftPool<P> {
    inner: P,
    /// The most the pool may hold in all, overdraft included.
    ceiling: usize,
}

impl<P: MemoryPool> MergeOverdraftPool<P> {
    /// `inner` (a pool of `limit` bytes), with merges allowed up to
    /// `limit * (1 + MERGE_OVERDRAFT)` in all.
    pub fn new(inner: P, limit: usize) -> Self {
        MergeOverdraftPool {
            inner,
            ceiling: limit + (limit as f64 * MERGE_OVERDRAFT) as usize,
        }
    }
}

impl<P: std::fmt::Display> std::fmt::Display for MergeOverdraftPool<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (sort merges up to {} bytes)",
            self.inner, self.ceiling
        )
    }
}

fn is_merge(reservation: &MemoryReservation) -> bool {
    let name = reservation.consumer().name();
    MERGES.iter().any(|m| name.starts_with(m))
}

impl<P: MemoryPool + std::fmt::Display> MemoryPool for MergeOverdraftPool<P> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional)
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink)
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        match self.inner.try_grow(reservation, additional) {
            Err(_)
                if is_merge(reservation)
                    && self.inner.reserved().saturating_add(additional) <= self.ceiling =>
            {
                self.inner.grow(reservation, additional);
                Ok(())
            }
            other => other,
        }
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}
