//! A small metrics registry: counters, gauges and histograms by name, cheap to update from the
//! hot path (relaxed atomics; histograms behind a mutex touched once per checkpoint or batch).
//! The binary serves them (Prometheus) or prints them; the runtime only records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Observations (e.g. durations in ms), the most recent `capacity` kept for percentiles, plus
/// a total count and sum.
#[derive(Debug)]
pub struct Histogram {
    inner: Mutex<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    recent: Vec<f64>,
    next: usize,
    count: u64,
    sum: f64,
}

/// How many observations a histogram keeps for percentiles.
pub const HISTOGRAM_RECENT_MAX: usize = 4096;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            inner: Mutex::new(HistogramInner {
                recent: Vec::new(),
                next: 0,
                count: 0,
                sum: 0.0,
            }),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let mut h = self.inner.lock().expect("histogram lock");
        h.count += 1;
        h.sum += v;
        if h.recent.len() < HISTOGRAM_RECENT_MAX {
            h.recent.push(v);
        } else {
            let i = h.next;
            h.recent[i] = v;
            h.next = (i + 1) % HISTOGRAM_RECENT_MAX;
        }
    }
    /// The `q`-quantile (0..=1) of the recent observations, if any.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let h = self.inner.lock().expect("histogram lock");
        if h.recent.is_empty() {
            return None;
        }
        let mut v = h.recent.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        Some(v[i])
    }
    /// Count and sum of all observations.
    pub fn count_sum(&self) -> (u64, f64) {
        let h = self.inner.lock().expect("histogram lock");
        (h.count, h.sum)
    }
}

/// One registered metric.
#[derive(Debug, Clone)]
pub enum Metric {
    /// A counter.
    Counter(Arc<Counter>),
    /// A gauge.
    Gauge(Arc<Gauge>),
    /// A histogram.
    Histogram(Arc<Histogram>),
}

/// Metrics by name (and help text), shared by the job's tasks.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    metrics: Arc<Mutex<BTreeMap<String, (&'static str, Metric)>>>,
}

impl Registry {
    /// The counter `name`, created on first use.
    pub fn counter(&self, name: &str, help: &'static str) -> Arc<Counter> {
        let mut m = self.metrics.lock().expect("registry lock");
        match m
            .entry(name.to_string())
            .or_insert_with(|| (help, Metric::Counter(Arc::default())))
        {
            (_, Metric::Counter(c)) => c.clone(),
            _ => panic!("metric {name} registered with another type"),
        }
    }
    /// The gauge `name`, created on first use.
    pub fn gauge(&self, name: &str, help: &'static str) -> Arc<Gauge> {
        let mut m = self.metrics.lock().expect("registry lock");
        match m
            .entry(name.to_string())
            .or_insert_with(|| (help, Metric::Gauge(Arc::default())))
        {
            (_, Metric::Gauge(g)) => g.clone(),
            _ => panic!("metric {name} registered with another type"),
        }
    }
    /// The histogram `name`, created on first use.
    pub fn histogram(&self, name: &str, help: &'static str) -> Arc<Histogram> {
        let mut m = self.metrics.lock().expect("registry lock");
        match m
            .entry(name.to_string())
            .or_insert_with(|| (help, Metric::Histogram(Arc::default())))
        {
            (_, Metric::Histogram(h)) => h.clone(),
            _ => panic!("metric {name} registered with another type"),
        }
    }
    /// Every metric with its help text, by name.
    pub fn all(&self) -> Vec<(String, &'static str, Metric)> {
        let m = self.metrics.lock().expect("registry lock");
        m.iter()
            .map(|(k, (h, v))| (k.clone(), *h, v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_and_registry_identity() {
        let r = Registry::default();
        let h = r.histogram("x_ms", "x");
        for i in 1..=100 {
            h.observe(f64::from(i));
        }
        assert_eq!(h.quantile(0.5), Some(51.0));
        assert_eq!(h.quantile(0.99), Some(99.0));
        assert_eq!(r.histogram("x_ms", "x").count_sum(), (100, 5050.0));
        r.counter("c", "c").add(2);
        assert_eq!(r.counter("c", "c").get(), 2);
    }
}
