//! Weights from other frameworks: a PyTorch state dict saved as safetensors, or the initializers
//! of an ONNX model, mapped onto a model's layers and converted to cnnc's layouts.
//!
//! Both sides are read as *layers*: a foreign module (`layer1.0.conv1`, with its `weight` and
//! `bias`) or ONNX node, and a cnnc layer (`layer1/conv_bn_relu1/conv1`, with its parameters).
//! Each has a kind: convolution, dense, batchnorm or PReLU. Foreign layers are paired with the
//! model's by the rules of a mapping (`SRC => DST`, `ignore SRC`), then the rest in order, kind by
//! kind: PyTorch modules in the natural order of their names (`features.2` before `features.10`),
//! ONNX nodes in the graph's order, cnnc layers in the model file's order. Every pair must agree
//! in shape once converted; anything left over on the foreign side is an error, left over on
//! cnnc's side starts fresh (a new head).
//!
//! Layouts: convolution filters `[c_out, c_in/g, k..]` → `[k.., c_in/g, c_out]`; dense `[out, in]`
//! → `[in, out]`, with the rows of a dense layer after a flatten reordered from the foreign order
//! of the flattened axes (PyTorch's `[c, h, w]`, or `[w, h, c]` as MTCNN permutes) to cnnc's
//! `[h, w, c]`; batchnorm's weight and bias → γ and β; a PReLU's one shared slope repeated over
//! the channels.

use cnnc_compiler::ir::op::{Op, ParamRole};
use cnnc_compiler::ir::{Graph, NodeId};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;

/// What a layer is, on either side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Convolution: filters and an optional bias.
    Conv,
    /// Dense (linear, fully connected): a weight matrix and an optional bias.
    Dense,
    /// Batch normalization: scale, shift, running mean and variance.
    BatchNorm,
    /// PReLU: learned slopes.
    PRelu,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Conv => "convolution",
            Kind::Dense => "dense",
            Kind::BatchNorm => "batchnorm",
            Kind::PRelu => "prelu",
        })
    }
}

/// A tensor of a foreign file: its name there, shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Its name in the file.
    pub name: String,
    /// Its shape in the file.
    pub shape: Vec<usize>,
    /// Its values.
    pub values: Vec<f32>,
}

/// One layer of a foreign file.
#[derive(Clone, Debug, PartialEq)]
pub struct Foreign {
    /// The module (or ONNX node) name.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Its tensors, by the role they play.
    pub tensors: BTreeMap<Role, Tensor>,
    /// Its tensors are in TensorFlow's layout, which is cnnc's: filters `[k.., c_in/g, c_out]`,
    /// a dense weight `[in, out]` (TF.js files; ONNX `MatMul`, `Gemm` without `transB`).
    pub tf_layout: bool,
    /// A batchnorm's epsilon, when the file says it (ONNX).
    pub eps: Option<f32>,
}

/// A foreign tensor's role, ordered as cnnc's parameters are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Filters, a dense matrix, batchnorm's scale or PReLU's slopes.
    Weight,
    /// Bias or batchnorm's shift.
    Bias,
    /// Batchnorm's running mean.
    Mean,
    /// Batchnorm's running variance.
    Var,
}

/// How a foreign file orders the axes it flattens before a dense layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flatten {
    /// Channels, then the spatial axes in order: PyTorch's `[c, h, w]`.
    Chw,
    /// The spatial axes reversed, then channels: `[w, h, c]` (MTCNN's RNet and ONet).
    Whc,
    /// As cnnc: the spatial axes in order, then channels (TensorFlow, cnnc's own exports).
    Hwc,
}

impl std::str::FromStr for Flatten {
    type Err = String;
    fn from_str(s: &str) -> Result<Flatten, String> {
        match s {
            "chw" => Ok(Flatten::Chw),
            "whc" => Ok(Flatten::Whc),
            "hwc" => Ok(Flatten::Hwc),
            _ => Err(format!("`{s}` is not a flatten order: chw (PyTorch), whc or hwc (cnnc, TensorFlow)")),
        }
    }
}

/// A file of foreign weights, read.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// Its layers, in the order they pair by.
    pub layers: Vec<Foreign>,
    /// The flatten order its producer uses unless the mapping says otherwise.
    pub flatten: Flatten,
    /// Tensors it holds that belong to no layer cnnc knows, by name, with why.
    pub unknown: Vec<(String, String)>,
    /// Its layers pair first with the model's layers of the same name (TF.js files, whose layer
    /// names a faithful model file repeats).
    pub by_name: bool,
}

/// Why an import failed. Every message names the file, layer or tensor at fault.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportError(pub String);

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImportError {}

fn err<T>(message: impl Into<String>) -> Result<T, ImportError> {
    Err(ImportError(message.into()))
}

/// Reads a PyTorch state dict saved as safetensors (`.safetensors`) or an ONNX model (`.onnx`).
pub fn read(path: &Path) -> Result<Source, ImportError> {
    let bytes = crate::atomic::read(path).map_err(|e| ImportError(format!("cannot read `{}`: {e}", path.display())))?;
    let onnx = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    if onnx {
        read_onnx(path, &bytes)
    } else {
        read_torch(path, &bytes)
    }
}

