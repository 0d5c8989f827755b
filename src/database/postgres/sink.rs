//! Loading a model's result into a PostgreSQL table, in one transaction: readers see the old
//! rows or the new ones, never a part, and a killed load leaves the table as it was.
//!
//! ```sql
//! BEGIN READ WRITE;
//! CREATE TABLE IF NOT EXISTS "schema"."_sluice_commits" (...);
//! SELECT 1 FROM "schema"."_sluice_commits" WHERE pipeline = $1 AND model = $2 AND commit_id = $3;
//!   -- found: this load was committed already (a resumed run): ROLLBACK, done
//! CREATE TABLE "schema"."t" (...);               -- only when missing
//! DELETE FROM "schema"."t";                      -- overwrite
//! COPY "schema"."t" (cols) FROM STDIN (FORMAT binary);
//!   -- upsert: COPY into a temporary table, then INSERT ... ON CONFLICT (key) DO UPDATE
//! INSERT INTO "schema"."_sluice_commits" VALUES (...);
//! COMMIT;
//! ```
//!
//! The commit record in the same transaction makes a load happen at most once per commit
//! id, whenever the process is killed: an append is never applied twice. Overwrite deletes
//! rather than truncates: readers keep reading the old rows, unblocked, until the commit.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::execution::SendableRecordBatchStream;
use futures::{SinkExt, StreamExt};

use super::copy_encode::{CopyEncoder, Put};
use super::{Session, connect, quote_ident, server_error};
use crate::config::{DatabaseSinkConfig, TableWrite};
use crate::database::sink::{
    COMMITS, Commit, Loaded, key_in_result, match_columns, schema_name, table_name,
};
use crate::database::{DatabaseError, Pool};

/// Bytes of COPY data gathered before they are sent.
const CHUNK: usize = 1 << 20;

/// A column of the target table, as the catalog describes it.
#[derive(Debug, Clone)]
struct TableColumn {
    name: String,
    /// As `format_type` shows it, for messages: `numeric(12,2)`.
    shown: String,
    /// The type's name (a domain's base type): `numeric`.
    base: String,
    /// Its modifier (-1: none).
    typmod: i32,
    /// `e` for an enum.
    typtype: String,
    not_null: bool,
    /// A default, an identity or a generated value.
    has_default: bool,
    generated: bool,
}

/// What the target table is, checked against the result's columns.
struct Target {
    /// The schema the table is (or will be) in.
    schema: String,
    /// How each result column is written.
    puts: Vec<Put>,
    /// The `CREATE TABLE` when the table is missing.
    create: Option<String>,
}

/// Checks, before any work, that the result (`schema`) can be loaded into the sink's table:
/// `Ok(true)` when it exists and takes it, `Ok(false)` when it is missing (the load creates
/// it); an error saying why not otherwise.
pub(crate) async fn check(
    pool: &Arc<Pool>,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
) -> Result<bool, DatabaseError> {
    let session = connect(pool).await?;
    let target = inspect(pool, &session, sink, schema).await?;
    session.park().await;
    Ok(target.create.is_none())
}

/// Loads `rows` (batches of `schema`) into the sink's table in one transaction, with its
/// commit record; does nothing when the record shows the load was committed already.
pub(crate) async fn load(
    pool: &Arc<Pool>,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
    commit: &Commit,
    rows: SendableRecordBatchStream,
) -> Result<Loaded, DatabaseError> {
    let session = connect(pool).await?;
    super::note_server(pool, session.client()).await;
    let loaded = load_in(pool, &session, sink, schema, commit, rows).await?;
    // Committed or rolled back: outside any transaction, reusable. (On an error the
    // session is dropped, which ends the connection and so rolls the transaction back.)
    session.park().await;
    Ok(loaded)
}

