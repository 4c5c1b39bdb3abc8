//! Passes over the graph IR. Each is one file with a one-line contract and a `run`; the
//! [`Pipeline`] runs them by name, verifies the graph after each (in tests and debug builds; the
//! final graph always), can print the graph after any pass and skip the optional ones.
//!
//! The passes, in the order the graph builders run them:
//! - inference graph ([`inference::run`]): `inference_mode`, `dce`;
//! - training graph ([`training::run`]): `training_mode`, `losses`, `autodiff`, `dce`;
//! - image graph of style transfer ([`image::run`]): `inference_mode`, `losses`, `autodiff`, `dce`.

pub mod autodiff;
pub mod dce;
pub mod image;
pub mod inference;
pub mod inference_mode;
pub mod sliding;
pub mod training;
pub mod training_mode;

use crate::ir::{verify, Graph, VerifyError};
use std::fmt;

/// Every pass: its name and its contract.
pub const PASSES: &[(&str, &str)] = &[
    ("inference_mode", "batchnorm on running statistics; dropout removed"),
    ("training_mode", "batchnorm on batch statistics, which it gives as results 1 and 2"),
    ("losses", "the train section's losses on the model's outputs, with a `label` input"),
    ("autodiff", "backward nodes for every trainable parameter's gradient"),
    ("dce", "nodes that no output, loss or gradient needs are removed (optional)"),
];

/// Passes that a graph is still correct without.
const OPTIONAL: &[&str] = &["dce"];

/// How passes run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Optional passes to skip, and the kernel program's opt-in variants to take
    /// ([`crate::lir::passes::OPT_IN`]).
    pub disabled: Vec<String>,
    /// Print the graph after this pass (into [`Pipeline::dumped`]).
    pub dump_after: Option<String>,
    /// Verify after every pass, not only at the end (always so in debug builds).
    pub verify_each: bool,
}

impl Options {
    /// Checks that every pass named exists and that disabled ones are optional.
    pub fn validate(&self) -> Result<(), PassError> {
        let lir = crate::lir::passes::PASSES.iter().chain(crate::lir::passes::OPT_IN);
        let kernel = |name: &str| lir.clone().any(|(p, _)| *p == name);
        for name in self.disabled.iter().filter(|n| !kernel(n)).chain(&self.dump_after) {
            if !PASSES.iter().any(|(p, _)| p == name) {
                return Err(PassError::Unknown { name: name.clone() });
            }
        }
        if let Some(name) = self.disabled.iter().find(|n| !OPTIONAL.contains(&n.as_str()) && !kernel(n)) {
            return Err(PassError::Required { name: name.clone() });
        }
        Ok(())
    }
}

/// Why a pipeline stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum PassError {
    /// No pass has this name.
    Unknown { name: String },
    /// The pass cannot be disabled.
    Required { name: String },
    /// The graph failed verification after a pass: a bug in cnnc.
    Verify { pass: &'static str, error: VerifyError },
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = PASSES.iter().map(|(p, _)| *p).collect();
        match self {
            PassError::Unknown { name } => write!(f, "no pass is called `{name}` (passes: {})", names.join(", ")),
            PassError::Required { name } => {
                write!(f, "the `{name}` pass cannot be disabled (optional passes: {})", OPTIONAL.join(", "))
            }
            PassError::Verify { pass, error } => write!(f, "after the `{pass}` pass: {error}"),
        }
    }
}

impl std::error::Error for PassError {}

/// Runs passes by name, verifying after each.
#[derive(Debug, Default)]
pub struct Pipeline {
    options: Options,
    /// The graph as text after the pass named in [`Options::dump_after`], once it ran.
    pub dumped: Option<String>,
}

impl Pipeline {
    /// Runs the kernel-IR passes not disabled on `program` (see [`crate::lir::passes`]).
    pub fn optimize(&self, program: &mut crate::lir::Program) -> Vec<(&'static str, usize)> {
        crate::lir::passes::optimize(program, &self.options.disabled)
    }

    /// A pipeline with these options (checked by [`Options::validate`] first).
    pub fn new(options: Options) -> Result<Self, PassError> {
        options.validate()?;
        Ok(Pipeline { options, dumped: None })
    }

    /// Runs `pass` (called `name`) on `graph` unless it is disabled, then the verifier.
    pub fn run<T>(
        &mut self,
        name: &'static str,
        graph: &mut Graph,
        pass: impl FnOnce(&mut Graph) -> T,
    ) -> Result<Option<T>, PassError> {
        debug_assert!(PASSES.iter().any(|(p, _)| *p == name), "pass `{name}` is not listed");
        if self.options.disabled.iter().any(|d| d == name) {
            return Ok(None);
        }
        let out = pass(graph);
        if self.options.verify_each || cfg!(debug_assertions) {
            verify(graph).map_err(|error| PassError::Verify { pass: name, error })?;
        }
        if self.options.dump_after.as_deref() == Some(name) {
            self.dumped = Some(graph.to_text());
        }
        Ok(Some(out))
    }

    /// Verifies the finished graph (always, in every build).
    pub fn finish(&self, graph: &Graph) -> Result<(), PassError> {
        verify(graph).map_err(|error| PassError::Verify { pass: "the last", error })
    }
}
