//! A small closed-loop HTTP load generator for the service benchmark: `CONCURRENCY` clients each
//! open a connection, send `GET /`, read the answer to the end and start over, for `SECONDS`.
//! Prints one JSON line: requests per second, failures, and latency percentiles in ms.
//!
//! Usage: `http_load HOST:PORT SECONDS CONCURRENCY` (run inside a virtual Pi with nsenter).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn one_request(target: SocketAddr) -> std::io::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(target).await?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await?;
    let mut answer = Vec::with_capacity(512);
    stream.read_to_end(&mut answer).await?;
    if answer.starts_with(b"HTTP/1.") && answer.get(9..12) == Some(b"200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not a 200 answer"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: http_load HOST:PORT SECONDS CONCURRENCY");
        std::process::exit(2);
    }
    let target: SocketAddr = args[1].parse().expect("HOST:PORT");
    let seconds: f64 = args[2].parse().expect("SECONDS");
    let concurrency: usize = args[3].parse().expect("CONCURRENCY");
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            while Instant::now() < deadline {
                let begun = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), one_request(target)).await {
                    Ok(Ok(())) => latencies.push(begun.elapsed().as_secs_f64() * 1000.0),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for client in clients {
        let (mut l, f) = client.await.expect("client task");
        latencies.append(&mut l);
        failures += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let percentile = |q: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{{\"requests\": {}, \"failures\": {failures}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(0.50),
        percentile(0.99),
    );
}