async fn load_in(
    pool: &Arc<Pool>,
    session: &Session,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
    commit: &Commit,
    mut rows: SendableRecordBatchStream,
) -> Result<Loaded, DatabaseError> {
    let client = session.client();
    let doing = |what: &str| format!("loading table {}: {what}", sink.table);
    let exec = |sql: String, what: &'static str| async move {
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| server_error(pool, &e, &doing(what)))
    };
    exec("BEGIN READ WRITE".into(), "starting the transaction").await?;
    // (Checked again inside the transaction: the table may have changed since the run began.)
    let target = inspect(pool, session, sink, schema).await?;
    let commits = format!("{}.{}", quote_ident(&target.schema), quote_ident(COMMITS));
    // (Created only when missing: CREATE ... IF NOT EXISTS needs the right to create in the
    // schema even when the table is there, which a loading role may not have.)
    let has_commits = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&commits])
        .await
        .map_err(|e| server_error(pool, &e, &doing("looking up sluice's commit records")))?
        .get::<_, bool>(0);
    if !has_commits {
        exec(
            format!(
                "CREATE TABLE IF NOT EXISTS {commits} (pipeline text NOT NULL, model text NOT \
                 NULL, commit_id text NOT NULL, run_id text NOT NULL, target text NOT NULL, \
                 mode text NOT NULL, rows bigint NOT NULL, committed_at timestamptz NOT NULL \
                 DEFAULT now(), PRIMARY KEY (pipeline, model, commit_id))"
            ),
            "creating the table of sluice's commit records",
        )
        .await?;
    }
    let found = client
        .query_opt(
            &format!(
                "SELECT rows, run_id FROM {commits} WHERE pipeline = $1 AND model = $2 AND \
                 commit_id = $3"
            ),
            &[&commit.pipeline, &commit.model, &commit.commit_id],
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("reading sluice's commit records")))?;
    if let Some(row) = found {
        exec("ROLLBACK".into(), "ending the transaction").await?;
        let rows: i64 = row.get(0);
        return Ok(Loaded {
            rows: rows.max(0) as u64,
            bytes: 0,
            method: "",
            already: Some(row.get(1)),
        });
    }
    let table = format!(
        "{}.{}",
        quote_ident(&target.schema),
        quote_ident(table_name(sink))
    );
    if let Some(create) = &target.create {
        exec(create.clone(), "creating the table").await?;
    }
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let columns = names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    let copy_into = match sink.mode {
        TableWrite::Overwrite => {
            exec(format!("DELETE FROM {table}"), "deleting the old rows").await?;
            table.clone()
        }
        TableWrite::Append => table.clone(),
        TableWrite::Upsert => {
            exec(
                format!(
                    "CREATE TEMP TABLE _sluice_stage ON COMMIT DROP AS SELECT {columns} FROM \
                     {table} WITH NO DATA"
                ),
                "creating the staging table",
            )
            .await?;
            "_sluice_stage".to_string()
        }
    };
    let copy = format!("COPY {copy_into} ({columns}) FROM STDIN (FORMAT binary)");
    let sending = client
        .copy_in::<_, bytes::Bytes>(copy.as_str())
        .await
        .map_err(|e| server_error(pool, &e, &doing("starting the COPY")))?;
    let mut sending = std::pin::pin!(sending);
    let mut encoder = CopyEncoder::new(names.clone(), target.puts.clone());
    let mut bytes = 0u64;
    while let Some(batch) = rows.next().await {
        let batch = batch
            .map_err(|e| pool.error(doing(&format!("reading the rows to load: {e}")), false))?;
        encoder
            .push(&batch)
            .map_err(|e| pool.error(doing(&e), false))?;
        if encoder.pending() >= CHUNK {
            let chunk = encoder.take();
            bytes += chunk.len() as u64;
            sending
                .send(chunk)
                .await
                .map_err(|e| server_error(pool, &e, &doing("sending rows")))?;
        }
    }
    let chunk = encoder.finish();
    bytes += chunk.len() as u64;
    sending
        .send(chunk)
        .await
        .map_err(|e| server_error(pool, &e, &doing("sending rows")))?;
    let copied = sending
        .as_mut()
        .finish()
        .await
        .map_err(|e| server_error(pool, &e, &doing("ending the COPY")))?;
    if copied != encoder.rows() {
        return Err(pool.error(
            doing(&format!(
                "the server took {copied} rows of the {} sent",
                encoder.rows()
            )),
            false,
        ));
    }
    if sink.mode == TableWrite::Upsert {
        let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
        // A NULL key never conflicts (the row would be added on every run), and a key twice
        // would be applied in no defined order: both are errors, checked on the staged rows.
        let bad = client
            .query_opt(
                &format!(
                    "SELECT count(*) FILTER (WHERE {nulls}), (SELECT count(*) FROM (SELECT 1 \
                     FROM _sluice_stage GROUP BY {keys} HAVING count(*) > 1) d) FROM \
                     _sluice_stage",
                    nulls = key
                        .iter()
                        .map(|k| format!("{k} IS NULL"))
                        .collect::<Vec<_>>()
                        .join(" OR "),
                    keys = key.join(", ")
                ),
                &[],
            )
            .await
            .map_err(|e| server_error(pool, &e, &doing("checking the upsert's keys")))?;
        if let Some(row) = bad {
            let (nulls, dups): (i64, i64) = (row.get(0), row.get(1));
            if nulls > 0 || dups > 0 {
                return Err(pool.error(
                    doing(&format!(
                        "the result has {nulls} rows with a NULL in the key ({}) and {dups} keys \
                         on more than one row: an upsert needs each key once, without NULLs",
                        sink.key.join(", ")
                    )),
                    false,
                ));
            }
        }
        let set: Vec<String> = names
            .iter()
            .filter(|n| !sink.key.contains(n))
            .map(|n| format!("{0} = EXCLUDED.{0}", quote_ident(n)))
            .collect();
        let action = if set.is_empty() {
            "NOTHING".to_string()
        } else {
            format!("UPDATE SET {}", set.join(", "))
        };
        exec(
            format!(
                "INSERT INTO {table} ({columns}) SELECT {columns} FROM _sluice_stage ON CONFLICT \
                 ({}) DO {action}",
                key.join(", ")
            ),
            "upserting the rows (a key appearing twice in the result fails here)",
        )
        .await?;
    }
    client
        .execute(
            &format!(
                "INSERT INTO {commits} (pipeline, model, commit_id, run_id, target, mode, rows) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
            &[
                &commit.pipeline,
                &commit.model,
                &commit.commit_id,
                &commit.run_id,
                &sink.table,
                &sink.mode.name(),
                &(copied as i64),
            ],
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("recording the commit")))?;
    exec("COMMIT".into(), "committing").await?;
    Ok(Loaded {
        rows: copied,
        bytes,
        method: "copy",
        already: None,
    })
}

