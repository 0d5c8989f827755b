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
            .contains("models.x.sink.location: \"out//\" has an empty path segment (is a variable in it empty?)"),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("out").exists());
    let run = sluice_env(dir.path(), &["run", "."], &[("TEAM".into(), "red".into())]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(dir.path().join("out/red/_MANIFEST").exists());
}
