//! A storage emulator process for one test (Azurite, fake-gcs-server): started on a free
//! 127.0.0.1 port, waited for until it answers, and stopped on drop, like the S3 server of
//! [`super::s3`].
//!
//! The emulator runs under a small Python parent (the test venv's interpreter) that kills it
//! when its stdin, a pipe only the test process holds, reaches EOF: so the emulator also goes
//! away when the test process is killed outright, whatever language the emulator is in.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::s3::{free_port, http_request, moto_server, python_of, read_log};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 8;

/// A running emulator, stopped (and its log removed) on drop.
pub struct Emulator {
    name: &'static str,
    child: Child,
    port: u16,
    log: PathBuf,
}

/// How to start one emulator and tell that it is up.
pub struct Spec<'a> {
    /// For messages and the log file's name.
    pub name: &'static str,
    /// The executable and its arguments for a port.
    pub command: &'a dyn Fn(u16) -> (PathBuf, Vec<String>),
    /// Text its log shows once it listens.
    pub ready: &'a str,
    /// Text its log shows when the port was taken.
    pub clash: &'a str,
    /// Whether it answers HTTP on its port once ready (else the log's `ready` is enough).
    pub http: bool,
}

impl Emulator {
    /// Starts the emulator on a free port (another one after a port clash).
    pub fn start(spec: &Spec<'_>) -> Emulator {
        let mut clashes = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match try_start(spec, port) {
                Ok(e) => return e,
                Err(Ok(log)) => clashes.push(format!("port {port}: {log}")),
                Err(Err(msg)) => panic!("starting {}: {msg}", spec.name),
            }
        }
        panic!(
            "starting {}: {START_ATTEMPTS} attempts all hit a port clash:\n{}",
            spec.name,
            clashes.join("\n")
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the emulator has printed so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Runs a Python script with the test venv's interpreter, `PORT` set to the emulator's
    /// port; panics with its output unless it succeeds. Returns what it printed.
    pub fn python(&self, script: &str) -> String {
        let out = Command::new(venv_python())
            .arg("-c")
            .arg(script)
            .env("PORT", self.port.to_string())
            .output()
            .unwrap_or_else(|e| panic!("{}: running python: {e}", self.name));
        assert!(
            out.status.success(),
            "{}: python failed: {}\n{}\nemulator log:\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // EOF on the parent's stdin: it kills the emulator and exits.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = fs::remove_file(&self.log);
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// The test venv's Python (beside moto_server).
pub fn venv_python() -> PathBuf {
    python_of(&moto_server()).unwrap_or_else(|| PathBuf::from("python3"))
}

/// `python -c PARENT EXE ARGS...`: runs EXE in its own process group, kills that group when
/// stdin reaches EOF, and exits with EXE's status.
const PARENT: &str = r#"
import os, signal, subprocess, sys, threading
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True)
def stop():
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except BaseException:
        pass
def watch():
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except BaseException:
        pass
    stop()
    child.wait()
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
code = child.wait()
stop()
sys.exit(code)
"#;

/// `Err(Ok(log))`: a port clash; `Err(Err(message))`: anything else.
fn try_start(spec: &Spec<'_>, port: u16) -> Result<Emulator, Result<String, String>> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let log = std::env::temp_dir().join(format!(
        "sluice-{}-{}-{}-{port}.log",
        spec.name,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&log)
        .map_err(|e| Err(format!("creating {}: {e}", log.display())))?;
    let err = out.try_clone().map_err(|e| Err(e.to_string()))?;
    let (exe, args) = (spec.command)(port);
    let child = Command::new(venv_python())
        .arg("-c")
        .arg(PARENT)
        .arg(&exe)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Err(format!("spawning {}: {e}", exe.display())))?;
    let mut server = Emulator {
        name: spec.name,
        child,
        port,
        log,
    };
    let started = Instant::now();
    loop {
        let text = read_log(&server.log);
        if text.contains(spec.clash) {
            return Err(Ok(text));
        }
        match server.child.try_wait() {
            Ok(Some(status)) => {
                return Err(Err(format!(
                    "{} exited during startup ({status}); its output:\n{text}",
                    exe.display()
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(Err(e.to_string())),
        }
        if text.contains(spec.ready)
            && (!spec.http || http_request(port, "GET", "/", Duration::from_secs(5)).is_ok())
        {
            return Ok(server);
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(Err(format!(
                "{} did not answer on 127.0.0.1:{port} within {START_TIMEOUT:?}; its output:\n{text}",
                exe.display()
            )));
        }
        thread::sleep(Duration::from_millis(25));
    }
}

/// Runs `bash scripts/SCRIPT` and returns the path it prints last (an installed executable),
/// unless `$VAR` names one already. Once per test process and variable.
pub fn installed(var: &str, script: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{var}={} is not a file", path.display()))
        };
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(script);
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running bash {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
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
            "bash {} failed ({}); set {var} or fix the install.\nstdout:\n{stdout}\nstderr:\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}
