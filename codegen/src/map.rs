//! The fused element-wise map: `out[r, c] = expr(inputs[i][r, c], channels[j][c])` over every
//! row and column, compiled from its expression. One function per distinct expression (the
//! template key); rows, columns, pitches and pointers are arguments.

use super::Jit;
use cnnc_compiler::lir::Expr;
use cranelift_codegen::control::ControlPlane;
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{types, AbiParam, Block, Endianness, InstBuilder, MemFlagsData, Value};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::JITBuilder;
use cranelift_module::{FuncId, Linkage, Module, ModuleReloc};
use std::mem::offset_of;

/// What a compiled map reads: pointers to its views, their row pitches and lengths, the shape,
/// the dropout context, and a fault flag it sets in bounds-checked mode.
#[repr(C)]
#[derive(Debug)]
pub struct MapArgs {
    /// Each input's first element.
    pub inputs: *const *const f32,
    /// Each input's row pitch.
    pub input_pitch: *const usize,
    /// Each input's elements from its first (for bounds checks).
    pub input_len: *const usize,
    /// Each per-channel input's first element.
    pub channels: *const *const f32,
    /// Each per-channel input's length.
    pub channel_len: *const usize,
    /// The output's first element.
    pub out: *mut f32,
    /// The output's row pitch.
    pub out_pitch: usize,
    /// The output's elements from its first.
    pub out_len: usize,
    /// Rows.
    pub rows: usize,
    /// Columns (the last axis).
    pub cols: usize,
    /// The run's seed (dropout).
    pub seed: u64,
    /// The training step (dropout).
    pub step: u64,
    /// Added to every element's index in dropout's hash: where this batch starts in the global
    /// batch of a data-parallel step, in elements (0 in one process).
    pub first: u64,
    /// Set to 1 by a bounds-checked kernel that found an access out of bounds.
    pub fault: u32,
}

/// A compiled map.
pub type MapFn = unsafe extern "C" fn(*mut MapArgs);

/// Dropout's mask: `1/(1 − rate)` where element `index` is kept at this step, else 0 (the hash
/// of the reference, `cnnc_runtime::reference::elementwise_keep`, written out again here so the
/// code generator does not depend on the runtime; the differential tests hold them equal).
extern "C" fn cnnc_keep(seed: u64, step: u64, salt: u64, index: u64, rate: f32) -> f32 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.rotate_left(29) ^ index;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    if rate == 0.0 || (z >> 40) as f32 / (1u64 << 24) as f32 >= rate {
        1.0 / (1.0 - rate)
    } else {
        0.0
    }
}

/// Makes the Rust functions that compiled maps call known to the JIT.
pub(super) fn register_symbols(builder: &mut JITBuilder) {
    builder.symbol("cnnc_keep", cnnc_keep as *const u8);
}

impl Jit {
    /// The compiled map of `expr` (compiled on first request).
    pub fn map(&mut self, expr: &[Expr]) -> Result<MapFn, String> {
        Ok(self.maps(&[expr])?[0])
    }

