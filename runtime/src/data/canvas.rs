//! A detection dataset made from MNIST (`cnnc data mnist-detection`): digits scaled and placed
//! on larger black canvases, several per canvas, some overlapping a little, some cut by the
//! border, written in the layout [`super::detection`] reads (`images/` and `labels/` with YOLO
//! text files). The training canvases take the training digits, the test canvases the test
//! digits, so the held-out split holds digits no model has seen. The same options and MNIST files
//! give the same bytes.

use super::{idx, DataError, Split};
use crate::augment::Image;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct CanvasOptions {
    /// Canvas side in pixels.
    pub size: usize,
    /// Training and test canvases.
    pub train: usize,
    pub test: usize,
    /// Digits per canvas: from `least` to `most` (a canvas of none is background).
    pub least: usize,
    pub most: usize,
    /// Side of a placed digit's 28 × 28 frame, in pixels: from `smallest` to `largest`.
    pub smallest: usize,
    pub largest: usize,
    /// Fixes every random choice.
    pub seed: u64,
    /// Also write `landmarks.csv` in each split: the digit's four extreme points of ink (needs
    /// one digit a canvas).
    pub landmarks: bool,
}

impl Default for CanvasOptions {
    fn default() -> Self {
        CanvasOptions {
            size: 64,
            train: 30000,
            test: 500,
            least: 1,
            most: 4,
            smallest: 18,
            largest: 34,
            seed: 0,
            landmarks: false,
        }
    }
}

/// What was written: canvases and objects per split.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Written {
    pub train: (usize, usize),
    pub test: (usize, usize),
}

/// A pixel brighter than this (MNIST's values are read into [0, 1]) belongs to a digit's box.
const INK: f32 = 40.0 / 255.0;
/// Most overlap (IoU) a new digit's box may have with one already placed.
const MOST_OVERLAP: f32 = 0.25;
/// Most share of the smaller of two boxes that the other may cover.
const MOST_COVERED: f32 = 0.4;
/// Least share of a digit's box that stays on the canvas.
const LEAST_VISIBLE: f32 = 0.6;

/// Generates the dataset from the MNIST files in `mnist` into `out` (`out/train`, `out/test`).
/// It is made in `out.partial` and renamed into place, so `out` is whole or absent; an `out`
/// that exists must be one this command made (it is replaced).
pub fn mnist_detection(mnist: &Path, out: &Path, o: &CanvasOptions) -> Result<Written, DataError> {
    let bad = |what: String| DataError::Unsupported { what };
    if o.size < 8 || o.size > 4096 {
        return Err(bad(format!("a canvas of {} pixels: give a size from 8 to 4096", o.size)));
    }
    if o.smallest < 4 || o.smallest > o.largest || o.largest > o.size {
        return Err(bad(format!(
            "digit sizes from {} to {} pixels on a canvas of {}: give 4 ≤ smallest ≤ largest ≤ size",
            o.smallest, o.largest, o.size
        )));
    }
    if o.most == 0 || o.most > 64 || o.least > o.most || o.train == 0 || o.test == 0 {
        return Err(bad(format!(
            "{} to {} digits a canvas, {} and {} canvases: give at least one training and one test canvas, and \
             0 ≤ least ≤ most ≤ 64 digits with most ≥ 1",
            o.least, o.most, o.train, o.test
        )));
    }
    if o.landmarks && (o.least, o.most) != (1, 1) {
        return Err(bad(format!(
            "landmarks are one digit's: give --least 1 --most 1 with --landmarks (not {} to {})",
            o.least, o.most
        )));
    }
    if out.exists() && !(out.join("train").join("images").is_dir() || is_empty_dir(out)) {
        return Err(bad(format!(
            "`{}` exists and is not a dataset this command made: give a new folder",
            out.display()
        )));
    }
    let (train_digits, test_digits) = idx::mnist(mnist, 0, 0)?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let io = |path: &Path, e: std::io::Error| DataError::Io { path: path.to_path_buf(), error: e.to_string() };
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| io(&partial, e))?;
    }
    let mut written = Written::default();
    for (name, digits, count, salt) in [("train", &train_digits, o.train, 1u64), ("test", &test_digits, o.test, 2)] {
        let dir = partial.join(name);
        for sub in ["images", "labels"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(&dir.join(sub), e))?;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(o.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt);
        let mut objects = 0;
        let mut csv = String::from("image,top_x,top_y,bottom_x,bottom_y,left_x,left_y,right_x,right_y\n");
        for k in 0..count {
            let (pixels, lines) = canvas(digits, o, &mut rng);
            objects += lines.len();
            let stem = format!("{k:05}");
            if o.landmarks {
                // (Placement gives up after 50 tries: a canvas may, rarely, hold no digit.)
                let points = extremes(&pixels, o.size).ok_or_else(|| {
                    bad(format!(
                        "canvas {k} of {name} holds no digit to place landmarks on: give digits that fit the canvas \
                         (--smallest, --largest)"
                    ))
                })?;
                let values: Vec<String> = points.iter().flatten().map(|v| format!("{v:.1}")).collect();
                csv.push_str(&format!("images/{stem}.png,{}\n", values.join(",")));
            }
            let png = dir.join("images").join(format!("{stem}.png"));
            image::save_buffer(&png, &pixels, o.size as u32, o.size as u32, image::ExtendedColorType::L8)
                .map_err(|e| DataError::Io { path: png.clone(), error: e.to_string() })?;
            let txt = dir.join("labels").join(format!("{stem}.txt"));
            std::fs::write(&txt, lines.concat()).map_err(|e| io(&txt, e))?;
        }
        if o.landmarks {
            std::fs::write(dir.join("landmarks.csv"), &csv).map_err(|e| io(&dir.join("landmarks.csv"), e))?;
        }
        if name == "train" {
            written.train = (count, objects);
        } else {
            written.test = (count, objects);
        }
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| io(out, e))?;
    }
    std::fs::rename(&partial, out).map_err(|e| io(out, e))?;
    Ok(written)
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none())
}

