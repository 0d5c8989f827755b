//! PostgreSQL and MariaDB (issue 14): the throwaway servers the database tests run against.

use crate::support::databases::{PASSWORD, mariadb, postgres};

/// Both servers start from the machine's packages, hold what is written to them, and take
/// the test user over TCP with its password only (the tests of wrong passwords rely on it).
#[test]
fn the_test_servers_start_and_check_passwords() {
    let pg = postgres();
    let db = pg.create_database("smoke");
    pg.sql(
        &db,
        "CREATE TABLE t (id int, name text); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    );
    assert_eq!(
        pg.sql(
            &db,
            "SELECT sum(id), string_agg(name, ',' ORDER BY id) FROM t"
        ),
        "3|a,b\n"
    );
    let psql = |password: &str| {
        pg.psql()
            .arg(format!(
                "postgres://sluice:{password}@127.0.0.1:{}/{db}",
                pg.port()
            ))
            .args(["-A", "-t", "-c", "SELECT count(*) FROM t"])
            .output()
            .unwrap()
    };
    let good = psql(PASSWORD);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&good.stdout), "2\n");
    let bad = psql("wrong");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let my = mariadb();
    let db = my.create_database("smoke");
    my.sql(
        &db,
        "CREATE TABLE t (id INT, name TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    );
    assert_eq!(
        my.sql(&db, "SELECT SUM(id), GROUP_CONCAT(name ORDER BY id) FROM t"),
        "3\ta,b\n"
    );
    let wrong = my
        .client()
        .args(["-u", "sluice", "-pwrong", "-e", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("Access denied"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

/// Databases and database sources are declared and shown (`sluice plan`, the URL without its
/// password); a model reading one is refused with exit 2 naming the file and line, as this
/// build cannot read databases yet (issue 14's next step), and the password is never shown.
#[test]
fn declared_database_sources_are_shown_and_reading_one_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::write(d.join("data/a.csv"), "id\n1\n").unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        "name = \"dbs\"\n[databases.app]\nurl = \"${env:APP_URL}\"\nmax_connections = 2\n\
         [sources.orders]\ndatabase = \"app\"\ntable = \"public.orders\"\n\
         partition_column = \"order_id\"\npartitions = 8\n\
         [sources.files]\nlocation = \"data/\"\n",
    )
    .unwrap();
    std::fs::write(d.join("queries/copy.sql"), "SELECT id FROM files").unwrap();
    let env = [(
        "APP_URL".to_string(),
        "postgres://app:hunter2-pw@127.0.0.1:1/shop".to_string(),
    )];
    let plan = crate::support::sluice_env(d, &["plan", "."], &env).expect(0);
    assert!(
        plan.stdout.contains(
            "orders               postgres table public.orders of database 'app' \
             (postgres://app@127.0.0.1:1/shop)  8 ranges of order_id"
        ),
        "{}",
        plan.stdout
    );
    std::fs::write(d.join("queries/copy.sql"), "SELECT * FROM orders").unwrap();
    let run = crate::support::sluice_env(d, &["run", "."], &env).expect(2);
    assert!(
        run.stderr.contains("sluice.toml:6") && run.stderr.contains("cannot read them yet"),
        "{}",
        run.stderr
    );
    for out in [&plan.stdout, &plan.stderr, &run.stdout, &run.stderr] {
        assert!(!out.contains("hunter2"), "{out}");
    }
}
