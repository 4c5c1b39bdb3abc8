//! Values of the elaborator: what an expression evaluates to before it becomes graph nodes.

use crate::ir::{Graph, NodeId};
use crate::load::ModuleId;
use crate::source::Loc;
use cnnc_grammar::ast;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

/// A value during elaboration.
#[derive(Clone, Debug)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A real number.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A string.
    Str(String),
    /// `3x3`
    Size(Vec<i64>),
    /// `[a, b]`, each item with its location.
    List(Vec<(Value, Loc)>),
    /// A name bound to nothing: meaningful only where a choice is expected (`pad: same`).
    Word(String),
    /// A tensor: the node that computes it.
    Tensor(NodeId),
    /// A constant tensor from the file.
    Const(Rc<ConstValue>),
    /// A shared instance (`shared enc = encoder(128)`).
    Shared(Rc<SharedInstance>),
    /// Something whose error was already reported; everything built on it is skipped silently.
    Poison,
}

/// A constant tensor written in the file.
#[derive(Clone, Debug)]
pub struct ConstValue {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Arc<[f32]>,
    /// Where it is declared.
    pub loc: Loc,
}

/// One layer or block instance whose weights every application shares.
#[derive(Debug)]
pub struct SharedInstance {
    /// The binding's name, the prefix of its parameters' names.
    pub name: String,
    /// The call that configures it.
    pub call: ast::Call,
    /// The module whose names the call sees.
    pub module: ModuleId,
    /// How many times it has been applied.
    pub uses: Cell<usize>,
    /// Where it is declared.
    pub loc: Loc,
}

impl Value {
    /// A short description for "expected X, found Y".
    pub fn describe(&self, graph: &Graph) -> String {
        match self {
            Value::Int(v) => format!("integer `{v}`"),
            Value::Float(v) => format!("number `{v}`"),
            Value::Bool(v) => format!("boolean `{v}`"),
            Value::Str(s) => format!("string \"{s}\""),
            Value::Size(v) => format!("size `{}`", v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")),
            Value::List(v) => format!("list of {} item{}", v.len(), if v.len() == 1 { "" } else { "s" }),
            Value::Word(w) => format!("name `{w}`"),
            Value::Tensor(id) => format!("tensor {}", graph.node(*id).shape),
            Value::Const(c) => format!("constant `{}`", c.name),
            Value::Shared(s) => format!("shared instance `{}`", s.name),
            Value::Poison => "an erroneous value".to_string(),
        }
    }
}
