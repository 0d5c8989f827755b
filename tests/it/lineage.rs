//! `[lineage]`: OpenLineage run events for a three-model pipeline, checked field by field
//! against what the OpenLineage 2-0-2 spec requires of a RunEvent and of each facet sluice
//! emits (no installable package ships the core JSON schema), and against what the SQL
//! reads: each model's inputs and outputs, and each output column's source columns. The file
//! transport and the HTTP one (to a small receiver the test starts) carry the same events.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// Sources `orders` and `customers` (CSV), and three models: `clean_orders` over orders,
/// `by_country` joining it with customers, `top` over by_country. `extra` is appended to
/// sluice.toml.
fn shop(dir: &Path, extra: &str) {
    std::fs::create_dir_all(dir.join("data/orders")).unwrap();
    std::fs::create_dir_all(dir.join("data/customers")).unwrap();
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    std::fs::write(
        dir.join("data/orders/o.csv"),
        "id,customer_id,amount,day\n1,1,5,2024-01-01\n2,2,7,2024-01-01\n3,1,-1,2024-01-02\n4,3,9,2024-01-02\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("data/customers/c.csv"),
        "id,name,country\n1,ann,FR\n2,bob,DE\n3,cid,FR\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sluice.toml"),
        format!(
            "name = \"shop\"\n\
             [sources.orders]\nlocation = \"data/orders/\"\nformat = \"csv\"\n\
             [sources.customers]\nlocation = \"data/customers/\"\nformat = \"csv\"\n{extra}"
        ),
    )
    .unwrap();
    for (name, sql) in [
        (
            "clean_orders",
            "SELECT id, customer_id, amount * 100 AS cents, day FROM orders WHERE amount > 0",
        ),
        (
            "by_country",
            "SELECT c.country, sum(o.cents) AS cents, count(*) AS n \
             FROM clean_orders o JOIN customers c ON o.customer_id = c.id GROUP BY c.country",
        ),
        ("top", "SELECT country, cents FROM by_country WHERE n > 0"),
    ] {
        std::fs::write(dir.join(format!("queries/{name}.sql")), sql).unwrap();
    }
}

/// The events of `dir/lineage.jsonl`, in order.
fn read_events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("lineage.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn is_uri(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.contains("://") && !s.contains(' '))
}

/// The checks of a facet: `_producer` and `_schemaURL`, URIs.
#[track_caller]
fn check_facet(name: &str, f: &Value) {
    assert!(f.is_object(), "facet {name}: {f}");
    assert!(is_uri(&f["_producer"]), "facet {name}: _producer: {f}");
    assert!(is_uri(&f["_schemaURL"]), "facet {name}: _schemaURL: {f}");
    match name {
        "schema" => {
            for field in f["fields"].as_array().expect("schema.fields") {
                assert!(field["name"].is_string(), "{field}");
                assert!(
                    field["type"].is_string() || field["type"].is_null(),
                    "{field}"
                );
            }
        }
        "columnLineage" => {
            for (column, c) in f["fields"].as_object().expect("columnLineage.fields") {
                for input in c["inputFields"].as_array().expect("inputFields") {
                    for key in ["namespace", "name", "field"] {
                        assert!(input[key].is_string(), "{column}: {input}");
                    }
                }
            }
        }
        "outputStatistics" => {
            assert!(f["rowCount"].is_u64(), "{f}");
            assert!(f["fileCount"].is_null() || f["fileCount"].is_u64(), "{f}");
        }
        "errorMessage" => {
            assert!(
                f["message"].is_string() && f["programmingLanguage"].is_string(),
                "{f}"
            );
        }
        "jobType" => {
            assert!(
                f["processingType"].is_string() && f["integration"].is_string(),
                "{f}"
            );
        }
        _ => {}
    }
}

/// What OpenLineage 2-0-2 requires of a RunEvent, and of each facet in it.
#[track_caller]
fn check_event(e: &Value) {
    let kind = e["eventType"].as_str().expect("eventType");
    assert!(
        ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"].contains(&kind),
        "{kind}"
    );
    let time = e["eventTime"].as_str().expect("eventTime");
    chrono::DateTime::parse_from_rfc3339(time).expect("eventTime is a date-time");
    assert!(is_uri(&e["producer"]), "producer");
    assert_eq!(
        e["schemaURL"],
        "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
    );
    let run_id = e["run"]["runId"].as_str().expect("run.runId");
    uuid::Uuid::parse_str(run_id).expect("run.runId is a UUID");
    for (name, f) in e["run"]["facets"].as_object().expect("run.facets") {
        check_facet(name, f);
    }
    assert!(e["job"]["namespace"].is_string() && e["job"]["name"].is_string());
    for (name, f) in e["job"]["facets"].as_object().expect("job.facets") {
        check_facet(name, f);
    }
    for (list, facets_key) in [("inputs", "inputFacets"), ("outputs", "outputFacets")] {
        for d in e[list].as_array().expect(list) {
            assert!(d["namespace"].is_string() && d["name"].is_string(), "{d}");
            for key in ["facets", facets_key] {
                if let Some(facets) = d.get(key) {
                    for (name, f) in facets.as_object().expect(key) {
                        check_facet(name, f);
                    }
                }
            }
        }
    }
}

