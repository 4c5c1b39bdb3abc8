//! Ahead-of-time compilation: a batch-1 inference program and its weights as an object file
//! that a C, C++ or Rust program links and calls, with a C header. Everything it runs is
//! generated here by Cranelift (`cranelift-object`): the driver, one function per kernel
//! template, the fused maps, and the products (a 4×8 register-tiled GEMM over 128-bit vectors);
//! the weights (prepared: batchnorm folded) are a read-only data section. The only symbol it
//! needs from outside is `expf` (softmax), from the C library's libm.
//!
//! A call runs the program once per example of its batch, in the caller's scratch memory:
//! nothing global is written, nothing allocated, so calls on separate scratch buffers may run on
//! separate threads at once.

use crate::map::build_map;
use crate::MapArgs;
use cnnc_compiler::ir::op::PoolKind;
use cnnc_compiler::lir::{plan, DType, Expr, Geom, Kernel, MemoryPlan, Program, Space, View};
use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, Endianness, FuncRef, InstBuilder, MemFlagsData, StackSlot, StackSlotData, StackSlotKind, Type,
    Value,
};
use cranelift_codegen::isa::{self, OwnedTargetIsa};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext, Variable};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module};
use cranelift_object::{ObjectBuilder, ObjectModule};
use std::collections::HashMap;
use std::mem::offset_of;

/// The instruction set an object file is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// This machine's, as `cranelift_native` detects it.
    Host,
    /// x86-64-v3: AVX2, FMA, BMI (Haswell and later, Zen).
    X86_64V3,
    /// x86-64-v4: v3 and AVX-512 (F, VL, DQ, BW).
    X86_64V4,
}

impl Target {
    /// The target named `name` (`host`, `x86-64-v3`, `x86-64-v4`).
    pub fn parse(name: &str) -> Option<Target> {
        match name {
            "host" | "native" => Some(Target::Host),
            "x86-64-v3" => Some(Target::X86_64V3),
            "x86-64-v4" => Some(Target::X86_64V4),
            _ => None,
        }
    }

    fn isa(self) -> Result<OwnedTargetIsa, String> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
        // Position-independent: the object links into PIE executables and shared libraries.
        flags.enable("is_pic").map_err(|e| e.to_string())?;
        let native = cranelift_native::builder().map_err(|e| format!("this host is not supported: {e}"))?;
        let builder = match self {
            Target::Host => native,
            Target::X86_64V3 | Target::X86_64V4 => {
                if native.triple().architecture.to_string() != "x86_64" {
                    return Err(format!("--target {} needs an x86-64 host", self.name()));
                }
                let mut b = isa::lookup(native.triple().clone()).map_err(|e| e.to_string())?;
                b.enable(self.name()).map_err(|e| e.to_string())?;
                b
            }
        };
        builder.finish(settings::Flags::new(flags)).map_err(|e| e.to_string())
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Host => "host",
            Target::X86_64V3 => "x86-64-v3",
            Target::X86_64V4 => "x86-64-v4",
        }
    }
}

/// Why an object file was not made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The model cannot be compiled ahead of time (what it holds, or its size): a usage error.
    Refused(String),
    /// A bug in cnnc: code generation failed on a model it accepted.
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused(m) => f.write_str(m),
            Error::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

/// What to compile: a batch-1 inference program with no prepare phase (its derived parameters
/// computed and placed in the parameter store), the store, and the names of the C symbols.
#[derive(Debug)]
pub struct Model<'a> {
    /// The program (batch 1, one `f32` input).
    pub program: &'a Program,
    /// The parameter store its `Param` buffers index.
    pub constants: &'a [f32],
    /// The prefix of every C name (`lenet5` gives `lenet5_infer`, `LENET5_SCRATCH_BYTES`).
    pub prefix: String,
    /// The outputs, by name: one C function each.
    pub outputs: Vec<(String, View)>,
    /// A line for the header's opening comment (where the model came from).
    pub about: String,
}

/// A compiled model.
#[derive(Debug)]
pub struct Object {
    /// The object file (ELF on Linux).
    pub bytes: Vec<u8>,
    /// The C header.
    pub header: String,
    /// Bytes of scratch memory a call needs.
    pub scratch_bytes: usize,
    /// Bytes of weights in the object.
    pub weight_bytes: usize,
    /// The C functions, one per output.
    pub functions: Vec<String>,
    /// The instruction set, as Cranelift names its flags.
    pub isa: String,
    /// Distinct generated functions (templates, maps, driver, entry points).
    pub compiled: usize,
}

/// Where the program's memory is: the arena plan, the im2col region after it, and each
/// parameter buffer's place in the compacted weights.
struct Layout {
    plan: MemoryPlan,
    /// Elements of scratch before the im2col region.
    col_at: usize,
    /// Elements of scratch.
    scratch: usize,
    /// Per buffer: its first element in the weights, for the parameter buffers kernels read.
    weight_at: Vec<Option<usize>>,
    weights: Vec<f32>,
    /// Per kernel index: where its product's right operand starts, packed: panels of 8
    /// columns (`depth × 8` each, row by row), then the remaining columns row-major.
    packed: HashMap<usize, usize>,
}

const ALIGN: usize = 16;

/// Steps of the depth a GEMM iteration takes. Measured on GoogLeNet b1 (AMD EPYC, AVX2): 1
/// step 136 ms, 2 steps 111 ms, 4 steps 146 ms (the loads of four steps spill).
const UNROLL: usize = 2;
/// Whether products use fused multiply-adds where the ISA has them (GoogLeNet b1: 111 ms
/// against 150 ms with a multiply and an add).
const FUSED: bool = true;

fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// The C identifier made of `name`: letters, digits and `_`, lower case, not starting with a
/// digit.
pub fn identifier(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

impl Model<'_> {
    /// The C function of output `i`.
    fn function(&self, i: usize) -> String {
        if self.outputs.len() == 1 {
            format!("{}_infer", self.prefix)
        } else {
            format!("{}_infer_{}", self.prefix, identifier(&self.outputs[i].0))
        }
    }

    fn check(&self) -> Result<(), String> {
        let p = self.program;
        if p.batch != 1 {
            return Err(format!("an object file is compiled from the batch-1 program, not batch {}", p.batch));
        }
        if !p.prepare.is_empty() {
            return Err("the prepare phase must have run (its results placed among the parameters)".into());
        }
        match &p.inputs[..] {
            [(_, _, DType::F32)] => {}
            [(name, _, DType::I32)] => {
                return Err(format!("input `{name}` holds integers: an object file takes floats"))
            }
            inputs => {
                return Err(format!("the model has {} inputs; an object file takes models of one input", inputs.len()))
            }
        }
        if self.outputs.is_empty() {
            return Err("the model has no output".into());
        }
        // Every output's C names must differ from each other's and from the input's.
        let mut names: Vec<(String, &str)> =
            vec![("INPUT".into(), "the input"), ("SCRATCH".into(), "the scratch size")];
        for (name, view) in &self.outputs {
            let c = identifier(name).to_uppercase();
            if let Some((_, other)) = names.iter().find(|(n, _)| *n == c) {
                return Err(format!(
                    "output `{name}` would take the C names `{}_{c}_…` of {other}: rename one of them",
                    self.prefix.to_uppercase()
                ));
            }
            names.push((c, name));
            if view.shape.is_empty() {
                return Err(format!("output `{name}` has no batch axis"));
            }
        }
        for k in &p.kernels {
            supported(k)?;
        }
        for b in &p.buffers {
            if let Space::Param(o) = b.space {
                if o + b.len > self.constants.len() {
                    return Err(format!("`{}` lies beyond the parameters given", b.name));
                }
            }
            if matches!(b.space, Space::Grad(_)) {
                return Err("an object file holds inference only: the program writes gradients".into());
            }
        }
        Ok(())
    }

    fn layout(&self) -> Layout {
        let p = self.program;
        let plan = plan(p);
        let col_at = aligned(plan.size);
        let cols = p
            .kernels
            .iter()
            .map(|k| match k {
                Kernel::ConvGemm { geom, .. } => geom.n * geom.positions() * geom.window() * geom.cg,
                Kernel::PoolGemm { geom, .. } => geom.n * geom.positions() * geom.cg,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        // A product's constant right operand is packed (below); it is embedded as it is only
        // where something else reads it.
        let mut used = vec![false; p.buffers.len()];
        for k in &p.kernels {
            let packed = packable(k, p).map(|(b, _, _)| b);
            let (reads, writes) = k.access();
            for v in reads.into_iter().chain(writes) {
                // The packed operand itself (the same field, not an equal view elsewhere).
                if !packed.is_some_and(|b| std::ptr::eq(b, v)) {
                    used[v.buf.0 as usize] = true;
                }
            }
        }
        for (_, v) in &self.outputs {
            used[v.buf.0 as usize] = true;
        }
        let mut weights = Vec::new();
        let mut weight_at = vec![None; p.buffers.len()];
        let mut placed: HashMap<(usize, usize), usize> = HashMap::new();
        for (i, b) in p.buffers.iter().enumerate() {
            if let (Space::Param(o), true) = (b.space, used[i]) {
                let at = *placed.entry((o, b.len)).or_insert_with(|| {
                    weights.resize(aligned(weights.len()), 0.0);
                    let at = weights.len();
                    weights.extend_from_slice(&self.constants[o..o + b.len]);
                    at
                });
                weight_at[i] = Some(at);
            }
        }
        let mut packed = HashMap::new();
        for (i, k) in p.kernels.iter().enumerate() {
            let Some((b, tb, depth)) = packable(k, p) else { continue };
            let Space::Param(o) = p.buffers[b.buf.0 as usize].space else { continue };
            let n = if tb { b.rows() } else { b.cols() };
            let value = |row: usize, col: usize| {
                let at = if tb { col * b.pitch + row } else { row * b.pitch + col };
                self.constants[o + b.offset + at]
            };
            weights.resize(aligned(weights.len()), 0.0);
            packed.insert(i, weights.len());
            let n8 = n / 8 * 8;
            for panel in (0..n8).step_by(8) {
                for row in 0..depth {
                    weights.extend((panel..panel + 8).map(|col| value(row, col)));
                }
            }
            for row in 0..depth {
                weights.extend((n8..n).map(|col| value(row, col)));
            }
        }
        Layout { plan, col_at, scratch: col_at + cols, weight_at, weights, packed }
    }
}

/// Whether kernel `k` has an ahead-of-time form at this size.
fn supported(k: &Kernel) -> Result<(), String> {
    let keep = |expr: &[Expr]| expr.iter().any(|e| matches!(e, Expr::Keep { .. }));
    // Offsets a product's loop addresses as 32-bit immediates, in bytes.
    let fits =
        |values: &[usize]| values.iter().all(|&v| v.checked_mul(4).is_some_and(|b| b <= (i32::MAX as usize) / 4));
    match k {
        Kernel::Gemm { a, b, c, epilogue, .. } => {
            if epilogue.as_ref().is_some_and(|e| keep(&e.expr)) {
                return Err("a product's epilogue draws dropout's mask: inference drops no unit".into());
            }
            if !fits(&[a.pitch * 4, b.pitch * UNROLL, c.pitch * 4]) {
                return Err(format!("a product of rows {} elements apart is too large for an object file", a.pitch));
            }
            Ok(())
        }
        Kernel::ConvGemm { stats: Some(_), .. } => {
            Err("a convolution takes batchnorm's batch statistics: inference uses the running ones".into())
        }
        Kernel::ConvGemm { geom, b, c, epilogue, .. } => {
            if epilogue.as_ref().is_some_and(|e| keep(&e.expr)) {
                return Err("a convolution's epilogue draws dropout's mask: inference drops no unit".into());
            }
            if !fits(&[geom.window() * geom.cg * 4, geom.channels * 4, b.pitch * UNROLL, c.pitch * 4]) {
                return Err("a convolution too large for an object file".into());
            }
            Ok(())
        }
        Kernel::PoolGemm { geom, b, c, epilogue, .. } => {
            if epilogue.as_ref().is_some_and(|e| keep(&e.expr)) {
                return Err("a product's epilogue draws dropout's mask: inference drops no unit".into());
            }
            if !fits(&[geom.cg * 4, b.pitch * UNROLL, c.pitch * 4]) {
                return Err("a product over pooled rows too large for an object file".into());
            }
            Ok(())
        }
        Kernel::Map { expr, .. } if keep(expr) => Err("a map draws dropout's mask: inference drops no unit".into()),
        Kernel::Pad { x, .. } if x.shape.len() > 5 => {
            Err(format!("a padded tensor of rank {} (at most 5)", x.shape.len()))
        }
        Kernel::Im2col { .. }
        | Kernel::Pool { .. }
        | Kernel::GlobalPool { .. }
        | Kernel::Map { .. }
        | Kernel::Softmax { .. }
        | Kernel::L2Norm { .. }
        | Kernel::Copy { .. }
        | Kernel::Fill { .. }
        | Kernel::Pad { .. } => Ok(()),
        other => Err(format!(
            "kernel `{}` has no ahead-of-time form (an inference program after the passes should not hold it)",
            other.name()
        )),
    }
}

impl Layout {
    /// Checks that every view the generated code addresses has a place: the arena's buffers an
    /// offset, the parameters a place in the weights (a product's packed operand its panels).
    fn placed(&self, model: &Model) -> Result<(), String> {
        let p = model.program;
        let check = |v: &View| {
            let i = v.buf.0 as usize;
            let placed = match p.buffers[i].space {
                Space::Arena => self.plan.offsets[i].is_some(),
                Space::Param(_) => self.weight_at[i].is_some(),
                Space::Input(_) | Space::Grad(_) => true,
            };
            if placed {
                Ok(())
            } else {
                Err(format!("buffer `{}` has no place in the object file", p.buffers[i].name))
            }
        };
        for (i, k) in p.kernels.iter().enumerate() {
            let packed = packable(k, p).map(|(b, _, _)| b).filter(|_| self.packed.contains_key(&i));
            let (reads, writes) = k.access();
            for v in reads.into_iter().chain(writes) {
                if !packed.is_some_and(|b| std::ptr::eq(b, v)) {
                    check(v)?;
                }
            }
        }
        model.outputs.iter().try_for_each(|(_, v)| check(v))
    }
}

/// A product's right operand `b` when it is a constant, to pack in panels of 8 columns: the
/// view, whether it is transposed, and the depth.
fn packable<'k>(k: &'k Kernel, p: &Program) -> Option<(&'k View, bool, usize)> {
    let (b, tb, depth) = match k {
        Kernel::Gemm { a, b, ta, tb, .. } => (b, *tb, if *ta { a.rows() } else { a.cols() }),
        Kernel::ConvGemm { b, tb, geom, .. } => (b, *tb, geom.window() * geom.cg),
        Kernel::PoolGemm { b, geom, .. } => (b, false, geom.cg),
        _ => return None,
    };
    let n = if tb { b.rows() } else { b.cols() };
    (matches!(p.buffers[b.buf.0 as usize].space, Space::Param(_)) && n >= 8 && b.shape.len() == 2)
        .then_some((b, tb, depth))
}

/// Compiles `model` into an object file for `target`, with its header.
pub fn compile(model: &Model, target: Target) -> Result<Object, Error> {
    model.check().map_err(Error::Refused)?;
    let layout = model.layout();
    layout.placed(model).map_err(Error::Internal)?;
    let isa = target.isa().map_err(Error::Refused)?;
    build(model, &layout, isa).map_err(Error::Internal)
}

/// The object file of `model` laid out as `layout`, for `isa`.
fn build(model: &Model, layout: &Layout, isa: OwnedTargetIsa) -> Result<Object, String> {
    let description = crate::describe(&*isa);
    let builder = ObjectBuilder::new(isa, model.prefix.as_bytes().to_vec(), cranelift_module::default_libcall_names())
        .map_err(|e| e.to_string())?;
    let mut g = Gen {
        module: ObjectModule::new(builder),
        templates: HashMap::new(),
        descs: Vec::new(),
        weights: DataId::from_u32(0),
        desc_data: DataId::from_u32(0),
        compiled: 0,
    };
    g.weights = g.data(&format!("{}_weights", model.prefix))?;
    g.desc_data = g.data(&format!("{}_shapes", model.prefix))?;
    let run = g.driver(model, layout)?;
    let mut functions = Vec::new();
    for i in 0..model.outputs.len() {
        let name = model.function(i);
        g.entry(model, layout, run, i, &name)?;
        functions.push(name);
    }
    let weight_bytes: Vec<u8> = layout.weights.iter().flat_map(|v| v.to_le_bytes()).collect();
    let weight_len = weight_bytes.len();
    let desc_bytes: Vec<u8> = g.descs.iter().flat_map(|v| v.to_le_bytes()).collect();
    for (id, bytes) in [(g.desc_data, desc_bytes), (g.weights, weight_bytes)] {
        let mut d = DataDescription::new();
        // An empty section still gets a symbol.
        d.define(if bytes.is_empty() { vec![0; 8].into_boxed_slice() } else { bytes.into_boxed_slice() });
        d.set_align(64);
        g.module.define_data(id, &d).map_err(|e| e.to_string())?;
    }
    let compiled = g.compiled;
    let bytes = g.module.finish().emit().map_err(|e| e.to_string())?;
    let scratch_bytes = layout.scratch.max(1) * 4;
    Ok(Object {
        bytes,
        header: header(model, scratch_bytes, &functions, &description),
        scratch_bytes,
        weight_bytes: weight_len,
        functions,
        isa: description,
        compiled,
    })
}

/// The C header of `model`.
fn header(model: &Model, scratch_bytes: usize, functions: &[String], isa: &str) -> String {
    let up = model.prefix.to_uppercase();
    let (_, input_shape, _) = &model.program.inputs[0];
    // A per-example scalar's shape is `{1}` (an empty initializer list is not C).
    let dims = |shape: &[usize]| {
        let d = shape[1..].iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
        if d.is_empty() {
            "1".to_string()
        } else {
            d
        }
    };
    // Nothing in the comment may end it.
    let about = model.about.replace("*/", "* /").replace(['\n', '\r'], " ");
    let mut h = [
        format!("/* {}.h: generated by cnnc {}. {about}", model.prefix, env!("CARGO_PKG_VERSION")),
        " *".into(),
        format!(" * Inference only, compiled for {isa}."),
        " * Tensors are row-major and channels-last, as in cnnc: an example of shape {H, W, C} is".into(),
        " * H·W·C floats, channels fastest; a batch is its examples one after another.".into(),
        format!(" * Link with the object file and libm: cc app.c {}.o -lm", model.prefix),
        " *".into(),
        " * Each function runs `batch` examples of `input` and writes their outputs to `output`,".into(),
        format!(" * using `scratch` ({up}_SCRATCH_BYTES bytes, any alignment of a float) as its only"),
        " * working memory. Nothing global is written and nothing allocated: calls with separate".into(),
        " * scratch buffers may run at once on separate threads.".into(),
        " * Returns 0, -1 for a negative batch, -2 for a null pointer (with a batch above 0). */".into(),
        format!("#ifndef {up}_H"),
        format!("#define {up}_H"),
        String::new(),
        "#ifdef __cplusplus".into(),
        "extern \"C\" {".into(),
        "#endif".into(),
        String::new(),
        "/* Bytes of scratch memory a call needs. */".into(),
        format!("#define {up}_SCRATCH_BYTES {scratch_bytes}"),
        String::new(),
        "/* The input, per example: floats, rank, and shape (an initializer list). */".into(),
        format!("#define {up}_INPUT_SIZE {}", input_shape[1..].iter().product::<usize>()),
        format!("#define {up}_INPUT_RANK {}", input_shape.len() - 1),
        format!("#define {up}_INPUT_SHAPE {{{}}}", dims(input_shape)),
    ]
    .join("\n");
    h.push('\n');
    for ((name, view), function) in model.outputs.iter().zip(functions) {
        let out = identifier(name).to_uppercase();
        h += &format!(
            "\n/* Output `{name}`, per example. */\n#define {up}_{out}_SIZE {}\n#define {up}_{out}_RANK {}\n#define {up}_{out}_SHAPE {{{}}}\n\
             int {function}(const float *input, float *output, int batch, void *scratch);\n",
            view.shape[1..].iter().product::<usize>(),
            view.shape.len() - 1,
            dims(&view.shape),
        );
    }
    h += &format!("\n#ifdef __cplusplus\n}}\n#endif\n\n#endif /* {up}_H */\n");
    h
}

/// The object being generated.
struct Gen {
    module: ObjectModule,
    /// Kernel templates by key.
    templates: HashMap<String, FuncId>,
    /// Every kernel call's integer arguments, one after another (a read-only section).
    descs: Vec<i64>,
    weights: DataId,
    desc_data: DataId,
    compiled: usize,
}

/// The pointers a driver function works from.
#[derive(Clone, Copy)]
struct Bases {
    input: Value,
    scratch: Value,
    weights: Value,
}

fn flags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// Flags of a product's operand loads: nothing writes `a` or `b` while the product runs, so a
/// load may move to its use (else every load of an iteration came first, the multiply-adds at
/// the loop's end, and the loaded values spilled).
fn operand() -> MemFlagsData {
    MemFlagsData::new().with_notrap().with_readonly().with_can_move()
}

impl Gen {
    fn data(&mut self, name: &str) -> Result<DataId, String> {
        self.module.declare_data(name, Linkage::Local, false, false).map_err(|e| e.to_string())
    }

    /// The kernel template `key`: a function of `args` pointer-sized arguments (the last is its
    /// integer arguments' address), built by `body` on first request.
    fn template(
        &mut self,
        key: &str,
        args: usize,
        imports: &[&str],
        body: impl FnOnce(&mut FunctionBuilder, &[Value], &[FuncRef]),
    ) -> Result<FuncId, String> {
        if let Some(id) = self.templates.get(key) {
            return Ok(*id);
        }
        let mut ctx = self.module.make_context();
        ctx.func.signature.params.extend((0..args).map(|_| AbiParam::new(types::I64)));
        let id = self
            .module
            .declare_function(&format!("cnnc_{key}"), Linkage::Local, &ctx.func.signature)
            .map_err(|e| e.to_string())?;
        let mut refs = Vec::new();
        for name in imports {
            let f = crate::map::import(&mut self.module, name, &[types::F32], types::F32)?;
            refs.push(self.module.declare_func_in_func(f, &mut ctx.func));
        }
        self.define(id, ctx, key, |b, params| {
            body(b, params, &refs);
            b.ins().return_(&[]);
        })?;
        self.templates.insert(key.to_string(), id);
        Ok(id)
    }

    /// Builds function `id` in `ctx` (its signature declared): an entry block with the
    /// parameters, then `body`, which ends every path with a return; defines it in the module.
    fn define(
        &mut self,
        id: FuncId,
        mut ctx: Context,
        what: &str,
        body: impl FnOnce(&mut FunctionBuilder, &[Value]),
    ) -> Result<(), String> {
        {
            let mut fctx = FunctionBuilderContext::new();
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fctx);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let params = b.block_params(entry).to_vec();
            body(&mut b, &params);
            b.seal_all_blocks();
            b.finalize(self.module.target_config());
        }
        self.module.define_function(id, &mut ctx).map_err(|e| format!("{what}: {e:?}"))?;
        self.compiled += 1;
        Ok(())
    }

    /// Appends `values` to the integer arguments; returns where they start, in bytes.
    fn desc(&mut self, values: &[i64]) -> i64 {
        let at = self.descs.len() * 8;
        self.descs.extend_from_slice(values);
        at as i64
    }

    /// The internal function that runs the program on one example: `run(input, scratch)`.
    fn driver(&mut self, model: &Model, layout: &Layout) -> Result<FuncId, String> {
        // Templates and maps first: the driver's builder holds the module's function.
        let p = model.program;
        let mut maps: HashMap<String, FuncId> = HashMap::new();
        let mut calls: Vec<Call> = Vec::new();
        for (i, k) in p.kernels.iter().enumerate() {
            let packed = layout.packed.get(&i).map(|&at| Place::Weights(at as i64 * 4));
            self.plan_kernel(k, layout, p, packed, &mut maps, &mut calls)?;
        }
        let mut ctx = self.module.make_context();
        ctx.func.signature.params.extend([AbiParam::new(types::I64), AbiParam::new(types::I64)]);
        let id = self
            .module
            .declare_function(&format!("{}_run", model.prefix), Linkage::Local, &ctx.func.signature)
            .map_err(|e| e.to_string())?;
        let weights = self.module.declare_data_in_func(self.weights, &mut ctx.func);
        let descs = self.module.declare_data_in_func(self.desc_data, &mut ctx.func);
        let mut refs: HashMap<FuncId, FuncRef> = HashMap::new();
        for c in &calls {
            let f = c.function;
            if let std::collections::hash_map::Entry::Vacant(e) = refs.entry(f) {
                e.insert(self.module.declare_func_in_func(f, &mut ctx.func));
            }
        }
        self.define(id, ctx, "driver", |b, params| {
            let [input, scratch] = params[..] else { unreachable!("two parameters") };
            let weights = b.ins().symbol_value(types::I64, weights);
            let descs = b.ins().symbol_value(types::I64, descs);
            let bases = Bases { input, scratch, weights };
            // One pair of stack slots for every map's arguments, sized for the largest (the
            // calls run one after another).
            let words = calls.iter().filter_map(|c| c.map.as_ref()).map(MapCall::words).max().unwrap_or(0);
            let slots = (
                b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    (words.max(1) * 8) as u32,
                    3,
                )),
                b.create_sized_stack_slot(StackSlotData::new(
                    StackSlotKind::ExplicitSlot,
                    std::mem::size_of::<MapArgs>() as u32,
                    3,
                )),
            );
            for c in &calls {
                let mut args: Vec<Value> = c.pointers.iter().map(|at| at.value(b, bases)).collect();
                if let Some(map) = &c.map {
                    args.push(map.args(b, bases, slots));
                }
                if let Some(d) = c.desc {
                    args.push(b.ins().iadd_imm_s(descs, d));
                }
                b.ins().call(refs[&c.function], &args);
            }
            b.ins().return_(&[]);
        })?;
        Ok(id)
    }

    /// An exported entry point: `int name(const float *input, float *output, int batch, void
    /// *scratch)`, the program run on each example, then output `i` copied out.
    fn entry(&mut self, model: &Model, layout: &Layout, run: FuncId, i: usize, name: &str) -> Result<(), String> {
        let view = &model.outputs[i].1;
        let in_bytes = (model.program.inputs[0].1.iter().product::<usize>() * 4) as i64;
        let out_bytes = (view.len() * 4) as i64;
        let copy = self.copy_template()?;
        let desc = self.desc(&copy_desc(&[view.rows()], view.cols(), &[view.pitch], &[view.cols()]));
        let mut ctx = self.module.make_context();
        let sig = &mut ctx.func.signature;
        sig.params.extend([types::I64, types::I64, types::I32, types::I64].map(AbiParam::new));
        sig.returns.push(AbiParam::new(types::I32));
        let id = self.module.declare_function(name, Linkage::Export, &ctx.func.signature).map_err(|e| e.to_string())?;
        let run = self.module.declare_func_in_func(run, &mut ctx.func);
        let copy = self.module.declare_func_in_func(copy, &mut ctx.func);
        let weights = self.module.declare_data_in_func(self.weights, &mut ctx.func);
        let descs = self.module.declare_data_in_func(self.desc_data, &mut ctx.func);
        let at = Place::of(view, layout, model.program);
        self.define(id, ctx, name, |b, params| {
            let [input, output, batch, scratch] = params[..] else { unreachable!("four parameters") };
            let ret = |b: &mut FunctionBuilder, code: i64| {
                let v = b.ins().iconst(types::I32, code);
                b.ins().return_(&[v]);
            };
            let negative = b.ins().icmp_imm_s(IntCC::SignedLessThan, batch, 0);
            return_if(b, negative, |b| ret(b, -1));
            let some = b.ins().icmp_imm_s(IntCC::SignedGreaterThan, batch, 0);
            let nulls = [input, output, scratch].map(|p| b.ins().icmp_imm_s(IntCC::Equal, p, 0));
            let null = b.ins().bor(nulls[0], nulls[1]);
            let null = b.ins().bor(null, nulls[2]);
            let bad = b.ins().band(some, null);
            return_if(b, bad, |b| ret(b, -2));
            let weights = b.ins().symbol_value(types::I64, weights);
            let descs = b.ins().symbol_value(types::I64, descs);
            let desc = b.ins().iadd_imm_s(descs, desc);
            let count = b.ins().sextend(types::I64, batch);
            for_(b, count, |b, e| {
                let offset = b.ins().imul_imm_s(e, in_bytes);
                let example = b.ins().iadd(input, offset);
                b.ins().call(run, &[example, scratch]);
                let src = at.value(b, Bases { input: example, scratch, weights });
                let offset = b.ins().imul_imm_s(e, out_bytes);
                let dst = b.ins().iadd(output, offset);
                b.ins().call(copy, &[src, dst, desc]);
            });
            ret(b, 0);
        })
    }

    /// The calls that compute kernel `k`, its templates and maps compiled.
    fn plan_kernel(
        &mut self,
        k: &Kernel,
        layout: &Layout,
        program: &Program,
        packed: Option<Place>,
        maps: &mut HashMap<String, FuncId>,
        calls: &mut Vec<Call>,
    ) -> Result<(), String> {
        let at = |v: &View| Place::of(v, layout, program);
        match k {
            Kernel::Gemm { a, b, c, ta, tb, accumulate, bias, epilogue } => {
                let depth = if *ta { a.rows() } else { a.cols() };
                let (rsa, csa) = if *ta { (1, a.pitch) } else { (a.pitch, 1) };
                let (rsb, csb) = if *tb { (1, b.pitch) } else { (b.pitch, 1) };
                let product = Product { m: c.rows(), n: c.cols(), k: depth, rsa, csa, rsb, csb, ldc: c.pitch };
                let right = packed.map_or_else(|| Right::Plain(at(b)), Right::Packed);
                self.gemm(&product, at(a), right, at(c), bias.as_ref().map(at), *accumulate, calls)?;
                if let Some(e) = epilogue {
                    for (inputs, channels, out) in e.parts(c) {
                        self.map(&e.expr, &inputs, &channels, &out, layout, program, maps, calls)?;
                    }
                }
            }
            Kernel::ConvGemm { x, geom, b, c, tb, bias, epilogue, .. } => {
                let depth = geom.window() * geom.cg;
                // A 1×1 window at stride 1 without padding reads the input's rows as they are
                // (channels `c0..c0 + cg` of each position); any other window, im2col's rows.
                let pointwise = geom.window() == 1 && geom.stride == [1; 3] && geom.pad == [0; 3];
                let (rows, rsa) = if pointwise {
                    (at(x).plus(geom.c0), geom.channels)
                } else {
                    let col = Place::Scratch(layout.col_at as i64 * 4);
                    let f = self.im2col_template(&geom_desc(geom, depth))?;
                    calls.push(Call { function: f, pointers: vec![at(x), col], map: None, desc: None });
                    (col, depth)
                };
                let (rsb, csb) = if *tb { (1, b.pitch) } else { (b.pitch, 1) };
                let product = Product { m: c.rows(), n: c.cols(), k: depth, rsa, csa: 1, rsb, csb, ldc: c.pitch };
                let right = packed.map_or_else(|| Right::Plain(at(b)), Right::Packed);
                self.gemm(&product, rows, right, at(c), bias.as_ref().map(at), false, calls)?;
                if let Some(e) = epilogue {
                    for (inputs, channels, out) in e.parts(c) {
                        self.map(&e.expr, &inputs, &channels, &out, layout, program, maps, calls)?;
                    }
                }
            }
            Kernel::PoolGemm { kind, x, geom, b, c, bias, epilogue } => {
                // The pooled rows in the scratch area, then the product over them.
                let depth = geom.cg;
                let pooled = Place::Scratch(layout.col_at as i64 * 4);
                let f = self.pool_template(*kind, &geom_desc(geom, depth))?;
                calls.push(Call { function: f, pointers: vec![at(x), pooled], map: None, desc: None });
                let product = Product {
                    m: c.rows(),
                    n: c.cols(),
                    k: depth,
                    rsa: depth,
                    csa: 1,
                    rsb: b.pitch,
                    csb: 1,
                    ldc: c.pitch,
                };
                let right = packed.map_or_else(|| Right::Plain(at(b)), Right::Packed);
                self.gemm(&product, pooled, right, at(c), bias.as_ref().map(at), false, calls)?;
                if let Some(e) = epilogue {
                    for (inputs, channels, out) in e.parts(c) {
                        self.map(&e.expr, &inputs, &channels, &out, layout, program, maps, calls)?;
                    }
                }
            }
            Kernel::Im2col { x, col, geom } => {
                let f = self.im2col_template(&geom_desc(geom, col.pitch))?;
                calls.push(Call { function: f, pointers: vec![at(x), at(col)], map: None, desc: None });
            }
            Kernel::Pool { kind, x, y, geom } => {
                let f = self.pool_template(*kind, &geom_desc(geom, y.pitch))?;
                calls.push(Call { function: f, pointers: vec![at(x), at(y)], map: None, desc: None });
            }
            Kernel::GlobalPool { kind, x, y } => {
                let (n, c) = (x.shape[0], x.cols());
                let positions = x.len() / (n * c).max(1);
                let f = self.global_pool_template(*kind)?;
                let desc = self.desc(&[n as i64, positions as i64, c as i64, y.pitch as i64]);
                calls.push(Call { function: f, pointers: vec![at(x), at(y)], map: None, desc: Some(desc) });
            }
            Kernel::Map { expr, inputs, channels, out } => {
                self.map(expr, inputs, channels, out, layout, program, maps, calls)?
            }
            Kernel::Softmax { x, y } => {
                let f = self.softmax_template()?;
                let desc = self.desc(&[x.rows() as i64, x.cols() as i64, x.pitch as i64, y.pitch as i64]);
                calls.push(Call { function: f, pointers: vec![at(x), at(y)], map: None, desc: Some(desc) });
            }
            Kernel::L2Norm { x, y, eps } => {
                let f = self.l2norm_template()?;
                let desc = self.desc(&[
                    x.rows() as i64,
                    x.cols() as i64,
                    x.pitch as i64,
                    y.pitch as i64,
                    i64::from(eps.to_bits()),
                ]);
                calls.push(Call { function: f, pointers: vec![at(x), at(y)], map: None, desc: Some(desc) });
            }
            Kernel::Copy { src, dst } => {
                let f = self.copy_template()?;
                let desc = self.desc(&copy_desc(&[src.rows()], src.cols(), &[src.pitch], &[dst.pitch]));
                calls.push(Call { function: f, pointers: vec![at(src), at(dst)], map: None, desc: Some(desc) });
            }
            Kernel::Fill { dst, value } => self.fill(at(dst), dst, *value, calls)?,
            Kernel::Pad { x, y, before } => {
                self.fill(at(y), y, 0.0, calls)?;
                // x's rows over its leading axes (batch first), each moved `before` along the
                // axes of an example but the last (the channels stay in place).
                let lead = &x.shape[..x.shape.len() - 1];
                let big = &y.shape[..y.shape.len() - 1];
                let (mut from, mut to) = (vec![0; lead.len()], vec![0; lead.len()]);
                let (mut fs, mut ts) = (x.pitch, y.pitch);
                let mut shift = 0;
                for a in (0..lead.len()).rev() {
                    from[a] = fs;
                    to[a] = ts;
                    if a > 0 {
                        shift += before.get(a - 1).copied().unwrap_or(0) * ts;
                    }
                    fs *= lead[a];
                    ts *= big[a];
                }
                let f = self.copy_template()?;
                let desc = self.desc(&copy_desc(lead, x.cols(), &from, &to));
                let dst = at(y).plus(shift);
                calls.push(Call { function: f, pointers: vec![at(x), dst], map: None, desc: Some(desc) });
            }
            // `supported` refused every other kernel before code generation.
            other => return Err(format!("kernel `{}` reached code generation", other.name())),
        }
        Ok(())
    }

    fn fill(&mut self, dst: Place, view: &View, value: f32, calls: &mut Vec<Call>) -> Result<(), String> {
        let f = self.fill_template()?;
        let desc = self.desc(&[view.rows() as i64, view.cols() as i64, view.pitch as i64, i64::from(value.to_bits())]);
        calls.push(Call { function: f, pointers: vec![dst], map: None, desc: Some(desc) });
        Ok(())
    }

    /// A product's calls: `c = a·b (+ c) (+ bias)`. A packed `b` is read panel by panel (its
    /// columns in eights, then the rest).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        p: &Product,
        a: Place,
        b: Right,
        c: Place,
        bias: Option<Place>,
        accumulate: bool,
        calls: &mut Vec<Call>,
    ) -> Result<(), String> {
        let mut call = |g: &mut Gen, p: &Product, b: Place, c: Place, bias: Option<Place>, vector: bool| {
            let f = g.gemm_template(p, vector, accumulate, bias.is_some())?;
            calls.push(Call { function: f, pointers: vec![a, b, c, bias.unwrap_or(c)], map: None, desc: None });
            Ok::<(), String>(())
        };
        match b {
            Right::Plain(b) => call(self, p, b, c, bias, p.csb == 1),
            Right::Packed(b) => {
                let n8 = p.n / 8 * 8;
                if n8 > 0 {
                    // Panel j/8 starts at j·depth: `csb` = depth, 8 apart from row to row.
                    call(self, &Product { n: n8, rsb: 8, csb: p.k, ..*p }, b, c, bias, true)?;
                }
                if p.n > n8 {
                    let rest = p.n - n8;
                    let tail = Product { n: rest, rsb: rest, csb: 1, ..*p };
                    call(self, &tail, b.plus(n8 * p.k), c.plus(n8), bias.map(|v| v.plus(n8)), true)?;
                }
                Ok(())
            }
        }
    }

    /// A map's call over `out`, its function compiled once per expression.
    #[allow(clippy::too_many_arguments)]
    fn map(
        &mut self,
        expr: &[Expr],
        inputs: &[View],
        channels: &[View],
        out: &View,
        layout: &Layout,
        program: &Program,
        maps: &mut HashMap<String, FuncId>,
        calls: &mut Vec<Call>,
    ) -> Result<(), String> {
        let key = format!("{expr:?}");
        let function = match maps.get(&key) {
            Some(f) => *f,
            None => {
                let name = format!("cnnc_map_{}", maps.len() + 1);
                let (id, mut ctx) = build_map(&mut self.module, &name, Linkage::Local, expr, false)?;
                self.module.define_function(id, &mut ctx).map_err(|e| format!("{name}: {e:?}"))?;
                self.compiled += 1;
                maps.insert(key, id);
                id
            }
        };
        let extent = |v: &View| program.buffers[v.buf.0 as usize].len.saturating_sub(v.offset);
        let at = |v: &View| Place::of(v, layout, program);
        let map = MapCall {
            inputs: inputs.iter().map(|v| (at(v), v.pitch, extent(v))).collect(),
            channels: channels.iter().map(|v| (at(v), extent(v))).collect(),
            out: at(out),
            out_pitch: out.pitch,
            out_len: extent(out),
            rows: out.rows(),
            cols: out.cols(),
        };
        calls.push(Call { function, pointers: vec![], map: Some(map), desc: None });
        Ok(())
    }
}

