//! The UDP peer message decoders (the plaintext inside the envelope);
//! what decodes must survive encode → decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlink::proto::udp::PeerMessage;

fuzz_target!(|plain: &[u8]| {
    let Ok(msg) = PeerMessage::decode(plain) else {
        return;
    };
    let encoded: Option<Vec<u8>> = match &msg {
        PeerMessage::Heartbeat(m) => Some(m.encode()),
        PeerMessage::Ping(m) => Some(m.encode().to_vec()),
        PeerMessage::Pong(m) => Some(m.encode().to_vec()),
        PeerMessage::Delay(m) => Some(m.encode().to_vec()),
        PeerMessage::Route(m) => {
            let _ = m.is_withdrawal();
            Some(m.encode().to_vec())
        }
        PeerMessage::Forward(_) | PeerMessage::Session(_) | PeerMessage::Unknown(_) => None,
    };
    if let Some(bytes) = encoded {
        assert_eq!(PeerMessage::decode(&bytes).as_ref(), Ok(&msg));
    }
});
