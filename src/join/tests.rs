//! The grace hash join against DataFusion's in-memory hash join on the same data: every join
//! type, single and multi-column keys, with and without a join filter, both null
//! equalities, NULL keys, a hot key; under budgets that force partitioning, re-partitioning
//! and joining in pieces. Also: bucket files are gone after success, failure and cancel.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::{JoinSide, JoinType, NullEquality, Result};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_expr::expressions::{BinaryExpr, Column};
use datafusion::physical_plan::joins::utils::{ColumnIndex, JoinFilter};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use super::exec::{Choice, GraceHashJoinExec, Strategy};

/// Deterministic pseudo-random numbers (no dependency, same data every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A table (k1 BIGINT, k2 VARCHAR, v BIGINT, pad VARCHAR) of `rows` rows in `parts`
/// partitions: k1 in 0..keys with `null_pct` % NULLs and `hot_pct` % of rows on key 7.
fn table(
    prefix: &str,
    rows: usize,
    keys: u64,
    null_pct: u64,
    hot_pct: u64,
    seed: u64,
    parts: usize,
) -> (SchemaRef, Vec<Vec<RecordBatch>>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new(format!("{prefix}k1"), DataType::Int64, true),
        Field::new(format!("{prefix}k2"), DataType::Utf8, true),
        Field::new(format!("{prefix}v"), DataType::Int64, false),
        Field::new(format!("{prefix}pad"), DataType::Utf8, false),
    ]));
    let mut rng = Lcg(seed);
    let mut partitions = vec![Vec::new(); parts];
    let per_batch = 1000;
    for (b, start) in (0..rows).step_by(per_batch).enumerate() {
        let n = per_batch.min(rows - start);
        let mut k1 = Vec::with_capacity(n);
        let mut k2 = Vec::with_capacity(n);
        let mut v = Vec::with_capacity(n);
        let mut pad = Vec::with_capacity(n);
        for i in 0..n {
            let key = if rng.next(100) < hot_pct {
                Some(7)
            } else if rng.next(100) < null_pct {
                None
            } else {
                Some(rng.next(keys) as i64)
            };
            k1.push(key);
            k2.push(key.map(|k| format!("s{}", k % 3)));
            v.push(rng.next(100) as i64);
            pad.push(format!("{prefix}-{}-{}", start + i, "x".repeat(20)));
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(k1)) as ArrayRef,
                Arc::new(StringArray::from(k2)),
                Arc::new(Int64Array::from(v)),
                Arc::new(StringArray::from(pad)),
            ],
        )
        .unwrap();
        partitions[b % parts].push(batch);
    }
    (schema, partitions)
}

fn source(schema: &SchemaRef, parts: &[Vec<RecordBatch>]) -> Arc<dyn ExecutionPlan> {
    MemorySourceConfig::try_new_exec(parts, Arc::clone(schema), None).unwrap()
}

fn col(name: &str, i: usize) -> PhysicalExprRef {
    Arc::new(Column::new(name, i))
}

/// Sorted rows as text, for comparing results regardless of order.
fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let row: Vec<String> = b
                .columns()
                .iter()
                .map(|c| array_value_to_string(c, r).unwrap())
                .collect();
            out.push(row.join("|"));
        }
    }
    out.sort();
    out
}

/// A task context whose spill files go to `dir`.
fn context(dir: &std::path::Path) -> Arc<TaskContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![dir.to_path_buf()])),
        )
        .build_arc()
        .unwrap();
    SessionContext::new_with_config_rt(SessionConfig::new().with_batch_size(1024), runtime)
        .task_ctx()
}

