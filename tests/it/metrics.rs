//! `sluice run --metrics-file`: the run's metrics in Prometheus's text format, parsed by
//! Prometheus's own Python parser and checked against the run report; the last success of
//! the pipeline and of each model outlive a failed run.

use crate::support::readers::python;
use crate::support::*;

/// The samples of a metrics file: (name, labels as `k=v` joined by `,` in key order, value),
/// parsed by prometheus_client's parser.
pub(crate) fn samples(file: &std::path::Path) -> Vec<(String, String, f64)> {
    let out = python(
        file.parent().unwrap(),
        "import json, sys\n\
         from prometheus_client.parser import text_string_to_metric_families\n\
         text = open(sys.argv[1]).read()\n\
         out = []\n\
         for family in text_string_to_metric_families(text):\n\
         \x20   for s in family.samples:\n\
         \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
         \x20       out.append([s.name, labels, s.value])\n\
         print(json.dumps(out))\n",
        &[file.to_str().unwrap()],
        &[],
    );
    serde_json::from_str(&out).unwrap()
}

fn value(samples: &[(String, String, f64)], name: &str, labels: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l == labels)
        .map(|(_, _, v)| *v)
}

fn unix(rfc3339: &serde_json::Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.timestamp_micros() as f64 / 1e6
}

#[test]
fn a_runs_metrics_agree_with_its_report_and_keep_the_last_successes() {
    let dir = pipeline_copy("shop");
    let file = dir.path().join("sluice.prom");
    let metrics = file.to_str().unwrap();
    let (_, r) = run_with_report(dir.path(), &["--metrics-file", metrics], 0);
    let s = samples(&file);
    let p = "pipeline=shop";
    assert_eq!(
        value(&s, "sluice_run_status", &format!("{p},status=success")),
        Some(1.0)
    );
    let finished = unix(&r["finished_at"]);
    assert_eq!(
        value(&s, "sluice_last_success_timestamp_seconds", p),
        Some(finished)
    );
    let models = r["models"].as_array().unwrap();
    assert!(!models.is_empty());
    for m in models {
        let name = m["name"].as_str().unwrap();
        let l = |kind: &str| format!("kind={kind},model={name},{p}");
        for (kind, key) in [
            ("in", "rows_in"),
            ("out", "rows_out"),
            ("rejected", "rows_rejected"),
        ] {
            assert_eq!(
                value(&s, "sluice_model_rows", &l(kind)),
                Some(m[key].as_u64().unwrap() as f64),
                "{name} {kind}"
            );
        }
        assert_eq!(
            value(
                &s,
                "sluice_model_last_success_timestamp_seconds",
                &format!("model={name},{p}")
            ),
            Some(finished),
            "{name}"
        );
        // One histogram observation per unit.
        let units = m["units"].as_array().map_or(0, |u| u.len());
        assert_eq!(
            value(
                &s,
                "sluice_unit_duration_seconds_count",
                &format!("model={name},{p}")
            ),
            Some(units as f64),
            "{name}"
        );
    }
    // A run that fails: its status is failed, the last successes are the first run's.
    let failing = models[0]["name"].as_str().unwrap().to_string();
    std::fs::write(
        dir.path().join(format!("queries/{failing}.sql")),
        "SELECT no_such_column FROM orders",
    )
    .unwrap();
    let (_, r2) = run_with_report(dir.path(), &["--metrics-file", metrics], 2);
    let s = samples(&file);
    assert_eq!(r2["status"], "failed");
    assert_eq!(
        value(&s, "sluice_run_status", &format!("{p},status=failed")),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "sluice_run_status", &format!("{p},status=success")),
        None
    );
    assert_eq!(
        value(&s, "sluice_last_success_timestamp_seconds", p),
        Some(finished)
    );
    assert_eq!(
        value(
            &s,
            "sluice_model_last_success_timestamp_seconds",
            &format!("model={failing},{p}")
        ),
        Some(finished)
    );
}
