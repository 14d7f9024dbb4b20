//! The slice of STUN (RFC 5389) that Candy uses: a Binding Request with an
//! empty CHANGE-REQUEST, and a Binding Response carrying the mapped IPv4
//! address (PROTOCOL.md §4). Both directions, because the ringlink server
//! answers binding requests itself. For NAT classification (RFC 5780) the
//! request may set CHANGE-REQUEST flags and the response may carry
//! OTHER-ADDRESS, placed after the mapped addresses so Candy's parser,
//! which takes the first address, never sees it.

use std::net::{SocketAddr, SocketAddrV4};

use super::error::need;
use super::ProtoError;

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
pub const HEADER_LEN: usize = 20;
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_RESPONSE: u16 = 0x0101;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_CHANGE_REQUEST: u16 = 0x0003;
pub(crate) const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_OTHER_ADDRESS: u16 = 0x802C;
const CHANGE_IP: u32 = 0x04;
const CHANGE_PORT: u32 = 0x02;
pub(crate) const FAMILY_IPV4: u8 = 0x01;
/// Candy's request: header plus an 8-byte CHANGE-REQUEST with no flags.
pub const REQUEST_LEN: usize = 28;
/// Our response: header, XOR-MAPPED-ADDRESS, MAPPED-ADDRESS.
pub const RESPONSE_LEN: usize = HEADER_LEN + 12 + 12;
/// The same followed by OTHER-ADDRESS.
pub const RESPONSE_WITH_OTHER_LEN: usize = RESPONSE_LEN + 12;

pub type TransactionId = [u8; 12];

/// True if the datagram looks like STUN: the two top bits of the first byte
/// are zero and the magic cookie is in place. Encrypted peer datagrams start
/// with a random IV, so this is what lets one UDP port carry both.
pub fn looks_like_stun(dgram: &[u8]) -> bool {
    dgram.len() >= HEADER_LEN && dgram[0] & 0xC0 == 0 && dgram[4..8] == MAGIC_COOKIE.to_be_bytes()
}

/// The 20-byte header every STUN message starts with: type, body length
/// (the attributes after the header), magic cookie, transaction ID.
pub(crate) fn header_bytes(ty: u16, body_len: u16, txid: &TransactionId) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&ty.to_be_bytes());
    h[2..4].copy_from_slice(&body_len.to_be_bytes());
    h[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    h[8..20].copy_from_slice(txid);
    h
}

/// An address XORed with the magic cookie as XOR-*-ADDRESS carries it
/// (RFC 8489 §14.2); the same call undoes it.
pub(crate) fn xor_address(addr: SocketAddrV4) -> SocketAddrV4 {
    SocketAddrV4::new(
        (u32::from(*addr.ip()) ^ MAGIC_COOKIE).into(),
        addr.port() ^ (MAGIC_COOKIE >> 16) as u16,
    )
}

/// An IPv4 address attribute's value: reserved, family, port, address.
pub(crate) fn ipv4_address_value(addr: SocketAddrV4) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[1] = FAMILY_IPV4;
    v[2..4].copy_from_slice(&addr.port().to_be_bytes());
    v[4..8].copy_from_slice(&addr.ip().octets());
    v
}

/// RFC 5780 CHANGE-REQUEST flags: answer from the other IP and/or port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ChangeRequest {
    pub ip: bool,
    pub port: bool,
}

impl ChangeRequest {
    fn bits(self) -> u32 {
        (if self.ip { CHANGE_IP } else { 0 }) | (if self.port { CHANGE_PORT } else { 0 })
    }
}

/// A parsed Binding Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    pub txid: TransactionId,
    pub change: ChangeRequest,
}

/// A parsed Binding Response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingResponse {
    pub txid: TransactionId,
    pub mapped: SocketAddrV4,
    /// RFC 5780 OTHER-ADDRESS, when the server has one.
    pub other: Option<SocketAddrV4>,
}

/// Candy's request: no change flags.
pub fn encode_binding_request(txid: &TransactionId) -> [u8; REQUEST_LEN] {
    encode_binding_request_change(txid, ChangeRequest::default())
}