fn files_in(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            n += files_in(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

struct Case {
    join_type: JoinType,
    multi_key: bool,
    filter: bool,
    nulls: NullEquality,
}

/// The plain join (build side in one partition) and the same join as a grace join over the
/// two-partition inputs.
fn plans(
    case: &Case,
    left: &(SchemaRef, Vec<Vec<RecordBatch>>),
    right: &(SchemaRef, Vec<Vec<RecordBatch>>),
    choice: Choice,
) -> Result<(Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>)> {
    let mut on = vec![(col("lk1", 0), col("rk1", 0))];
    if case.multi_key {
        on.push((col("lk2", 1), col("rk2", 1)));
    }
    let filter = case.filter.then(|| {
        // l.v < r.v + 30: keeps about two thirds of the key matches.
        let schema = Arc::new(Schema::new(vec![
            Field::new("lv", DataType::Int64, false),
            Field::new("rv", DataType::Int64, false),
        ]));
        let expr = Arc::new(BinaryExpr::new(
            col("lv", 0),
            Operator::Lt,
            Arc::new(BinaryExpr::new(
                col("rv", 1),
                Operator::Plus,
                Arc::new(datafusion::physical_expr::expressions::Literal::new(
                    datafusion::common::ScalarValue::Int64(Some(30)),
                )),
            )),
        ));
        JoinFilter::new(
            expr,
            vec![
                ColumnIndex {
                    index: 2,
                    side: JoinSide::Left,
                },
                ColumnIndex {
                    index: 2,
                    side: JoinSide::Right,
                },
            ],
            schema,
        )
    });
    let one_part: Vec<Vec<RecordBatch>> = vec![left.1.concat()];
    let plain = HashJoinExec::try_new(
        source(&left.0, &one_part),
        source(&right.0, &right.1),
        on.clone(),
        filter.clone(),
        &case.join_type,
        None,
        PartitionMode::CollectLeft,
        case.nulls,
        false,
    )?;
    let template = HashJoinExec::try_new(
        source(&left.0, &left.1),
        source(&right.0, &right.1),
        on,
        filter,
        &case.join_type,
        None,
        PartitionMode::Partitioned,
        case.nulls,
        false,
    )?;
    let grace = GraceHashJoinExec::try_new(&template, choice)?;
    Ok((Arc::new(plain), Arc::new(grace)))
}

fn metric(plan: &Arc<dyn ExecutionPlan>, name: &str) -> u64 {
    if name == "max_depth" {
        crate::physical::metric_max(plan, name)
    } else {
        crate::physical::metric_sum(plan, name)
    }
}

const ALL_TYPES: [JoinType; 10] = [
    JoinType::Inner,
    JoinType::Left,
    JoinType::Right,
    JoinType::Full,
    JoinType::LeftSemi,
    JoinType::RightSemi,
    JoinType::LeftAnti,
    JoinType::RightAnti,
    JoinType::LeftMark,
    JoinType::RightMark,
];

fn partitioned(buckets: usize, budget: usize) -> Choice {
    Choice {
        strategy: Strategy::Partitioned(buckets),
        reason: "test".into(),
        budget: Some(budget),
        total_budget: Some(budget * 2),
        buckets,
        broadcast: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_join_type_equals_the_in_memory_join_when_partitioned_and_re_partitioned() {
    // 3 % NULL keys: under NullEqualsNull they are one key of ~180 × ~270 rows.
    let left = table("l", 6_000, 1_500, 3, 0, 1, 2);
    let right = table("r", 9_000, 2_000, 3, 0, 2, 2);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let mut checked = 0;
    for join_type in ALL_TYPES {
        for multi_key in [false, true] {
            for filter in [false, true] {
                for nulls in [
                    NullEquality::NullEqualsNothing,
                    NullEquality::NullEqualsNull,
                ] {
                    let case = Case {
                        join_type,
                        multi_key,
                        filter,
                        nulls,
                    };
                    // 4 buckets of ~150 KB build rows each, over a 128 KiB budget: every
                    // bucket is split again.
                    let (plain, grace) = plans(&case, &left, &right, partitioned(4, 128 << 10))
                        .unwrap_or_else(|e| panic!("{join_type:?}: {e}"));
                    let expected = rows(&collect(plain, Arc::clone(&ctx)).await.unwrap());
                    let got = rows(
                        &collect(Arc::clone(&grace), Arc::clone(&ctx))
                            .await
                            .unwrap_or_else(|e| panic!("{join_type:?}: {e}")),
                    );
                    let what = format!(
                        "{join_type:?} multi_key={multi_key} filter={filter} nulls={nulls:?}"
                    );
                    assert!(!expected.is_empty(), "{what}: no rows to compare");
                    assert_eq!(got.len(), expected.len(), "{what}: row count");
                    assert!(got == expected, "{what}: rows differ");
                    assert_eq!(metric(&grace, "ran_partitioned"), 1, "{what}");
                    assert!(
                        metric(&grace, "max_depth") >= 2,
                        "{what}: not re-partitioned"
                    );
                    assert!(
                        metric(&grace, "spilled_bytes") > 0,
                        "{what}: {}",
                        grace.metrics().unwrap()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 80);
    assert_eq!(files_in(dir.path()), 0, "bucket files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_join_stays_in_memory_when_the_build_side_fits() {
    let left = table("l", 3_000, 500, 0, 0, 3, 2);
    let right = table("r", 5_000, 500, 0, 0, 4, 2);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    for join_type in [
        JoinType::Inner,
        JoinType::Left,
        JoinType::Full,
        JoinType::RightAnti,
    ] {
        let case = Case {
            join_type,
            multi_key: false,
            filter: false,
            nulls: NullEquality::NullEqualsNothing,
        };
        let choice = Choice {
            strategy: Strategy::Adaptive,
            reason: "test".into(),
            budget: Some(16 << 20),
            total_budget: Some(32 << 20),
            buckets: 8,
            broadcast: false,
        };
        let (plain, grace) = plans(&case, &left, &right, choice).unwrap();
        let expected = rows(&collect(plain, Arc::clone(&ctx)).await.unwrap());
        let got = rows(&collect(Arc::clone(&grace), Arc::clone(&ctx)).await.unwrap());
        assert!(got == expected, "{join_type:?}");
        assert_eq!(metric(&grace, "ran_in_memory"), 1);
        assert_eq!(metric(&grace, "spilled_bytes"), 0);
    }
    // Over its total budget, the same join partitions.
    let case = Case {
        join_type: JoinType::Left,
        multi_key: false,
        filter: false,
        nulls: NullEquality::NullEqualsNothing,
    };
    let choice = Choice {
        strategy: Strategy::Adaptive,
        reason: "test".into(),
        budget: Some(128 << 10),
        total_budget: Some(256 << 10),
        buckets: 8,
        broadcast: false,
    };
    let (plain, grace) = plans(&case, &left, &right, choice).unwrap();
    let expected = rows(&collect(plain, Arc::clone(&ctx)).await.unwrap());
    let got = rows(&collect(Arc::clone(&grace), Arc::clone(&ctx)).await.unwrap());
    assert!(got == expected);
    assert_eq!(metric(&grace, "ran_partitioned"), 1);
    assert!(metric(&grace, "spilled_bytes") > 0);
    assert_eq!(files_in(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_with_30_percent_of_rows_is_joined_in_pieces() {
    // Key 7 holds ~30 % of both sides: its bucket cannot be split by hash.
    let left = table("l", 3_000, 2_000, 0, 30, 5, 2);
    let right = table("r", 1_500, 2_000, 0, 30, 6, 2);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    for join_type in ALL_TYPES {
        let case = Case {
            join_type,
            multi_key: false,
            filter: true,
            nulls: NullEquality::NullEqualsNothing,
        };
        // The hot key's build rows (~900, ~75 KB) are over the 32 KiB budget; its probe
        // rows (~450) are too, so neither side loads whole.
        let (plain, grace) = plans(&case, &left, &right, partitioned(4, 32 << 10)).unwrap();
        let expected = rows(&collect(plain, Arc::clone(&ctx)).await.unwrap());
        let got = rows(
            &collect(Arc::clone(&grace), Arc::clone(&ctx))
                .await
                .unwrap_or_else(|e| panic!("{join_type:?}: {e}")),
        );
        assert_eq!(got.len(), expected.len(), "{join_type:?}");
        assert!(got == expected, "{join_type:?}");
        assert!(metric(&grace, "skewed_buckets") >= 1, "{join_type:?}");
    }
    assert_eq!(files_in(dir.path()), 0);
}

/// A source whose second partition fails after one batch.
fn failing_source(schema: &SchemaRef, parts: &[Vec<RecordBatch>]) -> Arc<dyn ExecutionPlan> {
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
    use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
    #[derive(Debug)]
    struct Part(SchemaRef, Vec<RecordBatch>, bool);
    impl PartitionStream for Part {
        fn schema(&self) -> &SchemaRef {
            &self.0
        }
        fn execute(
            &self,
            _ctx: Arc<TaskContext>,
        ) -> datafusion::physical_plan::SendableRecordBatchStream {
            let mut items: Vec<Result<RecordBatch>> = self.1.iter().cloned().map(Ok).collect();
            if self.2 {
                items.truncate(1);
                items.push(Err(datafusion::error::DataFusionError::Execution(
                    "injected read failure".into(),
                )));
            }
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.0),
                futures::stream::iter(items),
            ))
        }
    }
    let streams = parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Arc::new(Part(Arc::clone(schema), p.clone(), i == 1)) as Arc<dyn PartitionStream>
        })
        .collect();
    Arc::new(
        StreamingTableExec::try_new(Arc::clone(schema), streams, None, [], false, None).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bucket_file_outlives_a_failure_or_a_cancel() {
    let left = table("l", 6_000, 1_500, 0, 0, 7, 2);
    let right = table("r", 9_000, 2_000, 0, 0, 8, 2);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let on = vec![(col("lk1", 0), col("rk1", 0))];

    // The probe side fails while being partitioned: the build side's files are written.
    let template = HashJoinExec::try_new(
        source(&left.0, &left.1),
        failing_source(&right.0, &right.1),
        on.clone(),
        None,
        &JoinType::Inner,
        None,
        PartitionMode::Partitioned,
        NullEquality::NullEqualsNothing,
        false,
    )
    .unwrap();
    let grace: Arc<dyn ExecutionPlan> =
        Arc::new(GraceHashJoinExec::try_new(&template, partitioned(8, 64 << 10)).unwrap());
    let err = collect(Arc::clone(&grace), Arc::clone(&ctx))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("injected read failure"), "{err}");
    assert!(
        metric(&grace, "spilled_bytes") > 0,
        "the build side was not partitioned"
    );
    drop(grace);
    assert_eq!(files_in(dir.path()), 0, "files left after a failure");

    // Cancelled after the first output batch, with buckets still to join.
    let template = HashJoinExec::try_new(
        source(&left.0, &left.1),
        source(&right.0, &right.1),
        on,
        None,
        &JoinType::Inner,
        None,
        PartitionMode::Partitioned,
        NullEquality::NullEqualsNothing,
        false,
    )
    .unwrap();
    let grace: Arc<dyn ExecutionPlan> =
        Arc::new(GraceHashJoinExec::try_new(&template, partitioned(8, 64 << 10)).unwrap());
    let mut stream = grace.execute(0, Arc::clone(&ctx)).unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    assert!(files_in(dir.path()) > 0, "no bucket files while joining");
    drop(stream);
    drop(grace);
    // The spawned task notices the dropped receiver and is aborted; give it a moment.
    for _ in 0..50 {
        if files_in(dir.path()) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(files_in(dir.path()), 0, "files left after a cancel");
}
