//! The config parser: any text is refused with an error or becomes a
//! validated config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::config::{ClientConfig, ServerConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = ClientConfig::parse("fuzz.toml", text) {
        let _ = e.to_string();
    }
    if let Err(e) = ServerConfig::parse("fuzz.toml", text) {
        let _ = e.to_string();
    }
});
