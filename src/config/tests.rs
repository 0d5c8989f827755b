//! Unit tests of loading and validating `sluice.toml`, and of parsing its values.

use super::values::{empty_segment, key_line};
use super::*;

#[test]
fn key_lines_are_found_under_their_tables() {
    let text = "name = \"x\"\n[settings]\nthreads = 2\njoin_strategy = \"fast\"\n\
                [models.m.batches]\nby = \"key\"\n[[models.m.checks]]\nunique = \"a\"\n\
                [[models.m.checks]]\nnot_null = \"b\"\nseverity = \"x\"\n";
    assert_eq!(key_line(text, "settings.join_strategy"), Some(4));
    assert_eq!(key_line(text, "settings.threads"), Some(3));
    assert_eq!(key_line(text, "models.m.batches.by"), Some(6));
    assert_eq!(key_line(text, "models.m.batches.buckets"), Some(5));
    assert_eq!(key_line(text, "models.m.checks[1].severity"), Some(11));
    assert_eq!(key_line(text, "models.m.checks[1]"), Some(9));
    assert_eq!(key_line(text, "models.m.checks[0]"), Some(7));
    assert_eq!(key_line(text, "sources.s.format"), None);
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Pipeline, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env)
}

#[test]
fn inputs_the_fuzzer_found_and_its_seeds_still_load_or_are_refused_by_name() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["regressions/sluice_toml", "corpus/sluice_toml"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().file_name().is_some_and(|n| n == "README.md") {
                continue;
            }
            let bytes = std::fs::read(e.path()).unwrap();
            super::check_toml_load(&String::from_utf8_lossy(&bytes));
            n += 1;
        }
    }
    assert!(n > 0, "no inputs under {}", root.display());
}

#[test]
fn sizes_parse_in_binary_and_decimal_units() {
    assert_eq!(parse_size("4GiB"), Some(4 << 30));
    assert_eq!(parse_size("512MiB"), Some(512 << 20));
    assert_eq!(parse_size("2GB"), Some(2_000_000_000));
    assert_eq!(parse_size("1000"), Some(1000));
    assert_eq!(parse_size("1.5 KiB"), Some(1536));
    assert_eq!(parse_size("lots"), None);
    assert_eq!(parse_size("3 parsecs"), None);
}

#[test]
fn env_references_are_replaced_and_missing_ones_named() {
    let env = |k: &str| (k == "SECRET").then(|| "s3cr3t".to_string());
    assert_eq!(
        interpolate_env("a-${env:SECRET}-b", &env).unwrap(),
        "a-s3cr3t-b"
    );
    assert_eq!(interpolate_env("${env:NOPE}", &env).unwrap_err(), "NOPE");
    assert_eq!(interpolate_env("plain", &env).unwrap(), "plain");
}

