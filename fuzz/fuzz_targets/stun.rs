//! STUN Binding request and response parsers, with round trips through
//! their encoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::proto::stun;

fuzz_target!(|dgram: &[u8]| {
    let _ = stun::looks_like_stun(dgram);
    if let Ok(txid) = stun::parse_binding_request(dgram) {
        let again = stun::parse_binding_request(&stun::encode_binding_request(&txid));
        assert_eq!(again, Ok(txid));
    }
    if let Ok((txid, mapped)) = stun::parse_binding_response(dgram) {
        let again = stun::parse_binding_response(&stun::encode_binding_response(&txid, mapped));
        assert_eq!(again, Ok((txid, mapped)));
    }
});
