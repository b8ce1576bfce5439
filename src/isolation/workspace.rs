//! Directories an instance owns — its workspace, HOME and private tmp — created 0700 and owned
//! by the instance's user. Their parents are 0711: agents can reach their own directory by
//! name but cannot list the others. Symlinks are never followed.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

fn ctx(action: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{action} {}: {e}", path.display()))
}

/// A parent of per-instance directories: created if missing, mode 0711.
pub fn ensure_parent(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path).map_err(|e| ctx("creating", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| ctx("restricting", path, e))
}

/// Creates `path` (its parent must exist) or accepts an existing real directory; sets 0700
/// and, with `owner`, hands it (and what agents left in it) to that user.
pub fn ensure_private_dir(
    path: &Path,
    owner: Option<(u32, u32)>,
    is_agent_uid: &dyn Fn(u32) -> bool,
) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = std::fs::symlink_metadata(path).map_err(|e| ctx("reading", path, e))?;
            if !meta.is_dir() {
                return Err(io::Error::other(format!(
                    "{} exists and is not a directory (symlinks are refused)",
                    path.display()
                )));
            }
        }
        Err(e) => return Err(ctx("creating", path, e)),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| ctx("restricting", path, e))?;
    if let Some((uid, gid)) = owner {
        hand_over(path, uid, gid, is_agent_uid)?;
    }
    Ok(())
}

/// Gives `root` and everything beneath it to `uid:gid`, without following symlinks or leaving
/// the file system. A file with other hard links that no agent owns is skipped: it may be a
/// link to something outside the tree.
pub fn hand_over(
    root: &Path,
    uid: u32,
    gid: u32,
    is_agent_uid: &dyn Fn(u32) -> bool,
) -> io::Result<()> {
    let top = std::fs::symlink_metadata(root).map_err(|e| ctx("reading", root, e))?;
    let dev = top.dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ctx("reading", &p, e)),
        };
        if meta.dev() != dev {
            continue;
        }
        let foreign_link = !meta.is_dir() && meta.nlink() > 1 && !is_agent_uid(meta.uid());
        if (meta.uid() != uid || meta.gid() != gid) && !foreign_link {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                .map_err(|e| ctx("changing the owner of", &p, e))?;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(|e| ctx("listing", &p, e))? {
                stack.push(entry.map_err(|e| ctx("listing", &p, e))?.path());
            }
        }
    }
    Ok(())
}

/// Removes a directory tree; already gone is success.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ctx("removing", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn private_dirs_are_0700_and_parents_0711() {
        let t = tempfile::tempdir().unwrap();
        let parent = t.path().join("homes");
        ensure_parent(&parent).unwrap();
        assert_eq!(mode(&parent), 0o711);
        let d = parent.join("w1");
        ensure_private_dir(&d, None, &|_| false).unwrap();
        assert_eq!(mode(&d), 0o700);
        // again: accepted as it is
        ensure_private_dir(&d, None, &|_| false).unwrap();
        std::os::unix::fs::symlink(&d, parent.join("link")).unwrap();
        let e = ensure_private_dir(&parent.join("link"), None, &|_| false).unwrap_err();
        assert!(e.to_string().contains("symlinks are refused"), "{e}");
    }

    #[test]
    fn hand_over_to_self_is_a_no_op_and_does_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        let ws = t.path().join("ws");
        std::fs::create_dir_all(ws.join("sub")).unwrap();
        std::fs::write(ws.join("sub/f"), "y").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("l")).unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        hand_over(&ws, uid, gid, &|_| false).unwrap();
        assert_eq!(std::fs::metadata(ws.join("sub/f")).unwrap().uid(), uid);
        remove_tree(&ws).unwrap();
        remove_tree(&ws).unwrap();
        assert!(outside.exists(), "the symlink's target survives");
    }
}
