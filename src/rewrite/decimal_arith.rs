//! Decimal `+`, `-` and `*` computed with 64-bit operands where the values allow it.
//!
//! arrow computes `Decimal128` arithmetic on 128-bit integers, checking every operation for
//! overflow, one value at a time through a `Result`: in TPC-H q1 (`l_extendedprice * (1 -
//! l_discount) * (1 + l_tax)` over 6 million rows a scale) that was a quarter of the
//! query's CPU time. Yet the values of a `DECIMAL(15,2)` column, and most products of two of
//! them, fit in 64 bits, and the product of two 64-bit values cannot overflow 128 bits: it is
//! one widening multiplication, nothing to check. [`FasterDecimalArithmetic`] replaces each
//! such `BinaryExpr` in projections and aggregate arguments by a [`DecimalArith`], which
//! computes a batch that way when all of its operands fit in 64 bits (checked as it goes),
//! and with arrow's kernel otherwise: the same values, the same type, the same overflow
//! error.
//!
//! (DuckDB avoids the same checks with the columns' statistics; a check per batch needs no
//! statistics and holds whatever the files say.)

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::buffer::{Buffer, MutableBuffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::kernels::numeric::{add_wrapping, mul_wrapping, sub_wrapping};
use datafusion::arrow::datatypes::{
    DECIMAL128_MAX_PRECISION, DECIMAL128_MAX_SCALE, DataType, Decimal128Type, Schema,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::sort_properties::ExprProperties;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::BinaryExpr;
use datafusion::physical_expr_common::datum::apply;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};

/// Replaces decimal `+`, `-` and `*` in projections and aggregate arguments by
/// [`DecimalArith`]. (Not on a Ballista cluster: its executors could not decode it.)
#[derive(Debug, Default)]
pub(crate) struct FasterDecimalArithmetic;

impl PhysicalOptimizerRule for FasterDecimalArithmetic {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
                let schema = projection.input().schema();
                let mut changed = false;
                let mut exprs = Vec::with_capacity(projection.expr().len());
                for e in projection.expr() {
                    let t = faster(&e.expr, &schema)?;
                    changed |= t.transformed;
                    exprs.push(ProjectionExpr::new(t.data, e.alias.clone()));
                }
                if !changed {
                    return Ok(Transformed::no(node));
                }
                let exec = ProjectionExec::try_new_with_schema_metadata(
                    exprs,
                    Arc::clone(projection.input()),
                    &projection.schema(),
                )?;
                // A projection's orderings, partitioning and equalities are found by matching
                // its expressions with its input's (an input sorted by `a * b`): where the new
                // expression loses one, the projection is left as it was.
                if !super::same_properties(exec.properties(), projection.properties()) {
                    return Ok(Transformed::no(node));
                }
                return Ok(Transformed::yes(Arc::new(exec)));
            }
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                let schema = aggregate.input_schema();
                let mut changed = false;
                let mut aggr_exprs = Vec::with_capacity(aggregate.aggr_expr().len());
                for a in aggregate.aggr_expr() {
                    let mut args = Vec::with_capacity(a.expressions().len());
                    let mut any = false;
                    for arg in a.expressions() {
                        let t = faster(&arg, &schema)?;
                        any |= t.transformed;
                        args.push(t.data);
                    }
                    // Rebuilt only when changed, and never one DataFusion reversed to use its
                    // input's order (`array_agg(x ORDER BY y DESC)` over rows sorted by y):
                    // a rebuilt aggregate forgets that it is reversed.
                    let order_by = a.order_bys().iter().map(|s| Arc::clone(&s.expr)).collect();
                    let new = (any && !a.is_reversed())
                        .then(|| a.with_new_expressions(args, order_by))
                        .flatten();
                    match new {
                        Some(new) => {
                            changed = true;
                            aggr_exprs.push(Arc::new(new));
                        }
                        None => aggr_exprs.push(Arc::clone(a)),
                    }
                }
                if !changed {
                    return Ok(Transformed::no(node));
                }
                let exec = aggregate.with_new_aggr_exprs(aggr_exprs);
                return Ok(Transformed::yes(Arc::new(exec)));
            }
            Ok(Transformed::no(node))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_faster_decimal_arithmetic"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `expr` with each decimal `+`, `-` and `*` in it a [`DecimalArith`].
fn faster(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
    Arc::clone(expr).transform_up(|e| Ok(as_decimal_arith(e, schema)))
}

