//! A randomised, seeded fault test of the promise that matters most: whatever happens to a
//! run (`kill -9` at a random moment, files added or corrected between runs, `--restart`,
//! reruns), the published output is always exactly the result of some run over the inputs
//! it started with, never a mix, and a final clean run gives exactly the current inputs' rows.
//!
//! The oracle is computed here, from the CSV files themselves, independently of sluice. The
//! test command runs a few seeded histories; `SLUICE_TORTURE=N` runs N (`scripts/torture N`).

use std::path::Path;
use std::time::Duration;

use crate::support::pipeline::OneModel;
use crate::support::{all_rows, parquet_batches, read_json, sluice, spawn_sluice};

/// A small deterministic generator (SplitMix64), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The rows of the model, as the oracle sees the input files: every `(id, n)` line of every
/// CSV file of `data/`, sorted.
fn oracle(dir: &Path) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir.join("data")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
            let mut fields = line.split(',');
            let (id, n) = (fields.next().unwrap(), fields.next().unwrap());
            rows.push((id.to_string(), n.to_string()));
        }
    }
    rows.sort();
    rows
}

/// The published output, read the way a reader that honours `_MANIFEST` reads it: `None`
/// when nothing is published yet.
fn published(dir: &Path) -> Option<Vec<(String, String)>> {
    let out = dir.join("out/m");
    let manifest = out.join("_MANIFEST");
    if !manifest.exists() {
        return None;
    }
    let mut rows = Vec::new();
    for f in read_json(&manifest)["files"].as_array().unwrap() {
        let batches = parquet_batches(&out.join(f["path"].as_str().unwrap()));
        let (cols, values) = all_rows(&batches);
        let (id, n) = (
            cols.iter().position(|c| c == "id").unwrap(),
            cols.iter().position(|c| c == "n").unwrap(),
        );
        rows.extend(values.into_iter().map(|r| (r[id].clone(), r[n].clone())));
    }
    rows.sort();
    Some(rows)
}

/// One history of `seed`: a pipeline of a random unit kind, then random steps of input
/// changes and runs, some killed at a random moment, each checked against the oracle.
fn history(seed: u64) -> (usize, usize) {
    let mut rng = Rng(seed);
    let batches = match rng.below(3) {
        0 => "",
        1 => "[models.m.batches]\nby = \"file\"",
        _ => "[models.m.batches]\nsize = \"day\"",
    };
    let dir = OneModel::new("events", "m")
        .source_toml(
            "format = \"csv\"\nschema = \"id INT, n INT, ts VARCHAR\"\nevent_time = \"ts\"",
        )
        .query("SELECT id, n FROM events")
        .sink_toml(&format!(
            "{batches}\n[settings]\nmax_concurrent_units = {}",
            1 + rng.below(2)
        ))
        .build();
    let d = dir.path();
    let mut next_id = 0u64;
    let mut write_file = |rng: &mut Rng, name: &str| {
        let day = 1 + rng.below(5);
        let mut text = String::from("id,n,ts\n");
        for _ in 0..1 + rng.below(40) {
            next_id += 1;
            text.push_str(&format!(
                "{next_id},{},2024-01-0{day} 0{}:00:00\n",
                rng.below(1000),
                rng.below(10)
            ));
        }
        std::fs::write(d.join("data").join(name), text).unwrap();
    };
    for f in 0..2 + rng.below(4) {
        write_file(&mut rng, &format!("f{f}.csv"));
    }
    let mut kills = 0;
    // Every state the output may legally show: nothing yet, or what a run over its inputs
    // gave.
    let mut allowed: Vec<Option<Vec<(String, String)>>> = vec![None];
    let steps = 3 + rng.below(4);
    for step in 0..steps {
        match rng.below(4) {
            0 => {
                let n = std::fs::read_dir(d.join("data")).unwrap().count();
                write_file(&mut rng, &format!("f{n}.csv"));
            }
            1 => {
                let n = std::fs::read_dir(d.join("data")).unwrap().count() as u64;
                let name = format!("f{}.csv", rng.below(n));
                write_file(&mut rng, &name);
            }
            _ => {}
        }
        let expected = oracle(d);
        allowed.push(Some(expected.clone()));
        let restart = rng.below(5) == 0;
        let mut args = vec!["-q", "run", "."];
        if restart {
            args.push("--restart");
        }
        if rng.below(2) == 0 && step + 1 < steps {
            // kill -9 at a random moment.
            let mut child = spawn_sluice(d, &args);
            std::thread::sleep(Duration::from_millis(rng.below(150)));
            let _ = child.kill();
            let _ = child.wait();
            kills += 1;
        } else {
            let run = sluice(d, &args);
            assert_eq!(run.code, 0, "seed {seed} step {step}: {}", run.stderr);
            assert_eq!(
                published(d),
                Some(expected),
                "seed {seed} step {step}: a run that succeeded published other rows"
            );
            allowed = vec![published(d)];
        }
        let now = published(d);
        assert!(
            allowed.contains(&now),
            "seed {seed} step {step}: the output is no state a run could have published"
        );
    }
    // A final clean run: exactly the current inputs.
    let run = sluice(d, &["-q", "run", "."]);
    assert_eq!(run.code, 0, "seed {seed}: {}", run.stderr);
    assert_eq!(
        published(d),
        Some(oracle(d)),
        "seed {seed}: the final output"
    );
    (steps as usize, kills)
}

#[test]
fn the_output_is_always_a_state_some_run_published() {
    let n: u64 = std::env::var("SLUICE_TORTURE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let first: u64 = std::env::var("SLUICE_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let (mut steps, mut kills) = (0, 0);
    for seed in first..first + n {
        let (s, k) = history(seed);
        steps += s;
        kills += k;
    }
    eprintln!("torture: {n} histories, {steps} steps, {kills} runs killed, 0 failures");
}
