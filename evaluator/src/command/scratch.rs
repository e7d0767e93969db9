//! The private directory a command runs in: created empty for one run (mode 0700, under the
//! system temp dir), removed afterwards whatever the command did to it.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A directory of our own, removed on [`ScratchDir::remove`] or, failing that, on drop.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    removed: bool,
}

impl ScratchDir {
    /// Creates `evokernel-command-*` under [`std::env::temp_dir`].
    pub fn create() -> io::Result<ScratchDir> {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let path = base.join(format!(
                "evokernel-command-{}-{}",
                std::process::id(),
                CREATED.fetch_add(1, Ordering::Relaxed)
            ));
            // Creating (not reusing) the directory is what makes it ours: a name left by an
            // earlier process with our pid is skipped.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(ScratchDir {
                        path,
                        removed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and everything in it, first restoring our permission to do so
    /// where the command took it away.
    pub fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        remove_all(&self.path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.removed {
            let _ = remove_all(&self.path);
        }
    }
}

fn remove_all(path: &Path) -> io::Result<()> {
    if fs::remove_dir_all(path).is_ok() || !path.exists() {
        return Ok(());
    }
    make_removable(path);
    fs::remove_dir_all(path)
}

/// Gives us rwx on every directory below `path` (symlinks are not followed).
fn make_removable(path: &Path) {
    let _ = fs::set_permissions(path, Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            make_removable(&entry.path());
        }
    }
}
