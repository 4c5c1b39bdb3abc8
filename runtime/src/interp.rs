//! The kernel-IR interpreter: runs a lowered [`Program`] inside one arena laid out by its memory
//! plan, with parameters and gradients read and written in place in the flat stores. One plain
//! function per kernel (GEMM through matrixmultiply); the second oracle, below the reference
//! executor, and the backend `cnnc run` trains with until native code exists.
//!
//! Every view of every kernel is checked against its buffer once, when the machine is built,
//! and no kernel's written range may overlap a range it reads (other than the one view it
//! accumulates into): that is what makes the slices the kernels take from the arena sound.

mod direct;
mod kernels;
pub mod microkernel;
mod tuned;
mod winograd;

pub use tuned::provider;

use crate::reference::{Ctx, Tensor};
use cnnc_codegen::{Jit, MapArgs, MapFn};
use cnnc_compiler::lir::{plan, BufId, DType, Expr, Kernel, MemoryPlan, Program, Space, View};
use ndarray::{ArrayD, IxDyn};
use rayon::prelude::*;
use std::ops::Range;

/// A fed input: model inputs as floats, class labels as integers.
#[derive(Clone, Copy, Debug)]
pub enum Feed<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// 32-bit integers.
    I32(&'a [i32]),
}

/// A program ready to run: its memory plan and its arena.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The program.
    pub program: Program,
    /// Where its arena buffers are.
    pub plan: MemoryPlan,
    arena: Vec<f32>,
    /// Time per kernel kind, when profiling.
    pub profile: Option<std::sync::Arc<std::sync::Mutex<crate::executor::Profile>>>,
    /// Per kernel: its native code, where the JIT backend has one.
    natives: Vec<Option<Native>>,
    /// The stamp of the parameters the prepare phase last ran on.
    prepared: Option<u64>,
    /// Constant right-hand operands of products packed once per change of the parameters for
    /// the micro-kernels (native inference programs), by the operand's buffer and offset.
    packed: std::collections::HashMap<(BufId, usize), tuned::Packed>,
}

/// Native code for a kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Native {
    /// A map the code generator compiled.
    Map(MapFn),
    /// A precompiled tuned kernel (`tuned.rs`).
    Tuned,
    /// A tuned product whose epilogue the code generator compiled.
    Epilogue(MapFn),
}

/// The memory one run sees, by space.
pub(crate) struct Mem<'a> {
    arena: *mut f32,
    arena_len: usize,
    params: &'a [f32],
    grads: *mut f32,
    grads_len: usize,
    feeds: &'a [Feed<'a>],
    offsets: &'a [Option<usize>],
    program: &'a Program,
    packed: &'a std::collections::HashMap<(BufId, usize), tuned::Packed>,
}

impl Machine {
    /// Plans `program`'s memory and checks every view against its buffer and every kernel's
    /// writes against its reads.
    pub fn new(program: Program) -> Result<Machine, String> {
        let plan = plan(&program);
        plan.check(&program)?;
        for (i, k) in program.prepare.iter().chain(&program.kernels).enumerate() {
            let (reads, writes) = k.access();
            for v in reads.iter().chain(&writes) {
                let b = program.buffers.get(v.buf.0 as usize).ok_or(format!("k{i} names no buffer b{}", v.buf.0))?;
                if v.end() > b.len || (v.rows() > 1 && v.pitch < v.cols()) {
                    return Err(format!("k{i} ({}) reaches past buffer b{} `{}`", k.name(), v.buf.0, b.name));
                }
            }
            for w in &writes {
                if matches!(program.buffers[w.buf.0 as usize].space, Space::Param(_) | Space::Input(_)) {
                    return Err(format!("k{i} ({}) writes into a parameter or an input", k.name()));
                }
                for other in writes.iter().filter(|o| !std::ptr::eq(**o, *w)) {
                    if overlap(&program, &plan, w, other) {
                        return Err(format!(
                            "k{i} ({}) writes b{} and b{} over each other",
                            k.name(),
                            w.buf.0,
                            other.buf.0
                        ));
                    }
                }
                for r in reads.iter().filter(|r| **r != *w) {
                    if overlap(&program, &plan, w, r) {
                        return Err(format!("k{i} ({}) writes b{} where it reads b{}", k.name(), w.buf.0, r.buf.0));
                    }
                }
            }
            if i < program.prepare.len() {
                let outside =
                    |v: &&View| !matches!(program.buffers[v.buf.0 as usize].space, Space::Param(_) | Space::Arena);
                if reads.iter().chain(&writes).any(outside) {
                    return Err(format!("prepare kernel p{i} ({}) reaches beyond parameters and the arena", k.name()));
                }
            }
            let winograd = match k {
                Kernel::ConvGemm { geom, winograd: Some(u), .. } => Some((u, geom.winograd_tile(u))),
                Kernel::WinogradFilters { w, u } => {
                    Some((u, cnnc_compiler::lir::winograd_tile(u.rows(), w.rows() / 9)))
                }
                _ => None,
            };
            if let Some((u, None)) = winograd {
                return Err(format!("k{i} ({}): b{} of {} rows is no Winograd form", k.name(), u.buf.0, u.rows()));
            }
            if let Kernel::Map { expr, .. } = k {
                if expr.len() > kernels::MAX_EXPR {
                    return Err(format!("k{i}: a map of {} steps (at most {})", expr.len(), kernels::MAX_EXPR));
                }
            }
        }
        let arena = vec![0.0; plan.size];
        let natives = vec![None; program.kernels.len()];
        Ok(Machine { program, plan, arena, profile: None, natives, prepared: None, packed: Default::default() })
    }

