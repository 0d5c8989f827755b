//! Any bytes read as a quarantined CSV source: no panic, and the same rows and rejects
//! wherever the file is cut into chunks (`sluice::quarantine::check_csv_read`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys's panic hook aborts at once, even for a panic sluice catches on purpose
    // (arrow's decoder panicking on a value: the row is set aside). The default hook lets
    // those be caught; a panic nobody catches still ends the run as a crash.
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| {
        let _ = std::panic::take_hook();
    });
    sluice::quarantine::check_csv_read(data);
});
