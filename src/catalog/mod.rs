//! The catalog: makes sources and model outputs readable as SQL tables.
//!
//! A source becomes a DataFusion `ListingTable` over its files (a file, a folder / prefix or a
//! glob), with the format options of `sluice.toml`, Hive partition columns, and a schema that
//! is either declared (`schema = "id BIGINT, ..."`) or inferred. A table model's published
//! output is registered the same way once it is written, so downstream models read it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::ObjectMeta;

use crate::config::{Compression, Format, SourceConfig};
use crate::describe::describe_datafusion;
use crate::store::{Location, StoreError, StoreRegistry};

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
    /// The location itself is invalid.
    #[error("source '{source_name}': {source}")]
    Location {
        /// The source.
        source_name: String,
        /// The location error.
        #[source]
        source: StoreError,
    },
}

impl CatalogError {
    /// Whether the error is the user's configuration (exit status 2): an invalid declared
    /// schema, or a location or store that cannot be used.
    pub fn is_usage(&self) -> bool {
        match self {
            CatalogError::Schema { .. } => true,
            CatalogError::Location { source, .. } => source.is_usage(),
            CatalogError::NoFiles { .. }
            | CatalogError::Read { .. }
            | CatalogError::SchemaDrift { .. } => false,
        }
    }
}

/// DataFusion's name for a source's compression.
pub fn compression_type(c: Compression) -> FileCompressionType {
    match c {
        Compression::None => FileCompressionType::UNCOMPRESSED,
        Compression::Gzip => FileCompressionType::GZIP,
        Compression::Zstd => FileCompressionType::ZSTD,
        Compression::Bzip2 => FileCompressionType::BZIP2,
        Compression::Xz => FileCompressionType::XZ,
    }
}

/// Escapes a literal for use inside a regular expression.
pub(crate) fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The DataFusion file format for a spec.
pub fn file_format(spec: &SourceConfig) -> Arc<dyn FileFormat> {
    let compression = compression_type(spec.compression);
    match spec.format {
        Format::Parquet => Arc::new(ParquetFormat::default()),
        Format::Csv => Arc::new(
            CsvFormat::default()
                .with_has_header(spec.csv.has_header)
                .with_delimiter(spec.csv.delimiter)
                .with_quote(spec.csv.quote)
                .with_escape(spec.csv.escape)
                .with_null_regex(
                    spec.csv
                        .null_value
                        .as_ref()
                        .map(|v| format!("^{}$", regex_escape(v))),
                )
                .with_file_compression_type(compression),
        ),
        Format::Json => Arc::new(JsonFormat::default().with_file_compression_type(compression)),
    }
}

/// Whether a location names one file or a glob rather than a folder / prefix.
fn is_file_or_glob(location: &str) -> bool {
    let last = location.rsplit('/').next().unwrap_or("");
    !location.ends_with('/') && (last.contains('*') || last.contains('?') || last.contains('.'))
}

/// The extension a source's files are listed by: a folder is filtered by it (so `_SUCCESS`
/// and `_MANIFEST` are skipped); a file or glob the user named is taken as it is, whatever
/// its extension (the empty string).
pub fn file_extension(spec: &SourceConfig) -> String {
    if is_file_or_glob(&spec.location) {
        return String::new();
    }
    let suffix = match spec.compression {
        Compression::None => "",
        Compression::Gzip => ".gz",
        Compression::Zstd => ".zst",
        Compression::Bzip2 => ".bz2",
        Compression::Xz => ".xz",
    };
    format!(".{}{suffix}", spec.format.extension())
}

/// The listing options for a spec: format, extension filter, partition columns.
async fn listing_options(
    ctx: &SessionContext,
    spec: &SourceConfig,
) -> Result<ListingOptions, CatalogError> {
    let format = file_format(spec);
    let extension = file_extension(spec);
    let mut cols = Vec::new();
    for pc in &spec.partition_cols {
        let ty = match &pc.sql_type {
            None => DataType::Utf8,
            Some(t) => sql_types(ctx, &spec.name, &[(pc.name.clone(), t.clone())])
                .await?
                .into_iter()
                .next()
                .map(|f| f.data_type().clone())
                .unwrap_or(DataType::Utf8),
        };
        cols.push((pc.name.clone(), ty));
    }
    let mut opts = ListingOptions::new(format).with_file_extension(extension);
    if !cols.is_empty() {
        opts = opts.with_table_partition_cols(cols);
    }
    Ok(opts)
}

