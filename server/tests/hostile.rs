//! Hostile HTTP input, end to end on every backend: request-smuggling vectors (conflicting or
//! malformed framing), invalid characters, obsolete line folding, chunk-size abuse and limits.
//! Each is answered with exactly the expected status line and `Connection: close`, the
//! connection then ends cleanly (EOF), and a request pipelined behind it is never answered.

mod common;

use common::{get, HttpConn, Server, EXIT_TIMEOUT};

const BAD: &str = "HTTP/1.1 400 Bad Request";
const TOO_LARGE: &str = "HTTP/1.1 413 Content Too Large";
const HEAD_TOO_LARGE: &str = "HTTP/1.1 431 Request Header Fields Too Large";

const POST: &str = "POST /echo HTTP/1.1\r\nHost: x\r\n";
const CHUNKED: &str = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";

/// `(what, request bytes, expected status line)`.
fn hostile_inputs() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let s = |v: &str| v.as_bytes().to_vec();
    let post = |headers: &str, body: &str| format!("{POST}{headers}\r\n{body}").into_bytes();
    let chunked = |body: &str| format!("{CHUNKED}{body}").into_bytes();
    let mut long_chunk_line = format!("{CHUNKED}1;ext=").into_bytes();
    long_chunk_line.resize(long_chunk_line.len() + 2000, b'x');
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let many_headers = {
        let mut r = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..100 {
            r += &format!("X-{i}: v\r\n");
        }
        r + "\r\n"
    };
    vec![
        // Framing conflicts (CL.TE / TE.CL smuggling).
        (
            "Content-Length with Transfer-Encoding",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            BAD,
        ),
        (
            "Transfer-Encoding with Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
            BAD,
        ),
        (
            "two different Content-Length fields",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "abcdef"),
            BAD,
        ),
        (
            "Content-Length +5",
            post("Content-Length: +5\r\n", "abcde"),
            BAD,
        ),
        ("Content-Length -1", post("Content-Length: -1\r\n", ""), BAD),
        (
            "Content-Length list 5,6",
            post("Content-Length: 5,6\r\n", "abcdef"),
            BAD,
        ),
        (
            "Content-Length list 5,5",
            post("Content-Length: 5,5\r\n", "abcde"),
            BAD,
        ),
        (
            "Content-Length \" 5 5\"",
            post("Content-Length:  5 5\r\n", "abcde"),
            BAD,
        ),
        (
            "Content-Length 0x5",
            post("Content-Length: 0x5\r\n", "abcde"),
            BAD,
        ),
        (
            "Content-Length empty",
            post("Content-Length: \r\n", ""),
            BAD,
        ),
        (
            "Content-Length over u64",
            post("Content-Length: 99999999999999999999999\r\n", ""),
            BAD,
        ),
        (
            "Content-Length u64::MAX",
            post("Content-Length: 18446744073709551615\r\n", ""),
            TOO_LARGE,
        ),
        // Transfer codings other than chunked.
        (
            "Transfer-Encoding gzip",
            post("Transfer-Encoding: gzip\r\n", ""),
            BAD,
        ),
        (
            "Transfer-Encoding gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            BAD,
        ),
        (
            "Transfer-Encoding chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            BAD,
        ),
        (
            "Transfer-Encoding identity",
            post("Transfer-Encoding: identity\r\n", ""),
            BAD,
        ),
        (
            "Transfer-Encoding xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            BAD,
        ),
        (
            "two Transfer-Encoding fields",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            BAD,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            s("POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            BAD,
        ),
        (
            "space before the colon (Transfer-Encoding : chunked)",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            BAD,
        ),
        (
            "vertical tab in Transfer-Encoding",
            post("Transfer-Encoding: \x0bchunked\r\n", "0\r\n\r\n"),
            BAD,
        ),
        // Obsolete line folding.
        (
            "obs-fold with SP",
            s("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: one\r\n two\r\n\r\n"),
            BAD,
        ),
        (
            "obs-fold with HTAB",
            s("GET / HTTP/1.1\r\nHost: x\r\nX-Folded: one\r\n\ttwo\r\n\r\n"),
            BAD,
        ),
        // Invalid characters.
        (
            "( in the method",
            s("G(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
            BAD,
        ),
        (
            "control byte in the method",
            s("GE\x01T / HTTP/1.1\r\nHost: x\r\n\r\n"),
            BAD,
        ),
        (
            "DEL in the target",
            s("GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n"),
            BAD,
        ),
        (
            "space in the target",
            s("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
            BAD,
        ),
        (
            "two spaces before the target",
            s("GET  / HTTP/1.1\r\nHost: x\r\n\r\n"),
            BAD,
        ),
        (
            "[ in a header name",
            s("GET / HTTP/1.1\r\nHost: x\r\nBad[Name: v\r\n\r\n"),
            BAD,
        ),
        (
            "space in a header name",
            s("GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n"),
            BAD,
        ),
        (
            "NUL in a header value",
            s("GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n"),
            BAD,
        ),
        (
            "bare CR in a header value",
            s("GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"),
            BAD,
        ),
        // Host and version.
        ("HTTP/1.1 without Host", s("GET / HTTP/1.1\r\n\r\n"), BAD),
        (
            "two Host fields",
            s("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            BAD,
        ),
        ("HTTP/1.2", s("GET / HTTP/1.2\r\nHost: x\r\n\r\n"), BAD),
        (
            "not HTTP at all (a TLS hello)",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            BAD,
        ),
        // Chunked framing abuse.
        (
            "chunk size of 17 hex digits",
            chunked("00000000000000001\r\nx\r\n0\r\n\r\n"),
            BAD,
        ),
        (
            "chunk size overflowing u64",
            chunked("1ffffffffffffffff\r\nx\r\n0\r\n\r\n"),
            BAD,
        ),
        (
            "chunk size u64::MAX",
            chunked("ffffffffffffffff\r\nx\r\n0\r\n\r\n"),
            TOO_LARGE,
        ),
        ("chunk-size line over 1 KiB", long_chunk_line, BAD),
        (
            "chunk size with a sign",
            chunked("-3\r\nabc\r\n0\r\n\r\n"),
            BAD,
        ),
        (
            "chunk data without CRLF",
            chunked("3\r\nabcX\r\n0\r\n\r\n"),
            BAD,
        ),
        (
            "chunk line ended by bare LF",
            chunked("3\nabc\r\n0\r\n\r\n"),
            BAD,
        ),
        ("invalid trailer", chunked("0\r\nbad trailer\r\n\r\n"), BAD),
        // Limits.
        (
            "9 KiB header (limit 8 KiB)",
            big_header.into_bytes(),
            HEAD_TOO_LARGE,
        ),
        (
            "100 header fields (limit 64)",
            many_headers.into_bytes(),
            HEAD_TOO_LARGE,
        ),
        (
            "body over 1 MiB",
            post("Content-Length: 1048577\r\n", "abc"),
            TOO_LARGE,
        ),
    ]
}

backend_tests! {
    /// Every hostile input: the exact status line, `Connection: close`, a clean EOF, and the
    /// `GET /` pipelined behind it never answered.
    fn hostile_inputs_are_refused_and_closed(io: &str) {
        let mut srv = Server::start(io, &["--proto", "http"]);
        for (what, input, status) in hostile_inputs() {
            let mut c = HttpConn::new(srv.connect());
            let mut bytes = input.clone();
            bytes.extend(get("/"));
            c.send(&bytes);
            let r = c.response();
            let head = String::from_utf8_lossy(&r.raw);
            assert!(
                head.starts_with(&format!("{status}\r\n")),
                "{what}: want {status:?}, got {head:?}"
            );
            assert!(r.connection_has("close"), "{what}: no Connection: close in {head:?}");
            // Nothing more: in particular no response to the pipelined GET.
            c.expect_eof();
        }
        // The server is unharmed.
        let mut c = HttpConn::new(srv.connect());
        assert_eq!(c.request(&get("/")).status, 200);
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }
}
