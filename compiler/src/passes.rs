//! Passes over the graph IR. Each is one file with a one-line contract and a `run`; this module
//! orders them and runs the verifier after each.

pub mod autodiff;
pub mod training;

use crate::ir::{verify, Graph, VerifyError};

/// Runs `pass` on `graph`, then the verifier: a failure is a bug in the pass.
pub fn checked<T>(graph: &mut Graph, pass: impl FnOnce(&mut Graph) -> T) -> Result<T, VerifyError> {
    let out = pass(graph);
    verify(graph)?;
    Ok(out)
}
