//! Running an external command under limits, leaving nothing behind.
//!
//! The command starts as the leader of a new session and process group, with stdin closed,
//! an environment made only of what the caller passes, and resource limits set before
//! `exec`: CPU seconds (SIGXCPU, then SIGKILL a second later), address space (allocations
//! fail), file size, and no core dumps. We poll its output pipes and its exit; at the
//! wall-clock deadline everything it started is killed. When the leader exits we learn it
//! without reaping it (`waitid` with `WNOWAIT`), so its pid stays ours while we kill the rest;
//! only then is it reaped, with its resource usage.
//!
//! Two confinements share this loop. In the process-group sandbox ([`run`]) the rest is the
//! leader's group plus the strays a `/proc` sweep finds (see `sweep`), which a determined
//! process can outrun. In the namespace sandbox ([`run_enclosed`]) the leader is bwrap, which
//! runs the command as PID 1 of its own PID namespace (see `bubblewrap`): when the command
//! exits or we kill it, the kernel kills everything else in the namespace, and bwrap exits
//! only after that.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libc::{c_int, pid_t};

use super::bubblewrap::{Bubblewrap, View};
use super::capture::Captured;
use super::holder::{pipe, Holder};
use super::sweep::{self, TOKEN_VAR};

/// How often the sandbox looks at the clock and at the leader while output is quiet.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long output may still drain after the leader exits and its group is killed.
const DRAIN_GRACE: Duration = Duration::from_millis(500);
/// How long a leader killed at the deadline may take to exit before it is killed itself
/// (bwrap exits once the command has; this is only a backstop).
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long bwrap may take to report the command's pid.
const INFO_WAIT: Duration = Duration::from_secs(10);
const READ_CHUNK: usize = 64 * 1024;

/// The limits a command runs under.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Wall-clock time until every process of the run is killed.
    pub wall: Duration,
    /// CPU seconds per process (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL one second later.
    pub cpu_seconds: u64,
    /// Address space per process (RLIMIT_AS), in bytes: allocations beyond it fail.
    pub memory_bytes: u64,
    /// Largest file a process may write (RLIMIT_FSIZE), in bytes.
    pub file_bytes: u64,
    /// How much of each of stdout and stderr is kept (the tail).
    pub output_bytes: usize,
}

/// One command to run: its argv (no shell), environment and working directory.
#[derive(Clone, Copy, Debug)]
pub struct Job<'a> {
    pub argv: &'a [String],
    /// The whole environment of the command; nothing else is inherited.
    pub env: &'a [(String, String)],
    pub dir: &'a Path,
    pub limits: &'a Limits,
}

/// How the command's leader process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(code) => write!(f, "exit status {code}"),
            Exit::Signal(signal) => write!(f, "signal {signal} ({})", signal_name(signal)),
        }
    }
}

/// Which limit stopped the command, as far as can be told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    WallClock,
    CpuTime,
    /// Inferred: the address-space limit makes allocations fail, and the program then dies
    /// in its own way, so this is reported when a failed run's stderr says it ran out of memory.
    Memory,
    FileSize,
    /// The private directory's quota (namespaces only): found full after a failed run.
    PrivateDirFull,
}

/// What happened to one command.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub exit: Exit,
    pub limit_hit: Option<LimitHit>,
    pub wall: Duration,
    /// User plus system CPU time of the leader and the descendants it waited for.
    pub cpu: Duration,
    /// Peak resident memory of the leader or of a descendant it waited for, in bytes.
    pub peak_rss_bytes: u64,
    pub stdout: Captured,
    pub stderr: Captured,
    /// Processes still alive after the leader ended (or at the deadline), killed by the sweep.
    pub strays_killed: usize,
    /// The output pipes stayed open after everything we could find was killed: a process
    /// escaped the sandbox (see `sweep`), and the output may be incomplete.
    pub output_held_open: bool,
}

impl RunReport {
    pub fn timed_out(&self) -> bool {
        self.limit_hit == Some(LimitHit::WallClock)
    }
}

/// Runs `job` in the process-group sandbox to completion or to its wall-clock limit. An `Err`
/// means the command could not be started (or the system failed us); everything the command
/// itself does is in the report.
pub fn run(job: &Job<'_>) -> io::Result<RunReport> {
    supervise(job, None)
}

/// Runs `job` inside bubblewrap's namespaces, started in `holder`'s namespaces so that the
/// run can bind parts of the private tmpfs; `job.argv[0]` must be absolute and `job.dir`
/// is a path as the sandbox sees it. Otherwise as [`run`].
pub(crate) fn run_enclosed(job: &Job<'_>, enclosure: &Enclosure<'_>) -> io::Result<RunReport> {
    supervise(job, Some(enclosure))
}

