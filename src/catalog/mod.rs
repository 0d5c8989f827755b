//! The catalog: makes sources and model outputs readable as SQL tables.
//!
//! A source becomes a DataFusion `ListingTable` over its files (a file, a folder / prefix or a
//! glob), with the format options of `sluice.toml`, Hive partition columns, and a schema that
//! is either declared (`schema = "id BIGINT, ..."`) or inferred. A table model's published
//! output is registered the same way once it is written, so downstream models read it back.
//!
//! The module is split by concern: [`listing`] finds a source's files (store, format,
//! compression, extension), [`schema`] gives them columns (declared or inferred, drift
//! checked), [`header`] matches each CSV file's header to them by name; registering tables,
//! from a source or from an output's manifest, is here.

mod header;
mod listing;
mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::ObjectMeta;

pub(crate) use listing::{
    compression_type, file_extension, file_format, guess_format, list_source, list_source_files,
};
pub(crate) use schema::FileSchemas;

use crate::config::{Compression, Format, SourceConfig};
use crate::describe::describe_datafusion;
use crate::store::{Location, StoreError, StoreRegistry};
use listing::{list_files, listing_options, resolve};
use schema::check_drift;

/// Errors registering a source or an output as a table.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The source's location holds no file of its format.
    #[error("source '{source_name}': no {format} files at {location}")]
    NoFiles {
        /// The source.
        source_name: String,
        /// Its location.
        location: String,
        /// Its format.
        format: &'static str,
    },
    /// The files could not be listed or read.
    #[error("source '{source_name}': cannot read {location}: {message}")]
    Read {
        /// The source.
        source_name: String,
        /// The location or the file that failed.
        location: String,
        /// The cause.
        message: String,
        /// Whether another attempt could succeed (a dropped connection, throttling).
        transient: bool,
    },
    /// The declared schema or a partition column type is not valid SQL.
    #[error("source '{source_name}': invalid schema {schema:?}: {message}")]
    Schema {
        /// The source.
        source_name: String,
        /// The schema as written.
        schema: String,
        /// Why it is invalid.
        message: String,
    },
    /// The files of a source do not have the same columns (`schema_evolution = "fail"`), or
    /// give one column two types (`"union"`).
    #[error(
        "source '{source_name}': files with different columns: {first} and {other}: {differences}{hint}"
    )]
    SchemaDrift {
        /// The source.
        source_name: String,
        /// The file whose columns are the reference.
        first: String,
        /// A file that differs from it.
        other: String,
        /// What differs, column by column.
        differences: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A CSV file's header lacks a column of the source, or has one it does not
    /// (`schema_evolution = "fail"`).
    #[error(
        "source '{source_name}': {file}: the header's columns differ from {against}: \
         {differences} (columns are matched by the header's names; set schema_evolution = \
         \"union\" on the source to read a missing column as NULL and ignore the others)"
    )]
    HeaderMismatch {
        /// The source.
        source_name: String,
        /// The file.
        file: String,
        /// What it is compared with: the declared schema, or the source's (inferred) columns.
        against: &'static str,
        /// What differs, column by column.
        differences: String,
    },
    /// The location itself is invalid.
    #[error("source '{source_name}': {source}")]
    Location {
        /// The source.
        source_name: String,
        /// The location error.
        #[source]
        source: StoreError,
    },
    /// A database source's database could not be read.
    #[error("source '{source_name}': {source}")]
    Database {
        /// The source.
        source_name: String,
        /// What the database said.
        #[source]
        source: crate::database::DatabaseError,
    },
}

impl CatalogError {
    /// Reading `location` of `source` failed with `e`.
    pub(crate) fn read_failed(source: &str, location: String, e: &DataFusionError) -> CatalogError {
        CatalogError::Read {
            source_name: source.to_string(),
            location,
            message: describe_datafusion(e),
            transient: crate::describe::is_transient(e),
        }
    }

    /// Whether another attempt could succeed: a read that failed on a dropped connection or
    /// throttling.
    pub fn is_transient(&self) -> bool {
        match self {
            CatalogError::Read { transient, .. } => *transient,
            CatalogError::Database { source, .. } => source.transient,
            _ => false,
        }
    }

