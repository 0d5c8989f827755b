//! Loading a model's result into a MySQL or MariaDB table, in one InnoDB transaction:
//! readers see the old rows or the new ones, never a part, and a killed load leaves the
//! table as it was.
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `db`.`_sluice_commits` (...) ENGINE=InnoDB;  -- only when missing
//! CREATE TABLE IF NOT EXISTS `db`.`t` (...) ENGINE=InnoDB;                -- only when missing
//! START TRANSACTION READ WRITE;
//! SELECT rows, run_id FROM `db`.`_sluice_commits` WHERE pipeline = ? AND model = ? AND commit_id = ?;
//!   -- found: this load was committed already (a resumed run): ROLLBACK, done
//! DELETE FROM `db`.`t`;                                                    -- overwrite
//! LOAD DATA LOCAL INFILE 'sluice' INTO TABLE `db`.`t` ... (cols);
//!   -- or multi-row INSERTs, where the server has local_infile off;
//!   -- upsert: into a temporary table, then INSERT ... SELECT ... ON DUPLICATE KEY UPDATE
//! INSERT INTO `db`.`_sluice_commits` VALUES (...);
//! COMMIT;
//! ```
//!
//! MySQL commits DDL at once: the commit records' table and a missing target are created
//! before the transaction, so a first load that fails leaves the new table empty. A `LOAD
//! DATA LOCAL` turns what would be errors into warnings (the server cannot stop the file
//! half-way): the load checks that every row was taken without a warning, and rolls back
//! otherwise, naming the server's warnings.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Row, Value};

use super::encode::{Columns, Put};
use super::{Session, connect, quote_ident, server_error};
use crate::config::{DatabaseSinkConfig, TableWrite};
use crate::database::sink::{
    COMMITS, Commit, Loaded, key_in_result, match_columns, schema_name, table_name,
};
use crate::database::{DatabaseError, Pool};

/// Bytes of `LOAD DATA` lines gathered before they are sent.
const CHUNK: usize = 1 << 20;

/// Bytes of one `INSERT` at most (under the servers' default `max_allowed_packet`, 16 MiB
/// on MariaDB, 64 MiB on MySQL).
const INSERT_BYTES: usize = 4 << 20;

/// The temporary table an upsert stages its rows in.
const STAGE: &str = "_sluice_stage";

/// A column of the target table, as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone)]
struct TableColumn {
    name: String,
    /// `DATA_TYPE`: `int`, `varchar`, `decimal`...
    data_type: String,
    /// `COLUMN_TYPE`, for messages and the details: `int(10) unsigned`, `decimal(12,2)`.
    column_type: String,
    precision: Option<u64>,
    scale: Option<u64>,
    /// Digits after the second of a DATETIME, TIMESTAMP or TIME.
    fsp: Option<u64>,
    not_null: bool,
    /// A default, or `AUTO_INCREMENT`.
    has_default: bool,
    auto_increment: bool,
    generated: bool,
    /// A text column's collation.
    collation: Option<String>,
}

/// What the target table is, checked against the result's columns.
struct Target {
    /// The database the table is (or will be) in.
    database: String,
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
    let mut session = connect(pool).await?;
    let target = inspect(pool, &mut session, sink, schema).await?;
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
    let mut session = connect(pool).await?;
    let loaded = load_in(pool, &mut session, sink, schema, commit, rows).await?;
    // Committed or rolled back, the staging table dropped: reusable. (On an error the
    // session is dropped, which ends the connection and so rolls the transaction back.)
    session.park().await;
    Ok(loaded)
}

