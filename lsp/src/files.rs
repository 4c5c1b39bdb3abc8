//! Files as editors name them: `file:` URIs to paths and back, and the standard library written
//! out to a cache folder (`$XDG_CACHE_HOME/cnnc/std/`, else `~/.cache/cnnc/std/`) so that going
//! to a definition in `std.resnet` opens a real file.

use cnnc_compiler::source::{FileId, SourceMap};
use cnnc_compiler::stdlib;
use lsp_types::Uri;
use std::path::{Path, PathBuf};

/// The path of a `file:` URI.
pub fn to_path(uri: &Uri) -> Option<PathBuf> {
    url::Url::parse(uri.as_str()).ok()?.to_file_path().ok()
}

/// The `file:` URI of an absolute path.
pub fn to_uri(path: &Path) -> Option<Uri> {
    url::Url::from_file_path(path).ok()?.as_str().parse().ok()
}

/// The standard library's modules as files on disk.
#[derive(Clone, Debug, Default)]
pub struct StdFiles {
    dir: Option<PathBuf>,
}

impl StdFiles {
    /// Writes every standard module to the cache folder (only those whose text differs). If no
    /// folder can be written, standard modules have no file and no URI.
    pub fn materialize() -> Self {
        let dir = cache_dir().filter(|dir| write_all(dir).is_ok());
        StdFiles { dir }
    }

    /// The folder the modules are in.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The file of standard module `name` (`resnet`).
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        stdlib::source(name)?;
        Some(self.dir.as_ref()?.join(format!("{name}.cnn")))
    }

    /// The standard module a source file name (`std/resnet.cnn`) stands for.
    pub fn module_of(name: &str) -> Option<&str> {
        name.strip_prefix("std/")?.strip_suffix(".cnn").filter(|m| stdlib::source(m).is_some())
    }

    /// The URI of a loaded file: its path, or the cached copy of a standard module.
    pub fn uri(&self, sources: &SourceMap, file: FileId) -> Option<Uri> {
        let f = sources.get(file);
        match &f.path {
            Some(p) => to_uri(&absolute(p)),
            None => to_uri(&self.path(Self::module_of(&f.name)?)?),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// The per-user cache of the standard library's files: under `XDG_CACHE_HOME` or `HOME`, else a
/// folder of this user's own in the temporary directory (see [`private_dir`]).
fn cache_dir() -> Option<PathBuf> {
    let absolute_var = |name: &str| std::env::var_os(name).map(PathBuf::from).filter(|p| p.is_absolute());
    match absolute_var("XDG_CACHE_HOME").or_else(|| absolute_var("HOME").map(|h| h.join(".cache"))) {
        Some(base) => Some(base.join("cnnc").join("std")),
        None => private_dir(),
    }
}

/// `cnnc-std-UID` in the temporary directory, made with mode 0700 if missing, and used only if
/// it is a real folder (not a symbolic link) that this user owns and no one else can write:
/// another local user cannot plant it and have the server write through it.
#[cfg(unix)]
fn private_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let dir = std::env::temp_dir().join(format!("cnnc-std-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = std::fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o022 == 0).then_some(dir)
}

#[cfg(not(unix))]
fn private_dir() -> Option<PathBuf> {
    None
}

/// Writes each module whose file is missing or differs, through a temporary file (created
/// exclusively under a random name) and a rename so that a reader never sees half a file.
fn write_all(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    for (name, text) in stdlib::MODULES {
        let path = dir.join(format!("{name}.cnn"));
        if std::fs::read(&path).is_ok_and(|old| old == text.as_bytes()) {
            continue;
        }
        let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.cnn.")).suffix(".tmp").tempfile_in(dir)?;
        tmp.write_all(text.as_bytes())?;
        tmp.persist(&path).map_err(|e| e.error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_paths_round_trip_with_odd_characters() {
        let path = Path::new("/tmp/a dir/é #1.cnn");
        let uri = to_uri(path).unwrap();
        assert_eq!(uri.as_str(), "file:///tmp/a%20dir/%C3%A9%20%231.cnn");
        assert_eq!(to_path(&uri).unwrap(), path);
        assert!(to_path(&"untitled:Untitled-1".parse().unwrap()).is_none());
    }

    #[test]
    fn standard_module_names() {
        assert_eq!(StdFiles::module_of("std/resnet.cnn"), Some("resnet"));
        assert_eq!(StdFiles::module_of("std/nope.cnn"), None);
        assert_eq!(StdFiles::module_of("resnet.cnn"), None);
    }
}

#[cfg(all(test, unix))]
mod private_tests {
    #[test]
    fn the_fallback_cache_is_a_private_folder_of_this_user() {
        use std::os::unix::fs::MetadataExt;
        let dir = super::private_dir().expect("a private folder");
        let meta = std::fs::symlink_metadata(&dir).unwrap();
        assert!(meta.is_dir() && !meta.file_type().is_symlink());
        // SAFETY: getuid has no preconditions.
        assert_eq!(meta.uid(), unsafe { libc::getuid() });
        assert_eq!(meta.mode() & 0o022, 0, "no one else can write it");
        super::write_all(&dir).unwrap();
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "no temporary file left: {names:?}");
        assert!(names.iter().any(|n| n == "resnet.cnn"), "{names:?}");
    }
}
