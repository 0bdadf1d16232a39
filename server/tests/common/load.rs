//! Echo load for tests: many concurrent connections, every byte verified.

use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

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
