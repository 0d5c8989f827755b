//! The layer map of `src/lib.rs`, enforced: every `crate::<module>` path in the library's code
//! must go down the layers below, or be an edge within a layer that [`WITHIN`] lists. A new
//! module must be given a layer here; an import that goes up fails with both ends named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, bottom layer first. A module may use any module of a
/// lower layer.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves anyone may use",
        &["describe", "flock", "physical", "status"],
    ),
    ("0 vocabulary", &["config"]),
    ("1 planning", &["dag", "units"]),
    (
        "2 storage and the table format",
        &["store", "table", "database"],
    ),
    (
        "3 engine",
        &[
            "join",
            "rewrite",
            "quarantine",
            "catalog",
            "engine",
            "checks",
            "diagnose",
        ],
    ),
    ("4 output", &["sink", "cluster"]),
    (
        "5 orchestration",
        &[
            "progress", "report", "metrics", "lineage", "state", "error", "run", "tpch",
        ],
    ),
    ("6 commands", &["commands"]),
];

/// The edges allowed between modules of one layer (from, to). Everything else within a layer
/// is refused, so these stay one-way too.
const WITHIN: &[(&str, &str)] = &[
    ("table", "store"),
    ("catalog", "quarantine"),
    ("engine", "join"),
    ("engine", "rewrite"),
    ("engine", "quarantine"),
    ("diagnose", "catalog"),
    ("diagnose", "engine"),
    ("diagnose", "quarantine"),
    // A cluster job writes through the sink's staged write, run by executors.
    ("cluster", "sink"),
    ("state", "report"),
    ("metrics", "report"),
    ("metrics", "state"),
    ("lineage", "report"),
    ("run", "lineage"),
    // The one public error folds the errors of every layer, the state store's included;
    // only orchestration and the commands return it.
    ("error", "state"),
    ("run", "error"),
    ("run", "progress"),
    ("run", "report"),
    ("run", "state"),
    ("tpch", "error"),
    ("tpch", "progress"),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments (doc links name modules too, but are not uses)
/// and without the text of string and char literals (raw and byte strings included), each
/// literal left as one space.
fn code(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let at = |i: usize| b.get(i).copied().unwrap_or('\0');
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '/' && at(i + 1) == '/' {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && at(i + 1) == '*' {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            continue;
        }
        let starts_word =
            i == 0 || !ident(b[i - 1]) || (b[i - 1] == 'b' && (i < 2 || !ident(b[i - 2])));
        if c == 'r' && starts_word && (at(i + 1) == '"' || at(i + 1) == '#') {
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) == '"' {
                // A raw string: it ends at a quote followed by as many hashes.
                j += 1;
                while j < b.len() && !(b[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#')) {
                    j += 1;
                }
                i = j + 1 + hashes;
                out.push(' ');
                continue;
            }
        }
        if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
            continue;
        }
        if c == '\'' {
            // A char literal ('x', '"', '\'', '\u{..}'); otherwise a lifetime.
            if at(i + 1) == '\\' {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(' ');
                continue;
            }
            if at(i + 2) == '\'' {
                i += 3;
                out.push(' ');
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The top-level modules a piece of code names through `crate::` (or `$crate::` in a macro),
/// grouped imports (`use crate::{a, b::c}`) included; and through `super::` chains long
/// enough to reach the crate root from a module `depth` levels down (`src/a.rs` and
/// `src/a/mod.rs` are 1, `src/a/b.rs` is 2), when what they name is one of `modules`.
fn crate_uses(code: &str, depth: usize, modules: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let group = |rest: &str, out: &mut BTreeSet<String>| {
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group's top level at commas.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.insert(ident(&item));
        } else {
            out.insert(ident(rest));
        }
    };
    let compact: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    let compact = compact.replace(" ::", "::").replace(":: ", "::");
    for (at, _) in compact.match_indices("crate::") {
        let before = compact[..at].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        group(&compact[at + "crate::".len()..], &mut out);
    }
    for (at, _) in compact.match_indices("super::") {
        if compact[..at].ends_with("super::") {
            continue; // counted from the first `super::` of the chain
        }
        let mut rest = &compact[at..];
        let mut n = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            n += 1;
        }
        if n >= depth {
            let mut named = BTreeSet::new();
            group(rest, &mut named);
            out.extend(named.into_iter().filter(|m| modules.contains(m.as_str())));
        }
    }
    out.remove("");
    out.remove("self");
    out
}

#[test]
fn imports_go_down_the_layers() {
    let layer: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, (_, mods))| mods.iter().map(move |m| (*m, i)))
        .collect();
    let within: BTreeSet<(&str, &str)> = WITHIN.iter().copied().collect();
    let modules: BTreeSet<&str> = layer.keys().copied().collect();
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        // The crate root and the binary (main.rs, cli/) sit above every layer.
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        let Some(&from) = layer.get(module.as_str()) else {
            bad.push(format!(
                "{}: module '{module}' has no layer in tests/it/layers.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let depth =
            rel.components().count() - usize::from(rel.file_name().is_some_and(|f| f == "mod.rs"));
        for used in crate_uses(&code(&text), depth, &modules) {
            if used == module {
                continue;
            }
            let Some(&to) = layer.get(used.as_str()) else {
                bad.push(format!(
                    "{}: uses crate::{used}, which has no layer",
                    rel.display()
                ));
                continue;
            };
            let ok =
                to < from || (to == from && within.contains(&(module.as_str(), used.as_str())));
            if !ok {
                bad.push(format!(
                    "{}: {module} (layer {}) uses crate::{used} (layer {})",
                    rel.display(),
                    LAYERS[from].0,
                    LAYERS[to].0
                ));
            }
            edges.insert((module.clone(), used));
        }
    }
    assert!(
        bad.is_empty(),
        "imports against the layer map:\n{}",
        bad.join("\n")
    );
    // Every allowed edge within a layer is used: the table says what the code does.
    let unused: Vec<_> = within
        .iter()
        .filter(|(a, b)| !edges.contains(&(a.to_string(), b.to_string())))
        .collect();
    assert!(
        unused.is_empty(),
        "edges listed in WITHIN but not used: {unused:?}"
    );
}

#[test]
fn every_layer_module_is_declared_in_lib_rs_and_the_other_way_round() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))
        })
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let mapped: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|(_, mods)| mods.iter().map(|m| m.to_string()))
        .collect();
    assert_eq!(declared, mapped);
}

