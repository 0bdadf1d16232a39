//! Echo, client side: deterministic message content and byte-exact verification.
//!
//! A connection's echo stream is an endless pseudo-random byte sequence fixed by a seed: the
//! 8-byte block at stream offset `8 * i` is `splitmix64(seed ^ i)` in little-endian order. Any
//! byte can be computed from its absolute offset alone, so the client writes fixed-size messages
//! cut from this stream and checks every byte that comes back without keeping a copy of what it
//! sent.

#![warn(missing_docs)]

use bytes::BytesMut;

/// The splitmix64 output function (Steele, Lea, Flood), as used to seed xoshiro generators.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn block(seed: u64, index: u64) -> [u8; 8] {
    splitmix64(seed ^ index).to_le_bytes()
}

/// The byte at `offset` of the stream of `seed`.
pub fn stream_byte(seed: u64, offset: u64) -> u8 {
    block(seed, offset / 8)[(offset % 8) as usize]
}

/// Fill `out` with the stream of `seed` from `offset` on.
pub fn fill_stream(seed: u64, offset: u64, out: &mut [u8]) {
    let mut offset = offset;
    let mut out = out;
    // Up to the next block boundary.
    let within = (offset % 8) as usize;
    if within != 0 {
        let b = block(seed, offset / 8);
        let n = (8 - within).min(out.len());
        let (head, rest) = out.split_at_mut(n);
        head.copy_from_slice(&b[within..within + n]);
        out = rest;
        offset += n as u64;
    }
    let mut index = offset / 8;
    let mut chunks = out.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&block(seed, index));
        index = index.wrapping_add(1);
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        tail.copy_from_slice(&block(seed, index)[..n]);
    }
}

/// Position (within `data`) of the first byte that differs from the stream of `seed` at
/// `offset`, if any.
fn first_mismatch(seed: u64, offset: u64, data: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let mut off = offset;
    while pos < data.len() {
        let within = (off % 8) as usize;
        let b = block(seed, off / 8);
        let n = (8 - within).min(data.len() - pos);
        let expected = &b[within..within + n];
        let got = &data[pos..pos + n];
        if expected != got {
            let k = expected
                .iter()
                .zip(got)
                .position(|(e, g)| e != g)
                .unwrap_or(0);
            return Some(pos + k);
        }
        pos += n;
        off += n as u64;
    }
    None
}

/// Echoed bytes that are not what was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EchoMismatch {
    /// A byte differs from the one sent at that offset.
    #[error(
        "echo mismatch at stream offset {offset}: expected byte {expected:#04x}, got {got:#04x}"
    )]
    Corrupt {
        /// Absolute offset in the connection's stream.
        offset: u64,
        /// The byte that was sent there.
        expected: u8,
        /// The byte that came back.
        got: u8,
    },
    /// More bytes came back than were sent.
    #[error(
        "echo returned more than was sent: got byte {got:#04x} at stream offset {offset}, \
         but only {offset} bytes were sent"
    )]
    Excess {
        /// Absolute offset of the first byte beyond what was sent.
        offset: u64,
        /// That byte.
        got: u8,
    },
}

/// One connection's echo stream: fixed-size messages out, verification of what comes back.
#[derive(Clone, Debug)]
pub struct EchoStream {
    msg_size: usize,
    seed: u64,
    sent: u64,
    received: u64,
}

impl EchoStream {
    /// A stream of `msg_size`-byte messages (a size of 0 is taken as 1) cut from the stream of
    /// `seed`. Give every connection its own seed, so that bytes crossed between connections
    /// are caught too.
    pub fn new(msg_size: usize, seed: u64) -> Self {
        EchoStream {
            msg_size: msg_size.max(1),
            seed,
            sent: 0,
            received: 0,
        }
    }

    /// The size of each message.
    pub fn msg_size(&self) -> usize {
        self.msg_size
    }

    /// The seed of the stream.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Append the next message to `out`.
    pub fn write_message(&mut self, out: &mut BytesMut) {
        let start = out.len();
        out.resize(start + self.msg_size, 0);
        if let Some(dst) = out.get_mut(start..) {
            fill_stream(self.seed, self.sent, dst);
        }
        self.sent += self.msg_size as u64;
    }

    /// Verify bytes that came back. Returns how many messages they completed. On an error the
    /// bytes before the offending one count as received; the connection should be given up.
    pub fn on_recv(&mut self, data: &[u8]) -> Result<u64, EchoMismatch> {
        let allowed = self.sent - self.received;
        let n = usize::try_from(allowed).map_or(data.len(), |a| a.min(data.len()));
        let (valid, excess) = data.split_at(n);
        let before = self.received / self.msg_size as u64;
        if let Some(k) = first_mismatch(self.seed, self.received, valid) {
            let offset = self.received + k as u64;
            self.received = offset;
            return Err(EchoMismatch::Corrupt {
                offset,
                expected: stream_byte(self.seed, offset),
                got: valid[k],
            });
        }
        self.received += valid.len() as u64;
        if let Some(&got) = excess.first() {
            return Err(EchoMismatch::Excess {
                offset: self.received,
                got,
            });
        }
        Ok(self.received / self.msg_size as u64 - before)
    }

    /// Bytes sent and not yet received back.
    pub fn outstanding_bytes(&self) -> u64 {
        self.sent - self.received
    }

    /// Messages written so far.
    pub fn sent_messages(&self) -> u64 {
        self.sent / self.msg_size as u64
    }

    /// Bytes written so far.
    pub fn sent_bytes(&self) -> u64 {
        self.sent
    }

    /// Bytes received back and verified so far.
    pub fn received_bytes(&self) -> u64 {
        self.received
    }

    /// Messages received back completely so far.
    pub fn received_messages(&self) -> u64 {
        self.received / self.msg_size as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_blocks_of_splitmix() {
        let mut buf = [0u8; 24];
        fill_stream(7, 0, &mut buf);
        assert_eq!(buf[..8], splitmix64(7).to_le_bytes());
        assert_eq!(buf[8..16], splitmix64(7 ^ 1).to_le_bytes());
        assert_eq!(buf[16..], splitmix64(7 ^ 2).to_le_bytes());
        // Known value of splitmix64(0) (the first output of a splitmix64 seeded with 0).
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn fill_at_any_offset_matches_stream_byte() {
        for offset in 0..20u64 {
            for len in 0..30usize {
                let mut buf = vec![0u8; len];
                fill_stream(99, offset, &mut buf);
                for (i, &b) in buf.iter().enumerate() {
                    assert_eq!(
                        b,
                        stream_byte(99, offset + i as u64),
                        "offset {offset} len {len}"
                    );
                }
            }
        }
    }

    #[test]
    fn mismatch_position_is_exact() {
        let mut buf = vec![0u8; 40];
        fill_stream(3, 5, &mut buf);
        assert_eq!(first_mismatch(3, 5, &buf), None);
        for k in 0..40 {
            let mut bad = buf.clone();
            bad[k] ^= 0x20;
            assert_eq!(first_mismatch(3, 5, &bad), Some(k));
        }
    }
}
