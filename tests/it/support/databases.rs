//! Throwaway PostgreSQL and MariaDB servers for the database tests: one of each per test
//! process, started on first use on a free 127.0.0.1 port with a data folder of its own
//! (never a pre-started service), each test in a database of its own.
//!
//! The servers are the machine's Debian packages (`scripts/ensure-test-databases`, which the
//! test command runs, installs them when missing). Run as root, they run as an unprivileged
//! user (`sluice-test`, created when missing): PostgreSQL refuses to run as root. Like the
//! storage emulators ([`super::emulator`]), each runs under a parent that kills it when the
//! test process exits, however it exits; a data folder a killed process left is removed by
//! the next one.
//!
//! Both servers have a user `sluice` with password [`PASSWORD`], over TCP only with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::emulator::{Emulator, Spec};

/// The password of user `sluice` on both servers.
pub const PASSWORD: &str = "s3cret-sluice-pw";

/// The unprivileged user the servers run as when the tests run as root.
const USER: &str = "sluice-test";

/// A running PostgreSQL server.
pub struct Postgres {
    server: Emulator,
    bin: PathBuf,
    dir: PathBuf,
}

/// A running MariaDB server.
pub struct MariaDb {
    server: Emulator,
    dir: PathBuf,
    client: PathBuf,
}

/// One of this process's servers, for tests that run on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    MariaDb,
}

impl Server {
    /// A new empty database; returns its name.
    pub fn create_database(self, prefix: &str) -> String {
        match self {
            Server::Postgres => postgres().create_database(prefix),
            Server::MariaDb => mariadb().create_database(prefix),
        }
    }

    /// The URL of `db` for sluice (with the password).
    pub fn url(self, db: &str) -> String {
        match self {
            Server::Postgres => postgres().url(db),
            Server::MariaDb => mariadb().url(db),
        }
    }

    /// Runs `sql` in `db`; returns the rows printed, `|` between values (psql's way).
    pub fn sql(self, db: &str, sql: &str) -> String {
        match self {
            Server::Postgres => postgres().sql(db, sql),
            // (The client escapes a tab within a value: each tab left is a separator.)
            Server::MariaDb => mariadb().sql(db, sql).replace('\t', "|"),
        }
    }
}

/// A pipeline folder whose source `src` reads from the database at `url` (the source's
/// other keys `source_keys`: `table = ...` or `query = ...`, ranges), with
/// `max_connections = 2`, and whose model `copy` is `sql`; the URL is passed in the
/// environment (`DB_URL`), which is returned for the run.
pub fn db_pipeline(
    url: &str,
    source_keys: &str,
    sql: &str,
) -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        format!(
            "name = \"db\"\n[databases.app]\nurl = \"${{env:DB_URL}}\"\nmax_connections = 2\n\
             [sources.src]\ndatabase = \"app\"\n{source_keys}\n"
        ),
    )
    .unwrap();
    std::fs::write(d.join("queries/copy.sql"), sql).unwrap();
    (dir, vec![("DB_URL".to_string(), url.to_string())])
}

/// This process's PostgreSQL server, started on first use.
pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(Postgres::start)
}

/// This process's MariaDB server, started on first use.
pub fn mariadb() -> &'static MariaDb {
    static MDB: OnceLock<MariaDb> = OnceLock::new();
    MDB.get_or_init(MariaDb::start)
}

