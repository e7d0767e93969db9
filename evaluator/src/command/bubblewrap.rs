//! Bubblewrap (`bwrap`), the namespace sandbox a run goes into, and what the run sees there;
//! and the probe that says whether it can run on this machine at all.
//!
//! Every run gets new user, PID, IPC, UTS and (unless the config asks for the network) network
//! namespaces, no capabilities, a new session, and a root that is an empty read-only tmpfs on
//! which only these appear: the system directories read-only, a fresh `/proc` of its own PID
//! namespace, a minimal `/dev`, and the paths its [`View`] lists.
//!
//! The command itself is PID 1 of its namespace (`--as-pid-1`). When it exits, or when we kill
//! it, the kernel kills every process left in the namespace, whatever session, group or
//! environment it gave itself, and waits for them before the exit is reported to bwrap, which
//! reaps the command (so its resource usage is ours to read) and only then exits. The price:
//! like any init, the command ignores signals it has no handler for unless the kernel forces
//! them, so the CPU limit ends it with SIGKILL at the hard limit rather than SIGXCPU, and a
//! write past the file-size limit fails with EFBIG rather than SIGXFSZ.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::area::{Area, Part, Quota};
use super::program;
use super::sandbox::{self, Enclosure, Job, Limits};

/// What to install, named in every message about a missing or unusable bwrap.
const INSTALL_HINT: &str = "install bubblewrap (Debian and Ubuntu: \
    `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`) and allow unprivileged \
    user namespaces (`sysctl kernel.unprivileged_userns_clone=1` where that setting exists, \
    and `user.max_user_namespaces` above 0)";

/// Directories every run sees read-only, where present (a symlink stays a symlink).
const SYSTEM_DIRS: [&str; 9] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
];

/// An installed bwrap.
#[derive(Clone, Debug)]
pub(crate) struct Bubblewrap {
    path: PathBuf,
}

/// What one sandboxed run sees besides the system directories.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub read_only: Vec<PathBuf>,
    pub writable: Vec<PathBuf>,
    /// Mounted on `/dev/shm`; a writable directory of the run's own.
    pub shm: PathBuf,
    /// The working directory.
    pub workdir: PathBuf,
    pub network: bool,
}

impl Bubblewrap {
    /// bwrap on our own `PATH`.
    pub(crate) fn find() -> Result<Bubblewrap, String> {
        let path_var = std::env::var("PATH").ok();
        program::find("bwrap", path_var.as_deref(), Path::to_path_buf)
            .map(|path| Bubblewrap { path })
            .map_err(|_| format!("bubblewrap (`bwrap`) is not on PATH; {INSTALL_HINT}"))
    }