    /// Whether the error is the user's configuration (exit status 2): an invalid declared
    /// schema, or a location or store that cannot be used.
    pub fn is_usage(&self) -> bool {
        match self {
            CatalogError::Schema { .. } | CatalogError::Location { .. } => true,
            CatalogError::NoFiles { .. }
            | CatalogError::Read { .. }
            | CatalogError::SchemaDrift { .. }
            | CatalogError::HeaderMismatch { .. }
            | CatalogError::Database { .. } => false,
        }
    }
}

/// Escapes a literal for use inside a regular expression.
pub(crate) fn regex_escape(s: &str) -> String {
    regex::escape(s)
}

/// A source's [`CatalogError::Read`] at `location`.
fn read_err(spec: &SourceConfig, location: String, message: String) -> CatalogError {
    CatalogError::Read {
        source_name: spec.name.clone(),
        location,
        message,
        transient: false,
    }
}

/// A DataFusion error about a source, at its location.
fn df_err(spec: &SourceConfig, e: &DataFusionError) -> CatalogError {
    CatalogError::read_failed(&spec.name, spec.location.clone(), e)
}

/// Registers a database source in `ctx`, its columns as the database describes them, read
/// under `databases`' pool of its database.
pub(crate) async fn register_database_source(
    ctx: &SessionContext,
    databases: &crate::database::Databases,
    spec: &crate::config::DatabaseSourceConfig,
) -> Result<SchemaRef, CatalogError> {
    let err = |source| CatalogError::Database {
        source_name: spec.name.clone(),
        source,
    };
    let Some(pool) = databases.pool(&spec.database) else {
        return Err(err(crate::database::DatabaseError {
            database: spec.database.clone(),
            url: String::new(),
            message: "not declared".into(),
            transient: false,
        }));
    };
    let table = crate::database::scan::DatabaseTable::open(spec.clone(), pool)
        .await
        .map_err(err)?;
    let table = Arc::new(table);
    let schema = table.schema();
    ctx.register_table(spec.name.as_str(), table)
        .map_err(|e| CatalogError::read_failed(&spec.name, spec.database.clone(), &e))?;
    Ok(schema)
}

/// Registers a table over files in `ctx`, inferring or parsing its schema, and returns the
/// table's full schema (file columns then partition columns). The schemas of file versions
/// `cache` knows are not read again; those read are handed to it.
pub(crate) async fn register_table(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
    cache: Option<&dyn FileSchemas>,
) -> Result<SchemaRef, CatalogError> {
    register(ctx, stores, spec, None, cache).await
}

/// Registers a table over a share of a source's files (a work unit's) with the source's
/// full schema `known`, so that every share reads the same columns as the same types
/// whatever its own files would infer.
pub(crate) async fn register_share(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
    known: SchemaRef,
) -> Result<SchemaRef, CatalogError> {
    register(ctx, stores, spec, Some(known), None).await
}