/// Reads the target table's columns and checks the result against them; a missing table's
/// `CREATE TABLE` from the result's columns.
async fn inspect(
    pool: &Pool,
    session: &Session,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
) -> Result<Target, DatabaseError> {
    let client = session.client();
    let doing = |what: &str| format!("checking table {}: {what}", sink.table);
    let refuse = |why: String| pool.error(format!("table {}: {why}", sink.table), false);
    let quoted = match schema_name(sink) {
        Some(s) => format!("{}.{}", quote_ident(s), quote_ident(table_name(sink))),
        None => quote_ident(table_name(sink)),
    };
    let found = client
        .query_opt(
            "SELECT n.nspname::text, c.relkind::text FROM pg_class c JOIN pg_namespace n ON \
             n.oid = c.relnamespace WHERE c.oid = to_regclass($1)",
            &[&quoted],
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("looking it up")))?;
    let Some(found) = found else {
        let in_schema: Option<String> = match schema_name(sink) {
            Some(s) => client
                .query_one(
                    "SELECT nspname::text FROM pg_namespace WHERE nspname = $1",
                    &[&s],
                )
                .await
                .ok()
                .map(|r| r.get(0)),
            None => client
                .query_one("SELECT current_schema()::text", &[])
                .await
                .map_err(|e| server_error(pool, &e, &doing("finding the current schema")))?
                .get(0),
        };
        let Some(in_schema) = in_schema else {
            return Err(refuse(
                "it is missing, and so is its schema: create the schema, or name another".into(),
            ));
        };
        let create = create_table(&in_schema, table_name(sink), schema, sink).map_err(refuse)?;
        let puts = schema
            .fields()
            .iter()
            .map(|f| put_of_created(f.data_type()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| refuse("a column has no PostgreSQL type".into()))?;
        return Ok(Target {
            schema: in_schema,
            puts,
            create: Some(create),
        });
    };
    let (in_schema, relkind): (String, String) = (found.get(0), found.get(1));
    if relkind != "r" && relkind != "p" {
        return Err(refuse(
            "is not a table (a view, or another kind of relation): sluice loads tables".into(),
        ));
    }
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
             (CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END)::text, \
             CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
             (CASE WHEN t.typtype = 'd' THEN bt.typtype ELSE t.typtype END)::text, \
             a.attnotnull OR (t.typtype = 'd' AND t.typnotnull), \
             a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', \
             a.attgenerated <> '' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type bt ON bt.oid = t.typbasetype \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&quoted],
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("reading its columns")))?;
    let columns: Vec<TableColumn> = rows
        .iter()
        .map(|r| TableColumn {
            name: r.get(0),
            shown: r.get(1),
            base: r.get(2),
            typmod: r.get(3),
            typtype: r.get(4),
            not_null: r.get(5),
            has_default: r.get(6),
            generated: r.get(7),
        })
        .collect();
    let puts = match_columns(schema, &columns, put_of).map_err(refuse)?;
    key_in_result(sink, schema).map_err(refuse)?;
    if sink.mode == TableWrite::Overwrite {
        // Overwrite deletes every row: a foreign key of another table would cascade the
        // deletion into it (or refuse it), whatever rows come back.
        let referencing: Vec<String> = client
            .query(
                "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND \
                 confrelid = to_regclass($1) AND conrelid <> confrelid",
                &[&quoted],
            )
            .await
            .map_err(|e| server_error(pool, &e, &doing("reading the foreign keys to it")))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !referencing.is_empty() {
            return Err(refuse(format!(
                "foreign keys of {} refer to it: an overwrite deletes its rows first, which \
                 would delete or block theirs; load it with mode = \"upsert\"",
                referencing.join(", ")
            )));
        }
    }
    if sink.mode == TableWrite::Upsert {
        let indexes = client
            .query(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indimmediate \
                 AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
                 AND k.ord <= i.indnkeyatts GROUP BY i.indexrelid",
                &[&quoted],
            )
            .await
            .map_err(|e| server_error(pool, &e, &doing("reading its unique indexes")))?;
        let mut key = sink.key.clone();
        key.sort();
        if !indexes.iter().any(|r| r.get::<_, Vec<String>>(0) == key) {
            return Err(refuse(format!(
                "an upsert on ({}) needs a primary key or unique index on exactly those \
                 columns, and the table has none",
                sink.key.join(", ")
            )));
        }
    }
    Ok(Target {
        schema: in_schema,
        puts,
        create: None,
    })
}

