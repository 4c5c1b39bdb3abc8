//! Byte offsets (what the compiler's spans hold) to LSP positions (line and character in the
//! encoding agreed with the client, UTF-16 code units unless it offers better) and back. Every
//! conversion clamps: a position past the end of a line or of the text means its end.

use cnnc_grammar::ast::Span;
use lsp_types::{Position, PositionEncodingKind, Range};

/// How a position's `character` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Bytes of UTF-8.
    Utf8,
    /// UTF-16 code units: the protocol's default.
    #[default]
    Utf16,
    /// Characters.
    Utf32,
}

impl Encoding {
    /// The best encoding among those a client offers (UTF-16 if it names none).
    pub fn negotiate(offered: Option<&[PositionEncodingKind]>) -> Encoding {
        let offered = offered.unwrap_or_default();
        if offered.contains(&PositionEncodingKind::UTF8) {
            Encoding::Utf8
        } else if offered.contains(&PositionEncodingKind::UTF32) {
            Encoding::Utf32
        } else {
            Encoding::Utf16
        }
    }

    /// The protocol's name for it.
    pub fn kind(self) -> PositionEncodingKind {
        match self {
            Encoding::Utf8 => PositionEncodingKind::UTF8,
            Encoding::Utf16 => PositionEncodingKind::UTF16,
            Encoding::Utf32 => PositionEncodingKind::UTF32,
        }
    }

    fn units(self, c: char) -> usize {
        match self {
            Encoding::Utf8 => c.len_utf8(),
            Encoding::Utf16 => c.len_utf16(),
            Encoding::Utf32 => 1,
        }
    }
}

/// Where the lines of a text start.
#[derive(Clone, Debug)]
pub struct LineIndex {
    starts: Vec<usize>,
    encoding: Encoding,
}

impl LineIndex {
    /// The index of `text`, counting characters in `encoding`.
    pub fn new(text: &str, encoding: Encoding) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts, encoding }
    }

    /// The position of byte `offset` of `text` (clamped to the text, and back to a character start).
    pub fn position(&self, text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let start = self.starts.get(line).copied().unwrap_or(0).min(offset);
        let character: usize = text[start..offset].chars().map(|c| self.encoding.units(c)).sum();
        Position { line: line as u32, character: character as u32 }
    }

    /// The byte offset of `pos` in `text`: past the end of its line means the line's end, past the
    /// last line the text's end, inside a character that character's start.
    pub fn offset(&self, text: &str, pos: Position) -> usize {
        let Some(&start) = self.starts.get(pos.line as usize) else { return text.len() };
        let start = start.min(text.len());
        let end = self.starts.get(pos.line as usize + 1).map_or(text.len(), |&s| s.saturating_sub(1)).min(text.len());
        let mut count = 0usize;
        for (i, c) in text[start..end].char_indices() {
            let next = count + self.encoding.units(c);
            if next > pos.character as usize {
                return start + i;
            }
            count = next;
        }
        end
    }

    /// The range of a span of `text`.
    pub fn range(&self, text: &str, span: Span) -> Range {
        Range { start: self.position(text, span.start as usize), end: self.position(text, span.end as usize) }
    }

    /// The span of a range of `text` (start and end ordered).
    pub fn span(&self, text: &str, range: Range) -> Span {
        let (a, b) = (self.offset(text, range.start), self.offset(text, range.end));
        Span::new(a.min(b), a.max(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_positions_round_trip_through_non_ascii_text() {
        let text = "a = 1 // é·x\n𝔵 = é\n";
        let index = LineIndex::new(text, Encoding::Utf16);
        for (offset, _) in text.char_indices() {
            let pos = index.position(text, offset);
            assert_eq!(index.offset(text, pos), offset, "{pos:?}");
        }
        assert_eq!(index.position(text, text.find('x').unwrap()), Position::new(0, 11));
        assert_eq!(index.position(text, text.len()), Position::new(2, 0));
        let second = text.find('𝔵').unwrap();
        assert_eq!(index.position(text, second + 4), Position::new(1, 2));
        // Inside the surrogate pair of `𝔵` means its start.
        assert_eq!(index.offset(text, Position::new(1, 1)), second);
    }

    #[test]
    fn positions_past_the_end_clamp() {
        let text = "ab\ncd";
        let index = LineIndex::new(text, Encoding::Utf16);
        assert_eq!(index.offset(text, Position::new(0, 99)), 2);
        assert_eq!(index.offset(text, Position::new(9, 0)), 5);
        assert_eq!(index.position(text, 99), Position::new(1, 2));
    }

    #[test]
    fn utf8_and_utf32_count_bytes_and_characters() {
        let text = "é = x";
        let x = text.find('x').unwrap();
        assert_eq!(LineIndex::new(text, Encoding::Utf8).position(text, x), Position::new(0, 5));
        assert_eq!(LineIndex::new(text, Encoding::Utf32).position(text, x), Position::new(0, 4));
        let offered = [PositionEncodingKind::UTF32, PositionEncodingKind::UTF8];
        assert_eq!(Encoding::negotiate(Some(&offered)), Encoding::Utf8);
        assert_eq!(Encoding::negotiate(None), Encoding::Utf16);
    }
}
