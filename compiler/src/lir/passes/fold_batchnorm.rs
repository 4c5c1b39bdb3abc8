//! `fold_batchnorm`: batchnorm on running statistics becomes the map `y = x·scale + shift`,
//! `scale` and `shift` derived from the parameters in the prepare phase (once per change of the
//! parameters, not every run).
//!
//! Folded into a per-channel affine map rather than into the product's weights: once
//! `fuse_epilogue` makes the map the product's epilogue, the multiply-add rides in a pass over
//! the output that the activation makes anyway, and the weights are not held twice (ResNet-50's
//! folded copy would add 95 MiB).

use crate::lir::{Buffer, DType, Expr, Kernel, Program, Space, View};

/// Rewrites every inference batchnorm; returns how many.
pub fn run(p: &mut Program) -> usize {
    let mut count = 0;
    for i in 0..p.kernels.len() {
        let Kernel::BnApply { x, mean, var, gamma, beta, y, eps } = &p.kernels[i] else { continue };
        let param = |v: &View| matches!(p.buffers[v.buf.0 as usize].space, Space::Param(_));
        if ![mean, var, gamma, beta].into_iter().all(param) {
            continue;
        }
        let c = x.cols();
        let layer = p.buffers[gamma.buf.0 as usize].name.rsplit_once('/').map_or("batchnorm", |(l, _)| l).to_string();
        let (x, y) = (x.clone(), y.clone());
        let kernel = Kernel::BnAffine {
            mean: mean.clone(),
            var: var.clone(),
            gamma: gamma.clone(),
            beta: beta.clone(),
            eps: *eps,
            scale: derived(p, format!("{layer}/scale"), c),
            shift: derived(p, format!("{layer}/shift"), c),
        };
        let Kernel::BnAffine { scale, shift, .. } = &kernel else { continue };
        let step = Kernel::Map {
            expr: vec![Expr::Input(0), Expr::Channel(0), Expr::Mul(0, 1), Expr::Channel(1), Expr::Add(2, 3)],
            inputs: vec![x],
            channels: vec![scale.clone(), shift.clone()],
            out: y,
        };
        p.prepare.push(kernel);
        p.kernels[i] = step;
        count += 1;
    }
    count
}

/// A new arena buffer of `len` that the prepare phase writes and every run reads.
fn derived(p: &mut Program, name: String, len: usize) -> View {
    let id = crate::lir::BufId(p.buffers.len() as u32);
    p.buffers.push(Buffer { name, space: Space::Arena, len, dtype: DType::F32, kept: true });
    View::whole(id, vec![len])
}
