//! A real S3-compatible server for integration tests: moto's `moto_server`,
//! one fresh process per test (that is the isolation model), on 127.0.0.1
//! only, killed and reaped on drop.
//!
//! The `moto_server` executable is taken from `SLUICE_MOTO_SERVER` (set by
//! `scripts/test`), or else installed/located once per test process by
//! running `scripts/ensure-test-venv` (the venv also holds the readers of
//! [`super::readers`]).
//!
//! Only std and object_store are used, so no extra dev-dependency is needed.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, RetryConfig};

/// How long one attempt waits for a started server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times `start` tries again after a port clash.
const START_ATTEMPTS: usize = 8;

/// A real S3-compatible server (moto) on 127.0.0.1, killed on drop.
pub struct S3Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl S3Server {
    /// Starts a fresh server on a free port and waits until it answers.
    pub fn start() -> S3Server {
        S3Server::start_with(&[])
    }

    /// Starts a server that checks credentials and IAM policies (moto's
    /// `INITIAL_NO_AUTH_ACTION_COUNT`): the first requests go unchecked, so a
    /// test sets up buckets and users with [`S3Server::python`], then burns
    /// the rest (the script's `lock()`), after which every request is
    /// authenticated and authorised.
    pub fn start_with_iam() -> S3Server {
        S3Server::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "200")])
    }

    fn start_with(env: &[(&str, &str)]) -> S3Server {
        let exe = moto_server();
        let mut clashes = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match try_start(&exe, port, env) {
                Ok(server) => return server,
                Err(StartError::PortClash(log)) => clashes.push(format!("port {port}: {log}")),
                Err(StartError::Fatal(msg)) => panic!("S3Server::start: {msg}"),
            }
        }
        panic!(
            "S3Server::start: {START_ATTEMPTS} attempts all hit a port clash:\n{}",
            clashes.join("\n")
        );
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (HTTP PUT), panics with a clear message on failure.
    pub fn create_bucket(&self, name: &str) {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'),
            "S3Server::create_bucket: invalid bucket name {name:?}"
        );
        match http_request(
            self.port,
            "PUT",
            &format!("/{name}"),
            Duration::from_secs(30),
        ) {
            Ok((200, _)) => {}
            Ok((status, response)) => panic!(
                "S3Server::create_bucket({name:?}) on {}: HTTP {status}\n{response}",
                self.endpoint()
            ),
            Err(e) => panic!(
                "S3Server::create_bucket({name:?}) on {}: {e}\nserver log:\n{}",
                self.endpoint(),
                read_log(&self.log)
            ),
        }
    }

    /// An object_store client for a bucket on this server.
    ///
    /// Retries are bounded to ~30 s so that a dead server fails a test
    /// quickly rather than after object_store's default 3 minutes.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            })
            .build()
            .unwrap_or_else(|e| panic!("S3Server::store({bucket:?}): {e}"));
        Arc::new(store)
    }

    /// Runs a Python script against this server with the moto install's own
    /// Python (which has boto3): `s3` and `iam` are boto3 clients for it, and
    /// `lock()` uses up the server's unauthenticated requests (see
    /// [`S3Server::start_with_iam`]). Returns what the script printed.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        let exe = moto_server();
        let python = python_of(&exe).unwrap_or_else(|| PathBuf::from("python3"));
        let prelude = format!(
            "import boto3, json, sys\n\
             kw = dict(endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1')\n\
             s3 = boto3.client('s3', **kw)\niam = boto3.client('iam', **kw)\n\
             def lock():\n\
             \x20   for _ in range(2000):\n\
             \x20       try:\n\
             \x20           s3.list_buckets()\n\
             \x20       except Exception:\n\
             \x20           return\n\
             \x20   raise SystemExit('the server never started checking credentials')\n",
            self.endpoint()
        );
        let out = Command::new(&python)
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("S3Server::python: running {}: {e}", python.display()));
        assert!(
            out.status.success(),
            "S3Server::python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates bucket `lake`, uploads `testdata/shop/data/` to `lake/raw/`,
    /// and returns the shop pipeline reading and writing there
    /// ([`super::shop_pipeline_on_s3`]).
    pub async fn shop_pipeline(&self) -> tempfile::TempDir {
        use object_store::{ObjectStoreExt, PutPayload};
        self.create_bucket("lake");
        let store = self.store("lake");
        let data = super::testdata("shop").join("data");
        for f in super::files_under(&data) {
            store
                .put(
                    &object_store::path::Path::from(format!("raw/{f}")),
                    PutPayload::from(fs::read(data.join(&f)).unwrap()),
                )
                .await
                .unwrap();
        }
        super::shop_pipeline_on_s3()
    }

    /// Environment variables a sluice process needs to reach this server:
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL
    /// and AWS_ALLOW_HTTP=true.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Everything the server has printed so far (its request log).
    pub fn log(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint())
            .field("pid", &self.child.id())
            .finish()
    }
}

enum StartError {
    /// The port was taken by someone else: try another.
    PortClash(String),
    Fatal(String),
}

