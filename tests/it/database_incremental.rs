//! Incremental models over a database source (`event_time` on a `[sources.*]` with
//! `database = ...`): a nightly run reads its window from the database, not the table, and
//! applies the late rows inside the window.

use crate::support::databases::{Server, postgres};
use crate::support::{read_json, sluice_env};

/// What the database itself says of the events, per UTC day: `day|count|sum`, leaving out
/// the row `skip`.
fn per_day(server: Server, db: &str, skip: i64) -> Vec<String> {
    let sql = match server {
        Server::Postgres => format!(
            "SELECT (at AT TIME ZONE 'UTC')::date, count(*), sum(amount) FROM events \
             WHERE id <> {skip} GROUP BY 1 ORDER BY 1"
        ),
        Server::MariaDb => format!(
            "SET time_zone = '+00:00'; SELECT DATE(at), COUNT(*), SUM(amount) FROM events \
             WHERE id <> {skip} GROUP BY 1 ORDER BY 1"
        ),
    };
    server.sql(db, &sql).lines().map(String::from).collect()
}

/// A pipeline whose source `ev` is table `events` (event time `at`) of the database at
/// `PG_URL`, and whose model `daily` counts and sums it per day, with `model_keys`.
fn events_pipeline(model_keys: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        format!(
            "name = \"events\"\n[databases.app]\nurl = \"${{env:PG_URL}}\"\n\
             [sources.ev]\ndatabase = \"app\"\ntable = \"events\"\nevent_time = \"at\"\n\
             {model_keys}"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("queries/daily.sql"),
        "SELECT CAST(at AS DATE) AS day, COUNT(*) AS n, SUM(amount) AS amount FROM ev GROUP BY 1",
    )
    .unwrap();
    dir
}

/// The model's output, `day|n|amount` per day.
fn output(dir: &std::path::Path) -> Vec<String> {
    let out = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::support::query_output(
            &format!("{}/out/daily/", dir.display()),
            "parquet",
            &[],
            "SELECT CAST(day AS VARCHAR) d, CAST(n AS VARCHAR) n, CAST(amount AS VARCHAR) a \
             FROM t ORDER BY day",
        ));
    crate::support::rows_in_order(&out, &["d", "n", "a"])
        .into_iter()
        .map(|r| r.join("|"))
        .collect()
}

/// Ten days of events in the database; the first run computes every day. Then a new day, a
/// late row inside the 48-hour window and one beyond it arrive: the second run reads the
/// database from the window's first day on (the filter is in the SQL sent), computes the
/// new day and reconciles the touched one, and leaves the day beyond the window as it was.
#[test]
fn an_incremental_model_over_postgres_reads_only_its_window() {
    incremental_reads_only_its_window(Server::Postgres);
}

/// [`an_incremental_model_over_postgres_reads_only_its_window`] on MariaDB (a `TIMESTAMP`
/// event time, its filter pushed as a `TIMESTAMP` literal in UTC).
#[test]
fn an_incremental_model_over_mariadb_reads_only_its_window() {
    incremental_reads_only_its_window(Server::MariaDb);
}

