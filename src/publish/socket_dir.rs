//! Where the publish socket may live. Whoever can create or replace the socket file receives
//! the app's publishes (or can publish as the app), so the socket's directory must be one
//! only sockgate's user (or root) can change:
//!
//! - it is created if missing, mode `0700` (`0750` when `publish.socket_mode` gives the group
//!   access), and must then be a real directory (not a symbolic link), owned by us or root,
//!   and not writable by group or others — except a root-owned sticky directory such as
//!   `/tmp`, where nobody else can remove or replace a file we created;
//! - its own parent must not be writable by everyone without the sticky bit (anyone could
//!   rename the directory away and put theirs in its place);
//! - a file already at the socket path must be ours: one owned by another user may be a
//!   squatter's socket, and is never replaced.
//!
//! The default path, [`crate::config::default_socket_path`], is a private directory per user.

use std::fs::{DirBuilder, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::config::current_uid;

const STICKY: u32 = 0o1000;

/// Why the publish socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "publish socket {0}: another process is listening on it (is sockgate already running?); \
         stop it or set publish.socket / SIDECAR_PUBLISH__SOCKET to another path"
    )]
    InUse(PathBuf),
    #[error("publish socket {0}: the path exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("publish socket {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error(
        "publish socket {0}: {1}; refusing to start (set publish.socket / SIDECAR_PUBLISH__SOCKET \
         to a path in a directory only this user can change)"
    )]
    Unsafe(PathBuf, String),
}

/// Creates the socket's directory if needed and checks that `socket` can be bound there
/// without another user being able to take it over; see the module documentation.
pub fn prepare(socket: &Path, socket_mode: u32) -> Result<(), BindError> {
    let refuse = |reason: String| BindError::Unsafe(socket.to_owned(), reason);
    let io_err = |e| BindError::Io(socket.to_owned(), e);
    let me = current_uid();
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(e) = std::fs::symlink_metadata(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            return Err(io_err(e));
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let mode = if socket_mode & 0o070 != 0 {
            0o750
        } else {
            0o700
        };
        match DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {}
            // Someone made it in the meantime: the checks below decide.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
    check_dir(dir, &meta, me).map_err(refuse)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mode = std::fs::metadata(parent).map_err(io_err)?.mode();
        if mode & 0o002 != 0 && mode & STICKY == 0 {
            return Err(refuse(format!(
                "{} is writable by everyone without the sticky bit (mode {:o}): anyone could \
                 put their own {} in its place",
                parent.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    match std::fs::symlink_metadata(socket) {
        Ok(existing) if existing.uid() != me => Err(refuse(format!(
            "the path already exists and belongs to uid {}, not to us (uid {me}): another user \
             may be squatting it",
            existing.uid()
        ))),
        _ => Ok(()),
    }
}

fn check_dir(dir: &Path, meta: &Metadata, me: u32) -> Result<(), String> {
    let shown = dir.display();
    if meta.file_type().is_symlink() {
        return Err(format!("its directory {shown} is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(format!("{shown} is not a directory"));
    }
    let (mode, owner) = (meta.mode() & 0o7777, meta.uid());
    if owner != me && owner != 0 {
        return Err(format!(
            "its directory {shown} belongs to uid {owner}, not to us (uid {me}) or root"
        ));
    }
    let shared = mode & 0o022 != 0;
    if shared && !(mode & STICKY != 0 && owner == 0) {
        return Err(format!(
            "its directory {shown} is writable by group or others (mode {mode:o}); make it \
             0700 or 0750"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system temp dir, removed afterwards.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("sockgate-dir-test-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir(&dir).expect("scratch dir");
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn refusal(socket: &Path) -> String {
        match prepare(socket, 0o660) {
            Err(e @ BindError::Unsafe(..)) => e.to_string(),
            other => panic!("{} was accepted: {other:?}", socket.display()),
        }
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let scratch = Scratch::new("create");
        let socket = scratch.0.join("private").join("sockgate.sock");
        prepare(&socket, 0o600).expect("prepared");
        let meta = std::fs::metadata(scratch.0.join("private")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        let socket = scratch.0.join("group").join("sockgate.sock");
        prepare(&socket, 0o660).expect("prepared");
        let meta = std::fs::metadata(scratch.0.join("group")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o750);
    }

    #[test]
    fn a_world_writable_directory_is_refused() {
        let scratch = Scratch::new("0777");
        let dir = scratch.0.join("open");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let reason = refusal(&dir.join("sockgate.sock"));
        assert!(reason.contains("writable by group or others"), "{reason}");
        assert!(reason.contains(&dir.display().to_string()), "{reason}");
        // Its sockets' directory in a world-writable, non-sticky parent is refused too.
        let reason = refusal(&dir.join("sub").join("sockgate.sock"));
        assert!(reason.contains("without the sticky bit"), "{reason}");
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let scratch = Scratch::new("symlink");
        let real = scratch.0.join("real");
        std::fs::create_dir(&real).unwrap();
        let link = scratch.0.join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let reason = refusal(&link.join("sockgate.sock"));
        assert!(reason.contains("symbolic link"), "{reason}");
    }

    #[test]
    fn another_users_directory_or_socket_is_refused() {
        let scratch = Scratch::new("owner");
        let theirs = scratch.0.join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_err() {
            eprintln!("skipped: cannot chown (not root)");
            return;
        }
        let reason = refusal(&theirs.join("sockgate.sock"));
        assert!(reason.contains("belongs to uid 65534"), "{reason}");

        // A socket someone else bound first in our own directory: never taken over.
        let ours = scratch.0.join("ours");
        std::fs::create_dir(&ours).unwrap();
        let socket = ours.join("sockgate.sock");
        let squatter = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::os::unix::fs::chown(&socket, Some(65534), Some(65534)).unwrap();
        let reason = refusal(&socket);
        assert!(
            reason.contains("already exists and belongs to uid 65534"),
            "{reason}"
        );
        drop(squatter);
    }

    #[test]
    fn a_root_owned_sticky_directory_like_tmp_is_accepted() {
        let scratch = Scratch::new("sticky");
        let tmp_like = scratch.0.join("tmp");
        std::fs::create_dir(&tmp_like).unwrap();
        std::fs::set_permissions(&tmp_like, std::fs::Permissions::from_mode(0o1777)).unwrap();
        if std::fs::metadata(&tmp_like).unwrap().uid() != 0 {
            eprintln!("skipped: not root, the directory is not root-owned");
            return;
        }
        prepare(&tmp_like.join("sockgate.sock"), 0o660).expect("accepted");
    }
}