async fn register(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
    known: Option<SchemaRef>,
    cache: Option<&dyn FileSchemas>,
) -> Result<SchemaRef, CatalogError> {
    let (table_url, location, store) = resolve(ctx, stores, spec)?;
    let output = register_output(ctx, spec, &location, &store).await?;
    if let AsOutput::Registered(schema) = output {
        return Ok(schema);
    }
    let mut opts = listing_options(ctx, spec).await?;
    if spec.partition_cols.is_empty() {
        let found = discover_partitions(&location, store.as_ref()).await;
        if !found.is_empty() {
            opts = opts.with_table_partition_cols(
                found.into_iter().map(|c| (c, DataType::Utf8)).collect(),
            );
        }
    }

    let text = matches!(spec.format, Format::Csv | Format::Json);
    let quarantine = spec.on_bad_rows == crate::config::OnBadRows::Quarantine && text;
    // A compressed file on object storage may hold several streams one after another, of
    // which DataFusion's stream decoder reads only the first (bzip2, xz, zstd): sluice's own
    // scan reads every stream, failing on the first bad row as the plain read does.
    let every_stream = !quarantine
        && text
        && spec.compression != Compression::None
        && location.url().scheme() != "file";
    let checks_partitions = !quarantine && !opts.table_partition_cols.is_empty();
    let infers = spec.schema.is_none() && known.is_none();
    let drift = spec.schema.is_none() && !quarantine && known.is_none();
    // CSV columns are matched by the header's names: every file's header is read. (A share
    // of a source's files, `known`, is read as the whole source was.)
    let headers = spec.format == Format::Csv && spec.csv.has_header && known.is_none();
    // Every file, listed once for what needs them: the inferred schema, the quarantine scan,
    // the schema-drift check, the partition-value check; else the first, to know there is one.
    let every = infers || quarantine || every_stream || drift || checks_partitions || headers;
    let listed = list_files(
        ctx,
        &table_url,
        &opts,
        store.as_ref(),
        if every { usize::MAX } else { 1 },
    )
    .await
    .map_err(|e| df_err(spec, &e))?;
    let Some(first) = listed.first() else {
        return Err(CatalogError::NoFiles {
            source_name: spec.name.clone(),
            location: spec.location.clone(),
            format: spec.format.name(),
        });
    };

    let reader = schema::FileReader::new(ctx, spec, &store, cache);
    let file_schema = match &known {
        // The file columns: the known schema without the partition columns.
        Some(known) => Arc::new(Schema::new(
            known
                .fields()
                .iter()
                .filter(|f| !opts.table_partition_cols.iter().any(|(p, _)| p == f.name()))
                .cloned()
                .collect::<Vec<_>>(),
        )),
        None => schema::file_schema(ctx, &reader, &table_url, &listed).await?,
    };
    if file_schema.fields().is_empty() {
        // Only empty files: nothing to take columns from.
        let shown = location.display_key(&first.location);
        return Err(read_err(
            spec,
            shown,
            match spec.format {
                Format::Parquet => "0 bytes: not a Parquet file".to_string(),
                _ => "the file is empty (0 bytes), so there are no columns to read: declare the \
                      source's schema to read empty files as no rows"
                    .to_string(),
            },
        ));
    }
    let files = listed;
    if checks_partitions {
        check_partition_values(spec, &table_url, &opts, &location, &files)?;
    }
    // Files of another schema are named with both files first, as for any source.
    let file_schema = if drift {
        check_drift(&reader, &table_url, file_schema, files.clone()).await?
    } else {
        file_schema
    };
    let layouts = if headers {
        let shown = |m: &ObjectMeta| location.display_key(&m.location);
        header::header_layouts(spec, &store, &files, &file_schema, &shown).await?
    } else {
        Default::default()
    };
    if quarantine || every_stream || !layouts.is_empty() {
        // Read by sluice's own scan, which sets bad rows aside instead of failing.
        let shown = location.clone();
        let files = crate::quarantine::SourceFiles {
            store,
            table_url,
            files,
            partition_cols: opts.table_partition_cols.clone(),
            location: shown,
            layouts,
        };
        let on_bad = if quarantine {
            crate::quarantine::OnBad::SetAside
        } else {
            crate::quarantine::OnBad::Fail
        };
        // (Its files are the table's own: see `QuarantineTable::files`.)
        return register_quarantine(ctx, spec, files, file_schema, on_bad);
    }
    register_listing(ctx, spec, table_url, opts, file_schema)
}

/// What a source's location is, as a sluice output.
enum AsOutput {
    /// A sluice output, registered through its manifest: its schema.
    Registered(SchemaRef),
    /// A sluice output whose manifest records no column types (from an early build): read
    /// by listing, its files are still the manifest's.
    Untyped,
    /// Not a sluice output.
    No,
}

/// A sluice output (a folder with a manifest) is read through its manifest: registers it
/// so.
async fn register_output(
    ctx: &SessionContext,
    spec: &SourceConfig,
    location: &Location,
    store: &Arc<dyn object_store::ObjectStore>,
) -> Result<AsOutput, CatalogError> {
    if !location.url().path().ends_with('/') {
        return Ok(AsOutput::No);
    }
    let output = crate::table::Output::new(Arc::clone(store), location.clone());
    // (A manifest without column types, from an early build, is read by listing.)
    let Some(manifest) = output
        .read_manifest()
        .await
        .map_err(|e| read_err(spec, e.key, e.message))?
    else {
        return Ok(AsOutput::No);
    };
    if manifest.schema().is_none() {
        return Ok(AsOutput::Untyped);
    }
    let schema = register_manifest(
        ctx,
        &spec.name,
        location,
        Arc::clone(store),
        &manifest,
        None,
    )
    .await?;
    Ok(AsOutput::Registered(schema))
}

