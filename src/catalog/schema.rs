//! A source's columns: a declared schema or SQL types resolved to Arrow, the check that
//! every file has the same columns (schema drift), and, when inference fails, the file to
//! blame. Each file's schema can come from a cache of the file versions read before
//! ([`FileSchemas`]), so that a source whose files did not change reads none of them.

use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Fields, Schema, SchemaRef};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::{
    ParquetFormat, transform_binary_to_string, transform_schema_to_view,
};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::prelude::SessionContext;
use object_store::ObjectMeta;

use super::CatalogError;
use super::listing::{file_format, parquet_format};
use crate::config::{Compression, Format, SourceConfig};
use crate::describe::describe_datafusion;
use crate::store::Location;

/// The schemas of a source's files as earlier reads found them, by file version, kept by the
/// caller between runs (a run keeps them in its state store). A file version found here is
/// not read again; each file read is handed back to be kept. Without one, a source's files
/// are read as DataFusion's inference reads them.
///
/// What is kept of a file is what the format reads from it alone, before the merge: a
/// Parquet file's schema as its footer gives it (its metadata included), which the
/// inference's merge and coercions are applied to as DataFusion applies them; a CSV or JSON
/// file's inferred schema (used by the drift check only: the types of a text source are
/// inferred over its files together, by DataFusion, as without a cache).
pub(crate) trait FileSchemas: Send + Sync {
    /// What was read of this version of `file` (path, size, modification time, etag).
    fn get(&self, file: &ObjectMeta) -> Option<SchemaRef>;
    /// What was just read of `file`.
    fn put(&self, file: &ObjectMeta, schema: SchemaRef);
}

/// Reads the schemas of a source's files, each alone, through the cache when there is one.
pub(super) struct FileReader<'a> {
    state: SessionState,
    spec: &'a SourceConfig,
    store: &'a Arc<dyn object_store::ObjectStore>,
    format: Arc<dyn FileFormat>,
    cache: Option<&'a dyn FileSchemas>,
}

impl<'a> FileReader<'a> {
    pub(super) fn new(
        ctx: &SessionContext,
        spec: &'a SourceConfig,
        store: &'a Arc<dyn object_store::ObjectStore>,
        cache: Option<&'a dyn FileSchemas>,
    ) -> FileReader<'a> {
        FileReader {
            state: ctx.state(),
            spec,
            store,
            format: file_format(spec),
            cache,
        }
    }

    /// What the cache keeps of `file` (see [`FileSchemas`]): read unless it is known.
    async fn kept(
        &self,
        cache: &dyn FileSchemas,
        file: &ObjectMeta,
    ) -> Result<SchemaRef, DataFusionError> {
        if let Some(schema) = cache.get(file) {
            return Ok(schema);
        }
        let files = std::slice::from_ref(file);
        let schema = match self.spec.format {
            // The footer's schema as it is: no metadata dropped, no type coerced.
            Format::Parquet => {
                parquet_format()
                    .with_skip_metadata(false)
                    .with_binary_as_string(false)
                    .with_force_view_types(false)
                    .infer_schema(&self.state, self.store, files)
                    .await?
            }
            _ => {
                self.format
                    .infer_schema(&self.state, self.store, files)
                    .await?
            }
        };
        cache.put(file, Arc::clone(&schema));
        Ok(schema)
    }

    /// The columns of `file` inferred from it alone, as the drift check compares them.
    async fn alone(&self, file: &ObjectMeta) -> Result<SchemaRef, DataFusionError> {
        let Some(cache) = self.cache else {
            return self
                .format
                .infer_schema(&self.state, self.store, std::slice::from_ref(file))
                .await;
        };
        let kept = self.kept(cache, file).await?;
        match self.spec.format {
            Format::Parquet => Ok(Arc::new(merge_parquet(&parquet_format(), [kept])?)),
            _ => Ok(kept),
        }
    }

    /// The columns of `files` (none of them empty) together: the schema DataFusion's
    /// inference gives. From the cache, a Parquet source's file schemas are merged as the
    /// inference merges them, reading only the files the cache does not know.
    async fn inferred(&self, files: &[ObjectMeta]) -> Result<SchemaRef, DataFusionError> {
        let Some(cache) = self.cache.filter(|_| self.spec.format == Format::Parquet) else {
            return self
                .format
                .infer_schema(&self.state, self.store, files)
                .await;
        };
        // Read as many at once as DataFusion's inference does.
        let at_once = self
            .state
            .config_options()
            .execution
            .meta_fetch_concurrency
            .get();
        let mut kept: Vec<(&ObjectMeta, SchemaRef)> =
            futures::stream::iter(files)
                .map(|file| async move {
                    Ok::<_, DataFusionError>((file, self.kept(cache, file).await?))
                })
                .buffer_unordered(at_once)
                .try_collect()
                .await?;
        // In the order of the files' paths, as the inference merges them.
        kept.sort_by(|(a, _), (b, _)| a.location.cmp(&b.location));
        Ok(Arc::new(merge_parquet(
            &parquet_format(),
            kept.into_iter().map(|(_, s)| s),
        )?))
    }
}

