//! Object detection in plain Rust: boxes and their IoU, the YOLO target encoding (each box to
//! the cell holding its centre and the anchor of best IoU), the detection loss and its gradient
//! per example, decoding a grid into scored boxes, per-class non-max suppression, average
//! precision as COCO computes it, and anchors by k-means with IoU distance.
//!
//! Coordinates are fractions of the image: `(0, 0)` is its top-left corner, `(1, 1)` its
//! bottom-right. Anchors are `(width, height)` in grid cells, as a model's `anchors` declaration
//! gives them (YOLOv2's convention).

use crate::reference::sigmoid;
use cnnc_compiler::ir::op::DetectLoss;

/// One labelled object: a class and a box given by its centre and size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Object {
    /// Class index.
    pub class: u32,
    /// Centre, width and height, as fractions of the image.
    pub cx: f32,
    pub cy: f32,
    pub w: f32,
    pub h: f32,
}

/// Values per object in a target tensor: class, centre x, centre y, width, height. A class
/// below zero marks an unused row.
pub const OBJECT_VALUES: usize = 5;

impl Object {
    /// The box's corners `[x1, y1, x2, y2]`.
    pub fn corners(&self) -> [f32; 4] {
        [self.cx - self.w / 2.0, self.cy - self.h / 2.0, self.cx + self.w / 2.0, self.cy + self.h / 2.0]
    }

    /// The objects of one example's target rows (`[class, cx, cy, w, h]` each, a negative class
    /// ending them).
    pub fn rows(target: &[f32]) -> Vec<Object> {
        target
            .chunks_exact(OBJECT_VALUES)
            .take_while(|r| r[0] >= 0.0)
            .map(|r| Object { class: r[0] as u32, cx: r[1], cy: r[2], w: r[3], h: r[4] })
            .collect()
    }
}

/// A detected box: class, score, corners `[x1, y1, x2, y2]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Class index.
    pub class: u32,
    /// Objectness times the class's probability.
    pub score: f32,
    /// Corners, as fractions of the image.
    pub corners: [f32; 4],
}

/// Intersection over union of two boxes given by corners; 0 when both are empty.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// IoU of two sizes placed on the same centre (how anchors are compared with boxes).
pub fn shape_iou(a: [f32; 2], b: [f32; 2]) -> f32 {
    let inter = a[0].min(b[0]) * a[1].min(b[1]);
    let union = a[0] * a[1] + b[0] * b[1] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// The geometry of a detection output: a `rows × cols` grid, anchors in cells, classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    pub rows: usize,
    pub cols: usize,
    pub anchors: Vec<[f32; 2]>,
    pub classes: usize,
}

impl Grid {
    /// Values per anchor slot.
    pub fn per_slot(&self) -> usize {
        5 + self.classes
    }

    /// Values per example.
    pub fn len(&self) -> usize {
        self.rows * self.cols * self.anchors.len() * self.per_slot()
    }

    /// Whether the grid holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the target of `objects` into `out` (`len()` values): each object goes to the cell
    /// holding its centre, in the free slot of the anchor with the best IoU with its size (an
    /// object finding every slot of its cell taken is left out, as in YOLO).
    pub fn encode(&self, objects: &[Object], out: &mut [f32]) {
        out.fill(0.0);
        let per = self.per_slot();
        let a_count = self.anchors.len();
        for o in objects {
            let col = ((o.cx * self.cols as f32).floor() as usize).min(self.cols - 1);
            let row = ((o.cy * self.rows as f32).floor() as usize).min(self.rows - 1);
            let size = [o.w * self.cols as f32, o.h * self.rows as f32];
            let mut order: Vec<usize> = (0..a_count).collect();
            order.sort_by(|&a, &b| shape_iou(size, self.anchors[b]).total_cmp(&shape_iou(size, self.anchors[a])));
            let cell = (row * self.cols + col) * a_count;
            let Some(a) = order.into_iter().find(|&a| out[(cell + a) * per] == 0.0) else { continue };
            let slot = &mut out[(cell + a) * per..(cell + a + 1) * per];
            slot[0] = 1.0;
            slot[1] = o.cx * self.cols as f32 - col as f32;
            slot[2] = o.cy * self.rows as f32 - row as f32;
            slot[3] = (size[0] / self.anchors[a][0]).ln();
            slot[4] = (size[1] / self.anchors[a][1]).ln();
            if let Some(c) = slot.get_mut(5 + o.class as usize) {
                *c = 1.0;
            }
        }
    }

