//! The guards that keep sluice from hurting a production database, on real servers: the
//! latency gate (a probe made slow on purpose pauses the reads until it is fast again, or
//! stops the run past `max_pause`), the rate limit, and the replica-lag guard on a real
//! streaming replica whose replay the test pauses.

use std::time::{Duration, Instant};

use crate::support::databases::{MariaDb, PASSWORD, Postgres, postgres};
use crate::support::{read_json, sluice_env};

/// A pipeline copying table `t` of the database at `PG_URL` (whose `[databases.app]` has
/// `db_keys`) into Parquet, in 4 ranges of `id`.
fn pipeline(db_keys: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        format!(
            "name = \"guards\"\n[databases.app]\nurl = \"${{env:PG_URL}}\"\nmax_connections = 3\n\
             {db_keys}\n[sources.t]\ndatabase = \"app\"\ntable = \"t\"\n\
             partition_column = \"id\"\npartitions = 4\n"
        ),
    )
    .unwrap();
    std::fs::write(d.join("queries/copy.sql"), "SELECT id, v FROM t").unwrap();
    dir
}

fn env(url: String) -> Vec<(String, String)> {
    vec![("PG_URL".to_string(), url)]
}

/// The probe (`SELECT pg_sleep(d) FROM probe_delay`) is slow until the test makes it fast
/// 3 s into the run: the reads pause meanwhile (the run cannot end before, though unpaused
/// it reads its rows in about a second), the report counts the pause; with a probe that
/// stays slow, the run stops after `max_pause` with exit 1, saying why. The rate limit holds
/// the rows read per second.
#[test]
fn a_slow_probe_pauses_the_reads_and_stops_them_past_max_pause() {
    let pg = postgres();
    let db = pg.create_database("guard_latency");
    pg.sql(
        &db,
        "CREATE TABLE t (id int8 PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100000) i;
         CREATE TABLE probe_delay (d float8); INSERT INTO probe_delay VALUES (0.3);",
    );
    let dir = pipeline(
        "pause_when_latency_over = \"100ms\"\nprobe = \"SELECT pg_sleep(d) FROM probe_delay\"\n\
         probe_interval = \"100ms\"\nmax_pause = \"30s\"\nmax_rows_per_second = 100000",
    );
    let lift = Duration::from_secs(3);
    let lifter = {
        let db = db.clone();
        std::thread::spawn(move || {
            std::thread::sleep(lift);
            postgres().sql(&db, "UPDATE probe_delay SET d = 0");
        })
    };
    let started = Instant::now();
    let run = sluice_env(
        dir.path(),
        &["run", ".", "--report", "r.json"],
        &env(pg.url(&db)),
    )
    .expect(0);
    let took = started.elapsed();
    lifter.join().unwrap();
    assert!(
        took >= lift,
        "the run ended after {took:?}, before the probe was fast again\n{}",
        run.stderr
    );
    let report = read_json(&dir.path().join("r.json"));
    let d = &report["databases"][0];
    assert_eq!(d["name"], "app", "{report}");
    assert_eq!(d["rows_read"], 100000, "{report}");
    assert!(d["pauses"].as_u64().unwrap() >= 1, "{report}");
    assert!(d["paused_ms"].as_u64().unwrap() >= 1000, "{report}");
    assert!(d["max_probe_ms"].as_f64().unwrap() >= 300.0, "{report}");
    // One connection is the probe's: the readers had the 2 others (4 ranges).
    assert_eq!(d["peak_connections"], 3, "{report}");
    assert!(
        run.stderr.contains("latency over 100ms") && run.stderr.contains(" times for "),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(report["models"][0]["rows_out"], 100000, "{report}");

    // A probe that stays slow: the run stops after max_pause.
    pg.sql(&db, "UPDATE probe_delay SET d = 0.3");
    let text = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        text.replace("max_pause = \"30s\"", "max_pause = \"1s\""),
    )
    .unwrap();
    let r = sluice_env(dir.path(), &["run", "."], &env(pg.url(&db))).expect(1);
    assert!(
        r.stderr.contains("database 'app'")
            && r.stderr.contains("latency stayed over 100ms for 1.0s")
            && r.stderr.contains("max_pause"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(PASSWORD) && !r.stdout.contains(PASSWORD));
}

/// With the least connections the latency guard takes (2), the probe holds one and a
/// reader the other, never more; the probe's connection dropped by the server (a restart, a
/// pooler) mid-run is opened again, and the run reads every row.
#[test]
fn the_probe_keeps_one_connection_and_reconnects_when_it_is_dropped() {
    let pg = postgres();
    let db = pg.create_database("guard_probe_drop");
    pg.sql(
        &db,
        "CREATE TABLE t (id int8 PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' FROM generate_series(1, 100000) i;",
    );
    let dir = pipeline(
        "pause_when_latency_over = \"500ms\"\nprobe = \"SELECT 1 AS sluice_probe\"\n\
         probe_interval = \"100ms\"\nmax_rows_per_second = 25000",
    );
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace("max_connections = 3", "max_connections = 2"),
    )
    .unwrap();
    let killer = {
        let db = db.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let (mut killed, mut most) = (0, 0);
            while Instant::now() < deadline && killed == 0 {
                let sessions: usize = postgres()
                    .sql(
                        &db,
                        &format!(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
                             AND application_name = 'sluice'"
                        ),
                    )
                    .trim()
                    .parse()
                    .unwrap();
                most = most.max(sessions);
                if sessions == 2 {
                    std::thread::sleep(Duration::from_millis(800));
                    killed = postgres()
                        .sql(
                            &db,
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                             WHERE query LIKE '%AS sluice_probe%' AND pid <> pg_backend_pid() \
                             AND application_name = 'sluice'",
                        )
                        .trim()
                        .parse::<usize>()
                        .unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (killed, most)
        })
    };
    sluice_env(
        dir.path(),
        &["run", ".", "--report", "r.json"],
        &env(pg.url(&db)),
    )
    .expect(0);
    let (killed, most) = killer.join().unwrap();
    assert_eq!(killed, 1, "the probe's session was not found");
    assert_eq!(most, 2);
    let report = read_json(&dir.path().join("r.json"));
    let d = &report["databases"][0];
    assert_eq!(d["peak_connections"], 2, "{report}");
    assert_eq!(d["rows_read"], 100000, "{report}");
    assert_eq!(report["models"][0]["rows_out"], 100000, "{report}");
}

