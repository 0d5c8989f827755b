//! The layer map of `src/lib.rs`, enforced: every `crate::<module>` path in the library's code
//! must go down the layers below, or be an edge within a layer that [`WITHIN`] lists. A new
//! module must be given a layer here; an import that goes up fails with both ends named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's top-level modules, bottom layer first. A module may use any module of a
/// lower layer.
const LAYERS: &[(&str, &[&str])] = &[
    ("leaves anyone may use", &["describe", "physical", "status"]),
    ("0 vocabulary", &["config"]),
    ("1 planning", &["dag", "units"]),
    ("2 storage and the table format", &["store", "table"]),
    (
        "3 engine",
        &[
            "join",
            "quarantine",
            "catalog",
            "engine",
            "checks",
            "diagnose",
        ],
    ),
    ("4 output", &["sink"]),
    (
        "5 orchestration",
        &["progress", "report", "state", "error", "run", "tpch"],
    ),
    ("6 commands", &["commands"]),
];

/// The edges allowed between modules of one layer (from, to). Everything else within a layer
/// is refused, so these stay one-way too.
const WITHIN: &[(&str, &str)] = &[
    ("table", "store"),
    ("catalog", "quarantine"),
    ("engine", "join"),
    ("engine", "quarantine"),
    ("diagnose", "catalog"),
    ("diagnose", "engine"),
    ("diagnose", "quarantine"),
    ("state", "report"),
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
/// and without the text of string literals.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut kept = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' && !(prev == '\'' && chars.get(i + 1) == Some(&'\'')) {
                in_str = !in_str;
            }
            if !in_str {
                kept.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
            i += 1;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// The top-level modules a piece of code names through `crate::`, grouped imports
/// (`use crate::{a, b::c}`) included.
fn crate_uses(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        // `sluice::crate::` does not exist; skip `$crate::` in macros.
        if code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
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
        for used in crate_uses(&code(&text)) {
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
fn the_scanner_finds_plain_grouped_and_nested_uses_but_not_comments_or_strings() {
    let text = r#"
use crate::config::{Format, Pipeline};
use crate::{dag, store::{Location, StoreRegistry}};
// use crate::commands;
/// See [`crate::run`].
let s = "crate::report";
crate::physical::leaf_plan_methods!();
"#;
    let uses = crate_uses(&code(text));
    let expected: BTreeSet<String> = ["config", "dag", "store", "physical"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(uses, expected);
}