    /// Every slot's box scored by objectness times its best class's probability, kept when the
    /// score reaches `threshold`.
    pub fn decode(&self, pred: &[f32], threshold: f32) -> Vec<Detection> {
        let per = self.per_slot();
        let a_count = self.anchors.len();
        let mut out = Vec::new();
        for (k, slot) in pred.chunks_exact(per).enumerate() {
            let (cell, a) = (k / a_count, k % a_count);
            let (row, col) = (cell / self.cols, cell % self.cols);
            let objectness = sigmoid(slot[0]);
            let probs = softmax(&slot[5..]);
            let (class, p) =
                probs.iter().enumerate().fold((0, f32::MIN), |b, (i, &p)| if p > b.1 { (i, p) } else { b });
            let score = objectness * if self.classes == 0 { 1.0 } else { p };
            if score < threshold || !score.is_finite() {
                continue;
            }
            let cx = (col as f32 + sigmoid(slot[1])) / self.cols as f32;
            let cy = (row as f32 + sigmoid(slot[2])) / self.rows as f32;
            let w = self.anchors[a][0] * slot[3].min(20.0).exp() / self.cols as f32;
            let h = self.anchors[a][1] * slot[4].min(20.0).exp() / self.rows as f32;
            let corners = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
            out.push(Detection { class: class as u32, score, corners });
        }
        out
    }
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let max = z.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let e: Vec<f32> = z.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Binary cross-entropy of `sigmoid(z)` against `y`, computed stably.
fn bce(z: f32, y: f32) -> f32 {
    z.max(0.0) - z * y + (1.0 + (-z.abs()).exp()).ln()
}

/// Values per slot of a prediction whose last axis holds `channels` values.
pub fn slot_len(d: &DetectLoss, channels: usize) -> usize {
    (channels / d.anchors.max(1) as usize).max(1)
}

/// One example's detection loss: `pred` and `target` are its grid, slots of `per` values.
pub fn loss(d: &DetectLoss, per: usize, pred: &[f32], target: &[f32]) -> f32 {
    let mut total = 0.0f32;
    for (p, t) in pred.chunks_exact(per).zip(target.chunks_exact(per)) {
        if t[0] > 0.5 {
            let (sx, sy) = (sigmoid(p[1]), sigmoid(p[2]));
            let boxes = (sx - t[1]).powi(2) + (sy - t[2]).powi(2) + (p[3] - t[3]).powi(2) + (p[4] - t[4]).powi(2);
            total += d.coord * 0.5 * boxes + bce(p[0], 1.0);
            if per > 5 {
                let (scores, onehot) = (&p[5..], &t[5..]);
                let max = scores.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let lse = scores.iter().map(|&v| (v - max).exp()).sum::<f32>().ln() + max;
                total += scores.iter().zip(onehot).map(|(&s, &y)| y * (lse - s)).sum::<f32>();
            }
        } else {
            total += d.noobj * bce(p[0], 0.0);
        }
    }
    total
}

/// The gradient of [`loss`] with respect to `pred`, times `scale`, into `out`.
pub fn loss_grad(d: &DetectLoss, per: usize, pred: &[f32], target: &[f32], scale: f32, out: &mut [f32]) {
    for ((p, t), o) in pred.chunks_exact(per).zip(target.chunks_exact(per)).zip(out.chunks_exact_mut(per)) {
        o.fill(0.0);
        if t[0] > 0.5 {
            o[0] = (sigmoid(p[0]) - 1.0) * scale;
            for k in 1..3 {
                let s = sigmoid(p[k]);
                o[k] = d.coord * (s - t[k]) * s * (1.0 - s) * scale;
            }
            for k in 3..5 {
                o[k] = d.coord * (p[k] - t[k]) * scale;
            }
            if per > 5 {
                let probs = softmax(&p[5..]);
                let mass: f32 = t[5..].iter().sum();
                for ((o, &q), &y) in o[5..].iter_mut().zip(&probs).zip(&t[5..]) {
                    *o = (q * mass - y) * scale;
                }
            }
        } else {
            o[0] = d.noobj * sigmoid(p[0]) * scale;
        }
    }
}

/// Per class, the highest-scoring boxes with no kept box of their class overlapping them by
/// more than `iou_threshold`, best first.
pub fn nms(boxes: Vec<Detection>, iou_threshold: f32) -> Vec<Detection> {
    let scores: Vec<f32> = boxes.iter().map(|b| b.score).collect();
    let kept = greedy(&scores, |k, i| {
        boxes[k].class == boxes[i].class && iou(&boxes[k].corners, &boxes[i].corners) > iou_threshold
    });
    kept.into_iter().map(|i| boxes[i]).collect()
}

/// Greedy non-max suppression: indices of the items kept, best score first (ties in order), each
/// kept unless `suppresses(kept, candidate)` for one kept before it.
pub(crate) fn greedy(scores: &[f32], suppresses: impl Fn(usize, usize) -> bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut kept: Vec<usize> = Vec::new();
    for i in order {
        if !kept.iter().any(|&k| suppresses(k, i)) {
            kept.push(i);
        }
    }
    kept
}

/// Indices of the boxes that non-max suppression keeps over boxes of one class, best first: the
/// rule of torchvision's `nms`.
pub fn nms_indices(corners: &[[f32; 4]], scores: &[f32], iou_threshold: f32) -> Vec<usize> {
    greedy(scores, |k, i| iou(&corners[k], &corners[i]) > iou_threshold)
}

/// Average precision per class and its mean, over images whose detections and ground-truth
/// objects are given, as COCO computes them: detections matched best-first to the unmatched
/// ground truth of highest IoU (at least `iou_threshold`), precision made monotone, and read at
/// 101 recall points. Classes with no ground truth are left out of the mean (`None`).
pub fn average_precision(
    detections: &[Vec<Detection>],
    truths: &[Vec<Object>],
    classes: usize,
    iou_threshold: f32,
) -> (Vec<Option<f64>>, f64) {
    let mut per_class = Vec::with_capacity(classes);
    for class in 0..classes as u32 {
        // (score, true positive), over every image.
        let mut scored: Vec<(f32, bool)> = Vec::new();
        let mut positives = 0usize;
        for (dets, objs) in detections.iter().zip(truths) {
            let gts: Vec<[f32; 4]> = objs.iter().filter(|o| o.class == class).map(Object::corners).collect();
            positives += gts.len();
            let mut dets: Vec<&Detection> = dets.iter().filter(|d| d.class == class).collect();
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
            let mut taken = vec![false; gts.len()];
            for d in dets {
                let mut best = (iou_threshold.min(1.0 - 1e-10), None);
                for (g, gt) in gts.iter().enumerate() {
                    let v = iou(&d.corners, gt);
                    if !taken[g] && v >= best.0 {
                        best = (v, Some(g));
                    }
                }
                if let Some(g) = best.1 {
                    taken[g] = true;
                }
                scored.push((d.score, best.1.is_some()));
            }
        }
        if positives == 0 {
            per_class.push(None);
            continue;
        }
        // A stable sort, best first, as pycocotools's mergesort.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut recall = Vec::with_capacity(scored.len());
        let mut precision = Vec::with_capacity(scored.len());
        for &(_, hit) in &scored {
            if hit {
                tp += 1;
            } else {
                fp += 1;
            }
            recall.push(tp as f64 / positives as f64);
            precision.push(tp as f64 / (tp + fp) as f64);
        }
        for i in (1..precision.len()).rev() {
            if precision[i] > precision[i - 1] {
                precision[i - 1] = precision[i];
            }
        }
        let mut sum = 0.0;
        for r in 0..=100 {
            // As numpy's `linspace(0, 1, 101)` computes them (0.35 is 0.35000000000000003).
            let at = r as f64 * 0.01;
            let i = recall.partition_point(|&x| x < at);
            sum += precision.get(i).copied().unwrap_or(0.0);
        }
        per_class.push(Some(sum / 101.0));
    }
    let present: Vec<f64> = per_class.iter().flatten().copied().collect();
    let mean = if present.is_empty() { 0.0 } else { present.iter().sum::<f64>() / present.len() as f64 };
    (per_class, mean)
}

/// mAP over IoU thresholds 0.50, 0.55 … 0.95 (COCO's headline figure).
pub fn map_50_95(detections: &[Vec<Detection>], truths: &[Vec<Object>], classes: usize) -> f64 {
    let maps: Vec<f64> =
        (0..10).map(|k| average_precision(detections, truths, classes, 0.5 + 0.05 * k as f32).1).collect();
    maps.iter().sum::<f64>() / maps.len() as f64
}

/// `k` anchors from the sizes `sizes` (in cells) by k-means with distance `1 − IoU`: started
/// from sizes spread evenly over the sorted areas, each centre the mean of its members, until
/// nothing moves. Returns the anchors by increasing area and the mean best IoU of the sizes.
pub fn kmeans_anchors(sizes: &[[f32; 2]], k: usize) -> (Vec<[f32; 2]>, f32) {
    if sizes.is_empty() || k == 0 {
        return (Vec::new(), 0.0);
    }
    let mut sorted = sizes.to_vec();
    sorted.sort_by(|a, b| (a[0] * a[1]).total_cmp(&(b[0] * b[1])));
    let k = k.min(sorted.len());
    let mut centres: Vec<[f32; 2]> = (0..k).map(|i| sorted[(2 * i + 1) * sorted.len() / (2 * k)]).collect();
    let nearest = |s: [f32; 2], centres: &[[f32; 2]]| {
        (0..centres.len()).max_by(|&a, &b| shape_iou(s, centres[a]).total_cmp(&shape_iou(s, centres[b]))).unwrap_or(0)
    };
    let mut members = vec![usize::MAX; sorted.len()];
    for _ in 0..300 {
        let next: Vec<usize> = sorted.iter().map(|&s| nearest(s, &centres)).collect();
        if next == members {
            break;
        }
        members = next;
        for (c, centre) in centres.iter_mut().enumerate() {
            let (mut sum, mut n) = ([0.0f64; 2], 0usize);
            for (s, _) in sorted.iter().zip(&members).filter(|(_, &m)| m == c) {
                sum[0] += f64::from(s[0]);
                sum[1] += f64::from(s[1]);
                n += 1;
            }
            if n > 0 {
                *centre = [(sum[0] / n as f64) as f32, (sum[1] / n as f64) as f32];
            }
        }
    }
    centres.sort_by(|a, b| (a[0] * a[1]).total_cmp(&(b[0] * b[1])));
    let mean = sorted.iter().map(|&s| shape_iou(s, centres[nearest(s, &centres)])).sum::<f32>() / sorted.len() as f32;
    (centres, mean)
}

/// Colours of the classes' boxes (cycled).
const COLOURS: [[u8; 3]; 10] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
    [210, 245, 60],
    [250, 190, 190],
];

