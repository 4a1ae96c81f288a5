//! Gradient compression: what a worker puts on the wire instead of its whole gradient.
//!
//! Top-k sparsification (Lin et al. 2017, "Deep Gradient Compression"; Stich et al.
//! 2018): send only the k largest values, as (index, value) pairs. Since every worker
//! picks different indices, the pairs cannot be summed on the way as an all-reduce sums
//! chunks: they are all-gathered, and every worker adds them up. Error feedback keeps
//! what was not sent (the residual) and adds it to the next step's gradient, so that
//! every part of every gradient is applied eventually.
//!
//! PowerSGD (Vogels et al. 2019): each weight matrix M (a × b) is sent as two thin
//! factors, P = M·Q (a × R) and then Q = Mᵀ·P̂ (b × R), one power-iteration step warm
//! started from the last step's Q. Factors of the same shape *can* be summed on the way,
//! so PowerSGD all-reduces, twice per step. Biases travel whole with P.

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
    /// Every weight matrix as rank-R factors (PowerSGD).
    PowerSgd(u32),
}

/// The largest rank PowerSGD takes: beyond it the factors outgrow these small matrices.
pub const MAX_RANK: u32 = 64;

impl Compress {
    /// Values worker sends for a gradient of `len` values: ⌈P % of len⌉, at least 1.
    pub fn values_sent(self, len: usize) -> usize {
        match self {
            Compress::None => len,
            Compress::TopK(percent) => ((len as f64 * f64::from(percent) / 100.0).ceil() as usize).clamp(1, len.max(1)),
            Compress::PowerSgd(_) => len,
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
        if let Some(r) = s.strip_prefix("powersgd:") {
            return match r.parse::<u32>() {
                Ok(r) if (1..=MAX_RANK).contains(&r) => Ok(Compress::PowerSgd(r)),
                _ => Err(format!(
                    "'{s}': R is the rank of each weight matrix's factors: use a whole number from 1 to {MAX_RANK}, like powersgd:4"
                )),
            };
        }
        Err(format!(
            "unknown compression '{s}': use none, topk:P (P % of the values, like topk:1) or powersgd:R (rank R, like powersgd:4)"
        ))
    }
}

impl std::fmt::Display for Compress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compress::None => f.write_str("none"),
            Compress::TopK(p) => write!(f, "topk:{p}"),
            Compress::PowerSgd(r) => write!(f, "powersgd:{r}"),
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
    // With error feedback the residual becomes the corrected gradient in place (no copy
    // of the gradient each step); without it the gradient is read as it is.
    let mut residual = residual;
    if let Some(r) = residual.as_deref_mut() {
        r.iter_mut().zip(grad).for_each(|(r, &g)| *r += g);
    }
    let corrected: &[f32] = residual.as_deref().unwrap_or(grad);
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
        indices.iter().for_each(|&i| r[i as usize] = 0.0);
    }
}

/// One weight matrix of the flat buffer, for PowerSGD: `rows × cols` values, row-major,
/// from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matrix {
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
}

/// One worker's PowerSGD state: each matrix's Q (warm-started from the last step's
/// all-reduced one, identical on every worker), the error-feedback residual, and the
/// step's corrected gradient M and factors.
pub struct LowRank {
    matrices: Vec<(Matrix, usize)>,
    /// Values outside every matrix (biases), in order: sent whole with P.
    rest: Vec<std::ops::Range<usize>>,
    len: usize,
    q: Vec<f32>,
    /// This worker's own Q of the step, before the all-reduce (for its residual).
    own_q: Vec<f32>,
    p: Vec<f32>,
    m: Vec<f32>,
    residual: Option<Vec<f32>>,
    /// Draws fresh Q columns where a P column came out empty (see `decode`): seeded
    /// alike and used alike on every worker, so their Qs stay identical.
    rng: rand_chacha::ChaCha8Rng,
}