impl crate::database::sink::TargetColumn for TableColumn {
    fn name(&self) -> &str {
        &self.name
    }
    fn shown(&self) -> &str {
        &self.shown
    }
    fn generated(&self) -> bool {
        self.generated
    }
    fn required(&self) -> bool {
        self.not_null && !self.has_default
    }
}

/// How values of `field` are written into `col`, if exactly.
fn put_of(field: &Field, col: &TableColumn) -> Result<Put, String> {
    use DataType as D;
    let dt = match field.data_type() {
        D::Dictionary(_, v) => v.as_ref(),
        other => other,
    };
    if dt == &D::Null {
        return Ok(Put::Null);
    }
    let int_digits = match dt {
        D::Int8 | D::UInt8 => Some(3),
        D::Int16 | D::UInt16 => Some(5),
        D::Int32 | D::UInt32 => Some(10),
        D::Int64 => Some(19),
        D::UInt64 => Some(20),
        _ => None,
    };
    let is_text = matches!(dt, D::Utf8 | D::LargeUtf8 | D::Utf8View);
    let narrower = || Err("values would not fit".to_string());
    let not_whole = || {
        Err(match dt {
            D::Decimal128(..) | D::Decimal256(..) | D::Float16 | D::Float32 | D::Float64 => {
                "values would lose their decimals".to_string()
            }
            _ => "not a number".to_string(),
        })
    };
    // Digits a time or timestamp column keeps after the second (6 unless set lower).
    let keeps = |typmod: i32| if typmod < 0 { 6 } else { typmod };
    let needs = |unit: &TimeUnit| match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        _ => 6,
    };
    let put = match col.base.as_str() {
        "bool" if dt == &D::Boolean => Put::Bool,
        "int2" => match dt {
            D::Int8 | D::Int16 | D::UInt8 => Put::Int2,
            _ if int_digits.is_some() => return narrower(),
            _ => return not_whole(),
        },
        "int4" => match dt {
            D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16 => Put::Int4,
            _ if int_digits.is_some() => return narrower(),
            _ => return not_whole(),
        },
        "int8" => match dt {
            D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 => {
                Put::Int8
            }
            D::UInt64 => return narrower(),
            _ => return not_whole(),
        },
        "float4" if dt == &D::Float32 || dt == &D::Float16 => Put::Float4,
        "float8" if matches!(dt, D::Float16 | D::Float32 | D::Float64) => Put::Float8,
        "numeric" => {
            // numeric(P,S): typmod = ((P << 16) | S) + 4.
            let (p, s) = if col.typmod < 4 {
                (None, None)
            } else {
                let t = col.typmod - 4;
                (Some((t >> 16) & 0xffff), Some(((t & 0x7ff) ^ 1024) - 1024))
            };
            let (digits, scale) = match dt {
                D::Decimal256(p, _) if *p > 38 => {
                    return Err("more than 38 digits: sluice loads at most 38".into());
                }
                D::Decimal128(p, s) | D::Decimal256(p, s) => {
                    (i32::from(*p) - i32::from(*s), i32::from(*s).max(0))
                }
                _ => match int_digits {
                    Some(d) => (d, 0),
                    None => return Err("not a number sluice writes as numeric".into()),
                },
            };
            if let (Some(p), Some(s)) = (p, s) {
                if s < scale {
                    return Err(format!(
                        "values would be rounded to {s} decimals (the result has {scale})"
                    ));
                }
                if p - s < digits {
                    return narrower();
                }
            }
            if scale > 38 {
                return Err("more than 38 decimals".into());
            }
            Put::Numeric { scale: scale as i8 }
        }
        "bpchar" if is_text => {
            return Err(
                "values would be padded with spaces to the column's length: load into \
                        varchar or text"
                    .into(),
            );
        }
        "text" | "varchar" | "name" | "citext" | "json" if is_text => Put::Text,
        _ if col.typtype == "e" && is_text => Put::Text,
        "jsonb" if is_text => Put::Jsonb,
        "uuid" if is_text => Put::Uuid,
        "bytea" if matches!(dt, D::Binary | D::LargeBinary | D::BinaryView) => Put::Bytes,
        "date" if matches!(dt, D::Date32 | D::Date64) => Put::Date,
        "timestamp" | "timestamptz" => match dt {
            D::Timestamp(unit, tz) => {
                if tz.is_some() != (col.base == "timestamptz") {
                    return Err(if tz.is_some() {
                        "a time zone's instant into a timestamp without time zone would be \
                         read back as another instant: load it into timestamptz"
                            .into()
                    } else {
                        "a local date-time into timestamptz would be taken as UTC: load it \
                         into timestamp, or give the result a time zone"
                            .into()
                    });
                }
                if keeps(col.typmod) < needs(unit) {
                    return Err("values would be rounded".into());
                }
                Put::Timestamp
            }
            _ => return Err("not a timestamp".into()),
        },
        "time" => match dt {
            D::Time32(unit) | D::Time64(unit) if keeps(col.typmod) >= needs(unit) => Put::Time,
            D::Time32(_) | D::Time64(_) => return Err("values would be rounded".into()),
            _ => return Err("not a time of day".into()),
        },
        _ => return Err("sluice does not load this pair of types".into()),
    };
    Ok(put)
}

