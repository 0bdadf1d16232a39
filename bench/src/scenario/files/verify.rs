//! The byte-exact pass before measuring: every hot file and a sample of cold files fetched once
//! from a server, each compared with the manifest's hash, and two ranges of every sampled cold
//! file compared with the bytes on disk. Plain blocking HTTP/1.1 over one keep-alive
//! connection, responses framed by ringlab-proto's parser (Content-Length checked); every read
//! and write is bounded by a timeout, so a server that never answers fails the pass instead of
//! hanging it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use ringlab_proto::http::{encode_request, Response, ResponseParser};

use super::data::{read_range, DataSet, Entry};

/// How long one response may take at most (a 16 MiB file over loopback takes milliseconds).
const PER_RESPONSE: Duration = Duration::from_secs(20);

/// What a pass checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Verified {
    pub files: usize,
    pub ranges: usize,
    pub bytes: u64,
}

/// One keep-alive connection to the server, reopened when the server closes it.
struct Fetcher {
    addr: String,
    conn: Option<TcpStream>,
    buf: BytesMut,
}

impl Fetcher {
    fn new(addr: &str) -> Fetcher {
        Fetcher {
            addr: addr.to_string(),
            conn: None,
            buf: BytesMut::new(),
        }
    }

    /// `GET target` (with `Range: range`): the response.
    fn get(&mut self, target: &str, range: Option<&str>) -> Result<Response> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let a: std::net::SocketAddr = self.addr.parse().context("server address")?;
                let c = TcpStream::connect_timeout(&a, Duration::from_secs(5))
                    .with_context(|| format!("connecting to {}", self.addr))?;
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                c.set_write_timeout(Some(Duration::from_secs(5)))?;
                self.buf.clear();
                c
            }
        };
        let mut c = conn;
        let headers: Vec<(String, String)> = range
            .map(|r| vec![("Range".to_string(), format!("bytes={r}"))])
            .unwrap_or_default();
        let mut req = BytesMut::new();
        encode_request(&mut req, "GET", target, &self.addr, &headers, b"");
        c.write_all(&req)
            .with_context(|| format!("sending GET {target}"))?;
        let mut parser = ResponseParser::new();
        let deadline = Instant::now() + PER_RESPONSE;
        let mut chunk = vec![0u8; 256 << 10];
        loop {
            if let Some(resp) = parser
                .parse(&mut self.buf, false)
                .with_context(|| format!("GET {target}: the response"))?
            {
                if resp.keep_alive && self.buf.is_empty() {
                    self.conn = Some(c);
                } else if !self.buf.is_empty() {
                    bail!(
                        "GET {target}: {} bytes after the response that no request asked for (its Content-Length is wrong)",
                        self.buf.len()
                    );
                }
                return Ok(resp);
            }
            if Instant::now() > deadline {
                bail!("GET {target}: no complete response within {PER_RESPONSE:?}");
            }
            match c.read(&mut chunk) {
                Ok(0) => {
                    return match parser.on_eof(&mut self.buf) {
                        Ok(Some(r)) => Ok(r),
                        _ => bail!(
                            "GET {target}: the server closed the connection before its response was complete"
                        ),
                    }
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    bail!("GET {target}: no answer within 5 s (does this server serve files?)")
                }
                Err(e) => return Err(e).with_context(|| format!("GET {target}: reading")),
            }
        }
    }
}

/// The URL path of a data-set file.
pub fn target(e: &Entry) -> String {
    format!("{}{}", ringlab_proto::files::PREFIX, e.path)
}

/// The two ranges asked of a cold file of `size` bytes: one that starts at an odd offset a
/// third of the way in and spans several 64 KiB chunks, and a suffix (the last bytes). As
/// `(Range value, offset, length)`.
pub fn ranges(size: u64) -> [(String, u64, u64); 2] {
    let start = (size / 3) | 1;
    let len = (3 * 65536 + 4321).min(size - start);
    let tail = 100_003.min(size);
    [
        (format!("{start}-{}", start + len - 1), start, len),
        (format!("-{tail}"), size - tail, tail),
    ]
}

