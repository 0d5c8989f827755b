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

/// Every output of the pipeline in `local` and `cluster` (the same pipeline), read back:
/// `(model, columns, sorted rows)`, with its Hive partition folders.
async fn outputs(
    dir: &std::path::Path,
) -> Vec<(String, Vec<String>, Vec<Vec<String>>, Vec<String>)> {
    let mut out = Vec::new();
    for model in dirs_under(&dir.join("out")) {
        if model.starts_with('_') || model.contains('/') {
            continue;
        }
        let folder = dir.join("out").join(&model);
        let manifest = read_json(&folder.join("_MANIFEST"));
        let format = manifest["format"].as_str().unwrap().to_string();
        let parts: Vec<String> = manifest["partition_by"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let (cols, mut rows) = all_rows(
            &query_output(
                &format!("{}/", folder.display()),
                &format,
                &parts,
                "SELECT * FROM t",
            )
            .await,
        );
        rows.sort();
        out.push((model, cols, rows, dirs_under(&folder)));
    }
    out
}

#[tokio::test]
async fn on_a_standalone_cluster_the_shop_pipeline_and_every_sink_mode_write_what_they_write_locally()
 {
    // The shop reads CSV (by sluice's own scan) and JSON lines, writes partitioned Parquet
    // and CSV; then each write mode runs twice over the same input.
    let local = pipeline_copy("shop");
    let cluster = pipeline_copy("shop");
    let (_, want) = run_with_report(local.path(), &[], 0);
    let (_, got) = run_with_report(cluster.path(), &["--cluster", "standalone"], 0);
    for m in ["daily_revenue", "revenue_by_country"] {
        let (w, g) = (report_model(&want, m), report_model(&got, m));
        assert_eq!(g["rows_in"], w["rows_in"], "{m}");
        assert_eq!(g["rows_out"], w["rows_out"], "{m}");
    }
    assert_eq!(outputs(cluster.path()).await, outputs(local.path()).await);

    for mode in ["append", "overwrite_partitions", "overwrite"] {
        for dir in [&local, &cluster] {
            edit_file(&dir.path().join("sluice.toml"), |t| {
                let t = t
                    .replace("\nmode = \"append\"", "")
                    .replace("\nmode = \"overwrite_partitions\"", "")
                    .replace("\nmode = \"overwrite\"", "");
                t.replace(
                    "partition_by = [\"order_date\"]",
                    &format!("partition_by = [\"order_date\"]\nmode = \"{mode}\""),
                )
            });
        }
        sluice(local.path(), &["run", "."]).expect(0);
        sluice(cluster.path(), &["run", ".", "--cluster", "standalone"]).expect(0);
        assert_eq!(
            outputs(cluster.path()).await,
            outputs(local.path()).await,
            "mode {mode}"
        );
    }
    // error_if_exists refuses the second write, on a cluster as here.
    for dir in [&local, &cluster] {
        std::fs::write(dir.path().join("queries/once.sql"), "SELECT 1 AS one").unwrap();
        append_toml(
            dir.path(),
            "[models.once.sink]\nlocation = \"out/once/\"\nmode = \"error_if_exists\"\n",
        );
    }
    let args = ["run", ".", "--select", "once", "--cluster", "standalone"];
    sluice(cluster.path(), &args).expect(0);
    let again = sluice(cluster.path(), &args);
    let local_again = {
        sluice(local.path(), &["run", ".", "--select", "once"]).expect(0);
        sluice(local.path(), &["run", ".", "--select", "once"])
    };
    assert_eq!(again.code, local_again.code, "{}", again.stderr);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
}

#[tokio::test]
async fn a_cluster_that_cannot_be_reached_a_local_path_and_an_operator_that_cannot_travel_are_refused()
 {
    // Nobody listens on the port: exit 1, naming the scheduler's URL (before the sources
    // are read: there is no S3 server either).
    let s3_dir = shop_pipeline_on_s3();
    let port = crate::support::s3::free_port();
    let url = format!("df://127.0.0.1:{port}");
    let run = sluice(s3_dir.path(), &["run", ".", "--cluster", &url]).expect(1);
    assert!(
        run.stderr.contains(&format!(
            "cannot reach the Ballista scheduler at http://127.0.0.1:{port}"
        )),
        "{}",
        run.stderr
    );
    // Local paths on a remote cluster: exit 2 before anything runs, naming the setting.
    let dir = pipeline_copy("shop");
    let cluster = TestCluster::start(1, 1, None);
    let run = sluice(dir.path(), &["run", ".", "--cluster", &cluster.url()]).expect(2);
    assert!(
        run.stderr.contains("sources.customers.location")
            || run.stderr.contains("sources.orders.location"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("local path"), "{}", run.stderr);
    assert!(!dir.path().join("out").exists());
    // A source whose bad rows are set aside cannot run on executors yet: exit 2 naming the
    // model and the operator, nothing written.
    edit_file(&dir.path().join("sluice.toml"), |t| {
        t.replace(
            "[sources.orders]\n",
            "[sources.orders]\non_bad_rows = \"quarantine\"\n",
        )
    });
    let run = sluice(dir.path(), &["run", ".", "--cluster", "standalone"]).expect(2);
    assert!(
        run.stderr
            .contains("model 'daily_revenue' cannot run on a cluster"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("QuarantineScan"), "{}", run.stderr);
    assert!(!dir.path().join("out").exists());
    // A bad cluster setting: exit 2, naming the file and line.
    append_toml(dir.path(), "");
    edit_file(&dir.path().join("sluice.toml"), |t| {
        t.replace("threads = 2", "threads = 2\ncluster = \"scheduler:50050\"")
    });
    let run = sluice(dir.path(), &["run", "."]).expect(2);
    assert!(
        run.stderr.contains("sluice.toml:6: settings.cluster"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn on_a_cluster_a_join_larger_than_an_executors_memory_finishes_by_the_grace_join_on_the_executors()
 {
    let s3 = S3Server::start();
    s3.create_bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    sluice_env(
        dir.path(),
        &["gen", "tpch", "--scale", "0.1", "--out", "s3://lake/tpch/"],
        &s3.env(),
    )
    .expect(0);
    let data = gen_tpch(dir.path(), "data", 0.1, "parquet");
    // Each executor: one task at a time, 16 MiB for it.
    let cluster = TestCluster::start(2, 1, Some("16MiB"));
    let sql = "SELECT o_orderpriority, COUNT(*) AS n, SUM(l_extendedprice) AS revenue, \
               MAX(o_comment) AS last_comment \
               FROM lineitem JOIN orders ON l_orderkey = o_orderkey GROUP BY o_orderpriority";
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(dir.path().join("queries/by_priority.sql"), sql).unwrap();
    let toml = |strategy: &str| {
        format!(
            "name = \"joins\"\n[settings]\nthreads = 2\ncluster = \"{}\"\njoin_strategy = \"{strategy}\"\n\
             [sources.orders]\nlocation = \"s3://lake/tpch/orders/\"\nformat = \"parquet\"\n\
             [sources.lineitem]\nlocation = \"s3://lake/tpch/lineitem/\"\nformat = \"parquet\"\n\
             [models.by_priority.sink]\nlocation = \"s3://lake/joins/by_priority/\"\n",
            cluster.url()
        )
    };
    let report = dir.path().join("r.json");
    let args = ["run", ".", "--report", report.to_str().unwrap()];
    // DataFusion's hash join holds the whole build side: it cannot.
    std::fs::write(dir.path().join("sluice.toml"), toml("in_memory")).unwrap();
    let run = sluice_env(dir.path(), &args, &s3.env()).expect(1);
    assert!(
        run.stderr.contains("Resources exhausted") || run.stderr.contains("memory"),
        "{}",
        run.stderr
    );
    // The grace join partitions it to the executors' disks, inside their tasks.
    std::fs::write(dir.path().join("sluice.toml"), toml("auto")).unwrap();
    sluice_env(dir.path(), &args, &s3.env()).expect(0);
    let json = read_json(&report);
    let job = &report_model(&json, "by_priority")["cluster_jobs"][0];
    let operators = job["operators"].to_string();
    assert!(operators.contains("GraceHashJoinExec"), "{job}");
    assert!(job["joins_partitioned"].as_u64().unwrap() > 0, "{job}");
    assert!(job["spilled_bytes"].as_u64().unwrap() > 0, "{job}");
    // The answer is plain DataFusion's, without a memory limit.
    let want = plain_query(&plain_tpch(&data).await, sql).await;
    let url = url::Url::parse("s3://lake/").unwrap();
    let got = query_output_in(
        Some((&url, s3.store("lake"))),
        "s3://lake/joins/by_priority/",
        "parquet",
        &[],
        "SELECT * FROM t",
    )
    .await;
    let (want_cols, want) = all_rows(&want);
    let (got_cols, got) = all_rows(&got);
    assert_eq!(got_cols, want_cols);
    assert_eq!(want.len(), 5);
    assert_same_rows(&got, &want, "by_priority");
}
