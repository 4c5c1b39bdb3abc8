//! Files in and out. Writes are atomic: the bytes go to a temporary file in the same folder,
//! created exclusively under a random name (never through a symbolic link another user left),
//! flushed to disk (`fsync`) and renamed over the target; then the folder itself is flushed, so
//! the rename survives a crash. A reader sees the old file or the new one, never a part of
//! either, and a killed run leaves no temporary file behind it to pile up under a fixed name.
//! Reads take regular files only: a FIFO would block forever and `/dev/zero` never ends.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut file = tempfile::Builder::new().prefix(&format!(".{name}.")).suffix(".tmp").tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    // On an error the temporary file is removed when `file` is dropped.
    file.persist(path).map_err(|e| e.error)?;
    // Flushing a folder is how POSIX makes a rename durable; where a folder cannot be opened as
    // a file (not on Linux) the rename stands without it.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Encodes 8-bit pixels `[height, width, channels]` (1: grey, 3: RGB) as a PNG and writes it to
/// `path` atomically.
pub fn write_png(path: &Path, pixels: &[u8], width: usize, height: usize, channels: usize) -> Result<(), String> {
    let color = match channels {
        1 => image::ExtendedColorType::L8,
        3 => image::ExtendedColorType::Rgb8,
        c => return Err(format!("a PNG has 1 or 3 channels here, not {c}")),
    };
    let mut png = std::io::Cursor::new(Vec::new());
    image::write_buffer_with_format(&mut png, pixels, width as u32, height as u32, color, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    write(path, png.get_ref()).map_err(|e| e.to_string())
}

/// Removes from `dir` the temporary files that writes of `names` (files of `dir`) left behind
/// when their run was killed before it could remove them: regular files named as [`write`]
/// names them (`.NAME.XXXXXX.tmp`), never following a symbolic link.
pub fn clean(dir: &Path, names: &[&str]) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let ours = names.iter().any(|n| file.starts_with(&format!(".{n}.")) && file.ends_with(".tmp"));
        if ours && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads the whole of `path`, which must be a regular file (not a FIFO, a device or a folder).
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    regular(path)?;
    std::fs::read(path)
}

/// An error unless `path` is a regular file (symbolic links followed).
pub fn regular(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        Ok(())
    } else {
        let what = if meta.is_dir() { "a folder" } else { "not a regular file (a FIFO, a socket or a device)" };
        Err(std::io::Error::other(format!("it is {what}; cnnc reads regular files")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("cnnc-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.txt");
        super::write(&path, b"one").unwrap();
        super::write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cleaning_removes_only_the_temporary_files_of_the_names_given() {
        let dir = tempfile::tempdir().unwrap();
        for name in
            [".weights.safetensors.a1b2c3.tmp", ".other.x.tmp", "weights.safetensors", ".state.safetensors.zz.tmp"]
        {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        super::clean(dir.path(), &["weights.safetensors", "state.safetensors"]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".other.x.tmp", "weights.safetensors"]);
    }

    #[test]
    fn reads_only_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        for path in [fifo.as_path(), std::path::Path::new("/dev/zero"), dir.path()] {
            let e = super::read(path).unwrap_err().to_string();
            assert!(e.contains("cnnc reads regular files"), "{}: {e}", path.display());
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(super::read(&file).unwrap(), b"x");
    }
}
