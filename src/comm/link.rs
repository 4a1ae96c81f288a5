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

    /// The latencies a link may have, in µs: up to a second (a satellite hop is ~0.6 s).
    pub const LATENCY_US: std::ops::RangeInclusive<f64> = 0.0..=1e6;
    /// The bandwidths a link may have, in Gbit/s: 1 Mbit/s (a slow modem) to 10 Tbit/s.
    pub const GBIT_S: std::ops::RangeInclusive<f64> = 1e-3..=1e4;

    /// Checks the numbers a user gave against physical ranges (`LATENCY_US`, `GBIT_S`):
    /// beyond them a run would wait for hours, or the model's figures mean nothing.
    pub fn new(latency_us: f64, gbit_s: f64) -> Result<Link, String> {
        if !(latency_us.is_finite() && Link::LATENCY_US.contains(&latency_us)) {
            return Err(format!(
                "latency must be a number of microseconds from 0 to 1000000 (1 s), got {latency_us}"
            ));
        }
        if !(gbit_s.is_finite() && gbit_s > 0.0) {
            return Err(format!("bandwidth must be a number of Gbit/s > 0, got {gbit_s}"));
        }
        if !Link::GBIT_S.contains(&gbit_s) {
            return Err(format!(
                "bandwidth must be from 0.001 Gbit/s (1 Mbit/s) to 10000 Gbit/s, got {gbit_s}"
            ));
        }
        Ok(Link { latency_us, gbit_s })
    }

    /// Nanoseconds to move `bytes` across the link: β·bytes, without the latency
    /// (saturating: a float cast never wraps).
    pub fn transfer_ns(&self, bytes: usize) -> u64 {
        (bytes as f64 * 8.0 / self.gbit_s) as u64 // bits / (Gbit/s) = ns
    }
    pub fn latency_ns(&self) -> u64 {
        (self.latency_us * 1e3) as u64
    }
    /// α + n/β.
    pub fn message_time(&self, bytes: usize) -> Duration {
        Duration::from_nanos(self.latency_ns().saturating_add(self.transfer_ns(bytes)))
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
/// On one node every algorithm is priced on `link`; see [`alpha_beta_on`] for nodes.
pub fn alpha_beta(algo: super::AllReduceAlgo, n: usize, bytes: usize, link: &Link) -> Duration {
    alpha_beta_on(algo, n, 1, bytes, link, Some(link))
}

/// The α-β model of a ring all-gather of one `block` of bytes from each of `n` ranks
/// (top-k's (index, value) pairs): N−1 rounds, each rank sending one block per round,
/// every hop on `link` (the slower one, when there are nodes).
pub fn alpha_beta_all_gather(n: usize, block: usize, link: &Link) -> Duration {
    let rounds = n.saturating_sub(1) as f64;
    Duration::from_nanos((rounds * link.latency_us * 1e3 + rounds * block as f64 * 8.0 / link.gbit_s) as u64)
}

/// The α-β model on `nodes` emulated nodes (ranks split as `Topology::nodes` splits them:
/// the largest node holds k = ⌈N/M⌉), `inter` joining nodes and `intra` (None: free, shared
/// memory) joining the ranks of one node. A stage's time is rounds·α + bytes·β on its link;
/// an algorithm's is the sum of its stages.
///
/// | algorithm | stages |
/// |---|---|
/// | ring, tree, naive | as in [`alpha_beta`], every hop priced on the slower link when M > 1 |
/// | hierarchical | intra reduce: 1 round, (k−1)·B into the leader; ring among the M leaders: 2(M−1) rounds, 2(M−1)·B/M; intra broadcast: k−1 rounds, (k−1)·B out of the leader |
/// | 2d | intra reduce-scatter: k−1 rounds, (k−1)·B/k; M-ring of each B/k shard: 2(M−1) rounds, 2(M−1)·B/(kM); intra gather: k−1 rounds, (k−1)·B/k |
///
/// The emulated link serialises what reaches one rank and a send waits for its receiver,
/// which is where the "rounds" of the intra stages come from.
pub fn alpha_beta_on(
    algo: super::AllReduceAlgo,
    n: usize,
    nodes: usize,
    bytes: usize,
    inter: &Link,
    intra: Option<&Link>,
) -> Duration {
    use super::AllReduceAlgo::*;
    if n <= 1 {
        return Duration::ZERO;
    }
    let m = nodes.clamp(1, n);
    let k = n.div_ceil(m) as f64;
    let (b, nf, mf) = (bytes as f64, n as f64, m as f64);
    let stage = |rounds: f64, busiest: f64, link: Option<&Link>| {
        link.map_or(0.0, |l| rounds * l.latency_us * 1e3 + busiest * 8.0 / l.gbit_s)
    };
    // The flat algorithms wait for the slowest hop of each round.
    let flat = if m > 1 { Some(inter) } else { intra };
    let ns = match algo {
        Ring => {
            let r = algo.rounds(n) as f64;
            stage(r, r * b / nf, flat)
        }
        Tree => {
            let r = algo.rounds(n) as f64;
            stage(r, r * b, flat)
        }
        Naive => {
            let r = 2.0 * (nf - 1.0);
            stage(r, r * b, flat)
        }
        // Priced as a ring: what large MPI all-reduces use.
        Mpi => {
            let r = Ring.rounds(n) as f64;
            stage(r, r * b / nf, flat)
        }
        Hierarchical => {
            let across = 2.0 * (mf - 1.0);
            stage(1.0, (k - 1.0) * b, intra)
                + stage(across, across * b / mf, Some(inter))
                + stage(k - 1.0, (k - 1.0) * b, intra)
        }
        TwoD => {
            let (across, shard) = (2.0 * (mf - 1.0), b / k);
            let within = stage(k - 1.0, (k - 1.0) * shard, intra);
            within + stage(across, across * shard / mf, Some(inter)) + within
        }
    };
    // In f64 throughout, then one saturating cast: no sum can wrap.
    Duration::from_nanos(ns as u64)
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
        let model = |algo, n| alpha_beta(algo, n, mb, &link);
        // ring, N=4: 6 rounds · 10 µs + 6 · 250 KB · 1 ns = 60 µs + 1.5 ms
        assert_eq!(model(AllReduceAlgo::Ring, 4), Duration::from_micros(1560));
        // tree, N=4: 2 rounds · (10 µs + 1 ms)
        assert_eq!(model(AllReduceAlgo::Tree, 4), Duration::from_micros(2020));
        // naive, N=4: 6 messages of 1 MB through rank 0
        assert_eq!(model(AllReduceAlgo::Naive, 4), Duration::from_micros(6060));
        // one rank: nothing to do
        assert_eq!(model(AllReduceAlgo::Ring, 1), Duration::ZERO);
    }

    #[test]
    fn alpha_beta_model_over_nodes() {
        use crate::comm::AllReduceAlgo::*;
        let slow = Link::new(10.0, 8.0).unwrap(); // α = 10 µs, 1 byte = 1 ns
        let fast = Link::new(1.0, 80.0).unwrap(); // α = 1 µs, 10 bytes = 1 ns
        let mb = 1_000_000;
        let on = |algo, n, m| alpha_beta_on(algo, n, m, mb, &slow, Some(&fast));
        // 8 ranks on 2 nodes of 4. Flat ring: 14 rounds on the slow link, 14·125 KB.
        assert_eq!(on(Ring, 8, 2), Duration::from_micros(14 * 10 + 1750));
        // hierarchical: reduce (1 µs + 3 MB/10) + leaders' ring (2·10 µs + 1 MB) + broadcast (3 µs + 300 µs)
        assert_eq!(on(Hierarchical, 8, 2), Duration::from_micros(301 + 1020 + 303));
        // 2d: shards of 250 KB; within: 3 µs + 75 µs; across: 20 µs + 250 µs
        assert_eq!(on(TwoD, 8, 2), Duration::from_micros(78 + 270 + 78));
        // shared memory inside nodes: only the leaders' ring costs
        assert_eq!(
            alpha_beta_on(Hierarchical, 8, 2, mb, &slow, None),
            Duration::from_micros(1020)
        );
        // one node: the flat model on the intra link
        assert_eq!(on(Ring, 4, 1), alpha_beta(Ring, 4, mb, &fast));
        assert!(on(TwoD, 8, 2) < on(Hierarchical, 8, 2) && on(Hierarchical, 8, 2) < on(Ring, 8, 2));
    }

    #[test]
    fn zero_or_negative_bandwidth_is_refused() {
        assert!("1,0".parse::<Link>().unwrap_err().contains("bandwidth"));
        assert!("-1,10".parse::<Link>().unwrap_err().contains("latency"));
        assert!("fast".parse::<Link>().unwrap_err().contains("latency_us,gbit_s"));
        assert_eq!("10gbe".parse::<Link>().unwrap().gbit_s, 10.0);
    }
}
