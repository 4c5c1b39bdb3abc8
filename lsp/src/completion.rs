//! Completion from the text before the cursor, which is usually half-typed: layer and block names
//! after `|>` or `=`, named arguments (and their choices) inside a call, parameter types in a
//! block's header, statement and item keywords at the start of a line, `train` settings, and the
//! modules and items of a `use` path.

use crate::document::View;
use crate::facts::block_signature;
use crate::syntax::DefKind;
use cnnc_compiler::elaborate::{LAYERS, TYPES};
use cnnc_compiler::stdlib;
use cnnc_compiler::train::SETTINGS;
use cnnc_grammar::ast;
use cnnc_grammar::lex::{lex, Token, TokenKind, KEYWORDS};
use lsp_types::{CompletionItem, CompletionItemKind, Documentation, Position};

/// The choices of a named argument of the built-in layers.
const CHOICES: &[(&str, &[&str])] = &[
    ("pad", &["valid", "same"]),
    ("round", &["floor", "ceil"]),
    ("init", &["he", "glorot"]),
    ("bias", &["true", "false"]),
];

/// Completions at `pos`.
pub fn complete(view: &View, pos: Position) -> Vec<CompletionItem> {
    let offset = view.offset(pos);
    let before = view.text.get(..offset).unwrap_or("");
    let tokens = lex(before);
    if let Some(last) = tokens.last() {
        let text = last.text(before);
        let inside = match last.kind {
            TokenKind::LineComment => true,
            TokenKind::Unknown => text.starts_with('"') || text.starts_with("/*"),
            _ => false,
        };
        if inside {
            return Vec::new();
        }
    }
    let mut sig: Vec<Token> = tokens.iter().copied().filter(|t| t.is_significant()).collect();
    if sig.last().is_some_and(|t| t.kind == TokenKind::Ident && t.span.end as usize == offset) {
        sig.pop();
    }
    let text_of = |t: &Token| t.text(before);
    let line: Vec<&Token> = {
        let start = tokens.iter().rposition(|t| t.kind == TokenKind::Newline).map_or(0, |i| i + 1);
        tokens[start..].iter().filter(|t| t.is_significant()).collect()
    };
    let mut c = Completions { view, offset, items: Vec::new() };
    if line.first().is_some_and(|t| text_of(t) == "use") {
        c.use_path(&line.iter().skip(1).map(|t| text_of(t)).collect::<Vec<_>>());
        return c.items;
    }
    let mut stack: Vec<usize> = Vec::new();
    let mut item = None;
    for (i, t) in sig.iter().enumerate() {
        match t.kind {
            TokenKind::Open => stack.push(i),
            TokenKind::Close => {
                stack.pop();
            }
            TokenKind::Ident
                if stack.is_empty() && matches!(text_of(t), "use" | "block" | "model" | "train" | "const") =>
            {
                item = Some(text_of(t));
            }
            _ => {}
        }
    }
    let prev = sig.last().map(|t| (t.kind, text_of(t)));
    let at_line_start = line.len()
        <= usize::from(line.last().is_some_and(|t| t.span.end as usize == offset && t.kind == TokenKind::Ident));
    let open = stack.last().map(|&i| (i, text_of(&sig[i])));
    let callee = open
        .filter(|(_, o)| *o == "(")
        .and_then(|(i, _)| i.checked_sub(1))
        .map(|j| (j, text_of(&sig[j])))
        .filter(|(j, name)| sig[*j].kind == TokenKind::Ident && !KEYWORDS.contains(name));
    if let Some((j, name)) = callee {
        let header = j.checked_sub(1).is_some_and(|k| text_of(&sig[k]) == "block");
        if header {
            if prev.is_some_and(|p| p.0 == TokenKind::Colon) {
                c.keywords(TYPES, CompletionItemKind::TYPE_PARAMETER);
            }
            return c.items;
        }
        match prev {
            Some((TokenKind::Open | TokenKind::Comma, _)) => {
                let given: Vec<&str> = sig[j + 2..]
                    .windows(2)
                    .filter(|w| w[0].kind == TokenKind::Ident && w[1].kind == TokenKind::Colon)
                    .map(|w| text_of(&w[0]))
                    .collect();
                c.arguments(name, &given);
                c.names();
                c.callables();
                return c.items;
            }
            Some((TokenKind::Colon, _)) => {
                let arg = sig.len().checked_sub(2).map(|k| text_of(&sig[k])).unwrap_or_default();
                if let Some((_, choices)) = CHOICES.iter().find(|(a, _)| *a == arg) {
                    c.keywords(choices, CompletionItemKind::ENUM_MEMBER);
                }
                c.names();
                return c.items;
            }
            _ => {}
        }
    }
    if item == Some("train") && !stack.is_empty() {
        if at_line_start {
            c.keywords(SETTINGS, CompletionItemKind::PROPERTY);
        }
        return c.items;
    }
    match prev {
        Some((TokenKind::Pipe, _)) | Some((TokenKind::Ident, "frozen")) => {
            c.callables();
            c.keywords(&["repeat", "frozen"], CompletionItemKind::KEYWORD);
        }
        Some((TokenKind::Equals, _)) => {
            c.callables();
            c.names();
            c.keywords(&["frozen"], CompletionItemKind::KEYWORD);
        }
        Some((TokenKind::Open, "{")) if stack.len() >= 2 => c.callables(),
        _ if at_line_start && stack.is_empty() => {
            c.keywords(&["use", "block", "model", "train", "const"], CompletionItemKind::KEYWORD)
        }
        _ if at_line_start => {
            let keywords: &[&str] = if item == Some("block") {
                &["return", "shared", "const"]
            } else {
                &["input", "output", "shared", "const", "anchors"]
            };
            c.keywords(keywords, CompletionItemKind::KEYWORD);
            c.names();
        }
        _ => {
            c.callables();
            c.names();
        }
    }
    c.items
}

