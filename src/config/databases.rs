//! `[databases.NAME]` and the sources that read from them: the validated shapes (see
//! `docs/design/databases.md`). A database URL's password is a credential: no `Debug` or
//! `Display` of these types shows it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Which server a database URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatabaseKind {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://`, `mariadb://`).
    Mysql,
}

impl DatabaseKind {
    /// The kind's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            DatabaseKind::Postgres => "postgres",
            DatabaseKind::Mysql => "mysql",
        }
    }
}

/// A database URL, taken apart: `postgres://user:password@host:port/db?param=value`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    /// The server kind.
    pub kind: DatabaseKind,
    /// The user.
    pub user: String,
    /// The password, if the URL has one: never shown.
    pub password: Option<String>,
    /// The host.
    pub host: String,
    /// The port (the kind's default when the URL has none).
    pub port: u16,
    /// The database.
    pub database: String,
    /// How the connection uses TLS (the URL's `sslmode`/`ssl-mode` and CA parameters).
    pub tls: Tls,
}

/// How a connection uses TLS, from its URL's parameters: PostgreSQL's `sslmode` and
/// `sslrootcert` (libpq's names and meanings), MySQL's `ssl-mode` and `ssl-ca` (the mysql
/// client's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tls {
    /// Whether TLS is used, and what of the server's certificate is checked.
    pub mode: TlsMode,
    /// The CA certificates (PEM) the server's must chain to; none: the system's.
    pub root_cert: Option<PathBuf>,
}

/// Whether a connection uses TLS, and what it checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never (`disable`, `DISABLED`).
    Disable,
    /// TLS when the server offers it, else plain; the certificate is not checked
    /// (`prefer`, `PREFERRED`: both clients' default).
    Prefer,
    /// TLS or no connection; the certificate is not checked (`require`, `REQUIRED`).
    Require,
    /// TLS; the certificate must chain to a trusted CA, whatever host it names
    /// (`verify-ca`, `VERIFY_CA`; and `require` with a CA given, as libpq does).
    VerifyCa,
    /// TLS; the certificate must chain to a trusted CA and name the host connected to
    /// (`verify-full`, `VERIFY_IDENTITY`).
    VerifyFull,
}

/// A client's names of its TLS parameters and modes.
struct TlsNames {
    mode_keys: &'static [&'static str],
    ca_keys: &'static [&'static str],
    modes: &'static [(&'static str, TlsMode)],
    /// The parameters, for messages.
    known: &'static str,
}

/// libpq's.
const POSTGRES_TLS: TlsNames = TlsNames {
    mode_keys: &["sslmode"],
    ca_keys: &["sslrootcert"],
    modes: &[
        ("disable", TlsMode::Disable),
        ("prefer", TlsMode::Prefer),
        ("require", TlsMode::Require),
        ("verify-ca", TlsMode::VerifyCa),
        ("verify-full", TlsMode::VerifyFull),
    ],
    known: "sslmode (disable, prefer, require, verify-ca, verify-full) and sslrootcert",
};

/// The mysql client's (option-file spellings with `_` too; modes in any case).
const MYSQL_TLS: TlsNames = TlsNames {
    mode_keys: &["ssl-mode", "ssl_mode"],
    ca_keys: &["ssl-ca", "ssl_ca"],
    modes: &[
        ("disabled", TlsMode::Disable),
        ("preferred", TlsMode::Prefer),
        ("required", TlsMode::Require),
        ("verify_ca", TlsMode::VerifyCa),
        ("verify_identity", TlsMode::VerifyFull),
    ],
    known: "ssl-mode (DISABLED, PREFERRED, REQUIRED, VERIFY_IDENTITY) and ssl-ca",
};

