//! Weights files in safetensors: parameters by name, f32, in cnnc's layout (convolution weights
//! `[f.., c_in/groups, filters]`, dense weights `[n, units]`). Files are written atomically
//! ([`crate::atomic`]), so a crash never leaves a broken file.

use crate::params::Params;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a weights file could not be read or written.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsError {
    /// The file could not be read or written.
    Io { path: PathBuf, error: String },
    /// The file is not valid safetensors.
    Corrupt { path: PathBuf, error: String },
    /// A tensor is not 32-bit float.
    Dtype { path: PathBuf, name: String, dtype: String },
    /// The file lacks parameters the model has.
    Missing { path: PathBuf, names: Vec<String> },
    /// A parameter's shape differs from the model's.
    Shape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    /// A tensor holds NaN or an infinity.
    NonFinite { path: PathBuf, name: String },
    /// Nothing in the file is a parameter of the model.
    NoMatch { path: PathBuf, found: Vec<String> },
}

impl fmt::Display for WeightsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightsError::Io { path, error } => write!(f, "cannot access weights file `{}`: {error}", path.display()),
            WeightsError::Corrupt { path, error } => {
                write!(f, "`{}` is not a valid safetensors file: {error}", path.display())
            }
            WeightsError::Dtype { path, name, dtype } => {
                write!(f, "`{}`: tensor `{name}` is {dtype}, cnnc reads F32", path.display())
            }
            WeightsError::Missing { path, names } => {
                let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
                let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
                write!(f, "`{}` lacks parameters of this model: {}{more}", path.display(), shown.join(", "))
            }
            WeightsError::Shape { path, name, expected, found } => {
                write!(f, "`{}`: parameter `{name}` has shape {found:?}, the model needs {expected:?}", path.display())
            }
            WeightsError::NonFinite { path, name } => {
                write!(f, "`{}`: tensor `{name}` holds NaN or infinite values", path.display())
            }
            WeightsError::NoMatch { path, found } => {
                let shown: Vec<&str> = found.iter().take(5).map(String::as_str).collect();
                write!(
                    f,
                    "`{}` has no parameter of this model (it has {}{})",
                    path.display(),
                    shown.join(", "),
                    if found.len() > 5 { ", ..." } else { "" }
                )
            }
        }
    }
}

impl std::error::Error for WeightsError {}

/// A tensor to write: its name, shape and values.
pub type Named<'a> = (&'a str, &'a [usize], &'a [f32]);

/// Writes `tensors` with `metadata` to `path` atomically (flushed to disk before it replaces the
/// old file).
pub fn save(path: &Path, tensors: &[Named], metadata: HashMap<String, String>) -> Result<(), WeightsError> {
    save_summed(path, tensors, metadata, checksum(tensors.iter().copied()))
}

/// [`save`] with the tensors' [`checksum`] already computed (a caller that needs it too).
pub fn save_summed(
    path: &Path,
    tensors: &[Named],
    metadata: HashMap<String, String>,
    crc: String,
) -> Result<(), WeightsError> {
    let io = |e: &dyn fmt::Display| WeightsError::Io { path: path.to_path_buf(), error: e.to_string() };
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            TensorView::new(Dtype::F32, shape.to_vec(), data).map(|v| (name.to_string(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io(&e))?;
    let mut metadata = metadata;
    metadata.insert("crc32".to_string(), crc);
    let serialized = sorted_header(safetensors::serialize(views, Some(metadata)).map_err(|e| io(&e))?);
    write(path, &serialized)
}

/// The CRC-32 of tensors in name order (name, shape, values), as hex: written in every file
/// cnnc saves and checked when it is read, so a file damaged or edited after cnnc wrote it is
/// refused instead of read as other numbers.
pub fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [usize], &'a [f32])>) -> String {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut crc = crc32fast::Hasher::new();
    for (name, shape, values) in sorted {
        crc.update(name.as_bytes());
        crc.update(&[0]);
        for d in shape {
            crc.update(&(*d as u64).to_le_bytes());
        }
        for v in values {
            crc.update(&v.to_le_bytes());
        }
    }
    format!("{:08x}", crc.finalize())
}

/// Writes `bytes` to `path` atomically, its folder made first if missing.
fn write(path: &Path, bytes: &[u8]) -> Result<(), WeightsError> {
    let io = |e: &dyn fmt::Display| WeightsError::Io { path: path.to_path_buf(), error: e.to_string() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
    }
    crate::atomic::write(path, bytes).map_err(|e| io(&e))
}

/// The file with its JSON header's keys in sorted order (the metadata comes from a `HashMap`,
/// whose order changes from run to run), padded with spaces to its old length: two runs that
/// save the same tensors write the same bytes, so `cmp` or `sha256sum` can confirm them.
fn sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let entries: std::collections::BTreeMap<String, serde_json::Value> =
                    map.into_iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::Value::Object(entries.into_iter().collect())
            }
            other => other,
        }
    }
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize) else {
        return bytes;
    };
    let Some(header) = bytes.get(8..8 + len) else { return bytes };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else { return bytes };
    let Ok(text) = serde_json::to_string(&sorted(value)) else { return bytes };
    if text.len() <= len {
        let mut padded = text.into_bytes();
        padded.resize(len, b' ');
        bytes[8..8 + len].copy_from_slice(&padded);
    }
    bytes
}

