//! Training data: loaded from IDX (MNIST's format, gzipped or not), CSV and folders of images
//! (one sub-folder per class), checked against what the model expects, normalized, split, and
//! served in seeded shuffled batches. Every malformed file is a [`DataError`] that says what and
//! where; nothing here panics on bad input.

pub mod canvas;
mod csv;
mod detection;
mod idx;
mod images;
mod landmarks;

use crate::reference::Tensor;
use cnnc_compiler::train::FnCall;
use ndarray::{ArrayD, IxDyn};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::path::{Path, PathBuf};

pub use images::{load_image, load_image_as};

/// Why data could not be loaded.
#[derive(Clone, Debug, PartialEq)]
pub enum DataError {
    /// A file could not be read.
    Io { path: PathBuf, error: String },
    /// A file's header is not what its format requires.
    BadHeader { path: PathBuf, detail: String },
    /// A file holds fewer bytes or rows than its header promises.
    Truncated { path: PathBuf, expected: u64, found: u64 },
    /// Images and labels disagree on the number of examples.
    CountMismatch { images: PathBuf, labels: PathBuf, n_images: usize, n_labels: usize },
    /// A label is not a class index.
    LabelOutOfRange { path: PathBuf, index: usize, label: i64, classes: usize },
    /// An image's size is not the model's input size.
    ImageSize { path: PathBuf, expected: (usize, usize), found: (usize, usize) },
    /// A CSV row is malformed.
    Csv { path: PathBuf, line: usize, problem: String },
    /// A file could not be decoded (gzip, PNG, JPEG).
    Decode { path: PathBuf, error: String },
    /// No examples.
    Empty { path: PathBuf },
    /// The data's examples do not have the model input's shape.
    Shape { what: String, expected: Vec<usize>, found: Vec<usize> },
    /// The data source is not supported for this model.
    Unsupported { what: String },
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataError::Io { path, error } => write!(f, "cannot read `{}`: {error}", path.display()),
            DataError::BadHeader { path, detail } => {
                write!(f, "`{}` is not a valid data file: {detail}", path.display())
            }
            DataError::Truncated { path, expected, found } => {
                write!(
                    f,
                    "`{}` is truncated: its header promises {expected} bytes of data but it holds {found}",
                    path.display()
                )
            }
            DataError::CountMismatch { images, labels, n_images, n_labels } => write!(
                f,
                "`{}` has {n_images} examples but `{}` has {n_labels} labels",
                images.display(),
                labels.display()
            ),
            DataError::LabelOutOfRange { path, index, label, classes } => {
                write!(
                    f,
                    "`{}`: label {label} of example {index} is not a class index (0 to {})",
                    path.display(),
                    classes.saturating_sub(1)
                )
            }
            DataError::ImageSize { path, expected, found } => write!(
                f,
                "`{}` is {}×{} but the model's input is {}×{}",
                path.display(),
                found.0,
                found.1,
                expected.0,
                expected.1
            ),
            DataError::Csv { path, line, problem } => write!(f, "`{}`, line {line}: {problem}", path.display()),
            DataError::Decode { path, error } => write!(f, "cannot decode `{}`: {error}", path.display()),
            DataError::Empty { path } => write!(f, "`{}` holds no examples", path.display()),
            DataError::Shape { what, expected, found } => {
                write!(f, "{what} gives examples of shape {found:?} but the model's input is {expected:?}")
            }
            DataError::Unsupported { what } => write!(f, "{what}"),
        }
    }
}

impl std::error::Error for DataError {}

/// Labelled examples, flattened row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Split {
    /// `n × features` values.
    pub x: Vec<f32>,
    /// Class index of each example (for boxes: the first object's class, 0 without one).
    pub y: Vec<u32>,
    /// Each example's targets, `n × target` values, when the data gives more than a class
    /// index ([`Dataset::target`]): boxes as rows `[class, cx, cy, w, h]`, unused rows with
    /// class −1.
    pub t: Vec<f32>,
    /// Where each example's targets were read (for errors that name the file and line); empty
    /// for data whose labels are class indices.
    pub origin: Vec<Origin>,
}

/// The file an example's targets come from, and the line of each of its objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    pub file: PathBuf,
    pub lines: Vec<usize>,
}

