//! Losses, computed per example.

use super::{map, need, GradRule, OpRule};
use crate::ir::op::Read;
use crate::lir::lower::Lowerer;
use crate::lir::{Expr, Kernel};
use crate::shape::{Inferred, Shape, ShapeFault};
use std::fmt;

/// Attributes of [`crate::ir::Op::Loss`]: a weighted loss per example (a scalar `[]`). Inputs:
/// prediction, target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossOp {
    /// Which loss.
    pub kind: LossKind,
    /// Its weight in the total loss.
    pub weight: f32,
}

/// Losses, computed per example.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossKind {
    /// `−log softmax(logits)[label]`; the target is a class index.
    SoftmaxCrossEntropy,
    /// Binary cross-entropy of `sigmoid(logits)` against targets in [0, 1], summed over the vector.
    SigmoidCrossEntropy,
    /// `½‖prediction − target‖²`.
    L2,
    /// The detection loss of YOLO (and of classification with localization, a grid of one cell
    /// with one anchor): see [`DetectLoss`]. The target has the prediction's shape, encoded from
    /// the boxes by the runtime.
    Detect(DetectLoss),
    /// The triplet loss with online mining over the batch: see [`TripletLoss`]. The target is an
    /// identity (a class index) per example.
    Triplet(TripletLoss),
    /// The triplet loss `max(‖a − p‖² − ‖a − n‖² + margin, 0)` of triplets the data gives (`inputs
    /// triplets(..)`): the prediction is the three embeddings side by side, `[a | p | n]`. The
    /// target (the anchor's identity) is not read.
    GivenTriplet { margin: f32 },
}

/// FaceNet's triplet loss `max(‖f(A) − f(P)‖² − ‖f(A) − f(N)‖² + margin, 0)` with its triplets
/// mined in the batch, every example an anchor. `hard` (batch-hard): the anchor's farthest
/// positive with its nearest negative. `semi_hard` (FaceNet's): every positive of the anchor,
/// each with the nearest negative farther than it (else the farthest negative), their losses
/// averaged. An anchor alone of its identity in the batch adds nothing.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TripletLoss {
    /// α.
    pub margin: f32,
    /// Semi-hard negatives rather than the hardest.
    pub semi_hard: bool,
}

/// The detection loss over a grid of cells, each with `anchors` slots of `5 + classes` values
/// `(t_o, t_x, t_y, t_w, t_h, class scores..)`. A target slot is `(object, x, y, w, h, one-hot
/// class..)`. Where `object` is 1:
/// `coord·½[(σ(t_x) − x)² + (σ(t_y) − y)² + (t_w − w)² + (t_h − h)²] + bce(t_o, 1) + ce(classes)`;
/// elsewhere `noobj·bce(t_o, 0)`, and nothing else counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectLoss {
    /// Slots per cell.
    pub anchors: u32,
    /// Weight of the box terms.
    pub coord: f32,
    /// Weight of the objectness term where there is no object.
    pub noobj: f32,
}

impl LossKind {
    /// The loss called `name` in a train section, if the runtime implements it.
    pub fn from_name(name: &str) -> Option<LossKind> {
        match name {
            "softmax_cross_entropy" => Some(LossKind::SoftmaxCrossEntropy),
            "sigmoid_cross_entropy" => Some(LossKind::SigmoidCrossEntropy),
            "l2" => Some(LossKind::L2),
            _ => None,
        }
    }
}

impl LossKind {
    /// Whether the loss learns an embedding (a triplet loss, mined or given).
    pub fn embeds(&self) -> bool {
        matches!(self, LossKind::Triplet(_) | LossKind::GivenTriplet { .. })
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossKind::SoftmaxCrossEntropy => "softmax_cross_entropy",
            LossKind::SigmoidCrossEntropy => "sigmoid_cross_entropy",
            LossKind::L2 => "l2",
            LossKind::Detect(_) => "detect",
            LossKind::Triplet(_) => "triplet_mining",
            LossKind::GivenTriplet { .. } => "triplet",
        })
    }
}

