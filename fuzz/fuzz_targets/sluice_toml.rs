//! Any text loaded as `sluice.toml`: no panic, and a refusal names the file
//! (`sluice::config::check_toml_load`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    sluice::config::check_toml_load(text);
});
