//! The IDX format of MNIST: a magic number (two zero bytes, a type byte, the number of axes),
//! the axis sizes as big-endian u32, then the values. Only unsigned bytes (type 0x08) are used.

use super::{read, DataError, Split};
use std::path::{Path, PathBuf};

/// One IDX file: its axis sizes and raw bytes.
pub(super) struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

pub(super) fn parse(path: &Path) -> Result<Idx, DataError> {
    let bytes = read(path)?;
    let bad = |detail: String| DataError::BadHeader { path: path.to_path_buf(), detail };
    if bytes.len() < 4 {
        return Err(bad(format!("{} bytes is too short for an IDX header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(format!("the magic number starts {:#04x} {:#04x}, not 0x00 0x00", bytes[0], bytes[1])));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!("value type {:#04x} is not unsigned bytes (0x08)", bytes[2])));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 || bytes.len() < 4 + 4 * ndims {
        return Err(bad(format!("{ndims} axes declared, but the header is cut short")));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad("the sizes overflow".into()))?;
    // Each value becomes a float (4 bytes) beside its byte: refuse what cannot fit, before.
    if let Some(available) = crate::train::available_memory().filter(|&a| expected.saturating_mul(5) > a) {
        return Err(bad(format!(
            "its header declares {expected} values, {} MiB as floats, and {} MiB are available",
            expected.saturating_mul(4) >> 20,
            available >> 20
        )));
    }
    let mut bytes = bytes;
    bytes.drain(..4 + 4 * ndims);
    let data = bytes;
    if data.len() as u64 != expected {
        if (data.len() as u64) < expected {
            return Err(DataError::Truncated { path: path.to_path_buf(), expected, found: data.len() as u64 });
        }
        return Err(bad(format!("{} bytes of data follow the header, {expected} expected", data.len())));
    }
    Ok(Idx { dims, data })
}

/// Images and labels: examples scaled to [0, 1] and flattened, the example shape `[h, w, 1]` (or
/// `[h, w, c]` for 4-axis files), and the raw labels.
pub(super) fn pair(images: &Path, labels: &Path) -> Result<(Split, Vec<usize>, Vec<i64>), DataError> {
    let img = parse(images)?;
    let lab = parse(labels)?;
    if lab.dims.len() != 1 {
        return Err(DataError::BadHeader {
            path: labels.to_path_buf(),
            detail: format!("labels need 1 axis, found {}", lab.dims.len()),
        });
    }
    let shape = match img.dims.as_slice() {
        [_, h, w] => vec![*h, *w, 1],
        [_, h, w, c] => vec![*h, *w, *c],
        other => {
            return Err(DataError::BadHeader {
                path: images.to_path_buf(),
                detail: format!("images need 3 or 4 axes ([n, h, w] or [n, h, w, c]), found {}", other.len()),
            })
        }
    };
    let n = img.dims[0];
    if n != lab.dims[0] {
        return Err(DataError::CountMismatch {
            images: images.to_path_buf(),
            labels: labels.to_path_buf(),
            n_images: n,
            n_labels: lab.dims[0],
        });
    }
    if n == 0 {
        return Err(DataError::Empty { path: images.to_path_buf() });
    }
    let x = img.data.iter().map(|&b| f32::from(b) / 255.0).collect();
    let raw = lab.data.iter().map(|&b| i64::from(b)).collect();
    Ok((Split { x, ..Split::default() }, shape, raw))
}

fn find(dir: &Path, stem: &str) -> PathBuf {
    let gz = dir.join(format!("{stem}.gz"));
    if gz.exists() {
        gz
    } else {
        dir.join(stem)
    }
}

/// MNIST from a folder with the four standard files (gzipped or not); digits zero-padded by
/// `pad` on each side; the first `limit` training digits if `limit > 0`.
pub(super) fn mnist(dir: &Path, pad: usize, limit: usize) -> Result<(Split, Split), DataError> {
    let mut out = Vec::new();
    for prefix in ["train", "t10k"] {
        let images = find(dir, &format!("{prefix}-images-idx3-ubyte"));
        let labels = find(dir, &format!("{prefix}-labels-idx1-ubyte"));
        let (split, shape, raw) = pair(&images, &labels)?;
        if shape != [28, 28, 1] {
            return Err(DataError::Shape {
                what: format!("`{}`", images.display()),
                expected: vec![28, 28, 1],
                found: shape,
            });
        }
        let y = super::check_labels(&labels, &raw, 10)?;
        out.push(padded(Split { x: split.x, y, ..Split::default() }, pad));
    }
    let test = out.pop().unwrap_or_default();
    let mut train = out.pop().unwrap_or_default();
    if limit > 0 && limit < train.len() {
        let features = train.x.len() / train.len();
        train.truncate(features, limit);
    }
    Ok((train, test))
}

/// Zero-pads 28×28 images by `pad` pixels on every side.
fn padded(split: Split, pad: usize) -> Split {
    if pad == 0 {
        return split;
    }
    let side = 28 + 2 * pad;
    let mut x = vec![0f32; split.len() * side * side];
    for (i, image) in split.x.chunks(28 * 28).enumerate() {
        for r in 0..28 {
            let dst = i * side * side + (r + pad) * side + pad;
            x[dst..dst + 28].copy_from_slice(&image[r * 28..(r + 1) * 28]);
        }
    }
    Split { x, ..split }
}
