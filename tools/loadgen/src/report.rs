//! The run's figures: a human summary (aligned lines, problems last) and
//! one JSON object on one line with every figure under a flat snake_case
//! key, so a script can collect medians over runs.

use serde_json::{Map, Value};

use crate::os::CpuSample;
use crate::stats::Histogram;

#[derive(Default)]
pub struct Report {
    fields: Map<String, Value>,
    lines: Vec<(String, String)>,
    /// Failed checks (loss, duplicates, ...): any makes the exit code 1.
    pub problems: Vec<String>,
    /// Remarks on how far to trust the figures.
    pub notes: Vec<String>,
}

/// The quantiles every latency distribution is reported at.
const QUANTILES: [(&str, f64); 10] = [
    ("p10", 0.10),
    ("p25", 0.25),
    ("p50", 0.50),
    ("p75", 0.75),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
    ("max", 1.0),
];

/// Rounds for display and JSON (figures are noisy beyond 4 digits).
pub fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

impl Report {
    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.fields.insert(key.to_owned(), v.into());
    }

    pub fn line(&mut self, label: &str, text: String) {
        self.lines.push((label.to_owned(), text));
    }

    /// Latency figures of `h` under `prefix` (microseconds).
    pub fn latency(&mut self, prefix: &str, label: &str, h: &Histogram) {
        let us = |ns: u64| round(ns as f64 / 1e3, 1);
        let (p50, p99, max, mean) = (
            us(h.quantile(0.5)),
            us(h.quantile(0.99)),
            us(h.max()),
            us(h.mean()),
        );
        self.set(&format!("{prefix}_p50_us"), p50);
        self.set(&format!("{prefix}_p99_us"), p99);
        self.set(&format!("{prefix}_max_us"), max);
        self.set(&format!("{prefix}_mean_us"), mean);
        self.set(&format!("{prefix}_samples"), h.count());
        // The distribution, HdrHistogram style: the value at each of these
        // quantiles, so two runs' tails can be laid side by side.
        let mut distribution = Map::new();
        let mut text = Vec::new();
        for (name, q) in QUANTILES {
            let v = us(h.quantile(q));
            distribution.insert(name.to_owned(), v.into());
            text.push(format!("{name} {}", fmt_us(v)));
        }
        self.set(
            &format!("{prefix}_quantiles_us"),
            Value::Object(distribution),
        );
        self.line(&format!("{label} by quantile"), text.join(" "));
        self.line(
            label,
            format!(
                "p50 {} p99 {} max {} (mean {}, {} samples)",
                fmt_us(p50),
                fmt_us(p99),
                fmt_us(max),
                fmt_us(mean),
                h.count()
            ),
        );
    }

    /// CPU used by a process over a phase, per unit of work. The per-unit
    /// figure uses the schedstat run time (ns resolution) where the kernel
    /// has it, else utime+stime of /proc/PID/stat (10 ms ticks); both
    /// totals are kept in the JSON.
    pub fn cpu(
        &mut self,
        prefix: &str,
        label: &str,
        unit: &str,
        cpu: Option<CpuSample>,
        per: u64,
        wall_s: f64,
    ) {
        let Some(cpu) = cpu else {
            self.set(&format!("{prefix}_cpu_s"), Value::Null);
            self.set(&format!("{prefix}_cpu_per_{unit}_us"), Value::Null);
            self.line(label, "not measured (no pid)".into());
            return;
        };
        let (secs, source) = match cpu.sched_s {
            Some(s) => (s, "schedstat"),
            None => (cpu.stat_s, "stat"),
        };
        let per_us = (per > 0).then(|| secs * 1e6 / per as f64);
        let busy = if wall_s > 0.0 { secs / wall_s } else { 0.0 };
        self.set(&format!("{prefix}_cpu_s"), round(secs, 6));
        self.set(
            &format!("{prefix}_cpu_per_{unit}_us"),
            per_us.map(|v| round(v, 4)),
        );
        self.set(&format!("{prefix}_cpu_source"), source);
        self.set(&format!("{prefix}_cpu_stat_s"), round(cpu.stat_s, 2));
        self.set(&format!("{prefix}_busy"), round(busy, 3));
        self.set(
            &format!("{prefix}_runq_wait_s"),
            cpu.wait_s.map(|w| round(w, 4)),
        );
        let waited = cpu
            .wait_s
            .map(|w| if wall_s > 0.0 { w / wall_s } else { 0.0 });
        self.set(
            &format!("{prefix}_runq_wait_share"),
            waited.map(|w| round(w, 3)),
        );
        if let Some(w) = waited.filter(|&w| w > 0.1) {
            self.notes.push(format!(
                "{label}: the process waited for a CPU {:.0}% of the phase (other tasks on its core): its latency and throughput figures include that wait",
                w * 100.0
            ));
        }
        self.line(
            label,
            format!(
                "{} µs/{} ({secs:.4} s CPU from {source}, utime+stime {:.2} s; busy {:.0}% of {wall_s:.3} s{})",
                per_us.map_or("-".into(), |v| format!("{v:.4}")),
                unit.replace('_', " "),
                cpu.stat_s,
                busy * 100.0,
                waited.map_or(String::new(), |w| format!(", waited for a CPU {:.0}%", w * 100.0))
            ),
        );
    }

    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn human(&self) -> String {
        let w = self.lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut s = String::new();
        for (label, text) in &self.lines {
            s.push_str(&format!("  {label:<w$}  {text}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        if self.problems.is_empty() {
            s.push_str("  checks: ok\n");
        } else {
            for p in &self.problems {
                s.push_str(&format!("  PROBLEM: {p}\n"));
            }
        }
        s
    }

    pub fn json(&mut self) -> String {
        self.set("ok", self.problems.is_empty());
        self.set("problems", self.problems.clone());
        self.set("notes", self.notes.clone());
        Value::Object(self.fields.clone()).to_string()
    }
}

pub fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

pub fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}