async fn load_in(
    pool: &Arc<Pool>,
    session: &mut Session,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
    commit: &Commit,
    rows: SendableRecordBatchStream,
) -> Result<Loaded, DatabaseError> {
    let doing = |what: &str| format!("loading table {}: {what}", sink.table);
    let target = inspect(pool, session, sink, schema).await?;
    let commits = format!("{}.{}", quote_ident(&target.database), quote_ident(COMMITS));
    let table = format!(
        "{}.{}",
        quote_ident(&target.database),
        quote_ident(table_name(sink))
    );
    let conn = session.conn();
    // The server's wait for the next part of a `LOAD DATA` file (default 30 s) must not end
    // a load whose rows come slowly; notes (trailing spaces cut off a VARCHAR's value) must
    // count as warnings, which fail the load.
    conn.query_drop("SET SESSION net_read_timeout = 3600, SESSION sql_notes = 1")
        .await
        .map_err(|e| server_error(pool, &e, &doing("setting up the session")))?;
    // A NULL into a TIMESTAMP NOT NULL column is an error, not the current time. (Servers
    // that have no such session variable behave so already.)
    let _ = conn
        .query_drop("SET SESSION explicit_defaults_for_timestamp = 1")
        .await;
    let has_commits: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (&target.database, COMMITS),
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("looking up sluice's commit records")))?;
    // (DDL commits at once in MySQL: these run before the load's transaction. Created only
    // when missing: IF NOT EXISTS needs the right to create even when the table is there.)
    if has_commits.is_none() {
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS {commits} (pipeline VARCHAR(128) NOT NULL, model \
             VARCHAR(128) NOT NULL, commit_id VARCHAR(255) NOT NULL, run_id VARCHAR(255) NOT \
             NULL, target VARCHAR(512) NOT NULL, mode VARCHAR(16) NOT NULL, `rows` BIGINT NOT \
             NULL, committed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), PRIMARY KEY \
             (pipeline, model, commit_id)) ENGINE=InnoDB CHARACTER SET utf8mb4 COLLATE {}",
            created_collation(pool)
        ))
        .await
        .map_err(|e| server_error(pool, &e, &doing("creating the table of commit records")))?;
    }
    if let Some(create) = &target.create {
        conn.query_drop(create.as_str())
            .await
            .map_err(|e| server_error(pool, &e, &doing("creating the table")))?;
    }
    let local_files: Option<i64> = conn
        .query_first("SELECT @@GLOBAL.local_infile")
        .await
        .map_err(|e| server_error(pool, &e, &doing("reading local_infile")))?;
    let local_files = local_files == Some(1);
    // (In the table's database: the URL may name another, or none.)
    let stage = format!("{}.{}", quote_ident(&target.database), quote_ident(STAGE));
    if sink.mode == TableWrite::Upsert {
        conn.query_drop(format!("DROP TEMPORARY TABLE IF EXISTS {stage}"))
            .await
            .map_err(|e| server_error(pool, &e, &doing("dropping an old staging table")))?;
    }
    conn.query_drop("START TRANSACTION READ WRITE")
        .await
        .map_err(|e| server_error(pool, &e, &doing("starting the transaction")))?;
    // (Checked again inside the transaction: the table may have changed since the run began,
    // and was created just now if it was missing.)
    let target = inspect(pool, session, sink, schema).await?;
    if target.create.is_some() {
        return Err(pool.error(doing("the table was dropped as the load began"), true));
    }
    let conn = session.conn();
    let found: Option<(i64, String)> = conn
        .exec_first(
            format!(
                "SELECT `rows`, run_id FROM {commits} WHERE pipeline = ? AND model = ? AND \
                 commit_id = ?"
            ),
            (&commit.pipeline, &commit.model, &commit.commit_id),
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("reading sluice's commit records")))?;
    if let Some((rows, run)) = found {
        conn.query_drop("ROLLBACK")
            .await
            .map_err(|e| server_error(pool, &e, &doing("ending the transaction")))?;
        return Ok(Loaded {
            rows: rows.max(0) as u64,
            bytes: 0,
            method: "",
            already: Some(run),
        });
    }
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let columns = names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ");
    let into = match sink.mode {
        TableWrite::Overwrite => {
            conn.query_drop(format!("DELETE FROM {table}"))
                .await
                .map_err(|e| server_error(pool, &e, &doing("deleting the old rows")))?;
            table.clone()
        }
        TableWrite::Append => table.clone(),
        TableWrite::Upsert => {
            // (No index: a key twice is found by the check below, not skipped by the load.)
            conn.query_drop(format!(
                "CREATE TEMPORARY TABLE {stage} ENGINE=InnoDB AS SELECT {columns} FROM {table} \
                 LIMIT 0"
            ))
            .await
            .map_err(|e| server_error(pool, &e, &doing("creating the staging table")))?;
            stage.clone()
        }
    };
    let sent = if local_files {
        load_data(pool, session, sink, &into, &names, &target.puts, rows).await?
    } else {
        tracing::info!(
            "database '{}' has local_infile off: loading table {} with INSERT statements",
            pool.config.name,
            sink.table
        );
        insert(pool, session, sink, &into, &names, &target.puts, rows).await?
    };
    let conn = session.conn();
    if sink.mode == TableWrite::Upsert {
        let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
        // A NULL key never conflicts (the row would be added on every run), and a key twice
        // would be applied in no defined order: both are errors, checked on the staged rows.
        let bad: Option<(i64, i64)> = conn
            .query_first(format!(
                "SELECT (SELECT COUNT(*) FROM {stage} WHERE {nulls}), (SELECT COUNT(*) FROM \
                 (SELECT 1 FROM {stage} GROUP BY {keys} HAVING COUNT(*) > 1) d)",
                nulls = key
                    .iter()
                    .map(|k| format!("{k} IS NULL"))
                    .collect::<Vec<_>>()
                    .join(" OR "),
                keys = key.join(", ")
            ))
            .await
            .map_err(|e| server_error(pool, &e, &doing("checking the upsert's keys")))?;
        if let Some((nulls, dups)) = bad
            && (nulls > 0 || dups > 0)
        {
            return Err(pool.error(
                doing(&format!(
                    "the result has {nulls} rows with a NULL in the key ({}) and {dups} keys \
                     on more than one row: an upsert needs each key once, without NULLs",
                    sink.key.join(", ")
                )),
                false,
            ));
        }
        // (The staged row's values by its alias: `VALUES(c)` is deprecated on MySQL 8, with
        // a warning, which would fail the load.)
        let set: Vec<String> = names
            .iter()
            .filter(|n| !sink.key.contains(n))
            .map(|n| format!("{0} = s.{0}", quote_ident(n)))
            .collect();
        // (With no other column, a key already there is updated to itself.)
        let set = if set.is_empty() {
            format!("{0} = {table}.{0}", key[0])
        } else {
            set.join(", ")
        };
        conn.query_drop(format!(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} AS s ON DUPLICATE \
             KEY UPDATE {set}"
        ))
        .await
        .map_err(|e| server_error(pool, &e, &doing("upserting the rows")))?;
        if conn.get_warnings() > 0 {
            return Err(warnings(pool, conn, &doing("upserting the rows")).await);
        }
        // (Before the commit: a temporary table's DROP does not commit, and an error after
        // the commit would report a load that happened as failed.)
        conn.query_drop(format!("DROP TEMPORARY TABLE {stage}"))
            .await
            .map_err(|e| server_error(pool, &e, &doing("dropping the staging table")))?;
    }
    conn.exec_drop(
        format!(
            "INSERT INTO {commits} (pipeline, model, commit_id, run_id, target, mode, `rows`) \
             VALUES (?, ?, ?, ?, ?, ?, ?)"
        ),
        (
            &commit.pipeline,
            &commit.model,
            &commit.commit_id,
            &commit.run_id,
            &sink.table,
            sink.mode.name(),
            sent.rows as i64,
        ),
    )
    .await
    .map_err(|e| server_error(pool, &e, &doing("recording the commit")))?;
    conn.query_drop("COMMIT")
        .await
        .map_err(|e| server_error(pool, &e, &doing("committing")))?;
    Ok(Loaded {
        rows: sent.rows,
        bytes: sent.bytes,
        method: if local_files { "load data" } else { "insert" },
        already: None,
    })
}