/// Resolves SQL types (`BIGINT`, `DECIMAL(10,2)`, `DATE`...) to Arrow fields by planning a
/// `SELECT CAST(NULL AS type)`: the same type rules as the SQL that reads the table.
async fn sql_types(
    ctx: &SessionContext,
    source: &str,
    cols: &[(String, String)],
) -> Result<Vec<Field>, CatalogError> {
    let select: Vec<String> = cols
        .iter()
        .map(|(n, t)| format!("CAST(NULL AS {t}) AS \"{}\"", n.replace('"', "\"\"")))
        .collect();
    let sql = format!("SELECT {}", select.join(", "));
    let schema_text = cols
        .iter()
        .map(|(n, t)| format!("{n} {t}"))
        .collect::<Vec<_>>()
        .join(", ");
    let bad = |message: String| CatalogError::Schema {
        source_name: source.to_string(),
        schema: schema_text.clone(),
        message,
    };
    let plan = ctx
        .state()
        .create_logical_plan(&sql)
        .await
        .map_err(|e| bad(describe_datafusion(&e)))?;
    Ok(plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect())
}

/// Parses a declared schema (`id BIGINT, name VARCHAR, price DECIMAL(10,2)`) into Arrow.
pub async fn parse_schema(
    ctx: &SessionContext,
    source: &str,
    schema: &str,
) -> Result<Schema, CatalogError> {
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let bad = |message: String| CatalogError::Schema {
        source_name: source.to_string(),
        schema: schema.to_string(),
        message,
    };
    let stmt = Parser::parse_sql(&GenericDialect {}, &format!("CREATE TABLE t ({schema})"))
        .map_err(|e| bad(e.to_string()))?;
    let Some(Statement::CreateTable(ct)) = stmt.into_iter().next() else {
        return Err(bad(
            "expected a column list such as \"id BIGINT, name VARCHAR\"".into(),
        ));
    };
    let cols: Vec<(String, String)> = ct
        .columns
        .iter()
        .map(|c| (c.name.value.clone(), c.data_type.to_string()))
        .collect();
    Ok(Schema::new(sql_types(ctx, source, &cols).await?))
}

/// Lists the files a spec covers (at most `limit`, in listing order).
async fn list_files(
    ctx: &SessionContext,
    table_url: &ListingTableUrl,
    opts: &ListingOptions,
    store: &dyn object_store::ObjectStore,
    limit: usize,
) -> datafusion::error::Result<Vec<ObjectMeta>> {
    let state = ctx.state();
    let mut files = Vec::new();
    let mut listing = table_url
        .list_all_files(&state, store, &opts.file_extension)
        .await?;
    while let Some(meta) = listing.try_next().await? {
        files.push(meta);
        if files.len() >= limit {
            break;
        }
    }
    Ok(files)
}