/// A product's right operand: a view as it is, or packed in the weights.
#[derive(Clone, Copy, Debug)]
enum Right {
    Plain(Place),
    Packed(Place),
}

/// A product's sizes and strides (in elements): `c[m, n] = op(a)[m, k]·op(b)[k, n]`, element
/// `(i, p)` of `op(a)` at `i·rsa + p·csa`, `(p, j)` of `op(b)` at `p·rsb + j·csb`.
#[derive(Clone, Copy, Debug)]
struct Product {
    m: usize,
    n: usize,
    k: usize,
    rsa: usize,
    csa: usize,
    rsb: usize,
    csb: usize,
    ldc: usize,
}

/// A window geometry as integer arguments, then `last` (the output's row pitch).
fn geom_desc(g: &Geom, last: usize) -> Vec<i64> {
    let mut d = vec![g.n, g.input[0], g.input[1], g.input[2], g.channels, g.c0, g.cg];
    for a in [g.size, g.stride, g.pad, g.dilation, g.output] {
        d.extend(a);
    }
    d.push(last);
    d.into_iter().map(|v| v as i64).collect()
}

/// A copy of rows of `cols` elements over up to four leading axes of sizes `dims`, the source's
/// and destination's strides per axis `from` and `to` (in elements), as integer arguments:
/// four sizes, the columns, four source strides, four destination strides.
fn copy_desc(dims: &[usize], cols: usize, from: &[usize], to: &[usize]) -> Vec<i64> {
    let front = |v: &[usize], fill: usize| {
        let mut out = vec![fill; 4usize.saturating_sub(v.len())];
        out.extend_from_slice(v);
        out.into_iter().map(|v| v as i64)
    };
    let mut d: Vec<i64> = front(dims, 1).collect();
    d.push(cols as i64);
    d.extend(front(from, 0));
    d.extend(front(to, 0));
    d
}