/// `max_rows_per_second` holds for the whole import: 60,000 rows at 20,000 a second take
/// at least 2 s (a second's worth may go at once), and the report says how long it waited.
#[test]
fn the_rate_limit_holds_rows_read_per_second() {
    let pg = postgres();
    let db = pg.create_database("guard_rate");
    pg.sql(
        &db,
        "CREATE TABLE t (id int8 PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' FROM generate_series(1, 60000) i;",
    );
    let dir = pipeline("max_rows_per_second = 20000");
    let started = Instant::now();
    sluice_env(
        dir.path(),
        &["run", ".", "--report", "r.json"],
        &env(pg.url(&db)),
    )
    .expect(0);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "{took:?}");
    let report = read_json(&dir.path().join("r.json"));
    let d = &report["databases"][0];
    assert!(d["throttled_ms"].as_u64().unwrap() >= 1000, "{report}");
    assert_eq!(d["rows_read"], 60000, "{report}");
    assert_eq!(d["replica"], serde_json::Value::Null, "{report}");
}

/// A real streaming replica: read while it keeps up (the report says it is a replica); with
/// its replay paused behind a write on the primary, the run waits `lag_wait` and fails
/// naming the lag; replay resumed while the run waits, the run goes on and succeeds.
#[test]
fn the_replica_lag_guard_waits_for_a_lagging_replica_then_fails() {
    let primary = Postgres::start_own();
    let db = primary.create_database("guard_lag");
    primary.sql(
        &db,
        "CREATE TABLE t (id int8 PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' FROM generate_series(1, 5000) i;",
    );
    let replica = primary.replica();
    // Caught up once the rows are there.
    let deadline = Instant::now() + Duration::from_secs(30);
    while replica
        .sql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
        )
        .trim()
        != "1"
        || replica.sql(&db, "SELECT count(*) FROM t").trim() != "5000"
    {
        assert!(Instant::now() < deadline, "the replica did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A transaction replayed (the rows above came with the base backup): from now on the
    // lag is measured, not unknown.
    primary.sql(
        &db,
        "CREATE TABLE tick (x int); INSERT INTO tick VALUES (1);",
    );
    while replica
        .sql(&db, "SELECT to_regclass('tick') IS NOT NULL")
        .trim()
        != "t"
    {
        assert!(Instant::now() < deadline, "the replica did not replay");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = pipeline("max_replica_lag = \"1s\"\nlag_wait = \"2s\"");
    let url = replica.url(&db);
    sluice_env(
        dir.path(),
        &["run", ".", "--report", "r.json"],
        &env(url.clone()),
    )
    .expect(0);
    let report = read_json(&dir.path().join("r.json"));
    assert_eq!(report["databases"][0]["replica"], true, "{report}");
    assert_eq!(report["models"][0]["rows_out"], 5000, "{report}");

    // Replay paused, a write on the primary: the replica falls behind.
    replica.sql(&db, "SELECT pg_wal_replay_pause()");
    primary.sql(&db, "INSERT INTO t VALUES (5001, 'late')");
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let r = sluice_env(dir.path(), &["run", "."], &env(url.clone())).expect(1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it did not wait"
    );
    assert!(
        r.stderr.contains("database 'app'")
            && r.stderr
                .contains("over max_replica_lag 1.0s after waiting 2."),
        "{}",
        r.stderr
    );

    // Resumed while the run waits: it reads the caught-up replica.
    let text = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        text.replace("lag_wait = \"2s\"", "lag_wait = \"60s\""),
    )
    .unwrap();
    let resumer = std::thread::spawn({
        let db = db.clone();
        move || {
            std::thread::sleep(Duration::from_secs(2));
            replica.sql(&db, "SELECT pg_wal_replay_resume()");
            replica
        }
    });
    sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env(url)).expect(0);
    let _replica = resumer.join().unwrap();
    let report = read_json(&dir.path().join("r.json"));
    let d = &report["databases"][0];
    assert!(d["lag_waited_ms"].as_u64().unwrap() >= 1000, "{report}");
    assert!(d["lag_max_ms"].as_u64().unwrap() >= 1000, "{report}");
    assert_eq!(report["models"][0]["rows_out"], 5001, "{report}");
}

