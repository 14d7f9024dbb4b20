//! STUN messages (RFC 8489) with the TURN methods and attributes (RFC 8656)
//! a UDP allocation needs. `proto::stun` keeps Candy's fixed-size Binding
//! forms; this codec is general: it builds any request with padded
//! attributes and a MESSAGE-INTEGRITY, and parses any message into its
//! attribute list with bounds checked before every read.

use std::net::{Ipv4Addr, SocketAddrV4};

use ring::hmac;

use super::TurnError;
use crate::proto::stun::{
    header_bytes, ipv4_address_value, xor_address, ATTR_XOR_MAPPED_ADDRESS, FAMILY_IPV4,
    HEADER_LEN, MAGIC_COOKIE,
};

pub use crate::proto::stun::TransactionId;

/// TURN methods (RFC 8656 §17) by their 12-bit method number.
pub mod method {
    pub const BINDING: u16 = 0x001;
    pub const ALLOCATE: u16 = 0x003;
    pub const REFRESH: u16 = 0x004;
    pub const SEND: u16 = 0x006;
    pub const DATA: u16 = 0x007;
    pub const CREATE_PERMISSION: u16 = 0x008;
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types used here (RFC 8489 §18.3, RFC 8656 §18).
pub mod attr {
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const DATA: u16 = 0x0013;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    pub const XOR_MAPPED_ADDRESS: u16 = super::ATTR_XOR_MAPPED_ADDRESS;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
}

/// REQUESTED-TRANSPORT's protocol number for UDP.
pub const TRANSPORT_UDP: u8 = 17;
const FAMILY_IPV6: u8 = 0x02;
const INTEGRITY_LEN: usize = 20;
/// Attributes a parsed message may hold. A real server sends fewer than a
/// dozen; the cap bounds the work a hostile datagram can cause.
const MAX_ATTRS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// The 16-bit message type: the method's bits interleaved with the two
/// class bits at positions 4 and 8 (RFC 8489 §5).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 1) << 4)
        | ((c & 2) << 7)
}

fn split_type(ty: u16) -> (u16, Class) {
    let method = (ty & 0x000F) | ((ty >> 1) & 0x0070) | ((ty >> 2) & 0x0F80);
    let class = match ((ty >> 4) & 1) | ((ty >> 7) & 2) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

/// Builds one message: header first, attributes appended with their
/// padding, the length field kept current.
#[derive(Debug, Clone)]
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    pub fn new(method: u16, class: Class, txid: TransactionId) -> Self {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&header_bytes(message_type(method, class), 0, &txid));
        Builder { buf }
    }

    fn set_len(&mut self, body: usize) {
        // Attribute values are bounded by u16 and callers add few of them,
        // so the body never approaches 64 KiB; saturate rather than wrap.
        let body = u16::try_from(body).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
    }

    /// Appends an attribute, zero-padded to a multiple of 4. A value longer
    /// than a u16 length can say is cut to fit rather than mis-framed.
    pub fn attr(mut self, ty: u16, value: &[u8]) -> Self {
        let value = &value[..value.len().min(usize::from(u16::MAX) - 3)];
        self.buf.extend_from_slice(&ty.to_be_bytes());
        self.buf
            .extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf.extend_from_slice(value);
        let pad = value.len().next_multiple_of(4) - value.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        let body = self.buf.len() - HEADER_LEN;
        self.set_len(body);
        self
    }

    pub fn u32_attr(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// An XOR-*-ADDRESS attribute for an IPv4 address.
    pub fn xor_addr(self, ty: u16, addr: SocketAddrV4) -> Self {
        self.attr(ty, &ipv4_address_value(xor_address(addr)))
    }

    /// ERROR-CODE: class digit and number (RFC 8489 §14.8).
    pub fn error_code(self, code: u16, reason: &str) -> Self {
        let mut v = vec![0, 0, (code / 100) as u8 & 0x07, (code % 100) as u8];
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// Appends MESSAGE-INTEGRITY: HMAC-SHA1 with the long-term key over the
    /// message so far, with the length field already counting the MAC.
    pub fn finish_with_integrity(mut self, key: &[u8]) -> Vec<u8> {
        let body = self.buf.len() - HEADER_LEN + 4 + INTEGRITY_LEN;
        self.set_len(body);
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key),
            &self.buf,
        );
        // `attr` leaves the length field at `body` again: the MAC is the
        // last attribute.
        self.attr(attr::MESSAGE_INTEGRITY, tag.as_ref()).buf
    }
}