impl Tls {
    /// The TLS settings among a URL's query parameters `params`, for a server of `kind`;
    /// any other parameter is refused (a misspelt security setting must not go unnoticed).
    fn from_params(kind: DatabaseKind, params: &[(String, String)]) -> Result<Tls, String> {
        let TlsNames {
            mode_keys,
            ca_keys,
            modes,
            known,
        } = match kind {
            DatabaseKind::Postgres => POSTGRES_TLS,
            DatabaseKind::Mysql => MYSQL_TLS,
        };
        let mut mode = None;
        let mut root_cert = None;
        let mut system = false;
        for (k, v) in params {
            if mode_keys.contains(&k.as_str()) {
                let m = modes
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(v))
                    .map(|(_, m)| *m)
                    .ok_or_else(|| format!("{k}={v} is not a TLS mode: {known}"))?;
                mode = Some(m);
            } else if ca_keys.contains(&k.as_str()) {
                // (libpq 16's "system": the system's CAs, which only verify-full may use.)
                if kind == DatabaseKind::Postgres && v == "system" {
                    system = true;
                } else {
                    root_cert = Some(PathBuf::from(v));
                }
            } else if matches!(
                k.as_str(),
                "sslcert" | "sslkey" | "ssl-cert" | "ssl-key" | "ssl_cert" | "ssl_key"
            ) {
                return Err(format!(
                    "{k}: client certificates are not supported; the parameters sluice knows \
                     are {known}"
                ));
            } else {
                return Err(format!(
                    "unknown URL parameter {k:?}: the parameters sluice knows are {known}"
                ));
            }
        }
        if system {
            // libpq 16: sslrootcert=system defaults to verify-full and refuses less, since
            // any public CA's certificate would pass a check of the chain alone.
            return match mode {
                None | Some(TlsMode::VerifyFull) => Ok(Tls {
                    mode: TlsMode::VerifyFull,
                    root_cert: None,
                }),
                Some(_) => Err(
                    "sslrootcert=system needs sslmode=verify-full (the system's \
                                CAs vouch for any name they signed, not for this server)"
                        .into(),
                ),
            };
        }
        let mode = match (mode, kind) {
            // libpq: require with a CA file checks the chain (verify-ca).
            (Some(TlsMode::Require), DatabaseKind::Postgres) if root_cert.is_some() => {
                TlsMode::VerifyCa
            }
            // mysql: a CA and no mode is VERIFY_CA.
            (None, DatabaseKind::Mysql) if root_cert.is_some() => TlsMode::VerifyCa,
            (m, _) => m.unwrap_or(TlsMode::Prefer),
        };
        if kind == DatabaseKind::Postgres && mode == TlsMode::VerifyCa && root_cert.is_none() {
            // As libpq: a chain checked against the system's CAs would take any public
            // certificate.
            return Err(
                "sslmode=verify-ca needs sslrootcert (the CA that signed the server's \
                        certificate); with the system's CAs use verify-full"
                    .into(),
            );
        }
        if kind == DatabaseKind::Mysql && mode == TlsMode::VerifyCa {
            // mysql_async 0.37.1 cannot let a name mismatch through (its issue 404, fixed
            // after that release): refused rather than checked some other way.
            return Err(
                "ssl-mode VERIFY_CA (also what ssl-ca alone asks for) is not supported \
                        for MySQL and MariaDB yet: use ssl-mode=VERIFY_IDENTITY (the \
                        certificate's CA and its name) or REQUIRED (encrypted, unchecked)"
                    .into(),
            );
        }
        Ok(Tls { mode, root_cert })
    }
}

impl DatabaseUrl {
    /// Parses `url`; `Err` says what is wrong, without the password.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        let parsed = url::Url::parse(url).map_err(|e| {
            format!(
                "not a database URL ({e}): expected postgres://user:password@host:port/database \
                 or mysql://..."
            )
        })?;
        let kind = match parsed.scheme() {
            "postgres" | "postgresql" => DatabaseKind::Postgres,
            "mysql" | "mariadb" => DatabaseKind::Mysql,
            other => {
                return Err(format!(
                    "unsupported database scheme {other:?}: use postgres://, postgresql://, \
                     mysql:// or mariadb://"
                ));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| "the URL names no host".to_string())?
            .to_string();
        let decode =
            |s: &str| percent_decode(s).ok_or("the URL has a bad %-escape in its user or password");
        let user = decode(parsed.username())?;
        if user.is_empty() {
            return Err("the URL names no user (postgres://USER:password@host/db)".into());
        }
        let password = parsed.password().map(decode).transpose()?;
        let database = parsed.path().trim_start_matches('/').to_string();
        if database.is_empty() || database.contains('/') {
            return Err(
                "the URL names no database (postgres://user:password@host/DATABASE)".into(),
            );
        }
        let port = parsed.port().unwrap_or(match kind {
            DatabaseKind::Postgres => 5432,
            DatabaseKind::Mysql => 3306,
        });
        let params: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let tls = Tls::from_params(kind, &params)?;
        Ok(DatabaseUrl {
            kind,
            user,
            password,
            host,
            port,
            database,
            tls,
        })
    }
}

impl DatabaseUrl {
    /// The URL's TLS mode as its server's client names it (`verify-full`,
    /// `VERIFY_IDENTITY`).
    pub fn tls_mode_name(&self) -> String {
        let names = match self.kind {
            DatabaseKind::Postgres => POSTGRES_TLS,
            DatabaseKind::Mysql => MYSQL_TLS,
        };
        let name = (names.modes.iter())
            .find(|(_, m)| *m == self.tls.mode)
            .map_or("?", |(name, _)| name);
        match self.kind {
            DatabaseKind::Postgres => name.to_string(),
            DatabaseKind::Mysql => name.to_ascii_uppercase(),
        }
    }
}

