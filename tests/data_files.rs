//! Data files as a user may have them: a copy of `assets/` (`DDLAB_ASSETS`) with a file
//! edited, cut, swapped or forged. Each fault is one sentence naming the file, exit
//! code 2, and no panic; a tiny valid set beside them trains, so that each refusal is
//! the fault's doing.

use std::io::Write;
use std::path::Path;

use assert_cmd::Command;

const IMAGES: u32 = 0x0000_0803;
const LABELS: u32 = 0x0000_0801;

/// An IDX file: magic, dimensions, data.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes: Vec<u8> = std::iter::once(magic)
        .chain(dims.iter().copied())
        .flat_map(u32::to_be_bytes)
        .collect();
    bytes.extend_from_slice(data);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn images(n: u32, side: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..n * side * side).map(|i| (i * 7 % 256) as u8).collect();
    gzip(&idx(IMAGES, &[n, side, side], &data))
}

fn labels(values: &[u8]) -> Vec<u8> {
    gzip(&idx(LABELS, &[values.len() as u32], values))
}

/// A folder like `assets/` with a tiny valid MNIST: 40 training and 10 test images of
/// 28×28, labels 0..9.
fn assets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mnist")).unwrap();
    let digits: Vec<u8> = (0..40).map(|i| i % 10).collect();
    put(dir.path(), "train-images.idx3-ubyte.gz", &images(40, 28));
    put(dir.path(), "train-labels.idx1-ubyte.gz", &labels(&digits));
    put(dir.path(), "t10k-images.idx3-ubyte.gz", &images(10, 28));
    put(dir.path(), "t10k-labels.idx1-ubyte.gz", &labels(&digits[..10]));
    dir
}

fn put(assets: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(assets.join("mnist").join(name), bytes).unwrap();
}

fn run_mnist(assets: &Path) -> std::process::Output {
    Command::cargo_bin("ddlab")
        .unwrap()
        .env("DDLAB_ASSETS", assets)
        .args([
            "run",
            "--dataset",
            "mnist",
            "--workers",
            "2",
            "--batch",
            "4",
            "--steps",
            "3",
            "-q",
        ])
        .output()
        .unwrap()
}

/// The run is refused: exit 2, one line naming `file`, containing each of `want`, and
/// saying what to do.
fn refused(assets: &Path, file: &str, want: &[&str]) {
    let out = run_mnist(assets);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&format!("mnist/{file}")),
        "should name {file}: {stderr}"
    );
    for w in want {
        assert!(stderr.contains(w), "should contain {w:?}: {stderr}");
    }
}

const FIX: &str = "replace it with the original from the ddlab repository's assets/ folder";

