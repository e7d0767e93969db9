//! The namespace that holds one evaluation's private directory.
//!
//! A forked child of ours enters a new user and mount namespace, mounts a tmpfs with a byte
//! quota and an inode quota over the evaluation's (empty) scratch directory, and then waits
//! on a pipe. The tmpfs exists only in that mount namespace: the sandboxes of the evaluation
//! are started inside it (`setns`) so they can bind parts of it, we reach it through
//! `/proc/PID/root`, and nothing else on the machine sees it. When the holder exits (we
//! close the pipe, or our process dies and the pipe closes with it, or the parent thread
//! dies and `PR_SET_PDEATHSIG` fires) the namespace and every byte in it are gone.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libc::{c_int, pid_t};

/// A live holder; dropping it ends the namespace and reaps the process.
#[derive(Debug)]
pub(crate) struct Holder {
    pid: pid_t,
    /// Its write end; the holder exits when this closes.
    lifetime: Option<OwnedFd>,
}

/// The holder's setup steps, named in errors.
const STEPS: [&str; 7] = [
    "",
    "unshare a user and mount namespace",
    "deny setgroups",
    "write the uid map",
    "write the gid map",
    "make the mounts private",
    "mount the private tmpfs",
];

impl Holder {
    /// Starts a holder with a tmpfs of at most `bytes` bytes and `inodes` files and
    /// directories over `mount_point`, an existing empty directory of ours.
    pub(crate) fn start(mount_point: &Path, bytes: u64, inodes: u64) -> io::Result<Holder> {
        let target = CString::new(mount_point.as_os_str().as_bytes())?;
        let options = CString::new(format!("size={bytes},nr_inodes={inodes},mode=0700"))?;
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let uid_map = format!("{uid} {uid} 1\n");
        let gid_map = format!("{gid} {gid} 1\n");
        let setup = Setup {
            target: &target,
            options: &options,
            uid_map: uid_map.as_bytes(),
            gid_map: gid_map.as_bytes(),
        };
        let (lifetime_read, lifetime_write) = pipe()?;
        let (status_read, status_write) = pipe()?;
        // SAFETY: getpid cannot fail.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child makes only async-signal-safe system calls on memory prepared
        // before the fork, and never returns (it ends in _exit).
        let pid = unsafe { libc::fork() };
        if pid == -1 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above; this is the child.
            unsafe {
                hold(
                    parent,
                    lifetime_read.as_raw_fd(),
                    status_write.as_raw_fd(),
                    &setup,
                )
            }
        }
        drop(lifetime_read);
        drop(status_write);
        let holder = Holder {
            pid,
            lifetime: Some(lifetime_write),
        };
        let mut status = [0u8; 5];
        let mut read = 0;
        let mut report = File::from(status_read);
        while read < status.len() {
            match report.read(&mut status[read..]) {
                Ok(0) => break,
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        match (read, status[0]) {
            (5, 0) => Ok(holder),
            (5, step) => {
                let errno = i32::from_ne_bytes([status[1], status[2], status[3], status[4]]);
                let step = STEPS.get(usize::from(step)).unwrap_or(&"set up");
                Err(io::Error::other(format!(
                    "cannot {step}: {}",
                    io::Error::from_raw_os_error(errno)
                )))
            }
            _ => Err(io::Error::other("the namespace holder exited during setup")),
        }
    }

    /// Where `path`, as the holder's mount namespace sees it, is reached from ours.
    pub(crate) fn outside_view(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(relative)
    }

    /// The holder's user and mount namespaces, for `setns` in a child about to run a sandbox.
    pub(crate) fn namespaces(&self) -> io::Result<Namespaces> {
        let open =
            |kind: &str| File::open(format!("/proc/{}/ns/{kind}", self.pid)).map(OwnedFd::from);
        Ok(Namespaces {
            user: open("user")?,
            mount: open("mnt")?,
        })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.lifetime = None;
        // SAFETY: the pid is our unreaped child, so it names the holder; waitpid writes
        // only into `status`.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(self.pid, &mut status, 0) == -1
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
    }
}

/// Open handles on a holder's namespaces; closed on exec in the child that enters them.
#[derive(Debug)]
pub(crate) struct Namespaces {
    user: OwnedFd,
    mount: OwnedFd,
}

impl Namespaces {
    /// Enters the namespaces. Runs in a forked child before exec: system calls only.
    pub(crate) fn enter(&self) -> io::Result<()> {
        // SAFETY: setns on descriptors we own.
        unsafe {
            if libc::setns(self.user.as_raw_fd(), libc::CLONE_NEWUSER) != 0
                || libc::setns(self.mount.as_raw_fd(), libc::CLONE_NEWNS) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// What the holder needs, prepared before the fork.
struct Setup<'a> {
    target: &'a CString,
    options: &'a CString,
    uid_map: &'a [u8],
    gid_map: &'a [u8],
}

/// A pipe whose ends close on exec: (read, write).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The holder's whole life, in the forked child.
///
/// # Safety
/// Call only in a freshly forked child; it never returns.
unsafe fn hold(parent: pid_t, lifetime: c_int, status: c_int, setup: &Setup<'_>) -> ! {
    // SAFETY: system calls only, on descriptors and memory this child owns.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
        close_all_but(lifetime, status);
        let step = set_up(setup);
        let code = if step == 0 { 0 } else { errno() };
        let mut report = [step; 5];
        report[1..].copy_from_slice(&code.to_ne_bytes());
        libc::write(status, report.as_ptr().cast(), report.len());
        libc::close(status);
        if step == 0 {
            let mut byte = 0u8;
            while libc::read(lifetime, (&mut byte as *mut u8).cast(), 1) != 0
                && errno() == libc::EINTR
            {}
        }
        libc::_exit(0)
    }
}

fn errno() -> c_int {
    // SAFETY: the calling thread's errno location is always valid.
    unsafe { *libc::__errno_location() }
}

/// Returns 0, or the number of the step that failed with errno set.
///
/// # Safety
/// Call only in the holder child.
unsafe fn set_up(setup: &Setup<'_>) -> u8 {
    let none = std::ptr::null();
    // SAFETY: system calls on NUL-terminated strings prepared before the fork.
    unsafe {
        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
            return 1;
        }
        if !write_file(c"/proc/self/setgroups", b"deny") {
            return 2;
        }
        if !write_file(c"/proc/self/uid_map", setup.uid_map) {
            return 3;
        }
        if !write_file(c"/proc/self/gid_map", setup.gid_map) {
            return 4;
        }
        let private = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(none, c"/".as_ptr(), none, private, std::ptr::null()) != 0 {
            return 5;
        }
        if libc::mount(
            c"evokernel".as_ptr(),
            setup.target.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            setup.options.as_ptr().cast(),
        ) != 0
        {
            return 6;
        }
    }
    0
}

/// # Safety
/// System calls only: safe in a forked child.
unsafe fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> bool {
    // SAFETY: open, write and close on a NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        written == bytes.len() as isize
    }
}

/// Closes every descriptor but two, so the holder keeps no pipe of another run open.
///
/// # Safety
/// Closes descriptors others may own: only for a forked child that never returns.
unsafe fn close_all_but(a: c_int, b: c_int) {
    let (low, high) = (a.min(b) as u32, a.max(b) as u32);
    let ranges = [
        (0, low.checked_sub(1)),
        (low + 1, high.checked_sub(1)),
        (high + 1, Some(u32::MAX)),
    ];
    for (first, last) in ranges {
        let Some(last) = last.filter(|&last| first <= last) else {
            continue;
        };
        // SAFETY: close_range and close take plain numbers; see the function's contract.
        unsafe {
            if libc::syscall(libc::SYS_close_range, first, last, 0) != 0 {
                // Kernels before 5.9: close them one by one up to the descriptor limit.
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                let end = limit.rlim_cur.min(libc::rlim_t::from(last) + 1);
                for fd in libc::rlim_t::from(first)..end {
                    libc::close(fd as c_int);
                }
            }
        }
    }
}
