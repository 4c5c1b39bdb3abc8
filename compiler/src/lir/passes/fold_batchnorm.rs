//! `fold_batchnorm`: batchnorm's apply becomes the map `y = x·scale + shift`, `scale` and `shift`
//! per channel: on running statistics (inference) derived from the parameters in the prepare
//! phase, once per change of the parameters; on the batch's statistics (training) derived right
//! after they are computed, in the step. The map can then fuse with the activation after it
//! (`fuse_maps`) and become a product's epilogue (`fuse_epilogue`).
//!
//! Folded into a per-channel affine map rather than into the product's weights: as an epilogue
//! the multiply-add rides in a pass over the output that the activation makes anyway, and the
//! weights are not held twice (ResNet-50's folded copy would add 95 MiB).

use crate::lir::{Buffer, DType, Expr, Kernel, Program, Space, View};

/// Rewrites every batchnorm apply; returns how many.
pub fn run(p: &mut Program) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < p.kernels.len() {
        let Kernel::BnApply { x, mean, var, gamma, beta, y, eps } = &p.kernels[i] else {
            i += 1;
            continue;
        };
        let param = |v: &View| matches!(p.buffers[v.buf.0 as usize].space, Space::Param(_));
        let running = [mean, var].into_iter().all(param);
        if ![gamma, beta].into_iter().all(param) {
            i += 1;
            continue;
        }
        let c = x.cols();
        let layer = p.buffers[gamma.buf.0 as usize].name.rsplit_once('/').map_or("batchnorm", |(l, _)| l).to_string();
        let (x, y) = (x.clone(), y.clone());
        let (mean, var, gamma, beta, eps) = (mean.clone(), var.clone(), gamma.clone(), beta.clone(), *eps);
        // Derived once per change of the parameters (kept across runs), or every step.
        let scale = buffer(p, format!("{layer}/scale"), c, running);
        let shift = buffer(p, format!("{layer}/shift"), c, running);
        let affine = Kernel::BnAffine { mean, var, gamma, beta, eps, scale: scale.clone(), shift: shift.clone() };
        let step = Kernel::Map {
            expr: vec![Expr::Input(0), Expr::Channel(0), Expr::Mul(0, 1), Expr::Channel(1), Expr::Add(2, 3)],
            inputs: vec![x],
            channels: vec![scale, shift],
            out: y,
        };
        p.kernels[i] = step;
        if running {
            p.prepare.push(affine);
            i += 1;
        } else {
            p.kernels.insert(i, affine);
            i += 2;
        }
        count += 1;
    }
    count
}

/// A new arena buffer of `len`, kept across runs when the prepare phase writes it.
fn buffer(p: &mut Program, name: String, len: usize, kept: bool) -> View {
    let id = crate::lir::BufId(p.buffers.len() as u32);
    p.buffers.push(Buffer { name, space: Space::Arena, len, dtype: DType::F32, kept });
    View::whole(id, vec![len])
}
