//! Property tests: however input is split, the result is the same as feeding it whole; the
//! parsers never panic and never buffer without bound.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use ringlab_proto::echo::{fill_stream, EchoMismatch, EchoStream};
use ringlab_proto::http::{
    write_response, Limits, Method, Request, RequestParser, Response, ResponseError,
    ResponseParser, Version,
};
use ringlab_proto::{Action, Now, Proto, ServerConfig, Session};

/// `n` cases, unless `PROPTEST_CASES` asks for another number (for long local runs).
fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig::with_cases(n)
}

/// Cut `input` at the given points (any order, duplicates allowed).
fn split<'a>(input: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    points.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

// ---- requests ----

#[derive(Debug, Clone)]
enum Req {
    Get(&'static str),
    Head(&'static str),
    PostLength(Vec<u8>),
    PostChunked {
        chunks: Vec<Vec<u8>>,
        extensions: bool,
        trailer: bool,
    },
    Http10 {
        keep_alive: bool,
    },
    Close,
    /// One of `INVALID`.
    Invalid(usize),
    Garbage(Vec<u8>),
}

const PATHS: &[&str] = &[
    "/",
    "/nope",
    "/delay/3",
    "/delay/0?x=y",
    "/echo",
    "/delay/x",
];

const INVALID: &[&[u8]] = &[
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
    b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000001\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n",
];

impl Req {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Req::Get(p) => {
                out.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            }
            Req::Head(p) => {
                out.extend_from_slice(format!("HEAD {p} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            }
            Req::PostLength(body) => {
                out.extend_from_slice(
                    format!(
                        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .as_bytes(),
                );
                out.extend_from_slice(body);
            }
            Req::PostChunked {
                chunks,
                extensions,
                trailer,
            } => {
                out.extend_from_slice(
                    b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
                    if *extensions {
                        out.extend_from_slice(b" ;ext=\"v\"");
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if *trailer {
                    out.extend_from_slice(b"X-Checksum: abc\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
            Req::Http10 { keep_alive } => {
                out.extend_from_slice(b"GET / HTTP/1.0\r\n");
                if *keep_alive {
                    out.extend_from_slice(b"Connection: keep-alive\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
            Req::Close => {
                out.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            }
            Req::Invalid(i) => out.extend_from_slice(INVALID[*i % INVALID.len()]),
            Req::Garbage(g) => out.extend_from_slice(g),
        }
    }

    /// Whether this is a valid request, and whether the connection stays open after it.
    fn valid_and_open(&self) -> Option<bool> {
        match self {
            Req::Invalid(_) | Req::Garbage(_) => None,
            Req::Http10 { keep_alive } => Some(*keep_alive),
            Req::Close => Some(false),
            _ => Some(true),
        }
    }
}

fn valid_req() -> impl Strategy<Value = Req> {
    let body = proptest::collection::vec(any::<u8>(), 0..80);
    prop_oneof![
        proptest::sample::select(PATHS).prop_map(Req::Get),
        proptest::sample::select(PATHS).prop_map(Req::Head),
        body.clone().prop_map(Req::PostLength),
        (
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(chunks, extensions, trailer)| Req::PostChunked {
                chunks,
                extensions,
                trailer
            }),
        any::<bool>().prop_map(|keep_alive| Req::Http10 { keep_alive }),
        Just(Req::Close),
    ]
}

fn any_req() -> impl Strategy<Value = Req> {
    prop_oneof![
        8 => valid_req(),
        1 => (0..INVALID.len()).prop_map(Req::Invalid),
        1 => proptest::collection::vec(any::<u8>(), 1..60).prop_map(Req::Garbage),
    ]
}

/// Drive a session with `pieces`, draining output after each piece when `drain_each`; then
/// release every delayed response. Returns all output and the request count.
fn run_session(cfg: &ServerConfig, pieces: &[&[u8]], drain_each: bool) -> (Vec<u8>, u32) {
    let mut c = Conn::new(cfg.clone());
    let mut out = Vec::new();
    for p in pieces {
        c.recv(p);
        if drain_each {
            out.extend(c.drain());
        }
    }
    out.extend(c.drain());
    c.advance_to_ms(61_000);
    out.extend(c.drain());
    (out, c.requests)
}

fn small_limits_cfg() -> ServerConfig {
    ServerConfig {
        limits: Limits {
            max_head: 96,
            max_headers: 4,
            max_body: 40,
        },
        ..http_cfg()
    }
}

proptest! {
    #![proptest_config(cases(400))]

    #[test]
    fn session_output_does_not_depend_on_splits(
        reqs in proptest::collection::vec(any_req(), 0..8),
        cuts in proptest::collection::vec(any::<Index>(), 0..12),
        drain_each in any::<bool>(),
        small in any::<bool>(),
    ) {
        let mut input = Vec::new();
        for r in &reqs {
            r.encode(&mut input);
        }
        let cfg = if small { small_limits_cfg() } else { http_cfg() };
        let (whole_out, whole_n) = run_session(&cfg, &[&input], false);
        let pieces = split(&input, &cuts);
        let (split_out, split_n) = run_session(&cfg, &pieces, drain_each);
        prop_assert_eq!(show(&whole_out), show(&split_out));
        prop_assert_eq!(whole_n, split_n);

        // With valid requests only and default limits, every request up to the first that
        // closes the connection is answered.
        if !small && reqs.iter().all(|r| r.valid_and_open().is_some()) {
            let mut expected = 0;
            for r in &reqs {
                expected += 1;
                if r.valid_and_open() == Some(false) {
                    break;
                }
            }
            prop_assert_eq!(whole_n, expected);
            // And the responses parse back, one per request.
            let mut buf = BytesMut::from(&whole_out[..]);
            let mut p = ResponseParser::new();
            for r in reqs.iter().take(expected as usize) {
                let head = matches!(r, Req::Head(_));
                let resp = p.parse(&mut buf, head);
                prop_assert!(matches!(resp, Ok(Some(_))), "{:?} → {:?}", r, resp);
            }
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn echo_body_comes_back_through_any_split(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..6),
        cuts in proptest::collection::vec(any::<Index>(), 0..20),
    ) {
        let req = Req::PostChunked { chunks: chunks.clone(), extensions: true, trailer: true };
        let mut input = Vec::new();
        req.encode(&mut input);
        let (out, n) = run_session(&http_cfg(), &split(&input, &cuts), true);
        prop_assert_eq!(n, 1);
        let mut buf = BytesMut::from(&out[..]);
        let resp = ResponseParser::new().parse(&mut buf, false).unwrap().unwrap();
        prop_assert_eq!(&resp.body[..], &chunks.concat()[..]);
    }

    #[test]
    fn request_parser_never_panics_and_stays_bounded(
        input in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(any::<Index>(), 0..30),
        small in any::<bool>(),
    ) {
        let limits = if small { small_limits_cfg().limits } else { Limits::default() };
        check_bounded(&input, &cuts, &limits)?;
    }

    #[test]
    fn request_parser_survives_mutated_requests(
        reqs in proptest::collection::vec(valid_req(), 1..4),
        mutations in proptest::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        cuts in proptest::collection::vec(any::<Index>(), 0..10),
        small in any::<bool>(),
    ) {
        let mut input = Vec::new();
        for r in &reqs {
            r.encode(&mut input);
        }
        for (at, byte) in &mutations {
            let i = at.index(input.len());
            input[i] = *byte;
        }
        let limits = if small { small_limits_cfg().limits } else { Limits::default() };
        check_bounded(&input, &cuts, &limits)?;
    }

    #[test]
    fn head_without_end_never_exceeds_max_head(
        input in proptest::collection::vec(any::<u8>().prop_map(|b| if b == b'\n' { b'x' } else { b }), 0..300),
        cuts in proptest::collection::vec(any::<Index>(), 0..30),
    ) {
        let limits = small_limits_cfg().limits;
        let mut p = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut failed = false;
        for piece in split(&input, &cuts) {
            buf.extend_from_slice(piece);
            match p.parse(&mut buf, &limits) {
                Ok(None) => prop_assert!(buf.len() < limits.max_head, "{} bytes buffered", buf.len()),
                Ok(Some(r)) => prop_assert!(false, "a request without a line end: {:?}", r),
                Err(_) => { failed = true; break; }
            }
        }
        prop_assert_eq!(failed, input.len() >= limits.max_head);
    }
}

/// Feed `input` piece by piece: no panic, and while the parser waits, the buffer holds at most
/// `max_buffered` bytes; and the same requests and error come out as when it is fed whole.
fn check_bounded(input: &[u8], cuts: &[Index], limits: &Limits) -> Result<(), TestCaseError> {
    let bound = RequestParser::max_buffered(limits);
    let run = |pieces: &[&[u8]]| -> Result<(Vec<String>, Option<String>), TestCaseError> {
        let mut p = RequestParser::new();
        let mut buf = BytesMut::new();
        let mut reqs = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match p.parse(&mut buf, limits) {
                    Ok(Some(r)) => reqs.push(describe(&r)),
                    Ok(None) => {
                        prop_assert!(buf.len() <= bound, "{} > {}", buf.len(), bound);
                        break;
                    }
                    Err(e) => return Ok((reqs, Some(e.to_string()))),
                }
            }
        }
        Ok((reqs, None))
    };
    let whole = run(&[input])?;
    let pieces = run(&split(input, cuts))?;
    prop_assert_eq!(whole, pieces);
    Ok(())
}

fn describe(r: &Request) -> String {
    format!(
        "{:?} {:?} {:?} {} {:?}",
        r.method, r.target, r.version, r.keep_alive, r.body
    )
}

// ---- responses ----

#[derive(Debug, Clone)]
enum Resp {
    Server {
        http10: bool,
        head: bool,
        status: u16,
        body: Vec<u8>,
        keep_alive: bool,
    },
    Chunked {
        chunks: Vec<Vec<u8>>,
        trailer: bool,
    },
    Interim(Box<Resp>),
    NoContent,
}

impl Resp {
    fn encode(&self, out: &mut BytesMut) {
        let date = *b"Sun, 06 Nov 1994 08:49:37 GMT";
        match self {
            Resp::Server {
                http10,
                head,
                status,
                body,
                keep_alive,
            } => {
                let req = Request {
                    method: if *head { Method::Head } else { Method::Get },
                    target: Bytes::from_static(b"/"),
                    version: if *http10 {
                        Version::Http10
                    } else {
                        Version::Http11
                    },
                    keep_alive: *keep_alive,
                    range: None,
                    if_modified_since: None,
                    body: Bytes::new(),
                };
                write_response(out, &req, *status, *keep_alive, &date, body);
            }
            Resp::Chunked { chunks, trailer } => {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                for c in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:X};a=b\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                if *trailer {
                    out.extend_from_slice(b"Trailer-Field: x\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
            Resp::Interim(inner) => {
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                inner.encode(out);
            }
            Resp::NoContent => {
                out.extend_from_slice(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n")
            }
        }
    }

    fn head(&self) -> bool {
        match self {
            Resp::Server { head, .. } => *head,
            Resp::Interim(inner) => inner.head(),
            _ => false,
        }
    }

    fn expected(&self) -> (u16, Vec<u8>) {
        match self {
            Resp::Server {
                head, status, body, ..
            } => (*status, if *head { Vec::new() } else { body.clone() }),
            Resp::Chunked { chunks, .. } => (200, chunks.concat()),
            Resp::Interim(inner) => inner.expected(),
            Resp::NoContent => (204, Vec::new()),
        }
    }
}

fn resp_strategy() -> impl Strategy<Value = Resp> {
    let server = (
        any::<bool>(),
        any::<bool>(),
        proptest::sample::select(&[200u16, 400, 404, 405, 413, 431, 500, 503][..]),
        proptest::collection::vec(any::<u8>(), 0..100),
        any::<bool>(),
    )
        .prop_map(|(http10, head, status, body, keep_alive)| Resp::Server {
            http10,
            head,
            status,
            body,
            keep_alive,
        });
    let chunked = (
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..4),
        any::<bool>(),
    )
        .prop_map(|(chunks, trailer)| Resp::Chunked { chunks, trailer });
    prop_oneof![
        4 => server.clone(),
        2 => chunked,
        1 => server.prop_map(|s| Resp::Interim(Box::new(s))),
        1 => Just(Resp::NoContent),
    ]
}

/// Parse a response stream fed in `pieces`; a close-delimited response may end it.
fn parse_responses(pieces: &[&[u8]], heads: &[bool]) -> Vec<Result<Response, ResponseError>> {
    let mut p = ResponseParser::new();
    let mut buf = BytesMut::new();
    let mut results = Vec::new();
    let mut next = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(&head) = heads.get(next) {
            match p.parse(&mut buf, head) {
                Ok(Some(r)) => {
                    results.push(Ok(r));
                    next += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    results.push(Err(e));
                    return results;
                }
            }
        }
    }
    match p.on_eof(&mut buf) {
        Ok(Some(r)) => results.push(Ok(r)),
        Ok(None) => {}
        Err(e) => results.push(Err(e)),
    }
    results
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn response_parser_does_not_depend_on_splits(
        resps in proptest::collection::vec(resp_strategy(), 0..6),
        close_delimited in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..60)),
        truncate in proptest::option::of(any::<Index>()),
        cuts in proptest::collection::vec(any::<Index>(), 0..12),
    ) {
        let mut out = BytesMut::new();
        for r in &resps {
            r.encode(&mut out);
        }
        let mut heads: Vec<bool> = resps.iter().map(Resp::head).collect();
        if let Some(body) = &close_delimited {
            out.extend_from_slice(b"HTTP/1.0 200 OK\r\n\r\n");
            out.extend_from_slice(body);
            heads.push(false);
        }
        let mut input = out.to_vec();
        if let Some(t) = truncate {
            input.truncate(t.index(input.len() + 1));
        }
        let whole = parse_responses(&[&input], &heads);
        let pieces = parse_responses(&split(&input, &cuts), &heads);
        prop_assert_eq!(&whole, &pieces);

        if truncate.is_none() {
            // Everything parses back as it was written, and wire lengths add up.
            prop_assert_eq!(whole.len(), heads.len());
            let mut wire = 0;
            for (i, r) in whole.iter().enumerate() {
                let r = r.as_ref().unwrap();
                let expected = match resps.get(i) {
                    Some(resp) => resp.expected(),
                    None => (200, close_delimited.clone().unwrap_or_default()),
                };
                prop_assert_eq!((r.status, r.body.to_vec()), expected);
                wire += r.wire_len;
            }
            prop_assert_eq!(wire, input.len());
        } else if let Some(Err(e)) = whole.last() {
            // A cut-short stream can only end in an early EOF.
            prop_assert_eq!(e, &ResponseError::UnexpectedEof);
        }
    }

    #[test]
    fn response_parser_never_panics(
        input in proptest::collection::vec(any::<u8>(), 0..2000),
        cuts in proptest::collection::vec(any::<Index>(), 0..20),
        heads in proptest::collection::vec(any::<bool>(), 0..8),
    ) {
        let whole = parse_responses(&[&input], &heads);
        let pieces = parse_responses(&split(&input, &cuts), &heads);
        prop_assert_eq!(whole, pieces);
    }
}

// ---- echo ----

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn echo_stream_verifies_any_split(
        msg_size in 1usize..64,
        seed in any::<u64>(),
        messages in 0usize..20,
        corrupt in proptest::option::of((any::<Index>(), 1u8..=255)),
        excess in proptest::collection::vec(any::<u8>(), 0..4),
        cuts in proptest::collection::vec(any::<Index>(), 0..20),
    ) {
        let mut sender = EchoStream::new(msg_size, seed);
        let mut sent = BytesMut::new();
        for _ in 0..messages {
            sender.write_message(&mut sent);
        }
        prop_assert_eq!(sent.len(), msg_size * messages);
        prop_assert_eq!(sender.sent_messages(), messages as u64);
        prop_assert_eq!(sender.outstanding_bytes(), sent.len() as u64);

        let mut back = sent.to_vec();
        let mut expected_err = None;
        if let Some((at, x)) = corrupt {
            if !back.is_empty() {
                let i = at.index(back.len());
                let expected = back[i];
                back[i] ^= x;
                expected_err = Some(EchoMismatch::Corrupt { offset: i as u64, expected, got: back[i] });
            }
        }
        if expected_err.is_none() {
            if let Some(&got) = excess.first() {
                expected_err = Some(EchoMismatch::Excess { offset: back.len() as u64, got });
            }
        }
        back.extend_from_slice(&excess);

        let run = |pieces: &[&[u8]]| {
            let mut s = sender.clone();
            let mut completed = 0;
            for p in pieces {
                match s.on_recv(p) {
                    Ok(n) => completed += n,
                    Err(e) => return (completed, Some(e), s),
                }
            }
            (completed, None, s)
        };
        let (whole_n, whole_err, whole_s) = run(&[&back]);
        let (split_n, split_err, split_s) = run(&split(&back, &cuts));
        prop_assert_eq!(&whole_err, &expected_err);
        prop_assert_eq!(&split_err, &expected_err);
        if expected_err.is_none() {
            prop_assert_eq!(whole_n, messages as u64);
            prop_assert_eq!(split_n, messages as u64);
            prop_assert_eq!(split_s.outstanding_bytes(), 0);
            prop_assert_eq!(split_s.received_bytes(), sent.len() as u64);
            prop_assert_eq!(split_s.received_messages(), messages as u64);
        } else {
            prop_assert!(split_n <= messages as u64);
            prop_assert_eq!(whole_s.received_bytes(), split_s.received_bytes());
        }
    }

    #[test]
    fn echo_messages_are_slices_of_one_stream(
        msg_size in 1usize..40,
        seed in any::<u64>(),
        messages in 1usize..10,
    ) {
        let mut s = EchoStream::new(msg_size, seed);
        let mut out = BytesMut::new();
        for _ in 0..messages {
            s.write_message(&mut out);
        }
        let mut expected = vec![0u8; msg_size * messages];
        fill_stream(seed, 0, &mut expected);
        prop_assert_eq!(&out[..], &expected[..]);
        // Another seed gives another stream (a crossed connection is caught): splitmix64 is a
        // bijection, so whole 8-byte blocks always differ.
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        fill_stream(seed, 8 * messages as u64, &mut a);
        fill_stream(seed ^ 1, 8 * messages as u64, &mut b);
        prop_assert_ne!(a, b);
    }
}

/// The echo session under a schedule of receives (also while it asks not to read), partial
/// sends, clock steps and a peer EOF, as `fuzz/fuzz_targets/echo_session.rs` drives it: output
/// is always a prefix of input, and in the end exactly the input.
fn run_echo_schedule(hw: u8, delay: u8, ops: &[u8]) -> Result<(), TestCaseError> {
    use std::time::{Duration, Instant};
    let cfg = ServerConfig {
        proto: Proto::Echo,
        out_high_water: usize::from(hw) * 8 + 1,
        delay: Duration::from_millis(u64::from(delay % 4) * 10),
        ..ServerConfig::default()
    };
    let start = Instant::now();
    let mut t = 0u64;
    let mut now = Now::with_fixed_date(start);
    let mut s = Session::new(&cfg, &now);
    let (mut input, mut output, mut taken) = (Vec::new(), Vec::new(), Vec::new());
    let mut eof = false;
    let mut i = 0;
    while i < ops.len() {
        let op = ops[i];
        i += 1;
        let arg = usize::from(op / 8);
        match op % 8 {
            0..=2 | 7 if !eof => {
                let n = (arg + 1).min(ops.len() - i);
                let chunk = &ops[i..i + n];
                i += n;
                if op % 8 == 7 || s.wants_read(&cfg) {
                    s.on_recv(&cfg, chunk, &now);
                    input.extend_from_slice(chunk);
                }
            }
            3 => {
                while let Some(b) = s.take_output() {
                    taken.extend_from_slice(&b);
                }
            }
            4 => {
                let n = (arg * 4).min(taken.len());
                output.extend(taken.drain(..n));
                s.on_sent(&cfg, n, &now);
            }
            5 => {
                t += arg as u64;
                now = Now::with_fixed_date(start + Duration::from_millis(t));
                s.on_timeout(&cfg, &now);
            }
            6 if !eof => {
                eof = true;
                s.on_peer_eof(&cfg, &now);
            }
            _ => {}
        }
        let so_far = output.len() + taken.len();
        prop_assert!(so_far <= input.len(), "more out than in");
        prop_assert_eq!(&input[..output.len()], &output[..]);
        prop_assert_eq!(&input[output.len()..so_far], &taken[..]);
        prop_assert!(s.pending_output() >= taken.len());
    }
    for _ in 0..1000 {
        t += 50;
        now = Now::with_fixed_date(start + Duration::from_millis(t));
        s.on_timeout(&cfg, &now);
        while let Some(b) = s.take_output() {
            taken.extend_from_slice(&b);
        }
        let n = taken.len();
        output.append(&mut taken);
        s.on_sent(&cfg, n, &now);
        if s.pending_output() == 0 && s.buffered_input() == 0 {
            break;
        }
    }
    prop_assert_eq!(&output, &input, "echo lost, added or reordered bytes");
    let want = if eof {
        Action::ShutdownWrite
    } else {
        Action::Continue
    };
    prop_assert_eq!(s.action(), want);
    Ok(())
}

proptest! {
    #![proptest_config(cases(300))]

    #[test]
    fn echo_session_any_schedule(
        hw in any::<u8>(),
        delay in any::<u8>(),
        ops in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        run_echo_schedule(hw, delay, &ops)?;
    }
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Whatever `/files/<rest>` is, a path the session would open is relative, with no `.`,
    /// `..` or empty segment and no NUL (the same property as the `file_request` fuzz target).
    #[test]
    fn file_paths_never_leave_the_root(
        rest in "([a-z.]{0,3}|%2[eEfF]|%00|%2|/|\\.\\.){0,8}",
    ) {
        if let Ok(p) = ringlab_proto::files::check_path(&rest) {
            prop_assert!(!p.starts_with('/') && !p.contains('\0'), "{:?}", p);
            prop_assert!(
                p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."),
                "{:?} from {:?}", p, rest
            );
        }
    }

    /// A `Range` answer never selects a byte outside the file, nor an empty range.
    #[test]
    fn file_ranges_stay_inside_the_file(
        a in proptest::option::of(0u64..2000),
        b in proptest::option::of(0u64..2000),
        size in 0u64..1500,
    ) {
        let v = format!(
            "bytes={}-{}",
            a.map_or(String::new(), |x| x.to_string()),
            b.map_or(String::new(), |x| x.to_string())
        );
        if let ringlab_proto::files::RangeAnswer::Part { start, end } =
            ringlab_proto::files::range(Some(v.as_bytes()), size)
        {
            prop_assert!(start < end && end <= size, "{} of {}: {}..{}", v, size, start, end);
        }
    }
}