    /// Compiles the kernels `jit` can generate to native code and takes the tuned precompiled
    /// kernels for the others it covers; they run instead of the interpreter's functions from
    /// now on. Returns how many kernels are native.
    pub fn compile(&mut self, jit: &mut Jit) -> Result<usize, String> {
        // Every map and epilogue of the program at once (compiled on two threads).
        let exprs: Vec<&[Expr]> = self
            .program
            .kernels
            .iter()
            .filter_map(|k| match k {
                Kernel::Map { expr, .. } => Some(&expr[..]),
                k => native_epilogue(k).map(|e| &e.expr[..]),
            })
            .collect();
        let mut compiled = jit.maps(&exprs)?.into_iter();
        let mut count = 0;
        for (k, native) in self.program.kernels.iter().zip(&mut self.natives) {
            if let Kernel::Map { .. } = k {
                *native = Some(Native::Map(compiled.next().ok_or("a map was not compiled")?));
            } else if native_epilogue(k).is_some() {
                *native = Some(Native::Epilogue(compiled.next().ok_or("an epilogue was not compiled")?));
            } else if tuned::covers(k) {
                *native = Some(Native::Tuned);
            } else {
                continue;
            }
            count += 1;
        }
        Ok(count)
    }

    /// Runs the prepare phase unless it last ran on parameters of the same `stamp`
    /// ([`Params::stamp`](crate::params::Params::stamp)): equal stamps, equal values.
    pub fn prepare_once(&mut self, params: &[f32], stamp: u64) -> Result<(), String> {
        if self.prepared != Some(stamp) {
            self.prepare(params)?;
            self.prepared = Some(stamp);
        }
        Ok(())
    }

    /// Runs the prepare phase: computes the derived parameters from `params`. Call it whenever
    /// the parameters changed, before [`Machine::run`].
    pub fn prepare(&mut self, params: &[f32]) -> Result<(), String> {
        self.prepared = None;
        let fits = self.program.buffers.iter().all(|b| match b.space {
            Space::Param(o) => o + b.len <= params.len(),
            _ => true,
        });
        if !fits {
            return Err("the program's parameters lie beyond the store given".into());
        }
        let none = Default::default();
        let mem = Mem {
            arena: self.arena.as_mut_ptr(),
            arena_len: self.arena.len(),
            params,
            grads: std::ptr::null_mut(),
            grads_len: 0,
            feeds: &[],
            offsets: &self.plan.offsets,
            program: &self.program,
            packed: &none,
        };
        for k in &self.program.prepare {
            kernels::run(k, &mem, Ctx::default());
        }
        // Then the products' constant operands, the derived ones (merged filters) among them.
        self.packed = tuned::pack_constants(&self.program, &self.natives, &mem);
        Ok(())
    }

    /// Runs every kernel. `params` and `grads` are the flat stores (the layout the program was
    /// lowered with); `feeds` the inputs in the program's order.
    pub fn run(&mut self, params: &[f32], grads: &mut [f32], feeds: &[Feed], ctx: Ctx) -> Result<(), String> {
        self.run_with(params, grads, feeds, ctx, &mut |_, _| {})
    }

