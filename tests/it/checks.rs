//! Checks that gate the publish: each kind passing and failing on the shop pipeline's
//! `daily_revenue` (4 days, revenue per day), with error and warn severity; a failed error
//! check publishes nothing and leaves the previous output as it was.

use crate::support::*;

/// The shop pipeline, run once, with `checks` appended to its sluice.toml; and a snapshot
/// of `model`'s output.
fn ran_shop_with_checks(
    model: &str,
    checks: &str,
) -> (
    tempfile::TempDir,
    std::collections::BTreeMap<String, Vec<u8>>,
) {
    let (dir, _) = ran_shop();
    append_toml(dir.path(), checks);
    let before = snapshot(&dir.path().join("out").join(model));
    (dir, before)
}

#[test]
fn each_check_kind_passes_on_good_output_and_the_model_publishes() {
    let (dir, before) = ran_shop_with_checks(
        "daily_revenue",
        r#"
[[models.daily_revenue.checks]]
not_null = ["order_date", "revenue"]
[[models.daily_revenue.checks]]
unique = "order_date"
[[models.daily_revenue.checks]]
accepted_values = { column = "order_date", values = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"] }
[[models.daily_revenue.checks]]
row_count = { min = 4, max = 4 }
[[models.daily_revenue.checks]]
expression = "revenue > 0 AND orders >= 1"
[[models.daily_revenue.checks]]
sql = "SELECT * FROM daily_revenue WHERE items < orders"
"#,
    );
    let (_, r) = run_with_report(dir.path(), &[], 0);
    let m = report_model(&r, "daily_revenue");
    let checks = m["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 6);
    for c in checks {
        assert_eq!(c["status"], "pass", "{c}");
    }
    // Published anew (a new run id in the file names).
    let after = snapshot(&dir.path().join("out/daily_revenue"));
    assert_ne!(data_files(before.keys()), data_files(after.keys()));
}

#[test]
fn a_failed_error_check_publishes_nothing_and_a_warn_check_only_reports() {
    let cases = [
        (
            "daily_revenue",
            r#"not_null = ["order_date", "nothing_here"]"#,
            "not_null(order_date, nothing_here)",
        ),
        (
            "revenue_by_country",
            "unique = \"country\"",
            "unique(country)",
        ),
        (
            "daily_revenue",
            r#"accepted_values = { column = "order_date", values = ["2024-01-01"] }"#,
            "accepted_values(order_date)",
        ),
        (
            "daily_revenue",
            "row_count = { max = 3 }",
            "row_count(max 3)",
        ),
        (
            "daily_revenue",
            "expression = \"revenue < 100\"",
            "expression(revenue < 100)",
        ),
        (
            "daily_revenue",
            "sql = \"SELECT * FROM daily_revenue WHERE orders > 1\"",
            "sql",
        ),
    ];
    for (model, check, kind) in cases {
        let (dir, before) =
            ran_shop_with_checks(model, &format!("[[models.{model}.checks]]\n{check}\n"));
        let (run, r) = run_with_report(dir.path(), &[], 1);
        assert!(
            run.stderr.contains(&format!("model '{model}' failed")),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(kind), "{kind}: {}", run.stderr);
        assert!(run.stderr.contains("nothing published"), "{}", run.stderr);
        // The previous output, byte for byte.
        let (before, after) = (
            published(&before),
            published(&snapshot(&dir.path().join("out").join(model))),
        );
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "{kind}"
        );
        for (f, bytes) in &before {
            assert_eq!(bytes, &after[f], "{kind}: {f} changed");
        }
        let m = report_model(&r, model);
        assert_eq!(m["status"], "failed");
        let status = &m["checks"][0]["status"];
        assert!(status == "fail" || status == "error", "{kind}: {m}");

        // The same check as a warning: reported, and the output published.
        edit_file(&dir.path().join("sluice.toml"), |toml| {
            toml.replace(check, &format!("{check}\nseverity = \"warn\""))
        });
        if kind.contains("nothing_here") {
            // A check that cannot run (unknown column) blocks whatever its severity.
            run_with_report(dir.path(), &[], 1);
            continue;
        }
        let (_, r) = run_with_report(dir.path(), &[], 0);
        let m = report_model(&r, model);
        assert_eq!(m["status"], "success", "{kind}: {m}");
        assert_eq!(m["checks"][0]["status"], "warn", "{kind}: {m}");
        assert!(
            m["checks"][0]["failing_rows"].as_u64().unwrap() > 0,
            "{kind}: {m}"
        );
    }
}

#[test]
fn malformed_checks_are_refused_with_their_key() {
    for (check, expected) in [
        ("not_null = \"a\"\nunique = \"b\"", "one kind per check"),
        ("severity = \"warn\"", "a check needs one of"),
        (
            "not_null = \"a\"\nseverity = \"fatal\"",
            "expected \"error\" or \"warn\"",
        ),
        ("row_count = {}", "needs min, max or both"),
        ("not_null = []", "needs at least one column"),
        ("nonsense = 1", "unknown field `nonsense`"),
    ] {
        let dir = shop_with(&[], &format!("[[models.daily_revenue.checks]]\n{check}\n"));
        let run = sluice(dir.path(), &["run", "."]).expect(2);
        assert!(run.stderr.contains(expected), "{check}: {}", run.stderr);
        // The file and the line of the check's table (or of its bad value).
        let line = std::fs::read_to_string(dir.path().join("sluice.toml"))
            .unwrap()
            .lines()
            .position(|l| l == "[[models.daily_revenue.checks]]")
            .unwrap()
            + 1;
        assert!(
            (line..line + 3).any(|l| run.stderr.contains(&format!("sluice.toml:{l}:"))),
            "{check}: {}",
            run.stderr
        );
    }
}

#[test]
fn check_results_are_in_the_state_store_and_sluice_check_reruns_them() {
    let (dir, _) = ran_shop_with_checks(
        "daily_revenue",
        "[[models.daily_revenue.checks]]\nunique = \"order_date\"\n\
         [[models.daily_revenue.checks]]\nrow_count = { min = 5 }\nseverity = \"warn\"\n",
    );
    let (_, r) = run_with_report(dir.path(), &[], 0);
    let run_id = r["run_id"].as_str().unwrap().to_string();
    let state = sluice::state::StateStore::open(&dir.path().join(".sluice/state.db")).unwrap();
    assert_eq!(
        state.checks(&run_id, "daily_revenue").unwrap(),
        vec![
            ("unique(order_date)".to_string(), "pass".to_string(), 0),
            ("row_count(min 5)".to_string(), "warn".to_string(), 4),
        ]
    );

    // `sluice check` on the published output: a warning only, exit 0.
    let check = sluice(dir.path(), &["check", "."]).expect(0);
    assert!(
        check
            .stdout
            .contains("2 checks: 1 passed, 0 failed, 1 warnings"),
        "{}",
        check.stdout
    );
    // Made an error, the same check fails the command (exit 1), in JSON too.
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace("severity = \"warn\"\n", "")
    });
    let check = sluice(dir.path(), &["check", ".", "--json"]).expect(1);
    let json: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(json[0][0], "daily_revenue");
    assert_eq!(json[0][1][1]["status"], "fail");
    assert_eq!(json[0][1][1]["failing_rows"], 4);
}