#[test]
fn the_scanner_finds_plain_grouped_nested_and_super_uses_but_not_comments_or_strings() {
    let text = r##"
use crate::config::{Format, Pipeline};
use crate::{dag, store::{Location, StoreRegistry}};
// use crate::commands;
/* use crate::run; /* nested */ use crate::run; */
/// See [`crate::run`].
let s = "crate::report";
let t = "a \" crate::report \
    crate::report";
let r = r#"crate::report " crate::report"#;
let c = '"'; let d = '\''; fn f<'a>(x: &'a str) {}
crate::physical::leaf_plan_methods!();
$crate::table::x();
use super::super::engine::Engine;
use super::sibling;
let x = crate
    ::units::whole();
"##;
    let modules: BTreeSet<&str> = ["engine", "units", "sibling"].into_iter().collect();
    let found = |depth| crate_uses(&code(text), depth, &modules);
    let expected = |extra: &[&str]| -> BTreeSet<String> {
        ["config", "dag", "store", "physical", "table", "units"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    // From src/a/b.rs (depth 2), `super::super::engine` is the crate's `engine`.
    assert_eq!(found(2), expected(&["engine"]));
    // From src/a/b/c.rs it is `a::engine`, not a top-level module.
    assert_eq!(found(3), expected(&[]));
    // From src/a.rs, `super::sibling` is the crate's too.
    assert_eq!(found(1), expected(&["engine", "sibling"]));
}