    /// The compiled maps of `exprs`, in order. Those not compiled yet (each distinct expression
    /// once) are built here, then compiled by Cranelift on two threads when there are several,
    /// and defined together.
    pub fn maps(&mut self, exprs: &[&[Expr]]) -> Result<Vec<MapFn>, String> {
        let mut todo: Vec<(String, FuncId, Context)> = Vec::new();
        for expr in exprs {
            let key = format!("{expr:?}");
            if self.maps.contains_key(&key) || todo.iter().any(|(k, _, _)| *k == key) {
                continue;
            }
            let name = self.next_name("map");
            let (id, ctx) = self.build_map(&name, expr)?;
            todo.push((key, id, ctx));
        }
        if !todo.is_empty() {
            let isa = self.module.isa();
            let compile = |part: &mut [(String, FuncId, Context)]| -> Result<(), String> {
                for (_, _, ctx) in part.iter_mut() {
                    ctx.compile(isa, &mut ControlPlane::default()).map_err(|e| format!("{e:?}"))?;
                }
                Ok(())
            };
            let chunk = todo.len().div_ceil(2);
            if todo.len() == 1 {
                compile(&mut todo)?;
            } else {
                std::thread::scope(|s| {
                    let workers: Vec<_> = todo.chunks_mut(chunk).map(|part| s.spawn(move || compile(part))).collect();
                    workers
                        .into_iter()
                        .try_for_each(|w| w.join().map_err(|_| "a compile thread panicked".to_string())?)
                })?;
            }
            for (_, id, ctx) in &todo {
                let code = ctx.compiled_code().ok_or("a map was not compiled")?;
                let relocs: Vec<ModuleReloc> =
                    code.buffer.relocs().iter().map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, *id)).collect();
                self.module
                    .define_function_bytes(*id, u64::from(code.buffer.alignment), code.buffer.data(), &relocs)
                    .map_err(|e| format!("{e:?}"))?;
            }
            self.module.finalize_definitions().map_err(|e| e.to_string())?;
            for (key, id, _) in todo {
                let code = self.module.get_finalized_function(id);
                // SAFETY: the function was built with the signature `MapFn` describes: one
                // pointer argument, no result, the host's default calling convention.
                let f: MapFn = unsafe { std::mem::transmute::<*const u8, MapFn>(code) };
                self.maps.insert(key, f);
            }
        }
        exprs
            .iter()
            .map(|e| self.maps.get(&format!("{e:?}")).copied().ok_or_else(|| "a map went missing".to_string()))
            .collect()
    }

    /// Declares map `name` and builds its Cranelift IR, not yet compiled.
    fn build_map(&mut self, name: &str, expr: &[Expr]) -> Result<(FuncId, Context), String> {
        let (id, ctx) = build_map(&mut self.module, name, Linkage::Local, expr, self.options.checked)?;
        self.clif.push((name.to_string(), ctx.func.display().to_string()));
        Ok((id, ctx))
    }
}

/// Declares an imported function `name` of `module`.
pub(crate) fn import<M: Module>(
    module: &mut M,
    name: &str,
    params: &[types::Type],
    ret: types::Type,
) -> Result<FuncId, String> {
    let mut sig = module.make_signature();
    sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    sig.returns.push(AbiParam::new(ret));
    module.declare_function(name, Linkage::Import, &sig).map_err(|e| e.to_string())
}

