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
