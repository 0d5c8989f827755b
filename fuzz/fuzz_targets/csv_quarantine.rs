//! Any bytes read as a quarantined CSV source: no panic, and the same rows and rejects
//! wherever the file is cut into chunks (`sluice::quarantine::check_csv_read`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice::quarantine::check_csv_read(data);
});