pub fn encode_binding_request_change(
    txid: &TransactionId,
    change: ChangeRequest,
) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[..HEADER_LEN].copy_from_slice(&header_bytes(BINDING_REQUEST, 8, txid));
    out[20..22].copy_from_slice(&ATTR_CHANGE_REQUEST.to_be_bytes());
    out[22..24].copy_from_slice(&4u16.to_be_bytes());
    out[24..28].copy_from_slice(&change.bits().to_be_bytes());
    out
}

struct Header {
    ty: u16,
    txid: TransactionId,
}

fn header(dgram: &[u8]) -> Result<Header, ProtoError> {
    need("STUN message", dgram, HEADER_LEN)?;
    if dgram[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(ProtoError::Stun("no magic cookie"));
    }
    let body_len = usize::from(u16::from_be_bytes([dgram[2], dgram[3]]));
    if body_len % 4 != 0 || HEADER_LEN + body_len > dgram.len() {
        return Err(ProtoError::Stun("length field does not match the datagram"));
    }
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&dgram[8..20]);
    Ok(Header {
        ty: u16::from_be_bytes([dgram[0], dgram[1]]),
        txid,
    })
}

/// Accepts a Binding Request: its transaction ID and CHANGE-REQUEST flags
/// (none when the attribute is absent). Other attributes are skipped.
pub fn parse_binding_request(dgram: &[u8]) -> Result<BindingRequest, ProtoError> {
    let h = header(dgram)?;
    if h.ty != BINDING_REQUEST {
        return Err(ProtoError::Stun("not a binding request"));
    }
    let body_len = usize::from(u16::from_be_bytes([dgram[2], dgram[3]]));
    let mut change = ChangeRequest::default();
    let mut at = HEADER_LEN;
    let end = HEADER_LEN + body_len;
    while at + 4 <= end {
        let ty = u16::from_be_bytes([dgram[at], dgram[at + 1]]);
        let len = usize::from(u16::from_be_bytes([dgram[at + 2], dgram[at + 3]]));
        let value = dgram
            .get(at + 4..at + 4 + len)
            .filter(|_| at + 4 + len <= end)
            .ok_or(ProtoError::Stun("attribute overruns the message"))?;
        if ty == ATTR_CHANGE_REQUEST {
            let flags: [u8; 4] = value
                .try_into()
                .map_err(|_| ProtoError::Stun("CHANGE-REQUEST is not 4 bytes"))?;
            let bits = u32::from_be_bytes(flags);
            change = ChangeRequest {
                ip: bits & CHANGE_IP != 0,
                port: bits & CHANGE_PORT != 0,
            };
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    Ok(BindingRequest {
        txid: h.txid,
        change,
    })
}

/// A Binding Response telling the requester its mapped address, with
/// XOR-MAPPED-ADDRESS first because Candy uses the first address it finds.
pub fn encode_binding_response(txid: &TransactionId, mapped: SocketAddrV4) -> [u8; RESPONSE_LEN] {
    let mut out = [0u8; RESPONSE_LEN];
    let body = (RESPONSE_LEN - HEADER_LEN) as u16;
    out[..HEADER_LEN].copy_from_slice(&header_bytes(BINDING_RESPONSE, body, txid));
    write_address(
        &mut out[20..32],
        ATTR_XOR_MAPPED_ADDRESS,
        xor_address(mapped),
    );
    write_address(&mut out[32..44], ATTR_MAPPED_ADDRESS, mapped);
    out
}

/// [`encode_binding_response`] plus OTHER-ADDRESS (RFC 5780 §7.4) last.
pub fn encode_binding_response_other(
    txid: &TransactionId,
    mapped: SocketAddrV4,
    other: SocketAddrV4,
) -> [u8; RESPONSE_WITH_OTHER_LEN] {
    let mut out = [0u8; RESPONSE_WITH_OTHER_LEN];
    out[..RESPONSE_LEN].copy_from_slice(&encode_binding_response(txid, mapped));
    out[2..4].copy_from_slice(&((RESPONSE_WITH_OTHER_LEN - HEADER_LEN) as u16).to_be_bytes());
    write_address(&mut out[RESPONSE_LEN..], ATTR_OTHER_ADDRESS, other);
    out
}

fn write_address(out: &mut [u8], attr: u16, addr: SocketAddrV4) {
    out[0..2].copy_from_slice(&attr.to_be_bytes());
    out[2..4].copy_from_slice(&8u16.to_be_bytes());
    out[4..12].copy_from_slice(&ipv4_address_value(addr));
}

/// The mapped address in a Binding Response: the first IPv4
/// XOR-MAPPED-ADDRESS or MAPPED-ADDRESS, as Candy takes it. The message is
/// parsed by the `stun-types` crate, which (unlike Candy) honours attribute
/// padding and bounds; the transaction ID is returned so the caller can
/// match the response to its request.
pub fn parse_binding_response(dgram: &[u8]) -> Result<(TransactionId, SocketAddrV4), ProtoError> {
    parse_binding_response_other(dgram).map(|r| (r.txid, r.mapped))
}

/// [`parse_binding_response`] plus the first IPv4 OTHER-ADDRESS, if any.
pub fn parse_binding_response_other(dgram: &[u8]) -> Result<BindingResponse, ProtoError> {
    use stun_types::attribute::{Attribute, AttributeFromRaw, MappedSocketAddr, XorMappedAddress};
    use stun_types::message::{Message, MessageClass, BINDING};

    let msg = Message::from_bytes(dgram)
        .map_err(|_| ProtoError::Stun("not a well-formed STUN message"))?;
    if !msg.has_class(MessageClass::Success) || !msg.has_method(BINDING) {
        return Err(ProtoError::Stun("not a binding success response"));
    }
    let txid = msg.transaction_id();
    let mut id = [0u8; 12];
    id.copy_from_slice(&u128::from(txid).to_be_bytes()[4..]);
    let mut mapped = None;
    let mut other = None;
    for raw in msg.iter_attributes() {
        match raw.get_type().value() {
            ATTR_XOR_MAPPED_ADDRESS if mapped.is_none() => {
                mapped = XorMappedAddress::from_raw(&raw).ok().map(|a| a.addr(txid))
            }
            ATTR_MAPPED_ADDRESS if mapped.is_none() => {
                mapped = MappedSocketAddr::from_raw(&raw).ok().map(|a| a.addr())
            }
            ATTR_OTHER_ADDRESS if other.is_none() => other = ipv4_address(&raw.value),
            _ => {}
        }
    }
    match mapped {
        Some(SocketAddr::V4(a)) if a.port() == 0 || a.ip().is_unspecified() => {
            Err(ProtoError::Stun("mapped address is zero"))
        }
        Some(SocketAddr::V4(mapped)) => Ok(BindingResponse {
            txid: id,
            mapped,
            other,
        }),
        _ => Err(ProtoError::Stun("no IPv4 mapped address")),
    }
}

/// An RFC 5389 address value (reserved, family, port, address), IPv4 only.
fn ipv4_address(value: &[u8]) -> Option<SocketAddrV4> {
    let v: &[u8; 8] = value.try_into().ok()?;
    (v[1] == FAMILY_IPV4).then(|| {
        SocketAddrV4::new(
            [v[4], v[5], v[6], v[7]].into(),
            u16::from_be_bytes([v[2], v[3]]),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candy_request_layout() {
        let req = encode_binding_request(&[7; 12]);
        assert_eq!(&req[..8], &[0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(&req[20..], &[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]);
        assert!(looks_like_stun(&req));
        let parsed = parse_binding_request(&req).unwrap();
        assert_eq!(parsed.txid, [7; 12]);
        assert_eq!(parsed.change, ChangeRequest::default());
    }

    #[test]
    fn change_request_flags_round_trip() {
        for (ip, port, byte) in [(false, true, 0x02), (true, false, 0x04), (true, true, 0x06)] {
            let change = ChangeRequest { ip, port };
            let req = encode_binding_request_change(&[1; 12], change);
            assert_eq!(&req[24..], &[0, 0, 0, byte]);
            assert_eq!(parse_binding_request(&req).unwrap().change, change);
        }
        // After a padded SOFTWARE attribute, still found.
        let req = encode_binding_request_change(
            &[1; 12],
            ChangeRequest {
                ip: false,
                port: true,
            },
        );
        let mut msg = req[..20].to_vec();
        msg.extend_from_slice(&[0x80, 0x22, 0, 3, b'a', b'b', b'c', 0]);
        msg.extend_from_slice(&req[20..]);
        let body = (msg.len() - 20) as u16;
        msg[2..4].copy_from_slice(&body.to_be_bytes());
        assert!(parse_binding_request(&msg).unwrap().change.port);
        // A CHANGE-REQUEST of the wrong size, or one running past the
        // message, is an error, not a guess.
        let mut short = req;
        short[23] = 3;
        assert!(parse_binding_request(&short).is_err());
        let mut overrun = req;
        overrun[23] = 8;
        assert!(parse_binding_request(&overrun).is_err());
    }

    #[test]
    fn other_address_rides_after_the_mapped_address() {
        let mapped: SocketAddrV4 = "203.0.113.9:40000".parse().unwrap();
        let other: SocketAddrV4 = "192.0.2.2:3479".parse().unwrap();
        let resp = encode_binding_response_other(&[4; 12], mapped, other);
        assert_eq!(&resp[44..48], &[0x80, 0x2C, 0, 8]);
        assert_eq!(
            parse_binding_response_other(&resp).unwrap(),
            BindingResponse {
                txid: [4; 12],
                mapped,
                other: Some(other)
            }
        );
        // Candy's reading: the first address is still the mapped one.
        assert_eq!(parse_binding_response(&resp).unwrap(), ([4; 12], mapped));
        let plain = encode_binding_response(&[4; 12], mapped);
        assert_eq!(parse_binding_response_other(&plain).unwrap().other, None);
        // An OTHER-ADDRESS that is not IPv4 is left out, not misread.
        let mut v6 = resp;
        v6[49] = 0x02;
        assert_eq!(parse_binding_response_other(&v6).unwrap().other, None);
    }

    #[test]
    fn response_round_trip_xor_first() {
        let mapped: SocketAddrV4 = "203.0.113.9:40000".parse().unwrap();
        let resp = encode_binding_response(&[9; 12], mapped);
        assert_eq!(
            u16::from_be_bytes([resp[20], resp[21]]),
            ATTR_XOR_MAPPED_ADDRESS
        );
        assert_eq!(parse_binding_response(&resp).unwrap(), ([9; 12], mapped));
        assert!(parse_binding_request(&resp).is_err());
    }

    #[test]
    fn skips_padded_attributes() {
        let mapped: SocketAddrV4 = "198.51.100.1:3478".parse().unwrap();
        let resp = encode_binding_response(&[1; 12], mapped);
        // SOFTWARE with a 5-byte value (padded to 8) before the address.
        let mut msg = resp[..20].to_vec();
        msg.extend_from_slice(&[0x80, 0x22, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]);
        msg.extend_from_slice(&resp[20..]);
        let body = (msg.len() - 20) as u16;
        msg[2..4].copy_from_slice(&body.to_be_bytes());
        assert_eq!(parse_binding_response(&msg).unwrap().1, mapped);
    }

    #[test]
    fn malformed_responses_are_errors() {
        let resp = encode_binding_response(&[1; 12], "192.0.2.1:1".parse().unwrap());
        assert!(parse_binding_response(&resp[..19]).is_err());
        let mut bad_len = resp;
        bad_len[3] = 200;
        assert!(parse_binding_response(&bad_len).is_err());
        let mut overrun = resp;
        overrun[23] = 60;
        assert!(parse_binding_response(&overrun).is_err());
        let mut zero = encode_binding_response(&[1; 12], "0.0.0.0:0".parse().unwrap());
        assert!(parse_binding_response(&zero).is_err());
        zero[4] = 0;
        assert!(!looks_like_stun(&zero));
        // Only attributes we do not know: no address.
        let mut none = resp[..20].to_vec();
        none[2..4].copy_from_slice(&0u16.to_be_bytes());
        assert!(parse_binding_response(&none).is_err());
    }
}