/// Declares map `name` in `module` (a JIT's or an object file's) and builds its Cranelift IR,
/// not yet compiled. Dropout's hash is an imported `cnnc_keep`.
pub(crate) fn build_map<M: Module>(
    module: &mut M,
    name: &str,
    linkage: Linkage,
    expr: &[Expr],
    checked: bool,
) -> Result<(FuncId, Context), String> {
    let ptr = module.target_config().pointer_type();
    // Dropout's hash, imported only where a step needs it (an object file's maps never do).
    let keep = if expr.iter().any(|e| matches!(e, Expr::Keep { .. })) {
        Some(import(module, "cnnc_keep", &[types::I64, types::I64, types::I64, types::I64, types::F32], types::F32)?)
    } else {
        None
    };
    let mut ctx = module.make_context();
    ctx.func.signature.params.push(AbiParam::new(ptr));
    let id = module.declare_function(name, linkage, &ctx.func.signature).map_err(|e| e.to_string())?;
    let config = module.target_config();
    {
        let mut fctx = FunctionBuilderContext::new();
        let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
        let fns = [keep.map(|f| module.declare_func_in_func(f, b.func))];
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let args = b.block_params(entry)[0];
        let flags = MemFlagsData::trusted();
        let field = |b: &mut FunctionBuilder, offset: usize| b.ins().load(types::I64, flags, args, offset as i32);
        let n_inputs = expr.iter().filter_map(|e| if let Expr::Input(i) = e { Some(i + 1) } else { None }).max();
        let n_channels = expr.iter().filter_map(|e| if let Expr::Channel(i) = e { Some(i + 1) } else { None }).max();
        let (inputs, pitches, lens, channels, channel_lens) = (
            field(&mut b, offset_of!(MapArgs, inputs)),
            field(&mut b, offset_of!(MapArgs, input_pitch)),
            field(&mut b, offset_of!(MapArgs, input_len)),
            field(&mut b, offset_of!(MapArgs, channels)),
            field(&mut b, offset_of!(MapArgs, channel_len)),
        );
        let load_at =
            |b: &mut FunctionBuilder, base: Value, i: usize| b.ins().load(types::I64, flags, base, (i * 8) as i32);
        let mut ins = Vec::new();
        for i in 0..n_inputs.unwrap_or(0) {
            ins.push((load_at(&mut b, inputs, i), load_at(&mut b, pitches, i), load_at(&mut b, lens, i)));
        }
        let mut chs = Vec::new();
        for i in 0..n_channels.unwrap_or(0) {
            chs.push((load_at(&mut b, channels, i), load_at(&mut b, channel_lens, i)));
        }
        let out = field(&mut b, offset_of!(MapArgs, out));
        let out_pitch = field(&mut b, offset_of!(MapArgs, out_pitch));
        let out_len = field(&mut b, offset_of!(MapArgs, out_len));
        let rows = field(&mut b, offset_of!(MapArgs, rows));
        let cols = field(&mut b, offset_of!(MapArgs, cols));
        let seed = field(&mut b, offset_of!(MapArgs, seed));
        let step = field(&mut b, offset_of!(MapArgs, step));
        let first = field(&mut b, offset_of!(MapArgs, first));

        let (row_head, row_body, col_head, row_next, exit, fault) = (
            b.create_block(),
            b.create_block(),
            b.create_block(),
            b.create_block(),
            b.create_block(),
            b.create_block(),
        );
        b.append_block_param(row_head, types::I64);
        b.append_block_param(col_head, types::I64);
        let zero = b.ins().iconst(types::I64, 0);
        b.ins().jump(row_head, &[zero.into()]);

        b.switch_to_block(row_head);
        let r = b.block_params(row_head)[0];
        let more_rows = b.ins().icmp(IntCC::UnsignedLessThan, r, rows);
        b.ins().brif(more_rows, row_body, &[], exit, &[]);

        b.switch_to_block(row_body);
        let zero = b.ins().iconst(types::I64, 0);
        b.ins().jump(col_head, &[zero.into()]);

        b.switch_to_block(col_head);
        let c = b.block_params(col_head)[0];
        // Four columns at a time while four remain, when every step has a vector form;
        // then (or else) one at a time.
        let (scalar_head, scalar_body, vector_body) = (b.create_block(), b.create_block(), b.create_block());
        b.append_block_param(scalar_head, types::I64);
        if vectorizable(expr) {
            let c4 = b.ins().iadd_imm_u(c, 4);
            let four_more = b.ins().icmp(IntCC::UnsignedLessThanOrEqual, c4, cols);
            b.ins().brif(four_more, vector_body, &[], scalar_head, &[c.into()]);
        } else {
            b.ins().jump(scalar_head, &[c.into()]);
        }

        b.switch_to_block(vector_body);
        if vectorizable(expr) {
            let at = Site { r, c, lanes: 4, checked, fault };
            let result = emit(&mut b, expr, &at, &ins, &chs, &fns, (seed, step, first, cols))?;
            store(&mut b, &at, out, out_pitch, out_len, result);
            let next = b.ins().iadd_imm_u(c, 4);
            b.ins().jump(col_head, &[next.into()]);
        } else {
            b.ins().jump(scalar_head, &[c.into()]);
        }

        b.switch_to_block(scalar_head);
        let c = b.block_params(scalar_head)[0];
        let more_cols = b.ins().icmp(IntCC::UnsignedLessThan, c, cols);
        b.ins().brif(more_cols, scalar_body, &[], row_next, &[]);

        b.switch_to_block(scalar_body);
        let at = Site { r, c, lanes: 1, checked, fault };
        let result = emit(&mut b, expr, &at, &ins, &chs, &fns, (seed, step, first, cols))?;
        store(&mut b, &at, out, out_pitch, out_len, result);
        let next = b.ins().iadd_imm_u(c, 1);
        b.ins().jump(scalar_head, &[next.into()]);

        b.switch_to_block(row_next);
        let next = b.ins().iadd_imm_u(r, 1);
        b.ins().jump(row_head, &[next.into()]);

        b.switch_to_block(fault);
        let one = b.ins().iconst(types::I32, 1);
        b.ins().store(flags, one, args, offset_of!(MapArgs, fault) as i32);
        b.ins().jump(exit, &[]);

        b.switch_to_block(exit);
        b.ins().return_(&[]);
        b.seal_all_blocks();
        b.finalize(config);
    }
    Ok((id, ctx))
}

