//! Pipelines on an Apache DataFusion Ballista cluster: in-process (`cluster = "standalone"`)
//! and as real `sluice cluster` processes on 127.0.0.1 with sources and outputs on S3 (moto).
//! Every answer is checked against plain DataFusion over the same data, or against the same
//! pipeline run locally.

use crate::support::cluster::TestCluster;
use crate::support::s3::S3Server;
use crate::support::*;

#[tokio::test]
async fn on_a_standalone_cluster_the_22_tpch_models_give_the_answers_of_plain_datafusion() {
    let dir = tpch_pipeline_dir(0.01);
    tpch_models_pipeline(
        dir.path(),
        "data/",
        "out/",
        "threads = 2\ncluster = \"standalone\"",
    );
    let (_, report) = run_with_report(dir.path(), &[], 0);
    let out = format!("{}/out/", dir.path().display());
    check_tpch_models(&dir.path().join("data"), &out, None).await;
    // Each model ran as a Ballista job, cut into stages.
    for q in ["q1", "q9", "q21"] {
        let jobs = report_model(&report, q)["cluster_jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1, "{q}: {jobs:?}");
        assert!(jobs[0]["stages"].as_u64().unwrap() >= 2, "{q}: {jobs:?}");
        assert!(!jobs[0]["job_id"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn on_a_standalone_cluster_the_example_pipeline_writes_what_it_writes_locally() {
    let local = tempfile::tempdir().unwrap();
    copy_dir(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tpch"),
        local.path(),
    );
    gen_tpch(local.path(), "data", 0.01, "parquet");
    let cluster = tempfile::tempdir().unwrap();
    copy_dir(local.path(), cluster.path());
    sluice(local.path(), &["run", "."]).expect(0);
    sluice(cluster.path(), &["run", ".", "--cluster", "standalone"]).expect(0);
    // Partitioned Parquet, CSV and a sorted top 100: the same rows, the same partitions.
    for (model, format, parts) in [
        ("monthly_revenue", "parquet", vec!["ship_year"]),
        ("nation_revenue", "csv", vec![]),
        ("top_customers", "parquet", vec![]),
    ] {
        let read = async |dir: &std::path::Path| {
            all_rows(
                &query_output(
                    &format!("{}/out/{model}/", dir.display()),
                    format,
                    &parts,
                    "SELECT * FROM t",
                )
                .await,
            )
        };
        let (want_cols, want) = read(local.path()).await;
        let (got_cols, got) = read(cluster.path()).await;
        assert_eq!(got_cols, want_cols, "{model}");
        assert!(!want.is_empty(), "{model}");
        assert_same_rows(&got, &want, model);
        assert_eq!(
            dirs_under(&cluster.path().join(format!("out/{model}"))),
            dirs_under(&local.path().join(format!("out/{model}"))),
            "{model}"
        );
    }
    // Nothing staged is left behind.
    assert!(
        !cluster.path().join("out/_staging").exists()
            || files_under(&cluster.path().join("out/_staging")).is_empty()
    );
}

/// TPC-H at SF 0.01 generated into `s3://lake/tpch/` (by the client, which alone has
/// credentials) and into a local folder: the same data, the generator being deterministic.
async fn tpch_on_s3(s3: &S3Server, local: &std::path::Path) {
    s3.create_bucket("lake");
    let run = sluice_env(
        local,
        &["gen", "tpch", "--scale", "0.01", "--out", "s3://lake/tpch/"],
        &s3.env(),
    );
    run.expect(0);
    gen_tpch(local, "data", 0.01, "parquet");
}

#[tokio::test]
async fn a_cluster_of_processes_runs_the_22_tpch_models_on_s3_with_the_clients_credentials_only() {
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    tpch_on_s3(&s3, dir.path()).await;
    let cluster = TestCluster::start(2, 1, None);
    tpch_models_pipeline(
        dir.path(),
        "s3://lake/tpch/",
        "s3://lake/answers/",
        &format!("threads = 2\ncluster = \"{}\"", cluster.url()),
    );
    let (_, report) = {
        let report = dir.path().join("r.json");
        let run = sluice_env(
            dir.path(),
            &["run", ".", "--report", report.to_str().unwrap()],
            &s3.env(),
        );
        (run.expect(0), read_json(&report))
    };
    let url = url::Url::parse("s3://lake/").unwrap();
    check_tpch_models(
        &dir.path().join("data"),
        "s3://lake/answers/",
        Some((&url, s3.store("lake"))),
    )
    .await;
    // Both executors ran tasks (each had one slot).
    assert!(
        cluster.tasks_run(0) > 0 && cluster.tasks_run(1) > 0,
        "{} / {}",
        cluster.tasks_run(0),
        cluster.tasks_run(1)
    );
    let tasks: u64 = model_names(&report)
        .iter()
        .flat_map(|m| {
            report_model(&report, m)["cluster_jobs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|j| j["tasks"].as_u64().unwrap())
        .sum();
    assert!(tasks >= 44, "{tasks}");
    // The staging folders hold nothing.
    let keys = s3.python(
        "import boto3,sys,os\ns=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id='test',aws_secret_access_key='test',region_name='us-east-1')\nfor o in s.list_objects_v2(Bucket='lake',Prefix='answers/').get('Contents',[]): print(o['Key'])",
        &[&s3.endpoint()],
    );
    assert!(!keys.is_empty());
    assert!(
        !keys.contains("_staging/")
            || keys
                .lines()
                .filter(|k| k.contains("_staging/"))
                .all(|k| k.ends_with("_LEASE")),
        "{keys}"
    );
}
