//! Regressions of issue 11 ("nothing lost, for real"): each test reproduces a way a run lost,
//! doubled or wrongly published rows, or misreported what it did.

use crate::support::pipeline::OneModel;
use crate::support::{report_model, run_with_report};

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