/// The pass against the server at `addr`: every hot file and each of `cold` whole, and two
/// ranges of each of `cold`. The first difference is an error that says what differed.
pub fn verify(addr: &str, data: &DataSet, cold: &[&Entry]) -> Result<Verified> {
    let mut f = Fetcher::new(addr);
    let mut v = Verified::default();
    for e in data.manifest.hot().chain(cold.iter().copied()) {
        let t = target(e);
        let r = f.get(&t, None)?;
        if r.status != 200 {
            bail!("GET {t}: status {} (expected 200)", r.status);
        }
        let h = blake3::hash(&r.body).to_hex().to_string();
        if r.body.len() as u64 != e.size || h != e.blake3 {
            bail!(
                "GET {t}: {} bytes with BLAKE3 {}…, the manifest says {} bytes with {}…: the served file differs",
                r.body.len(),
                &h[..16],
                e.size,
                &e.blake3[..16]
            );
        }
        v.files += 1;
        v.bytes += e.size;
    }
    for e in cold {
        let t = target(e);
        for (range, off, len) in ranges(e.size) {
            let r = f.get(&t, Some(&range))?;
            if r.status != 206 {
                bail!(
                    "GET {t} Range: bytes={range}: status {} (expected 206)",
                    r.status
                );
            }
            let want = read_range(&data.path(e), off, len as usize)?;
            if r.body.as_ref() != want.as_slice() {
                let at = r
                    .body
                    .iter()
                    .zip(&want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(r.body.len().min(want.len()));
                bail!(
                    "GET {t} Range: bytes={range}: {} bytes that differ from the file's {len} at byte {at} of the range",
                    r.body.len()
                );
            }
            v.ranges += 1;
            v.bytes += len;
        }
    }
    Ok(v)
}

/// `k` cold files spread over the set (the largest always among them).
pub fn cold_sample(data: &DataSet, k: usize) -> Vec<&Entry> {
    let cold: Vec<&Entry> = data.manifest.cold().collect();
    if cold.is_empty() || k == 0 {
        return Vec::new();
    }
    let k = k.min(cold.len());
    let mut out: Vec<&Entry> = (0..k).map(|i| cold[i * cold.len() / k]).collect();
    if let Some(big) = cold.iter().max_by_key(|e| e.size) {
        if !out.iter().any(|e| e.path == big.path) {
            out[k - 1] = big;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cross_chunks_and_stay_inside_the_file() {
        for size in [1 << 20, 16 << 20, (1 << 20) + 7] {
            let [(a, ao, al), (b, bo, bl)] = ranges(size);
            assert!(ao % 2 == 1 && al > 3 * 65536 && ao + al <= size, "{a}");
            assert_eq!(a, format!("{ao}-{}", ao + al - 1));
            assert_eq!((b, bo + bl), ("-100003".to_string(), size));
        }
    }

    /// A tiny file server with keep-alive, a byte flipped in one file when `corrupt`.
    fn serve(data: DataSet, corrupt: Option<String>) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                buf.drain(..end + 4);
                let path = head
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .trim_start_matches("/files/");
                let mut body = std::fs::read(data.dir.join(path)).unwrap();
                if corrupt.as_deref() == Some(path) {
                    let mid = body.len() / 2;
                    body[mid] ^= 0x40;
                }
                let range = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Range: bytes="))
                    .map(str::to_string);
                let (status, body) = match range {
                    None => ("200 OK", body),
                    Some(r) => {
                        let n = body.len();
                        let (a, b) = r.split_once('-').unwrap();
                        let (a, b) = if a.is_empty() {
                            (n - b.parse::<usize>().unwrap(), n - 1)
                        } else {
                            (a.parse().unwrap(), b.parse().unwrap())
                        };
                        ("206 Partial Content", body[a..=b].to_vec())
                    }
                };
                let h = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if s.write_all(h.as_bytes())
                    .and_then(|_| s.write_all(&body))
                    .is_err()
                {
                    return;
                }
            }
        });
        addr
    }

    #[test]
    fn passes_a_faithful_server_and_fails_one_that_alters_a_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = super::super::data::DataSpec {
            size: 4 << 20,
            hot_files: 5,
            seed: 3,
        };
        let data = super::super::data::ensure(tmp.path(), &spec, &mut |_| {}).unwrap();
        let sample = cold_sample(&data, 2);
        assert!(!sample.is_empty());
        let v = verify(&serve(data.clone(), None), &data, &sample).unwrap();
        assert_eq!(v.files, 5 + sample.len());
        assert_eq!(v.ranges, 2 * sample.len());
        let bad = sample[0].path.clone();
        let e = verify(&serve(data.clone(), Some(bad.clone())), &data, &sample)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&bad) && e.contains("differs"), "{e}");
    }

    #[test]
    fn a_server_that_never_answers_fails_within_seconds() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = super::super::data::DataSpec {
            size: 2 << 20,
            hot_files: 1,
            seed: 3,
        };
        let data = super::super::data::ensure(tmp.path(), &spec, &mut |_| {}).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = Instant::now();
        let e = verify(&addr, &data, &[]).unwrap_err().to_string();
        assert!(e.contains("does this server serve files?"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(15));
        drop(l);
    }
}