/// Whether every step of `expr` has a four-lane form (dropout's hash is a call into Rust, one
/// lane at a time).
fn vectorizable(expr: &[Expr]) -> bool {
    !expr.iter().any(|e| matches!(e, Expr::Keep { .. }))
}

/// Where the element (or the four elements) being computed is.
struct Site {
    r: Value,
    c: Value,
    lanes: u8,
    checked: bool,
    fault: Block,
}

impl Site {
    fn ty(&self) -> types::Type {
        if self.lanes == 4 {
            types::F32X4
        } else {
            types::F32
        }
    }

    /// Flags of a load or store here: vector accesses may be unaligned.
    fn flags(&self) -> MemFlagsData {
        if self.lanes == 4 {
            MemFlagsData::new().with_notrap()
        } else {
            MemFlagsData::trusted()
        }
    }

    /// The address of element `r·pitch + c` of `base`, checked against `len` (its last lane) in
    /// bounds-checked mode.
    fn address(&self, b: &mut FunctionBuilder, base: Value, pitch: Value, len: Value) -> Value {
        let at = b.ins().imul(self.r, pitch);
        let at = b.ins().iadd(at, self.c);
        self.check(b, at, len);
        let bytes = b.ins().ishl_imm_u(at, 2);
        b.ins().iadd(base, bytes)
    }

    fn check(&self, b: &mut FunctionBuilder, at: Value, len: Value) {
        if self.checked {
            let last = b.ins().iadd_imm_u(at, i64::from(self.lanes) - 1);
            guard(b, last, len, self.fault);
        }
    }

    fn constant(&self, b: &mut FunctionBuilder, v: f32) -> Value {
        let x = b.ins().f32const(v);
        if self.lanes == 4 {
            b.ins().splat(types::F32X4, x)
        } else {
            x
        }
    }

    /// `c > 0 ? x : y`, lane by lane.
    fn positive(&self, b: &mut FunctionBuilder, c: Value, x: Value, y: Value) -> Value {
        let zero = self.constant(b, 0.0);
        let mask = b.ins().fcmp(FloatCC::GreaterThan, c, zero);
        self.choose(b, mask, x, y)
    }

    /// `mask ? x : y`, lane by lane, for the result of an `fcmp` at this site.
    fn choose(&self, b: &mut FunctionBuilder, mask: Value, x: Value, y: Value) -> Value {
        if self.lanes == 4 {
            let mask = b.ins().bitcast(types::F32X4, MemFlagsData::new().with_endianness(Endianness::Little), mask);
            b.ins().bitselect(mask, x, y)
        } else {
            b.ins().select(mask, x, y)
        }
    }
}

type Inputs = [(Value, Value, Value)];

/// Emits the steps of `expr` at `at`; returns the last step's value.
fn emit(
    b: &mut FunctionBuilder,
    expr: &[Expr],
    at: &Site,
    ins: &Inputs,
    chs: &[(Value, Value)],
    fns: &[Option<cranelift_codegen::ir::FuncRef>; 1],
    (seed, step, first, cols): (Value, Value, Value, Value),
) -> Result<Value, String> {
    let mut stack: Vec<Value> = Vec::with_capacity(expr.len());
    for e in expr {
        let v = match *e {
            Expr::Input(i) => {
                let (base, pitch, len) = ins[i];
                let addr = at.address(b, base, pitch, len);
                b.ins().load(at.ty(), at.flags(), addr, 0)
            }
            Expr::Channel(i) => {
                let (base, len) = chs[i];
                at.check(b, at.c, len);
                let bytes = b.ins().ishl_imm_u(at.c, 2);
                let addr = b.ins().iadd(base, bytes);
                b.ins().load(at.ty(), at.flags(), addr, 0)
            }
            Expr::Const(v) => at.constant(b, v),
            Expr::Add(x, y) => b.ins().fadd(stack[x], stack[y]),
            Expr::Mul(x, y) => b.ins().fmul(stack[x], stack[y]),
            Expr::Relu(x) => {
                let zero = at.constant(b, 0.0);
                at.positive(b, stack[x], stack[x], zero)
            }
            Expr::Positive { c, a, b: y } => at.positive(b, stack[c], stack[a], stack[y]),
            Expr::Tanh(x) => tanh(b, at, stack[x]),
            Expr::Sigmoid(x) => {
                // σ(x) = ½·tanh(x/2) + ½.
                let half = at.constant(b, 0.5);
                let t = b.ins().fmul(stack[x], half);
                let t = tanh(b, at, t);
                let t = b.ins().fmul(t, half);
                b.ins().fadd(t, half)
            }
            Expr::Keep { rate, salt } => {
                let row = b.ins().imul(at.r, cols);
                let index = b.ins().iadd(row, at.c);
                let index = b.ins().iadd(index, first);
                let salt = b.ins().iconst(types::I64, salt as i64);
                let rate = b.ins().f32const(rate);
                let keep = fns[0].ok_or("dropout's hash was not imported")?;
                call(b, keep, &[seed, step, salt, index, rate])
            }
        };
        stack.push(v);
    }
    stack.last().copied().ok_or_else(|| "an empty map expression".to_string())
}

