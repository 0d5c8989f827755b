//! The DAG: which models read which tables, in what order they run, and which are selected.
//!
//! Each model's SQL is rendered (`{{ KEY }}` variables), parsed with DataFusion's SQL parser
//! (no regexes over SQL), and its table references resolved against the pipeline's sources
//! and models. CTE names are not table references.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::config::{Materialized, Pipeline};

/// Errors in a model's SQL or in the shape of the DAG (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The SQL does not parse.
    #[error("{file}: SQL syntax error: {message}")]
    Syntax {
        /// The SQL file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file holds no query, or more than one statement, or not a query.
    #[error("{file}: {message}")]
    NotOneQuery {
        /// The SQL file.
        file: PathBuf,
        /// What was found instead.
        message: String,
    },
    /// A table the query reads is neither a source nor a model.
    #[error("{file}: model '{model}' reads unknown table '{table}'{hint}")]
    UnknownTable {
        /// The model.
        model: String,
        /// Its SQL file.
        file: PathBuf,
        /// The unknown name.
        table: String,
        /// A suggestion, e.g. `; did you mean 'orders'?`.
        hint: String,
    },
    /// The models depend on each other in a cycle.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A `{{ KEY }}` has no value.
    #[error(
        "{file}:{line}: variable '{name}' is not set (pass --var {name}=VALUE or set it in [vars])"
    )]
    UnknownVar {
        /// The SQL file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// The variable.
        name: String,
    },
    /// `--select` names no model.
    #[error("--select: no model named '{0}'")]
    UnknownSelection(String),
    /// A query outside a pipeline (`sluice sql`) cannot be planned.
    #[error("{file}: {message}")]
    Query {
        /// The SQL file, or `-e`.
        file: PathBuf,
        /// DataFusion's message.
        message: String,
    },
    /// The query is valid SQL but cannot be planned (unknown column, type error...).
    #[error("{file}: model '{model}': {message}")]
    Sql {
        /// The model.
        model: String,
        /// Its SQL file.
        file: PathBuf,
        /// DataFusion's message.
        message: String,
    },
}

/// One model in the DAG.
#[derive(Debug, Clone)]
pub struct Node {
    /// The model's name.
    pub name: String,
    /// Its SQL with variables substituted.
    pub sql: String,
    /// Its SQL file.
    pub file: PathBuf,
    /// Models it reads.
    pub upstream_models: BTreeSet<String>,
    /// Sources it reads.
    pub sources: BTreeSet<String>,
    /// Table or view.
    pub materialized: Materialized,
}

/// The pipeline's models in dependency order.
#[derive(Debug, Clone)]
pub struct Dag {
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Names in an order where every model comes after the models it reads (ties by name).
    pub order: Vec<String>,
}

