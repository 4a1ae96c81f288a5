//! Gradient compression: what a worker puts on the wire instead of its whole gradient.
//!
//! Top-k sparsification (Lin et al. 2017, "Deep Gradient Compression"; Stich et al.
//! 2018): send only the k largest values, as (index, value) pairs. Since every worker
//! picks different indices, the pairs cannot be summed on the way as an all-reduce sums
//! chunks: they are all-gathered, and every worker adds them up. Error feedback keeps
//! what was not sent (the residual) and adds it to the next step's gradient, so that
//! every part of every gradient is applied eventually.

use serde::{Deserialize, Serialize};

use super::{Op, Result, Tag, Transport};

/// How gradients travel in sync mode.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum Compress {
    /// The whole gradient, all-reduced.
    #[default]
    None,
    /// The largest P % of the values (by magnitude), as (index, value) pairs.
    TopK(f32),
}

impl Compress {
    /// Values worker sends for a gradient of `len` values: ⌈P % of len⌉, at least 1.
    pub fn values_sent(self, len: usize) -> usize {
        match self {
            Compress::None => len,
            Compress::TopK(percent) => ((len as f64 * f64::from(percent) / 100.0).ceil() as usize).clamp(1, len.max(1)),
        }
    }
}

impl std::str::FromStr for Compress {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "none" {
            return Ok(Compress::None);
        }
        if let Some(p) = s.strip_prefix("topk:") {
            let percent: f32 = p
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("'{s}': P is a percent of the gradient's values, like topk:1 for 1 %"))?;
            if !(percent.is_finite() && percent > 0.0 && percent <= 100.0) {
                return Err(format!(
                    "'{s}': top-k sends P % of the gradient's values: use 0 < P ≤ 100, like topk:1"
                ));
            }
            return Ok(Compress::TopK(percent));
        }
        if s.starts_with("powersgd") {
            return Err(format!(
                "'{s}': PowerSGD (low-rank compression) is not built yet: use topk:P, or none"
            ));
        }
        Err(format!(
            "unknown compression '{s}': use none or topk:P (P % of the values, like topk:1)"
        ))
    }
}

impl std::fmt::Display for Compress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compress::None => f.write_str("none"),
            Compress::TopK(p) => write!(f, "topk:{p}"),
        }
    }
}

