//! Echo load for tests: many concurrent connections, every byte verified.

use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A two-worker tokio runtime for many concurrent connections.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// On one connection: write `msg` while concurrently reading the echo, half-close, then expect
/// EOF after exactly `msg.len()` bytes. Returns a description of what went wrong, if anything.
pub async fn echo_one(addr: SocketAddr, msg: Vec<u8>, id: usize) -> Result<(), String> {
    let work = async {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).ok();
        let (mut rd, mut wr) = s.into_split();
        let writer = async {
            wr.write_all(&msg)
                .await
                .map_err(|e| format!("write: {e}"))?;
            wr.shutdown().await.map_err(|e| format!("shutdown: {e}"))
        };
        let reader = async {
            let mut got = Vec::with_capacity(msg.len());
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = rd.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Ok::<_, String>(got);
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() > msg.len() {
                    return Err(format!(
                        "received {} bytes, more than the {} sent",
                        got.len(),
                        msg.len()
                    ));
                }
            }
        };
        let (w, r) = tokio::join!(writer, reader);
        w?;
        let got = r?;
        match super::first_difference(&got, &msg) {
            None => Ok(()),
            Some(i) => Err(format!(
                "echo of {} bytes: got {} bytes, first difference at byte {i}",
                msg.len(),
                got.len()
            )),
        }
    };
    match tokio::time::timeout(Duration::from_secs(60), work).await {
        Ok(r) => r.map_err(|e| format!("connection {id}: {e}")),
        Err(_) => Err(format!("connection {id}: no EOF within 60 s")),
    }
}

/// Run `msgs` as concurrent echo connections; panics listing the failures.
pub fn echo_many(addr: SocketAddr, msgs: Vec<Vec<u8>>) {
    let rt = runtime();
    let failures: Vec<String> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (id, m) in msgs.into_iter().enumerate() {
            tasks.push(tokio::spawn(echo_one(addr, m, id)));
        }
        let mut failures = Vec::new();
        for t in tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("task: {e}")),
            }
        }
        failures
    });
    assert!(
        failures.is_empty(),
        "{} connections failed, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

/// Log-uniform sizes in 1 B ..= 1 MiB; the first is 1 B and the second 1 MiB.
pub fn log_uniform_sizes(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| match i {
            0 => 1,
            1 => 1 << 20,
            _ => {
                let e: f64 = rng.random_range(0.0..=20.0);
                (2f64.powf(e).round() as usize).clamp(1, 1 << 20)
            }
        })
        .collect()
}

/// One connection echoes `len` bytes while the client writes them all from another thread and
/// then half-closes; every byte must come back, then EOF. With a `pause`, the reader starts that
/// much later on a small receive buffer, so the server's writes hit EAGAIN and its reads stop for
/// backpressure meanwhile.
pub fn half_close_echo(srv: &super::Server, len: usize, pause: Duration) {
    let mut s = srv.connect();
    if !pause.is_zero() {
        socket2::SockRef::from(&s)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
    }
    let msg = super::pattern(8, len);
    let mut w = s.try_clone().unwrap();
    let to_send = msg.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&to_send)?;
        w.shutdown(Shutdown::Write)
    });
    std::thread::sleep(pause);
    let got = super::read_to_eof(&mut s, msg.len());
    writer.join().unwrap().expect("writing then half-closing");
    super::assert_bytes_eq(&got.expect("echo then EOF"), &msg, "echo after half-close");
}

/// `n` non-blocking connections with 64 KiB socket buffers, so the client side's kernel cannot
/// absorb what the server stops reading.
pub fn small_buffer_conns(srv: &super::Server, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = srv.connect();
            let r = socket2::SockRef::from(&s);
            r.set_recv_buffer_size(64 * 1024).unwrap();
            r.set_send_buffer_size(64 * 1024).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect()
}

/// Write `each` bytes to every connection, round-robin, until all is sent or no connection has
/// made progress for a second (they are all blocked), bounded by 60 s. `next(sent)` gives the
/// bytes to write after `sent` bytes. Returns the bytes sent on each connection.
pub fn push_until_blocked<'a>(
    conns: &mut [TcpStream],
    each: usize,
    next: impl Fn(usize) -> &'a [u8],
) -> Vec<usize> {
    let mut sent = vec![0usize; conns.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_progress = Instant::now();
    while Instant::now() < deadline && last_progress.elapsed() < Duration::from_secs(1) {
        let mut progressed = false;
        for (s, n) in conns.iter_mut().zip(sent.iter_mut()) {
            if *n >= each {
                continue;
            }
            match s.write(next(*n)) {
                Ok(k) => {
                    *n += k;
                    progressed = true;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        if progressed {
            last_progress = Instant::now();
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        if sent.iter().all(|&n| n >= each) {
            break;
        }
    }
    sent
}