/// A parsed message: header fields and where each attribute's value lies.
/// Attributes after MESSAGE-INTEGRITY (other than FINGERPRINT) are left
/// out, as RFC 8489 §14.5 requires, since nothing vouches for them.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub method: u16,
    pub class: Class,
    pub txid: TransactionId,
    raw: &'a [u8],
    attrs: Vec<(u16, usize, usize)>,
    integrity_at: Option<usize>,
}

/// True if the datagram starts like a STUN message (two zero bits, the
/// magic cookie), as opposed to ChannelData (first bits 01).
pub use crate::proto::stun::looks_like_stun as is_stun;

impl<'a> Message<'a> {
    /// Parses one whole datagram. The length field must account for every
    /// byte: over UDP a message is exactly one datagram.
    pub fn parse(raw: &'a [u8]) -> Result<Self, TurnError> {
        if raw.len() < HEADER_LEN {
            return Err(TurnError::Truncated("shorter than a STUN header"));
        }
        if raw[0] & 0xC0 != 0 {
            return Err(TurnError::Malformed("first two bits are not zero"));
        }
        if raw[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(TurnError::Malformed("no magic cookie"));
        }
        let body = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        if body % 4 != 0 {
            return Err(TurnError::Malformed("length is not a multiple of 4"));
        }
        if HEADER_LEN + body > raw.len() {
            return Err(TurnError::Truncated("length field runs past the datagram"));
        }
        if HEADER_LEN + body < raw.len() {
            return Err(TurnError::Malformed("bytes after the message"));
        }
        let (method, class) = split_type(u16::from_be_bytes([raw[0], raw[1]]));
        let mut txid = [0u8; 12];
        txid.copy_from_slice(&raw[8..20]);
        let mut attrs = Vec::new();
        let mut integrity_at = None;
        let mut at = HEADER_LEN;
        while at < raw.len() {
            let head = raw
                .get(at..at + 4)
                .ok_or(TurnError::Truncated("attribute header"))?;
            let ty = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let padded = len.next_multiple_of(4);
            if at + 4 + padded > raw.len() {
                return Err(TurnError::Truncated("attribute value"));
            }
            if attrs.len() == MAX_ATTRS {
                return Err(TurnError::Malformed("too many attributes"));
            }
            if integrity_at.is_none() || ty == attr::FINGERPRINT {
                attrs.push((ty, at + 4, len));
            }
            if ty == attr::MESSAGE_INTEGRITY && integrity_at.is_none() {
                if len != INTEGRITY_LEN {
                    return Err(TurnError::Malformed("MESSAGE-INTEGRITY is not 20 bytes"));
                }
                integrity_at = Some(at);
            }
            at += 4 + padded;
        }
        Ok(Message {
            method,
            class,
            txid,
            raw,
            attrs,
            integrity_at,
        })
    }