#[test]
fn syntax_errors_name_line_and_column() {
    let err = load("name = \"x\"\n[settings]\nthreads = \"two\"\n").unwrap_err();
    match err {
        ConfigError::Syntax { line, column, .. } => assert_eq!((line, column), (3, 11)),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn unknown_keys_are_rejected() {
    let err = load("[settings]\nthread = 2\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("unknown field `thread`"), "{msg}");
    assert!(msg.contains("sluice.toml:2:1"), "{msg}");
}

#[test]
fn unknown_format_names_the_line() {
    let err = load("[sources.a]\nlocation = \"a/\"\nformat = \"xml\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sluice.toml:3:10"), "{msg}");
    assert!(msg.contains("xml"), "{msg}");
}

#[test]
fn format_is_inferred_from_the_extension() {
    let p = load("[sources.a]\nlocation = \"data/a.csv.gz\"\n").unwrap();
    assert_eq!(p.sources["a"].format, Format::Csv);
    let err = load("[sources.a]\nlocation = \"s3://b/data/\"\n").unwrap_err();
    assert!(err.to_string().contains("sources.a.format"), "{err}");
}

#[test]
fn store_secrets_are_not_in_debug_output() {
    let env = |k: &str| (k == "KEY").then(|| "hunter2".to_string());
    let p = Pipeline::from_toml(
        "[stores.lake]\nurl = \"s3://lake\"\nsecret_access_key = \"${env:KEY}\"\n",
        Path::new("sluice.toml"),
        Path::new("/tmp"),
        &env,
    )
    .unwrap();
    assert_eq!(p.stores[0].options["secret_access_key"], "hunter2");
    let shown = format!("{p:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("secret_access_key"), "{shown}");
}

/// One folder spelled many ways resolves to one location, so the overlap checks compare
/// folders, not spellings (issue 12 #10).
#[test]
fn locations_resolve_to_one_spelling() {
    let base = Path::new("/p");
    for spelling in [
        "out/a/",
        "./out/a/",
        "out/./a/",
        "out/b/../a/",
        "/p/out/a/",
        "file:///p/out/a/",
        "file:///p/x/../out/a/",
    ] {
        assert_eq!(resolve_location(spelling, base), "/p/out/a/", "{spelling}");
    }
    assert_eq!(resolve_location("data.csv", base), "/p/data.csv");
    assert_eq!(resolve_location("s3://b/k/", base), "s3://b/k/");
    for empty in ["out//", "out//a/", "s3://b//k/", "file:///p//x"] {
        assert!(empty_segment(empty), "{empty}");
    }
    for fine in [
        "out/",
        "out/a",
        "s3://b/",
        "s3://b/k/",
        "file:///p/x/",
        "/abs/x/",
    ] {
        assert!(!empty_segment(fine), "{fine}");
    }
}

#[test]
fn overlapping_sinks_and_upper_case_names_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    for m in ["a", "b"] {
        std::fs::write(dir.path().join(format!("queries/{m}.sql")), "SELECT 1").unwrap();
    }
    let load_here =
        |text: &str| Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env);
    let err = load_here("[models.a.sink]\nlocation = \"out/\"\n").unwrap_err();
    assert!(
        err.to_string().contains("overlaps the sink of model"),
        "{err}"
    );
    assert!(load_here("").is_ok());
    let err = load_here("[sources.Orders]\nlocation = \"x.csv\"\n").unwrap_err();
    assert!(err.to_string().contains("lower-case"), "{err}");
}

#[test]
fn quarantine_is_refused_for_parquet() {
    load("[sources.a]\nlocation = \"a.csv\"\non_bad_rows = \"quarantine\"\n").unwrap();
    load("[sources.a]\nlocation = \"a.jsonl\"\non_bad_rows = \"quarantine\"\n").unwrap();
    load(
        "[sources.a]\nlocation = \"d/\"\nformat = \"csv\"\npartition_cols = [\"dt\"]\n\
         on_bad_rows = \"quarantine\"\n",
    )
    .unwrap();
    let err =
        load("[sources.a]\nlocation = \"a.parquet\"\non_bad_rows = \"quarantine\"\n").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("sources.a.on_bad_rows") && msg.contains("Parquet files are typed"),
        "{msg}"
    );
}

#[test]
fn durations_and_dates_parse() {
    use std::time::Duration;
    assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
    assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(
        parse_datetime("2024-02-01").unwrap().to_string(),
        "2024-02-01 00:00:00"
    );
    assert!(parse_datetime("2024-13-01").is_none());
}

#[test]
fn batches_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(dir.path().join("queries/m.sql"), "SELECT 1").unwrap();
    let load_here =
        |text: &str| Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env);
    let p = load_here("[settings]\nretries = 5\n[models.m.batches]\nsize = \"month\"\nstart = \"1992-01-01\"\nunit_timeout = \"10m\"\n").unwrap();
    let m = &p.models["m"];
    assert_eq!(m.batches.as_ref().unwrap().size, BatchSize::Month);
    assert_eq!(m.units.retries, 5);
    assert_eq!(m.units.timeout, Some(std::time::Duration::from_secs(600)));
    let err = load_here("[models.m.batches]\nsize = \"week\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown variant `week`"), "{err}");
    let err = load_here(
        "[models.m.batches]\nsize = \"day\"\nstart = \"2024-02-01\"\nend = \"2024-01-01\"\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("must be after start"), "{err}");
}

#[test]
fn line_col_counts_from_one() {
    assert_eq!(line_col("ab\ncd", 0), (1, 1));
    assert_eq!(line_col("ab\ncd", 4), (2, 2));
}

