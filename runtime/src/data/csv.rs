//! CSV data: one example a row, `features` numbers then an integer label; gzipped or not. Rows
//! that are empty or start with `#` are skipped; a first row of names only is a header, skipped.

use super::{read, DataError, Split};
use std::path::Path;

/// The examples (values multiplied by `scale`) and raw labels.
pub(super) fn load(path: &Path, features: usize, scale: f32) -> Result<(Split, Vec<i64>), DataError> {
    let bytes = read(path)?;
    let text =
        String::from_utf8(bytes).map_err(|e| DataError::Decode { path: path.to_path_buf(), error: e.to_string() })?;
    let mut split = Split::default();
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let problem = |problem: String| DataError::Csv { path: path.to_path_buf(), line: i + 1, problem };
        if i == 0 && fields.iter().all(|f| f.parse::<f64>().is_err()) {
            continue;
        }
        if fields.len() != features + 1 {
            return Err(problem(format!("{} fields, expected {} values and a label", fields.len(), features)));
        }
        for f in &fields[..features] {
            let v: f32 = f.parse().map_err(|_| problem(format!("`{f}` is not a number")))?;
            if !v.is_finite() {
                return Err(problem(format!("`{f}` is not a finite number")));
            }
            split.x.push(v * scale);
        }
        let label = fields[features];
        labels.push(label.parse::<i64>().map_err(|_| problem(format!("label `{label}` is not an integer")))?);
    }
    if labels.is_empty() {
        return Err(DataError::Empty { path: path.to_path_buf() });
    }
    Ok((split, labels))
}