/// Digits 0–9 in a 3 × 5 pixel font, a row of 3 bits per line.
const DIGITS: [[u8; 5]; 10] = [
    [7, 5, 5, 5, 7],
    [2, 6, 2, 2, 7],
    [7, 1, 7, 4, 7],
    [7, 1, 7, 1, 7],
    [5, 5, 7, 1, 1],
    [7, 4, 7, 1, 7],
    [7, 4, 7, 5, 7],
    [7, 1, 2, 2, 2],
    [7, 5, 7, 5, 7],
    [7, 5, 7, 1, 7],
];

/// An image file as RGB bytes, its width and height.
pub fn read_rgb(path: &std::path::Path) -> Result<(Vec<u8>, usize, usize), String> {
    crate::atomic::regular(path).map_err(|e| e.to_string())?;
    let img = image::open(path).map_err(|e| e.to_string())?.to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    Ok((img.into_raw(), w, h))
}

/// Draws on RGB pixels within a `w × h` window at (`left`, `top`) of an image `stride` pixels
/// wide: what falls outside the window is left out.
pub struct Pen<'a> {
    pub rgb: &'a mut [u8],
    pub stride: usize,
    pub left: usize,
    pub top: usize,
    pub w: usize,
    pub h: usize,
}

impl<'a> Pen<'a> {
    /// A pen over a whole `w × h` image.
    pub fn new(rgb: &'a mut [u8], w: usize, h: usize) -> Pen<'a> {
        Pen { rgb, stride: w, left: 0, top: 0, w, h }
    }

    /// One pixel at (`x`, `y`) of the window.
    pub fn put(&mut self, x: i64, y: i64, colour: [u8; 3]) {
        if (0..self.w as i64).contains(&x) && (0..self.h as i64).contains(&y) {
            let at = ((self.top + y as usize) * self.stride + self.left + x as usize) * 3;
            self.rgb[at..at + 3].copy_from_slice(&colour);
        }
    }

    /// The outline of the box with corners (`x0`, `y0`) and (`x1`, `y1`), `thick` pixels wide,
    /// inside it.
    pub fn rectangle(&mut self, [x0, y0, x1, y1]: [i64; 4], thick: i64, colour: [u8; 3]) {
        for t in 0..thick {
            for x in x0..=x1 {
                self.put(x, y0 + t, colour);
                self.put(x, y1 - t, colour);
            }
            for y in y0..=y1 {
                self.put(x0 + t, y, colour);
                self.put(x1 - t, y, colour);
            }
        }
    }

    /// A filled square of side `2r + 1` on (`x`, `y`).
    pub fn dot(&mut self, x: i64, y: i64, r: i64, colour: [u8; 3]) {
        for dy in -r..=r {
            for dx in -r..=r {
                self.put(x + dx, y + dy, colour);
            }
        }
    }

    /// A detection's box in its class's colour, with the class written above it in digits
    /// `thick` pixels wide.
    pub fn detection(&mut self, d: &Detection, thick: i64) {
        let colour = COLOURS[d.class as usize % COLOURS.len()];
        let px = |v: f32, side: usize| (v.clamp(0.0, 1.0) * side as f32).round() as i64;
        let (x0, y0) = (px(d.corners[0], self.w), px(d.corners[1], self.h));
        self.rectangle([x0, y0, px(d.corners[2], self.w), px(d.corners[3], self.h)], thick, colour);
        let text: Vec<usize> = d.class.to_string().bytes().map(|b| (b - b'0') as usize).collect();
        let (cw, ch) = (4 * thick * text.len() as i64 + thick, 7 * thick);
        let top = if y0 - ch >= 0 { y0 - ch } else { y0 };
        for y in 0..ch {
            for x in 0..cw {
                self.put(x0 + x, top + y, colour);
            }
        }
        for (k, &digit) in text.iter().enumerate() {
            for (row, bits) in DIGITS[digit].iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        let x = x0 + thick + (4 * k as i64 + col) * thick;
                        let y = top + thick + row as i64 * thick;
                        for dy in 0..thick {
                            for dx in 0..thick {
                                self.put(x + dx, y + dy, [0, 0, 0]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An RGB image (`w × h`, 3 bytes a pixel) enlarged `scale` times (nearest neighbour) with each
/// detection's box drawn in its class's colour and its class written above it.
pub fn draw(rgb: &[u8], w: usize, h: usize, scale: usize, found: &[Detection]) -> Vec<u8> {
    let (sw, sh) = (w * scale, h * scale);
    let mut out = vec![0u8; sw * sh * 3];
    for y in 0..sh {
        for x in 0..sw {
            let src = ((y / scale) * w + x / scale) * 3;
            out[(y * sw + x) * 3..(y * sw + x) * 3 + 3].copy_from_slice(&rgb[src..src + 3]);
        }
    }
    let mut pen = Pen::new(&mut out, sw, sh);
    for d in found {
        pen.detection(d, (scale as i64 / 2).max(1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(class: u32, cx: f32, cy: f32, w: f32, h: f32) -> Object {
        Object { class, cx, cy, w, h }
    }

    #[test]
    fn iou_by_hand() {
        // Two unit squares overlapping by half: 0.5 / 1.5.
        assert!((iou(&[0.0, 0.0, 1.0, 1.0], &[0.5, 0.0, 1.5, 1.0]) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 1.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
        // A box inside another: its area over the larger's.
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[0.5, 0.5, 1.5, 1.5]) - 0.25).abs() < 1e-6);
        assert!((shape_iou([2.0, 1.0], [1.0, 2.0]) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn encode_then_decode_gives_the_boxes_back() {
        let grid = Grid { rows: 4, cols: 4, anchors: vec![[0.5, 0.5], [2.0, 1.0]], classes: 3 };
        let objects = [obj(2, 0.30, 0.60, 0.10, 0.12), obj(0, 0.80, 0.10, 0.45, 0.25)];
        let mut t = vec![0.0; grid.len()];
        grid.encode(&objects, &mut t);
        // The first object's centre is in cell (row 2, col 1); its size 0.4 × 0.48 cells is
        // closest to the small anchor.
        let slot = ((2 * 4 + 1) * 2) * 8;
        assert_eq!(t[slot], 1.0);
        assert!((t[slot + 1] - 0.2).abs() < 1e-5 && (t[slot + 2] - 0.4).abs() < 1e-5);
        assert!((t[slot + 3] - (0.4f32 / 0.5).ln()).abs() < 1e-5);
        assert_eq!(&t[slot + 5..slot + 8], &[0.0, 0.0, 1.0]);
        // The second goes to cell (0, 3), wide anchor.
        let slot2 = (3 * 2 + 1) * 8;
        assert_eq!(t[slot2], 1.0);
        assert_eq!(t.iter().step_by(8).filter(|&&v| v == 1.0).count(), 2);
        // A prediction equal to the target in logits decodes to the same boxes.
        let mut pred = vec![-30.0; grid.len()];
        for (p, q) in pred.chunks_exact_mut(8).zip(t.chunks_exact(8)) {
            if q[0] == 1.0 {
                p[0] = 30.0;
                p[1] = (q[1] / (1.0 - q[1])).ln();
                p[2] = (q[2] / (1.0 - q[2])).ln();
                p[3] = q[3];
                p[4] = q[4];
                for k in 5..8 {
                    p[k] = if q[k] == 1.0 { 30.0 } else { -30.0 };
                }
            }
        }
        let found = nms(grid.decode(&pred, 0.5), 0.5);
        assert_eq!(found.len(), 2);
        for o in objects {
            let d = found.iter().find(|d| d.class == o.class).unwrap();
            assert!(iou(&d.corners, &o.corners()) > 0.999, "{d:?} against {o:?}");
        }
    }

    #[test]
    fn a_cell_with_more_objects_than_anchors_keeps_one_per_slot() {
        let grid = Grid { rows: 1, cols: 1, anchors: vec![[1.0, 1.0]], classes: 1 };
        let mut t = vec![0.0; grid.len()];
        grid.encode(&[obj(0, 0.5, 0.5, 0.5, 0.5), obj(0, 0.4, 0.4, 0.2, 0.2)], &mut t);
        assert_eq!(t[0], 1.0);
        assert!((t[3] - 0.5f32.ln()).abs() < 1e-6, "the first object keeps the slot");
    }

    #[test]
    fn loss_gradient_matches_finite_differences() {
        let d = DetectLoss { anchors: 2, coord: 5.0, noobj: 0.5 };
        let grid = Grid { rows: 2, cols: 2, anchors: vec![[0.5, 0.5], [1.5, 1.0]], classes: 3 };
        let mut t = vec![0.0; grid.len()];
        grid.encode(&[obj(1, 0.3, 0.3, 0.2, 0.3), obj(2, 0.7, 0.6, 0.6, 0.4)], &mut t);
        let pred: Vec<f32> = (0..grid.len()).map(|i| ((i * 37 % 17) as f32 - 8.0) / 6.0).collect();
        let mut g = vec![0.0; pred.len()];
        loss_grad(&d, 8, &pred, &t, 1.0, &mut g);
        for i in 0..pred.len() {
            let (mut up, mut down) = (pred.clone(), pred.clone());
            up[i] += 1e-2;
            down[i] -= 1e-2;
            let numeric = (f64::from(loss(&d, 8, &up, &t)) - f64::from(loss(&d, 8, &down, &t))) / 2e-2;
            assert!((numeric - f64::from(g[i])).abs() < 2e-3 * numeric.abs().max(1.0), "{i}: {numeric} vs {}", g[i]);
        }
        // Only objectness counts where there is no object.
        let empty = vec![0.0; grid.len()];
        loss_grad(&d, 8, &pred, &empty, 1.0, &mut g);
        assert!(g.iter().enumerate().all(|(i, &v)| i % 8 == 0 || v == 0.0));
    }

    #[test]
    fn nms_by_hand() {
        let b = |class, score, x: f32| Detection { class, score, corners: [x, 0.0, x + 1.0, 1.0] };
        // 0.9 and 0.8 overlap by 0.6/1.4 = 0.43; 0.7 of another class overlaps both.
        let kept = nms(vec![b(0, 0.8, 0.4), b(0, 0.9, 0.0), b(1, 0.7, 0.2), b(0, 0.3, 3.0)], 0.4);
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, [0.9, 0.7, 0.3]);
        let kept = nms(vec![b(0, 0.8, 0.4), b(0, 0.9, 0.0)], 0.5);
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn average_precision_by_hand() {
        let gt = vec![vec![obj(0, 0.25, 0.25, 0.5, 0.5), obj(0, 0.75, 0.75, 0.5, 0.5)]];
        let det = |score, o: Object| Detection { class: 0, score, corners: o.corners() };
        // Both found, nothing else: AP 1.
        let perfect = vec![vec![det(0.9, gt[0][0]), det(0.8, gt[0][1])]];
        assert!((average_precision(&perfect, &gt, 1, 0.5).1 - 1.0).abs() < 1e-12);
        // A false positive ranked first, then both: precision 1/2 then 2/3 made monotone 2/3
        // for every recall point: AP 2/3.
        let miss = obj(0, 0.5, 0.9, 0.1, 0.1);
        let one_wrong = vec![vec![det(0.95, miss), det(0.9, gt[0][0]), det(0.8, gt[0][1])]];
        assert!((average_precision(&one_wrong, &gt, 1, 0.5).1 - 2.0 / 3.0).abs() < 1e-12);
        // One of two found: recall reaches 0.5: 51 of 101 points at precision 1.
        let half = vec![vec![det(0.9, gt[0][0])]];
        assert!((average_precision(&half, &gt, 1, 0.5).1 - 51.0 / 101.0).abs() < 1e-12);
        // A duplicate detection of one object is a false positive.
        let twice = vec![vec![det(0.9, gt[0][0]), det(0.8, gt[0][0])]];
        assert!((average_precision(&twice, &gt, 1, 0.5).1 - 51.0 / 101.0).abs() < 1e-12);
        // Recall points as numpy's linspace gives them: 7 of 20 found is recall 0.35, below the
        // point 0.35000000000000003, so 35 of 101 points count (not 36).
        let many: Vec<Object> = (0..20).map(|k| obj(0, 0.025 + 0.05 * k as f32, 0.5, 0.04, 0.04)).collect();
        let seven = vec![many[..7].iter().map(|o| det(0.9, *o)).collect::<Vec<_>>()];
        assert!((average_precision(&seven, &[many], 1, 0.5).1 - 35.0 / 101.0).abs() < 1e-12);
        // A class with no ground truth is left out of the mean.
        let (per, mean) = average_precision(&perfect, &gt, 2, 0.5);
        assert_eq!(per[1], None);
        assert!((mean - 1.0).abs() < 1e-12);
    }

    #[test]
    fn drawn_boxes_are_where_the_detections_are() {
        let rgb = vec![0u8; 10 * 10 * 3];
        let d = Detection { class: 1, score: 0.9, corners: [0.2, 0.5, 0.6, 0.9] };
        let out = draw(&rgb, 10, 10, 4, &[d]);
        let at = |x: usize, y: usize| &out[(y * 40 + x) * 3..(y * 40 + x) * 3 + 3];
        // Corners at (8, 20) and (24, 36) of the 40 × 40 picture, in class 1's colour.
        assert_eq!(at(8, 28), COLOURS[1]);
        assert_eq!(at(24, 28), COLOURS[1]);
        assert_eq!(at(16, 36), COLOURS[1]);
        assert_eq!(at(16, 28), [0, 0, 0], "inside the box stays");
        assert_eq!(at(35, 5), [0, 0, 0]);
    }

    #[test]
    fn kmeans_finds_two_clusters_of_sizes() {
        let mut sizes = Vec::new();
        for i in 0..20 {
            let e = i as f32 * 0.01;
            sizes.push([1.0 + e, 2.0 - e]);
            sizes.push([4.0 - e, 1.0 + e]);
        }
        let (anchors, mean) = kmeans_anchors(&sizes, 2);
        assert_eq!(anchors.len(), 2);
        assert!((anchors[0][0] - 1.095).abs() < 1e-3 && (anchors[0][1] - 1.905).abs() < 1e-3, "{anchors:?}");
        assert!((anchors[1][0] - 3.905).abs() < 1e-3, "{anchors:?}");
        assert!(mean > 0.9);
    }
}