/// Checks that every file's partition folders read as their columns' types. A folder whose
/// value does not would fail the query mid-run without naming the folder: name it now.
fn check_partition_values(
    spec: &SourceConfig,
    table_url: &ListingTableUrl,
    opts: &ListingOptions,
    location: &Location,
    files: &[ObjectMeta],
) -> Result<(), CatalogError> {
    for file in files {
        if let Err(message) = crate::table::hive::partition_values(
            table_url,
            &opts.table_partition_cols,
            &file.location,
        ) {
            return Err(read_err(
                spec,
                location.display_key(&file.location),
                message,
            ));
        }
    }
    Ok(())
}

/// Registers a CSV or JSON source whose bad rows are quarantined: read by sluice's own scan
/// of `files`, which sets bad rows aside instead of failing.
fn register_quarantine(
    ctx: &SessionContext,
    spec: &SourceConfig,
    files: crate::quarantine::SourceFiles,
    file_schema: SchemaRef,
    on_bad: crate::quarantine::OnBad,
) -> Result<SchemaRef, CatalogError> {
    let dialect = match spec.format {
        Format::Json => crate::quarantine::decode::Dialect::Json,
        _ => crate::quarantine::decode::Dialect::csv(spec.csv.clone()),
    };
    let table = crate::quarantine::QuarantineTable::new(
        files,
        file_schema,
        dialect,
        compression_type(spec.compression),
        // (A source that does not quarantine refuses rows without an event time when its
        // units are planned, with their count.)
        spec.event_time
            .clone()
            .filter(|_| on_bad == crate::quarantine::OnBad::SetAside),
        on_bad,
    );
    let full_schema = TableProvider::schema(&table);
    replace_table(ctx, spec, Arc::new(table))?;
    Ok(full_schema)
}

/// Registers a source as a DataFusion `ListingTable` over its files, behind a view that
/// reads its CSV null value as NULL when it has one.
fn register_listing(
    ctx: &SessionContext,
    spec: &SourceConfig,
    table_url: ListingTableUrl,
    opts: ListingOptions,
    file_schema: SchemaRef,
) -> Result<SchemaRef, CatalogError> {
    // DataFusion 55 applies a CSV null value while inferring the schema but not while reading
    // (its CSV reader never receives the regex). So such a source is read with every file
    // column as text, and exposed as a view that maps the null value to NULL and casts each
    // column to its type.
    let null_value = match spec.format {
        Format::Csv => spec.csv.null_value.clone(),
        _ => None,
    };
    let read_schema = match &null_value {
        Some(_) => Arc::new(Schema::new(
            file_schema
                .fields()
                .iter()
                .map(|f| Field::new(f.name(), DataType::Utf8, true))
                .collect::<Vec<_>>(),
        )),
        None => Arc::new(Schema::new(
            file_schema
                .fields()
                .iter()
                .map(|f| {
                    Arc::new(
                        f.as_ref()
                            .clone()
                            .with_data_type(read_type(ctx, f.data_type())),
                    )
                })
                .collect::<Vec<_>>(),
        )),
    };
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(opts)
        .with_schema(read_schema);
    let table = ListingTable::try_new(config).map_err(|e| df_err(spec, &e))?;
    let provider: Arc<dyn TableProvider> = match &null_value {
        None => Arc::new(table),
        Some(null) => {
            null_value_view(ctx, table, &file_schema, null).map_err(|e| df_err(spec, &e))?
        }
    };
    let full_schema = provider.schema();
    replace_table(ctx, spec, provider)?;
    Ok(full_schema)
}

/// A view over `table` (every file column read as text) that maps the CSV null value `null`
/// to NULL and casts each file column to its type in `file_schema`.
fn null_value_view(
    ctx: &SessionContext,
    table: ListingTable,
    file_schema: &SchemaRef,
    null: &str,
) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    use datafusion::prelude::{cast, col, lit, nullif};
    let raw = ctx.read_table(Arc::new(table))?;
    let file_cols: std::collections::HashSet<&str> = file_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    let exprs: Vec<_> = raw
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let c = col(datafusion::common::Column::from_name(f.name()));
            match file_schema.field_with_name(f.name()) {
                Ok(typed) if file_cols.contains(f.name().as_str()) => cast(
                    nullif(c, lit(null.to_string())),
                    read_type(ctx, typed.data_type()),
                )
                .alias(f.name()),
                _ => c,
            }
        })
        .collect();
    Ok(raw.select(exprs)?.into_view())
}

