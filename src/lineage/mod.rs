//! OpenLineage run events (spec 2-0-2) for a run of a pipeline, as Marquez and other
//! collectors take them: `START` when the run starts, `RUNNING` as each model is published,
//! and `COMPLETE`, `FAIL` or `ABORT` at its end. The job is the pipeline; the datasets are its
//! sources (inputs) and its models' outputs (outputs), named as OpenLineage names them (the
//! store's URL or the database server as the namespace, the path or table as the name), with
//! their schemas, the outputs' row and file counts, and each output column's lineage from the
//! model's logical plan. Sent to a JSON-lines file and/or over HTTP (`[lineage]`); a failure
//! to send is a warning: lineage never fails a run.

mod columns;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;

use datafusion::logical_expr::LogicalPlan;
use serde_json::{Value, json};

use crate::config::{LineageConfig, Pipeline};
use crate::report::{ModelReport, RunReport};
use crate::status::{ModelStatus, RunStatus};
use columns::Source;

/// The spec the events follow.
const SCHEMA_URL: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";
/// Who produced them.
const PRODUCER: &str = concat!(
    "https://github.com/sluice-engine/sluice/tree/v",
    env!("CARGO_PKG_VERSION")
);

/// A dataset: OpenLineage's namespace and name, and its columns (name, type).
#[derive(Debug, Clone)]
struct Dataset {
    namespace: String,
    name: String,
    fields: Vec<(String, String)>,
}

/// What the events of a pipeline's runs say, worked out once when the run is prepared.
#[derive(Debug, Default)]
pub(crate) struct Lineage {
    config: LineageConfig,
    pipeline: String,
    /// Every source and model output, by table name.
    datasets: BTreeMap<String, Dataset>,
    /// The tables each model reads (views seen through).
    reads: BTreeMap<String, BTreeSet<String>>,
    /// Each model's output columns and the table columns each is computed from.
    columns: BTreeMap<String, Vec<(String, BTreeSet<Source>)>>,
}

impl Lineage {
    /// Lineage for `pipeline`, if it has a `[lineage]`.
    pub(crate) fn new(pipeline: &Pipeline) -> Option<Lineage> {
        let config = pipeline.lineage.clone()?;
        let mut datasets = BTreeMap::new();
        for (name, s) in &pipeline.sources {
            datasets.insert(name.clone(), location_dataset(&s.location));
        }
        for (name, s) in &pipeline.database_sources {
            if let Some(db) = pipeline.databases.get(&s.database) {
                let table = match &s.relation {
                    crate::config::Relation::Table(t) => t.clone(),
                    crate::config::Relation::Query(_) => name.clone(),
                };
                datasets.insert(name.clone(), database_dataset(db, &table));
            }
        }
        for (name, m) in &pipeline.models {
            if m.materialized == crate::config::Materialized::View {
                continue;
            }
            let dataset = match (
                &m.sink.database,
                pipeline
                    .databases
                    .get(m.sink.database.as_ref().map_or("", |d| d.database.as_str())),
            ) {
                (Some(sink), Some(db)) => database_dataset(db, &sink.table),
                _ => location_dataset(&m.sink.location),
            };
            datasets.insert(name.clone(), dataset);
        }
        Some(Lineage {
            config,
            pipeline: pipeline.name.clone(),
            datasets,
            ..Lineage::default()
        })
    }

    /// The tables that are datasets: the sources and the written models.
    pub(crate) fn tables(&self) -> Vec<String> {
        self.datasets.keys().cloned().collect()
    }

    /// Records the schema of table `name` (a source or a model's output).
    pub(crate) fn set_schema(&mut self, name: &str, schema: &datafusion::arrow::datatypes::Schema) {
        if let Some(d) = self.datasets.get_mut(name) {
            d.fields = schema
                .fields()
                .iter()
                .map(|f| (f.name().clone(), f.data_type().to_string()))
                .collect();
        }
    }