/// How a result column goes into a column sluice created for it ([`pg_type`]).
fn put_of_created(dt: &DataType) -> Option<Put> {
    use DataType as D;
    Some(match dt {
        D::Dictionary(_, v) => return put_of_created(v),
        D::Null => Put::Null,
        D::Boolean => Put::Bool,
        D::Int8 | D::Int16 | D::UInt8 => Put::Int2,
        D::Int32 | D::UInt16 => Put::Int4,
        D::Int64 | D::UInt32 => Put::Int8,
        D::UInt64 => Put::Numeric { scale: 0 },
        D::Float16 | D::Float32 => Put::Float4,
        D::Float64 => Put::Float8,
        D::Decimal128(_, s) | D::Decimal256(_, s) if *s <= 38 => {
            Put::Numeric { scale: (*s).max(0) }
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View => Put::Text,
        D::Binary | D::LargeBinary | D::BinaryView => Put::Bytes,
        D::Date32 | D::Date64 => Put::Date,
        D::Timestamp(_, _) => Put::Timestamp,
        D::Time32(_) | D::Time64(_) => Put::Time,
        _ => return None,
    })
}

/// The PostgreSQL type sluice creates a column of Arrow type `dt` as.
fn pg_type(dt: &DataType) -> Option<String> {
    use DataType as D;
    Some(match dt {
        D::Dictionary(_, v) => return pg_type(v),
        D::Null | D::Utf8 | D::LargeUtf8 | D::Utf8View => "text".into(),
        D::Boolean => "boolean".into(),
        D::Int8 | D::Int16 | D::UInt8 => "smallint".into(),
        D::Int32 | D::UInt16 => "integer".into(),
        D::Int64 | D::UInt32 => "bigint".into(),
        D::UInt64 => "numeric(20,0)".into(),
        D::Float16 | D::Float32 => "real".into(),
        D::Float64 => "double precision".into(),
        D::Decimal128(p, s) | D::Decimal256(p, s) if *s <= 38 => {
            let (p, s) = (i32::from(*p), i32::from(*s));
            // A negative scale: whole numbers of more digits.
            format!("numeric({},{})", p - s.min(0), s.max(0))
        }
        D::Binary | D::LargeBinary | D::BinaryView => "bytea".into(),
        D::Date32 | D::Date64 => "date".into(),
        D::Timestamp(_, None) => "timestamp(6)".into(),
        D::Timestamp(_, Some(_)) => "timestamptz(6)".into(),
        D::Time32(_) | D::Time64(_) => "time(6)".into(),
        _ => return None,
    })
}

/// `CREATE TABLE` of the result's columns (an upsert's key its primary key).
fn create_table(
    schema_name: &str,
    table: &str,
    schema: &SchemaRef,
    sink: &DatabaseSinkConfig,
) -> Result<String, String> {
    let mut columns = Vec::new();
    for f in schema.fields() {
        let ty = pg_type(f.data_type()).ok_or_else(|| {
            format!(
                "it is missing, and sluice cannot create column {} of type {}: create the \
                 table yourself",
                f.name(),
                f.data_type()
            )
        })?;
        columns.push(format!("{} {ty}", quote_ident(f.name())));
    }
    if sink.mode == TableWrite::Upsert {
        key_in_result(sink, schema)?;
        let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
        columns.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    Ok(format!(
        "CREATE TABLE {}.{} ({})",
        quote_ident(schema_name),
        quote_ident(table),
        columns.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(base: &str, typmod: i32) -> TableColumn {
        TableColumn {
            name: "c".into(),
            shown: base.into(),
            base: base.into(),
            typmod,
            typtype: "b".into(),
            not_null: false,
            has_default: false,
            generated: false,
        }
    }

    fn numeric(p: i32, s: i32) -> i32 {
        ((p << 16) | s) + 4
    }

    #[test]
    fn only_exact_type_pairs_are_loaded() {
        use DataType as D;
        let ok = [
            (D::Int32, col("int8", -1)),
            (D::Int16, col("int2", -1)),
            (D::Decimal128(12, 2), col("numeric", numeric(14, 4))),
            (D::Decimal128(12, 2), col("numeric", -1)),
            (D::Int32, col("numeric", numeric(10, 0))),
            (D::Utf8View, col("varchar", 20)),
            (D::Utf8, col("jsonb", -1)),
            (
                D::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                col("timestamptz", -1),
            ),
            (
                D::Timestamp(TimeUnit::Millisecond, None),
                col("timestamp", 3),
            ),
            (D::Float32, col("float8", -1)),
        ];
        for (dt, c) in ok {
            let f = Field::new("c", dt.clone(), true);
            assert!(put_of(&f, &c).is_ok(), "{dt} into {}", c.base);
        }
        let refused = [
            (D::Int64, col("int4", -1), "would not fit"),
            (
                D::Decimal128(12, 4),
                col("numeric", numeric(12, 2)),
                "rounded",
            ),
            (
                D::Decimal128(12, 2),
                col("numeric", numeric(11, 2)),
                "would not fit",
            ),
            (D::Int64, col("numeric", numeric(12, 0)), "would not fit"),
            (D::Float64, col("float4", -1), "does not load"),
            (D::Float64, col("numeric", -1), "not a number sluice writes"),
            (D::Utf8, col("int4", -1), "not a number"),
            (D::Decimal128(9, 2), col("int8", -1), "lose their decimals"),
            (
                D::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                col("timestamp", -1),
                "timestamptz",
            ),
            (
                D::Timestamp(TimeUnit::Microsecond, None),
                col("timestamptz", -1),
                "taken as UTC",
            ),
            (
                D::Timestamp(TimeUnit::Microsecond, None),
                col("timestamp", 0),
                "rounded",
            ),
        ];
        for (dt, c, why) in refused {
            let f = Field::new("c", dt.clone(), true);
            let e = put_of(&f, &c).unwrap_err();
            assert!(e.contains(why), "{dt} into {}: {e}", c.base);
        }
    }

    #[test]
    fn a_created_column_takes_its_values_back_exactly() {
        use DataType as D;
        // What sluice creates for a type accepts that type (the check a second run makes).
        for dt in [
            D::Boolean,
            D::Int8,
            D::Int16,
            D::Int32,
            D::Int64,
            D::UInt8,
            D::UInt16,
            D::UInt32,
            D::UInt64,
            D::Float32,
            D::Float64,
            D::Decimal128(12, 3),
            D::Decimal128(38, 0),
            D::Utf8,
            D::Utf8View,
            D::Binary,
            D::Date32,
            D::Timestamp(TimeUnit::Microsecond, None),
            D::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            D::Time64(TimeUnit::Microsecond),
        ] {
            let ty = pg_type(&dt).unwrap();
            let (base, typmod) = match ty.as_str() {
                "boolean" => ("bool", -1),
                "smallint" => ("int2", -1),
                "integer" => ("int4", -1),
                "bigint" => ("int8", -1),
                "real" => ("float4", -1),
                "double precision" => ("float8", -1),
                "text" => ("text", -1),
                "bytea" => ("bytea", -1),
                "date" => ("date", -1),
                "timestamp(6)" => ("timestamp", 6),
                "timestamptz(6)" => ("timestamptz", 6),
                "time(6)" => ("time", 6),
                n if n.starts_with("numeric(") => {
                    let inner = &n["numeric(".len()..n.len() - 1];
                    let (p, s) = inner.split_once(',').unwrap();
                    ("numeric", numeric(p.parse().unwrap(), s.parse().unwrap()))
                }
                other => panic!("{other}"),
            };
            let f = Field::new("c", dt.clone(), true);
            let put = put_of(&f, &col(base, typmod)).unwrap_or_else(|e| panic!("{dt}: {e}"));
            assert_eq!(Some(put), put_of_created(&dt), "{dt}");
        }
    }
}
