//! Resuming a killed run: what a run does, as a fingerprint (a run is resumed only by one
//! with the same fingerprint), and which of a model's units the resumed run keeps.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::incremental::RunKind;
use super::input_files::InputFiles;
use super::prepare::Prepared;
use super::unit::UnitPlan;
use super::{RunCx, RunOptions};
use crate::config::{BatchSize, KeyBuckets, ModelConfig, SinkConfig, SourceConfig};
use crate::engine::Engine;
use crate::error::Error;
use crate::state::UnitRecord;
use crate::store::Location;
use crate::table::Output;
use crate::units::{Unit, UnitKind};

/// What a run does, as [`fingerprint`] hashes it: the selection and the variables, for each
/// selected model its rendered SQL, sink and work units, the SQL of the models upstream
/// (views are inlined into it) and the full definition of the sources it reads. Serialised
/// as JSON, so every field counts and none is left out by a hand-written format. (The data
/// is not in it: a resumed run keeps a unit only if the files it read are unchanged, see
/// [`unit_inputs`].)
#[derive(Serialize)]
struct Work<'a> {
    selected: &'a [String],
    vars: &'a BTreeMap<String, String>,
    models: Vec<ModelWork<'a>>,
    /// `--as-of`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    as_of: Option<String>,
    /// What incremental models compute, unless a plain run.
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: String,
}

/// One file of a source, as [`Work`] records it.
type InputFile = crate::engine::FileVersion;

/// One selected model in [`Work`].
#[derive(Serialize)]
struct ModelWork<'a> {
    name: &'a str,
    sql: &'a str,
    sink: &'a SinkConfig,
    /// `size`, `start`, `end` (chrono's date-times are written as text).
    batches: Option<(BatchSize, Option<String>, Option<String>)>,
    files_per_unit: Option<usize>,
    key_buckets: Option<&'a KeyBuckets>,
    upstream_sql: BTreeMap<String, &'a str>,
    sources: BTreeMap<String, &'a SourceConfig>,
    /// An incremental model's settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    incremental: Option<String>,
    /// `batches.timezone`.
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<&'static str>,
}

/// What a run does, as a hash of its [`Work`]. A run is only resumed by a run with the same
/// fingerprint.
pub(super) fn fingerprint(prepared: &Prepared, opts: &RunOptions) -> String {
    let (dag, pipeline) = (&prepared.dag, &prepared.pipeline);
    let models = prepared
        .selected
        .iter()
        .map(|name| {
            let m = &pipeline.models[name];
            ModelWork {
                name,
                sql: &dag.nodes[name].sql,
                sink: &m.sink,
                batches: m.batches.as_ref().map(|b| {
                    (
                        b.size,
                        b.start.map(|t| t.to_string()),
                        b.end.map(|t| t.to_string()),
                    )
                }),
                incremental: m
                    .batches
                    .as_ref()
                    .and_then(|b| b.incremental.as_ref())
                    .map(|i| format!("{i:?}")),
                timezone: m
                    .batches
                    .as_ref()
                    .and_then(|b| b.timezone)
                    .map(|tz| tz.name()),
                files_per_unit: m.files_per_unit,
                key_buckets: m.key_buckets.as_ref(),
                upstream_sql: dag
                    .upstream(name)
                    .into_iter()
                    .map(|up| {
                        let sql = dag.nodes[&up].sql.as_str();
                        (up, sql)
                    })
                    .collect(),
                sources: dag
                    .sources_read(name)
                    .into_iter()
                    .filter_map(|s| {
                        let spec = pipeline.sources.get(&s)?;
                        Some((s, spec))
                    })
                    .collect(),
            }
        })
        .collect();
    let work = Work {
        selected: &prepared.selected,
        vars: &opts.vars,
        models,
        as_of: opts.as_of.map(|t| t.to_rfc3339()),
        kind: match &opts.kind {
            RunKind::Run => String::new(),
            RunKind::Backfill { from, to } => format!("backfill {from} {to}"),
            other => other.name().to_string(),
        },
    };
    let Ok(text) = serde_json::to_string(&work) else {
        // (Cannot happen with these types.) A fingerprint no other run has: nothing resumes.
        return crate::table::new_run_id();
    };
    format!("{:016x}", crate::units::stable_hash(&text))
}

