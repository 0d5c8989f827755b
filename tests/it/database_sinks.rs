//! Models loaded into PostgreSQL tables (`[models.NAME.sink] database = ...`), on the test
//! server: overwrite, append and upsert compared value by value with what the test computes
//! from the input itself; a table that cannot take the result refused before anything runs;
//! a failed model leaving the table as it was; kill -9 at random moments of a load.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::databases::{PASSWORD, Server, postgres};
use crate::support::{Run, run_with_report_env, sluice_env};

/// A pipeline folder: CSV source `sales` (`data/sales.csv`), model `daily` (`sql`) whose
/// sink is `sink_keys` into database `serving` (URL from `PG_URL`).
pub(crate) fn pipeline(
    url: &str,
    sql: &str,
    sink_keys: &str,
) -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::create_dir_all(d.join("data/sales")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        format!(
            "name = \"loads\"\n[databases.serving]\nurl = \"${{env:PG_URL}}\"\n\
             max_connections = 2\n\
             [sources.sales]\nlocation = \"data/sales/\"\nformat = \"csv\"\n\
             [models.daily.sink]\ndatabase = \"serving\"\n{sink_keys}\n"
        ),
    )
    .unwrap();
    std::fs::write(d.join("queries/daily.sql"), sql).unwrap();
    (dir, vec![("PG_URL".to_string(), url.to_string())])
}

/// One sales row: day, store, revenue in cents, note.
pub(crate) type Sale = (String, i64, i64, String);

pub(crate) fn write_sales(dir: &Path, file: &str, rows: &[Sale]) {
    let mut text = String::from("day,store_id,revenue,note\n");
    for (day, store, cents, note) in rows {
        text.push_str(&format!(
            "{day},{store},{}.{:02},\"{}\"\n",
            cents / 100,
            cents % 100,
            note.replace('"', "\"\"")
        ));
    }
    std::fs::write(dir.join("data/sales").join(file), text).unwrap();
}

/// `n` sales rows from `seed`: days in January 2024, stores 1-5, notes with quotes,
/// commas, tabs and non-ASCII letters.
pub(crate) fn sales(seed: u64, n: usize) -> Vec<Sale> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let notes = [
        "plain",
        "a, \"quoted\" é",
        "tab\there",
        "ünïcödé ✓",
        "back\\slash",
    ];
    (0..n)
        .map(|i| {
            (
                format!("2024-01-{:02}", rng.random_range(1..=28)),
                rng.random_range(1..=5),
                rng.random_range(0..5_000_000),
                format!("{} #{i}", notes[rng.random_range(0..notes.len())]),
            )
        })
        .collect()
}

pub(crate) fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

pub(crate) fn run(dir: &Path, env: &[(String, String)], code: i32) -> (Run, serde_json::Value) {
    run_with_report_env(dir, &[], env, code)
}

pub(crate) const DAILY: &str = "SELECT CAST(day AS DATE) AS day, store_id, \
     CAST(revenue AS DECIMAL(12,2)) AS revenue, note, revenue > 25000 AS big, \
     arrow_cast(CAST(day AS TIMESTAMP) + INTERVAL '90 minutes', \
       'Timestamp(Microsecond, Some(\"UTC\"))') AS at \
     FROM sales";

/// The rows of `daily` as PostgreSQL prints them, sorted.
fn table_rows(db: &str, table: &str) -> Vec<String> {
    let out = postgres().sql(
        db,
        &format!(
            "SELECT day, store_id, revenue, note, big, \
             to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM {table} \
             ORDER BY day, store_id, note"
        ),
    );
    let mut rows: Vec<String> = out.lines().map(String::from).collect();
    rows.sort();
    rows
}

