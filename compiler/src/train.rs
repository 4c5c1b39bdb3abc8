//! Checking a `train` section: known settings, each given once; data sources, losses,
//! optimizers, schedules and augmentations with their arguments; losses applied to model
//! outputs whose shapes fit them. The result is a [`TrainSpec`] the runtime executes.

use crate::elaborate::ModelInfo;
use crate::error::{similar, Problem, ResolveError, ShapeError, TrainError};
use crate::shape::Shape;
use crate::source::{FileId, Loc};
use cnnc_grammar::ast::{self, BinOp, ExprKind};
use std::collections::BTreeMap;

/// Every setting of a `train` section.
pub const SETTINGS: &[&str] = &[
    "data",
    "loss",
    "optimizer",
    "schedule",
    "batch",
    "epochs",
    "seed",
    "augment",
    "preprocess",
    "cache",
    "workers",
    "steps",
    "every",
    "unseen",
    "views",
    "inputs",
];

/// The losses of style transfer, which optimizes the input image rather than the weights.
pub const IMAGE_LOSSES: &[&str] = &["content", "style", "total_variation"];

/// A checked argument value.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// An integer.
    Int(i64),
    /// A number.
    Num(f64),
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// A name: a model output, `label`, an anchors declaration, a choice.
    Name(String),
    /// A list of numbers.
    List(Vec<f64>),
}

/// A call in a train section, its arguments checked and named.
#[derive(Clone, Debug, PartialEq)]
pub struct FnCall {
    /// Which function.
    pub name: String,
    /// Arguments by parameter name, defaults filled in.
    pub args: BTreeMap<String, Arg>,
    /// Where it is written.
    pub loc: Loc,
}

impl FnCall {
    /// A number argument (integers included), or `default`.
    pub fn num(&self, name: &str, default: f64) -> f64 {
        match self.args.get(name) {
            Some(Arg::Num(v)) => *v,
            Some(Arg::Int(v)) => *v as f64,
            _ => default,
        }
    }

    /// A string argument.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.args.get(name) {
            Some(Arg::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The first of the arguments `keys` that names something (a model output): a loss's
    /// `logits`, `output`, `embedding` or `anchor`.
    pub fn name_arg(&self, keys: &[&str]) -> Option<String> {
        keys.iter().find_map(|k| match self.args.get(*k) {
            Some(Arg::Name(n)) => Some(n.clone()),
            _ => None,
        })
    }

    /// A list-of-numbers argument (a single number counts as a list of one); empty if absent.
    pub fn numbers(&self, name: &str) -> Vec<f64> {
        match self.args.get(name) {
            Some(Arg::List(v)) => v.clone(),
            Some(Arg::Num(v)) => vec![*v],
            Some(Arg::Int(v)) => vec![*v as f64],
            _ => Vec::new(),
        }
    }

    /// For a data source, the shape of one example when the call alone says it (`mnist` with
    /// its padding, `csv` with its `shape`); files decide for the others.
    pub fn example_shape(&self) -> Option<Shape> {
        match self.name.as_str() {
            "mnist" => {
                let side = 28 + 2 * self.num("pad", 0.0) as usize;
                Some(Shape(vec![side, side, 1]))
            }
            "csv" => self.args.get("shape").map(|_| Shape(self.numbers("shape").iter().map(|&d| d as usize).collect())),
            _ => None,
        }
    }
}

/// The example shape after one preprocessing step, or why it cannot apply to `shape`. With
/// `known` false, the data's shape is not known before the run (image folders, IDX files): the
/// channel count is then not held against the step.
fn preprocess_step(step: &FnCall, shape: &Shape, known: bool) -> Result<Shape, String> {
    for (name, value) in &step.args {
        let bad = match value {
            Arg::Num(v) => !v.is_finite(),
            Arg::List(v) => v.iter().any(|x| !x.is_finite()),
            Arg::Int(v) => *v <= 0 || *v > 16384,
            _ => false,
        };
        if bad {
            return Err(format!("`{name}` must be a finite number (sizes 1 to 16384)"));
        }
    }
    if shape.rank() != 3 {
        return Err(format!("it reads images [n_H, n_W, n_C], and the examples have shape {shape}"));
    }
    let (h, w, c) = (shape.0[0], shape.0[1], shape.0[2]);
    let colour = |to: usize| {
        if known && c != 1 && c != 3 {
            Err(format!("it converts grey or RGB images, and the examples have {c} channels ({shape})"))
        } else {
            Ok(Shape(vec![h, w, to]))
        }
    };
    match step.name.as_str() {
        "resize" => Ok(Shape(vec![step.num("height", 1.0) as usize, step.num("width", 1.0) as usize, c])),
        "rgb" | "bgr" => colour(3),
        "grey" => colour(1),
        "normalize" => {
            let (mean, std) = (step.numbers("mean"), step.numbers("std"));
            if let Some(bad) = std.iter().find(|&&s| s <= 0.0) {
                return Err(format!("a standard deviation must be positive, not {bad}"));
            }
            for (name, list) in [("mean", &mean), ("std", &std)] {
                if list.len() != 1 && list.len() != c {
                    return Err(format!("`{name}` has {} values: give one, or one per channel ({c})", list.len()));
                }
            }
            Ok(shape.clone())
        }
        _ => Ok(shape.clone()),
    }
}

/// One weighted loss term.
#[derive(Clone, Debug, PartialEq)]
pub struct LossTerm {
    /// Its weight in the total.
    pub weight: f64,
    /// The loss function.
    pub call: FnCall,
}

/// A checked `train` section.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSpec {
    /// The model trained.
    pub model: String,
    /// The data source.
    pub data: Option<FnCall>,
    /// The total loss: a weighted sum.
    pub loss: Vec<LossTerm>,
    /// The optimizer.
    pub optimizer: Option<FnCall>,
    /// The learning-rate schedule.
    pub schedule: Option<FnCall>,
    /// Examples per step.
    pub batch: usize,
    /// Passes over the training data.
    pub epochs: usize,
    /// Seed for initialization, shuffling, dropout and augmentation.
    pub seed: u64,
    /// Loader threads.
    pub workers: usize,
    /// Augmentation steps in order.
    pub augment: Vec<FnCall>,
    /// Preprocessing steps in order: resizing and colour conversion as examples are read, then
    /// scaling and normalization (after augmentation), in training, evaluation and prediction.
    pub preprocess: Vec<FnCall>,
    /// Compute the frozen body's activations once and train the head alone on them
    /// ([`crate::frozen`]).
    pub cache: bool,
    /// Optimizer steps over the image (style transfer).
    pub steps: usize,
    /// Save the image every this many steps (style transfer; 0: only at the end).
    pub every: usize,
    /// The last this many classes are identities never seen in training: the test split is all
    /// of their examples, the training split all the others' (metric learning; 0: none).
    pub unseen: usize,
    /// Views of each test example that verification and one-shot identification embed: its
    /// centre view and `views − 1` augmented ones (positives for identities of one image).
    pub views: usize,
    /// What each input of a model with several receives (`inputs pairs(..)` or
    /// `inputs triplets(..)`); `None` for a model of one input.
    pub inputs: Option<Feed>,
    /// Where the section is.
    pub loc: Loc,
}

/// How the examples of a model with several inputs are made from the data: tuples of examples
/// chosen by identity (the data's labels), one example an input.
#[derive(Clone, Debug, PartialEq)]
pub struct Feed {
    /// Pairs or triplets.
    pub kind: FeedKind,
    /// The model inputs in the order the tuple fills them.
    pub inputs: Vec<String>,
    /// Where the setting is.
    pub loc: Loc,
}

