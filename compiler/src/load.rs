//! Loading a program: the entry file, every file it `use`s (the standard library included,
//! embedded in the binary), each parsed once; then each module's table of visible blocks and
//! constants.

use crate::error::{similar, LoadError, Problem};
use crate::source::{FileId, Loc, SourceMap};
use crate::stdlib;
use cnnc_grammar::ast;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Index of a module in a [`Program`].
pub type ModuleId = usize;

/// A block or constant visible in a module, with the module it is defined in.
#[derive(Clone, Debug)]
pub struct Def<T> {
    /// The module whose names its body sees.
    pub module: ModuleId,
    /// The definition.
    pub item: Arc<T>,
}

/// One parsed file and the names visible at its top level.
#[derive(Clone, Debug, Default)]
pub struct Module {
    /// Its source file.
    pub file: FileId,
    /// Its syntax tree (empty if it did not parse).
    pub ast: Arc<ast::File>,
    /// Blocks defined here or imported.
    pub blocks: HashMap<String, Def<ast::Block>>,
    /// Constants defined here or imported.
    pub consts: HashMap<String, Def<ast::Const>>,
}

/// Every module of a compilation. Module 0 is the entry file.
#[derive(Clone, Debug, Default)]
pub struct Program {
    /// The files read.
    pub sources: SourceMap,
    /// The modules, entry first.
    pub modules: Vec<Module>,
}

/// Where a module comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Origin {
    Disk(PathBuf),
    Std(String),
}

/// Loads a program whose entry file has `name` (shown in diagnostics), optional `path` (for
/// relative imports) and raw `bytes`. Problems are pushed to `problems`.
pub fn load(name: &str, path: Option<&Path>, bytes: &[u8], problems: &mut Vec<Problem>) -> Program {
    let mut loader = Loader { program: Program::default(), origins: HashMap::new(), problems };
    let origin = path.map(|p| Origin::Disk(p.to_path_buf()));
    loader.add(name.to_string(), origin, bytes);
    let mut next = 0;
    while next < loader.program.modules.len() {
        loader.follow_uses(next);
        next += 1;
    }
    for id in 0..loader.program.modules.len() {
        loader.link(id);
    }
    loader.program
}

struct Loader<'p> {
    program: Program,
    origins: HashMap<Origin, ModuleId>,
    problems: &'p mut Vec<Problem>,
}