#[test]
fn in_append_mode_checks_see_the_kept_rows_beside_the_new_ones() {
    // daily_revenue appended to: each forced run adds the same 4 days again.
    let append = |checks: &str| {
        let dir = pipeline_copy("shop");
        edit_file(&dir.path().join("sluice.toml"), |toml| {
            toml.replace(
                "partition_by = [\"order_date\"]",
                "partition_by = [\"order_date\"]\nmode = \"append\"",
            )
        });
        sluice(dir.path(), &["run", ".", "--select", "daily_revenue"]).expect(0);
        append_toml(dir.path(), checks);
        dir
    };
    // The same append again is skipped (issue 11 #7) unless asked for: --force-append.
    let again = ["run", ".", "--select", "daily_revenue", "--force-append"];
    // 4 rows kept + 4 staged: a count of 8 passes (the staged rows alone are 4).
    let dir = append("[[models.daily_revenue.checks]]\nrow_count = { min = 8, max = 8 }\n");
    sluice(dir.path(), &again).expect(0);
    assert_eq!(manifest_rows(&dir.path().join("out/daily_revenue")).0, 8);

    // The new days repeat the kept ones: unique fails, and nothing is published.
    let dir = append("[[models.daily_revenue.checks]]\nunique = \"order_date\"\n");
    let before = snapshot(&dir.path().join("out/daily_revenue"));
    let run = sluice(dir.path(), &again).expect(1);
    assert!(run.stderr.contains("unique"), "{}", run.stderr);
    let after = snapshot(&dir.path().join("out/daily_revenue"));
    assert_eq!(published(&after), published(&before));
    assert_eq!(manifest_rows(&dir.path().join("out/daily_revenue")).0, 4);
}
