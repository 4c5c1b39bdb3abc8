//! `cnnc fmt FILE... [--check]`: formats files in place, each written to a temporary file beside
//! it and renamed over it (so a crash never leaves half a file), or, with `--check`, lists the
//! files that would change. Exit status: 0 all formatted, 1 a file would change (`--check`) or
//! cannot be formatted (it does not lex), 2 a file cannot be read or written.

use cnnc_grammar::format::format;
use std::io::Write;
use std::path::Path;

/// What happened to the files, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A file could not be read or written.
    Io,
    /// A file cannot be formatted, or would change under `--check`.
    Unformatted,
    /// Every file is formatted.
    Formatted,
}

impl Outcome {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Formatted => 0,
            Outcome::Unformatted => 1,
            Outcome::Io => 2,
        }
    }
}

/// Formats `files` (or checks them), reporting on `out` and `err`.
pub fn run(files: &[impl AsRef<Path>], check: bool, out: &mut impl Write, err: &mut impl Write) -> Outcome {
    let mut outcome = Outcome::Formatted;
    for file in files {
        let file = file.as_ref();
        outcome = outcome.min(one(file, check, out, err));
    }
    outcome
}

fn one(file: &Path, check: bool, out: &mut impl Write, err: &mut impl Write) -> Outcome {
    let name = file.display();
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(err, "error: cannot read `{name}`: {e}");
            return Outcome::Io;
        }
    };
    let Ok(text) = String::from_utf8(bytes) else {
        let _ = writeln!(err, "error: cannot format `{name}`: it is not UTF-8 text");
        return Outcome::Unformatted;
    };
    let formatted = match format(&text) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "error: cannot format {name}:{e}");
            return Outcome::Unformatted;
        }
    };
    if formatted == text {
        return Outcome::Formatted;
    }
    if check {
        let _ = writeln!(out, "would reformat {name}");
        return Outcome::Unformatted;
    }
    match replace(file, &formatted) {
        Ok(()) => {
            let _ = writeln!(out, "formatted {name}");
            Outcome::Formatted
        }
        Err(e) => {
            let _ = writeln!(err, "error: cannot write `{name}`: {e}");
            Outcome::Io
        }
    }
}

/// Writes `text` to a temporary file in `file`'s folder (created exclusively under a random
/// name, never through a symbolic link), with `file`'s permissions, and renames it over `file`.
fn replace(file: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{base}.cnnc-fmt.")).suffix(".tmp").tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    std::fs::set_permissions(tmp.path(), std::fs::metadata(file)?.permissions())?;
    // On an error the temporary file is removed when `tmp` is dropped.
    tmp.persist(file).map(|_| ()).map_err(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_checks_and_refuses() {
        let dir = std::env::temp_dir().join(format!("cnnc-fmt-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let messy = dir.join("messy.cnn");
        let bad = dir.join("bad.cnn");
        std::fs::write(&messy, "model M {\ninput i:[4]\n output o=i }").unwrap();
        std::fs::write(&bad, "model M { x = @ }").unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run(&[&messy], true, &mut out, &mut err), Outcome::Unformatted);
        assert!(String::from_utf8_lossy(&out).contains("would reformat"));
        assert_eq!(run(&[&messy], false, &mut out, &mut err), Outcome::Formatted);
        assert_eq!(std::fs::read_to_string(&messy).unwrap(), "model M {\n    input i: [4]\n    output o = i }\n");
        assert_eq!(run(&[&messy], true, &mut out, &mut err), Outcome::Formatted);
        assert_eq!(run(&[&messy, &bad], false, &mut out, &mut err), Outcome::Unformatted);
        assert!(String::from_utf8_lossy(&err).contains("bad.cnn:1:15: unexpected character `@`"));
        assert_eq!(run(&[dir.join("missing.cnn")], false, &mut out, &mut err), Outcome::Io);
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
            .count();
        assert_eq!(leftovers, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
