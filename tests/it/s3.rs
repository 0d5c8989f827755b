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