/// `%XX` escapes of a URL's user or password decoded (`None` for a bad one).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl std::fmt::Display for DatabaseUrl {
    /// `postgres://user@host:port/db`: no password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}@{}:{}/{}",
            self.kind.name(),
            self.user,
            self.host,
            self.port,
            self.database
        )
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for DatabaseUrl {
    /// As displayed: no password.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One database (`[databases.NAME]`): a connection definition shared by its sources and
/// sinks, and the limits sluice keeps to on it.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseConfig {
    /// Its name in `sluice.toml`.
    pub name: String,
    /// Where it is (`${env:NAME}` resolved).
    pub url: DatabaseUrl,
    /// Most connections sluice holds to it at once, over the whole run.
    pub max_connections: usize,
    /// Longest a statement may run (`statement_timeout`); none: the server's.
    pub statement_timeout: Option<Duration>,
    /// No model may write to it. (Sessions that read are read-only whatever this says.)
    pub read_only: bool,
    /// What sluice watches to keep from hurting it.
    pub guards: Guards,
}

/// The guards of a database: how sluice keeps from hurting it while it reads and loads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Guards {
    /// Wait while a replica is further behind its primary than this; fail past `lag_wait`.
    pub max_replica_lag: Option<Duration>,
    /// How long to wait for the lag to come under `max_replica_lag`.
    pub lag_wait: Duration,
    /// Pause reads and loads while a probe query takes longer than this.
    pub latency: Option<LatencyGuard>,
    /// Rows read and written per second, at most (all readers and loads of the database).
    pub max_rows_per_second: Option<u64>,
}

/// `pause_when_latency_over` and its probe.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyGuard {
    /// The latency over which reads and loads pause.
    pub over: Duration,
    /// The probe query (default `SELECT 1`).
    pub probe: String,
    /// Time between probes.
    pub interval: Duration,
    /// The longest pause: past it the run fails.
    pub max_pause: Duration,
}

/// What a database source reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Relation {
    /// A table or view (`schema.table`, or `table`).
    Table(String),
    /// The rows of a query.
    Query(String),
}

/// A bound of a source's `partition_column` range, as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BoundValue {
    /// A whole number (of any integer column's range, `BIGINT UNSIGNED` included).
    Int(i128),
    /// A date or date-time, as text.
    Text(String),
}

impl std::fmt::Display for BoundValue {
    /// As written: `10`, `"2024-01-09"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundValue::Int(i) => write!(f, "{i}"),
            BoundValue::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl BoundValue {
    /// A date or date-time bound as microseconds since 1970-01-01 00:00 (UTC when it names an
    /// offset, else as written): `2024-01-09`, `2024-01-09 10:00:00`, `2024-01-09T10:00:00.5`,
    /// `2024-01-09T10:00:00+02:00` ([`super::parse_timestamp`], [`super::parse_datetime`]).
    /// `None` for a whole number or other text.
    pub fn micros(&self) -> Option<i64> {
        let BoundValue::Text(s) = self else {
            return None;
        };
        let at = super::parse_timestamp(s).or_else(|| Some(super::parse_datetime(s)?.and_utc()))?;
        Some(at.timestamp_micros())
    }
}

/// A source read from a database (`[sources.NAME]` with `database = ...`).
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSourceConfig {
    /// The table name models use.
    pub name: String,
    /// The `[databases.*]` entry it reads from.
    pub database: String,
    /// What it reads.
    pub relation: Relation,
    /// The column whose ranges are read in parallel.
    pub partition_column: Option<String>,
    /// How many ranges (default: the database's `max_connections`).
    pub partitions: Option<usize>,
    /// The ranges' bounds, when given (else the column's min and max).
    pub bounds: Option<(BoundValue, BoundValue)>,
    /// The column giving each row's time, for time-batched and incremental models.
    pub event_time: Option<String>,
}

/// How a model's result is written into its database table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableWrite {
    /// The table's rows are replaced by the result's.
    Overwrite,
    /// The result's rows are added.
    Append,
    /// A result row replaces the table's row of the same key, or is added.
    Upsert,
}

impl TableWrite {
    /// The mode's name as written in `sluice.toml`.
    pub fn name(self) -> &'static str {
        match self {
            TableWrite::Overwrite => "overwrite",
            TableWrite::Append => "append",
            TableWrite::Upsert => "upsert",
        }
    }
}

