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

pub use shard::{Batches, Sharder};

/// Errors a user can cause or fix.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("MNIST file {path} is missing: copy assets/mnist from the ddlab repository there, or set DDLAB_ASSETS to the folder that holds mnist/")]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid {what} file: {why}; replace it with the original from the ddlab repository's assets/ folder, or set DDLAB_ASSETS to a folder with good copies")]
    Format {
        path: PathBuf,
        what: &'static str,
        why: String,
    },
    /// A file that is valid but too large for this machine's memory now.
    #[error("{0}: free some memory, or use smaller data files")]
    Memory(String),
}

/// The most a data file may hold once decompressed: 20 times MNIST's training images
/// (47 MB), and a bound on what a corrupt header or a gzip bomb can make ddlab allocate.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// `MAX_FILE_BYTES` as a person reads it.
fn cap() -> String {
    format!("{} GiB", MAX_FILE_BYTES >> 30)
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

    /// (inputs, classes) of the data set as shipped, known without loading it (for the
    /// memory estimate of an experiment; a test holds it to the loaded data).
    pub fn shape(self) -> (usize, usize) {
        match self {
            DatasetKind::Digits => (64, 10),
            DatasetKind::Mnist => (28 * 28, 10),
            DatasetKind::Spirals => (2, 3),
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
            DatasetKind::Digits => digits_csv(DIGITS_CSV_GZ, Path::new(DIGITS_NAME)),
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
/// How errors name the embedded file.
const DIGITS_NAME: &str = "assets/digits/digits.csv.gz (embedded)";

/// UCI digits: 1797 rows of 64 pixels (0..16) and a label. The split is fixed: a
/// permutation from a constant seed picks 359 test samples (a fifth), the other 1438
/// train. (The file cycles through the classes 0..9, so a split by index would not do.)
pub fn digits() -> Dataset {
    digits_csv(DIGITS_CSV_GZ, Path::new(DIGITS_NAME)).expect("the embedded digits are valid (a test loads them)")
}

/// UCI digits from gzip-compressed CSV, every row checked: 64 pixels 0..=16, a label 0..=9.
fn digits_csv(gz: &[u8], name: &Path) -> Result<Dataset> {
    let bad = |why: String| DataError::Format {
        path: name.to_owned(),
        what: "digits CSV",
        why,
    };
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("it is not gzip-compressed text ({e})")))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(bad(format!(
            "it expands to more than the {} ddlab reads from one data file",
            cap()
        )));
    }
    let rows: Vec<(usize, &str)> = text.lines().enumerate().filter(|(_, l)| !l.is_empty()).collect();
    let mut is_test = vec![false; rows.len()];
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(0xd1_6175));
    for &i in &order[..rows.len() / 5] {
        is_test[i] = true;
    }
    let (mut train, mut test) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, &(line_index, line)) in rows.iter().enumerate() {
        let line_no = line_index + 1;
        let values: Vec<u8> = line
            .split(',')
            .map(|v| v.trim().parse())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                bad(format!(
                    "line {line_no} holds a value that is not a whole number 0 to 16"
                ))
            })?;
        let (label, pixels) = values.split_last().unwrap_or((&0, &[]));
        if pixels.len() != 64 {
            return Err(bad(format!(
                "line {line_no} has {} pixels, expected 64 and a label",
                pixels.len()
            )));
        }
        if let Some(p) = pixels.iter().find(|&&p| p > 16) {
            return Err(bad(format!("line {line_no} has a pixel of {p}, over 16")));
        }
        check_label(*label, 10).map_err(|why| bad(format!("line {line_no}: {why}")))?;
        let half = if is_test[i] { &mut test } else { &mut train };
        half.0.extend(pixels.iter().map(|&p| f32::from(p) / 16.0));
        half.1.push(*label);
    }
    let to_array = |v: Vec<f32>| {
        let rows = v.len() / 64;
        Array2::from_shape_vec((rows, 64), v).expect("64 pixels per row")
    };
    Ok(Dataset {
        kind: DatasetKind::Digits,
        classes: 10,
        image: Some((8, 8)),
        train_x: to_array(train.0),
        train_y: train.1,
        test_x: to_array(test.0),
        test_y: test.1,
    })
}

