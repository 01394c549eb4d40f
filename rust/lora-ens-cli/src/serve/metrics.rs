//! The server's counters, written as Prometheus text on `GET /metrics`: requests by route and
//! status, request latency histograms by route, queue depth, active generations, tokens
//! generated and the ensemble's members.
//! Test: `pytest tests/test_serve.py -k metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    n: u64,
}

/// Counters shared by the HTTP side and the worker.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    tokens: AtomicU64,
    active_generations: AtomicUsize,
    rejected: AtomicU64,
    members: usize,
}

impl Metrics {
    /// Counters of a server whose ensemble has `members` members.
    pub fn new(members: usize) -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(BTreeMap::new()),
            tokens: AtomicU64::new(0),
            active_generations: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            members,
        }
    }

    /// Count one finished request of `route` answered with `status` after `seconds`.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((route.to_owned(), status)).or_insert(0) += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(route.to_owned()).or_insert_with(|| Histogram {
                counts: vec![0; LATENCY_BUCKETS.len()],
                ..Histogram::default()
            });
            for (c, &b) in h.counts.iter_mut().zip(LATENCY_BUCKETS) {
                if seconds <= b {
                    *c += 1;
                }
            }
            h.sum += seconds;
            h.n += 1;
        }
        if status == 429 {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count generated tokens.
    pub fn add_tokens(&self, n: usize) {
        self.tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The number of sequences decoding now.
    pub fn set_active_generations(&self, n: usize) {
        self.active_generations.store(n, Ordering::Relaxed);
    }

    /// Sequences decoding now.
    pub fn active_generations(&self) -> usize {
        self.active_generations.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition, with `queue_depth` requests waiting to start.
    pub fn render(&self, queue_depth: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP lora_ens_requests_total HTTP requests by route and status.\n\
             # TYPE lora_ens_requests_total counter"
        );
        if let Ok(r) = self.requests.lock() {
            for ((route, status), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "lora_ens_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP lora_ens_request_duration_seconds Request latency by route (streams: until \
             the last event).\n# TYPE lora_ens_request_duration_seconds histogram"
        );
        if let Ok(l) = self.latency.lock() {
            for (route, h) in l.iter() {
                for (c, b) in h.counts.iter().zip(LATENCY_BUCKETS) {
                    let _ = writeln!(
                        out,
                        "lora_ens_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {c}"
                    );
                }
                let _ = writeln!(
                    out,
                    "lora_ens_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                     lora_ens_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                     lora_ens_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.n, h.sum, h.n
                );
            }
        }
        let gauges = [
            (
                "lora_ens_queue_depth",
                "gauge",
                "Requests waiting to start.",
                queue_depth as u64,
            ),
            (
                "lora_ens_active_generations",
                "gauge",
                "Sequences decoding now.",
                self.active_generations() as u64,
            ),
            (
                "lora_ens_tokens_generated_total",
                "counter",
                "Tokens generated.",
                self.tokens.load(Ordering::Relaxed),
            ),
            (
                "lora_ens_rejected_total",
                "counter",
                "Requests answered 429 (queue full).",
                self.rejected.load(Ordering::Relaxed),
            ),
            (
                "lora_ens_members",
                "gauge",
                "LoRA members in the ensemble (0: the base model alone).",
                self.members as u64,
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