impl Split {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// Whether there is no example.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Values of each example's targets (0 for class indices alone).
    pub fn target_len(&self) -> usize {
        self.t.len() / self.y.len().max(1)
    }

    /// The same examples and labels with inputs `x` (preprocessed or augmented).
    pub fn with_x(&self, x: Vec<f32>) -> Split {
        Split { x, y: self.y.clone(), t: self.t.clone(), origin: self.origin.clone() }
    }

    /// The examples at `indices`.
    pub fn take(&self, features: usize, indices: &[usize]) -> Split {
        let per = self.target_len();
        let mut out = Split { x: Vec::with_capacity(indices.len() * features), ..Split::default() };
        for &i in indices {
            out.x.extend_from_slice(&self.x[i * features..(i + 1) * features]);
            out.y.push(self.y[i]);
            out.t.extend_from_slice(&self.t[i * per..(i + 1) * per]);
            if let Some(o) = self.origin.get(i) {
                out.origin.push(o.clone());
            }
        }
        out
    }

    /// The first `n` examples.
    pub fn truncate(&mut self, features: usize, n: usize) {
        let per = self.target_len();
        self.x.truncate(n * features);
        self.y.truncate(n);
        self.t.truncate(n * per);
        self.origin.truncate(n);
    }

    /// The targets of examples `indices` as a batch `[b, target..]`: the class indices `[b]`
    /// when the data gives nothing more.
    pub fn targets(&self, indices: &[usize], target: &[usize]) -> Tensor {
        let per = self.target_len();
        if per == 0 {
            let y = indices.iter().map(|&i| self.y[i] as f32).collect();
            return ArrayD::from_shape_vec(IxDyn(&[indices.len()]), y).expect("labels fill their shape");
        }
        let mut t = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            t.extend_from_slice(&self.t[i * per..(i + 1) * per]);
        }
        let shape: Vec<usize> = std::iter::once(indices.len()).chain(target.iter().copied()).collect();
        ArrayD::from_shape_vec(IxDyn(&shape), t).expect("targets fill their shape")
    }
}

/// A data set: training and test examples of one shape, with class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Training examples.
    pub train: Split,
    /// Held-out examples, evaluated every epoch.
    pub test: Split,
    /// Number of classes.
    pub classes: usize,
    /// Shape of one example (the model input's).
    pub shape: Vec<usize>,
    /// Zero padding added around each image (`mnist(..., pad: 2)`), for predicting on raw files.
    pub pad: usize,
    /// Factor that maps raw values (0..255 for images) into the model's range.
    pub scale: f32,
    /// Shape of one example's targets beyond its class index: `[objects, 5]` for boxes, `[2k]`
    /// for k landmarks; empty when the labels are class indices alone.
    pub target: Vec<usize>,
}

impl Dataset {
    /// Identities never seen in training (`unseen n` in a train section): every example of the
    /// last `n` classes, from either split, becomes the test split, and every other example the
    /// training split. Class indices stay as they were.
    pub fn hold_out(self, n: usize) -> Result<Dataset, String> {
        if !self.target.is_empty() {
            return Err("`unseen` holds out classes as identities, and this data gives boxes or points".into());
        }
        if n >= self.classes {
            return Err(format!(
                "`unseen {n}` holds out the last {n} classes, and the data has {}: at least one must be left to train on",
                self.classes
            ));
        }
        let f = self.features();
        let first = (self.classes - n) as u32;
        let (mut train, mut test) = (Split::default(), Split::default());
        for split in [&self.train, &self.test] {
            for (i, &y) in split.y.iter().enumerate() {
                let to = if y < first { &mut train } else { &mut test };
                to.x.extend_from_slice(&split.x[i * f..(i + 1) * f]);
                to.y.push(y);
            }
        }
        if test.y.is_empty() {
            return Err(format!("`unseen {n}`: the data has no example of its last {n} classes"));
        }
        Ok(Dataset { train, test, ..self })
    }

    /// Values per example.
    pub fn features(&self) -> usize {
        self.shape.iter().product()
    }

