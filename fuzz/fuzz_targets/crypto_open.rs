//! The AEAD envelope: opening garbage fails cleanly under both ciphers,
//! and whatever is sealed opens to the same bytes.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ringlink::proto::crypto::{CipherKind, CryptoError, PeerKey, ENVELOPE_LEN, IV_LEN};

fn keys() -> &'static [PeerKey; 2] {
    static KEYS: OnceLock<[PeerKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        let vip = Ipv4Addr::new(10, 77, 0, 2);
        [CipherKind::Aes256Gcm, CipherKind::ChaCha20Poly1305]
            .map(|kind| PeerKey::for_vip(kind, b"fuzz", vip))
    })
}

fuzz_target!(|data: &[u8]| {
    for key in keys() {
        let mut buf = data.to_vec();
        match key.open_in_place(&mut buf) {
            Err(CryptoError::TooShort(n)) => assert!(n < ENVELOPE_LEN && n == data.len()),
            Err(CryptoError::BadTag) => assert!(data.len() >= ENVELOPE_LEN),
            // Forging a tag by chance is not something a fuzzer does; if
            // it happens, the plaintext must at least be the right size.
            Ok(plain) => assert_eq!(plain.len(), data.len() - ENVELOPE_LEN),
        }
        if let Some((iv, plain)) = data.split_first_chunk::<IV_LEN>() {
            let mut sealed = key.seal_to_vec(*iv, plain);
            assert_eq!(&sealed[..IV_LEN], iv);
            assert_eq!(key.open_in_place(&mut sealed).map(|p| &*p), Ok(plain));
        }
    }
});
