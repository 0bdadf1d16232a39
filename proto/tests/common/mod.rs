//! Helpers shared by the integration tests: a session driven like a backend would drive it.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use ringlab_proto::{Action, Now, Proto, ServerConfig, Session};

/// The date `Now::with_fixed_date` carries.
pub const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// An HTTP server config with default limits.
pub fn http_cfg() -> ServerConfig {
    ServerConfig {
        proto: Proto::Http,
        ..ServerConfig::default()
    }
}

/// One connection's session, with the time under the test's control.
pub struct Conn {
    pub cfg: ServerConfig,
    pub s: Session,
    pub start: Instant,
    pub now: Now,
    /// Requests completed so far, as reported by `on_recv` and `on_sent`.
    pub requests: u32,
}

impl Conn {
    pub fn new(cfg: ServerConfig) -> Self {
        let start = Instant::now();
        Conn {
            s: Session::new(&cfg, &Now::with_fixed_date(start)),
            cfg,
            start,
            now: Now::with_fixed_date(start),
            requests: 0,
        }
    }

    pub fn http() -> Self {
        Conn::new(http_cfg())
    }

    pub fn recv(&mut self, data: &[u8]) {
        self.requests += self.s.on_recv(&self.cfg, data, &self.now);
    }

    /// Move the clock to `start + ms` and fire the timer.
    pub fn advance_to_ms(&mut self, ms: u64) {
        self.now = Now::with_fixed_date(self.start + Duration::from_millis(ms));
        self.s.on_timeout(&self.cfg, &self.now);
    }

    /// Take all output, reporting every byte sent, until there is none.
    pub fn drain(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.s.take_output() {
            out.extend_from_slice(&b);
            self.requests += self.s.on_sent(&self.cfg, b.len(), &self.now);
        }
        out
    }

    pub fn action(&self) -> Action {
        self.s.action()
    }
}

/// Feed `input` at once to a fresh HTTP session; return the output and the request count.
pub fn serve(input: &[u8]) -> (Vec<u8>, Conn) {
    let mut c = Conn::http();
    c.recv(input);
    let out = c.drain();
    (out, c)
}

/// A 200 response as the server writes it for an HTTP/1.1 keep-alive request.
pub fn ok_11(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nServer: ringlab\r\nDate: {DATE}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An error response (HTTP/1.1, Connection: close) with the error's message as body.
pub fn error_response(status_line: &str, message: &str) -> String {
    format!(
        "HTTP/1.1 {status_line}\r\nServer: ringlab\r\nDate: {DATE}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{message}",
        message.len()
    )
}

/// Show bytes readably in assertion failures.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
