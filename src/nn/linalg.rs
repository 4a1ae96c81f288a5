//! Matrix multiply on ndarray views, backed by the pure-Rust `gemm` crate.
//!
//! One function, so the backend can be swapped in one place. Views may be transposed
//! (`.t()`) or strided: `gemm` takes arbitrary strides and packs as it needs.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::par::Par;

/// `c = a · b` (or `c += a · b` when `accumulate`) on the calling thread.
///
/// Shapes: a: (m, k) · b: (k, n) -> c: (m, n). Panics on mismatched shapes (a bug, not
/// user input).
pub fn matmul_into(c: &mut ArrayViewMut2<f32>, a: &ArrayView2<f32>, b: &ArrayView2<f32>, accumulate: bool) {
    matmul_on(Par::SERIAL, c, a, b, accumulate);
}

/// `matmul_into` split over the threads of `par`. `gemm` hands each thread tiles of `c`
/// and walks the sum over k in the same blocks whatever the thread count, so every
/// element of `c` gets the same bits from one thread or many (tested below).
pub fn matmul_on(par: Par, c: &mut ArrayViewMut2<f32>, a: &ArrayView2<f32>, b: &ArrayView2<f32>, accumulate: bool) {
    let (m, k) = a.dim();
    let (k2, n) = b.dim();
    assert_eq!(k, k2, "matmul inner dimensions differ: {:?} · {:?}", a.dim(), b.dim());
    assert_eq!(
        c.dim(),
        (m, n),
        "matmul output shape {:?}, expected {:?}",
        c.dim(),
        (m, n)
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were
    // checked above; `c` is borrowed mutably, so it aliases neither `a` nor `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0, // alpha: scales the old c (only read when accumulating)
            1.0, // beta: scales a · b
            false,
            false,
            false,
            par.gemm(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    fn naive(a: &ArrayView2<f32>, b: &ArrayView2<f32>) -> Array2<f32> {
        let (m, k) = a.dim();
        let n = b.dim().1;
        Array2::from_shape_fn((m, n), |(i, j)| (0..k).map(|p| a[[i, p]] * b[[p, j]]).sum())
    }

    #[test]
    fn matmul_matches_naive_product_for_plain_and_transposed_views() {
        let a = Array2::from_shape_fn((7, 5), |(i, j)| (i * 5 + j) as f32 * 0.25 - 3.0);
        let b = Array2::from_shape_fn((5, 9), |(i, j)| (i as f32 - j as f32) * 0.5);
        let mut c = Array2::zeros((7, 9));
        matmul_into(&mut c.view_mut(), &a.view(), &b.view(), false);
        assert_eq!(c, naive(&a.view(), &b.view()));

        // (5,7)ᵀ · (9,5)ᵀ, then accumulate onto the previous result.
        let at = a.t().to_owned();
        let bt = b.t().to_owned();
        matmul_into(&mut c.view_mut(), &at.t(), &bt.t(), true);
        assert_eq!(c, naive(&a.view(), &b.view()) * 2.0);
    }

    #[test]
    fn threads_give_the_same_bits_as_one_thread_for_every_orientation() {
        use crate::nn::Threads;
        // Large enough that gemm really splits (it keeps products under 48·48·256 on
        // one thread), with edges that are not multiples of its tiles.
        let (m, k, n) = (203, 301, 157);
        let a = Array2::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 13) % 29) as f32 / 7.0 - 2.0);
        let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * 11 + j * 5) % 31) as f32 / 9.0 - 1.5);
        let at = a.t().to_owned();
        let bt = b.t().to_owned();
        let product = |threads: usize, a: &ArrayView2<f32>, b: &ArrayView2<f32>| {
            let mut c = Array2::from_elem((m, n), 0.5f32);
            Threads::new(threads, |_| {})
                .unwrap()
                .run(|par| matmul_on(par, &mut c.view_mut(), a, b, true));
            c
        };
        for (label, av, bv) in [
            ("a · b", a.view(), b.view()),
            ("aᵀᵀ · b", at.t(), b.view()),
            ("a · bᵀᵀ", a.view(), bt.t()),
        ] {
            let one = product(1, &av, &bv);
            for threads in [2, 3, 4] {
                let many = product(threads, &av, &bv);
                assert!(
                    one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{label} on {threads} threads differs from one thread"
                );
            }
        }
    }
}
