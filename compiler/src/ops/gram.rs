//! The Gram matrix of a feature map (neural style transfer's style representation):
//! `G[c, c'] = Σ_p a[p, c]·a[p, c']` over every position `p`, unnormalized as the course writes it.

use super::{conv_rank, need, GradRule, LayerSpec, OpRule, Tensors};
use crate::ir::op::{Op, Read};
use crate::lir::lower::Lowerer;
use crate::lir::{Kernel, View};
use crate::shape::{Inferred, Shape, ShapeFault};

/// `gram` ([`Op::Gram`]): `[.., n_C]` to `[n_C, n_C]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gram;

/// `gram`.
pub const GRAM: LayerSpec = LayerSpec {
    name: "gram",
    tensors: Tensors::One,
    params: &[],
    signature: "gram",
    doc: "Gram matrix of a feature map, G = AᵀA over positions: [.., n_C] to [n_C, n_C].",
    build: |_| Some((Op::Gram, vec![])),
};

/// Example `i`'s feature map of the contiguous `x` `[n, .., c]` as a matrix `[positions, c]`.
fn example(x: &View, i: usize) -> View {
    let c = x.cols();
    let positions = x.shape[1..x.shape.len() - 1].iter().product::<usize>();
    View { buf: x.buf, offset: x.offset + i * positions * c, shape: vec![positions, c], pitch: c }
}

/// Example `i`'s `[c, c]` matrix of `g` `[n, c, c]`.
fn matrix(g: &View, i: usize) -> View {
    let c = g.cols();
    View { buf: g.buf, offset: g.offset + i * c * c, shape: vec![c, c], pitch: c }
}

impl OpRule for Gram {
    fn mnemonic(&self) -> String {
        "gram".into()
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let x = need(inputs, 1)?;
        conv_rank(x)?;
        Ok(Shape(vec![x.channels(), x.channels()]).into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 1
    }

    fn macs(&self, inputs: &[&Shape], _: &Shape) -> u64 {
        inputs.first().map_or(0, |x| super::elements(x) * x.channels() as u64)
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// `dA = A·(dG + dGᵀ)`.
    fn reads(&self, _: usize) -> Vec<Read> {
        vec![Read::Input(0), Read::Grad]
    }

    /// One product `AᵀA` per example.
    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let x = l.input(0)?;
        let x = l.contiguous(x);
        let g = l.output(0);
        for i in 0..l.batch() {
            let a = example(&x, i);
            let c = matrix(&g, i);
            l.emit(Kernel::Gemm {
                a: a.clone(),
                b: a,
                c,
                ta: true,
                tb: false,
                accumulate: false,
                bias: None,
                epilogue: None,
            });
        }
        Ok(())
    }

    /// `dA = A·dG`, then `dA += A·dGᵀ`, per example.
    fn lower_grad(&self, l: &mut Lowerer, _: &[usize]) -> Result<(), String> {
        let x = l.read(Read::Input(0))?;
        let x = l.contiguous(x);
        let dy = l.read(Read::Grad)?;
        let dy = l.contiguous(dy);
        let dx = l.output(0);
        for i in 0..l.batch() {
            let (a, dg, out) = (example(&x, i), matrix(&dy, i), example(&dx, i));
            for (tb, accumulate) in [(false, false), (true, true)] {
                l.emit(Kernel::Gemm {
                    a: a.clone(),
                    b: dg.clone(),
                    c: out.clone(),
                    ta: false,
                    tb,
                    accumulate,
                    bias: None,
                    epilogue: None,
                });
            }
        }
        Ok(())
    }
}
