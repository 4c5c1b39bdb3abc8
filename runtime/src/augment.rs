//! Data augmentation: the `augment { ... }` steps of a train section, each with its parameters and
//! probability, applied in order to one example at a time with a random stream fixed by (seed,
//! epoch, example), so a batch is the same whatever the number of loader threads. Evaluation
//! applies only the deterministic part: a centre crop to the model's input and normalization.

mod geometry;

use crate::data::{DataError, Dataset, Split};
use cnnc_compiler::train::FnCall;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

pub use geometry::{affine, elastic, rotate, Image};

/// One augmentation step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Left-right mirror.
    Mirror { p: f64 },
    /// Upside-down flip.
    FlipVertical { p: f64 },
    /// Zero-pad by `pad`, then crop `size × size` at a random place.
    RandomCrop { size: usize, pad: usize, p: f64 },
    /// Crop a random area fraction (`scale`) and aspect ratio (3/4 to 4/3), resized to `size × size`.
    RandomResizedCrop { size: usize, scale: (f64, f64), p: f64 },
    /// Rotate by a uniform angle in ±`degrees` about the centre.
    Rotate { degrees: f64, p: f64 },
    /// Shear horizontally by a uniform angle in ±`degrees`.
    Shear { degrees: f64, p: f64 },
    /// Elastic distortion: a random displacement field smoothed by a Gaussian of `sigma` pixels,
    /// scaled by `alpha` pixels (Simard et al., 2003).
    Warp { alpha: f64, sigma: f64, p: f64 },
    /// Add a uniform offset in ±`max` to each channel.
    ColorShift { max: f64, p: f64 },
    /// AlexNet's PCA colour augmentation: add Σ αᵢ λᵢ pᵢ with αᵢ ~ N(0, `std`), where (λᵢ, pᵢ) are the
    /// eigenvalues and eigenvectors of the training set's RGB covariance.
    PcaColor { std: f64, p: f64 },
    /// Add a uniform offset in ±`max` to every value.
    Brightness { max: f64, p: f64 },
    /// Scale deviations from the mean by a uniform factor in 1 ± `max`.
    Contrast { max: f64, p: f64 },
    /// `(x − mean_c) / std_c` per channel; applied at evaluation too.
    Normalize { mean: Vec<f32>, std: Vec<f32> },
    /// `x · factor + offset` (a `preprocess` step); applied at evaluation too.
    Scale { factor: f32, offset: f32 },
}

/// Where an augmentation moves a point, in fractions of the image before and after:
/// `x' = sx·x + tx`, `y' = sy·y + ty` (mirrors, flips, crops and resized crops are such maps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Map {
    pub sx: f32,
    pub tx: f32,
    pub sy: f32,
    pub ty: f32,
}

/// The share of a box that must stay in the image after a crop for it to be kept.
const KEPT_SHARE: f32 = 0.4;

impl Map {
    /// Points stay where they are.
    pub const IDENTITY: Map = Map { sx: 1.0, tx: 0.0, sy: 1.0, ty: 0.0 };

    /// `self` applied after `first`.
    pub fn after(self, first: Map) -> Map {
        Map {
            sx: self.sx * first.sx,
            tx: self.sx * first.tx + self.tx,
            sy: self.sy * first.sy,
            ty: self.sy * first.ty + self.ty,
        }
    }

