//! Work units: batched and unbatched runs agree; a run killed with SIGKILL at several points is
//! finished by rerunning it, with the same output as an uninterrupted run; a unit past its
//! timeout is retried, then fails with a message naming the model, the unit and the attempts.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;

/// A pipeline over TPC-H lineitem (SF 0.01, generated once per test) with the same query run
/// batched by `size` (model `batched`) and as one unit (model `whole`).
fn lineitem_pipeline(size: &str, extra: &str) -> tempfile::TempDir {
    let dir = tpch_pipeline_dir(0.01);
    let sql = "SELECT l_orderkey, l_linenumber, l_returnflag AS flag, l_shipdate, l_quantity * l_extendedprice AS v FROM lineitem WHERE l_quantity > 10";
    std::fs::write(dir.path().join("queries/batched.sql"), sql).unwrap();
    std::fs::write(dir.path().join("queries/whole.sql"), sql).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!(
            "name = \"li\"\n[sources.lineitem]\nlocation = \"data/lineitem/\"\nevent_time = \"l_shipdate\"\n\
             [models.batched.batches]\nsize = \"{size}\"\n{extra}\n\
             [models.batched.sink]\npartition_by = [\"flag\"]\n[models.whole.sink]\npartition_by = [\"flag\"]\n"
        ),
    )
    .unwrap();
    dir
}

/// Every row of an output, sorted (order-insensitive content), and its row count.
async fn content(dir: &Path, model: &str) -> Vec<Vec<String>> {
    let b = query_output(
        &format!("{}/out/{model}/", dir.display()),
        "parquet",
        &["flag"],
        "SELECT CAST(l_orderkey AS VARCHAR) AS k, CAST(l_linenumber AS VARCHAR) AS n, flag, CAST(l_shipdate AS VARCHAR) AS d, CAST(v AS VARCHAR) AS v FROM t",
    )
    .await;
    rows(&b, &["k", "n", "flag", "d", "v"])
}

#[tokio::test]
async fn batched_and_unbatched_runs_give_identical_results() {
    let dir = lineitem_pipeline("month", "max_concurrent_units = 2");
    let (_, r) = run_with_report(dir.path(), &[], 0);
    let batched = content(dir.path(), "batched").await;
    let whole = content(dir.path(), "whole").await;
    assert!(!batched.is_empty());
    assert_eq!(batched, whole);
    // Independent count: lines with quantity > 10, straight from the generated files.
    let want = query_output(
        &format!("{}/data/lineitem/", dir.path().display()),
        "parquet",
        &[],
        "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t WHERE l_quantity > 10",
    )
    .await;
    assert_eq!(rows(&want, &["n"])[0][0], batched.len().to_string());
    let m = report_model(&r, "batched");
    // One unit per month from the first ship date's month to the last one's, empty or not.
    let span = query_output(
        &format!("{}/data/lineitem/", dir.path().display()),
        "parquet",
        &[],
        "SELECT CAST((date_part('year', MAX(l_shipdate)) * 12 + date_part('month', MAX(l_shipdate)))
                   - (date_part('year', MIN(l_shipdate)) * 12 + date_part('month', MIN(l_shipdate))) + 1 AS BIGINT) AS months FROM t",
    )
    .await;
    let months: u64 = rows(&span, &["months"])[0][0].parse().unwrap();
    assert!((80..=84).contains(&months), "{months}");
    assert_eq!(m["units_total"], months);
    assert_eq!(m["units_done"], months);
    let units = m["units"].as_array().unwrap();
    assert_eq!(units[0]["unit"], "1992-01");
    let out: u64 = units.iter().map(|u| u["rows_out"].as_u64().unwrap()).sum();
    assert_eq!(out, batched.len() as u64);
    assert!(
        units
            .iter()
            .all(|u| u["status"] == "done" && u["attempts"] == 1)
    );
}

