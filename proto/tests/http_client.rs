//! Client side: request encoding, response parsing, and round trips through the server side.

mod common;

use bytes::BytesMut;
use common::*;
use ringlab_proto::http::{
    encode_request, write_response, Limits, Method, Request, RequestParser, Response,
    ResponseError, ResponseParser, Version, MAX_RESPONSE_HEAD,
};

fn encode(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> BytesMut {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let mut out = BytesMut::new();
    encode_request(&mut out, method, target, "localhost:8080", &headers, body);
    out
}

fn parse_one(mut buf: BytesMut) -> Request {
    let req = RequestParser::new()
        .parse(&mut buf, &Limits::default())
        .expect("valid request")
        .expect("complete request");
    assert!(buf.is_empty(), "exactly one request");
    req
}

#[test]
fn encode_get_exact_bytes() {
    let out = encode("GET", "/delay/5?x=1", &[("User-Agent", "ringlab")], b"");
    assert_eq!(
        show(&out),
        "GET /delay/5?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: ringlab\r\n\r\n"
    );
    let req = parse_one(out);
    assert_eq!(req.method, Method::Get);
    assert_eq!(&req.target[..], b"/delay/5?x=1");
    assert_eq!(req.path(), "/delay/5");
    assert_eq!(req.version, Version::Http11);
    assert!(req.keep_alive);
    assert!(req.body.is_empty());
}

#[test]
fn encode_post_with_body_round_trips() {
    let body: Vec<u8> = (0..=255u8).collect();
    let out = encode("POST", "/echo", &[], &body);
    assert!(show(&out)
        .starts_with("POST /echo HTTP/1.1\r\nHost: localhost:8080\r\nContent-Length: 256\r\n\r\n"));
    let req = parse_one(out);
    assert_eq!(req.method, Method::Post);
    assert_eq!(req.path(), "/echo");
    assert_eq!(&req.body[..], &body[..]);
}

#[test]
fn encode_post_and_put_without_body_have_content_length_zero() {
    for (m, method) in [("POST", Method::Post), ("PUT", Method::Put)] {
        let out = encode(m, "/x", &[], b"");
        assert_eq!(
            show(&out),
            format!("{m} /x HTTP/1.1\r\nHost: localhost:8080\r\nContent-Length: 0\r\n\r\n")
        );
        assert_eq!(parse_one(out).method, method);
    }
}

#[test]
fn encode_other_method_and_caller_host() {
    let out = encode(
        "PATCH",
        "/p",
        &[
            ("host", "example"),
            ("Content-Length", "99"),
            ("Connection", "close"),
        ],
        b"xy",
    );
    assert_eq!(
        show(&out),
        "PATCH /p HTTP/1.1\r\nhost: example\r\nConnection: close\r\nContent-Length: 2\r\n\r\nxy"
    );
    let req = parse_one(out);
    assert_eq!(
        req.method,
        Method::Other(bytes::Bytes::from_static(b"PATCH"))
    );
    assert!(!req.keep_alive);
    assert_eq!(&req.body[..], b"xy");
}

fn parse_all(buf: &mut BytesMut, head_flags: &[bool]) -> Vec<Response> {
    let mut p = ResponseParser::new();
    let mut out = Vec::new();
    for &head in head_flags {
        match p.parse(buf, head) {
            Ok(Some(r)) => out.push(r),
            other => panic!("expected a response, got {other:?}"),
        }
    }
    out
}

#[test]
fn server_responses_parse_back() {
    let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
                  HEAD / HTTP/1.1\r\nHost: a\r\n\r\n\
                  POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nping\
                  GET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
                  DELETE / HTTP/1.1\r\nHost: a\r\n\r\n\
                  GET / HTTP/1.0\r\n\r\n";
    let (out, c) = serve(input);
    assert_eq!(c.requests, 6);
    let total = out.len();
    let mut buf = BytesMut::from(&out[..]);
    let resps = parse_all(&mut buf, &[false, true, false, false, false, false]);
    assert!(buf.is_empty());
    let got: Vec<(u16, &[u8], bool)> = resps
        .iter()
        .map(|r| (r.status, &r.body[..], r.keep_alive))
        .collect();
    assert_eq!(
        got,
        vec![
            (200, &b"Hello, World!"[..], true),
            (200, &b""[..], true),
            (200, &b"ping"[..], true),
            (404, &b"Not Found"[..], true),
            (405, &b""[..], true),
            (200, &b"Hello, World!"[..], false),
        ]
    );
    assert_eq!(resps[5].version, Version::Http10);
    assert_eq!(resps.iter().map(|r| r.wire_len).sum::<usize>(), total);
}

#[test]
fn server_error_response_parses_back() {
    let (out, _) = serve(b"GET / HTTP/1.1\r\n\r\n");
    let mut buf = BytesMut::from(&out[..]);
    let r = parse_all(&mut buf, &[false]).remove(0);
    assert_eq!(r.status, 400);
    assert!(!r.keep_alive);
    assert_eq!(&r.body[..], b"malformed request: missing Host header");
}

#[test]
fn write_response_reason_phrases() {
    let req = Request {
        method: Method::Get,
        target: bytes::Bytes::from_static(b"/"),
        version: Version::Http11,
        keep_alive: true,
        range: None,
        if_modified_since: None,
        body: bytes::Bytes::new(),
    };
    let date = *b"Sun, 06 Nov 1994 08:49:37 GMT";
    for (status, line) in [
        (200, "HTTP/1.1 200 OK\r\n"),
        (400, "HTTP/1.1 400 Bad Request\r\n"),
        (404, "HTTP/1.1 404 Not Found\r\n"),
        (405, "HTTP/1.1 405 Method Not Allowed\r\n"),
        (413, "HTTP/1.1 413 Content Too Large\r\n"),
        (431, "HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        (500, "HTTP/1.1 500 Internal Server Error\r\n"),
        (503, "HTTP/1.1 503 Service Unavailable\r\n"),
    ] {
        let mut out = BytesMut::new();
        write_response(&mut out, &req, status, true, &date, b"x");
        assert!(show(&out).starts_with(line), "{}", show(&out));
        let mut buf = out.clone();
        let r = ResponseParser::new()
            .parse(&mut buf, false)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (status, &b"x"[..]));
    }
    // 204 and 304 never carry a body, whatever the caller passes.
    let mut out = BytesMut::new();
    write_response(&mut out, &req, 204, true, &date, b"ignored");
    assert_eq!(
        show(&out),
        format!("HTTP/1.1 204 No Content\r\nServer: ringlab\r\nDate: {DATE}\r\n\r\n")
    );
}

#[test]
fn interim_responses_are_skipped() {
    let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    let mut buf = BytesMut::from(&input[..]);
    let r = ResponseParser::new()
        .parse(&mut buf, false)
        .unwrap()
        .unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"hi"[..]));
    assert_eq!(r.wire_len, input.len());
    assert!(buf.is_empty());

    // Arriving in pieces, the interim bytes still count toward the final response.
    let mut p = ResponseParser::new();
    let mut buf = BytesMut::new();
    let mut got = None;
    for b in input {
        buf.extend_from_slice(&[*b]);
        if let Some(r) = p.parse(&mut buf, false).unwrap() {
            got = Some(r);
        }
    }
    assert_eq!(got.unwrap().wire_len, input.len());
}