/// Substitutes `{{ KEY }}` in `sql`.
pub(crate) fn render(
    sql: &str,
    vars: &BTreeMap<String, String>,
    file: &std::path::Path,
) -> Result<String, PlanError> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = after[..end].trim();
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => {
                let line = sql[..sql.len() - rest.len() + start].matches('\n').count() + 1;
                return Err(PlanError::UnknownVar {
                    file: file.to_path_buf(),
                    line,
                    name: name.to_string(),
                });
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses one SQL query and returns the tables it reads (CTEs excluded), lower-cased as
/// DataFusion normalises unquoted identifiers.
pub(crate) fn table_references(
    sql: &str,
    file: &std::path::Path,
) -> Result<Vec<String>, PlanError> {
    Ok(parse_query(sql, file, false)?.0)
}

/// Parses one SQL query, or `EXPLAIN` of one in any of DataFusion's forms (`EXPLAIN [ANALYZE]
/// [VERBOSE] [FORMAT f] query`, `EXPLAIN (options) query`), for `sluice sql`: whether it is
/// explained.
pub(crate) fn is_explain(sql: &str, file: &std::path::Path) -> Result<bool, PlanError> {
    Ok(parse_query(sql, file, true)?.1)
}

/// Parses `sql` as one query (or, if `explain_allowed`, `EXPLAIN` of one query): the tables
/// the query reads, and whether it is explained.
fn parse_query(
    sql: &str,
    file: &std::path::Path,
    explain_allowed: bool,
) -> Result<(Vec<String>, bool), PlanError> {
    let mut statements =
        DFParser::parse_sql_with_dialect(sql, &GenericDialect {}).map_err(|e| {
            PlanError::Syntax {
                file: file.to_path_buf(),
                message: syntax_message(&e, sql),
            }
        })?;
    if statements.len() != 1 {
        return Err(PlanError::NotOneQuery {
            file: file.to_path_buf(),
            message: format!(
                "expected exactly one query, found {} statements",
                statements.len()
            ),
        });
    }
    let Some(statement) = statements.pop_front() else {
        return Err(PlanError::NotOneQuery {
            file: file.to_path_buf(),
            message: "expected a query, found nothing".into(),
        });
    };
    let (statement, explain) = match statement {
        DFStatement::Explain(e) if explain_allowed => (*e.statement, true),
        other => (other, false),
    };
    let is_query = matches!(
        &statement,
        DFStatement::Statement(s) if matches!(s.as_ref(), datafusion::sql::sqlparser::ast::Statement::Query(_))
    );
    if !is_query {
        return Err(PlanError::NotOneQuery {
            file: file.to_path_buf(),
            message: "a model must be one SELECT query (no DDL or DML)".into(),
        });
    }
    let (tables, _ctes) =
        resolve_table_references(&statement, true).map_err(|e| PlanError::Syntax {
            file: file.to_path_buf(),
            message: e.strip_backtrace(),
        })?;
    Ok((
        tables.iter().map(|t| t.table().to_string()).collect(),
        explain,
    ))
}

/// The parser's message without its wrapping; an error at the end of the input gets the
/// position of the end, so every syntax error has a line.
fn syntax_message(err: &datafusion::error::DataFusionError, sql: &str) -> String {
    use datafusion::error::DataFusionError;
    use datafusion::sql::sqlparser::parser::ParserError;
    let msg = match err {
        DataFusionError::SQL(e, _) => match e.as_ref() {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
            ParserError::RecursionLimitExceeded => "the query nests too deeply".to_string(),
        },
        other => other.strip_backtrace(),
    };
    if msg.contains("Line: ") {
        return msg;
    }
    let trimmed = sql.trim_end();
    let line = trimmed.lines().count().max(1);
    let column = trimmed.lines().last().map_or(0, |l| l.chars().count()) + 1;
    format!("{msg} at Line: {line}, Column: {column}")
}

/// Whether `name` is one of DataFusion's table functions (`range`, `generate_series`...),
/// which the SQL parser reports like tables.
fn is_table_function(name: &str) -> bool {
    datafusion::execution::SessionStateDefaults::default_table_functions()
        .iter()
        .any(|f| f.name() == name)
}

/// The closest known name to `name`, for "did you mean" hints.
fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let best = known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min();
    best.map(|(_, k)| format!("; did you mean '{k}'?"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

impl Dag {
    /// Builds the DAG of a pipeline with the given variables (config `[vars]` merged with
    /// `--var`, the latter winning).
    pub fn build(pipeline: &Pipeline, vars: &BTreeMap<String, String>) -> Result<Dag, PlanError> {
        let mut nodes = BTreeMap::new();
        let known: Vec<String> = pipeline
            .sources
            .keys()
            .chain(pipeline.database_sources.keys())
            .chain(pipeline.models.keys())
            .cloned()
            .collect();
        for (name, model) in &pipeline.models {
            let sql = render(&model.sql, vars, &model.sql_path)?;
            let mut upstream_models = BTreeSet::new();
            let mut sources = BTreeSet::new();
            for table in table_references(&sql, &model.sql_path)? {
                if pipeline.models.contains_key(&table) {
                    upstream_models.insert(table);
                } else if pipeline.is_source(&table) {
                    sources.insert(table);
                } else if is_table_function(&table) {
                    // range(...), generate_series(...): computed, not read.
                } else {
                    return Err(PlanError::UnknownTable {
                        model: name.clone(),
                        file: model.sql_path.clone(),
                        hint: suggest(&table, known.iter()),
                        table,
                    });
                }
            }
            nodes.insert(
                name.clone(),
                Node {
                    name: name.clone(),
                    sql,
                    file: model.sql_path.clone(),
                    upstream_models,
                    sources,
                    materialized: model.materialized,
                },
            );
        }
        let order = topo_order(&nodes)?;
        Ok(Dag { nodes, order })
    }

    /// The models a `--select` list picks, in run order. `name` picks one model, `name+` adds
    /// everything downstream of it, `+name` everything upstream. An empty list picks all.
    pub fn select(&self, selectors: &[String]) -> Result<Vec<String>, PlanError> {
        if selectors.is_empty() {
            return Ok(self.order.clone());
        }
        let mut picked = BTreeSet::new();
        for sel in selectors {
            let sel = sel.trim();
            let (up, rest) = sel.strip_prefix('+').map_or((false, sel), |r| (true, r));
            let (down, name) = rest.strip_suffix('+').map_or((false, rest), |r| (true, r));
            if !self.nodes.contains_key(name) {
                return Err(PlanError::UnknownSelection(name.to_string()));
            }
            picked.insert(name.to_string());
            if down {
                picked.extend(self.downstream(name));
            }
            if up {
                picked.extend(self.upstream(name));
            }
        }
        Ok(self
            .order
            .iter()
            .filter(|n| picked.contains(*n))
            .cloned()
            .collect())
    }

    /// Every model that reads `name`, directly or not.
    pub fn downstream(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            for node in self.nodes.values() {
                if node.upstream_models.contains(&n) && out.insert(node.name.clone()) {
                    frontier.push(node.name.clone());
                }
            }
        }
        out
    }

    /// Every model `name` reads, directly or not.
    pub fn upstream(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut frontier = vec![name.to_string()];
        while let Some(n) = frontier.pop() {
            if let Some(node) = self.nodes.get(&n) {
                for up in &node.upstream_models {
                    if out.insert(up.clone()) {
                        frontier.push(up.clone());
                    }
                }
            }
        }
        out
    }

    /// What a model's query reads once its views are inlined: its sources (those of the views
    /// it reads included), and the table models it reads.
    pub fn inputs_of(&self, name: &str) -> (BTreeSet<String>, Vec<String>) {
        let mut sources = self.nodes[name].sources.clone();
        let mut tables = Vec::new();
        let mut frontier: Vec<&String> = self.nodes[name].upstream_models.iter().collect();
        while let Some(up) = frontier.pop() {
            if self.nodes[up].materialized == Materialized::View {
                sources.extend(self.nodes[up].sources.iter().cloned());
                frontier.extend(self.nodes[up].upstream_models.iter());
            } else {
                tables.push(up.clone());
            }
        }
        (sources, tables)
    }

    /// The sources a model reads, those of the views it reads included.
    pub fn sources_read(&self, name: &str) -> BTreeSet<String> {
        self.inputs_of(name).0
    }

    /// The one source a model whose units are files reads (`by = "file"`), or why it has none.
    pub fn single_source(&self, name: &str) -> Result<String, String> {
        let inputs = self.sources_read(name);
        let mut it = inputs.iter();
        match (it.next(), it.next()) {
            (Some(one), None) => Ok(one.clone()),
            _ => Err(format!(
                "by = \"file\" needs exactly one input source; the model reads {}",
                if inputs.is_empty() {
                    "none".to_string()
                } else {
                    inputs.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
        }
    }

    /// The tables a model's query reads, with their locations: its sources (those of the
    /// views it reads included) and the outputs of the table models upstream. For naming the
    /// scans of its plan.
    pub fn tables_read(&self, pipeline: &Pipeline, name: &str) -> Vec<(String, ListingTableUrl)> {
        let (sources, models) = self.inputs_of(name);
        let sources = sources.into_iter().filter_map(|s| {
            let url = ListingTableUrl::parse(&pipeline.sources.get(&s)?.location).ok()?;
            Some((s, url))
        });
        let models = models.into_iter().filter_map(|m| {
            let url = ListingTableUrl::parse(&pipeline.models.get(&m)?.sink.location).ok()?;
            Some((m, url))
        });
        sources.chain(models).collect()
    }
}

/// Kahn's algorithm with ties broken by name, so the order is stable; on a cycle, names one.
fn topo_order(nodes: &BTreeMap<String, Node>) -> Result<Vec<String>, PlanError> {
    let mut indegree: BTreeMap<&str, usize> = nodes
        .iter()
        .map(|(n, node)| (n.as_str(), node.upstream_models.len()))
        .collect();
    let mut ready: BTreeSet<&str> = indegree
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| *n)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(n) = ready.pop_first() {
        order.push(n.to_string());
        for node in nodes.values() {
            if node.upstream_models.contains(n)
                && let Some(d) = indegree.get_mut(node.name.as_str())
            {
                *d -= 1;
                if *d == 0 {
                    ready.insert(node.name.as_str());
                }
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Walk upstream from a node left in the cycle until a name repeats.
    let stuck: BTreeSet<&str> = indegree
        .iter()
        .filter(|(_, d)| **d > 0)
        .map(|(n, _)| *n)
        .collect();
    let mut path: Vec<String> = Vec::new();
    let mut cur = stuck.first().copied().unwrap_or_default().to_string();
    loop {
        if let Some(pos) = path.iter().position(|p| *p == cur) {
            let mut cycle: Vec<String> = path[pos..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0].clone());
            return Err(PlanError::Cycle(cycle));
        }
        path.push(cur.clone());
        let next = nodes
            .get(&cur)
            .and_then(|n| {
                n.upstream_models
                    .iter()
                    .find(|u| stuck.contains(u.as_str()))
            })
            .cloned();
        match next {
            Some(n) => cur = n,
            None => return Err(PlanError::Cycle(path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn references_exclude_ctes_and_include_joins_and_subqueries() {
        let sql = "WITH x AS (SELECT * FROM a) SELECT * FROM x JOIN b ON x.id = b.id \
                   WHERE b.k IN (SELECT k FROM c)";
        let mut refs = table_references(sql, Path::new("m.sql")).unwrap();
        refs.sort();
        assert_eq!(refs, vec!["a", "b", "c"]);
    }

    /// `sluice sql` takes `EXPLAIN` in each of DataFusion's forms, and a model takes none.
    #[test]
    fn explain_in_any_form_for_sluice_sql_alone() {
        let query = "SELECT k FROM a JOIN b USING (k)";
        for (sql, explained) in [
            (query.to_string(), false),
            (format!("EXPLAIN {query}"), true),
            (format!("explain analyze verbose {query}"), true),
            (format!("EXPLAIN FORMAT TREE {query}"), true),
            (format!("EXPLAIN ANALYZE FORMAT indent {query}"), true),
            (format!("EXPLAIN (ANALYZE, FORMAT tree) {query}"), true),
            (format!("EXPLAIN FORMAT 'pgjson' {query}"), true),
        ] {
            let file = Path::new("q.sql");
            assert_eq!(is_explain(&sql, file).unwrap(), explained, "{sql}");
            let mut refs = parse_query(&sql, file, true).unwrap().0;
            refs.sort();
            assert_eq!(refs, ["a", "b"], "{sql}");
            let model = table_references(&sql, file);
            assert_eq!(model.is_ok(), !explained, "{sql}: {model:?}");
        }
        // What is explained is still one query.
        let err = is_explain("EXPLAIN DROP TABLE a", Path::new("q.sql")).unwrap_err();
        assert!(err.to_string().contains("one SELECT query"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file_and_position() {
        let err = table_references("SELECT (1\nFROM t", Path::new("q/m.sql")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("q/m.sql: SQL syntax error"), "{msg}");
        assert!(msg.contains("Line: 2"), "{msg}");
    }

    #[test]
    fn two_statements_are_rejected() {
        let err = table_references("SELECT 1; SELECT 2", Path::new("m.sql")).unwrap_err();
        assert!(err.to_string().contains("exactly one query"), "{err}");
        let err = table_references("DROP TABLE a", Path::new("m.sql")).unwrap_err();
        assert!(err.to_string().contains("one SELECT"), "{err}");
    }

    #[test]
    fn variables_render_and_unknown_ones_name_the_line() {
        let vars = BTreeMap::from([("day".to_string(), "2024-01-01".to_string())]);
        let out = render("SELECT '{{ day }}'", &vars, Path::new("m.sql")).unwrap();
        assert_eq!(out, "SELECT '2024-01-01'");
        let err = render("SELECT 1\nWHERE x = {{nope}}", &vars, Path::new("m.sql")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "m.sql:2: variable 'nope' is not set (pass --var nope=VALUE or set it in [vars])"
        );
    }

    fn node(name: &str, ups: &[&str]) -> Node {
        Node {
            name: name.into(),
            sql: String::new(),
            file: PathBuf::from(format!("{name}.sql")),
            upstream_models: ups.iter().map(|s| s.to_string()).collect(),
            sources: BTreeSet::new(),
            materialized: Materialized::Table,
        }
    }

    #[test]
    fn order_is_topological_and_cycles_are_named() {
        let nodes: BTreeMap<_, _> = [node("c", &["b"]), node("b", &["a"]), node("a", &[])]
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        assert_eq!(topo_order(&nodes).unwrap(), vec!["a", "b", "c"]);
        let nodes: BTreeMap<_, _> = [
            node("a", &["c"]),
            node("b", &["a"]),
            node("c", &["b"]),
            node("d", &[]),
        ]
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
        let err = topo_order(&nodes).unwrap_err().to_string();
        assert!(err.starts_with("dependency cycle: "), "{err}");
        for m in ["a", "b", "c"] {
            assert!(err.contains(m), "{err}");
        }
        let cycle = err.trim_start_matches("dependency cycle: ");
        assert!(!cycle.contains('d'), "{err}");
    }

    #[test]
    fn select_adds_downstream_and_upstream() {
        let nodes: BTreeMap<_, _> = [
            node("c", &["b"]),
            node("b", &["a"]),
            node("a", &[]),
            node("z", &[]),
        ]
        .into_iter()
        .map(|n| (n.name.clone(), n))
        .collect();
        let order = topo_order(&nodes).unwrap();
        let dag = Dag { nodes, order };
        assert_eq!(dag.select(&["b+".into()]).unwrap(), vec!["b", "c"]);
        assert_eq!(dag.select(&["+b".into()]).unwrap(), vec!["a", "b"]);
        assert_eq!(
            dag.select(&["z".into(), "a".into()]).unwrap(),
            vec!["a", "z"]
        );
        assert!(dag.select(&["nope".into()]).is_err());
    }

    #[test]
    fn suggestions_find_near_names() {
        let known = ["orders".to_string(), "customers".to_string()];
        assert_eq!(suggest("order", known.iter()), "; did you mean 'orders'?");
        assert_eq!(suggest("zzz", known.iter()), "");
    }
}
