//! The kernel program as text (`cnnc build --emit lir`): buffers, then kernels with their views
//! (`b3[64, 28, 28, 6]`, with `+offset` and `/pitch` where they are not the defaults).

use super::{Geom, Kernel, Program, Space, View};
use std::fmt::Write;

fn view(v: &View) -> String {
    let shape: Vec<String> = v.shape.iter().map(|d| d.to_string()).collect();
    let mut s = format!("b{}", v.buf.0);
    if v.offset != 0 {
        s += &format!("+{}", v.offset);
    }
    s += &format!("[{}]", shape.join(","));
    if !v.contiguous() {
        s += &format!("/{}", v.pitch);
    }
    s
}

fn geom(g: &Geom) -> String {
    let t = |a: &[usize; 3]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("x");
    format!("f={},s={},p={},d={},c={}+{}", t(&g.size), t(&g.stride), t(&g.pad), t(&g.dilation), g.c0, g.cg)
}

/// A product's epilogue: ` then [steps] (inputs) per-channel (channels)`.
fn epilogue_text(e: &super::Epilogue) -> String {
    let ins: Vec<String> = e.inputs.iter().map(view).collect();
    let chs: Vec<String> = e.channels.iter().map(view).collect();
    let routes: String = e.routes.iter().map(|(start, v)| format!(", columns {start}.. -> {}", view(v))).collect();
    format!(" then {:?} ({}) per-channel ({}){routes}", e.expr, ins.join(", "), chs.join(", "))
}

fn opt(v: &Option<View>) -> String {
    v.as_ref().map_or("-".into(), view)
}

