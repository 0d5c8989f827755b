//! Column lineage from a model's logical plan: for each output column, the columns of the
//! tables it reads that its value is computed from (through projections, aggregates, joins,
//! unions and windows). A column used only to filter or join rows is not a source of a value.

use std::collections::BTreeSet;

use datafusion::logical_expr::{Expr, JoinType, LogicalPlan};

/// A column of a table the plan scans: (table, column).
pub(crate) type Source = (String, String);

/// Whether a `SubqueryAlias` of this name over this plan is a table (a view the planner
/// inlined), not an alias or a CTE of the query's own.
pub(crate) type IsTable<'a> = &'a dyn Fn(&str, &LogicalPlan) -> bool;

/// For each output field of `plan`, in order, the table columns it is computed from. A
/// table read through a view the planner inlined counts as the table.
pub(crate) fn column_sources(plan: &LogicalPlan, is_table: IsTable<'_>) -> Vec<BTreeSet<Source>> {
    let column_sources = |p: &LogicalPlan| column_sources(p, is_table);
    match plan {
        LogicalPlan::SubqueryAlias(a) if is_table(a.alias.table(), &a.input) => {
            let table = a.alias.table().to_string();
            plan.schema()
                .fields()
                .iter()
                .map(|f| BTreeSet::from([(table.clone(), f.name().clone())]))
                .collect()
        }
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.table().to_string();
            scan.projected_schema
                .fields()
                .iter()
                .map(|f| BTreeSet::from([(table.clone(), f.name().clone())]))
                .collect()
        }
        LogicalPlan::Projection(p) => {
            let input = column_sources(&p.input);
            p.expr.iter().map(|e| refs(e, &p.input, &input)).collect()
        }
        LogicalPlan::Aggregate(a) => {
            let input = column_sources(&a.input);
            // The output: each grouping expression (a grouping set's, each once), the
            // grouping id of a grouping set, then the aggregates.
            let mut grouping_set = false;
            let groups: Vec<&Expr> = a
                .group_expr
                .iter()
                .flat_map(|e| match e {
                    Expr::GroupingSet(set) => {
                        grouping_set = true;
                        set.distinct_expr()
                    }
                    other => vec![other],
                })
                .collect();
            let mut out: Vec<BTreeSet<Source>> =
                groups.iter().map(|e| refs(e, &a.input, &input)).collect();
            if grouping_set {
                out.push(BTreeSet::new());
            }
            out.extend(a.aggr_expr.iter().map(|e| refs(e, &a.input, &input)));
            out.resize(plan.schema().fields().len(), BTreeSet::new());
            out
        }
        LogicalPlan::Window(w) => {
            let mut out = column_sources(&w.input);
            let input = out.clone();
            out.extend(w.window_expr.iter().map(|e| refs(e, &w.input, &input)));
            out
        }
        LogicalPlan::Join(j) => {
            let left = column_sources(&j.left);
            let right = column_sources(&j.right);
            let mut out = match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => left,
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => right,
                _ => left.into_iter().chain(right).collect(),
            };
            out.resize(plan.schema().fields().len(), BTreeSet::new());
            out
        }
        LogicalPlan::Union(u) => {
            let mut out = vec![BTreeSet::new(); plan.schema().fields().len()];
            for input in &u.inputs {
                for (i, s) in column_sources(input.as_ref()).into_iter().enumerate() {
                    if let Some(o) = out.get_mut(i) {
                        o.extend(s);
                    }
                }
            }
            out
        }
        other => {
            let inputs = other.inputs();
            let width = other.schema().fields().len();
            // One input of the same width (a filter, a sort, a limit, a distinct, an alias):
            // the fields pass through.
            if let [input] = inputs.as_slice()
                && input.schema().fields().len() == width
            {
                return column_sources(input);
            }
            // Otherwise, each field from every column read (a plan shape not modelled).
            let all: BTreeSet<Source> = inputs
                .iter()
                .flat_map(|i| column_sources(i).into_iter().flatten())
                .collect();
            vec![all; width]
        }
    }
}

/// The table columns `expr`, over `input` (whose fields come from `sources`), reads.
fn refs(expr: &Expr, input: &LogicalPlan, sources: &[BTreeSet<Source>]) -> BTreeSet<Source> {
    expr.column_refs()
        .into_iter()
        .filter_map(|c| input.schema().index_of_column(c).ok())
        .filter_map(|i| sources.get(i))
        .flatten()
        .cloned()
        .collect()
}

/// The tables `plan` reads (in subqueries too), inlined views that `is_table` names counted
/// as themselves.
pub(crate) fn tables(plan: &LogicalPlan, is_table: IsTable<'_>, out: &mut BTreeSet<String>) {
    match plan {
        LogicalPlan::TableScan(scan) => {
            out.insert(scan.table_name.table().to_string());
        }
        LogicalPlan::SubqueryAlias(a) if is_table(a.alias.table(), &a.input) => {
            out.insert(a.alias.table().to_string());
        }
        other => {
            for input in other.inputs() {
                tables(input, is_table, out);
            }
            let _ = other.apply_subqueries(|sub| {
                tables(sub, is_table, out);
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            });
        }
    }
}
