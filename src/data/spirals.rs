//! Synthetic interleaved spirals: a 2-D problem a linear model cannot solve.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Dataset, DatasetKind};

/// `classes` spiral arms of `per_class` points each, with a fixed seed (the data set is
/// the same on every run; `--seed` changes the initialisation and the shuffling). Every
/// sixth point along each arm is held out for testing.
pub fn spirals(classes: usize, per_class: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(0x005b_1a15);
    let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for i in 0..per_class {
        for k in 0..classes {
            let t = i as f64 / per_class as f64; // radius 0 → 1
            let angle = k as f64 * std::f64::consts::TAU / classes as f64 + 4.0 * t + rng.random_range(-0.2..0.2);
            let half = if i % 6 == 5 { &mut test } else { &mut train };
            half.0.extend([(t * angle.cos()) as f32, (t * angle.sin()) as f32]);
            half.1.push(k as u8);
        }
    }
    let to_array = |v: Vec<f32>| Array2::from_shape_vec((v.len() / 2, 2), v).expect("2 coordinates per point");
    Dataset {
        kind: DatasetKind::Spirals,
        classes,
        image: None,
        train_x: to_array(train.0),
        train_y: train.1,
        test_x: to_array(test.0),
        test_y: test.1,
    }
}
