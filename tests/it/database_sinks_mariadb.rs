//! Models loaded into MariaDB tables, on the test server (`LOAD DATA LOCAL INFILE`) and on
//! one with `local_infile` off (multi-row `INSERT`s): every type compared with the text the
//! test computes from the input itself; overwrite and append; tables that cannot take the
//! result refused before anything runs, and failed loads leaving the table as it was. The
//! upsert and the kill -9 test run on both servers, in [`super::database_sinks`].

use crate::database_sinks::{DAILY, Sale, money, pipeline, run, sales, write_sales};
use crate::support::databases::{MariaDb, PASSWORD, mariadb};
use crate::support::sluice_env;

/// The rows of `daily` as the server prints them (tab-separated), sorted; the note in
/// hexadecimal (it holds tabs and backslashes, which the client would escape).
fn table_rows(server: &MariaDb, db: &str, table: &str) -> Vec<String> {
    let out = server.sql(
        db,
        &format!(
            "SET time_zone = '+00:00'; SELECT day, store_id, revenue, HEX(note), big, \
             DATE_FORMAT(at, '%Y-%m-%d %H:%i:%s') FROM {table}"
        ),
    );
    let mut rows: Vec<String> = out.lines().map(String::from).collect();
    rows.sort();
    rows
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02X}")).collect()
}