impl OpRule for LossOp {
    fn mnemonic(&self) -> String {
        format!("loss.{}", self.kind)
    }

    fn attributes(&self) -> String {
        match self.kind {
            LossKind::Detect(d) => {
                format!("[weight={}, anchors={}, coord={}, noobj={}]", self.weight, d.anchors, d.coord, d.noobj)
            }
            LossKind::Triplet(t) => {
                let mining = if t.semi_hard { "semi_hard" } else { "hard" };
                format!("[weight={}, margin={}, mining={mining}]", self.weight, t.margin)
            }
            LossKind::GivenTriplet { margin } => format!("[weight={}, margin={margin}]", self.weight),
            _ => format!("[weight={}]", self.weight),
        }
    }

    fn infer(&self, inputs: &[&Shape]) -> Result<Inferred, ShapeFault> {
        let pred = need(inputs, 2)?;
        let target = inputs.get(1).ok_or(ShapeFault::Arity { expected: 2, got: 1 })?;
        let fits = match self.kind {
            LossKind::SoftmaxCrossEntropy | LossKind::Triplet(_) => pred.rank() == 1 && target.rank() == 0,
            LossKind::GivenTriplet { .. } => {
                pred.rank() == 1 && pred.0[0] > 0 && pred.0[0].is_multiple_of(3) && target.rank() == 0
            }
            LossKind::SigmoidCrossEntropy | LossKind::L2 => pred == *target,
            LossKind::Detect(d) => {
                let per = pred.channels() / (d.anchors as usize).max(1);
                pred == *target && d.anchors > 0 && per >= 5 && per * d.anchors as usize == pred.channels()
            }
        };
        if !fits {
            return Err(ShapeFault::ParamShape { expected: pred.clone(), got: (*target).clone() });
        }
        Ok(Shape(vec![]).into())
    }

    fn arity(&self, n: usize) -> bool {
        n == 2
    }

    fn macs(&self, _: &[&Shape], _: &Shape) -> u64 {
        0
    }

    fn grad(&self) -> GradRule {
        GradRule::PerInput
    }

    /// The seed of backpropagation: a function of the prediction and the target alone.
    fn reads(&self, _: usize) -> Vec<Read> {
        vec![Read::Input(0), Read::Input(1)]
    }

    fn lower(&self, l: &mut Lowerer) -> Result<(), String> {
        let (pred, target) = (l.input(0)?, l.input(1)?);
        let (pred, target) = (l.contiguous(pred), l.contiguous(target));
        let out = l.output(0);
        l.emit(Kernel::Loss { kind: self.kind, pred, target, out });
        Ok(())
    }

    /// The seed: weight/batch times each example's gradient.
    fn lower_grad(&self, l: &mut Lowerer, wrt: &[usize]) -> Result<(), String> {
        let (pred, target) = (l.read(Read::Input(0))?, l.read(Read::Input(1))?);
        let (pred, target) = (l.contiguous(pred), l.contiguous(target));
        let scale = self.weight / l.batch() as f32;
        for (k, &w) in wrt.iter().enumerate() {
            let out = l.output(k as u16);
            match (w, self.kind) {
                (0, kind) => {
                    l.emit(Kernel::LossGrad { kind, scale, pred: pred.clone(), target: target.clone(), dpred: out })
                }
                // Targets are data, never trained: their gradient is defined for completeness.
                (_, LossKind::L2) => {
                    let expr = vec![
                        Expr::Input(0),
                        Expr::Input(1),
                        Expr::Const(-1.0),
                        Expr::Mul(0, 2),
                        Expr::Add(1, 3),
                        Expr::Const(scale),
                        Expr::Mul(4, 5),
                    ];
                    l.emit(map(expr, vec![pred.clone(), target.clone()], vec![], out));
                }
                (_, _) => l.emit(Kernel::Fill { dst: out, value: 0.0 }),
            }
        }
        Ok(())
    }
}