/// What one unit reads, as [`unit_inputs`] hashes it: the versions of the source files it
/// reads (a by-file unit its files, a period unit the files holding rows of its period where
/// the source was read file by file, other units every file), of the outputs upstream, and
/// of the database sources it reads.
#[derive(Serialize)]
struct UnitInputs<'a> {
    sources: BTreeMap<&'a str, Vec<&'a InputFile>>,
    upstream: &'a BTreeMap<String, Option<(String, Vec<String>)>>,
    /// Per database source: a period unit's rows of its period (a period's version, as an
    /// incremental model counts it); for other units, and sources without event time, a
    /// value no other run has: a database has no version to compare, so such a unit is
    /// computed again, never kept from a killed run that read an older state.
    databases: BTreeMap<&'a str, String>,
}

/// What a model's units read, as they were planned.
pub(super) struct Inputs {
    /// Each unit's inputs, by unit name, as a hash (see [`UnitInputs`]).
    pub(super) by_unit: BTreeMap<String, String>,
    /// The files of each source the model reads, when its units were planned.
    files: BTreeMap<String, Vec<InputFile>>,
}

impl Inputs {
    /// A file of the model's sources that was replaced or removed since its units were
    /// planned, by key: its units may have read it in either version, and an output mixing
    /// them must not be published. (A file added meanwhile is no such file: it was read whole
    /// or not at all, and the next run reads it.)
    pub(super) async fn changed_file(&self, cx: &RunCx<'_>) -> Result<Option<String>, Error> {
        for (source, before) in &self.files {
            let Some(spec) = cx.pipeline.sources.get(source) else {
                continue;
            };
            let now: BTreeMap<String, InputFile> = source_files(cx.engine, spec)
                .await?
                .into_iter()
                .map(|f| (f.0.clone(), f))
                .collect();
            if let Some(f) = before.iter().find(|f| now.get(&f.0) != Some(*f)) {
                // As a user knows the file: a path, or the URL of the object.
                let key = object_store::path::Path::parse(&f.0)
                    .unwrap_or_else(|_| object_store::path::Path::from(f.0.as_str()));
                let shown = crate::store::Location::parse(&spec.location)
                    .map(|l| l.display_key(&key))
                    .unwrap_or_else(|_| f.0.clone());
                return Ok(Some(shown));
            }
        }
        Ok(None)
    }
}

/// Each unit's inputs: a resumed run keeps a committed unit only if its inputs are unchanged
/// (a late file, a corrected one, an upstream output published again make the units that
/// read them run again; the others are kept).
pub(super) async fn unit_inputs(
    cx: &RunCx<'_>,
    model: &str,
    plan: &UnitPlan,
) -> Result<Inputs, Error> {
    let (_, tables) = cx.dag.inputs_of(model);
    // The files as the units were planned from them (and read them), not listed again: a
    // file replaced in between must be found changed by `changed_file`.
    let files = plan.files.versions();
    let upstream = upstream_versions(cx.engine, cx.pipeline, model, tables).await?;
    let read_databases: Vec<String> = cx
        .dag
        .inputs_of(model)
        .0
        .into_iter()
        .filter(|s| cx.pipeline.database_sources.contains_key(s))
        .collect();
    let mut out = BTreeMap::new();
    for unit in &plan.units {
        let databases = read_databases
            .iter()
            .map(|source| {
                let rows = match (&unit.kind, &plan.events) {
                    (UnitKind::Period { start, .. }, Some(events)) => events
                        .database
                        .get(source)
                        .map(|(_, periods)| periods.get(&events.key(*start)).copied()),
                    _ => None,
                };
                let version = match rows {
                    Some(rows) => format!("rows {}", rows.unwrap_or(0)),
                    None => format!("unversioned {}", uuid::Uuid::new_v4()),
                };
                (source.as_str(), version)
            })
            .collect();
        let mut sources: BTreeMap<&str, Vec<&InputFile>> = files
            .iter()
            .map(|(s, f)| (s.as_str(), f.iter().collect()))
            .collect();
        let share = match &unit.kind {
            UnitKind::Files { source, files } => Some((source.clone(), files.clone())),
            _ => None,
        };
        let mut shares: Vec<(String, Vec<object_store::ObjectMeta>)> = share.into_iter().collect();
        if let (UnitKind::Period { start, .. }, Some(events)) = (&unit.kind, &plan.events) {
            for source in files.keys() {
                if let Some(f) = events.files_of(source, *start) {
                    shares.push((source.clone(), f));
                }
            }
        }
        for (source, share) in &shares {
            let mine: BTreeSet<String> = share.iter().map(|m| m.location.to_string()).collect();
            if let Some(all) = files.get(source) {
                sources.insert(
                    source.as_str(),
                    all.iter().filter(|f| mine.contains(&f.0)).collect(),
                );
            }
        }
        let inputs = UnitInputs {
            sources,
            upstream: &upstream,
            databases,
        };
        let text = serde_json::to_string(&inputs).unwrap_or_default();
        out.insert(
            unit.name.clone(),
            format!("{:016x}", crate::units::stable_hash(&text)),
        );
    }
    Ok(Inputs {
        by_unit: out,
        files,
    })
}

