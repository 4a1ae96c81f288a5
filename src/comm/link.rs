//! The emulated link: the α-β model made real, by delaying each message.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A network link with latency α and bandwidth β: a message of n bytes takes
/// α + n/β. On one machine communication is nearly free, which would hide the lesson,
/// so `--link latency_us,gbit_s` makes every message really take that long.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub latency_us: f64,
    pub gbit_s: f64,
}

impl Link {
    /// Presets the lab offers: name, latency µs, Gbit/s.
    pub const PRESETS: [(&'static str, Link); 3] = [
        (
            "infiniband-100g",
            Link {
                latency_us: 1.5,
                gbit_s: 100.0,
            },
        ),
        (
            "10gbe",
            Link {
                latency_us: 20.0,
                gbit_s: 10.0,
            },
        ),
        (
            "1gbe",
            Link {
                latency_us: 50.0,
                gbit_s: 1.0,
            },
        ),
    ];

    /// Checks the numbers a user gave: latency ≥ 0 and finite, bandwidth > 0 and finite.
    pub fn new(latency_us: f64, gbit_s: f64) -> Result<Link, String> {
        if !(latency_us.is_finite() && latency_us >= 0.0) {
            return Err(format!(
                "latency must be a number of microseconds ≥ 0, got {latency_us}"
            ));
        }
        if !(gbit_s.is_finite() && gbit_s > 0.0) {
            return Err(format!("bandwidth must be a number of Gbit/s > 0, got {gbit_s}"));
        }
        Ok(Link { latency_us, gbit_s })
    }

    /// Seconds to move `bytes` across the link: β·bytes, without the latency.
    pub fn transfer_ns(&self, bytes: usize) -> u64 {
        (bytes as f64 * 8.0 / self.gbit_s) as u64 // bits / (Gbit/s) = ns
    }
    pub fn latency_ns(&self) -> u64 {
        (self.latency_us * 1e3) as u64
    }
    /// α + n/β.
    pub fn message_time(&self, bytes: usize) -> Duration {
        Duration::from_nanos(self.latency_ns() + self.transfer_ns(bytes))
    }
}

/// The α-β cost model of one all-reduce of `bytes` across `n` ranks over `link`:
/// rounds·α + (bytes on the busiest link)·β, with β = 1/bandwidth.
///
/// | algorithm | rounds | bytes on the busiest link |
/// |---|---|---|
/// | ring | 2(N−1) | 2(N−1)·B/N (each rank sends every chunk but its own, twice) |
/// | tree (recursive doubling) | ⌊log₂N⌋ (+2 when N is not a power of two) | rounds·B |
/// | naive | 2(N−1) (rank 0 takes one message at a time) | 2(N−1)·B (all through rank 0) |
///
/// The node-aware algorithms (hierarchical, 2d) cross two kinds of link and have no
/// model here yet: `None`.
pub fn alpha_beta(algo: super::AllReduceAlgo, n: usize, bytes: usize, link: &Link) -> Option<std::time::Duration> {
    use super::AllReduceAlgo::*;
    let b = bytes as f64;
    let (rounds, busiest) = match algo {
        Ring => (algo.rounds(n) as f64, algo.rounds(n) as f64 * b / n.max(1) as f64),
        Tree => (algo.rounds(n) as f64, algo.rounds(n) as f64 * b),
        // Rank 0 takes N−1 messages in, then sends N−1 out, one at a time.
        Naive => (2.0 * n.saturating_sub(1) as f64, 2.0 * n.saturating_sub(1) as f64 * b),
        Hierarchical | TwoD => return None,
    };
    let ns = rounds * link.latency_us * 1e3 + busiest * 8.0 / link.gbit_s;
    Some(std::time::Duration::from_nanos(ns as u64))
}

impl std::str::FromStr for Link {
    type Err = String;
    /// `latency_us,gbit_s`, e.g. `20,10` for a 10 GbE-like link, or a preset name.
    fn from_str(s: &str) -> Result<Link, String> {
        if let Some((_, link)) = Link::PRESETS.iter().find(|(name, _)| *name == s) {
            return Ok(*link);
        }
        let usage = "expected latency_us,gbit_s such as 20,10 (or infiniband-100g, 10gbe, 1gbe)";
        let (a, b) = s.split_once(',').ok_or_else(|| format!("'{s}': {usage}"))?;
        let num = |t: &str| t.trim().parse::<f64>().map_err(|_| format!("'{s}': {usage}"));
        Link::new(num(a)?, num(b)?)
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} µs, {} Gbit/s", self.latency_us, self.gbit_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_beta_time_of_a_message() {
        let link: Link = "10,8".parse().unwrap();
        // 1 MB at 8 Gbit/s = 1 ms, plus 10 µs
        assert_eq!(link.message_time(1_000_000), Duration::from_micros(1010));
    }

    #[test]
    fn alpha_beta_model_of_the_three_algorithms() {
        use crate::comm::AllReduceAlgo;
        let link = Link::new(10.0, 8.0).unwrap(); // α = 10 µs, 1 byte = 1 ns
        let mb = 1_000_000;
        let model = |algo, n| alpha_beta(algo, n, mb, &link).unwrap();
        // ring, N=4: 6 rounds · 10 µs + 6 · 250 KB · 1 ns = 60 µs + 1.5 ms
        assert_eq!(model(AllReduceAlgo::Ring, 4), Duration::from_micros(1560));
        // tree, N=4: 2 rounds · (10 µs + 1 ms)
        assert_eq!(model(AllReduceAlgo::Tree, 4), Duration::from_micros(2020));
        // naive, N=4: 6 messages of 1 MB through rank 0
        assert_eq!(model(AllReduceAlgo::Naive, 4), Duration::from_micros(6060));
        // one rank: nothing to do
        assert_eq!(model(AllReduceAlgo::Ring, 1), Duration::ZERO);
        assert_eq!(alpha_beta(AllReduceAlgo::Hierarchical, 4, mb, &link), None);
    }

    #[test]
    fn zero_or_negative_bandwidth_is_refused() {
        assert!("1,0".parse::<Link>().unwrap_err().contains("bandwidth"));
        assert!("-1,10".parse::<Link>().unwrap_err().contains("latency"));
        assert!("fast".parse::<Link>().unwrap_err().contains("latency_us,gbit_s"));
        assert_eq!("10gbe".parse::<Link>().unwrap().gbit_s, 10.0);
    }
}