    /// The examples of `split` at `indices` as a batch: inputs `[b, shape..]` and targets
    /// ([`Split::targets`]).
    pub fn batch(&self, split: &Split, indices: &[usize]) -> (Tensor, Tensor) {
        let f = self.features();
        let mut x = Vec::with_capacity(indices.len() * f);
        for &i in indices {
            x.extend_from_slice(&split.x[i * f..(i + 1) * f]);
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(&self.shape);
        let x = ArrayD::from_shape_vec(IxDyn(&shape), x).expect("batch fills its shape");
        (x, split.targets(indices, &self.target))
    }
}

/// The order of one epoch: a permutation of `0..n` fixed by the seed and the epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    order.shuffle(&mut rng);
    order
}

/// Reads a whole file, un-gzipping it if it starts with gzip's magic bytes.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    // Bounded by half the memory available: a huge file, or a small gzip file that inflates
    // without end, is an error naming it, not an exhausted machine.
    let limit = crate::train::available_memory().map_or(u64::MAX, |a| a / 2);
    let too_big = |what: &str| DataError::Decode {
        path: path.to_path_buf(),
        error: format!("it {what} more than {} MiB, half the memory available", limit >> 20),
    };
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    if size > limit {
        return Err(too_big("holds"));
    }
    let bytes =
        crate::atomic::read(path).map_err(|e| DataError::Io { path: path.to_path_buf(), error: e.to_string() })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let decoder = flate2::read::GzDecoder::new(&bytes[..]);
        std::io::Read::read_to_end(&mut std::io::Read::take(decoder, limit.saturating_add(1)), &mut out)
            .map_err(|e| DataError::Decode { path: path.to_path_buf(), error: e.to_string() })?;
        if out.len() as u64 > limit {
            return Err(too_big("decompresses to"));
        }
        return Ok(out);
    }
    Ok(bytes)
}

