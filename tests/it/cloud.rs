//! A whole pipeline on Azure Blob (Azurite) and GCS (fake-gcs-server), each reached through
//! the settings a user writes in `[stores.*]`, with no credentials in the environment.
//! The storage conformance suite on Azure is in `conformance.rs` and `writers.rs`.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::support::azure::AzureServer;
use crate::support::gcs::GcsServer;
use crate::support::*;

/// The shop pipeline with its sources read from `sources` (a URL prefix holding `raw/`) and,
/// when `sinks` is given, its outputs written under it.
fn shop_reading(sources: &str, sinks: Option<&str>) -> tempfile::TempDir {
    let dir = pipeline_copy("shop");
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        let toml = toml
            .replace(
                "location = \"data/orders/\"",
                &format!("location = \"{sources}/raw/orders/\""),
            )
            .replace(
                "location = \"data/customers.jsonl\"",
                &format!("location = \"{sources}/raw/customers.jsonl\""),
            );
        match sinks {
            Some(s) => toml.replace("location = \"out/", &format!("location = \"{s}/out/")),
            None => toml,
        }
    });
    dir
}

/// The expected daily revenue, and what `b` holds, as rows.
fn daily_revenue(
    dir: &std::path::Path,
    b: &[datafusion::arrow::record_batch::RecordBatch],
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let (header, expected) = expected_csv(&dir.join("expected/daily_revenue.csv"));
    let cols: Vec<&str> = header.iter().map(String::as_str).collect();
    (rows(b, &cols), expected)
}

const DAILY: &str = "SELECT order_date, CAST(orders AS VARCHAR) AS orders, \
    CAST(revenue AS VARCHAR) AS revenue, CAST(items AS VARCHAR) AS items FROM t";

/// Azurite given as `use_emulator` plus the `endpoint` it listens on (object_store alone would
/// ignore that endpoint and go to 127.0.0.1:10000): sources read from the container, outputs
/// committed to it, the right answer read back.
#[tokio::test]
async fn shop_pipeline_on_azure() {
    let server = AzureServer::start();
    server.create_container("lake");
    let store = server.store("lake");
    let data = testdata("shop").join("data");
    for f in files_under(&data) {
        let bytes = std::fs::read(data.join(&f)).unwrap();
        store
            .put(
                &ObjectPath::from(format!("raw/{f}")),
                PutPayload::from(bytes),
            )
            .await
            .unwrap();
    }
    let dir = shop_reading("az://lake", Some("az://lake"));
    append_toml(
        dir.path(),
        "[stores.lake]\nurl = \"az://lake\"\nendpoint = \"${env:TEST_AZURITE}\"\n\
         [stores.lake.options]\nuse_emulator = \"true\"\n",
    );
    let env = vec![(
        "TEST_AZURITE".to_string(),
        format!("http://127.0.0.1:{}", server.port()),
    )];
    let (_, r) = run_with_report_env(dir.path(), &[], &env, 0);
    assert_eq!(r["status"], "success");
    assert!(!dir.path().join("out").exists(), "nothing written locally");

    let t = Target::for_container_prefix(&server, "lake", "out/daily_revenue");
    let b = t.query("parquet", &["order_date"], DAILY).await;
    let (got, want) = daily_revenue(dir.path(), &b);
    assert_eq!(got, want);
    let snap = t.snapshot().await;
    assert!(snap.contains_key("_SUCCESS") && snap.contains_key("_MANIFEST"));
}

/// fake-gcs-server given as the `endpoint` of a `gs://` store (object_store's base URL), with
/// `skip_signature`: the sources are listed and read from the bucket; the outputs, local,
/// hold the right answer. (No GCS sink: see `support/gcs.rs`.)
#[tokio::test]
async fn shop_pipeline_reading_gcs() {
    let server = GcsServer::start();
    server.create_bucket("lake");
    server.upload("lake", "raw", &testdata("shop").join("data"));
    let dir = shop_reading("gs://lake", None);
    append_toml(
        dir.path(),
        "[stores.lake]\nurl = \"gs://lake\"\nendpoint = \"${env:TEST_GCS}\"\nallow_http = true\n\
         [stores.lake.options]\nskip_signature = \"true\"\n",
    );
    let env = vec![("TEST_GCS".to_string(), server.endpoint())];
    let (_, r) = run_with_report_env(dir.path(), &[], &env, 0);
    assert_eq!(r["status"], "success");
    let out = dir.path().join("out/daily_revenue");
    let b = query_output_in(
        None,
        &format!("{}/", out.display()),
        "parquet",
        &["order_date"],
        DAILY,
    )
    .await;
    let (got, want) = daily_revenue(dir.path(), &b);
    assert_eq!(got, want);
}
