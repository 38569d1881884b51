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

/// Observations (e.g. durations in ms), the most recent [`HISTOGRAM_RECENT_MAX`] kept for
/// percentiles, plus a total count and sum and counts per fixed bucket
/// ([`HISTOGRAM_BUCKET_BOUNDS`], for Prometheus, whose histograms are cumulative buckets).
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
    /// Observations per bucket: `buckets[i]` counts those in
    /// `(HISTOGRAM_BUCKET_BOUNDS[i - 1], HISTOGRAM_BUCKET_BOUNDS[i]]`; the last, those above
    /// every bound.
    buckets: [u64; HISTOGRAM_BUCKET_BOUNDS.len() + 1],
}

/// How many observations a histogram keeps for percentiles.
pub const HISTOGRAM_RECENT_MAX: usize = 4096;

/// Upper bounds (inclusive) of the histogram buckets: 1-2-5 steps from 1 to 5·10⁹, wide enough
/// for milliseconds (a few ms to hours) and bytes (a few bytes to gigabytes) alike.
pub const HISTOGRAM_BUCKET_BOUNDS: [f64; 30] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 1e2, 2e2, 5e2, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5,
    1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9, 2e9, 5e9,
];

impl Default for Histogram {
    fn default() -> Self {
        Self {
            inner: Mutex::new(HistogramInner {
                recent: Vec::new(),
                next: 0,
                count: 0,
                sum: 0.0,
                buckets: [0; HISTOGRAM_BUCKET_BOUNDS.len() + 1],
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
        // NaN lands in the last bucket (no bound is >= NaN).
        let bucket = HISTOGRAM_BUCKET_BOUNDS.partition_point(|bound| *bound < v);
        h.buckets[bucket] += 1;
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
    /// Observations per bucket, not cumulative: `(upper bound, count)` for each of
    /// [`HISTOGRAM_BUCKET_BOUNDS`], then `(f64::INFINITY, count above the last bound)`.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let h = self.inner.lock().expect("histogram lock");
        HISTOGRAM_BUCKET_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.buckets.iter().copied())
            .collect()
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
        let buckets = h.buckets();
        assert_eq!(buckets.len(), HISTOGRAM_BUCKET_BOUNDS.len() + 1);
        // 1 | 2 | 3..=5 | 6..=10 | 11..=20 | 21..=50 | 51..=100, nothing above.
        let counts: Vec<u64> = buckets.iter().map(|(_, n)| *n).collect();
        assert_eq!(&counts[..8], &[1, 1, 3, 5, 10, 30, 50, 0]);
        assert_eq!(counts.iter().sum::<u64>(), 100);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 0)));
        h.observe(1e12);
        assert_eq!(h.buckets().last(), Some(&(f64::INFINITY, 1)));
        r.counter("c", "c").add(2);
        assert_eq!(r.counter("c", "c").get(), 2);
    }
}