/// Registers a table over files in `ctx`, inferring or parsing its schema, and returns the
/// table's full schema (file columns then partition columns).
pub async fn register_table(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
) -> Result<SchemaRef, CatalogError> {
    let read_err = |location: String, message: String| CatalogError::Read {
        source_name: spec.name.clone(),
        location,
        message,
    };
    let (table_url, location, store) = resolve(ctx, stores, spec)?;
    // A sluice output (a folder with a manifest) is read through its manifest.
    if location.url().path().ends_with('/') {
        let output = crate::table::Output::new(Arc::clone(&store), location.clone());
        // (A manifest without column types, from an early build, is read by listing.)
        if let Some(manifest) = output
            .read_manifest()
            .await
            .map_err(|e| read_err(e.key, e.message))?
            && manifest.schema().is_some()
        {
            return register_manifest(ctx, &spec.name, &location, store, &manifest, None).await;
        }
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

    let first = list_files(ctx, &table_url, &opts, store.as_ref(), 1)
        .await
        .map_err(|e| read_err(spec.location.clone(), describe_datafusion(&e)))?;
    if first.is_empty() {
        return Err(CatalogError::NoFiles {
            source_name: spec.name.clone(),
            location: spec.location.clone(),
            format: spec.format.name(),
        });
    }

    let file_schema: SchemaRef = if let Some(text) = &spec.schema {
        Arc::new(parse_schema(ctx, &spec.name, text).await?)
    } else {
        match opts.infer_schema(&ctx.state(), &table_url).await {
            Ok(s) => s,
            Err(e) => {
                // Files whose columns conflict: name them and the columns.
                let files = list_files(ctx, &table_url, &opts, store.as_ref(), usize::MAX)
                    .await
                    .map_err(|e| read_err(spec.location.clone(), describe_datafusion(&e)))?;
                if let Err(drift @ CatalogError::SchemaDrift { .. }) = check_drift(
                    ctx,
                    spec,
                    &table_url,
                    &store,
                    Arc::new(Schema::empty()),
                    files,
                )
                .await
                {
                    return Err(drift);
                }
                // Name the file at fault: infer each file alone until one fails.
                let culprit = find_unreadable_file(ctx, spec, &table_url, &opts, &store).await;
                let (location, message) =
                    culprit.unwrap_or_else(|| (spec.location.clone(), describe_datafusion(&e)));
                return Err(read_err(location, message));
            }
        }
    };
    if file_schema.fields().is_empty() {
        // Only empty files: nothing to take columns from.
        let shown = location.display_key(&first[0].location);
        return Err(read_err(
            shown,
            match spec.format {
                Format::Parquet => "0 bytes: not a Parquet file".to_string(),
                _ => "the file is empty (0 bytes), so there are no columns to read: declare the \
                      source's schema to read empty files as no rows"
                    .to_string(),
            },
        ));
    }
    let quarantine = spec.on_bad_rows == crate::config::OnBadRows::Quarantine
        && matches!(spec.format, Format::Csv | Format::Json);
    // Every file, listed once for what needs them: the quarantine scan, the schema-drift
    // check, the partition-value check.
    let checks_partitions = !quarantine && !opts.table_partition_cols.is_empty();
    let drift = spec.schema.is_none() && !quarantine;
    let files = if quarantine || drift || checks_partitions {
        list_files(ctx, &table_url, &opts, store.as_ref(), usize::MAX)
            .await
            .map_err(|e| read_err(spec.location.clone(), describe_datafusion(&e)))?
    } else {
        Vec::new()
    };
    if checks_partitions {
        // A folder whose value does not read as its column's type would fail the query
        // mid-run without naming the folder: name it now.
        for file in &files {
            if let Err(message) = crate::table::hive::partition_values(
                &table_url,
                &opts.table_partition_cols,
                &file.location,
            ) {
                return Err(read_err(location.display_key(&file.location), message));
            }
        }
    }
    if quarantine {
        // Read by sluice's own scan, which sets bad rows aside instead of failing.
        let shown = location.clone();
        let dialect = match spec.format {
            Format::Json => crate::quarantine::decode::Dialect::Json,
            _ => crate::quarantine::decode::Dialect::csv(spec.csv.clone()),
        };
        let table = crate::quarantine::QuarantineTable::new(
            crate::quarantine::SourceFiles {
                store,
                table_url: table_url.clone(),
                files,
                partition_cols: opts.table_partition_cols.clone(),
                display: Arc::new(move |m: &ObjectMeta| shown.display_key(&m.location)),
            },
            Arc::clone(&file_schema),
            dialect,
            compression_type(spec.compression),
        );
        let full_schema = datafusion::catalog::TableProvider::schema(&table);
        let df_err = |e: datafusion::error::DataFusionError| {
            read_err(spec.location.clone(), describe_datafusion(&e))
        };
        ctx.deregister_table(spec.name.as_str()).map_err(df_err)?;
        ctx.register_table(spec.name.as_str(), Arc::new(table))
            .map_err(df_err)?;
        return Ok(full_schema);
    }
    let file_schema = if drift {
        check_drift(ctx, spec, &table_url, &store, file_schema, files).await?
    } else {
        file_schema
    };
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
        None => Arc::clone(&file_schema),
    };
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(opts)
        .with_schema(read_schema);
    let table = ListingTable::try_new(config)
        .map_err(|e| read_err(spec.location.clone(), describe_datafusion(&e)))?;
    let df_err = |e: datafusion::error::DataFusionError| {
        read_err(spec.location.clone(), describe_datafusion(&e))
    };
    let provider: Arc<dyn datafusion::catalog::TableProvider> = match &null_value {
        None => Arc::new(table),
        Some(null) => {
            use datafusion::prelude::{cast, col, lit, nullif};
            let raw = ctx.read_table(Arc::new(table)).map_err(df_err)?;
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
                        Ok(typed) if file_cols.contains(f.name().as_str()) => {
                            cast(nullif(c, lit(null.clone())), typed.data_type().clone())
                                .alias(f.name())
                        }
                        _ => c,
                    }
                })
                .collect();
            raw.select(exprs).map_err(df_err)?.into_view()
        }
    };
    let full_schema = provider.schema();
    ctx.deregister_table(spec.name.as_str()).map_err(df_err)?;
    ctx.register_table(spec.name.as_str(), provider)
        .map_err(df_err)?;
    Ok(full_schema)
}

