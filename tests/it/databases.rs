//! PostgreSQL and MariaDB (issue 14): the throwaway servers the database tests run against.

use crate::support::databases::{PASSWORD, db_pipeline, mariadb, postgres};

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
/// password, no connection made for a source no model reads); the password is never shown.
#[test]
fn declared_database_sources_are_shown_without_their_password() {
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
             (postgres://app@127.0.0.1:1/shop, TLS prefer)  8 ranges of order_id"
        ),
        "{}",
        plan.stdout
    );
    // Reading it connects (here to a port nobody listens on): exit 1, naming the source
    // and the database.
    std::fs::write(d.join("queries/copy.sql"), "SELECT * FROM orders").unwrap();
    let run = crate::support::sluice_env(d, &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("source 'orders'")
            && run
                .stderr
                .contains("database 'app' (postgres://app@127.0.0.1:1/shop)"),
        "{}",
        run.stderr
    );
    for out in [&plan.stdout, &plan.stderr, &run.stdout, &run.stderr] {
        assert!(!out.contains("hunter2"), "{out}");
    }
}

/// Every type sluice maps is read from PostgreSQL exactly: each value, read back from the
/// Parquet output, equals what PostgreSQL itself says of it (integers, exact decimals,
/// timestamps as microseconds since 1970, dates as days, text, JSON, bytes, UUIDs, enums,
/// NULLs), including values before 1970 and near the ends of the ranges.
#[tokio::test]
async fn a_postgres_table_of_every_mapped_type_is_read_exactly() {
    let pg = postgres();
    let db = pg.create_database("types");
    pg.sql(
        &db,
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE typed (id int4 PRIMARY KEY, small int2, big int8, flag bool,
           price numeric(12,3), loose numeric, ratio float8, r4 float4, name text,
           code varchar(10), ch char(3), doc jsonb, js json, raw bytea, uid uuid, day date,
           t time, ts timestamp, tstz timestamptz, m mood);
         INSERT INTO typed VALUES
           (1, 32767, 9223372036854775807, true, 123456789.125, 0.000000000000000001, 0.5, 1.5,
            'héllo', 'abc', 'x', '{\"b\": [1, 2], \"a\": null}', '{\"z\":1}', '\\x00ff10', 
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '9999-12-31', '23:59:59.999999',
            '1969-07-20 20:17:40.5', '2024-03-31 01:30:00+02', 'happy'),
           (2, -32768, -9223372036854775808, false, -0.001, -98765432109876543210.5, -2.25, -0.25,
            '', 'z', 'ab', '[]', 'null', '\\x', '00000000-0000-0000-0000-000000000000',
            '0001-01-01', '00:00:00', '1900-01-01 00:00:00', '1970-01-01 00:00:00+00', 'sad'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL);",
    );
    let (dir, env) = db_pipeline(
        &pg.url(&db),
        "table = \"public.typed\"",
        "SELECT * FROM src",
    );
    let (run, report) = {
        let out = crate::support::sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env)
            .expect(0);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap())
                .unwrap();
        (out, r)
    };
    assert_eq!(report["models"][0]["rows_out"], 3, "{report}");
    assert_eq!(
        report["models"][0]["rows_in_by_source"]["src"], 3,
        "{report}"
    );
    assert!(!run.stderr.contains(PASSWORD));
    // What PostgreSQL says of each value, as text; microseconds and days since 1970.
    let want: Vec<Vec<String>> = pg
        .sql(
            &db,
            "SELECT concat_ws('|', id, coalesce(small::text, 'NULL'), coalesce(big::text, 'NULL'),
               coalesce(flag::text, 'NULL'), coalesce((price * 1000)::bigint::text, 'NULL'),
               coalesce(loose::text, 'NULL'), coalesce(ratio::text, 'NULL'),
               coalesce(r4::text, 'NULL'), coalesce(name, 'NULL'), coalesce(code, 'NULL'),
               CASE WHEN ch IS NULL THEN 'NULL' ELSE concat(ch, '') END, coalesce(doc::text, 'NULL'), coalesce(js::text, 'NULL'),
               coalesce(encode(raw, 'hex'), 'NULL'), coalesce(uid::text, 'NULL'),
               coalesce((day - date '1970-01-01')::text, 'NULL'),
               coalesce((extract(epoch FROM t) * 1000000)::bigint::text, 'NULL'),
               coalesce((extract(epoch FROM ts) * 1000000)::bigint::text, 'NULL'),
               coalesce((extract(epoch FROM tstz) * 1000000)::bigint::text, 'NULL'),
               coalesce(m::text, 'NULL'))
             FROM typed ORDER BY id",
        )
        .lines()
        .map(|l| l.split('|').map(String::from).collect())
        .collect();
    let got = crate::support::query_output(
        &format!("{}/out/copy/", dir.path().display()),
        "parquet",
        &[],
        "SELECT CAST(id AS VARCHAR) a, CAST(small AS VARCHAR) b, CAST(big AS VARCHAR) c,
           CAST(flag AS VARCHAR) d, CAST(CAST(price * 1000 AS BIGINT) AS VARCHAR) e,
           CAST(loose AS VARCHAR) f, CAST(ratio AS VARCHAR) g, CAST(r4 AS VARCHAR) h, name i,
           code j, ch k, doc l, js m, encode(raw, 'hex') n, uid o,
           CAST(arrow_cast(day, 'Int32') AS VARCHAR) p,
           CAST(CAST(t AS BIGINT) AS VARCHAR) q, CAST(CAST(ts AS BIGINT) AS VARCHAR) r,
           CAST(CAST(tstz AS BIGINT) AS VARCHAR) s, m t
         FROM t ORDER BY id",
    )
    .await;
    let cols = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
        "s", "t",
    ];
    let got = crate::support::rows_in_order(&got, &cols);
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&want) {
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            // Unconstrained numerics are read as decimal(38,18): compare as numbers.
            let same = a == b
                || (i == 5
                    && a.trim_end_matches('0').trim_end_matches('.')
                        == b.trim_end_matches('0').trim_end_matches('.'));
            assert!(
                same,
                "row {} column {}: sluice {a:?}, postgres {b:?}",
                g[0], cols[i]
            );
        }
    }
}

/// Failures name the database (its URL without the password), the table or column, and
/// what the server said; exit 1; the password is never printed.
#[test]
fn postgres_failures_name_the_database_and_table_never_the_password() {
    let pg = postgres();
    let db = pg.create_database("errs");
    pg.sql(
        &db,
        "CREATE TABLE shapes (id int, p point); INSERT INTO shapes VALUES (1, '(1,2)')",
    );
    let url = pg.url(&db);
    let wrong = url.replace(PASSWORD, "not-the-password");
    let cases: Vec<(String, &str, &str, Vec<&str>)> = vec![
        (
            wrong,
            "table = \"shapes\"",
            "SELECT * FROM src",
            vec![
                "password authentication failed",
                "database 'app'",
                "@127.0.0.1:",
            ],
        ),
        (
            url.replace(&format!(":{}/", pg.port()), ":1/"),
            "table = \"shapes\"",
            "SELECT * FROM src",
            vec!["database 'app'", "connecting", "refused"],
        ),
        (
            url.clone(),
            "table = \"public.nope\"",
            "SELECT * FROM src",
            vec!["table public.nope", "does not exist", "42P01"],
        ),
        (
            url.clone(),
            "table = \"shapes\"",
            "SELECT * FROM src",
            vec!["column p has type point", "cannot read", "::text"],
        ),
        (
            url.clone(),
            "query = \"SELECT 1/0 AS x FROM shapes\"",
            "SELECT * FROM src",
            vec!["division by zero", "22012"],
        ),
    ];
    for (u, keys, sql, want) in cases {
        let (dir, env) = db_pipeline(&u, keys, sql);
        let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
        for w in &want {
            assert!(
                run.stderr.contains(w),
                "{keys}: want {w:?} in:\n{}",
                run.stderr
            );
        }
        assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
        assert!(!run.stderr.contains("not-the-password"), "{}", run.stderr);
    }
    // Selecting the readable columns of that table works.
    let (dir, env) = db_pipeline(&url, "table = \"shapes\"", "SELECT id FROM src");
    crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(0);
}

