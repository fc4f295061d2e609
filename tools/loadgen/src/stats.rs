//! Counting what arrived: a log-linear latency histogram (under 0.8 % error,
//! exact max) and a per-receiver record of sequence numbers that tells
//! first deliveries from duplicates and late (out-of-order) ones, so loss
//! is `expected - unique` and nothing is ever folded away.

/// Latency histogram over nanosecond values.
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
    sum: u128,
}

const LINEAR: u64 = 256;
const PER_OCTAVE: usize = 128;

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 8
    let shift = e - 7;
    let m = (v >> shift) as usize; // 128..=255
    LINEAR as usize + (shift as usize - 1) * PER_OCTAVE + (m - PER_OCTAVE)
}

fn bucket_mid(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let k = i - LINEAR as usize;
    let shift = (k / PER_OCTAVE + 1) as u32;
    let m = (PER_OCTAVE + k % PER_OCTAVE) as u64;
    (m << shift) + (1u64 << (shift - 1))
}

impl Histogram {
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; bucket(u64::MAX) + 1],
            n: 0,
            max: 0,
            sum: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
        self.sum += v as u128;
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.n = 0;
        self.max = 0;
        self.sum = 0;
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> u64 {
        if self.n == 0 {
            0
        } else {
            (self.sum / self.n as u128) as u64
        }
    }

    /// Value at quantile q (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let target = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return bucket_mid(i).min(self.max);
            }
        }
        self.max
    }
}

/// What recording one sequence number found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// First time seen.
    New { late: bool },
    /// Seen before.
    Duplicate,
}

/// Sequence numbers one receiver has seen.
#[derive(Default)]
pub struct Seen {
    bits: Vec<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Receptions of a sequence number already received.
    pub duplicates: u64,
    /// First receptions that came after a higher sequence number.
    pub late: u64,
    high: u64,
}

impl Seen {
    pub fn record(&mut self, seq: u64) -> Arrival {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.bits[w] |= 1 << b;
        self.unique += 1;
        let late = seq < self.high;
        if late {
            self.late += 1;
        } else {
            self.high = seq + 1;
        }
        Arrival::New { late }
    }
}