#[test]
fn compression_suffixes_follow_one_rule() {
    assert_eq!(
        split_compression("d/a.CSV.GZ"),
        ("d/a.CSV", Compression::Gzip)
    );
    assert_eq!(split_compression("a.json.zst").1, Compression::Zstd);
    assert_eq!(split_compression("a.csv"), ("a.csv", Compression::None));
    assert_eq!(split_compression("éé"), ("éé", Compression::None));
    assert_eq!(Format::from_path("x.Csv.Bz2"), Some(Format::Csv));
    assert_eq!(Format::from_path("x.gz"), None);
    assert_eq!(Compression::from_path("x.jsonl.XZ"), Compression::Xz);
    for c in [
        Compression::Gzip,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Xz,
    ] {
        assert_eq!(Compression::from_path(&format!("a.csv{}", c.suffix())), c);
    }
    assert_eq!(Compression::None.suffix(), "");
}

/// `target_file_size` is parsed as `memory_limit` is, defaults to 512 MiB, and is refused
/// (naming the setting) when it is not a size, or above 4 GiB for an S3 sink: publishing copies
/// each file, and S3 copies at most 5 GiB at once.
#[test]
fn target_file_size_is_a_size_and_at_most_4gib_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(dir.path().join("queries/a.sql"), "SELECT 1").unwrap();
    let load_here =
        |text: &str| Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env);
    let size = |text: &str| load_here(text).unwrap().models["a"].sink.target_file_size;
    assert_eq!(size(""), 512 << 20);
    assert_eq!(DEFAULT_FILE_SIZE, 512 << 20);
    assert_eq!(
        size("[models.a.sink]\ntarget_file_size = \"64KiB\"\n"),
        65536
    );
    assert_eq!(
        size("[models.a.sink]\ntarget_file_size = \"1GB\"\n"),
        1_000_000_000
    );
    // Local disk moves files of any size.
    assert_eq!(
        size("[models.a.sink]\ntarget_file_size = \"8GiB\"\n"),
        8 << 30
    );
    let s3 = |size: &str| {
        load_here(&format!(
            "[models.a.sink]\nlocation = \"s3://lake/out/a/\"\ntarget_file_size = \"{size}\"\n"
        ))
    };
    assert_eq!(
        s3("4GiB").unwrap().models["a"].sink.target_file_size,
        4 << 30
    );
    for refused in ["5GiB", "4.5GiB", "5GB", "1TiB"] {
        let err = s3(refused).unwrap_err().to_string();
        assert!(
            err.contains("models.a.sink.target_file_size")
                && err.contains("too large for an S3 sink: at most 4GiB"),
            "{refused}: {err}"
        );
    }
    for bad in ["lots", "", "0", "-1MiB", "12 parsecs"] {
        let err = load_here(&format!("[models.a.sink]\ntarget_file_size = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models.a.sink.target_file_size") && err.contains("is not a size"),
            "{bad:?}: {err}"
        );
    }
}

/// A sink's `compression`: zstd at level 1 unless set; `zstd(N)`, `snappy`, `lz4`, `none`
/// in any case; refused, naming the setting, when unknown, out of range, or on a CSV or JSON
/// sink.
#[test]
fn sink_compression_is_a_parquet_codec() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(dir.path().join("queries/a.sql"), "SELECT 1").unwrap();
    let load_here =
        |text: &str| Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &no_env);
    let codec = |c: &str| {
        load_here(&format!("[models.a.sink]\ncompression = \"{c}\"\n"))
            .map(|p| p.models["a"].sink.compression)
    };
    assert_eq!(
        load_here("").unwrap().models["a"].sink.compression,
        ParquetCompression::Zstd(1)
    );
    for (text, want) in [
        ("zstd", ParquetCompression::Zstd(1)),
        ("ZSTD(3)", ParquetCompression::Zstd(3)),
        ("zstd( 22 )", ParquetCompression::Zstd(22)),
        ("snappy", ParquetCompression::Snappy),
        ("lz4", ParquetCompression::Lz4),
        ("none", ParquetCompression::None),
    ] {
        assert_eq!(codec(text).unwrap(), want, "{text}");
        // What it prints parses back to itself.
        assert_eq!(ParquetCompression::parse(&want.to_string()), Ok(want));
    }
    for (bad, says) in [
        ("zstd(0)", "from 1 to 22"),
        ("zstd(23)", "from 1 to 22"),
        ("zstd(x)", "from 1 to 22"),
        ("gzip", "is not a Parquet compression"),
        ("", "is not a Parquet compression"),
    ] {
        let err = codec(bad).unwrap_err().to_string();
        assert!(
            err.contains("models.a.sink.compression") && err.contains(says),
            "{bad:?}: {err}"
        );
    }
    let err = load_here("[models.a.sink]\nformat = \"csv\"\ncompression = \"snappy\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("models.a.sink.compression") && err.contains("compresses Parquet files"),
        "{err}"
    );
}

