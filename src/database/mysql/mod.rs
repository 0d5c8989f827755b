//! MySQL and MariaDB: read-only sessions under the pool's cap (UTC, utf8mb4, strict SQL
//! mode, the database's statement timeout), the columns of a table (from
//! `information_schema.COLUMNS`, exact) or of a query (from the server's description of the
//! prepared statement, without reading rows), and rows read with the binary protocol.

pub(crate) mod decode;
pub(crate) mod encode;
pub(crate) mod sink;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::FutureExt;
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, OptsBuilder, Row, SslOpts, Value};

use super::{DatabaseError, Pool, UNSUPPORTED};
use crate::config::{Relation, TlsMode};
use decode::Wire;

/// A connection of a [`Pool`]: handed back with [`Session::park`] when healthy and outside
/// any transaction; dropped otherwise, when it counts against the cap until its connection
/// has ended.
pub(crate) struct Session {
    inner: Option<Inner>,
}

struct Inner {
    conn: Conn,
    pool: Arc<Pool>,
    /// A result may be coming in: the connection is cut when dropped, not drained.
    reading: bool,
}

/// How long a dropped session's connection may take to end politely before it is cut.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long opening a connection may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The session's SQL mode: strict, and nothing that changes what the SQL sluice writes
/// means (no `ANSI_QUOTES`, no `NO_BACKSLASH_ESCAPES`, no `PIPES_AS_CONCAT`), whatever the
/// server's default is.
const SQL_MODE: &str = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,\
                        ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/// How long the server waits for sluice to take rows it sends, in seconds (the default, 60,
/// would drop a session whose reader is held up by the rest of the query).
const NET_WRITE_TIMEOUT: u32 = 3600;

impl Session {
    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut Conn {
        match &mut self.inner {
            Some(i) => &mut i.conn,
            // (Only `park`, `cut` and `drop` take the inner session, consuming the session.)
            None => unreachable!("a session is used after it was handed back"),
        }
    }

    /// Marks the session as receiving a result (`true`) or not: a session dropped while
    /// receiving one (its reader was stopped) is cut rather than drained.
    pub(crate) fn reading(&mut self, reading: bool) {
        if let Some(i) = &mut self.inner {
            i.reading = reading;
        }
    }

    /// Whether the connection may still be used.
    pub(crate) fn usable(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| !i.conn.is_disconnected())
    }

    /// Hands the session back to its pool for the next asker.
    pub(crate) async fn park(mut self) {
        if let Some(inner) = self.inner.take() {
            let pool = Arc::clone(&inner.pool);
            pool.park(Session { inner: Some(inner) }).await;
        }
    }

    /// Closes the connection at once, without reading the rest of a result the server is
    /// sending (which dropping it would do first: a LIMIT over a large table would read it
    /// all).
    pub(crate) fn cut(mut self) {
        if let Some(Inner { conn, pool, .. }) = self.inner.take() {
            cut(conn, pool);
        }
    }
}

/// Closes `conn` at once and frees its room in `pool`.
fn cut(conn: Conn, pool: Arc<Pool>) {
    // `disconnect` marks the connection as ended before it reads what is left of a result;
    // dropped at its first wait, it closes the socket instead.
    let _ = conn.disconnect().now_or_never();
    freed_later(pool);
}

/// Tells `pool` that a connection has ended (from a task: a drop cannot wait).
fn freed_later(pool: Arc<Pool>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move { pool.closed().await });
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The room in the pool is freed once the connection has ended: until then the
        // server still counts the session, and so does the cap.
        let Some(Inner {
            conn,
            pool,
            reading,
        }) = self.inner.take()
        else {
            return;
        };
        if reading {
            cut(conn, pool);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    // (Timed out, the future is dropped with the connection marked ended:
                    // its socket is closed.)
                    let _ = tokio::time::timeout(CLOSE_WAIT, conn.disconnect()).await;
                    pool.closed().await;
                });
            }
            Err(_) => drop(conn),
        }
    }
}

/// A read-only session under the pool's cap (an idle one, or a new connection).
pub(crate) async fn connect(pool: &Arc<Pool>) -> Result<Session, DatabaseError> {
    connect_for(pool, super::Purpose::Work).await
}

