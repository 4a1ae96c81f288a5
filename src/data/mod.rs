//! Data: the real handwritten digits (UCI digits, MNIST), synthetic spirals, and the
//! per-worker shards that data parallelism is made of.

mod idx;
mod shard;
mod spirals;

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use shard::Sharder;

/// Errors a user can cause or fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("MNIST file {path} is missing: copy assets/mnist from the ddlab repository there, or set DDLAB_ASSETS to the folder that holds mnist/")]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid {what} file: {why}")]
    Format {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
}

pub type Result<T> = std::result::Result<T, DataError>;

/// Which data set to train on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// UCI optical digits, 8×8 images, 1797 samples, embedded in the binary.
    #[default]
    Digits,
    /// MNIST, 28×28 images, 60000 + 10000 samples, loaded from `assets/mnist`.
    Mnist,
    /// Three interleaved 2-D spirals: tiny, fast, and you can see the decision boundary.
    Spirals,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 3] = [DatasetKind::Digits, DatasetKind::Mnist, DatasetKind::Spirals];
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Digits => "digits",
            DatasetKind::Mnist => "mnist",
            DatasetKind::Spirals => "spirals",
        }
    }
}

impl std::str::FromStr for DatasetKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DatasetKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown data set '{s}': use digits, mnist or spirals"))
    }
}

impl std::fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A labelled data set with a fixed train/test split. Inputs are scaled to [0, 1]
/// (spirals: roughly [−1, 1]).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub classes: usize,
    /// (width, height) when the inputs are images, for drawing them.
    pub image: Option<(usize, usize)>,
    pub train_x: Array2<f32>,
    pub train_y: Vec<u8>,
    pub test_x: Array2<f32>,
    pub test_y: Vec<u8>,
}

impl Dataset {
    pub fn inputs(&self) -> usize {
        self.train_x.ncols()
    }
    pub fn train_len(&self) -> usize {
        self.train_y.len()
    }
    pub fn test_len(&self) -> usize {
        self.test_y.len()
    }

    /// Loads `kind`; MNIST is read from `assets_dir()/mnist`.
    pub fn load(kind: DatasetKind) -> Result<Dataset> {
        match kind {
            DatasetKind::Digits => Ok(digits()),
            DatasetKind::Mnist => mnist(&assets_dir().join("mnist")),
            DatasetKind::Spirals => Ok(spirals::spirals(3, 600)),
        }
    }
}

/// Where run-time assets live: `$DDLAB_ASSETS`, else the `assets/` folder of the source
/// tree this binary was built from.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("DDLAB_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../assets/digits/digits.csv.gz");

/// UCI digits: 1797 rows of 64 pixels (0..16) and a label. The split is fixed: a
/// permutation from a constant seed picks 359 test samples (a fifth), the other 1438
/// train. (The file cycles through the classes 0..9, so a split by index would not do.)
pub fn digits() -> Dataset {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .expect("the embedded digits data decompresses");
    let rows: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let mut is_test = vec![false; rows.len()];
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(0xd1_6175));
    for &i in &order[..rows.len() / 5] {
        is_test[i] = true;
    }
    let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, line) in rows.iter().enumerate() {
        let values: Vec<u8> = line
            .split(',')
            .map(|v| v.trim().parse().expect("embedded digits are integers"))
            .collect();
        assert_eq!(values.len(), 65, "embedded digits row {i} has 64 pixels and a label");
        let half = if is_test[i] { &mut test } else { &mut train };
        half.0.extend(values[..64].iter().map(|&p| f32::from(p) / 16.0));
        half.1.push(values[64]);
    }
    let to_array = |v: Vec<f32>| {
        let rows = v.len() / 64;
        Array2::from_shape_vec((rows, 64), v).expect("64 pixels per row")
    };
    Dataset {
        kind: DatasetKind::Digits,
        classes: 10,
        image: Some((8, 8)),
        train_x: to_array(train.0),
        train_y: train.1,
        test_x: to_array(test.0),
        test_y: test.1,
    }
}

/// MNIST from the four original IDX files (gzip-compressed) in `dir`; the official
/// 60000/10000 split.
pub fn mnist(dir: &Path) -> Result<Dataset> {
    let (train_x, (rows, cols)) = idx::images(&dir.join("train-images.idx3-ubyte.gz"))?;
    let train_y = idx::labels(&dir.join("train-labels.idx1-ubyte.gz"))?;
    let (test_x, _) = idx::images(&dir.join("t10k-images.idx3-ubyte.gz"))?;
    let test_y = idx::labels(&dir.join("t10k-labels.idx1-ubyte.gz"))?;
    let check = |x: &Array2<f32>, y: &[u8], name: &str| {
        if x.nrows() != y.len() {
            return Err(DataError::Format {
                path: dir.join(name),
                what: "MNIST",
                why: format!("{} images but {} labels", x.nrows(), y.len()),
            });
        }
        Ok(())
    };
    check(&train_x, &train_y, "train-labels.idx1-ubyte.gz")?;
    check(&test_x, &test_y, "t10k-labels.idx1-ubyte.gz")?;
    Ok(Dataset {
        kind: DatasetKind::Mnist,
        classes: 10,
        image: Some((cols, rows)),
        train_x,
        train_y,
        test_x,
        test_y,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_split_is_fixed_and_covers_every_class() {
        let d = digits();
        assert_eq!((d.train_len(), d.test_len()), (1438, 359));
        assert_eq!(d.inputs(), 64);
        for class in 0..10u8 {
            assert!(d.test_y.iter().filter(|&&y| y == class).count() >= 20);
        }
        assert!(d.train_x.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }

    #[test]
    fn missing_mnist_names_the_file_and_the_fix() {
        let err = mnist(Path::new("/nonexistent/ddlab")).unwrap_err().to_string();
        assert!(err.contains("train-images.idx3-ubyte.gz"), "{err}");
        assert!(err.contains("DDLAB_ASSETS"), "{err}");
    }

    #[test]
    fn dataset_names_parse_back() {
        for k in DatasetKind::ALL {
            assert_eq!(k.name().parse::<DatasetKind>().unwrap(), k);
        }
        assert!("cifar"
            .parse::<DatasetKind>()
            .unwrap_err()
            .contains("digits, mnist or spirals"));
    }
}
