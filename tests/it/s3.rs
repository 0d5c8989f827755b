//! A whole pipeline against a real S3-compatible server: sources read from the bucket,
//! partitioned outputs written to it through `[stores.*]` and `${env:NAME}`.

use crate::support::s3::S3Server;
use crate::support::*;

#[tokio::test]
async fn shop_pipeline_on_s3() {
    let server = S3Server::start();
    // The raw data uploaded; the shop's queries, with every location in the bucket.
    let dir = server.shop_pipeline().await;
    append_toml(
        dir.path(),
        "[stores.lake]\nurl = \"s3://lake\"\nendpoint = \"${env:TEST_S3_ENDPOINT}\"\nregion = \"us-east-1\"\nallow_http = true\n",
    );
    // Credentials only from the standard environment; the endpoint through ${env:...}.
    let mut env: Vec<(String, String)> = server
        .env()
        .into_iter()
        .filter(|(k, _)| k == "AWS_ACCESS_KEY_ID" || k == "AWS_SECRET_ACCESS_KEY")
        .collect();
    env.push(("TEST_S3_ENDPOINT".into(), server.endpoint()));
    let (_, r) = run_with_report_env(dir.path(), &[], &env, 0);
    assert_eq!(r["status"], "success");
    let outputs: Vec<String> = r["models"][1]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap().to_string())
        .collect();
    assert!(
        outputs
            .iter()
            .all(|o| o.starts_with("s3://lake/out/daily_revenue/order_date=")),
        "{outputs:?}"
    );
    assert!(!dir.path().join("out").exists(), "nothing written locally");

    // Read back from the bucket with plain DataFusion and compare with the expected answer.
    let t = Target::for_bucket_prefix(&server, "lake", "out/daily_revenue");
    let b = t
        .query(
            "parquet",
            &["order_date"],
            "SELECT order_date, CAST(orders AS VARCHAR) AS orders, CAST(revenue AS VARCHAR) AS revenue, CAST(items AS VARCHAR) AS items FROM t",
        )
        .await;
    let (header, expected) = expected_csv(&dir.path().join("expected/daily_revenue.csv"));
    let cols: Vec<&str> = header.iter().map(String::as_str).collect();
    assert_eq!(rows(&b, &cols), expected);
    let snap = t.snapshot().await;
    assert!(snap.contains_key("_SUCCESS") && snap.contains_key("_MANIFEST"));
    assert!(
        snap.keys().all(|k| !k.starts_with("_staging")),
        "{:?}",
        snap.keys()
    );

    // Without credentials the error names the store, not a panic.
    let run = sluice_env(
        dir.path(),
        &["run", "."],
        &[("TEST_S3_ENDPOINT".into(), server.endpoint())],
    );
    assert_ne!(run.code, 0);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    // Secrets never reach the output, even with the most verbose logging.
    let secret = "sekrit-7f3a9c";
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_SECRET_ACCESS_KEY" {
                (k, secret.to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    let run = sluice_env(dir.path(), &["-vvv", "run", "."], &env).expect(0);
    assert!(
        !run.stdout.contains(secret) && !run.stderr.contains(secret),
        "a secret was printed"
    );
}

#[tokio::test]
async fn transient_storage_faults_are_retried_and_the_run_succeeds() {
    use crate::support::faults::FaultProxy;
    let server = S3Server::start();
    server.create_bucket("lake");
    let upstream = server.endpoint().trim_start_matches("http://").to_string();
    // The first 3 PUTs (file uploads, the manifest...) are throttled with 503.
    let proxy = FaultProxy::start(&upstream, "PUT", 3);
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = server
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_ENDPOINT_URL" {
                (k, proxy.endpoint())
            } else {
                (k, v)
            }
        })
        .collect();
    let orders = orders_arg();
    sluice_env(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT * FROM o",
            "--table",
            &orders,
            "--out",
            "s3://lake/orders/",
            "--partition-by",
            "dt",
        ],
        &env,
    )
    .expect(0);
    assert_eq!(proxy.injected(), 3, "faults were injected");
    // Everything arrived: read back through the server directly.
    let t = Target::for_bucket_prefix(&server, "lake", "orders");
    let counts = read_json(&testdata("shop").join("expected/counts.json"));
    assert_eq!(t.count("parquet", &["dt"]).await, counts["orders"]);
}