fn read_torch(path: &Path, bytes: &[u8]) -> Result<Source, ImportError> {
    let pickle =
        path.extension().is_some_and(|e| ["pt", "pth", "bin", "ckpt"].iter().any(|x| e.eq_ignore_ascii_case(x)));
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        let hint = if pickle {
            "; a PyTorch .pt/.pth file is a pickle, which cnnc does not run: save the state dict with \
             `safetensors.torch.save_file(model.state_dict(), \"w.safetensors\")`"
        } else {
            ""
        };
        ImportError(format!("`{}` is not a valid safetensors file: {e}{hint}", path.display()))
    })?;
    let mut tensors = Vec::new();
    let mut unknown = Vec::new();
    for (name, view) in st.tensors() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        match crate::weights::floats(view.dtype(), view.data()) {
            Some(values) => tensors.push(Tensor { name, shape: view.shape().to_vec(), values }),
            None => unknown.push((name, format!("{:?} values, not floats", view.dtype()))),
        }
    }
    // TensorFlow's names are paths (`conv1/conv/filters`); PyTorch's are dotted.
    let tf = tensors.iter().any(|t| t.name.contains('/')) && tensors.iter().all(|t| !t.name.contains('.'));
    let mut source = if tf { tf_layers(tensors) } else { state_dict(tensors) };
    source.unknown.extend(unknown);
    Ok(source)
}

/// The layers of a PyTorch state dict: tensors grouped by module (the name without its last
/// part), each module's kind told by its tensors, modules in the natural order of their names.
pub fn state_dict(tensors: Vec<Tensor>) -> Source {
    let mut modules: BTreeMap<String, BTreeMap<String, Tensor>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for tensor in tensors {
        let (module, suffix) = tensor.name.rsplit_once('.').unwrap_or(("", tensor.name.as_str()));
        let (module, suffix) = (module.to_string(), suffix.to_string());
        if suffix != "num_batches_tracked" {
            modules.entry(module).or_default().insert(suffix, tensor);
        }
    }
    let mut layers = Vec::new();
    for (module, mut tensors) in modules {
        let role = |s: &str| match s {
            "weight" => Some(Role::Weight),
            "bias" => Some(Role::Bias),
            "running_mean" => Some(Role::Mean),
            "running_var" => Some(Role::Var),
            _ => None,
        };
        let (known, odd): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut tensors).into_iter().partition(|(s, _)| role(s).is_some());
        tensors = known;
        for (s, t) in odd {
            unknown.push((t.name, format!("`.{s}` is not a parameter cnnc knows")));
        }
        let rank = tensors.get("weight").map(|t| t.shape.len());
        let kind = if tensors.contains_key("running_mean") || tensors.contains_key("running_var") {
            Kind::BatchNorm
        } else {
            match (rank, tensors.contains_key("bias")) {
                (Some(r), _) if r >= 3 => Kind::Conv,
                (Some(2), _) => Kind::Dense,
                (Some(1), false) => Kind::PRelu,
                _ => {
                    let names: Vec<String> = tensors.values().map(|t| format!("{} {:?}", t.name, t.shape)).collect();
                    for t in tensors.into_values() {
                        unknown
                            .push((t.name, format!("module `{module}` ({}) is no layer cnnc has", names.join(", "))));
                    }
                    continue;
                }
            }
        };
        let tensors = tensors.into_iter().filter_map(|(s, t)| role(&s).map(|r| (r, t))).collect();
        layers.push(Foreign { name: module, kind, tensors, tf_layout: false, eps: None });
    }
    layers.sort_by(|a, b| natural(&a.name, &b.name));
    Source { layers, flatten: Flatten::Chw, unknown, by_name: false }
}

/// The layers of a TF.js model (face-api's): tensors grouped by layer (the name without its last
/// part). A convolution has `filters` `[k.., c_in, c_out]` and `bias`; a per-channel scale layer
/// (`weights` and `biases` `[c]`, a folded batchnorm) is a 1×1 depthwise convolution,
/// `[1, 1, 1, c]`; a matrix `[in, out]` is a dense layer. Every layer is in TensorFlow's layout
/// and pairs with the model's layer of its name first.
pub fn tf_layers(tensors: Vec<Tensor>) -> Source {
    let mut modules: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
    for tensor in tensors {
        let (module, suffix) = match tensor.name.rsplit_once('/') {
            Some((m, s)) => (m.to_string(), s.to_string()),
            // A lone matrix (`fc`) is a layer of its own.
            None => (tensor.name.clone(), "weights".to_string()),
        };
        modules.entry(module).or_default().push((suffix, tensor));
    }
    let mut layers = Vec::new();
    let mut unknown = Vec::new();
    for (module, tensors) in modules {
        let ranks: Vec<usize> = tensors.iter().map(|(_, t)| t.shape.len()).collect();
        let kind = if tensors.iter().any(|(s, t)| s == "filters" && t.shape.len() >= 3) {
            Some(Kind::Conv)
        } else if tensors.iter().any(|(s, t)| s == "weights" && t.shape.len() == 2) {
            Some(Kind::Dense)
        } else if tensors.iter().any(|(s, t)| s == "weights" && t.shape.len() == 1) {
            Some(Kind::Conv)
        } else {
            None
        };
        let mut roles = BTreeMap::new();
        for (suffix, mut t) in tensors {
            let role = match (kind, suffix.as_str()) {
                (Some(_), "filters" | "weights") => Role::Weight,
                (Some(_), "bias" | "biases") => Role::Bias,
                _ => {
                    let why = format!("`/{suffix}` (in a layer of ranks {ranks:?}) is not a parameter cnnc knows");
                    unknown.push((t.name, why));
                    continue;
                }
            };
            // A scale layer's weights: one 1×1 filter per channel.
            if role == Role::Weight && t.shape.len() == 1 {
                t.shape = vec![1, 1, 1, t.shape[0]];
            }
            roles.insert(role, t);
        }
        if let Some(kind) = kind {
            layers.push(Foreign { name: module, kind, tensors: roles, tf_layout: true, eps: None });
        }
    }
    layers.sort_by(|a, b| natural(&a.name, &b.name));
    Source { layers, flatten: Flatten::Hwc, unknown, by_name: true }
}

