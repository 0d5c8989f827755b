//! Storage errors on a real S3-compatible server: a missing bucket or object, for a source
//! and for a sink, each a clear message naming the location, exit status 1, and the
//! previous output left as it was.

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::support::s3::S3Server;
use crate::support::*;

/// The shop pipeline reading from `lake/raw/` and writing to `lake/out/` on `server`.
async fn shop_on_s3(server: &S3Server) -> (tempfile::TempDir, Vec<(String, String)>) {
    server.create_bucket("lake");
    let store = server.store("lake");
    let data = testdata("shop").join("data");
    for f in files_under(&data) {
        store
            .put(
                &ObjectPath::from(format!("raw/{f}")),
                PutPayload::from(std::fs::read(data.join(&f)).unwrap()),
            )
            .await
            .unwrap();
    }
    let dir = pipeline_copy("shop");
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml"))
        .unwrap()
        .replace(
            "location = \"data/orders/\"",
            "location = \"s3://lake/raw/orders/\"",
        )
        .replace(
            "location = \"data/customers.jsonl\"",
            "location = \"s3://lake/raw/customers.jsonl\"",
        )
        .replace("location = \"out/", "location = \"s3://lake/out/");
    std::fs::write(dir.path().join("sluice.toml"), toml).unwrap();
    (dir, server.env())
}

#[tokio::test]
async fn missing_buckets_and_objects_name_the_location() {
    let server = S3Server::start();
    let (dir, env) = shop_on_s3(&server).await;
    sluice_env(dir.path(), &["run", "."], &env).expect(0);
    let store = server.store("lake");
    let listed = |prefix: &str| {
        let store = store.clone();
        let prefix = prefix.to_string();
        async move {
            use futures::TryStreamExt;
            let mut keys: Vec<String> = store
                .list(Some(&ObjectPath::from(prefix)))
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    let before = listed("out").await;
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();

    // A source in a bucket that does not exist.
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace(
            "s3://lake/raw/customers.jsonl",
            "s3://nobucket/raw/customers.jsonl",
        ),
    )
    .unwrap();
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("s3://nobucket/raw/customers.jsonl"),
        "{}",
        run.stderr
    );

    // A source object that is gone.
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace("s3://lake/raw/customers.jsonl", "s3://lake/raw/gone.jsonl"),
    )
    .unwrap();
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("s3://lake/raw/gone.jsonl"),
        "{}",
        run.stderr
    );

    assert_eq!(
        listed("out").await,
        before,
        "a failed source changed an output"
    );

    // A sink in a bucket that does not exist.
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace(
            "s3://lake/out/daily_revenue/",
            "s3://nobucket/out/daily_revenue/",
        ),
    )
    .unwrap();
    let run = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("s3://nobucket/out/daily_revenue"),
        "{}",
        run.stderr
    );
    // The outputs are as the first run left them: the source errors stop the run before any
    // model runs; the sink error fails daily_revenue, whose old output stays where it was
    // (revenue_by_country, which does not depend on it, is rewritten).
    let after = listed("out/daily_revenue").await;
    let old: Vec<&String> = before
        .iter()
        .filter(|k| k.starts_with("out/daily_revenue/"))
        .collect();
    assert!(!old.is_empty());
    assert_eq!(after.iter().collect::<Vec<_>>(), old);
}