/// Rows and bytes sent.
struct Sent {
    rows: u64,
    bytes: u64,
}

/// Sends `rows` with one `LOAD DATA LOCAL INFILE` into `into`; checks that the server took
/// every row without a warning.
async fn load_data(
    pool: &Arc<Pool>,
    session: &mut Session,
    sink: &DatabaseSinkConfig,
    into: &str,
    names: &[String],
    puts: &[Put],
    rows: SendableRecordBatchStream,
) -> Result<Sent, DatabaseError> {
    let doing = |what: &str| format!("loading table {}: {what}", sink.table);
    let mut targets = Vec::new();
    let mut sets = Vec::new();
    for (i, (name, put)) in names.iter().zip(puts).enumerate() {
        if put.hex() {
            targets.push(format!("@v{i}"));
            sets.push(format!("{} = UNHEX(@v{i})", quote_ident(name)));
        } else {
            targets.push(quote_ident(name));
        }
    }
    let set = if sets.is_empty() {
        String::new()
    } else {
        format!(" SET {}", sets.join(", "))
    };
    let sql = format!(
        "LOAD DATA LOCAL INFILE 'sluice' INTO TABLE {into} CHARACTER SET utf8mb4 FIELDS \
         TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({}){set}",
        targets.join(", ")
    );
    // The lines are made as the server asks for the file; what was sent, and the first
    // error, are read back once the statement has ended.
    let progress = Arc::new(std::sync::Mutex::new((Sent { rows: 0, bytes: 0 }, None)));
    let lines = {
        let progress = Arc::clone(&progress);
        let (names, puts) = (names.to_vec(), puts.to_vec());
        rows.map(move |batch| {
            let encoded = batch
                .map_err(|e| format!("reading the rows to load: {e}"))
                .and_then(|batch| {
                    let columns = Columns::new(&batch, &puts, &names)?;
                    let (mut out, mut scratch) = (Vec::with_capacity(CHUNK), String::new());
                    for row in 0..columns.rows() {
                        columns.line(row, &mut out, &mut scratch)?;
                    }
                    Ok((columns.rows(), out))
                });
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            match encoded {
                Ok((n, out)) => {
                    p.0.rows += n as u64;
                    p.0.bytes += out.len() as u64;
                    Ok(bytes::Bytes::from(out))
                }
                Err(e) => {
                    p.1.get_or_insert(e.clone());
                    Err(std::io::Error::other(e))
                }
            }
        })
        .boxed()
    };
    // (The handler must be Sync; the stream is only Send: a mutex makes it both.)
    let lines = std::sync::Mutex::new(Some(lines));
    let conn = session.conn();
    conn.set_infile_handler(async move {
        lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| {
                mysql_async::Error::Other("the rows of a load were asked for twice".into())
            })
    });
    let result = conn.query_drop(sql.as_str()).await;
    let (sent, failed) = {
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        (
            Sent {
                rows: p.0.rows,
                bytes: p.0.bytes,
            },
            p.1.take(),
        )
    };
    if let Some(e) = failed {
        return Err(pool.error(doing(&e), false));
    }
    if let Err(e) = result {
        return Err(match &e {
            mysql_async::Error::Server(s) if matches!(s.code, 1148 | 3948 | 4166) => pool.error(
                doing(&format!(
                    "the server refused LOAD DATA LOCAL INFILE ({}): set local_infile = 1 on \
                     the server",
                    s.message
                )),
                false,
            ),
            _ => server_error(pool, &e, &doing("sending rows")),
        });
    }
    let took = conn.affected_rows();
    if conn.get_warnings() > 0 || took != sent.rows {
        let mut e = warnings(pool, conn, &doing("sending rows")).await;
        e.message = format!(
            "{}; the server took {took} of the {} rows sent",
            e.message, sent.rows
        );
        return Err(e);
    }
    Ok(sent)
}

/// Sends `rows` with multi-row `INSERT`s into `into`, for a server with `local_infile` off:
/// statements of literal values (the text protocol: no prepared statement of thousands of
/// placeholders per size left on the server), each under [`INSERT_BYTES`] and half the
/// server's `max_allowed_packet`.
async fn insert(
    pool: &Arc<Pool>,
    session: &mut Session,
    sink: &DatabaseSinkConfig,
    into: &str,
    names: &[String],
    puts: &[Put],
    mut rows: SendableRecordBatchStream,
) -> Result<Sent, DatabaseError> {
    let doing = |what: &str| format!("loading table {}: {what}", sink.table);
    let conn = session.conn();
    let packet: Option<u64> = conn
        .query_first("SELECT @@max_allowed_packet")
        .await
        .map_err(|e| server_error(pool, &e, &doing("reading max_allowed_packet")))?;
    let limit = packet.map_or(INSERT_BYTES, |p| INSERT_BYTES.min(p as usize / 2));
    let head = format!(
        "INSERT INTO {into} ({}) VALUES ",
        names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut sent = Sent { rows: 0, bytes: 0 };
    let (mut sql, mut scratch, mut pending) = (head.clone(), String::new(), 0usize);
    loop {
        let batch = match rows.next().await {
            Some(batch) => Some(batch.map_err(|e| {
                pool.error(doing(&format!("reading the rows to load: {e}")), false)
            })?),
            None => None,
        };
        let columns = match &batch {
            Some(b) => {
                Some(Columns::new(b, puts, names).map_err(|e| pool.error(doing(&e), false))?)
            }
            None => None,
        };
        let n = columns.as_ref().map_or(0, Columns::rows);
        for row in 0..=n {
            let last = row == n;
            if last && columns.is_some() {
                break;
            }
            if !last {
                if pending > 0 {
                    sql.push_str(", ");
                }
                let before = sql.len();
                if let Some(c) = &columns {
                    c.values(row, &mut sql, &mut scratch)
                        .map_err(|e| pool.error(doing(&e), false))?;
                }
                pending += 1;
                sent.rows += 1;
                sent.bytes += (sql.len() - before) as u64;
            }
            if pending > 0 && (sql.len() >= limit || last) {
                conn.query_drop(sql.as_str())
                    .await
                    .map_err(|e| server_error(pool, &e, &doing("inserting rows")))?;
                if conn.get_warnings() > 0 {
                    return Err(warnings(pool, conn, &doing("inserting rows")).await);
                }
                sql.truncate(head.len());
                pending = 0;
            }
        }
        if columns.is_none() {
            return Ok(sent);
        }
    }
}

/// An error for a statement the server answered with warnings: its first few.
async fn warnings(pool: &Pool, conn: &mut mysql_async::Conn, doing: &str) -> DatabaseError {
    let count = conn.get_warnings();
    let shown: Vec<String> = match conn.query::<Row, _>("SHOW WARNINGS LIMIT 5").await {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                let text = |i: usize| match r.as_ref(i) {
                    Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                    Some(Value::Int(n)) => n.to_string(),
                    Some(Value::UInt(n)) => n.to_string(),
                    _ => String::new(),
                };
                format!("{} {}: {}", text(0), text(1), text(2))
            })
            .collect(),
        Err(e) => vec![format!("(the warnings could not be read: {e})")],
    };
    pool.error(
        format!(
            "{doing}: the server answered with {count} warnings, so nothing was loaded: {}",
            shown.join("; ")
        ),
        false,
    )
}

