//! Read-only access to an instance's workspace, confined to it: relative paths only, no `..`,
//! and every path is canonicalised and checked to lie under the workspace, so a symlink that
//! points outside is refused too. Reads are bounded.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use super::SupervisorError;

pub const MAX_ENTRIES: usize = 1000;
pub const MAX_READ_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<Entry>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileChunk {
    pub path: String,
    pub size: u64,
    pub offset: u64,
    pub text: String,
    /// Bytes that are not valid UTF-8 were replaced (the file is probably binary).
    pub lossy: bool,
    pub truncated: bool,
}

fn invalid(msg: String) -> SupervisorError {
    SupervisorError::InvalidArgument(msg)
}

/// Resolves `rel` inside `root`, refusing anything that could leave it.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, SupervisorError> {
    if rel.contains('\0') {
        return Err(invalid("path contains a NUL byte".into()));
    }
    let p = Path::new(rel);
    if p.is_absolute() {
        return Err(invalid(format!(
            "path {rel:?} is absolute; give a path relative to the instance's workspace"
        )));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(invalid(format!(
            "path {rel:?} contains '..'; paths must stay inside the workspace"
        )));
    }
    let root = root
        .canonicalize()
        .map_err(|e| SupervisorError::NotFound(format!("workspace {}: {e}", root.display())))?;
    let full = root.join(p);
    let real = full.canonicalize().map_err(|_| {
        SupervisorError::NotFound(format!(
            "no such file or directory in the workspace: {rel:?}"
        ))
    })?;
    if !real.starts_with(&root) {
        return Err(invalid(format!(
            "path {rel:?} leads outside the workspace (through a symlink)"
        )));
    }
    Ok(real)
}

pub fn list(root: &Path, rel: &str, max: usize) -> Result<Listing, SupervisorError> {
    let dir = resolve(root, rel)?;
    if !dir.is_dir() {
        return Err(invalid(format!("{rel:?} is not a directory")));
    }
    let max = max.clamp(1, MAX_ENTRIES);
    let mut entries = Vec::new();
    let read = std::fs::read_dir(&dir)
        .map_err(|e| SupervisorError::Backend(format!("listing {rel:?}: {e}")))?;
    let mut truncated = false;
    for e in read.flatten() {
        if entries.len() == max {
            truncated = true;
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let ft = meta.file_type();
        entries.push(Entry {
            name: e.file_name().to_string_lossy().into_owned(),
            kind: if ft.is_symlink() {
                "symlink"
            } else if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            },
            size: meta.len(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Listing {
        path: rel.to_string(),
        entries,
        truncated,
    })
}

pub fn read(root: &Path, rel: &str, offset: u64, max: usize) -> Result<FileChunk, SupervisorError> {
    let path = resolve(root, rel)?;
    if !path.is_file() {
        return Err(invalid(format!("{rel:?} is not a regular file")));
    }
    let max = max.clamp(1, MAX_READ_BYTES);
    let mut f = std::fs::File::open(&path)
        .map_err(|e| SupervisorError::Backend(format!("opening {rel:?}: {e}")))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if offset > size {
        return Err(invalid(format!(
            "offset {offset} is past the end of {rel:?} ({size} bytes)"
        )));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| SupervisorError::Backend(e.to_string()))?;
    let mut buf = Vec::with_capacity(max.min(size as usize));
    f.take(max as u64)
        .read_to_end(&mut buf)
        .map_err(|e| SupervisorError::Backend(format!("reading {rel:?}: {e}")))?;
    let text = String::from_utf8_lossy(&buf);
    Ok(FileChunk {
        path: rel.to_string(),
        size,
        offset,
        lossy: matches!(text, std::borrow::Cow::Owned(_)),
        truncated: offset + (buf.len() as u64) < size,
        text: text.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/a.txt"), "hello world").unwrap();
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), ws.join("escape")).unwrap();
        std::os::unix::fs::symlink("sub/a.txt", ws.join("inside")).unwrap();
        assert!(resolve(&ws, "/etc/passwd")
            .unwrap_err()
            .to_string()
            .contains("absolute"));
        assert!(resolve(&ws, "sub/../../secret")
            .unwrap_err()
            .to_string()
            .contains("'..'"));
        assert!(resolve(&ws, "escape")
            .unwrap_err()
            .to_string()
            .contains("outside the workspace"));
        assert!(resolve(&ws, "missing")
            .unwrap_err()
            .to_string()
            .contains("no such file"));
        assert_eq!(read(&ws, "inside", 0, 5).unwrap().text, "hello");
        let c = read(&ws, "sub/a.txt", 6, 100).unwrap();
        assert_eq!((c.text.as_str(), c.truncated, c.size), ("world", false, 11));
        assert!(read(&ws, "sub/a.txt", 0, 5).unwrap().truncated);
        let l = list(&ws, ".", 10).unwrap();
        let names: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.kind))
            .collect();
        assert_eq!(
            names,
            [("escape", "symlink"), ("inside", "symlink"), ("sub", "dir")]
        );
        assert!(list(&ws, ".", 1).unwrap().truncated);
    }
}
