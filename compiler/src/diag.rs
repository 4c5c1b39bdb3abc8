//! A rendered diagnostic: code, severity, message, labels, help. Phase errors become these in
//! [`crate::report`]; this module prints them for terminals (miette) and tools (JSON lines).

use crate::source::{Loc, SourceMap};
use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};
use std::fmt;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The file cannot be compiled.
    Error,
    /// The file compiles, but probably not as meant.
    Warning,
}

/// A labelled place in a source file.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    /// Where.
    pub loc: Loc,
    /// What to say there.
    pub message: String,
    /// The culprit (one per diagnostic) rather than a place an offending value came from.
    pub primary: bool,
}

/// One diagnostic, ready to print.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Stable code, such as `cnnc::shape::output_too_small`.
    pub code: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// One line saying what is wrong.
    pub message: String,
    /// The primary label first, then secondary ones.
    pub labels: Vec<Label>,
    /// How to fix it.
    pub help: Option<String>,
    /// Further lines: worked arithmetic, context.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A new diagnostic with a primary label.
    pub fn new(
        code: &'static str,
        severity: Severity,
        message: impl Into<String>,
        loc: Loc,
        label: impl Into<String>,
    ) -> Self {
        Diagnostic {
            code,
            severity,
            message: message.into(),
            labels: vec![Label { loc, message: label.into(), primary: true }],
            help: None,
            notes: Vec::new(),
        }
    }

    /// Adds a secondary label.
    pub fn label(mut self, loc: Loc, message: impl Into<String>) -> Self {
        self.labels.push(Label { loc, message: message.into(), primary: false });
        self
    }

    /// Sets the help line.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a note line.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Where the culprit is.
    pub fn primary(&self) -> Loc {
        self.labels.iter().find(|l| l.primary).or(self.labels.first()).map(|l| l.loc).unwrap_or_default()
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders for a terminal; `color` turns on ANSI colours. Where a labelled line is too long
    /// to show (miette's renderer cannot place a label past column 65,535), the diagnostic is
    /// rendered without its source excerpt, each label by line and column.
    pub fn render(&self, sources: &SourceMap, color: bool) -> String {
        if self.labels.iter().any(|l| longest_line(sources, l.loc) > MAX_SHOWN_LINE) {
            return self.plain(sources);
        }
        let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
        let handler = GraphicalReportHandler::new_themed(theme).with_width(110).with_links(false);
        let mut out = String::new();
        let report = Rendered::new(self, sources);
        if handler.render_report(&mut out, &report).is_err() {
            out = format!("{}: {}\n", self.code, self.message);
        }
        out
    }

    /// The diagnostic as plain lines: code and message, each label's place and message, help
    /// and notes.
    fn plain(&self, sources: &SourceMap) -> String {
        let kind = if self.is_error() { "error" } else { "warning" };
        let mut out = format!("{kind}[{}]: {}\n", self.code, self.message);
        for l in &self.labels {
            let f = sources.get(l.loc.file);
            let (line, col) = f.line_col(l.loc.span.start as usize);
            out += &format!(
                "  --> {}:{line}:{col} (line too long to show){}\n",
                f.name,
                if l.message.is_empty() { String::new() } else { format!(": {}", l.message) }
            );
        }
        if let Some(h) = &self.help {
            out += &format!("  help: {h}\n");
        }
        for n in &self.notes {
            out += &format!("  note: {n}\n");
        }
        out
    }

    /// One JSON object describing this diagnostic, for editors and tools.
    pub fn to_json(&self, sources: &SourceMap) -> serde_json::Value {
        let place = |loc: Loc| {
            let f = sources.get(loc.file);
            let (l1, c1) = f.line_col(loc.span.start as usize);
            let (l2, c2) = f.line_col(loc.span.end as usize);
            serde_json::json!({
                "file": f.name,
                "byte_start": loc.span.start,
                "byte_end": loc.span.end,
                "line_start": l1, "column_start": c1,
                "line_end": l2, "column_end": c2,
            })
        };
        let labels: Vec<_> = self
            .labels
            .iter()
            .map(|l| {
                let mut v = place(l.loc);
                v["message"] = l.message.clone().into();
                v["primary"] = l.primary.into();
                v
            })
            .collect();
        let mut v = place(self.primary());
        v["severity"] = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
        .into();
        v["code"] = self.code.into();
        v["message"] = self.message.clone().into();
        v["labels"] = labels.into();
        v["help"] = self.help.clone().into();
        v["notes"] = self.notes.clone().into();
        v
    }
}

/// A diagnostic bound to its primary file's text, in the form miette renders.
struct Rendered {
    code: &'static str,
    severity: Severity,
    message: String,
    source: NamedSource<String>,
    labels: Vec<LabeledSpan>,
    help: Option<String>,
}

impl Rendered {
    fn new(d: &Diagnostic, sources: &SourceMap) -> Self {
        let primary = d.primary();
        let file = sources.get(primary.file);
        let mut labels = Vec::new();
        let mut extra = Vec::new();
        for l in &d.labels {
            if l.loc.file == primary.file {
                let span = (l.loc.span.start as usize, l.loc.span.len());
                labels.push(if l.primary {
                    LabeledSpan::new_primary_with_span(Some(l.message.clone()), span)
                } else {
                    LabeledSpan::new_with_span(Some(l.message.clone()), span)
                });
            } else {
                let other = sources.get(l.loc.file);
                let (line, col) = other.line_col(l.loc.span.start as usize);
                extra.push(format!("{}:{}:{}: {}", other.name, line, col, l.message));
            }
        }
        let mut message = d.message.clone();
        for n in d.notes.iter().chain(&extra) {
            message.push_str("\n  = note: ");
            message.push_str(n);
        }
        Rendered {
            code: d.code,
            severity: d.severity,
            message,
            source: NamedSource::new(file.name.clone(), file.text.clone()),
            labels,
            help: d.help.clone(),
        }
    }
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl miette::Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(self.labels.iter().cloned()))
    }
}

/// The longest line a diagnostic shows with its source excerpt, in bytes.
const MAX_SHOWN_LINE: usize = 4096;

/// The length of the longest line that `loc` touches.
fn longest_line(sources: &SourceMap, loc: Loc) -> usize {
    let text = sources.get(loc.file).text.as_bytes();
    let (start, end) = ((loc.span.start as usize).min(text.len()), (loc.span.end as usize).min(text.len()));
    let first = text[..start].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = text[end.max(first)..].iter().position(|&b| b == b'\n').map_or(text.len(), |i| end.max(first) + i);
    text[first..last].split(|&b| b == b'\n').map(<[u8]>::len).max().unwrap_or(0)
}
