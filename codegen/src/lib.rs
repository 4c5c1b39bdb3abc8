//! cnnc's code generator: native code for kernels of the kernel IR, JIT-compiled with Cranelift
//! for the host's ISA (its flags detected at run time by `cranelift_native`, never forced).
//!
//! Kernels are templates: a compiled function takes its shapes, pitches and pointers as
//! arguments, so one function serves every kernel with the same template key (the kind and its
//! attributes), whatever the batch or the layer; each key is compiled once. What is generated
//! today: the fused element-wise [`Map`](cnnc_compiler::lir::Kernel::Map) kernel (the kernel the
//! fusion passes grow), the transcendental functions called as precompiled Rust symbols. The
//! other kernels run on the interpreter's functions until their templates exist.
//!
//! [`aot`] compiles a whole inference program ahead of time into an object file (every kernel
//! generated there, the weights a data section) with its C header.
//!
//! A bounds-checked mode checks every load and store against its buffer's length: an access out
//! of bounds is not made, and the kernel reports a fault that the caller turns into an error.

pub mod aot;
mod map;

use cranelift_codegen::settings::{self, Configurable};
use cranelift_jit::{JITBuilder, JITModule};
use std::collections::HashMap;

pub use map::{MapArgs, MapFn};

/// An ISA as Cranelift sees it: its architecture and the flags it has (`x86_64 has_avx2 ...`).
pub(crate) fn describe(isa: &dyn cranelift_codegen::isa::TargetIsa) -> String {
    let flags: Vec<&str> = isa.isa_flags().iter().filter(|f| f.as_bool() == Some(true)).map(|f| f.name).collect();
    format!("{} {}", isa.triple().architecture, flags.join(" "))
}

/// Options of the code generator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Check every load and store against its buffer (for the differential tests).
    pub checked: bool,
}

/// A JIT module and the kernels compiled into it, by template key.
pub struct Jit {
    module: JITModule,
    options: Options,
    maps: HashMap<String, MapFn>,
    clif: Vec<(String, String)>,
    /// The host's ISA as Cranelift sees it (`x86_64 has_avx2 ...`).
    pub isa: String,
    compiled: usize,
}

impl std::fmt::Debug for Jit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jit").field("isa", &self.isa).field("kernels", &self.maps.len()).finish()
    }
}

impl Jit {
    /// A JIT for the host's ISA.
    pub fn new(options: Options) -> Result<Jit, String> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(|e| e.to_string())?;
        let isa_builder = cranelift_native::builder().map_err(|e| format!("this host is not supported: {e}"))?;
        let isa = isa_builder.finish(settings::Flags::new(flags)).map_err(|e| e.to_string())?;
        let description = describe(&*isa);
        let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        map::register_symbols(&mut builder);
        let module = JITModule::new(builder);
        Ok(Jit { module, options, maps: HashMap::new(), clif: Vec::new(), isa: description, compiled: 0 })
    }

    /// The options it compiles with.
    pub fn options(&self) -> Options {
        self.options
    }

    /// The Cranelift IR of every function compiled so far, by name.
    pub fn clif(&self) -> &[(String, String)] {
        &self.clif
    }

    /// How many distinct functions were compiled (templates deduplicated by key).
    pub fn compiled(&self) -> usize {
        self.compiled
    }

    fn next_name(&mut self, kind: &str) -> String {
        self.compiled += 1;
        format!("cnnc_{kind}_{}", self.compiled)
    }
}