/// What the table should hold for `sales`, printed as [`table_rows`] prints it.
fn expected_rows(sales: &[Sale]) -> Vec<String> {
    let mut rows: Vec<String> = sales
        .iter()
        .map(|(day, store, cents, note)| {
            format!(
                "{day}\t{store}\t{}\t{}\t{}\t{day} 01:30:00",
                money(*cents),
                hex(note),
                u8::from(*cents > 2_500_000)
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Overwrite: the table is created from the result's columns (InnoDB) and holds exactly the
/// result; a second run with other input replaces every row; append adds each run's rows
/// once.
#[test]
fn a_model_overwrites_and_appends_into_mariadb_tables_exactly() {
    let my = mariadb();
    let db = my.create_database("sink_my_overwrite");
    let (dir, env) = pipeline(&my.url(&db), DAILY, "table = \"daily\"");
    let first = sales(1, 300);
    write_sales(dir.path(), "a.csv", &first);
    let plan = sluice_env(dir.path(), &["plan", "."], &env).expect(0);
    assert!(
        plan.stdout
            .contains("load:   table daily of database serving (overwrite): missing: created"),
        "{}",
        plan.stdout
    );
    let (_, report) = run(dir.path(), &env, 0);
    assert_eq!(report["models"][0]["loaded"]["rows"], 300, "{report}");
    assert_eq!(table_rows(my, &db, "daily"), expected_rows(&first));
    let types = my.sql(
        &db,
        "SELECT GROUP_CONCAT(COLUMN_TYPE ORDER BY ORDINAL_POSITION), MAX(ENGINE) FROM \
         information_schema.COLUMNS JOIN information_schema.TABLES USING (TABLE_SCHEMA, \
         TABLE_NAME) WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'daily'",
    );
    assert_eq!(
        types.trim(),
        "date,bigint(20),decimal(12,2),longtext,tinyint(1),timestamp(6)\tInnoDB"
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
    assert_eq!(table_rows(my, &db, "daily"), expected_rows(&second));
    let commits = my.sql(
        &db,
        "SELECT COUNT(*), SUM(`rows`), GROUP_CONCAT(DISTINCT mode) FROM _sluice_commits \
         WHERE pipeline = 'loads' AND model = 'daily'",
    );
    assert_eq!(commits.trim(), "2\t420\toverwrite");

    // Append, into a table named with its database: each input once.
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    let head = toml.split("table = ").next().unwrap().to_string();
    std::fs::write(
        dir.path().join("sluice.toml"),
        format!("{head}table = \"{db}.log\"\nmode = \"append\"\n"),
    )
    .unwrap();
    run(dir.path(), &env, 0);
    let (_, again) = run(dir.path(), &env, 0);
    assert_eq!(again["models"][0]["status"], "skipped", "{again}");
    assert_eq!(table_rows(my, &db, "log"), expected_rows(&second));
    let third = sales(3, 40);
    write_sales(dir.path(), "c.csv", &third);
    run(dir.path(), &env, 0);
    let both: Vec<Sale> = second
        .iter()
        .chain(&second)
        .chain(&third)
        .cloned()
        .collect();
    assert_eq!(table_rows(my, &db, "log"), expected_rows(&both));
}

/// A model of every type sluice loads, with NULLs, escapes in text and bytes, the extremes
/// of unsigned integers, fractions of seconds: the server prints what the test computes
/// from the input itself, loaded with `LOAD DATA LOCAL INFILE` and, on a server with
/// `local_infile` off, with `INSERT`s.
#[test]
fn a_mariadb_table_takes_every_type_exactly_by_load_data_and_by_insert() {
    let sql = "SELECT store_id, CAST(day AS DATE) AS day, \
         arrow_cast(store_id, 'UInt8') AS u8, \
         CAST('18446744073709551610' AS BIGINT UNSIGNED) + arrow_cast(store_id, 'UInt64') AS u64, \
         CAST(store_id AS DOUBLE) / 4 AS dbl, \
         arrow_cast(CAST(store_id AS DOUBLE) / 8, 'Float32') AS f32, \
         CAST(revenue AS DECIMAL(12,2)) AS revenue, \
         CASE WHEN store_id = 3 THEN NULL ELSE note END AS note, \
         arrow_cast(note, 'Binary') AS note_bytes, \
         decode('005c090aff4e', 'hex') AS raw, \
         CAST(day AS TIMESTAMP) + INTERVAL '90 minutes 0.000123 seconds' AS local_at, \
         CAST('13:45:10.123456' AS TIME) AS at_time \
         FROM sales";
    let rows = sales(11, 200);
    let expected = |rows: &[Sale]| {
        let mut out: Vec<String> = rows
            .iter()
            .map(|(day, store, cents, note)| {
                let u64_max = 18_446_744_073_709_551_610u64 + *store as u64;
                let note_hex = if *store == 3 {
                    "NULL".to_string()
                } else {
                    hex(note)
                };
                format!(
                    "{store}\t{day}\t{store}\t{u64_max}\t{}\t{}\t{}\t{note_hex}\t{}\t\
                     005C090AFF4E\t{day} 01:30:00.000123\t13:45:10.123456",
                    *store as f64 / 4.0,
                    *store as f64 / 8.0,
                    money(*cents),
                    hex(note)
                )
            })
            .collect();
        out.sort();
        out
    };
    let print = "SELECT store_id, day, u8, u64, dbl, f32, revenue, HEX(note), HEX(note_bytes), \
                 HEX(raw), local_at, at_time FROM typed";
    let no_local = MariaDb::start_own(&["--local-infile=0"]);
    for (server, how) in [(mariadb(), "LOAD DATA"), (&no_local, "INSERT")] {
        let db = server.create_database("sink_my_types");
        let (dir, env) = pipeline(&server.url(&db), sql, "table = \"typed\"");
        std::fs::write(
            dir.path().join("sluice.toml"),
            std::fs::read_to_string(dir.path().join("sluice.toml"))
                .unwrap()
                .replace("[models.daily.sink]", "[models.typed.sink]"),
        )
        .unwrap();
        std::fs::rename(
            dir.path().join("queries/daily.sql"),
            dir.path().join("queries/typed.sql"),
        )
        .unwrap();
        write_sales(dir.path(), "a.csv", &rows);
        let (_, report) = run(dir.path(), &env, 0);
        assert_eq!(
            report["models"][0]["loaded"]["rows"], 200,
            "{how}: {report}"
        );
        assert_eq!(
            report["models"][0]["loaded"]["method"],
            if how == "INSERT" {
                "insert"
            } else {
                "load data"
            },
            "{how}: {report}"
        );
        let types = server.sql(
            &db,
            "SELECT GROUP_CONCAT(COLUMN_TYPE ORDER BY ORDINAL_POSITION) FROM \
             information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'typed'",
        );
        assert_eq!(
            types.trim(),
            "bigint(20),date,tinyint(3) unsigned,bigint(20) unsigned,double,float,\
             decimal(12,2),longtext,longblob,longblob,datetime(6),time(6)",
            "{how}"
        );
        let mut got: Vec<String> = server.sql(&db, print).lines().map(String::from).collect();
        got.sort();
        assert_eq!(got, expected(&rows), "{how}");

        // More rows than one statement takes (4 MiB): every row once, as the server's own
        // series says (labels with a quote and a backslash, which the INSERT escapes).
        server.sql(&db, "DROP TABLE typed");
        std::fs::write(
            dir.path().join("queries/typed.sql"),
            r"SELECT value AS id, concat('it''s \ ', value) AS label FROM generate_series(1, 250000)",
        )
        .unwrap();
        let (_, report) = run(dir.path(), &env, 0);
        assert_eq!(
            report["models"][0]["loaded"]["rows"], 250000,
            "{how}: {report}"
        );
        let want = server.sql(
            &db,
            r"SELECT COUNT(*), SUM(seq), SUM(CRC32(CONCAT('it''s \\ ', seq))) FROM seq_1_to_250000",
        );
        assert_eq!(
            server.sql(
                &db,
                "SELECT COUNT(*), SUM(id), SUM(CRC32(label)) FROM typed"
            ),
            want,
            "{how}"
        );
    }
}

/// Tables that cannot take the result are refused before any unit runs, naming the table
/// and why (exit 1), and stay as they were: incompatible columns, a table without
/// transactions, an upsert without a unique index on its key or with another unique index
/// a row could hit, a key twice in the result. A model failing before its publish creates
/// nothing; a wrong password never shows.
#[test]
fn mariadb_sinks_refuse_what_they_cannot_load_exactly_and_touch_nothing() {
    let my = mariadb();
    let db = my.create_database("sink_my_refuse");
    my.sql(
        &db,
        "CREATE TABLE daily (day date, store_id bigint, revenue int, note text, big bool, \
           at timestamp(6) NULL);
         INSERT INTO daily VALUES ('2020-01-01', 1, 5, 'old', 0, NULL);
         CREATE TABLE plain (day date, store_id bigint, revenue decimal(12,2), note text, \
           big bool, at timestamp(6) NULL) ENGINE=MyISAM;
         CREATE TABLE keyless (store_id bigint, day date, revenue decimal(12,2));
         CREATE TABLE twokeys (store_id bigint, day date, revenue decimal(12,2), \
           PRIMARY KEY (store_id, day), UNIQUE KEY rev (revenue));
         CREATE TABLE u (k bigint PRIMARY KEY, v text);
         INSERT INTO u VALUES (1, 'old');
         CREATE TABLE ci (k varchar(10) PRIMARY KEY, v text) COLLATE utf8mb4_general_ci;
         CREATE TABLE padded (k char(10), v text);
         CREATE TABLE only_keys (k bigint PRIMARY KEY);
         INSERT INTO only_keys VALUES (1), (100);",
    );
    let dump = |t: &str| my.sql(&db, &format!("SELECT * FROM {t}"));
    let before = dump("daily");
    let (dir, env) = pipeline(&my.url(&db), DAILY, "table = \"daily\"");
    write_sales(dir.path(), "a.csv", &sales(7, 20));
    let refused = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        refused.stderr.contains(
            "table daily: column revenue is int(11), and the result's revenue is \
                       Decimal128(12, 2): values would lose their decimals"
        ) && refused.stderr.contains("database 'serving'"),
        "{}",
        refused.stderr
    );
    assert!(!dir.path().join("out/daily/_MANIFEST").exists());
    assert_eq!(dump("daily"), before);

    let set = |keys: &str, sql: &str| {
        let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
        let head = toml.split("table = ").next().unwrap().to_string();
        std::fs::write(dir.path().join("sluice.toml"), format!("{head}{keys}\n")).unwrap();
        std::fs::write(dir.path().join("queries/daily.sql"), sql).unwrap();
    };
    let keyed = "SELECT store_id, CAST(day AS DATE) AS day, CAST(revenue AS DECIMAL(12,2)) AS \
                 revenue FROM sales";
    for (keys, sql, expected) in [
        ("table = \"plain\"", DAILY, "its storage engine is MyISAM"),
        (
            "table = \"keyless\"\nmode = \"upsert\"\nkey = [\"store_id\", \"day\"]",
            keyed,
            "needs a primary key or unique index",
        ),
        (
            "table = \"twokeys\"\nmode = \"upsert\"\nkey = [\"store_id\", \"day\"]",
            keyed,
            "another unique index, rev on (revenue)",
        ),
        (
            "table = \"u\"\nmode = \"upsert\"\nkey = [\"k\"]",
            "SELECT 7 AS k, note AS v FROM sales",
            "0 rows with a NULL in the key (k) and 1 keys on more than one row",
        ),
        // 'abc' and 'ABC ' are one key under this collation: another row would be updated.
        (
            "table = \"ci\"\nmode = \"upsert\"\nkey = [\"k\"]",
            "SELECT note AS k, note AS v FROM sales",
            "key column k has collation utf8mb4_general_ci",
        ),
        (
            "table = \"padded\"",
            "SELECT note AS k, note AS v FROM sales",
            "column k is char(10), and the result's k is Utf8: values would lose their \
             trailing spaces",
        ),
    ] {
        set(keys, sql);
        let r = sluice_env(dir.path(), &["run", "."], &env).expect(1);
        assert!(r.stderr.contains(expected), "{keys}: {}", r.stderr);
    }
    assert_eq!(dump("u"), "1\told\n");

    // An upsert of key columns only: new keys added, the others kept.
    set(
        "table = \"only_keys\"\nmode = \"upsert\"\nkey = [\"k\"]",
        "SELECT DISTINCT store_id AS k FROM sales",
    );
    run(dir.path(), &env, 0);
    let mut want: Vec<i64> = sales(7, 20).iter().map(|s| s.1).collect();
    want.extend([1, 100]);
    want.sort();
    want.dedup();
    let got: Vec<i64> = my
        .sql(&db, "SELECT k FROM only_keys ORDER BY k")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(got, want);

    // A value the column cannot hold (text longer than a VARCHAR): a warning of the
    // server's, so nothing is loaded.
    my.sql(&db, "CREATE TABLE short (k bigint, v varchar(3))");
    set(
        "table = \"short\"",
        "SELECT store_id AS k, note AS v FROM sales",
    );
    let r = sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        r.stderr.contains("nothing was loaded") && r.stderr.contains("for column 'v'"),
        "{}",
        r.stderr
    );
    assert_eq!(my.sql(&db, "SELECT COUNT(*) FROM short").trim(), "0");

    // A model that fails while it runs: its (missing) table is not created.
    set(
        "table = \"fresh\"",
        "SELECT store_id, CAST(note AS INT) AS n FROM sales",
    );
    sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert_eq!(
        my.sql(
            &db,
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'fresh'"
        )
        .trim(),
        "0"
    );

    // A wrong password: named database, no password shown.
    let bad = vec![(
        "PG_URL".to_string(),
        my.url(&db).replace(PASSWORD, "wrong-pw-123"),
    )];
    let r = sluice_env(dir.path(), &["run", "."], &bad).expect(1);
    assert!(r.stderr.contains("database 'serving'"), "{}", r.stderr);
    for out in [&r.stdout, &r.stderr] {
        assert!(
            !out.contains("wrong-pw-123") && !out.contains(PASSWORD),
            "{out}"
        );
    }
}
