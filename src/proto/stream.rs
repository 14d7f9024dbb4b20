//! Framing of the direct TCP path (docs/protocol.md §4.5): the datagrams a
//! UDP path would carry, byte for byte, each led by its length as a
//! big-endian `u16`. A stream has no message boundaries of its own, so the
//! reader takes frames off the front of what it has buffered and keeps the
//! rest for the next read.

use std::ops::Range;

use super::mtu::MAX_DATAGRAM;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 2;

/// Why a stream's bytes are not a frame: the stream is then useless, since
/// nothing tells where the next frame would start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {0} bytes (at most {MAX_DATAGRAM})")]
    TooLong(usize),
}

/// The length prefix of a frame carrying `len` bytes.
pub fn header(len: usize) -> Result<[u8; HEADER_LEN], FrameError> {
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_DATAGRAM => Err(FrameError::TooLong(n)),
        n => Ok((n as u16).to_be_bytes()),
    }
}

/// The first whole frame's payload in `buf` and where the next begins;
/// `Ok(None)` if more bytes are needed.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Range<usize>, usize)>, FrameError> {
    let Some(prefix) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_DATAGRAM {
        return Err(FrameError::TooLong(len));
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((HEADER_LEN..end, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_partial_ones_wait() {
        let mut stream = Vec::new();
        for payload in [&b"abc"[..], &[7u8; MAX_DATAGRAM][..]] {
            stream.extend_from_slice(&header(payload.len()).unwrap());
            stream.extend_from_slice(payload);
        }
        let (first, next) = next_frame(&stream).unwrap().unwrap();
        assert_eq!(&stream[first], b"abc");
        let rest = &stream[next..];
        for cut in [0, 1, 2, 100, rest.len() - 1] {
            assert_eq!(next_frame(&rest[..cut]), Ok(None), "cut at {cut}");
        }
        let (second, end) = next_frame(rest).unwrap().unwrap();
        assert_eq!(rest[second].len(), MAX_DATAGRAM);
        assert_eq!(end, rest.len());
    }

    #[test]
    fn a_prefix_no_datagram_has_ends_the_stream() {
        assert_eq!(next_frame(&[0, 0, 1]), Err(FrameError::Empty));
        assert_eq!(next_frame(&[0xff, 0xff]), Err(FrameError::TooLong(65535)));
        let one_over = ((MAX_DATAGRAM + 1) as u16).to_be_bytes();
        assert_eq!(
            next_frame(&one_over),
            Err(FrameError::TooLong(MAX_DATAGRAM + 1))
        );
        assert_eq!(header(0), Err(FrameError::Empty));
        assert_eq!(
            header(MAX_DATAGRAM + 1),
            Err(FrameError::TooLong(MAX_DATAGRAM + 1))
        );
    }
}
