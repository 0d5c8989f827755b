//! PostgreSQL: read-only sessions under the pool's cap, the columns of a table or query
//! (from the server's description of the statement, without reading rows), and the SQL of a
//! binary COPY of them.

pub(crate) mod copy_decode;
pub(crate) mod copy_encode;
pub(crate) mod sink;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{Kind, Type};

use super::{DatabaseError, Pool, UNSUPPORTED};
use crate::config::{Relation, TlsMode};
use copy_decode::Wire;

/// A connection of a [`Pool`]: handed back with [`Session::park`] when healthy and outside
/// any transaction; dropped otherwise, when it counts against the cap until its connection
/// has ended.
pub(crate) struct Session {
    inner: Option<Inner>,
}

struct Inner {
    client: tokio_postgres::Client,
    pool: Arc<Pool>,
    connection: tokio::task::JoinHandle<()>,
}

/// How long a dropped session's connection may take to end before it is cut.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Session {
    /// The client.
    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        match &self.inner {
            Some(i) => &i.client,
            // (Only `park` and `drop` take the inner session, consuming the session.)
            None => unreachable!("a session is used after it was handed back"),
        }
    }

    /// Hands the session back to its pool for the next asker.
    pub(crate) async fn park(mut self) {
        if let Some(inner) = self.inner.take() {
            let pool = Arc::clone(&inner.pool);
            pool.park(Session { inner: Some(inner) }).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The room in the pool is freed once the connection has ended (dropping the client
        // ends it; a read abandoned mid-COPY is cut after a while): until then the server
        // still counts the session, and so does the cap.
        let Some(Inner {
            client,
            pool,
            mut connection,
        }) = self.inner.take()
        else {
            return;
        };
        drop(client);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if tokio::time::timeout(CLOSE_WAIT, &mut connection)
                        .await
                        .is_err()
                    {
                        connection.abort();
                        let _ = connection.await;
                    }
                    pool.closed().await;
                });
            }
            Err(_) => connection.abort(),
        }
    }
}

/// A read-only session under the pool's cap (an idle one, or a new connection): UTC,
/// UTF-8, the database's `statement_timeout`.
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
    let tls = super::tls::client_config(&url.tls).map_err(|e| pool.error(e, false))?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&url.host)
        .port(url.port)
        .user(&url.user)
        .dbname(&url.database)
        .application_name("sluice")
        .connect_timeout(std::time::Duration::from_secs(30))
        .ssl_mode(match url.tls.mode {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
    if let Some(p) = &url.password {
        config.password(p);
    }
    let connect = config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls.clone()));
    let (client, connection) = match connect.await {
        Ok(c) => c,
        // prefer, as libpq: a TLS handshake that fails (a protocol or key the server offers
        // that rustls refuses) is tried again in plain. (tokio-postgres tells a TLS error
        // only by its text.)
        Err(e)
            if url.tls.mode == TlsMode::Prefer
                && e.to_string().contains("error performing TLS handshake") =>
        {
            tracing::debug!(
                "{}: TLS failed ({e}), connecting in plain",
                pool.config.name
            );
            config.ssl_mode(SslMode::Disable);
            config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
                .await
                .map_err(|e| server_error(pool, &e, "connecting"))?
        }
        Err(e) => return Err(server_error(pool, &e, "connecting")),
    };
    let mut connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("postgres connection ended: {e}");
        }
    });
    let mut setup =
        String::from("SET TIME ZONE 'UTC'; SET client_encoding = 'UTF8'; SET DateStyle = 'ISO';");
    if pool.config.read_only {
        setup.push_str(" SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY;");
    }
    if let Some(t) = pool.config.statement_timeout {
        setup.push_str(&format!(
            " SET statement_timeout = {};",
            t.as_millis().max(1)
        ));
    }
    if let Err(e) = client.batch_execute(&setup).await {
        // Not a session yet: the caller frees the pool's room, once the connection ended.
        let e = server_error(pool, &e, "setting up the session");
        drop(client);
        if tokio::time::timeout(CLOSE_WAIT, &mut connection)
            .await
            .is_err()
        {
            connection.abort();
        }
        return Err(e);
    }
    // From here, dropping the session frees the pool's room once the connection ends.
    Ok(Session {
        inner: Some(Inner {
            client,
            pool: Arc::clone(pool),
            connection,
        }),
    })
}

/// Asks the server its version for the run report, once per database.
pub(crate) async fn note_server(pool: &Pool, client: &tokio_postgres::Client) {
    if pool.guard.server().is_none()
        && let Ok(row) = client
            .query_one(
                "SELECT 'PostgreSQL ' || current_setting('server_version')",
                &[],
            )
            .await
        && let Ok(v) = row.try_get::<_, String>(0)
    {
        pool.guard.set_server(&v);
    }
}

