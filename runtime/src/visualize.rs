//! "What are deep ConvNets learning?" (Zeiler and Fergus 2013, as the course shows it): for each
//! unit (channel) of a layer, the dataset patches that activate it most, cut from the input at
//! the unit's receptive field; and a first layer's filters drawn as images.

use crate::backend::Programs;
use crate::params::Params;
use crate::reference::{Ctx, Tensor};
use cnnc_compiler::ir::op::Op;
use cnnc_compiler::ir::{Graph, NodeId, ValueId};
use ndarray::IxDyn;
use std::path::Path;

/// Where a unit of a layer looks in the input, per spatial axis: output position `p` reads input
/// positions `start + p·jump .. start + p·jump + size` (`start` may be negative: padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Input positions between neighbouring output positions.
    pub jump: Vec<i64>,
    /// The first input position of output position 0.
    pub start: Vec<i64>,
    /// Input positions one output position reads.
    pub size: Vec<i64>,
}

/// The receptive field of `node`'s output in the graph's input, from the geometry of the window
/// ops on the way; `None` when the node reads the whole input (after a flatten, a dense layer
/// or a global pooling) or has no spatial axes.
pub fn receptive_field(graph: &Graph, node: NodeId) -> Option<Field> {
    let n = graph.node(node);
    let axes = n.shape.rank().checked_sub(1).filter(|&a| a > 0)?;
    match &n.op {
        Op::Input(_) => Some(Field { jump: vec![1; axes], start: vec![0; axes], size: vec![1; axes] }),
        Op::Flatten | Op::Dense(_) | Op::GlobalPool(_) | Op::Gram | Op::Reshape(_) | Op::Param(_) => None,
        op => {
            let operands: Vec<NodeId> = graph
                .operands(node)
                .into_iter()
                .filter(|&o| !matches!(graph.node(o).op, Op::Param(_)) && graph.node(o).shape.rank() == axes + 1)
                .collect();
            let fields: Vec<Field> = operands.iter().map(|&o| receptive_field(graph, o)).collect::<Option<_>>()?;
            // Branches that meet (add, concat) read the union of their fields.
            let mut f = fields.first()?.clone();
            for g in &fields[1..] {
                for a in 0..axes {
                    let end = (f.start[a] + f.size[a]).max(g.start[a] + g.size[a]);
                    f.start[a] = f.start[a].min(g.start[a]);
                    f.size[a] = end - f.start[a];
                    f.jump[a] = f.jump[a].max(g.jump[a]);
                }
            }
            if let Some(w) = op.rule().window() {
                for a in 0..axes.min(w.size.len()) {
                    let (k, s, p, d) = (w.size[a] as i64, w.stride[a] as i64, w.pad[a].0 as i64, w.dilation[a] as i64);
                    f.start[a] -= p * f.jump[a];
                    f.size[a] += (k - 1) * d * f.jump[a];
                    f.jump[a] *= s;
                }
            }
            Some(f)
        }
    }
}

/// One of a unit's strongest activations: its value, the example and the output position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// The activation.
    pub value: f32,
    /// Which example.
    pub example: usize,
    /// The flat spatial position in the layer's output.
    pub position: usize,
}

/// For each unit (channel) of `node`, its `k` strongest activations over the examples `x`
/// (`[n, input..]` flat), at most one per example (its maximum over positions), strongest first;
/// ties go to the earlier example and position. `graph` is an inference graph; runs in batches
/// on `programs`.
pub fn top_activations(
    graph: &Graph,
    programs: &mut Programs,
    params: &Params,
    node: NodeId,
    x: &[f32],
    k: usize,
) -> Result<Vec<Vec<Hit>>, String> {
    let input = *graph.inputs().first().ok_or("the model has no input")?;
    let shape = graph.node(input).shape.0.clone();
    let per: usize = shape.iter().product();
    let examples = x.len() / per.max(1);
    let units = graph.node(node).shape.channels();
    let positions = graph.node(node).shape.elements().unwrap_or(0) / units.max(1);
    let mut top: Vec<Vec<Hit>> = vec![Vec::new(); units];
    const BATCH: usize = 64;
    for first in (0..examples).step_by(BATCH) {
        let n = BATCH.min(examples - first);
        let dims: Vec<usize> = std::iter::once(n).chain(shape.iter().copied()).collect();
        let batch = Tensor::from_shape_vec(IxDyn(&dims), x[first * per..(first + n) * per].to_vec())
            .map_err(|e| e.to_string())?;
        let values = programs.run(graph, params, &mut [], &[(input, batch.view())], Ctx::default())?;
        let act = values.get(ValueId::from(node)).ok_or("the layer's values were not kept")?;
        let act = act.as_standard_layout();
        let act = act.as_slice().ok_or("activations are not contiguous")?;
        for e in 0..n {
            for (u, hits) in top.iter_mut().enumerate() {
                let mut best = Hit { value: f32::NEG_INFINITY, example: first + e, position: 0 };
                for p in 0..positions {
                    let v = act[(e * positions + p) * units + u];
                    if v > best.value {
                        best = Hit { value: v, example: first + e, position: p };
                    }
                }
                // Strongest first; an equal value stays behind the earlier example.
                let at = hits.partition_point(|h| h.value >= best.value);
                if at < k {
                    hits.insert(at, best);
                    hits.truncate(k);
                }
            }
        }
    }
    Ok(top)
}

