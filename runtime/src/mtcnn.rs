//! MTCNN's cascade (Zhang et al., 2016), as facenet-pytorch runs it: PNet slid over an image
//! pyramid (its convolutional form: one run per scale gives a face probability and a box
//! correction for every 12 × 12 window, 2 pixels apart), non-max suppression within and across
//! scales, then RNet on 24 × 24 and ONet on 48 × 48 crops of the surviving boxes, each refining
//! them; ONet also places five landmarks (eyes, nose, mouth corners). The three networks are
//! cnnc models ([`Net`]); this is the driver around them.

use crate::backend::Backend;
use crate::params::Params;
use crate::reference::Tensor;
use cnnc_compiler::ir::Graph;

/// One network of the cascade: its inference graph and weights.
pub struct Net {
    pub graph: Graph,
    pub params: Params,
}

impl Net {
    /// The outputs `face` (softmax of the two scores: the face probability is the second) and
    /// `box` (and `landmarks`, for ONet) of a batch `[n, h, w, 3]`, with the graph slid to the
    /// batch's size when it differs from the model's.
    fn run(&self, x: Tensor, backend: Backend) -> Result<Vec<(String, Tensor)>, String> {
        let out =
            crate::predict::outputs_at_size(&self.graph, &self.params, x.view(), backend).map_err(|e| e.to_string())?;
        Ok(out
            .into_iter()
            .map(|(name, v)| if name == "face" { (name, crate::reference::softmax(&v.view())) } else { (name, v) })
            .collect())
    }
}

/// The three networks.
pub struct Cascade {
    pub pnet: Net,
    pub rnet: Net,
    pub onet: Net,
}

/// The cascade's settings (facenet-pytorch's defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// The smallest face looked for, in pixels.
    pub min_face: f32,
    /// Ratio between the pyramid's scales.
    pub factor: f32,
    /// Face probabilities each network's boxes must reach.
    pub thresholds: [f32; 3],
    pub backend: Backend,
}

impl Default for Options {
    fn default() -> Self {
        Options { min_face: 20.0, factor: 0.709, thresholds: [0.6, 0.7, 0.7], backend: Backend::default() }
    }
}

/// A face: its box in pixels `[x1, y1, x2, y2]`, its probability, and five landmarks (left eye,
/// right eye, nose, left and right mouth corners) as `(x, y)` pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Face {
    pub corners: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

/// A candidate box: corners, score, and the network's correction of it.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    b: [f32; 4],
    score: f32,
    reg: [f32; 4],
}

/// An RGB image as 0–255 values `[h, w, 3]`.
pub struct Picture {
    pub h: usize,
    pub w: usize,
    pub data: Vec<f32>,
}

