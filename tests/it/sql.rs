//! `sluice sql`: printing, and writing with every sink mode.

use crate::support::*;

#[test]
fn prints_a_result_table() {
    let dir = tempfile::tempdir().unwrap();
    let run = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT product, COUNT(*) AS n FROM o GROUP BY product ORDER BY product",
            "--table",
            &orders_arg(),
        ],
    )
    .expect(0);
    let (by_product, _) = raw_counts();
    for (product, n) in &by_product {
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(&format!(" {product} ")))
            .unwrap_or_else(|| panic!("{}", run.stdout));
        assert!(line.contains(&format!(" {n} ")), "{line}");
    }
    assert!(
        run.stdout.contains(&format!("{} row(s)", by_product.len())),
        "{}",
        run.stdout
    );
}

#[test]
fn reads_a_sql_file_and_limits_printed_rows() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("q.sql"), "SELECT * FROM o").unwrap();
    let run = sluice(
        dir.path(),
        &["sql", "q.sql", "--table", &orders_arg(), "--max-rows", "5"],
    )
    .expect(0);
    assert!(
        run.stdout.contains("200 row(s) (first 5 shown)"),
        "{}",
        run.stdout
    );
}

/// A result of no rows is printed as its columns' header and "0 row(s)".
#[test]
fn a_result_of_no_rows_prints_its_columns() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT 1 AS first_column, 'x' AS second_column WHERE false";
    let run = sluice(dir.path(), &["sql", "-e", sql]).expect(0);
    let header = run.stdout.lines().nth(1).unwrap_or_default();
    assert!(
        header.contains("first_column") && header.contains("second_column"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("0 row(s)"), "{}", run.stdout);
}

/// A temporary folder that cannot take a spill folder (a container's read-only root) fails
/// nothing that does not spill when no `spill_dir` is set; a `spill_dir` that cannot be
/// made is refused, naming it.
#[test]
fn an_unwritable_temporary_folder_fails_only_what_spills() {
    let dir = tempfile::tempdir().unwrap();
    // (Not a folder, whoever runs the test.)
    let tmp = [("TMPDIR".to_string(), "/dev/null/tmp".to_string())];
    let run = sluice_env(dir.path(), &["sql", "-e", "SELECT 41 + 1 AS answer"], &tmp).expect(0);
    assert!(run.stdout.contains("| 42 "), "{}", run.stdout);
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        "name = \"p\"\n[settings]\nspill_dir = \"/dev/null/spill\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("queries/m.sql"), "SELECT 1 AS x").unwrap();
    let run = sluice(dir.path(), &["run", "."]);
    assert!(run.code != 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("cannot create the spill folder /dev/null/spill (spill_dir)"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn rolls_files_at_the_target_row_count() {
    let t = Target::local();
    t.write(
        "SELECT * FROM o",
        &["--target-rows-per-file", "60", "--format", "csv"],
    )
    .expect(0);
    let m = read_json(&t.dir.path().join("out/_MANIFEST"));
    let files = m["files"].as_array().unwrap();
    assert!(files.len() >= 2, "{m}");
    let total: u64 = files.iter().map(|f| f["rows"].as_u64().unwrap()).sum();
    assert_eq!(total, 200);
    assert_eq!(t.count("csv", &[]).await, 200);
}

#[tokio::test]
async fn writes_json_lines() {
    let t = Target::local();
    t.write(
        "SELECT product, COUNT(*) AS n FROM o GROUP BY product",
        &["--format", "json"],
    )
    .expect(0);
    let b = t
        .query(
            "json",
            &[],
            "SELECT product, CAST(n AS VARCHAR) AS n FROM t",
        )
        .await;
    let (by_product, _) = raw_counts();
    let want: Vec<Vec<String>> = by_product
        .iter()
        .map(|(p, n)| vec![p.clone(), n.to_string()])
        .collect();
    assert_eq!(rows(&b, &["product", "n"]), want);
}

/// A static file server (Python's http.server) on 127.0.0.1, killed on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn serve(dir: &std::path::Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn reads_files_over_http() {
    let server = HttpServer::serve(&testdata("shop").join("data"));
    let dir = tempfile::tempdir().unwrap();
    let url = format!("c=http://127.0.0.1:{}/customers.jsonl", server.port);
    let run = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT COUNT(*) AS n, COUNT(DISTINCT country) AS c FROM c",
            "--table",
            &url,
        ],
    )
    .expect(0);
    // customers.jsonl: 40 customers over 5 countries (generate.py).
    let counts = read_json(&testdata("shop").join("expected/counts.json"));
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("| ") && !l.contains(" n "))
        .unwrap();
    assert_eq!(
        line.split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>(),
        vec![counts["customers"].to_string(), "5".to_string()]
    );
}

/// `--set`: a DataFusion option reaches the session, `sluice.NAME=false` leaves one of
/// sluice's rewrites out of the plan, and a key or value that cannot be set is a usage error
/// naming it.
#[test]
fn set_reaches_datafusion_and_turns_rewrites_off() {
    let dir = tempfile::tempdir().unwrap();
    let setting = "SELECT value FROM information_schema.df_settings \
                   WHERE name = 'datafusion.execution.batch_size'";
    let default = sluice(dir.path(), &["sql", "-e", setting]).expect(0);
    assert!(!default.stdout.contains("1234"), "{}", default.stdout);
    let set = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            setting,
            "--set",
            "datafusion.execution.batch_size=1234",
        ],
    )
    .expect(0);
    assert!(set.stdout.contains(" 1234 "), "{}", set.stdout);

    // Which rules ran is in EXPLAIN VERBOSE, a line per rule.
    let explain = "EXPLAIN VERBOSE SELECT CAST(a AS DECIMAL(12, 2)) * CAST(b AS DECIMAL(12, 2)) \
                   FROM (VALUES (1.5, 2.5), (3.0, 4.0)) AS t(a, b)";
    let rules = |extra: &[&str]| {
        let mut args = vec!["sql", "-e", explain, "--max-rows", "10000"];
        args.extend_from_slice(extra);
        sluice(dir.path(), &args).expect(0).stdout
    };
    let on = rules(&[]);
    assert!(
        on.contains("after sluice_faster_decimal_arithmetic"),
        "{on}"
    );
    let off = rules(&["--set", "sluice.decimal_arith=false"]);
    assert!(!off.contains("sluice_faster_decimal_arithmetic"), "{off}");
    assert!(off.contains("after SanityCheckPlan"), "{off}");
    let again = rules(&[
        "--set",
        "sluice.decimal_arith=false",
        "--set",
        "sluice.decimal_arith= true",
    ]);
    assert!(
        again.contains("after sluice_faster_decimal_arithmetic"),
        "{again}"
    );

    for (set, named) in [
        (
            "datafusion.execution.no_such_option=1",
            "datafusion.execution.no_such_option",
        ),
        (
            "datafusion.execution.batch_size=many",
            "datafusion.execution.batch_size",
        ),
        ("sluice.no_such_rewrite=false", "decimal_arith"),
        ("sluice.decimal_arith=maybe", "true or false"),
        ("datafusion.execution.target_partitions=8", "threads"),
        (
            "datafusion.execution.parquet.compression=snappy",
            "on the sink",
        ),
        ("datafusion.runtime.memory_limit=1G", "memory_limit"),
    ] {
        let run = sluice(dir.path(), &["sql", "-e", "SELECT 1", "--set", set]).expect(2);
        assert!(run.stderr.contains(named), "{set}: {}", run.stderr);
    }
}