pub(super) fn program(p: &Program) -> String {
    let mut out = format!("program {} (batch {})\n", p.name, p.batch);
    for (i, b) in p.buffers.iter().enumerate() {
        let space = match b.space {
            Space::Arena => "arena".to_string(),
            Space::Param(o) => format!("param@{o}"),
            Space::Grad(o) => format!("grad@{o}"),
            Space::Input(i) => format!("input{i}"),
        };
        let kept = if b.kept { " kept" } else { "" };
        let _ = writeln!(out, "  b{i} = {space} {:?} {} \"{}\"{kept}", b.dtype, b.len, b.name);
    }
    let prepare = p.prepare.iter().map(|k| ("p", k));
    for (i, (tag, k)) in prepare.chain(p.kernels.iter().map(|k| ("k", k))).enumerate() {
        let i = if tag == "p" { i } else { i - p.prepare.len() };
        let args = match k {
            Kernel::Gemm { a, b, c, ta, tb, accumulate, bias, epilogue } => format!(
                "{}{} x {}{} {} {}{}{}",
                view(a),
                if *ta { "ᵀ" } else { "" },
                view(b),
                if *tb { "ᵀ" } else { "" },
                if *accumulate { "+=" } else { "->" },
                view(c),
                bias.as_ref().map_or(String::new(), |b| format!(" bias {}", view(b))),
                epilogue.as_deref().map_or(String::new(), epilogue_text)
            ),
            Kernel::BnAffine { mean, var, gamma, beta, eps, scale, shift } => format!(
                "[eps={eps}] mean {} var {} γ {} β {} -> {}, {}",
                view(mean),
                view(var),
                view(gamma),
                view(beta),
                view(scale),
                view(shift)
            ),
            Kernel::ConvWeightGrad { x, geom: g, dy, c } => {
                format!("[{}] im2col {}ᵀ x {} -> {}", geom(g), view(x), view(dy), view(c))
            }
            Kernel::ConvGemm { x, geom: g, b, c, tb, bias, epilogue, winograd, stats } => format!(
                "[{}] im2col {} x {}{}{} -> {}{}{}{}",
                geom(g),
                view(x),
                view(b),
                if *tb { "ᵀ" } else { "" },
                winograd.as_ref().map_or(String::new(), |u| format!(" winograd {}", view(u))),
                view(c),
                bias.as_ref().map_or(String::new(), |b| format!(" bias {}", view(b))),
                epilogue.as_deref().map_or(String::new(), epilogue_text),
                stats.as_ref().map_or(String::new(), |s| format!(" stats -> {}, {}", view(&s.mean), view(&s.var)))
            ),
            Kernel::PoolGemm { kind, x, geom: g, b, c, bias, epilogue } => format!(
                "[{kind},{}] pool {} x {} -> {}{}{}",
                geom(g),
                view(x),
                view(b),
                view(c),
                bias.as_ref().map_or(String::new(), |b| format!(" bias {}", view(b))),
                epilogue.as_deref().map_or(String::new(), epilogue_text)
            ),
            Kernel::WinogradFilters { w, u } => format!("{} -> {}", view(w), view(u)),
            Kernel::Im2col { x, col, geom: g } => format!("[{}] {} -> {}", geom(g), view(x), view(col)),
            Kernel::Col2im { col, dx, geom: g } => format!("[{}] {} += {}", geom(g), view(dx), view(col)),
            Kernel::Pool { kind, x, y, geom: g } => format!("[{kind},{}] {} -> {}", geom(g), view(x), view(y)),
            Kernel::PoolGrad { kind, x, dy, dx, geom: g } => {
                format!("[{kind},{}] x {} dy {} -> {}", geom(g), opt(x), view(dy), view(dx))
            }
            Kernel::GlobalPool { kind, x, y } => format!("[{kind}] {} -> {}", view(x), view(y)),
            Kernel::GlobalPoolGrad { kind, x, y, dy, dx } => {
                format!("[{kind}] x {} y {} dy {} -> {}", opt(x), opt(y), view(dy), view(dx))
            }
            Kernel::SumRows { x, y } => format!("{} -> {}", view(x), view(y)),
            Kernel::Map { expr, inputs, channels, out } => {
                let ins: Vec<String> = inputs.iter().map(view).collect();
                let chs: Vec<String> = channels.iter().map(view).collect();
                format!("{expr:?} ({}) per-channel ({}) -> {}", ins.join(", "), chs.join(", "), view(out))
            }
            Kernel::Softmax { x, y } => format!("{} -> {}", view(x), view(y)),
            Kernel::SoftmaxGrad { y, dy, dx } => format!("y {} dy {} -> {}", view(y), view(dy), view(dx)),
            Kernel::L2Norm { x, y, eps } => format!("{} -> {} [eps={eps}]", view(x), view(y)),
            Kernel::Pad { x, y, before } => format!("{} -> {} [before={before:?}]", view(x), view(y)),
            Kernel::Crop { dy, dx, before } => format!("{} -> {} [before={before:?}]", view(dy), view(dx)),
            Kernel::L2NormGrad { x, dy, dx, eps } => {
                format!("x {} dy {} -> {} [eps={eps}]", view(x), view(dy), view(dx))
            }
            Kernel::BnStats { x, mean, var } => format!("{} -> {}, {}", view(x), view(mean), view(var)),
            Kernel::BnApply { x, mean, var, gamma, beta, y, eps } => format!(
                "[eps={eps}] {} mean {} var {} γ {} β {} -> {}",
                view(x),
                view(mean),
                view(var),
                view(gamma),
                view(beta),
                view(y)
            ),
            Kernel::BnGrad { x, mean, var, gamma, dy, dx, dgamma, dbeta, eps, training } => format!(
                "[eps={eps}{}] x {} mean {} var {} γ {} dy {} -> dx {} dγ {} dβ {}",
                if *training { ",batch" } else { ",running" },
                opt(x),
                opt(mean),
                opt(var),
                opt(gamma),
                view(dy),
                opt(dx),
                opt(dgamma),
                opt(dbeta)
            ),
            Kernel::Loss { kind, pred, target, out } => {
                format!("[{kind}] {} {} -> {}", view(pred), view(target), view(out))
            }
            Kernel::LossGrad { kind, scale, pred, target, dpred } => {
                format!("[{kind},scale={scale}] {} {} -> {}", view(pred), view(target), view(dpred))
            }
            Kernel::Copy { src, dst } => format!("{} -> {}", view(src), view(dst)),
            Kernel::RotateFilters { w, out, taps } => format!("[taps={taps}] {} -> {}", view(w), view(out)),
            Kernel::Fill { dst, value } => format!("{value} -> {}", view(dst)),
        };
        let _ = writeln!(out, "  {tag}{i} = {} {args}", k.name());
    }
    for (_, v) in &p.results {
        let _ = writeln!(out, "  result \"{}\" = {}", p.buffers[v.buf.0 as usize].name, view(v));
    }
    out
}