/// A name no other test of this process uses, for a database.
pub fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}_{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

impl Postgres {
    fn start() -> Postgres {
        Postgres::start_with(&[])
    }

    /// A server of this test's own with `extra` settings (`name=value`, passed as `-c`);
    /// stopped when dropped.
    pub fn start_with(extra: &[&str]) -> Postgres {
        let bin = postgres_bin();
        let dir = data_folder("pg");
        let data = dir.join("data");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        hand_over(&dir);
        let init = as_server_user(&bin.join("initdb"))
            .args(["-D", data.to_str().unwrap(), "-U", "sluice", "--pwfile"])
            .arg(&pwfile)
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .output()
            .unwrap();
        check(&init, "initdb");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Postgres::serve(
            bin,
            dir,
            "database system is ready to accept connections",
            extra,
        )
    }

    /// Runs the server of the data folder `dir/data` (sockets in `dir`), with `extra`
    /// settings.
    fn serve(bin: PathBuf, dir: PathBuf, ready: &str, extra: Vec<String>) -> Postgres {
        let postgres = bin.join("postgres");
        let data = dir.join("data");
        let socket = dir.clone();
        let command = move |port: u16| {
            let (exe, mut args) = server_user_command(&postgres);
            args.extend(
                [
                    "-D",
                    data.to_str().unwrap(),
                    "-p",
                    &port.to_string(),
                    "-k",
                    socket.to_str().unwrap(),
                    "-h",
                    "127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=200",
                ]
                .map(String::from),
            );
            for setting in &extra {
                args.extend(["-c".to_string(), setting.clone()]);
            }
            (exe, args)
        };
        let server = Emulator::start(&Spec {
            name: "postgres",
            command: &command,
            ready,
            clash: "could not bind IPv4 address",
            http: false,
        });
        Postgres { server, bin, dir }
    }

    /// A server of this test's own (not the shared one), e.g. to be the primary of a
    /// replica; stopped when dropped.
    pub fn start_own() -> Postgres {
        Postgres::start()
    }

    /// A server of this test's own that accepts TLS (and plain connections too), with the
    /// certificate of `certs`.
    pub fn start_tls(certs: &Certs) -> Postgres {
        Postgres::start_with(&[
            "ssl=on",
            &format!("ssl_cert_file={}", certs.server_cert.display()),
            &format!("ssl_key_file={}", certs.server_key.display()),
        ])
    }

    /// A streaming replica of this server (`pg_basebackup -R`), read-only, in hot standby;
    /// stopped when dropped.
    pub fn replica(&self) -> Postgres {
        let dir = data_folder("pg-replica");
        hand_over(&dir);
        let backup = as_server_user(&self.bin.join("pg_basebackup"))
            .args(["-h", self.dir.to_str().unwrap(), "-p"])
            .arg(self.port().to_string())
            .args(["-U", "sluice", "-D"])
            .arg(dir.join("data"))
            .args(["-R", "-X", "stream", "-c", "fast"])
            .output()
            .unwrap();
        check(&backup, "pg_basebackup");
        Postgres::serve(
            self.bin.clone(),
            dir,
            "database system is ready to accept read-only connections",
            Vec::new(),
        )
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// A new empty database; returns its name.
    pub fn create_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// `postgres://sluice:PASSWORD@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://sluice:{PASSWORD}@127.0.0.1:{}/{db}",
            self.port()
        )
    }

    /// Runs `sql` in `db` with psql over the server's socket (as `sluice`); panics unless it
    /// succeeds. Returns what it printed (unaligned, tuples only: one row a line, `|` between
    /// values).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", self.dir.to_str().unwrap(), "-p"])
            .arg(self.port().to_string())
            .args(["-U", "sluice", "-d", db, "-X", "-q", "-A", "-t"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        check(&out, &format!("psql {sql}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// A psql command of the server's version, with no settings of the user's (`-X`).
    pub fn psql(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.arg("-X");
        cmd
    }
}

impl MariaDb {
    fn start() -> MariaDb {
        MariaDb::start_own(&[])
    }

    /// A server of this test's own (not the shared one), with `extra` server options
    /// (e.g. `--local-infile=0`); stopped when dropped.
    pub fn start_own(extra: &[&str]) -> MariaDb {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (mariadbd, install, client) = mariadb_bins();
        let dir = data_folder("mariadb");
        let data = dir.join("data");
        hand_over(&dir);
        let mut init = Command::new(&install);
        init.args(["--no-defaults", "--auth-root-authentication-method=normal"])
            .arg(format!("--datadir={}", data.display()))
            .arg("--skip-test-db");
        if is_root() {
            init.arg(format!("--user={USER}"));
        }
        check(&init.output().unwrap(), "mariadb-install-db");
        let socket = dir.join("sock");
        let sock = socket.clone();
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        hand_over(&tmp);
        let command = move |port: u16| {
            let mut args = vec![
                "--no-defaults".to_string(),
                format!("--datadir={}", data.display()),
                format!("--port={port}"),
                "--bind-address=127.0.0.1".to_string(),
                format!("--socket={}", sock.display()),
                // (Its own temporary files in its own folder: a shared /tmp cleaned by
                // others lost one under a running query.)
                format!("--tmpdir={}", tmp.display()),
                "--skip-log-bin".to_string(),
                "--innodb-flush-log-at-trx-commit=0".to_string(),
                "--max-connections=200".to_string(),
            ];
            args.extend(extra.iter().cloned());
            if is_root() {
                args.push(format!("--user={USER}"));
            }
            (mariadbd.clone(), args)
        };
        let server = Emulator::start(&Spec {
            name: "mariadb",
            command: &command,
            ready: "ready for connections",
            clash: "Address already in use",
            http: false,
        });
        let db = MariaDb {
            server,
            dir,
            client,
        };
        // Root over the socket, once: the user the tests connect as.
        let out = Command::new(&db.client)
            .arg("--no-defaults")
            .arg(format!("--socket={}", socket.display()))
            .args(["-u", "root", "-e"])
            .arg(format!(
                "CREATE USER 'sluice'@'%' IDENTIFIED BY '{PASSWORD}'; \
                 GRANT ALL ON *.* TO 'sluice'@'%' WITH GRANT OPTION;"
            ))
            .output()
            .unwrap();
        check(&out, "creating user sluice");
        db
    }

    /// A server of this test's own that accepts TLS (and plain connections too), with the
    /// certificate of `certs`.
    pub fn start_tls(certs: &Certs) -> MariaDb {
        MariaDb::start_own(&[
            &format!("--ssl-cert={}", certs.server_cert.display()),
            &format!("--ssl-key={}", certs.server_key.display()),
            &format!("--ssl-ca={}", certs.ca.display()),
        ])
    }

    /// A replica of this server, which must log its changes
    /// (`start_own(&["--log-bin=primary-bin", "--server-id=1"])`), replicating from the
    /// primary's current position on (what was there before is not copied); stopped when
    /// dropped.
    pub fn replica(&self) -> MariaDb {
        let replica = MariaDb::start_own(&["--server-id=2"]);
        let status = self.sql("", "SHOW MASTER STATUS");
        let mut fields = status.split('\t');
        let (file, position) = (fields.next().unwrap(), fields.next().unwrap());
        replica.sql(
            "",
            &format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = \
                 'sluice', MASTER_PASSWORD = '{PASSWORD}', MASTER_LOG_FILE = '{file}', \
                 MASTER_LOG_POS = {position}, MASTER_USE_GTID = no; START SLAVE;",
                self.port()
            ),
        );
        replica
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// A new empty database (utf8mb4 by default); returns its name.
    pub fn create_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        self.sql("", &format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"));
        name
    }

    /// `mysql://sluice:PASSWORD@127.0.0.1:PORT/db`
    pub fn url(&self, db: &str) -> String {
        format!("mysql://sluice:{PASSWORD}@127.0.0.1:{}/{db}", self.port())
    }

    /// Runs `sql` in `db` (none: `""`) with the mariadb client over TCP as `sluice`, in
    /// utf8mb4; panics unless it succeeds. Returns what it printed (batch mode: one row a
    /// line, tabs between values, no header).
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(&self.client);
        cmd.arg("--no-defaults")
            .args(["-h", "127.0.0.1", "-P"])
            .arg(self.port().to_string())
            .args(["-u", "sluice"])
            .arg(format!("-p{PASSWORD}"))
            .args(["-B", "-N", "--default-character-set=utf8mb4"]);
        if !db.is_empty() {
            cmd.args(["-D", db]);
        }
        let out = cmd.args(["-e", sql]).output().unwrap();
        check(&out, &format!("mariadb {sql}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        self.server.log()
    }

    /// The folder the server's files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A mariadb client command to this server over TCP (no user, password or database).
    pub fn client(&self) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.arg("--no-defaults")
            .args(["-h", "127.0.0.1", "-P"])
            .arg(self.port().to_string());
        cmd
    }
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// PostgreSQL's server binaries: `SLUICE_PG_BIN`, else the newest under /usr/lib/postgresql.
fn postgres_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server (no /usr/lib/postgresql/*/bin/initdb, SLUICE_PG_BIN unset): \
             run the tests with `bash scripts/test`, which installs it"
        )
    })
}

/// mariadbd, mariadb-install-db and the mariadb client.
fn mariadb_bins() -> (PathBuf, PathBuf, PathBuf) {
    let find = |names: &[&str], dirs: &[&str]| -> Option<PathBuf> {
        for d in dirs {
            for n in names {
                let p = Path::new(d).join(n);
                if p.exists() {
                    return Some(p);
                }
            }
        }
        None
    };
    let server = std::env::var_os("SLUICE_MARIADBD")
        .map(PathBuf::from)
        .or_else(|| find(&["mariadbd", "mysqld"], &["/usr/sbin", "/usr/bin"]));
    let install = find(
        &["mariadb-install-db", "mysql_install_db"],
        &["/usr/bin", "/usr/sbin"],
    );
    let client = find(&["mariadb", "mysql"], &["/usr/bin"]);
    match (server, install, client) {
        (Some(s), Some(i), Some(c)) => (s, i, c),
        _ => panic!(
            "no MariaDB server (mariadbd, mariadb-install-db, mariadb): run the tests with \
             `bash scripts/test`, which installs it"
        ),
    }
}

/// A new folder for a server's files, under the temporary folder; those of test processes
/// that are gone are removed first.
fn data_folder(kind: &str) -> PathBuf {
    let root = std::env::temp_dir();
    let prefix = format!("sluice-{kind}-");
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            // (Its data folder, or its log.)
            let _ = std::fs::remove_dir_all(e.path());
            let _ = std::fs::remove_file(e.path());
        }
    }
    let dir = root.join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        unique_name("d")
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Gives `dir` to the server user (when running as root), creating the user if needed.
fn hand_over(dir: &Path) {
    if !is_root() {
        return;
    }
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(USER)
            .output()
            .unwrap();
        // (Another test process may have created it meanwhile.)
        let again = Command::new("id").arg(USER).output().unwrap();
        assert!(
            again.status.success(),
            "creating user {USER}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("chown")
        .args(["-R", &format!("{USER}:")])
        .arg(dir)
        .output()
        .unwrap();
    check(&out, "chown");
}

/// Certificates for servers that speak TLS, made with `openssl`: a CA, and a server
/// certificate it signed for the address 127.0.0.1 only (so a client that connects to
/// `localhost` and checks the name refuses it); and a second CA that signed nothing here.
pub struct Certs {
    _dir: tempfile::TempDir,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A CA that did not (PEM).
    pub other_ca: PathBuf,
    /// The server's certificate and key (PEM), readable by the server user only.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Certs {
    pub fn make() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("sluice-certs-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(d)
                .args(args)
                .output()
                .unwrap();
            check(&out, &format!("openssl {}", args.join(" ")));
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=sluice test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        hand_over(d);
        Certs {
            ca: d.join("ca.pem"),
            other_ca: d.join("other-ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            _dir: dir,
        }
    }
}

/// `exe` run as the server user when running as root (`setpriv`, which execs it: the
/// parent's kill reaches it), else as is.
fn server_user_command(exe: &Path) -> (PathBuf, Vec<String>) {
    if !is_root() {
        return (exe.to_path_buf(), Vec::new());
    }
    (
        PathBuf::from("setpriv"),
        vec![
            format!("--reuid={USER}"),
            format!("--regid={USER}"),
            "--init-groups".to_string(),
            "--".to_string(),
            exe.display().to_string(),
        ],
    )
}

/// A command running `exe` as the server user.
fn as_server_user(exe: &Path) -> Command {
    let (program, args) = server_user_command(exe);
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}
