//! `fuse_maps`: a map whose output only another map reads is computed inside that map, which
//! then reads the first map's inputs instead (one pass over memory instead of two).

use super::{renumber, same_matrix, temporary, Uses, MAX_EXPR};
use crate::lir::{Expr, Kernel, Program, View};

/// Fuses pairs until none is left; returns how many.
pub fn run(p: &mut Program) -> usize {
    super::fuse_all(p, |p| find(p).map(|(i, j, fused)| (j, i, fused)))
}

/// The first (producer, consumer, fused map).
fn find(p: &Program) -> Option<(usize, usize, Kernel)> {
    let uses = Uses::of(p);
    for (j, k) in p.kernels.iter().enumerate() {
        let Kernel::Map { expr: e2, inputs: ins2, channels: chs2, out: out2 } = k else { continue };
        for v in ins2 {
            let t = v.buf;
            let writers = &uses.writers[t.0 as usize];
            if !temporary(p, t) || writers.len() != 1 || uses.readers[t.0 as usize].iter().any(|&r| r != j) {
                continue;
            }
            let i = writers[0];
            let Kernel::Map { expr: e1, inputs: ins1, channels: chs1, out: out1 } = &p.kernels[i] else { continue };
            let on_t: Vec<bool> = ins2.iter().map(|w| w.buf == t).collect();
            if i >= j
                || ins2.iter().zip(&on_t).any(|(w, &on)| on && !same_matrix(w, out1))
                || out1.rows() != out2.rows()
                || out1.cols() != out2.cols()
                || ins1.iter().chain(chs1).any(|w| uses.written_from(w.buf, i + 1, j) || w.buf == out2.buf)
                || e1.len() + e2.len() > MAX_EXPR
            {
                continue;
            }
            if let Some(fused) = fuse(e1, ins1, chs1, e2, ins2, chs2, &on_t, out2) {
                return Some((i, j, fused));
            }
        }
    }
    None
}

/// The map computing `e2` with `e1` in place of its inputs marked `on_t`.
#[allow(clippy::too_many_arguments)]
fn fuse(
    e1: &[Expr],
    ins1: &[View],
    chs1: &[View],
    e2: &[Expr],
    ins2: &[View],
    chs2: &[View],
    on_t: &[bool],
    out: &View,
) -> Option<Kernel> {
    // Inputs: the consumer's own, then the producer's.
    let mut inputs: Vec<View> = Vec::new();
    let mut from2 = vec![usize::MAX; ins2.len()];
    for (k, v) in ins2.iter().enumerate().filter(|(k, _)| !on_t[*k]) {
        from2[k] = inputs.len();
        inputs.push(v.clone());
    }
    let base1 = inputs.len();
    inputs.extend(ins1.iter().cloned());
    let mut channels = chs2.to_vec();
    let base_c1 = channels.len();
    channels.extend(chs1.iter().cloned());
    let mut expr = Vec::with_capacity(e1.len() + e2.len());
    let at1: Vec<usize> = (0..e1.len()).collect();
    for &e in e1 {
        expr.push(match e {
            Expr::Input(k) => Expr::Input(base1 + k),
            Expr::Channel(k) => Expr::Channel(base_c1 + k),
            e => renumber(e, &at1),
        });
    }
    let last1 = expr.len().checked_sub(1)?;
    let mut at2 = Vec::with_capacity(e2.len());
    for &e in e2 {
        match e {
            Expr::Input(k) if on_t[k] => at2.push(last1),
            Expr::Input(k) => {
                at2.push(expr.len());
                expr.push(Expr::Input(from2[k]));
            }
            e => {
                at2.push(expr.len());
                expr.push(renumber(e, &at2));
            }
        }
    }
    // The consumer's result must be the last step.
    (at2.last() == Some(&(expr.len() - 1))).then(|| Kernel::Map { expr, inputs, channels, out: out.clone() })
}
