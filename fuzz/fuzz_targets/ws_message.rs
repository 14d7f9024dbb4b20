//! Every WebSocket message decoder; what decodes must survive
//! encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::proto::ws::{encode_forward, SysRoute, WsMessage};

fn decode_again(frame: &[u8]) -> WsMessage<'_> {
    WsMessage::decode(frame).expect("an encoded message decodes")
}

fuzz_target!(|frame: &[u8]| {
    let Ok(msg) = WsMessage::decode(frame) else {
        return;
    };
    match &msg {
        WsMessage::Auth(m) => assert_eq!(decode_again(&m.encode()), msg),
        WsMessage::ExptTun(m) => assert_eq!(decode_again(&m.encode()), msg),
        WsMessage::PeerConn(m) => assert_eq!(decode_again(&m.encode()), msg),
        WsMessage::Vmac(m) => assert_eq!(decode_again(&m.encode()), msg),
        WsMessage::Discovery(m) => assert_eq!(decode_again(&m.encode()), msg),
        WsMessage::General(m) => {
            let _ = m.local_conn();
            assert_eq!(decode_again(&m.encode()), msg)
        }
        WsMessage::Forward(packet) => {
            let mut out = Vec::new();
            encode_forward(packet, &mut out);
            assert_eq!(decode_again(&out), msg);
        }
        WsMessage::SysRoutes(routes) => {
            // The encoder writes each route's network address, so compare
            // what a route means, not the host bits a sender left in it.
            let meaning = |r: &SysRoute| (r.dst.network(), r.dst.prefix, r.next);
            let mut again = Vec::new();
            for f in SysRoute::encode_list(routes) {
                match decode_again(&f) {
                    WsMessage::SysRoutes(part) => again.extend(part),
                    other => panic!("ROUTE frame decoded as {other:?}"),
                }
            }
            let want: Vec<_> = routes.iter().map(meaning).collect();
            assert_eq!(again.iter().map(meaning).collect::<Vec<_>>(), want);
        }
        WsMessage::TurnOffer(m) => {
            let frame = m.encode().expect("decoded fields fit their length bytes");
            assert_eq!(decode_again(&frame), msg);
        }
        WsMessage::Time(m) => assert_eq!(decode_again(&m.encode()), msg),
        WsMessage::Unknown(_) => {}
    }
});