impl Loader<'_> {
    fn add(&mut self, name: String, origin: Option<Origin>, bytes: &[u8]) -> ModuleId {
        let path = match &origin {
            Some(Origin::Disk(p)) => Some(p.clone()),
            _ => None,
        };
        let (text, bad) = match std::str::from_utf8(bytes) {
            Ok(t) => (t.to_string(), None),
            Err(e) => (String::from_utf8_lossy(bytes).into_owned(), Some(e.valid_up_to())),
        };
        let file = self.program.sources.add(name, path, text);
        let ast = if let Some(at) = bad {
            let loc = Loc { file, span: ast::Span::new(at, at + 1) };
            self.problems.push(LoadError::InvalidUtf8 { loc }.into());
            ast::File { items: Vec::new() }
        } else {
            match cnnc_grammar::parse(&self.program.sources.get(file).text) {
                Ok(ast) => ast,
                Err(e) => {
                    self.problems.push(LoadError::Parse { loc: Loc { file, span: e.span }, kind: e.kind }.into());
                    ast::File { items: Vec::new() }
                }
            }
        };
        let id = self.program.modules.len();
        if let Some(o) = origin {
            self.origins.insert(o, id);
        }
        self.program.modules.push(Module { file, ast: Arc::new(ast), ..Module::default() });
        id
    }

    /// Loads every file that module `id` uses.
    fn follow_uses(&mut self, id: ModuleId) {
        let module = self.program.modules[id].clone();
        for item in &module.ast.items {
            let ast::Item::Use(u) = item else { continue };
            let _ = self.resolve_use(id, u);
        }
    }

    /// The module a `use` refers to, loading it if needed.
    fn resolve_use(&mut self, from: ModuleId, u: &ast::Use) -> Option<ModuleId> {
        let loc = Loc { file: self.program.modules[from].file, span: u.span };
        let Some((origin, module)) = self.target(from, u) else {
            let module = u.path.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
            let tried = "(no file named: write `use file.block` or `use file.*`)".to_string();
            self.problems.push(LoadError::MissingFile { loc, module, tried, candidates: vec![] }.into());
            return None;
        };
        if let Some(&m) = self.origins.get(&origin) {
            return Some(m);
        }
        match &origin {
            Origin::Std(name) => {
                let Some(text) = stdlib::source(name) else {
                    let candidates = similar(name, stdlib::MODULES.iter().map(|(n, _)| *n));
                    let tried = format!("std/{name}.cnn");
                    self.problems.push(LoadError::MissingFile { loc, module, tried, candidates }.into());
                    return None;
                };
                Some(self.add(format!("std/{name}.cnn"), Some(origin.clone()), text.as_bytes()))
            }
            Origin::Disk(path) => match std::fs::read(path) {
                Ok(bytes) => Some(self.add(self.shown(from, u), Some(origin.clone()), &bytes)),
                Err(_) => {
                    let tried = self.shown(from, u);
                    self.problems.push(LoadError::MissingFile { loc, module, tried, candidates: vec![] }.into());
                    None
                }
            },
        }
    }

    /// How to show the file a `use` names: beside the importing file's shown name.
    fn shown(&self, from: ModuleId, u: &ast::Use) -> String {
        let importer = &self.program.sources.get(self.program.modules[from].file).name;
        let segments: Vec<&str> = u.path.iter().map(|i| i.name.as_str()).collect();
        let module = if u.glob { &segments[..] } else { &segments[..segments.len().saturating_sub(1)] };
        let mut shown = Path::new(importer).parent().map(Path::to_path_buf).unwrap_or_default();
        for s in module {
            shown.push(s);
        }
        shown.set_extension("cnn");
        shown.display().to_string()
    }

    /// Where the file a `use` names is, and its dotted module name.
    fn target(&self, from: ModuleId, u: &ast::Use) -> Option<(Origin, String)> {
        let segments: Vec<&str> = u.path.iter().map(|i| i.name.as_str()).collect();
        let module_segments = if u.glob { &segments[..] } else { &segments[..segments.len().saturating_sub(1)] };
        if module_segments.is_empty() {
            return None;
        }
        let module = module_segments.join(".");
        if module_segments[0] == "std" && module_segments.len() == 2 {
            return Some((Origin::Std(module_segments[1].to_string()), module));
        }
        let file = self.program.modules[from].file;
        let mut path = self
            .program
            .sources
            .get(file)
            .path
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for s in module_segments {
            path.push(s);
        }
        path.set_extension("cnn");
        Some((Origin::Disk(path), module))
    }

    /// Fills module `id`'s tables: its own definitions, then what it imports.
    fn link(&mut self, id: ModuleId) {
        let ast = self.program.modules[id].ast.clone();
        let (blocks, consts) = own_items(id, &ast);
        self.program.modules[id].blocks = blocks;
        self.program.modules[id].consts = consts;
        for item in &ast.items {
            let ast::Item::Use(u) = item else { continue };
            let Some(target) = self.origin_of(id, u) else { continue };
            let (blocks, consts) = own_items(target, &self.program.modules[target].ast.clone());
            let module = &mut self.program.modules[id];
            if u.glob {
                for (k, v) in blocks {
                    module.blocks.entry(k).or_insert(v);
                }
                for (k, v) in consts {
                    module.consts.entry(k).or_insert(v);
                }
                continue;
            }
            let Some(last) = u.path.last() else { continue };
            let name = &last.name;
            if let Some(b) = blocks.get(name) {
                module.blocks.insert(name.clone(), b.clone());
            } else if let Some(c) = consts.get(name) {
                module.consts.insert(name.clone(), c.clone());
            } else {
                let candidates = similar(name, blocks.keys().chain(consts.keys()).map(String::as_str));
                let loc = Loc { file: module.file, span: last.span };
                let module_name =
                    u.path[..u.path.len() - 1].iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(".");
                self.problems
                    .push(LoadError::UnknownImport { loc, module: module_name, item: name.clone(), candidates }.into());
            }
        }
    }

    /// The already loaded module a `use` refers to.
    fn origin_of(&self, from: ModuleId, u: &ast::Use) -> Option<ModuleId> {
        let (origin, _) = self.target(from, u)?;
        self.origins.get(&origin).copied()
    }
}

type Tables = (HashMap<String, Def<ast::Block>>, HashMap<String, Def<ast::Const>>);

fn own_items(module: ModuleId, ast: &ast::File) -> Tables {
    let mut blocks = HashMap::new();
    let mut consts = HashMap::new();
    for item in &ast.items {
        match item {
            ast::Item::Block(b) => {
                blocks.entry(b.name.name.clone()).or_insert(Def { module, item: Arc::new(b.clone()) });
            }
            ast::Item::Const(c) => {
                consts.entry(c.name.name.clone()).or_insert(Def { module, item: Arc::new(c.clone()) });
            }
            _ => {}
        }
    }
    (blocks, consts)
}