/// Where a pointer argument points: a base and a byte offset from it.
#[derive(Clone, Copy, Debug)]
enum Place {
    Input(i64),
    Scratch(i64),
    Weights(i64),
}

impl Place {
    /// The first element of `v` (every view has a place: [`Layout::placed`] checked it).
    fn of(v: &View, layout: &Layout, program: &Program) -> Place {
        let i = v.buf.0 as usize;
        let elems = |base: usize| ((base + v.offset) * 4) as i64;
        match program.buffers[i].space {
            Space::Arena => Place::Scratch(elems(layout.plan.offsets[i].unwrap_or(0))),
            Space::Param(_) => Place::Weights(elems(layout.weight_at[i].unwrap_or(0))),
            Space::Input(_) | Space::Grad(_) => Place::Input(elems(0)),
        }
    }

    /// `elems` elements further.
    fn plus(self, elems: usize) -> Place {
        let d = (elems * 4) as i64;
        match self {
            Place::Input(o) => Place::Input(o + d),
            Place::Scratch(o) => Place::Scratch(o + d),
            Place::Weights(o) => Place::Weights(o + d),
        }
    }

    fn value(self, b: &mut FunctionBuilder, bases: Bases) -> Value {
        let (base, offset) = match self {
            Place::Input(o) => (bases.input, o),
            Place::Scratch(o) => (bases.scratch, o),
            Place::Weights(o) => (bases.weights, o),
        };
        b.ins().iadd_imm_s(base, offset)
    }
}

