use thiserror::Error;

/// Why a frame, datagram or field could not be decoded.
///
/// Every decoder in `proto` returns one of these instead of panicking, so the
/// caller can log the specific reason and count it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtoError {
    #[error("empty message")]
    Empty,
    #[error("{what} too short: {len} bytes, need at least {need}")]
    TooShort {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("{what} too long: {len} bytes, at most {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("unknown {what} type {ty}")]
    UnknownType { what: &'static str, ty: u8 },
    #[error("bad CIDR {0:?}: expected a.b.c.d/len with len 0..=32")]
    BadCidr(String),
    #[error("ROUTE list claims {claimed} entries but the frame holds {present}")]
    RouteCount { claimed: usize, present: usize },
    #[error("not an IPv4 packet (version {0})")]
    NotIpv4(u8),
    #[error("STUN: {0}")]
    Stun(&'static str),
    #[error("TURN_OFFER: bad {0}")]
    TurnOffer(&'static str),
    #[error("TIME: {0}")]
    Time(&'static str),
}

/// Fails with `TooShort` unless `buf` holds at least `need` bytes.
pub(crate) fn need(what: &'static str, buf: &[u8], need: usize) -> Result<(), ProtoError> {
    if buf.len() < need {
        Err(ProtoError::TooShort {
            what,
            len: buf.len(),
            need,
        })
    } else {
        Ok(())
    }
}
