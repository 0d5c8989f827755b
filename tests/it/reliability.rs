//! Regressions of issue 11 ("nothing lost, for real"): each test reproduces a way a run lost,
//! doubled or wrongly published rows, or misreported what it did.

use crate::support::pipeline::OneModel;
use crate::support::{manifest_files_sorted, query_output, report_model, rows, run_with_report};

/// Six daily CSV files, one row each, for a model run one unit per file.
fn six_days(bad_day: Option<(usize, &str)>) -> OneModel {
    let mut p = OneModel::new("events", "daily")
        .source_toml("format = \"csv\"\nschema = \"id INT, n INT\"")
        .sink_toml("[models.daily.batches]\nby = \"file\"\n[settings]\nmax_concurrent_units = 1\nretries = 3");
    for day in 1..=6 {
        let n = match bad_day {
            Some((d, value)) if d == day => value.to_string(),
            _ => (day * 10).to_string(),
        };
        p = p.file(&format!("2024-01-0{day}.csv"), format!("id,n\n{day},{n}\n"));
    }
    p
}

/// A unit that fails for good fails its model at once: the units after it are not started,
/// and a bad value that happens to read "timeout" is a bad value, not a transient failure
/// (one attempt, no backoff).
#[test]
fn a_unit_that_fails_for_good_stops_the_models_other_units() {
    let dir = six_days(Some((2, "timeout"))).build();
    let (run, report) = run_with_report(dir.path(), &[], 1);
    assert!(
        run.stderr
            .contains("unit 2024-01-02.csv failed after 1 attempt"),
        "{}",
        run.stderr
    );
    let model = report_model(&report, "daily");
    assert_eq!(model["units_total"], 6, "{model}");
    // With one unit at a time, only the unit before the failed one ran.
    assert_eq!(model["units_done"], 1, "{model}");
    assert!(!dir.path().join("out/daily/_MANIFEST").exists());
    // The same data without the bad value: all six units, all six rows.
    let dir = six_days(None).build();
    let (_, report) = run_with_report(dir.path(), &[], 0);
    let model = report_model(&report, "daily");
    assert_eq!(
        (model["units_done"].as_u64(), model["rows_out"].as_u64()),
        (Some(6), Some(6))
    );
}

/// A resumed run whose unit plan shifted (a late file that sorts first) keeps the units it
/// committed, runs the others, and publishes every row exactly once: units are named by their
/// key, not their position, so no unit writes where a kept unit's files are.
#[tokio::test]
async fn a_resume_after_the_unit_plan_shifted_neither_loses_nor_doubles_rows() {
    let dir = OneModel::new("events", "daily")
        .source_toml("format = \"csv\"\nschema = \"id INT, n INT\"")
        .sink_toml("[models.daily.batches]\nby = \"file\"\n[settings]\nmax_concurrent_units = 1")
        .file("2024-01-01.csv", "id,n\n1,10\n2,20\n")
        .file("2024-01-02.csv", "id,n\n3,30\n4,40\n")
        .file("2024-01-03.csv", "id,n\n5,oops\n")
        .build();
    let d = dir.path();
    // Days 1 and 2 are committed, day 3 fails: the run stops with them kept.
    let (_, report) = run_with_report(d, &[], 1);
    assert_eq!(report_model(&report, "daily")["units_done"], 2);
    // The operator fixes day 3; a late file for day 0 arrives meanwhile, and sorts first.
    std::fs::write(d.join("data/2024-01-03.csv"), "id,n\n5,50\n6,60\n").unwrap();
    std::fs::write(d.join("data/2024-01-00.csv"), "id,n\n0,0\n").unwrap();
    let (run, report) = run_with_report(d, &[], 0);
    assert!(run.stderr.contains("resuming run"), "{}", run.stderr);
    let model = report_model(&report, "daily");
    assert_eq!(model["units_total"], 4, "{model}");
    assert_eq!(model["rows_out"], 7, "{model}");
    // What a reader sees: every id once.
    let out = d.join("out/daily");
    let ids = rows(
        &query_output(
            &format!("{}/", out.display()),
            "parquet",
            &[],
            "SELECT CAST(id AS VARCHAR) AS id FROM t",
        )
        .await,
        &["id"],
    );
    let want: Vec<Vec<String>> = (0..=6).map(|i| vec![i.to_string()]).collect();
    assert_eq!(ids, want);
    let manifest = manifest_files_sorted(&out);
    let mut unique = manifest.clone();
    unique.dedup();
    assert_eq!(manifest, unique, "the manifest lists a path twice");
}