/// One call of the driver.
struct Call {
    function: FuncId,
    pointers: Vec<Place>,
    map: Option<MapCall>,
    desc: Option<i64>,
}

/// A map's arguments, built on the driver's stack.
struct MapCall {
    inputs: Vec<(Place, usize, usize)>,
    channels: Vec<(Place, usize)>,
    out: Place,
    out_pitch: usize,
    out_len: usize,
    rows: usize,
    cols: usize,
}

impl MapCall {
    /// Words of its argument arrays.
    fn words(&self) -> usize {
        3 * self.inputs.len() + 2 * self.channels.len()
    }

    /// Builds the [`MapArgs`] in the stack slots `(arrays, args)` (at least [`MapCall::words`]
    /// words, and a `MapArgs`); returns its address.
    fn args(&self, b: &mut FunctionBuilder, bases: Bases, (arrays, args): (StackSlot, StackSlot)) -> Value {
        let base = b.ins().stack_addr(types::I64, arrays, 0);
        let mut stored = Vec::new();
        let put = |b: &mut FunctionBuilder, values: Vec<Value>, word: &mut usize| {
            let at = b.ins().iadd_imm_s(base, (*word * 8) as i64);
            for v in values {
                b.ins().store(flags(), v, base, (*word * 8) as i32);
                *word += 1;
            }
            at
        };
        let mut w = 0;
        let ptrs: Vec<Value> = self.inputs.iter().map(|(p, _, _)| p.value(b, bases)).collect();
        let pitches: Vec<Value> = self.inputs.iter().map(|(_, p, _)| b.ins().iconst(types::I64, *p as i64)).collect();
        let lens: Vec<Value> = self.inputs.iter().map(|(_, _, l)| b.ins().iconst(types::I64, *l as i64)).collect();
        let chs: Vec<Value> = self.channels.iter().map(|(p, _)| p.value(b, bases)).collect();
        let ch_lens: Vec<Value> = self.channels.iter().map(|(_, l)| b.ins().iconst(types::I64, *l as i64)).collect();
        for values in [ptrs, pitches, lens, chs, ch_lens] {
            stored.push(put(b, values, &mut w));
        }
        let out = self.out.value(b, bases);
        let consts = [
            (offset_of!(MapArgs, out_pitch), self.out_pitch),
            (offset_of!(MapArgs, out_len), self.out_len),
            (offset_of!(MapArgs, rows), self.rows),
            (offset_of!(MapArgs, cols), self.cols),
            (offset_of!(MapArgs, seed), 0),
            (offset_of!(MapArgs, step), 0),
            (offset_of!(MapArgs, first), 0),
        ];
        let fields = [
            offset_of!(MapArgs, inputs),
            offset_of!(MapArgs, input_pitch),
            offset_of!(MapArgs, input_len),
            offset_of!(MapArgs, channels),
            offset_of!(MapArgs, channel_len),
        ];
        let at = b.ins().stack_addr(types::I64, args, 0);
        for (field, value) in fields.into_iter().zip(stored) {
            b.ins().store(flags(), value, at, field as i32);
        }
        b.ins().store(flags(), out, at, offset_of!(MapArgs, out) as i32);
        for (field, value) in consts {
            let v = b.ins().iconst(types::I64, value as i64);
            b.ins().store(flags(), v, at, field as i32);
        }
        let zero = b.ins().iconst(types::I32, 0);
        b.ins().store(flags(), zero, at, offset_of!(MapArgs, fault) as i32);
        at
    }
}