    /// The ranges of the gradient store the program writes, each with the last kernel that
    /// writes it: after that kernel the range holds its final value.
    pub fn grad_writes(&self) -> Vec<(usize, std::ops::Range<usize>)> {
        let mut last: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        for (i, k) in self.program.kernels.iter().enumerate() {
            for v in k.access().1 {
                let b = &self.program.buffers[v.buf.0 as usize];
                if let Space::Grad(o) = b.space {
                    match last.iter_mut().find(|(_, r)| r.start == o) {
                        Some(entry) => entry.0 = i,
                        None => last.push((i, o..o + b.len)),
                    }
                }
            }
        }
        last
    }

    /// [`Machine::run`], calling `after(i, grads)` after kernel `i` with the gradient store as
    /// it is then (what data-parallel training sends while the backward pass goes on).
    pub fn run_with(
        &mut self,
        params: &[f32],
        grads: &mut [f32],
        feeds: &[Feed],
        ctx: Ctx,
        after: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), String> {
        if feeds.len() != self.program.inputs.len() {
            return Err(format!("{} inputs fed, the program takes {}", feeds.len(), self.program.inputs.len()));
        }
        for (feed, (name, shape, dtype)) in feeds.iter().zip(&self.program.inputs) {
            let (len, fed) = match feed {
                Feed::F32(v) => (v.len(), DType::F32),
                Feed::I32(v) => (v.len(), DType::I32),
            };
            if len != shape.iter().product::<usize>() || fed != *dtype {
                return Err(format!("input `{name}` fed {len} {fed:?} values, the program takes {shape:?} {dtype:?}"));
            }
        }
        for b in &self.program.buffers {
            let fits = match b.space {
                Space::Param(o) => o + b.len <= params.len(),
                Space::Grad(o) => o + b.len <= grads.len(),
                Space::Arena | Space::Input(_) => true,
            };
            if !fits {
                return Err(format!("`{}` lies beyond the parameter store given", b.name));
            }
        }
        let mem = Mem {
            arena: self.arena.as_mut_ptr(),
            arena_len: self.arena.len(),
            params,
            grads: grads.as_mut_ptr(),
            grads_len: grads.len(),
            feeds,
            offsets: &self.plan.offsets,
            program: &self.program,
            packed: &self.packed,
        };
        for (i, (k, native)) in self.program.kernels.iter().zip(&self.natives).enumerate() {
            let started = self.profile.as_ref().map(|_| std::time::Instant::now());
            match (k, native) {
                (Kernel::Map { expr, inputs, channels, out }, Some(Native::Map(f))) => {
                    native_map(&mem, *f, expr, inputs, channels, out, ctx)?
                }
                (_, Some(Native::Tuned)) => tuned::run(k, &mem),
                (_, Some(Native::Epilogue(f))) => tuned::gemm_then(&mem, k, *f, ctx)?,
                _ => kernels::run(k, &mem, ctx),
            }
            if let (Some(p), Some(t)) = (&self.profile, started) {
                if let Ok(mut p) = p.lock() {
                    let t = t.elapsed();
                    p.add(k.name().to_string(), t, k.flops());
                    let (_, writes) = k.access();
                    let shape = writes.first().map(|v| format!("{:?}", v.shape)).unwrap_or_default();
                    p.add_kernel(format!("k{i} {} {shape}", k.name()), t, k.flops());
                }
            }
            // SAFETY: no kernel runs now (each has returned, its threads joined), and the store
            // is read through the pointer the kernels write through.
            after(i, unsafe { std::slice::from_raw_parts(mem.grads, mem.grads_len) });
        }
        Ok(())
    }

