//! Regressions of issue 12 ("nothing lost, for real", outputs and locations): a location is
//! one folder however it is spelled, and an empty variable never widens it.

use crate::support::pipeline::OneModel;
use crate::support::{append_toml, sluice, sluice_env};

/// Two models whose sinks are one folder spelled two ways are refused before anything runs,
/// whatever the spelling (before, `./out/a/`, `out/./a/`, `out/b/../a/` and `file://<abs>/out/a/`
/// all passed: both models wrote the folder and one read back the other's rows).
#[test]
fn one_folder_spelled_two_ways_is_one_folder() {
    let dir = OneModel::new("s", "x")
        .file("a.csv", "id\n1\n")
        .sink_location("out/a/")
        .build();
    let d = dir.path();
    std::fs::write(d.join("queries/y.sql"), "SELECT id + 1 AS id FROM s").unwrap();
    let abs = format!("file://{}/out/a/", d.display());
    for spelling in ["./out/a/", "out/./a/", "out/b/../a/", abs.as_str(), "out/a"] {
        let toml = d.join("sluice.toml");
        let base = std::fs::read_to_string(&toml).unwrap();
        append_toml(d, &format!("[models.y.sink]\nlocation = \"{spelling}\""));
        let run = sluice(d, &["run", "."]);
        assert_eq!(run.code, 2, "{spelling}: {}", run.stderr);
        assert!(
            run.stderr.contains("overlaps the sink of model 'x'"),
            "{spelling}: {}",
            run.stderr
        );
        assert!(!d.join("out").exists(), "{spelling}: something was written");
        std::fs::write(&toml, base).unwrap();
    }
}

/// An empty variable in a location is refused, naming the setting (before, `out/${env:TEAM}/`
/// with `TEAM` empty wrote to `out/` and deleted the data files of the outputs beside it).
#[test]
fn an_empty_variable_never_widens_a_location() {
    let dir = OneModel::new("s", "x")
        .file("a.csv", "id\n1\n")
        .sink_location("out/${env:TEAM}/")
        .build();
    let run = sluice_env(dir.path(), &["run", "."], &[("TEAM".into(), String::new())]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("models.x.sink.location: ${env:TEAM} is empty"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("out").exists());
    let run = sluice_env(dir.path(), &["run", "."], &[("TEAM".into(), "red".into())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(dir.path().join("out/red/_MANIFEST").exists());
}

/// A sink is refused (exit 2) where its write would delete what is not its own, however the
/// folder is reached: the pipeline's state and default rejects folder (`.sluice/`), its
/// `queries/`, a source reached through a symbolic link, one spelled as a `file:` URL of
/// another form (found by an operator test: each exited 0 and deleted the state database,
/// the SQL, the source's CSV, or another model's output).
#[test]
fn a_sink_never_lands_on_what_is_not_its_own() {
    let dir = OneModel::new("s", "x").file("a.csv", "id\n1\n").build();
    let d = dir.path();
    std::os::unix::fs::symlink(d.join("data"), d.join("linked")).unwrap();
    let toml = d.join("sluice.toml");
    let base = std::fs::read_to_string(&toml).unwrap();
    let abs = d.display().to_string();
    for (sink, what) in [
        (".sluice/".to_string(), "the state folder"),
        (".sluice/rejects/s/".to_string(), "the state folder"),
        ("queries/".to_string(), "the queries folder"),
        ("linked/".to_string(), "source 's'"),
        (format!("file://localhost{abs}/data/"), "source 's'"),
        (format!("file:{abs}/data/"), "source 's'"),
    ] {
        std::fs::write(
            &toml,
            base.replace("location = \"out/x/\"", &format!("location = \"{sink}\"")),
        )
        .unwrap();
        let run = sluice(d, &["run", "."]);
        assert_eq!(run.code, 2, "{sink}: {}", run.stderr);
        assert!(run.stderr.contains(what), "{sink}: {}", run.stderr);
        assert!(d.join("data/a.csv").exists() && d.join("queries/x.sql").exists());
    }
}

/// A variable that is set but empty is refused in a location even where it leaves no empty
/// segment (`out/${env:TEAM}` → `out/`, `${env:BASE}/out/` → `/out/`).
#[test]
fn an_empty_variable_is_refused_wherever_it_stands() {
    for location in ["out/${env:TEAM}", "${env:TEAM}/out/x/"] {
        let dir = OneModel::new("s", "x")
            .file("a.csv", "id\n1\n")
            .sink_location(location)
            .build();
        let run = sluice_env(dir.path(), &["run", "."], &[("TEAM".into(), String::new())]);
        assert_eq!(run.code, 2, "{location}: {}", run.stderr);
        assert!(
            run.stderr.contains("${env:TEAM} is empty"),
            "{}",
            run.stderr
        );
    }
}

/// A location with white space at an end (`" out/x/"`, `"out/x/ "`) names a folder beside the
/// one meant: refused, naming the setting and its line.
#[test]
fn a_location_with_white_space_at_an_end_is_refused() {
    for location in [" out/x/", "out/x/ ", "out/x/\t"] {
        let dir = OneModel::new("s", "x")
            .file("a.csv", "id\n1\n")
            .sink_location(location)
            .build();
        let run = sluice(dir.path(), &["plan", "."]);
        assert_eq!(run.code, 2, "{location:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("models.x.sink.location"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains("white space"), "{}", run.stderr);
        assert!(!dir.path().join(" out").exists());
    }
}