/// A table read without `partition_column` is read in ranges of its pages (`ctid`), one
/// per connection, from one snapshot: with a writer updating rows (which moves them to other
/// pages) and inserting rows, each in its own transaction, while the import runs, every row
/// is read once, as of one instant: the writer's inserts and updates up to the same one.
#[test]
fn a_postgres_table_is_read_in_page_ranges_from_one_snapshot() {
    let pg = postgres();
    let db = pg.create_database("pages");
    pg.sql(
        &db,
        "CREATE TABLE big (id int8 PRIMARY KEY, v text);
         INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, 300000) i;",
    );
    let mut writer = pg
        .psql()
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "sluice",
            "-d",
            &db,
        ])
        .env("PGPASSWORD", PASSWORD)
        .args([
            "-c",
            "DO $$ BEGIN FOR i IN 1..2000000 LOOP \
               UPDATE big SET v = 'u' || i WHERE id = (i::int8 * 7919) % 300000 + 1; \
               INSERT INTO big VALUES (1000000 + i, 'w'); COMMIT; \
             END LOOP; END $$;",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (dir, env) = db_pipeline(&pg.url(&db), "table = \"big\"", "SELECT id, v FROM src");
    let run = crate::support::sluice_env(dir.path(), &["-v", "run", "."], &env).expect(0);
    let _ = writer.kill();
    let _ = writer.wait();
    let reads: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("reading database 'app'"))
        .collect();
    assert!(
        reads
            .iter()
            .any(|l| l.contains("WHERE (ctid < '(") && l.contains("ranges=2")),
        "{reads:?}"
    );
    let out = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::support::query_output(
            &format!("{}/out/copy/", dir.path().display()),
            "parquet",
            &[],
            "SELECT CAST(count(*) AS VARCHAR) n, CAST(count(DISTINCT id) AS VARCHAR) d,
               CAST(sum(CASE WHEN id <= 300000 THEN 1 ELSE 0 END) AS VARCHAR) base,
               CAST(COALESCE(max(CASE WHEN id > 1000000 THEN id - 1000000 END), 0) AS VARCHAR) hi,
               CAST(sum(CASE WHEN id > 1000000 THEN 1 ELSE 0 END) AS VARCHAR) added,
               CAST(COALESCE(max(CASE WHEN v LIKE 'u%' THEN CAST(substr(v, 2) AS BIGINT) END),
                 0) AS VARCHAR) updated FROM t",
        ));
    let row = &crate::support::rows(&out, &["n", "d", "base", "hi", "added", "updated"])[0];
    assert_eq!(row[0], row[1], "a row read twice: {row:?}");
    assert_eq!(row[2], "300000", "{row:?}");
    assert_eq!(row[3], row[4], "the ranges saw different instants: {row:?}");
    assert_eq!(
        row[3], row[5],
        "an update and its insert seen apart: {row:?}"
    );
    assert!(
        row[4].parse::<u64>().unwrap() > 0,
        "the writer had not started: {row:?}"
    );
}

/// A source read in ranges of its `partition_column`: 8 ranges over 2 connections (the
/// server's own session view, sampled through the run, never shows more than 2 of sluice's
/// client sessions; the server's parallel workers for a query are not connections), every row read once (NULLs and rows outside the bounds too), and all ranges
/// from one snapshot: a writer committing rows spread over every range while the import runs
/// is seen as of one instant (the rows it added form an unbroken prefix), never range by
/// range at different times.
#[test]
fn postgres_ranges_share_one_snapshot_under_the_connection_cap() {
    let pg = postgres();
    let db = pg.create_database("ranges");
    pg.sql(
        &db,
        "CREATE TABLE big (id int8 PRIMARY KEY, k int8, v text);
         INSERT INTO big SELECT i, CASE WHEN i % 1000 = 0 THEN NULL ELSE (i::int8 * 7919) % 300000 - 50000 END,
           repeat('x', 20) FROM generate_series(1, 300000) i;",
    );
    // The writer: one row at a time, each its own transaction, k spread over the ranges.
    let mut writer = pg
        .psql()
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "sluice",
            "-d",
            &db,
        ])
        .env("PGPASSWORD", PASSWORD)
        .args([
            "-c",
            "DO $$ BEGIN FOR i IN 1..2000000 LOOP \
               INSERT INTO big VALUES (1000000 + i, (i::int8 * 7919) % 200000, 'w'); COMMIT; \
             END LOOP; END $$;",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            let mut peak = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: usize = postgres()
                    .sql(
                        &db,
                        &format!(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = \
                             'sluice' AND datname = '{db}' AND backend_type = 'client backend'"
                        ),
                    )
                    .trim()
                    .parse()
                    .unwrap();
                peak = peak.max(n);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let (dir, env) = db_pipeline(
        &pg.url(&db),
        "table = \"big\"\npartition_column = \"k\"\npartitions = 8\n\
         lower_bound = 0\nupper_bound = 200000",
        "SELECT id, k FROM src",
    );
    let run =
        crate::support::sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env).expect(0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(
        (1..=2).contains(&peak),
        "peak sluice sessions {peak}\n{}",
        run.stderr
    );
    let ids = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::support::query_output(
            &format!("{}/out/copy/", dir.path().display()),
            "parquet",
            &[],
            "SELECT CAST(count(*) AS VARCHAR) n, CAST(count(DISTINCT id) AS VARCHAR) d,
           CAST(sum(CASE WHEN id <= 300000 THEN 1 ELSE 0 END) AS VARCHAR) base,
           CAST(COALESCE(max(CASE WHEN id > 1000000 THEN id - 1000000 END), 0) AS VARCHAR) hi,
           CAST(sum(CASE WHEN id > 1000000 THEN 1 ELSE 0 END) AS VARCHAR) added FROM t",
        ));
    let row = &crate::support::rows(&ids, &["n", "d", "base", "hi", "added"])[0];
    // Every row once; all 300,000 rows that were there before.
    assert_eq!(row[0], row[1], "a row read twice: {row:?}");
    assert_eq!(row[2], "300000", "{row:?}");
    // The writer's rows as of one instant: 1..=hi, none missing.
    assert_eq!(row[3], row[4], "the ranges saw different instants: {row:?}");
    assert!(
        row[4].parse::<u64>().unwrap() > 0,
        "the writer had not started: {row:?}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(
        report["models"][0]["rows_in_by_source"]["src"].to_string(),
        row[0],
        "{report}"
    );
}

