//! Writers of one output, on local disk, on the S3 server and on Azurite: what a crashed writer leaves and
//! who may delete it (its lease says), a folder sluice did not write or whose manifest was
//! lost (refused, or adopted when asked), and writers racing to commit (none loses another's
//! update).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::support::*;

/// A lease as a writer writes it, expiring `secs` from now (negative: in the past).
fn lease(run: &str, secs: i64) -> Vec<u8> {
    let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
    format!(
        r#"{{"run_id":"{run}","holder":"test","expires_at":"{}"}}"#,
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
    .into_bytes()
}

const ORPHAN_RUN: &str = "20240101T000000Z-abcdef";
const ORPHAN: &str = "dt=2024-01-01/part-00000-20240101T000000Z-abcdef.parquet";

/// A file a publish moved before it was killed is deleted once its writer's lease has
/// expired, and left alone while it is live (that writer may still commit it).
async fn leftovers_go_when_their_writer_is_dead(t: Target) {
    let (_, by_day) = raw_counts();
    let day2 = by_day["2024-01-02"] as u64;
    t.put(&t.key(ORPHAN), b"moved, never committed".to_vec())
        .await;
    t.put(
        &t.staging_key(&format!("{ORPHAN_RUN}/_LEASE")),
        lease(ORPHAN_RUN, 300),
    )
    .await;
    let append = || {
        t.write(
            "SELECT * FROM o WHERE dt = '2024-01-02'",
            &["--partition-by", "dt", "--mode", "append"],
        )
    };
    append().expect(0);
    assert!(
        t.keys().await.contains(&ORPHAN.to_string()),
        "a live writer's file stays"
    );
    let manifest = t
        .store
        .get(&t.key("_MANIFEST"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let manifest = String::from_utf8_lossy(&manifest).to_string();
    assert!(
        !manifest.contains("abcdef"),
        "and is not in the version: {manifest}"
    );

    // The writer died: its lease expired (beyond the clock slack).
    t.put(
        &t.staging_key(&format!("{ORPHAN_RUN}/_LEASE")),
        lease(ORPHAN_RUN, -600),
    )
    .await;
    append().expect(0);
    let keys = t.keys().await;
    assert!(!keys.contains(&ORPHAN.to_string()), "{keys:?}");
    assert_eq!(t.count("parquet", &["dt"]).await, 2 * day2);
    // Its staging went with it, and nothing of this run's is left there.
    let staged: Vec<_> = t
        .store
        .list(Some(&t.staging_key("")))
        .try_collect()
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
}

on_every_backend!(
    leftovers_go_when_their_writer_is_dead:
    local_leftovers_go_when_their_writer_is_dead,
    s3_leftovers_go_when_their_writer_is_dead,
    azure_leftovers_go_when_their_writer_is_dead
);

/// `rm _MANIFEST` after two appends: the next append is refused (it would delete the files
/// as leftovers), and nothing is touched; `--adopt` takes the files back.
async fn a_lost_manifest_is_refused_then_adopted(t: Target) {
    let (_, by_day) = raw_counts();
    let day2 = by_day["2024-01-02"] as u64;
    let append = |extra: &[&str]| {
        let mut args = vec!["--partition-by", "dt", "--mode", "append"];
        args.extend_from_slice(extra);
        t.write("SELECT * FROM o WHERE dt = '2024-01-02'", &args)
    };
    append(&[]).expect(0);
    append(&[]).expect(0);
    assert_eq!(t.count("parquet", &["dt"]).await, 2 * day2);
    t.store.delete(&t.key("_MANIFEST")).await.unwrap();
    let before = t.snapshot().await;

    let run = append(&[]).expect(2);
    assert!(run.stderr.contains("_MANIFEST is gone"), "{}", run.stderr);
    assert!(run.stderr.contains("--adopt"), "{}", run.stderr);
    assert_eq!(t.snapshot().await, before, "nothing touched");

    append(&["--adopt"]).expect(0);
    assert_eq!(t.count("parquet", &["dt"]).await, 3 * day2);
}

on_every_backend!(
    a_lost_manifest_is_refused_then_adopted:
    local_a_lost_manifest_is_refused_then_adopted,
    s3_a_lost_manifest_is_refused_then_adopted,
    azure_a_lost_manifest_is_refused_then_adopted
);

/// A folder holding another program's files and no manifest: refused untouched; adopted when
/// asked, its files in the output's format become the current version (an overwrite replaces
/// them) and other files are never touched.
async fn another_programs_folder_is_refused_or_adopted(t: Target) {
    t.put(&t.key("legacy.csv"), b"id,dt\n1,2024-01-01\n".to_vec())
        .await;
    t.put(&t.key("docs/README.md"), b"# orders\n".to_vec())
        .await;
    let before = t.snapshot().await;
    let write = |mode: &str, extra: &[&str]| {
        let mut args = vec!["--format", "csv", "--mode", mode];
        args.extend_from_slice(extra);
        t.write("SELECT order_id AS id, dt FROM o", &args)
    };
    for mode in ["overwrite", "append"] {
        let run = write(mode, &[]).expect(2);
        assert!(run.stderr.contains("not empty"), "{}", run.stderr);
        assert!(
            run.stderr.contains("legacy.csv") || run.stderr.contains("README"),
            "{}",
            run.stderr
        );
        assert_eq!(t.snapshot().await, before, "nothing touched");
    }
    let raw: u64 = raw_counts().1.values().map(|n| *n as u64).sum();
    write("append", &["--adopt"]).expect(0);
    assert_eq!(
        t.count("csv", &[]).await,
        raw + 1,
        "the adopted file is part of it"
    );
    write("overwrite", &[]).expect(0);
    assert_eq!(t.count("csv", &[]).await, raw);
    let keys = t.keys().await;
    assert!(
        !keys.contains(&"legacy.csv".to_string()),
        "replaced: {keys:?}"
    );
    assert!(
        keys.contains(&"docs/README.md".to_string()),
        "never touched: {keys:?}"
    );
}

on_every_backend!(
    another_programs_folder_is_refused_or_adopted:
    local_another_programs_folder_is_refused_or_adopted,
    s3_another_programs_folder_is_refused_or_adopted,
    azure_another_programs_folder_is_refused_or_adopted
);

/// Racing writers: `SLUICE_RACE_WRITERS` processes (default 4) for `SLUICE_RACE_ROUNDS`
/// rounds (default 12) each write at once to one output: half append one row each, half
/// overwrite their own partition with the round's row (`overwrite_partitions`), and every
/// third round one of them also overwrites a partition another writer of its kind writes.
/// Afterwards, independently of the manifest's story: every append that exited 0 is there
/// exactly once and no failed one at all; each own partition holds exactly its writer's last
/// successful round; a contested partition holds one successful write whole; every failure
/// says another writer committed first.
async fn racing_writers_lose_no_update(t: Target) {
    let env_or = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let writers = env_or("SLUICE_RACE_WRITERS", 4).max(2);
    let rounds = env_or("SLUICE_RACE_ROUNDS", 12);
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut appended = BTreeMap::new();
    // Each write's log, shown if the check fails.
    let mut logs: BTreeMap<(usize, usize), String> = BTreeMap::new();
    // The successful overwrites of each partition.
    let mut overwrote: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for round in 0..rounds {
        let children: Vec<_> = (0..writers)
            .map(|w| {
                let append = w % 2 == 0;
                // Odd writers own partition `w`; every third round, writer 1 writes writer 3's.
                let part = if !append && round % 3 == 0 && w == 1 && writers > 3 {
                    3
                } else {
                    w
                };
                let sql = format!(
                    "SELECT {w} AS w, {round} AS r, 'p{part}' AS part, {} AS kind",
                    if append { "'a'" } else { "'o'" }
                );
                let mode = if append {
                    "append"
                } else {
                    "overwrite_partitions"
                };
                let mut cmd = std::process::Command::new(exe);
                cmd.current_dir(t.dir.path())
                    .args(["sql", "-e", &sql, "--out", &t.url, "--format", "csv"])
                    .args(["--partition-by", "part", "--mode", mode, "--threads", "1"])
                    .envs(t.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .env("SLUICE_LOG", "sluice=debug")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped());
                (w, append, part, cmd.spawn().unwrap())
            })
            .collect();
        for (w, append, part, child) in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            logs.insert((w, round), stderr.clone());
            if out.status.success() {
                if append {
                    appended.insert((w, round), ());
                } else {
                    overwrote
                        .entry(format!("p{part}"))
                        .or_default()
                        .push((w, round));
                }
            } else {
                assert!(
                    stderr.contains("another writer committed") && !append,
                    "writer {w} round {round}: {stderr}"
                );
            }
        }
    }
    let b = t
        .query(
            "csv",
            &["part"],
            "SELECT CAST(w AS VARCHAR) AS w, CAST(r AS VARCHAR) AS r, part, kind FROM t",
        )
        .await;
    let got = rows(&b, &["w", "r", "part", "kind"]);
    let mut appends: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut partitions: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for row in &got {
        let (w, r): (usize, usize) = (row[0].parse().unwrap(), row[1].parse().unwrap());
        if row[3] == "a" {
            *appends.entry((w, r)).or_default() += 1;
        } else {
            partitions.entry(row[2].clone()).or_default().push((w, r));
        }
    }
    let want: BTreeMap<(usize, usize), usize> = appended.keys().map(|k| (*k, 1)).collect();
    if appends != want {
        // The logs of the rounds around the first write that went wrong.
        let bad = want
            .keys()
            .chain(appends.keys())
            .find(|k| appends.get(k) != want.get(k))
            .map_or(0, |k| k.1);
        for ((w, r), log) in logs.range((0, 0)..) {
            if (bad..bad + 3).contains(r) {
                eprintln!("---- writer {w} round {r}\n{log}");
            }
        }
    }
    assert_eq!(appends, want, "every committed append exactly once");
    // Each overwritten partition holds one write whole: a successful one of the last round
    // that wrote it successfully.
    for (part, ok) in &overwrote {
        let held = &partitions[part];
        let last = ok.iter().map(|(_, r)| *r).max().unwrap();
        assert!(
            held.len() == 1 && held[0].1 == last && ok.contains(&held[0]),
            "partition {part} holds {held:?}, successful writes {ok:?}"
        );
    }
    assert_eq!(
        partitions.keys().collect::<Vec<_>>(),
        overwrote.keys().collect::<Vec<_>>()
    );
    assert!(!appended.is_empty() && !overwrote.is_empty());
}

on_every_backend!(
    racing_writers_lose_no_update:
    local_racing_writers_lose_no_update,
    s3_racing_writers_lose_no_update,
    azure_racing_writers_lose_no_update
);

/// An output inside another (either made first) is refused, naming the other's manifest:
/// the outer output's heal would take the inner one's files for its own leftovers.
async fn an_output_inside_another_is_refused(t: Target) {
    let sub = format!("{}sub/", t.url);
    let write = |out: &str, sql: &str, extra: &[&str]| {
        let mut args = vec!["sql", "-e", sql, "--out", out, "--format", "csv"];
        args.extend_from_slice(extra);
        sluice_env(t.dir.path(), &args, &t.env)
    };
    let outer = "SELECT 1 AS a, 'p1' AS part";
    write(
        &t.url,
        outer,
        &["--partition-by", "part", "--mode", "append"],
    )
    .expect(0);
    let run = write(&sub, "SELECT 2 AS b", &[]).expect(2);
    assert!(
        run.stderr.contains("inside another output"),
        "{}",
        run.stderr
    );
    // The other way round: an output first, then one around it.
    let inner = format!("{}inner/", t.url.trim_end_matches("out/"));
    let around = t.url.trim_end_matches("out/").to_string();
    write(&inner, "SELECT 2 AS b", &[]).expect(0);
    let run = write(&around, outer, &["--adopt"]).expect(2);
    assert!(
        run.stderr.contains("holds another output"),
        "{}",
        run.stderr
    );
    // Both outputs read back whole.
    assert_eq!(t.count("csv", &["part"]).await, 1);
}

on_every_backend!(
    an_output_inside_another_is_refused:
    local_an_output_inside_another_is_refused,
    s3_an_output_inside_another_is_refused,
    azure_an_output_inside_another_is_refused
);

/// Two writers reaching one local folder through a symbolic link find each other's leases:
/// a writer's moved, uncommitted file survives a write through the other spelling (before,
/// each spelling had its own staging area, and the other writer deleted it as a leftover).
#[tokio::test]
async fn a_folder_reached_through_a_link_is_one_output() {
    let t = Target::local();
    let d = t.dir.path();
    let append = |out: &str| {
        sluice_env(
            d,
            &[
                "sql",
                "-e",
                "SELECT order_id, dt FROM o WHERE dt = '2024-01-02'",
                "--table",
                &orders_arg(),
                "--out",
                out,
                "--partition-by",
                "dt",
                "--mode",
                "append",
            ],
            &[],
        )
    };
    append(&t.url).expect(0);
    std::os::unix::fs::symlink(d.join("out"), d.join("link")).unwrap();
    t.put(&t.key(ORPHAN), b"moved, not yet committed".to_vec())
        .await;
    t.put(
        &t.staging_key(&format!("{ORPHAN_RUN}/_LEASE")),
        lease(ORPHAN_RUN, 300),
    )
    .await;
    append(&format!("{}/link/", d.display())).expect(0);
    assert!(
        t.keys().await.contains(&ORPHAN.to_string()),
        "a live writer's file survives a write through the link"
    );
}

/// `[settings] staging` stages files in a folder of the user's choosing on the output's store
/// (the leases stay beside the output, where every writer looks): a run killed while staging
/// leaves its files there, and the next run deletes them and publishes every row once. A
/// staging folder on another store than the output is refused.
#[test]
fn staging_can_be_put_elsewhere_on_the_store() {
    let mut m = OneModel::new("events", "daily")
        .source_toml("format = \"csv\"\nschema = \"id INT, n INT\"")
        .sink_toml(
            "target_rows_per_file = 1\n[models.daily.batches]\nby = \"file\"\n\
             [settings]\nmax_concurrent_units = 1\nstaging = \"scratch/\"",
        );
    let mut total = 0u64;
    for day in 1..=30u64 {
        let rows: String = (0..20)
            .map(|i| format!("{},{i}\n", day * 100 + i))
            .collect();
        m = m.file(&format!("2024-01-{day:02}.csv"), format!("id,n\n{rows}"));
        total += 20;
    }
    let dir = m.build();
    let d = dir.path();
    let scratch = d.join("scratch");
    let mut child = spawn_sluice(d, &["-q", "run", "."]);
    let start = std::time::Instant::now();
    while !files_under(&scratch)
        .iter()
        .any(|f| f.ends_with(".parquet"))
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before staging was seen"
        );
        assert!(start.elapsed().as_secs() < 60, "nothing staged in scratch/");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        files_under(&d.join("out/_sluice_staging"))
            .iter()
            .any(|f| f.ends_with("_LEASE")),
        "the lease is beside the output"
    );
    assert!(!d.join("out/daily/_MANIFEST").exists());
    sluice(d, &["run", ".", "--restart"]).expect(0);
    let (rows, _) = manifest_rows(&d.join("out/daily"));
    assert_eq!(rows, total);
    assert!(
        files_under(&scratch).is_empty(),
        "{:?}",
        files_under(&scratch)
    );
    assert!(!d.join("out/_sluice_staging").exists());

    // On another store than the output: refused, naming the setting.
    crate::support::edit_file(&d.join("sluice.toml"), |t| {
        t.replace(
            "staging = \"scratch/\"",
            "staging = \"s3://elsewhere/tmp/\"",
        )
    });
    let run = sluice(d, &["run", "."]).expect(1);
    assert!(run.stderr.contains("settings.staging"), "{}", run.stderr);
}