/// `e` as a [`DecimalArith`] if it is a decimal `+`, `-` or `*` whose result arrow's kernel
/// types as the plan does. (An expression whose type cannot be told is left as it is, not
/// an error: the plan was valid before this rule.)
fn as_decimal_arith(
    e: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Transformed<Arc<dyn PhysicalExpr>> {
    let Some(binary) = e.downcast_ref::<BinaryExpr>() else {
        return Transformed::no(e);
    };
    let op = match binary.op() {
        Operator::Plus => Op::Add,
        Operator::Minus => Op::Sub,
        Operator::Multiply => Op::Mul,
        _ => return Transformed::no(e),
    };
    let types = (
        binary.left().data_type(schema).ok(),
        binary.right().data_type(schema).ok(),
    );
    let (Some(DataType::Decimal128(p1, s1)), Some(DataType::Decimal128(p2, s2))) = types else {
        return Transformed::no(e);
    };
    let Some(kernel) = Kernel::new(op, (p1, s1), (p2, s2)) else {
        return Transformed::no(e);
    };
    let planned = e.data_type(schema).ok();
    if planned != Some(DataType::Decimal128(kernel.precision, kernel.scale)) {
        return Transformed::no(e);
    }
    let inner = Arc::new(binary.clone());
    Transformed::yes(Arc::new(DecimalArith { inner, kernel }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Add,
    Sub,
    Mul,
}

/// One operation on two decimal types, and the type of its result, as arrow has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Kernel {
    op: Op,
    /// The operands' types it was planned for (a batch of others goes to arrow's kernel).
    left: (u8, i8),
    right: (u8, i8),
    /// What the left and right operands are multiplied by to reach the result's scale
    /// (`+` and `-`; 1 for `*`).
    left_factor: i64,
    right_factor: i64,
    precision: u8,
    scale: i8,
}

impl Kernel {
    /// The kernel for `op` on `(precision, scale)` operands, with arrow's result type (its
    /// `decimal_op`); `None` where arrow errs or a factor would not fit in 64 bits.
    fn new(op: Op, (p1, s1): (u8, i8), (p2, s2): (u8, i8)) -> Option<Kernel> {
        let pow = |n: i8| u32::try_from(n).ok().and_then(|n| 10i64.checked_pow(n));
        match op {
            Op::Add | Op::Sub => {
                let scale = s1.max(s2);
                let integer = (p1 as i8 - s1).max(p2 as i8 - s2);
                let precision = u8::try_from(scale.saturating_add(integer))
                    .ok()?
                    .saturating_add(1)
                    .min(DECIMAL128_MAX_PRECISION);
                Some(Kernel {
                    op,
                    left: (p1, s1),
                    right: (p2, s2),
                    left_factor: pow(scale - s1)?,
                    right_factor: pow(scale - s2)?,
                    precision,
                    scale,
                })
            }
            Op::Mul => {
                let scale = s1.saturating_add(s2);
                if scale > DECIMAL128_MAX_SCALE {
                    return None;
                }
                Some(Kernel {
                    op,
                    left: (p1, s1),
                    right: (p2, s2),
                    left_factor: 1,
                    right_factor: 1,
                    precision: p1.saturating_add(p2 + 1).min(DECIMAL128_MAX_PRECISION),
                    scale,
                })
            }
        }
    }

    /// The result of `lhs op rhs`, or `None` when an operand is not a decimal array or
    /// non-NULL scalar of 64-bit values (then arrow's kernel decides).
    fn evaluate(&self, lhs: &ColumnarValue, rhs: &ColumnarValue) -> Option<ArrayRef> {
        fn array(v: &ArrayRef, (p, s): (u8, i8)) -> Option<&PrimitiveArray<Decimal128Type>> {
            let v = v.as_primitive_opt::<Decimal128Type>()?;
            (v.data_type() == &DataType::Decimal128(p, s)).then_some(v)
        }
        let scalar = |v: &ScalarValue, (p, s): (u8, i8)| match v {
            ScalarValue::Decimal128(Some(v), vp, vs) if (*vp, *vs) == (p, s) => {
                i64::try_from(*v).ok()
            }
            _ => None,
        };
        let out = match (lhs, rhs) {
            (ColumnarValue::Array(l), ColumnarValue::Array(r)) => {
                let (l, r) = (array(l, self.left)?, array(r, self.right)?);
                if l.len() != r.len() {
                    return None;
                }
                let values =
                    self.each(l.values().iter().copied().zip(r.values().iter().copied()))?;
                PrimitiveArray::<Decimal128Type>::new(
                    values,
                    NullBuffer::union(l.nulls(), r.nulls()),
                )
            }
            (ColumnarValue::Array(l), ColumnarValue::Scalar(r)) => {
                let (l, r) = (array(l, self.left)?, scalar(r, self.right)?);
                let values = self.each(l.values().iter().map(|&v| (v, i128::from(r))))?;
                PrimitiveArray::<Decimal128Type>::new(values, l.nulls().cloned())
            }
            (ColumnarValue::Scalar(l), ColumnarValue::Array(r)) => {
                let (l, r) = (scalar(l, self.left)?, array(r, self.right)?);
                let values = self.each(r.values().iter().map(|&v| (i128::from(l), v)))?;
                PrimitiveArray::<Decimal128Type>::new(values, r.nulls().cloned())
            }
            (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)) => return None,
        };
        Some(Arc::new(
            out.with_precision_and_scale(self.precision, self.scale)
                .ok()?,
        ))
    }

    /// The results for pairs of operands, or `None` if one of them (under a NULL too) does
    /// not fit in 64 bits. No result can overflow: `|l|, |r| < 2^63` and the factors are
    /// below `2^60`. (A loop per operation, each operand widened from 64 bits where it is
    /// multiplied, so that each product is one widening multiply.)
    fn each(
        &self,
        pairs: impl ExactSizeIterator<Item = (i128, i128)>,
    ) -> Option<ScalarBuffer<i128>> {
        let (a, b) = (self.left_factor, self.right_factor);
        let times = |x: i64, y: i64| i128::from(x) * i128::from(y);
        match self.op {
            Op::Add => narrowed(pairs, |l, r| times(l, a) + times(r, b)),
            Op::Sub => narrowed(pairs, |l, r| times(l, a) - times(r, b)),
            Op::Mul => narrowed(pairs, times),
        }
    }
}

/// `f` of each pair of operands narrowed to 64 bits, or `None` if one of them did not fit.
#[inline(always)]
fn narrowed(
    pairs: impl ExactSizeIterator<Item = (i128, i128)>,
    f: impl Fn(i64, i64) -> i128,
) -> Option<ScalarBuffer<i128>> {
    // In an arrow buffer (64-byte aligned), as arrow's kernels allocate: a `Vec` of the same
    // size came back from the allocator as fresh pages batch after batch (TPC-H q1 at scale
    // 10: 0.65 to 2.2 million page faults against 50 thousand, and seconds of system time).
    let mut out = MutableBuffer::new(pairs.len() * std::mem::size_of::<i128>());
    // Whether every operand fit: checked once at the end, so the loop has no branch.
    let mut fit = true;
    out.extend(pairs.map(|(l, r)| {
        let (nl, nr) = (l as i64, r as i64);
        fit &= i128::from(nl) == l && i128::from(nr) == r;
        f(nl, nr)
    }));
    fit.then(|| ScalarBuffer::from(Buffer::from(out)))
}

/// A decimal `+`, `-` or `*` computed with 64-bit operands when a batch's values fit in
/// them, and by arrow's kernel otherwise. Its type, ordering and bounds are the `BinaryExpr`'s
/// it replaces; it is displayed in parentheses.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DecimalArith {
    inner: Arc<BinaryExpr>,
    kernel: Kernel,
}