impl Gen {
    /// `c = op(a)·op(b) (+ c) (+ bias)` for the product `p`, its sizes and strides compiled in
    /// (one function per distinct product: addresses become immediate offsets, so a tile's
    /// loop carries two pointers and keeps them in registers). Blocks of 4 rows, each across
    /// tiles of 8 columns (two 4-lane vectors, eight accumulators), then 4, then single columns
    /// (`vector` false: single columns only, for a `b` whose columns are not contiguous); single
    /// rows where fewer than four remain. The depth advances `UNROLL` steps an iteration.
    fn gemm_template(&mut self, p: &Product, vector: bool, accumulate: bool, bias: bool) -> Result<FuncId, String> {
        let key = format!(
            "gemm_{}x{}x{}_a{}_{}_b{}_{}_c{}{}{}{}",
            p.m,
            p.n,
            p.k,
            p.rsa,
            p.csa,
            p.rsb,
            p.csb,
            p.ldc,
            if vector { "" } else { "_scalar" },
            if accumulate { "_acc" } else { "" },
            if bias { "_bias" } else { "" }
        );
        // Fused multiply-adds where the instruction set has them (one rounding, not two).
        let fma =
            FUSED && self.module.isa().isa_flags().iter().any(|f| f.name == "has_fma" && f.as_bool() == Some(true));
        let p = *p;
        self.template(&key, 4, &[], |b, args, _| {
            let [a, bm, c, bias_p] = args[..] else { unreachable!("four arguments") };
            let tile = |b: &mut FunctionBuilder, i: Value, j: Value, mr: usize, nv: usize, lanes: u8| {
                let zero = fconst(b, lanes, 0.0);
                let accs: Vec<Variable> = (0..mr * nv).map(|_| var(b, ty(lanes), zero)).collect();
                let at = b.ins().imul_imm_s(i, p.rsa as i64);
                let pa0 = elem(b, a, at);
                let pa = var(b, types::I64, pa0);
                let at = b.ins().imul_imm_s(j, p.csb as i64);
                let pb0 = elem(b, bm, at);
                let pb = var(b, types::I64, pb0);
                let (ra, rb) = (4 * p.rsa as i64, 4 * p.rsb as i64);
                let ca = 4 * p.csa as i64;
                let end = b.ins().iadd_imm_s(pb0, rb * p.k as i64);
                let steps = |b: &mut FunctionBuilder, unroll: usize| {
                    let (pav, pbv) = (b.use_var(pa), b.use_var(pb));
                    for u in 0..unroll as i64 {
                        let bv: Vec<Value> = (0..nv)
                            .map(|v| b.ins().load(ty(lanes), operand(), pbv, (u * rb + 16 * v as i64) as i32))
                            .collect();
                        for r in 0..mr {
                            let x = b.ins().load(types::F32, operand(), pav, (r as i64 * ra + u * ca) as i32);
                            let x = splat(b, lanes, x);
                            for (v, &bv) in bv.iter().enumerate() {
                                let acc = b.use_var(accs[r * nv + v]);
                                let sum = if fma {
                                    b.ins().fma(x, bv, acc)
                                } else {
                                    let prod = b.ins().fmul(x, bv);
                                    b.ins().fadd(acc, prod)
                                };
                                b.def_var(accs[r * nv + v], sum);
                            }
                        }
                    }
                    let next = b.ins().iadd_imm_s(pav, ca * unroll as i64);
                    b.def_var(pa, next);
                    let next = b.ins().iadd_imm_s(pbv, rb * unroll as i64);
                    b.def_var(pb, next);
                };
                for unroll in [UNROLL, 1] {
                    while_(
                        b,
                        |b| {
                            let at = b.use_var(pb);
                            let next = b.ins().iadd_imm_s(at, rb * unroll as i64);
                            b.ins().icmp(IntCC::SignedLessThanOrEqual, next, end)
                        },
                        |b| steps(b, unroll),
                    );
                }
                let at = b.ins().imul_imm_s(i, p.ldc as i64);
                let at = b.ins().iadd(at, j);
                let crow = elem(b, c, at);
                let bias_row = elem(b, bias_p, j);
                for r in 0..mr {
                    for v in 0..nv {
                        let offset = (r * p.ldc * 4 + 16 * v) as i32;
                        let mut value = b.use_var(accs[r * nv + v]);
                        if accumulate {
                            let old = load(b, lanes, crow, offset);
                            value = b.ins().fadd(old, value);
                        }
                        if bias {
                            let add = load(b, lanes, bias_row, 16 * v as i32);
                            value = b.ins().fadd(value, add);
                        }
                        b.ins().store(flags(), value, crow, offset);
                    }
                }
            };
            // Rows outermost: a block of rows of `a` stays in cache while every column panel of
            // `b` passes.
            let (m, n) = (b.ins().iconst(types::I64, p.m as i64), b.ins().iconst(types::I64, p.n as i64));
            let zero = b.ins().iconst(types::I64, 0);
            let i = var(b, types::I64, zero);
            for mr in [4, 1] {
                count(b, i, m, mr as i64, |b, iv| {
                    let zero = b.ins().iconst(types::I64, 0);
                    let j = var(b, types::I64, zero);
                    if vector {
                        for nv in [2, 1] {
                            count(b, j, n, 4 * nv as i64, |b, jv| tile(b, iv, jv, mr, nv, 4));
                        }
                    }
                    count(b, j, n, 1, |b, jv| tile(b, iv, jv, mr, 1, 1));
                });
            }
        })
    }

    /// im2col over a window geometry ([`geom_desc`], the last the rows' pitch), compiled in:
    /// each output position's window, `cg` channels a tap, zeros in the padding.
    fn im2col_template(&mut self, geometry: &[i64]) -> Result<FuncId, String> {
        let key = format!("im2col_{}", geometry.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("_"));
        self.template(&key, 2, &[], |b, args, _| {
            let [x, col] = args[..] else { unreachable!("two arguments") };
            let g = Window::constant(b, geometry);
            let zero = b.ins().iconst(types::I64, 0);
            let row = var(b, types::I64, zero);
            g.positions(b, |b, nn, [zd, zh, zw]| {
                let r = b.use_var(row);
                let start = b.ins().imul(r, g.last);
                let start = elem(b, col, start);
                let at = var(b, types::I64, start);
                g.taps(b, [zd, zh, zw], |b, inside, source| {
                    let to = b.use_var(at);
                    if_else(
                        b,
                        inside,
                        |b| {
                            let from = g.address(b, x, nn, source);
                            lanes(b, g.cg, |b, ch, l| {
                                let v = load_at(b, l, from, ch);
                                let dst = elem(b, to, ch);
                                b.ins().store(flags(), v, dst, 0);
                            });
                        },
                        |b| {
                            lanes(b, g.cg, |b, ch, l| {
                                let z = fconst(b, l, 0.0);
                                let dst = elem(b, to, ch);
                                b.ins().store(flags(), z, dst, 0);
                            });
                        },
                    );
                    let next = elem(b, to, g.cg);
                    b.def_var(at, next);
                });
                let next = b.ins().iadd_imm_s(r, 1);
                b.def_var(row, next);
            });
        })
    }