    /// The values of `view` (in the arena, or a store) after a run, as a tensor.
    pub fn read(&self, view: &View, params: &[f32], grads: &[f32]) -> Tensor {
        let b = &self.program.buffers[view.buf.0 as usize];
        let base: &[f32] = match b.space {
            Space::Arena => &self.arena[self.plan.offsets[view.buf.0 as usize].unwrap_or(0)..],
            Space::Param(o) => &params[o..],
            Space::Grad(o) => &grads[o..],
            Space::Input(_) => &[],
        };
        let (rows, cols) = (view.rows(), view.cols());
        let mut out = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let start = view.offset + r * view.pitch;
            out.extend_from_slice(base.get(start..start + cols).unwrap_or(&[]));
        }
        ArrayD::from_shape_vec(IxDyn(&view.shape), out).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&view.shape)))
    }

    /// How many products read a constant operand the prepare phase packed (native inference
    /// programs with few rows).
    pub fn packed_operands(&self) -> usize {
        self.packed.len()
    }

    /// Bytes of the arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena.len() * 4
    }
}

/// Runs a compiled map on views of `mem`. Where every view is contiguous, `k` rows side by side
/// make one row of `k·cols` (per-channel inputs repeated `k` times), so narrow rows (6 channels)
/// still fill the vector lanes; large maps are split in blocks of rows over the rayon pool (each
/// element is computed alone, so the split changes no bit). A map with dropout runs whole: its
/// mask hashes the row index.
fn native_map(
    mem: &Mem,
    f: MapFn,
    expr: &[Expr],
    inputs: &[View],
    channels: &[View],
    out: &View,
    ctx: Ctx,
) -> Result<(), String> {
    let (rows, cols) = (out.rows(), out.cols());
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let contiguous = rows == 1 || (out.pitch == cols && inputs.iter().all(|v| v.pitch == cols));
    let k = if contiguous { side_by_side(rows, cols) } else { 1 };
    let narrow = cols;
    let (rows, cols) = (rows / k, cols * k);
    let pitch = |v: &View| if k > 1 { cols } else { v.pitch };
    // Raw pointers throughout: an epilogue's input may be its output.
    let ins: Vec<Region> = inputs.iter().map(|v| mem.region(v, pitch(v))).collect();
    let tiled: Vec<Vec<f32>> =
        if k > 1 { channels.iter().map(|v| mem.src(v)[..narrow.min(v.len())].repeat(k)).collect() } else { vec![] };
    let chs: Vec<Region> = if k > 1 {
        tiled.iter().map(|t| Region::of(t, 0)).collect()
    } else {
        channels.iter().map(|v| mem.region(v, 0)).collect()
    };
    let dst = mem.region(out, pitch(out));
    let threads = crate::bench::threads();
    let dropout = expr.iter().any(|e| matches!(e, Expr::Keep { .. }));
    let parts = if dropout || threads < 2 || rows * cols < PARALLEL_MAP { 1 } else { threads.min(rows) };
    let block = rows.div_ceil(parts);
    let run = |part: usize| -> Result<(), String> {
        let r0 = part * block;
        let n = block.min(rows - r0.min(rows));
        if n == 0 {
            return Ok(());
        }
        let pointers: Vec<*const f32> = ins.iter().map(|s| s.at(r0)).collect();
        let pitches: Vec<usize> = ins.iter().map(|s| s.pitch).collect();
        let lens: Vec<usize> = ins.iter().map(|s| s.len_from(r0)).collect();
        let channel_pointers: Vec<*const f32> = chs.iter().map(|s| s.ptr).collect();
        let channel_lens: Vec<usize> = chs.iter().map(|s| s.len).collect();
        let mut args = MapArgs {
            inputs: pointers.as_ptr(),
            input_pitch: pitches.as_ptr(),
            input_len: lens.as_ptr(),
            channels: channel_pointers.as_ptr(),
            channel_len: channel_lens.as_ptr(),
            out: dst.at(r0).cast_mut(),
            out_pitch: dst.pitch,
            out_len: dst.len_from(r0),
            rows: n,
            cols,
            seed: ctx.seed,
            step: ctx.step,
            first: ctx.offset(rows * cols),
            fault: 0,
        };
        // SAFETY: every pointer is to a slice that holds the view's rows from `r0` (checked when
        // the machine was built; `len_from` is what remains of it), the arrays hold one entry per
        // input the expression reads, the blocks of rows the parts write are disjoint, and the
        // code was compiled for exactly this argument layout.
        unsafe { f(&mut args) };
        if args.fault != 0 {
            return Err(format!("a compiled map read or wrote outside its buffers ({n} rows × {cols} columns)"));
        }
        Ok(())
    };
    if parts == 1 {
        run(0)
    } else {
        (0..parts).into_par_iter().map(run).collect()
    }
}

