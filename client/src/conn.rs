//! One connection's protocol state, shared by both IO drivers: what to send next, what is
//! outstanding (with its intended and actual send times), and verification of what comes back.
//! No sockets and no clock here: the engine passes times in.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::args::RequestKind;
use ringlab_proto::echo::{EchoMismatch, EchoStream};
use ringlab_proto::http::{ResponseError, ResponseParser};

/// When a request was meant to go out (the schedule's time; the actual send time in closed
/// loop) and when it was handed to the IO driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub intended: Instant,
    pub sent: Instant,
}

/// A request whose response arrived.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub stamp: Stamp,
    /// HTTP status code; `None` for echo.
    pub status: Option<u16>,
    /// Bytes of the response on the wire.
    pub wire_bytes: u64,
}

/// What came back was wrong: a data error (counted, reported, exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{0}")]
    EchoMismatch(#[from] EchoMismatch),
    #[error("{0}")]
    Malformed(#[from] ResponseError),
    #[error("response received with no request outstanding")]
    Unexpected,
}

/// How a connection's end of input went.
#[derive(Debug, PartialEq, Eq)]
pub enum Eof {
    /// Nothing was outstanding.
    Clean,
    /// The server closed while this many requests were outstanding.
    MidResponse(usize),
}

enum ProtoState {
    Echo(EchoStream),
    Http {
        parser: ResponseParser,
        inbuf: BytesMut,
        /// The requests it sends in turn, and the index of the next one.
        requests: std::sync::Arc<[Bytes]>,
        next: usize,
        head: bool,
    },
}

/// The protocol side of one connection.
pub struct Conn {
    proto: ProtoState,
    inflight: VecDeque<Stamp>,
    out: BytesMut,
    /// The server announced that it closes after its last response (HTTP `Connection: close`).
    peer_closing: bool,
}

impl Conn {
    /// A fresh connection sending `req`; `salt` (the connection's number) makes each echo
    /// stream's contents different, so that bytes crossing connections are caught, and picks
    /// the first of several HTTP requests ([`RequestKind::first_of`]).
    pub fn new(req: &RequestKind, salt: u64) -> Conn {
        let proto = match req {
            RequestKind::Echo { size, seed } => ProtoState::Echo(EchoStream::new(
                *size,
                seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )),
            RequestKind::Http { requests, head, .. } => ProtoState::Http {
                parser: ResponseParser::new(),
                inbuf: BytesMut::new(),
                requests: requests.clone(),
                next: req.first_of(salt),
                head: *head,
            },
        };
        Conn {
            proto,
            inflight: VecDeque::new(),
            out: BytesMut::new(),
            peer_closing: false,
        }
    }

    /// Requests sent (or queued) and not yet answered.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// When the oldest unanswered request went out.
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.inflight.front().map(|s| s.sent)
    }

    /// Whether the server said it will close after its last response.
    pub fn peer_closing(&self) -> bool {
        self.peer_closing
    }

    /// Queue one request; returns its size in bytes.
    pub fn push_request(&mut self, stamp: Stamp) -> usize {
        let before = self.out.len();
        match &mut self.proto {
            ProtoState::Echo(s) => s.write_message(&mut self.out),
            ProtoState::Http { requests, next, .. } => {
                self.out.extend_from_slice(&requests[*next]);
                *next = (*next + 1) % requests.len();
            }
        }
        self.inflight.push_back(stamp);
        self.out.len() - before
    }

    /// Take every queued byte for sending. The driver owns the buffer until it is written.
    pub fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// Whether bytes are queued.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Feed received bytes; `done` is called once per completed request, in order.
    pub fn on_recv(
        &mut self,
        data: &[u8],
        mut done: impl FnMut(Completion),
    ) -> Result<(), DataError> {
        match &mut self.proto {
            ProtoState::Echo(s) => {
                let size = s.msg_size() as u64;
                let n = s.on_recv(data)?;
                for _ in 0..n {
                    let stamp = self.inflight.pop_front().ok_or(DataError::Unexpected)?;
                    done(Completion {
                        stamp,
                        status: None,
                        wire_bytes: size,
                    });
                }
                Ok(())
            }
            ProtoState::Http {
                parser,
                inbuf,
                head,
                ..
            } => {
                if self.peer_closing {
                    // After a `Connection: close` response nothing more may come.
                    return if data.is_empty() {
                        Ok(())
                    } else {
                        Err(DataError::Unexpected)
                    };
                }
                inbuf.extend_from_slice(data);
                while !inbuf.is_empty() {
                    match parser.parse(inbuf, *head)? {
                        Some(resp) => {
                            let stamp = self.inflight.pop_front().ok_or(DataError::Unexpected)?;
                            done(Completion {
                                stamp,
                                status: Some(resp.status),
                                wire_bytes: resp.wire_len as u64,
                            });
                            if !resp.keep_alive {
                                self.peer_closing = true;
                                if !inbuf.is_empty() {
                                    return Err(DataError::Unexpected);
                                }
                                break;
                            }
                        }
                        None => break,
                    }
                }
                Ok(())
            }
        }
    }

    /// The server closed its side. A response delimited by the close completes here.
    pub fn on_eof(&mut self, mut done: impl FnMut(Completion)) -> Result<Eof, DataError> {
        if let ProtoState::Http { parser, inbuf, .. } = &mut self.proto {
            if !self.peer_closing && !self.inflight.is_empty() {
                match parser.on_eof(inbuf) {
                    Ok(Some(resp)) => {
                        let stamp = self.inflight.pop_front().ok_or(DataError::Unexpected)?;
                        done(Completion {
                            stamp,
                            status: Some(resp.status),
                            wire_bytes: resp.wire_len as u64,
                        });
                        self.peer_closing = true;
                    }
                    Ok(None) => {}
                    // A truncated response is the server closing mid-response, not bad data.
                    Err(_) => {}
                }
            }
        }
        Ok(match self.inflight.len() {
            0 => Eof::Clean,
            n => Eof::MidResponse(n),
        })
    }

    /// Forget everything outstanding (the connection is gone); returns how many were.
    pub fn abandon(&mut self) -> usize {
        let n = self.inflight.len();
        self.inflight.clear();
        self.out.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stamp(t: Instant) -> Stamp {
        Stamp {
            intended: t,
            sent: t,
        }
    }

    #[test]
    fn echo_round_trip_and_mismatch() {
        let t = Instant::now();
        let req = RequestKind::Echo { size: 16, seed: 1 };
        let mut c = Conn::new(&req, 7);
        for i in 0..3 {
            c.push_request(stamp(t + Duration::from_millis(i)));
        }
        let out = c.take_output().unwrap();
        assert_eq!(out.len(), 48);
        let mut got = Vec::new();
        c.on_recv(&out[..20], |d| got.push(d.stamp)).unwrap();
        assert_eq!(got.len(), 1);
        c.on_recv(&out[20..], |d| got.push(d.stamp)).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2].intended, t + Duration::from_millis(2));
        assert_eq!(c.inflight(), 0);

        let mut c = Conn::new(&req, 7);
        c.push_request(stamp(t));
        let mut out = c.take_output().unwrap().to_vec();
        out[5] ^= 1;
        assert!(matches!(
            c.on_recv(&out, |_| {}),
            Err(DataError::EchoMismatch(_))
        ));
    }

    #[test]
    fn echo_streams_differ_per_connection() {
        let req = RequestKind::Echo { size: 32, seed: 1 };
        let t = Instant::now();
        let mut a = Conn::new(&req, 1);
        let mut b = Conn::new(&req, 2);
        a.push_request(stamp(t));
        b.push_request(stamp(t));
        assert_ne!(a.take_output(), b.take_output());
    }

    fn http_paths(paths: &[&str], spread: usize) -> RequestKind {
        let requests: Vec<Bytes> = paths
            .iter()
            .map(|p| {
                let mut b = BytesMut::new();
                ringlab_proto::http::encode_request(&mut b, "GET", p, "h", &[], b"");
                b.freeze()
            })
            .collect();
        RequestKind::Http {
            requests: requests.into(),
            head: false,
            spread,
        }
    }

    /// The request targets in `out`, in order.
    fn targets(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| l.strip_prefix("GET "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn http_paths_walk_the_list_from_the_connections_offset() {
        let t = Instant::now();
        let req = http_paths(&["/a", "/b", "/c", "/d", "/e", "/f"], 3);
        let mut c = Conn::new(&req, 1);
        for _ in 0..7 {
            c.push_request(stamp(t));
        }
        let out = c.take_output().unwrap();
        // Connection 1 of 3 starts at 6·1/3 = 2 and wraps around.
        assert_eq!(targets(&out), ["/c", "/d", "/e", "/f", "/a", "/b", "/c"]);
        let mut c0 = Conn::new(&req, 0);
        c0.push_request(stamp(t));
        assert_eq!(targets(&c0.take_output().unwrap()), ["/a"]);
    }

    #[test]
    fn http_paths_responses_are_framed_by_content_length() {
        let t = Instant::now();
        let req = http_paths(&["/small", "/large"], 1);
        let mut c = Conn::new(&req, 0);
        c.push_request(stamp(t));
        c.push_request(stamp(t));
        let _ = c.take_output();
        let mut sizes = Vec::new();
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\n12345";
        // Byte by byte: a response completes only when its Content-Length is in.
        for b in two.iter() {
            c.on_recv(std::slice::from_ref(b), |d| {
                sizes.push((d.status, d.wire_bytes))
            })
            .unwrap();
        }
        assert_eq!(sizes, [(Some(200), 41), (Some(206), 56)]);
        assert_eq!(c.inflight(), 0);
        // A body longer than its Content-Length: the bytes past it are no response.
        let mut c = Conn::new(&req, 0);
        c.push_request(stamp(t));
        let r = c.on_recv(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef\r\n\r\n",
            |_| {},
        );
        assert!(r.is_err(), "{r:?}");
    }
}
