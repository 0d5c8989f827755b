//! What a history observes: the published output, read the way a reader that honours
//! `_MANIFEST` reads it (only the files it lists), on local disk or on S3; the folder's other
//! objects (staging, moved but unpublished files); and the rejects a run wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::inputs::{Line, Row};
use crate::support::rows_in_order;
use crate::support::s3::S3Server;

/// The model's output folder.
pub enum Output {
    /// `<pipeline>/out/m/`.
    Local(PathBuf),
    /// `s3://lake/out/m/` on a moto server of its own.
    S3 {
        store: Arc<dyn ObjectStore>,
        runtime: tokio::runtime::Runtime,
        server: S3Server,
    },
}

/// The S3 prefix of the output.
const S3_PREFIX: &str = "out/m";

impl Output {
    /// A local output folder in `pipeline`.
    pub fn local(pipeline: &Path) -> Output {
        Output::Local(pipeline.join("out/m"))
    }

    /// An output on a fresh moto server with bucket `lake`.
    pub fn s3() -> Output {
        let server = S3Server::start();
        server.create_bucket("lake");
        Output::S3 {
            store: server.store("lake"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            server,
        }
    }

    /// What a sluice process needs in its environment to reach the output.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Output::Local(_) => Vec::new(),
            Output::S3 { server, .. } => server.env(),
        }
    }

    /// Every object of the folder, relative to it, sorted.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Output::Local(dir) => crate::support::files_under(dir),
            Output::S3 { store, runtime, .. } => {
                let prefix = ObjectPath::from(S3_PREFIX);
                let mut keys: Vec<String> = runtime
                    .block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>())
                    .unwrap()
                    .into_iter()
                    .map(|m| m.location.as_ref()[S3_PREFIX.len() + 1..].to_string())
                    .collect();
                keys.sort();
                keys
            }
        }
    }

    /// An object's bytes, `None` when there is no such object.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Output::Local(dir) => std::fs::read(dir.join(key)).ok(),
            Output::S3 { store, runtime, .. } => {
                let path = ObjectPath::from(format!("{S3_PREFIX}/{key}"));
                runtime.block_on(async {
                    match store.get(&path).await {
                        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                        Err(object_store::Error::NotFound { .. }) => None,
                        Err(e) => panic!("reading {path}: {e}"),
                    }
                })
            }
        }
    }

    /// The current `_MANIFEST`'s bytes.
    pub fn manifest(&self) -> Option<Vec<u8>> {
        self.get("_MANIFEST")
    }

    /// The run id of the current manifest.
    pub fn run_id(&self) -> Option<String> {
        let manifest: serde_json::Value = serde_json::from_slice(&self.manifest()?).ok()?;
        manifest["run_id"].as_str().map(String::from)
    }

    /// The row count the current manifest states.
    pub fn manifest_rows(&self) -> Option<u64> {
        let manifest: serde_json::Value = serde_json::from_slice(&self.manifest()?).ok()?;
        manifest["rows"].as_u64()
    }

    /// The data files the current manifest lists.
    pub fn listed(&self) -> Vec<String> {
        let Some(bytes) = self.manifest() else {
            return Vec::new();
        };
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut files: Vec<String> = manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect();
        files.sort();
        files
    }

    /// Data files in the folder that the current manifest does not list (moved by a publish
    /// that has not committed, or left by one that crashed).
    pub fn unlisted(&self) -> Vec<String> {
        let listed: BTreeSet<String> = self.listed().into_iter().collect();
        self.keys()
            .into_iter()
            .filter(|k| !k.starts_with('_') && !listed.contains(k))
            .collect()
    }

    /// Objects in the output's staging area (`out/_sluice_staging/m/`), and under `_staging/`
    /// inside the folder, where builds before it staged.
    pub fn staging(&self) -> Vec<String> {
        const AREA: &str = "out/_sluice_staging/m";
        let mut keys: Vec<String> = match self {
            Output::Local(dir) => {
                let area = dir.parent().unwrap().join("_sluice_staging/m");
                crate::support::files_under(&area)
            }
            Output::S3 { store, runtime, .. } => runtime
                .block_on(
                    store
                        .list(Some(&ObjectPath::from(AREA)))
                        .try_collect::<Vec<_>>(),
                )
                .unwrap()
                .into_iter()
                .map(|m| m.location.as_ref()[AREA.len() + 1..].to_string())
                .collect(),
        };
        keys.iter_mut().for_each(|k| *k = format!("{AREA}/{k}"));
        keys.extend(
            self.keys()
                .into_iter()
                .filter(|k| k.starts_with("_staging/")),
        );
        keys
    }

    /// The published rows, sorted; `None` when nothing is published. `g` comes from the
    /// `g=V/` folder when the output is partitioned. An error when a listed file is missing
    /// or unreadable.
    pub fn rows(&self, partitioned: bool) -> Result<Option<Vec<Row>>, String> {
        if self.manifest().is_none() {
            return Ok(None);
        }
        let mut rows = Vec::new();
        for file in self.listed() {
            rows.extend(self.file_rows(&file, partitioned)?);
        }
        rows.sort();
        Ok(Some(rows))
    }

    /// The rows of one listed data file.
    fn file_rows(&self, file: &str, partitioned: bool) -> Result<Vec<Row>, String> {
        let bytes = self
            .get(file)
            .ok_or_else(|| format!("the manifest lists {file}, which is missing"))?;
        let batches: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .and_then(|b| b.build())
            .map_err(|e| format!("{file}: {e}"))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{file}: {e}"))?;
        let cols: &[&str] = if partitioned {
            &["id", "n"]
        } else {
            &["id", "n", "g"]
        };
        let g = partition_value(file);
        let mut rows = Vec::new();
        for r in rows_in_order(&batches, cols) {
            let int = |s: &str| s.parse::<i64>().map_err(|_| format!("{file}: value {s:?}"));
            let g = match (&g, r.get(2)) {
                (_, Some(v)) => int(v)?,
                (Some(v), None) => int(v)?,
                (None, None) => return Err(format!("{file}: no g=V/ folder")),
            };
            rows.push((int(&r[0])?, int(&r[1])?, g));
        }
        Ok(rows)
    }

    /// The `dims` each period of the current manifest records: a hash of the versions of the
    /// inputs without event time it was computed with.
    pub fn period_dims(&self) -> BTreeMap<String, String> {
        let Some(bytes) = self.manifest() else {
            return BTreeMap::new();
        };
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        manifest["periods"]["entries"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(p, e)| {
                (
                    p.clone(),
                    e["dims"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// The data files the current manifest lists, by the period that wrote them.
    pub fn files_by_period(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let Some(bytes) = self.manifest() else {
            return out;
        };
        let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        for f in manifest["files"].as_array().into_iter().flatten() {
            out.entry(f["period"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(f["path"].as_str().unwrap_or_default().to_string());
        }
        for files in out.values_mut() {
            files.sort();
        }
        out
    }

    /// An incremental output as its manifest records it (`None`: nothing published): its
    /// first period, the file versions applied to each period, and the rows of each period's
    /// data files. An error when a data file names no period, or one the manifest does not
    /// record, or a listed file cannot be read.
    pub fn periods(&self, partitioned: bool) -> Result<Option<PeriodsSeen>, String> {
        let Some(bytes) = self.manifest() else {
            return Ok(None);
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("_MANIFEST: {e}"))?;
        let periods = &manifest["periods"];
        let start = periods["start"]
            .as_str()
            .ok_or_else(|| format!("_MANIFEST records no periods: {periods}"))?
            .to_string();
        let mut records: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
        for (period, entry) in periods["entries"].as_object().into_iter().flatten() {
            let mut files = Vec::new();
            for f in entry["inputs"].as_array().into_iter().flatten() {
                let path = f["path"].as_str().unwrap_or_default();
                let modified = f["modified"].as_str().unwrap_or_default();
                let t = chrono::DateTime::parse_from_rfc3339(modified)
                    .map_err(|e| format!("{period}: modified {modified:?}: {e}"))?;
                files.push(Recorded {
                    name: path.rsplit('/').next().unwrap_or_default().to_string(),
                    size: f["size"].as_u64().unwrap_or(u64::MAX),
                    mtime: (t.timestamp(), i64::from(t.timestamp_subsec_nanos())),
                    rows: f["rows"].as_u64().unwrap_or(u64::MAX),
                });
            }
            files.sort();
            records.insert(period.clone(), files);
        }
        let mut rows: BTreeMap<String, Vec<Row>> = BTreeMap::new();
        for f in manifest["files"].as_array().into_iter().flatten() {
            let path = f["path"].as_str().unwrap_or_default();
            let Some(period) = f["period"].as_str() else {
                return Err(format!("data file {path} names no period"));
            };
            if !records.contains_key(period) {
                return Err(format!(
                    "data file {path} is of period {period}, which the manifest does not record"
                ));
            }
            rows.entry(period.to_string())
                .or_default()
                .extend(self.file_rows(path, partitioned)?);
        }
        for r in rows.values_mut() {
            r.sort();
        }
        rows.retain(|_, r| !r.is_empty());
        Ok(Some(PeriodsSeen {
            start,
            records,
            rows,
        }))
    }
}

/// A file version a period of an incremental output records: name, size, modification
/// time (seconds, nanoseconds), and its rows in the period.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Recorded {
    pub name: String,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rows: u64,
}

/// An incremental output as its manifest records it, by period name (`2024-01-03`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodsSeen {
    pub start: String,
    pub records: BTreeMap<String, Vec<Recorded>>,
    /// The rows of each period's data files (periods with rows only), sorted.
    pub rows: BTreeMap<String, Vec<Row>>,
}

/// The value of the `g=V/` folder a data file is in.
fn partition_value(file: &str) -> Option<String> {
    file.split('/')
        .find_map(|part| part.strip_prefix("g="))
        .map(String::from)
}

/// A row a run set aside, as its rejects file holds it.
#[derive(Debug, Clone)]
pub struct Reject {
    /// The input file's name.
    pub file: String,
    pub line: u64,
    pub reason: String,
}

/// The rejects run `run_id` wrote to the source's default rejects folder, `None` when it
/// wrote none.
pub fn rejects_of_run(pipeline: &Path, run_id: &str) -> Option<Vec<Reject>> {
    let path = pipeline.join(format!(
        ".sluice/rejects/events/run={run_id}/model=m/rejects.parquet"
    ));
    if !path.exists() {
        return None;
    }
    let batches = crate::support::parquet_batches(&path);
    Some(
        rows_in_order(&batches, &["file", "line", "reason"])
            .into_iter()
            .map(|r| Reject {
                file: Path::new(&r[0])
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                line: r[1].parse().unwrap(),
                reason: r[2].clone(),
            })
            .collect(),
    )
}

/// The `(file, line)` pairs of some rejects.
pub fn lines(rejects: &[Reject]) -> BTreeSet<Line> {
    rejects.iter().map(|r| (r.file.clone(), r.line)).collect()
}

/// The number of run folders in the source's rejects folder (to poll for a new one).
pub fn reject_runs(pipeline: &Path) -> usize {
    std::fs::read_dir(pipeline.join(".sluice/rejects/events"))
        .map(|d| d.count())
        .unwrap_or(0)
}
