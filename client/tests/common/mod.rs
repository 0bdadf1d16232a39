//! The client tests' harness: in-process ringlab servers, small scripted TCP servers for the
//! situations a real server rarely produces (a stall, a corrupted byte, a close or reset
//! mid-response, silence), and a macro that runs each test body once per client `--io`.
//!
//! Rules: all traffic goes to 127.0.0.1; every loop is bounded in count and time; every server
//! here stops when dropped.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use clap::Parser;
use ringlab_client::{Report, RunConfig};

/// Define tests that run once per client IO model:
/// `io_tests! { fn name(io: &str) { ... } }` → `mod name { #[test] fn uring() … fn epoll() … }`.
#[macro_export]
macro_rules! io_tests {
    () => {};
    ($(#[$meta:meta])* fn $name:ident($io:ident : &str) $body:block $($rest:tt)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($io: &str) $body

            #[test]
            $(#[$meta])*
            fn uring() {
                if $crate::common::skip_uring() {
                    return;
                }
                body("uring")
            }

            #[test]
            $(#[$meta])*
            fn epoll() {
                body("epoll")
            }
        }
        $crate::io_tests!($($rest)*);
    };
}

/// Whether to skip a uring test: io_uring is unusable here and `RINGLAB_REQUIRE_URING` is not
/// `1` (with it set, an unusable io_uring fails the test instead).
pub fn skip_uring() -> bool {
    match ringlab_runtime::uring::check_available() {
        Ok(()) => false,
        Err(e) => {
            if std::env::var("RINGLAB_REQUIRE_URING").as_deref() == Ok("1") {
                panic!("RINGLAB_REQUIRE_URING=1 but io_uring cannot be used: {e}");
            }
            eprintln!("skipping a uring test: {e}");
            true
        }
    }
}

/// A ringlab-server running in this process (epoll backend, unpinned); stops when dropped.
pub struct RinglabServer {
    pub addr: SocketAddr,
    running: Option<ringlab_server::Running>,
}

impl RinglabServer {
    /// Start one with `--proto proto` and `extra` flags.
    pub fn start(proto: &str, extra: &[&str]) -> RinglabServer {
        let mut argv = vec![
            "ringlab-server",
            "--listen",
            "127.0.0.1:0",
            "--io",
            "epoll",
            "--cores",
            "0",
            "--no-pin",
            "--grace",
            "1s",
            "--proto",
            proto,
        ];
        argv.extend_from_slice(extra);
        let args = ringlab_server::Args::parse_from(argv);
        let running = ringlab_server::start(args).expect("in-process server starts");
        RinglabServer {
            addr: running.listen,
            running: Some(running),
        }
    }
}

impl Drop for RinglabServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stopper().stop();
            let _ = r.join();
        }
    }
}

/// What a scripted server does with each accepted connection.
pub type Behaviour = Arc<dyn Fn(TcpStream, &Scripted) + Send + Sync>;

/// A small thread-per-connection TCP server running a [`Behaviour`]; stops when dropped.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    pub state: Arc<Scripted>,
    accept: Option<JoinHandle<()>>,
}

/// Shared state of a scripted server.
#[derive(Default)]
pub struct Scripted {
    pub stop: AtomicBool,
    pub accepted: AtomicU64,
    pub peers: Mutex<Vec<SocketAddr>>,
    pub accept_times: Mutex<Vec<Instant>>,
}

impl Scripted {
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl ScriptedServer {
    pub fn start(behaviour: Behaviour) -> ScriptedServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(Scripted::default());
        let st = state.clone();
        let accept = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut workers = Vec::new();
            while !st.stopped() && Instant::now() < deadline {
                match l.accept() {
                    Ok((s, peer)) => {
                        st.accepted.fetch_add(1, Ordering::Relaxed);
                        st.peers.lock().expect("peers").push(peer);
                        st.accept_times.lock().expect("times").push(Instant::now());
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                        let _ = s.set_nodelay(true);
                        let b = behaviour.clone();
                        let st2 = st.clone();
                        workers.push(thread::spawn(move || b(s, &st2)));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
            st.stop.store(true, Ordering::Relaxed);
            for w in workers {
                let _ = w.join();
            }
        });
        ScriptedServer {
            addr,
            state,
            accept: Some(accept),
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

/// Read into `buf` until data, EOF (`Ok(0)`), an error, or the server stopping (`None`).
pub fn read_some(s: &mut TcpStream, buf: &mut [u8], st: &Scripted) -> Option<usize> {
    loop {
        if st.stopped() {
            return None;
        }
        match s.read(buf) {
            Ok(n) => return Some(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Echo everything back; `hook(offset, chunk)` may change a chunk (or sleep) before it goes.
pub fn echo_with(hook: impl Fn(u64, &mut [u8]) + Send + Sync + 'static) -> Behaviour {
    Arc::new(move |mut s: TcpStream, st: &Scripted| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0u64;
        while let Some(n) = read_some(&mut s, &mut buf, st) {
            if n == 0 {
                return;
            }
            hook(off, &mut buf[..n]);
            off += n as u64;
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    })
}

/// Answer every HTTP request (counted by its blank line; requests carry no body) with
/// `response`.
pub fn http_fixed(response: &'static [u8]) -> Behaviour {
    Arc::new(move |mut s: TcpStream, st: &Scripted| {
        let mut buf = vec![0u8; 64 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        while let Some(n) = read_some(&mut s, &mut buf, st) {
            if n == 0 {
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            let mut out = Vec::new();
            while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                pending.drain(..i + 4);
                out.extend_from_slice(response);
            }
            if !out.is_empty() && s.write_all(&out).is_err() {
                return;
            }
        }
    })
}

/// A client configuration from command-line arguments (after the program name).
pub fn config(args: &[&str]) -> RunConfig {
    let mut argv = vec!["ringlab-client"];
    argv.extend_from_slice(args);
    ringlab_client::Args::try_parse_from(argv)
        .expect("arguments parse")
        .resolve()
        .expect("arguments resolve")
}

/// Run the client in-process with `args`; the run must finish within `bound`.
pub fn run_client(args: &[&str], bound: Duration) -> Report {
    let cfg = config(args);
    let t0 = Instant::now();
    let r = ringlab_client::run(cfg).expect("run");
    let took = t0.elapsed();
    assert!(took < bound, "run took {took:?}, bound {bound:?}");
    r
}