/// `tanh(x)` in every lane, as a rational function of `x` on `[−7.9, 7.9]` (the odd degree-13
/// over even degree-6 minimax approximation Eigen uses; within a few float roundings of the
/// correctly rounded value, ±1 beyond), `x` itself where `|x| < 0.0004`. NaN stays NaN: `fmin`
/// and `fmax` propagate it. Multiplies and adds are separate, so every ISA rounds alike.
fn tanh(b: &mut FunctionBuilder, at: &Site, x: Value) -> Value {
    #[allow(clippy::excessive_precision)] // Eigen's coefficients as published.
    const ALPHA: [f32; 7] = [
        -2.760_768_5e-16,
        2.000_187_9e-13,
        -8.604_671_5e-11,
        5.122_297e-8,
        1.485_722_4e-5,
        6.372_619_3e-4,
        4.893_524_6e-3,
    ];
    const BETA: [f32; 4] = [1.198_258_4e-6, 1.185_347_1e-4, 2.268_434_6e-3, 4.893_525e-3];
    // Clamped by compare and select, not `fmin`/`fmax` (whose NaN and −0 rules cost eight
    // instructions each on x86): a NaN compares false and passes through.
    let limit = at.constant(b, 7.905_311);
    let low = at.constant(b, -7.905_311);
    let above = b.ins().fcmp(FloatCC::GreaterThan, x, limit);
    let clamped = at.choose(b, above, limit, x);
    let below = b.ins().fcmp(FloatCC::LessThan, clamped, low);
    let clamped = at.choose(b, below, low, clamped);
    let x2 = b.ins().fmul(clamped, clamped);
    let horner = |b: &mut FunctionBuilder, coefficients: &[f32]| {
        let mut acc = at.constant(b, coefficients[0]);
        for &k in &coefficients[1..] {
            let k = at.constant(b, k);
            acc = b.ins().fmul(acc, x2);
            acc = b.ins().fadd(acc, k);
        }
        acc
    };
    let p = horner(b, &ALPHA);
    let p = b.ins().fmul(p, clamped);
    let q = horner(b, &BETA);
    let ratio = b.ins().fdiv(p, q);
    // |x| < 0.0004: x.
    let magnitude = b.ins().fabs(x);
    let tiny = at.constant(b, 0.0004);
    let small = b.ins().fcmp(FloatCC::LessThan, magnitude, tiny);
    at.choose(b, small, x, ratio)
}

/// Stores `value` at the output element (or elements) of `at`.
fn store(b: &mut FunctionBuilder, at: &Site, out: Value, pitch: Value, len: Value, value: Value) {
    let addr = at.address(b, out, pitch, len);
    b.ins().store(at.flags(), value, addr, 0);
}

/// Continues in a new block when `at < len`, else jumps to `fault`.
fn guard(b: &mut FunctionBuilder, at: Value, len: Value, fault: Block) {
    let inside = b.ins().icmp(IntCC::UnsignedLessThan, at, len);
    let ok = b.create_block();
    b.ins().brif(inside, ok, &[], fault, &[]);
    b.switch_to_block(ok);
}

