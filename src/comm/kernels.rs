//! The one arithmetic kernel of an all-reduce: `into += msg`, with AVX2 where the CPU
//! has it (the default build targets baseline x86-64, which has only SSE2).

/// into[i] += msg[i]
pub fn add_assign(into: &mut [f32], msg: &[f32]) {
    assert_eq!(into.len(), msg.len());
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { add_assign_avx2(into, msg) };
    }
    add_assign_portable(into, msg);
}

fn add_assign_portable(into: &mut [f32], msg: &[f32]) {
    into.iter_mut().zip(msg).for_each(|(a, &b)| *a += b);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_assign_avx2(into: &mut [f32], msg: &[f32]) {
    // The same loop; compiled with AVX2 enabled, LLVM vectorises it 8 floats wide.
    add_assign_portable(into, msg);
}

#[cfg(test)]
mod tests {
    #[test]
    fn add_assign_adds_every_element_including_the_tail() {
        for len in [0, 1, 7, 8, 9, 33, 1000] {
            let mut a: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..len).map(|i| 2.0 * i as f32).collect();
            super::add_assign(&mut a, &b);
            assert!(a.iter().enumerate().all(|(i, &v)| v == 3.0 * i as f32), "len {len}");
        }
    }
}