/// A model written into a database table (`[models.NAME.sink]` with `database = ...`).
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSinkConfig {
    /// The `[databases.*]` entry it writes to.
    pub database: String,
    /// The table, `schema.table` or `table`.
    pub table: String,
    /// What the load does to the table's rows.
    pub mode: TableWrite,
    /// The columns that identify a row (upsert only).
    pub key: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_taken_apart_and_shown_without_its_password() {
        let u = DatabaseUrl::parse("postgres://app%40x:p%2Fss@db.local:6543/shop?sslmode=require")
            .unwrap();
        assert_eq!(u.kind, DatabaseKind::Postgres);
        assert_eq!(u.user, "app@x");
        assert_eq!(u.password.as_deref(), Some("p/ss"));
        assert_eq!((u.host.as_str(), u.port), ("db.local", 6543));
        assert_eq!(u.database, "shop");
        assert_eq!(u.tls.mode, TlsMode::Require);
        for shown in [
            u.to_string(),
            format!("{u:?}"),
            serde_json::to_string(&u).unwrap(),
        ] {
            assert!(
                !shown.contains("p/ss") && !shown.contains("p%2Fss"),
                "{shown}"
            );
            assert!(shown.contains("app@x@db.local:6543/shop"), "{shown}");
        }
        let m = DatabaseUrl::parse("mariadb://root@127.0.0.1/db").unwrap();
        assert_eq!(
            (m.kind, m.port, m.password),
            (DatabaseKind::Mysql, 3306, None)
        );
    }

    #[test]
    fn tls_settings_are_read_with_each_clients_names() {
        let tls = |url: &str| DatabaseUrl::parse(url).unwrap().tls;
        let pg = "postgres://u@h/db";
        assert_eq!(tls(pg).mode, TlsMode::Prefer);
        for (q, mode) in [
            ("disable", TlsMode::Disable),
            ("require", TlsMode::Require),
            ("verify-ca&sslrootcert=ca.pem", TlsMode::VerifyCa),
            ("verify-full", TlsMode::VerifyFull),
        ] {
            assert_eq!(tls(&format!("{pg}?sslmode={q}")).mode, mode);
        }
        // libpq: require with a CA file checks the certificate's chain.
        let t = tls(&format!("{pg}?sslmode=require&sslrootcert=ca.pem"));
        assert_eq!(
            (t.mode, t.root_cert),
            (TlsMode::VerifyCa, Some(PathBuf::from("ca.pem")))
        );
        let t = tls(&format!("{pg}?sslrootcert=system"));
        assert_eq!((t.mode, t.root_cert), (TlsMode::VerifyFull, None));
        let my = "mysql://u@h/db";
        assert_eq!(tls(my).mode, TlsMode::Prefer);
        for (q, mode) in [
            ("ssl-mode=DISABLED", TlsMode::Disable),
            ("ssl-mode=required", TlsMode::Require),
            (
                "ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ca.pem",
                TlsMode::VerifyFull,
            ),
        ] {
            assert_eq!(tls(&format!("{my}?{q}")).mode, mode, "{q}");
        }
        // As the mysql client: REQUIRED with a CA stays REQUIRED; a CA alone would be
        // VERIFY_CA, which is refused (see Tls::from_params).
        for q in ["ssl-ca=ca.pem", "ssl_mode=VERIFY_CA"] {
            let e = DatabaseUrl::parse(&format!("{my}?{q}")).unwrap_err();
            assert!(e.contains("VERIFY_IDENTITY"), "{e}");
        }
        assert_eq!(
            tls(&format!("{my}?ssl-mode=REQUIRED&ssl-ca=ca.pem")).mode,
            TlsMode::Require
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_its_password() {
        for (url, why) in [
            ("sqlite://x@h/db", "unsupported database scheme"),
            ("postgres://user:secretpw@/db", "empty host"),
            ("postgres://:secretpw@h/db", "no user"),
            ("postgres://u:secretpw@h/", "no database"),
            ("postgres://u:secret%zz@h/db", "bad %-escape"),
            ("not a url secretpw", "not a database URL"),
            (
                "postgres://u:secretpw@h/db?sslmode=on",
                "sslmode=on is not a TLS mode",
            ),
            (
                "postgres://u:secretpw@h/db?ssl_mode=require",
                "unknown URL parameter",
            ),
            (
                "postgres://u:secretpw@h/db?sslcert=c.pem",
                "client certificates",
            ),
            (
                "mysql://u:secretpw@h/db?ssl-mode=verify-full",
                "is not a TLS mode",
            ),
            (
                "mysql://u:secretpw@h/db?sslmode=REQUIRED",
                "unknown URL parameter",
            ),
        ] {
            let e = DatabaseUrl::parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
        }
    }
}