/// Orders names as people number things: `features.2` before `features.10`.
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    fn pieces(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let b = s.as_bytes();
        for i in 1..=b.len() {
            if i == b.len() || b[i].is_ascii_digit() != b[start].is_ascii_digit() {
                out.push((b[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (pieces(a), pieces(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x.0, y.0) {
            (true, true) => {
                let (tx, ty) = (x.1.trim_start_matches('0'), y.1.trim_start_matches('0'));
                tx.len().cmp(&ty.len()).then(tx.cmp(ty)).then(x.1.len().cmp(&y.1.len()))
            }
            _ => x.1.cmp(y.1),
        };
        if o.is_ne() {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

fn read_onnx(path: &Path, bytes: &[u8]) -> Result<Source, ImportError> {
    use crate::onnx::proto::ModelProto;
    let model: ModelProto = prost::Message::decode(bytes)
        .map_err(|e| ImportError(format!("`{}` is not a valid ONNX model: {e}", path.display())))?;
    let graph = model.graph.unwrap_or_default();
    let mut inits: HashMap<&str, &crate::onnx::proto::TensorProto> = HashMap::new();
    for t in &graph.initializer {
        inits.insert(&t.name, t);
    }
    let tensor = |name: &str| -> Result<Option<Tensor>, ImportError> {
        let Some(t) = inits.get(name) else { return Ok(None) };
        if t.data_type != 1 {
            return err(format!(
                "`{}`: initializer `{name}` is not float32 (ONNX type {})",
                path.display(),
                t.data_type
            ));
        }
        let shape: Vec<usize> = t.dims.iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect();
        let values: Vec<f32> = if t.raw_data.is_empty() {
            t.float_data.clone()
        } else {
            crate::weights::floats(Dtype::F32, &t.raw_data).unwrap_or_default()
        };
        if Some(values.len()) != shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) {
            return err(format!(
                "`{}`: initializer `{name}` has {} values for shape {shape:?}",
                path.display(),
                values.len()
            ));
        }
        Ok(Some(Tensor { name: name.to_string(), shape, values }))
    };
    // Values that are an initializer reshaped (PyTorch exports a PReLU's slopes unsqueezed to
    // `[c, 1, 1]`): followed back to the initializer.
    let mut reshaped: HashMap<&str, &str> = HashMap::new();
    for node in &graph.node {
        if matches!(node.op_type.as_str(), "Unsqueeze" | "Squeeze" | "Reshape" | "Identity" | "Flatten") {
            if let (Some(out), Some(input)) = (node.output.first(), node.input.first()) {
                reshaped.insert(out, input);
            }
        }
    }
    let origin = |name: &str| {
        let mut name = name.to_string();
        let mut steps = 0;
        // At most one step a node: a cycle of reshapes (an invalid graph) ends too.
        while let (Some(&from), true) = (reshaped.get(name.as_str()), steps <= graph.node.len()) {
            name = from.to_string();
            steps += 1;
        }
        name
    };
    let mut layers: Vec<Foreign> = Vec::new();
    let mut used: HashSet<String> = HashSet::new();
    // The output of each MatMul layer, for the bias a following Add brings.
    let mut matmul_out: HashMap<&str, usize> = HashMap::new();
    for node in &graph.node {
        let input = |i: usize| origin(node.input.get(i).map(String::as_str).unwrap_or(""));
        let attr = |n: &str| node.attribute.iter().find(|a| a.name == n).map(|a| a.i);
        let (kind, roles): (Kind, &[(usize, Role)]) = match node.op_type.as_str() {
            "Conv" => (Kind::Conv, &[(1, Role::Weight), (2, Role::Bias)]),
            "Gemm" | "MatMul" => (Kind::Dense, &[(1, Role::Weight), (2, Role::Bias)]),
            "BatchNormalization" => {
                (Kind::BatchNorm, &[(1, Role::Weight), (2, Role::Bias), (3, Role::Mean), (4, Role::Var)])
            }
            "PRelu" => (Kind::PRelu, &[(1, Role::Weight)]),
            "Add" => {
                let (a, b) = (input(0), input(1));
                let (out, bias) = if matmul_out.contains_key(a.as_str()) { (a, b) } else { (b, a) };
                if let (Some(&layer), Some(t)) = (matmul_out.get(out.as_str()), tensor(&bias)?) {
                    if t.shape.len() == 1 && !layers[layer].tensors.contains_key(&Role::Bias) {
                        used.insert(t.name.clone());
                        layers[layer].tensors.insert(Role::Bias, t);
                    }
                }
                continue;
            }
            _ => continue,
        };
        let mut tensors = BTreeMap::new();
        for &(i, role) in roles {
            if let Some(t) = tensor(&input(i))? {
                used.insert(t.name.clone());
                tensors.insert(role, t);
            }
        }
        if !tensors.contains_key(&Role::Weight) {
            continue; // weights computed in the graph, not stored: nothing to import
        }
        if node.op_type == "Gemm" {
            let float = |n: &str| node.attribute.iter().find(|a| a.name == n).map_or(1.0, |a| a.f);
            if attr("transA").unwrap_or(0) != 0 || float("alpha") != 1.0 || float("beta") != 1.0 {
                return err(format!(
                    "`{}`: Gemm node `{}` scales or transposes its input (alpha, beta, transA), which no dense layer does",
                    path.display(),
                    node.name
                ));
            }
        }
        let tf_layout = match node.op_type.as_str() {
            "MatMul" => true,
            "Gemm" => attr("transB").unwrap_or(0) == 0,
            _ => false,
        };
        let name = if node.name.is_empty() {
            tensors[&Role::Weight]
                .name
                .rsplit_once('.')
                .map_or(tensors[&Role::Weight].name.clone(), |p| p.0.to_string())
        } else {
            node.name.clone()
        };
        if node.op_type == "MatMul" {
            if let Some(out) = node.output.first() {
                matmul_out.insert(out, layers.len());
            }
        }
        let eps = (node.op_type == "BatchNormalization")
            .then(|| node.attribute.iter().find(|a| a.name == "epsilon").map_or(1e-5, |a| a.f));
        layers.push(Foreign { name, kind, tensors, tf_layout, eps });
    }
    let unknown = graph
        .initializer
        .iter()
        .filter(|t| !used.contains(&t.name) && t.data_type == 1 && !t.dims.is_empty())
        .map(|t| (t.name.clone(), "an initializer no convolution, dense, batchnorm or PReLU node reads".to_string()))
        .collect();
    let flatten = if model.producer_name == "cnnc" { Flatten::Hwc } else { Flatten::Chw };
    Ok(Source { layers, flatten, unknown, by_name: false })
}

/// One piece of a name pattern.
#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Lit(String),
    /// `{name}`: one or more of `[A-Za-z0-9_-]`.
    Cap(String),
    /// `*`: anything.
    Star,
}

/// A rule's right side: literal text and captures with an optional added number.
#[derive(Clone, Debug, PartialEq)]
enum Out {
    Lit(String),
    Cap(String, i64),
}

/// A mapping from a foreign file's layers to a model's: rules tried in order, then the order of
/// layers for the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapping {
    rules: Vec<(Vec<Piece>, Vec<Out>, usize)>,
    ignore: Vec<(Vec<Piece>, usize)>,
    /// The foreign flatten order, when the mapping gives it.
    pub flatten: Option<Flatten>,
}

fn pattern(s: &str, line: usize) -> Result<Vec<Piece>, ImportError> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return err(format!("line {line}: `{{{name}}}` is not a capture (a name in braces, like `{{i}}`)"));
                }
                out.extend((!lit.is_empty()).then(|| Piece::Lit(std::mem::take(&mut lit))));
                out.push(Piece::Cap(name));
            }
            '*' => {
                out.extend((!lit.is_empty()).then(|| Piece::Lit(std::mem::take(&mut lit))));
                out.push(Piece::Star);
            }
            c => lit.push(c),
        }
    }
    out.extend((!lit.is_empty()).then_some(Piece::Lit(lit)));
    Ok(out)
}

