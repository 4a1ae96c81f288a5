//! Reader for the IDX format MNIST ships in: big-endian u32 magic, u32 dimensions, u8 data.

use std::io::Read;
use std::path::Path;

use ndarray::Array2;

use super::{DataError, Result};

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing { path: path.to_owned() },
        _ => DataError::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::Io {
            path: path.to_owned(),
            source: e,
        })?;
    Ok(bytes)
}

fn header(bytes: &[u8], path: &Path, magic: u32, dims: usize) -> Result<Vec<usize>> {
    let bad = |why: String| DataError::Format {
        path: path.to_owned(),
        what: "IDX",
        why,
    };
    let word = |i: usize| -> Result<u32> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("file is shorter than its header".into()))
    };
    let found = word(0)?;
    if found != magic {
        return Err(bad(format!("magic number {found:#010x}, expected {magic:#010x}")));
    }
    let shape: Vec<usize> = (1..=dims).map(|i| word(i).map(|w| w as usize)).collect::<Result<_>>()?;
    let expected = 4 * (dims + 1) + shape.iter().product::<usize>();
    if bytes.len() != expected {
        return Err(bad(format!("{} bytes, the header promises {expected}", bytes.len())));
    }
    Ok(shape)
}

/// Images scaled to [0, 1], one row per image; returns (images, (rows, cols)).
pub fn images(path: &Path) -> Result<(Array2<f32>, (usize, usize))> {
    let bytes = read_gz(path)?;
    let shape = header(&bytes, path, 0x0000_0803, 3)?;
    let (n, rows, cols) = (shape[0], shape[1], shape[2]);
    let data: Vec<f32> = bytes[16..].iter().map(|&p| f32::from(p) / 255.0).collect();
    let x = Array2::from_shape_vec((n, rows * cols), data).expect("size checked against the header");
    Ok((x, (rows, cols)))
}

pub fn labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_gz(path)?;
    header(&bytes, path, 0x0000_0801, 1)?;
    Ok(bytes[8..].to_vec())
}