    /// Records what model `name` reads and where each of its columns comes from, from its
    /// plan; views (planned before, in the DAG's order) are seen through. `registered` is
    /// the plan each table of the engine that is a view stands for: the planner inlines
    /// those under an alias of their name, which counts as the table only over that very
    /// plan (not a query's own alias or CTE of the same name).
    pub(crate) fn plan_model(
        &mut self,
        name: &str,
        plan: &LogicalPlan,
        registered: &BTreeMap<String, LogicalPlan>,
    ) {
        let datasets = &self.datasets;
        let is_table = |t: &str, input: &LogicalPlan| {
            t != name && datasets.contains_key(t) && registered.get(t) == Some(input)
        };
        let mut scanned = BTreeSet::new();
        columns::tables(plan, &is_table, &mut scanned);
        let reads: BTreeSet<String> = scanned
            .into_iter()
            .flat_map(|t| match self.reads.get(&t) {
                Some(inner) if !self.datasets.contains_key(&t) => inner.clone(),
                _ => BTreeSet::from([t]),
            })
            .collect();
        let outputs = plan.schema().fields();
        let columns = columns::column_sources(plan, &is_table)
            .into_iter()
            .zip(outputs.iter())
            .map(|(sources, field)| {
                let seen: BTreeSet<Source> = sources
                    .into_iter()
                    .flat_map(|(table, column)| self.through_views(table, column))
                    .collect();
                (field.name().clone(), seen)
            })
            .collect();
        self.reads.insert(name.to_string(), reads);
        self.columns.insert(name.to_string(), columns);
    }

    /// A column of table `table`: itself if the table is a dataset, else (a view) the
    /// columns it is computed from.
    fn through_views(&self, table: String, column: String) -> BTreeSet<Source> {
        if self.datasets.contains_key(&table) {
            return BTreeSet::from([(table, column)]);
        }
        self.columns
            .get(&table)
            .and_then(|cols| cols.iter().find(|(c, _)| *c == column))
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    fn dataset_json(&self, table: &str, extra: Option<(&str, Value)>) -> Option<Value> {
        let d = self.datasets.get(table)?;
        let mut facets = serde_json::Map::new();
        if !d.fields.is_empty() {
            facets.insert(
                "schema".into(),
                facet(
                    "https://openlineage.io/spec/facets/1-1-1/SchemaDatasetFacet.json#/$defs/SchemaDatasetFacet",
                    json!({"fields": d.fields.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>()}),
                ),
            );
        }
        if let Some(columns) = self.columns.get(table).filter(|_| extra.is_some()) {
            let fields: serde_json::Map<String, Value> = columns
                .iter()
                .map(|(column, sources)| {
                    let inputs: Vec<Value> = sources
                        .iter()
                        .filter_map(|(t, c)| {
                            let src = self.datasets.get(t)?;
                            Some(json!({"namespace": src.namespace, "name": src.name, "field": c}))
                        })
                        .collect();
                    (column.clone(), json!({"inputFields": inputs}))
                })
                .collect();
            facets.insert(
                "columnLineage".into(),
                facet(
                    "https://openlineage.io/spec/facets/1-2-0/ColumnLineageDatasetFacet.json#/$defs/ColumnLineageDatasetFacet",
                    json!({"fields": fields}),
                ),
            );
        }
        let mut out = json!({"namespace": d.namespace, "name": d.name, "facets": facets});
        if let Some((key, value)) = extra {
            out[key] = value;
        }
        Some(out)
    }

    /// The inputs and outputs of `models`: what they read (not what the run itself writes
    /// first) and what they write, with `stats` per written model when it has them.
    fn datasets_of(
        &self,
        models: &[&str],
        stats: &BTreeMap<&str, &ModelReport>,
    ) -> (Vec<Value>, Vec<Value>) {
        let outputs: BTreeSet<&str> = models
            .iter()
            .copied()
            .filter(|m| self.datasets.contains_key(*m))
            .collect();
        let inputs: BTreeSet<&str> = models
            .iter()
            .filter_map(|m| self.reads.get(*m))
            .flatten()
            .map(String::as_str)
            .filter(|t| !outputs.contains(t))
            .collect();
        let inputs = inputs
            .into_iter()
            .filter_map(|t| self.dataset_json(t, None))
            .collect();
        let outputs = outputs
            .into_iter()
            .filter_map(|m| {
                let facets = match stats.get(m) {
                    Some(r) if r.status == ModelStatus::Success => json!({
                        "outputStatistics": facet(
                            "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet",
                            json!({"rowCount": r.rows_out, "fileCount": r.outputs.len()}),
                        )
                    }),
                    _ => json!({}),
                };
                self.dataset_json(m, Some(("outputFacets", facets)))
            })
            .collect();
        (inputs, outputs)
    }
}

/// Sends the events of one run.
pub(crate) struct Emitter<'a> {
    lineage: &'a Lineage,
    run_uuid: uuid::Uuid,
    run_id: String,
    models: Vec<String>,
    /// Set when the HTTP endpoint failed: the run sends it nothing more.
    http_failed: std::sync::atomic::AtomicBool,
}