fn names(datasets: &Value) -> BTreeSet<String> {
    datasets
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let name = d["name"].as_str().unwrap();
            name.rsplit('/').next().unwrap().to_string()
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `(table folder, column)` pairs each output column of `output` comes from.
fn column_lineage(output: &Value) -> BTreeMap<String, BTreeSet<(String, String)>> {
    output["facets"]["columnLineage"]["fields"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(column, c)| {
            let inputs = c["inputFields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    let table = i["name"].as_str().unwrap().rsplit('/').next().unwrap();
                    (table.to_string(), i["field"].as_str().unwrap().to_string())
                })
                .collect();
            (column.clone(), inputs)
        })
        .collect()
}

/// A model, the tables it reads, and each output column's source columns.
type Expected = (
    &'static str,
    &'static [&'static str],
    Vec<(&'static str, BTreeSet<(String, String)>)>,
);

fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(t, c)| (t.to_string(), c.to_string()))
        .collect()
}

#[test]
fn a_runs_events_follow_the_spec_and_say_what_the_sql_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shop(
        d,
        "[lineage]\nfile = \"lineage.jsonl\"\nnamespace = \"shop-jobs\"\n",
    );
    let (_, report) = run_with_report(d, &[], 0);
    let events = read_events(d);
    for e in &events {
        check_event(e);
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["START", "RUNNING", "RUNNING", "RUNNING", "COMPLETE"]
    );
    // One OpenLineage run, sluice's run id in its facet; the job is the pipeline.
    let run_ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["run"]["runId"].as_str().unwrap())
        .collect();
    assert_eq!(run_ids.len(), 1);
    for e in &events {
        assert_eq!(e["run"]["facets"]["sluice"]["runId"], report["run_id"]);
        assert_eq!(e["job"]["namespace"], "shop-jobs");
        assert_eq!(e["job"]["name"], "shop");
    }
    // START: the sources in, the three outputs out, local files named by absolute path.
    assert_eq!(names(&events[0]["inputs"]), set(&["orders", "customers"]));
    assert_eq!(
        names(&events[0]["outputs"]),
        set(&["clean_orders", "by_country", "top"])
    );
    let orders = &events[0]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"].as_str().unwrap().ends_with("orders"))
        .unwrap()
        .clone();
    assert_eq!(orders["namespace"], "file");
    assert_eq!(
        orders["name"],
        d.join("data/orders")
            .canonicalize()
            .unwrap()
            .display()
            .to_string()
    );
    let fields: Vec<&str> = orders["facets"]["schema"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["id", "customer_id", "amount", "day"]);
    // RUNNING per model: what its SQL reads, what it writes, column by column.
    let by_model: BTreeMap<String, &Value> = events[1..4]
        .iter()
        .map(|e| (names(&e["outputs"]).into_iter().next().unwrap(), e))
        .collect();
    let expect: [Expected; 3] = [
        (
            "clean_orders",
            &["orders"],
            vec![
                ("id", pairs(&[("orders", "id")])),
                ("customer_id", pairs(&[("orders", "customer_id")])),
                ("cents", pairs(&[("orders", "amount")])),
                ("day", pairs(&[("orders", "day")])),
            ],
        ),
        (
            "by_country",
            &["clean_orders", "customers"],
            vec![
                ("country", pairs(&[("customers", "country")])),
                ("cents", pairs(&[("clean_orders", "cents")])),
                ("n", pairs(&[])),
            ],
        ),
        (
            "top",
            &["by_country"],
            vec![
                ("country", pairs(&[("by_country", "country")])),
                ("cents", pairs(&[("by_country", "cents")])),
            ],
        ),
    ];
    for (model, inputs, columns) in expect {
        let e = by_model[model];
        assert_eq!(names(&e["inputs"]), set(inputs), "{model}");
        let out = &e["outputs"][0];
        let want: BTreeMap<String, BTreeSet<(String, String)>> = columns
            .into_iter()
            .map(|(c, s)| (c.to_string(), s))
            .collect();
        assert_eq!(column_lineage(out), want, "{model}");
        let rows = report_model(&report, model)["rows_out"].as_u64().unwrap();
        assert_eq!(
            out["outputFacets"]["outputStatistics"]["rowCount"], rows,
            "{model}"
        );
    }
    // COMPLETE: every output with its row count.
    for out in events[4]["outputs"].as_array().unwrap() {
        let model = out["name"].as_str().unwrap().rsplit('/').next().unwrap();
        let rows = report_model(&report, model)["rows_out"].as_u64().unwrap();
        assert_eq!(
            out["outputFacets"]["outputStatistics"]["rowCount"], rows,
            "{model}"
        );
    }
}