/// One canvas: its pixels and its label lines.
fn canvas(digits: &Split, o: &CanvasOptions, rng: &mut ChaCha8Rng) -> (Vec<u8>, Vec<String>) {
    let size = o.size as i64;
    let mut pixels = vec![0f32; o.size * o.size];
    let mut boxes: Vec<[f32; 4]> = Vec::new();
    let mut lines = Vec::new();
    let wanted = rng.random_range(o.least..=o.most);
    let mut attempts = 0;
    while boxes.len() < wanted && attempts < 50 * wanted {
        attempts += 1;
        let i = rng.random_range(0..digits.len());
        let side = rng.random_range(o.smallest..=o.largest);
        let raw = Image { h: 28, w: 28, c: 1, data: digits.x[i * 784..(i + 1) * 784].to_vec() };
        let digit = crate::preprocess::resize(&raw, side, side);
        let Some([x0, y0, x1, y1]) = ink_box(&digit) else { continue };
        // The frame's corner: the digit may reach past the border by up to 30 % of its box.
        let (bw, bh) = ((x1 - x0) as i64, (y1 - y0) as i64);
        let (lo_x, hi_x) = (-(x0 as i64) - bw * 3 / 10, size - x1 as i64 + bw * 3 / 10);
        let (lo_y, hi_y) = (-(y0 as i64) - bh * 3 / 10, size - y1 as i64 + bh * 3 / 10);
        if lo_x > hi_x || lo_y > hi_y {
            continue;
        }
        let (left, top) = (rng.random_range(lo_x..=hi_x), rng.random_range(lo_y..=hi_y));
        let full =
            [(left + x0 as i64) as f32, (top + y0 as i64) as f32, (left + x1 as i64) as f32, (top + y1 as i64) as f32];
        let clipped = [full[0].max(0.0), full[1].max(0.0), full[2].min(size as f32), full[3].min(size as f32)];
        let area = |b: &[f32; 4]| (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
        if area(&clipped) < LEAST_VISIBLE * area(&full) {
            continue;
        }
        // Overlaps stay small, and no digit hides much of another.
        let covered = |b: &[f32; 4]| {
            let inter = (b[2].min(clipped[2]) - b[0].max(clipped[0])).max(0.0)
                * (b[3].min(clipped[3]) - b[1].max(clipped[1])).max(0.0);
            inter / area(b).min(area(&clipped)).max(1.0)
        };
        if boxes.iter().any(|b| crate::detect::iou(b, &clipped) > MOST_OVERLAP || covered(b) > MOST_COVERED) {
            continue;
        }
        for y in 0..side {
            for x in 0..side {
                let (cy, cx) = (top + y as i64, left + x as i64);
                if (0..size).contains(&cy) && (0..size).contains(&cx) {
                    let p = &mut pixels[(cy * size + cx) as usize];
                    *p = p.max(digit.data[y * side + x]);
                }
            }
        }
        let s = size as f32;
        let (cx, cy) = ((clipped[0] + clipped[2]) / 2.0 / s, (clipped[1] + clipped[3]) / 2.0 / s);
        let (w, h) = ((clipped[2] - clipped[0]) / s, (clipped[3] - clipped[1]) / s);
        lines.push(format!("{} {cx:.6} {cy:.6} {w:.6} {h:.6}\n", digits.y[i]));
        boxes.push(clipped);
    }
    (pixels.iter().map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8).collect(), lines)
}

