//! The server's counters, in Prometheus' text format (`GET /metrics`):
//! requests by route and status, latency histograms by route, batch sizes and
//! forward-pass times, the queue's depth, images computed and their recent rate.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// Latency bucket bounds, in seconds.
const LATENCY_BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Images per second are averaged over this window.
const RATE_WINDOW: Duration = Duration::from_secs(10);

struct Histogram {
    bounds: Vec<f64>,
    /// Observations at most each bound (not cumulative; summed when written).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Histogram {
        let counts = vec![0; bounds.len()];
        Histogram {
            bounds,
            counts,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

struct Counters {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_images: Histogram,
    forward_seconds: Histogram,
    images: u64,
    /// (when, images) of the batches inside the rate window.
    recent: VecDeque<(Instant, usize)>,
}

pub struct Metrics {
    counters: Mutex<Counters>,
    /// Requests in the worker's queue (sent, not yet taken into a batch).
    queued: AtomicI64,
    /// Requests admitted and not yet answered (decoding, queued or running).
    in_flight: AtomicI64,
}

impl Metrics {
    /// Counters for a server whose batches hold up to `max_batch` images.
    pub fn new(max_batch: usize) -> Metrics {
        let mut sizes = Vec::new();
        let mut size = 1;
        while size < max_batch {
            sizes.push(size as f64);
            size *= 2;
        }
        sizes.push(max_batch as f64);
        Metrics {
            counters: Mutex::new(Counters {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                batch_images: Histogram::new(sizes),
                forward_seconds: Histogram::new(LATENCY_BOUNDS.to_vec()),
                images: 0,
                recent: VecDeque::new(),
            }),
            queued: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        // Counters stay meaningful after a panic elsewhere: keep counting.
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        let mut counters = self.counters();
        *counters
            .requests
            .entry((route.to_string(), status))
            .or_default() += 1;
        counters
            .latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BOUNDS.to_vec()))
            .observe(seconds);
    }

    pub fn record_batch(&self, images: usize, seconds: f64) {
        let mut counters = self.counters();
        counters.batch_images.observe(images as f64);
        counters.forward_seconds.observe(seconds);
        counters.images += images as u64;
        let now = Instant::now();
        counters.recent.push_back((now, images));
        while counters
            .recent
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            counters.recent.pop_front();
        }
    }

    pub fn enqueued(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dequeued(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn admitted(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }
    pub fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Images per second over the last [`RATE_WINDOW`].
    fn images_per_second(counters: &Counters) -> f64 {
        let now = Instant::now();
        let images: usize = counters
            .recent
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= RATE_WINDOW)
            .map(|(_, n)| n)
            .sum();
        images as f64 / RATE_WINDOW.as_secs_f64()
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let counters = self.counters();
        let mut out = String::new();
        out.push_str("# HELP alexnet_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE alexnet_requests_total counter\n");
        for ((route, status), count) in &counters.requests {
            let _ = writeln!(
                out,
                "alexnet_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP alexnet_request_seconds Time from a request's arrival to its answer.\n",
        );
        out.push_str("# TYPE alexnet_request_seconds histogram\n");
        for (route, histogram) in &counters.latency {
            histogram.write(
                &mut out,
                "alexnet_request_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP alexnet_batch_images Images in each forward pass.\n");
        out.push_str("# TYPE alexnet_batch_images histogram\n");
        counters
            .batch_images
            .write(&mut out, "alexnet_batch_images", "");
        out.push_str("# HELP alexnet_forward_seconds Time of each batch's forward pass.\n");
        out.push_str("# TYPE alexnet_forward_seconds histogram\n");
        counters
            .forward_seconds
            .write(&mut out, "alexnet_forward_seconds", "");
        let gauges = [
            (
                "alexnet_images_total",
                "counter",
                "Images run through the net.",
                counters.images as f64,
            ),
            (
                "alexnet_images_per_second",
                "gauge",
                "Images run through the net per second, over the last 10 s.",
                Self::images_per_second(&counters),
            ),
            (
                "alexnet_queue_depth",
                "gauge",
                "Requests waiting for the inference worker.",
                self.queued.load(Ordering::Relaxed) as f64,
            ),
            (
                "alexnet_requests_in_flight",
                "gauge",
                "Requests admitted and not yet answered.",
                self.in_flight.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counts_by_route_and_status() {
        let metrics = Metrics::new(8);
        metrics.record_request("/v1/classify", 200, 0.003);
        metrics.record_request("/v1/classify", 200, 0.2);
        metrics.record_request("/v1/classify", 429, 0.0001);
        metrics.record_batch(3, 0.01);
        let text = metrics.render();
        assert!(text.contains("alexnet_requests_total{route=\"/v1/classify\",status=\"200\"} 2"));
        assert!(text.contains("alexnet_requests_total{route=\"/v1/classify\",status=\"429\"} 1"));
        assert!(
            text.contains("alexnet_request_seconds_bucket{route=\"/v1/classify\",le=\"0.001\"} 1")
        );
        assert!(
            text.contains("alexnet_request_seconds_bucket{route=\"/v1/classify\",le=\"0.005\"} 2")
        );
        assert!(
            text.contains("alexnet_request_seconds_bucket{route=\"/v1/classify\",le=\"+Inf\"} 3")
        );
        // Batch sizes 1, 2, 4, 8: a batch of 3 falls under 4.
        assert!(text.contains("alexnet_batch_images_bucket{le=\"2\"} 0"));
        assert!(text.contains("alexnet_batch_images_bucket{le=\"4\"} 1"));
        assert!(text.contains("alexnet_images_total 3"));
    }
}
