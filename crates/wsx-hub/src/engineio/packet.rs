//! Engine.IO v4 packets, pure: decoding and encoding for both transports. Over
//! WebSocket a packet is one message (text: a type digit and its data; binary: a
//! message packet's bytes, no type); over HTTP long-polling a payload joins packets
//! with the record separator `\x1e`, binary ones as `b` + base64.

use base64::Engine as _;
use bytes::Bytes;

/// The separator of packets in a polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0`: the handshake, with its JSON.
    Open(String),
    /// `1`: close the session.
    Close,
    /// `2`: a heartbeat (the server's), or the `probe` of an upgrade (the client's).
    Ping(Bytes),
    /// `3`: the answer to a ping.
    Pong(Bytes),
    /// `4`: a text message.
    Message(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// `5`: the client completes an upgrade.
    Upgrade,
    /// `6`: nothing (ends a pending poll during an upgrade).
    Noop,
}

/// A malformed packet or payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPacket;

impl std::fmt::Display for BadPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid Engine.IO packet")
    }
}

impl std::error::Error for BadPacket {}

impl Packet {
    /// A text message.
    pub fn text(s: impl Into<Bytes>) -> Packet {
        Packet::Message(s.into())
    }

    /// Decode a text packet (a WebSocket text message, or one packet of a payload).
    /// `text` is UTF-8 already.
    pub fn decode_text(text: Bytes) -> Result<Packet, BadPacket> {
        let (&ty, _) = text.split_first().ok_or(BadPacket)?;
        let data = text.slice(1..);
        Ok(match ty {
            b'0' => Packet::Open(String::from_utf8(data.to_vec()).map_err(|_| BadPacket)?),
            b'1' if data.is_empty() => Packet::Close,
            b'2' => Packet::Ping(data),
            b'3' => Packet::Pong(data),
            b'4' => Packet::Message(data),
            b'5' if data.is_empty() => Packet::Upgrade,
            b'6' if data.is_empty() => Packet::Noop,
            _ => return Err(BadPacket),
        })
    }

    /// The packet as a WebSocket message's payload: `(is_text, bytes)`.
    pub fn to_ws(&self) -> (bool, Bytes) {
        match self {
            Packet::Binary(b) => (false, b.clone()),
            p => {
                let mut out = Vec::with_capacity(1 + p.data_len());
                p.write_text(&mut out);
                (true, Bytes::from(out))
            }
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Packet::Open(s) => s.len(),
            Packet::Ping(b) | Packet::Pong(b) | Packet::Message(b) | Packet::Binary(b) => b.len(),
            _ => 0,
        }
    }

    /// How many bytes the packet weighs in a queue.
    pub fn cost(&self) -> usize {
        self.data_len() + 16
    }

    /// Append the text form (type digit and data; binary as `b` + base64).
    fn write_text(&self, out: &mut Vec<u8>) {
        let (ty, data): (u8, &[u8]) = match self {
            Packet::Open(s) => (b'0', s.as_bytes()),
            Packet::Close => (b'1', b""),
            Packet::Ping(b) => (b'2', b),
            Packet::Pong(b) => (b'3', b),
            Packet::Message(b) => (b'4', b),
            Packet::Upgrade => (b'5', b""),
            Packet::Noop => (b'6', b""),
            Packet::Binary(b) => {
                out.push(b'b');
                let start = out.len();
                out.resize(start + base64_len(b.len()), 0);
                let n = base64::engine::general_purpose::STANDARD
                    .encode_slice(b, &mut out[start..])
                    .unwrap_or(0);
                out.truncate(start + n);
                return;
            }
        };
        out.push(ty);
        out.extend_from_slice(data);
    }
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Encode packets as one polling payload.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet>) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in packets.into_iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        p.write_text(&mut out);
    }
    out
}

/// Decode a polling payload (a POST body): its packets, in order. Invalid UTF-8, an
/// unknown type, bad base64 or an empty body is an error.
pub fn decode_payload(body: Bytes) -> Result<Vec<Packet>, BadPacket> {
    if body.is_empty() || std::str::from_utf8(&body).is_err() {
        return Err(BadPacket);
    }
    let mut packets = Vec::new();
    let mut start = 0;
    for end in memchr_all(&body).chain(std::iter::once(body.len())) {
        let part = body.slice(start..end);
        start = end + 1;
        packets.push(match part.first() {
            Some(b'b') => Packet::Binary(Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(&part[1..])
                    .map_err(|_| BadPacket)?,
            )),
            _ => Packet::decode_text(part)?,
        });
    }
    Ok(packets)
}

fn memchr_all(body: &[u8]) -> impl Iterator<Item = usize> + '_ {
    body.iter()
        .enumerate()
        .filter(|(_, &b)| b == SEPARATOR)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_text_and_binary() {
        let packets = vec![
            Packet::text("hello"),
            Packet::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            Packet::Ping(Bytes::new()),
        ];
        let body = encode_payload(&packets);
        assert_eq!(body, b"4hello\x1ebAQIDBA==\x1e2");
        assert_eq!(decode_payload(Bytes::from(body)), Ok(packets));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        for bad in [&b""[..], b"abc", b"4a\x1e", b"b!!!", b"1x", b"\xff"] {
            assert_eq!(
                decode_payload(Bytes::copy_from_slice(bad)),
                Err(BadPacket),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn websocket_messages_carry_one_packet() {
        assert_eq!(
            Packet::Ping(Bytes::from_static(b"probe")).to_ws(),
            (true, Bytes::from_static(b"2probe"))
        );
        assert_eq!(
            Packet::Binary(Bytes::from_static(b"\x01")).to_ws(),
            (false, Bytes::from_static(b"\x01"))
        );
        assert_eq!(
            Packet::decode_text(Bytes::from_static(b"5")),
            Ok(Packet::Upgrade)
        );
    }
}
