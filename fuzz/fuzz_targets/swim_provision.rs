//! A SWIM provision queue entry: any bytes, checked for size, UTF-8 and JSON, then turned
//! into what to create. Nothing may panic.
#![no_main]

use std::time::Duration;

use lapse_server::compat::swim::SwimConfig;
use lapse_server::compat::swim::request::{self, ProvisionRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cfg = SwimConfig::new("127.0.0.1:6379");
    cfg.provider = "docker".into();
    cfg.default_image = Some("localhost/lab:1".into());
    if let Ok(req) = request::parse_bytes::<ProvisionRequest>(data, lapse_server::compat::swim::DEFAULT_MAX_MESSAGE_BYTES) {
        let _ = request::provision(&req, &cfg, Duration::from_secs(30 * 86_400));
    }
});