    /// Moves one example's targets of shape `target`: boxes `[objects, 5]` or points `[2k]`.
    pub fn move_targets(&self, targets: &mut [f32], target: &[usize]) {
        if *self == Map::IDENTITY {
            return;
        }
        match target {
            [_, 5] => {
                let mut kept: Vec<[f32; 5]> = Vec::new();
                for r in targets.chunks_exact(5).take_while(|r| r[0] >= 0.0) {
                    let (cx, cy) = (self.sx * r[1] + self.tx, self.sy * r[2] + self.ty);
                    let (bw, bh) = (self.sx.abs() * r[3], self.sy.abs() * r[4]);
                    let (x0, x1) = ((cx - bw / 2.0).max(0.0), (cx + bw / 2.0).min(1.0));
                    let (y0, y1) = ((cy - bh / 2.0).max(0.0), (cy + bh / 2.0).min(1.0));
                    let visible = (x1 - x0).max(0.0) * (y1 - y0).max(0.0);
                    if visible >= KEPT_SHARE * bw * bh && visible > 0.0 {
                        kept.push([r[0], (x0 + x1) / 2.0, (y0 + y1) / 2.0, x1 - x0, y1 - y0]);
                    }
                }
                for (k, row) in targets.chunks_exact_mut(5).enumerate() {
                    row.copy_from_slice(&kept.get(k).copied().unwrap_or([-1.0, 0.0, 0.0, 0.0, 0.0]));
                }
            }
            [_] => {
                for p in targets.chunks_exact_mut(2) {
                    p[0] = self.sx * p[0] + self.tx;
                    p[1] = self.sy * p[1] + self.ty;
                }
            }
            _ => {}
        }
    }
}

/// The eigen-decomposition of the training set's RGB covariance.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    /// Eigenvalues.
    pub values: [f32; 3],
    /// Eigenvectors, one per row.
    pub vectors: [[f32; 3]; 3],
}

/// A checked pipeline from the data's example shape to the model's input shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    /// The steps in order.
    pub steps: Vec<Step>,
    /// Shape of a data example `[h, w, c]` (or any shape when there are no steps).
    pub data: Vec<usize>,
    /// Shape of the model's input.
    pub input: Vec<usize>,
    /// Padding of the random crop, used by evaluation's centre and multi-crops.
    pub crop_pad: usize,
    /// The PCA of the training set's colours, when a step needs it.
    pub pca: Option<Pca>,
    /// Seed of the run.
    pub seed: u64,
}

/// `img` through `step` if it is a deterministic value step (normalize, scale); else unchanged.
fn values(step: &Step, mut img: Image) -> Image {
    match step {
        Step::Normalize { mean, std } => img.normalize(mean, std),
        Step::Scale { factor, offset } => img.data.iter_mut().for_each(|v| *v = *v * factor + offset),
        _ => {}
    }
    img
}

fn list(c: &FnCall, name: &str) -> Vec<f32> {
    c.numbers(name).into_iter().map(|x| x as f32).collect()
}

/// Turns checked `augment` calls into steps.
pub fn steps(calls: &[FnCall]) -> Vec<Step> {
    calls
        .iter()
        .filter_map(|c| {
            let p = c.num("p", 1.0);
            Some(match c.name.as_str() {
                "mirror" => Step::Mirror { p: c.num("p", 0.5) },
                "flip_vertical" => Step::FlipVertical { p: c.num("p", 0.5) },
                "random_crop" => {
                    Step::RandomCrop { size: c.num("size", 0.0) as usize, pad: c.num("pad", 0.0) as usize, p }
                }
                "random_resized_crop" => {
                    let s = list(c, "scale");
                    let scale = if s.len() == 2 { (f64::from(s[0]), f64::from(s[1])) } else { (0.08, 1.0) };
                    Step::RandomResizedCrop { size: c.num("size", 0.0) as usize, scale, p }
                }
                "rotate" => Step::Rotate { degrees: c.num("degrees", 0.0), p },
                "shear" => Step::Shear { degrees: c.num("degrees", 0.0), p },
                "warp" => Step::Warp { alpha: c.num("alpha", 0.0), sigma: c.num("sigma", 1.0), p },
                "color_shift" => Step::ColorShift { max: c.num("max", 0.0), p },
                "pca_color" => Step::PcaColor { std: c.num("std", 0.1), p },
                "brightness" => Step::Brightness { max: c.num("max", 0.0), p },
                "contrast" => Step::Contrast { max: c.num("max", 0.0), p },
                "normalize" => Step::Normalize { mean: list(c, "mean"), std: list(c, "std") },
                "scale" => Step::Scale { factor: c.num("factor", 1.0) as f32, offset: c.num("offset", 0.0) as f32 },
                _ => return None,
            })
        })
        .collect()
}