/// Reads the target table's columns and checks the result against them; a missing table's
/// `CREATE TABLE` from the result's columns.
async fn inspect(
    pool: &Pool,
    session: &mut Session,
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
) -> Result<Target, DatabaseError> {
    let doing = |what: &str| format!("checking table {}: {what}", sink.table);
    let refuse = |why: String| pool.error(format!("table {}: {why}", sink.table), false);
    let conn = session.conn();
    let database: Option<String> = conn
        .exec_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = \
             COALESCE(?, DATABASE())",
            (schema_name(sink),),
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("looking up its database")))?;
    let Some(database) = database else {
        return Err(refuse(
            "its database is missing (or the URL names none): create it, or name another".into(),
        ));
    };
    let name = table_name(sink);
    let found: Option<(String, Option<String>)> = conn
        .exec_first(
            "SELECT TABLE_TYPE, ENGINE FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
             AND TABLE_NAME = ?",
            (&database, name),
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("looking it up")))?;
    let Some((kind, engine)) = found else {
        let create =
            create_table(&database, name, schema, sink, created_collation(pool)).map_err(refuse)?;
        let puts = schema
            .fields()
            .iter()
            .map(|f| put_of_created(f.data_type()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| refuse("a column has no MySQL type".into()))?;
        return Ok(Target {
            database,
            puts,
            create: Some(create),
        });
    };
    if kind != "BASE TABLE" {
        return Err(refuse(format!(
            "is a {}, not a table: sluice loads tables",
            kind.to_ascii_lowercase()
        )));
    }
    if !engine
        .as_deref()
        .is_some_and(|e| e.eq_ignore_ascii_case("InnoDB"))
    {
        return Err(refuse(format!(
            "its storage engine is {}, which has no transactions: a failed load would leave \
             part of its rows; sluice loads InnoDB tables",
            engine.as_deref().unwrap_or("unknown")
        )));
    }
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, \
             DATETIME_PRECISION, IS_NULLABLE, COLUMN_DEFAULT IS NOT NULL, EXTRA, \
             COALESCE(GENERATION_EXPRESSION, '') <> '', COLLATION_NAME \
             FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (&database, name),
        )
        .await
        .map_err(|e| server_error(pool, &e, &doing("reading its columns")))?;
    let columns: Vec<TableColumn> = rows
        .iter()
        .map(|r| {
            let text = |i| super::text(r.as_ref(i)).unwrap_or_default();
            let extra = text(8).to_ascii_lowercase();
            TableColumn {
                name: text(0),
                data_type: text(1).to_ascii_lowercase(),
                column_type: text(2).to_ascii_lowercase(),
                precision: super::number(r.as_ref(3)),
                scale: super::number(r.as_ref(4)),
                fsp: super::number(r.as_ref(5)),
                not_null: text(6) == "NO",
                has_default: super::number(r.as_ref(7)) == Some(1)
                    || extra.contains("auto_increment"),
                auto_increment: extra.contains("auto_increment"),
                // (Not MySQL 8's DEFAULT_GENERATED: a default that is an expression.)
                generated: super::number(r.as_ref(9)) == Some(1)
                    || extra.contains("virtual")
                    || extra.contains("stored generated")
                    || extra.contains("persistent"),
                collation: super::text(r.as_ref(10)),
            }
        })
        .collect();
    let puts = match_columns(schema, &columns, put_of).map_err(refuse)?;
    key_in_result(sink, schema).map_err(refuse)?;
    if sink.mode == TableWrite::Overwrite {
        // Overwrite deletes every row: a foreign key of another table would cascade the
        // deletion into it (or refuse it), whatever rows come back.
        let referencing: Vec<String> = conn
            .exec(
                "SELECT DISTINCT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME) FROM \
                 information_schema.KEY_COLUMN_USAGE WHERE REFERENCED_TABLE_SCHEMA = ? AND \
                 REFERENCED_TABLE_NAME = ? AND NOT (TABLE_SCHEMA = ? AND TABLE_NAME = ?)",
                (&database, name, &database, name),
            )
            .await
            .map_err(|e| server_error(pool, &e, &doing("reading the foreign keys to it")))?;
        if !referencing.is_empty() {
            return Err(refuse(format!(
                "foreign keys of {} refer to it: an overwrite deletes its rows first, which \
                 would delete or block theirs; load it with mode = \"upsert\"",
                referencing.join(", ")
            )));
        }
    }
    if sink.mode == TableWrite::Upsert {
        let rows: Vec<(String, Option<String>, i64, i64)> = conn
            .exec(
                "SELECT INDEX_NAME, GROUP_CONCAT(COLUMN_NAME SEPARATOR '\\t'), \
                 MAX(SUB_PART IS NOT NULL), SUM(COLUMN_NAME IS NULL) FROM \
                 information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND \
                 NON_UNIQUE = 0 GROUP BY INDEX_NAME",
                (&database, name),
            )
            .await
            .map_err(|e| server_error(pool, &e, &doing("reading its unique indexes")))?;
        let indexes: Vec<UniqueIndex> = rows
            .into_iter()
            .map(|(name, columns, prefix, expressions)| {
                let mut columns: Vec<String> = columns
                    .unwrap_or_default()
                    .split('\t')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect();
                columns.sort();
                UniqueIndex {
                    name,
                    columns,
                    prefix: prefix > 0,
                    expressions: expressions > 0,
                }
            })
            .collect();
        upsert_indexes(sink, schema, &columns, &indexes).map_err(refuse)?;
    }
    Ok(Target {
        database,
        puts,
        create: None,
    })
}

