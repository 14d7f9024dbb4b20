//! TURN on a stream transport (RFC 8656 §12.5, TCP or TLS): the stream
//! carries STUN messages and ChannelData back to back, with no length
//! prefix of its own. Each frame is told by its first two bits and sized by
//! its own length field:
//!
//! | first bits | frame | size on the stream |
//! | --- | --- | --- |
//! | 00 | STUN | 20 + length (a multiple of 4) |
//! | 01 | ChannelData | 4 + length, padded to a multiple of 4 |
//! | 10, 11 | nothing TURN sends: the stream is garbage from here on |
//!
//! Padding is mandatory on streams, unlike over UDP, since the next frame
//! starts right after it. [`Deframer`] cuts the byte stream back into the
//! datagrams the UDP side of ringlink already handles (ChannelData without
//! its padding); [`frame`] does the reverse for one datagram.
//!
//! Nothing ringlink sends or expects is larger than [`MAX_DATAGRAM`], so a
//! length field beyond it ends the stream at once instead of buffering up
//! to 64 KiB for a server that is talking nonsense.

use thiserror::Error;

use super::channel;
use crate::proto::mtu::MAX_DATAGRAM;
use crate::proto::stun::{HEADER_LEN as STUN_HEADER_LEN, MAGIC_COOKIE};

/// Why a TURN stream cannot be read (or a datagram cannot be put on one).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamError {
    #[error("first byte {0:#04x} starts neither STUN nor ChannelData")]
    Garbage(u8),
    #[error("STUN on the stream without the magic cookie")]
    NoCookie,
    #[error("STUN length {0} is not a multiple of 4")]
    Unaligned(usize),
    #[error("ChannelData on channel {0:#06x}, outside 0x4000..=0x7FFF")]
    BadChannel(u16),
    #[error("frame of {0} bytes (at most {MAX_DATAGRAM})")]
    TooLong(usize),
    #[error("stream closed {0} bytes into a frame")]
    ClosedMidFrame(usize),
    #[error("datagram of {0} bytes does not match its own length field")]
    LengthMismatch(usize),
}

/// The size of the frame at the start of `buf` on the stream (padding
/// included) and the size of the datagram it stands for (padding
/// excluded); `None` until the header is complete.
fn measure(buf: &[u8]) -> Result<Option<(usize, usize)>, StreamError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first & 0xC0 {
        0x00 => {
            let Some(h) = buf.get(..STUN_HEADER_LEN) else {
                return Ok(None);
            };
            if h[4..8] != MAGIC_COOKIE.to_be_bytes() {
                return Err(StreamError::NoCookie);
            }
            let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
            if len % 4 != 0 {
                return Err(StreamError::Unaligned(len));
            }
            let total = STUN_HEADER_LEN + len;
            Ok(Some((total, total)))
        }
        0x40 => {
            let Some(h) = buf.get(..channel::HEADER_LEN) else {
                return Ok(None);
            };
            let number = u16::from_be_bytes([h[0], h[1]]);
            if !channel::is_valid(number) {
                return Err(StreamError::BadChannel(number));
            }
            let len = channel::HEADER_LEN + usize::from(u16::from_be_bytes([h[2], h[3]]));
            Ok(Some((len.next_multiple_of(4), len)))
        }
        _ => Err(StreamError::Garbage(first)),
    }
}

/// Cuts a TURN byte stream into datagrams. Bytes go in as they arrive, in
/// pieces of any size; whole frames come out.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    /// Where the unread bytes start in `buf`: frames are taken from the
    /// front without moving the rest until the next `push`.
    start: usize,
}

impl Deframer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole datagram (ChannelData without its padding), `None`
    /// until more bytes arrive. An error is final: the stream has lost its
    /// framing, so nothing after it can be trusted either.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, StreamError> {
        let unread = &self.buf[self.start..];
        let Some((on_stream, datagram)) = measure(unread)? else {
            return Ok(None);
        };
        if datagram > MAX_DATAGRAM {
            return Err(StreamError::TooLong(datagram));
        }
        if unread.len() < on_stream {
            return Ok(None);
        }
        let from = self.start;
        self.start += on_stream;
        Ok(Some(&self.buf[from..from + datagram]))
    }

    /// The stream ended: fine between frames, an error inside one.
    pub fn finish(&self) -> Result<(), StreamError> {
        match self.buf.len() - self.start {
            0 => Ok(()),
            n => Err(StreamError::ClosedMidFrame(n)),
        }
    }
}