/// A real MariaDB replica: read while it keeps up; with its SQL thread stopped (the lag is
/// unknown) the run waits `lag_wait` and fails saying so; with the replica applying the
/// primary's changes 5 s late (`MASTER_DELAY`), the run waits until it has applied a new
/// row, then reads it.
#[test]
fn the_replica_lag_guard_waits_for_a_lagging_mariadb_replica() {
    let primary = MariaDb::start_own(&["--log-bin=primary-bin", "--server-id=1"]);
    let replica = primary.replica();
    let db = primary.create_database("guard_my_lag");
    primary.sql(
        &db,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT);
         INSERT INTO t SELECT seq, 'v' FROM seq_1_to_5000;",
    );
    let count = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let sql = format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' \
             AND TABLE_NAME = 't'"
        );
        while replica.sql("", &sql).trim() != "1"
            || replica.sql(&db, "SELECT COUNT(*) FROM t").trim() != want
        {
            assert!(Instant::now() < deadline, "the replica did not catch up");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    count("5000");
    let dir = pipeline("max_replica_lag = \"1s\"\nlag_wait = \"2s\"");
    let url = replica.url(&db);
    sluice_env(
        dir.path(),
        &["run", ".", "--report", "r.json"],
        &env(url.clone()),
    )
    .expect(0);
    let report = read_json(&dir.path().join("r.json"));
    assert_eq!(report["databases"][0]["replica"], true, "{report}");
    assert_eq!(report["models"][0]["rows_out"], 5000, "{report}");

    // The SQL thread stopped: no lag is known, the run waits, then fails.
    replica.sql("", "STOP SLAVE SQL_THREAD");
    primary.sql(&db, "INSERT INTO t VALUES (5001, 'late')");
    let started = Instant::now();
    let r = sluice_env(dir.path(), &["run", "."], &env(url.clone())).expect(1);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it did not wait"
    );
    assert!(
        r.stderr.contains("database 'app'")
            && r.stderr.contains("replica lag unknown")
            && r.stderr
                .contains("over max_replica_lag 1.0s after waiting 2."),
        "{}",
        r.stderr
    );

    // Applied 5 s late: a row written on the primary is read once the replica has it.
    replica.sql(
        "",
        "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 5; START SLAVE;",
    );
    count("5001");
    primary.sql(&db, "INSERT INTO t VALUES (5002, 'later')");
    std::thread::sleep(Duration::from_millis(2500));
    let text = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        text.replace("lag_wait = \"2s\"", "lag_wait = \"60s\""),
    )
    .unwrap();
    sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env(url)).expect(0);
    let report = read_json(&dir.path().join("r.json"));
    let d = &report["databases"][0];
    assert!(d["lag_waited_ms"].as_u64().unwrap() >= 1000, "{report}");
    assert!(d["lag_max_ms"].as_u64().unwrap() >= 2000, "{report}");
    assert_eq!(report["models"][0]["rows_out"], 5002, "{report}");
}

