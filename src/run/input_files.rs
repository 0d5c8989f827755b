//! The files of the sources a model reads, listed once before its units are planned: what its
//! units read (a unit of files, of keys or of periods reads exactly those versions, a
//! quarantined source the files its table holds), what their inputs are hashed from for a
//! resumed run, and what is compared with a new listing before the publish.
//!
//! One listing for all of them matters: were the units planned from one listing and the
//! check made against a later one, a file replaced in between (caught truncated, mid-write)
//! would be read in the version planned and found unchanged by the check, and its rows lost
//! from a published output.

use std::collections::{BTreeMap, BTreeSet};

use object_store::ObjectMeta;

use crate::catalog::CatalogError;
use crate::config::Pipeline;
use crate::engine::{Engine, FileVersion};
use crate::quarantine::QuarantineTable;

/// The files of each file source a model reads (by source name, each in path order).
#[derive(Debug, Default)]
pub(crate) struct InputFiles {
    files: BTreeMap<String, Vec<ObjectMeta>>,
    /// The sources whose table reads a set of files fixed when it was registered (a
    /// quarantined source, a sluice output through its manifest), rather than listing its
    /// location at each scan.
    fixed: BTreeSet<String>,
}

impl InputFiles {
    /// Lists the files of each of `sources` that is a file source: a quarantined source's
    /// are those its table reads (listed when it was registered), any other's are listed now.
    pub(crate) async fn list(
        engine: &Engine,
        pipeline: &Pipeline,
        sources: &BTreeSet<String>,
    ) -> Result<InputFiles, CatalogError> {
        let mut out = InputFiles::default();
        for source in sources {
            let Some(spec) = pipeline.sources.get(source) else {
                continue;
            };
            let (files, fixed) = match quarantined_files(engine, source).await {
                Some(files) => (files, true),
                None => crate::catalog::list_source(engine.ctx(), engine.stores(), spec).await?,
            };
            if fixed {
                out.fixed.insert(source.clone());
            }
            out.files.insert(source.clone(), files);
        }
        Ok(out)
    }

    /// The files of `source`; `None` for a source the model does not read from files.
    pub(crate) fn of(&self, source: &str) -> Option<&[ObjectMeta]> {
        self.files.get(source).map(Vec::as_slice)
    }

    /// The files of `source` when its table lists its location at each scan (so a unit
    /// reading it whole must be held to them); `None` for a table of fixed files, or a source
    /// the model does not read from files.
    pub(crate) fn listed_at_each_scan(&self, source: &str) -> Option<&[ObjectMeta]> {
        self.of(source).filter(|_| !self.fixed.contains(source))
    }

    /// Each source's file versions (path, size, modification time, etag).
    pub(crate) fn versions(&self) -> BTreeMap<String, Vec<FileVersion>> {
        self.files
            .iter()
            .map(|(source, files)| {
                let versions = files.iter().map(crate::engine::file_version).collect();
                (source.clone(), versions)
            })
            .collect()
    }
}

/// The files the table of a quarantined `source` reads, if it is one, in path order.
async fn quarantined_files(engine: &Engine, source: &str) -> Option<Vec<ObjectMeta>> {
    let provider = engine.ctx().table_provider(source).await.ok()?;
    let table = provider.downcast_ref::<QuarantineTable>()?;
    let mut files = table.files().to_vec();
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Some(files)
}
