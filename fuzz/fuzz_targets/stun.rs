//! STUN Binding request and response parsers (Candy's and the RFC 5780
//! forms), with round trips through their encoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::proto::stun;

fuzz_target!(|dgram: &[u8]| {
    let _ = stun::looks_like_stun(dgram);
    if let Ok(req) = stun::parse_binding_request(dgram) {
        let again = stun::parse_binding_request(&stun::encode_binding_request_change(
            &req.txid, req.change,
        ));
        assert_eq!(again, Ok(req));
    }
    if let Ok((txid, mapped)) = stun::parse_binding_response(dgram) {
        let again = stun::parse_binding_response(&stun::encode_binding_response(&txid, mapped));
        assert_eq!(again, Ok((txid, mapped)));
    }
    if let Ok(resp) = stun::parse_binding_response_other(dgram) {
        let again = match resp.other {
            Some(other) => stun::parse_binding_response_other(
                &stun::encode_binding_response_other(&resp.txid, resp.mapped, other),
            ),
            None => stun::parse_binding_response_other(&stun::encode_binding_response(
                &resp.txid,
                resp.mapped,
            )),
        };
        assert_eq!(again, Ok(resp));
    }
});