/// The tuples a [`Feed`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedKind {
    /// `pairs(a, b)`: each training example with, half the time, another of its identity (target
    /// 1), else one of another identity (target 0).
    Pairs,
    /// `triplets(anchor, positive, negative)`: each training example with another of its
    /// identity and one of another identity; the target is the anchor's identity.
    Triplets,
}

impl FeedKind {
    /// Examples a tuple.
    pub fn arity(self) -> usize {
        match self {
            FeedKind::Pairs => 2,
            FeedKind::Triplets => 3,
        }
    }

    /// Its name in a train section.
    pub fn name(self) -> &'static str {
        match self {
            FeedKind::Pairs => "pairs",
            FeedKind::Triplets => "triplets",
        }
    }
}

/// An optimizer, typed: read once from a checked train section.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerSpec {
    /// Stochastic gradient descent, with (Nesterov) momentum when `momentum > 0`.
    Sgd { lr: f32, momentum: f32, nesterov: bool, weight_decay: f32 },
    /// Adam (Kingma and Ba, 2015).
    Adam { lr: f32, beta1: f32, beta2: f32, eps: f32, weight_decay: f32 },
}

impl OptimizerSpec {
    /// The base learning rate.
    pub fn lr(&self) -> f32 {
        match *self {
            OptimizerSpec::Sgd { lr, .. } | OptimizerSpec::Adam { lr, .. } => lr,
        }
    }
}

/// A learning-rate schedule, typed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScheduleSpec {
    /// The base rate throughout.
    Constant,
    /// Multiplied by `gamma` every `every` epochs.
    Step { every: usize, gamma: f32 },
    /// Half a cosine from the base rate down to `min_lr` over all steps.
    Cosine { min_lr: f32 },
}

impl TrainSpec {
    /// The optimizer (SGD with a rate of 0.01 when the section names none).
    pub fn optimizer_spec(&self) -> OptimizerSpec {
        let num = |c: &FnCall, name: &str, default: f64| c.num(name, default) as f32;
        match &self.optimizer {
            Some(c) if c.name == "adam" => OptimizerSpec::Adam {
                lr: num(c, "lr", 0.001),
                beta1: num(c, "beta1", 0.9),
                beta2: num(c, "beta2", 0.999),
                eps: num(c, "eps", 1e-8),
                weight_decay: num(c, "weight_decay", 0.0),
            },
            Some(c) => OptimizerSpec::Sgd {
                lr: num(c, "lr", 0.01),
                momentum: num(c, "momentum", 0.0),
                nesterov: matches!(c.args.get("nesterov"), Some(Arg::Bool(true))),
                weight_decay: num(c, "weight_decay", 0.0),
            },
            None => OptimizerSpec::Sgd { lr: 0.01, momentum: 0.0, nesterov: false, weight_decay: 0.0 },
        }
    }

    /// The learning-rate schedule.
    pub fn schedule_spec(&self) -> ScheduleSpec {
        match &self.schedule {
            Some(c) if c.name == "step" => {
                ScheduleSpec::Step { every: c.num("every", 1.0).max(1.0) as usize, gamma: c.num("gamma", 0.1) as f32 }
            }
            Some(c) if c.name == "cosine" => ScheduleSpec::Cosine { min_lr: c.num("min_lr", 0.0) as f32 },
            _ => ScheduleSpec::Constant,
        }
    }
}

/// What a parameter accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Str,
    Int,
    Num,
    Bool,
    /// A model output.
    Output,
    /// The data's targets: `label`.
    Label,
    /// An `anchors` declaration of the model.
    Anchors,
    /// A list of numbers.
    Numbers,
}

struct FnSpec {
    name: &'static str,
    params: &'static [(&'static str, Kind, Option<Dflt>)],
}

#[derive(Clone, Copy)]
enum Dflt {
    Int(i64),
    Num(f64),
    Bool(bool),
    Required,
}

use Dflt::Required as R;
use Kind::*;

const DATA: &[FnSpec] = &[
    FnSpec {
        name: "mnist",
        params: &[("dir", Str, Some(R)), ("pad", Int, Some(Dflt::Int(0))), ("limit", Int, Some(Dflt::Int(0)))],
    },
    FnSpec {
        name: "idx",
        params: &[
            ("images", Str, Some(R)),
            ("labels", Str, Some(R)),
            ("test_images", Str, None),
            ("test_labels", Str, None),
            ("split", Num, Some(Dflt::Num(0.2))),
        ],
    },
    FnSpec {
        name: "csv",
        params: &[
            ("path", Str, Some(R)),
            ("shape", Numbers, Some(R)),
            ("scale", Num, Some(Dflt::Num(1.0))),
            ("split", Num, Some(Dflt::Num(0.2))),
        ],
    },
    FnSpec { name: "images", params: &[("dir", Str, Some(R)), ("split", Num, Some(Dflt::Num(0.2)))] },
    FnSpec {
        name: "detection",
        params: &[("dir", Str, Some(R)), ("test", Str, None), ("split", Num, Some(Dflt::Num(0.2)))],
    },
    FnSpec {
        name: "landmarks",
        params: &[("csv", Str, Some(R)), ("test", Str, None), ("split", Num, Some(Dflt::Num(0.2)))],
    },
    FnSpec {
        name: "style_transfer",
        params: &[("content", Str, Some(R)), ("style", Str, Some(R)), ("noise", Num, Some(Dflt::Num(0.0)))],
    },
];

const LOSSES: &[FnSpec] = &[
    FnSpec { name: "softmax_cross_entropy", params: &[("logits", Output, Some(R)), ("target", Label, Some(R))] },
    FnSpec { name: "sigmoid_cross_entropy", params: &[("logits", Output, Some(R)), ("target", Label, Some(R))] },
    FnSpec { name: "l2", params: &[("output", Output, Some(R)), ("target", Label, Some(R))] },
    FnSpec {
        name: "triplet",
        params: &[
            ("anchor", Output, Some(R)),
            ("positive", Output, Some(R)),
            ("negative", Output, Some(R)),
            ("margin", Num, Some(Dflt::Num(0.2))),
        ],
    },
    FnSpec {
        name: "triplet_mining",
        params: &[
            ("embedding", Output, Some(R)),
            ("target", Label, Some(R)),
            ("margin", Num, Some(Dflt::Num(0.2))),
            ("mining", Str, None),
            ("per_identity", Int, Some(Dflt::Int(4))),
        ],
    },
    FnSpec {
        name: "yolo",
        params: &[
            ("output", Output, Some(R)),
            ("target", Label, Some(R)),
            ("anchors", Anchors, Some(R)),
            ("classes", Int, Some(R)),
            ("coord", Num, Some(Dflt::Num(5.0))),
            ("noobj", Num, Some(Dflt::Num(0.5))),
        ],
    },
    FnSpec {
        name: "localization",
        params: &[
            ("output", Output, Some(R)),
            ("target", Label, Some(R)),
            ("classes", Int, Some(R)),
            ("coord", Num, Some(Dflt::Num(1.0))),
            ("noobj", Num, Some(Dflt::Num(1.0))),
        ],
    },
    FnSpec { name: "content", params: &[("output", Output, Some(R))] },
    FnSpec { name: "style", params: &[("output", Output, Some(R))] },
    FnSpec { name: "total_variation", params: &[] },
];

