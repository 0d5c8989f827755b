//! TLS to databases (issue 14): each mode a URL may ask for, against PostgreSQL and MariaDB
//! servers of the tests' own whose certificate a test CA signed for 127.0.0.1 only. Whether
//! sluice's session is encrypted is what the server itself says of it.

use crate::support::databases::{
    Certs, MariaDb, PASSWORD, Postgres, db_pipeline, mariadb, postgres,
};
use crate::support::{output_rows, sluice_env};

/// Runs a pipeline whose model `copy` is the database's `query` (a source `src` on the
/// database at `url`); returns the run's stderr when it exits `code`, and the value of the
/// query's one column when it succeeded.
async fn read(url: &str, query: &str, code: i32) -> (String, Option<String>) {
    let (dir, env) = db_pipeline(url, &format!("query = \"{query}\""), "SELECT * FROM src");
    let d = dir.path();
    let run = sluice_env(d, &["run", "."], &env).expect(code);
    assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
    if code != 0 {
        return (run.stderr, None);
    }
    let rows = output_rows(d, "copy", &["tls"]).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    (run.stderr, Some(rows[0][0].clone()))
}

/// The checks of both servers: `url_at(host)` is the URL of a database on the server with
/// TLS at `host` (no parameters), `plain` one on a server without TLS; `probe` reads
/// whether the session is encrypted, as `encrypted` or `plain`.
/// `names` are the server's names of the modes, `verify_ca` `None` where it is refused.
async fn check_modes(
    certs: &Certs,
    url_at: impl Fn(&str) -> String,
    plain: &str,
    probe: &str,
    names: [&str; 4],
    verify_ca: Option<&str>,
    (encrypted, unencrypted): (&str, &str),
) {
    let [disable, prefer, require, verify_full] = names;
    let (mode, ca) = if disable == "disable" {
        ("sslmode", "sslrootcert")
    } else {
        ("ssl-mode", "ssl-ca")
    };
    let ip = url_at("127.0.0.1");
    let name = url_at("localhost");
    let ca_file = certs.ca.display().to_string();
    let other_ca = certs.other_ca.display().to_string();
    // Encrypted by default (prefer), and in every mode the certificate passes.
    let mut encrypting = vec![
        ip.clone(),
        format!("{ip}?{mode}={prefer}"),
        format!("{name}?{mode}={require}"),
        format!("{ip}?{mode}={verify_full}&{ca}={ca_file}"),
    ];
    if let Some(verify_ca) = verify_ca {
        encrypting.push(format!("{name}?{mode}={verify_ca}&{ca}={ca_file}"));
    }
    for url in encrypting {
        let (_, got) = read(&url, probe, 0).await;
        assert_eq!(got.as_deref(), Some(encrypted), "{url}");
    }
    let (_, got) = read(&format!("{ip}?{mode}={disable}"), probe, 0).await;
    assert_eq!(got.as_deref(), Some(unencrypted));
    // Refused: a certificate for another name, from another CA, a CA file missing.
    let mut refused = vec![
        (
            format!("{name}?{mode}={verify_full}&{ca}={ca_file}"),
            "not valid for name",
        ),
        (
            format!("{ip}?{mode}={verify_full}&{ca}={other_ca}"),
            "UnknownIssuer",
        ),
        (
            format!("{ip}?{mode}={verify_full}&{ca}=/nonexistent/ca.pem"),
            "/nonexistent/ca.pem",
        ),
    ];
    if let Some(verify_ca) = verify_ca {
        refused.push((
            format!("{name}?{mode}={verify_ca}&{ca}={other_ca}"),
            "UnknownIssuer",
        ));
    }
    for (url, want) in refused {
        let (stderr, _) = read(&url, probe, 1).await;
        assert!(
            stderr.contains(want) && stderr.contains("database 'app'"),
            "{url}: want {want:?} in:\n{stderr}"
        );
    }
    // A server without TLS: plain when preferred, refused when required.
    let (_, got) = read(plain, probe, 0).await;
    assert_eq!(got.as_deref(), Some(unencrypted));
    let (stderr, _) = read(&format!("{plain}?{mode}={require}"), probe, 1).await;
    let lower = stderr.to_lowercase();
    assert!(
        stderr.contains("database 'app'") && (lower.contains("tls") || lower.contains("ssl")),
        "{stderr}"
    );
}

#[tokio::test]
async fn postgres_sessions_use_tls_as_the_url_says_and_refuse_an_untrusted_server() {
    let certs = Certs::make();
    let pg = Postgres::start_tls(&certs);
    let db = pg.create_database("tls");
    let port = pg.port();
    let plain_db = postgres().create_database("notls");
    check_modes(
        &certs,
        |host| format!("postgres://sluice:{PASSWORD}@{host}:{port}/{db}"),
        &postgres().url(&plain_db),
        "SELECT ssl::text AS tls FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ["disable", "prefer", "require", "verify-full"],
        Some("verify-ca"),
        ("true", "false"),
    )
    .await;
}

#[tokio::test]
async fn mariadb_sessions_use_tls_as_the_url_says_and_refuse_an_untrusted_server() {
    let certs = Certs::make();
    let my = MariaDb::start_tls(&certs);
    let db = my.create_database("tls");
    let port = my.port();
    let plain_db = mariadb().create_database("notls");
    check_modes(
        &certs,
        |host| format!("mysql://sluice:{PASSWORD}@{host}:{port}/{db}"),
        &mariadb().url(&plain_db),
        "SELECT IF(VARIABLE_VALUE = '', 'plain', 'tls') AS tls FROM \
         information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'",
        ["DISABLED", "PREFERRED", "REQUIRED", "VERIFY_IDENTITY"],
        // (Refused before connecting: see docs/databases.md#tls.)
        None,
        ("tls", "plain"),
    )
    .await;
}

/// `prefer` (the default) reads in plain from a server whose TLS handshake rustls refuses
/// (it offers only a TLS 1.2 cipher suite without forward secrecy), as libpq and the mysql
/// client fall back; `require` fails, naming TLS.
#[tokio::test]
async fn prefer_falls_back_to_plain_when_the_tls_handshake_fails() {
    let certs = Certs::make();
    let cert = certs.server_cert.display().to_string();
    let key = certs.server_key.display().to_string();
    let pg = Postgres::start_with(&[
        "ssl=on",
        &format!("ssl_cert_file={cert}"),
        &format!("ssl_key_file={key}"),
        "ssl_ciphers=AES128-SHA",
        "ssl_max_protocol_version=TLSv1.2",
    ]);
    let my = MariaDb::start_own(&[
        &format!("--ssl-cert={cert}"),
        &format!("--ssl-key={key}"),
        "--ssl-cipher=AES128-SHA",
        "--tls-version=TLSv1.2",
    ]);
    let cases = [
        (
            pg.url(&pg.create_database("weak")),
            "SELECT ssl::text AS tls FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            "sslmode=require",
            "false",
        ),
        (
            my.url(&my.create_database("weak")),
            "SELECT IF(VARIABLE_VALUE = '', 'plain', 'tls') AS tls FROM \
             information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'",
            "ssl-mode=REQUIRED",
            "plain",
        ),
    ];
    for (url, probe, require, plain) in cases {
        let (stderr, _) = read(&format!("{url}?{require}"), probe, 1).await;
        assert!(
            stderr.contains("database 'app'") && stderr.to_lowercase().contains("tls"),
            "{url}: {stderr}"
        );
        let (_, got) = read(&url, probe, 0).await;
        assert_eq!(got.as_deref(), Some(plain), "{url}");
    }
}