/// The type a column of type `t` is read as in `ctx`'s session: a session that reads Parquet
/// strings without view types (a cluster's: Ballista's shuffle files would hold a view's
/// whole buffers for every batch, 29 GB for one TPC-H SF 10 join) reads columns recorded
/// with them (in a manifest, in a schema cached from a local run) as plain strings too.
fn read_type(ctx: &SessionContext, t: &DataType) -> DataType {
    let views = ctx
        .copied_config()
        .options()
        .execution
        .parquet
        .schema_force_view_types;
    match t {
        DataType::Utf8View if !views => DataType::Utf8,
        DataType::BinaryView if !views => DataType::Binary,
        t => t.clone(),
    }
}

/// Registers `provider` as the source's table, replacing any table of that name.
fn replace_table(
    ctx: &SessionContext,
    spec: &SourceConfig,
    provider: Arc<dyn TableProvider>,
) -> Result<(), CatalogError> {
    ctx.deregister_table(spec.name.as_str())
        .map_err(|e| df_err(spec, &e))?;
    ctx.register_table(spec.name.as_str(), provider)
        .map_err(|e| df_err(spec, &e))?;
    Ok(())
}

/// The Hive partition columns of a folder that declares none: the `key=` folders above its
/// first data file.
async fn discover_partitions(
    location: &Location,
    store: &dyn object_store::ObjectStore,
) -> Vec<String> {
    if !location.url().path().ends_with('/') {
        return Vec::new();
    }
    let prefix = location.path();
    let base = prefix.parts().count();
    let mut listing = store.list(Some(&prefix));
    while let Some(Ok(meta)) = futures::StreamExt::next(&mut listing).await {
        let parts: Vec<String> = meta
            .location
            .parts()
            .skip(base)
            .map(|p| p.as_ref().to_string())
            .collect();
        let Some((_file, dirs)) = parts.split_last() else {
            continue;
        };
        if dirs.iter().any(|d| crate::config::is_hidden(d)) {
            continue;
        }
        return dirs
            .iter()
            .map_while(|d| d.split_once('=').map(|(k, _)| k.to_string()))
            .collect();
    }
    Vec::new()
}

/// Distinguishes the URLs under which manifest views are registered (one per registration,
/// so DataFusion's listing cache never serves an old version).
static MANIFEST_VIEWS: AtomicUsize = AtomicUsize::new(0);