/// On S3, a run over Parquet files that did not change reads none of them: their schemas are
/// in the state store, by version (path, size, modification time, etag), and the incremental
/// model finds nothing to compute. A file rewritten with other columns (of the same size) is
/// another version, read again: the drift names both files.
#[test]
fn a_no_change_run_reads_no_file_and_a_rewritten_file_is_read_again() {
    use object_store::{ObjectStoreExt, PutPayload};
    let server = S3Server::start();
    server.create_bucket("lake");
    let store = server.store("lake");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        r#"name = "events"
[sources.events]
location = "s3://lake/events/"
format = "parquet"
event_time = "ts"

[models.daily]
materialized = "incremental"

[models.daily.batches]
size = "day"
start = "2024-01-01"
late_window = "48h"
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("queries/daily.sql"),
        "SELECT CAST(ts AS DATE) AS day, COUNT(*) AS n, SUM(amount) AS amount FROM events GROUP BY 1",
    )
    .unwrap();
    let put = |name: &str, made_as: &str, columns: &str, day: u32| {
        let sql =
            format!("SELECT {columns}, 5 AS amount, TIMESTAMP '2024-01-0{day} 10:00:00' AS ts");
        let file = crate::drift::made(d, made_as, &sql, "parquet");
        let key = object_store::path::Path::from(format!("events/{name}"));
        rt.block_on(store.put(&key, PutPayload::from(std::fs::read(file).unwrap())))
            .unwrap();
        rt.block_on(store.head(&key)).unwrap()
    };
    put("a.parquet", "a", "1 AS id", 1);
    let old = put("b.parquet", "b", "2 AS id", 2);
    let env = server.env();
    let run = |code: i32| sluice_env(d, &["run", ".", "--as-of", "2024-01-05"], &env).expect(code);
    run(0);

    // Nothing changed: the files are listed, none is read (no GET or HEAD of a file; the
    // source's `_MANIFEST`, which would make it a sluice output, is looked for).
    let before = server.log().lines().count();
    run(0);
    let log = server.log();
    let reads: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|l| l.contains("/lake/events/") && l.contains(".parquet"))
        .collect();
    assert!(reads.is_empty(), "{reads:#?}");
    // And listed twice: once to register the source (beside the first page that finds its
    // partition folders), once for the model, whose units and checks all use that listing.
    let listings: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|l| l.contains("GET /lake?") && l.contains("prefix=events"))
        .collect();
    assert_eq!(listings.len(), 3, "{listings:#?}");

    // b rewritten with other columns.
    let new = put("b.parquet", "b2", "2 AS ix", 2);
    assert_eq!(old.size, new.size);
    assert_ne!(old.e_tag, new.e_tag);
    let failed = run(1);
    let e = &failed.stderr;
    assert!(
        e.contains("a.parquet and ") && e.contains("b.parquet: "),
        "{e}"
    );
    assert!(
        e.contains("id only in the first, ix only in the other"),
        "{e}"
    );
}

