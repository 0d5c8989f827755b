//! A source's columns: a declared schema or SQL types resolved to Arrow, the check that
//! every file has the same columns (schema drift), and, when inference fails, the file to
//! blame.

use futures::StreamExt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::datasource::listing::{ListingOptions, ListingTableUrl};
use datafusion::prelude::SessionContext;
use object_store::ObjectMeta;

use super::CatalogError;
use super::listing::{file_format, list_files};
use crate::config::{Compression, Format, SourceConfig};
use crate::describe::describe_datafusion;
use crate::store::Location;

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
    ctx: &SessionContext,
    spec: &SourceConfig,
    table_url: &ListingTableUrl,
    store: &Arc<dyn object_store::ObjectStore>,
    merged: SchemaRef,
    mut files: Vec<ObjectMeta>,
) -> Result<SchemaRef, CatalogError> {
    use crate::config::SchemaEvolution;
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
    // Each file's schema, read 16 at a time (a footer or a header each: on object storage,
    // one request's latency each) and compared in file order.
    let (state, format, location) = (&state, &format, &location);
    let mut schemas = futures::stream::iter(
        files
            .iter()
            // An empty text file has no header and no rows: it neither sets nor breaks the
            // columns. (An empty Parquet file is no Parquet file: inferring it fails below.)
            .filter(|file| file.size > 0 || typed),
    )
    .map(|file| async move {
        let shown = location.display_key(&file.location);
        format
            .infer_schema(state, store, std::slice::from_ref(file))
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
    table_url: &ListingTableUrl,
    opts: &ListingOptions,
    store: &Arc<dyn object_store::ObjectStore>,
) -> Option<SchemaRef> {
    use datafusion::arrow::datatypes::{DataType, Field};
    let files = list_files(ctx, table_url, opts, store.as_ref(), usize::MAX)
        .await
        .ok()?;
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

/// The columns of a source's files: its declared schema, or the one DataFusion infers. When
/// inference fails, the error names the files whose columns conflict, or the file that
/// cannot be read.
pub(super) async fn file_schema(
    ctx: &SessionContext,
    spec: &SourceConfig,
    table_url: &ListingTableUrl,
    opts: &ListingOptions,
    store: &Arc<dyn object_store::ObjectStore>,
) -> Result<SchemaRef, CatalogError> {
    let read_err = |location: String, message: String| CatalogError::Read {
        source_name: spec.name.clone(),
        location,
        message,
        transient: false,
    };
    if let Some(text) = &spec.schema {
        return Ok(Arc::new(parse_schema(ctx, &spec.name, text).await?));
    }
    match opts.infer_schema(&ctx.state(), table_url).await {
        Ok(s) => Ok(s),
        Err(e) => {
            // Files whose columns conflict: name them and the columns.
            let files = list_files(ctx, table_url, opts, store.as_ref(), usize::MAX)
                .await
                .map_err(|e| CatalogError::read_failed(&spec.name, spec.location.clone(), &e))?;
            if let Err(drift @ CatalogError::SchemaDrift { .. }) = check_drift(
                ctx,
                spec,
                table_url,
                store,
                Arc::new(Schema::empty()),
                files,
            )
            .await
            {
                return Err(drift);
            }
            // Text files whose inferred types differ (a timestamp with and without a fraction
            // of a second, an integer and a decimal): each file's inferred alone, widened.
            if spec.format != Format::Parquet
                && let Some(widened) = widened_schema(ctx, spec, table_url, opts, store).await
            {
                return Ok(widened);
            }
            // Name the file at fault: infer each file alone until one fails.
            let culprit = find_unreadable_file(ctx, spec, table_url, opts, store).await;
            Err(match culprit {
                Some((location, message)) => read_err(location, message),
                None => CatalogError::read_failed(&spec.name, spec.location.clone(), &e),
            })
        }
    }
}