/// [`connect`], for `purpose`.
pub(crate) async fn connect_for(
    pool: &Arc<Pool>,
    purpose: super::Purpose,
) -> Result<Session, DatabaseError> {
    pool.session(purpose, || open(pool)).await
}

/// Opens a new connection (the pool has made room for it) and sets the session up.
async fn open(pool: &Arc<Pool>) -> Result<Session, DatabaseError> {
    let url = &pool.config.url;
    let tls = url.tls.mode;
    let ssl = match tls {
        TlsMode::Disable => None,
        // (The mysql client's PREFERRED and REQUIRED do not check the certificate either.)
        TlsMode::Prefer | TlsMode::Require => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            let roots = super::tls::root_certs(url.tls.root_cert.as_deref())
                .map_err(|e| pool.error(e, false))?;
            Some(
                SslOpts::default()
                    .with_root_certs((roots.into_iter()).map(|c| c.to_vec().into()).collect())
                    .with_disable_built_in_roots(true)
                    .with_danger_skip_domain_validation(tls == TlsMode::VerifyCa),
            )
        }
    };
    if ssl.is_some() {
        // (mysql_async's TLS takes the process's default crypto.)
        super::tls::provider();
    }
    let opts = OptsBuilder::default()
        .ip_or_hostname(url.host.clone())
        .tcp_port(url.port)
        .user(Some(url.user.clone()))
        .pass(url.password.clone())
        .db_name(Some(url.database.clone()))
        .prefer_socket(false)
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)))
        .tcp_nodelay(true);
    let connect = |ssl: Option<SslOpts>| {
        tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts.clone().ssl_opts(ssl)))
    };
    let timed_out = || {
        pool.error(
            format!(
                "connecting: no answer within {}s",
                CONNECT_TIMEOUT.as_secs()
            ),
            true,
        )
    };
    let mut conn = match connect(ssl).await {
        Ok(Ok(conn)) => conn,
        // PREFERRED: plain, when the server has no TLS, or a handshake that fails (as the
        // mysql client).
        Ok(Err(e)) if tls == TlsMode::Prefer && tls_failed(&e) => match connect(None).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(server_error(pool, &e, "connecting")),
            Err(_) => return Err(timed_out()),
        },
        Ok(Err(e)) => {
            let doing = if tls_failed(&e) {
                "connecting over TLS"
            } else {
                "connecting"
            };
            return Err(server_error(pool, &e, doing));
        }
        Err(_) => return Err(timed_out()),
    };
    match setup(pool, &mut conn).await {
        Ok(()) => Ok(Session {
            inner: Some(Inner {
                conn,
                pool: Arc::clone(pool),
                reading: false,
            }),
        }),
        Err(e) => {
            // Not a session yet: the caller frees the pool's room, once the connection ended.
            let _ = tokio::time::timeout(CLOSE_WAIT, conn.disconnect()).await;
            Err(e)
        }
    }
}