#[test]
fn a_tiny_valid_set_trains_so_each_refusal_below_is_its_faults() {
    let dir = assets();
    let out = run_mnist(dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_label_beyond_the_classes_is_refused_not_left_to_the_loss_or_the_evaluator() {
    // (file, labels in it, the one made bad, its value)
    let cases = [
        ("train-labels.idx1-ubyte.gz", 40, 39, 10),
        ("t10k-labels.idx1-ubyte.gz", 10, 7, 200),
    ];
    for (file, n, bad, value) in cases {
        let dir = assets();
        let mut values: Vec<u8> = (0..n).map(|i| i % 10).collect();
        values[bad as usize] = value;
        put(dir.path(), file, &labels(&values));
        let want = format!("item {bad}: label {value} is not a class 0 to 9");
        refused(dir.path(), file, &[&want, FIX]);
    }
}

#[test]
fn test_images_of_another_size_than_the_training_images_are_refused() {
    let dir = assets();
    put(dir.path(), "t10k-images.idx3-ubyte.gz", &images(10, 27));
    refused(
        dir.path(),
        "t10k-images.idx3-ubyte.gz",
        &["its images are 27×27 pixels but the training images", "are 28×28", FIX],
    );
}

#[test]
fn a_header_promising_more_than_its_file_holds_is_refused_before_allocating() {
    // 16 bytes claiming 2²² images of 2²¹×2²¹ pixels (the product wraps a u64 to 0)
    let forged = idx(IMAGES, &[1 << 22, 1 << 21, 1 << 21], &[]);
    let dir = assets();
    put(dir.path(), "train-images.idx3-ubyte.gz", &gzip(&forged));
    let want = [
        "promises 4194304×2097152×2097152 bytes of data, more than the 1 GiB",
        FIX,
    ];
    refused(dir.path(), "train-images.idx3-ubyte.gz", &want);
    // uncompressed, the same
    std::fs::remove_file(dir.path().join("mnist/train-images.idx3-ubyte.gz")).unwrap();
    put(dir.path(), "train-images.idx3-ubyte", &forged);
    refused(dir.path(), "train-images.idx3-ubyte", &want);
    // a plausible claim that the plain file's length belies
    put(
        dir.path(),
        "train-images.idx3-ubyte",
        &idx(IMAGES, &[40, 28, 28], &[0; 100]),
    );
    refused(
        dir.path(),
        "train-images.idx3-ubyte",
        &["it is 116 bytes long but its header promises 31376", FIX],
    );
}

/// A gzip stream of `head` followed by `mib` MiB of zeros (a few KB compressed per MiB).
fn then_zeros(head: &[u8], mib: usize) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(head).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..mib {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap()
}

#[test]
fn decompression_stops_at_the_cap_and_at_what_the_header_promises() {
    // The gzip bomb: a small file whose header announces 6.3 GB. Refused from
    // the header, before any of its data is decompressed.
    let dir = assets();
    let bomb = then_zeros(&idx(IMAGES, &[8_000_000, 28, 28], &[]), 64);
    put(dir.path(), "train-images.idx3-ubyte.gz", &bomb);
    refused(
        dir.path(),
        "train-images.idx3-ubyte.gz",
        &["promises 8000000×28×28 bytes of data, more than the 1 GiB ddlab reads from one data file"],
    );
    // A modest header over a stream that goes on: read no further than the header says.
    let dir = assets();
    put(
        dir.path(),
        "t10k-images.idx3-ubyte.gz",
        &then_zeros(&idx(IMAGES, &[10, 28, 28], &[]), 64),
    );
    refused(
        dir.path(),
        "t10k-images.idx3-ubyte.gz",
        &["it holds more data than the 7840 bytes its header promises", FIX],
    );
}

/// What `ddlab::data::mnist` says of the assets folder.
fn load_error(assets: &Path) -> String {
    ddlab::data::mnist(&assets.join("mnist")).unwrap_err().to_string()
}

#[test]
fn the_same_files_uncompressed_load_the_same() {
    let dir = assets();
    let gz = ddlab::data::mnist(&dir.path().join("mnist")).unwrap();
    for name in [
        "train-images.idx3-ubyte",
        "train-labels.idx1-ubyte",
        "t10k-images.idx3-ubyte",
    ] {
        let path = dir.path().join("mnist").join(format!("{name}.gz"));
        let mut plain = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap());
        std::io::Read::read_to_end(&mut decoder, &mut plain).unwrap();
        std::fs::remove_file(&path).unwrap();
        put(dir.path(), name, &plain);
    }
    let plain = ddlab::data::mnist(&dir.path().join("mnist")).unwrap();
    assert_eq!((plain.train_x, plain.train_y), (gz.train_x, gz.train_y));
    assert_eq!((plain.test_x, plain.image), (gz.test_x, Some((28, 28))));
}

#[test]
fn a_wrong_magic_a_short_header_a_short_stream_and_empty_images_are_named() {
    let dir = assets();
    put(
        dir.path(),
        "train-images.idx3-ubyte.gz",
        &labels(&[1, 2, 3, 4, 5, 6, 7, 8, 9]),
    );
    let err = load_error(dir.path());
    assert!(
        err.contains("its magic number is 0x00000801, expected 0x00000803"),
        "{err}"
    );
    put(dir.path(), "train-images.idx3-ubyte.gz", &gzip(&[0, 0, 8, 3, 0, 0]));
    let err = load_error(dir.path());
    assert!(err.contains("it is shorter than its 16-byte header"), "{err}");
    put(
        dir.path(),
        "train-images.idx3-ubyte.gz",
        &gzip(&idx(IMAGES, &[40, 28, 28], &[7; 1000])),
    );
    let err = load_error(dir.path());
    assert!(
        err.contains("it holds 1000 bytes of data but its header promises 31360"),
        "{err}"
    );
    put(
        dir.path(),
        "train-images.idx3-ubyte.gz",
        &gzip(&idx(IMAGES, &[40, 0, 28], &[])),
    );
    let err = load_error(dir.path());
    assert!(err.contains("it holds 40 images of 0×28 pixels"), "{err}");
    assert!(
        err.contains("train-images.idx3-ubyte.gz is not a valid IDX file") && err.contains(FIX),
        "{err}"
    );
}

#[test]
fn a_cut_or_corrupt_gzip_file_is_named() {
    let dir = assets();
    let mut cut = images(10, 28);
    cut.truncate(cut.len() / 2);
    put(dir.path(), "t10k-images.idx3-ubyte.gz", &cut);
    refused(
        dir.path(),
        "t10k-images.idx3-ubyte.gz",
        &["its gzip data is corrupt or cut short", FIX],
    );
    put(dir.path(), "t10k-images.idx3-ubyte.gz", b"\x1f\x8bnot really gzip");
    refused(
        dir.path(),
        "t10k-images.idx3-ubyte.gz",
        &["its gzip data is corrupt", FIX],
    );
}

#[test]
fn labels_and_images_must_agree_in_number() {
    let dir = assets();
    put(dir.path(), "train-labels.idx1-ubyte.gz", &labels(&[1; 39]));
    refused(
        dir.path(),
        "train-labels.idx1-ubyte.gz",
        &["39 labels for 40 images", FIX],
    );
}