    /// bwrap, found and seen to make a sandbox in a private namespace of ours: the check
    /// behind `probe_namespaces`.
    pub(crate) fn probe() -> Result<Bubblewrap, String> {
        let bwrap = Bubblewrap::find()?;
        let area = Area::create(Some(Quota {
            bytes: 1 << 20,
            files: 16,
        }))
        .map_err(|e| {
            format!("cannot make a private user and mount namespace ({e}); {INSTALL_HINT}")
        })?;
        let report = (|| {
            let workdir = area.path(Part::Grader);
            area.fresh_dir(Part::Grader)?;
            area.fresh_dir(Part::GraderShm)?;
            let view = View {
                read_only: program::needs(bwrap.path(), None, None, Path::to_path_buf),
                writable: vec![workdir.clone()],
                shm: area.path(Part::GraderShm),
                workdir: workdir.clone(),
                network: false,
            };
            let argv = [bwrap.path().display().to_string(), "--version".into()];
            let limits = Limits {
                wall: Duration::from_secs(10),
                cpu_seconds: 10,
                memory_bytes: 1 << 30,
                file_bytes: 1 << 20,
                output_bytes: 1 << 12,
            };
            let job = Job {
                argv: &argv,
                env: &[],
                dir: &workdir,
                limits: &limits,
            };
            let enclosure = Enclosure {
                bwrap: &bwrap,
                view: &view,
                holder: area.holder().expect("an area with a quota has a holder"),
            };
            sandbox::run_enclosed(&job, &enclosure)
        })();
        let _ = area.remove();
        let report =
            report.map_err(|e| format!("cannot start bubblewrap ({e}); {INSTALL_HINT}"))?;
        if report.exit.success() {
            Ok(bwrap)
        } else {
            Err(format!(
                "bubblewrap cannot make a sandbox here ({}: {}); {INSTALL_HINT}",
                report.exit,
                report.stderr.text().trim()
            ))
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// bwrap's options for a run that sees `view`; the command follows them after `--`.
    pub(crate) fn options(&self, view: &View) -> Vec<OsString> {
        let mut options: Vec<OsString> = [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--as-pid-1",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ]
        .map(OsString::from)
        .to_vec();
        if !view.network {
            options.push("--unshare-net".into());
        }
        let mut add = |words: &[&dyn AsRef<std::ffi::OsStr>]| {
            options.extend(words.iter().map(|word| word.as_ref().to_os_string()));
        };
        for dir in SYSTEM_DIRS {
            match fs::symlink_metadata(dir) {
                Ok(meta) if meta.is_symlink() => {
                    if let Ok(target) = fs::read_link(dir) {
                        add(&[&"--symlink", &target, &dir]);
                    }
                }
                Ok(meta) if meta.is_dir() => add(&[&"--ro-bind", &dir, &dir]),
                _ => {}
            }
        }
        add(&[&"--proc", &"/proc", &"--dev", &"/dev"]);
        let mut read_only = view.read_only.clone();
        if view.network {
            // A resolver file kept outside /etc (systemd-resolved's, under /run).
            if let Ok(resolver) = fs::canonicalize("/etc/resolv.conf") {
                read_only.push(resolver);
            }
        }
        for path in outermost(read_only) {
            add(&[&"--ro-bind", &path, &path]);
        }
        for path in &view.writable {
            add(&[&"--bind", path, path]);
        }
        add(&[
            &"--bind",
            &view.shm,
            &"/dev/shm",
            &"--remount-ro",
            &"/",
            &"--remount-ro",
            &"/dev",
            &"--chdir",
            &view.workdir,
        ]);
        options
    }
}

/// The paths not already visible: outside the system directories and not inside another
/// listed path, parents first (a later bind would hide what an earlier one put inside it).
fn outermost(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for path in paths {
        let system = SYSTEM_DIRS.iter().any(|dir| path.starts_with(dir));
        if !system && !kept.iter().any(|outer| path.starts_with(outer)) {
            kept.push(path);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_outermost_paths_outside_the_system_are_bound() {
        let paths = [
            "/data/b",
            "/usr/bin/env",
            "/data",
            "/home/me/tool",
            "/data/a",
            "/etcetera",
        ]
        .map(PathBuf::from)
        .to_vec();
        assert_eq!(
            outermost(paths),
            ["/data", "/etcetera", "/home/me/tool"]
                .map(PathBuf::from)
                .to_vec()
        );
    }

    #[test]
    fn the_view_becomes_binds_after_the_system_and_before_the_read_only_root() {
        let bwrap = Bubblewrap {
            path: "/usr/bin/bwrap".into(),
        };
        let view = View {
            read_only: vec!["/grader".into()],
            writable: vec!["/scratch/work".into()],
            shm: "/scratch/shm".into(),
            workdir: "/scratch/work".into(),
            network: false,
        };
        let text: Vec<String> = bwrap
            .options(&view)
            .iter()
            .map(|word| word.to_string_lossy().into_owned())
            .collect();
        let text = text.join(" ");
        assert!(text.contains("--unshare-net"), "{text}");
        assert!(text.contains("--cap-drop ALL"), "{text}");
        let grader = text.find("--ro-bind /grader /grader").unwrap();
        let work = text.find("--bind /scratch/work /scratch/work").unwrap();
        let root = text.find("--remount-ro /").unwrap();
        assert!(text.find("--proc /proc").unwrap() < grader);
        assert!(grader < work && work < root, "{text}");
        assert!(text.ends_with("--chdir /scratch/work"), "{text}");
        let shared = bwrap.options(&View {
            network: true,
            ..view
        });
        assert!(!shared.contains(&OsString::from("--unshare-net")));
    }
}