/// TPC-H SF 0.1 orders, lineitem and customer loaded into PostgreSQL, imported by a
/// pipeline with 8 ranges each over 2 connections: every row and value equals the
/// generator's Parquet files (orders and customer row by row, lineitem by per-column
/// aggregates), compared with plain DataFusion.
#[tokio::test]
async fn tpch_tables_imported_from_postgres_in_ranges_equal_the_originals() {
    let pg = postgres();
    let db = pg.create_database("tpch");
    let dir = crate::support::tpch_pipeline_dir(0.1);
    let d = dir.path();
    let csv = crate::support::gen_tpch(d, "csv", 0.1, "csv");
    pg.sql(
        &db,
        "CREATE TABLE customer (c_custkey int8, c_name text, c_address text, c_nationkey int8,
           c_phone text, c_acctbal numeric(15,2), c_mktsegment text, c_comment text);
         CREATE TABLE orders (o_orderkey int8, o_custkey int8, o_orderstatus text,
           o_totalprice numeric(15,2), o_orderdate date, o_orderpriority text, o_clerk text,
           o_shippriority int4, o_comment text);
         CREATE TABLE lineitem (l_orderkey int8, l_partkey int8, l_suppkey int8, l_linenumber int4,
           l_quantity numeric(15,2), l_extendedprice numeric(15,2), l_discount numeric(15,2),
           l_tax numeric(15,2), l_returnflag text, l_linestatus text, l_shipdate date,
           l_commitdate date, l_receiptdate date, l_shipinstruct text, l_shipmode text,
           l_comment text);",
    );
    for table in ["customer", "orders", "lineitem"] {
        for f in std::fs::read_dir(csv.join(table)).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "csv") {
                continue; // (_MANIFEST, _SUCCESS)
            }
            pg.sql(
                &db,
                &format!("\\copy {table} FROM '{}' CSV HEADER", f.display()),
            );
        }
    }
    std::fs::write(
        d.join("sluice.toml"),
        "name = \"import\"\n[databases.app]\nurl = \"${env:PG_URL}\"\nmax_connections = 2\n\
         [sources.customer_db]\ndatabase = \"app\"\ntable = \"customer\"\n\
         partition_column = \"c_custkey\"\npartitions = 8\n\
         [sources.orders_db]\ndatabase = \"app\"\ntable = \"orders\"\n\
         partition_column = \"o_orderkey\"\npartitions = 8\n\
         [sources.lineitem_db]\ndatabase = \"app\"\ntable = \"lineitem\"\n\
         partition_column = \"l_orderkey\"\npartitions = 8\n",
    )
    .unwrap();
    for t in ["customer", "orders", "lineitem"] {
        std::fs::write(
            d.join(format!("queries/{t}.sql")),
            format!("SELECT * FROM {t}_db"),
        )
        .unwrap();
    }
    let env = [("PG_URL".to_string(), pg.url(&db))];
    crate::support::sluice_env(d, &["run", "."], &env).expect(0);
    let ctx = crate::support::plain_tpch(&d.join("data")).await;
    for t in ["customer", "orders", "lineitem"] {
        ctx.register_parquet(
            format!("{t}_out"),
            d.join(format!("out/{t}")).to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    // Every column as text, every row, in order of the keys.
    let rows_of = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            let cols: Vec<String> = batches
                .first()
                .map(|b| {
                    b.schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect()
                })
                .unwrap_or_default();
            let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
            crate::support::rows_in_order(&batches, &cols)
        }
    };
    for (t, cols, key) in [
        (
            "customer",
            "c_custkey, c_name, c_address, c_nationkey, c_phone, c_acctbal, c_mktsegment, c_comment",
            "c_custkey",
        ),
        (
            "orders",
            "o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_orderpriority, \
             o_clerk, o_shippriority, o_comment",
            "o_orderkey",
        ),
    ] {
        let as_text: Vec<String> = cols
            .split(", ")
            .map(|c| format!("CAST({c} AS VARCHAR) AS {c}"))
            .collect();
        let select =
            |from: &str| format!("SELECT {} FROM {from} ORDER BY {key}", as_text.join(", "));
        let want = rows_of(select(t)).await;
        let got = rows_of(select(&format!("{t}_out"))).await;
        assert!(!want.is_empty());
        assert_eq!(got.len(), want.len(), "{t}");
        assert!(
            got == want,
            "{t}: the imported rows differ from the originals"
        );
    }
    let agg = |from: &str| {
        format!(
            "SELECT CAST(count(*) AS VARCHAR) n, CAST(count(DISTINCT l_orderkey) AS VARCHAR) o,
               CAST(sum(l_partkey + l_suppkey + l_linenumber) AS VARCHAR) k,
               CAST(sum(l_quantity) AS VARCHAR) q, CAST(sum(l_extendedprice) AS VARCHAR) p,
               CAST(sum(l_discount) AS VARCHAR) di, CAST(sum(l_tax) AS VARCHAR) tx,
               CAST(min(l_shipdate) AS VARCHAR) s0, CAST(max(l_receiptdate) AS VARCHAR) r1,
               CAST(sum(length(l_comment || l_shipinstruct || l_shipmode || l_returnflag || l_linestatus)) AS VARCHAR) c,
               CAST(sum(CAST(l_commitdate AS INT)) AS VARCHAR) cd
             FROM {from}"
        )
    };
    let want = rows_of(agg("lineitem")).await;
    let got = rows_of(agg("lineitem_out")).await;
    assert_eq!(got, want);
}

/// Filters are sent to the database where its answer is certainly DataFusion's (the SQL sent
/// is logged), and the rows a model keeps are those PostgreSQL itself keeps for the same
/// predicate, for each filter here: pushed or not, NULLs, text, dates, decimals, booleans,
/// lists, and a range condition combined with them.
#[test]
fn filters_pushed_to_postgres_keep_exactly_the_rows_postgres_keeps() {
    let pg = postgres();
    let db = pg.create_database("pushdown");
    pg.sql(
        &db,
        &format!("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE t (id int8, name text, day date, price numeric(10,2), ok bool, ratio float8,
           code char(3), cased text COLLATE ci, path text, at timestamptz, local timestamp);
         INSERT INTO t SELECT i,
           CASE WHEN i % 7 = 0 THEN NULL ELSE 'n' || (i % 13) END,
           CASE WHEN i % 11 = 0 THEN NULL ELSE date '2024-01-01' + (i % 40) END,
           CASE WHEN i % 17 = 0 THEN NULL ELSE (i % 500) / 4.0 - 20 END,
           CASE WHEN i % 5 = 0 THEN NULL ELSE i % 2 = 0 END,
           CASE WHEN i % 19 = 0 THEN NULL ELSE (i % 100) / 8.0 END,
           CASE WHEN i % 3 = 0 THEN 'x' ELSE 'yz' END,
           CASE WHEN i % 4 = 0 THEN 'ABC' ELSE 'abc' END,
           CASE WHEN i % 6 = 0 THEN 'C:\\temp' ELSE 'D:' END,
           CASE WHEN i % 23 = 0 THEN NULL ELSE timestamptz '2024-01-01 00:00:00+00' + i * interval '37 minutes 0.000001 seconds' END,
           timestamp '1969-12-31 23:00:00' + i * interval '1 hour'
         FROM generate_series(1, 5000) i;
         ALTER DATABASE {db} SET standard_conforming_strings = off;"),
    );
    let filters = [
        ("id >= 4000", true),
        ("name = 'n3'", true),
        ("name <> 'n3'", true),
        ("name < 'n3'", false),
        ("day = DATE '2024-01-05'", true),
        ("day >= DATE '2024-02-01' OR day IS NULL", true),
        ("price < -10.25", true),
        ("NOT (ok = true)", true),
        ("ok IS NULL AND id IN (5, 10, 15, 16)", true),
        ("id NOT IN (1, 2, 3) AND ratio > 5.5", true),
        ("ratio > 5.5", false),
        ("upper(name) = 'N3'", false),
        // char(n) is read with its padding ('x  '), and compared so by sluice; PostgreSQL
        // compares char(n) ignoring it, so the filter is not pushed.
        ("code <> 'x'", false),
        // Byte-wise, as sluice compares: 'ABC' <> 'abc' although the column's collation
        // ignores case.
        ("cased <> 'abc'", true),
        // A backslash means itself, whatever the database's standard_conforming_strings.
        ("path = 'C:\\temp'", true),
        // Timestamps: instants compared as instants (the session is in UTC), to the
        // microsecond.
        (
            "at >= TIMESTAMP '2024-02-01T00:00:00Z' AND at < TIMESTAMP '2024-02-03T00:00:00Z'",
            true,
        ),
        ("at > TIMESTAMP '2024-01-01T06:10:00.000006Z'", true),
        (
            "local < TIMESTAMP '1970-01-02 03:00:00' OR local IS NULL",
            true,
        ),
    ];
    for (filter, pushed) in filters {
        // (What sluice's reading of char(n) means, in PostgreSQL's terms.)
        let pg_filter = filter
            .replace("code <> 'x'", "concat(code, '') <> 'x'")
            .replace("cased <> 'abc'", "cased COLLATE \"C\" <> 'abc'")
            .replace("path = 'C:\\temp'", "path = E'C:\\\\temp'")
            .replace("TIMESTAMP '2024", "TIMESTAMPTZ '2024");
        let (dir, env) = db_pipeline(
            &pg.url(&db),
            "table = \"t\"\npartition_column = \"id\"\npartitions = 3",
            &format!("SELECT id FROM src WHERE {filter}"),
        );
        let run = crate::support::sluice_env(dir.path(), &["-v", "run", "."], &env).expect(0);
        let sent: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.contains("reading database 'app'"))
            .collect();
        assert!(!sent.is_empty(), "{}", run.stderr);
        // The range condition, then the pushed filters, if any.
        let has_filter = sent[0].matches(" AND ").count() > 0;
        assert_eq!(has_filter, pushed, "{filter}: {sent:?}");
        let want: Vec<Vec<String>> = pg
            .sql(
                &db,
                &format!("SELECT id FROM t WHERE {pg_filter} ORDER BY id"),
            )
            .lines()
            .map(|l| vec![l.to_string()])
            .collect();
        let got = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(crate::support::query_output(
                &format!("{}/out/copy/", dir.path().display()),
                "parquet",
                &[],
                "SELECT CAST(id AS VARCHAR) v FROM t ORDER BY id",
            ));
        let got = crate::support::rows_in_order(&got, &["v"]);
        assert!(!want.is_empty(), "{filter}");
        assert_eq!(got, want, "{filter}");
    }
    // A query that stops reading early (LIMIT): the ranges' sessions are cut, not drained,
    // and the run ends normally.
    let (dir, env) = db_pipeline(
        &pg.url(&db),
        "table = \"t\"\npartition_column = \"id\"\npartitions = 3",
        "SELECT id FROM src LIMIT 7",
    );
    let (run, report) = {
        let run =
            crate::support::sluice_env(dir.path(), &["-v", "run", ".", "--report", "r.json"], &env)
                .expect(0);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap())
                .unwrap();
        (run, r)
    };
    assert_eq!(report["models"][0]["rows_out"], 7, "{report}");
    // Each range asks for at most the 7 rows.
    assert!(
        run.stderr.contains(" LIMIT 7"),
        "the LIMIT was not sent: {}",
        run.stderr
    );
    // A recursive query reads the source again on every pass (with all its ranges).
    let (dir, env) = db_pipeline(
        &pg.url(&db),
        "table = \"t\"\npartition_column = \"id\"\npartitions = 3",
        "WITH RECURSIVE r AS (SELECT id FROM src WHERE id = 1 UNION ALL \
         SELECT src.id FROM src JOIN r ON src.id = r.id + 1 WHERE src.id <= 12) SELECT id FROM r",
    );
    crate::support::sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env).expect(0);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(r["models"][0]["rows_out"], 12, "{r}");
}