/// Maps smaller than this (elements) run on one thread.
const PARALLEL_MAP: usize = 1 << 15;

/// How many rows of `cols` to put side by side: the most that divide `rows` and keep a row
/// within 512 elements (1 for rows already that wide).
fn side_by_side(rows: usize, cols: usize) -> usize {
    let most = (512 / cols.max(1)).clamp(1, rows);
    (1..=most).rev().find(|k| rows.is_multiple_of(*k)).unwrap_or(1)
}

/// A slice a compiled map reads or writes, by raw pointer so that blocks of it cross threads.
#[derive(Clone, Copy)]
struct Region {
    ptr: *const f32,
    len: usize,
    pitch: usize,
}

// SAFETY: a region is only read, or written in blocks of rows no other thread touches.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    fn of(s: &[f32], pitch: usize) -> Region {
        Region { ptr: s.as_ptr(), len: s.len(), pitch }
    }

    /// Row `r`'s first element.
    fn at(&self, r: usize) -> *const f32 {
        self.ptr.wrapping_add((r * self.pitch).min(self.len))
    }

    /// Elements from row `r`'s first to the end.
    fn len_from(&self, r: usize) -> usize {
        self.len - (r * self.pitch).min(self.len)
    }
}

/// The epilogue of a product the tuned kernels run with a compiled epilogue
/// ([`tuned::gemm_then`]).
fn native_epilogue(k: &Kernel) -> Option<&cnnc_compiler::lir::Epilogue> {
    match k {
        Kernel::Gemm { epilogue: Some(e), .. } | Kernel::ConvGemm { epilogue: Some(e), .. } => Some(e),
        Kernel::PoolGemm { epilogue: Some(e), .. } if tuned::covers(k) => Some(e),
        _ => None,
    }
}

/// Whether two views can share an element, given where their buffers are.
fn overlap(p: &Program, plan: &MemoryPlan, a: &View, b: &View) -> bool {
    let (Some(ra), Some(rb)) = (span(p, plan, a), span(p, plan, b)) else { return false };
    ra.0 == rb.0 && ra.1.start < rb.1.end && rb.1.start < ra.1.end
}

/// A view's space (arena, gradients, or a buffer of its own) and element range in it.
fn span(p: &Program, plan: &MemoryPlan, v: &View) -> Option<(u64, Range<usize>)> {
    let b = &p.buffers[v.buf.0 as usize];
    let (space, base) = match b.space {
        Space::Arena => (0, plan.offsets[v.buf.0 as usize]?),
        Space::Grad(o) => (1, o),
        Space::Param(_) | Space::Input(_) => (2 + u64::from(v.buf.0), 0),
    };
    Some((space, base + v.offset..base + v.end()))
}

// SAFETY: a `Mem` hands out slices of the run's buffers; kernels that split their work over
// threads give each thread disjoint ranges to write (blocks of rows, examples), and no kernel
// writes where it reads.
unsafe impl Sync for Mem<'_> {}

