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

/// A run that failed after one of its periods was committed is resumed by the same command;
/// rows of that period changed in between (a late row): the resumed run computes it again
/// (the period's rows are its version), so the output is what the database holds, and a
/// later run has nothing left to apply.
#[test]
fn a_resumed_run_recomputes_a_committed_period_whose_database_rows_changed() {
    let pg = postgres();
    let db = pg.create_database("incr_resume");
    pg.sql(
        &db,
        "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, amount int8);
         INSERT INTO events (at, amount) SELECT timestamptz '2024-01-01 00:00:00+00' + d * \
           interval '1 day' + i * interval '7 minutes', d * 100 + i \
           FROM generate_series(0, 9) d, generate_series(0, 49) i;",
    );
    let dir = events_pipeline(
        "[models.daily]\nmaterialized = \"incremental\"\n\
         [models.daily.batches]\nsize = \"day\"\nstart = \"2024-01-01\"\nlate_window = \"48h\"\n\
         retries = 0\n",
    );
    let d = dir.path();
    // A row of amount 666 fails its period's unit.
    std::fs::write(
        d.join("queries/daily.sql"),
        "SELECT CAST(at AS DATE) AS day, COUNT(*) AS n, SUM(CAST(CASE WHEN amount = 666 THEN \
         'boom' ELSE CAST(amount AS VARCHAR) END AS BIGINT)) AS amount FROM ev GROUP BY 1",
    )
    .unwrap();
    let env = vec![("PG_URL".to_string(), pg.url(&db))];
    sluice_env(d, &["run", ".", "--as-of", "2024-01-11"], &env).expect(0);
    pg.sql(
        &db,
        "INSERT INTO events (at, amount) VALUES ('2024-01-11 08:00+00', 666), \
           ('2024-01-11 09:00+00', 5), ('2024-01-10 12:00+00', 1000);",
    );
    let failed = sluice_env(d, &["run", ".", "--as-of", "2024-01-12"], &env).expect(1);
    assert!(failed.stderr.contains("boom"), "{}", failed.stderr);
    // Jan 10 was committed; its rows change, the poison goes.
    pg.sql(
        &db,
        "DELETE FROM events WHERE amount = 666; \
         INSERT INTO events (at, amount) VALUES ('2024-01-10 13:00+00', 2000);",
    );
    let resumed = sluice_env(d, &["-v", "run", ".", "--as-of", "2024-01-12"], &env).expect(0);
    assert!(resumed.stderr.contains("resuming"), "{}", resumed.stderr);
    assert_eq!(output(d), per_day(Server::Postgres, &db, 0));
    sluice_env(
        d,
        &["run", ".", "--as-of", "2024-01-12", "--report", "r.json"],
        &env,
    )
    .expect(0);
    let report = read_json(&d.join("r.json"));
    assert_eq!(
        report["models"][0]["late"]["periods_processed"]
            .as_array()
            .map_or(0, Vec::len),
        0,
        "{report}"
    );
    assert_eq!(output(d), per_day(Server::Postgres, &db, 0));
}

/// An incremental model joining a database source without `event_time` (a dimension, which
/// has no version to compare): every run computes the periods inside the late window again
/// (reason `dimension`), so a change of the dimension reaches them; periods beyond the
/// window keep what they were computed with.
#[test]
fn an_incremental_model_recomputes_its_window_when_it_joins_a_database_dimension() {
    let pg = postgres();
    let db = pg.create_database("incr_dim");
    pg.sql(
        &db,
        "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, store int);
         INSERT INTO events (at, store) SELECT timestamptz '2024-01-01 00:00:00+00' + d * \
           interval '1 day' + i * interval '7 minutes', i % 3 \
           FROM generate_series(0, 9) d, generate_series(0, 49) i;
         CREATE TABLE stores (store int PRIMARY KEY, region text);
         INSERT INTO stores VALUES (0, 'north'), (1, 'south'), (2, 'east');",
    );
    let dir = events_pipeline(
        "[sources.stores]\ndatabase = \"app\"\ntable = \"stores\"\n\
         [models.daily]\nmaterialized = \"incremental\"\n\
         [models.daily.batches]\nsize = \"day\"\nstart = \"2024-01-01\"\nlate_window = \"48h\"\n",
    );
    let d = dir.path();
    std::fs::write(
        d.join("queries/daily.sql"),
        "SELECT CAST(e.at AS DATE) AS day, COUNT(*) AS n, \
         SUM(CASE WHEN s.region = 'west' THEN 1 ELSE 0 END) AS amount \
         FROM ev e JOIN stores s ON e.store = s.store GROUP BY 1",
    )
    .unwrap();
    let env = vec![("PG_URL".to_string(), pg.url(&db))];
    sluice_env(d, &["run", ".", "--as-of", "2024-01-11"], &env).expect(0);
    pg.sql(&db, "UPDATE stores SET region = 'west' WHERE store = 2");
    sluice_env(
        d,
        &[
            "run",
            ".",
            "--as-of",
            "2024-01-11T06:00:00Z",
            "--report",
            "r.json",
        ],
        &env,
    )
    .expect(0);
    let report = read_json(&d.join("r.json"));
    let processed: Vec<(String, String)> = report["models"][0]["late"]["periods_processed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["period"].as_str().unwrap().to_string(),
                p["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        processed,
        [
            ("2024-01-09".to_string(), "dimension".to_string()),
            ("2024-01-10".to_string(), "dimension".to_string())
        ],
        "{report}"
    );
    // What PostgreSQL says: days in the window see the new region, the others the old.
    let west = pg.sql(
        &db,
        "SELECT (e.at AT TIME ZONE 'UTC')::date, count(*), sum(CASE WHEN (e.at AT TIME ZONE \
         'UTC')::date >= DATE '2024-01-09' AND s.region = 'west' THEN 1 ELSE 0 END) FROM \
         events e JOIN stores s USING (store) GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        output(d),
        west.lines().map(String::from).collect::<Vec<_>>()
    );
}
