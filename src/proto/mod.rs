//! Wire formats: every WebSocket, UDP and STUN message of PROTOCOL.md, the
//! AEAD envelope and key derivation, the IPv4 fields and sdwan
//! pseudo-header packets are routed by, the MSS rewrite and the tunnel's
//! size budget. Pure byte code: no I/O, no clock, no routing decisions.

pub mod checksum;
pub mod cidr;
pub mod crypto;
mod error;
pub mod ext;
pub mod ipv4;
pub mod mss;
pub mod mtu;
pub mod sdwan;
pub mod stream;
pub mod stun;
pub mod udp;
pub mod ws;

pub use cidr::Ipv4Cidr;
pub use error::ProtoError;

#[cfg(test)]
pub(crate) mod test_util {
    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