/// Appends `datagram` (one STUN message or one ChannelData, as the UDP
/// side sends them) to `out` as it goes on a stream: checked against its
/// own length field, ChannelData padded to a multiple of 4.
pub fn frame(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
    let (on_stream, len) = measure(datagram)?.ok_or(StreamError::LengthMismatch(datagram.len()))?;
    if len > MAX_DATAGRAM {
        return Err(StreamError::TooLong(len));
    }
    // ChannelData over UDP may already carry its padding; STUN never has any.
    if datagram.len() != len && datagram.len() != on_stream {
        return Err(StreamError::LengthMismatch(datagram.len()));
    }
    out.extend_from_slice(&datagram[..len]);
    out.resize(out.len() + on_stream - len, 0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(body: usize) -> Vec<u8> {
        let mut m = vec![0x01, 0x01];
        m.extend_from_slice(&(body as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend((0..12 + body).map(|i| i as u8));
        m
    }

    fn channel_data(number: u16, data: &[u8]) -> Vec<u8> {
        let mut m = channel::header(number, data.len()).unwrap().to_vec();
        m.extend_from_slice(data);
        m
    }

    fn all(d: &mut Deframer) -> Result<Vec<Vec<u8>>, StreamError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn channel_data_is_padded_on_the_stream_and_unpadded_off_it() {
        for len in 0..9usize {
            let data: Vec<u8> = (0..len as u8).collect();
            let dgram = channel_data(0x4001, &data);
            let mut wire = Vec::new();
            frame(&dgram, &mut wire).unwrap();
            assert_eq!(wire.len(), (4 + len).next_multiple_of(4), "len {len}");
            assert!(wire[4 + len..].iter().all(|&b| b == 0));
            let mut d = Deframer::new();
            d.push(&wire);
            assert_eq!(all(&mut d).unwrap(), vec![dgram.clone()]);
            d.finish().unwrap();
            // Already padded, as a UDP sender may do: framed the same.
            let mut padded = dgram.clone();
            padded.resize(wire.len(), 0);
            let mut again = Vec::new();
            frame(&padded, &mut again).unwrap();
            assert_eq!(again, wire);
        }
    }

    #[test]
    fn frames_split_at_every_byte_come_out_whole_and_in_order() {
        let frames = [
            stun(8),
            channel_data(0x4000, b"abcde"),
            stun(0),
            channel_data(0x7fff, b""),
            channel_data(0x4abc, &[7; 1400]),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            frame(f, &mut wire).unwrap();
        }
        for piece in [1, 2, 3, 5, 7, 19, 64, wire.len()] {
            let mut d = Deframer::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                d.push(chunk);
                got.extend(all(&mut d).unwrap());
            }
            assert_eq!(got, frames, "pieces of {piece}");
            d.finish().unwrap();
        }
    }

    #[test]
    fn garbage_and_bad_lengths_are_errors() {
        let cases: [(Vec<u8>, StreamError); 6] = [
            // Text starts like ChannelData ('G' is 0x47); its "length" is
            // what gives it away.
            (
                b"GET / HTTP/1.1\r\n".to_vec(),
                StreamError::TooLong(4 + 0x5420),
            ),
            // A TLS record where plaintext was expected: no cookie.
            (
                vec![
                    0x16, 3, 1, 0, 0x20, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                StreamError::NoCookie,
            ),
            (vec![0x80; 8], StreamError::Garbage(0x80)),
            (
                {
                    let mut m = stun(4);
                    m[4] ^= 1;
                    m
                },
                StreamError::NoCookie,
            ),
            (
                {
                    let mut m = stun(4);
                    m[3] = 5;
                    m
                },
                StreamError::Unaligned(5),
            ),
            (vec![0x40, 0x00, 0xff, 0xff], StreamError::TooLong(65539)),
        ];
        for (bytes, want) in cases {
            let mut d = Deframer::new();
            d.push(&bytes);
            assert_eq!(d.next_frame(), Err(want.clone()), "{bytes:?}");
            let mut out = Vec::new();
            assert_eq!(frame(&bytes, &mut out).err(), Some(want), "{bytes:?}");
        }
        // A STUN length past the bound is refused before its body arrives.
        let mut big = stun(0);
        big[2..4].copy_from_slice(&2000u16.to_be_bytes());
        let mut d = Deframer::new();
        d.push(&big);
        assert_eq!(d.next_frame(), Err(StreamError::TooLong(2020)));
    }

    #[test]
    fn a_close_mid_frame_is_an_error_and_between_frames_is_not() {
        let mut wire = Vec::new();
        frame(&channel_data(0x4000, b"hello"), &mut wire).unwrap();
        let mut d = Deframer::new();
        d.push(&wire[..6]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(StreamError::ClosedMidFrame(6)));
        d.push(&wire[6..]);
        assert_eq!(all(&mut d).unwrap().len(), 1);
        d.finish().unwrap();
        // Only a header byte in: still mid-frame.
        let mut d = Deframer::new();
        d.push(&[0x00]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(StreamError::ClosedMidFrame(1)));
    }

    #[test]
    fn a_datagram_that_disagrees_with_its_length_is_not_framed() {
        let mut out = Vec::new();
        let mut short = channel_data(0x4000, b"hello");
        short.pop();
        assert_eq!(frame(&short, &mut out), Err(StreamError::LengthMismatch(8)));
        let mut long = stun(4);
        long.push(0);
        assert_eq!(frame(&long, &mut out), Err(StreamError::LengthMismatch(25)));
        assert_eq!(
            frame(&[0x40], &mut out),
            Err(StreamError::LengthMismatch(1))
        );
        assert!(out.is_empty());
    }
}
