//! `exactly run --metrics-addr HOST:PORT`: the job's metrics for Prometheus at `GET /metrics`.
//!
//! The runtime records into its own small [`Registry`] and knows nothing of Prometheus; here a
//! `prometheus-client` collector reads that registry on every scrape and writes the OpenMetrics
//! text format (<https://prometheus.io/docs/specs/om/open_metrics_spec/>) with the crate's
//! encoder, so the exposition format is not hand-written. The HTTP side is a few lines on a tokio
//! listener: one request per connection, its head bounded in size and time, a bounded number of
//! connections at once — a scrape endpoint needs no web framework.

use std::sync::Arc;
use std::time::Duration;

use exactly::runtime::metrics::{Metric, Registry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Every metric name is `exactly_<runtime name>`.
const PREFIX: &str = "exactly";
/// Largest request head read (a scrape's is a few hundred bytes).
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// A client has this long to send its request head and take the answer.
const CONNECTION_TIMEOUT_MS: u64 = 5_000;
/// Connections served at once; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 16;

/// Reads the runtime's registry at scrape time.
#[derive(Debug)]
struct RuntimeCollector(Registry);

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, metric) in self.0.all() {
            match metric {
                Metric::Counter(c) => {
                    // OpenMetrics adds `_total` to a counter's samples itself.
                    let name = name.strip_suffix("_total").unwrap_or(&name);
                    encoder
                        .encode_descriptor(name, help, None, MetricType::Counter)?
                        .encode_counter::<NoLabelSet, u64, u64>(&c.get(), None)?;
                }
                Metric::Gauge(g) => {
                    encoder
                        .encode_descriptor(&name, help, None, MetricType::Gauge)?
                        .encode_gauge(&g.get())?;
                }
                Metric::Histogram(h) => {
                    let (count, sum) = h.count_sum();
                    let buckets = h.buckets();
                    encoder
                        .encode_descriptor(&name, help, None, MetricType::Histogram)?
                        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                }
            }
        }
        Ok(())
    }
}

/// The registry in the OpenMetrics text format.
pub(crate) fn render(registry: &Registry) -> String {
    let mut prometheus = prometheus_client::registry::Registry::with_prefix(PREFIX);
    prometheus.register_collector(Box::new(RuntimeCollector(registry.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &prometheus)
        .expect("writing to a String does not fail");
    text
}

/// Binds `addr` and serves `GET /metrics` from `registry` until the returned task is aborted.
/// Returns the bound address (useful with port 0).
pub(crate) async fn serve(
    addr: &str,
    registry: Registry,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // E.g. out of file descriptors: wait rather than spin.
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let timeout = Duration::from_millis(CONNECTION_TIMEOUT_MS);
                if let Err(e) = tokio::time::timeout(timeout, answer(stream, &registry)).await {
                    tracing::debug!(error = %e, "metrics: connection timed out");
                }
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

/// Reads one request head and answers it, then closes the connection.
async fn answer(mut stream: TcpStream, registry: &Registry) {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= REQUEST_HEAD_BYTES_MAX {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
            return;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let result = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &render(registry),
            )
            .await
        }
        (Some(b"GET"), _) => {
            respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "metrics: cannot answer");
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let r = Registry::default();
        r.counter("records_in_total", "Records read").add(7);
        r.gauge("watermark_lag_ms", "Lag").set(-3);
        let h = r.histogram("commit_latency_ms", "Commit latency");
        h.observe(1.0);
        h.observe(4.0);
        h.observe(1e12);
        let text = render(&r);
        assert!(
            text.contains("# TYPE exactly_records_in counter\n"),
            "{text}"
        );
        assert!(text.contains("exactly_records_in_total 7\n"), "{text}");
        assert!(text.contains("exactly_watermark_lag_ms -3\n"), "{text}");
        assert!(
            text.contains("# TYPE exactly_commit_latency_ms histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("exactly_commit_latency_ms_count 3\n"),
            "{text}"
        );
        assert!(
            text.contains("exactly_commit_latency_ms_bucket{le=\"1.0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("exactly_commit_latency_ms_bucket{le=\"5.0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("exactly_commit_latency_ms_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let r = Registry::default();
        r.counter("records_in_total", "Records read").add(1);
        let (addr, task) = serve("127.0.0.1:0", r).await.unwrap();
        for (request, status) in [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK"),
            ("GET / HTTP/1.1\r\n\r\n", "404 Not Found"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "405 Method Not Allowed"),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{answer}"
            );
            if status == "200 OK" {
                assert!(answer.contains("exactly_records_in_total 1\n"), "{answer}");
            }
        }
        task.abort();
    }
}