    /// The first value of an attribute type.
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.attrs
            .iter()
            .find(|a| a.0 == ty)
            .map(|&(_, at, len)| &self.raw[at..at + len])
    }

    /// Every attribute type, in order (for the fuzz round trip).
    pub fn attribute_types(&self) -> impl Iterator<Item = u16> + '_ {
        self.attrs.iter().map(|a| a.0)
    }

    /// An XOR-*-ADDRESS value, IPv4 only: TURN here asks for IPv4 relays,
    /// so an IPv6 one is an error rather than something to misread.
    pub fn xor_addr(&self, ty: u16) -> Result<Option<SocketAddrV4>, TurnError> {
        let Some(v) = self.get(ty) else {
            return Ok(None);
        };
        if v.len() < 4 {
            return Err(TurnError::Truncated("address attribute"));
        }
        match v[1] {
            FAMILY_IPV4 if v.len() == 8 => {
                let port = u16::from_be_bytes([v[2], v[3]]);
                let ip = Ipv4Addr::new(v[4], v[5], v[6], v[7]);
                Ok(Some(xor_address(SocketAddrV4::new(ip, port))))
            }
            FAMILY_IPV4 => Err(TurnError::Malformed(
                "IPv4 address attribute is not 8 bytes",
            )),
            FAMILY_IPV6 => Err(TurnError::Malformed(
                "IPv6 address where IPv4 was requested",
            )),
            _ => Err(TurnError::Malformed("unknown address family")),
        }
    }

    pub fn u32_attr(&self, ty: u16) -> Result<Option<u32>, TurnError> {
        match self.get(ty) {
            None => Ok(None),
            Some(v) => v
                .try_into()
                .map(|b: [u8; 4]| Some(u32::from_be_bytes(b)))
                .map_err(|_| TurnError::Malformed("32-bit attribute is not 4 bytes")),
        }
    }

    /// ERROR-CODE as (code, reason). Codes outside 300..=699 are malformed.
    pub fn error_code(&self) -> Result<Option<(u16, String)>, TurnError> {
        let Some(v) = self.get(attr::ERROR_CODE) else {
            return Ok(None);
        };
        if v.len() < 4 {
            return Err(TurnError::Truncated("ERROR-CODE"));
        }
        let code = u16::from(v[2] & 0x07) * 100 + u16::from(v[3]);
        if !(300..700).contains(&code) || v[3] >= 100 {
            return Err(TurnError::Malformed("ERROR-CODE out of range"));
        }
        Ok(Some((code, String::from_utf8_lossy(&v[4..]).into_owned())))
    }

    /// Checks MESSAGE-INTEGRITY against `key`, in constant time. A message
    /// without one fails: a success response to an authenticated request
    /// must carry it.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), TurnError> {
        let at = self.integrity_at.ok_or(TurnError::Integrity)?;
        let mut covered = self.raw[..at].to_vec();
        let body = (at - HEADER_LEN + 4 + INTEGRITY_LEN) as u16;
        covered[2..4].copy_from_slice(&body.to_be_bytes());
        let tag = &self.raw[at + 4..at + 4 + INTEGRITY_LEN];
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key),
            &covered,
            tag,
        )
        .map_err(|_| TurnError::Integrity)
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_encoding_matches_the_rfc_examples() {
        // RFC 8489 §5 and RFC 8656 §17: Binding request 0x0001, success
        // 0x0101, error 0x0111; Allocate request 0x0003, success 0x0103,
        // error 0x0113; Data indication 0x0017; ChannelBind 0x0009.
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(method::ALLOCATE, Class::Success), 0x0103);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        for m in [0x001, 0x003, 0x004, 0x008, 0x009, 0xFFF] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
    }

    /// RFC 5769 §2.1's sample request, checked byte for byte: its
    /// MESSAGE-INTEGRITY is keyed with the short-term password
    /// "VOkJxbRl1RmTxUk/WvJxBt", which exercises the same HMAC and length
    /// rules the long-term key uses. Built from its text, not copied.
    #[test]
    fn rfc5769_sample_request_integrity() {
        let txid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let mut b = Builder::new(method::BINDING, Class::Request, txid)
            .attr(attr::SOFTWARE, b"STUN test client")
            .attr(0x0024, &[0x6e, 0x00, 0x01, 0xff])
            .attr(0x8029, &[0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36])
            .attr(attr::USERNAME, b"evtj:h6vY");
        // The sample pads USERNAME with spaces, and the MAC covers padding.
        let n = b.buf.len();
        b.buf[n - 3..].fill(0x20);
        let msg = b.finish_with_integrity(b"VOkJxbRl1RmTxUk/WvJxBt");
        let mi = &msg[msg.len() - 20..];
        assert_eq!(
            mi,
            &[
                0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3,
                0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2
            ]
        );
        // The RFC's message goes on to a FINGERPRINT; integrity still
        // verifies with it present.
        let mut with_fp = msg.clone();
        with_fp.extend_from_slice(&[0x80, 0x28, 0, 4, 0xe5, 0x7a, 0x3b, 0xcf]);
        let body = (with_fp.len() - HEADER_LEN) as u16;
        with_fp[2..4].copy_from_slice(&body.to_be_bytes());
        let parsed = Message::parse(&with_fp).unwrap();
        parsed.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBt").unwrap();
        assert_eq!(parsed.get(attr::USERNAME), Some(&b"evtj:h6vY"[..]));
        assert_eq!(parsed.verify_integrity(b"wrong"), Err(TurnError::Integrity));
    }

    #[test]
    fn xor_address_round_trip_and_rfc5769_vector() {
        let a: SocketAddrV4 = "192.0.2.1:32853".parse().unwrap();
        let msg = Builder::new(method::ALLOCATE, Class::Success, [1; 12])
            .xor_addr(attr::XOR_RELAYED_ADDRESS, a)
            .finish();
        // RFC 5769 §2.2's XOR-MAPPED-ADDRESS for this address.
        assert_eq!(
            &msg[24..32],
            &[0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        let m = Message::parse(&msg).unwrap();
        assert_eq!(m.xor_addr(attr::XOR_RELAYED_ADDRESS), Ok(Some(a)));
        assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Ok(None));
        assert_eq!((m.method, m.class), (method::ALLOCATE, Class::Success));
    }

    #[test]
    fn error_code_round_trip() {
        let msg = Builder::new(method::ALLOCATE, Class::Error, [2; 12])
            .error_code(438, "Stale Nonce")
            .finish();
        let m = Message::parse(&msg).unwrap();
        assert_eq!(m.error_code(), Ok(Some((438, "Stale Nonce".into()))));
        let mut bad = msg.clone();
        bad[26] = 1; // class 1: code 138
        assert!(Message::parse(&bad).unwrap().error_code().is_err());
    }

    #[test]
    fn padding_and_bounds() {
        let msg = Builder::new(method::REFRESH, Class::Request, [3; 12])
            .attr(attr::NONCE, b"abcde")
            .u32_attr(attr::LIFETIME, 600)
            .finish();
        assert_eq!(msg.len(), 20 + 12 + 8);
        let m = Message::parse(&msg).unwrap();
        assert_eq!(m.get(attr::NONCE), Some(&b"abcde"[..]));
        assert_eq!(m.u32_attr(attr::LIFETIME), Ok(Some(600)));
        // Every prefix is refused with a typed error, never a panic.
        for cut in 0..msg.len() {
            assert!(Message::parse(&msg[..cut]).is_err(), "prefix {cut}");
        }
        // An attribute claiming more than the message holds.
        let mut over = msg.clone();
        over[23] = 40;
        assert_eq!(
            Message::parse(&over).unwrap_err(),
            TurnError::Truncated("attribute value")
        );
        // Trailing bytes beyond the length field.
        let mut trail = msg.clone();
        trail.extend_from_slice(&[0; 4]);
        assert!(Message::parse(&trail).is_err());
        // A LIFETIME of the wrong size.
        let odd = Builder::new(method::REFRESH, Class::Success, [3; 12])
            .attr(attr::LIFETIME, &[0, 1])
            .finish();
        assert!(Message::parse(&odd)
            .unwrap()
            .u32_attr(attr::LIFETIME)
            .is_err());
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let mut msg = Builder::new(method::ALLOCATE, Class::Success, [4; 12])
            .attr(attr::REALM, b"r")
            .finish_with_integrity(b"key");
        msg.extend_from_slice(&[0x00, 0x0D, 0, 4, 0, 0, 0, 9]);
        let body = (msg.len() - HEADER_LEN) as u16;
        msg[2..4].copy_from_slice(&body.to_be_bytes());
        let m = Message::parse(&msg).unwrap();
        assert_eq!(m.u32_attr(attr::LIFETIME), Ok(None));
        m.verify_integrity(b"key").unwrap();
    }
}
