//! Elementwise loops at the width of the machine: the release build targets baseline
//! x86-64 (SSE2, 4 floats a vector), so a loop run through `wide` is compiled a second
//! time with AVX2 (8 floats) and that copy is taken when the CPU has it. The arithmetic is
//! the same in both (Rust never fuses a·b + c into one rounding on its own), so the bits
//! are too; only the width changes.

/// Runs `f`, compiled for AVX2 when this CPU has it. `f` should be a small loop: it is
/// inlined into the AVX2 copy, whose vectorizer then uses 8 lanes.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // (std caches the CPU's answer: one load and a branch)
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has just said it has AVX2.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// e^x for x ≤ 0, what softmax feeds it (logit − max), within 2 ulp; 0 below −87.3,
/// where e^x would be subnormal. Written without branches or library calls (libm's expf
/// is one call per value) so that the loop around it vectorizes (Cephes' expf):
/// e^x = 2^n · e^r with n = round(x / ln 2) and r = x − n·ln 2 in [−ln 2/2, ln 2/2],
/// e^r by its Taylor-like polynomial.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so that n·LN2_HI is exact and r keeps its low bits.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, which its low mantissa bits then hold.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.max(-87.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e_r = p * (r * r) + r + 1.0;
    let two_n = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        e_r * two_n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_value_where_softmax_uses_it() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let exact = f64::from(x).exp();
            let got = f64::from(wide(|| exp_nonpositive(x)));
            worst = worst.max(((got - exact) / exact).abs());
            x -= 0.001_37;
        }
        // 2 ulp of a float near 1 is 2·2⁻²³ ≈ 2.4e-7 of it.
        assert!(worst < 2.4e-7, "worst relative error {worst:.3e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn the_wide_copy_computes_the_same_bits_as_the_plain_one() {
        let v: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.0871).collect();
        let plain: Vec<u32> = v.iter().map(|&x| exp_nonpositive(x).to_bits()).collect();
        let widened: Vec<u32> = wide(|| v.iter().map(|&x| exp_nonpositive(x).to_bits()).collect());
        assert_eq!(plain, widened);
    }
}
