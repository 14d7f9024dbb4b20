//! The IPv4 header reader and the sdwan pseudo-header parsers packets are
//! routed by.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::proto::{ipv4, sdwan};

fuzz_target!(|packet: &[u8]| {
    if let Ok(meta) = ipv4::classify(packet) {
        let _ = ipv4::is_broadcast(meta.dst);
        assert_eq!(ipv4::addrs(packet).ok(), Some((meta.src, meta.dst)));
    }
    if let Ok(fwd) = sdwan::parse_forwarded(packet) {
        assert!(
            fwd.inner.end <= packet.len(),
            "inner range outside the packet"
        );
        let _ = ipv4::classify(&packet[fwd.inner.clone()]);
    }
    if let Ok(inner) = sdwan::decapsulate(packet) {
        assert!(inner.len() <= packet.len());
    }
});