fn call(b: &mut FunctionBuilder, f: cranelift_codegen::ir::FuncRef, args: &[Value]) -> Value {
    let inst = b.ins().call(f, args);
    b.inst_results(inst)[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Options;

    fn run(f: MapFn, x: &[f32], a: &[f32], out: &mut [f32], rows: usize, cols: usize, out_len: usize) -> u32 {
        let (inputs, pitch, len) = ([x.as_ptr()], [cols], [x.len()]);
        let (channels, channel_len) = ([a.as_ptr()], [a.len()]);
        let mut args = MapArgs {
            inputs: inputs.as_ptr(),
            input_pitch: pitch.as_ptr(),
            input_len: len.as_ptr(),
            channels: channels.as_ptr(),
            channel_len: channel_len.as_ptr(),
            out: out.as_mut_ptr(),
            out_pitch: cols,
            out_len,
            rows,
            cols,
            seed: 0,
            step: 0,
            first: 0,
            fault: 0,
        };
        // SAFETY: the arrays hold what the arguments say (out_len may say less, on purpose).
        unsafe { f(&mut args) };
        args.fault
    }

    #[test]
    fn a_prelu_map_computes_and_checked_code_reports_an_access_out_of_bounds() {
        // PReLU: x if x > 0 else a_c · x, with a per-channel slope.
        let expr = [Expr::Input(0), Expr::Channel(0), Expr::Mul(1, 0), Expr::Positive { c: 0, a: 0, b: 2 }];
        let x = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0];
        let a = [0.5, 0.25, 2.0];
        for checked in [false, true] {
            let mut jit = Jit::new(Options { checked }).unwrap();
            let f = jit.map(&expr).unwrap();
            assert!(std::ptr::fn_addr_eq(f, jit.map(&expr).unwrap()), "one function per expression");
            let mut out = [0f32; 6];
            assert_eq!(run(f, &x, &a, &mut out, 2, 3, 6), 0);
            assert_eq!(out, [1.0, -0.5, 3.0, -2.0, 5.0, -12.0]);
            let clif = &jit.clif()[0].1;
            assert!(clif.contains("fcmp") && clif.contains("select"), "{clif}");
        }
        // Told the output holds 4 elements, checked code stops at the fifth and says so.
        let mut jit = Jit::new(Options { checked: true }).unwrap();
        let f = jit.map(&expr).unwrap();
        let mut out = [0f32; 6];
        assert_eq!(run(f, &x, &a, &mut out, 2, 3, 4), 1);
        assert_eq!(out[4..], [0.0, 0.0], "nothing written out of bounds");
    }

    #[test]
    fn tanh_and_sigmoid_are_within_float_rounding_in_vector_and_scalar_lanes() {
        // 7 columns: four lanes, then three scalar ones, the same function on both paths.
        let xs: Vec<f32> = (0..7 * 2000).map(|i| (i as f32 - 7000.0) * 0.003).collect();
        let mut jit = Jit::new(Options::default()).unwrap();
        for (expr, exact) in [
            ([Expr::Input(0), Expr::Tanh(0)], (|x: f64| x.tanh()) as fn(f64) -> f64),
            ([Expr::Input(0), Expr::Sigmoid(0)], |x: f64| 1.0 / (1.0 + (-x).exp())),
        ] {
            let f = jit.map(&expr).unwrap();
            let mut out = vec![0f32; xs.len()];
            assert_eq!(run(f, &xs, &[], &mut out, xs.len() / 7, 7, xs.len()), 0);
            let worst =
                xs.iter().zip(&out).map(|(&x, &y)| (f64::from(y) - exact(f64::from(x))).abs()).fold(0.0, f64::max);
            assert!(worst < 5e-7, "{expr:?}: worst error {worst:e}");
            // Odd symmetry (tanh) and range.
            assert!(out.iter().all(|y| (-1.0..=1.0).contains(y)));
            let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 1e-30, -1e-5, 30.0];
            let mut out = [0f32; 7];
            assert_eq!(run(f, &special, &[], &mut out, 1, 7, 7), 0);
            assert!(out[0].is_nan(), "NaN stays NaN");
            for (x, y) in special.iter().zip(&out).skip(1) {
                assert!((f64::from(*y) - exact(f64::from(*x))).abs() < 5e-7, "{expr:?} at {x}: {y}");
            }
        }
    }
}