    /// Max or average pooling over a window geometry, compiled in (average counts no padding),
    /// four channels at a time; output row `r`, channel `ch` at `r·pitch + ch`.
    fn pool_template(&mut self, kind: PoolKind, geometry: &[i64]) -> Result<FuncId, String> {
        let max = kind == PoolKind::Max;
        let key = format!(
            "{}_{}",
            if max { "max_pool" } else { "avg_pool" },
            geometry.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("_")
        );
        self.template(&key, 2, &[], |b, args, _| {
            let [x, y] = args[..] else { unreachable!("two arguments") };
            let g = Window::constant(b, geometry);
            let zero = b.ins().iconst(types::I64, 0);
            let row = var(b, types::I64, zero);
            // Per output position: its row set to the start value, then each tap inside the
            // input folded into the whole row (a run of `cg` channels at a time), then the
            // average's division.
            g.positions(b, |b, nn, position| {
                let r = b.use_var(row);
                let at = b.ins().imul(r, g.last);
                let out = elem(b, y, at);
                lanes(b, g.cg, |b, ch, l| {
                    let init = fconst(b, l, if max { f32::NEG_INFINITY } else { 0.0 });
                    let dst = elem(b, out, ch);
                    b.ins().store(flags(), init, dst, 0);
                });
                let zero = b.ins().iconst(types::I64, 0);
                let taken = var(b, types::I64, zero);
                g.taps(b, position, |b, inside, source| {
                    if_else(
                        b,
                        inside,
                        |b| {
                            let from = g.address(b, x, nn, source);
                            lanes(b, g.cg, |b, ch, l| {
                                let v = load_at(b, l, from, ch);
                                let dst = elem(b, out, ch);
                                let old = load(b, l, dst, 0);
                                let new = if max {
                                    // f32::max's choice where neither is NaN; a NaN never wins.
                                    let more = b.ins().fcmp(FloatCC::GreaterThan, v, old);
                                    choose(b, l, more, v, old)
                                } else {
                                    b.ins().fadd(old, v)
                                };
                                b.ins().store(flags(), new, dst, 0);
                            });
                            let t = b.use_var(taken);
                            let t = b.ins().iadd_imm_s(t, 1);
                            b.def_var(taken, t);
                        },
                        |_| {},
                    );
                });
                if !max {
                    let t = b.use_var(taken);
                    let one = b.ins().iconst(types::I64, 1);
                    let none = b.ins().icmp_imm_s(IntCC::Equal, t, 0);
                    let t = b.ins().select(none, one, t);
                    let t = b.ins().fcvt_from_sint(types::F32, t);
                    lanes(b, g.cg, |b, ch, l| {
                        let dst = elem(b, out, ch);
                        let v = load(b, l, dst, 0);
                        let n = splat(b, l, t);
                        let q = b.ins().fdiv(v, n);
                        b.ins().store(flags(), q, dst, 0);
                    });
                }
                let next = b.ins().iadd_imm_s(r, 1);
                b.def_var(row, next);
            });
        })
    }

    /// Max or average over all positions: `[n, positions, c]` to rows of `c`, `pitch` apart.
    fn global_pool_template(&mut self, kind: PoolKind) -> Result<FuncId, String> {
        let max = kind == PoolKind::Max;
        self.template(if max { "global_max_pool" } else { "global_avg_pool" }, 3, &[], |b, args, _| {
            let [x, y, desc] = args[..] else { unreachable!("three arguments") };
            let [n, positions, c, pitch] = std::array::from_fn(|i| arg(b, desc, i));
            for_(b, n, |b, nn| {
                lanes(b, c, |b, ch, l| {
                    let init = fconst(b, l, if max { f32::NEG_INFINITY } else { 0.0 });
                    let acc = var(b, ty(l), init);
                    for_(b, positions, |b, i| {
                        let at = b.ins().imul(nn, positions);
                        let at = b.ins().iadd(at, i);
                        let at = b.ins().imul(at, c);
                        let at = b.ins().iadd(at, ch);
                        let v = load_at(b, l, x, at);
                        let old = b.use_var(acc);
                        let new = if max {
                            let more = b.ins().fcmp(FloatCC::GreaterThan, v, old);
                            choose(b, l, more, v, old)
                        } else {
                            b.ins().fadd(old, v)
                        };
                        b.def_var(acc, new);
                    });
                    let mut value = b.use_var(acc);
                    if !max {
                        let p = b.ins().fcvt_from_sint(types::F32, positions);
                        let p = splat(b, l, p);
                        value = b.ins().fdiv(value, p);
                    }
                    let at = b.ins().imul(nn, pitch);
                    let at = b.ins().iadd(at, ch);
                    let dst = elem(b, y, at);
                    b.ins().store(flags(), value, dst, 0);
                });
            });
        })
    }

    /// Softmax over each row: `exp(x − max) / Σ`, `exp` from libm.
    fn softmax_template(&mut self) -> Result<FuncId, String> {
        self.template("softmax", 3, &["expf"], |b, args, fns| {
            let [x, y, desc] = args[..] else { unreachable!("three arguments") };
            let [rows, cols, xp, yp] = std::array::from_fn(|i| arg(b, desc, i));
            for_(b, rows, |b, r| {
                let at = b.ins().imul(r, xp);
                let xr = elem(b, x, at);
                let at = b.ins().imul(r, yp);
                let yr = elem(b, y, at);
                let init = b.ins().f32const(f32::NEG_INFINITY);
                let top = var(b, types::F32, init);
                for_(b, cols, |b, j| {
                    let v = load_at(b, 1, xr, j);
                    let old = b.use_var(top);
                    let more = b.ins().fcmp(FloatCC::GreaterThan, v, old);
                    let new = b.ins().select(more, v, old);
                    b.def_var(top, new);
                });
                let zero = b.ins().f32const(0.0);
                let sum = var(b, types::F32, zero);
                for_(b, cols, |b, j| {
                    let v = load_at(b, 1, xr, j);
                    let t = b.use_var(top);
                    let d = b.ins().fsub(v, t);
                    let call = b.ins().call(fns[0], &[d]);
                    let e = b.inst_results(call)[0];
                    let dst = elem(b, yr, j);
                    b.ins().store(flags(), e, dst, 0);
                    let s = b.use_var(sum);
                    let s = b.ins().fadd(s, e);
                    b.def_var(sum, s);
                });
                for_(b, cols, |b, j| {
                    let at = elem(b, yr, j);
                    let v = load(b, 1, at, 0);
                    let s = b.use_var(sum);
                    let q = b.ins().fdiv(v, s);
                    b.ins().store(flags(), q, at, 0);
                });
            });
        })
    }

    /// `y = x / max(‖x‖₂, eps)` per row, the norm summed in f64.
    fn l2norm_template(&mut self) -> Result<FuncId, String> {
        self.template("l2norm", 3, &[], |b, args, _| {
            let [x, y, desc] = args[..] else { unreachable!("three arguments") };
            let [rows, cols, xp, yp] = std::array::from_fn(|i| arg(b, desc, i));
            let eps = b.ins().load(types::I32, flags(), desc, 32);
            let eps = b.ins().bitcast(types::F32, MemFlagsData::new(), eps);
            for_(b, rows, |b, r| {
                let at = b.ins().imul(r, xp);
                let xr = elem(b, x, at);
                let at = b.ins().imul(r, yp);
                let yr = elem(b, y, at);
                let zero = b.ins().f64const(0.0);
                let sum = var(b, types::F64, zero);
                for_(b, cols, |b, j| {
                    let v = load_at(b, 1, xr, j);
                    let v = b.ins().fpromote(types::F64, v);
                    let sq = b.ins().fmul(v, v);
                    let s = b.use_var(sum);
                    let s = b.ins().fadd(s, sq);
                    b.def_var(sum, s);
                });
                let s = b.use_var(sum);
                let norm = b.ins().sqrt(s);
                let norm = b.ins().fdemote(types::F32, norm);
                let above = b.ins().fcmp(FloatCC::GreaterThan, norm, eps);
                let norm = b.ins().select(above, norm, eps);
                for_(b, cols, |b, j| {
                    let v = load_at(b, 1, xr, j);
                    let q = b.ins().fdiv(v, norm);
                    let dst = elem(b, yr, j);
                    b.ins().store(flags(), q, dst, 0);
                });
            });
        })
    }

    /// Every element of rows `pitch` apart set to a value (its bits the fourth argument).
    fn fill_template(&mut self) -> Result<FuncId, String> {
        self.template("fill", 2, &[], |b, args, _| {
            let [dst, desc] = args[..] else { unreachable!("two arguments") };
            let [rows, cols, pitch] = std::array::from_fn(|i| arg(b, desc, i));
            let value = b.ins().load(types::I32, flags(), desc, 24);
            let value = b.ins().bitcast(types::F32, MemFlagsData::new(), value);
            for_(b, rows, |b, r| {
                let at = b.ins().imul(r, pitch);
                let row = elem(b, dst, at);
                lanes(b, cols, |b, j, l| {
                    let v = splat(b, l, value);
                    let to = elem(b, row, j);
                    b.ins().store(flags(), v, to, 0);
                });
            });
        })
    }

