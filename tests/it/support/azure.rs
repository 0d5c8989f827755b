//! A real Azure Blob emulator for integration tests: Azurite's `azurite-blob` (npm), one fresh
//! process per test on a free 127.0.0.1 port, stopped on drop ([`super::emulator`]).
//!
//! The executable is `$SLUICE_AZURITE` (set by `scripts/test`), or else what
//! `scripts/ensure-test-azurite` installs. Sluice reaches it as it would reach any account at
//! a custom endpoint: account name and key, `AZURE_STORAGE_ENDPOINT` and `AZURE_ALLOW_HTTP`.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use object_store::azure::MicrosoftAzureBuilder;
use object_store::{ObjectStore, RetryConfig};

use super::emulator::{Emulator, Spec, installed};

/// Azurite's well-known development account (public: the same in every Azurite).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on 127.0.0.1, with its data in a temporary folder.
pub struct AzureServer {
    emulator: Emulator,
    _data: tempfile::TempDir,
}

impl AzureServer {
    pub fn start() -> AzureServer {
        let exe = azurite();
        let data = tempfile::tempdir().unwrap();
        let location = data.path().to_path_buf();
        let command = move |port: u16| {
            let args = [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                &location.display().to_string(),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ]
            .map(String::from)
            .to_vec();
            (exe.clone(), args)
        };
        let emulator = Emulator::start(&Spec {
            name: "azurite",
            command: &command,
            ready: "successfully listens",
            clash: "EADDRINUSE",
            http: true,
        });
        AzureServer {
            emulator,
            _data: data,
        }
    }

    /// The account's blob endpoint, path-style: `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("{}/{ACCOUNT}", self.emulator.endpoint())
    }

    pub fn port(&self) -> u16 {
        self.emulator.port()
    }

    /// Creates a container (a signed `PUT ?restype=container`).
    pub fn create_container(&self, name: &str) {
        let script = format!(
            r#"{SIGN}
status, body = request("PUT", "/{name}", "restype=container")
if status != 201:
    raise SystemExit(f"create container: HTTP {{status}} {{body!r}}")
"#
        );
        self.emulator.python(&script);
    }

    /// An object_store client for a container on this server (retries bounded to ~30 s).
    pub fn store(&self, container: &str) -> Arc<dyn ObjectStore> {
        let store = MicrosoftAzureBuilder::new()
            .with_account(ACCOUNT)
            .with_access_key(KEY)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_container_name(container)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            })
            .build()
            .unwrap_or_else(|e| panic!("AzureServer::store({container:?}): {e}"));
        Arc::new(store)
    }

    /// Environment variables a sluice process needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT.to_string()),
            ("AZURE_STORAGE_ACCOUNT_KEY", KEY.to_string()),
            ("AZURE_STORAGE_ENDPOINT", self.endpoint()),
            ("AZURE_ALLOW_HTTP", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn log(&self) -> String {
        self.emulator.log()
    }
}

/// Python: `request(method, path, query)` signed with the account's Shared Key.
const SIGN: &str = r#"
import base64, datetime, hashlib, hmac, http.client, os
ACCOUNT = "devstoreaccount1"
KEY = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
def request(method, path, query=""):
    headers = {
        "x-ms-date": datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "x-ms-version": "2021-08-06",
    }
    resource = f"/{ACCOUNT}/{ACCOUNT}{path}"
    for k, v in sorted(p.split("=", 1) for p in query.split("&") if p):
        resource += f"\n{k.lower()}:{v}"
    canonical = "".join(f"{k}:{headers[k]}\n" for k in sorted(headers))
    to_sign = method + "\n" * 12 + canonical + resource
    sig = base64.b64encode(hmac.new(KEY, to_sign.encode(), hashlib.sha256).digest()).decode()
    headers["Authorization"] = f"SharedKey {ACCOUNT}:{sig}"
    c = http.client.HTTPConnection("127.0.0.1", int(os.environ["PORT"]), timeout=30)
    c.request(method, f"/{ACCOUNT}{path}" + ("?" + query if query else ""), headers=headers)
    r = c.getresponse()
    return r.status, r.read()
"#;

/// The `azurite-blob` executable: `$SLUICE_AZURITE`, or what `scripts/ensure-test-azurite`
/// prints (run at most once per test process).
pub fn azurite() -> PathBuf {
    static EXE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    EXE.get_or_init(|| installed("SLUICE_AZURITE", "ensure-test-azurite"))
        .clone()
        .unwrap_or_else(|msg| panic!("{msg}"))
}