/// Leftovers of a version partitioned otherwise (an overwrite that changed `partition_by`,
/// killed before its clean-up) are still the output's to heal; another program's files in a
/// `_staging/` folder inside it are not (only run folders there are sluice's).
#[test]
fn leftovers_of_another_partitioning_go_and_foreign_staging_stays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("o").display().to_string() + "/";
    let write = |sql: &str, extra: &[&str]| {
        let mut args = vec!["sql", "-e", sql, "--out", &out, "--format", "csv"];
        args.extend_from_slice(extra);
        sluice(d, &args).expect(0)
    };
    write("SELECT 'a' AS p, 1 AS x", &["--partition-by", "p"]);
    let old = files_under(&d.join("o/p=a"));
    let saved: Vec<(String, Vec<u8>)> = old
        .iter()
        .map(|f| (f.clone(), std::fs::read(d.join("o/p=a").join(f)).unwrap()))
        .collect();
    write("SELECT 2 AS x", &[]);
    // As if that overwrite had been killed after its commit, before its clean-up.
    std::fs::create_dir_all(d.join("o/p=a")).unwrap();
    for (f, bytes) in &saved {
        std::fs::write(d.join("o/p=a").join(f), bytes).unwrap();
    }
    std::fs::create_dir_all(d.join("o/_staging/mine")).unwrap();
    std::fs::write(d.join("o/_staging/mine/notes.txt"), "precious").unwrap();
    write("SELECT 3 AS x", &[]);
    assert!(
        files_under(&d.join("o/p=a")).is_empty(),
        "the old partitioning's file went"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("o/_staging/mine/notes.txt")).unwrap(),
        "precious"
    );
}