/// The faces in `img`.
pub fn detect(nets: &Cascade, img: &Picture, o: &Options) -> Result<Vec<Face>, String> {
    // The pyramid in f64, as facenet-pytorch computes it in Python.
    let (h, w) = (img.h as f64, img.w as f64);
    // From 12/min_face (the smallest face fills PNet's window) down by `factor` while the image
    // still holds a window.
    let m = 12.0 / f64::from(o.min_face);
    let mut side = h.min(w) * m;
    let mut scale = m;
    let mut all: Vec<Candidate> = Vec::new();
    while side >= 12.0 {
        let (hs, ws) = ((h * scale + 1.0) as usize, (w * scale + 1.0) as usize);
        let x = normalized(&area_resize(img, 0, 0, img.h, img.w, hs, ws), hs, ws)?;
        let out = nets.pnet.run(x, o.backend)?;
        let (face, reg) = (output(&out, "face")?, output(&out, "box")?);
        // A map `[1, oh, ow, 2]`, or `[1, 2]` when the scaled image is PNet's own 12 × 12.
        let (oh, ow) = if face.ndim() == 4 { (face.shape()[1], face.shape()[2]) } else { (1, 1) };
        let (pf, pr): (Vec<f32>, Vec<f32>) = (face.iter().copied().collect(), reg.iter().copied().collect());
        let mut here = Vec::new();
        for y in 0..oh {
            for x in 0..ow {
                let k = y * ow + x;
                let p = pf[k * 2 + 1];
                if p >= o.thresholds[0] {
                    let (bx, by) = (x as f64, y as f64);
                    let b = [
                        ((2.0 * bx + 1.0) / scale).floor() as f32,
                        ((2.0 * by + 1.0) / scale).floor() as f32,
                        ((2.0 * bx + 12.0) / scale).floor() as f32,
                        ((2.0 * by + 12.0) / scale).floor() as f32,
                    ];
                    here.push(Candidate { b, score: p, reg: [pr[k * 4], pr[k * 4 + 1], pr[k * 4 + 2], pr[k * 4 + 3]] });
                }
            }
        }
        all.extend(nms(here, 0.5, false));
        scale *= f64::from(o.factor);
        side *= f64::from(o.factor);
    }
    let mut boxes = nms(all, 0.7, false);
    // PNet's correction, in units of the box's size, then square boxes.
    for c in &mut boxes {
        let (bw, bh) = (c.b[2] - c.b[0], c.b[3] - c.b[1]);
        c.b = [c.b[0] + c.reg[0] * bw, c.b[1] + c.reg[1] * bh, c.b[2] + c.reg[2] * bw, c.b[3] + c.reg[3] * bh];
        c.b = square(c.b);
    }
    // RNet on 24 × 24 crops.
    if !boxes.is_empty() {
        let out = nets.rnet.run(crops(img, &boxes, 24)?, o.backend)?;
        let (face, reg) = (output(&out, "face")?, output(&out, "box")?);
        let (pf, pr): (Vec<f32>, Vec<f32>) = (face.iter().copied().collect(), reg.iter().copied().collect());
        let kept: Vec<Candidate> = boxes
            .iter()
            .enumerate()
            .filter(|(k, _)| pf[k * 2 + 1] > o.thresholds[1])
            .map(|(k, c)| Candidate {
                b: c.b,
                score: pf[k * 2 + 1],
                reg: [pr[k * 4], pr[k * 4 + 1], pr[k * 4 + 2], pr[k * 4 + 3]],
            })
            .collect();
        boxes = nms(kept, 0.7, false);
        for c in &mut boxes {
            c.b = square(regress(c.b, c.reg));
        }
    }
    // ONet on 48 × 48 crops: the final boxes and the landmarks.
    let mut faces = Vec::new();
    if !boxes.is_empty() {
        let out = nets.onet.run(crops(img, &boxes, 48)?, o.backend)?;
        let (face, reg, marks) = (output(&out, "face")?, output(&out, "box")?, output(&out, "landmarks")?);
        let pf: Vec<f32> = face.iter().copied().collect();
        let pr: Vec<f32> = reg.iter().copied().collect();
        let pl: Vec<f32> = marks.iter().copied().collect();
        let mut kept = Vec::new();
        for (k, c) in boxes.iter().enumerate() {
            let p = pf[k * 2 + 1];
            if p <= o.thresholds[2] {
                continue;
            }
            let (bw, bh) = (c.b[2] - c.b[0] + 1.0, c.b[3] - c.b[1] + 1.0);
            let l = &pl[k * 10..(k + 1) * 10];
            let landmarks = std::array::from_fn(|i| [bw * l[i] + c.b[0] - 1.0, bh * l[5 + i] + c.b[1] - 1.0]);
            let reg = [pr[k * 4], pr[k * 4 + 1], pr[k * 4 + 2], pr[k * 4 + 3]];
            kept.push(Face { corners: regress(c.b, reg), score: p, landmarks });
        }
        // The last suppression counts overlap over the smaller box ("Min").
        let scores: Vec<f32> = kept.iter().map(|f| f.score).collect();
        let best = crate::detect::greedy(&scores, |k, i| overlap(&kept[k].corners, &kept[i].corners, true) > 0.7);
        faces.extend(best.into_iter().map(|i| kept[i].clone()));
    }
    Ok(faces)
}

fn output<'a>(out: &'a [(String, Tensor)], name: &str) -> Result<&'a Tensor, String> {
    out.iter().find(|(n, _)| n == name).map(|(_, t)| t).ok_or_else(|| format!("the network has no output `{name}`"))
}

/// `[1, h, w, 3]` of `(x − 127.5)/128`.
fn normalized(values: &[f32], h: usize, w: usize) -> Result<Tensor, String> {
    Tensor::from_shape_vec(vec![1, h, w, 3], values.iter().map(|v| (v - 127.5) * 0.0078125).collect())
        .map_err(|e| e.to_string())
}

/// The boxes' crops (zero outside the image, as facenet-pytorch's padding), each resized to
/// `size × size`: a batch `[n, size, size, 3]`, normalized.
fn crops(img: &Picture, boxes: &[Candidate], size: usize) -> Result<Tensor, String> {
    let mut all = Vec::with_capacity(boxes.len() * size * size * 3);
    for c in boxes {
        // facenet-pytorch's `pad`: corners truncated to integers and clamped to 1..=w, 1..=h
        // (1-based), then the crop `[y − 1, ey) × [x − 1, ex)`.
        let x = (c.b[0].trunc() as i64).max(1);
        let y = (c.b[1].trunc() as i64).max(1);
        let ex = (c.b[2].trunc() as i64).min(img.w as i64);
        let ey = (c.b[3].trunc() as i64).min(img.h as i64);
        if ex < x || ey < y {
            all.extend(std::iter::repeat_n(0.0, size * size * 3));
            continue;
        }
        let (x0, y0) = ((x - 1) as usize, (y - 1) as usize);
        all.extend(area_resize(img, y0, x0, ey as usize - y0, ex as usize - x0, size, size));
    }
    let n = boxes.len();
    Tensor::from_shape_vec(vec![n, size, size, 3], all.iter().map(|v| (v - 127.5) * 0.0078125).collect())
        .map_err(|e| e.to_string())
}