/// Writes one tensor as a `.npy` file (float32, little-endian, C order), atomically as [`save`].
pub fn save_npy(path: &Path, shape: &[usize], values: &[f32]) -> Result<(), WeightsError> {
    use ndarray_npy::WriteNpyExt;
    let io = |e: &dyn fmt::Display| WeightsError::Io { path: path.to_path_buf(), error: e.to_string() };
    let array = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(shape), values).map_err(|e| io(&e))?;
    let mut bytes = Vec::new();
    array.write_npy(&mut bytes).map_err(|e| io(&e))?;
    write(path, &bytes)
}

/// Tensors by name (shape and values), and a file's metadata.
pub type Contents = (BTreeMap<String, (Vec<usize>, Vec<f32>)>, HashMap<String, String>);

/// The values of a tensor's little-endian bytes as f32, from any float type (`None` for
/// integers and the rest): what every reader of safetensors and ONNX data in cnnc decodes with.
pub fn floats(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => return None,
    })
}

/// A file's tensor names and metadata, from its header alone (the tensors are not read or
/// checked); `None` when it cannot be read as safetensors.
pub fn header(path: &Path) -> Option<(Vec<String>, HashMap<String, String>)> {
    use std::io::Read;
    crate::atomic::regular(path).ok()?;
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = usize::try_from(u64::from_le_bytes(len)).ok().filter(|&l| l <= 100 << 20)?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&header).ok()?;
    let object = value.as_object()?;
    let names = object.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let meta = object.get("__metadata__").and_then(|m| m.as_object()).cloned().unwrap_or_default();
    Some((names, meta.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))).collect()))
}

/// A file's metadata alone, from its header (see [`header`]).
pub fn metadata(path: &Path) -> Option<HashMap<String, String>> {
    header(path).map(|(_, meta)| meta)
}

/// Reads every tensor of a file, with its metadata.
pub fn load(path: &Path) -> Result<Contents, WeightsError> {
    let bytes =
        crate::atomic::read(path).map_err(|e| WeightsError::Io { path: path.to_path_buf(), error: e.to_string() })?;
    let corrupt = |e: &dyn fmt::Display| WeightsError::Corrupt { path: path.to_path_buf(), error: e.to_string() };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&e))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(WeightsError::Dtype { path: path.to_path_buf(), name, dtype: format!("{:?}", view.dtype()) });
        }
        out.insert(name, (view.shape().to_vec(), floats(Dtype::F32, view.data()).unwrap_or_default()));
    }
    let meta = meta.metadata().clone().unwrap_or_default();
    if let Some(written) = meta.get("crc32") {
        let found = checksum(out.iter().map(|(n, (s, v))| (n.as_str(), s.as_slice(), v.as_slice())));
        if *written != found {
            return Err(corrupt(&format!(
                "its checksum is {found}, cnnc wrote {written}: the file was damaged or changed after it was saved \
                 (if you changed it on purpose, save it without the `crc32` metadata entry)"
            )));
        }
    }
    Ok((out, meta))
}