fn with_env(name: &str) -> Option<String> {
    (name == "APP_URL").then(|| "postgres://app:hunter2-pw@replica.internal:5433/shop".to_string())
}

#[test]
fn database_sources_are_declared_apart_from_file_sources() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[databases.app]\nurl = \"${env:APP_URL}\"\nmax_connections = 2\n\
                statement_timeout = \"10m\"\n\
                [sources.orders]\ndatabase = \"app\"\ntable = \"public.orders\"\n\
                partition_column = \"order_id\"\npartitions = 8\nlower_bound = 1\nupper_bound = 1000\n\
                [sources.recent]\ndatabase = \"app\"\nquery = \"SELECT * FROM users\"\n\
                [sources.files]\nlocation = \"data/\"\nformat = \"csv\"\n";
    let p = Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &with_env).unwrap();
    let db = &p.databases["app"];
    assert_eq!(db.url.kind, DatabaseKind::Postgres);
    assert_eq!(
        (db.url.host.as_str(), db.url.port),
        ("replica.internal", 5433)
    );
    assert_eq!(db.max_connections, 2);
    assert_eq!(
        db.statement_timeout,
        Some(std::time::Duration::from_secs(600))
    );
    assert!(db.read_only);
    assert!(!format!("{db:?}").contains("hunter2"), "{db:?}");
    let o = &p.database_sources["orders"];
    assert_eq!(o.relation, Relation::Table("public.orders".into()));
    assert_eq!(o.partition_column.as_deref(), Some("order_id"));
    assert_eq!(o.partitions, Some(8));
    assert_eq!(o.bounds, Some((BoundValue::Int(1), BoundValue::Int(1000))));
    // A BIGINT UNSIGNED bound past TOML's whole numbers, in quotes.
    let load_str =
        |text: &str| Pipeline::from_toml(text, Path::new("sluice.toml"), dir.path(), &with_env);
    let big = load_str(
        "[databases.app]\nurl = \"mysql://u@h/db\"\n[sources.o]\ndatabase = \"app\"\n\
         table = \"t\"\npartition_column = \"id\"\nlower_bound = \"9223372036854775808\"\n\
         upper_bound = \"18446744073709551615\"\n",
    )
    .unwrap();
    assert_eq!(
        big.database_sources["o"].bounds,
        Some((
            BoundValue::Int(1 << 63),
            BoundValue::Int(i128::from(u64::MAX))
        ))
    );
    let e = load_str(
        "[databases.app]\nurl = \"mysql://u@h/db\"\n[sources.o]\ndatabase = \"app\"\n\
         table = \"t\"\npartition_column = \"id\"\nlower_bound = 1\n\
         upper_bound = 18446744073709551615\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("write a larger one in quotes"), "{e}");
    assert_eq!(
        p.database_sources["recent"].relation,
        Relation::Query("SELECT * FROM users".into())
    );
    assert_eq!(p.sources.keys().collect::<Vec<_>>(), ["files"]);
    assert!(p.is_source("orders") && p.is_source("files") && !p.is_source("app"));
}