/// `[stores.NAME] max_bytes_per_second` paces what a run reads from the store: 150 MB from a
/// local S3 server at 15 MiB/s take their ten seconds (within 20 %), and the report counts
/// the bytes and the time spent throttled.
#[tokio::test(flavor = "multi_thread")]
async fn a_stores_bandwidth_cap_holds_for_a_large_read() {
    use object_store::{ObjectStoreExt, PutPayload};
    let server = S3Server::start();
    server.create_bucket("lake");
    // 150 MB of random hex, 100-character lines.
    let lines = 1_500_000usize;
    let mut csv = Vec::with_capacity(lines * 101 + 16);
    csv.extend_from_slice(b"s\n");
    let mut seed: u64 = 42;
    for _ in 0..lines {
        for _ in 0..25 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            csv.extend_from_slice(format!("{:04x}", (seed >> 48) as u16).as_bytes());
        }
        csv.push(b'\n');
    }
    let size = csv.len() as f64;
    server
        .store("lake")
        .put(
            &object_store::path::Path::from("raw/big.csv"),
            PutPayload::from(csv),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "name = \"capped\"\n\
         [stores.lake]\nurl = \"s3://lake\"\nendpoint = \"${env:TEST_S3_ENDPOINT}\"\n\
         region = \"us-east-1\"\nallow_http = true\nmax_bytes_per_second = \"15MiB\"\n\
         max_concurrent_requests = 4\n\
         [sources.big]\nlocation = \"s3://lake/raw/big.csv\"\nformat = \"csv\"\nschema = \"s VARCHAR\"\n\
         [models.sizes]\nsink = { location = \"out/sizes/\", format = \"csv\" }\n",
    )
    .unwrap();
    std::fs::write(
        d.join("queries/sizes.sql"),
        "SELECT count(*) AS n, sum(length(s)) AS chars FROM big",
    )
    .unwrap();
    let mut env = server.env();
    env.push(("TEST_S3_ENDPOINT".into(), server.endpoint()));
    let start = std::time::Instant::now();
    let (_, r) = run_with_report_env(d, &[], &env, 0);
    let elapsed = start.elapsed().as_secs_f64();
    let model = report_model(&r, "sizes");
    assert_eq!(model["rows_in"], lines as u64, "{model}");
    let out = std::fs::read_to_string(
        files_under(&d.join("out/sizes"))
            .iter()
            .find(|f| f.ends_with(".csv"))
            .map(|f| d.join("out/sizes").join(f))
            .unwrap(),
    )
    .unwrap();
    assert!(out.contains(&format!("{lines},{}", lines * 100)), "{out}");
    let store = &r["stores"][0];
    assert_eq!(store["name"], "lake", "{r}");
    let read = store["bytes_read"].as_f64().unwrap();
    assert!(read >= size, "read {read} of {size}: {store}");
    let cap = 15.0 * 1024.0 * 1024.0;
    let rate = read / elapsed;
    assert!(
        (0.8 * cap..=1.2 * cap).contains(&rate),
        "{:.1} MiB/s against a cap of 15 MiB/s ({read} bytes in {elapsed:.1} s): {store}",
        rate / 1024.0 / 1024.0
    );
    assert!(store["throttled_ms"].as_f64().unwrap() > 1000.0, "{store}");
}

/// A read and a write of one store under `max_concurrent_requests = 1`: a scan streaming a
/// source's body must not hold the store's one slot while the writer of the same bucket waits
/// for it (a run that never ends).
#[tokio::test(flavor = "multi_thread")]
async fn one_request_slot_serves_a_read_and_a_write_of_the_same_bucket() {
    use object_store::{ObjectStoreExt, PutPayload};
    let server = S3Server::start();
    server.create_bucket("lake");
    let mut csv = String::from("id,s\n");
    // (Large enough that the scan is still reading when the writer needs the slot.)
    for i in 0..1_500_000u64 {
        csv.push_str(&format!(
            "{i},{:016x}{:016x}\n",
            i.wrapping_mul(0x9e3779b97f4a7c15),
            i
        ));
    }
    server
        .store("lake")
        .put(
            &object_store::path::Path::from("raw/big.csv"),
            PutPayload::from(csv.into_bytes()),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "name = \"copy\"\n[settings]\nthreads = 2\n\
         [stores.lake]\nurl = \"s3://lake\"\nendpoint = \"${env:TEST_S3_ENDPOINT}\"\n\
         region = \"us-east-1\"\nallow_http = true\nmax_concurrent_requests = 1\n\
         [sources.big]\nlocation = \"s3://lake/raw/big.csv\"\nformat = \"csv\"\n\
         [models.copy]\nsink = { location = \"s3://lake/out/copy/\", format = \"csv\" }\n",
    )
    .unwrap();
    std::fs::write(d.join("queries/copy.sql"), "SELECT * FROM big").unwrap();
    let mut env = server.env();
    env.push(("TEST_S3_ENDPOINT".into(), server.endpoint()));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", ".", "--report", "r.json"])
        .current_dir(d)
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(180) {
            let _ = child.kill();
            panic!("the run did not end: the store's one slot is held");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(status.code(), Some(0));
    let r = read_json(&d.join("r.json"));
    assert_eq!(report_model(&r, "copy")["rows_out"], 1_500_000, "{r}");
}