/// The covariance of all pixels' colours in `split` (examples of shape `[h, w, 3]`) and its
/// eigen-decomposition, largest eigenvalue first.
pub fn pca(split: &Split) -> Pca {
    let mut mean = [0f64; 3];
    let pixels = split.x.len() / 3;
    for px in split.x.chunks_exact(3) {
        for (m, &v) in mean.iter_mut().zip(px) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= pixels.max(1) as f64);
    let mut cov = nalgebra::Matrix3::<f64>::zeros();
    for px in split.x.chunks_exact(3) {
        let d =
            nalgebra::Vector3::new(f64::from(px[0]) - mean[0], f64::from(px[1]) - mean[1], f64::from(px[2]) - mean[2]);
        cov += d * d.transpose();
    }
    cov /= (pixels.max(2) - 1) as f64;
    let eig = nalgebra::SymmetricEigen::new(cov);
    let mut order = [0usize, 1, 2];
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut values = [0f32; 3];
    let mut vectors = [[0f32; 3]; 3];
    for (i, &j) in order.iter().enumerate() {
        values[i] = eig.eigenvalues[j].max(0.0) as f32;
        for (k, v) in vectors[i].iter_mut().enumerate() {
            *v = eig.eigenvectors[(k, j)] as f32;
        }
    }
    Pca { values, vectors }
}

impl Pipeline {
    /// Checks `steps` against the data's example shape and the model's input; computes the PCA
    /// of the training colours once if a step needs it.
    pub fn new(
        steps: Vec<Step>,
        data: &[usize],
        input: &[usize],
        train: &Split,
        seed: u64,
    ) -> Result<Pipeline, DataError> {
        let mut shape = data.to_vec();
        let mut crop_pad = 0;
        // Crops must fit what they crop (the checker knows the examples' size only for some
        // sources; image folders say it when read).
        let too_big = |size: usize, shape: &[usize], pad: usize| {
            DataError::Unsupported {
            what: format!(
                "a {size}×{size} crop does not fit in the {}×{} examples{}: evaluation takes a centre crop of that size",
                shape[0],
                shape[1],
                if pad > 0 { format!(" padded by {pad}") } else { String::new() }
            ),
        }
        };
        for step in &steps {
            if let Step::RandomCrop { size, pad, .. } = step {
                crop_pad = *pad;
                if shape.len() == 3 {
                    if *size > shape[0] + 2 * pad || *size > shape[1] + 2 * pad {
                        return Err(too_big(*size, &shape, *pad));
                    }
                    shape = vec![*size, *size, shape[2]];
                }
            }
            if let Step::RandomResizedCrop { size, .. } = step {
                if shape.len() == 3 {
                    if *size > shape[0] || *size > shape[1] {
                        return Err(too_big(*size, &shape, 0));
                    }
                    shape = vec![*size, *size, shape[2]];
                }
            }
        }
        if shape != input {
            return Err(DataError::Shape {
                what: "the data after augmentation".into(),
                expected: input.to_vec(),
                found: shape,
            });
        }
        // Evaluation takes one centre crop of the input's size from the example padded by the
        // last crop's padding: a chain of crops must leave that possible.
        if let (&[h, w, _], &[ih, iw, _]) = (data, input) {
            if ih > h + 2 * crop_pad || iw > w + 2 * crop_pad {
                return Err(too_big(ih.max(iw), data, crop_pad));
            }
        }
        let pca = steps.iter().any(|s| matches!(s, Step::PcaColor { .. })).then(|| pca(train));
        Ok(Pipeline { steps, data: data.to_vec(), input: input.to_vec(), crop_pad, pca, seed })
    }

    /// The data as evaluation sees it: test examples centre-cropped and normalized, of the
    /// model's input shape (training examples are augmented per batch by the loader instead).
    pub fn for_eval(&self, data: &Dataset) -> Dataset {
        let f = data.features();
        let mut x = Vec::new();
        for example in data.test.x.chunks(f.max(1)) {
            x.extend(self.eval(example));
        }
        let mut test = data.test.with_x(x);
        let (map, per) = (self.eval_map(), test.target_len());
        if per > 0 {
            test.t.chunks_exact_mut(per).for_each(|t| map.move_targets(t, &data.target));
        }
        Dataset { train: Split::default(), test, shape: self.input.clone(), ..data.clone() }
    }

