//! The schemas of sources' files, kept in the state store between runs: registering a source
//! reads the schema (a Parquet footer, a text file's first rows) of each file version no
//! earlier run read, and no other, so a run over files that did not change reads none.
//!
//! Preparing a run loads what the state store knows, if there is a state store (`plan`,
//! `check` and a dry run only read it); the run records what was read once it holds the
//! pipeline's lock. A file version is its path, size, modification time and etag: a file
//! rewritten in place is another version, read again.

use std::collections::HashMap;
use std::sync::Mutex;

use datafusion::arrow::datatypes::SchemaRef;
use object_store::ObjectMeta;

use crate::catalog::FileSchemas;
use crate::config::{Pipeline, SourceConfig};
use crate::engine::{FileVersion, file_version};
use crate::state::StateStore;

/// One source's cache: the schemas of its file versions read before, and those read now.
#[derive(Debug)]
pub(crate) struct SourceSchemas {
    source: String,
    spec: String,
    known: HashMap<FileVersion, SchemaRef>,
    read: Mutex<Vec<(FileVersion, SchemaRef)>>,
}

impl SourceSchemas {
    /// The schemas `state` knows of `spec`'s files (none without a state store, or if it
    /// cannot be read: then every file is read, as without a cache).
    pub(crate) fn load(state: Option<&StateStore>, spec: &SourceConfig) -> SourceSchemas {
        let key = spec_key(spec);
        let known = match state.map(|s| s.file_schemas(&spec.name, &key)) {
            None => HashMap::new(),
            Some(Ok(known)) => known,
            Some(Err(e)) => {
                tracing::warn!("cannot read the schemas of {}'s files: {e}", spec.name);
                HashMap::new()
            }
        };
        SourceSchemas {
            source: spec.name.clone(),
            spec: key,
            known,
            read: Mutex::new(Vec::new()),
        }
    }

    fn read(&self) -> std::sync::MutexGuard<'_, Vec<(FileVersion, SchemaRef)>> {
        // A poisoned lock means a panic mid-push: the list is still whole.
        self.read.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FileSchemas for SourceSchemas {
    fn get(&self, file: &ObjectMeta) -> Option<SchemaRef> {
        self.known.get(&file_version(file)).cloned()
    }

    fn put(&self, file: &ObjectMeta, schema: SchemaRef) {
        self.read().push((file_version(file), schema));
    }
}

/// What the schemas of a source's files are cached under, beside its name: a hash of its
/// definition (format, options, location) and of the builds that read them (sluice's and
/// DataFusion's versions: another build could read a file as other types).
fn spec_key(spec: &SourceConfig) -> String {
    let definition = serde_json::to_string(spec).unwrap_or_default();
    format!(
        "{:016x}",
        crate::units::stable_hash(&format!(
            "file schemas 1\nsluice {}\ndatafusion {}\n{definition}",
            env!("CARGO_PKG_VERSION"),
            datafusion::DATAFUSION_VERSION
        ))
    )
}

/// The pipeline's state store, to read the schemas it knows from: none if there is none yet
/// (nothing is known) or it cannot be opened (the run itself then fails on it, or a command
/// that only reads does without).
pub(crate) fn open_state(pipeline: &Pipeline) -> Option<StateStore> {
    match StateStore::open_existing(&pipeline.settings.state) {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!("cannot read the schemas of the sources' files: {e}");
            None
        }
    }
}

/// The schemas preparing a run read of its sources' files, to record when it runs.
#[derive(Debug, Default)]
pub(crate) struct SchemasRead(Vec<SourceSchemas>);

impl SchemasRead {
    /// Adds what registering one source read.
    pub(crate) fn push(&mut self, source: SourceSchemas) {
        self.0.push(source);
    }

    /// Records what was read in `state`. A cache: on failure the next run reads these files
    /// again.
    pub(crate) fn record(&self, state: &StateStore) {
        for source in &self.0 {
            let read = source.read();
            if let Err(e) = state.record_file_schemas(&source.source, &source.spec, &read) {
                tracing::warn!(
                    "cannot record the schemas of {}'s files: {e}",
                    source.source
                );
            }
        }
    }
}