/// What the table should hold for `sales`, printed as [`table_rows`] prints it.
fn expected_rows(sales: &[Sale]) -> Vec<String> {
    let mut rows: Vec<String> = sales
        .iter()
        .map(|(day, store, cents, note)| {
            format!(
                "{day}|{store}|{}|{note}|{}|{day} 01:30:00",
                money(*cents),
                if *cents > 2_500_000 { "t" } else { "f" }
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Overwrite: the table is created from the result's columns and holds exactly the result;
/// a second run with other input replaces every row. A reader's open transaction keeps
/// seeing the old rows while the load runs (the load deletes, it does not truncate).
#[test]
fn a_model_overwrites_a_postgres_table_with_exactly_its_result() {
    let pg = postgres();
    let db = pg.create_database("sink_overwrite");
    let (dir, env) = pipeline(&pg.url(&db), DAILY, "table = \"public.daily\"");
    let first = sales(1, 300);
    write_sales(dir.path(), "a.csv", &first);
    let plan = sluice_env(dir.path(), &["plan", "."], &env).expect(0);
    assert!(
        plan.stdout.contains(
            "load:   table public.daily of database serving (overwrite): missing: created by \
             the load"
        ),
        "{}",
        plan.stdout
    );
    let (_, report) = run(dir.path(), &env, 0);
    let loaded = &report["models"][0]["loaded"];
    assert_eq!(loaded["rows"], 300, "{report}");
    assert_eq!(loaded["table"], "public.daily", "{report}");
    assert_eq!(table_rows(&db, "daily"), expected_rows(&first));
    // The columns sluice created, typed from the result.
    let types = pg.sql(
        &db,
        "SELECT string_agg(format_type(atttypid, atttypmod), ',' ORDER BY attnum) \
         FROM pg_attribute WHERE attrelid = 'public.daily'::regclass AND attnum > 0",
    );
    assert_eq!(
        types.trim(),
        "date,bigint,numeric(12,2),text,boolean,timestamp(6) with time zone"
    );
    let plan = sluice_env(dir.path(), &["plan", "."], &env).expect(0);
    assert!(
        plan.stdout.contains("(overwrite): exists, compatible"),
        "{}",
        plan.stdout
    );

    let second = sales(2, 120);
    std::fs::remove_file(dir.path().join("data/sales/a.csv")).unwrap();
    write_sales(dir.path(), "b.csv", &second);
    let (_, report) = run(dir.path(), &env, 0);
    assert_eq!(report["models"][0]["loaded"]["rows"], 120, "{report}");
    assert_eq!(table_rows(&db, "daily"), expected_rows(&second));
    // One commit record per load.
    let commits = pg.sql(
        &db,
        "SELECT count(*), sum(rows), string_agg(DISTINCT mode, ',') FROM public._sluice_commits \
         WHERE pipeline = 'loads' AND model = 'daily'",
    );
    assert_eq!(commits.trim(), "2|420|overwrite");
}

/// Append: each run's rows are added once; a run of the same input again (a scheduler's
/// retry after success) appends nothing; new input appends its rows.
#[test]
fn an_append_into_postgres_adds_each_result_once() {
    let pg = postgres();
    let db = pg.create_database("sink_append");
    let (dir, env) = pipeline(&pg.url(&db), DAILY, "table = \"daily\"\nmode = \"append\"");
    let first = sales(3, 50);
    write_sales(dir.path(), "a.csv", &first);
    run(dir.path(), &env, 0);
    assert_eq!(table_rows(&db, "daily"), expected_rows(&first));
    let (_, again) = run(dir.path(), &env, 0);
    assert_eq!(again["models"][0]["status"], "skipped", "{again}");
    assert_eq!(
        again["models"][0]["loaded"]["already_loaded"], true,
        "{again}"
    );
    assert_eq!(table_rows(&db, "daily"), expected_rows(&first));

    let second = sales(4, 70);
    std::fs::remove_file(dir.path().join("data/sales/a.csv")).unwrap();
    write_sales(dir.path(), "b.csv", &second);
    let (_, report) = run(dir.path(), &env, 0);
    assert_eq!(report["models"][0]["loaded"]["rows"], 70, "{report}");
    let both: Vec<Sale> = first.iter().chain(&second).cloned().collect();
    assert_eq!(table_rows(&db, "daily"), expected_rows(&both));
}

/// Upsert into a table the user made (its own column order, a column with a default the
/// result lacks, a primary key): rows of the result's keys are replaced, others kept, new
/// keys added; the oracle is a map the test keeps itself.
#[test]
fn an_upsert_into_postgres_replaces_rows_by_key_and_keeps_the_others() {
    upserts_replace_rows_by_key(Server::Postgres);
}

/// [`an_upsert_into_postgres_replaces_rows_by_key_and_keeps_the_others`] on MariaDB.
#[test]
fn an_upsert_into_mariadb_replaces_rows_by_key_and_keeps_the_others() {
    upserts_replace_rows_by_key(Server::MariaDb);
}

fn upserts_replace_rows_by_key(server: Server) {
    let db = server.create_database("sink_upsert");
    let fill = match server {
        Server::Postgres => {
            "INSERT INTO totals (store_id, day, revenue) \
            SELECT s, DATE '2024-01-01' + d, s * 1000 + d FROM generate_series(1, 5) s, \
            generate_series(0, 40) d"
        }
        Server::MariaDb => {
            "INSERT INTO totals (store_id, day, revenue) \
            SELECT s.seq, DATE '2024-01-01' + INTERVAL d.seq DAY, s.seq * 1000 + d.seq \
            FROM seq_1_to_5 s, seq_0_to_40 d"
        }
    };
    server.sql(
        &db,
        &format!(
            "CREATE TABLE totals (store_id bigint, note varchar(20) DEFAULT 'none', day date, \
               revenue numeric(14,2) NOT NULL, PRIMARY KEY (store_id, day)); {fill};"
        ),
    );
    let sql = "SELECT store_id, CAST(day AS DATE) AS day, \
               CAST(sum(revenue) AS DECIMAL(12,2)) AS revenue FROM sales GROUP BY store_id, day";
    let (dir, env) = pipeline(
        &server.url(&db),
        sql,
        "table = \"totals\"\nmode = \"upsert\"\nkey = [\"store_id\", \"day\"]",
    );
    // The oracle: (store, day) -> (revenue in cents, note).
    let mut expected: BTreeMap<(i64, String), (i64, String)> = BTreeMap::new();
    for s in 1..=5i64 {
        for d in 0..=40i64 {
            let day = (chrono::NaiveDate::from_ymd_opt(2024, 1, 1).unwrap()
                + chrono::Duration::days(d))
            .to_string();
            expected.insert((s, day), ((s * 1000 + d) * 100, "none".into()));
        }
    }
    for (seed, file) in [(5, "a.csv"), (6, "b.csv")] {
        let rows = sales(seed, 200);
        write_sales(dir.path(), file, &rows);
        // The result sums every file's rows by key.
        let mut sums: BTreeMap<(i64, String), i64> = BTreeMap::new();
        let files: Vec<Vec<Sale>> = if seed == 5 {
            vec![rows]
        } else {
            vec![sales(5, 200), rows]
        };
        for (day, store, cents, _) in files.iter().flatten() {
            *sums.entry((*store, day.clone())).or_default() += cents;
        }
        for (k, cents) in sums {
            let note = expected.get(&k).map_or("none".to_string(), |v| v.1.clone());
            expected.insert(k, (cents, note));
        }
        run(dir.path(), &env, 0);
        let got = server.sql(
            &db,
            "SELECT store_id, day, revenue, note FROM totals ORDER BY store_id, day",
        );
        let want: Vec<String> = expected
            .iter()
            .map(|((s, d), (c, n))| format!("{s}|{d}|{}|{n}", money(*c)))
            .collect();
        assert_eq!(
            got.lines()
                .map(|l| l.replace('\t', "|"))
                .collect::<Vec<_>>(),
            want,
            "after {file}"
        );
    }
}

/// A table that cannot take the result is refused before any unit runs, naming the table
/// and column (exit 1), and stays as it was; so does the table of a model that fails before
/// its publish. A wrong password names the database and never shows the password; a sink
/// into a database marked read_only is a configuration error (exit 2).
#[test]
fn postgres_sinks_refuse_bad_tables_and_failed_models_touch_nothing() {
    let pg = postgres();
    let db = pg.create_database("sink_refuse");
    pg.sql(
        &db,
        "CREATE TABLE daily (day date, store_id bigint, revenue integer, note text, big boolean, \
           at timestamptz);
         INSERT INTO daily VALUES ('2020-01-01', 1, 5, 'old', false, now());
         CREATE TABLE keyless (store_id bigint, day date, revenue numeric(12,2));
         CREATE TABLE strict (day date, store_id bigint, revenue numeric(12,2), note text, \
           big boolean, at timestamptz, owner text NOT NULL);",
    );
    let before = pg.sql(&db, "SELECT * FROM daily");
    let (dir, env) = pipeline(&pg.url(&db), DAILY, "table = \"daily\"");
    write_sales(dir.path(), "a.csv", &sales(7, 20));
    let plan = sluice_env(dir.path(), &["plan", "."], &env).expect(0);
    assert!(
        plan.stdout.contains("REFUSED: database 'serving'")
            && plan.stdout.contains("column revenue is integer"),
        "{}",
        plan.stdout
    );
    let refused = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        refused
            .stderr
            .contains("table daily: column revenue is integer")
            && refused
                .stderr
                .contains("Decimal128(12, 2): values would lose their decimals")
            && refused.stderr.contains("database 'serving'"),
        "{}",
        refused.stderr
    );
    assert!(
        !dir.path().join("out/daily/_MANIFEST").exists(),
        "units ran before the refusal"
    );
    assert_eq!(pg.sql(&db, "SELECT * FROM daily"), before);

    for (keys, expected) in [
        (
            "table = \"keyless\"\nmode = \"upsert\"\nkey = [\"store_id\", \"day\"]",
            "needs a primary key or unique index",
        ),
        (
            "table = \"strict\"",
            "column owner is NOT NULL without a default",
        ),
    ] {
        let sql = if keys.contains("keyless") {
            "SELECT store_id, CAST(day AS DATE) AS day, CAST(revenue AS DECIMAL(12,2)) AS \
             revenue FROM sales"
        } else {
            DAILY
        };
        std::fs::write(dir.path().join("queries/daily.sql"), sql).unwrap();
        let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
        let head = toml.split("table = ").next().unwrap().to_string();
        std::fs::write(dir.path().join("sluice.toml"), format!("{head}{keys}\n")).unwrap();
        let r = sluice_env(dir.path(), &["run", "."], &env).expect(1);
        assert!(r.stderr.contains(expected), "{keys}: {}", r.stderr);
    }

    // A model that fails while it runs (a value that is not a number): nothing loaded.
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    let head = toml.split("table = ").next().unwrap().to_string();
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("{head}table = \"fresh\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/daily.sql"),
        "SELECT store_id, CAST(note AS INT) AS n FROM sales",
    )
    .unwrap();
    sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert_eq!(
        pg.sql(&db, "SELECT to_regclass('public.fresh') IS NULL")
            .trim(),
        "t",
        "a failed model created its table"
    );

    // A wrong password: named database, no password shown.
    let bad = vec![(
        "PG_URL".to_string(),
        pg.url(&db).replace(PASSWORD, "wrong-pw-123"),
    )];
    let r = sluice_env(dir.path(), &["run", "."], &bad).expect(1);
    assert!(r.stderr.contains("database 'serving'"), "{}", r.stderr);
    for out in [&r.stdout, &r.stderr] {
        assert!(
            !out.contains("wrong-pw-123") && !out.contains(PASSWORD),
            "{out}"
        );
    }

    // read_only = true and a sink: exit 2, naming the setting's line.
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace(
            "max_connections = 2",
            "max_connections = 2\nread_only = true",
        ),
    )
    .unwrap();
    let r = sluice_env(dir.path(), &["run", "."], &env).expect(2);
    assert!(r.stderr.contains("read_only = true"), "{}", r.stderr);

    // A model reading an appended (or upserted) model would read this run's rows, not the
    // table's: refused (exit 2).
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("{head}table = \"t\"\nmode = \"append\"\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("queries/daily.sql"), DAILY).unwrap();
    std::fs::write(
        dir.path().join("queries/after.sql"),
        "SELECT count(*) AS n FROM daily",
    )
    .unwrap();
    let r = sluice_env(dir.path(), &["run", "."], &env).expect(2);
    assert!(
        r.stderr
            .contains("model 'after' reads 'daily', which is loaded into table t in mode append"),
        "{}",
        r.stderr
    );
}

/// Rows of the kill test's model per run.
const KILL_ROWS: u64 = 300_000;

/// What the kill test needs of a server, besides [`Server`]'s basics.
trait KillTest {
    fn table_sum(self, db: &str, from: &str) -> String;
    fn expected_sum(self, db: &str, n: u64) -> String;
    fn loading(self, db: &str) -> bool;
}

impl KillTest for Server {
    /// The kill test's table (`from`) as one checksum, computed by the server: its row
    /// count and a digest of every row.
    fn table_sum(self, db: &str, from: &str) -> String {
        let sql = match self {
            Server::Postgres => format!(
                "SELECT count(*) || ' ' || coalesce(md5(string_agg(concat_ws(':', id, k, label, \
                 batch), ',' ORDER BY batch, id)), '-') FROM {from}"
            ),
            Server::MariaDb => format!(
                "SELECT CONCAT(COUNT(*), ' ', COALESCE(SUM(CRC32(CONCAT_WS(':', id, k, label, \
                 batch))), 0), ' ', COALESCE(BIT_XOR(CRC32(CONCAT_WS(':', batch, id, label))), \
                 0)) FROM {from}"
            ),
        };
        self.sql(db, &sql).trim().to_string()
    }

    /// What the kill test's table holds after the loads of batches `1..=n`, computed by
    /// the server from its own number series (not by sluice).
    fn expected_sum(self, db: &str, n: u64) -> String {
        let from = match self {
            Server::Postgres => format!(
                "(SELECT i AS id, i % 97 AS k, 'row ' || i AS label, b AS batch FROM \
                 generate_series(1, {KILL_ROWS}) i, generate_series(1, {n}) b) AS x"
            ),
            Server::MariaDb => format!(
                "(SELECT i.seq AS id, i.seq % 97 AS k, CONCAT('row ', i.seq) AS label, b.seq AS \
                 batch FROM seq_1_to_{KILL_ROWS} i, seq_1_to_{n} b) AS x"
            ),
        };
        self.table_sum(db, &from)
    }

    /// Whether a load into `db` is sending rows now.
    fn loading(self, db: &str) -> bool {
        let sql = match self {
            Server::Postgres => format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND \
                 application_name = 'sluice' AND query LIKE 'COPY%'"
            ),
            Server::MariaDb => format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{db}' AND \
                 INFO LIKE 'LOAD DATA%'"
            ),
        };
        self.sql(db, &sql).trim() != "0"
    }
}