/// A unique index of the target table, as `information_schema.STATISTICS` shows it.
#[derive(Debug, Clone)]
struct UniqueIndex {
    name: String,
    /// Its columns, sorted (without its expressions).
    columns: Vec<String>,
    /// A column is indexed by a prefix only.
    prefix: bool,
    /// A part is an expression (MySQL 8's functional key parts).
    expressions: bool,
}

/// An upsert's key must be a unique index of the table, whole columns, compared byte for
/// byte; and no other unique index may match a loaded row (`ON DUPLICATE KEY UPDATE`
/// updates the row whichever unique index it collides on). Another index is safe when it
/// has an `AUTO_INCREMENT` column the result does not set (a new row gets a new value).
fn upsert_indexes(
    sink: &DatabaseSinkConfig,
    schema: &SchemaRef,
    columns: &[TableColumn],
    indexes: &[UniqueIndex],
) -> Result<(), String> {
    let mut key = sink.key.clone();
    key.sort();
    let is_key = |i: &UniqueIndex| i.columns == key && !i.prefix && !i.expressions;
    if !indexes.iter().any(is_key) {
        return Err(format!(
            "an upsert on ({}) needs a primary key or unique index on exactly those columns \
             (whole columns, not prefixes or expressions), and the table has none",
            sink.key.join(", ")
        ));
    }
    for k in &sink.key {
        if let Some(c) = columns.iter().find(|c| &c.name == k)
            && let Some(collation) = &c.collation
            && !exact_collation(collation)
        {
            return Err(format!(
                "key column {k} has collation {collation}, under which keys that differ (in \
                 case, or by trailing spaces) are the same: the upsert would update another \
                 row than the result's; give the column a byte-wise collation without padding \
                 (utf8mb4_nopad_bin on MariaDB, utf8mb4_0900_bin on MySQL 8)"
            ));
        }
    }
    let in_result = |c: &str| schema.fields().iter().any(|f| f.name() == c);
    for index in indexes {
        if is_key(index) {
            continue;
        }
        let safe = index.columns.iter().any(|c| {
            !in_result(c)
                && columns
                    .iter()
                    .any(|col| &col.name == c && col.auto_increment)
        });
        if !safe {
            return Err(format!(
                "it has another unique index, {} on ({}{}): ON DUPLICATE KEY UPDATE would \
                 update a row matching it rather than the row of the key ({}); drop that \
                 index, or load with another mode",
                index.name,
                index.columns.join(", "),
                if index.expressions {
                    " and expressions"
                } else {
                    ""
                },
                sink.key.join(", ")
            ));
        }
    }
    Ok(())
}

/// Whether a collation compares text byte for byte, trailing spaces included.
fn exact_collation(collation: &str) -> bool {
    collation == "binary" || collation.ends_with("_nopad_bin") || collation.ends_with("_0900_bin")
}

/// The collation sluice creates text columns with: byte for byte, without padding.
fn created_collation(pool: &Pool) -> &'static str {
    if pool.guard.server().is_some_and(|v| v.contains("MariaDB")) {
        "utf8mb4_nopad_bin"
    } else {
        "utf8mb4_0900_bin"
    }
}

impl crate::database::sink::TargetColumn for TableColumn {
    fn name(&self) -> &str {
        &self.name
    }
    fn shown(&self) -> &str {
        &self.column_type
    }
    fn generated(&self) -> bool {
        self.generated
    }
    fn required(&self) -> bool {
        self.not_null && !self.has_default
    }
}

/// The values a MySQL integer column holds: (lowest, highest).
fn int_range(data_type: &str, unsigned: bool) -> Option<(i128, i128)> {
    let bits = match data_type {
        "tinyint" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" | "integer" => 32,
        "bigint" => 64,
        _ => return None,
    };
    Some(if unsigned {
        (0, (1i128 << bits) - 1)
    } else {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    })
}