impl Mem<'_> {
    fn base(&self, buf: BufId) -> (*mut f32, usize) {
        let b = &self.program.buffers[buf.0 as usize];
        match b.space {
            Space::Arena => {
                let at = self.offsets[buf.0 as usize].unwrap_or(0);
                // SAFETY: the plan keeps every arena buffer inside the arena.
                (unsafe { self.arena.add(at.min(self.arena_len)) }, self.arena_len.saturating_sub(at))
            }
            // SAFETY: `run` checked that every gradient buffer lies inside the store.
            Space::Grad(o) => (unsafe { self.grads.add(o) }, self.grads_len - o),
            Space::Param(o) => (self.params[o..].as_ptr().cast_mut(), self.params.len() - o),
            Space::Input(i) => match self.feeds[i] {
                Feed::F32(v) => (v.as_ptr().cast_mut(), v.len()),
                Feed::I32(v) => (v.as_ptr().cast::<f32>().cast_mut(), v.len()),
            },
        }
    }

    /// The elements a view spans, as a raw region (no reference made) with row pitch `pitch`.
    fn region(&self, v: &View, pitch: usize) -> Region {
        let (ptr, len) = self.base(v.buf);
        let end = v.end().min(len);
        let start = v.offset.min(end);
        Region { ptr: ptr.wrapping_add(start), len: end - start, pitch }
    }

    /// The elements a view spans (its rows and the gaps between them), to read.
    pub(crate) fn src(&self, v: &View) -> &[f32] {
        let (ptr, len) = self.base(v.buf);
        let end = v.end().min(len);
        // SAFETY: `Machine::new` checked the view inside its buffer; no kernel writes where it
        // reads, so no `dst` slice of the same kernel aliases this one.
        unsafe { std::slice::from_raw_parts(ptr.add(v.offset.min(end)), end - v.offset.min(end)) }
    }

    /// A view's elements as integers (class labels).
    pub(crate) fn src_i32(&self, v: &View) -> &[i32] {
        let s = self.src(v);
        // SAFETY: an `I32` buffer is fed as `&[i32]`; f32 and i32 have one size and alignment.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<i32>(), s.len()) }
    }

    /// The elements a view spans, to write.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn dst(&self, v: &View) -> &mut [f32] {
        let (ptr, len) = self.base(v.buf);
        let end = v.end().min(len);
        // SAFETY: as for `src`; parameters and inputs are never written (the lowering writes
        // only arena and gradient buffers), and each kernel takes one `dst` at a time.
        unsafe { std::slice::from_raw_parts_mut(ptr.add(v.offset.min(end)), end - v.offset.min(end)) }
    }

    /// The packed form of a product's constant right-hand operand `b` (`k × n`, strides `rsb`,
    /// `csb`), if it has one.
    pub(crate) fn packed(&self, b: &View, shape: [usize; 4]) -> Option<&[f32]> {
        self.packed.get(&(b.buf, b.offset)).filter(|p| p.shape == shape).map(|p| &p.values[..])
    }

    pub(crate) fn dtype(&self, v: &View) -> DType {
        self.program.buffers[v.buf.0 as usize].dtype
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnnc_compiler::lir::{Buffer, Expr, Purpose};

    fn buffer(space: Space, kept: bool) -> Buffer {
        Buffer { name: String::new(), space, len: 4, dtype: DType::F32, kept }
    }

    #[test]
    fn the_prepare_phase_derives_parameters_that_the_step_reads() {
        // prepare: b1 = 2·w; step: b2 = b1 + 1.
        let view = |b: u32| View::whole(BufId(b), vec![4]);
        let map = |expr: Vec<Expr>, from: u32, to: u32| Kernel::Map {
            expr,
            inputs: vec![view(from)],
            channels: vec![],
            out: view(to),
        };
        let program = Program {
            name: "derived".into(),
            batch: 1,
            buffers: vec![buffer(Space::Param(0), false), buffer(Space::Arena, true), buffer(Space::Arena, true)],
            prepare: vec![map(vec![Expr::Input(0), Expr::Const(2.0), Expr::Mul(0, 1)], 0, 1)],
            kernels: vec![map(vec![Expr::Input(0), Expr::Const(1.0), Expr::Add(0, 1)], 1, 2)],
            inputs: vec![],
            results: vec![(Purpose::Value(cnnc_compiler::ir::NodeId::new(0).into()), view(2))],
        };
        let mut m = Machine::new(program.clone()).unwrap();
        let params = [1.0, 2.0, 3.0, 4.0];
        m.prepare(&params).unwrap();
        m.run(&params, &mut [], &[], Ctx::default()).unwrap();
        assert_eq!(m.read(&view(2), &params, &[]).as_slice().unwrap(), &[3.0, 5.0, 7.0, 9.0]);
        // The derived buffer keeps its values across runs; a new prepare follows new parameters.
        let params = [0.0, 0.0, 0.0, 1.0];
        m.run(&params, &mut [], &[], Ctx::default()).unwrap();
        assert_eq!(m.read(&view(2), &params, &[]).as_slice().unwrap(), &[3.0, 5.0, 7.0, 9.0]);
        m.prepare(&params).unwrap();
        m.run(&params, &mut [], &[], Ctx::default()).unwrap();
        assert_eq!(m.read(&view(2), &params, &[]).as_slice().unwrap(), &[1.0, 1.0, 1.0, 3.0]);
        // A prepare kernel may not write a parameter.
        let mut bad = program;
        bad.prepare = vec![map(vec![Expr::Input(0)], 1, 0)];
        assert!(Machine::new(bad).is_err());
    }
}
