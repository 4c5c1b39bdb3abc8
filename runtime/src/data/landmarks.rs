//! Landmark data: a CSV file, one image a row, `image,x1,y1,…,xk,yk`, the image's path relative
//! to the CSV file's folder and its k points in pixels of the image. A first row whose second
//! field is not a number is a header. Points are kept as fractions of the image, so a resized
//! image keeps them.

use super::{images::load_image_as, DataError, Origin, Split};
use crate::preprocess::Prep;
use std::path::Path;

/// Every row of `csv`: the images read as `prep` says, the points as fractions.
pub(super) fn read(csv: &Path, shape: &[usize], prep: &Prep) -> Result<Split, DataError> {
    let bytes = super::read(csv)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| DataError::Decode { path: csv.to_path_buf(), error: "it is not UTF-8 text".into() })?;
    let dir = csv.parent().unwrap_or(Path::new("."));
    let mut split = Split::default();
    let mut values = None;
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let bad = |problem: String| DataError::Csv { path: csv.to_path_buf(), line: line_no, problem };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if line.trim().is_empty() || (n == 0 && fields.get(1).is_some_and(|f| f.parse::<f32>().is_err())) {
            continue;
        }
        let coords = fields.len() - 1;
        if coords == 0 || !coords.is_multiple_of(2) {
            return Err(bad(format!(
                "a row is `image,x1,y1,…,xk,yk`: an image and pairs of coordinates, and this row has {coords} numbers"
            )));
        }
        if let Some(expected) = values.filter(|&v| v != coords) {
            return Err(bad(format!("{} points, where the rows before have {}", coords / 2, expected / 2)));
        }
        values = Some(coords);
        let image = dir.join(fields[0]);
        let (w, h) =
            image::image_dimensions(&image).map_err(|e| bad(format!("cannot read `{}`: {e}", image.display())))?;
        let mut points = Vec::with_capacity(coords);
        for (k, field) in fields[1..].iter().enumerate() {
            let v: f32 = field
                .parse()
                .ok()
                .filter(|v: &f32| v.is_finite())
                .ok_or_else(|| bad(format!("`{field}` (value {}) is not a number", k + 1)))?;
            let side = if k % 2 == 0 { w } else { h } as f32;
            if !(0.0..=side).contains(&v) {
                return Err(bad(format!(
                    "point {} is outside the {w}×{h} image: {} = {v}",
                    k / 2 + 1,
                    if k % 2 == 0 { "x" } else { "y" }
                )));
            }
            points.push(v / side);
        }
        split.x.extend(load_image_as(&image, shape, prep)?);
        split.y.push(0);
        split.t.extend(points);
        split.origin.push(Origin { file: csv.to_path_buf(), lines: vec![line_no] });
    }
    if split.is_empty() {
        return Err(DataError::Empty { path: csv.to_path_buf() });
    }
    Ok(split)
}
