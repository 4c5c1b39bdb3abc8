//! Resolve and elaborate: turns each `model` of the entry file into a shape-checked [`Graph`].
//! Blocks are instantiated with their arguments (names keep the block path, `stage2/block1/conv2`),
//! bindings are evaluated on demand (so a DAG may be written in any order, and a cycle is an
//! error), and every node's shape is inferred as it is created. Problems are collected, never
//! thrown: an erroneous value becomes [`Value::Poison`] and what depends on it is skipped.

mod args;
mod block;
mod eval;
pub(crate) mod layers;
pub mod value;

use crate::error::{similar, Problem, ResolveError, Warning};
use crate::ir::op::{InputOp, Op};
use crate::ir::{Graph, Node, NodeId};
use crate::load::{ModuleId, Program};
use crate::shape::{Shape, MAX_ELEMENTS};
use crate::source::{FileId, Loc};
use cnnc_grammar::ast;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use value::Value;

pub use block::TYPES;
pub use layers::LAYERS;

/// Most nodes one model may have; more means a runaway `repeat` or recursion.
pub const MAX_NODES: usize = 200_000;

/// Most elaboration steps (nodes created, `repeat` iterations, block instances) for all the
/// models of one file together: a file of many large models, or of work that creates nothing,
/// stops here instead of exhausting the machine.
pub const MAX_WORK: usize = 1_000_000;

/// Deepest nesting of block instances.
pub const MAX_DEPTH: usize = 64;

/// A model, elaborated.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// Its name.
    pub name: String,
    /// The `model` declaration's name.
    pub loc: Loc,
    /// Its graph (complete only when no error was reported for it).
    pub graph: Graph,
    /// `anchors` declarations: name, (width, height) pairs, location.
    pub anchors: Vec<(String, Vec<[f64; 2]>, Loc)>,
    /// Where each output is declared, by output name.
    pub output_locs: HashMap<String, Loc>,
    /// Every binding evaluated to a tensor: where its name is written (in any file, block bodies
    /// included, once per instance) and the node computing its value. For editors.
    pub bindings: Vec<(Loc, NodeId)>,
    /// Every call of a layer, block or shared instance and every `repeat` stage that evaluated to
    /// a tensor (in any file, block bodies included, once per instance). For editors.
    pub calls: Vec<CallSite>,
    /// Whether elaborating it reported an error.
    pub failed: bool,
}

/// A call evaluated while elaborating a model: where it is written, what it created, its value.
#[derive(Clone, Debug, PartialEq)]
pub struct CallSite {
    /// The call (or `repeat` stage) as written.
    pub loc: Loc,
    /// The block path of the layer or block instance it created; empty for a `repeat`.
    pub path: String,
    /// The node computing its value.
    pub node: NodeId,
}

/// Elaborates every model of the entry module (module 0).
pub fn elaborate(program: &Program, problems: &mut Vec<Problem>) -> Vec<ModelInfo> {
    let Some(entry) = program.modules.first() else { return Vec::new() };
    let mut models = Vec::new();
    let mut work = 0;
    for item in &entry.ast.items {
        if let ast::Item::Model(m) = item {
            let before = problems.iter().filter(|p| !p.is_warning()).count();
            let (count, exhausted) = (problems.len(), work > MAX_WORK);
            let mut elab = Elab::new(program, problems, &m.name.name);
            // Past the file's budget (reported once), the rest are not elaborated.
            elab.work = work;
            elab.aborted = exhausted;
            let mut info = elab.model(0, m);
            work = elab.work;
            if exhausted {
                problems.truncate(count);
                info.failed = true;
            } else {
                info.failed = problems.iter().filter(|p| !p.is_warning()).count() > before;
            }
            models.push(info);
        }
    }
    models
}

/// One slot of a scope: a binding waiting to be evaluated, being evaluated, or done.
#[derive(Clone, Debug)]
enum Slot {
    Pending { expr: Rc<ast::Expr>, loc: Loc },
    Busy { loc: Loc },
    Done { value: Value, loc: Loc, binding: bool },
}

/// Names given to the nodes and parameters of one layer or block instance.
#[derive(Clone, Debug)]
struct Naming {
    /// Full node name (block path).
    node: String,
    /// Prefix of parameter names; differs from `node` for the second use of a shared instance.
    params: String,
    /// Parameters already created under these names are shared rather than duplicated.
    reuse: bool,
    /// Parameters are frozen.
    frozen: bool,
}