fn template(s: &str, caps: &[Piece], line: usize) -> Result<Vec<Out>, ImportError> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '{' {
            lit.push(c);
            continue;
        }
        let inner: String = chars.by_ref().take_while(|&c| c != '}').collect();
        let (name, add) = match inner.find(['+', '-']) {
            Some(i) => {
                let n: i64 = inner[i + 1..].trim().parse().map_err(|_| {
                    ImportError(format!("line {line}: `{{{inner}}}`: expected a capture plus or minus a number"))
                })?;
                (inner[..i].trim().to_string(), if &inner[i..i + 1] == "-" { -n } else { n })
            }
            None => (inner.trim().to_string(), 0),
        };
        if !caps.iter().any(|p| *p == Piece::Cap(name.clone())) {
            return err(format!("line {line}: `{{{name}}}` is not captured on the left of `=>`"));
        }
        if !lit.is_empty() {
            out.push(Out::Lit(std::mem::take(&mut lit)));
        }
        out.push(Out::Cap(name, add));
    }
    if !lit.is_empty() {
        out.push(Out::Lit(lit));
    }
    Ok(out)
}

/// Matches `name` against `pieces`, filling `caps`.
fn matches<'a>(pieces: &[Piece], name: &'a str, caps: &mut Vec<(String, &'a str)>) -> bool {
    // Whether pieces `i..` match `name[pos..]` does not depend on what was captured before, so
    // a state that failed once fails again: remembering them keeps matching polynomial whatever
    // the pattern (`*a*a*a*b` on a long name would otherwise take exponential time).
    fn at<'a>(
        pieces: &[Piece],
        name: &'a str,
        (i, pos): (usize, usize),
        caps: &mut Vec<(String, &'a str)>,
        failed: &mut HashSet<(usize, usize)>,
    ) -> bool {
        if failed.contains(&(i, pos)) {
            return false;
        }
        let rest = &name[pos..];
        let found = match pieces.get(i) {
            None => rest.is_empty(),
            Some(Piece::Lit(l)) => {
                rest.starts_with(l.as_str()) && at(pieces, name, (i + 1, pos + l.len()), caps, failed)
            }
            Some(Piece::Star) => (0..=rest.len())
                .filter(|&k| rest.is_char_boundary(k))
                .any(|k| at(pieces, name, (i + 1, pos + k), caps, failed)),
            Some(Piece::Cap(c)) => {
                let run =
                    rest.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')).unwrap_or(rest.len());
                (1..=run).any(|k| {
                    caps.push((c.clone(), &rest[..k]));
                    if at(pieces, name, (i + 1, pos + k), caps, failed) {
                        return true;
                    }
                    caps.pop();
                    false
                })
            }
        };
        if !found {
            failed.insert((i, pos));
        }
        found
    }
    at(pieces, name, (0, 0), caps, &mut HashSet::new())
}

