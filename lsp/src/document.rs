//! An open document: its text as the editor has it, edits applied to it, and its latest
//! [`Analysis`], redone lazily after a change. A [`View`] binds them with what turns compiler
//! locations into editor ones.

use crate::analysis::{analyze, Analysis, INTERNAL};
use crate::files::{to_path, StdFiles};
use crate::position::{Encoding, LineIndex};
use cnnc_compiler::source::{FileId, Loc};
use cnnc_grammar::ast::Span;
use lsp_types::{Location, Range, TextDocumentContentChangeEvent, Uri};

/// An open document.
#[derive(Debug)]
pub struct Document {
    /// Its URI.
    pub uri: Uri,
    /// The editor's version of it.
    pub version: i32,
    /// Its text.
    pub text: String,
    /// Line starts of `text`.
    pub lines: LineIndex,
    /// Whether its diagnostics changed since they were last published.
    pub needs_publish: bool,
    encoding: Encoding,
    analysis: Option<Analysis>,
    /// A check that outlived its deadline: its result replaces the stand-in when it comes.
    pending: Option<std::sync::mpsc::Receiver<std::thread::Result<Analysis>>>,
}

impl Document {
    /// A document opened with `text`.
    pub fn new(uri: Uri, version: i32, text: String, encoding: Encoding) -> Self {
        let lines = LineIndex::new(&text, encoding);
        Document { uri, version, text, lines, needs_publish: true, encoding, analysis: None, pending: None }
    }

    /// Applies the editor's changes, in order: a change with a range replaces that range, one
    /// without replaces the whole text.
    pub fn change(&mut self, version: i32, changes: Vec<TextDocumentContentChangeEvent>) {
        for c in changes {
            match c.range {
                Some(range) => {
                    let span = self.lines.span(&self.text, range);
                    self.text.replace_range(span.start as usize..span.end as usize, &c.text);
                }
                None => self.text = c.text,
            }
            self.lines = LineIndex::new(&self.text, self.encoding);
        }
        self.version = version;
        self.invalidate();
    }

    /// Marks the analysis stale (a file it uses changed).
    pub fn invalidate(&mut self) {
        self.analysis = None;
        self.pending = None;
        self.needs_publish = true;
    }