/// In parentheses: `BinaryExpr` puts them only around a child it knows to be a `BinaryExpr`,
/// so `(a + b) / c` would otherwise read `a + b / c`.
impl fmt::Display for DecimalArith {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({})", self.inner)
    }
}

impl PhysicalExpr for DecimalArith {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let lhs = self.inner.left().evaluate(batch)?;
        let rhs = self.inner.right().evaluate(batch)?;
        if let Some(array) = self.kernel.evaluate(&lhs, &rhs) {
            return Ok(ColumnarValue::Array(array));
        }
        // What `BinaryExpr` calls for decimals (which arrow checks for overflow either way).
        match self.kernel.op {
            Op::Add => apply(&lhs, &rhs, add_wrapping),
            Op::Sub => apply(&lhs, &rhs, sub_wrapping),
            Op::Mul => apply(&lhs, &rhs, mul_wrapping),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![self.inner.left(), self.inner.right()]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let inner = Arc::clone(&self.inner).with_new_children(children)?;
        match inner.downcast_ref::<BinaryExpr>() {
            Some(binary) => Ok(Arc::new(DecimalArith {
                inner: Arc::new(binary.clone()),
                kernel: self.kernel,
            })),
            None => Ok(inner),
        }
    }

    fn evaluate_bounds(&self, children: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(children)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        children: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, children)
    }

    fn get_properties(&self, children: &[ExprProperties]) -> Result<ExprProperties> {
        self.inner.get_properties(children)
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(")?;
        self.inner.fmt_sql(f)?;
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    //! The expression against arrow's kernel (through `BinaryExpr`) on random decimals of
    //! every width, and the rule against DataFusion's answers.

    use datafusion::arrow::array::Decimal128Array;
    use datafusion::arrow::datatypes::Field;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_expr::expressions::{Column, Literal};
    use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const TYPES: [(u8, i8); 11] = [
        (5, -2),
        (38, 20),
        (15, 2),
        (12, 2),
        (20, 0),
        (5, 3),
        (18, 0),
        (23, 2),
        (38, 4),
        (38, 10),
        (38, 0),
    ];

    /// A value of a decimal of `precision`: mostly small, sometimes near 64 bits' edge,
    /// sometimes as large as the precision allows.
    fn value(rng: &mut StdRng, precision: u8) -> i128 {
        let max = 10i128.pow(u32::from(precision)) - 1;
        let v = match rng.random_range(0..10) {
            0 => i128::from(i64::MAX) - rng.random_range(-2..3),
            1 => i128::from(i64::MIN) + rng.random_range(-2..3),
            2 => rng.random_range(-max..=max),
            _ => rng.random_range(-1_000_000..1_000_000),
        };
        v.clamp(-max, max)
    }

    fn operand(rng: &mut StdRng, n: usize, (p, s): (u8, i8), wide: bool) -> Decimal128Array {
        let values: Decimal128Array = (0..n + 3)
            .map(|_| {
                (!rng.random_bool(0.1)).then(|| {
                    if wide {
                        value(rng, p)
                    } else {
                        rng.random_range(-1_000_000..1_000_000)
                    }
                })
            })
            .collect();
        // Sometimes a value past 64 bits under a NULL (which arrow's kernel never reads).
        let values = match rng.random_bool(0.2) && values.null_count() > 0 {
            true => {
                let nulls = values.nulls().cloned();
                let raw = values.values().iter().map(|&v| {
                    if rng.random_bool(0.5) {
                        i128::MAX / 3
                    } else {
                        v
                    }
                });
                Decimal128Array::new(raw.collect(), nulls)
            }
            false => values,
        };
        // A slice, as a filter's or a join's output may be.
        let at = rng.random_range(0..3);
        values.slice(at, n).with_precision_and_scale(p, s).unwrap()
    }

    /// On random operands (arrays and scalars, NULLs among them, values of up to 128 bits),
    /// the result and the error are arrow's; and the 64-bit path is the one taken when the
    /// values are small.
    #[test]
    fn decimal_arith_gives_arrows_results() {
        let mut fast = 0;
        for seed in 0..600u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let op = [Operator::Plus, Operator::Minus, Operator::Multiply][seed as usize % 3];
            let (lt, rt) = (
                TYPES[rng.random_range(0..TYPES.len())],
                TYPES[rng.random_range(0..TYPES.len())],
            );
            let n = rng.random_range(0..300);
            let wide = rng.random_bool(0.4);
            let (l, r) = (
                operand(&mut rng, n, lt, wide),
                operand(&mut rng, n, rt, wide),
            );
            let schema = Arc::new(Schema::new(vec![
                Field::new("l", l.data_type().clone(), true),
                Field::new("r", r.data_type().clone(), true),
            ]));
            let batch =
                RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(l), Arc::new(r)]).unwrap();
            let side = |rng: &mut StdRng, name: &str, i: usize, (p, s): (u8, i8)| {
                let e: Arc<dyn PhysicalExpr> = match rng.random_range(0..6) {
                    0 => Arc::new(Literal::new(ScalarValue::Decimal128(None, p, s))),
                    1 => {
                        let v = if wide { value(rng, p) } else { 100 };
                        Arc::new(Literal::new(ScalarValue::Decimal128(Some(v), p, s)))
                    }
                    _ => Arc::new(Column::new(name, i)),
                };
                e
            };
            let (le, re) = (side(&mut rng, "l", 0, lt), side(&mut rng, "r", 1, rt));
            let binary: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(le, op, re));
            let ours = faster(&binary, &schema).unwrap();
            let Ok(want) = binary.data_type(&schema) else {
                continue;
            };
            if !ours.transformed {
                // Only where arrow rejects the types, or a factor exceeds 64 bits.
                assert!(
                    binary.evaluate(&batch).is_err() || lt.1.abs_diff(rt.1) > 18,
                    "{lt:?} {op} {rt:?} not rewritten"
                );
                continue;
            }
            let ours = ours.data;
            assert_eq!(ours.data_type(&schema).unwrap(), want);
            assert_eq!(ours.to_string(), format!("({binary})"));
            let theirs = binary.evaluate(&batch);
            let got = ours.evaluate(&batch);
            match (&got, &theirs) {
                (Ok(g), Ok(t)) => {
                    let (g, t) = (g.to_array(n).unwrap(), t.to_array(n).unwrap());
                    assert_eq!(g.data_type(), t.data_type(), "seed {seed}");
                    assert_eq!(&g, &t, "seed {seed}: {binary}");
                }
                (Err(g), Err(t)) => assert_eq!(g.to_string(), t.to_string(), "seed {seed}"),
                _ => panic!("seed {seed}: {binary}: {got:?} against {theirs:?}"),
            }
            let arith = ours.downcast_ref::<DecimalArith>().unwrap();
            let (l, r) = (
                arith.inner.left().evaluate(&batch).unwrap(),
                arith.inner.right().evaluate(&batch).unwrap(),
            );
            if arith.kernel.evaluate(&l, &r).is_some() {
                fast += 1;
                // Operands of other types than planned go to arrow's kernel.
                let other = Kernel {
                    left: (lt.0, lt.1 - 1),
                    ..arith.kernel
                };
                assert!(other.evaluate(&l, &r).is_none(), "seed {seed}");
            }
        }
        assert!(fast > 200, "64-bit path taken {fast} times");
    }

    /// A session of `partitions` partitions and batches of 64 rows, with sluice's physical
    /// rules (at their places) if `faster`, else DataFusion's alone.
    fn session(faster: bool, partitions: usize) -> SessionContext {
        let config = SessionConfig::new()
            .with_target_partitions(partitions)
            .with_batch_size(64);
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if faster {
            state = state.with_physical_optimizer_rules(super::super::physical_rules(
                PhysicalOptimizer::new().rules,
                None,
                false,
            ));
        }
        SessionContext::new_with_state(state.build())
    }

    /// A product of products, sums of them and an aggregate over them give DataFusion's
    /// answers with the rule, which replaced the arithmetic in the projection and the
    /// aggregate.
    #[tokio::test]
    async fn the_rule_gives_datafusions_answers() {
        let session = |faster| session(faster, 2);
        let sql = "SELECT k, SUM(price * (1 - discount)) AS a, \
                   SUM(price * (1 - discount) * (1 + tax)) AS b, AVG(price + tax) AS c, \
                   MAX(price - big) AS d, COUNT(*) AS n \
                   FROM t GROUP BY k ORDER BY k";
        let rows = "SELECT price * (1 - discount) AS a, big * tax AS b, price - tax AS c FROM t";
        for seed in 0..8u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let n = 2_000;
            let decimals = |rng: &mut StdRng, p: u8, s: i8, max: i128| {
                let a: Decimal128Array = (0..n)
                    .map(|_| (!rng.random_bool(0.05)).then(|| rng.random_range(-max..=max)))
                    .collect();
                Arc::new(a.with_precision_and_scale(p, s).unwrap()) as ArrayRef
            };
            let keys: datafusion::arrow::array::Int32Array =
                (0..n).map(|_| Some(rng.random_range(0..5))).collect();
            let batch = RecordBatch::try_from_iter(vec![
                ("k", Arc::new(keys) as ArrayRef),
                ("price", decimals(&mut rng, 15, 2, 10_000_000)),
                ("discount", decimals(&mut rng, 15, 2, 10)),
                ("tax", decimals(&mut rng, 15, 2, 8)),
                // Past 64 bits in some rows: those batches take arrow's kernel.
                ("big", decimals(&mut rng, 38, 2, 10i128.pow(30))),
            ])
            .unwrap();
            let (ours, theirs) = (session(true), session(false));
            for ctx in [&ours, &theirs] {
                let table = datafusion::datasource::MemTable::try_new(
                    batch.schema(),
                    vec![vec![batch.slice(0, 900)], vec![batch.slice(900, n - 900)]],
                )
                .unwrap();
                ctx.register_table("t", Arc::new(table)).unwrap();
            }
            for q in [sql, rows] {
                let got = ours.sql(q).await.unwrap();
                let plan = got.clone().create_physical_plan().await.unwrap();
                let mut rewritten = 0;
                plan.apply(|node| {
                    let exprs: Vec<Arc<dyn PhysicalExpr>> =
                        if let Some(p) = node.downcast_ref::<ProjectionExec>() {
                            p.expr().iter().map(|e| Arc::clone(&e.expr)).collect()
                        } else if let Some(a) = node.downcast_ref::<AggregateExec>() {
                            a.aggr_expr().iter().flat_map(|a| a.expressions()).collect()
                        } else {
                            vec![]
                        };
                    for e in exprs {
                        e.apply(|e| {
                            rewritten += usize::from(e.is::<DecimalArith>());
                            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                        })?;
                    }
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })
                .unwrap();
                assert!(
                    rewritten >= 3,
                    "{rewritten} rewritten in {q}\n{}",
                    datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
                );
                let got = got.collect().await.unwrap();
                let want = theirs.sql(q).await.unwrap().collect().await.unwrap();
                let format = datafusion::arrow::util::pretty::pretty_format_batches;
                assert_eq!(
                    format(&got).unwrap().to_string(),
                    format(&want).unwrap().to_string(),
                    "seed {seed}: {q}"
                );
            }
        }
    }

    /// Where the rewritten plan would lose what DataFusion planned on (an aggregate reversed
    /// to use its input's order, a projection's input sorted by the product), the node is
    /// left as it was; nested arithmetic is displayed with its parentheses.
    #[tokio::test]
    async fn orders_and_reversed_aggregates_are_kept() {
        use datafusion::physical_plan::displayable;
        use datafusion::prelude::col;

        let session = |faster| session(faster, 1);
        let mut rng = StdRng::seed_from_u64(7);
        let n = 500;
        let decimals = |rng: &mut StdRng| {
            let a: Decimal128Array = (0..n).map(|_| Some(rng.random_range(1..100_000))).collect();
            Arc::new(a.with_precision_and_scale(15, 2).unwrap()) as ArrayRef
        };
        let batch = RecordBatch::try_from_iter(vec![
            (
                "x",
                Arc::new(datafusion::arrow::array::Int32Array::from_iter_values(
                    (0..n).map(|_| rng.random_range(0..1000)),
                )) as ArrayRef,
            ),
            (
                "y",
                Arc::new(datafusion::arrow::array::Int32Array::from_iter_values(0..n)) as _,
            ),
            ("price", decimals(&mut rng)),
            ("qty", decimals(&mut rng)),
        ])
        .unwrap();
        let queries = [
            "SELECT ARRAY_AGG(price * qty ORDER BY y DESC) AS xs, SUM(price) AS s FROM t",
            "SELECT v, SUM(v) OVER (ORDER BY v ROWS UNBOUNDED PRECEDING) AS w \
             FROM (SELECT price * qty AS v FROM (SELECT * FROM t ORDER BY price * qty LIMIT 10))",
            "SELECT (price + qty) / qty AS r, y FROM t ORDER BY y",
        ];
        let (ours, theirs) = (session(true), session(false));
        for ctx in [&ours, &theirs] {
            let table = datafusion::datasource::MemTable::try_new(
                batch.schema(),
                vec![vec![batch.clone()]],
            )
            .unwrap()
            .with_sort_order(vec![vec![col("y").sort(true, false)]]);
            ctx.register_table("t", Arc::new(table)).unwrap();
        }
        let format = datafusion::arrow::util::pretty::pretty_format_batches;
        for q in queries {
            let got = ours.sql(q).await.unwrap();
            let plan = got.clone().create_physical_plan().await.unwrap();
            let plan = displayable(plan.as_ref()).indent(true).to_string();
            let got = got.collect().await.unwrap();
            let want = theirs.sql(q).await.unwrap().collect().await.unwrap();
            assert_eq!(
                format(&got).unwrap().to_string(),
                format(&want).unwrap().to_string(),
                "{q}\n{plan}"
            );
            if q.contains("/ qty") {
                assert!(plan.contains(") / qty@"), "{plan}");
            }
        }
    }
}