impl Mapping {
    /// Parses a mapping: one rule a line, `#` comments.
    /// - `SRC => DST`: the foreign layer `SRC` fills the model's layer `DST` (its parameters'
    ///   names without the last part). `{name}` captures one name part (letters, digits, `_`)
    ///   and `*` anything; `DST` may use `{name}`, `{name+1}`, `{name-1}`.
    /// - `ignore SRC`: leave the foreign layers `SRC` out (an old head).
    /// - `flatten chw|whc|hwc`: how the foreign file orders the axes it flattens.
    pub fn parse(text: &str) -> Result<Mapping, ImportError> {
        let mut m = Mapping::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            if let Some(rest) = l.strip_prefix("ignore ") {
                m.ignore.push((pattern(rest.trim(), line)?, line));
            } else if let Some(rest) = l.strip_prefix("flatten ") {
                m.flatten = Some(rest.trim().parse().map_err(|e| ImportError(format!("line {line}: {e}")))?);
            } else if let Some((src, dst)) = l.split_once("=>") {
                let src = pattern(src.trim(), line)?;
                let dst = template(dst.trim(), &src, line)?;
                m.rules.push((src, dst, line));
            } else {
                return err(format!(
                    "line {line}: `{l}` is not a rule: write `SRC => DST`, `ignore SRC` or `flatten chw|whc|hwc`"
                ));
            }
        }
        Ok(m)
    }

    fn ignored(&self, name: &str) -> bool {
        self.ignore.iter().any(|(p, _)| matches(p, name, &mut Vec::new()))
    }

    /// The model layer a rule sends `name` to, with the rule's line.
    fn target(&self, name: &str) -> Result<Option<(String, usize)>, ImportError> {
        for (src, dst, line) in &self.rules {
            let mut caps = Vec::new();
            if !matches(src, name, &mut caps) {
                continue;
            }
            let mut out = String::new();
            for piece in dst {
                match piece {
                    Out::Lit(l) => out += l,
                    Out::Cap(c, add) => {
                        let value = caps.iter().find(|(n, _)| n == c).map_or("", |p| p.1);
                        if *add == 0 {
                            out += value;
                        } else {
                            let n: i64 = value.parse().map_err(|_| {
                                ImportError(format!(
                                    "line {line}: `{{{c}}}` captured `{value}` in `{name}`, not a number"
                                ))
                            })?;
                            out += &(n + add).to_string();
                        }
                    }
                }
            }
            return Ok(Some((out, *line)));
        }
        Ok(None)
    }
}

/// A layer of the model, as the importer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Its name: its parameters' names without the last part.
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Its parameters: role, full name, shape.
    pub params: Vec<(ParamRole, String, Vec<usize>)>,
    /// Its values are written in the model file: it takes a place in the order, never values.
    pub constant: bool,
    /// For a dense layer after a flatten: the shape that was flattened (`[h, w, c]`).
    pub flattened: Option<Vec<usize>>,
    /// A batchnorm's epsilon.
    pub eps: Option<f32>,
}

/// The layers of `graph` that hold parameters, in the model file's order (shared layers once).
pub fn layers(graph: &Graph) -> Vec<Layer> {
    let mut out: Vec<Layer> = Vec::new();
    let mut seen = HashSet::new();
    let mut ids: Vec<NodeId> = graph.node_ids().collect();
    ids.sort();
    for id in ids {
        let node = graph.node(id);
        let kind = match &node.op {
            Op::Conv(_) => Kind::Conv,
            Op::Dense(_) => Kind::Dense,
            Op::BatchNorm(_) => Kind::BatchNorm,
            Op::PRelu => Kind::PRelu,
            _ => continue,
        };
        let operands = graph.operands(id);
        let mut params = Vec::new();
        let mut constant = false;
        for &p in &operands {
            if let Op::Param(po) = &graph.node(p).op {
                params.push((po.role, graph.node(p).name.clone(), graph.node(p).shape.0.clone()));
                constant |= po.init == cnnc_compiler::ir::op::Init::Constant;
            }
        }
        let Some((_, first, _)) = params.first() else { continue };
        let name = first.rsplit_once('/').map_or(first.clone(), |p| p.0.to_string());
        if !seen.insert(name.clone()) {
            continue;
        }
        let flattened = match (kind, operands.first()) {
            (Kind::Dense, Some(&x)) if matches!(graph.node(x).op, Op::Flatten) => {
                graph.operands(x).first().map(|&m| graph.node(m).shape.0.clone()).filter(|s| s.len() >= 2)
            }
            _ => None,
        };
        let eps = match &node.op {
            Op::BatchNorm(b) => Some(b.eps),
            _ => None,
        };
        out.push(Layer { name, kind, params, constant, flattened, eps });
    }
    out
}

/// Tensors by name: shape and values.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// One foreign layer that filled one of the model's.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The foreign layer's name.
    pub from: String,
    /// The model layer's name.
    pub to: String,
    /// Their kind.
    pub kind: Kind,
    /// Paired by a rule (its line) or by order.
    pub rule: Option<usize>,
    /// Paired by its name, the same on both sides.
    pub by_name: bool,
}

/// What an import produced: the model's parameters it fills, in cnnc's layout, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// Parameters by name: shape and values.
    pub tensors: Tensors,
    /// Which foreign layer filled which model layer.
    pub pairs: Vec<Pair>,
    /// Foreign layers left out by `ignore` rules.
    pub ignored: Vec<String>,
    /// Model layers that nothing filled (they start fresh).
    pub fresh: Vec<String>,
}

/// Pairs the layers of `source` with `model`'s and converts their tensors.
pub fn import(model: &[Layer], source: &Source, mapping: &Mapping) -> Result<Imported, ImportError> {
    run(model, source, mapping, true)
}