/// What an incremental model reads that has no event time, as a hash: the versions of the
/// files of its sources without `event_time` (dimensions) and the published versions of the
/// tables upstream. When it changes, the periods inside the late window are computed again.
/// A database source without `event_time` has no version: the hash is new each time, so
/// every run computes the periods of the window again.
pub(super) async fn dimension_inputs(
    engine: &Engine,
    pipeline: &crate::config::Pipeline,
    dag: &crate::dag::Dag,
    model: &str,
    listed: &InputFiles,
) -> Result<String, Error> {
    let (read, tables) = dag.inputs_of(model);
    let versions = listed.versions();
    let mut files: BTreeMap<String, Vec<InputFile>> = BTreeMap::new();
    for source in read {
        if let Some(spec) = pipeline.sources.get(&source)
            && spec.event_time.is_none()
        {
            let listed = versions.get(&source).cloned().unwrap_or_default();
            files.insert(source, listed);
        } else if let Some(spec) = pipeline.database_sources.get(&source)
            && spec.event_time.is_none()
        {
            let unversioned: InputFile = (
                format!("db:{source}"),
                0,
                uuid::Uuid::new_v4().to_string(),
                None,
            );
            files.insert(source, vec![unversioned]);
        }
    }
    // (An incremental model upstream is an event-time input, by its periods.)
    let tables = tables.into_iter().filter(|t| {
        pipeline
            .models
            .get(t)
            .is_none_or(|m| m.materialized != crate::config::Materialized::Incremental)
    });
    let upstream = upstream_versions(engine, pipeline, model, tables).await?;
    let text = serde_json::to_string(&(files, upstream)).unwrap_or_default();
    Ok(format!("{:016x}", crate::units::stable_hash(&text)))
}

/// The published version (run id and files) of each table model in `tables`, as `model`
/// reads them.
async fn upstream_versions(
    engine: &Engine,
    pipeline: &crate::config::Pipeline,
    model: &str,
    tables: impl IntoIterator<Item = String>,
) -> Result<BTreeMap<String, Option<(String, Vec<String>)>>, Error> {
    let mut upstream = BTreeMap::new();
    for table in tables {
        let Some(m) = pipeline.models.get(&table) else {
            continue;
        };
        let location = Location::parse(&m.sink.location)?.as_folder();
        let store = engine.stores().store_for(&location)?;
        let manifest = Output::new(store, location)
            .read_manifest()
            .await
            .map_err(|e| Error::Model {
                model: model.to_string(),
                message: format!("cannot read {}: {}", e.key, e.message),
            })?;
        let version = manifest.map(|m| (m.run_id, m.files.into_iter().map(|f| f.path).collect()));
        upstream.insert(table, version);
    }
    Ok(upstream)
}
/// The files of a source, as [`Work`] records them.
async fn source_files(engine: &Engine, spec: &SourceConfig) -> Result<Vec<InputFile>, Error> {
    Ok(
        crate::catalog::list_source_files(engine.ctx(), engine.stores(), spec)
            .await?
            .iter()
            .map(crate::engine::file_version)
            .collect(),
    )
}