/// Splits `all` into training and test parts: a seeded shuffle, then the last `fraction` is test.
fn split(all: Split, features: usize, fraction: f64, seed: u64) -> (Split, Split) {
    let order = epoch_order(all.len(), seed, usize::MAX - 1);
    let n_test = ((all.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    let (train, test) = order.split_at(all.len() - n_test);
    (all.take(features, train), all.take(features, test))
}

/// The training and test splits of a source read by `read`: from the file or folder named by
/// argument `what` and the one named by `test:`, or a seeded `split` of the first.
fn train_and_test(
    call: &FnCall,
    base: &Path,
    what: &str,
    shape: &[usize],
    seed: u64,
    read: impl Fn(&Path) -> Result<Split, DataError>,
) -> Result<(Split, Split), DataError> {
    let all = read(&base.join(call.str(what).unwrap_or_default()))?;
    match call.str("test") {
        Some(test) => Ok((all, read(&base.join(test))?)),
        None => Ok(split(all, shape.iter().product(), call.num("split", 0.2), seed)),
    }
}

/// Classes implied by labels: one more than the largest (at least one); negative labels are
/// reported by [`check_labels`].
fn class_count(labels: &[i64]) -> usize {
    labels.iter().copied().filter(|&l| l >= 0).max().map_or(1, |m| (m as usize).saturating_add(1))
}

fn check_labels(path: &Path, labels: &[i64], classes: usize) -> Result<Vec<u32>, DataError> {
    labels
        .iter()
        .enumerate()
        .map(|(index, &label)| {
            if label >= 0 && (label as usize) < classes {
                Ok(label as u32)
            } else {
                Err(DataError::LabelOutOfRange { path: path.to_path_buf(), index, label, classes })
            }
        })
        .collect()
}

/// The shape of one example of a data source, known without reading it (the model input's for
/// sources whose files say it).
pub fn example_shape(call: &FnCall, input: &[usize]) -> Vec<usize> {
    call.example_shape().map_or_else(|| input.to_vec(), |s| s.0)
}

/// Loads the data source of a train section; paths are relative to `base` (the model file's
/// folder). `input` is the model input's shape, `seed` fixes the train/test split. Examples are
/// read as `prep` says (resized, their colours converted).
pub fn load(
    call: &FnCall,
    base: &Path,
    input: &[usize],
    seed: u64,
    prep: &crate::preprocess::Prep,
) -> Result<Dataset, DataError> {
    let path = |name: &str| call.str(name).map(|p| base.join(p));
    let dataset = match call.name.as_str() {
        "mnist" => {
            let dir = path("dir").unwrap_or_default();
            let pad = call.num("pad", 0.0) as usize;
            let limit = call.num("limit", 0.0) as usize;
            let (train, test) = idx::mnist(&dir, pad, limit)?;
            Dataset {
                train,
                test,
                classes: 10,
                shape: vec![28 + 2 * pad, 28 + 2 * pad, 1],
                pad,
                scale: 1.0 / 255.0,
                target: vec![],
            }
        }
        "idx" => {
            let (images, labels) = (path("images").unwrap_or_default(), path("labels").unwrap_or_default());
            let (all, shape, labels_raw) = idx::pair(&images, &labels)?;
            let classes = class_count(&labels_raw);
            let all = Split { x: all.x, y: check_labels(&labels, &labels_raw, classes)?, ..Split::default() };
            let features: usize = shape.iter().product();
            let (train, test) = match (path("test_images"), path("test_labels")) {
                (Some(ti), Some(tl)) => {
                    let (test, test_shape, raw) = idx::pair(&ti, &tl)?;
                    if test_shape != shape {
                        return Err(DataError::Shape {
                            what: format!("`{}`", ti.display()),
                            expected: shape,
                            found: test_shape,
                        });
                    }
                    (all, Split { x: test.x, y: check_labels(&tl, &raw, classes)?, ..Split::default() })
                }
                _ => split(all, features, call.num("split", 0.2), seed),
            };
            Dataset { train, test, classes, shape, pad: 0, scale: 1.0 / 255.0, target: vec![] }
        }
        "csv" => {
            let file = path("path").unwrap_or_default();
            let shape = example_shape(call, input);
            let scale = call.num("scale", 1.0) as f32;
            let (all, raw) = csv::load(&file, shape.iter().product(), scale)?;
            let classes = class_count(&raw);
            let all = Split { x: all.x, y: check_labels(&file, &raw, classes)?, ..Split::default() };
            let (train, test) = split(all, shape.iter().product(), call.num("split", 0.2), seed);
            Dataset { train, test, classes, shape, pad: 0, scale, target: vec![] }
        }
        "images" => {
            let dir = path("dir").unwrap_or_default();
            // Read as `prep` says already: resized and converted as each image is read.
            let shape = prep.shape(input);
            let (all, classes) = images::folders(&dir, &shape, prep)?;
            let (train, test) = split(all, shape.iter().product(), call.num("split", 0.2), seed);
            return Ok(Dataset { train, test, classes, shape, pad: 0, scale: 1.0 / 255.0, target: vec![] });
        }
        "detection" => {
            let shape = prep.shape(input);
            let read = |dir: &Path| detection::folder(dir, &shape, prep);
            let (train, test) = train_and_test(call, base, "dir", &shape, seed, read)?;
            let (train, test, target) = detection::pad_objects(train, test);
            let classes = train.t.chunks_exact(5).chain(test.t.chunks_exact(5)).fold(1, |m, r| m.max(r[0] as i64 + 1));
            // Read as `prep` says already (as `images`): converting again would swap `bgr` back.
            return Ok(Dataset { train, test, classes: classes as usize, shape, pad: 0, scale: 1.0 / 255.0, target });
        }
        "landmarks" => {
            let shape = prep.shape(input);
            let read = |csv: &Path| landmarks::read(csv, &shape, prep);
            let (train, test) = train_and_test(call, base, "csv", &shape, seed, read)?;
            if train.target_len() != test.target_len() {
                return Err(DataError::Unsupported {
                    what: format!(
                        "the training rows have {} points and the test rows {}",
                        train.target_len() / 2,
                        test.target_len() / 2
                    ),
                });
            }
            let target = vec![train.target_len()];
            // Read as `prep` says already, as above.
            return Ok(Dataset { train, test, classes: 1, shape, pad: 0, scale: 1.0 / 255.0, target });
        }
        other => return Err(DataError::Unsupported { what: format!("data source `{other}` is not supported") }),
    };
    // The augmentation pipeline checks the example shape against the model input (crops may change it).
    prep.dataset(dataset)
}