/// kill -9 at random moments of a run that appends into PostgreSQL (seeded; one kill is
/// aimed at the COPY itself): after each kill the table holds exactly the old rows or
/// exactly the old and the new ones, never a part; the run resumed to its end has appended
/// the new rows once, and a run of the same input again appends nothing.
#[test]
fn a_postgres_append_killed_at_random_moments_loads_once() {
    killed_appends_load_once(Server::Postgres);
}

/// The kill test of [`a_postgres_append_killed_at_random_moments_loads_once`], on a
/// MariaDB table loaded with `LOAD DATA LOCAL INFILE`.
#[test]
fn a_mariadb_append_killed_at_random_moments_loads_once() {
    killed_appends_load_once(Server::MariaDb);
}

fn killed_appends_load_once(server: Server) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("SLUICE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1414);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = server.create_database("sink_kill");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "name = \"kill\"\n[databases.serving]\nurl = \"${env:DB_URL}\"\n\
         [models.big.sink]\ndatabase = \"serving\"\ntable = \"big\"\nmode = \"append\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("queries/big.sql"),
        format!(
            "SELECT value AS id, value % 97 AS k, concat('row ', value) AS label, \
             CAST({{{{ batch }}}} AS BIGINT) AS batch FROM generate_series(1, {KILL_ROWS})"
        ),
    )
    .unwrap();
    let url = server.url(&db);
    let env = vec![("DB_URL".to_string(), url.clone())];
    let command = |batch: u64| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["run", ".", "--var", &format!("batch={batch}")])
            .current_dir(d)
            .env("DB_URL", &url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let started = std::time::Instant::now();
    sluice_env(d, &["run", ".", "--var", "batch=1"], &env).expect(0);
    let full = started.elapsed();
    let old = server.table_sum(&db, "big");
    assert_eq!(old, server.expected_sum(&db, 1));
    let new = server.expected_sum(&db, 2);

    let mut load_kills = 0;
    let mut finished = false;
    for attempt in 0..6 {
        let mut child = command(2).spawn().unwrap();
        let aim_at_load = attempt == 0 || rng.random_bool(0.3);
        if aim_at_load {
            // Until the load is sending rows (or the run ended).
            let deadline = std::time::Instant::now() + full * 4;
            while std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                if server.loading(&db) {
                    std::thread::sleep(std::time::Duration::from_millis(rng.random_range(0..200)));
                    load_kills += 1;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        } else {
            let ms = rng.random_range(0..(full.as_millis() as u64 * 6 / 5).max(1));
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        let now = server.table_sum(&db, "big");
        eprintln!(
            "seed {seed}, attempt {attempt}: {} at {}, table {}",
            if status.success() {
                "finished"
            } else {
                "killed"
            },
            if aim_at_load {
                "the load"
            } else {
                "a random moment"
            },
            if now == old { "old" } else { "new" }
        );
        assert!(
            now == old || now == new,
            "seed {seed}, attempt {attempt}: the table holds a part of the load: {now} \
             (old {old}, new {new})"
        );
        if status.success() {
            finished = true;
            break;
        }
    }
    assert!(
        load_kills > 0,
        "seed {seed}: no kill hit the load (finished: {finished})"
    );
    // Resumed to the end: the new rows once.
    sluice_env(d, &["run", ".", "--var", "batch=2"], &env).expect(0);
    assert_eq!(server.table_sum(&db, "big"), new, "seed {seed}");
    // The same input again: nothing appended.
    let (_, again) = run_with_report_env(d, &["--var", "batch=2"], &env, 0);
    assert_eq!(again["models"][0]["status"], "skipped", "{again}");
    assert_eq!(server.table_sum(&db, "big"), new, "seed {seed}");
    let commits = server.sql(
        &db,
        "SELECT count(*) FROM _sluice_commits WHERE model = 'big'",
    );
    assert_eq!(commits.trim(), "2");
}

/// Upserts refuse what they could not apply once and exactly: a result without the key
/// column, a NULL key, a key on two rows (all exit 1, the table unchanged); a unique index
/// with INCLUDE columns serves its key. An overwrite of a table other tables' foreign keys
/// refer to is refused (its DELETE would cascade into them).
#[test]
fn postgres_upserts_need_each_key_once_and_overwrites_spare_referencing_tables() {
    let pg = postgres();
    let db = pg.create_database("sink_keys");
    pg.sql(
        &db,
        "CREATE TABLE u (k bigint, v text, UNIQUE (k) INCLUDE (v));
         INSERT INTO u VALUES (1, 'old');
         CREATE TABLE parent (id bigint PRIMARY KEY, v text);
         CREATE TABLE child (pid bigint REFERENCES parent ON DELETE CASCADE);
         INSERT INTO parent VALUES (1, 'p'); INSERT INTO child VALUES (1);",
    );
    let (dir, env) = pipeline(
        &pg.url(&db),
        "SELECT store_id AS k, note AS v FROM sales",
        "table = \"u\"\nmode = \"upsert\"\nkey = [\"k\"]",
    );
    let before = pg.sql(&db, "SELECT * FROM u ORDER BY k");
    // A key on two rows.
    write_sales(
        dir.path(),
        "a.csv",
        &[
            ("2024-01-01".into(), 7, 100, "x".into()),
            ("2024-01-02".into(), 7, 200, "y".into()),
        ],
    );
    let r = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        r.stderr
            .contains("0 rows with a NULL in the key (k) and 1 keys on more than one row"),
        "{}",
        r.stderr
    );
    assert_eq!(pg.sql(&db, "SELECT * FROM u ORDER BY k"), before);
    // Each key once: upserted, through the index with INCLUDE columns.
    write_sales(
        dir.path(),
        "a.csv",
        &[
            ("2024-01-01".into(), 1, 100, "new".into()),
            ("2024-01-02".into(), 2, 200, "two".into()),
        ],
    );
    run(dir.path(), &env, 0);
    assert_eq!(
        pg.sql(&db, "SELECT k, v FROM u ORDER BY k"),
        "1|new\n2|two\n"
    );
    // The key is not a column of the result.
    std::fs::write(
        dir.path().join("queries/daily.sql"),
        "SELECT note AS v FROM sales",
    )
    .unwrap();
    let r = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        r.stderr
            .contains("the upsert key \"k\" is not a column of the result"),
        "{}",
        r.stderr
    );
    // An overwrite of a referenced table.
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    let head = toml.split("table = ").next().unwrap().to_string();
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("{head}table = \"parent\"\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("queries/daily.sql"),
        "SELECT store_id AS id, note AS v FROM sales",
    )
    .unwrap();
    let r = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        r.stderr.contains("foreign keys of child refer to it"),
        "{}",
        r.stderr
    );
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM child").trim(), "1");
}