/// The names visible in one model or block instance.
#[derive(Debug)]
struct Scope {
    module: ModuleId,
    file: FileId,
    path: String,
    param_path: String,
    reuse: bool,
    frozen: bool,
    slots: HashMap<String, Slot>,
    order: Vec<String>,
    counters: HashMap<String, usize>,
    explicit: HashMap<String, Loc>,
    referenced: HashSet<String>,
    evaluating: Vec<(String, Loc)>,
    /// Block instances enclosing this scope: (description, call site), outermost first.
    trace: Vec<(String, Loc)>,
}

impl Scope {
    fn loc(&self, span: ast::Span) -> Loc {
        Loc { file: self.file, span }
    }

    /// A fresh local name for a layer or block of `kind`, or the explicit one.
    fn local_name(&mut self, kind: &str) -> String {
        loop {
            let n = self.counters.entry(kind.to_string()).or_insert(0);
            *n += 1;
            let name = format!("{kind}{n}");
            if !self.explicit.contains_key(&name) {
                return name;
            }
        }
    }

    fn join(prefix: &str, local: &str) -> String {
        if prefix.is_empty() {
            local.to_string()
        } else {
            format!("{prefix}/{local}")
        }
    }
}

struct Elab<'p> {
    program: &'p Program,
    problems: &'p mut Vec<Problem>,
    graph: Graph,
    params: HashMap<String, NodeId>,
    active_blocks: Vec<(ModuleId, String)>,
    bindings: Vec<(Loc, NodeId)>,
    calls: Vec<CallSite>,
    aborted: bool,
    /// Elaboration steps so far in the file (this model's and the ones before).
    work: usize,
}

impl<'p> Elab<'p> {
    fn new(program: &'p Program, problems: &'p mut Vec<Problem>, name: &str) -> Self {
        Elab {
            program,
            problems,
            graph: Graph::new(name),
            params: HashMap::new(),
            active_blocks: Vec::new(),
            bindings: Vec::new(),
            calls: Vec::new(),
            aborted: false,
            work: 0,
        }
    }

    /// Counts one elaboration step; false (after reporting it, once) when the file's budget is
    /// spent.
    fn tick(&mut self, sc: &Scope, loc: Loc) -> bool {
        if self.aborted {
            return false;
        }
        self.work += 1;
        if self.work > MAX_WORK {
            self.aborted = true;
            self.report(sc, ResolveError::TooMuchWork { loc, limit: MAX_WORK });
            return false;
        }
        true
    }

    /// Records a problem, wrapped with the block instances it happened in.
    fn report(&mut self, sc: &Scope, p: impl Into<Problem>) {
        let p = p.into();
        if sc.trace.is_empty() {
            self.problems.push(p);
        } else {
            self.problems.push(Problem::Within { problem: Box::new(p), instances: sc.trace.clone() });
        }
    }

    fn add_node(&mut self, sc: &Scope, node: Node, inputs: &[NodeId]) -> Option<NodeId> {
        if !self.tick(sc, node.loc) {
            return None;
        }
        if self.graph.len() >= MAX_NODES {
            self.aborted = true;
            let loc = node.loc;
            self.report(sc, ResolveError::TooLarge { loc, nodes: self.graph.len(), limit: MAX_NODES });
            return None;
        }
        Some(self.graph.add(node, inputs))
    }

    fn new_scope(&self, module: ModuleId, path: String, param_path: String, parent: Option<&Scope>) -> Scope {
        Scope {
            module,
            file: self.program.modules[module].file,
            path,
            param_path,
            reuse: parent.is_some_and(|p| p.reuse),
            frozen: parent.is_some_and(|p| p.frozen),
            slots: HashMap::new(),
            order: Vec::new(),
            counters: HashMap::new(),
            explicit: HashMap::new(),
            referenced: HashSet::new(),
            evaluating: Vec::new(),
            trace: parent.map(|p| p.trace.clone()).unwrap_or_default(),
        }
    }