/// The latency gate on MariaDB: a probe that stays slow stops the run past `max_pause`.
#[test]
fn a_slow_probe_stops_a_mariadb_import_past_max_pause() {
    let m = crate::support::databases::mariadb();
    let db = m.create_database("guard_latency");
    m.sql(
        &db,
        "CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT); \
         INSERT INTO t SELECT seq, 'v' FROM seq_1_to_1000;",
    );
    let dir = pipeline(
        "pause_when_latency_over = \"100ms\"\nprobe = \"SELECT SLEEP(0.3)\"\n\
         probe_interval = \"100ms\"\nmax_pause = \"1s\"\nmax_rows_per_second = 100",
    );
    let r = sluice_env(dir.path(), &["run", "."], &env(m.url(&db))).expect(1);
    assert!(
        r.stderr.contains("database 'app' (mysql://")
            && r.stderr
                .contains("latency stayed over 100ms for 1.0s (probe `SELECT SLEEP(0.3)`"),
        "{}",
        r.stderr
    );
}

/// A probe that never answers closes the gate once it has run longer than the threshold,
/// and stops the run past `max_pause`: the reads do not go on unmeasured.
#[test]
fn a_probe_that_never_answers_stops_the_run_past_max_pause() {
    let pg = postgres();
    let db = pg.create_database("guard_hang");
    pg.sql(
        &db,
        "CREATE TABLE t (id int8 PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' FROM generate_series(1, 300000) i;",
    );
    let dir = pipeline(
        "pause_when_latency_over = \"50ms\"\nprobe = \"SELECT pg_sleep(30)\"\nmax_pause = \"2s\"",
    );
    let started = Instant::now();
    let r = sluice_env(dir.path(), &["run", "."], &env(pg.url(&db))).expect(1);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert!(
        r.stderr.contains(
            "latency stayed over 50ms for 2.0s (probe `SELECT pg_sleep(30)` still running"
        ),
        "{}",
        r.stderr
    );
    assert!(!dir.path().join("out/copy/_MANIFEST").exists());
}