/// The `rows × cols` region at `(top, left)` of `img` resized to `h × w` by area averaging
/// (PyTorch's `interpolate(mode="area")`, adaptive average pooling): output pixel `i` averages
/// input pixels `floor(i·n/out) .. ceil((i+1)·n/out)`.
fn area_resize(img: &Picture, top: usize, left: usize, rows: usize, cols: usize, h: usize, w: usize) -> Vec<f32> {
    let span = |i: usize, n: usize, out: usize| (i * n / out, ((i + 1) * n).div_ceil(out));
    let mut out = Vec::with_capacity(h * w * 3);
    for i in 0..h {
        let (r0, r1) = span(i, rows, h);
        for j in 0..w {
            let (c0, c1) = span(j, cols, w);
            let mut sum = [0f32; 3];
            for r in r0..r1 {
                for c in c0..c1 {
                    let at = ((top + r) * img.w + left + c) * 3;
                    for (k, s) in sum.iter_mut().enumerate() {
                        *s += img.data[at + k];
                    }
                }
            }
            let count = ((r1 - r0) * (c1 - c0)).max(1) as f32;
            out.extend(sum.iter().map(|s| s / count));
        }
    }
    out
}

/// A box moved by a network's correction, in units of its size (pixels inclusive: `+1`).
fn regress(b: [f32; 4], reg: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0] + 1.0, b[3] - b[1] + 1.0);
    [b[0] + reg[0] * w, b[1] + reg[1] * h, b[2] + reg[2] * w, b[3] + reg[3] * h]
}

/// The square on the box's centre with its longer side.
fn square(b: [f32; 4]) -> [f32; 4] {
    let (w, h) = (b[2] - b[0], b[3] - b[1]);
    let l = w.max(h);
    let (x, y) = (b[0] + w * 0.5 - l * 0.5, b[1] + h * 0.5 - l * 0.5);
    [x, y, x + l, y + l]
}

/// Overlap of two boxes: IoU (as torchvision's `nms`), or with `min` the intersection over the
/// smaller box with inclusive pixel areas (facenet-pytorch's last suppression).
fn overlap(a: &[f32; 4], b: &[f32; 4], min: bool) -> f32 {
    if !min {
        return crate::detect::iou(a, b);
    }
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
    let area = |r: &[f32; 4]| (r[2] - r[0] + 1.0) * (r[3] - r[1] + 1.0);
    let smaller = area(a).min(area(b));
    if smaller > 0.0 {
        w * h / smaller
    } else {
        0.0
    }
}

fn nms(boxes: Vec<Candidate>, threshold: f32, min: bool) -> Vec<Candidate> {
    let scores: Vec<f32> = boxes.iter().map(|c| c.score).collect();
    let kept = crate::detect::greedy(&scores, |k, i| overlap(&boxes[k].b, &boxes[i].b, min) > threshold);
    kept.into_iter().map(|i| boxes[i]).collect()
}

/// `rgb` (`w × h`, 3 bytes a pixel) with each face's box (green, 3 pixels wide) and landmarks
/// (red) drawn.
pub fn draw(rgb: &[u8], w: usize, h: usize, faces: &[Face]) -> Vec<u8> {
    let mut out = rgb.to_vec();
    let mut pen = crate::detect::Pen::new(&mut out, w, h);
    for f in faces {
        let px = |v: f32, side: usize| v.clamp(0.0, side as f32).round() as i64;
        let c = f.corners;
        pen.rectangle([px(c[0], w), px(c[1], h), px(c[2], w), px(c[3], h)], 3, [40, 220, 40]);
        for &[x, y] in &f.landmarks {
            pen.dot(x.round() as i64, y.round() as i64, 2, [255, 40, 40]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_resize_averages_blocks() {
        // A 4 × 4 image of one channel repeated, halved: each output the mean of a 2 × 2 block.
        let data: Vec<f32> = (0..16).flat_map(|v| [v as f32; 3]).collect();
        let img = Picture { h: 4, w: 4, data };
        let out = area_resize(&img, 0, 0, 4, 4, 2, 2);
        let firsts: Vec<f32> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(firsts, vec![2.5, 4.5, 10.5, 12.5]);
        // Enlarging repeats pixels; a region is read from its corner.
        let out = area_resize(&img, 1, 2, 1, 2, 2, 4);
        let firsts: Vec<f32> = out.chunks(3).map(|p| p[0]).collect();
        assert_eq!(firsts, vec![6.0, 6.0, 7.0, 7.0, 6.0, 6.0, 7.0, 7.0]);
    }

    #[test]
    fn boxes_square_regress_and_overlap_by_hand() {
        assert_eq!(square([0.0, 0.0, 10.0, 4.0]), [0.0, -3.0, 10.0, 7.0]);
        assert_eq!(regress([0.0, 0.0, 9.0, 9.0], [0.1, -0.1, 0.2, 0.0]), [1.0, -1.0, 11.0, 9.0]);
        // A box inside another: IoU is the area ratio, "Min" overlap is 1.
        let (a, b) = ([0.0, 0.0, 9.0, 9.0], [2.0, 2.0, 6.0, 6.0]);
        assert!((overlap(&a, &b, false) - 16.0 / 81.0).abs() < 1e-6);
        assert_eq!(overlap(&a, &b, true), 1.0);
    }
}
