//! The declarative config file (`--config`): any text, parsed and validated. Nothing may panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lapse_server::declare::parse(text, Duration::from_secs(30 * 86_400));
    }
});