/// Pairs the layers of `source` with `model`'s and checks every pair's shapes, converting no
/// values (a file of names and shapes is enough): what [`import`] would do.
pub fn check(model: &[Layer], source: &Source, mapping: &Mapping) -> Result<Imported, ImportError> {
    run(model, source, mapping, false)
}

fn run(model: &[Layer], source: &Source, mapping: &Mapping, values: bool) -> Result<Imported, ImportError> {
    if let Some((name, why)) =
        source.unknown.iter().find(|(n, _)| !mapping.ignored(n.rsplit_once('.').map_or(n, |p| p.0)))
    {
        let module = name.rsplit_once('.').map_or(name.as_str(), |p| p.0);
        return err(format!("tensor `{name}`: {why}; leave it out with `ignore {module}` in a mapping (--map)"));
    }
    let flatten = mapping.flatten.unwrap_or(source.flatten);
    let by_name: HashMap<&str, usize> = model.iter().enumerate().map(|(i, l)| (l.name.as_str(), i)).collect();
    let mut taken = vec![false; model.len()];
    let mut pairs: Vec<(usize, usize, Option<usize>)> = Vec::new();
    let mut named: HashSet<usize> = HashSet::new();
    let mut ignored = Vec::new();
    let mut by_order: Vec<usize> = Vec::new();
    for (f, layer) in source.layers.iter().enumerate() {
        if mapping.ignored(&layer.name) {
            ignored.push(layer.name.clone());
            continue;
        }
        match mapping.target(&layer.name)? {
            Some((to, line)) => {
                let Some(&m) = by_name.get(to.as_str()) else {
                    return err(format!(
                        "the mapping's line {line} sends `{}` to `{to}`, which is no layer of this model{}",
                        layer.name,
                        suggest(model, &to)
                    ));
                };
                if taken[m] {
                    return err(format!(
                        "the mapping's line {line} fills `{to}` a second time (with `{}`)",
                        layer.name
                    ));
                }
                taken[m] = true;
                pairs.push((f, m, Some(line)));
            }
            // Then a layer of the same name and kind, in a file whose names a model repeats.
            None => match by_name.get(layer.name.as_str()) {
                Some(&m) if source.by_name && !taken[m] && model[m].kind == layer.kind => {
                    taken[m] = true;
                    named.insert(f);
                    pairs.push((f, m, None));
                }
                _ => by_order.push(f),
            },
        }
    }
    for kind in [Kind::Conv, Kind::Dense, Kind::BatchNorm, Kind::PRelu] {
        let foreign: Vec<usize> = by_order.iter().copied().filter(|&f| source.layers[f].kind == kind).collect();
        let ours: Vec<usize> = (0..model.len()).filter(|&m| !taken[m] && model[m].kind == kind).collect();
        for (f, m) in by_kind(&source.layers, model, &foreign, &ours, flatten)? {
            taken[m] = true;
            pairs.push((f, m, None));
        }
    }
    pairs.sort_by_key(|p| p.1);
    let mut tensors = BTreeMap::new();
    for &(f, m, rule) in &pairs {
        convert(&source.layers[f], &model[m], flatten, rule, values.then_some(&mut tensors))?;
    }
    let fresh = (0..model.len()).filter(|&m| !taken[m] && !model[m].constant).map(|m| model[m].name.clone()).collect();
    if pairs.iter().all(|p| model[p.1].constant) {
        return err("nothing in the file pairs with a trainable layer of this model");
    }
    let pairs = pairs
        .iter()
        .map(|&(f, m, rule)| Pair {
            from: source.layers[f].name.clone(),
            to: model[m].name.clone(),
            kind: model[m].kind,
            rule,
            by_name: named.contains(&f),
        })
        .collect();
    Ok(Imported { tensors, pairs, ignored, fresh })
}

/// Pairs the foreign layers `foreign` with the model's `ours` (one kind, each in order): in
/// order when every pair fits; else each model layer takes the next foreign layer that fits,
/// which must be the only one that does. Foreign layers left over are an error.
fn by_kind(
    layers: &[Foreign],
    model: &[Layer],
    foreign: &[usize],
    ours: &[usize],
    flatten: Flatten,
) -> Result<Vec<(usize, usize)>, ImportError> {
    let fits = |f: usize, m: usize| convert(&layers[f], &model[m], flatten, None, None).is_ok();
    let pairs: Vec<(usize, usize)> =
        if foreign.len() <= ours.len() && foreign.iter().zip(ours).all(|(&f, &m)| fits(f, m)) {
            foreign.iter().copied().zip(ours.iter().copied()).collect()
        } else {
            let mut used = vec![false; foreign.len()];
            let mut pairs = Vec::new();
            for &m in ours {
                let candidates: Vec<usize> = (0..foreign.len()).filter(|&i| !used[i] && fits(foreign[i], m)).collect();
                match candidates[..] {
                    [] => {}
                    [i] => {
                        used[i] = true;
                        pairs.push((foreign[i], m));
                    }
                    _ => {
                        let names: Vec<String> =
                            candidates.iter().map(|&i| format!("`{}`", layers[foreign[i]].name)).collect();
                        return err(format!(
                            "the {} layers do not pair in order, and `{}` fits {} alike: say which with a rule \
                         `NAME => {}` (--map)",
                            model[m].kind,
                            model[m].name,
                            names.join(" and "),
                            model[m].name
                        ));
                    }
                }
            }
            if let Some(i) = used.iter().position(|u| !u) {
                let f = &layers[foreign[i]];
                // Say why the first left-over layer fits nothing, against the model layer at its place.
                let why = ours
                    .get(i)
                    .and_then(|&m| convert(f, &model[m], flatten, None, None).err())
                    .map_or(String::new(), |e| format!(" ({e})"));
                return err(format!(
                    "nothing in the model takes the file's {} layer `{}`{why}; leave it out with `ignore {}` \
                 or map it with `{} => LAYER` (--map)",
                    f.kind, f.name, f.name, f.name
                ));
            }
            pairs
        };
    Ok(pairs)
}