    /// Takes the result of a check that outlived its deadline, if it has come.
    pub fn poll(&mut self) {
        let Some(receive) = &self.pending else { return };
        match receive.try_recv() {
            Ok(result) => {
                self.analysis = Some(result.unwrap_or_else(|_| crashed()));
                self.pending = None;
                self.needs_publish = true;
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
            Err(std::sync::mpsc::TryRecvError::Disconnected) => self.pending = None,
        }
    }

    fn ensure(&mut self) {
        self.poll();
        if self.analysis.is_none() {
            let (analysis, pending) = check(&self.uri, &self.text);
            self.analysis = Some(analysis);
            self.pending = pending;
        }
    }

    /// Whether the analysis is stale.
    pub fn is_stale(&self) -> bool {
        self.analysis.is_none()
    }

    /// The analysis of the current text, checking it if needed.
    pub fn analysis(&mut self) -> &Analysis {
        self.ensure();
        self.analysis.get_or_insert_with(crashed)
    }

    /// The analysis and what features need with it.
    pub fn view<'a>(&'a mut self, std: &'a StdFiles) -> View<'a> {
        self.ensure();
        let Document { uri, text, lines, analysis, encoding, .. } = self;
        let analysis = analysis.get_or_insert_with(crashed);
        View { analysis, text, lines, uri, std, encoding: *encoding }
    }
}

/// How long the server waits for one check before it answers without it.
pub const DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Checks a document's text; a `file:` document is checked at its path (for relative `use`). A
/// failure inside the compiler becomes a diagnostic asking for a bug report. The check runs on a
/// worker thread: past [`DEADLINE`] the server goes on with a diagnostic saying so, and the
/// worker ends on its own (elaboration has a work budget), so no text freezes the server.
fn check(uri: &Uri, text: &str) -> (Analysis, Option<std::sync::mpsc::Receiver<std::thread::Result<Analysis>>>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    /// Checks still running after their deadline, at most a few: a client that edits a slow
    /// file quickly must not pile them up.
    static OVERDUE: AtomicUsize = AtomicUsize::new(0);
    if OVERDUE.load(Ordering::SeqCst) >= 2 {
        let busy = "the server is still checking earlier versions of slow files; edit again in a moment";
        return (failed(busy, "not checked yet"), None);
    }
    let path = to_path(uri);
    let name = path.as_ref().map_or_else(|| uri.as_str().to_string(), |p| p.display().to_string());
    let (send, receive) = std::sync::mpsc::channel();
    // 0 running, 1 finished, 2 overdue (counted in OVERDUE until it finishes).
    let state = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
    let worker_state = state.clone();
    let text = text.to_string();
    let worker = std::thread::Builder::new().name("cnnc-check".into()).spawn(move || {
        let analysis = std::panic::catch_unwind(|| analyze(&name, path.as_deref(), &text));
        if worker_state.swap(1, Ordering::SeqCst) == 2 {
            OVERDUE.fetch_sub(1, Ordering::SeqCst);
        }
        let _ = send.send(analysis);
    });
    if worker.is_err() {
        return (failed("the language server could not start a thread to check this file", "try again"), None);
    }
    match receive.recv_timeout(DEADLINE) {
        Ok(Ok(analysis)) => (analysis, None),
        Ok(Err(_)) => (crashed(), None),
        Err(_) => {
            // Counted before it is marked overdue, so that the worker's decrement follows it;
            // not counted if the worker finished in the meantime.
            OVERDUE.fetch_add(1, Ordering::SeqCst);
            if state.compare_exchange(0, 2, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                OVERDUE.fetch_sub(1, Ordering::SeqCst);
            }
            let slow =
                format!("checking this file is taking longer than {} s; its result will follow", DEADLINE.as_secs());
            (failed(&slow, "check `repeat` counts and how deeply blocks call blocks"), Some(receive))
        }
    }
}

fn crashed() -> Analysis {
    failed("internal compiler error while checking this file", "this is a bug in cnnc: please report it")
}

/// An analysis that is one error on the file's start.
fn failed(message: &str, label: &str) -> Analysis {
    let compilation = cnnc_compiler::Compilation {
        program: Default::default(),
        problems: Vec::new(),
        models: Vec::new(),
        trains: Vec::new(),
        internal: Vec::new(),
    };
    let diagnostic = cnnc_compiler::diag::Diagnostic::new(
        INTERNAL,
        cnnc_compiler::diag::Severity::Error,
        message.to_string(),
        Loc::default(),
        label.to_string(),
    );
    Analysis { compilation, diagnostics: vec![diagnostic], index: Default::default(), recovered: None }
}

/// A document's analysis with its text, for answering requests.
pub struct View<'a> {
    /// The analysis.
    pub analysis: &'a Analysis,
    /// The document's text (the entry file's offsets are offsets into it).
    pub text: &'a str,
    /// Its lines.
    pub lines: &'a LineIndex,
    /// Its URI.
    pub uri: &'a Uri,
    /// The standard library's files.
    pub std: &'a StdFiles,
    /// The position encoding.
    pub encoding: Encoding,
}

impl View<'_> {
    /// The range of a span of the document.
    pub fn range(&self, span: Span) -> Range {
        self.lines.range(self.text, span)
    }

    /// The byte offset of a position in the document.
    pub fn offset(&self, pos: lsp_types::Position) -> usize {
        self.lines.offset(self.text, pos)
    }

    /// Where a compiler location is, in this document or another file.
    pub fn location(&self, loc: Loc) -> Option<Location> {
        if loc.file == FileId(0) {
            return Some(Location { uri: self.uri.clone(), range: self.range(loc.span) });
        }
        let sources = &self.analysis.compilation.program.sources;
        let uri = self.std.uri(sources, loc.file)?;
        let text = &sources.get(loc.file).text;
        let lines = LineIndex::new(text, self.encoding);
        Some(Location { uri, range: lines.range(text, loc.span) })
    }
}