impl LowRank {
    /// PowerSGD of rank `rank` over a buffer of `len` values holding `matrices`; every
    /// worker passes the same `seed`, so that every worker starts from the same Q.
    pub fn new(len: usize, matrices: &[Matrix], rank: usize, error_feedback: bool, seed: u64) -> LowRank {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x903e_256d);
        let normal = Normal::new(0.0f32, 1.0).expect("a unit normal");
        let matrices: Vec<(Matrix, usize)> = matrices
            .iter()
            .map(|&m| (m, rank.min(m.rows).min(m.cols).max(1)))
            .collect();
        let q_len: usize = matrices.iter().map(|(m, r)| m.cols * r).sum();
        let q: Vec<f32> = (0..q_len).map(|_| normal.sample(&mut rng)).collect();
        let mut covered: Vec<(usize, usize)> = matrices
            .iter()
            .map(|(m, _)| (m.offset, m.offset + m.rows * m.cols))
            .collect();
        covered.sort_unstable();
        let mut rest = Vec::new();
        let mut at = 0;
        for (start, end) in covered {
            if start > at {
                rest.push(at..start);
            }
            at = at.max(end);
        }
        if at < len {
            rest.push(at..len);
        }
        let p_len = matrices.iter().map(|(m, r)| m.rows * r).sum();
        LowRank {
            own_q: vec![0.0; q.len()],
            q,
            p: vec![0.0; p_len],
            m: vec![0.0; len],
            residual: error_feedback.then(|| vec![0.0; len]),
            matrices,
            rest,
            len,
            rng,
        }
    }

    /// Values of the first all-reduce: every P, then every value outside the matrices.
    pub fn first_len(&self) -> usize {
        self.p.len() + self.rest.iter().map(|r| r.len()).sum::<usize>()
    }

    /// Values of the second all-reduce: every Q.
    pub fn second_len(&self) -> usize {
        self.q.len()
    }

    /// Step 1: M = gradient (+ residual); writes P = M·Q and the values outside the
    /// matrices into `first`.
    pub fn encode_p(&mut self, grad: &[f32], first: &mut [f32]) {
        assert_eq!(grad.len(), self.len);
        self.m.copy_from_slice(grad);
        if let Some(r) = &self.residual {
            self.m.iter_mut().zip(r).for_each(|(m, &r)| *m += r);
        }
        let (mut at_p, mut at_q) = (0, 0);
        for &(mat, r) in &self.matrices {
            let m = &self.m[mat.offset..mat.offset + mat.rows * mat.cols];
            let q = &self.q[at_q..at_q + mat.cols * r];
            let p = &mut first[at_p..at_p + mat.rows * r];
            // P (rows × r) = M (rows × cols) · Q (cols × r)
            for i in 0..mat.rows {
                for k in 0..r {
                    p[i * r + k] = (0..mat.cols).map(|j| m[i * mat.cols + j] * q[j * r + k]).sum();
                }
            }
            at_p += mat.rows * r;
            at_q += mat.cols * r;
        }
        for range in &self.rest {
            first[at_p..at_p + range.len()].copy_from_slice(&self.m[range.clone()]);
            at_p += range.len();
        }
    }

    /// Step 2, after the first all-reduce (`first` holds the mean P): orthonormalises
    /// each P's columns and writes Q = Mᵀ·P̂ into `second`.
    pub fn encode_q(&mut self, first: &[f32], second: &mut [f32]) {
        let p_len = self.p.len();
        self.p.copy_from_slice(&first[..p_len]);
        let (mut at_p, mut at_q) = (0, 0);
        for &(mat, r) in &self.matrices {
            let p = &mut self.p[at_p..at_p + mat.rows * r];
            orthonormalise(p, mat.rows, r);
            let m = &self.m[mat.offset..mat.offset + mat.rows * mat.cols];
            let q = &mut second[at_q..at_q + mat.cols * r];
            // Q (cols × r) = Mᵀ (cols × rows) · P̂ (rows × r)
            q.fill(0.0);
            for i in 0..mat.rows {
                for j in 0..mat.cols {
                    let mij = m[i * mat.cols + j];
                    for k in 0..r {
                        q[j * r + k] += mij * p[i * r + k];
                    }
                }
            }
            at_p += mat.rows * r;
            at_q += mat.cols * r;
        }
        self.own_q.copy_from_slice(second);
    }

    /// Step 3, after the second all-reduce (`second` holds the mean Q): writes the
    /// approximation P̂·Q̂ᵀ of the mean gradient (and the mean values outside the
    /// matrices, from `first`) into `grad`. The residual keeps what this worker's own
    /// share, P̂·Qᵀ, left out of its M: over the workers, mean(M − P̂·Qᵢᵀ) + P̂·Q̂ᵀ is
    /// mean(M), so nothing is lost, only delayed.
    pub fn decode(&mut self, first: &[f32], second: &[f32], grad: &mut [f32]) {
        self.q.copy_from_slice(second);
        let (mut at_p, mut at_q) = (0, 0);
        for &(mat, r) in &self.matrices {
            let p = &self.p[at_p..at_p + mat.rows * r];
            let (q, own) = (
                &self.q[at_q..at_q + mat.cols * r],
                &self.own_q[at_q..at_q + mat.cols * r],
            );
            for i in 0..mat.rows {
                for j in 0..mat.cols {
                    let at = mat.offset + i * mat.cols + j;
                    grad[at] = (0..r).map(|k| p[i * r + k] * q[j * r + k]).sum();
                    if let Some(res) = &mut self.residual {
                        let mine: f32 = (0..r).map(|k| p[i * r + k] * own[j * r + k]).sum();
                        res[at] = self.m[at] - mine;
                    }
                }
            }
            at_p += mat.rows * r;
            at_q += mat.cols * r;
        }
        for range in &self.rest {
            grad[range.clone()].copy_from_slice(&first[at_p..at_p + range.len()]);
            at_p += range.len();
        }
        // A P column that came out empty leaves Q's column empty, and the warm start
        // would keep it so for good (the rank collapses): draw it afresh.
        use rand_distr::Distribution;
        let normal = rand_distr::Normal::new(0.0f32, 1.0).expect("a unit normal");
        let (mut at_p, mut at_q) = (0, 0);
        for &(mat, r) in &self.matrices {
            for k in 0..r {
                if (0..mat.rows).all(|i| self.p[at_p + i * r + k] == 0.0) {
                    for j in 0..mat.cols {
                        self.q[at_q + j * r + k] = normal.sample(&mut self.rng);
                    }
                }
            }
            at_p += mat.rows * r;
            at_q += mat.cols * r;
        }
    }

    /// What is left in the residual (error feedback), if kept.
    pub fn residual(&self) -> Option<&[f32]> {
        self.residual.as_deref()
    }
}

