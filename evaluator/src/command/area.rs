//! One evaluation's private files, under a fresh scratch directory: the candidate's directory
//! and its saved stdout (with `candidate_command`), the grader's directory, the results
//! directory, and in namespaces a `/dev/shm` for each run.
//!
//! In namespaces the scratch directory is a tmpfs with a byte and an inode quota that only
//! the evaluation's [`Holder`] and its sandboxes see; we reach it through the holder (see
//! [`Area::outside`]). In the process-group sandbox it is a plain directory on disk.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::holder::Holder;
use super::scratch::ScratchDir;

/// Inodes the layout itself takes (the root and the parts), beyond the user's quota.
const LAYOUT_INODES: u64 = 8;

/// A part of the area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Candidate,
    CandidateStdout,
    CandidateShm,
    Grader,
    GraderShm,
    Results,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Candidate => "candidate",
            Part::CandidateStdout => "candidate.stdout",
            Part::CandidateShm => "candidate.shm",
            Part::Grader => "grader",
            Part::GraderShm => "grader.shm",
            Part::Results => "results",
        }
    }
}

/// The size limits of an area in namespaces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quota {
    pub bytes: u64,
    pub files: u64,
}

#[derive(Debug)]
pub(crate) struct Area {
    // Declared first so that it is dropped first: the tmpfs goes before its mount point.
    holder: Option<Holder>,
    scratch: ScratchDir,
}

impl Area {
    /// A fresh area: a tmpfs held in namespaces with `quota`, or a plain directory without.
    pub(crate) fn create(quota: Option<Quota>) -> io::Result<Area> {
        let scratch = ScratchDir::create()?;
        let holder = match quota {
            Some(quota) => Some(Holder::start(
                scratch.path(),
                quota.bytes,
                quota.files + LAYOUT_INODES,
            )?),
            None => None,
        };
        Ok(Area { holder, scratch })
    }

    /// The part's path as the commands see it.
    pub(crate) fn path(&self, part: Part) -> PathBuf {
        self.scratch.path().join(part.name())
    }

    /// Whether `path`, as the commands see it, lies in the area.
    pub(crate) fn contains(&self, path: &Path) -> bool {
        path.starts_with(self.scratch.path())
    }

    /// Where we read and write `path`, a path as the commands see it.
    pub(crate) fn outside(&self, path: &Path) -> PathBuf {
        match &self.holder {
            Some(holder) if self.contains(path) => holder.outside_view(path),
            _ => path.to_path_buf(),
        }
    }

    pub(crate) fn holder(&self) -> Option<&Holder> {
        self.holder.as_ref()
    }

    /// Creates the part as an empty directory, removing whatever a command left there.
    pub(crate) fn fresh_dir(&self, part: Part) -> io::Result<PathBuf> {
        let path = self.outside(&self.path(part));
        remove_entry(&path)?;
        fs::create_dir(&path)?;
        Ok(path)
    }

    /// Creates the part as a file holding `bytes`, removing whatever a command left there.
    pub(crate) fn fresh_file(&self, part: Part, bytes: &[u8]) -> io::Result<()> {
        let path = self.outside(&self.path(part));
        remove_entry(&path)?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut file| io::Write::write_all(&mut file, bytes))
    }

    /// Removes, below the part, everything but regular files and directories — symbolic
    /// links above all, which a later run would follow into what it can see and the
    /// candidate cannot — and returns how many. Directories are made ours to list first,
    /// so that none can hide an entry.
    pub(crate) fn scrub(&self, part: Part) -> io::Result<usize> {
        scrub(&self.outside(&self.path(part)))
    }

    /// Whether a quota is exhausted: no byte or no inode left (only in namespaces).
    pub(crate) fn is_full(&self) -> bool {
        let Some(holder) = &self.holder else {
            return false;
        };
        let root = holder.outside_view(self.scratch.path());
        let Ok(root) = std::ffi::CString::new(root.into_os_string().into_encoded_bytes()) else {
            return false;
        };
        // SAFETY: statvfs is plain data; all zeroes is a valid value.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs reads a NUL-terminated path and writes into `stats`, which we own.
        if unsafe { libc::statvfs(root.as_ptr(), &mut stats) } != 0 {
            return false;
        }
        stats.f_bavail == 0 || stats.f_favail == 0
    }

    /// Ends the holder (and with it the tmpfs), then removes the scratch directory.
    pub(crate) fn remove(mut self) -> io::Result<()> {
        self.holder = None;
        self.scratch.remove()
    }
}

fn scrub(dir: &Path) -> io::Result<usize> {
    // Where the part itself was replaced (possible only without namespaces), what replaced it
    // goes, and an empty directory takes its place; permissions are never set through a link.
    if !fs::symlink_metadata(dir)?.is_dir() {
        remove_entry(dir)?;
        fs::create_dir(dir)?;
        return Ok(1);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            removed += scrub(&entry.path())?;
        } else if !kind.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes a file, link or directory tree at `path`, if there is one.
fn remove_entry(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