/// An append reading a database source has no files to tell one state of it from the next:
/// each run appends what it read (a resumed run, under the same run, appends once).
#[test]
fn an_append_reading_a_database_source_appends_each_run() {
    let pg = postgres();
    let db = pg.create_database("sink_append_db");
    pg.sql(
        &db,
        "CREATE TABLE src (id bigint); INSERT INTO src SELECT generate_series(1, 3);",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "name = \"dbappend\"\n[databases.app]\nurl = \"${env:PG_URL}\"\n\
         [sources.src]\ndatabase = \"app\"\ntable = \"src\"\n\
         [models.copy.sink]\ndatabase = \"app\"\ntable = \"dst\"\nmode = \"append\"\n",
    )
    .unwrap();
    std::fs::write(d.join("queries/copy.sql"), "SELECT id FROM src").unwrap();
    let env = vec![("PG_URL".to_string(), pg.url(&db))];
    run(d, &env, 0);
    pg.sql(&db, "INSERT INTO src SELECT generate_series(4, 6)");
    let (_, report) = run(d, &env, 0);
    assert_eq!(report["models"][0]["status"], "success", "{report}");
    assert_eq!(
        pg.sql(&db, "SELECT count(*), sum(id) FROM dst").trim(),
        "9|27"
    );
}