/// Parquet file schemas (as their footers give them, in the files' path order) merged as
/// DataFusion's `ParquetFormat::infer_schema` merges them with `format`'s options: metadata
/// dropped (`skip_metadata`), `Schema::try_merge`, binary read as text (`binary_as_string`),
/// text and binary as view types (`schema_force_view_types`).
fn merge_parquet(
    format: &ParquetFormat,
    schemas: impl IntoIterator<Item = SchemaRef>,
) -> Result<Schema, DataFusionError> {
    let schemas = schemas.into_iter().map(|s| s.as_ref().clone());
    let schema = if format.skip_metadata() {
        Schema::try_merge(schemas.map(|schema| {
            Schema::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_metadata(Default::default()))
                    .collect::<Fields>(),
            )
        }))
    } else {
        Schema::try_merge(schemas)
    }?;
    let schema = if format.binary_as_string() {
        transform_binary_to_string(&schema)
    } else {
        schema
    };
    Ok(if format.force_view_types() {
        transform_schema_to_view(&schema)
    } else {
        schema
    })
}

/// Resolves SQL types (`BIGINT`, `DECIMAL(10,2)`, `DATE`...) to Arrow fields by planning a
/// `SELECT CAST(NULL AS type)`: the same type rules as the SQL that reads the table.
pub(super) async fn sql_types(
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
pub(crate) async fn parse_schema(
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

/// Compares every file's columns with the first file's. Parquet files compare names and
/// types (exact, from their footers); CSV and JSON files compare names only (their types are
/// inferred from samples, which differ between files of one column). With `fail`, any
/// difference is an error naming both files; with `union`, the merged schema DataFusion
/// inferred is kept, but a Parquet column with two types is an error.
pub(super) async fn check_drift(
    reader: &FileReader<'_>,
    table_url: &ListingTableUrl,
    merged: SchemaRef,
    mut files: Vec<ObjectMeta>,
) -> Result<SchemaRef, CatalogError> {
    use crate::config::SchemaEvolution;
    let spec = reader.spec;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    if files.len() < 2 {
        return Ok(merged);
    }
    let Ok(location) = Location::parse(table_url.as_str()) else {
        return Ok(merged);
    };
    let typed = spec.format == Format::Parquet;
    let mut first: Option<(String, SchemaRef)> = None;
    // Each file's schema, read 16 at a time (a footer or a header each: on object storage,
    // one request's latency each; none for a file version the cache knows) and compared in
    // file order.
    let location = &location;
    let mut schemas = futures::stream::iter(
        files
            .iter()
            // An empty text file has no header and no rows: it neither sets nor breaks the
            // columns. (An empty Parquet file is no Parquet file: inferring it fails below.)
            .filter(|file| file.size > 0 || typed),
    )
    .map(|file| async move {
        let shown = location.display_key(&file.location);
        reader
            .alone(file)
            .await
            .map(|schema| (shown.clone(), schema))
            .map_err(|e| CatalogError::read_failed(&spec.name, shown, &e))
    })
    .buffered(16);
    while let Some(read) = schemas.next().await {
        let (shown, schema) = read?;
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

/// The schema of text files inferred one by one and merged by name (in first-seen order),
/// each column's types widened to one every file's values parse as: timestamps to the finest
/// unit, integers and decimals to Float64, anything else to Utf8. `None` if a file cannot be
/// inferred.
async fn widened_schema(
    ctx: &SessionContext,
    spec: &SourceConfig,
    files: &[ObjectMeta],
    store: &Arc<dyn object_store::ObjectStore>,
) -> Option<SchemaRef> {
    use datafusion::arrow::datatypes::{DataType, Field};
    let state = ctx.state();
    let format = file_format(spec);
    let mut fields: Vec<Field> = Vec::new();
    for file in files.iter().filter(|f| f.size > 0) {
        let schema = format
            .infer_schema(&state, store, std::slice::from_ref(file))
            .await
            .ok()?;
        for g in schema.fields() {
            match fields.iter_mut().find(|f| f.name() == g.name()) {
                None => fields.push(g.as_ref().clone()),
                Some(f) if f.data_type() == g.data_type() => {}
                Some(f) => {
                    let wide = match (f.data_type(), g.data_type()) {
                        (DataType::Null, t) | (t, DataType::Null) => t.clone(),
                        (DataType::Timestamp(a, tz), DataType::Timestamp(b, tz2)) if tz == tz2 => {
                            DataType::Timestamp((*a).max(*b), tz.clone())
                        }
                        (a, b) if a.is_numeric() && b.is_numeric() => DataType::Float64,
                        _ => DataType::Utf8,
                    };
                    *f = f.clone().with_data_type(wide).with_nullable(true);
                }
            }
        }
    }
    Some(Arc::new(Schema::new(fields)))
}

/// On the error path only: infers the schema of each file alone and returns the first file
/// that fails, with its error, so the message can name it.
async fn find_unreadable_file(
    ctx: &SessionContext,
    spec: &SourceConfig,
    table_url: &ListingTableUrl,
    files: &[ObjectMeta],
    store: &Arc<dyn object_store::ObjectStore>,
) -> Option<(String, String)> {
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

/// The columns of a source's files (`files`, every file it lists, in listing order): its
/// declared schema, or the one DataFusion infers (through `reader`'s cache when it has one).
/// When inference fails, the error names the files whose columns conflict, or the file that
/// cannot be read.
pub(super) async fn file_schema(
    ctx: &SessionContext,
    reader: &FileReader<'_>,
    table_url: &ListingTableUrl,
    files: &[ObjectMeta],
) -> Result<SchemaRef, CatalogError> {
    let spec = reader.spec;
    let store = reader.store;
    let read_err = |location: String, message: String| CatalogError::Read {
        source_name: spec.name.clone(),
        location,
        message,
        transient: false,
    };
    if let Some(text) = &spec.schema {
        return Ok(Arc::new(parse_schema(ctx, &spec.name, text).await?));
    }
    // Empty files cannot give columns but could fail the read (as DataFusion's inference
    // skips them).
    let nonempty: Vec<ObjectMeta> = files.iter().filter(|f| f.size > 0).cloned().collect();
    match reader.inferred(&nonempty).await {
        Ok(s) => Ok(s),
        Err(e) => {
            // Files whose columns conflict: name them and the columns.
            if let Err(drift @ CatalogError::SchemaDrift { .. }) =
                check_drift(reader, table_url, Arc::new(Schema::empty()), files.to_vec()).await
            {
                return Err(drift);
            }
            // Text files whose inferred types differ (a timestamp with and without a fraction
            // of a second, an integer and a decimal): each file's inferred alone, widened.
            if spec.format != Format::Parquet
                && let Some(widened) = widened_schema(ctx, spec, files, store).await
            {
                return Ok(widened);
            }
            // Name the file at fault: infer each file alone until one fails.
            let culprit = find_unreadable_file(ctx, spec, table_url, files, store).await;
            Err(match culprit {
                Some((location, message)) => read_err(location, message),
                None => CatalogError::read_failed(&spec.name, spec.location.clone(), &e),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::prelude::SessionContext;
    use object_store::ObjectMeta;
    use object_store::local::LocalFileSystem;

    use super::{FileReader, FileSchemas};
    use crate::config::{Format, SourceConfig};

    /// A file version: path, size, modification time, etag.
    type Version = (String, u64, String, Option<String>);

    /// A cache in memory, counting what was read.
    #[derive(Default)]
    struct Memory {
        known: Mutex<HashMap<Version, SchemaRef>>,
        reads: Mutex<usize>,
    }

    fn version(file: &ObjectMeta) -> Version {
        (
            file.location.to_string(),
            file.size,
            file.last_modified.to_rfc3339(),
            file.e_tag.clone(),
        )
    }

    impl FileSchemas for Memory {
        fn get(&self, file: &ObjectMeta) -> Option<SchemaRef> {
            self.known.lock().unwrap().get(&version(file)).cloned()
        }
        fn put(&self, file: &ObjectMeta, schema: SchemaRef) {
            *self.reads.lock().unwrap() += 1;
            self.known.lock().unwrap().insert(version(file), schema);
        }
    }

    fn meta(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Writes one Parquet file (no rows) of each schema into a folder of its own.
    fn folder(schemas: &[Schema]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (i, schema) in schemas.iter().enumerate() {
            let schema = std::sync::Arc::new(schema.clone());
            let file = std::fs::File::create(dir.path().join(format!("f{i:02}.parquet"))).unwrap();
            let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
            writer.write(&RecordBatch::new_empty(schema)).unwrap();
            writer.close().unwrap();
        }
        dir
    }

    /// The sets of files whose schemas are compared: the same, merged, conflicting.
    fn cases() -> Vec<(&'static str, Vec<Schema>)> {
        let f = |n: &str, t: DataType, null: bool| Field::new(n, t, null);
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let utc = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let point = DataType::Struct(
            vec![
                f("x", DataType::Float64, true),
                f("y", DataType::Float64, true),
            ]
            .into(),
        );
        let point_z = DataType::Struct(
            vec![
                f("x", DataType::Float64, true),
                f("z", DataType::Int32, true),
            ]
            .into(),
        );
        let list = DataType::List(std::sync::Arc::new(f("item", DataType::Utf8, true)));
        let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let base = Schema::new(vec![
            f("id", DataType::Int64, false),
            f("name", DataType::Utf8, true),
            f("ts", ts.clone(), true),
        ]);
        vec![
            ("the same", vec![base.clone(), base.clone(), base.clone()]),
            (
                "more columns, another order",
                vec![
                    base.clone(),
                    Schema::new(vec![
                        f("price", DataType::Decimal128(10, 2), true),
                        f("id", DataType::Int64, false),
                    ]),
                ],
            ),
            (
                "nullability",
                vec![
                    Schema::new(vec![f("id", DataType::Int64, false)]),
                    Schema::new(vec![f("id", DataType::Int64, true)]),
                ],
            ),
            (
                "two types",
                vec![
                    Schema::new(vec![f("id", DataType::Int64, true)]),
                    Schema::new(vec![f("id", DataType::Utf8, true)]),
                ],
            ),
            (
                "text and large text",
                vec![
                    Schema::new(vec![f("s", DataType::Utf8, true)]),
                    Schema::new(vec![f("s", DataType::LargeUtf8, true)]),
                ],
            ),
            (
                "binary and large binary",
                vec![
                    Schema::new(vec![f("b", DataType::Binary, true)]),
                    Schema::new(vec![f("b", DataType::LargeBinary, true)]),
                ],
            ),
            (
                "null and text",
                vec![
                    Schema::new(vec![f("s", DataType::Null, true)]),
                    Schema::new(vec![f("s", DataType::Utf8, true)]),
                ],
            ),
            (
                "metadata",
                vec![
                    Schema::new_with_metadata(
                        vec![
                            f("id", DataType::Int64, true).with_metadata(meta(&[("k", "1")])),
                            f("t", utc.clone(), true),
                        ],
                        meta(&[("owner", "a")]),
                    ),
                    Schema::new_with_metadata(
                        vec![
                            f("id", DataType::Int64, true).with_metadata(meta(&[("k", "2")])),
                            f("t", utc, true),
                        ],
                        meta(&[("owner", "b")]),
                    ),
                ],
            ),
            (
                "nested",
                vec![
                    Schema::new(vec![
                        f("p", point, true),
                        f("tags", list.clone(), true),
                        f("d", dict.clone(), true),
                        f("bin", DataType::Binary, true),
                    ]),
                    Schema::new(vec![
                        f("p", point_z, true),
                        f("tags", list, true),
                        f("d", dict, true),
                        f("bin", DataType::Binary, true),
                    ]),
                ],
            ),
        ]
    }

    /// What a source's files read as, their merged schema and each file's alone, as text
    /// (an error as its message).
    async fn read(
        ctx: &SessionContext,
        spec: &SourceConfig,
        files: &[ObjectMeta],
        cache: Option<&dyn FileSchemas>,
    ) -> (String, Vec<String>) {
        let store: std::sync::Arc<dyn object_store::ObjectStore> =
            std::sync::Arc::new(LocalFileSystem::new());
        let reader = FileReader::new(ctx, spec, &store, cache);
        let show = |r: Result<SchemaRef, datafusion::error::DataFusionError>| match r {
            Ok(s) => format!("{s:#?}"),
            Err(e) => format!("error: {e}"),
        };
        let merged = show(reader.inferred(files).await);
        let mut alone = Vec::new();
        for file in files {
            alone.push(show(reader.alone(file).await));
        }
        (merged, alone)
    }

    /// A Parquet source's schema from the cache, cold or warm, is the one DataFusion infers
    /// from its files, field metadata, nullability and view types included; and each file's
    /// alone too (what the drift check compares). A warm cache reads no file.
    #[tokio::test]
    async fn cached_parquet_schemas_are_what_datafusion_infers() {
        let ctx = SessionContext::new();
        for (case, schemas) in cases() {
            let dir = folder(&schemas);
            let spec =
                SourceConfig::new("s", &format!("{}/", dir.path().display()), Format::Parquet);
            let store = LocalFileSystem::new();
            let prefix = object_store::path::Path::from_filesystem_path(dir.path()).unwrap();
            let mut files: Vec<ObjectMeta> = futures::TryStreamExt::try_collect(
                object_store::ObjectStore::list(&store, Some(&prefix)),
            )
            .await
            .unwrap();
            files.sort_by(|a, b| b.location.cmp(&a.location));
            let direct = read(&ctx, &spec, &files, None).await;
            let cache = Memory::default();
            let cold = read(&ctx, &spec, &files, Some(&cache)).await;
            assert_eq!(cold, direct, "{case}: cold cache");
            assert_eq!(*cache.reads.lock().unwrap(), schemas.len(), "{case}");
            let warm = read(&ctx, &spec, &files, Some(&cache)).await;
            assert_eq!(warm, direct, "{case}: warm cache");
            assert_eq!(
                *cache.reads.lock().unwrap(),
                schemas.len(),
                "{case}: read again"
            );
        }
    }
}