impl<'a> Emitter<'a> {
    /// The events of sluice run `run_id` of `models` (its selection). Its OpenLineage run id
    /// is a UUID derived from it, so a resumed run continues the same OpenLineage run.
    pub(crate) fn new(lineage: &'a Lineage, run_id: &str, models: &[String]) -> Emitter<'a> {
        Emitter {
            lineage,
            run_uuid: uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                format!("sluice:run:{run_id}").as_bytes(),
            ),
            run_id: run_id.to_string(),
            models: models.to_vec(),
            http_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// `START` and `FAIL` of a run that failed before any model ran (its SQL did not plan,
    /// a source was missing): the datasets its models would have written.
    pub(crate) async fn not_run(&self, report: &RunReport) {
        let models: Vec<&str> = self.models.iter().map(String::as_str).collect();
        let (inputs, outputs) = self.lineage.datasets_of(&models, &BTreeMap::new());
        self.send(self.event("START", inputs.clone(), outputs.clone(), None))
            .await;
        let error = report.error.clone().unwrap_or_else(|| "failed".to_string());
        self.send(self.event("FAIL", inputs, outputs, Some(error)))
            .await;
    }

    /// `START`: every dataset the run reads and writes.
    pub(crate) async fn start(&self) {
        let models: Vec<&str> = self.models.iter().map(String::as_str).collect();
        let (inputs, outputs) = self.lineage.datasets_of(&models, &BTreeMap::new());
        self.send(self.event("START", inputs, outputs, None)).await;
    }

    /// `RUNNING`: a model ended; its datasets.
    pub(crate) async fn model(&self, report: &ModelReport) {
        let stats = BTreeMap::from([(report.name.as_str(), report)]);
        let (inputs, outputs) = self.lineage.datasets_of(&[report.name.as_str()], &stats);
        self.send(self.event("RUNNING", inputs, outputs, None))
            .await;
    }

    /// `COMPLETE`, `FAIL` or `ABORT`, with every dataset and the outputs' statistics.
    pub(crate) async fn end(&self, report: &RunReport) {
        // A paused run is resumed later under the same run: not an end (OTHER).
        let kind = match report.status {
            RunStatus::Success => "COMPLETE",
            RunStatus::Paused => "OTHER",
            RunStatus::Interrupted | RunStatus::Deferred => "ABORT",
            _ => "FAIL",
        };
        let stats: BTreeMap<&str, &ModelReport> =
            report.models.iter().map(|m| (m.name.as_str(), m)).collect();
        let models: Vec<&str> = self.models.iter().map(String::as_str).collect();
        let (inputs, outputs) = self.lineage.datasets_of(&models, &stats);
        let error = (kind == "FAIL").then(|| {
            let mut messages: Vec<String> = report.error.iter().cloned().collect();
            messages.extend(
                report
                    .models
                    .iter()
                    .filter(|m| m.status == ModelStatus::Failed)
                    .map(|m| {
                        format!(
                            "model '{}': {}",
                            m.name,
                            m.error.as_deref().unwrap_or("failed")
                        )
                    }),
            );
            messages.join("; ")
        });
        self.send(self.event(kind, inputs, outputs, error)).await;
    }

    fn event(
        &self,
        kind: &str,
        inputs: Vec<Value>,
        outputs: Vec<Value>,
        error: Option<String>,
    ) -> Value {
        let mut run_facets = serde_json::Map::new();
        run_facets.insert(
            "sluice".into(),
            facet(
                "https://github.com/sluice-engine/sluice/blob/main/docs/running.md#lineage",
                json!({"runId": self.run_id, "pipeline": self.lineage.pipeline}),
            ),
        );
        if let Some(message) = error {
            run_facets.insert(
                "errorMessage".into(),
                facet(
                    "https://openlineage.io/spec/facets/1-0-1/ErrorMessageRunFacet.json#/$defs/ErrorMessageRunFacet",
                    json!({"message": message, "programmingLanguage": "SQL"}),
                ),
            );
        }
        json!({
            "eventType": kind,
            "eventTime": crate::config::timestamp_now(),
            "producer": PRODUCER,
            "schemaURL": SCHEMA_URL,
            "run": {"runId": self.run_uuid.to_string(), "facets": run_facets},
            "job": {
                "namespace": self.lineage.config.namespace,
                "name": self.lineage.pipeline,
                "facets": {
                    "jobType": facet(
                        "https://openlineage.io/spec/facets/2-0-3/JobTypeJobFacet.json#/$defs/JobTypeJobFacet",
                        json!({"processingType": "BATCH", "integration": "SLUICE", "jobType": "PIPELINE"}),
                    ),
                },
            },
            "inputs": inputs,
            "outputs": outputs,
        })
    }

    /// Sends `event` by every transport configured; a failure is a warning.
    async fn send(&self, event: Value) {
        let config = &self.lineage.config;
        let line = event.to_string();
        if let Some(path) = &config.file {
            // One write per line: lines of concurrent writers do not interleave.
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            if let Err(e) = written {
                tracing::warn!("cannot write lineage to {}: {e}", path.display());
            }
        }
        // An endpoint that fails (down, hung, refusing) is given up for the rest of the run:
        // it holds a run up by one timeout at most.
        let failed = &self.http_failed;
        if let Some(url) = config
            .url
            .as_ref()
            .filter(|_| !failed.load(std::sync::atomic::Ordering::Relaxed))
        {
            let sent = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(2))
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .map_err(|e| e.to_string());
            let sent = match sent {
                Ok(client) => client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(line)
                    .send()
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let problem = match sent {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("answered {}", r.status())),
                Err(e) => Some(e),
            };
            if let Some(problem) = problem {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "cannot send lineage to {url} ({problem}): the run sends it no more events"
                );
            }
        }
    }
}