/// The four extreme points of a canvas's ink: the first inked pixel from the top, the bottom,
/// the left and the right, as `(x, y)` of their centres, in pixels.
fn extremes(pixels: &[u8], size: usize) -> Option<[[f32; 2]; 4]> {
    let ink: Vec<(usize, usize)> =
        (0..size * size).filter(|&i| f32::from(pixels[i]) > INK * 255.0).map(|i| (i % size, i / size)).collect();
    let centre = |(x, y): (usize, usize)| [x as f32 + 0.5, y as f32 + 0.5];
    let top = *ink.iter().min_by_key(|p| (p.1, p.0))?;
    let bottom = *ink.iter().max_by_key(|p| (p.1, std::cmp::Reverse(p.0)))?;
    let left = *ink.iter().min_by_key(|p| (p.0, p.1))?;
    let right = *ink.iter().max_by_key(|p| (p.0, std::cmp::Reverse(p.1)))?;
    Some([centre(top), centre(bottom), centre(left), centre(right)])
}

/// The smallest box `[x0, y0, x1, y1)` holding the digit's ink, in its pixels.
fn ink_box(img: &Image) -> Option<[usize; 4]> {
    let mut b: Option<[usize; 4]> = None;
    for y in 0..img.h {
        for x in 0..img.w {
            if img.data[y * img.w + x] > INK {
                let r = b.get_or_insert([x, y, x + 1, y + 1]);
                *r = [r[0].min(x), r[1].min(y), r[2].max(x + 1), r[3].max(y + 1)];
            }
        }
    }
    b
}

/// Sizes `(w, h)` in cells of a `rows × cols` grid of every box in the training labels of a
/// detection folder (`dir/labels/*.txt`), for [`crate::detect::kmeans_anchors`].
pub fn box_sizes(dir: &Path, rows: usize, cols: usize) -> Result<Vec<[f32; 2]>, DataError> {
    let labels = dir.join("labels");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&labels)
        .map_err(|e| DataError::Io { path: labels.clone(), error: e.to_string() })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut sizes = Vec::new();
    for f in files {
        let (objects, _) = super::detection::read_labels(&f)?;
        sizes.extend(objects.iter().map(|o| [o[3] * cols as f32, o[4] * rows as f32]));
    }
    if sizes.is_empty() {
        return Err(DataError::Empty { path: labels });
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ink_box_is_tight() {
        let mut img = Image { h: 5, w: 6, c: 1, data: vec![0.0; 30] };
        img.data[6 + 2] = 1.0;
        img.data[3 * 6 + 4] = 0.4;
        assert_eq!(ink_box(&img), Some([2, 1, 5, 4]));
        assert_eq!(ink_box(&Image { h: 2, w: 2, c: 1, data: vec![0.1; 4] }), None);
    }

    #[test]
    fn extremes_of_ink() {
        let mut px = vec![0u8; 25];
        for (x, y) in [(2, 0), (1, 2), (4, 2), (3, 4)] {
            px[y * 5 + x] = 255;
        }
        assert_eq!(extremes(&px, 5), Some([[2.5, 0.5], [3.5, 4.5], [1.5, 2.5], [4.5, 2.5]]));
        assert_eq!(extremes(&[0u8; 4], 2), None);
    }

    #[test]
    fn canvases_hold_their_digits() {
        // Synthetic "digits": a filled square, class = index.
        let mut digits = Split::default();
        for k in 0..3 {
            let mut x = vec![0.0; 784];
            for y in 4..24 {
                for c in 8..20 {
                    x[y * 28 + c] = 1.0;
                }
            }
            digits.x.extend(x);
            digits.y.push(k);
        }
        let o = CanvasOptions { size: 48, most: 3, smallest: 14, largest: 20, ..CanvasOptions::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let (pixels, lines) = canvas(&digits, &o, &mut rng);
            assert!(!lines.is_empty() && lines.len() <= 3);
            for line in &lines {
                let v: Vec<f32> = line.split_whitespace().map(|f| f.parse().unwrap()).collect();
                let (x0, y0) =
                    (((v[1] - v[3] / 2.0) * 48.0).round() as usize, ((v[2] - v[4] / 2.0) * 48.0).round() as usize);
                let (x1, y1) =
                    (((v[1] + v[3] / 2.0) * 48.0).round() as usize, ((v[2] + v[4] / 2.0) * 48.0).round() as usize);
                assert!(x1 <= 48 && y1 <= 48 && x0 < x1 && y0 < y1, "{line}");
                // Ink inside the box, on each of its edges' rows and columns.
                let ink = |x: usize, y: usize| pixels[y * 48 + x] as f32 > INK * 255.0;
                assert!((x0..x1).any(|x| ink(x, y0)) && (x0..x1).any(|x| ink(x, y1 - 1)), "{line}");
                assert!((y0..y1).any(|y| ink(x0, y)) && (y0..y1).any(|y| ink(x1 - 1, y)), "{line}");
            }
        }
    }
}
