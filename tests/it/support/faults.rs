//! A fault-injecting HTTP proxy on 127.0.0.1 in front of the S3 test server: it answers the
//! first N requests of a method with `503 Service Unavailable` (what S3 does when it throttles)
//! and forwards everything else. Each connection carries one request (`Connection: close`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    port: u16,
    injected: Arc<AtomicUsize>,
    forwarded: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxies to `upstream` (`host:port`), failing the first `fail` requests whose method is
    /// `method` with 503.
    pub fn start(upstream: &str, method: &'static str, fail: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let injected = Arc::new(AtomicUsize::new(0));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(AtomicUsize::new(fail));
        let upstream = upstream.to_string();
        {
            let (injected, forwarded, stop) = (
                Arc::clone(&injected),
                Arc::clone(&forwarded),
                Arc::clone(&stop),
            );
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let (upstream, budget, injected, forwarded) = (
                                upstream.clone(),
                                Arc::clone(&budget),
                                Arc::clone(&injected),
                                Arc::clone(&forwarded),
                            );
                            thread::spawn(move || {
                                let _ = serve(
                                    client, &upstream, method, &budget, &injected, &forwarded,
                                );
                            });
                        }
                        Err(_) => thread::sleep(std::time::Duration::from_millis(2)),
                    }
                }
            });
        }
        FaultProxy {
            port,
            injected,
            forwarded,
            stop,
        }
    }

    /// The endpoint to give clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests answered with 503 so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::Relaxed)
    }

    /// Requests forwarded so far.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    method: &str,
    budget: &AtomicUsize,
    injected: &AtomicUsize,
    forwarded: &AtomicUsize,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    // Read the head, then the body by Content-Length.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = client.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let is_method = head.starts_with(&format!("{method} "));
    if is_method
        && budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_ok()
    {
        injected.fetch_add(1, Ordering::Relaxed);
        let body = "<Error><Code>SlowDown</Code><Message>injected</Message></Error>";
        write!(
            client,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    forwarded.fetch_add(1, Ordering::Relaxed);
    // One request per connection: ask the server to close when it is done.
    let mut lines: Vec<&str> = head[..head.len() - 4]
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let mut out = TcpStream::connect(upstream)?;
    out.write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())?;
    out.write_all(&buf[head_end..])?;
    let mut response = Vec::new();
    out.read_to_end(&mut response)?;
    client.write_all(&response)?;
    Ok(())
}