/// A facet: its fields, with `_producer` and `_schemaURL`.
fn facet(schema_url: &str, fields: Value) -> Value {
    let mut f = fields;
    f["_producer"] = json!(PRODUCER);
    f["_schemaURL"] = json!(schema_url);
    f
}

/// A file or object-store location as OpenLineage names it: `file` and the absolute path for
/// local files, else `scheme://bucket` and the key.
fn location_dataset(location: &str) -> Dataset {
    let (namespace, name) = match crate::store::Location::parse(location) {
        Ok(l) if l.is_local() => (
            "file".to_string(),
            l.local_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| location.to_string()),
        ),
        Ok(l) => {
            let url = l.url();
            (
                format!("{}://{}", url.scheme(), url.host_str().unwrap_or("")),
                url.path().trim_start_matches('/').to_string(),
            )
        }
        Err(_) => ("file".to_string(), location.to_string()),
    };
    Dataset {
        namespace,
        name: name.trim_end_matches('/').to_string(),
        fields: Vec::new(),
    }
}

/// A database table as OpenLineage names it: `postgres://host:port` or
/// `mysql://host:port`, and `database.schema.table` (no credentials).
fn database_dataset(db: &crate::config::DatabaseConfig, table: &str) -> Dataset {
    let url = &db.url;
    // PostgreSQL names a table database.schema.table (`public` unless given); MySQL's
    // database is its schema.
    let table = match url.kind {
        crate::config::DatabaseKind::Postgres if !table.contains('.') => format!("public.{table}"),
        _ => table.to_string(),
    };
    Dataset {
        namespace: format!("{}://{}:{}", url.kind.name(), url.host, url.port),
        name: format!("{}.{table}", url.database),
        fields: Vec::new(),
    }
}