    fn model(&mut self, module: ModuleId, m: &ast::Model) -> ModelInfo {
        let mut sc = self.new_scope(module, String::new(), String::new(), None);
        let mut anchors = Vec::new();
        let mut outputs = Vec::new();
        let mut has_input = false;
        for stmt in &m.body {
            match stmt {
                ast::Stmt::Input { name, shape, span } => {
                    has_input = true;
                    self.input(&mut sc, name, shape, *span);
                }
                ast::Stmt::Output { .. } => outputs.push(stmt),
                ast::Stmt::Anchors { name, value, span } => {
                    if let Some(a) = self.anchors(&mut sc, value) {
                        anchors.push((name.name.clone(), a, sc.loc(*span)));
                    }
                }
                ast::Stmt::Return { span, .. } => {
                    let loc = sc.loc(*span);
                    self.report(
                        &sc,
                        ResolveError::Misplaced { loc, what: "return", place: "a model (use `output name = ...`)" },
                    );
                }
                other => self.declare(&mut sc, other),
            }
        }
        self.force_all(&mut sc);
        let mut output_locs = HashMap::new();
        for &stmt in &outputs {
            let ast::Stmt::Output { name, value, span } = stmt else { continue };
            let value = match value {
                Some(e) => self.eval(&mut sc, e),
                None => self.lookup(&mut sc, &name.name),
            };
            let loc = sc.loc(*span);
            if let Some(id) = self.expect_tensor(&sc, &value, loc, "an output") {
                self.graph.add_output(&name.name, id);
                output_locs.insert(name.name.clone(), loc);
            }
        }
        let loc = sc.loc(m.name.span);
        if !has_input {
            self.report(&sc, ResolveError::IncompleteModel { loc, model: m.name.name.clone(), missing: "input" });
        } else if outputs.is_empty() {
            self.report(&sc, ResolveError::IncompleteModel { loc, model: m.name.name.clone(), missing: "output" });
        }
        self.warn_unused(&sc);
        ModelInfo {
            name: m.name.name.clone(),
            loc,
            graph: std::mem::take(&mut self.graph),
            anchors,
            output_locs,
            bindings: std::mem::take(&mut self.bindings),
            calls: std::mem::take(&mut self.calls),
            failed: false,
        }
    }

    fn input(&mut self, sc: &mut Scope, name: &ast::Ident, shape: &ast::Expr, span: ast::Span) {
        let loc = sc.loc(span);
        let value = self.eval(sc, shape);
        let dims = self.int_list(sc, &value, sc.loc(shape.span), "an input shape", 1);
        let Some(dims) = dims else {
            self.bind(sc, name, Value::Poison, false);
            return;
        };
        if dims.is_empty() || dims.len() > 4 || Shape(dims.clone()).elements().is_none_or(|n| n > MAX_ELEMENTS) {
            self.report(
                sc,
                ResolveError::BadValue {
                    loc: sc.loc(shape.span),
                    what: "an input shape".into(),
                    value: Shape(dims).to_string(),
                    expected: "1 to 4 axes: [n], [n, n_C], [n_H, n_W, n_C] or [n_D, n_H, n_W, n_C]".into(),
                    candidates: vec![],
                },
            );
            self.bind(sc, name, Value::Poison, false);
            return;
        }
        let node = Node {
            op: Op::Input(InputOp { name: name.name.clone() }),
            name: name.name.clone(),
            loc,
            shape: Shape(dims),
            extra: Vec::new(),
        };
        let value = self.add_node(sc, node, &[]).map_or(Value::Poison, Value::Tensor);
        self.bind(sc, name, value, false);
    }

    fn anchors(&mut self, sc: &mut Scope, e: &ast::Expr) -> Option<Vec<[f64; 2]>> {
        let value = self.eval(sc, e);
        let loc = sc.loc(e.span);
        let bad = |this: &mut Self, sc: &Scope, found: String| {
            this.report(
                sc,
                ResolveError::WrongType {
                    loc,
                    what: "anchors".into(),
                    expected: "a list of [width, height] pairs of positive numbers".into(),
                    found,
                    origin: None,
                },
            );
            None
        };
        let Value::List(items) = &value else {
            let found = value.describe(&self.graph);
            return bad(self, sc, found);
        };
        let mut out = Vec::new();
        for (item, _) in items {
            let pair = match item {
                Value::List(p) if p.len() == 2 => [number(&p[0].0), number(&p[1].0)],
                _ => [None, None],
            };
            match pair {
                [Some(w), Some(h)] if w > 0.0 && h > 0.0 => out.push([w, h]),
                _ => {
                    let found = item.describe(&self.graph);
                    return bad(self, sc, format!("an item that is a {found}"));
                }
            }
        }
        if out.is_empty() {
            return bad(self, sc, "an empty list".into());
        }
        Some(out)
    }