fn incremental_reads_only_its_window(server: Server) {
    let db = server.create_database("incr");
    let pg = server == Server::Postgres;
    server.sql(
        &db,
        if pg {
            "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, amount int8);
             INSERT INTO events (at, amount) SELECT timestamptz '2024-01-01 00:00:00+00' + d * \
               interval '1 day' + i * interval '7 minutes', d * 100 + i \
               FROM generate_series(0, 9) d, generate_series(0, 49) i;"
        } else {
            "CREATE TABLE events (id BIGINT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP(6) NOT NULL, \
               amount BIGINT);
             SET time_zone = '+00:00';
             INSERT INTO events (at, amount) SELECT TIMESTAMP '2024-01-01 00:00:00' + INTERVAL \
               d.seq DAY + INTERVAL i.seq * 7 MINUTE, d.seq * 100 + i.seq \
               FROM seq_0_to_9 d, seq_0_to_49 i;"
        },
    );
    let dir = events_pipeline(
        "[models.daily]\nmaterialized = \"incremental\"\n\
         [models.daily.batches]\nsize = \"day\"\nstart = \"2024-01-01\"\nlate_window = \"48h\"\n",
    );
    let d = dir.path();
    let env = vec![("PG_URL".to_string(), server.url(&db))];
    let first = sluice_env(
        d,
        &[
            "-v",
            "run",
            ".",
            "--as-of",
            "2024-01-11",
            "--report",
            "r.json",
        ],
        &env,
    )
    .expect(0);
    let report = read_json(&d.join("r.json"));
    assert_eq!(
        report["models"][0]["late"]["periods_processed"]
            .as_array()
            .unwrap()
            .len(),
        10,
        "{report}"
    );
    // A first run maps the whole table.
    let select = if pg {
        "SELECT \"at\" FROM \"events\""
    } else {
        "SELECT `at` FROM `events`"
    };
    assert!(
        first
            .stderr
            .lines()
            .any(|l| l.contains("reading database 'app'")
                && l.contains(select)
                && !l.contains("WHERE")),
        "{}",
        first.stderr
    );
    assert_eq!(output(d), per_day(server, &db, 0));

    // A new day, a late row inside the window (Jan 10) and one beyond it (Jan 2).
    server.sql(
        &db,
        if pg {
            "INSERT INTO events (at, amount) SELECT timestamptz '2024-01-11 00:00:00+00' + i * \
               interval '9 minutes', 5000 + i FROM generate_series(0, 29) i;
             INSERT INTO events (at, amount) VALUES ('2024-01-10 23:59:59.999999+00', 7);
             INSERT INTO events (id, at, amount) VALUES (999999, '2024-01-02 12:00:00+00', 9);"
        } else {
            "SET time_zone = '+00:00';
             INSERT INTO events (at, amount) SELECT TIMESTAMP '2024-01-11 00:00:00' + INTERVAL \
               i.seq * 9 MINUTE, 5000 + i.seq FROM seq_0_to_29 i;
             INSERT INTO events (at, amount) VALUES ('2024-01-10 23:59:59.999999', 7);
             INSERT INTO events (id, at, amount) VALUES (999999, '2024-01-02 12:00:00', 9);"
        },
    );
    let second = sluice_env(
        d,
        &[
            "-v",
            "run",
            ".",
            "--as-of",
            "2024-01-12",
            "--report",
            "r.json",
        ],
        &env,
    )
    .expect(0);
    // The window (Jan 10-11) and the new day, from Jan 9 on: not the table.
    let from = if pg {
        "(\"at\" >= TIMESTAMPTZ '2024-01-09 00:00:00.000000+00')"
    } else {
        "(`at` >= TIMESTAMP '2024-01-09 00:00:00.000000')"
    };
    assert!(
        second
            .stderr
            .lines()
            .any(|l| l.contains("reading database 'app'") && l.contains(from)),
        "{}",
        second.stderr
    );
    let report = read_json(&d.join("r.json"));
    let processed: Vec<String> = report["models"][0]["late"]["periods_processed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["period"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(processed, ["2024-01-10", "2024-01-11"], "{report}");
    // Jan 10 has its late row, Jan 11 is new, Jan 2 is as it was (its late row is beyond
    // the window, not read).
    assert_eq!(output(d), per_day(server, &db, 999999));
}

/// A time-batched model (`batches.size`, not incremental) over a database source: one unit
/// per day, each reading its day through the filter sent to the database, together the
/// whole table.
#[test]
fn a_time_batched_model_over_postgres_reads_each_day_in_its_unit() {
    let pg = postgres();
    let db = pg.create_database("batched");
    pg.sql(
        &db,
        "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, amount int8);
         INSERT INTO events (at, amount) SELECT timestamptz '2024-03-01 00:00:00+00' + d * \
           interval '1 day' + i * interval '13 minutes', d * 10 + i \
           FROM generate_series(0, 4) d, generate_series(0, 99) i;",
    );
    let dir = events_pipeline("[models.daily.batches]\nsize = \"day\"\n");
    let d = dir.path();
    let env = vec![("PG_URL".to_string(), pg.url(&db))];
    let run = sluice_env(d, &["-v", "run", ".", "--report", "r.json"], &env).expect(0);
    let report = read_json(&d.join("r.json"));
    assert_eq!(report["models"][0]["units_total"], 5, "{report}");
    // Each unit's read carries its day.
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("reading database 'app'")
                && l.contains("(\"at\" >= TIMESTAMPTZ '2024-03-03 00:00:00.000000+00')")
                && l.contains("(\"at\" < TIMESTAMPTZ '2024-03-04 00:00:00.000000+00')")),
        "{}",
        run.stderr
    );
    assert_eq!(output(d), per_day(Server::Postgres, &db, 0));
}
