//! Byte-exact fixtures: request bytes in, response bytes out, through the real `Session`.

mod common;

use common::*;
use ringlab_proto::{Action, Proto, ServerConfig};

const HELLO_11: &str = "HTTP/1.1 200 OK\r\n\
                        Server: ringlab\r\n\
                        Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                        Content-Type: text/plain\r\n\
                        Content-Length: 13\r\n\
                        \r\n\
                        Hello, World!";

#[track_caller]
fn assert_serves(input: &[u8], expected: &str) -> Conn {
    let (out, c) = serve(input);
    assert_eq!(show(&out), expected, "input: {:?}", show(input));
    c
}

#[test]
fn get_root_keep_alive_11() {
    let c = assert_serves(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", HELLO_11);
    assert_eq!(c.requests, 1);
    assert_eq!(c.action(), Action::Continue);
    assert!(c.s.wants_read(&c.cfg));
    assert!(c.s.is_idle());
}

#[test]
fn get_root_with_query_and_extra_headers() {
    let c = assert_serves(
        b"GET /?x=1 HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        HELLO_11,
    );
    assert_eq!(c.requests, 1);
}

#[test]
fn http10_without_keep_alive_closes() {
    let mut c = Conn::http();
    c.recv(b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(c.requests, 1);
    let out = c.s.take_output().expect("a response");
    assert_eq!(
        show(&out),
        "HTTP/1.0 200 OK\r\n\
         Server: ringlab\r\n\
         Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 13\r\n\
         Connection: close\r\n\
         \r\n\
         Hello, World!"
    );
    // Not yet sent: the backend must not shut down the write side yet.
    assert_eq!(c.action(), Action::Continue);
    c.s.on_sent(&c.cfg, out.len(), &c.now);
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn http11_connection_close_closes() {
    let mut c = Conn::http();
    c.recv(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, Close\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let out = c.drain();
    assert_eq!(
        show(&out),
        "HTTP/1.1 200 OK\r\n\
         Server: ringlab\r\n\
         Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 13\r\n\
         Connection: close\r\n\
         \r\n\
         Hello, World!"
    );
    assert_eq!(
        c.requests, 1,
        "the request after Connection: close is not answered"
    );
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn http10_with_keep_alive_stays_open() {
    let mut c = Conn::http();
    c.recv(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let expected = "HTTP/1.0 200 OK\r\n\
                    Server: ringlab\r\n\
                    Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
                    Content-Type: text/plain\r\n\
                    Content-Length: 13\r\n\
                    Connection: keep-alive\r\n\
                    \r\n\
                    Hello, World!";
    assert_eq!(show(&c.drain()), expected);
    assert_eq!(c.action(), Action::Continue);
    // A second request on the same connection is answered too.
    c.recv(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(show(&c.drain()), expected);
    assert_eq!(c.requests, 2);
}

#[test]
fn head_root_has_length_and_no_body() {
    assert_serves(
        b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
        "HTTP/1.1 200 OK\r\n\
         Server: ringlab\r\n\
         Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 13\r\n\
         \r\n",
    );
}

#[test]
fn unknown_path_is_404() {
    assert_serves(
        b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n",
        "HTTP/1.1 404 Not Found\r\n\
         Server: ringlab\r\n\
         Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: 9\r\n\
         \r\n\
         Not Found",
    );
}

#[test]
fn wrong_method_is_405_with_allow_and_without_content_type() {
    assert_serves(
        b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n",
        "HTTP/1.1 405 Method Not Allowed\r\n\
         Server: ringlab\r\n\
         Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Length: 0\r\n\
         Allow: GET, HEAD\r\n\
         \r\n",
    );
    assert_serves(
        b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n",
        "HTTP/1.1 405 Method Not Allowed\r\n\
         Server: ringlab\r\n\
         Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
         Content-Length: 0\r\n\
         Allow: POST\r\n\
         \r\n",
    );
}

#[test]
fn delay_takes_digits_only() {
    for bad in [
        "/delay/+5",
        "/delay/-5",
        "/delay/",
        "/delay/60001",
        "/delay/5x",
    ] {
        let req = format!("GET {bad} HTTP/1.1\r\nHost: a\r\n\r\n");
        let (out, _) = serve(req.as_bytes());
        assert!(
            show(&out).starts_with("HTTP/1.1 400 "),
            "{bad}: {}",
            show(&out)
        );
    }
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let mut c = Conn::http();
    c.recv(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(show(&c.drain()), "HTTP/1.1 100 Continue\r\n\r\n");
    c.recv(b"hello");
    let resp = show(&c.drain());
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nhello"), "{resp}");
}

#[test]
fn post_echo_with_content_length() {
    assert_serves(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
        &ok_11("hello world"),
    );
}

#[test]
fn post_echo_with_same_content_length_twice() {
    assert_serves(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
        &ok_11("hi"),
    );
}

#[test]
fn post_echo_chunked() {
    assert_serves(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          4\r\nWiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n",
        &ok_11("Wikipedia in\r\n\r\nchunks."),
    );
}

#[test]
fn post_echo_chunked_case_insensitive_and_uppercase_hex() {
    assert_serves(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ChUnKeD\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
        &ok_11("0123456789"),
    );
}

#[test]
fn three_pipelined_requests_answered_in_order() {
    let input = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
                  POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
                  GET /missing HTTP/1.1\r\nHost: a\r\n\r\n";
    let expected = format!(
        "{HELLO_11}{}HTTP/1.1 404 Not Found\r\nServer: ringlab\r\nDate: {DATE}\r\n\
         Content-Type: text/plain\r\nContent-Length: 9\r\n\r\nNot Found",
        ok_11("abc")
    );
    let c = assert_serves(input, &expected);
    assert_eq!(c.requests, 3);
    assert!(c.s.is_idle());
}

#[test]
fn request_split_byte_by_byte() {
    let input = b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let mut c = Conn::http();
    for (i, b) in input.iter().enumerate() {
        c.recv(std::slice::from_ref(b));
        if i + 1 < input.len() {
            assert!(
                !c.s.has_output(),
                "no response before the request is complete"
            );
            assert!(!c.s.is_idle(), "a partial request is not idle");
        }
    }
    assert_eq!(show(&c.drain()), ok_11("abc"));
    assert_eq!(c.requests, 1);
}

// ---- 400s ----

#[track_caller]
fn assert_bad_request(input: &[u8], message: &str) {
    let (out, c) = serve(input);
    assert_eq!(
        show(&out),
        error_response("400 Bad Request", &format!("malformed request: {message}")),
        "input: {:?}",
        show(input)
    );
    assert_eq!(c.requests, 0);
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn content_length_and_transfer_encoding() {
    assert_bad_request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    );
    assert_bad_request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "both Content-Length and Transfer-Encoding",
    );
}

#[test]
fn conflicting_content_lengths() {
    assert_bad_request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        "conflicting Content-Length values",
    );
}

#[test]
fn bad_content_length() {
    for cl in [
        "+3",
        "-1",
        "abc",
        "",
        "3 3",
        "1,1",
        "0x3",
        "18446744073709551616",
    ] {
        let input = format!("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\nabc");
        assert_bad_request(input.as_bytes(), "invalid Content-Length");
    }
}

#[test]
fn unsupported_transfer_encodings() {
    for te in [
        "gzip",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "chunkedx",
    ] {
        let input =
            format!("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
        assert_bad_request(input.as_bytes(), "unsupported Transfer-Encoding");
    }
    assert_bad_request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "unsupported Transfer-Encoding",
    );
    assert_bad_request(
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Transfer-Encoding in an HTTP/1.0 request",
    );
}

#[test]
fn obsolete_line_folding() {
    assert_bad_request(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        "invalid header name",
    );
    assert_bad_request(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n\ttwo\r\n\r\n",
        "invalid header name",
    );
}

#[test]
fn bad_method_char() {
    assert_bad_request(
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "invalid method or target",
    );
    assert_bad_request(
        b"GE\x01T / HTTP/1.1\r\nHost: a\r\n\r\n",
        "invalid method or target",
    );
}

#[test]
fn bad_target() {
    assert_bad_request(
        b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n",
        "invalid method or target",
    );
    assert_bad_request(
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        "invalid method or target",
    );
}

#[test]
fn bad_header_name_char() {
    assert_bad_request(
        b"GET / HTTP/1.1\r\nHost: a\r\nBad[Name: x\r\n\r\n",
        "invalid header name",
    );
    assert_bad_request(
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        "invalid header name",
    );
    assert_bad_request(
        b"GET / HTTP/1.1\r\nHost: a\r\nName : x\r\n\r\n",
        "invalid header name",
    );
}

#[test]
fn bad_header_value_char() {
    assert_bad_request(
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        "invalid header value",
    );
}

#[test]
fn over_long_chunk_size() {
    assert_bad_request(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000001\r\nx\r\n0\r\n\r\n",
        "chunk size has more than 16 hex digits",
    );
    // A chunk-size line over 1 KiB is refused even before it ends.
    let mut input =
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=".to_vec();
    input.resize(input.len() + 2000, b'x');
    assert_bad_request(&input, "chunk size line too long");
}

#[test]
fn bad_chunk_framing() {
    let head = "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (body, message) in [
        ("3\r\nabcX\r\n0\r\n\r\n", "chunk data not followed by CRLF"),
        ("\r\nabc\r\n0\r\n\r\n", "missing chunk size"),
        ("3x\r\nabc\r\n0\r\n\r\n", "invalid chunk size"),
        ("-3\r\nabc\r\n0\r\n\r\n", "missing chunk size"),
        ("3\nabc\r\n0\r\n\r\n", "chunk line not terminated by CRLF"),
        ("0\r\nbad trailer\r\n\r\n", "invalid trailer field"),
        ("0\r\n folded: x\r\n\r\n", "invalid trailer field"),
    ] {
        assert_bad_request(format!("{head}{body}").as_bytes(), message);
    }
}

#[test]
fn missing_host_on_11() {
    assert_bad_request(b"GET / HTTP/1.1\r\n\r\n", "missing Host header");
    assert_bad_request(
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "more than one Host header",
    );
}

#[test]
fn http_2_0_version() {
    assert_bad_request(
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "unsupported HTTP version",
    );
    assert_bad_request(
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "unsupported HTTP version",
    );
    assert_bad_request(
        b"GET / FTP/1.1\r\nHost: a\r\n\r\n",
        "unsupported HTTP version",
    );
}

#[test]
fn garbage_request_line_is_refused_before_the_head_ends() {
    let mut c = Conn::http();
    c.recv(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n");
    let out = c.drain();
    assert!(
        show(&out).starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{}",
        show(&out)
    );
}

#[test]
fn valid_request_before_a_bad_one_is_answered_first() {
    let (out, c) = serve(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        show(&out),
        format!(
            "{HELLO_11}{}",
            error_response("400 Bad Request", "malformed request: missing Host header")
        )
    );
    assert_eq!(c.requests, 1);
}

// ---- 431 and 413 ----

const HEAD_TOO_LARGE: &str = "request header fields too large";
const BODY_TOO_LARGE: &str = "payload too large";

#[test]
fn header_of_9_kib_is_431() {
    let mut input = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
    input.resize(input.len() + 9 * 1024, b'a');
    input.extend_from_slice(b"\r\n\r\n");
    let (out, c) = serve(&input);
    assert_eq!(
        show(&out),
        error_response("431 Request Header Fields Too Large", HEAD_TOO_LARGE)
    );
    assert_eq!(c.action(), Action::ShutdownWrite);

    // The same head arriving in pieces is refused once 8 KiB have come without its end.
    let mut c = Conn::http();
    c.recv(&input[..8 * 1024 - 1]);
    assert!(!c.s.has_output());
    assert_eq!(c.s.buffered_input(), 8 * 1024 - 1);
    c.recv(&input[8 * 1024 - 1..8 * 1024]);
    assert_eq!(
        show(&c.drain()),
        error_response("431 Request Header Fields Too Large", HEAD_TOO_LARGE)
    );
}

#[test]
fn one_hundred_headers_is_431() {
    let mut input = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..99 {
        input.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    input.extend_from_slice(b"\r\n");
    let (out, _) = serve(&input);
    assert_eq!(
        show(&out),
        error_response("431 Request Header Fields Too Large", HEAD_TOO_LARGE)
    );
}

#[test]
fn sixty_four_headers_are_accepted() {
    let mut input = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..63 {
        input.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    input.extend_from_slice(b"\r\n");
    let (out, _) = serve(&input);
    assert_eq!(show(&out), HELLO_11);
}

#[test]
fn content_length_of_2_mib_is_413_before_the_body() {
    let mut c = Conn::http();
    c.recv(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2097152\r\n\r\n");
    assert_eq!(
        show(&c.drain()),
        error_response("413 Content Too Large", BODY_TOO_LARGE)
    );
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn content_length_at_the_limit_is_accepted() {
    let mut input = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    input.resize(input.len() + 1024 * 1024, b'z');
    let (out, c) = serve(&input);
    assert_eq!(c.requests, 1);
    let mut expected = format!(
        "HTTP/1.1 200 OK\r\nServer: ringlab\r\nDate: {DATE}\r\nContent-Type: text/plain\r\n\
         Content-Length: 1048576\r\n\r\n"
    )
    .into_bytes();
    expected.resize(expected.len() + 1024 * 1024, b'z');
    assert!(out == expected, "1 MiB echo differs");
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    // One chunk announcing more than the limit: refused at its size line.
    let mut c = Conn::http();
    c.recv(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n");
    assert_eq!(
        show(&c.drain()),
        error_response("413 Content Too Large", BODY_TOO_LARGE)
    );

    // Chunks that only add up to more than the limit: refused at the size line of the one
    // that crosses it.
    let mut c = Conn::http();
    c.recv(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = vec![b'q'; 0x40000];
    for _ in 0..4 {
        c.recv(b"40000\r\n");
        c.recv(&chunk);
        c.recv(b"\r\n");
        assert!(!c.s.has_output());
    }
    c.recv(b"1\r\n");
    assert_eq!(
        show(&c.drain()),
        error_response("413 Content Too Large", BODY_TOO_LARGE)
    );
}

// ---- /delay ----

#[test]
fn delay_holds_the_response_until_its_deadline() {
    let mut c = Conn::http();
    c.recv(b"GET /delay/50 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.requests, 1);
    assert!(!c.s.has_output());
    assert_eq!(
        c.s.deadline(&c.cfg),
        Some(c.start + std::time::Duration::from_millis(50))
    );
    c.advance_to_ms(49);
    assert!(!c.s.has_output());
    c.advance_to_ms(50);
    assert_eq!(show(&c.drain()), HELLO_11);
    assert_eq!(c.s.deadline(&c.cfg), None);
}

#[test]
fn pipelined_request_waits_behind_a_delayed_one() {
    let mut c = Conn::http();
    c.recv(b"GET /delay/50 HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.requests, 2);
    assert!(
        !c.s.has_output(),
        "the second response must not overtake the first"
    );
    c.advance_to_ms(10);
    assert!(!c.s.has_output());
    c.advance_to_ms(50);
    assert_eq!(show(&c.drain()), format!("{HELLO_11}{HELLO_11}"));
}

#[test]
fn bad_delay_is_400_but_keeps_the_connection() {
    let mut c = Conn::http();
    c.recv(b"GET /delay/abc HTTP/1.1\r\nHost: a\r\n\r\n");
    let body = "delay must be a whole number of milliseconds, at most 60000";
    assert_eq!(
        show(&c.drain()),
        format!(
            "HTTP/1.1 400 Bad Request\r\nServer: ringlab\r\nDate: {DATE}\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    );
    assert_eq!(c.action(), Action::Continue);
}

// ---- backpressure ----

#[test]
fn backpressure_stops_parsing_and_resumes_without_loss() {
    let cfg = ServerConfig {
        out_high_water: 300,
        ..http_cfg()
    };
    let mut c = Conn::new(cfg);
    let mut input = Vec::new();
    let mut expected = String::new();
    for i in 0..40 {
        let body = format!("body number {i:03}");
        input.extend_from_slice(
            format!(
                "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        expected.push_str(&ok_11(&body));
    }
    c.recv(&input);
    assert!(c.requests < 40, "parsing must stop at the high-water mark");
    assert!(c.requests >= 1);
    assert!(!c.s.wants_read(&c.cfg));
    assert!(c.s.buffered_input() > 0);

    // Feeding more while over the mark parses nothing more.
    let before = c.requests;
    c.recv(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    expected.push_str(HELLO_11);
    assert_eq!(c.requests, before);

    // Send output in small pieces; parsing resumes as room appears.
    let mut out = Vec::new();
    let mut rounds = 0;
    while let Some(b) = c.s.take_output() {
        rounds += 1;
        for piece in b.chunks(50) {
            out.extend_from_slice(piece);
            c.requests += c.s.on_sent(&c.cfg, piece.len(), &c.now);
        }
    }
    assert!(rounds > 1);
    assert_eq!(show(&out), expected);
    assert_eq!(c.requests, 41);
    assert_eq!(c.s.buffered_input(), 0);
    assert!(c.s.wants_read(&c.cfg));
    assert!(c.s.is_idle());
}

// ---- echo ----

#[test]
fn echo_returns_the_same_bytes() {
    let mut c = Conn::new(ServerConfig {
        proto: Proto::Echo,
        ..ServerConfig::default()
    });
    c.recv(b"hello ");
    c.recv(b"world\x00\xff");
    assert_eq!(c.drain(), b"hello world\x00\xff");
    assert_eq!(c.requests, 2);
}

#[test]
fn echo_with_delay_holds_output_until_the_deadline() {
    let mut c = Conn::new(ServerConfig {
        proto: Proto::Echo,
        delay: std::time::Duration::from_millis(100),
        ..ServerConfig::default()
    });
    c.recv(b"first");
    c.advance_to_ms(30);
    c.recv(b"second");
    assert!(!c.s.has_output());
    assert_eq!(
        c.s.deadline(&c.cfg),
        Some(c.start + std::time::Duration::from_millis(100))
    );
    c.advance_to_ms(99);
    assert!(!c.s.has_output());
    c.advance_to_ms(100);
    assert_eq!(c.drain(), b"first");
    assert_eq!(
        c.s.deadline(&c.cfg),
        Some(c.start + std::time::Duration::from_millis(130))
    );
    c.advance_to_ms(130);
    assert_eq!(c.drain(), b"second");
    assert_eq!(c.s.deadline(&c.cfg), None);
}

#[test]
fn echo_backpressure_keeps_order() {
    let mut c = Conn::new(ServerConfig {
        proto: Proto::Echo,
        out_high_water: 64,
        ..ServerConfig::default()
    });
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    for piece in data.chunks(100) {
        c.recv(piece);
    }
    assert!(!c.s.wants_read(&c.cfg));
    assert_eq!(c.drain(), data);
    assert!(c.s.wants_read(&c.cfg));
}