const PREPROCESS: &[FnSpec] = &[
    FnSpec { name: "resize", params: &[("height", Int, Some(R)), ("width", Int, Some(R))] },
    FnSpec { name: "rgb", params: &[] },
    FnSpec { name: "bgr", params: &[] },
    FnSpec { name: "grey", params: &[] },
    FnSpec { name: "scale", params: &[("factor", Num, Some(R)), ("offset", Num, Some(Dflt::Num(0.0)))] },
    FnSpec { name: "normalize", params: &[("mean", Numbers, Some(R)), ("std", Numbers, Some(R))] },
];

const OPTIMIZERS: &[FnSpec] = &[
    FnSpec {
        name: "sgd",
        params: &[
            ("lr", Num, Some(R)),
            ("momentum", Num, Some(Dflt::Num(0.0))),
            ("nesterov", Bool, Some(Dflt::Bool(false))),
            ("weight_decay", Num, Some(Dflt::Num(0.0))),
        ],
    },
    FnSpec {
        name: "adam",
        params: &[
            ("lr", Num, Some(Dflt::Num(0.001))),
            ("beta1", Num, Some(Dflt::Num(0.9))),
            ("beta2", Num, Some(Dflt::Num(0.999))),
            ("eps", Num, Some(Dflt::Num(1e-8))),
            ("weight_decay", Num, Some(Dflt::Num(0.0))),
        ],
    },
    FnSpec { name: "lbfgs", params: &[("lr", Num, Some(Dflt::Num(1.0))), ("history", Int, Some(Dflt::Int(10)))] },
];

const SCHEDULES: &[FnSpec] = &[
    FnSpec { name: "constant", params: &[] },
    FnSpec { name: "step", params: &[("every", Int, Some(R)), ("gamma", Num, Some(Dflt::Num(0.1)))] },
    FnSpec { name: "cosine", params: &[("min_lr", Num, Some(Dflt::Num(0.0)))] },
];

const AUGMENTS: &[FnSpec] = &[
    FnSpec { name: "mirror", params: &[("p", Num, Some(Dflt::Num(0.5)))] },
    FnSpec { name: "flip_vertical", params: &[("p", Num, Some(Dflt::Num(0.5)))] },
    FnSpec {
        name: "random_crop",
        params: &[("size", Int, Some(R)), ("pad", Int, Some(Dflt::Int(0))), ("p", Num, Some(Dflt::Num(1.0)))],
    },
    FnSpec {
        name: "random_resized_crop",
        params: &[("size", Int, Some(R)), ("scale", Numbers, None), ("p", Num, Some(Dflt::Num(1.0)))],
    },
    FnSpec { name: "rotate", params: &[("degrees", Num, Some(R)), ("p", Num, Some(Dflt::Num(1.0)))] },
    FnSpec { name: "shear", params: &[("degrees", Num, Some(R)), ("p", Num, Some(Dflt::Num(1.0)))] },
    FnSpec {
        name: "warp",
        params: &[("alpha", Num, Some(R)), ("sigma", Num, Some(R)), ("p", Num, Some(Dflt::Num(1.0)))],
    },
    FnSpec { name: "color_shift", params: &[("max", Num, Some(R)), ("p", Num, Some(Dflt::Num(1.0)))] },
    FnSpec { name: "pca_color", params: &[("std", Num, Some(Dflt::Num(0.1))), ("p", Num, Some(Dflt::Num(1.0)))] },
    FnSpec { name: "brightness", params: &[("max", Num, Some(R)), ("p", Num, Some(Dflt::Num(1.0)))] },
    FnSpec { name: "contrast", params: &[("max", Num, Some(R)), ("p", Num, Some(Dflt::Num(1.0)))] },
    FnSpec { name: "normalize", params: &[("mean", Numbers, Some(R)), ("std", Numbers, Some(R))] },
];

/// Checks every `train` section of the entry file against the elaborated models.
pub fn check(file: FileId, ast: &ast::File, models: &[ModelInfo], problems: &mut Vec<Problem>) -> Vec<TrainSpec> {
    let mut specs = Vec::new();
    for item in &ast.items {
        let ast::Item::Train(t) = item else { continue };
        let loc = |span| Loc { file, span };
        let Some(model) = models.iter().find(|m| m.name == t.model.name) else {
            let candidates = similar(&t.model.name, models.iter().map(|m| m.name.as_str()));
            problems.push(
                ResolveError::UnknownModel { loc: loc(t.model.span), name: t.model.name.clone(), candidates }.into(),
            );
            continue;
        };
        let mut c = Checker { file, model, problems, boxes: false, points: false };
        specs.push(c.section(t));
    }
    specs
}

struct Checker<'a> {
    file: FileId,
    model: &'a ModelInfo,
    problems: &'a mut Vec<Problem>,
    /// Whether the section's data gives boxes (`detection`) or points (`landmarks`).
    boxes: bool,
    points: bool,
}

