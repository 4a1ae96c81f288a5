//! Reader for the IDX format MNIST ships in: big-endian u32 magic, u32 dimensions, u8
//! data; gzip-compressed or not (told by the first two bytes, not by the name).
//!
//! A header is a claim, not a fact, and nothing is allocated for it before it is checked:
//! the size it promises is computed without overflow and held to `MAX_FILE_BYTES`; a
//! plain file's length is compared with it before reading, and a compressed stream is
//! read through a reader that stops one byte past it, so that a small file claiming or
//! expanding to gigabytes costs at most the cap.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::{cap, DataError, Result, MAX_FILE_BYTES};

const IMAGES: u32 = 0x0000_0803;
const LABELS: u32 = 0x0000_0801;

/// `dir/name.gz`, or `dir/name` when only the uncompressed file is there.
pub fn locate(dir: &Path, name: &str) -> PathBuf {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if !gz.exists() && plain.exists() {
        plain
    } else {
        gz
    }
}

fn bad(path: &Path, why: String) -> DataError {
    DataError::Format {
        path: path.to_owned(),
        what: "IDX",
        why,
    }
}

/// The file's dimensions and its data, whose length is that of the dimensions' product.
/// `held`: bytes kept in memory per data byte (images: the byte and its f32), for the
/// memory check before reading.
fn read(path: &Path, magic: u32, dims: usize, held: u64) -> Result<(Vec<usize>, Vec<u8>)> {
    let io = |source| DataError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing { path: path.to_owned() },
        _ => io(e),
    })?;
    let length = file.metadata().map_err(io)?.len();
    let mut file = BufReader::new(file);
    let gzip = file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    // Decoding errors are the file's fault, not the disk's.
    let failed = |e: std::io::Error| match gzip {
        true => bad(path, format!("its gzip data is corrupt or cut short ({e})")),
        false => io(e),
    };

    let mut head = vec![0u8; 4 * (dims + 1)];
    reader.read_exact(&mut head).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(path, format!("it is shorter than its {}-byte header", head.len())),
        _ => failed(e),
    })?;
    let word = |i: usize| u32::from_be_bytes([head[4 * i], head[4 * i + 1], head[4 * i + 2], head[4 * i + 3]]);
    if word(0) != magic {
        return Err(bad(
            path,
            format!("its magic number is {:#010x}, expected {magic:#010x}", word(0)),
        ));
    }
    let shape: Vec<u32> = (1..=dims).map(word).collect();
    let promised = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)))
        .filter(|&n| n <= MAX_FILE_BYTES)
        .ok_or_else(|| {
            let dims: Vec<String> = shape.iter().map(u32::to_string).collect();
            bad(
                path,
                format!(
                    "its header promises {} bytes of data, more than the {} ddlab reads from one data file",
                    dims.join("×"),
                    cap()
                ),
            )
        })?;
    let header = head.len() as u64;
    if !gzip && length != header + promised {
        return Err(bad(
            path,
            format!(
                "it is {length} bytes long but its header promises {}",
                header + promised
            ),
        ));
    }
    crate::memory::check_fits(promised.saturating_mul(held), &format!("reading {}", path.display()))
        .map_err(DataError::Memory)?;
    let mut data = Vec::new();
    reader.take(promised + 1).read_to_end(&mut data).map_err(failed)?;
    let found = data.len() as u64;
    if found != promised {
        return Err(bad(
            path,
            match found > promised {
                true => format!("it holds more data than the {promised} bytes its header promises"),
                false => format!("it holds {found} bytes of data but its header promises {promised}"),
            },
        ));
    }
    Ok((shape.into_iter().map(|d| d as usize).collect(), data))
}

/// Images scaled to [0, 1], one row per image; returns (images, (rows, cols)).
pub fn images(path: &Path) -> Result<(Array2<f32>, (usize, usize))> {
    let (shape, bytes) = read(path, IMAGES, 3, 1 + 4)?;
    let (n, rows, cols) = (shape[0], shape[1], shape[2]);
    if n == 0 || rows * cols == 0 {
        return Err(bad(
            path,
            format!("it holds {n} images of {rows}×{cols} pixels, and training needs at least one pixel of one image"),
        ));
    }
    let data: Vec<f32> = bytes.iter().map(|&p| f32::from(p) / 255.0).collect();
    let x = Array2::from_shape_vec((n, rows * cols), data).expect("the data's length is the header's product");
    Ok((x, (rows, cols)))
}

pub fn labels(path: &Path) -> Result<Vec<u8>> {
    Ok(read(path, LABELS, 1, 1)?.1)
}