#[test]
fn switching_protocols_is_an_error() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n"[..]);
    assert_eq!(
        ResponseParser::new().parse(&mut buf, false),
        Err(ResponseError::Malformed(
            "unexpected 101 Switching Protocols"
        ))
    );
}

#[test]
fn close_delimited_body_ends_at_eof() {
    let mut p = ResponseParser::new();
    let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nabc"[..]);
    assert_eq!(p.parse(&mut buf, false), Ok(None));
    buf.extend_from_slice(b"def");
    assert_eq!(p.parse(&mut buf, false), Ok(None));
    let r = p.on_eof(&mut buf).unwrap().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"abcdef");
    assert!(!r.keep_alive);
    assert_eq!(
        r.wire_len,
        "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nabcdef".len()
    );
    assert!(buf.is_empty());
    // Nothing in progress any more.
    assert_eq!(p.on_eof(&mut buf), Ok(None));
}

#[test]
fn transfer_encoding_not_ending_in_chunked_is_close_delimited() {
    let mut p = ResponseParser::new();
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzz"[..]);
    assert_eq!(p.parse(&mut buf, false), Ok(None));
    let r = p.on_eof(&mut buf).unwrap().unwrap();
    assert_eq!(&r.body[..], b"zzz");
    assert!(!r.keep_alive);
}