/// A label the loss can index: below `classes`.
fn check_label(label: u8, classes: usize) -> std::result::Result<(), String> {
    match usize::from(label) < classes {
        true => Ok(()),
        false => Err(format!("label {label} is not a class 0 to {}", classes - 1)),
    }
}

/// MNIST from the four original IDX files in `dir` (gzip-compressed, or not); the
/// official 60000/10000 split. Every file is checked against the others: as many labels
/// as images, test images the size of the training images, labels 0..9.
pub fn mnist(dir: &Path) -> Result<Dataset> {
    const CLASSES: usize = 10;
    let [train_images, train_labels, test_images, test_labels] = [
        "train-images.idx3-ubyte",
        "train-labels.idx1-ubyte",
        "t10k-images.idx3-ubyte",
        "t10k-labels.idx1-ubyte",
    ]
    .map(|name| idx::locate(dir, name));
    let bad = |path: &Path, why: String| DataError::Format {
        path: path.to_owned(),
        what: "MNIST",
        why,
    };
    let (train_x, (rows, cols)) = idx::images(&train_images)?;
    let train_y = idx::labels(&train_labels)?;
    let (test_x, test_shape) = idx::images(&test_images)?;
    if test_shape != (rows, cols) {
        return Err(bad(
            &test_images,
            format!(
                "its images are {}×{} pixels but the training images ({}) are {rows}×{cols}",
                test_shape.0,
                test_shape.1,
                train_images.display()
            ),
        ));
    }
    let test_y = idx::labels(&test_labels)?;
    for (x, y, path) in [(&train_x, &train_y, &train_labels), (&test_x, &test_y, &test_labels)] {
        if x.nrows() != y.len() {
            return Err(bad(path, format!("{} labels for {} images", y.len(), x.nrows())));
        }
        for (i, &label) in y.iter().enumerate() {
            check_label(label, CLASSES).map_err(|why| bad(path, format!("item {i}: {why}")))?;
        }
    }
    Ok(Dataset {
        kind: DatasetKind::Mnist,
        classes: CLASSES,
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

    fn gzip(text: &str) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn every_digits_row_is_checked_and_named_by_its_line() {
        let row = |label: u8| format!("{}{label}\n", "0,".repeat(64));
        let good = (0..10).map(row).collect::<String>();
        assert_eq!(digits_csv(&gzip(&good), Path::new("d.csv.gz")).unwrap().train_len(), 8);
        let cases = [
            (format!("{good}{}", row(10)), "line 11: label 10 is not a class 0 to 9"),
            (
                format!("{good}\n{}", "1,".repeat(63) + "1\n"),
                "line 12 has 63 pixels, expected 64",
            ),
            (
                format!("{}17,{}", "0,".repeat(63), "3\n"),
                "line 1 has a pixel of 17, over 16",
            ),
            (
                format!("{good}1,x,3\n"),
                "line 11 holds a value that is not a whole number",
            ),
        ];
        for (text, want) in cases {
            let err = digits_csv(&gzip(&text), Path::new("d.csv.gz")).unwrap_err().to_string();
            assert!(
                err.starts_with("d.csv.gz is not a valid digits CSV file") && err.contains(want),
                "{err}"
            );
        }
        let err = digits_csv(b"not gzip", Path::new("d.csv.gz")).unwrap_err().to_string();
        assert!(err.contains("not gzip-compressed text"), "{err}");
    }

    #[test]
    fn the_shapes_known_before_loading_are_those_loaded() {
        for kind in [DatasetKind::Digits, DatasetKind::Spirals] {
            let d = Dataset::load(kind).unwrap();
            assert_eq!(kind.shape(), (d.inputs(), d.classes), "{kind}");
        }
        assert_eq!(DatasetKind::Mnist.shape(), (784, 10));
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
