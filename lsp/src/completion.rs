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
    let mut c = Completions { view, offset, items: Vec::new() };
    if let Some(cx) = Context::read(before) {
        c.fill(&cx);
    }
    c.items
}

/// What stands before the cursor.
struct Context<'t> {
    text: &'t str,
    /// Tokens that mean something to the parser, the word being typed left out.
    sig: Vec<Token>,
    /// The texts of the cursor's line's tokens, the word being typed included.
    line: Vec<&'t str>,
    /// Indices into `sig` of the brackets still open.
    open: Vec<usize>,
    /// The keyword of the top-level item the cursor is in.
    item: Option<&'t str>,
    /// Nothing but the word being typed stands before the cursor on its line.
    at_line_start: bool,
}

impl<'t> Context<'t> {
    /// Reads the text before the cursor; `None` inside a comment or a string.
    fn read(text: &'t str) -> Option<Self> {
        let tokens = lex(text);
        if let Some(last) = tokens.last() {
            let inside = match last.kind {
                TokenKind::LineComment => true,
                TokenKind::Unknown => last.text(text).starts_with('"') || last.text(text).starts_with("/*"),
                _ => false,
            };
            if inside {
                return None;
            }
        }
        let mut sig: Vec<Token> = tokens.iter().copied().filter(|t| t.is_significant()).collect();
        let typing = sig.last().is_some_and(|t| t.kind == TokenKind::Ident && t.span.end as usize == text.len());
        if typing {
            sig.pop();
        }
        let line_start = tokens.iter().rposition(|t| t.kind == TokenKind::Newline).map_or(0, |i| i + 1);
        let line: Vec<&str> =
            tokens[line_start..].iter().filter(|t| t.is_significant()).map(|t| t.text(text)).collect();
        let mut open = Vec::new();
        let mut item = None;
        for (i, t) in sig.iter().enumerate() {
            match t.kind {
                TokenKind::Open => open.push(i),
                TokenKind::Close => {
                    open.pop();
                }
                TokenKind::Ident if open.is_empty() => {
                    if let w @ ("use" | "block" | "model" | "train" | "const") = t.text(text) {
                        item = Some(w);
                    }
                }
                _ => {}
            }
        }
        let at_line_start = line.len() <= usize::from(typing);
        Some(Context { text, sig, line, open, item, at_line_start })
    }

    fn text(&self, i: usize) -> &'t str {
        self.sig.get(i).map_or("", |t| t.text(self.text))
    }

    /// The last token before the word being typed.
    fn prev(&self) -> Option<(TokenKind, &'t str)> {
        let i = self.sig.len().checked_sub(1)?;
        Some((self.sig[i].kind, self.text(i)))
    }

    /// The call whose parentheses the cursor is in directly: the callee's index in `sig`, its name.
    fn call(&self) -> Option<(usize, &'t str)> {
        let &open = self.open.last()?;
        let j = open.checked_sub(1).filter(|_| self.text(open) == "(")?;
        let name = self.text(j);
        (self.sig[j].kind == TokenKind::Ident && !KEYWORDS.contains(&name)).then_some((j, name))
    }

    /// The names of the named arguments given to the call whose callee is at `j`.
    fn given(&self, j: usize) -> Vec<&'t str> {
        let args = self.sig.get(j + 2..).unwrap_or_default();
        args.windows(2)
            .filter(|w| w[0].kind == TokenKind::Ident && w[1].kind == TokenKind::Colon)
            .map(|w| w[0].text(self.text))
            .collect()
    }
}

struct Completions<'v> {
    view: &'v View<'v>,
    offset: usize,
    items: Vec<CompletionItem>,
}