/// The values an Arrow whole-number type holds: (lowest, highest).
fn arrow_int_range(dt: &DataType) -> Option<(i128, i128)> {
    use DataType as D;
    Some(match dt {
        D::Boolean => (0, 1),
        D::Int8 => (i8::MIN.into(), i8::MAX.into()),
        D::Int16 => (i16::MIN.into(), i16::MAX.into()),
        D::Int32 => (i32::MIN.into(), i32::MAX.into()),
        D::Int64 => (i64::MIN.into(), i64::MAX.into()),
        D::UInt8 => (0, u8::MAX.into()),
        D::UInt16 => (0, u16::MAX.into()),
        D::UInt32 => (0, u32::MAX.into()),
        D::UInt64 => (0, u64::MAX.into()),
        _ => return None,
    })
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
    let is_text = matches!(dt, D::Utf8 | D::LargeUtf8 | D::Utf8View);
    let unsigned = col.column_type.contains("unsigned");
    let not_whole = || {
        Err(match dt {
            D::Decimal128(..) | D::Decimal256(..) | D::Float16 | D::Float32 | D::Float64 => {
                "values would lose their decimals".to_string()
            }
            _ => "not a number".to_string(),
        })
    };
    // Digits a DATETIME, TIMESTAMP or TIME column keeps after the second (0 unless set).
    let keeps = col.fsp.unwrap_or(0);
    let needs = |unit: &TimeUnit| match unit {
        TimeUnit::Second => 0,
        TimeUnit::Millisecond => 3,
        _ => 6,
    };
    let put = match col.data_type.as_str() {
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => {
            let Some((lo, hi)) = arrow_int_range(dt) else {
                return not_whole();
            };
            let (clo, chi) = int_range(&col.data_type, unsigned).unwrap_or((0, 0));
            if lo < clo || hi > chi {
                return Err("values would not fit".into());
            }
            if lo >= 0 && hi > i128::from(i64::MAX) {
                Put::UInt
            } else {
                Put::Int
            }
        }
        "decimal" | "numeric" => {
            let (digits, scale) = match dt {
                D::Decimal256(p, _) if *p > 38 => {
                    return Err("more than 38 digits: sluice loads at most 38".into());
                }
                D::Decimal128(p, s) | D::Decimal256(p, s) => {
                    (i64::from(*p) - i64::from(*s), i64::from(*s).max(0))
                }
                _ => match arrow_int_range(dt) {
                    Some((_, hi)) => (hi.to_string().len() as i64, 0),
                    None => return Err("not a number sluice writes as DECIMAL".into()),
                },
            };
            let p = col.precision.unwrap_or(10) as i64;
            let s = col.scale.unwrap_or(0) as i64;
            if s < scale {
                return Err(format!(
                    "values would be rounded to {s} decimals (the result has {scale})"
                ));
            }
            if p - s < digits {
                return Err("values would not fit".into());
            }
            if unsigned && !matches!(arrow_int_range(dt), Some((0, _))) {
                return Err("negative values would not fit the unsigned column".into());
            }
            if scale > 38 {
                return Err("more than 38 decimals".into());
            }
            Put::Decimal { scale: scale as i8 }
        }
        // (FLOAT(M,D) and DOUBLE(M,D) round to D decimals.)
        "float" | "double" | "real" if col.column_type.contains('(') => {
            return Err("values would be rounded to the column's decimals".into());
        }
        "float" if matches!(dt, D::Float16 | D::Float32) => Put::Float,
        "double" | "real" if matches!(dt, D::Float16 | D::Float32 | D::Float64) => Put::Double,
        "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" if is_text => Put::Text,
        "char" if is_text => {
            return Err(
                "values would lose their trailing spaces (CHAR pads them, and drops \
                        them when read): load into VARCHAR or TEXT"
                    .into(),
            );
        }
        "enum" | "set" if is_text => {
            return Err(
                "the server takes some values that are not a label exactly as another \
                        value (a number as a label's index, another case or trailing spaces as \
                        the label), without a warning: load into VARCHAR"
                    .into(),
            );
        }
        "json" if is_text => {
            return Err(
                "MySQL rewrites JSON text (spaces, the order of keys, duplicate keys): \
                        load into TEXT or LONGTEXT"
                    .into(),
            );
        }
        "binary" if matches!(dt, D::Binary | D::LargeBinary | D::BinaryView) => {
            return Err(
                "values would be padded with zero bytes to the column's length: load \
                        into VARBINARY or BLOB"
                    .into(),
            );
        }
        "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob"
            if matches!(dt, D::Binary | D::LargeBinary | D::BinaryView) =>
        {
            Put::Bytes
        }
        "date" if matches!(dt, D::Date32 | D::Date64) => Put::Date,
        "datetime" | "timestamp" => match dt {
            D::Timestamp(unit, tz) => {
                if tz.is_some() != (col.data_type == "timestamp") {
                    return Err(if tz.is_some() {
                        "a time zone's instant into a DATETIME would be read back as a local \
                         date-time: load it into a TIMESTAMP column"
                            .into()
                    } else {
                        "a local date-time into a TIMESTAMP would be taken as UTC: load it \
                         into DATETIME, or give the result a time zone"
                            .into()
                    });
                }
                if keeps < needs(unit) {
                    return Err("values would be rounded".into());
                }
                Put::DateTime
            }
            _ => return Err("not a timestamp".into()),
        },
        "time" => match dt {
            D::Time32(unit) | D::Time64(unit) if keeps >= needs(unit) => Put::Time,
            D::Time32(_) | D::Time64(_) => return Err("values would be rounded".into()),
            _ => return Err("not a time of day".into()),
        },
        _ => return Err("sluice does not load this pair of types".into()),
    };
    Ok(put)
}

/// How a result column goes into a column sluice created for it ([`my_type`]).
fn put_of_created(dt: &DataType) -> Option<Put> {
    use DataType as D;
    Some(match dt {
        D::Dictionary(_, v) => return put_of_created(v),
        D::Null => Put::Null,
        D::Boolean | D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 => Put::Int,
        D::UInt32 => Put::Int,
        D::UInt64 => Put::UInt,
        D::Float16 | D::Float32 => Put::Float,
        D::Float64 => Put::Double,
        D::Decimal128(_, s) | D::Decimal256(_, s) if *s <= 30 => {
            Put::Decimal { scale: (*s).max(0) }
        }
        D::Utf8 | D::LargeUtf8 | D::Utf8View => Put::Text,
        D::Binary | D::LargeBinary | D::BinaryView => Put::Bytes,
        D::Date32 | D::Date64 => Put::Date,
        D::Timestamp(_, _) => Put::DateTime,
        D::Time32(_) | D::Time64(_) => Put::Time,
        _ => return None,
    })
}