    /// Registers a statement of a model or block body (not input, output or return).
    fn declare(&mut self, sc: &mut Scope, stmt: &ast::Stmt) {
        match stmt {
            ast::Stmt::Binding { name, value, .. } => {
                let loc = sc.loc(name.span);
                if self.check_fresh(sc, name) {
                    sc.slots.insert(name.name.clone(), Slot::Pending { expr: Rc::new(value.clone()), loc });
                    sc.order.push(name.name.clone());
                }
            }
            ast::Stmt::Const(c) => {
                let value = self.constant(sc, c);
                self.bind(sc, &c.name, value, true);
            }
            ast::Stmt::Shared { name, call, .. } => {
                let shared = value::SharedInstance {
                    name: name.name.clone(),
                    call: call.clone(),
                    module: sc.module,
                    uses: std::cell::Cell::new(0),
                    loc: sc.loc(name.span),
                };
                self.bind(sc, name, Value::Shared(Rc::new(shared)), true);
            }
            ast::Stmt::Input { span, .. } => {
                let loc = sc.loc(*span);
                self.report(
                    sc,
                    ResolveError::Misplaced {
                        loc,
                        what: "input",
                        place: "a block (blocks take tensors as parameters)",
                    },
                );
            }
            ast::Stmt::Output { span, .. } => {
                let loc = sc.loc(*span);
                self.report(sc, ResolveError::Misplaced { loc, what: "output", place: "a block (use `return`)" });
            }
            ast::Stmt::Anchors { span, .. } => {
                let loc = sc.loc(*span);
                self.report(
                    sc,
                    ResolveError::Misplaced { loc, what: "anchors", place: "a block (declare anchors in the model)" },
                );
            }
            ast::Stmt::Return { .. } => {}
        }
    }

    /// Whether `name` is not yet defined in this scope; reports a duplicate otherwise.
    fn check_fresh(&mut self, sc: &Scope, name: &ast::Ident) -> bool {
        let first = match sc.slots.get(&name.name) {
            None => return true,
            Some(Slot::Pending { loc, .. } | Slot::Busy { loc } | Slot::Done { loc, .. }) => *loc,
        };
        let loc = sc.loc(name.span);
        self.report(sc, ResolveError::DuplicateDefinition { loc, first, name: name.name.clone() });
        false
    }

    fn bind(&mut self, sc: &mut Scope, name: &ast::Ident, value: Value, binding: bool) {
        if self.check_fresh(sc, name) {
            let loc = sc.loc(name.span);
            sc.slots.insert(name.name.clone(), Slot::Done { value, loc, binding });
            if binding {
                sc.order.push(name.name.clone());
            }
        }
    }

    /// Evaluates every pending binding, in source order.
    fn force_all(&mut self, sc: &mut Scope) {
        for name in sc.order.clone() {
            if matches!(sc.slots.get(&name), Some(Slot::Pending { .. })) {
                self.force(sc, &name);
            }
        }
    }

    fn force(&mut self, sc: &mut Scope, name: &str) -> Value {
        match sc.slots.get(name).cloned() {
            Some(Slot::Pending { expr, loc }) => {
                sc.slots.insert(name.to_string(), Slot::Busy { loc });
                sc.evaluating.push((name.to_string(), loc));
                let value = self.eval(sc, &expr);
                sc.evaluating.pop();
                if let Value::Tensor(id) = value {
                    self.bindings.push((loc, id));
                }
                sc.slots.insert(name.to_string(), Slot::Done { value: value.clone(), loc, binding: true });
                value
            }
            Some(Slot::Busy { .. }) => {
                let start = sc.evaluating.iter().position(|(n, _)| n == name).unwrap_or(0);
                let names = sc.evaluating[start..].to_vec();
                self.report(sc, ResolveError::Cycle { names });
                Value::Poison
            }
            Some(Slot::Done { value, .. }) => value,
            None => Value::Word(name.to_string()),
        }
    }

    /// The value of a name: a binding or parameter of this scope, a constant of the module, or a
    /// bare [`Value::Word`].
    fn lookup(&mut self, sc: &mut Scope, name: &str) -> Value {
        if sc.slots.contains_key(name) {
            sc.referenced.insert(name.to_string());
            return self.force(sc, name);
        }
        let module = &self.program.modules[sc.module];
        if let Some(def) = module.consts.get(name).cloned() {
            let mut const_scope = self.new_scope(def.module, String::new(), String::new(), None);
            return self.constant(&mut const_scope, &def.item);
        }
        Value::Word(name.to_string())
    }