fn try_start(exe: &Path, port: u16, env: &[(&str, &str)]) -> Result<S3Server, StartError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let log = std::env::temp_dir().join(format!(
        "sluice-moto-{}-{}-{port}.log",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&log)
        .map_err(|e| StartError::Fatal(format!("creating {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| StartError::Fatal(format!("cloning log file handle: {e}")))?;

    let port_s = port.to_string();
    let args = ["-H", "127.0.0.1", "-p", port_s.as_str()];
    let mut cmd = match python_of(exe) {
        // Run the script under a small wrapper that exits when its stdin
        // (a pipe whose write end only this process holds) reaches EOF, so
        // the server also goes away if the test process is killed outright.
        Some(python) => {
            let mut c = Command::new(python);
            c.arg("-c").arg(WATCHDOG).arg(exe).args(args);
            c
        }
        None => {
            let mut c = Command::new(exe);
            c.args(args);
            c
        }
    };
    cmd.envs(env.iter().copied())
        .env("SLUICE_MOTO_LOG", &log)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err);
    let child = cmd
        .spawn()
        .map_err(|e| StartError::Fatal(format!("spawning {}: {e}", exe.display())))?;
    // From here on, `server`'s Drop kills the child on every early return.
    let mut server = S3Server { child, port, log };

    let started = Instant::now();
    let mut answered_since: Option<Instant> = None;
    loop {
        match server.child.try_wait() {
            Ok(Some(status)) => {
                let text = read_log(&server.log);
                return Err(if text.contains("in use") {
                    StartError::PortClash(text)
                } else {
                    StartError::Fatal(format!(
                        "{} exited during startup ({status}); its output:\n{text}",
                        exe.display()
                    ))
                });
            }
            Ok(None) => {}
            Err(e) => return Err(StartError::Fatal(format!("waiting for moto_server: {e}"))),
        }
        let answered = http_request(port, "GET", "/", Duration::from_secs(5)).is_ok();
        if answered {
            // The port answers: make sure it is *our* process that answers,
            // not someone else who holds the same port (our server would then
            // fail to bind and exit). Werkzeug prints "Running on" only after
            // it has bound the socket; if a server never prints it, accept it
            // once it has kept answering while staying alive for a while.
            let since = *answered_since.get_or_insert_with(Instant::now);
            let bound = read_log(&server.log).contains("Running on");
            if bound || since.elapsed() > Duration::from_secs(5) {
                if let Ok(None) = server.child.try_wait() {
                    return Ok(server);
                }
                continue; // it exited: the next iteration reports why
            }
        } else {
            answered_since = None;
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(StartError::Fatal(format!(
                "{} did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}; its output:\n{}",
                exe.display(),
                read_log(&server.log)
            )));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Python run as `python -c WATCHDOG SCRIPT ARGS...`: runs SCRIPT as
/// `__main__` with ARGS, and when stdin reaches EOF (the test process is
/// gone) removes the log file named by `SLUICE_MOTO_LOG` and exits.
const WATCHDOG: &str = r#"
import os, sys, threading, runpy
def _watch():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except BaseException:
        pass
    try:
        os.unlink(os.environ["SLUICE_MOTO_LOG"])
    except BaseException:
        pass
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
# moto checks If-Match / If-None-Match, then stores, in one request thread among many: a
# thread switch in between lets two conditional PUTs on one version both succeed (measured:
# 6 double winners in 300 rounds of 8 racers with a short switch interval). S3 does that
# check and store atomically, which sluice's commit relies on: serialize moto's PUTs.
try:
    import moto.s3.responses as _responses
    _put_lock = threading.Lock()
    _put = _responses.S3Response.put_object
    def _atomic_put(self, *args, **kwargs):
        with _put_lock:
            return _put(self, *args, **kwargs)
    _responses.S3Response.put_object = _atomic_put
except Exception as e:
    print("sluice test harness: cannot make moto's conditional PUT atomic:", e, file=sys.stderr)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"#;

/// The Python interpreter named by `script`'s `#!` line, if it names one.
pub(super) fn python_of(script: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 512];
    let n = File::open(script).ok()?.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    let line = text.lines().next()?.strip_prefix("#!")?;
    let mut words = line.split_whitespace();
    let mut interp = words.next()?;
    if Path::new(interp).file_name()? == "env" {
        interp = words.next()?;
    }
    let is_python = Path::new(interp)
        .file_name()?
        .to_str()?
        .starts_with("python");
    is_python.then(|| PathBuf::from(interp))
}

/// A port on 127.0.0.1 that was free a moment ago and that this process
/// has not handed out before.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("binding 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"))
            .port();
        drop(listener);
        if handed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// One HTTP/1.1 request with an empty body to 127.0.0.1:port; returns the
/// status code and the whole response text.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         User-Agent: sluice-tests\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP response: {text:?}"),
            )
        })?;
    Ok((status, text))
}

pub(super) fn read_log(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// The `moto_server` executable: `$SLUICE_MOTO_SERVER`, or else what
/// `scripts/ensure-test-venv` prints (run at most once per test process).
pub fn moto_server() -> PathBuf {
    static MOTO: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MOTO.get_or_init(locate_moto_server)
        .clone()
        .unwrap_or_else(|msg| panic!("{msg}"))
}

fn locate_moto_server() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SLUICE_MOTO_SERVER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "SLUICE_MOTO_SERVER={} is not a file (unset it to have scripts/ensure-test-venv install moto)",
                path.display()
            ))
        };
    }
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let script = manifest_dir.join("scripts").join("ensure-test-venv");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running bash {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim);
    match path {
        Some(path) if output.status.success() && Path::new(path).is_file() => {
            Ok(PathBuf::from(path))
        }
        _ => Err(format!(
            "bash {} failed ({}); set SLUICE_MOTO_SERVER to a moto_server executable or fix the install.\n\
             stdout:\n{stdout}\nstderr:\n{stderr}",
            script.display(),
            output.status
        )),
    }
}