#[test]
fn bad_database_settings_are_refused_naming_key_and_line_never_the_password() {
    let db = "[databases.app]\nurl = \"postgres://u:hunter2-pw@h/db\"\n";
    for (text, key, line, why) in [
        (
            "[databases.app]\nurl = \"oracle://u:hunter2-pw@h/db\"\n".to_string(),
            "databases.app.url",
            2,
            "unsupported database scheme",
        ),
        (
            format!("{db}max_connections = 0\n"),
            "databases.app.max_connections",
            3,
            "at least 1",
        ),
        (
            format!("{db}lag_wait = \"5m\"\n"),
            "databases.app.lag_wait",
            3,
            "with max_replica_lag",
        ),
        (
            format!("{db}probe = \"SELECT 2\"\n"),
            "databases.app.probe",
            3,
            "with pause_when_latency_over",
        ),
        (
            format!("{db}max_connections = 1\npause_when_latency_over = \"50ms\"\n"),
            "databases.app.pause_when_latency_over",
            4,
            "2 or more",
        ),
        (
            format!("{db}max_rows_per_second = 0\n"),
            "databases.app.max_rows_per_second",
            3,
            "at least 1",
        ),
        (
            format!("{db}statement_timeout = \"soon\"\n"),
            "databases.app.statement_timeout",
            3,
            "not a duration",
        ),
        (
            format!("{db}[sources.o]\ndatabase = \"other\"\ntable = \"t\"\n"),
            "sources.o.database",
            4,
            "no [databases.other]",
        ),
        (
            format!("{db}[sources.o]\ndatabase = \"app\"\n"),
            "sources.o.database",
            4,
            "`table`",
        ),
        (
            format!("{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\nquery = \"SELECT 1\"\n"),
            "sources.o.query",
            6,
            "not both",
        ),
        (
            format!("{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\nformat = \"csv\"\n"),
            "sources.o.format",
            6,
            "sources of files",
        ),
        (
            format!("{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\npartitions = 4\n"),
            "sources.o.partitions",
            6,
            "partition_column",
        ),
        (
            format!(
                "{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\npartition_column = \"id\"\nlower_bound = 1\n"
            ),
            "sources.o.lower_bound",
            7,
            "upper_bound",
        ),
        (
            format!(
                "{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\npartition_column = \"id\"\nlower_bound = 10\nupper_bound = \"2\"\n"
            ),
            "sources.o.lower_bound",
            7,
            "10 is above upper_bound 2",
        ),
        (
            format!(
                "{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\npartition_column = \"at\"\nlower_bound = \"2024-02-01\"\nupper_bound = 2024-01-01T00:00:00\n"
            ),
            "sources.o.lower_bound",
            7,
            "\"2024-02-01\" is above upper_bound \"2024-01-01T00:00:00\"",
        ),
        (
            format!(
                "{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\npartition_column = \"at\"\nlower_bound = \"yesterday\"\nupper_bound = \"2024-01-01\"\n"
            ),
            "sources.o.lower_bound",
            7,
            "\"yesterday\" is not a bound",
        ),
        (
            format!(
                "{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\npartition_column = \"at\"\nlower_bound = 1\nupper_bound = \"2024-01-01\"\n"
            ),
            "sources.o.lower_bound",
            7,
            "of different kinds",
        ),
        (
            format!(
                "{db}[sources.o]\ndatabase = \"app\"\ntable = \"t\"\npartition_column = \"at\"\nlower_bound = 10:00:00\nupper_bound = 11:00:00\n"
            ),
            "sources.o.lower_bound",
            7,
            "not a time",
        ),
        (
            format!("{db}[sources.o]\nlocation = \"data/\"\nformat = \"csv\"\ntable = \"t\"\n"),
            "sources.o.table",
            6,
            "database sources",
        ),
        (
            format!("{db}[sources.o]\nformat = \"csv\"\n"),
            "sources.o",
            3,
            "location",
        ),
    ] {
        let err = load(&text)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"));
        let shown = err.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        match err {
            ConfigError::Invalid {
                key: k,
                line: l,
                message,
                ..
            } => {
                assert_eq!(k, key, "{text}");
                assert_eq!(l, Some(line), "{key}: {message}");
                assert!(message.contains(why), "{key}: {message}");
            }
            other => panic!("{text}: {other}"),
        }
    }
}

/// `[settings.options]`: DataFusion's options and sluice's switches, kept as text in order;
/// anything else, or a value that is not plain, refused naming the key.
#[test]
fn engine_options_are_datafusion_or_sluice_settings_with_plain_values() {
    let pipeline = load(
        "[settings.options]\n\"datafusion.execution.batch_size\" = 16384\n\
         \"datafusion.execution.parquet.pushdown_filters\" = true\n\
         \"sluice.decimal_arith\" = \"false\"\n",
    )
    .unwrap();
    assert_eq!(
        pipeline.settings.options,
        [
            ("datafusion.execution.batch_size", "16384"),
            ("datafusion.execution.parquet.pushdown_filters", "true"),
            ("sluice.decimal_arith", "false"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    for (entry, named) in [
        (
            "\"execution.batch_size\" = 1",
            ["execution.batch_size", "datafusion."],
        ),
        ("\"sluice.topk\" = [1]", ["sluice.topk", "true/false"]),
        (
            "datafusion.execution.batch_size = 1",
            ["datafusion", "in quotes"],
        ),
    ] {
        let msg = load(&format!("[settings.options]\n{entry}\n"))
            .unwrap_err()
            .to_string();
        assert!(named.iter().all(|n| msg.contains(n)), "{entry}: {msg}");
    }
}
