//! A [`QuarantineScan`] as plain values, to run in another process (a cluster's executor):
//! its files, schemas, dialect and options. Its store is found again there by its URL.
//!
//! Only a scan that fails on a bad row travels: one that sets bad rows aside gathers them in
//! the process that runs it, and an executor's would never reach the run.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::TaskContext;
use object_store::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::decode::Dialect;
use super::{HeaderLayout, QuarantineScan, RejectSink, SourceFiles};
use crate::config::CsvOptions;

/// A [`QuarantineScan`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanWire {
    groups: Vec<Vec<FileWire>>,
    projection: Option<Vec<usize>>,
    /// The table's schema (file columns, then partition columns), as datafusion-proto
    /// encodes it; its file columns are the first `file_columns`.
    schema: Vec<u8>,
    file_columns: usize,
    /// The source's location: URL, and as written.
    location: (String, String),
    table_url: String,
    partition_cols: Vec<String>,
    layouts: Vec<(String, Vec<String>, Vec<Option<usize>>)>,
    dialect: DialectWire,
    compression: String,
    event_time: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileWire {
    path: String,
    size: u64,
    /// RFC 3339.
    last_modified: String,
    e_tag: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
enum DialectWire {
    Csv {
        options: CsvOptions,
        empty_quoted: bool,
    },
    Json,
}

fn bad(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("cannot decode a quarantine scan: {e}"))
}

impl QuarantineScan {
    /// The scan as plain values; `None` when it sets bad rows aside (see the module).
    pub fn to_wire(&self) -> Result<Option<ScanWire>> {
        if !self.sink.strict {
            return Ok(None);
        }
        let schema = datafusion_proto::protobuf::Schema::try_from(self.schema.as_ref())
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let source = &self.source;
        let file = |m: &ObjectMeta| FileWire {
            path: m.location.to_string(),
            size: m.size,
            last_modified: m.last_modified.to_rfc3339(),
            e_tag: m.e_tag.clone(),
            version: m.version.clone(),
        };
        Ok(Some(ScanWire {
            groups: self
                .groups
                .iter()
                .map(|g| g.iter().map(file).collect())
                .collect(),
            projection: self.projection.clone(),
            schema: prost::Message::encode_to_vec(&schema),
            file_columns: self.file_schema.fields().len(),
            location: (
                source.location.url().to_string(),
                source.location.to_string(),
            ),
            table_url: source.table_url.to_string(),
            partition_cols: source
                .partition_cols
                .iter()
                .map(|(n, _)| n.clone())
                .collect(),
            layouts: source
                .layouts
                .iter()
                .map(|(p, l)| (p.to_string(), l.header.clone(), l.positions.clone()))
                .collect(),
            dialect: match &self.dialect {
                Dialect::Csv {
                    options,
                    empty_quoted,
                    ..
                } => DialectWire::Csv {
                    options: options.clone(),
                    empty_quoted: *empty_quoted,
                },
                Dialect::Json => DialectWire::Json,
            },
            compression: self.compression.get_variant().to_string(),
            event_time: self.event_time.clone(),
        }))
    }

    /// The scan of [`QuarantineScan::to_wire`], reading its files from `ctx`'s store.
    pub fn from_wire(wire: ScanWire, ctx: &TaskContext) -> Result<QuarantineScan> {
        let proto: datafusion_proto::protobuf::Schema =
            prost::Message::decode(wire.schema.as_slice()).map_err(bad)?;
        let schema: SchemaRef = Arc::new(Schema::try_from(&proto).map_err(bad)?);
        let file_schema = Arc::new(Schema::new(
            schema.fields()[..wire.file_columns.min(schema.fields().len())].to_vec(),
        ));
        let table_url = ListingTableUrl::parse(&wire.table_url)?;
        let store = ctx.runtime_env().object_store(table_url.object_store())?;
        let partition_cols: Vec<(String, DataType)> = wire
            .partition_cols
            .iter()
            .map(|n| {
                let ty = schema
                    .field_with_name(n)
                    .map(|f| f.data_type().clone())
                    .unwrap_or(DataType::Utf8);
                (n.clone(), ty)
            })
            .collect();
        let meta = |f: FileWire| -> Result<ObjectMeta> {
            Ok(ObjectMeta {
                location: object_store::path::Path::from(f.path),
                size: f.size,
                last_modified: chrono::DateTime::parse_from_rfc3339(&f.last_modified)
                    .map_err(bad)?
                    .with_timezone(&chrono::Utc),
                e_tag: f.e_tag,
                version: f.version,
            })
        };
        let groups = wire
            .groups
            .into_iter()
            .map(|g| g.into_iter().map(meta).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let files = groups.iter().flatten().cloned().collect();
        let location =
            crate::store::Location::from_parts(&wire.location.0, &wire.location.1).map_err(bad)?;
        let layouts: HashMap<_, _> = wire
            .layouts
            .into_iter()
            .map(|(p, header, positions)| {
                (
                    object_store::path::Path::from(p),
                    Arc::new(HeaderLayout { header, positions }),
                )
            })
            .collect();
        let dialect = match wire.dialect {
            DialectWire::Json => Dialect::Json,
            // (Only sluice's own CSV, which its sink writes, reads `""` apart from NULL.)
            DialectWire::Csv {
                empty_quoted: true, ..
            } => Dialect::sluice_csv(),
            DialectWire::Csv { options, .. } => Dialect::csv(options),
        };
        let compression = FileCompressionType::from(
            wire.compression
                .parse::<datafusion::common::parsers::CompressionTypeVariant>()
                .map_err(bad)?,
        );
        let source = Arc::new(SourceFiles {
            store,
            table_url,
            files,
            partition_cols,
            location,
            layouts,
        });
        QuarantineScan::build(
            groups,
            wire.projection,
            schema,
            file_schema,
            source,
            dialect,
            compression,
            wire.event_time,
            Arc::new(RejectSink::new(true)),
        )
        .map(QuarantineScan::staged)
    }

    /// One scan per group of files (each of one partition), to run each in a stage of its
    /// own on a cluster (see `cluster::Cluster::distributed`).
    pub fn split(&self) -> Result<Vec<QuarantineScan>> {
        self.groups
            .iter()
            .map(|g| {
                QuarantineScan::build(
                    vec![g.clone()],
                    self.projection.clone(),
                    Arc::clone(&self.schema),
                    Arc::clone(&self.file_schema),
                    Arc::clone(&self.source),
                    self.dialect.clone(),
                    self.compression,
                    self.event_time.clone(),
                    Arc::clone(&self.sink),
                )
            })
            .collect()
    }

    /// The same scan, marked as placed in a stage of its own (for a cluster).
    pub fn staged(mut self) -> QuarantineScan {
        self.staged = true;
        self
    }

    /// Whether it was placed in a stage of its own.
    pub fn is_staged(&self) -> bool {
        self.staged
    }
}