/// Whether connecting failed for TLS: the server offers none, or the handshake failed
/// (rustls's error comes wrapped in an I/O error).
fn tls_failed(e: &mysql_async::Error) -> bool {
    use mysql_async::{DriverError, Error, IoError};
    match e {
        Error::Driver(DriverError::NoClientSslFlagFromServer) | Error::Io(IoError::Tls(_)) => true,
        Error::Io(IoError::Io(io)) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

/// The session's settings: UTC, utf8mb4, strict, read-only (for a read-only database), the
/// statement timeout under the name the server knows it by.
async fn setup(pool: &Pool, conn: &mut Conn) -> Result<(), DatabaseError> {
    let doing = "setting up the session";
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| server_error(pool, &e, doing))?;
    if let Some(v) = &version {
        pool.guard.set_server(v);
    }
    let mariadb = version.is_some_and(|v| v.contains("MariaDB"));
    let mut setup = vec![
        "SET NAMES utf8mb4".to_string(),
        format!(
            "SET SESSION time_zone = '+00:00', SESSION sql_mode = '{SQL_MODE}', \
             SESSION net_write_timeout = {NET_WRITE_TIMEOUT}"
        ),
    ];
    if pool.config.read_only {
        setup.push("SET SESSION TRANSACTION READ ONLY".to_string());
    }
    if let Some(t) = pool.config.statement_timeout {
        setup.push(if mariadb {
            // Seconds, with a fraction.
            format!(
                "SET SESSION max_statement_time = {:.3}",
                t.as_secs_f64().max(0.001)
            )
        } else {
            // Milliseconds; SELECT statements only (the only ones sluice reads with).
            format!("SET SESSION max_execution_time = {}", t.as_millis().max(1))
        });
    }
    for sql in setup {
        conn.query_drop(sql.as_str())
            .await
            .map_err(|e| server_error(pool, &e, doing))?;
    }
    Ok(())
}

/// A server or connection error as a [`DatabaseError`], `doing` what.
pub(crate) fn server_error(pool: &Pool, e: &mysql_async::Error, doing: &str) -> DatabaseError {
    match e {
        mysql_async::Error::Server(s) => {
            // Too many connections, lock wait timeout, deadlock, server shutdown, connection
            // killed: another attempt may succeed.
            let transient = matches!(s.code, 1040 | 1053 | 1205 | 1213 | 1927 | 2006 | 2013);
            pool.error(
                format!(
                    "{doing}: {} (error {}, SQLSTATE {})",
                    s.message, s.code, s.state
                ),
                transient,
            )
        }
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => {
            pool.error(format!("{doing}: {io}"), true)
        }
        other => {
            // The cause (refused, reset, timed out) is in the source chain.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                source = s.source();
            }
            let transient = matches!(
                other,
                mysql_async::Error::Io(_)
                    | mysql_async::Error::Driver(mysql_async::DriverError::ConnectionClosed)
            );
            pool.error(format!("{doing}: {text}"), transient)
        }
    }
}

/// `name` as a quoted identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A column's MySQL type (`DATA_TYPE` of a table's column: `varchar`, `int`...; for a
/// query's column, its protocol type), in its field's metadata: filters are pushed only on
/// types whose comparisons mean what sluice's mean.
pub(crate) const MY_TYPE: &str = "sluice.mysql_type";

/// A text column's character set (table sources), in its field's metadata.
pub(crate) const MY_CHARSET: &str = "sluice.mysql_charset";

/// The value of [`MY_TYPE`] for a text column of a query (whose character set is not known).
pub(crate) const QUERY_TEXT: &str = "query text";

/// The columns of `relation` as the server describes them (no row is read): the Arrow
/// schema, and how each column is read (`None`: a type sluice cannot read, which a scan
/// refuses if it selects the column; its field is `Null` with the type's name in its
/// metadata under [`UNSUPPORTED`]).
pub(crate) async fn describe(
    pool: &Pool,
    session: &mut Session,
    relation: &Relation,
) -> Result<(SchemaRef, Vec<Option<Wire>>), DatabaseError> {
    let sql = format!(
        "SELECT * FROM {} LIMIT 0",
        super::pushdown::Dialect::Mysql.relation_sql(relation)
    );
    let what = match relation {
        Relation::Table(t) => format!("reading the columns of table {t}"),
        Relation::Query(_) => "reading the columns of the source's query".to_string(),
    };
    let conn = session.conn();
    let statement = conn
        .prep(sql.as_str())
        .await
        .map_err(|e| server_error(pool, &e, &what))?;
    let columns = statement.columns();
    conn.close(statement)
        .await
        .map_err(|e| server_error(pool, &e, &what))?;
    let exact = match relation {
        Relation::Table(t) => table_columns(pool, conn, t, &what).await?,
        Relation::Query(_) => Vec::new(),
    };
    let mut fields = Vec::new();
    let mut wires = Vec::new();
    for c in columns.iter() {
        let name = c.name_str().into_owned();
        let (wire, meta) = match exact.iter().find(|e| e.name == name) {
            Some(e) => (e.wire(), e.metadata()),
            None => query_column(c),
        };
        match wire {
            Some(w) => {
                fields.push(Field::new(name, w.data_type(), true).with_metadata(meta));
                wires.push(Some(w));
            }
            None => {
                let ty = meta.get(MY_TYPE).cloned().unwrap_or_default();
                let meta = [(UNSUPPORTED.to_string(), ty)];
                fields.push(Field::new(name, DataType::Null, true).with_metadata(meta.into()));
                wires.push(None);
            }
        }
    }
    Ok((Arc::new(Schema::new(fields)), wires))
}

