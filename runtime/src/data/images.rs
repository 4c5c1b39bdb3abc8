//! Image files: PNG and JPEG through the `image` crate, as `[h, w, c]` tensors scaled to [0, 1]
//! (grey when the model has one channel, RGB when it has three), and folders of them with one
//! sub-folder per class (classes in name order).

use super::{DataError, Split};
use crate::augment::Image;
use crate::preprocess::Prep;
use std::path::Path;

/// One image as `h·w·c` values in [0, 1]; its size must be `shape`'s `[h, w, c]`.
pub fn load_image(path: &Path, shape: &[usize]) -> Result<Vec<f32>, DataError> {
    load_image_as(path, shape, &Prep::default())
}

/// One image read as `prep` says, to `shape`'s `[h, w, c]`: converted to its colours, and
/// resized when `prep` resizes (else its size must be `shape`'s).
pub fn load_image_as(path: &Path, shape: &[usize], prep: &Prep) -> Result<Vec<f32>, DataError> {
    let [h, w, c] = shape else {
        return Err(DataError::Unsupported {
            what: format!("images feed models whose input is [h, w, c], not {shape:?}"),
        });
    };
    crate::atomic::regular(path).map_err(|e| DataError::Io { path: path.to_path_buf(), error: e.to_string() })?;
    let img = image::open(path).map_err(|e| match e {
        image::ImageError::IoError(io) => DataError::Io { path: path.to_path_buf(), error: io.to_string() },
        other => DataError::Decode { path: path.to_path_buf(), error: other.to_string() },
    })?;
    let found = (img.width() as usize, img.height() as usize);
    if prep.resize.is_none() && found != (*w, *h) {
        return Err(DataError::ImageSize { path: path.to_path_buf(), expected: (*w, *h), found });
    }
    // Read as the colours the model takes, or as RGB for a colour step to convert.
    let read = if prep.colour.is_some() { 3 } else { *c };
    let values: Vec<f32> = match read {
        1 => img.to_luma8().into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect(),
        3 => img.to_rgb8().into_raw().into_iter().map(|v| f32::from(v) / 255.0).collect(),
        _ => return Err(DataError::Unsupported { what: format!("images have 1 or 3 channels, the model wants {c}") }),
    };
    let out = prep.image(Image { h: found.1, w: found.0, c: read, data: values })?;
    if (out.h, out.w) != (*h, *w) {
        return Err(DataError::ImageSize { path: path.to_path_buf(), expected: (*w, *h), found: (out.w, out.h) });
    }
    if out.c != *c {
        return Err(DataError::Unsupported {
            what: format!("`{}` becomes {} channels after preprocessing, the model wants {c}", path.display(), out.c),
        });
    }
    Ok(out.data)
}

/// Every image under `dir/<class>/`, and the number of classes.
pub(super) fn folders(dir: &Path, shape: &[usize], prep: &Prep) -> Result<(Split, usize), DataError> {
    let io = |e: std::io::Error| DataError::Io { path: dir.to_path_buf(), error: e.to_string() };
    let mut classes: Vec<_> =
        std::fs::read_dir(dir).map_err(io)?.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    classes.sort();
    let mut split = Split::default();
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<_> =
            std::fs::read_dir(class).map_err(io)?.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let ext = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
                continue;
            }
            split.x.extend(load_image_as(&file, shape, prep)?);
            split.y.push(label as u32);
        }
    }
    if split.is_empty() {
        return Err(DataError::Empty { path: dir.to_path_buf() });
    }
    Ok((split, classes.len()))
}