impl Checker<'_> {
    fn loc(&self, span: ast::Span) -> Loc {
        Loc { file: self.file, span }
    }

    fn section(&mut self, t: &ast::Train) -> TrainSpec {
        let mut spec = TrainSpec {
            model: t.model.name.clone(),
            data: None,
            loss: Vec::new(),
            optimizer: None,
            schedule: None,
            batch: 32,
            epochs: 1,
            seed: 0,
            workers: 2,
            augment: Vec::new(),
            preprocess: Vec::new(),
            cache: false,
            steps: 200,
            every: 0,
            unseen: 0,
            views: 1,
            inputs: None,
            loc: self.loc(t.span),
        };
        let mut seen: BTreeMap<String, Loc> = BTreeMap::new();
        let mut cache_at = None;
        for setting in &t.settings {
            let (key, key_loc) = match setting {
                ast::Setting::Augment { span, .. } => ("augment".to_string(), self.loc(*span)),
                ast::Setting::Preprocess { span, .. } => ("preprocess".to_string(), self.loc(*span)),
                ast::Setting::Value { key, .. } => (key.name.clone(), self.loc(key.span)),
            };
            if let Some(first) = seen.get(&key) {
                self.problems.push(TrainError::DuplicateSetting { loc: key_loc, first: *first, name: key }.into());
                continue;
            }
            seen.insert(key.clone(), key_loc);
            match setting {
                ast::Setting::Augment { steps, .. } => {
                    spec.augment = steps.iter().filter_map(|s| self.call(s, AUGMENTS, "augmentation")).collect();
                }
                ast::Setting::Preprocess { steps, .. } => {
                    spec.preprocess =
                        steps.iter().filter_map(|s| self.call(s, PREPROCESS, "preprocessing step")).collect();
                }
                ast::Setting::Value { key, value, .. } => match key.name.as_str() {
                    "data" => spec.data = self.single(value, DATA, "data source"),
                    "optimizer" => spec.optimizer = self.single(value, OPTIMIZERS, "optimizer"),
                    "schedule" => spec.schedule = self.single(value, SCHEDULES, "schedule"),
                    "loss" => spec.loss = self.loss(value),
                    "batch" => spec.batch = self.positive(value, "a batch size").unwrap_or(spec.batch),
                    "epochs" => spec.epochs = self.positive(value, "an epoch count").unwrap_or(spec.epochs),
                    "workers" => spec.workers = self.positive(value, "a worker count").unwrap_or(spec.workers),
                    "steps" => spec.steps = self.positive(value, "a step count").unwrap_or(spec.steps),
                    "every" => spec.every = self.positive(value, "a step count").unwrap_or(spec.every),
                    "inputs" => spec.inputs = self.feed(value),
                    "unseen" => spec.unseen = self.positive(value, "a number of classes").unwrap_or(spec.unseen),
                    "views" => match value.kind {
                        // Each view is embedded and compared with every other: a few are enough.
                        ExprKind::Int(v) if (1..=1000).contains(&v) => spec.views = v as usize,
                        _ => self.bad(value, "a number of views", "an integer from 1 to 1000"),
                    },
                    "cache" => match value.kind {
                        ExprKind::Bool(b) => {
                            spec.cache = b;
                            if b {
                                cache_at = Some(self.loc(value.span));
                            }
                        }
                        _ => self.bad(value, "`cache`", "true or false"),
                    },
                    "seed" => match value.kind {
                        ExprKind::Int(v) if v >= 0 => spec.seed = v as u64,
                        _ => self.bad(value, "a seed", "a non-negative integer"),
                    },
                    other => {
                        let candidates = similar(other, SETTINGS.iter().copied());
                        self.problems.push(
                            TrainError::UnknownSetting { loc: key_loc, name: other.to_string(), candidates }.into(),
                        );
                    }
                },
            }
        }
        let section = self.loc(t.model.span);
        for (name, example) in [
            ("data", "data mnist(\"data/mnist\")"),
            ("loss", "loss softmax_cross_entropy(logits, label)"),
            ("optimizer", "optimizer sgd(lr: 0.01)"),
        ] {
            if !seen.contains_key(name) {
                self.problems.push(TrainError::MissingSetting { loc: section, name, example }.into());
            }
        }
        if let Some(data) = &spec.data {
            self.boxes = data.name == "detection";
            self.points = data.name == "landmarks";
            self.check_data(data, &spec.preprocess, &spec.augment);
        }
        self.check_targets(&spec.loss, spec.data.as_ref(), spec.inputs.as_ref().map(|f| f.kind));
        self.check_identities(&spec);
        self.check_image_optimization(&spec, &seen);
        if spec.inputs.is_some() || !seen.contains_key("inputs") {
            // (An `inputs` setting that did not read has said why.)
            self.check_inputs(&spec, section);
        }
        if let Some(loc) = cache_at {
            let problem = if spec.augment.is_empty() {
                crate::frozen::split(&self.model.graph).err()
            } else {
                Some("augmentation changes the examples every epoch, so the body's activations do too".to_string())
            };
            if let Some(problem) = problem {
                self.problems.push(TrainError::Cache { loc, problem }.into());
            }
        }
        spec
    }

    /// `inputs pairs(a, b)` or `inputs triplets(anchor, positive, negative)`: distinct inputs of
    /// the model, each named once.
    fn feed(&mut self, e: &ast::Expr) -> Option<Feed> {
        let expected = "`pairs(a, b)` or `triplets(anchor, positive, negative)`, naming the model's inputs";
        let ExprKind::Call(c) = &e.kind else {
            self.bad(e, "`inputs`", expected);
            return None;
        };
        let kind = match c.callee.name.as_str() {
            "pairs" => FeedKind::Pairs,
            "triplets" => FeedKind::Triplets,
            _ => {
                self.bad(e, "`inputs`", expected);
                return None;
            }
        };
        let model_inputs = self.input_names();
        let mut names = Vec::new();
        for a in &c.args {
            let ExprKind::Name(n) = &a.value.kind else {
                self.bad(&a.value, "an input", "the name of a model input");
                return None;
            };
            if a.name.is_some() {
                self.bad(&a.value, "an input", "an input's name, without `name:`");
                return None;
            }
            if !model_inputs.contains(&n.name) {
                let candidates = similar(&n.name, model_inputs.iter().map(String::as_str));
                self.problems
                    .push(ResolveError::UnknownName { loc: self.loc(n.span), name: n.name.clone(), candidates }.into());
                return None;
            }
            if names.contains(&n.name) {
                self.inputs_problem(self.loc(n.span), format!("`{}` is named twice", n.name));
                return None;
            }
            names.push(n.name.clone());
        }
        if names.len() != kind.arity() {
            let problem = format!(
                "`{}` fills {} inputs, and {} {} named",
                kind.name(),
                kind.arity(),
                names.len(),
                if names.len() == 1 { "is" } else { "are" }
            );
            self.inputs_problem(self.loc(e.span), problem);
            return None;
        }
        Some(Feed { kind, inputs: names, loc: self.loc(e.span) })
    }

    /// The names of the model's inputs, in order.
    fn input_names(&self) -> Vec<String> {
        self.model.graph.inputs().iter().map(|&i| self.model.graph.node(i).name.clone()).collect()
    }

    fn inputs_problem(&mut self, loc: Loc, problem: String) {
        self.problems.push(TrainError::Inputs { loc, problem }.into());
    }

    /// A model of several inputs says what each receives, and the tuples fit it: every input
    /// named, of one shape, with data of identities and losses that read such tuples.
    fn check_inputs(&mut self, spec: &TrainSpec, section: Loc) {
        let names = self.input_names();
        let style = spec.data.as_ref().is_some_and(|d| d.name == "style_transfer");
        let Some(feed) = &spec.inputs else {
            if names.len() > 1 && !style {
                let list = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
                let problem = match names.len() {
                    2 => format!(
                        "`{}` has 2 inputs ({list}): say what each receives, as `inputs pairs({})` (two examples of \
                         the same identity or not, the target 1 or 0)",
                        self.model.name,
                        names.join(", ")
                    ),
                    3 => format!(
                        "`{}` has 3 inputs ({list}): say what each receives, as `inputs triplets({})` (an anchor, \
                         another example of its identity, one of another identity)",
                        self.model.name,
                        names.join(", ")
                    ),
                    n => format!(
                        "`{}` has {n} inputs ({list}), and `cnnc run` trains models of one input, of pairs (2) or of \
                         triplets (3)",
                        self.model.name
                    ),
                };
                self.inputs_problem(section, problem);
            }
            if let Some(term) = spec.loss.iter().find(|t| t.call.name == "triplet") {
                self.inputs_problem(
                    term.call.loc,
                    "`triplet(anchor, positive, negative)` compares the embeddings of three inputs: give the model \
                     three inputs and say what they receive with `inputs triplets(anchor, positive, negative)`, or \
                     mine triplets in the batch of a one-input model with `triplet_mining(embedding, label)`"
                        .into(),
                );
            }
            return;
        };
        if names.len() != feed.inputs.len() {
            let problem = format!(
                "`{}` has {} input{}, and `{}` fills {}",
                self.model.name,
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                feed.kind.name(),
                feed.inputs.len()
            );
            self.inputs_problem(feed.loc, problem);
            return;
        }
        let shape_of = |name: &str| {
            let g = &self.model.graph;
            g.inputs().iter().find(|&&i| g.node(i).name == name).map(|&i| g.node(i).shape.clone())
        };
        let first = shape_of(&feed.inputs[0]);
        if let Some(other) = feed.inputs.iter().find(|n| shape_of(n) != first) {
            let problem = format!(
                "the inputs receive examples of one data set, so they need one shape: `{}` is {} and `{other}` is {}",
                feed.inputs[0],
                first.map_or("?".into(), |s| s.to_string()),
                shape_of(other).map_or("?".into(), |s| s.to_string())
            );
            self.inputs_problem(feed.loc, problem);
            return;
        }
        if let Some(data) = spec.data.as_ref().filter(|d| matches!(d.name.as_str(), "detection" | "landmarks")) {
            let problem = format!(
                "pairs and triplets are chosen by identity (a class label per example), and `{}` data gives {}",
                data.name,
                if data.name == "detection" { "boxes" } else { "points" }
            );
            self.inputs_problem(feed.loc, problem);
        }
        if spec.cache {
            self.inputs_problem(
                feed.loc,
                "`cache true` caches one input's activations; train pairs and triplets without it".into(),
            );
        }
        for term in &spec.loss {
            let problem = match (term.call.name.as_str(), feed.kind) {
                ("triplet_mining", _) => Some(
                    "`triplet_mining` mines the triplets among a batch of single examples: give its model one input, \
                     or use `triplet(anchor, positive, negative)` with these inputs"
                        .to_string(),
                ),
                ("triplet", FeedKind::Pairs) => Some(
                    "`triplet` reads three embeddings, and `pairs` fills two inputs: use `inputs triplets(..)`"
                        .to_string(),
                ),
                ("triplet", FeedKind::Triplets) => self.triplet_sources(&term.call, &feed.inputs),
                (name, FeedKind::Pairs) => self.same_or_not(&term.call, name),
                _ => None,
            };
            if let Some(problem) = problem {
                self.inputs_problem(term.call.loc, problem);
            }
        }
    }

    /// A loss of a model of pairs reads its target, 1 or 0 (same or different), against a
    /// same-or-not score: one value (`sigmoid_cross_entropy`, `l2`) or two classes
    /// (`softmax_cross_entropy`, class 1 for the same).
    fn same_or_not(&self, call: &FnCall, name: &str) -> Option<String> {
        let want = match name {
            "sigmoid_cross_entropy" | "l2" => 1,
            "softmax_cross_entropy" => 2,
            _ => return None,
        };
        let output = call.name_arg(&["logits", "output"])?;
        let (shape, _) = self.output_shape(&output)?;
        (shape.elements() != Some(want)).then(|| {
            format!(
                "a pair's target is 1 or 0 (same or different), so `{name}` reads a same-or-not score of {want} value{}, \
                 and `{output}` has shape {shape}",
                if want == 1 { "" } else { "s (different, same)" }
            )
        })
    }

    /// `triplet(a, p, n)` with `inputs triplets(anchor, positive, negative)`: `a` must be
    /// computed from `anchor` alone, `p` from `positive`, `n` from `negative`.
    fn triplet_sources(&self, call: &FnCall, inputs: &[String]) -> Option<String> {
        let g = &self.model.graph;
        for (param, input) in ["anchor", "positive", "negative"].iter().zip(inputs) {
            let Some(Arg::Name(output)) = call.args.get(*param) else { continue };
            let Some(&(_, id)) = g.outputs().iter().find(|(n, _)| n == output) else { continue };
            let mut reads: Vec<String> = g.inputs_read(id).iter().map(|&i| g.node(i).name.clone()).collect();
            reads.sort();
            if reads != [input.clone()] {
                let from = if reads.is_empty() {
                    "no input".to_string()
                } else {
                    reads.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(" and ")
                };
                return Some(format!(
                    "its {param} `{output}` must be computed from the input `{input}` alone, and it reads {from}"
                ));
            }
        }
        None
    }

    /// Triplet mining's batches are `identities × per_identity` examples: `per_identity` must be
    /// at least 2 and divide the batch into at least two identities.
    fn check_identities(&mut self, spec: &TrainSpec) {
        for term in spec.loss.iter().filter(|t| t.call.name == "triplet_mining") {
            let per = term.call.num("per_identity", 4.0);
            let batch = spec.batch;
            if per < 2.0 || !batch.is_multiple_of(per as usize) || batch / (per as usize) < 2 {
                let problem = format!(
                    "batches are built of identities × `per_identity` examples: `per_identity` ({per}) must be at \
                     least 2 and divide the batch ({batch}) into at least two identities"
                );
                let inputs = Vec::new();
                self.problems.push(
                    ShapeError::Loss { loc: term.call.loc, loss: term.call.name.clone(), problem, inputs }.into(),
                );
            }
        }
    }

    /// Style transfer optimizes the input image: its losses (`content`, `style`,
    /// `total_variation`) and its data (`style_transfer`) go together and with nothing else,
    /// L-BFGS and `steps`/`every` belong to it alone, and the input must be an image.
    fn check_image_optimization(&mut self, spec: &TrainSpec, seen: &BTreeMap<String, Loc>) {
        let image_data = spec.data.as_ref().filter(|d| d.name == "style_transfer");
        let (image_terms, other_terms): (Vec<&LossTerm>, Vec<&LossTerm>) =
            spec.loss.iter().partition(|t| IMAGE_LOSSES.contains(&t.call.name.as_str()));
        let mut refuse = |loc: Loc, problem: String| {
            self.problems.push(TrainError::StyleTransfer { loc, problem }.into());
        };
        let Some(data) = image_data else {
            if let Some(term) = image_terms.first() {
                refuse(
                    term.call.loc,
                    format!(
                        "`{}` compares the generated image's features with a content or style image's: give them \
                         with `data style_transfer(content: \"photo.png\", style: \"painting.jpg\")`",
                        term.call.name
                    ),
                );
            }
            if let Some(o) = spec.optimizer.as_ref().filter(|o| o.name == "lbfgs") {
                refuse(
                    o.loc,
                    "L-BFGS needs the whole objective at every step, which mini-batches do not give: use it to \
                     optimize an image (`data style_transfer(...)`), and sgd or adam to train weights"
                        .into(),
                );
            }
            for key in ["steps", "every"] {
                if let Some(&loc) = seen.get(key) {
                    refuse(
                        loc,
                        format!("`{key}` counts the optimizer's steps over an image; training counts `epochs`"),
                    );
                }
            }
            return;
        };
        if let Some(term) = other_terms.first() {
            refuse(
                term.call.loc,
                format!(
                    "`{}` reads labels of training data, and style transfer has none: its losses are content, style \
                     and total_variation",
                    term.call.name
                ),
            );
        }
        if !image_terms.iter().any(|t| t.call.name != "total_variation") {
            refuse(data.loc, "the loss needs a `content(...)` or `style(...)` term".into());
        }
        for key in ["augment", "cache", "schedule", "epochs", "batch"] {
            if let Some(&loc) = seen.get(key) {
                refuse(loc, format!("`{key}` is for training weights; an image is optimized for `steps`"));
            }
        }
        if let Some(loc) = seen.get("preprocess").copied() {
            if spec
                .preprocess
                .iter()
                .any(|p| p.name == "resize" || p.name == "grey" || p.name == "rgb" || p.name == "bgr")
            {
                refuse(
                    loc,
                    "the images are read at the input's size and channels; only `scale` and `normalize` apply".into(),
                );
            }
        }
        let noise = data.num("noise", 0.0);
        if !(0.0..=1.0).contains(&noise) {
            refuse(data.loc, format!("`noise` is the share of noise in the first image, from 0 to 1, not {noise}"));
        }
        let inputs = self.model.graph.inputs();
        let shape = inputs.first().map(|&i| self.model.graph.node(i).shape.clone());
        match shape {
            Some(s) if inputs.len() == 1 && s.rank() == 3 && (s.0[2] == 1 || s.0[2] == 3) => {}
            _ => refuse(
                data.loc,
                format!(
                    "the model must have one image input [n_H, n_W, 1 or 3]; `{}` has {}",
                    self.model.name,
                    shape.map_or("none".to_string(), |s| s.to_string())
                ),
            ),
        }
    }

    fn bad(&mut self, e: &ast::Expr, what: &str, expected: &str) {
        let value = snippet(e);
        self.problems.push(
            ResolveError::BadValue {
                loc: self.loc(e.span),
                what: what.into(),
                value,
                expected: expected.into(),
                candidates: vec![],
            }
            .into(),
        );
    }

    fn positive(&mut self, e: &ast::Expr, what: &str) -> Option<usize> {
        match e.kind {
            ExprKind::Int(v) if (1..=1 << 31).contains(&v) => Some(v as usize),
            _ => {
                self.bad(e, what, "a positive integer");
                None
            }
        }
    }

    fn single(&mut self, e: &ast::Expr, table: &[FnSpec], kind: &'static str) -> Option<FnCall> {
        match &e.kind {
            ExprKind::Call(c) => self.call(c, table, kind),
            ExprKind::Name(n) => self.call(
                &ast::Call { callee: n.clone(), args: vec![], frozen: false, bare: true, span: e.span },
                table,
                kind,
            ),
            _ => {
                self.bad(e, kind, &format!("a call such as `{}(...)`", table[0].name));
                None
            }
        }
    }

    fn loss(&mut self, e: &ast::Expr) -> Vec<LossTerm> {
        let mut terms = Vec::new();
        self.loss_terms(e, 1.0, &mut terms);
        terms
    }

    fn loss_terms(&mut self, e: &ast::Expr, weight: f64, out: &mut Vec<LossTerm>) {
        match &e.kind {
            ExprKind::Binary { op: BinOp::Add, lhs, rhs } => {
                self.loss_terms(lhs, weight, out);
                self.loss_terms(rhs, weight, out);
            }
            ExprKind::Binary { op: BinOp::Mul, lhs, rhs } => match (number(lhs), number(rhs)) {
                (Some(w), _) => self.loss_terms(rhs, weight * w, out),
                (_, Some(w)) => self.loss_terms(lhs, weight * w, out),
                _ => self.bad(e, "loss", "a weighted sum of losses, like `content(c) + 40 * style(s)`"),
            },
            ExprKind::Call(c) => {
                if let Some(call) = self.call(c, LOSSES, "loss") {
                    self.check_loss(&call);
                    out.push(LossTerm { weight, call });
                }
            }
            _ => self.bad(e, "loss", "a loss such as `softmax_cross_entropy(logits, label)`"),
        }
    }

    fn call(&mut self, c: &ast::Call, table: &[FnSpec], kind: &'static str) -> Option<FnCall> {
        let loc = self.loc(c.span);
        let Some(spec) = table.iter().find(|s| s.name == c.callee.name) else {
            let candidates = similar(&c.callee.name, table.iter().map(|s| s.name));
            self.problems.push(
                TrainError::UnknownFunction {
                    loc: self.loc(c.callee.span),
                    kind,
                    name: c.callee.name.clone(),
                    candidates,
                }
                .into(),
            );
            return None;
        };
        let mut args = BTreeMap::new();
        let mut ok = true;
        for (i, a) in c.args.iter().enumerate() {
            let index = match &a.name {
                Some(n) => spec.params.iter().position(|p| p.0 == n.name),
                None => (i < spec.params.len()).then_some(i),
            };
            let Some(index) = index else {
                let name = a.name.as_ref().map_or(format!("#{}", i + 1), |n| n.name.clone());
                let candidates = similar(&name, spec.params.iter().map(|p| p.0));
                if a.name.is_some() {
                    self.problems.push(
                        ResolveError::UnknownArgument {
                            loc: self.loc(a.span),
                            callee: spec.name.into(),
                            name,
                            candidates,
                            def: None,
                        }
                        .into(),
                    );
                } else {
                    self.problems.push(
                        ResolveError::TooManyArguments {
                            loc: self.loc(a.span),
                            callee: spec.name.into(),
                            max: spec.params.len(),
                            got: i + 1,
                            def: None,
                        }
                        .into(),
                    );
                }
                ok = false;
                continue;
            };
            let (pname, pkind, _) = spec.params[index];
            if args.contains_key(pname) {
                let first = loc;
                self.problems
                    .push(ResolveError::DuplicateArgument { loc: self.loc(a.span), first, name: pname.into() }.into());
                ok = false;
                continue;
            }
            match self.arg(&a.value, pkind, pname) {
                Some(v) => {
                    args.insert(pname.to_string(), v);
                }
                None => ok = false,
            }
        }
        for (pname, _, default) in spec.params {
            if args.contains_key(*pname) {
                continue;
            }
            match default {
                Some(Dflt::Int(v)) => drop(args.insert(pname.to_string(), Arg::Int(*v))),
                Some(Dflt::Num(v)) => drop(args.insert(pname.to_string(), Arg::Num(*v))),
                Some(Dflt::Bool(v)) => drop(args.insert(pname.to_string(), Arg::Bool(*v))),
                Some(Dflt::Required) if ok => {
                    self.problems.push(
                        ResolveError::MissingArgument {
                            loc,
                            callee: spec.name.into(),
                            name: pname.to_string(),
                            def: None,
                        }
                        .into(),
                    );
                    ok = false;
                }
                _ => {}
            }
        }
        ok.then(|| FnCall { name: spec.name.to_string(), args, loc })
    }

    fn arg(&mut self, e: &ast::Expr, kind: Kind, pname: &str) -> Option<Arg> {
        let what = format!("`{pname}`");
        let value = match (&e.kind, kind) {
            (ExprKind::Str(s), Str) => Arg::Str(s.clone()),
            (ExprKind::Int(v), Int) => Arg::Int(*v),
            (ExprKind::Int(v), Num) => Arg::Num(*v as f64),
            (ExprKind::Float(v), Num) => Arg::Num(*v),
            (ExprKind::Bool(b), Bool) => Arg::Bool(*b),
            (ExprKind::List(items), Numbers) => {
                let nums: Option<Vec<f64>> = items.iter().map(number).collect();
                Arg::List(nums.or_else(|| {
                    self.bad(e, &what, "a list of numbers");
                    None
                })?)
            }
            (ExprKind::Name(n), Output) => {
                if !self.model.graph.outputs().iter().any(|(o, _)| *o == n.name) {
                    let candidates = similar(&n.name, self.model.graph.outputs().iter().map(|(o, _)| o.as_str()));
                    self.problems.push(
                        TrainError::UnknownOutput { loc: self.loc(n.span), name: n.name.clone(), candidates }.into(),
                    );
                    return None;
                }
                Arg::Name(n.name.clone())
            }
            (ExprKind::Name(n), Label) if n.name == "label" => Arg::Name(n.name.clone()),
            (ExprKind::Name(n), Anchors) => {
                if !self.model.anchors.iter().any(|(a, _, _)| *a == n.name) {
                    let candidates = similar(&n.name, self.model.anchors.iter().map(|(a, _, _)| a.as_str()));
                    self.problems.push(
                        ResolveError::UnknownName { loc: self.loc(n.span), name: n.name.clone(), candidates }.into(),
                    );
                    return None;
                }
                Arg::Name(n.name.clone())
            }
            _ => {
                let expected = match kind {
                    Str => "a string",
                    Int => "an integer",
                    Num => "a number",
                    Bool => "`true` or `false`",
                    Output => "the name of a model output",
                    Label => "`label`, the data's targets",
                    Anchors => "the name of an `anchors` declaration",
                    Numbers => "a list of numbers",
                };
                self.problems.push(
                    ResolveError::WrongType {
                        loc: self.loc(e.span),
                        what,
                        expected: expected.into(),
                        found: format!("`{}`", snippet(e)),
                        origin: None,
                    }
                    .into(),
                );
                return None;
            }
        };
        Some(value)
    }

    fn output_shape(&self, name: &str) -> Option<(Shape, Loc)> {
        let (_, id) = self.model.graph.outputs().iter().find(|(o, _)| o == name)?;
        let loc = self.model.output_locs.get(name).copied().unwrap_or(self.model.loc);
        Some((self.model.graph.node(*id).shape.clone(), loc))
    }

    fn check_loss(&mut self, call: &FnCall) {
        let outputs: Vec<(String, Shape, Loc)> = call
            .args
            .iter()
            .filter_map(|(k, v)| match v {
                Arg::Name(n) if k != "target" && k != "anchors" => self.output_shape(n).map(|(s, l)| (n.clone(), s, l)),
                _ => None,
            })
            .collect();
        let problem = match call.name.as_str() {
            "softmax_cross_entropy" => outputs
                .iter()
                .find(|(_, s, _)| s.rank() != 1 || s.0[0] < 2)
                .map(|(n, s, _)| format!("`{n}` must be a vector of at least 2 class scores, but has shape {s}")),
            "sigmoid_cross_entropy" => outputs
                .iter()
                .find(|(_, s, _)| s.rank() != 1)
                .map(|(n, s, _)| format!("`{n}` must be a vector of scores, but has shape {s}")),
            "triplet" => {
                let first = &outputs[0].1;
                if first.rank() != 1 {
                    Some(format!("embeddings must be vectors, `{}` has shape {first}", outputs[0].0))
                } else {
                    outputs.iter().find(|(_, s, _)| s != first).map(|(n, s, _)| {
                        format!("all embeddings must have one shape, `{n}` has {s} and `{}` has {first}", outputs[0].0)
                    })
                }
            }
            "triplet_mining" => {
                let mining = call.args.get("mining").and_then(|a| match a {
                    Arg::Str(s) => Some(s.clone()),
                    _ => None,
                });
                if let Some((n, s, _)) = outputs.iter().find(|(_, s, _)| s.rank() != 1) {
                    Some(format!("the embedding must be a vector, `{n}` has shape {s}"))
                } else if mining.as_deref().is_some_and(|m| m != "hard" && m != "semi_hard") {
                    Some(format!(
                        "`mining` is \"hard\" (each anchor's farthest positive and nearest negative, batch-hard) or                          \"semi_hard\" (FaceNet's: the nearest negative farther than the positive), not {:?}",
                        mining.unwrap_or_default()
                    ))
                } else {
                    None
                }
            }
            "yolo" => self.check_yolo(call, &outputs),
            "localization" => {
                let classes = call.num("classes", 0.0) as i64;
                outputs.iter().find(|(_, s, _)| s.rank() != 1 || s.0[0] as i64 != 5 + classes).map(|(n, s, _)| {
                    format!(
                        "`{n}` must be the vector (p_c, b_x, b_y, b_w, b_h, then {classes} class scores) of {} values, \
                         but has shape {s}",
                        5 + classes
                    )
                })
            }
            "content" | "style" => outputs
                .iter()
                .find(|(_, s, _)| s.rank() < 2)
                .map(|(n, s, _)| format!("`{n}` must be a feature map with spatial axes, but has shape {s}")),
            _ => None,
        };
        if let Some(problem) = problem {
            self.problems
                .push(ShapeError::Loss { loc: call.loc, loss: call.name.clone(), problem, inputs: outputs }.into());
        }
    }

    /// Checks what the losses read against what the data gives. `detection` data gives boxes,
    /// which `yolo` and `localization` read and nothing else does; every other source gives one
    /// class index per example, which softmax cross-entropy reads as a class, and sigmoid
    /// cross-entropy and L2 as the target of an output of one value.
    fn check_targets(&mut self, terms: &[LossTerm], data: Option<&FnCall>, feed: Option<FeedKind>) {
        let boxes = data.is_some_and(|d| d.name == "detection");
        let points = data.is_some_and(|d| d.name == "landmarks");
        for term in terms {
            let Some(output) = term.call.name_arg(&["logits", "output", "embedding"]) else { continue };
            let Some((shape, at)) = self.output_shape(&output) else { continue };
            let detects = matches!(term.call.name.as_str(), "yolo" | "localization");
            let reads = match term.call.name.as_str() {
                "softmax_cross_entropy" | "triplet_mining" => Shape(vec![]),
                "sigmoid_cross_entropy" | "l2" => shape.clone(),
                _ if detects => Shape(vec![]),
                _ => continue,
            };
            let inputs = vec![(output.clone(), shape.clone(), at)];
            // (Pairs' targets are 1 or 0, same or different, whatever the classes.)
            let ten_classes = data.is_some_and(|d| d.name == "mnist") && feed != Some(FeedKind::Pairs);
            let problem = if points {
                (term.call.name != "l2").then(|| {
                    format!(
                        "`landmarks` data gives points, which `l2(output, label)` regresses, not `{}`",
                        term.call.name
                    )
                })
            } else if detects && !boxes {
                Some(
                    "it reads boxes, and the data gives one class index per example: read images with YOLO label \
                     files with `data detection(\"DIR\")`"
                        .to_string(),
                )
            } else if detects {
                None
            } else if boxes {
                Some(format!(
                    "`detection` data gives boxes, and `{}` reads a class index or a value per example: detect with \
                     `yolo` or `localization`",
                    term.call.name
                ))
            } else if term.call.name == "sigmoid_cross_entropy" && ten_classes {
                Some("it reads each label as 0 or 1, and `mnist` has 10 classes: use softmax_cross_entropy".to_string())
            } else if reads.elements().is_some_and(|n| n > 1) {
                Some(format!(
                    "it compares `{output}` {shape} with targets of that shape, and the data gives one class index per \
                     example: give `{output}` one value, or use data with such targets (not supported yet)"
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                self.problems.push(
                    ShapeError::Loss { loc: term.call.loc, loss: term.call.name.clone(), problem, inputs }.into(),
                );
                return;
            }
        }
    }

    fn check_yolo(&self, call: &FnCall, outputs: &[(String, Shape, Loc)]) -> Option<String> {
        let (name, shape, _) = outputs.first()?;
        let Some(Arg::Int(classes)) = call.args.get("classes") else { return None };
        let Some(Arg::Name(anchors)) = call.args.get("anchors") else { return None };
        let count = self.model.anchors.iter().find(|(a, _, _)| a == anchors).map_or(0, |(_, v, _)| v.len());
        let per_cell = count as i64 * (5 + classes);
        if shape.rank() != 3 {
            return Some(format!("`{name}` must be a grid [S, S, anchors·(5 + classes)], but has shape {shape}"));
        }
        (shape.channels() as i64 != per_cell).then(|| {
            format!(
                "`{name}` has {} channels per cell but {count} anchors · (5 + {classes} classes) = {per_cell}",
                shape.channels()
            )
        })
    }

    /// Checks the data's example shape, through the preprocessing and augmentation steps,
    /// against the model input.
    fn check_data(&mut self, data: &FnCall, preprocess: &[FnCall], augment: &[FnCall]) {
        let input = self.model.graph.inputs().first().map(|&id| self.model.graph.node(id));
        let Some(input) = input else { return };
        let known = data.example_shape();
        // Without a known data shape, the steps are checked against the model input's.
        let mut shape = known.clone().unwrap_or_else(|| input.shape.clone());
        let mut values_seen = false;
        let (mut resized, mut coloured) = (false, false);
        let padded = data.name == "mnist" && data.num("pad", 0.0) > 0.0;
        for step in preprocess {
            let reads = matches!(step.name.as_str(), "resize" | "rgb" | "bgr" | "grey");
            let (resize, colour) = (step.name == "resize", reads && step.name != "resize");
            let result = if reads && values_seen {
                Err("resizing and colour steps come before `scale` and `normalize` (they apply as examples are read)"
                    .to_string())
            } else if (resize && resized) || (colour && coloured) {
                Err(format!("a second {} step: give one", if resize { "resize" } else { "colour" }))
            } else if resize && padded {
                Err("`mnist(pad: ...)` pads the digits as they are read, before any resize: resize, or pad, not both"
                    .to_string())
            } else {
                resized |= resize;
                coloured |= colour;
                values_seen |= !reads;
                preprocess_step(step, &shape, known.is_some())
            };
            match result {
                Ok(next) => shape = next,
                Err(problem) => {
                    let e = TrainError::Augment { loc: step.loc, step: step.name.clone(), problem, input: input.loc };
                    self.problems.push(e.into());
                    return;
                }
            }
        }
        for step in augment {
            match self.augment_step(step, &shape) {
                Ok(next) => shape = next,
                Err(problem) => {
                    let e = TrainError::Augment { loc: step.loc, step: step.name.clone(), problem, input: input.loc };
                    self.problems.push(e.into());
                    return;
                }
            }
        }
        if known.is_some() && shape != input.shape {
            self.problems.push(
                TrainError::DataMismatch {
                    loc: data.loc,
                    data: data.name.clone(),
                    shape,
                    augmented: !augment.is_empty(),
                    input: input.name.clone(),
                    expected: input.shape.clone(),
                    at: input.loc,
                }
                .into(),
            );
        }
    }

    /// The example shape after one augmentation step, or why the step cannot apply to `shape`.
    /// (Preprocessing steps: [`preprocess_step`].)
    fn augment_step(&self, step: &FnCall, shape: &Shape) -> Result<Shape, String> {
        let number = |name: &str| step.num(name, 0.0);
        let p = number("p");
        if step.args.contains_key("p") && !(0.0..=1.0).contains(&p) {
            return Err(format!("its probability p = {p} is not between 0 and 1"));
        }
        if shape.rank() != 3 {
            return Err(format!("it transforms images [n_H, n_W, n_C], and the examples have shape {shape}"));
        }
        // Boxes and points follow mirrors, flips and crops; not rotations, shears or warps, and
        // points do not follow mirrors (a left point would become a right one).
        let bends = matches!(step.name.as_str(), "rotate" | "shear" | "warp");
        let mirrors = matches!(step.name.as_str(), "mirror" | "flip_vertical");
        if bends && (self.boxes || self.points) {
            return Err(format!(
                "it bends the image, and the {} cannot follow: mirrors, flips and crops can",
                if self.boxes { "boxes of `detection` data" } else { "points of `landmarks` data" }
            ));
        }
        if mirrors && self.points {
            return Err("it would turn a left point into a right one, and the points of `landmarks` data keep their \
                 order: use crops"
                .to_string());
        }
        let (h, w, c) = (shape.0[0], shape.0[1], shape.0[2]);
        // Every number finite and in a range the augmentation can use (a huge angle, warp or
        // padding would fail or exhaust memory in the loader, after the check had passed).
        for (name, value) in &step.args {
            let bad = match value {
                Arg::Num(v) => !v.is_finite(),
                Arg::List(v) => v.iter().any(|x| !x.is_finite()),
                _ => false,
            };
            if bad {
                return Err(format!("`{name}` must be a finite number"));
            }
        }
        let within = |name: &str, low: f64, high: f64| {
            let v = number(name);
            if step.args.contains_key(name) && !(low..=high).contains(&v) {
                let shown = if v.abs() >= 1e6 { format!("{v:e}") } else { v.to_string() };
                Err(format!("`{name}` = {shown} is outside {low} to {high}"))
            } else {
                Ok(())
            }
        };
        match step.name.as_str() {
            "rotate" => within("degrees", -360.0, 360.0)?,
            "shear" => within("degrees", -80.0, 80.0)?,
            "warp" => {
                within("alpha", 0.0, 1000.0)?;
                within("sigma", 0.0, 64.0)?;
            }
            "brightness" | "contrast" | "color_shift" => within("max", 0.0, 10.0)?,
            "pca_color" => within("std", 0.0, 10.0)?,
            "random_crop" => {
                within("size", 1.0, 16384.0)?;
                within("pad", 0.0, 1024.0)?;
            }
            "random_resized_crop" => within("size", 1.0, 16384.0)?,
            _ => {}
        }
        match step.name.as_str() {
            "color_shift" | "pca_color" if c != 3 => Err(format!(
                "it changes colours, and the examples have {c} channel{} ({shape}), not RGB",
                if c == 1 { "" } else { "s" }
            )),
            "random_crop" => {
                let (size, pad) = (number("size") as usize, number("pad") as usize);
                if size == 0 || size > h + 2 * pad || size > w + 2 * pad {
                    Err(format!(
                        "a {size}×{size} crop does not fit in {h}×{w} examples padded by {pad} ({}×{})",
                        h + 2 * pad,
                        w + 2 * pad
                    ))
                } else {
                    Ok(Shape(vec![size, size, c]))
                }
            }
            "random_resized_crop" => {
                let size = number("size") as usize;
                if size == 0 {
                    return Err("the crop size must be at least 1".into());
                }
                if size > h || size > w {
                    return Err(format!(
                        "a {size}×{size} crop is larger than the {h}×{w} examples, and evaluation takes a centre crop \
                         of that size from them"
                    ));
                }
                if let Some(Arg::List(scale)) = step.args.get("scale") {
                    if scale.len() != 2 || !(scale[0] > 0.0 && scale[0] <= scale[1] && scale[1] <= 1.0) {
                        return Err("`scale` must be [low, high] with 0 < low ≤ high ≤ 1".into());
                    }
                }
                Ok(Shape(vec![size, size, c]))
            }
            "normalize" => {
                let lengths = ["mean", "std"].map(|k| match step.args.get(k) {
                    Some(Arg::List(v)) => v.len(),
                    _ => 0,
                });
                if lengths.iter().any(|&n| n != 1 && n != c) {
                    return Err(format!("`mean` and `std` need 1 or {c} values (one per channel)"));
                }
                if let Some(Arg::List(std)) = step.args.get("std") {
                    if std.iter().any(|&s| s <= 0.0) {
                        return Err("every `std` must be positive".into());
                    }
                }
                Ok(shape.clone())
            }
            "warp" if number("sigma") <= 0.0 => Err("`sigma` must be positive".into()),
            _ => Ok(shape.clone()),
        }
    }
}

fn number(e: &ast::Expr) -> Option<f64> {
    match &e.kind {
        ExprKind::Int(v) => Some(*v as f64),
        ExprKind::Float(v) => Some(*v),
        ExprKind::Neg(inner) => number(inner).map(|v| -v),
        _ => None,
    }
}

fn snippet(e: &ast::Expr) -> String {
    match &e.kind {
        ExprKind::Int(v) => v.to_string(),
        ExprKind::Float(v) => v.to_string(),
        ExprKind::Str(s) => format!("\"{s}\""),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::Call(c) => format!("{}(...)", c.callee.name),
        ExprKind::List(_) => "[...]".into(),
        _ => "expression".into(),
    }
}
