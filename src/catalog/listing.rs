//! Where a source's files are and how they are listed: the store behind its location, the
//! DataFusion file format and compression, the extension filter, the listing itself, and
//! the format of a table location named without one.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTableUrl};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::ObjectMeta;

use super::schema::sql_types;
use super::{CatalogError, regex_escape};
use crate::config::{Compression, Format, SourceConfig};
use crate::store::{Location, StoreRegistry};

/// DataFusion's name for a source's compression.
pub(crate) fn compression_type(c: Compression) -> FileCompressionType {
    match c {
        Compression::None => FileCompressionType::UNCOMPRESSED,
        Compression::Gzip => FileCompressionType::GZIP,
        Compression::Zstd => FileCompressionType::ZSTD,
        Compression::Bzip2 => FileCompressionType::BZIP2,
        Compression::Xz => FileCompressionType::XZ,
    }
}

/// The DataFusion Parquet format sources are read with.
pub(super) fn parquet_format() -> ParquetFormat {
    ParquetFormat::default()
}

/// The DataFusion file format for a spec.
pub(crate) fn file_format(spec: &SourceConfig) -> Arc<dyn FileFormat> {
    let compression = compression_type(spec.compression);
    match spec.format {
        Format::Parquet => Arc::new(parquet_format()),
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
pub(crate) fn file_extension(spec: &SourceConfig) -> String {
    if is_file_or_glob(&spec.location) {
        return String::new();
    }
    format!(".{}{}", spec.format.extension(), spec.compression.suffix())
}

/// The listing options for a spec: format, extension filter, partition columns.
pub(super) async fn listing_options(
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

/// Lists the files a spec covers (at most `limit`, in listing order).
pub(super) async fn list_files(
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

/// A source's table URL, location and store, the store registered with DataFusion.
pub(super) fn resolve(
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
    let table_url = ListingTableUrl::parse(&spec.location)
        .map_err(|e| CatalogError::read_failed(&spec.name, spec.location.clone(), &e))?;
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
pub(crate) async fn list_source_files(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
) -> Result<Vec<ObjectMeta>, CatalogError> {
    Ok(list_source(ctx, stores, spec).await?.0)
}

/// [`list_source_files`], and whether they are a sluice output's, listed by its manifest
/// (its table reads the version it was registered with, however often it is scanned).
pub(crate) async fn list_source(
    ctx: &SessionContext,
    stores: &StoreRegistry,
    spec: &SourceConfig,
) -> Result<(Vec<ObjectMeta>, bool), CatalogError> {
    let (table_url, location, store) = resolve(ctx, stores, spec)?;
    // A sluice output's files are its manifest's: a listing would also find the leftovers of
    // a crashed write, which no reader may see.
    if location.url().path().ends_with('/') {
        let output = crate::table::Output::new(Arc::clone(&store), location.clone());
        let manifest = output
            .read_manifest()
            .await
            .map_err(|e| CatalogError::Read {
                source_name: spec.name.clone(),
                location: e.key,
                message: e.message,
                transient: false,
            })?;
        if let Some(manifest) = manifest {
            return Ok((manifest.objects(&location), true));
        }
    }
    let opts = listing_options(ctx, spec).await?;
    let mut files = list_files(ctx, &table_url, &opts, store.as_ref(), usize::MAX)
        .await
        .map_err(|e| CatalogError::read_failed(&spec.name, spec.location.clone(), &e))?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok((files, false))
}

/// The format of a table location: from its extension, or from the first data file found
/// in it (skipping `_` and `.` entries such as `_MANIFEST`).
pub(crate) async fn guess_format(
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
            transient: false,
        })?;
        let file = meta.location.filename().unwrap_or_default();
        if crate::config::is_hidden(file) {
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