/// The MySQL type sluice creates a column of Arrow type `dt` as; `key`: the column is part
/// of an upsert's key (text and bytes then have a length, which an index needs).
fn my_type(dt: &DataType, key: bool) -> Option<String> {
    use DataType as D;
    Some(match dt {
        D::Dictionary(_, v) => return my_type(v, key),
        D::Null if key => return None,
        D::Utf8 | D::LargeUtf8 | D::Utf8View if key => "VARCHAR(255)".into(),
        D::Null | D::Utf8 | D::LargeUtf8 | D::Utf8View => "LONGTEXT".into(),
        D::Boolean => "BOOLEAN".into(),
        D::Int8 => "TINYINT".into(),
        D::Int16 => "SMALLINT".into(),
        D::Int32 => "INT".into(),
        D::Int64 => "BIGINT".into(),
        D::UInt8 => "TINYINT UNSIGNED".into(),
        D::UInt16 => "SMALLINT UNSIGNED".into(),
        D::UInt32 => "INT UNSIGNED".into(),
        D::UInt64 => "BIGINT UNSIGNED".into(),
        D::Float16 | D::Float32 => "FLOAT".into(),
        D::Float64 => "DOUBLE".into(),
        D::Decimal128(p, s) | D::Decimal256(p, s) if *s <= 30 => {
            let (p, s) = (i32::from(*p), i32::from(*s));
            // A negative scale: whole numbers of more digits.
            let p = p - s.min(0);
            if p > 65 {
                return None;
            }
            format!("DECIMAL({p},{})", s.max(0))
        }
        D::Binary | D::LargeBinary | D::BinaryView if key => "VARBINARY(255)".into(),
        D::Binary | D::LargeBinary | D::BinaryView => "LONGBLOB".into(),
        D::Date32 | D::Date64 => "DATE".into(),
        D::Timestamp(_, None) => "DATETIME(6)".into(),
        D::Timestamp(_, Some(_)) => "TIMESTAMP(6)".into(),
        D::Time32(_) | D::Time64(_) => "TIME(6)".into(),
        _ => return None,
    })
}