/// What one append adds, as [`append_identity`] hashes it: the model, its rendered SQL and
/// sink, and the files its query reads (after partition pruning), or, where the plan cannot
/// tell (a quarantined source), every file of its sources and the published version of the
/// table models it reads.
#[derive(Serialize)]
struct Append<'a> {
    model: &'a str,
    sql: &'a str,
    sink: &'a SinkConfig,
    files_read: Option<Vec<InputFile>>,
    sources: BTreeMap<String, Vec<InputFile>>,
    upstream: BTreeMap<String, Option<(String, Vec<String>)>>,
}

/// The identity of an append of `model` now: the same model, SQL, sink and input files give
/// the same identity, so an append already in the output (its manifest records the
/// identities it holds) is not applied again by a rerun that is no resume (`--restart`, a
/// lost state file, the same day's command run again after the next day's).
///
/// A model that reads a database source has no files to tell one state of its input from
/// another: its append is identified by the run, so a resumed run does not apply it twice,
/// and each new run appends what it read.
pub(super) async fn append_identity(cx: &RunCx<'_>, model: &ModelConfig) -> Result<String, Error> {
    if cx
        .dag
        .inputs_of(&model.name)
        .0
        .iter()
        .any(|s| cx.pipeline.database_sources.contains_key(s))
    {
        return Ok(format!("run:{}", cx.run_id));
    }
    let sql = &cx.dag.nodes[&model.name].sql;
    let planned = async {
        let df = cx.engine.ctx().sql(sql).await?;
        df.create_physical_plan().await
    }
    .await
    .map_err(|e| Error::Model {
        model: model.name.clone(),
        message: crate::describe::describe_datafusion(&e),
    })?;
    let files_read = crate::engine::files_read(&planned);
    let mut sources = BTreeMap::new();
    let mut upstream = BTreeMap::new();
    if files_read.is_none() {
        let (read, tables) = cx.dag.inputs_of(&model.name);
        // As the units read them: a quarantined source's files are those its table holds.
        sources = InputFiles::list(cx.engine, cx.pipeline, &read)
            .await?
            .versions();
        upstream = upstream_versions(cx.engine, cx.pipeline, &model.name, tables).await?;
    }
    let append = Append {
        model: &model.name,
        sql,
        sink: &model.sink,
        files_read,
        sources,
        upstream,
    };
    let Ok(text) = serde_json::to_string(&append) else {
        // (Cannot happen with these types.) An identity no other append has.
        return Ok(crate::table::new_run_id());
    };
    Ok(format!("{:016x}", crate::units::stable_hash(&text)))
}