/// A table's column as `information_schema.COLUMNS` describes it.
struct TableColumn {
    name: String,
    data_type: String,
    column_type: String,
    precision: Option<u64>,
    scale: Option<u64>,
    charset: Option<String>,
}

/// The columns of table `table` (`db.table` or `table`, in the session's database).
async fn table_columns(
    pool: &Pool,
    conn: &mut Conn,
    table: &str,
    what: &str,
) -> Result<Vec<TableColumn>, DatabaseError> {
    let (schema, name) = match table.split_once('.') {
        Some((s, n)) => (Some(s.to_string()), n.to_string()),
        None => (None, table.to_string()),
    };
    let rows: Vec<Row> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, \
             CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? \
             ORDER BY ORDINAL_POSITION",
            (schema, name),
        )
        .await
        .map_err(|e| server_error(pool, &e, what))?;
    Ok(rows
        .iter()
        .map(|r| TableColumn {
            name: text(r.as_ref(0)).unwrap_or_default(),
            data_type: text(r.as_ref(1)).unwrap_or_default().to_ascii_lowercase(),
            column_type: text(r.as_ref(2)).unwrap_or_default().to_ascii_lowercase(),
            precision: number(r.as_ref(3)),
            scale: number(r.as_ref(4)),
            charset: text(r.as_ref(5)),
        })
        .collect())
}

impl TableColumn {
    /// How its values are read, if sluice can.
    fn wire(&self) -> Option<Wire> {
        let unsigned = self.column_type.contains("unsigned");
        let int =
            |signed: Wire, unsigned_wire: Wire| Some(if unsigned { unsigned_wire } else { signed });
        match self.data_type.as_str() {
            "tinyint" => int(Wire::Int8, Wire::UInt8),
            "smallint" => int(Wire::Int16, Wire::UInt16),
            "mediumint" | "int" | "integer" => int(Wire::Int32, Wire::UInt32),
            "bigint" => int(Wire::Int64, Wire::UInt64),
            "decimal" | "numeric" => decimal(self.precision?, self.scale.unwrap_or(0)),
            "float" => Some(Wire::Float),
            "double" | "real" | "double precision" => Some(Wire::Double),
            "date" => Some(Wire::Date),
            "datetime" => Some(Wire::DateTime),
            "timestamp" => Some(Wire::Timestamp),
            "time" => Some(Wire::Time),
            "year" => Some(Wire::Year),
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum"
            | "set" | "json" | "uuid" => Some(Wire::Text),
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                Some(Wire::Bytes)
            }
            "bit" => Some(Wire::Bit),
            _ => None,
        }
    }

    /// Its field's metadata: the type (the full column type when sluice cannot read it),
    /// and the character set of text.
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        let mut meta = std::collections::HashMap::new();
        let ty = if self.wire().is_some() {
            &self.data_type
        } else {
            &self.column_type
        };
        meta.insert(MY_TYPE.to_string(), ty.clone());
        if let Some(c) = &self.charset {
            meta.insert(MY_CHARSET.to_string(), c.clone());
        }
        meta
    }
}

/// A DECIMAL(`precision`, `scale`) column's wire, if Arrow holds it.
fn decimal(precision: u64, scale: u64) -> Option<Wire> {
    if precision == 0 || precision > 76 || scale > precision {
        return None;
    }
    Some(Wire::Decimal {
        precision: precision as u8,
        scale: scale as i8,
    })
}