    /// Every name a scope can see, for "did you mean".
    fn visible_names(&self, sc: &Scope) -> Vec<String> {
        let module = &self.program.modules[sc.module];
        let mut names: Vec<String> = sc.slots.keys().chain(module.consts.keys()).cloned().collect();
        names.sort();
        names
    }

    fn warn_unused(&mut self, sc: &Scope) {
        for name in &sc.order {
            if sc.referenced.contains(name) || name.starts_with('_') {
                continue;
            }
            if let Some(Slot::Done { loc, binding: true, .. }) = sc.slots.get(name) {
                let w = Warning::UnusedBinding { loc: *loc, name: name.clone() };
                self.report(sc, w);
            }
        }
    }

    /// The node of a tensor value, or a reported error.
    fn expect_tensor(&mut self, sc: &Scope, value: &Value, loc: Loc, what: &str) -> Option<NodeId> {
        match value {
            Value::Tensor(id) => Some(*id),
            Value::Poison => None,
            Value::Word(name) => {
                let candidates = similar(name, self.visible_names(sc).iter().map(String::as_str));
                self.report(sc, ResolveError::UnknownName { loc, name: name.clone(), candidates });
                None
            }
            other => {
                let found = other.describe(&self.graph);
                self.report(
                    sc,
                    ResolveError::WrongType {
                        loc,
                        what: what.to_string(),
                        expected: "a tensor".into(),
                        found,
                        origin: None,
                    },
                );
                None
            }
        }
    }

    /// A list of positive integers of at least `min` each, or a reported error.
    fn int_list(&mut self, sc: &Scope, value: &Value, loc: Loc, what: &str, min: i64) -> Option<Vec<usize>> {
        let items: Vec<Value> = match value {
            Value::List(items) => items.iter().map(|(v, _)| v.clone()).collect(),
            Value::Size(v) => v.iter().map(|&d| Value::Int(d)).collect(),
            Value::Poison => return None,
            other => {
                let found = other.describe(&self.graph);
                let expected = "a list of integers like [32, 32, 3]".to_string();
                self.report(sc, ResolveError::WrongType { loc, what: what.into(), expected, found, origin: None });
                return None;
            }
        };
        let mut out = Vec::new();
        for item in items {
            match item {
                Value::Int(v) if v >= min => out.push(v as usize),
                Value::Poison => return None,
                other => {
                    let value = match &other {
                        Value::Int(v) => v.to_string(),
                        o => o.describe(&self.graph),
                    };
                    let expected = format!("integers of at least {min}");
                    self.report(
                        sc,
                        ResolveError::BadValue { loc, what: what.into(), value, expected, candidates: vec![] },
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Evaluates a `const` declaration.
    fn constant(&mut self, sc: &mut Scope, c: &ast::Const) -> Value {
        let loc = sc.loc(c.span);
        let shape_value = self.eval(sc, &c.shape);
        let Some(shape) = self.int_list(sc, &shape_value, sc.loc(c.shape.span), "a constant's shape", 1) else {
            return Value::Poison;
        };
        let value = self.eval(sc, &c.value);
        let mut data = Vec::new();
        if !flatten_numbers(&value, &mut data) {
            let found = value.describe(&self.graph);
            let expected = "a (nested) list of numbers".to_string();
            self.report(
                sc,
                ResolveError::WrongType {
                    loc: sc.loc(c.value.span),
                    what: "a constant's values".into(),
                    expected,
                    found,
                    origin: None,
                },
            );
            return Value::Poison;
        }
        let expected = Shape(shape.clone()).elements().unwrap_or(usize::MAX);
        if expected != data.len() {
            let shape = shape.iter().map(|&d| d as i64).collect();
            self.report(
                sc,
                ResolveError::ConstSize {
                    loc: sc.loc(c.value.span),
                    name: c.name.name.clone(),
                    shape,
                    expected,
                    got: data.len(),
                },
            );
            return Value::Poison;
        }
        Value::Const(Rc::new(value::ConstValue { name: c.name.name.clone(), shape, data: data.into(), loc }))
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> bool {
    match v {
        Value::List(items) => items.iter().all(|(i, _)| flatten_numbers(i, out)),
        other => match number(other) {
            Some(x) => {
                out.push(x as f32);
                true
            }
            None => false,
        },
    }
}