/// The units of `model` that this run (a resumed one) already committed and that it keeps,
/// by name: those of the current plan whose `inputs` are unchanged and whose recorded files
/// are all still there (in staging, or already moved by an interrupted publish); none
/// unless `keep`. The staging leftovers of every other unit
/// are removed first, so those run again from nothing.
/// (A kept unit's bad rows still count: the model reads again, for its rejects, the files
/// of a quarantined source that no unit of this process read.)
pub(super) async fn kept_units(
    cx: &RunCx<'_>,
    model: &str,
    units: &[Unit],
    inputs: &BTreeMap<String, String>,
    keep: bool,
    output: &Output,
) -> Result<BTreeMap<String, UnitRecord>, Error> {
    let planned: BTreeSet<&str> = units.iter().map(|u| u.name.as_str()).collect();
    let mut done: BTreeMap<String, UnitRecord> = BTreeMap::new();
    let recorded = cx
        .state
        .map(|s| s.done_units(cx.run_id, model))
        .transpose()?
        .unwrap_or_default();
    for u in recorded.into_iter().filter(|_| keep) {
        if !planned.contains(u.unit.as_str()) {
            continue;
        }
        if u.inputs.is_empty() || inputs.get(&u.unit) != Some(&u.inputs) {
            tracing::warn!(model = %model, unit = %u.unit, "its input files changed since it ran: running it again");
            continue;
        }
        done.insert(u.unit.clone(), u);
    }
    for u in units.iter().filter(|u| !done.contains_key(&u.name)) {
        let _ = output.discard_staging(cx.run_id, Some(&u.key())).await;
    }
    let mut lost = Vec::new();
    for (unit, record) in &done {
        if !output.files_present(cx.run_id, &record.files).await {
            lost.push(unit.clone());
        }
    }
    for unit in lost {
        tracing::warn!(model = %model, unit = %unit, "a kept unit's files are gone: running it again");
        done.remove(&unit);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::unit::{Planning, plan_units};
    use crate::run::{Interrupt, clock_of, prepare};

    /// The files checked before the publish are those the units were planned from (and read),
    /// not a later listing. Before, the inputs were listed again after planning: a file caught
    /// truncated by the listing the units were planned from (a writer rewriting it in place)
    /// was read as no rows, and, the writer done by the second listing, the check found it
    /// unchanged and the model published without its rows.
    #[tokio::test]
    async fn the_check_before_the_publish_compares_the_files_the_units_were_planned_from() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("data")).unwrap();
        std::fs::create_dir_all(d.join("queries")).unwrap();
        for f in 1..3 {
            std::fs::write(d.join(format!("data/f{f}.csv")), format!("id\n{f}\n")).unwrap();
        }
        // The run lists f0 mid-rewrite, truncated; the writer is done before the units run.
        let f0 = d.join("data/f0.csv");
        std::fs::write(&f0, "").unwrap();
        std::fs::write(d.join("queries/copy.sql"), "SELECT * FROM events").unwrap();
        std::fs::write(
            d.join("sluice.toml"),
            "[sources.events]\nlocation = \"data/\"\nformat = \"csv\"\nschema = \"id INT\"\n\
             [models.copy.sink]\nlocation = \"out/copy/\"\n\
             [models.copy.batches]\nby = \"file\"\n",
        )
        .unwrap();
        let pipeline = crate::config::Pipeline::load(d, &|_| None).unwrap();
        let opts = RunOptions::default();
        let prepared = prepare(pipeline, &opts, Vec::new()).await.unwrap();
        let clock = clock_of(&opts);
        let progress = crate::progress::Progress::new(false);
        let interrupt = Interrupt::default();
        let ended = crate::table::Ended::default();
        let cx = RunCx {
            engine: &prepared.engine,
            pipeline: &prepared.pipeline,
            dag: &prepared.dag,
            state: None,
            run_id: "r",
            progress: &progress,
            interrupt: &interrupt,
            unit_slots: None,
            force_append: false,
            ended: &ended,
            clock: &clock,
            split_keys: &prepared.split_keys,
            sorted: &prepared.sorted,
            databases: &prepared.databases,
            cluster: None,
        };
        let model = &prepared.pipeline.models["copy"];
        let planning = Planning {
            clock: &clock,
            state: None,
            run_id: "r",
        };
        let plan = plan_units(cx.engine, cx.pipeline, cx.dag, model, &planning)
            .await
            .unwrap();
        let planned_f0 = plan.units.iter().find_map(|u| match &u.kind {
            UnitKind::Files { files, .. } => files
                .iter()
                .find(|m| m.location.as_ref().ends_with("f0.csv"))
                .map(|m| m.size),
            _ => None,
        });
        assert_eq!(planned_f0, Some(0), "the unit reads f0 as planned");
        std::fs::write(&f0, "id\n0\n").unwrap();
        let inputs = unit_inputs(&cx, "copy", &plan).await.unwrap();
        let changed = inputs.changed_file(&cx).await.unwrap();
        assert!(
            changed
                .as_deref()
                .is_some_and(|f| f.ends_with("/data/f0.csv")),
            "{changed:?}"
        );
        // And a file left alone since the planning is no change (a model planned after the
        // first lists the source again).
        let plan = plan_units(cx.engine, cx.pipeline, cx.dag, model, &planning)
            .await
            .unwrap();
        let inputs = unit_inputs(&cx, "copy", &plan).await.unwrap();
        assert_eq!(inputs.changed_file(&cx).await.unwrap(), None);
    }
}
