//! A SWIM decommission queue entry: any bytes, parsed and checked. Nothing may panic.
#![no_main]

use lapse_server::compat::swim::request::{self, DecommissionRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = request::parse_bytes::<DecommissionRequest>(data, lapse_server::compat::swim::DEFAULT_MAX_MESSAGE_BYTES) {
        let _ = request::decommission(&req);
    }
});