    /// Rows of `cols` elements over four leading axes ([`copy_desc`]).
    fn copy_template(&mut self) -> Result<FuncId, String> {
        self.template("copy", 3, &[], |b, args, _| {
            let [src, dst, desc] = args[..] else { unreachable!("three arguments") };
            let d: [Value; 13] = std::array::from_fn(|i| arg(b, desc, i));
            let (dims, cols, from, to) =
                ([d[0], d[1], d[2], d[3]], d[4], [d[5], d[6], d[7], d[8]], [d[9], d[10], d[11], d[12]]);
            let offsets = |b: &mut FunctionBuilder, idx: [Value; 4], strides: [Value; 4]| {
                let mut at = b.ins().iconst(types::I64, 0);
                for (i, s) in idx.into_iter().zip(strides) {
                    let t = b.ins().imul(i, s);
                    at = b.ins().iadd(at, t);
                }
                at
            };
            for_(b, dims[0], |b, i0| {
                for_(b, dims[1], |b, i1| {
                    for_(b, dims[2], |b, i2| {
                        for_(b, dims[3], |b, i3| {
                            let f = offsets(b, [i0, i1, i2, i3], from);
                            let t = offsets(b, [i0, i1, i2, i3], to);
                            let f = elem(b, src, f);
                            let t = elem(b, dst, t);
                            lanes(b, cols, |b, j, l| {
                                let v = load_at(b, l, f, j);
                                let at = elem(b, t, j);
                                b.ins().store(flags(), v, at, 0);
                            });
                        });
                    });
                });
            });
        })
    }
}

/// A window geometry's integer arguments, loaded ([`geom_desc`]'s order).
#[derive(Clone, Copy)]
struct Window {
    n: Value,
    input: [Value; 3],
    channels: Value,
    c0: Value,
    cg: Value,
    size: [Value; 3],
    stride: [Value; 3],
    pad: [Value; 3],
    dilation: [Value; 3],
    output: [Value; 3],
    last: Value,
}

impl Window {
    /// A geometry compiled in ([`geom_desc`]'s values as constants: one function per geometry,
    /// its index arithmetic folded).
    fn constant(b: &mut FunctionBuilder, values: &[i64]) -> Window {
        let d: [Value; 23] = std::array::from_fn(|i| b.ins().iconst(types::I64, values[i]));
        let three = |at: usize| [d[at], d[at + 1], d[at + 2]];
        Window {
            n: d[0],
            input: three(1),
            channels: d[4],
            c0: d[5],
            cg: d[6],
            size: three(7),
            stride: three(10),
            pad: three(13),
            dilation: three(16),
            output: three(19),
            last: d[22],
        }
    }

    /// `body(example, output position)` for every output position, in row order.
    fn positions(&self, b: &mut FunctionBuilder, body: impl Fn(&mut FunctionBuilder, Value, [Value; 3])) {
        let [od, oh, ow] = self.output;
        for_(b, self.n, |b, nn| {
            for_(b, od, |b, zd| {
                for_(b, oh, |b, zh| {
                    for_(b, ow, |b, zw| body(b, nn, [zd, zh, zw]));
                });
            });
        });
    }

    /// `body(inside, input coordinates)` for every tap of the window of output `position`, in
    /// im2col's order; `inside` is whether the tap falls inside the input.
    fn taps(
        &self,
        b: &mut FunctionBuilder,
        position: [Value; 3],
        body: impl Fn(&mut FunctionBuilder, Value, [Value; 3]),
    ) {
        let source = |b: &mut FunctionBuilder, axis: usize, o: Value, k: Value| {
            let s = b.ins().imul(o, self.stride[axis]);
            let d = b.ins().imul(k, self.dilation[axis]);
            let at = b.ins().iadd(s, d);
            let at = b.ins().isub(at, self.pad[axis]);
            let inside = b.ins().icmp(IntCC::UnsignedLessThan, at, self.input[axis]);
            (at, inside)
        };
        for_(b, self.size[0], |b, kd| {
            let (d, in_d) = source(b, 0, position[0], kd);
            for_(b, self.size[1], |b, kh| {
                let (h, in_h) = source(b, 1, position[1], kh);
                let in_dh = b.ins().band(in_d, in_h);
                for_(b, self.size[2], |b, kw| {
                    let (w, in_w) = source(b, 2, position[2], kw);
                    let inside = b.ins().band(in_dh, in_w);
                    body(b, inside, [d, h, w]);
                });
            });
        });
    }

    /// The address of channel `c0` of input element `(n, d, h, w)`.
    fn address(&self, b: &mut FunctionBuilder, x: Value, n: Value, [d, h, w]: [Value; 3]) -> Value {
        let [id, ih, iw] = self.input;
        let at = b.ins().imul(n, id);
        let at = b.ins().iadd(at, d);
        let at = b.ins().imul(at, ih);
        let at = b.ins().iadd(at, h);
        let at = b.ins().imul(at, iw);
        let at = b.ins().iadd(at, w);
        let at = b.ins().imul(at, self.channels);
        let at = b.ins().iadd(at, self.c0);
        elem(b, x, at)
    }
}

/// Integer argument `i`.
fn arg(b: &mut FunctionBuilder, desc: Value, i: usize) -> Value {
    b.ins().load(types::I64, flags(), desc, (i * 8) as i32)
}

fn var(b: &mut FunctionBuilder, ty: Type, init: Value) -> Variable {
    let v = b.declare_var(ty);
    b.def_var(v, init);
    v
}

fn ty(lanes: u8) -> Type {
    if lanes == 4 {
        types::F32X4
    } else {
        types::F32
    }
}

fn splat(b: &mut FunctionBuilder, lanes: u8, x: Value) -> Value {
    if lanes == 4 {
        b.ins().splat(types::F32X4, x)
    } else {
        x
    }
}

fn fconst(b: &mut FunctionBuilder, lanes: u8, v: f32) -> Value {
    let x = b.ins().f32const(v);
    splat(b, lanes, x)
}

/// The address of element `index` of `base`.
fn elem(b: &mut FunctionBuilder, base: Value, index: Value) -> Value {
    let bytes = b.ins().ishl_imm_u(index, 2);
    b.ins().iadd(base, bytes)
}

fn load(b: &mut FunctionBuilder, lanes: u8, at: Value, offset: i32) -> Value {
    b.ins().load(ty(lanes), flags(), at, offset)
}

/// Element `index` of `base` (or four from there).
fn load_at(b: &mut FunctionBuilder, lanes: u8, base: Value, index: Value) -> Value {
    let at = elem(b, base, index);
    load(b, lanes, at, 0)
}

/// `mask ? x : y`, lane by lane, for the result of an `fcmp`.
fn choose(b: &mut FunctionBuilder, lanes: u8, mask: Value, x: Value, y: Value) -> Value {
    if lanes == 4 {
        let mask = b.ins().bitcast(types::F32X4, MemFlagsData::new().with_endianness(Endianness::Little), mask);
        b.ins().bitselect(mask, x, y)
    } else {
        b.ins().select(mask, x, y)
    }
}

/// `while cond() { body() }`.
fn while_(
    b: &mut FunctionBuilder,
    cond: impl FnOnce(&mut FunctionBuilder) -> Value,
    body: impl FnOnce(&mut FunctionBuilder),
) {
    let (head, inner, exit) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().jump(head, &[]);
    b.switch_to_block(head);
    let go = cond(b);
    b.ins().brif(go, inner, &[], exit, &[]);
    b.switch_to_block(inner);
    body(b);
    b.ins().jump(head, &[]);
    b.switch_to_block(exit);
}

/// `while v + step <= end { body(v); v += step }`.
fn count(b: &mut FunctionBuilder, v: Variable, end: Value, step: i64, body: impl FnOnce(&mut FunctionBuilder, Value)) {
    while_(
        b,
        |b| {
            let at = b.use_var(v);
            let next = b.ins().iadd_imm_s(at, step);
            b.ins().icmp(IntCC::SignedLessThanOrEqual, next, end)
        },
        |b| {
            let at = b.use_var(v);
            body(b, at);
            let at = b.use_var(v);
            let next = b.ins().iadd_imm_s(at, step);
            b.def_var(v, next);
        },
    );
}

/// `for i in 0..end { body(i) }`.
fn for_(b: &mut FunctionBuilder, end: Value, body: impl FnOnce(&mut FunctionBuilder, Value)) {
    let zero = b.ins().iconst(types::I64, 0);
    let v = var(b, types::I64, zero);
    count(b, v, end, 1, body);
}

/// `body(i, lanes)` over `0..n`: four lanes at a time while four remain, then one.
fn lanes(b: &mut FunctionBuilder, n: Value, body: impl Fn(&mut FunctionBuilder, Value, u8)) {
    let zero = b.ins().iconst(types::I64, 0);
    let v = var(b, types::I64, zero);
    count(b, v, n, 4, |b, i| body(b, i, 4));
    count(b, v, n, 1, |b, i| body(b, i, 1));
}

fn if_else(
    b: &mut FunctionBuilder,
    cond: Value,
    then: impl FnOnce(&mut FunctionBuilder),
    otherwise: impl FnOnce(&mut FunctionBuilder),
) {
    let (yes, no, join) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().brif(cond, yes, &[], no, &[]);
    b.switch_to_block(yes);
    then(b);
    b.ins().jump(join, &[]);
    b.switch_to_block(no);
    otherwise(b);
    b.ins().jump(join, &[]);
    b.switch_to_block(join);
}

/// `if cond { leave(); }` where `leave` returns from the function.
fn return_if(b: &mut FunctionBuilder, cond: Value, leave: impl FnOnce(&mut FunctionBuilder)) {
    let (yes, no) = (b.create_block(), b.create_block());
    b.ins().brif(cond, yes, &[], no, &[]);
    b.switch_to_block(yes);
    leave(b);
    b.switch_to_block(no);
}