#[tokio::test]
async fn a_run_killed_at_any_point_is_finished_by_running_it_again() {
    // Kill after a few units, after many, and while publishing (right after the last unit).
    for kill_after in [2usize, 30, 80] {
        let dir = lineitem_pipeline("month", "max_concurrent_units = 1");
        let mut child = spawn_sluice(dir.path(), &["-q", "run", ".", "--select", "batched"]);
        let staging = dir.path().join("out/_sluice_staging/batched");
        let start = Instant::now();
        let finished = loop {
            let staged_units = std::fs::read_dir(&staging)
                .ok()
                .and_then(|mut runs| runs.next())
                .and_then(|r| r.ok())
                .and_then(|run| std::fs::read_dir(run.path()).ok())
                .map_or(0, |units| units.count());
            let finished = child.try_wait().unwrap().is_some();
            if staged_units > kill_after || finished {
                break finished;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the run did not progress"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        child.kill().ok();
        child.wait().unwrap();

        let rerun = sluice(dir.path(), &["run", ".", "--select", "batched"]).expect(0);
        sluice(dir.path(), &["run", ".", "--select", "whole"]).expect(0);
        let batched = content(dir.path(), "batched").await;
        assert_eq!(
            batched,
            content(dir.path(), "whole").await,
            "kill after {kill_after}"
        );
        // No duplicates (every (order, line) once) and no leftovers.
        let mut keys: Vec<_> = batched
            .iter()
            .map(|r| (r[0].clone(), r[1].clone()))
            .collect();
        keys.dedup();
        assert_eq!(keys.len(), batched.len());
        let out = dir.path().join("out/batched");
        assert!(
            !dir.path().join("out/_sluice_staging").exists(),
            "staging left behind"
        );
        assert_eq!(
            manifest_files_sorted(&out),
            data_files(files_under(&out)),
            "files on disk are exactly the manifest's"
        );
        if !finished {
            // Killed mid-run: the rerun resumed it, keeping the units it had committed.
            assert!(
                rerun.stderr.contains("resuming run"),
                "kill after {kill_after}: {}",
                rerun.stderr
            );
            let runs = sluice(dir.path(), &["runs", ".", "--json"]).expect(0);
            let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
            assert_eq!(runs[0]["status"], "success", "{runs}");
        }
    }
}

#[test]
fn a_unit_past_its_timeout_is_retried_then_fails_with_a_clear_message() {
    let dir = lineitem_pipeline(
        "year",
        "unit_timeout = \"1ms\"\nretries = 1\nmax_concurrent_units = 1",
    );
    let before = dir.path().join("out/batched");
    let run = sluice(dir.path(), &["run", ".", "--select", "batched"]).expect(1);
    assert!(
        run.stderr
            .contains("model 'batched' failed: unit 1992 failed after 2 attempts: timed out after"),
        "{}",
        run.stderr
    );
    assert!(!before.join("_MANIFEST").exists(), "nothing was published");
    // The failed run staged nothing to keep for a resumed run: its staging and lease went.
    let area = dir.path().join("out/_sluice_staging");
    assert!(
        !area.exists() || files_under(&area).is_empty(),
        "{:?}",
        files_under(&area)
    );
}

#[tokio::test]
async fn units_by_file_read_only_their_files_and_equal_one_unit() {
    let sql = "SELECT order_id, customer_id, UPPER(product) AS product, quantity, dt FROM orders WHERE status <> 'cancelled'";
    let dir = shop_with(
        &[("by_file", sql), ("by_pair", sql), ("one_unit", sql)],
        "[models.by_file.batches]\nby = \"file\"\n[models.by_pair.batches]\nby = \"file\"\nfiles_per_unit = 3\n\
         [models.by_file.sink]\npartition_by = [\"dt\"]\n[models.by_pair.sink]\npartition_by = [\"dt\"]\n[models.one_unit.sink]\npartition_by = [\"dt\"]\n",
    );
    let (_, r) = run_with_report(dir.path(), &["--select", "by_file,by_pair,one_unit"], 0);
    let read = |m: &str| {
        let out = format!("{}/out/{m}/", dir.path().display());
        async move {
            let b = query_output(
                &out,
                "parquet",
                &["dt"],
                "SELECT CAST(order_id AS VARCHAR) AS id, product, dt FROM t",
            )
            .await;
            rows(&b, &["id", "product", "dt"])
        }
    };
    let one = read("one_unit").await;
    assert_eq!(read("by_file").await, one);
    assert_eq!(read("by_pair").await, one);
    // Independent: the non-cancelled raw rows.
    let raw = raw_orders(dir.path())
        .iter()
        .filter(|o| o.status != "cancelled")
        .count();
    assert_eq!(one.len(), raw);
    let model = |n: &str| report_model(&r, n);
    let by_file = model("by_file");
    assert_eq!(by_file["units_total"], 4);
    // Each unit read only its own file: the raw rows of that day.
    for u in by_file["units"].as_array().unwrap() {
        let day = u["unit"]
            .as_str()
            .unwrap()
            .trim_start_matches("dt=")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let n = raw_orders(dir.path())
            .iter()
            .filter(|o| o.dt == day)
            .count();
        assert_eq!(u["rows_in"].as_u64().unwrap(), n as u64, "{u}");
    }
    assert_eq!(model("by_pair")["units_total"], 2);
    let plan = sluice(dir.path(), &["plan", ".", "--select", "by_file"]).expect(0);
    assert!(
        plan.stdout.contains("units:  4 (by file, 1 a unit)"),
        "{}",
        plan.stdout
    );

    // A model over two sources cannot be split by file.
    std::fs::write(
        dir.path().join("queries/by_file.sql"),
        "SELECT o.order_id, c.country, o.dt FROM orders o JOIN customers c ON c.customer_id = o.customer_id",
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", ".", "--select", "by_file"]).expect(2);
    assert!(
        run.stderr.contains(
            "by = \"file\" needs exactly one input source; the model reads customers, orders"
        ),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_run_killed_while_publishing_is_finished_by_running_it_again() {
    // Tiny files make the publish (moving every staged file to its final key) long enough to
    // be caught: kill as soon as a file has reached its final place but before the manifest.
    let dir = lineitem_pipeline("year", "max_concurrent_units = 2");
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace(
            "[models.batched.sink]\n",
            "[models.batched.sink]\ntarget_rows_per_file = 40\n",
        )
    });
    let out = dir.path().join("out/batched");
    let mut caught = false;
    // The window is a few milliseconds: on a loaded machine it takes a few tries.
    for _ in 0..8 {
        let mut child = spawn_sluice(dir.path(), &["-q", "run", ".", "--select", "batched"]);
        let start = Instant::now();
        loop {
            let published = ["A", "N", "R"].iter().any(|f| {
                std::fs::read_dir(out.join(format!("flag={f}")))
                    .is_ok_and(|mut d| d.next().is_some())
            });
            if published && !out.join("_MANIFEST").exists() {
                child.kill().unwrap();
                caught = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the run did not progress"
            );
        }
        child.wait().unwrap();
        if caught {
            break;
        }
        // Missed the window (the run finished): start over for another try.
        std::fs::remove_dir_all(&out).unwrap();
        std::fs::remove_dir_all(dir.path().join(".sluice")).unwrap();
    }
    assert!(
        caught,
        "never caught the run between moving files and writing the manifest"
    );
    let rerun = sluice(dir.path(), &["run", ".", "--select", "batched"]).expect(0);
    assert!(rerun.stderr.contains("resuming run"), "{}", rerun.stderr);
    sluice(dir.path(), &["run", ".", "--select", "whole"]).expect(0);
    let batched = content(dir.path(), "batched").await;
    assert_eq!(batched, content(dir.path(), "whole").await);
    assert_eq!(
        manifest_files_sorted(&out),
        data_files(files_under(&out)),
        "files on disk are exactly the manifest's"
    );
    assert!(!dir.path().join("out/_sluice_staging").exists());
}

#[tokio::test]
async fn text_event_times_batch_without_losing_the_first_day_of_a_period() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    // Event times as text, date-only and with a time, across three days and two months.
    let mut csv = String::from("id,at\n");
    let times = [
        "2024-01-31",
        "2024-01-31 23:59:59",
        "2024-02-01",
        "2024-02-01 00:00:00",
        "2024-02-01 12:00:00",
        "2024-02-02",
    ];
    for (i, t) in times.iter().enumerate() {
        csv.push_str(&format!("{i},{t}\n"));
    }
    std::fs::write(dir.path().join("events.csv"), csv).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "[sources.events]\nlocation = \"events.csv\"\nschema = \"id BIGINT, at VARCHAR\"\nevent_time = \"at\"\n\
         [models.daily.batches]\nsize = \"day\"\n[models.monthly.batches]\nsize = \"month\"\n",
    )
    .unwrap();
    for m in ["daily", "monthly"] {
        std::fs::write(
            dir.path().join(format!("queries/{m}.sql")),
            "SELECT id, at FROM events",
        )
        .unwrap();
    }
    let (_, r) = run_with_report(dir.path(), &[], 0);
    for m in ["daily", "monthly"] {
        let got: Vec<String> = output_rows(dir.path(), m, &["id"])
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .collect();
        assert_eq!(
            got,
            vec!["0", "1", "2", "3", "4", "5"],
            "{m}: every row exactly once"
        );
    }
    let daily = report_model(&r, "daily");
    let per_day: Vec<(String, u64)> = daily["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["unit"].as_str().unwrap().to_string(),
                u["rows_out"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        per_day,
        vec![
            ("2024-01-31".to_string(), 2),
            ("2024-02-01".to_string(), 3),
            ("2024-02-02".to_string(), 1)
        ]
    );
}

/// Rows in periods outside an explicit `batches` start..end are not read, and the run says
/// how many, per source (before: silently).
#[test]
fn rows_outside_batches_start_and_end_are_counted_not_silently_dropped() {
    let dir = OneModel::new("events", "daily")
        .source_toml("format = \"csv\"\nevent_time = \"ts\"")
        .sink_toml(
            "[models.daily.batches]\nsize = \"day\"\nstart = \"2024-01-02\"\nend = \"2024-01-03\"",
        )
        .file(
            "e.csv",
            "id,ts\n1,2024-01-01T10:00:00\n2,2024-01-02T10:00:00\n3,2024-01-02T11:00:00\n4,2024-01-05T00:00:00\n5,2024-01-06T00:00:00\n",
        )
        .build();
    let run = sluice(dir.path(), &["run", "."]).expect(0);
    assert!(
        run.stderr
            .contains("3 row(s) of source 'events' lie in periods outside batches start..end"),
        "{}",
        run.stderr
    );
    let (rows, _) = manifest_rows(&dir.path().join("out/daily"));
    assert_eq!(rows, 2);
    let plan = sluice(dir.path(), &["plan", "."]).expect(0);
    assert!(plan.stderr.contains("3 row(s)"), "{}", plan.stderr);
}

/// A file holding rows of many units (one big unsorted CSV, as an export gives) is read once
/// and its rows routed to the units by period, not read whole by each of them; files of one
/// period are still read by their unit alone. The output equals sums computed from the rows
/// written; a bad row in the big file is set aside once, and every good row counted once.
#[tokio::test]
async fn a_file_holding_rows_of_many_units_is_read_once_and_routed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    // 20 days of rows in random order (a seeded generator), plus one file each for days 3
    // and 15.
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut want: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut big = String::from("id,ts,amount\n");
    for id in 0..4000u64 {
        let (day, secs, amount) = (next() % 20 + 1, next() % 86_400, next() % 1000);
        let ts = format!(
            "2024-01-{day:02} {:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        );
        big.push_str(&format!("{id},{ts},{amount}\n"));
        let e = want.entry(format!("2024-01-{day:02}")).or_default();
        e.0 += 1;
        e.1 += amount;
        if id == 1234 {
            big.push_str("99999,2024-01-07 10:00:00,not a number\n");
        }
    }
    std::fs::write(dir.path().join("data/export.csv"), big).unwrap();
    for day in [3u64, 15] {
        let mut one = String::from("id,ts,amount\n");
        for i in 0..50u64 {
            one.push_str(&format!(
                "{},2024-01-{day:02} 12:00:{:02},{i}\n",
                10_000 * day + i,
                i
            ));
            let e = want.entry(format!("2024-01-{day:02}")).or_default();
            e.0 += 1;
            e.1 += i;
        }
        std::fs::write(dir.path().join(format!("data/day-{day}.csv")), one).unwrap();
    }
    std::fs::write(
        dir.path().join("sluice.toml"),
        "name = \"routed\"\n[sources.events]\nlocation = \"data/\"\nformat = \"csv\"\n\
         schema = \"id BIGINT, ts TIMESTAMP, amount BIGINT\"\nevent_time = \"ts\"\n\
         on_bad_rows = \"quarantine\"\n\
         [models.daily.batches]\nsize = \"day\"\nmax_concurrent_units = 3\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/daily.sql"),
        "SELECT CAST(ts AS DATE) AS day, COUNT(*) AS n, SUM(amount) AS amount FROM events GROUP BY 1",
    )
    .unwrap();
    let (_, r) = run_with_report(dir.path(), &[], 0);
    let m = report_model(&r, "daily");
    assert_eq!(m["units_total"], 20, "{m}");
    assert_eq!(
        m["routed"]["files"], 1,
        "only the export spans many units: {m}"
    );
    assert_eq!(m["routed"]["rows"], 4000, "{m}");
    assert_eq!(m["routed"]["units"], 20, "{m}");
    assert_eq!(m["rows_rejected"], 1, "the bad row, once: {m}");
    assert_eq!(m["rows_in"], 4000 + 100 + 1, "{m}");
    let got = query_output(
        &format!("{}/out/daily/", dir.path().display()),
        "parquet",
        &[],
        "SELECT CAST(day AS VARCHAR) AS d, CAST(n AS VARCHAR) AS n, CAST(amount AS VARCHAR) AS a FROM t",
    )
    .await;
    let want: Vec<Vec<String>> = want
        .into_iter()
        .map(|(d, (n, a))| vec![d, n.to_string(), a.to_string()])
        .collect();
    assert_eq!(rows(&got, &["d", "n", "a"]), want);
}

/// Units' small files are merged at publish, per partition folder: 20 daily units over a
/// three-partition sink publish three files, not sixty, holding every row once. A sorted
/// result keeps each unit's files (merging would interleave them).
#[tokio::test]
async fn small_files_of_many_units_are_merged_per_partition_at_publish() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    let mut want = Vec::new();
    for day in 1..=20u64 {
        let mut csv = String::from("id,ts,g\n");
        for i in 0..30u64 {
            let id = day * 100 + i;
            let g = ["a", "b", "c"][(id % 3) as usize];
            csv.push_str(&format!("{id},2024-02-{day:02} 10:{i:02}:00,{g}\n"));
            want.push(vec![id.to_string(), g.to_string()]);
        }
        std::fs::write(dir.path().join(format!("data/{day:02}.csv")), csv).unwrap();
    }
    want.sort();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "name = \"compact\"\n[sources.events]\nlocation = \"data/\"\nevent_time = \"ts\"\n\
         [models.copy.batches]\nsize = \"day\"\n[models.copy.sink]\npartition_by = [\"g\"]\n\
         [models.sorted.batches]\nsize = \"day\"\n[models.sorted.sink]\npartition_by = [\"g\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/copy.sql"),
        "SELECT id, ts, g FROM events",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/sorted.sql"),
        "SELECT id, ts, g FROM events ORDER BY id",
    )
    .unwrap();
    let (_, r) = run_with_report(dir.path(), &[], 0);
    let m = report_model(&r, "copy");
    assert_eq!(m["units_total"], 20, "{m}");
    assert_eq!(m["compacted"]["files_in"], 60, "{m}");
    assert_eq!(m["compacted"]["files_out"], 3, "{m}");
    let parquet = |model: &str| {
        files_under(&dir.path().join("out").join(model))
            .into_iter()
            .filter(|f| f.ends_with(".parquet"))
            .count()
    };
    assert_eq!(parquet("copy"), 3);
    assert_eq!(m["rows_out"], 600, "{m}");
    let got = query_output(
        &format!("{}/out/copy/", dir.path().display()),
        "parquet",
        &["g"],
        "SELECT CAST(id AS VARCHAR) AS id, g FROM t",
    )
    .await;
    assert_eq!(rows(&got, &["id", "g"]), want);
    let s = report_model(&r, "sorted");
    assert!(s.get("compacted").is_none(), "{s}");
    assert_eq!(parquet("sorted"), 60);
    // The manifest names the units' files each merged file replaces.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/copy/_MANIFEST")).unwrap(),
    )
    .unwrap();
    let merged: usize = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["merged"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(merged, 60);
}