#[test]
fn eof_mid_response_is_an_error() {
    for partial in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"[..],
        &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
    ] {
        let mut p = ResponseParser::new();
        let mut buf = BytesMut::from(partial);
        assert_eq!(p.parse(&mut buf, false), Ok(None), "{}", show(partial));
        assert_eq!(
            p.on_eof(&mut buf),
            Err(ResponseError::UnexpectedEof),
            "{}",
            show(partial)
        );
    }
    let mut buf = BytesMut::new();
    assert_eq!(ResponseParser::new().on_eof(&mut buf), Ok(None));
}

#[test]
fn no_body_for_head_204_and_304() {
    let input = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n\
                  HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n\
                  HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nZ";
    let mut buf = BytesMut::from(&input[..]);
    let rs = parse_all(&mut buf, &[true, false, false, false]);
    let got: Vec<(u16, &[u8])> = rs.iter().map(|r| (r.status, &r.body[..])).collect();
    assert_eq!(
        got,
        vec![
            (200, &b""[..]),
            (204, &b""[..]),
            (304, &b""[..]),
            (200, &b"Z"[..])
        ]
    );
}

#[test]
fn chunked_response_with_trailers() {
    let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Sum: 1\r\n\r\n\
                  HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    let mut buf = BytesMut::from(&input[..]);
    let rs = parse_all(&mut buf, &[false, false]);
    assert_eq!(&rs[0].body[..], b"abc0123456789abcdef");
    assert!(rs[0].keep_alive);
    assert_eq!(rs[0].wire_len + rs[1].wire_len, input.len());
    assert!(rs[1].body.is_empty());
}

#[test]
fn keep_alive_rules() {
    for (resp, keep) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], true),
        (
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..],
            false,
        ),
        (&b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..], false),
        (
            &b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"[..],
            true,
        ),
    ] {
        let mut buf = BytesMut::from(resp);
        let r = ResponseParser::new()
            .parse(&mut buf, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.keep_alive, keep, "{}", show(resp));
    }
}

#[test]
fn body_limit_is_enforced() {
    let limit = ResponseError::BodyTooLarge { limit: 10 };
    for input in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"[..],
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\n"[..],
        &b"HTTP/1.1 200 OK\r\n\r\n01234567890"[..],
    ] {
        let mut buf = BytesMut::from(input);
        assert_eq!(
            ResponseParser::with_max_body(10).parse(&mut buf, false),
            Err(limit.clone()),
            "{}",
            show(input)
        );
    }
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"[..]);
    assert!(ResponseParser::with_max_body(10)
        .parse(&mut buf, false)
        .unwrap()
        .is_some());
}

#[test]
fn response_head_limits() {
    let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    big.resize(MAX_RESPONSE_HEAD + 10, b'a');
    let mut buf = BytesMut::from(&big[..]);
    assert_eq!(
        ResponseParser::new().parse(&mut buf, false),
        Err(ResponseError::HeadTooLarge)
    );

    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    let mut buf = BytesMut::from(&many[..]);
    assert_eq!(
        ResponseParser::new().parse(&mut buf, false),
        Err(ResponseError::TooManyHeaders)
    );
}

#[test]
fn malformed_responses() {
    for (input, msg) in [
        (&b"HTTP/1.1 2x0 OK\r\n\r\n"[..], "invalid status code"),
        (&b"HTTP/3.0 200 OK\r\n\r\n"[..], "unsupported HTTP version"),
        (&b"<html>\n"[..], "unsupported HTTP version"),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            "invalid Content-Length",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            "conflicting Content-Length values",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            "both Content-Length and Transfer-Encoding",
        ),
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            "missing chunk size",
        ),
    ] {
        let mut buf = BytesMut::from(input);
        assert_eq!(
            ResponseParser::new().parse(&mut buf, false),
            Err(ResponseError::Malformed(msg)),
            "{}",
            show(input)
        );
    }
}

#[test]
fn response_error_messages_are_one_line() {
    let errors = [
        ResponseError::Malformed("invalid status code"),
        ResponseError::HeadTooLarge,
        ResponseError::TooManyHeaders,
        ResponseError::BodyTooLarge { limit: 42 },
        ResponseError::UnexpectedEof,
    ];
    let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        msgs,
        [
            "malformed response: invalid status code",
            "response head larger than 65536 bytes",
            "response has more than 128 header fields",
            "response body larger than the limit of 42 bytes",
            "connection closed in the middle of a response",
        ]
    );
}