struct Completions<'v> {
    view: &'v View<'v>,
    offset: usize,
    items: Vec<CompletionItem>,
}

impl Completions<'_> {
    fn add(&mut self, label: &str, kind: CompletionItemKind, group: u8, detail: Option<String>) -> &mut CompletionItem {
        self.items.push(CompletionItem {
            label: label.to_string(),
            kind: Some(kind),
            detail,
            sort_text: Some(format!("{group}{label}")),
            ..CompletionItem::default()
        });
        let last = self.items.len() - 1;
        &mut self.items[last]
    }

    fn keywords(&mut self, words: &[&str], kind: CompletionItemKind) {
        for w in words {
            self.add(w, kind, 3, None);
        }
    }

    /// Layers, blocks and the shared instances in scope.
    fn callables(&mut self) {
        for l in LAYERS {
            let item = self.add(l.name, CompletionItemKind::FUNCTION, 2, Some(l.signature.to_string()));
            item.documentation = Some(Documentation::String(l.doc.to_string()));
        }
        let program = &self.view.analysis.compilation.program;
        if let Some(entry) = program.modules.first() {
            let mut blocks: Vec<_> = entry.blocks.iter().collect();
            blocks.sort_by(|a, b| a.0.cmp(b.0));
            for (name, def) in blocks {
                let signature = block_signature(program, def);
                self.add(name, CompletionItemKind::MODULE, 2, Some(signature));
            }
        }
        for (name, kind) in self.scope_names() {
            if kind == DefKind::Shared {
                self.add(&name, CompletionItemKind::STRUCT, 1, Some("shared instance".into()));
            }
        }
    }

    /// Bindings, inputs, parameters and constants visible at the cursor.
    fn names(&mut self) {
        for (name, kind) in self.scope_names() {
            let item_kind = match kind {
                DefKind::Const => CompletionItemKind::CONSTANT,
                DefKind::Shared | DefKind::Output | DefKind::Model | DefKind::Block => continue,
                _ => CompletionItemKind::VARIABLE,
            };
            self.add(&name, item_kind, 1, None);
        }
        if let Some(entry) = self.view.analysis.compilation.program.modules.first() {
            let mut consts: Vec<&String> = entry.consts.keys().collect();
            consts.sort();
            for name in consts {
                if !self.items.iter().any(|i| i.label == *name) {
                    self.add(name, CompletionItemKind::CONSTANT, 1, None);
                }
            }
        }
    }

    fn scope_names(&self) -> Vec<(String, DefKind)> {
        let mut names: Vec<(String, DefKind)> = match self.view.analysis.index.scope_at(self.offset) {
            Some(s) => s.defs.iter().map(|(n, (_, k))| (n.clone(), *k)).collect(),
            None => Vec::new(),
        };
        names.sort_by(|a, b| a.0.cmp(&b.0));
        names
    }

    /// The named arguments of `callee` not yet given.
    fn arguments(&mut self, callee: &str, given: &[&str]) {
        let program = &self.view.analysis.compilation.program;
        let mut args: Vec<(String, Option<String>)> = Vec::new();
        if let Some(spec) = LAYERS.iter().find(|l| l.name == callee) {
            args.extend(spec.params.iter().map(|(n, _)| (n.to_string(), Some(spec.signature.to_string()))));
        } else if let Some(def) = program.modules.first().and_then(|m| m.blocks.get(callee)) {
            let signature = block_signature(program, def);
            args.extend(def.item.params.iter().map(|p| (p.name.name.clone(), Some(signature.clone()))));
        } else {
            return;
        }
        args.push(("name".into(), Some("the layer's name in the block path".into())));
        for (name, detail) in args.into_iter().filter(|(n, _)| !given.contains(&n.as_str())) {
            let item = self.add(&name, CompletionItemKind::FIELD, 0, detail);
            item.insert_text = Some(format!("{name}: "));
        }
    }

    /// After `use`: standard modules, then a module's blocks and `*`.
    fn use_path(&mut self, typed: &[&str]) {
        let segments: Vec<&str> = typed.iter().copied().filter(|s| *s != ".").collect();
        let complete_segment = typed.last().is_some_and(|s| *s == ".");
        let done = if complete_segment { segments.len() } else { segments.len().saturating_sub(1) };
        match &segments[..done] {
            [] => {
                self.add("std", CompletionItemKind::MODULE, 0, Some("the standard library".into()));
            }
            ["std"] => {
                for (name, _) in stdlib::MODULES {
                    self.add(name, CompletionItemKind::MODULE, 0, Some(format!("std/{name}.cnn")));
                }
            }
            ["std", module] => {
                let Some(text) = stdlib::source(module) else { return };
                let Ok(file) = cnnc_grammar::parse(text) else { return };
                for item in &file.items {
                    if let ast::Item::Block(b) = item {
                        self.add(&b.name.name, CompletionItemKind::MODULE, 0, Some(format!("block in std.{module}")));
                    }
                }
                self.add("*", CompletionItemKind::KEYWORD, 1, Some("every block of the module".into()));
            }
            _ => {}
        }
    }
}