fn suggest(model: &[Layer], to: &str) -> String {
    let close: Vec<&str> = model
        .iter()
        .map(|l| l.name.as_str())
        .filter(|n| {
            let stem = to.rsplit_once('/').map_or("", |p| p.0);
            !stem.is_empty() && n.starts_with(stem)
        })
        .take(4)
        .collect();
    if close.is_empty() {
        String::new()
    } else {
        format!(" (it has {})", close.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))
    }
}

/// Checks that `foreign` fits `layer` and, given `out`, converts its tensors into `layer`'s
/// parameters there.
fn convert(
    foreign: &Foreign,
    layer: &Layer,
    flatten: Flatten,
    rule: Option<usize>,
    mut out: Option<&mut Tensors>,
) -> Result<(), ImportError> {
    let how = match rule {
        Some(line) => format!("(the mapping's line {line})"),
        None => format!("(paired by order: the {} layers of both, in order)", layer.kind),
    };
    let role_of = |r: ParamRole| match r {
        ParamRole::Weight | ParamRole::Gamma | ParamRole::Slope => Role::Weight,
        ParamRole::Bias | ParamRole::Beta => Role::Bias,
        ParamRole::RunningMean => Role::Mean,
        ParamRole::RunningVar => Role::Var,
    };
    if let (Some(a), Some(b)) = (foreign.eps, layer.eps) {
        if (a - b).abs() > 1e-6 * a.abs().max(b.abs()) {
            return err(format!(
                "`{}` {how}: the file's batchnorm `{}` has epsilon {a}, the model's {b}: write `batchnorm(eps: {a})`",
                layer.name, foreign.name
            ));
        }
    }
    let wanted: HashSet<Role> = layer.params.iter().map(|p| role_of(p.0)).collect();
    if let Some((_, t)) = foreign.tensors.iter().find(|(r, _)| !wanted.contains(r)) {
        return err(format!(
            "`{}` {how}: the file's `{}` has no counterpart in `{}` (a bias where the model has none?)",
            layer.name, t.name, layer.name
        ));
    }
    for (role, name, shape) in &layer.params {
        let Some(t) = foreign.tensors.get(&role_of(*role)) else {
            if *role == ParamRole::Bias {
                // A layer with a bias filled from one without: the bias is zero.
                if let Some(out) = out.as_deref_mut().filter(|_| !layer.constant) {
                    out.insert(name.clone(), (shape.clone(), vec![0.0; shape.iter().product()]));
                }
                continue;
            }
            return err(format!("`{}` {how}: the file's `{}` has no {}", layer.name, foreign.name, role.suffix()));
        };
        let mismatch = |want: &str| {
            ImportError(format!(
                "`{}` {how}: the file's `{}` has shape {:?}, {want} for `{name}` {shape:?}",
                layer.name, t.name, t.shape
            ))
        };
        let numel = |s: &[usize]| s.iter().product::<usize>();
        // The conversion: a permutation of the foreign axes, then (dense) a reordering of rows.
        let perm: Option<Vec<usize>> = match (layer.kind, role) {
            (Kind::Conv, ParamRole::Weight) => {
                let r = t.shape.len();
                if r != shape.len() {
                    return Err(mismatch("the model needs a filter bank of the same rank"));
                }
                // [o, i, k..] → [k.., i, o]; TensorFlow's is cnnc's.
                let perm: Vec<usize> =
                    if foreign.tf_layout { (0..r).collect() } else { (2..r).chain([1, 0]).collect() };
                let converted: Vec<usize> = perm.iter().map(|&a| t.shape[a]).collect();
                if converted != *shape {
                    let layout =
                        if foreign.tf_layout { "[k.., c_in/groups, c_out]" } else { "[c_out, c_in/groups, k..]" };
                    return Err(mismatch(&format!(
                        "{layout} that is {converted:?} in cnnc's layout, not what the model needs"
                    )));
                }
                Some(perm)
            }
            (Kind::Dense, ParamRole::Weight) => {
                let [a, b] = t.shape[..] else { return Err(mismatch("a dense layer needs a matrix")) };
                let (inputs, units) = if foreign.tf_layout { (a, b) } else { (b, a) };
                if [inputs, units] != shape[..] {
                    return Err(mismatch(&format!(
                        "{} that is [{inputs}, {units}] in cnnc's layout, not what the model needs",
                        if foreign.tf_layout { "[in, out]" } else { "[out, in]" }
                    )));
                }
                Some(if foreign.tf_layout { vec![0, 1] } else { vec![1, 0] })
            }
            (Kind::PRelu, _) if numel(&t.shape) == 1 => None,
            _ => {
                if numel(&t.shape) != numel(shape) {
                    return Err(mismatch("the model needs"));
                }
                None
            }
        };
        let Some(out) = out.as_deref_mut() else { continue };
        if let Some(bad) = t.values.iter().position(|v| !v.is_finite()) {
            return err(format!("tensor `{}` holds a non-finite value ({} at element {bad})", t.name, t.values[bad]));
        }
        let mut values = match &perm {
            Some(p) => permute(&t.values, &t.shape, p),
            None if t.values.len() == 1 => vec![t.values[0]; numel(shape)],
            None => t.values.clone(),
        };
        if let (Kind::Dense, ParamRole::Weight, Some(map)) = (layer.kind, role, &layer.flattened) {
            if flatten != Flatten::Hwc {
                values = unflatten(&values, map, shape[1], flatten);
            }
        }
        if !layer.constant {
            out.insert(name.clone(), (shape.clone(), values));
        }
    }
    Ok(())
}