/// Where an enclosed job runs and what it sees.
pub(crate) struct Enclosure<'a> {
    pub bwrap: &'a Bubblewrap,
    pub view: &'a View,
    pub holder: &'a Holder,
}

fn supervise(job: &Job<'_>, enclosure: Option<&Enclosure<'_>>) -> io::Result<RunReport> {
    if job.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    let limits = RawLimits::for_limits(job.limits)?;
    let mut command;
    let mut info = None;
    let mut confinement;
    match enclosure {
        None => {
            let token = run_token();
            command = Command::new(&job.argv[0]);
            command.args(&job.argv[1..]).current_dir(job.dir);
            // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
            // system calls (setsid, setrlimit) on values computed before the fork.
            unsafe {
                command.pre_exec(move || limits.enter_sandbox());
            }
            confinement = Confinement::ProcessGroup {
                token,
                strays: BTreeSet::new(),
            };
        }
        Some(enclosure) => {
            let namespaces = enclosure.holder.namespaces()?;
            let (info_read, info_write) = pipe()?;
            let info_fd = info_write.as_raw_fd();
            command = Command::new(enclosure.bwrap.path());
            command
                .args(enclosure.bwrap.options(enclosure.view))
                .arg("--info-fd")
                .arg(info_fd.to_string())
                .arg("--")
                .args(job.argv);
            // SAFETY: as above, plus setns on descriptors the closure owns and fcntl on the
            // info pipe, which the child keeps (only there) for bwrap to write to.
            unsafe {
                command.pre_exec(move || {
                    limits.enter_sandbox()?;
                    namespaces.enter()?;
                    if libc::fcntl(info_fd, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            info = Some((info_read, info_write));
            confinement = Confinement::Namespace { init: None };
        }
    }
    command
        .env_clear()
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Confinement::ProcessGroup { token, .. } = &confinement {
        command.env(TOKEN_VAR, token);
    }
    let started = Instant::now();
    let mut child = command.spawn()?;
    drop(command);
    // A wall limit too far out to represent is no limit.
    let deadline = started.checked_add(job.limits.wall);
    if let Some((info_read, info_write)) = info {
        drop(info_write);
        let pid = child.id() as pid_t;
        confinement = Confinement::Namespace {
            init: read_init(info_read, pid, deadline),
        };
    }
    let mut leader = Leader {
        pid: child.id() as pid_t,
        confinement,
        reaped: false,
    };
    let mut stdout = Pipe::new(child.stdout.take(), job.limits.output_bytes);
    let mut stderr = Pipe::new(child.stderr.take(), job.limits.output_bytes);

    let mut killed_at = None;
    let mut drain_until = None;
    loop {
        let now = Instant::now();
        if drain_until.is_none() {
            if leader.has_exited()? {
                leader.kill_all();
                drain_until = Some(now + DRAIN_GRACE);
            } else if deadline.is_some_and(|deadline| now >= deadline) && killed_at.is_none() {
                leader.kill_all();
                killed_at = Some(now);
            } else if killed_at.is_some_and(|killed| now >= killed + KILL_GRACE) {
                leader.kill_leader();
            }
        }
        let wait = match drain_until {
            Some(until) if stdout.is_open() || stderr.is_open() => {
                if now >= until {
                    break;
                }
                until - now
            }
            Some(_) => break,
            None if killed_at.is_some() => POLL_INTERVAL,
            None => deadline.map_or(POLL_INTERVAL, |deadline| {
                POLL_INTERVAL.min(deadline.saturating_duration_since(now))
            }),
        };
        poll_pipes(&mut [&mut stdout, &mut stderr], wait)?;
    }
    let output_held_open = stdout.is_open() || stderr.is_open();
    let (status, usage) = leader.reap()?;
    let wall = started.elapsed();
    drop(child);

    let exit = match (decode_status(status), &leader.confinement) {
        // bwrap reports a command killed by signal n as exit status 128 + n, as shells do.
        (Exit::Code(code), Confinement::Namespace { .. }) if (129..=128 + 64).contains(&code) => {
            Exit::Signal(code - 128)
        }
        (exit, _) => exit,
    };
    let cpu = timeval(usage.ru_utime) + timeval(usage.ru_stime);
    let (stdout, stderr) = (stdout.into_captured(), stderr.into_captured());
    let limit_hit = if killed_at.is_some() {
        Some(LimitHit::WallClock)
    } else {
        infer_limit(exit, cpu, job.limits, &stderr)
    };
    Ok(RunReport {
        exit,
        limit_hit,
        wall,
        cpu,
        // Linux reports ru_maxrss in KiB.
        peak_rss_bytes: (usage.ru_maxrss.max(0) as u64) * 1024,
        stdout,
        stderr,
        strays_killed: leader.strays_killed(),
        output_held_open,
    })
}

/// The command, PID 1 of its namespace, from the JSON bwrap writes to its info pipe before the
/// command starts, as a pidfd (so that it can be killed without any risk of the pid being
/// reused), checked to be the child of `bwrap`. `None` if bwrap wrote nothing usable (it
/// failed before starting).
fn read_init(info: OwnedFd, bwrap: pid_t, deadline: Option<Instant>) -> Option<OwnedFd> {
    let mut pipe = Pipe::new(Some(info), 1 << 16);
    let until = Instant::now() + INFO_WAIT;
    let until = deadline.map_or(until, |deadline| deadline.min(until));
    while pipe.is_open() {
        let now = Instant::now();
        if now >= until {
            break;
        }
        poll_pipes(&mut [&mut pipe], until - now).ok()?;
    }
    let text = pipe.into_captured().text();
    let info: serde_json::Value = serde_json::from_str(&text).ok()?;
    let init = pid_t::try_from(info.get("child-pid")?.as_i64()?).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, init, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // The pid named bwrap's child when the pidfd was opened if it still does now and the
    // process the pidfd holds is alive (a reused pid would need it to have died between).
    let is_child = sweep::read_stat(init).is_some_and(|stat| stat.parent == bwrap);
    (is_child && send_signal(&pidfd, 0)).then_some(pidfd)
}

fn send_signal(pidfd: &OwnedFd, signal: c_int) -> bool {
    // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    sent == 0
}

/// A token unique to one run, for marking its processes.
fn run_token() -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    )
}

/// The rlimits to set in the child, clamped to the hard limits we run under (an unprivileged
/// process may lower a hard limit but never raise it).
#[derive(Clone, Copy)]
struct RawLimits {
    cpu: libc::rlimit,
    address_space: libc::rlimit,
    file_size: libc::rlimit,
    core: libc::rlimit,
}

impl RawLimits {
    fn for_limits(limits: &Limits) -> io::Result<RawLimits> {
        // SIGXCPU at the soft limit gives the program a chance to report; SIGKILL follows.
        let cpu = clamp(
            libc::RLIMIT_CPU,
            limits.cpu_seconds,
            limits.cpu_seconds.saturating_add(1),
        )?;
        let address_space = clamp(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
        let file_size = clamp(libc::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes)?;
        let core = clamp(libc::RLIMIT_CORE, 0, 0)?;
        Ok(RawLimits {
            cpu,
            address_space,
            file_size,
            core,
        })
    }

    /// Runs in the child between fork and exec.
    fn enter_sandbox(&self) -> io::Result<()> {
        // SAFETY: plain system calls on valid pointers to our own rlimit values.
        unsafe {
            if libc::setsid() == -1
                || libc::setrlimit(libc::RLIMIT_CPU, &self.cpu) != 0
                || libc::setrlimit(libc::RLIMIT_AS, &self.address_space) != 0
                || libc::setrlimit(libc::RLIMIT_FSIZE, &self.file_size) != 0
                || libc::setrlimit(libc::RLIMIT_CORE, &self.core) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

fn clamp(resource: Resource, soft: u64, hard: u64) -> io::Result<libc::rlimit> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hard = (hard as libc::rlim_t).min(current.rlim_max);
    Ok(libc::rlimit {
        rlim_cur: (soft as libc::rlim_t).min(hard),
        rlim_max: hard,
    })
}

/// The command's leader process — the command itself, or bwrap outside the namespaces —
/// killed and reaped on drop if the run ends early (an error or a panic), so that no path
/// leaves a process or a zombie behind.
struct Leader {
    pid: pid_t,
    confinement: Confinement,
    reaped: bool,
}

/// How everything a command started is found and killed.
enum Confinement {
    /// By process group, session and environment token; `strays` are those found and killed.
    ProcessGroup {
        token: String,
        strays: BTreeSet<pid_t>,
    },
    /// By killing the command, PID 1 of the run's PID namespace: the kernel kills the rest
    /// before bwrap learns of it, so the namespace is empty once bwrap has exited.
    Namespace { init: Option<OwnedFd> },
}

impl Leader {
    /// Whether the leader has exited, without reaping it.
    fn has_exited(&self) -> io::Result<bool> {
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: waitid writes into `info`, which we own.
        if unsafe { libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, flags) } != 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::Interrupted => Ok(false),
                _ => Err(error),
            };
        }
        // SAFETY: waitid filled the child fields (or left them zero when nothing exited).
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// Kills everything the leader started, and in the process-group sandbox the leader too.
    /// There the sweep comes first so that every process still alive is counted; the group
    /// kill then catches any forked during the sweep, and a last sweep any that left the group
    /// meanwhile. The leader's pid is still ours (it is not reaped), so the group id is too.
    fn kill_all(&mut self) {
        match &mut self.confinement {
            Confinement::ProcessGroup { token, strays } => {
                sweep::kill_strays(self.pid, token, strays);
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(-self.pid, libc::SIGKILL) };
                sweep::kill_strays(self.pid, token, strays);
            }
            Confinement::Namespace { init: Some(init) } => {
                send_signal(init, libc::SIGKILL);
            }
            Confinement::Namespace { init: None } => self.kill_leader(),
        }
    }

    /// Kills the leader and its group; in the namespace sandbox the command follows (bwrap
    /// gives it a parent-death signal).
    fn kill_leader(&self) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe {
            libc::kill(-self.pid, libc::SIGKILL);
            libc::kill(self.pid, libc::SIGKILL);
        }
    }

    fn strays_killed(&self) -> usize {
        match &self.confinement {
            Confinement::ProcessGroup { strays, .. } => strays.len(),
            Confinement::Namespace { .. } => 0,
        }
    }

    fn reap(&mut self) -> io::Result<(libc::c_int, libc::rusage)> {
        let mut status = 0;
        // SAFETY: rusage is plain data; all zeroes is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: wait4 writes into `status` and `usage`, which we own.
            let result = unsafe { libc::wait4(self.pid, &mut status, 0, &mut usage) };
            if result == self.pid {
                self.reaped = true;
                return Ok((status, usage));
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(error);
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_all();
            self.kill_leader();
            let _ = self.reap();
        }
    }
}

/// One of the child's output pipes and what it has produced; `file` is `None` after end of file.
struct Pipe {
    file: Option<File>,
    captured: Captured,
}

impl Pipe {
    fn new(fd: Option<impl Into<OwnedFd>>, cap: usize) -> Pipe {
        Pipe {
            file: fd.map(|fd| File::from(fd.into())),
            captured: Captured::new(cap),
        }
    }

    fn is_open(&self) -> bool {
        self.file.is_some()
    }

    /// Reads once (the pipe was reported ready, so this does not block).
    fn read_ready(&mut self, buffer: &mut [u8]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        match file.read(buffer) {
            Ok(0) => self.file = None,
            Ok(n) => self.captured.push(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn into_captured(mut self) -> Captured {
        self.captured.trim();
        self.captured
    }
}

/// Waits up to `wait` for output on the open pipes and reads what is ready.
fn poll_pipes(pipes: &mut [&mut Pipe], wait: Duration) -> io::Result<()> {
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(pipes.len());
    let mut owners = Vec::with_capacity(pipes.len());
    for (index, pipe) in pipes.iter().enumerate() {
        if let Some(file) = &pipe.file {
            fds.push(libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
            owners.push(index);
        }
    }
    if fds.is_empty() {
        std::thread::sleep(wait);
        return Ok(());
    }
    let millis = wait.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if ready < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::Interrupted => Ok(()),
            _ => Err(error),
        };
    }
    let mut buffer = vec![0u8; READ_CHUNK];
    for (fd, &index) in fds.iter().zip(&owners) {
        if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            pipes[index].read_ready(&mut buffer)?;
        }
    }
    Ok(())
}

fn decode_status(status: libc::c_int) -> Exit {
    if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    }
}

fn timeval(value: libc::timeval) -> Duration {
    Duration::from_secs(value.tv_sec.max(0) as u64)
        + Duration::from_micros(value.tv_usec.max(0) as u64)
}

/// Phrases with which common runtimes report a failed allocation on stderr.
const OUT_OF_MEMORY: &[&str] = &[
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "bad_alloc",
    "memory allocation of",
];

fn infer_limit(exit: Exit, cpu: Duration, limits: &Limits, stderr: &Captured) -> Option<LimitHit> {
    match exit {
        Exit::Signal(libc::SIGXCPU) => return Some(LimitHit::CpuTime),
        Exit::Signal(libc::SIGKILL) if cpu.as_secs() >= limits.cpu_seconds => {
            return Some(LimitHit::CpuTime)
        }
        Exit::Signal(libc::SIGXFSZ) => return Some(LimitHit::FileSize),
        Exit::Code(0) => return None,
        _ => {}
    }
    let text = stderr.text();
    if OUT_OF_MEMORY.iter().any(|phrase| text.contains(phrase)) {
        Some(LimitHit::Memory)
    } else if text.contains("File too large") {
        // Python ignores SIGXFSZ, so the write fails with EFBIG instead.
        Some(LimitHit::FileSize)
    } else {
        None
    }
}

/// The conventional name of a signal, for feedback.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGILL => "SIGILL",
        libc::SIGINT => "SIGINT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "unnamed signal",
    }
}