/// `CREATE TABLE` of the result's columns (an upsert's key its primary key), InnoDB, text
/// compared byte for byte as sluice compares it (`collation`).
fn create_table(
    database: &str,
    table: &str,
    schema: &SchemaRef,
    sink: &DatabaseSinkConfig,
    collation: &str,
) -> Result<String, String> {
    let mut columns = Vec::new();
    for f in schema.fields() {
        let key = sink.key.contains(f.name());
        let ty = my_type(f.data_type(), key).ok_or_else(|| {
            format!(
                "it is missing, and sluice cannot create column {} of type {}{}: create the \
                 table yourself",
                f.name(),
                f.data_type(),
                if key { " in a key" } else { "" }
            )
        })?;
        // (A key's columns are NOT NULL in a primary key; other TIMESTAMP columns say NULL
        // DEFAULT NULL, or MySQL may give a first one the current time as its default and
        // on every update.)
        let null = if key {
            " NOT NULL"
        } else if ty.starts_with("TIMESTAMP") {
            " NULL DEFAULT NULL"
        } else {
            ""
        };
        columns.push(format!("{} {ty}{null}", quote_ident(f.name())));
    }
    if sink.mode == TableWrite::Upsert {
        key_in_result(sink, schema)?;
        let key: Vec<String> = sink.key.iter().map(|k| quote_ident(k)).collect();
        columns.push(format!("PRIMARY KEY ({})", key.join(", ")));
    }
    Ok(format!(
        "CREATE TABLE IF NOT EXISTS {}.{} ({}) ENGINE=InnoDB CHARACTER SET utf8mb4 COLLATE \
         {collation}",
        quote_ident(database),
        quote_ident(table),
        columns.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(data_type: &str, column_type: &str) -> TableColumn {
        TableColumn {
            name: "c".into(),
            data_type: data_type.into(),
            column_type: column_type.into(),
            precision: None,
            scale: None,
            fsp: None,
            not_null: false,
            has_default: false,
            auto_increment: false,
            generated: false,
            collation: None,
        }
    }

    fn decimal(p: u64, s: u64) -> TableColumn {
        TableColumn {
            precision: Some(p),
            scale: Some(s),
            ..col("decimal", &format!("decimal({p},{s})"))
        }
    }

    fn fsp(data_type: &str, fsp: u64) -> TableColumn {
        TableColumn {
            fsp: Some(fsp),
            ..col(data_type, data_type)
        }
    }

    #[test]
    fn only_exact_type_pairs_are_loaded() {
        use DataType as D;
        let utc = || Some("UTC".into());
        let ok = [
            (D::Int32, col("bigint", "bigint(20)"), Put::Int),
            (D::Int8, col("tinyint", "tinyint(4)"), Put::Int),
            (D::Boolean, col("tinyint", "tinyint(1)"), Put::Int),
            (D::UInt32, col("int", "int(10) unsigned"), Put::Int),
            (D::UInt64, col("bigint", "bigint(20) unsigned"), Put::UInt),
            (D::Int16, col("mediumint", "mediumint(9)"), Put::Int),
            (
                D::Decimal128(12, 2),
                decimal(14, 4),
                Put::Decimal { scale: 2 },
            ),
            (D::Int32, decimal(10, 0), Put::Decimal { scale: 0 }),
            (D::Utf8View, col("varchar", "varchar(20)"), Put::Text),
            (D::Utf8, col("longtext", "longtext"), Put::Text),
            (D::Binary, col("blob", "blob"), Put::Bytes),
            (D::Float32, col("double", "double"), Put::Double),
            (D::Date32, col("date", "date"), Put::Date),
            (
                D::Timestamp(TimeUnit::Nanosecond, utc()),
                fsp("timestamp", 6),
                Put::DateTime,
            ),
            (
                D::Timestamp(TimeUnit::Millisecond, None),
                fsp("datetime", 3),
                Put::DateTime,
            ),
            (D::Time64(TimeUnit::Microsecond), fsp("time", 6), Put::Time),
        ];
        for (dt, c, want) in ok {
            let f = Field::new("c", dt.clone(), true);
            assert_eq!(put_of(&f, &c), Ok(want), "{dt} into {}", c.column_type);
        }
        let refused = [
            (D::Int64, col("int", "int(11)"), "would not fit"),
            (D::Int8, col("int", "int(10) unsigned"), "would not fit"),
            (D::UInt64, col("bigint", "bigint(20)"), "would not fit"),
            (D::Decimal128(12, 4), decimal(12, 2), "rounded"),
            (D::Decimal128(12, 2), decimal(11, 2), "would not fit"),
            (D::Int64, decimal(12, 0), "would not fit"),
            (D::Float64, col("float", "float"), "does not load"),
            (D::Float64, col("double", "double(10,2)"), "rounded"),
            (D::Utf8, col("int", "int(11)"), "not a number"),
            (
                D::Decimal128(9, 2),
                col("bigint", "bigint(20)"),
                "lose their decimals",
            ),
            (
                D::Timestamp(TimeUnit::Microsecond, utc()),
                fsp("datetime", 6),
                "TIMESTAMP column",
            ),
            (
                D::Timestamp(TimeUnit::Microsecond, None),
                fsp("timestamp", 6),
                "taken as UTC",
            ),
            (
                D::Timestamp(TimeUnit::Microsecond, None),
                fsp("datetime", 0),
                "rounded",
            ),
            (D::Utf8, col("blob", "blob"), "does not load"),
            (D::Utf8, col("char", "char(3)"), "trailing spaces"),
            (D::Utf8, col("enum", "enum('a','b')"), "label"),
            (D::Utf8, col("set", "set('a','b')"), "label"),
            (D::Utf8, col("json", "json"), "rewrites JSON"),
            (D::Binary, col("binary", "binary(4)"), "zero bytes"),
            (D::Decimal256(50, 2), decimal(60, 2), "more than 38 digits"),
            (D::Date32, col("year", "year(4)"), "does not load"),
        ];
        for (dt, c, why) in refused {
            let f = Field::new("c", dt.clone(), true);
            let e = put_of(&f, &c).unwrap_err();
            assert!(e.contains(why), "{dt} into {}: {e}", c.column_type);
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
            let ty = my_type(&dt, false).unwrap();
            let (data_type, rest) = ty.split_once('(').unwrap_or((&ty, ""));
            let words: Vec<&str> = data_type.split(' ').collect();
            let mut c = col(&words[0].to_ascii_lowercase(), &ty.to_ascii_lowercase());
            if words[0] == "BOOLEAN" {
                c = col("tinyint", "tinyint(1)");
            }
            if let Some((p, s)) = rest.trim_end_matches(')').split_once(',') {
                c = decimal(p.parse().unwrap(), s.parse().unwrap());
            } else if let Ok(f) = rest.split(')').next().unwrap_or("").parse() {
                c.fsp = Some(f);
            }
            let f = Field::new("c", dt.clone(), true);
            let put = put_of(&f, &c).unwrap_or_else(|e| panic!("{dt} as {ty}: {e}"));
            assert_eq!(Some(put), put_of_created(&dt), "{dt}");
        }
    }

    #[test]
    fn an_upsert_needs_its_key_as_the_only_unique_index_a_row_can_hit() {
        use datafusion::arrow::datatypes::Schema;
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("day", DataType::Date32, true),
            Field::new("store", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let sink = DatabaseSinkConfig {
            database: "d".into(),
            table: "t".into(),
            mode: TableWrite::Upsert,
            key: vec!["store".into(), "day".into()],
        };
        let id = TableColumn {
            name: "id".into(),
            auto_increment: true,
            ..col("bigint", "bigint(20)")
        };
        let store = |collation: &str| TableColumn {
            name: "store".into(),
            collation: Some(collation.into()),
            ..col("varchar", "varchar(20)")
        };
        let idx = |name: &str, cols: &[&str], prefix: bool, expressions: bool| UniqueIndex {
            name: name.into(),
            columns: cols.iter().map(|c| c.to_string()).collect(),
            prefix,
            expressions,
        };
        let check = |indexes: &[UniqueIndex], collation: &str| {
            upsert_indexes(&sink, &schema, &[id.clone(), store(collation)], indexes)
        };
        let key = || idx("PRIMARY", &["day", "store"], false, false);
        assert!(check(&[key()], "utf8mb4_nopad_bin").is_ok());
        assert!(check(&[key()], "utf8mb4_0900_bin").is_ok());
        // An auto-increment id the result does not set cannot collide.
        let with_id = [
            idx("PRIMARY", &["id"], false, false),
            idx("k", &["day", "store"], false, false),
        ];
        assert!(check(&with_id, "utf8mb4_nopad_bin").is_ok());
        let e = check(
            &[key(), idx("v", &["v"], false, false)],
            "utf8mb4_nopad_bin",
        )
        .unwrap_err();
        assert!(e.contains("another unique index, v on (v)"), "{e}");
        // A functional key part: not the key, and unsafe as another index.
        let e = check(
            &[idx("k", &["day", "store"], false, true)],
            "utf8mb4_nopad_bin",
        )
        .unwrap_err();
        assert!(e.contains("needs a primary key or unique index"), "{e}");
        let e = check(&[key(), idx("f", &["v"], false, true)], "utf8mb4_nopad_bin").unwrap_err();
        assert!(e.contains("f on (v and expressions)"), "{e}");
        let e = check(
            &[idx("k", &["day", "store"], true, false)],
            "utf8mb4_nopad_bin",
        )
        .unwrap_err();
        assert!(e.contains("needs a primary key or unique index"), "{e}");
        let e = check(&[idx("k", &["day"], false, false)], "utf8mb4_nopad_bin").unwrap_err();
        assert!(e.contains("needs a primary key or unique index"), "{e}");
        // Keys compared ignoring case or trailing spaces would update another row.
        for collation in ["utf8mb4_bin", "utf8mb4_general_ci", "latin1_swedish_ci"] {
            let e = check(&[key()], collation).unwrap_err();
            assert!(
                e.contains(&format!("key column store has collation {collation}")),
                "{e}"
            );
        }
    }
}