/// The input patch under `field` at output position `position` of an example `[h, w, c]`
/// (`values`), `fill` where it leaves the image: `(height, width, pixels)`.
pub fn patch(
    values: &[f32],
    [h, w, c]: [usize; 3],
    field: &Field,
    out_w: usize,
    position: usize,
    fill: f32,
) -> (usize, usize, Vec<f32>) {
    let (i, j) = ((position / out_w.max(1)) as i64, (position % out_w.max(1)) as i64);
    let (top, left) = (field.start[0] + i * field.jump[0], field.start[1] + field.jump[1] * j);
    let (ph, pw) = (field.size[0] as usize, field.size[1] as usize);
    let mut out = vec![fill; ph * pw * c];
    for y in 0..ph {
        for x in 0..pw {
            let (sy, sx) = (top + y as i64, left + x as i64);
            if sy < 0 || sx < 0 || sy >= h as i64 || sx >= w as i64 {
                continue;
            }
            let from = (sy as usize * w + sx as usize) * c;
            out[(y * pw + x) * c..(y * pw + x + 1) * c].copy_from_slice(&values[from..from + c]);
        }
    }
    (ph, pw, out)
}

/// An image grid being drawn: RGB, white background.
struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas { w, h, rgb: vec![255; w * h * 3] }
    }

    /// Draws `pixels` (`[ph, pw, c]`, c = 1 or 3, values mapped from `lo..hi`) at `(x, y)`,
    /// each pixel `zoom`×`zoom`.
    #[allow(clippy::too_many_arguments)]
    fn draw(
        &mut self,
        x: usize,
        y: usize,
        (ph, pw, c): (usize, usize, usize),
        pixels: &[f32],
        lo: f32,
        hi: f32,
        zoom: usize,
    ) {
        let scale = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
        for py in 0..ph * zoom {
            for px in 0..pw * zoom {
                let (cy, cx) = (y + py, x + px);
                if cy >= self.h || cx >= self.w {
                    continue;
                }
                let src = ((py / zoom) * pw + px / zoom) * c;
                for ch in 0..3 {
                    let v = pixels[src + if c == 3 { ch } else { 0 }];
                    self.rgb[(cy * self.w + cx) * 3 + ch] = ((v - lo) * scale).clamp(0.0, 255.0).round() as u8;
                }
            }
        }
    }

    fn save(self, path: &Path) -> Result<(), String> {
        crate::atomic::write_png(path, &self.rgb, self.w, self.h, 3)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
    }
}

/// How many times to enlarge a patch or filter of `side` pixels so that it is about 48 wide.
fn zoom_for(side: usize) -> usize {
    (48 / side.max(1)).clamp(1, 8)
}

/// Writes the grid of each unit's top patches (a 3×3 block per unit, 8 units a row) to `path`.
/// `x` holds the examples `[n, h, w, c]` as the model sees them.
pub fn write_patches(
    path: &Path,
    x: &[f32],
    shape: [usize; 3],
    field: &Field,
    out_w: usize,
    top: &[Vec<Hit>],
) -> Result<(), String> {
    let [h, w, c] = shape;
    if c != 1 && c != 3 {
        return Err(format!("patches are drawn from grey or RGB images; the input has {c} channels"));
    }
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (ph, pw) = (field.size[0] as usize, field.size[1] as usize);
    let zoom = zoom_for(ph.max(pw));
    let (cell_h, cell_w) = (ph * zoom + 1, pw * zoom + 1);
    let (block_h, block_w) = (3 * cell_h + 6, 3 * cell_w + 6);
    let per_row = 8.min(top.len().max(1));
    let rows = top.len().div_ceil(per_row);
    let mut canvas = Canvas::new(per_row * block_w, rows * block_h);
    let per = h * w * c;
    for (u, hits) in top.iter().enumerate() {
        let (bx, by) = ((u % per_row) * block_w, (u / per_row) * block_h);
        for (i, hit) in hits.iter().enumerate().take(9) {
            let example = &x[hit.example * per..(hit.example + 1) * per];
            let (_, _, pixels) = patch(example, shape, field, out_w, hit.position, lo);
            canvas.draw(bx + (i % 3) * cell_w, by + (i / 3) * cell_h, (ph, pw, c), &pixels, lo, hi, zoom);
        }
    }
    canvas.save(path)
}

/// Writes a convolution's filters `[kh, kw, cin, cout]` as images (RGB when `cin` is 3, else
/// the first input channel in grey), each scaled to its own range, 8 a row.
pub fn write_filters(path: &Path, weights: &[f32], shape: &[usize]) -> Result<(), String> {
    let &[kh, kw, cin, cout] = shape else {
        return Err(format!("filters are drawn from 2-D convolutions [kh, kw, c_in, c_out]; this one is {shape:?}"));
    };
    let c = if cin == 3 { 3 } else { 1 };
    let zoom = zoom_for(kh.max(kw)).max(4);
    let (cell_h, cell_w) = (kh * zoom + 4, kw * zoom + 4);
    let per_row = 8.min(cout.max(1));
    let mut canvas = Canvas::new(per_row * cell_w, cout.div_ceil(per_row) * cell_h);
    for o in 0..cout {
        let pixels: Vec<f32> =
            (0..kh * kw).flat_map(|t| (0..c).map(move |ch| weights[(t * cin + ch) * cout + o])).collect();
        let (lo, hi) = pixels.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        canvas.draw((o % per_row) * cell_w + 2, (o / per_row) * cell_h + 2, (kh, kw, c), &pixels, lo, hi, zoom);
    }
    canvas.save(path)
}
