//! Figures for the reports: latency percentiles, rates, memory, and bounded error lists.

use std::time::Duration;

use serde_json::{Value, json};

/// Error messages kept for the report.
const ERRORS_SHOWN: usize = 5;

/// Errors of one kind: how many, and the first few messages.
#[derive(Default, Debug)]
pub(super) struct ErrorLog {
    pub(super) count: u64,
    pub(super) first: Vec<String>,
}

impl ErrorLog {
    pub(super) fn push(&mut self, what: String) {
        self.count += 1;
        if self.first.len() < ERRORS_SHOWN {
            self.first.push(what);
        }
    }

    pub(super) fn merge(&mut self, other: ErrorLog) {
        self.count += other.count;
        for m in other.first {
            if self.first.len() < ERRORS_SHOWN {
                self.first.push(m);
            }
        }
    }
}

/// p50, p99 and max of microsecond samples, in milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Percentiles {
    p50: f64,
    p99: f64,
    pub(super) max: f64,
}

pub(super) fn percentiles(samples: &mut [u32]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = |q: f64| {
        let r = (q * samples.len() as f64).ceil() as usize;
        f64::from(samples[r.clamp(1, samples.len()) - 1]) / 1000.0
    };
    Some(Percentiles {
        p50: rank(0.50),
        p99: rank(0.99),
        max: f64::from(samples[samples.len() - 1]) / 1000.0,
    })
}

pub(super) fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

pub(super) fn percentiles_json(p: Option<Percentiles>) -> Value {
    match p {
        Some(p) => json!({"p50": round(p.p50, 3), "p99": round(p.p99, 3), "max": round(p.max, 3)}),
        None => json!({"p50": null, "p99": null, "max": null}),
    }
}

pub(super) fn percentiles_text(p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("p50 {:.2}  p99 {:.2}  max {:.2}", p.p50, p.p99, p.max),
        None => "no samples".to_owned(),
    }
}

pub(super) fn per_second(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

pub(super) fn kib_text(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |k| format!("{k} KiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<u32> = (1..=100).rev().map(|i| i * 1000).collect();
        let p = percentiles(&mut v).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (50.0, 99.0, 100.0));
        let mut one = vec![1500];
        let p = percentiles(&mut one).unwrap();
        assert_eq!((p.p50, p.p99, p.max), (1.5, 1.5, 1.5));
        assert_eq!(percentiles(&mut []), None);
    }
}
