//! The body of `POST /v1/environments`: any bytes, deserialized and validated as the API does.
//! Nothing may panic.
#![no_main]

use lapse_core::validate;
use lapse_core::wire::CreateEnvironment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<CreateEnvironment>(data) {
        let _ = validate::spec(&body.spec);
        let _ = validate::owner(&body.owner);
        let _ = validate::labels(&body.labels);
        if let Some(name) = &body.name {
            let _ = validate::name("name", name);
        }
    }
});