#[test]
fn a_failed_run_ends_with_fail_and_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shop(d, "[lineage]\nfile = \"lineage.jsonl\"\n");
    std::fs::write(
        d.join("queries/top.sql"),
        "SELECT CAST(country AS INT) AS c FROM by_country",
    )
    .unwrap();
    run_with_report(d, &[], 1);
    let events = read_events(d);
    for e in &events {
        check_event(e);
    }
    let last = events.last().unwrap();
    assert_eq!(last["eventType"], "FAIL");
    let message = last["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("model 'top'"), "{message}");
    assert_eq!(last["job"]["namespace"], "sluice");
    // A run that fails before any model runs (its SQL does not plan) still says so.
    std::fs::remove_file(d.join("lineage.jsonl")).unwrap();
    std::fs::write(d.join("queries/top.sql"), "SELECT nothing FROM by_country").unwrap();
    run_with_report(d, &[], 2);
    let events: Vec<Value> = read_events(d);
    for e in &events {
        check_event(e);
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["START", "FAIL"]);
    let message = events[1]["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("nothing"), "{message}");
}

/// Receives HTTP/1.1 POSTs on 127.0.0.1 (keep-alive too), answering 200; the bodies go to
/// the channel.
fn receiver() -> (u16, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut length = 0usize;
                    let mut first = String::new();
                    if reader.read_line(&mut first).unwrap_or(0) == 0 {
                        return;
                    }
                    assert!(first.starts_with("POST /api/v1/lineage "), "{first}");
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let _ = tx.send(String::from_utf8(body).unwrap());
                    writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (port, rx)
}

#[test]
fn events_go_over_http_as_they_go_to_the_file() {
    let (port, bodies) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shop(
        d,
        &format!(
            "[lineage]\nfile = \"lineage.jsonl\"\nurl = \"http://127.0.0.1:{port}/api/v1/lineage\"\n"
        ),
    );
    run_with_report(d, &[], 0);
    let sent: Vec<Value> = bodies
        .try_iter()
        .map(|b| serde_json::from_str(&b).unwrap())
        .collect();
    let written: Vec<Value> = read_events(d);
    assert_eq!(sent, written);
    assert_eq!(sent.len(), 5);
    // An endpoint that is down is a warning, not a failed run.
    drop(bodies);
    edit_file(&d.join("sluice.toml"), |t| {
        t.replace(&port.to_string(), "1")
    });
    let (run, _) = run_with_report(d, &[], 0);
    assert!(run.stderr.contains("cannot send lineage"), "{}", run.stderr);
    // One that hangs is given up after its first timeout, not once per event.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hung.incoming() {
            held.push(s);
        }
    });
    edit_file(&d.join("sluice.toml"), |t| {
        t.replace(":1/", &format!(":{hung_port}/"))
    });
    let start = std::time::Instant::now();
    let (run, _) = run_with_report(d, &[], 0);
    assert_eq!(
        run.stderr.matches("cannot send lineage").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_lineage_table_without_a_destination_or_with_a_bad_url_is_refused() {
    for (toml, message) in [
        ("[lineage]\nnamespace = \"x\"\n", "give `file`"),
        ("[lineage]\nurl = \"ftp://host/x\"\n", "not an http(s) URL"),
        (
            "[lineage]\nfile = \"l.jsonl\"\nformat = \"x\"\n",
            "unknown field",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        shop(dir.path(), toml);
        let run = sluice(dir.path(), &["plan", "."]).expect(2);
        assert!(run.stderr.contains(message), "{toml}: {}", run.stderr);
        assert!(run.stderr.contains("sluice.toml"), "{}", run.stderr);
    }
    // A dry run sends nothing.
    let dir = tempfile::tempdir().unwrap();
    shop(dir.path(), "[lineage]\nfile = \"lineage.jsonl\"\n");
    sluice(dir.path(), &["run", ".", "--dry-run"]).expect(0);
    assert!(!dir.path().join("lineage.jsonl").exists());
}

#[test]
fn column_lineage_sees_through_ctes_named_like_tables_and_grouping_sets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    shop(d, "[lineage]\nfile = \"lineage.jsonl\"\n");
    // A CTE named like a source, over another model; a ROLLUP.
    std::fs::write(
        d.join("queries/rolled.sql"),
        "WITH customers AS (SELECT customer_id AS cid, cents FROM clean_orders) \
         SELECT cid, sum(cents) AS total, count(*) AS n FROM customers GROUP BY ROLLUP(cid)",
    )
    .unwrap();
    run_with_report(d, &[], 0);
    let events: Vec<Value> = read_events(d);
    let rolled = events
        .iter()
        .find(|e| e["eventType"] == "RUNNING" && names(&e["outputs"]) == set(&["rolled"]))
        .unwrap();
    assert_eq!(names(&rolled["inputs"]), set(&["clean_orders"]), "{rolled}");
    let want: BTreeMap<String, BTreeSet<(String, String)>> = [
        ("cid", pairs(&[("clean_orders", "customer_id")])),
        ("total", pairs(&[("clean_orders", "cents")])),
        ("n", pairs(&[])),
    ]
    .into_iter()
    .map(|(c, s)| (c.to_string(), s))
    .collect();
    assert_eq!(column_lineage(&rolled["outputs"][0]), want);
}