    /// [`Pipeline::for_eval`] with `views` views of each test example of class data: the centre
    /// view, then `views − 1` augmented as in training (drawn by example and view, the same every
    /// run), each with the example's class. Verification and one-shot identification then have
    /// positives for identities of one image (`views` in a train section).
    pub fn for_eval_views(&self, data: &Dataset, views: usize) -> Dataset {
        let eval = self.for_eval(data);
        if views <= 1 || data.test.target_len() > 0 {
            return eval;
        }
        let f = data.features();
        let n = data.test.len();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (i, example) in data.test.x.chunks(f.max(1)).enumerate() {
            let centre = eval.test.x.chunks(eval.features().max(1)).nth(i).unwrap_or_default();
            x.extend_from_slice(centre);
            for v in 1..views {
                let mut rng = self.rng(usize::MAX, i + v * n);
                x.extend(self.train(example, &mut rng));
            }
            y.extend(std::iter::repeat_n(data.test.y[i], views));
        }
        Dataset { test: Split { x, y, ..Split::default() }, ..eval }
    }

    /// A grid of augmented training examples (`rows × cols` of the first examples, each
    /// min–max scaled), written as a PNG. Grey for one channel, RGB for three.
    pub fn preview(&self, data: &Dataset, rows: usize, cols: usize, path: &std::path::Path) -> Result<(), String> {
        let [h, w, c] = self.input[..] else {
            return Err(format!("previews show images; the input is {:?}", self.input));
        };
        if c != 1 && c != 3 {
            return Err(format!("previews show grey or RGB images; the input has {c} channels"));
        }
        // Boxes and points are drawn in red over the examples, in colour.
        let per = data.train.target_len();
        let oc = if per > 0 { 3 } else { c };
        let gap = 2;
        let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
        let mut grid = vec![255u8; gw * gh * oc];
        let f = data.features();
        let n = data.train.len().min(rows * cols);
        for i in 0..n {
            let mut rng = self.rng(0, i);
            let mut t = data.train.t[i * per..(i + 1) * per].to_vec();
            let img = self.train_moving(&data.train.x[i * f..(i + 1) * f], &mut t, &data.target, &mut rng);
            let (lo, hi) = img.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            let range = (hi - lo).max(1e-6);
            let (oy, ox) = (gap + (i / cols) * (h + gap), gap + (i % cols) * (w + gap));
            for y in 0..h {
                for x in 0..w {
                    for k in 0..oc {
                        let v = (img[(y * w + x) * c + k.min(c - 1)] - lo) / range;
                        grid[((oy + y) * gw + ox + x) * oc + k] = (v * 255.0).round() as u8;
                    }
                }
            }
            if per == 0 {
                continue;
            }
            let mut pen = crate::detect::Pen { rgb: &mut grid, stride: gw, left: ox, top: oy, w, h };
            let red = [230, 30, 30];
            match data.target[..] {
                [_, 5] => {
                    for r in t.chunks_exact(5).take_while(|r| r[0] >= 0.0) {
                        let (x0, x1) = ((r[1] - r[3] / 2.0) * w as f32, (r[1] + r[3] / 2.0) * w as f32 - 0.5);
                        let (y0, y1) = ((r[2] - r[4] / 2.0) * h as f32, (r[2] + r[4] / 2.0) * h as f32 - 0.5);
                        pen.rectangle([x0, y0, x1, y1].map(|v| v.floor() as i64), 1, red);
                    }
                }
                [_] => {
                    for p in t.chunks_exact(2) {
                        let (x, y) = ((p[0] * w as f32).floor() as i64, (p[1] * h as f32).floor() as i64);
                        for (dx, dy) in [(0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)] {
                            pen.put(x + dx, y + dy, red);
                        }
                    }
                }
                _ => {}
            }
        }
        crate::atomic::write_png(path, &grid, gw, gh, oc)
    }

    /// Whether examples pass through unchanged.
    pub fn is_identity(&self) -> bool {
        self.steps.is_empty()
    }

    /// The random stream of example `index` in `epoch`.
    pub fn rng(&self, epoch: usize, index: usize) -> ChaCha8Rng {
        let key = self.seed
            ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        ChaCha8Rng::seed_from_u64(key)
    }