/// How a query's column is read (from the prepared statement's description), and its
/// field's metadata.
fn query_column(c: &Column) -> (Option<Wire>, std::collections::HashMap<String, String>) {
    use ColumnType::*;
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let int =
        |signed: Wire, unsigned_wire: Wire| Some(if unsigned { unsigned_wire } else { signed });
    let binary = c.character_set() == 63;
    let (wire, ty) = match c.column_type() {
        MYSQL_TYPE_TINY => (int(Wire::Int8, Wire::UInt8), "tinyint"),
        MYSQL_TYPE_SHORT => (int(Wire::Int16, Wire::UInt16), "smallint"),
        MYSQL_TYPE_INT24 => (int(Wire::Int32, Wire::UInt32), "mediumint"),
        MYSQL_TYPE_LONG => (int(Wire::Int32, Wire::UInt32), "int"),
        MYSQL_TYPE_LONGLONG => (int(Wire::Int64, Wire::UInt64), "bigint"),
        MYSQL_TYPE_YEAR => (Some(Wire::Year), "year"),
        MYSQL_TYPE_FLOAT => (Some(Wire::Float), "float"),
        MYSQL_TYPE_DOUBLE => (Some(Wire::Double), "double"),
        MYSQL_TYPE_DECIMAL | MYSQL_TYPE_NEWDECIMAL => {
            // The display length counts the point and, when signed, the sign.
            let scale = u64::from(c.decimals());
            let precision = u64::from(c.column_length())
                .saturating_sub(u64::from(scale > 0))
                .saturating_sub(u64::from(!unsigned));
            (decimal(precision, scale), "decimal")
        }
        MYSQL_TYPE_DATE | MYSQL_TYPE_NEWDATE => (Some(Wire::Date), "date"),
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_DATETIME2 => (Some(Wire::DateTime), "datetime"),
        MYSQL_TYPE_TIMESTAMP | MYSQL_TYPE_TIMESTAMP2 => (Some(Wire::Timestamp), "timestamp"),
        MYSQL_TYPE_TIME | MYSQL_TYPE_TIME2 => (Some(Wire::Time), "time"),
        MYSQL_TYPE_BIT => (Some(Wire::Bit), "bit"),
        // (MySQL describes JSON as binary: it is UTF-8 text.)
        MYSQL_TYPE_NULL | MYSQL_TYPE_JSON => (Some(Wire::Text), QUERY_TEXT),
        MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET => {
            if binary
                && !c
                    .flags()
                    .intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG)
            {
                (Some(Wire::Bytes), "binary")
            } else {
                (Some(Wire::Text), QUERY_TEXT)
            }
        }
        other => {
            let name = format!("{other:?}");
            let name = name
                .strip_prefix("MYSQL_TYPE_")
                .unwrap_or(&name)
                .to_ascii_lowercase();
            let meta = [(MY_TYPE.to_string(), name)].into();
            return (None, meta);
        }
    };
    (wire, [(MY_TYPE.to_string(), ty.to_string())].into())
}

/// A text value (information_schema's), if it is one.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// A whole number (information_schema's), if it is one.
fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::UInt(u) => Some(*u),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// The bounds `SELECT MIN(c), MAX(c) FROM ...` (`sql`) reads, in a read-only transaction;
/// `None` when there is no value.
pub(crate) async fn bounds(
    pool: &Arc<Pool>,
    sql: &str,
    doing: &str,
) -> Result<Option<(i128, i128)>, DatabaseError> {
    let mut session = connect(pool).await?;
    let conn = session.conn();
    let err = |e: mysql_async::Error| server_error(pool, &e, doing);
    conn.query_drop("START TRANSACTION READ ONLY")
        .await
        .map_err(err)?;
    let row: Option<Row> = conn.exec_first(sql, ()).await.map_err(err)?;
    conn.query_drop("COMMIT").await.map_err(err)?;
    session.park().await;
    let Some(row) = row else {
        return Ok(None);
    };
    let value =
        |i: usize| whole(row.as_ref(i)).map_err(|e| pool.error(format!("{doing}: {e}"), false));
    Ok(value(0)?.zip(value(1)?))
}

/// A whole number read from the server (a bound), as i128: `Ok(None)` for NULL.
fn whole(v: Option<&Value>) -> Result<Option<i128>, String> {
    match v {
        None | Some(Value::NULL) => Ok(None),
        Some(Value::Int(i)) => Ok(Some(i128::from(*i))),
        Some(Value::UInt(u)) => Ok(Some(i128::from(*u))),
        Some(Value::Bytes(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{:?} is not a whole number", String::from_utf8_lossy(b))),
        Some(other) => Err(format!("{other:?} is not a whole number")),
    }
}