impl Completions<'_> {
    fn fill(&mut self, cx: &Context) {
        if cx.line.first() == Some(&"use") {
            return self.use_path(&cx.line[1..]);
        }
        if let Some((j, name)) = cx.call() {
            if self.in_call(cx, j, name) {
                return;
            }
        }
        if cx.item == Some("train") && !cx.open.is_empty() {
            if cx.at_line_start {
                self.keywords(SETTINGS, CompletionItemKind::PROPERTY);
            }
            return;
        }
        match cx.prev() {
            Some((TokenKind::Pipe, _) | (TokenKind::Ident, "frozen")) => {
                self.callables();
                self.keywords(&["repeat", "frozen"], CompletionItemKind::KEYWORD);
            }
            Some((TokenKind::Equals, _)) => {
                self.callables();
                self.names();
                self.keywords(&["frozen"], CompletionItemKind::KEYWORD);
            }
            Some((TokenKind::Open, "{")) if cx.open.len() >= 2 => self.callables(),
            _ if cx.at_line_start && cx.open.is_empty() => {
                self.keywords(&["use", "block", "model", "train", "const"], CompletionItemKind::KEYWORD)
            }
            _ if cx.at_line_start => {
                let keywords: &[&str] = if cx.item == Some("block") {
                    &["return", "shared", "const"]
                } else {
                    &["input", "output", "shared", "const", "anchors"]
                };
                self.keywords(keywords, CompletionItemKind::KEYWORD);
                self.names();
            }
            _ => {
                self.callables();
                self.names();
            }
        }
    }

    /// Completions inside the parentheses of a call of `name` (callee at `j`); whether any apply.
    fn in_call(&mut self, cx: &Context, j: usize, name: &str) -> bool {
        if j.checked_sub(1).is_some_and(|k| cx.text(k) == "block") {
            // A block's header: parameter types after `:`.
            if cx.prev().is_some_and(|p| p.0 == TokenKind::Colon) {
                self.keywords(TYPES, CompletionItemKind::TYPE_PARAMETER);
            }
            return true;
        }
        match cx.prev() {
            Some((TokenKind::Open | TokenKind::Comma, _)) => {
                self.arguments(name, &cx.given(j));
                self.names();
                self.callables();
                true
            }
            Some((TokenKind::Colon, _)) => {
                let arg = cx.sig.len().checked_sub(2).map_or("", |k| cx.text(k));
                if let Some((_, choices)) = CHOICES.iter().find(|(a, _)| *a == arg) {
                    self.keywords(choices, CompletionItemKind::ENUM_MEMBER);
                }
                self.names();
                true
            }
            _ => false,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Document;
    use crate::files::StdFiles;
    use crate::position::Encoding;

    /// Labels offered where `$` stands in `text`.
    fn offered(text: &str) -> Vec<String> {
        let at = text.find('$').unwrap();
        let text = text.replacen('$', "", 1);
        let mut doc = Document::new("untitled:c".parse().unwrap(), 1, text.clone(), Encoding::Utf16);
        let std = StdFiles::default();
        let view = doc.view(&std);
        let pos = view.lines.position(&text, at);
        complete(&view, pos).into_iter().map(|i| i.label).collect()
    }

    #[test]
    fn completes_by_context() {
        let has = |text: &str, want: &[&str]| {
            let got = offered(text);
            for w in want {
                assert!(got.iter().any(|g| g == w), "{w} not offered in {text:?}: {got:?}");
            }
            got
        };
        has("use std.$", &["resnet", "layers"]);
        has("use std.resnet.bott$", &["bottleneck", "*"]);
        has("block b(x, c: $", &["int", "size"]);
        has("model M {\n    input i: [8, 8, 1]\n    x = i |> conv(4, 3, pad: $", &["same", "valid"]);
        let args = has("model M {\n    input i: [8, 8, 1]\n    x = i |> maxpool(2, $", &["stride", "round", "i"]);
        assert!(!args.contains(&"filters".to_string()));
        has("model M {\n    input i: [8]\n    $\n}", &["output", "input", "i"]);
        has("train M {\n    $\n}", &["optimizer", "batch"]);
        has("$", &["model", "block", "use"]);
        assert!(offered("model M { // conv$\n}").is_empty());
        assert!(offered("model M { x = \"con$").is_empty());
    }
}