    /// Augments one training example.
    pub fn train(&self, example: &[f32], rng: &mut impl Rng) -> Vec<f32> {
        self.train_moving(example, &mut [], &[], rng)
    }

    /// Augments one training example and moves its targets with its pixels: boxes
    /// (`target` = `[objects, 5]`: rows `class, cx, cy, w, h`, clipped to the new image and
    /// dropped when less than 40 % of a box stays in it) or points (`[2k]`).
    pub fn train_moving(&self, example: &[f32], targets: &mut [f32], target: &[usize], rng: &mut impl Rng) -> Vec<f32> {
        if self.steps.is_empty() {
            return example.to_vec();
        }
        let [h, w, c] = self.data[..] else { return example.to_vec() };
        let mut img = Image { h, w, c, data: example.to_vec() };
        let mut map = Map::IDENTITY;
        for step in &self.steps {
            let (next, m) = self.apply(step, img, rng);
            img = next;
            map = m.after(map);
        }
        map.move_targets(targets, target);
        img.data
    }

    /// The map of the evaluation's centre crop (of the padded example) to the input size.
    pub fn eval_map(&self) -> Map {
        let (&[h, w, _], &[ih, iw, _]) = (&self.data[..], &self.input[..]) else { return Map::IDENTITY };
        let (ph, pw) = (h + 2 * self.crop_pad, w + 2 * self.crop_pad);
        let (y, x) = ((ph - ih) / 2, (pw - iw) / 2);
        let pad = self.crop_pad as f32;
        Map {
            sx: w as f32 / iw as f32,
            tx: (pad - x as f32) / iw as f32,
            sy: h as f32 / ih as f32,
            ty: (pad - y as f32) / ih as f32,
        }
    }

    /// The deterministic version of a test example: centre crop (of the padded example) to the
    /// input size, then normalization.
    pub fn eval(&self, example: &[f32]) -> Vec<f32> {
        self.crops(example, 1).into_iter().next().unwrap_or_default()
    }

    /// Test-time crops of the input's size from the example padded as for training: 1 (centre),
    /// 5 (four corners and centre) or 10 (and their mirrors). Each is normalized.
    pub fn crops(&self, example: &[f32], count: usize) -> Vec<Vec<f32>> {
        let (&[h, w, c], &[ih, iw, _]) = (&self.data[..], &self.input[..]) else {
            return vec![example.to_vec()];
        };
        let padded = Image { h, w, c, data: example.to_vec() }.pad(self.crop_pad);
        let (ph, pw) = (padded.h, padded.w);
        let centre = ((ph - ih) / 2, (pw - iw) / 2);
        let mut corners = vec![centre];
        if count >= 5 {
            corners = vec![(0, 0), (0, pw - iw), (ph - ih, 0), (ph - ih, pw - iw), centre];
        }
        let mut out: Vec<Image> = corners.iter().map(|&(y, x)| padded.crop(y, x, ih, iw)).collect();
        if count >= 10 {
            let mirrored: Vec<Image> = out.iter().map(Image::mirror).collect();
            out.extend(mirrored);
        }
        out.into_iter().map(|img| self.normalized(img).data).collect()
    }

    /// `img` through the deterministic value steps (normalization, scaling), in order.
    fn normalized(&self, mut img: Image) -> Image {
        for step in &self.steps {
            img = values(step, img);
        }
        img
    }

