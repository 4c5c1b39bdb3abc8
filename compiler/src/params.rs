//! Where every parameter of a model lives in the flat buffers: a table `ParamId → (name, shape,
//! offset)`, in name order. The runtime's parameter, gradient and optimizer-state buffers and the
//! kernel programs (which address parameters by offset) share it; names stay for weights files
//! and for people.

use crate::ir::op::{Op, ParamOp, ParamRole};
use crate::ir::Graph;
use std::collections::HashMap;
use std::ops::Range;

/// A parameter's index in a [`ParamLayout`].
pub type ParamId = usize;

/// One parameter's place in the flat buffers.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Its name (`conv1/weight`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Where it starts in the buffers.
    pub offset: usize,
    /// Updated by gradient descent (not frozen, not a running statistic).
    pub trainable: bool,
    /// Its values are written in the model file (fixed filters): never read from weights files.
    pub constant: bool,
    /// What it is for.
    pub role: ParamRole,
}

impl Entry {
    /// Its elements in the buffers.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.shape.iter().product::<usize>()
    }
}

/// Where every parameter of a model lives, in name order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamLayout {
    entries: Vec<Entry>,
    by_name: HashMap<String, ParamId>,
    len: usize,
}

impl ParamLayout {
    /// The layout of the parameters of `graph` (a parameter shared by name appears once).
    pub fn of(graph: &Graph) -> ParamLayout {
        let mut params: Vec<(&str, &[usize], &ParamOp)> = graph
            .node_ids()
            .filter_map(|id| {
                let node = graph.node(id);
                match &node.op {
                    Op::Param(p) => Some((node.name.as_str(), node.shape.0.as_slice(), p)),
                    _ => None,
                }
            })
            .collect();
        params.sort_by(|a, b| a.0.cmp(b.0));
        params.dedup_by(|a, b| a.0 == b.0);
        let mut layout = ParamLayout::default();
        for (name, shape, p) in params {
            let entry = Entry {
                name: name.to_string(),
                shape: shape.to_vec(),
                offset: layout.len,
                trainable: !p.frozen && !p.role.is_state(),
                constant: p.init == crate::ir::op::Init::Constant,
                role: p.role,
            };
            layout.len += shape.iter().product::<usize>();
            layout.by_name.insert(entry.name.clone(), layout.entries.len());
            layout.entries.push(entry);
        }
        layout
    }

    /// Every parameter, in name order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The parameter called `name`.
    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    /// The entry of parameter `id`.
    pub fn entry(&self, id: ParamId) -> &Entry {
        &self.entries[id]
    }

    /// Elements in all.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the model has no parameter.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl ParamLayout {
    /// The entry of the parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.id(name).map(|id| self.entry(id))
    }
}

impl Entry {
    /// Its number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