/// Registers the output at `location` (a sluice output folder) as table `name`, reading
/// exactly the files its manifest lists. `order`, when given (the model's planned schema),
/// sets the column order; otherwise the manifest's. Partition columns get their types back,
/// and Hive's NULL folder reads as NULL.
pub(crate) async fn register_manifest(
    ctx: &SessionContext,
    name: &str,
    location: &Location,
    store: Arc<dyn object_store::ObjectStore>,
    manifest: &crate::table::Manifest,
    order: Option<&SchemaRef>,
) -> Result<SchemaRef, CatalogError> {
    use datafusion::prelude::{cast, col, lit, when};
    let shown = location.to_string();
    let read_err = |message: String| CatalogError::Read {
        source_name: name.to_string(),
        location: shown.clone(),
        message,
        transient: false,
    };
    let df_err = |e: DataFusionError| CatalogError::read_failed(name, shown.clone(), &e);
    let Some(format) = Format::parse(&manifest.format) else {
        return Err(read_err(format!(
            "unknown format {:?} in its manifest",
            manifest.format
        )));
    };
    let Some(schema) = manifest.schema() else {
        return Err(read_err(
            "its manifest records no column types (written by an older sluice): rewrite the output"
                .into(),
        ));
    };
    let parts = &manifest.partition_by;
    let read_as = |t: &DataType| read_type(ctx, t);
    let file_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !parts.contains(f.name()))
            .map(|f| Arc::new(f.as_ref().clone().with_data_type(read_as(f.data_type()))))
            .collect::<Vec<_>>(),
    ));

    // The manifest's files, behind a read-only view registered under a URL of its own.
    let view_url = crate::store::view_url(
        "manifest",
        MANIFEST_VIEWS.fetch_add(1, Ordering::Relaxed),
        &location.store_url(),
    );
    let committed_at = manifest.committed();
    let files = manifest
        .data_files()
        .map(|f| (location.child(&f.path), f.bytes));
    let view_store: Arc<dyn object_store::ObjectStore> = Arc::new(
        crate::table::view::ManifestStore::new(store, files, committed_at),
    );
    let store_url = url::Url::parse(&view_url).map_err(|e| read_err(e.to_string()))?;
    ctx.runtime_env()
        .register_object_store(&store_url, Arc::clone(&view_store));
    let prefix = location.path();
    let table_url = ListingTableUrl::parse(format!("{view_url}{prefix}/")).map_err(df_err)?;
    let part_cols: Vec<(String, DataType)> =
        parts.iter().map(|p| (p.clone(), DataType::Utf8)).collect();

    let table: Arc<dyn TableProvider> = if format == Format::Csv {
        // sluice's CSV tells NULL (an empty field) from the empty string (`""`), which
        // DataFusion's CSV reader reads as NULL both: read it with sluice's own scan, which
        // tells them apart (and cuts files only between records).
        let files: Vec<ObjectMeta> = view_store
            .list(Some(&prefix))
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| read_err(e.to_string()))?;
        let shown_location = location.clone();
        let source = crate::quarantine::SourceFiles {
            store: Arc::clone(&view_store),
            table_url,
            files,
            partition_cols: part_cols,
            location: shown_location,
            // sluice writes a CSV output's header in its columns' order.
            layouts: Default::default(),
        };
        Arc::new(crate::quarantine::QuarantineTable::new(
            source,
            file_schema,
            crate::quarantine::decode::Dialect::sluice_csv(),
            datafusion::datasource::file_format::file_compression_type::FileCompressionType::UNCOMPRESSED,
            None,
            crate::quarantine::OnBad::Fail,
        ))
    } else {
        let spec = SourceConfig::new(name, table_url.as_str(), format);
        let mut opts = ListingOptions::new(file_format(&spec)).with_file_extension("");
        if !part_cols.is_empty() {
            opts = opts.with_table_partition_cols(part_cols);
        }
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(opts)
            .with_schema(file_schema);
        Arc::new(ListingTable::try_new(config).map_err(df_err)?)
    };
    let raw = ctx.read_table(table).map_err(df_err)?;

    let wanted: Vec<Field> = match order {
        Some(o) => o.fields().iter().map(|f| f.as_ref().clone()).collect(),
        None => schema.fields().iter().map(|f| f.as_ref().clone()).collect(),
    };
    let mut exprs = Vec::with_capacity(wanted.len());
    for field in &wanted {
        let c = col(datafusion::common::Column::from_name(field.name()));
        let typed = schema
            .field_with_name(field.name())
            .map_err(|e| read_err(e.to_string()))?;
        let expr = if parts.contains(field.name()) {
            when(
                c.clone().eq(lit(crate::table::hive::NULL_PARTITION)),
                lit(datafusion::common::ScalarValue::Null),
            )
            .otherwise(cast(c, read_as(typed.data_type())))
            .map_err(df_err)?
        } else {
            c
        };
        exprs.push(expr.alias(field.name()));
    }
    let view = raw.select(exprs).map_err(df_err)?.into_view();
    let full = view.schema();
    ctx.deregister_table(name).map_err(df_err)?;
    ctx.register_table(name, view).map_err(df_err)?;
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::regex_escape;

    /// The escape sluice used before `regex::escape`: a backslash before each of regex's
    /// meta characters.
    fn hand_escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        for c in s.chars() {
            if "\\.+*?()|[]{}^$#&-~".contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    #[test]
    fn regex_escape_is_the_hand_written_escape() {
        let every_char: String = (0u32..0x3_0000).filter_map(char::from_u32).collect();
        assert_eq!(regex_escape(&every_char), hand_escape(&every_char));
        for null in [
            "", "NULL", "\\N", "n/a", "-", "(none)", "$1.00", "a|b", "^.*$", "#&~",
        ] {
            let re = regex::Regex::new(&format!("^{}$", regex_escape(null))).unwrap();
            assert!(re.is_match(null), "{null:?}");
            assert!(!re.is_match(&format!("{null}x")), "{null:?}");
        }
    }
}