    fn apply(&self, step: &Step, img: Image, rng: &mut impl Rng) -> (Image, Map) {
        let p = match step {
            Step::Normalize { .. } | Step::Scale { .. } => return (values(step, img), Map::IDENTITY),
            Step::Mirror { p }
            | Step::FlipVertical { p }
            | Step::RandomCrop { p, .. }
            | Step::RandomResizedCrop { p, .. }
            | Step::Rotate { p, .. }
            | Step::Shear { p, .. }
            | Step::Warp { p, .. }
            | Step::ColorShift { p, .. }
            | Step::PcaColor { p, .. }
            | Step::Brightness { p, .. }
            | Step::Contrast { p, .. } => *p,
        };
        let apply = rng.random::<f64>() < p;
        let (h, w) = (img.h as f32, img.w as f32);
        let moved = match step {
            // Crops always change the size; with probability 1 − p they take the centre.
            Step::RandomCrop { size, pad, .. } => {
                let padded = img.pad(*pad);
                let (dy, dx) = (padded.h - size, padded.w - size);
                let (y, x) =
                    if apply { (rng.random_range(0..=dy), rng.random_range(0..=dx)) } else { (dy / 2, dx / 2) };
                let s = *size as f32;
                let map =
                    Map { sx: w / s, tx: (*pad as f32 - x as f32) / s, sy: h / s, ty: (*pad as f32 - y as f32) / s };
                return (padded.crop(y, x, *size, *size), map);
            }
            Step::RandomResizedCrop { size, scale, .. } => {
                let (mut ch, mut cw, mut y, mut x) = (img.h, img.w, 0, 0);
                if apply {
                    let area = (img.h * img.w) as f64 * rng.random_range(scale.0..=scale.1);
                    let ratio = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
                    cw = ((area * ratio).sqrt().round() as usize).clamp(1, img.w);
                    ch = ((area / ratio).sqrt().round() as usize).clamp(1, img.h);
                    y = rng.random_range(0..=img.h - ch);
                    x = rng.random_range(0..=img.w - cw);
                }
                let (fh, fw) = (ch as f32, cw as f32);
                let map = Map { sx: w / fw, tx: -(x as f32) / fw, sy: h / fh, ty: -(y as f32) / fh };
                return (img.crop(y, x, ch, cw).resize(*size, *size), map);
            }
            _ if !apply => return (img, Map::IDENTITY),
            Step::Mirror { .. } => return (img.mirror(), Map { sx: -1.0, tx: 1.0, ..Map::IDENTITY }),
            Step::FlipVertical { .. } => return (img.flip_vertical(), Map { sy: -1.0, ty: 1.0, ..Map::IDENTITY }),
            _ => img,
        };
        let img = moved;
        let out = match step {
            Step::Rotate { degrees, .. } => {
                let angle = rng.random_range(-degrees..=*degrees).to_radians();
                geometry::rotate(&img, angle)
            }
            Step::Shear { degrees, .. } => {
                let t = rng.random_range(-degrees..=*degrees).to_radians().tan();
                let cy = (img.h as f64 - 1.0) / 2.0;
                // Output (y, x) reads input (y, x + t·(y − cy)).
                affine(&img, [[1.0, 0.0, 0.0], [t, 1.0, -t * cy]])
            }
            Step::Warp { alpha, sigma, .. } => elastic(&img, *alpha, *sigma, rng),
            Step::ColorShift { max, .. } => {
                let offsets: Vec<f32> = (0..img.c).map(|_| rng.random_range(-max..=*max) as f32).collect();
                img.map_channels(|c, v| v + offsets[c])
            }
            Step::PcaColor { std, .. } => {
                let Some(pca) = &self.pca else { return (img, Map::IDENTITY) };
                let normal =
                    Normal::new(0.0, *std as f32).unwrap_or_else(|_| Normal::new(0.0, 0.0).expect("zero deviation"));
                let alpha: Vec<f32> = (0..3).map(|_| normal.sample(rng)).collect();
                let shift: Vec<f32> =
                    (0..3).map(|k| (0..3).map(|i| alpha[i] * pca.values[i] * pca.vectors[i][k]).sum()).collect();
                img.map_channels(|c, v| v + shift[c % 3])
            }
            Step::Brightness { max, .. } => {
                let b = rng.random_range(-max..=*max) as f32;
                img.map_channels(|_, v| v + b)
            }
            Step::Contrast { max, .. } => {
                let f = rng.random_range(1.0 - max..=1.0 + max) as f32;
                let mean = img.data.iter().sum::<f32>() / img.data.len().max(1) as f32;
                img.map_channels(|_, v| (v - mean) * f + mean)
            }
            _ => img,
        };
        // The steps left change values only, or move pixels in ways boxes and points cannot
        // follow (rotation, shear, warp: refused on such data by the checker).
        (out, Map::IDENTITY)
    }
}
