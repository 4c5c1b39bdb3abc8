//! Formatting a document: the formatter's output as one edit over the lines that differ, so that
//! the editor keeps the cursor and folds of the lines around.

use crate::position::LineIndex;
use cnnc_grammar::format::{format, FormatError};
use lsp_types::{Range, TextEdit};

/// The edits that format `text`: none when it is formatted already.
pub fn edits(text: &str, lines: &LineIndex) -> Result<Vec<TextEdit>, FormatError> {
    let formatted = format(text)?;
    if formatted == text {
        return Ok(Vec::new());
    }
    let old: Vec<&str> = text.split_inclusive('\n').collect();
    let new: Vec<&str> = formatted.split_inclusive('\n').collect();
    let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    let start: usize = old[..prefix].iter().map(|l| l.len()).sum();
    let end: usize = text.len() - old[old.len() - suffix..].iter().map(|l| l.len()).sum::<usize>();
    let new_text = new[prefix..new.len() - suffix].concat();
    let range = Range { start: lines.position(text, start), end: lines.position(text, end) };
    Ok(vec![TextEdit { range, new_text }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::position::Encoding;

    fn apply(text: &str, edits: &[TextEdit]) -> String {
        let lines = LineIndex::new(text, Encoding::Utf16);
        let mut out = text.to_string();
        for e in edits.iter().rev() {
            let span = lines.span(text, e.range);
            out.replace_range(span.start as usize..span.end as usize, &e.new_text);
        }
        out
    }

    #[test]
    fn one_edit_over_the_lines_that_change() {
        let text = "// é\nmodel M {\ninput i:[4]\n    output o = i\n}";
        let lines = LineIndex::new(text, Encoding::Utf16);
        let edits = edits(text, &lines).unwrap();
        assert_eq!(edits.len(), 1);
        assert_eq!(edits[0].range.start.line, 2);
        assert_eq!(apply(text, &edits), format(text).unwrap());
        let formatted = format(text).unwrap();
        assert!(super::edits(&formatted, &LineIndex::new(&formatted, Encoding::Utf16)).unwrap().is_empty());
    }
}