/// Reads a weights file into `params`, which must already hold every parameter of the model
/// (for shapes): the file must have every one that is not a constant of the model file, each of
/// its shape and finite. Constants keep the values the model file gives them.
pub fn load_into(path: &Path, params: &mut Params) -> Result<HashMap<String, String>, WeightsError> {
    let (tensors, meta) = load(path)?;
    fill(path, &tensors, params)?;
    Ok(meta)
}

/// [`load_into`] for the tensors of `path`, already read.
pub fn fill(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    params: &mut Params,
) -> Result<(), WeightsError> {
    let layout = params.layout.clone();
    let missing: Vec<String> = layout
        .entries()
        .iter()
        .filter(|e| !e.constant && !tensors.contains_key(&e.name))
        .map(|e| e.name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(WeightsError::Missing { path: path.to_path_buf(), names: missing });
    }
    copy_found(path, tensors, params)
}

/// Starts from a file of pretrained weights: every parameter of the model that the file has (by
/// name, of the right shape, finite) is taken from it; the others keep their values. Returns
/// the names of the parameters initialized fresh. A file that has none of the model's
/// parameters is an error, and so is one whose tensor of a parameter's name has another shape.
pub fn init_from(path: &Path, params: &mut Params) -> Result<Vec<String>, WeightsError> {
    let (tensors, _) = load(path)?;
    let layout = params.layout.clone();
    let wanted = |e: &&cnnc_compiler::params::Entry| !e.constant;
    if !layout.entries().iter().filter(wanted).any(|e| tensors.contains_key(&e.name)) {
        return Err(WeightsError::NoMatch { path: path.to_path_buf(), found: tensors.keys().cloned().collect() });
    }
    copy_found(path, &tensors, params)?;
    Ok(layout
        .entries()
        .iter()
        .filter(wanted)
        .filter(|e| !tensors.contains_key(&e.name))
        .map(|e| e.name.clone())
        .collect())
}

/// Copies every tensor of `tensors` named as a (non-constant) parameter into `params`, after
/// checking all of them: nothing is written if any has the wrong shape or is not finite.
fn copy_found(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    params: &mut Params,
) -> Result<(), WeightsError> {
    let layout = params.layout.clone();
    let found: Vec<(usize, &Vec<f32>)> = layout
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.constant)
        .filter_map(|(id, e)| tensors.get(&e.name).map(|t| (id, e, t)))
        .map(|(id, e, (shape, values))| {
            if *shape != e.shape {
                return Err(WeightsError::Shape {
                    path: path.to_path_buf(),
                    name: e.name.clone(),
                    expected: e.shape.clone(),
                    found: shape.clone(),
                });
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(WeightsError::NonFinite { path: path.to_path_buf(), name: e.name.clone() });
            }
            Ok((id, values))
        })
        .collect::<Result<_, _>>()?;
    for (id, values) in found {
        params.slice_mut(id).copy_from_slice(values);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_same_tensors_and_metadata_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let values = [1.0f32, -2.0, 3.5, 0.25];
        let tensors: Vec<super::Named> = vec![("b/bias", &[2], &values[..2]), ("a/weight", &[2], &values[2..])];
        let mut files = Vec::new();
        for i in 0..4 {
            // A new map each time: its order of iteration differs from map to map.
            let meta: std::collections::HashMap<String, String> =
                (0..8).map(|k| (format!("key{k}"), format!("value {k}"))).collect();
            let path = dir.path().join(format!("w{i}.safetensors"));
            super::save(&path, &tensors, meta).unwrap();
            files.push(std::fs::read(&path).unwrap());
        }
        assert!(files.iter().all(|f| *f == files[0]), "every save wrote the same bytes");
        let (loaded, meta) = super::load(&dir.path().join("w0.safetensors")).unwrap();
        assert_eq!(loaded["a/weight"], (vec![2], vec![3.5, 0.25]));
        assert_eq!(meta["key3"], "value 3");
    }
}