/// `values` of shape `shape`, axes permuted: axis `k` of the result is axis `perm[k]` of the input.
fn permute(values: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let r = shape.len();
    let mut strides = vec![1usize; r];
    for a in (0..r.saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * shape[a + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let out_strides: Vec<usize> = perm.iter().map(|&a| strides[a]).collect();
    let mut out = Vec::with_capacity(values.len());
    let mut index = vec![0usize; r];
    for _ in 0..values.len() {
        out.push(values[index.iter().zip(&out_strides).map(|(i, s)| i * s).sum::<usize>()]);
        for a in (0..r).rev() {
            index[a] += 1;
            if index[a] < out_shape[a] {
                break;
            }
            index[a] = 0;
        }
    }
    out
}

/// Reorders the rows of a dense weight `[in, units]` whose `in` axis enumerates a flattened
/// `map` (cnnc's `[s0, s1, .., c]`) in the foreign order, into cnnc's order.
fn unflatten(io: &[f32], map: &[usize], units: usize, order: Flatten) -> Vec<f32> {
    let (spatial, c) = map.split_at(map.len() - 1);
    let c = c[0];
    let mut out = vec![0.0; io.len()];
    let n = map.iter().product::<usize>();
    let mut pos = vec![0usize; spatial.len()];
    for row in 0..n {
        // cnnc's row: spatial position (in order), then channel.
        let ch = row % c;
        let mut rest = row / c;
        for a in (0..spatial.len()).rev() {
            pos[a] = rest % spatial[a];
            rest /= spatial[a];
        }
        let from = match order {
            Flatten::Chw => pos.iter().zip(spatial).fold(ch, |acc, (&p, &s)| acc * s + p),
            Flatten::Whc => pos.iter().zip(spatial).rev().fold(0, |acc, (&p, &s)| acc * s + p) * c + ch,
            Flatten::Hwc => row,
        };
        out[row * units..(row + 1) * units].copy_from_slice(&io[from * units..(from + 1) * units]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_people_number_them() {
        let mut names = vec!["features.10", "features.2", "classifier.0", "features.0", "conv4_2", "conv4_1", "conv10"];
        names.sort_by(|a, b| natural(a, b));
        assert_eq!(names, ["classifier.0", "conv4_1", "conv4_2", "conv10", "features.0", "features.2", "features.10"]);
    }

    #[test]
    fn rules_capture_name_parts_and_shift_numbers() {
        let m = Mapping::parse(
            "# torchvision\nflatten whc\nignore aux*\nlayer{s}.{b}.conv1 => stage{s}/block{b+1}/conv\nfc => head\n",
        )
        .unwrap();
        assert_eq!(m.flatten, Some(Flatten::Whc));
        assert!(m.ignored("aux1.fc"));
        assert!(!m.ignored("fc"));
        assert_eq!(m.target("layer2.0.conv1").unwrap(), Some(("stage2/block1/conv".to_string(), 4)));
        assert_eq!(m.target("layer2.0.conv2").unwrap(), None);
        assert_eq!(m.target("fc").unwrap(), Some(("head".to_string(), 5)));
        let e = Mapping::parse("a -> b").unwrap_err();
        assert!(e.0.contains("line 1") && e.0.contains("not a rule"), "{e}");
        let e = Mapping::parse("a{i} => b{j}").unwrap_err();
        assert!(e.0.contains("`{j}` is not captured"), "{e}");
        let e = Mapping::parse("x{i} => y{i+1}").unwrap().target("xa").unwrap_err();
        assert!(e.0.contains("not a number"), "{e}");
    }

    #[test]
    fn patterns_match_in_polynomial_time() {
        // Twelve stars against 1,000 characters that almost match: exponential without the
        // memory of failed states.
        let m = Mapping::parse(&format!("ignore {}b", "*a".repeat(12))).unwrap();
        assert!(!m.ignored(&"a".repeat(1000)));
        assert!(m.ignored(&format!("{}b", "a".repeat(1000))));
    }

    #[test]
    fn permutes_axes() {
        // [2, 3] transposed
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(permute(&v, &[2, 3], &[1, 0]), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn flatten_orders_map_rows_to_the_same_feature() {
        // A [2, 3, 2] map ([h, w, c]) flattened three ways; one unit whose weight is the index
        // of the feature in the foreign order: after unflattening, cnnc's row r must hold the
        // foreign index of the feature at cnnc's position r.
        let (h, w, c) = (2usize, 3usize, 2usize);
        for order in [Flatten::Chw, Flatten::Whc, Flatten::Hwc] {
            let foreign_index = |y: usize, x: usize, k: usize| match order {
                Flatten::Chw => (k * h + y) * w + x,
                Flatten::Whc => (x * h + y) * c + k,
                Flatten::Hwc => (y * w + x) * c + k,
            };
            let io: Vec<f32> = (0..h * w * c).map(|i| i as f32).collect();
            let out = unflatten(&io, &[h, w, c], 1, order);
            for y in 0..h {
                for x in 0..w {
                    for k in 0..c {
                        assert_eq!(out[(y * w + x) * c + k], foreign_index(y, x, k) as f32, "{order:?}");
                    }
                }
            }
        }
    }
}