/// Every session is read-only: a query source that tries to write (a function that deletes,
/// a sequence's `nextval`) fails (SQLSTATE 25006) and nothing changes; `statement_timeout` cancels a statement that runs too long.
#[test]
fn postgres_sessions_are_read_only_and_statements_time_out() {
    let pg = postgres();
    let db = pg.create_database("guards");
    pg.sql(
        &db,
        "CREATE TABLE t (id int8); INSERT INTO t SELECT generate_series(1, 100);
         CREATE SEQUENCE s;
         CREATE FUNCTION forget(x int8) RETURNS int8 AS 'DELETE FROM t WHERE id = x RETURNING id'
           LANGUAGE sql;",
    );
    let (dir, env) = db_pipeline(
        &pg.url(&db),
        "query = \"SELECT forget(id) AS id FROM t\"",
        "SELECT * FROM src",
    );
    let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("read-only transaction") && run.stderr.contains("25006"),
        "{}",
        run.stderr
    );
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM t"), "100\n");
    let (dir, env) = db_pipeline(
        &pg.url(&db),
        "query = \"SELECT nextval('s') AS n\"",
        "SELECT * FROM src",
    );
    let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(run.stderr.contains("25006"), "{}", run.stderr);
    assert_eq!(pg.sql(&db, "SELECT last_value FROM s"), "1\n");
    let (dir, env) = db_pipeline(
        &pg.url(&db),
        "query = \"SELECT 1 AS x FROM pg_sleep(5)\"",
        "SELECT * FROM src",
    );
    crate::support::edit_file(&dir.path().join("sluice.toml"), |t| {
        t.replace(
            "max_connections = 2\n",
            "max_connections = 2\nstatement_timeout = \"1s\"\n",
        )
    });
    let started = std::time::Instant::now();
    let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("statement timeout") && run.stderr.contains("57014"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Every type sluice maps is read from MariaDB exactly, from a table (types from
/// information_schema) and from a query (types from the prepared statement): each value,
/// read back from the Parquet output, equals what MariaDB itself says of it (integers
/// signed and unsigned at their ends, DECIMAL up to 65 digits, floats, dates as days and
/// date-times as microseconds since 1970, TIME as microseconds, YEAR, BIT, text in several
/// character sets, ENUM, SET, JSON, UUID, bytes, NULLs).
#[tokio::test]
async fn a_mariadb_table_of_every_mapped_type_is_read_exactly() {
    let my = mariadb();
    let db = my.create_database("types");
    my.sql(
        &db,
        "CREATE TABLE typed (id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, b1 TINYINT(1),
           si SMALLINT, su SMALLINT UNSIGNED, mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT,
           iu INT UNSIGNED, bi BIGINT, bu BIGINT UNSIGNED, price DECIMAL(12,3),
           wide DECIMAL(65,30), f FLOAT, d DOUBLE, name VARCHAR(20), ch CHAR(3), txt TEXT,
           l1 VARCHAR(10) CHARACTER SET latin1, e ENUM('sad','ok','happy'), st SET('a','b','c'),
           js JSON, uid UUID, vb VARBINARY(10), bl BLOB, day DATE, dt DATETIME(6),
           ts TIMESTAMP(6) NULL DEFAULT NULL, t TIME(6), y YEAR, bits BIT(64));
         INSERT INTO typed VALUES
           (1, -128, 255, 1, -32768, 65535, -8388608, 16777215, -2147483648, 4294967295,
            -9223372036854775808, 18446744073709551615, 123456789.125,
            12345678901234567890123456789012345.123456789012345678901234567890,
            1.5, -2.25, 'héllo 😀', 'x', 'a\\tb\\nc', 'café', 'happy', 'a,c', '{\"b\": [1, 2]}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', x'00ff10', x'', '9999-12-31',
            '1969-07-20 20:17:40.5', '2024-03-31 01:30:00.25', '23:59:59.999999', 2155,
            b'1111111111111111111111111111111111111111111111111111111111111111'),
           (2, 127, 0, 0, 32767, 0, 8388607, 0, 2147483647, 0, 9223372036854775807, 0, -0.001,
            -0.000000000000000000000000000001, -0.25, 1e300, '', 'ab ', '', '', 'sad', '', '[]',
            '00000000-0000-0000-0000-000000000000', x'', x'cafe', '1000-01-01',
            '9999-12-31 23:59:59.999999', '1970-01-01 00:00:01', '00:00:00', 1901, b'0'),
           (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL, NULL);",
    );
    // (sluice's expression over the output, MariaDB's over the table): the same value as
    // text; times as microseconds, dates as days since 1970.
    let columns: &[(&str, &str)] = &[
        ("CAST(id AS VARCHAR)", "id"),
        ("CAST(ti AS VARCHAR)", "ti"),
        ("CAST(tu AS VARCHAR)", "tu"),
        ("CAST(b1 AS VARCHAR)", "b1"),
        ("CAST(si AS VARCHAR)", "si"),
        ("CAST(su AS VARCHAR)", "su"),
        ("CAST(mi AS VARCHAR)", "mi"),
        ("CAST(mu AS VARCHAR)", "mu"),
        ("CAST(i AS VARCHAR)", "i"),
        ("CAST(iu AS VARCHAR)", "iu"),
        ("CAST(bi AS VARCHAR)", "bi"),
        ("CAST(bu AS VARCHAR)", "bu"),
        ("CAST(price AS VARCHAR)", "price"),
        ("CAST(wide AS VARCHAR)", "wide"),
        ("CAST(f AS VARCHAR)", "f"),
        ("CAST(d AS VARCHAR)", "d"),
        ("name", "name"),
        ("ch", "ch"),
        ("txt", "txt"),
        ("l1", "l1"),
        ("e", "e"),
        ("st", "st"),
        ("js", "js"),
        // (IFNULL(uid, 'NULL') would be a UUID: NULL.)
        ("uid", "CAST(uid AS CHAR)"),
        ("encode(vb, 'hex')", "LOWER(HEX(vb))"),
        ("encode(bl, 'hex')", "LOWER(HEX(bl))"),
        (
            "CAST(arrow_cast(day, 'Int32') AS VARCHAR)",
            "DATEDIFF(day, '1970-01-01')",
        ),
        (
            "CAST(CAST(dt AS BIGINT) AS VARCHAR)",
            "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', dt)",
        ),
        (
            "CAST(CAST(ts AS BIGINT) AS VARCHAR)",
            "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', ts)",
        ),
        (
            "CAST(CAST(t AS BIGINT) AS VARCHAR)",
            "HOUR(t) * 3600000000 + MINUTE(t) * 60000000 + SECOND(t) * 1000000 + MICROSECOND(t)",
        ),
        ("CAST(y AS VARCHAR)", "y + 0"),
        ("CAST(bits AS VARCHAR)", "bits + 0"),
    ];
    // What MariaDB says of each value (in UTC, as sluice's sessions are): one line per row,
    // values separated by '|' (none of the values holds one).
    let want: Vec<Vec<String>> = my
        .sql(
            &db,
            &format!(
                "SET time_zone = '+00:00'; SELECT CONCAT_WS('|', {}) FROM typed ORDER BY id",
                columns
                    .iter()
                    .map(|(_, m)| format!("IFNULL({m}, 'NULL')"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .lines()
        // (The client's batch mode escapes tabs and newlines in values.)
        .map(|l| {
            l.replace("\\t", "\t")
                .replace("\\n", "\n")
                .split('|')
                .map(String::from)
                .collect()
        })
        .collect();
    assert_eq!(want.len(), 3);
    assert_eq!(want[0][18], "a\tb\nc");
    assert_eq!(want[0][11], "18446744073709551615");
    assert_eq!(want[1][29], "0");
    for keys in [
        "table = \"typed\"".to_string(),
        format!("table = \"{db}.typed\""),
        "query = \"SELECT * FROM typed\"".to_string(),
    ] {
        let (dir, env) = db_pipeline(&my.url(&db), &keys, "SELECT * FROM src");
        let run = crate::support::sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env)
            .expect(0);
        assert!(!run.stderr.contains(PASSWORD));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap())
                .unwrap();
        assert_eq!(report["models"][0]["rows_out"], 3, "{report}");
        let names: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
        let got = crate::support::query_output(
            &format!("{}/out/copy/", dir.path().display()),
            "parquet",
            &[],
            &format!(
                "SELECT {} FROM t ORDER BY id",
                columns
                    .iter()
                    .zip(&names)
                    .map(|((s, _), n)| format!("{s} AS {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .await;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let got = crate::support::rows_in_order(&got, &names);
        assert_eq!(got.len(), 3, "{keys}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!((g.len(), w.len()), (columns.len(), columns.len()));
            for (i, (a, b)) in g.iter().zip(w).enumerate() {
                assert_eq!(
                    a, b,
                    "{keys}: row {} column {}: sluice {a:?}, mariadb {b:?}",
                    g[0], columns[i].1
                );
            }
        }
        let schema = crate::support::parquet_batches(
            &crate::support::files_under(&dir.path().join("out/copy"))
                .iter()
                .find(|f| f.ends_with(".parquet"))
                .map(|f| dir.path().join("out/copy").join(f))
                .unwrap(),
        )[0]
        .schema();
        // The Arrow types, as the docs' table says.
        use datafusion::arrow::datatypes::{DataType as T, TimeUnit::Microsecond as Us};
        let ty = |c: &str| schema.field_with_name(c).unwrap().data_type().clone();
        for (c, want) in [
            ("ti", T::Int8),
            ("tu", T::UInt8),
            ("b1", T::Int8),
            ("mi", T::Int32),
            ("mu", T::UInt32),
            ("bu", T::UInt64),
            ("price", T::Decimal128(12, 3)),
            ("wide", T::Decimal256(65, 30)),
            ("f", T::Float32),
            ("d", T::Float64),
            ("name", T::Utf8),
            ("uid", T::Utf8),
            ("vb", T::Binary),
            ("day", T::Date32),
            ("dt", T::Timestamp(Us, None)),
            ("ts", T::Timestamp(Us, Some("UTC".into()))),
            ("t", T::Time64(Us)),
            ("y", T::Int16),
            ("bits", T::UInt64),
        ] {
            assert_eq!(ty(c), want, "{keys}: {c}");
        }
    }
}

/// Failures name the database (its URL without the password), the table or column, and
/// what the server said; exit 1; the password is never printed. Values Arrow's types cannot
/// hold (a zero date, a date with a zero day, TIME below zero or of a day or more) are an
/// error naming `table.column` and the value, never another value.
#[test]
fn mariadb_failures_name_the_database_and_table_never_the_password() {
    let my = mariadb();
    let db = my.create_database("errs");
    my.sql(
        &db,
        "CREATE TABLE shapes (id INT, p POINT); INSERT INTO shapes VALUES (1, POINT(1, 2));
         CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t SELECT seq FROM seq_1_to_10000;
         SET sql_mode = '';
         CREATE TABLE bad (id INT, d DATE, dt DATETIME, t TIME);
         INSERT INTO bad VALUES (1, '0000-00-00', '2024-01-01', '-01:00:00'),
           (2, '2024-00-10', '0000-00-00 00:00:00', '25:00:00');
         DELIMITER //
         CREATE FUNCTION boom(x INT) RETURNS INT DETERMINISTIC BEGIN
           IF x = 5000 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom at 5000'; END IF;
           RETURN x; END //
         DELIMITER ;",
    );
    let url = my.url(&db);
    let wrong = url.replace(PASSWORD, "not-the-password");
    let cases: Vec<(String, &str, &str, Vec<&str>)> = vec![
        (
            wrong,
            "table = \"shapes\"",
            "SELECT * FROM src",
            vec!["Access denied", "database 'app'", "@127.0.0.1:"],
        ),
        (
            url.replace(&format!(":{}/", my.port()), ":1/"),
            "table = \"shapes\"",
            "SELECT * FROM src",
            vec!["database 'app'", "connecting", "refused"],
        ),
        (
            url.clone(),
            "table = \"nope\"",
            "SELECT * FROM src",
            vec!["table nope", "doesn't exist", "1146", "42S02"],
        ),
        (
            url.clone(),
            "table = \"shapes\"",
            "SELECT * FROM src",
            vec![
                "table shapes",
                "column p has type point",
                "cannot read",
                "ST_AsText",
            ],
        ),
        (
            url.clone(),
            "query = \"SELECT boom(id) AS x FROM t ORDER BY id\"",
            "SELECT * FROM src",
            vec!["boom at 5000", "45000", "the query of source 'src'"],
        ),
        (
            url.clone(),
            "table = \"bad\"",
            "SELECT d FROM src WHERE id = 1",
            vec!["column bad.d", "zero date 0000-00-00"],
        ),
        (
            url.clone(),
            "table = \"bad\"",
            "SELECT d FROM src WHERE id = 2",
            vec!["column bad.d", "2024-00-10"],
        ),
        (
            url.clone(),
            "table = \"bad\"",
            "SELECT dt FROM src WHERE id = 2",
            vec!["column bad.dt", "0000-00-00"],
        ),
        (
            url.clone(),
            "table = \"bad\"",
            "SELECT t FROM src WHERE id = 1",
            vec!["column bad.t", "-01:00:00"],
        ),
        (
            url.clone(),
            "table = \"bad\"",
            "SELECT t FROM src WHERE id = 2",
            vec!["column bad.t", "25:00:00"],
        ),
    ];
    for (u, keys, sql, want) in cases {
        let (dir, env) = db_pipeline(&u, keys, sql);
        let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
        for w in &want {
            assert!(
                run.stderr.contains(w),
                "{keys} / {sql}: want {w:?} in:\n{}",
                run.stderr
            );
        }
        for out in [&run.stdout, &run.stderr] {
            assert!(!out.contains(PASSWORD), "{out}");
            assert!(!out.contains("not-the-password"), "{out}");
        }
    }
    // Selecting the readable columns of that table works, and the good rows of the other.
    let (dir, env) = db_pipeline(&url, "table = \"shapes\"", "SELECT id FROM src");
    crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(0);
    let (dir, env) = db_pipeline(
        &url,
        "table = \"bad\"",
        "SELECT id, dt FROM src WHERE id = 1",
    );
    crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(0);
}

/// Every session is read-only: a query source calling a function that deletes fails (error
/// 1792) and nothing changes; the statement timeout (`max_statement_time` on MariaDB)
/// stops a statement that runs too long.
#[test]
fn mariadb_sessions_are_read_only_and_statements_time_out() {
    let my = mariadb();
    let db = my.create_database("guards");
    my.sql(
        &db,
        "CREATE TABLE t (id INT); INSERT INTO t SELECT seq FROM seq_1_to_100;
         DELIMITER //
         CREATE FUNCTION forget(x INT) RETURNS INT MODIFIES SQL DATA BEGIN
           DELETE FROM t WHERE id = x; RETURN x; END //
         DELIMITER ;",
    );
    let (dir, env) = db_pipeline(
        &my.url(&db),
        "query = \"SELECT forget(id) AS id FROM t\"",
        "SELECT * FROM src",
    );
    let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("READ ONLY") && run.stderr.contains("1792"),
        "{}",
        run.stderr
    );
    assert_eq!(my.sql(&db, "SELECT COUNT(*) FROM t"), "100\n");
    // On a database sessions may write to, reads still run in read-only transactions.
    crate::support::edit_file(&dir.path().join("sluice.toml"), |t| {
        t.replace(
            "max_connections = 2\n",
            "max_connections = 2\nread_only = false\n",
        )
    });
    let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("READ ONLY") && run.stderr.contains("1792"),
        "{}",
        run.stderr
    );
    assert_eq!(my.sql(&db, "SELECT COUNT(*) FROM t"), "100\n");
    let (dir, env) = db_pipeline(
        &my.url(&db),
        "query = \"SELECT SLEEP(5) AS x\"",
        "SELECT * FROM src",
    );
    crate::support::edit_file(&dir.path().join("sluice.toml"), |t| {
        t.replace(
            "max_connections = 2\n",
            "max_connections = 2\nstatement_timeout = \"1s\"\n",
        )
    });
    let started = std::time::Instant::now();
    let run = crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(1);
    assert!(
        run.stderr.contains("max_statement_time") && run.stderr.contains("1969"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// TPC-H SF 0.1 orders, lineitem and customer loaded into MariaDB (`LOAD DATA LOCAL` by the
/// mariadb client), imported by a pipeline with 8 ranges each and `max_connections = 2`:
/// every row and value equals the generator's Parquet files (orders and customer row by
/// row, lineitem by per-column aggregates), compared with plain DataFusion; the server's own
/// session list (`information_schema.PROCESSLIST`), sampled through the run, never shows
/// more than 2 of sluice's sessions.
#[tokio::test]
async fn tpch_tables_imported_from_mariadb_in_ranges_equal_the_originals_under_the_cap() {
    let my = mariadb();
    let db = my.create_database("tpch");
    let dir = crate::support::tpch_pipeline_dir(0.1);
    let d = dir.path();
    let csv = crate::support::gen_tpch(d, "csv", 0.1, "csv");
    // VARCHAR keeps trailing spaces (CHAR would drop them).
    my.sql(
        &db,
        "CREATE TABLE customer (c_custkey BIGINT PRIMARY KEY, c_name VARCHAR(25),
           c_address VARCHAR(40), c_nationkey BIGINT, c_phone VARCHAR(15),
           c_acctbal DECIMAL(15,2), c_mktsegment VARCHAR(10), c_comment VARCHAR(117));
         CREATE TABLE orders (o_orderkey BIGINT PRIMARY KEY, o_custkey BIGINT,
           o_orderstatus VARCHAR(1), o_totalprice DECIMAL(15,2), o_orderdate DATE,
           o_orderpriority VARCHAR(15), o_clerk VARCHAR(15), o_shippriority INT,
           o_comment VARCHAR(79));
         CREATE TABLE lineitem (l_orderkey BIGINT, l_partkey BIGINT, l_suppkey BIGINT,
           l_linenumber INT, l_quantity DECIMAL(15,2), l_extendedprice DECIMAL(15,2),
           l_discount DECIMAL(15,2), l_tax DECIMAL(15,2), l_returnflag VARCHAR(1),
           l_linestatus VARCHAR(1), l_shipdate DATE, l_commitdate DATE, l_receiptdate DATE,
           l_shipinstruct VARCHAR(25), l_shipmode VARCHAR(10), l_comment VARCHAR(44),
           PRIMARY KEY (l_orderkey, l_linenumber));",
    );
    for table in ["customer", "orders", "lineitem"] {
        for f in std::fs::read_dir(csv.join(table)).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_none_or(|e| e != "csv") {
                continue; // (_MANIFEST, _SUCCESS)
            }
            let out = my
                .client()
                .args(["-u", "sluice", &format!("-p{PASSWORD}"), "--local-infile=1"])
                .args(["--default-character-set=utf8mb4", "-D", &db, "-e"])
                .arg(format!(
                    "LOAD DATA LOCAL INFILE '{}' INTO TABLE {table} CHARACTER SET utf8mb4 \
                     FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY '' \
                     LINES TERMINATED BY '\\n' IGNORE 1 LINES; SHOW WARNINGS",
                    f.display()
                ))
                .output()
                .unwrap();
            assert!(
                out.status.success() && out.stdout.is_empty(),
                "loading {table}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    std::fs::write(
        d.join("sluice.toml"),
        "name = \"import\"\n[databases.app]\nurl = \"${env:MY_URL}\"\nmax_connections = 2\n\
         [sources.customer_db]\ndatabase = \"app\"\ntable = \"customer\"\n\
         partition_column = \"c_custkey\"\npartitions = 8\n\
         [sources.orders_db]\ndatabase = \"app\"\ntable = \"orders\"\n\
         partition_column = \"o_orderkey\"\npartitions = 8\n\
         [sources.lineitem_db]\ndatabase = \"app\"\ntable = \"lineitem\"\n\
         partition_column = \"l_orderkey\"\npartitions = 8\n",
    )
    .unwrap();
    for t in ["customer", "orders", "lineitem"] {
        std::fs::write(
            d.join(format!("queries/{t}.sql")),
            format!("SELECT * FROM {t}_db"),
        )
        .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, db) = (stop.clone(), db.clone());
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // (The sampler's own session is in no database.)
                let n: usize = mariadb()
                    .sql(
                        "",
                        &format!(
                            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE \
                             USER = 'sluice' AND DB = '{db}' AND ID <> CONNECTION_ID()"
                        ),
                    )
                    .trim()
                    .parse()
                    .unwrap();
                peak = peak.max(n);
                samples += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            (peak, samples)
        })
    };
    let env = [("MY_URL".to_string(), my.url(&db))];
    let run = crate::support::sluice_env(d, &["-v", "run", "."], &env).expect(0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (peak, samples) = sampler.join().unwrap();
    assert!(
        (1..=2).contains(&peak),
        "peak sluice sessions {peak} in {samples} samples\n{}",
        run.stderr
    );
    // The ranges' SQL, in MySQL's dialect.
    assert!(
        run.stderr.contains(
            "reading database 'app': SELECT `o_orderkey`, `o_custkey`, `o_orderstatus`, "
        ) && run.stderr.contains("FROM `orders` WHERE (`o_orderkey` < "),
        "{}",
        run.stderr
    );
    let ctx = crate::support::plain_tpch(&d.join("data")).await;
    for t in ["customer", "orders", "lineitem"] {
        ctx.register_parquet(
            format!("{t}_out"),
            d.join(format!("out/{t}")).to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    }
    let rows_of = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            let cols: Vec<String> = batches
                .first()
                .map(|b| {
                    b.schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().clone())
                        .collect()
                })
                .unwrap_or_default();
            let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
            crate::support::rows_in_order(&batches, &cols)
        }
    };
    for (t, cols, key) in [
        (
            "customer",
            "c_custkey, c_name, c_address, c_nationkey, c_phone, c_acctbal, c_mktsegment, c_comment",
            "c_custkey",
        ),
        (
            "orders",
            "o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_orderpriority, \
             o_clerk, o_shippriority, o_comment",
            "o_orderkey",
        ),
    ] {
        let as_text: Vec<String> = cols
            .split(", ")
            .map(|c| format!("CAST({c} AS VARCHAR) AS {c}"))
            .collect();
        let select =
            |from: &str| format!("SELECT {} FROM {from} ORDER BY {key}", as_text.join(", "));
        let want = rows_of(select(t)).await;
        let got = rows_of(select(&format!("{t}_out"))).await;
        assert!(!want.is_empty());
        crate::support::assert_same_rows(&got, &want, t);
    }
    let agg = |from: &str| {
        format!(
            "SELECT CAST(count(*) AS VARCHAR) n, CAST(count(DISTINCT l_orderkey) AS VARCHAR) o,
               CAST(sum(l_partkey + l_suppkey + l_linenumber) AS VARCHAR) k,
               CAST(sum(l_quantity) AS VARCHAR) q, CAST(sum(l_extendedprice) AS VARCHAR) p,
               CAST(sum(l_discount) AS VARCHAR) di, CAST(sum(l_tax) AS VARCHAR) tx,
               CAST(min(l_shipdate) AS VARCHAR) s0, CAST(max(l_receiptdate) AS VARCHAR) r1,
               CAST(sum(length(l_comment || l_shipinstruct || l_shipmode || l_returnflag || l_linestatus)) AS VARCHAR) c,
               CAST(sum(CAST(l_commitdate AS INT)) AS VARCHAR) cd,
               CAST(count(DISTINCT l_comment) AS VARCHAR) dc
             FROM {from}"
        )
    };
    let want = rows_of(agg("lineitem")).await;
    let got = rows_of(agg("lineitem_out")).await;
    assert_eq!(got, want);
}

/// Filters are sent to MariaDB where its answer is certainly DataFusion's (the SQL sent is
/// logged), and the rows a model keeps are those MariaDB keeps for the same predicate as
/// sluice means it, for each filter here, pushed or not: text under the default
/// case-insensitive collation ('abc' and 'ABC' are equal there, not in sluice) and with
/// trailing spaces (equal there under PAD SPACE), backslashes, a latin1 column, NULLs,
/// dates, decimals, unsigned integers, YEAR, DATETIME and TIMESTAMP, lists, with range
/// conditions. A LIMIT ends
/// the read early and the run normally.
#[test]
fn filters_pushed_to_mariadb_keep_exactly_the_rows_mariadb_keeps() {
    let my = mariadb();
    let db = my.create_database("pushdown");
    my.sql(
        &db,
        "CREATE TABLE t (id BIGINT, name VARCHAR(10), day DATE, price DECIMAL(10,2),
           ok TINYINT(1), ratio DOUBLE, code CHAR(3), cased VARCHAR(3), padded VARCHAR(5),
           path VARCHAR(10), l1 VARCHAR(5) CHARACTER SET latin1, u INT UNSIGNED, y YEAR,
           note TEXT, at DATETIME(6), at0 DATETIME, ts TIMESTAMP(6) NULL);
         SET time_zone = '+00:00';
         INSERT INTO t SELECT seq,
           CASE WHEN seq % 7 = 0 THEN NULL ELSE CONCAT('n', seq % 13) END,
           CASE WHEN seq % 11 = 0 THEN NULL ELSE DATE '2024-01-01' + INTERVAL (seq % 40) DAY END,
           CASE WHEN seq % 17 = 0 THEN NULL ELSE (seq % 500) / 4.0 - 20 END,
           CASE WHEN seq % 5 = 0 THEN NULL ELSE seq % 2 = 0 END,
           CASE WHEN seq % 19 = 0 THEN NULL ELSE (seq % 100) / 8.0 END,
           CASE WHEN seq % 3 = 0 THEN 'x' ELSE 'yz' END,
           CASE WHEN seq % 4 = 0 THEN 'ABC' ELSE 'abc' END,
           CASE WHEN seq % 6 = 0 THEN 'abc ' ELSE 'abc' END,
           CASE WHEN seq % 6 = 0 THEN 'C:\\\\temp' ELSE 'D:' END,
           CASE WHEN seq % 8 = 0 THEN 'CAFÉ' ELSE 'café' END,
           seq % 20,
           2000 + seq % 30,
           CASE WHEN seq % 9 = 0 THEN 'Note' ELSE 'note' END,
           CASE WHEN seq % 23 = 0 THEN NULL ELSE TIMESTAMP '2024-01-01 00:00:00'
             + INTERVAL seq * 1009 SECOND + INTERVAL seq % 7 MICROSECOND END,
           TIMESTAMP '2024-01-03 00:00:00' + INTERVAL (CAST(seq AS SIGNED) - 2500) * 7 SECOND,
           CASE WHEN seq % 29 = 0 THEN NULL ELSE TIMESTAMP '2024-01-01 00:00:00'
             + INTERVAL seq * 613 SECOND + INTERVAL seq % 5 MICROSECOND END
         FROM seq_1_to_5000;",
    );
    // (sluice's filter, whether it is pushed, MariaDB's predicate meaning what sluice's
    // means: text compared byte by byte.)
    let filters: &[(&str, bool, &str)] = &[
        ("id >= 4000", true, "id >= 4000"),
        ("name = 'n3'", true, "BINARY name = 'n3'"),
        ("name <> 'n3'", true, "BINARY name <> 'n3'"),
        ("name < 'n3'", false, "BINARY name < 'n3'"),
        ("day = DATE '2024-01-05'", true, "day = DATE '2024-01-05'"),
        (
            "day >= DATE '2024-02-01' OR day IS NULL",
            true,
            "day >= DATE '2024-02-01' OR day IS NULL",
        ),
        ("price < -10.25", true, "price < -10.25"),
        ("price IN (0.25, 1.5)", true, "price IN (0.25, 1.5)"),
        ("NOT (ok = 1)", true, "NOT (ok = 1)"),
        (
            "ok IS NULL AND id IN (5, 10, 15, 16)",
            true,
            "ok IS NULL AND id IN (5, 10, 15, 16)",
        ),
        (
            "id NOT IN (1, 2, 3) AND ratio > 5.5",
            true,
            "id NOT IN (1, 2, 3) AND ratio > 5.5",
        ),
        ("ratio > 5.5", false, "ratio > 5.5"),
        ("upper(name) = 'N3'", false, "UPPER(name) = 'N3'"),
        // CHAR(n) is read without its trailing spaces; not pushed.
        ("code <> 'x'", false, "BINARY code <> 'x'"),
        // Byte-wise, as sluice compares: 'ABC' <> 'abc' although the column's collation
        // ignores case, and 'abc ' <> 'abc' although it ignores trailing spaces.
        ("cased <> 'abc'", true, "BINARY cased <> 'abc'"),
        ("cased = 'abc'", true, "BINARY cased = 'abc'"),
        ("padded <> 'abc'", true, "BINARY padded <> 'abc'"),
        ("padded IN ('abc')", true, "BINARY padded IN ('abc')"),
        ("note = 'note'", true, "BINARY note = 'note'"),
        // A backslash means itself in sluice's SQL.
        ("path = 'C:\\temp'", true, "path = 'C:\\\\temp'"),
        // A latin1 column's bytes are not the literal's: not pushed.
        (
            "l1 = 'café'",
            false,
            "BINARY CONVERT(l1 USING utf8mb4) = 'café'",
        ),
        ("u < 3", true, "u < 3"),
        // YEAR compares a literal as a year ('24' is 2024): not pushed.
        ("y = 2024", false, "y = 2024"),
        // DATETIME: local date-times, to the microsecond.
        (
            "at >= TIMESTAMP '2024-02-01 00:00:00' AND at < TIMESTAMP '2024-02-03 00:00:00'",
            true,
            "at BETWEEN '2024-02-01 00:00:00' AND '2024-02-02 23:59:59.999999'",
        ),
        (
            "at > TIMESTAMP '2024-01-05 06:10:00.000006' OR at IS NULL",
            true,
            "DATE_FORMAT(at, '%Y%m%d%H%i%s%f') > '20240105061000000006' OR at IS NULL",
        ),
        // A bound between a DATETIME(0) column's seconds.
        (
            "at0 > TIMESTAMP '2024-01-03 00:00:00.5'",
            true,
            "at0 >= '2024-01-03 00:00:01'",
        ),
        // TIMESTAMP: instants (sluice's session is in UTC), within the years it holds.
        (
            "ts < TIMESTAMP '2024-01-20T00:00:00Z'",
            true,
            "UNIX_TIMESTAMP(ts) < 1705708800",
        ),
        (
            "ts < TIMESTAMP '2040-01-01T00:00:00Z'",
            false,
            "ts IS NOT NULL",
        ),
    ];
    for (filter, pushed, my_filter) in filters {
        let (dir, env) = db_pipeline(
            &my.url(&db),
            "table = \"t\"\npartition_column = \"id\"\npartitions = 3",
            &format!("SELECT id FROM src WHERE {filter}"),
        );
        let run = crate::support::sluice_env(dir.path(), &["-v", "run", "."], &env).expect(0);
        let sent: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.contains("reading database 'app'"))
            .collect();
        assert!(!sent.is_empty(), "{}", run.stderr);
        assert!(sent[0].contains("FROM `t` WHERE (`id` < "), "{sent:?}");
        // The range condition, then the pushed filters, if any.
        let has_filter = sent[0].matches(" AND ").count() > 0;
        assert_eq!(has_filter, *pushed, "{filter}: {sent:?}");
        let want: Vec<Vec<String>> = my
            .sql(
                &db,
                &format!(
                    "SET time_zone = '+00:00'; SELECT id FROM t WHERE {my_filter} ORDER BY id"
                ),
            )
            .lines()
            .map(|l| vec![l.to_string()])
            .collect();
        let got = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(crate::support::query_output(
                &format!("{}/out/copy/", dir.path().display()),
                "parquet",
                &[],
                "SELECT CAST(id AS VARCHAR) v FROM t ORDER BY id",
            ));
        let got = crate::support::rows_in_order(&got, &["v"]);
        assert!(!want.is_empty(), "{filter}");
        assert!(want.len() < 5000, "{filter}");
        assert_eq!(got, want, "{filter}: {sent:?}");
    }
    // A query that stops reading early (LIMIT): the ranges' sessions are cut, not drained,
    // and the run ends normally.
    let (dir, env) = db_pipeline(
        &my.url(&db),
        "table = \"t\"\npartition_column = \"id\"\npartitions = 3",
        "SELECT id FROM src LIMIT 7",
    );
    crate::support::sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env).expect(0);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(r["models"][0]["rows_out"], 7, "{r}");
    // Rows counted without a column read (`SELECT 1 FROM ...` per range).
    let (dir, env) = db_pipeline(
        &my.url(&db),
        "table = \"t\"\npartition_column = \"id\"\npartitions = 3",
        "SELECT count(*) AS n FROM src WHERE id >= 4000 OR id IS NULL",
    );
    crate::support::sluice_env(dir.path(), &["run", "."], &env).expect(0);
    let n = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(crate::support::query_output(
            &format!("{}/out/copy/", dir.path().display()),
            "parquet",
            &[],
            "SELECT CAST(n AS VARCHAR) n FROM t",
        ));
    assert_eq!(
        crate::support::rows(&n, &["n"]),
        vec![vec!["1001".to_string()]]
    );
    // A recursive query reads the source again on every pass (with all its ranges).
    let (dir, env) = db_pipeline(
        &my.url(&db),
        "table = \"t\"\npartition_column = \"id\"\npartitions = 3",
        "WITH RECURSIVE r AS (SELECT id FROM src WHERE id = 1 UNION ALL \
         SELECT src.id FROM src JOIN r ON src.id = r.id + 1 WHERE src.id <= 12) SELECT id FROM r",
    );
    crate::support::sluice_env(dir.path(), &["run", ".", "--report", "r.json"], &env).expect(0);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    assert_eq!(r["models"][0]["rows_out"], 12, "{r}");
}

/// A date and a timestamp `partition_column` (with and without a time zone) split a source
/// in ranges, with bounds read from the table or given as dates and date-times: every row
/// is read once (NULLs, rows before 1970 and rows outside the given bounds too), on both
/// servers, and the ranges are compared with literals of the column's type.
#[tokio::test]
async fn date_and_timestamp_columns_split_a_source_in_ranges() {
    use crate::support::databases::Server;
    for server in [Server::Postgres, Server::MariaDb] {
        let db = server.create_database("timeranges");
        let (create, fill) = match server {
            Server::Postgres => (
                "CREATE TABLE ev (id int, day date, at timestamp, at_tz timestamptz)",
                "INSERT INTO ev SELECT i, \
                   CASE WHEN i % 100 = 0 THEN NULL ELSE DATE '1960-01-01' + (i * 37) % 30000 END, \
                   TIMESTAMP '2023-12-20' + (i::int8 * 3000000) * interval '1 millisecond', \
                   CASE WHEN i % 7 = 0 THEN NULL \
                     ELSE TIMESTAMPTZ '1999-06-01 00:00:00+00' + (i * 79) * interval '1 hour' END \
                 FROM generate_series(1, 2000) i",
            ),
            Server::MariaDb => (
                "CREATE TABLE ev (id int, day date, at datetime(6), at_tz timestamp(6) NULL)",
                "INSERT INTO ev SELECT seq, \
                   IF(seq % 100 = 0, NULL, DATE '1960-01-01' + INTERVAL (seq * 37) % 30000 DAY), \
                   TIMESTAMP '2023-12-20 00:00:00' + INTERVAL seq * 3000000 * 1000 MICROSECOND, \
                   IF(seq % 7 = 0, NULL, \
                     TIMESTAMP '1999-06-01 00:00:00' + INTERVAL seq * 79 HOUR) \
                 FROM seq_1_to_2000",
            ),
        };
        server.sql(&db, create);
        server.sql(&db, fill);
        let want: Vec<Vec<String>> = {
            let mut ids: Vec<String> = (1..=2000).map(|i: i32| i.to_string()).collect();
            ids.sort();
            ids.into_iter().map(|i| vec![i]).collect()
        };
        for (column, keys, ranges, literal) in [
            ("day", "partitions = 4", 4, "DATE '"),
            (
                "at",
                // Most rows are past the bounds (2024-01-20 on); a TOML date-time too.
                "partitions = 3\nlower_bound = \"2024-01-01\"\nupper_bound = 2024-01-20T00:00:00",
                3,
                "TIMESTAMP '2024-01-07 08:00:00",
            ),
            ("at_tz", "partitions = 5", 5, "TIMESTAMP"),
        ] {
            let (dir, env) = db_pipeline(
                &server.url(&db),
                &format!("table = \"ev\"\npartition_column = \"{column}\"\n{keys}"),
                "SELECT id FROM src",
            );
            let d = dir.path();
            let run = crate::support::sluice_env(d, &["-v", "run", "."], &env).expect(0);
            let reads: Vec<&str> = (run.stderr.lines())
                .filter(|l| l.contains("reading database 'app'"))
                .collect();
            assert!(
                reads.iter().any(|l| {
                    l.contains(&format!("ranges={ranges}"))
                        && l.contains(literal)
                        && l.contains(column)
                }),
                "{server:?} {column}: {reads:?}"
            );
            let got = crate::support::output_rows(d, "copy", &["id"]).await;
            assert_eq!(got, want, "{server:?} {column}");
            // Bounds of the wrong kind for the column: exit 1 before anything is read.
            let wrong = if column == "day" {
                ("id", "2024-01-01", "whole numbers")
            } else {
                (column, "1", "dates or date-times")
            };
            crate::support::edit_file(&d.join("sluice.toml"), |t| {
                format!(
                    "{}\nlower_bound = \"{}\"\nupper_bound = \"{}\"\n",
                    t.replace(&format!("partition_column = \"{column}\"\n{keys}"), "")
                        .replace(
                            "table = \"ev\"",
                            &format!("table = \"ev\"\npartition_column = \"{}\"", wrong.0)
                        ),
                    wrong.1,
                    wrong.1
                )
            });
            let run = crate::support::sluice_env(d, &["run", "."], &env).expect(1);
            assert!(
                run.stderr.contains(wrong.2) && run.stderr.contains("source 'src'"),
                "{server:?} {column}: {}",
                run.stderr
            );
        }
    }
}
