//! Joining one bucket pair: in memory when its build side fits, split again with the next
//! level's hash seed when it does not, and in pieces when one key's rows fill it (a hot key).

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, JoinType, Result};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::spill::get_record_batch_memory_size;
use futures::StreamExt;
use futures::future::BoxFuture;

use super::exec::MAX_DEPTH;
use super::job::{Flow, Job, Output, join_memory};
use super::spill::Bucket;

/// One side of one bucket: its files (one per writer that had rows for it).
pub(super) type Side = Vec<Bucket>;

pub(super) fn side_rows(side: &Side) -> usize {
    side.iter().map(|b| b.rows).sum()
}

pub(super) fn side_bytes(side: &Side) -> usize {
    side.iter().map(|b| b.bytes).sum()
}

/// Join types whose build rows may be joined piecewise against the whole probe side: each
/// build row meets every probe row exactly once, and no probe row's output depends on
/// other build rows.
fn build_splittable(t: JoinType) -> bool {
    matches!(
        t,
        JoinType::Inner
            | JoinType::Left
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark
    )
}

impl Job {
    /// Whether one bucket's side fits this partition's share.
    fn side_fits(&self, side: &Side) -> bool {
        self.fits(side_bytes(side), side_rows(side), self.choice.budget)
    }

    /// Joins one bucket pair at recursion level `depth`.
    pub(super) fn join_bucket<'a>(
        &'a self,
        build: Side,
        probe: Side,
        depth: u32,
        tx: &'a Output<'a>,
    ) -> BoxFuture<'a, Result<Flow>> {
        Box::pin(async move {
            let t = *self.join.join_type();
            // Skip pairs that cannot produce a row.
            let no_build_output = matches!(
                t,
                JoinType::Inner
                    | JoinType::Left
                    | JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::LeftMark
                    | JoinType::RightSemi
            );
            let no_probe_output = matches!(
                t,
                JoinType::Inner
                    | JoinType::Right
                    | JoinType::RightSemi
                    | JoinType::RightAnti
                    | JoinType::RightMark
                    | JoinType::LeftSemi
            );
            let (build_rows, probe_rows) = (side_rows(&build), side_rows(&probe));
            if (build_rows == 0 && (probe_rows == 0 || no_build_output))
                || (probe_rows == 0 && no_probe_output)
            {
                return Ok(Flow::Continue);
            }
            if self.side_fits(&build) {
                self.reservation.free();
                let batches = self.reader(true).load(&build).await?;
                drop(build);
                return self
                    .run_join(
                        self.memory_of(batches, true)?,
                        self.streamed(&probe, false)?,
                        false,
                        tx,
                    )
                    .await;
            }
            self.reservation.free();
            if depth >= MAX_DEPTH || build_rows <= 1 {
                return self.join_pieces(build, probe, tx).await;
            }
            // Too large: split it again with the next level's seed.
            let n = self
                .bucket_count(join_memory(side_bytes(&build), build_rows), 4)
                .min(64);
            let mut writer = self.writer(true, n, depth);
            writer
                .push_stream(self.reader(true).stream_all(&build)?)
                .await?;
            drop(build);
            let builds = writer.finish()?;
            let mut writer = self.writer(false, n, depth);
            writer
                .push_stream(self.reader(false).stream_all(&probe)?)
                .await?;
            drop(probe);
            let probes = writer.finish()?;
            self.metrics.buckets.add(n);
            self.metrics.depth.set_max(depth as usize + 1);
            for (b, p) in builds.into_iter().zip(probes) {
                // All rows in one sub-bucket: they share one hash, so one key; splitting
                // again cannot help.
                let flow = if b.rows == build_rows {
                    self.join_pieces(vec![b], vec![p], tx).await?
                } else {
                    self.join_bucket(vec![b], vec![p], depth + 1, tx).await?
                };
                if flow == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        })
    }

    /// Joins a bucket whose build side does not fit and cannot be split by hash.
    async fn join_pieces(&self, build: Side, probe: Side, tx: &Output<'_>) -> Result<Flow> {
        self.metrics.skewed.add(1);
        let t = *self.join.join_type();
        // The probe side fits: swap the roles.
        if self.side_fits(&probe) {
            self.reservation.free();
            let batches = self.reader(false).load(&probe).await?;
            return self
                .run_join(
                    self.streamed(&build, true)?,
                    self.memory_of(batches, false)?,
                    true,
                    tx,
                )
                .await;
        }
        self.reservation.free();
        // Load one side piece by piece and stream the other past each piece: the build side
        // for join types where build rows are independent, the probe side (swapped roles)
        // for the mirrored types.
        let build_pieces = if build_splittable(t) {
            true
        } else if build_splittable(t.swap()) {
            false
        } else if t == JoinType::Full && !self.join.contains_projection() {
            return Box::pin(self.full_join_pieces(build, probe, tx)).await;
        } else {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "grace hash join: the rows of one join key do not fit in memory on either side \
                 of a {t:?} join (build side {} rows, {} bytes; probe side {} rows, {} bytes); \
                 raise the memory limit",
                side_rows(&build),
                side_bytes(&build),
                side_rows(&probe),
                side_bytes(&probe)
            )));
        };
        let (pieces, other) = if build_pieces {
            (&build, &probe)
        } else {
            (&probe, &build)
        };
        let mut stream = self.reader(build_pieces).stream_all(pieces)?;
        let mut chunk: Vec<RecordBatch> = Vec::new();
        let (mut bytes, mut rows) = (0usize, 0usize);
        while let Some(batch) = stream.next().await.transpose()? {
            let size = get_record_batch_memory_size(&batch);
            if !chunk.is_empty()
                && !self.fits(bytes + size, rows + batch.num_rows(), self.choice.budget)
            {
                let piece = std::mem::take(&mut chunk);
                if self.join_piece(piece, build_pieces, other, tx).await? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
                (bytes, rows) = (0, 0);
            }
            bytes += size;
            rows += batch.num_rows();
            chunk.push(batch);
        }
        if !chunk.is_empty() {
            return self.join_piece(chunk, build_pieces, other, tx).await;
        }
        Ok(Flow::Continue)
    }

    /// A FULL join of a bucket neither side of which fits, in two passes of pieces: the
    /// build side LEFT JOIN the probe side (every build row, matched or not, and every
    /// match), then the probe rows that match no build row (a RIGHT ANTI join, the probe
    /// side in pieces), with NULLs for the build side's columns.
    async fn full_join_pieces(&self, build: Side, probe: Side, tx: &Output<'_>) -> Result<Flow> {
        let schema = self.join.schema();
        let left = self.with_type(JoinType::Left)?;
        if left
            .join_pieces(
                build.clone(),
                probe.clone(),
                &Output::Cast(&schema, tx.sender()),
            )
            .await?
            == Flow::Stop
        {
            return Ok(Flow::Stop);
        }
        let anti = self.with_type(JoinType::RightAnti)?;
        anti.join_pieces(build, probe, &Output::PadLeft(&schema, tx.sender()))
            .await
    }

    /// Joins a piece of one side, loaded, against all of `other`, streamed.
    async fn join_piece(
        &self,
        piece: Vec<RecordBatch>,
        build_pieces: bool,
        other: &Side,
        tx: &Output<'_>,
    ) -> Result<Flow> {
        self.reservation.free();
        let piece = self.memory_of(piece, build_pieces)?;
        let streamed = self.streamed(other, !build_pieces)?;
        if build_pieces {
            self.run_join(piece, streamed, false, tx).await
        } else {
            self.run_join(streamed, piece, true, tx).await
        }
    }
}
