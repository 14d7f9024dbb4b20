//! ChannelData (RFC 8656 §12.4): the 4-byte header that carries a peer's
//! datagram through a TURN relay once a channel is bound, instead of a
//! 36-byte Send/Data indication. It is the only TURN framing on the data
//! path: the dataplane writes [`header`] in front of a sealed datagram and
//! strips it with [`parse`].
//!
//! | off | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | channel number, 0x4000..=0x7FFF |
//! | 2 | 2 | length of the application data, padding excluded |
//! | 4 | n | application data |
//!
//! Over UDP the padding to a multiple of 4 is optional (§12.5): this
//! client sends none, and accepts up to 3 padding bytes from the server.

use super::TurnError;

pub const HEADER_LEN: usize = 4;
/// Channel numbers a received ChannelData may carry: the range of RFC
/// 5766, which coturn still uses.
pub const MIN: u16 = 0x4000;
pub const MAX: u16 = 0x7FFF;
/// The last number this client binds: RFC 8656 reserved 0x5000..=0x7FFF,
/// so binding only from 0x4000..=0x4FFF suits both generations of server.
pub const MAX_BOUND: u16 = 0x4FFF;

pub fn is_valid(channel: u16) -> bool {
    (MIN..=MAX).contains(&channel)
}

/// True if the datagram starts like ChannelData (first two bits 01), as
/// opposed to STUN (00).
pub fn looks_like_channel_data(dgram: &[u8]) -> bool {
    dgram.first().is_some_and(|b| b & 0xC0 == 0x40)
}

/// The header for `len` bytes of data on `channel`.
pub fn header(channel: u16, len: usize) -> Result<[u8; HEADER_LEN], TurnError> {
    if !is_valid(channel) {
        return Err(TurnError::Malformed(
            "channel number outside 0x4000..=0x7FFF",
        ));
    }
    let len =
        u16::try_from(len).map_err(|_| TurnError::Malformed("ChannelData over 65535 bytes"))?;
    let mut h = [0u8; HEADER_LEN];
    h[..2].copy_from_slice(&channel.to_be_bytes());
    h[2..].copy_from_slice(&len.to_be_bytes());
    Ok(h)
}

/// The channel number and data of one ChannelData datagram.
pub fn parse(dgram: &[u8]) -> Result<(u16, &[u8]), TurnError> {
    let h = dgram
        .get(..HEADER_LEN)
        .ok_or(TurnError::Truncated("ChannelData header"))?;
    let channel = u16::from_be_bytes([h[0], h[1]]);
    if !is_valid(channel) {
        return Err(TurnError::Malformed(
            "channel number outside 0x4000..=0x7FFF",
        ));
    }
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let data = dgram
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(TurnError::Truncated(
            "ChannelData shorter than its length field",
        ))?;
    if dgram.len() > HEADER_LEN + len.next_multiple_of(4) {
        return Err(TurnError::Malformed(
            "ChannelData longer than its length and padding",
        ));
    }
    Ok((channel, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_without_padding() {
        let h = header(0x4001, 5).unwrap();
        assert_eq!(h, [0x40, 0x01, 0x00, 0x05]);
        let mut d = h.to_vec();
        d.extend_from_slice(b"hello");
        assert!(looks_like_channel_data(&d));
        assert_eq!(parse(&d), Ok((0x4001, &b"hello"[..])));
    }

    #[test]
    fn padding_rules() {
        let mut d = header(0x4FFF, 5).unwrap().to_vec();
        d.extend_from_slice(b"hello");
        // Up to the next multiple of 4 is padding and accepted...
        for pad in 1..=3 {
            let mut p = d.clone();
            p.extend(std::iter::repeat_n(0, pad));
            assert_eq!(parse(&p), Ok((0x4FFF, &b"hello"[..])), "pad {pad}");
        }
        // ...one more byte is not.
        let mut p = d.clone();
        p.extend_from_slice(&[0; 4]);
        assert!(parse(&p).is_err());
        // Aligned data admits no padding at all.
        let mut a = header(0x4000, 4).unwrap().to_vec();
        a.extend_from_slice(b"abcd");
        assert!(parse(&a).is_ok());
        a.push(0);
        assert!(parse(&a).is_err());
    }

    #[test]
    fn bad_input() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x40, 0x00, 0x00]).is_err());
        // Length larger than the datagram.
        assert_eq!(
            parse(&[0x40, 0x00, 0x00, 0x08, 1, 2]),
            Err(TurnError::Truncated(
                "ChannelData shorter than its length field"
            ))
        );
        // 0x8000 and up is not a channel.
        assert!(parse(&[0x80, 0x00, 0x00, 0x00]).is_err());
        assert!(header(0x3FFF, 1).is_err());
        assert!(header(0x4000, 70_000).is_err());
        assert!(parse(&[0x40, 0x00, 0x00, 0x00]).is_ok());
    }
}