/// A source's table URL, location and store, the store registered with DataFusion.
fn resolve(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
) -> Result<
    (
        ListingTableUrl,
        Location,
        Arc<dyn object_store::ObjectStore>,
    ),
    CatalogError,
> {
    let table_url = ListingTableUrl::parse(&spec.location).map_err(|e| CatalogError::Read {
        source_name: spec.name.clone(),
        location: spec.location.clone(),
        message: describe_datafusion(&e),
    })?;
    let location_err = |source| CatalogError::Location {
        source_name: spec.name.clone(),
        source,
    };
    let location = Location::parse(table_url.as_str()).map_err(location_err)?;
    stores
        .register(&location, ctx.runtime_env().as_ref())
        .map_err(location_err)?;
    let store = stores.store_for(&location).map_err(location_err)?;
    Ok((table_url, location, store))
}

/// Every file a source covers (its folder, file or glob), with sizes.
pub async fn list_source_files(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
) -> Result<Vec<ObjectMeta>, CatalogError> {
    let read_err = |message: String| CatalogError::Read {
        source_name: spec.name.clone(),
        location: spec.location.clone(),
        message,
    };
    let (table_url, _, store) = resolve(ctx, stores, spec)?;
    let opts = listing_options(ctx, spec).await?;
    let mut files = list_files(ctx, &table_url, &opts, store.as_ref(), usize::MAX)
        .await
        .map_err(|e| read_err(describe_datafusion(&e)))?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// On the error path only: infers the schema of each file alone and returns the first file
/// that fails, with its error, so the message can name it.
/// Compares every file's columns with the first file's. Parquet files compare names and
/// types (exact, from their footers); CSV and JSON files compare names only (their types are
/// inferred from samples, which differ between files of one column). With `fail`, any
/// difference is an error naming both files; with `union`, the merged schema DataFusion
/// inferred is kept, but a Parquet column with two types is an error.
async fn check_drift(
    ctx: &SessionContext,
    spec: &SourceConfig,
    table_url: &ListingTableUrl,
    store: &Arc<dyn object_store::ObjectStore>,
    merged: SchemaRef,
    mut files: Vec<ObjectMeta>,
) -> Result<SchemaRef, CatalogError> {
    use crate::config::SchemaEvolution;
    let read_err = |location: String, message: String| CatalogError::Read {
        source_name: spec.name.clone(),
        location,
        message,
    };
    files.sort_by(|a, b| a.location.cmp(&b.location));
    if files.len() < 2 {
        return Ok(merged);
    }
    let Ok(location) = Location::parse(table_url.as_str()) else {
        return Ok(merged);
    };
    let state = ctx.state();
    let format = file_format(spec);
    let typed = spec.format == Format::Parquet;
    let mut first: Option<(String, SchemaRef)> = None;
    for file in &files {
        // An empty text file has no header and no rows: it neither sets nor breaks the
        // columns. (An empty Parquet file is no Parquet file: inferring it fails below.)
        if file.size == 0 && !typed {
            continue;
        }
        let shown = location.display_key(&file.location);
        let schema = format
            .infer_schema(&state, store, std::slice::from_ref(file))
            .await
            .map_err(|e| read_err(shown.clone(), describe_datafusion(&e)))?;
        let Some((first_name, first_schema)) = &first else {
            first = Some((shown, schema));
            continue;
        };
        let mut differences = Vec::new();
        let mut conflict = false;
        for f in first_schema.fields() {
            match schema.field_with_name(f.name()) {
                Err(_) => differences.push(format!("{} only in the first", f.name())),
                Ok(g) if typed && g.data_type() != f.data_type() => {
                    conflict = true;
                    differences.push(format!(
                        "{} is {} in the first, {} in the other",
                        f.name(),
                        f.data_type(),
                        g.data_type()
                    ));
                }
                Ok(_) => {}
            }
        }
        for g in schema.fields() {
            if first_schema.field_with_name(g.name()).is_err() {
                differences.push(format!("{} only in the other", g.name()));
            }
        }
        let fail = match spec.schema_evolution {
            SchemaEvolution::Fail => !differences.is_empty(),
            SchemaEvolution::Union => conflict,
        };
        if fail {
            return Err(CatalogError::SchemaDrift {
                source_name: spec.name.clone(),
                first: first_name.clone(),
                other: shown,
                differences: differences.join(", "),
                hint: match spec.schema_evolution {
                    SchemaEvolution::Fail => {
                        " (set schema_evolution = \"union\" on the source to merge columns by name)"
                    }
                    SchemaEvolution::Union => " (a column cannot have two types)",
                },
            });
        }
    }
    // Merged by name, a column some file lacks reads as NULL there.
    Ok(match spec.schema_evolution {
        SchemaEvolution::Union => Arc::new(Schema::new(
            merged
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        )),
        SchemaEvolution::Fail => merged,
    })
}

async fn find_unreadable_file(
    ctx: &SessionContext,
    spec: &SourceConfig,
    table_url: &ListingTableUrl,
    opts: &ListingOptions,
    store: &Arc<dyn object_store::ObjectStore>,
) -> Option<(String, String)> {
    let files = list_files(ctx, table_url, opts, store.as_ref(), usize::MAX)
        .await
        .ok()?;
    let location = Location::parse(table_url.as_str()).ok()?;
    let state = ctx.state();
    let format = file_format(spec);
    for file in files {
        let objects = [file.clone()];
        if let Err(e) = format.infer_schema(&state, store, &objects).await {
            let mut shown = location.display_key(&file.location);
            // JSON lines: name the first line that is not a JSON value.
            if spec.format == Format::Json
                && spec.compression == Compression::None
                && let Ok(r) =
                    object_store::ObjectStoreExt::get(store.as_ref(), &file.location).await
                && let Ok(bytes) = r.bytes().await
                && let Some(line) = String::from_utf8_lossy(&bytes).lines().position(|l| {
                    !l.trim().is_empty() && serde_json::from_str::<serde_json::Value>(l).is_err()
                })
            {
                shown = format!("{shown}:{}", line + 1);
            }
            return Some((shown, describe_datafusion(&e)));
        }
    }
    None
}

/// The format of a table location: from its extension, or from the first data file found
/// in it (skipping `_` and `.` entries such as `_MANIFEST`).
pub async fn guess_format(
    stores: &StoreRegistry,
    location: &Location,
) -> Result<Format, CatalogError> {
    if let Some(f) = Format::from_path(location.url().path()) {
        return Ok(f);
    }
    let name = location.to_string();
    let folder = location.as_folder();
    let store = stores
        .store_for(&folder)
        .map_err(|source| CatalogError::Location {
            source_name: name.clone(),
            source,
        })?;
    let prefix = folder.path();
    let mut listing = store.list(Some(&prefix));
    while let Some(meta) = futures::StreamExt::next(&mut listing).await {
        let meta = meta.map_err(|e| CatalogError::Read {
            source_name: name.clone(),
            location: name.clone(),
            message: e.to_string(),
        })?;
        let file = meta.location.filename().unwrap_or_default();
        if file.starts_with('_') || file.starts_with('.') {
            continue;
        }
        if let Some(f) = Format::from_path(file) {
            return Ok(f);
        }
    }
    Err(CatalogError::NoFiles {
        source_name: name.clone(),
        location: name,
        format: "parquet, csv or json",
    })
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
        if dirs
            .iter()
            .any(|d| d.starts_with('_') || d.starts_with('.'))
        {
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
pub async fn register_manifest(
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
    };
    let df_err = |e: datafusion::error::DataFusionError| read_err(describe_datafusion(&e));
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
    let file_schema = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !parts.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    ));

    // The manifest's files, behind a read-only view registered under a URL of its own.
    let view_url = format!(
        "sluice-manifest-{}://{}/",
        MANIFEST_VIEWS.fetch_add(1, Ordering::Relaxed),
        location.store_url().host_str().unwrap_or("local")
    );
    let committed_at = chrono::DateTime::parse_from_rfc3339(&manifest.committed_at)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    let files = manifest
        .files
        .iter()
        .map(|f| (location.child(&f.path), f.bytes));
    let view_store = crate::table::view::ManifestStore::new(store, files, committed_at);
    let store_url = url::Url::parse(&view_url).map_err(|e| read_err(e.to_string()))?;
    ctx.runtime_env()
        .register_object_store(&store_url, Arc::new(view_store));
    let prefix = location.path();
    let table_url = ListingTableUrl::parse(format!("{view_url}{prefix}/")).map_err(df_err)?;

    let spec = SourceConfig::new(name, table_url.as_str(), format);
    let mut opts = ListingOptions::new(file_format(&spec)).with_file_extension("");
    if !parts.is_empty() {
        opts = opts
            .with_table_partition_cols(parts.iter().map(|p| (p.clone(), DataType::Utf8)).collect());
    }
    let config = ListingTableConfig::new(table_url)
        .with_listing_options(opts)
        .with_schema(file_schema);
    let table = ListingTable::try_new(config).map_err(df_err)?;
    let raw = ctx.read_table(Arc::new(table)).map_err(df_err)?;

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
            .otherwise(cast(c, typed.data_type().clone()))
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