/// A server or connection error as a [`DatabaseError`], `doing` what.
pub(crate) fn server_error(pool: &Pool, e: &tokio_postgres::Error, doing: &str) -> DatabaseError {
    let (message, transient) = match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // Connection exceptions, too many clients, admin shutdown, serialization.
            let transient = code.starts_with("08")
                || code == "53300"
                || code == "57P01"
                || code == "40001"
                || code == "40P01";
            (
                format!("{doing}: {} (SQLSTATE {code})", db.message()),
                transient,
            )
        }
        None => {
            // The cause (refused, reset, timed out) is in the source chain.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            (format!("{doing}: {text}"), e.is_closed() || source_is_io(e))
        }
    };
    pool.error(message, transient)
}

fn source_is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// `name` as a quoted identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The PostgreSQL type of a column, in its field's metadata (filters on text are pushed only
/// for `text` and `varchar`: `char(n)` compares ignoring its padding, `json` has no `=`).
pub(crate) const PG_TYPE: &str = "sluice.pg_type";

/// The columns of `relation` as the server describes them (no row is read): the Arrow
/// schema, and how each column is read (`None`: a type sluice cannot read, which a scan
/// refuses if it selects the column; its field is `Null` with the type's name in its
/// metadata under [`UNSUPPORTED`]).
pub(crate) async fn describe(
    pool: &Pool,
    session: &Session,
    relation: &Relation,
) -> Result<(SchemaRef, Vec<Option<Wire>>), DatabaseError> {
    let sql = format!(
        "SELECT * FROM {} LIMIT 0",
        super::pushdown::Dialect::Postgres.relation_sql(relation)
    );
    let what = match relation {
        Relation::Table(t) => format!("reading the columns of table {t}"),
        Relation::Query(_) => "reading the columns of the source's query".to_string(),
    };
    let statement = session
        .client()
        .prepare(&sql)
        .await
        .map_err(|e| server_error(pool, &e, &what))?;
    let mut fields = Vec::new();
    let mut wires = Vec::new();
    for c in statement.columns() {
        match wire_of(c.type_(), c.type_modifier()) {
            Some(w) => {
                let meta = [(PG_TYPE.to_string(), c.type_().name().to_string())];
                fields.push(Field::new(c.name(), w.data_type(), true).with_metadata(meta.into()));
                wires.push(Some(w));
            }
            None => {
                let meta = [(UNSUPPORTED.to_string(), c.type_().name().to_string())];
                fields.push(Field::new(c.name(), DataType::Null, true).with_metadata(meta.into()));
                wires.push(None);
            }
        }
    }
    Ok((Arc::new(Schema::new(fields)), wires))
}

/// How a column of type `ty` (with type modifier `typmod`) is read, if sluice can.
fn wire_of(ty: &Type, typmod: i32) -> Option<Wire> {
    if let Kind::Domain(inner) = ty.kind() {
        return wire_of(inner, -1);
    }
    if let Kind::Enum(_) = ty.kind() {
        return Some(Wire::Text);
    }
    Some(match *ty {
        Type::BOOL => Wire::Bool,
        Type::INT2 => Wire::Int2,
        Type::INT4 => Wire::Int4,
        Type::INT8 => Wire::Int8,
        Type::FLOAT4 => Wire::Float4,
        Type::FLOAT8 => Wire::Float8,
        Type::NUMERIC => {
            if typmod < 4 {
                // Unconstrained: Spark's choice of decimal(38,18); a value needing more
                // digits is an error, never rounded.
                Wire::Numeric {
                    precision: 38,
                    scale: 18,
                }
            } else {
                let t = typmod - 4;
                let precision = ((t >> 16) & 0xffff) as u8;
                let scale = (((t & 0x7ff) ^ 1024) - 1024) as i8;
                if precision == 0 || precision > 38 || scale < 0 || scale as u8 > precision {
                    return None;
                }
                Wire::Numeric { precision, scale }
            }
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::CHAR => {
            Wire::Text
        }
        Type::JSONB => Wire::Jsonb,
        Type::BYTEA => Wire::Bytes,
        Type::UUID => Wire::Uuid,
        Type::DATE => Wire::Date,
        Type::TIME => Wire::Time,
        Type::TIMESTAMP => Wire::Timestamp,
        Type::TIMESTAMPTZ => Wire::TimestampTz,
        _ => return None,
    })
}