impl TryFrom<String> for Compress {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Compress> for String {
    fn from(c: Compress) -> String {
        c.to_string()
    }
}

/// Picks the `k` values of `grad + residual` largest in magnitude, writing their indices
/// (ascending) and values into `indices` and `values`. With error feedback
/// (`residual` given), the residual then holds everything not picked — the corrected
/// gradient minus what is sent — so that `sent + residual` is the gradient plus the
/// old residual; without it, what is not picked is dropped.
pub fn top_k(grad: &[f32], residual: Option<&mut [f32]>, k: usize, indices: &mut Vec<u32>, values: &mut Vec<f32>) {
    let k = k.min(grad.len());
    let mut corrected: Vec<f32> = grad.to_vec();
    if let Some(r) = residual.as_deref() {
        corrected.iter_mut().zip(r).for_each(|(c, &r)| *c += r);
    }
    indices.clear();
    indices.extend(0..grad.len() as u32);
    if k < grad.len() {
        // (ties broken by index, so that the pick depends on the values alone)
        let larger = |a: &u32, b: &u32| {
            let (x, y) = (corrected[*a as usize].abs(), corrected[*b as usize].abs());
            y.total_cmp(&x).then(a.cmp(b))
        };
        indices.select_nth_unstable_by(k, larger);
        indices.truncate(k);
    }
    indices.sort_unstable();
    values.clear();
    values.extend(indices.iter().map(|&i| corrected[i as usize]));
    if let Some(r) = residual {
        r.copy_from_slice(&corrected);
        indices.iter().for_each(|&i| r[i as usize] = 0.0);
    }
}

/// Ring all-gather: every rank's `mine` (the same length everywhere) ends in `all`, in
/// rank order (`all` holds size × mine.len()). N−1 rounds; in round r each rank passes
/// the block it received last (its own first) to the right. Values are copied, never
/// added, so any bit pattern (an index stored in an f32) arrives intact.
pub fn all_gather<T: Transport + ?Sized>(t: &mut T, mine: &[f32], all: &mut [f32]) -> Result<()> {
    let (n, rank, len) = (t.size(), t.rank(), mine.len());
    assert_eq!(all.len(), n * len, "all-gather: the output holds one block per rank");
    all[rank * len..(rank + 1) * len].copy_from_slice(mine);
    if n == 1 {
        return Ok(());
    }
    t.begin_collective();
    let (right, left) = ((rank + 1) % n, (rank + n - 1) % n);
    for r in 0..n - 1 {
        let send_b = (rank + n - r) % n;
        let recv_b = (rank + 2 * n - r - 1) % n;
        let (out, into) = if send_b < recv_b {
            let (lo, hi) = all.split_at_mut(recv_b * len);
            (&lo[send_b * len..(send_b + 1) * len], &mut hi[..len])
        } else {
            let (lo, hi) = all.split_at_mut(send_b * len);
            (&hi[..len], &mut lo[recv_b * len..(recv_b + 1) * len])
        };
        let tag = Tag {
            chunk: send_b as u32,
            round: r as u32,
        };
        t.send_recv(right, out, tag, left, into, Op::Copy)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parses_and_refuses_percentages_outside_0_to_100() {
        assert_eq!("topk:1".parse::<Compress>().unwrap(), Compress::TopK(1.0));
        assert_eq!("topk:0.5%".parse::<Compress>().unwrap(), Compress::TopK(0.5));
        assert_eq!("none".parse::<Compress>().unwrap(), Compress::None);
        for bad in ["topk:0", "topk:101", "topk:-1", "topk:nan"] {
            let e = bad.parse::<Compress>().unwrap_err();
            assert!(e.contains("0 < P ≤ 100"), "{bad}: {e}");
        }
        assert!("topk:x".parse::<Compress>().unwrap_err().contains("like topk:1"));
        assert!("powersgd:4".parse::<Compress>().unwrap_err().contains("not built"));
        assert_eq!(
            Compress::TopK(1.0).to_string().parse::<Compress>().unwrap(),
            Compress::TopK(1.0)
        );
        assert_eq!(Compress::TopK(1.0).values_sent(1000), 10);
        assert_eq!(Compress::TopK(0.01).values_sent(100), 1, "at least one value");
        assert_eq!(Compress::TopK(100.0).values_sent(77), 77);
    }

    #[test]
    fn top_k_picks_the_largest_magnitudes_in_index_order() {
        let g = [0.1, -5.0, 0.0, 3.0, -0.2, 4.0];
        let (mut i, mut v) = (Vec::new(), Vec::new());
        top_k(&g, None, 3, &mut i, &mut v);
        assert_eq!(i, vec![1, 3, 5]);
        assert_eq!(v, vec![-5.0, 3.0, 4.0]);
        top_k(&g, None, 6, &mut i, &mut v);
        assert_eq!(v, g.to_vec(), "k = everything sends the gradient as it is");
    }

    #[test]
    fn error_feedback_keeps_sent_plus_residual_equal_to_the_gradients_so_far() {
        // Over many steps of pseudo-random gradients, everything sent plus what is left
        // in the residual is everything computed: nothing is lost, only delayed.
        let len = 257;
        let mut residual = vec![0.0f32; len];
        let (mut raw_sum, mut sent_sum) = (vec![0.0f64; len], vec![0.0f64; len]);
        let (mut i, mut v) = (Vec::new(), Vec::new());
        let mut seed = 12345u64;
        for _ in 0..50 {
            let g: Vec<f32> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            g.iter().zip(&mut raw_sum).for_each(|(&g, s)| *s += f64::from(g));
            top_k(&g, Some(&mut residual), 5, &mut i, &mut v);
            assert_eq!(i.len(), 5);
            i.iter()
                .zip(&v)
                .for_each(|(&i, &v)| sent_sum[i as usize] += f64::from(v));
        }
        let worst = (0..len)
            .map(|j| (sent_sum[j] + f64::from(residual[j]) - raw_sum[j]).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-4, "sent + residual drifts from the raw sum by {worst}");
        // (and the residual is no rounding error: it holds real gradient not sent yet)
        let dropped: f64 = residual.iter().map(|r| f64::from(r.abs())).sum();
        assert!(dropped > 1.0, "the residual holds what was not sent yet");
    }
}