/// A staging folder inside a source's folder would have staged files read as input: refused,
/// naming the setting.
#[test]
fn staging_inside_a_source_is_refused() {
    let dir = OneModel::new("events", "daily")
        .source_toml("format = \"csv\"")
        .sink_toml("[settings]\nstaging = \"data/stg/\"")
        .file("a.csv", "id\n1\n")
        .build();
    let run = sluice(dir.path(), &["plan", "."]).expect(2);
    assert!(run.stderr.contains("settings.staging"), "{}", run.stderr);
    assert!(run.stderr.contains("source 'events'"), "{}", run.stderr);
}

/// An output whose manifest a newer sluice wrote (a higher format version) is neither read
/// nor written by this one: its message says so, and the output is untouched.
#[test]
fn a_manifest_from_a_newer_sluice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = format!("{}/o/", d.display());
    let write = |mode: &str| {
        sluice(
            d,
            &[
                "sql",
                "-e",
                "SELECT 1 AS x",
                "--out",
                &out,
                "--format",
                "csv",
                "--mode",
                mode,
            ],
        )
    };
    write("append").expect(0);
    let path = d.join("o/_MANIFEST");
    let text = std::fs::read_to_string(&path).unwrap();
    let newer = text.replacen("\"version\": 1", "\"version\": 99", 1);
    assert_ne!(newer, text);
    std::fs::write(&path, &newer).unwrap();
    let before = snapshot(&d.join("o"));
    let run = write("append");
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("newer sluice"), "{}", run.stderr);
    let read = sluice(
        d,
        &[
            "sql",
            "-e",
            "SELECT * FROM t",
            "--table",
            &format!("t={out}"),
        ],
    );
    assert_ne!(read.code, 0);
    assert!(read.stderr.contains("newer sluice"), "{}", read.stderr);
    assert_eq!(snapshot(&d.join("o")), before);
}