/// Gram-Schmidt on the `cols` columns of a `rows × cols` row-major matrix: each column
/// made orthogonal to the ones before (two passes: one loses orthogonality to rounding)
/// and of unit length. A column that was (nearly) a combination of the ones before —
/// a rank-deficient gradient, e.g. of a unit no sample activated — becomes zero: its
/// normalised rounding noise would point anywhere, also into the directions already
/// taken, and add that error to the gradient.
fn orthonormalise(p: &mut [f32], rows: usize, cols: usize) {
    let norm = |p: &[f32], k: usize| (0..rows).map(|i| p[i * cols + k] * p[i * cols + k]).sum::<f32>().sqrt();
    for k in 0..cols {
        let before = norm(p, k);
        for _pass in 0..2 {
            for j in 0..k {
                let dot: f32 = (0..rows).map(|i| p[i * cols + j] * p[i * cols + k]).sum();
                (0..rows).for_each(|i| p[i * cols + k] -= dot * p[i * cols + j]);
            }
        }
        let after = norm(p, k);
        let scale = if after > 1e-4 * before && after > 0.0 {
            1.0 / after
        } else {
            0.0
        };
        (0..rows).for_each(|i| p[i * cols + k] *= scale);
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
        assert_eq!("powersgd:4".parse::<Compress>().unwrap(), Compress::PowerSgd(4));
        assert!("powersgd:0".parse::<Compress>().unwrap_err().contains("from 1 to 64"));
        assert!("powersgd:65".parse::<Compress>().unwrap_err().contains("from 1 to 64"));
        assert_eq!(Compress::PowerSgd(2).to_string(), "powersgd:2");
        assert_eq!(
            Compress::TopK(1.0).to_string().parse::<Compress>().unwrap(),
            Compress::TopK(1.0)
        );
        assert_eq!(Compress::TopK(1.0).values_sent(1000), 10);
        assert_eq!(Compress::TopK(0.01).values_sent(100), 1, "at least one value");
        assert_eq!(Compress::TopK(100.0).values_sent(77), 77);
    }

    /// A pseudo-random vector (an LCG: the test needs no exact distribution).
    fn noise(len: usize, seed: &mut u64) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    /// One worker's PowerSGD step alone (its all-reduces are the identity).
    fn low_rank_step(lr: &mut LowRank, grad: &[f32]) -> Vec<f32> {
        let mut first = vec![0.0; lr.first_len()];
        let mut second = vec![0.0; lr.second_len()];
        lr.encode_p(grad, &mut first);
        lr.encode_q(&first, &mut second);
        let mut out = vec![0.0; grad.len()];
        lr.decode(&first, &second, &mut out);
        out
    }

    #[test]
    fn power_sgd_at_full_rank_sends_the_gradient_itself() {
        // A 6 × 4 matrix at rank 4, then a bias of 3 values, a 4 × 2 matrix and one more
        // value: P̂ spans M's columns, so P̂·P̂ᵀ·M = M.
        let mats = [
            Matrix {
                offset: 0,
                rows: 6,
                cols: 4,
            },
            Matrix {
                offset: 27,
                rows: 4,
                cols: 2,
            },
        ];
        let len = 27 + 8 + 1;
        let mut seed = 7;
        let grad = noise(len, &mut seed);
        let mut lr = LowRank::new(len, &mats, 4, true, 1);
        assert_eq!(lr.first_len(), 6 * 4 + 4 * 2 + 3 + 1);
        let out = low_rank_step(&mut lr, &grad);
        let worst = grad.iter().zip(&out).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "full rank differs by {worst}");
        // at rank 1 it is an approximation, and the residual keeps the rest
        let mut lr = LowRank::new(len, &mats, 1, true, 1);
        assert_eq!(lr.first_len(), 6 + 4 + 3 + 1);
        let out = low_rank_step(&mut lr, &grad);
        assert!(grad.iter().zip(&out).any(|(a, b)| (a - b).abs() > 1e-2));
        assert_eq!(out[24..27], grad[24..27], "biases travel whole");
    }

    #[test]
    fn power_sgd_error_feedback_keeps_applied_plus_residual_equal_to_the_gradients_so_far() {
        let mats = [Matrix {
            offset: 0,
            rows: 16,
            cols: 8,
        }];
        let len = 16 * 8 + 8;
        let mut lr = LowRank::new(len, &mats, 2, true, 3);
        let (mut raw, mut applied) = (vec![0.0f64; len], vec![0.0f64; len]);
        let mut seed = 99;
        for _ in 0..40 {
            let g = noise(len, &mut seed);
            g.iter().zip(&mut raw).for_each(|(&g, s)| *s += f64::from(g));
            let out = low_rank_step(&mut lr, &g);
            out.iter().zip(&mut applied).for_each(|(&a, s)| *s += f64::from(a));
        }
        let residual = lr.residual().unwrap();
        let worst = (0..len)
            .map(|j| (applied[j] + f64::from(residual[j]) - raw[j]).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-3, "applied + residual drifts from the raw sum by {worst}");
        assert!(
            residual.iter().any(|r| r.abs() > 1e-2),
            "rank 2 leaves something behind"
        );
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
