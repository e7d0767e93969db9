//! Finding and killing what a command left behind.
//!
//! Killing the process group catches most of a command's descendants, but not one that moved
//! to another group (`setpgid`) or another session (`setsid`). The sandbox starts the command
//! as a session leader and marks its environment with a token unique to the run, so a stray
//! is any live process that started no earlier than the leader and shares its session or
//! group, or carries the token. What escapes both — a process that calls `setsid` and also
//! drops its environment, or a fork chain faster than the sweep — needs namespaces to catch:
//! this is the process-group sandbox's fallback, used only where bubblewrap cannot run.

use std::collections::BTreeSet;
use std::fs;

use libc::pid_t;

/// The environment variable that marks every process of one sandboxed run.
pub(crate) const TOKEN_VAR: &str = "EVOKERNEL_SANDBOX_RUN";

/// The fields of `/proc/PID/stat` the sandbox needs.
pub(crate) struct ProcStat {
    state: u8,
    pub(crate) parent: pid_t,
    group: pid_t,
    session: pid_t,
    /// Clock ticks since boot.
    start_ticks: u64,
}

pub(crate) fn read_stat(pid: pid_t) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain ") ", so split at the last.
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Counting from the state (field 3 of proc(5)): state, ppid, pgrp, session, ..., starttime (22).
    Some(ProcStat {
        state: *fields.first()?.as_bytes().first()?,
        parent: fields.get(1)?.parse().ok()?,
        group: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn carries_token(pid: pid_t, marker: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| environ.split(|&b| b == 0).any(|entry| entry == marker))
        .unwrap_or(false)
}

/// Kills (SIGKILL) every live process that belongs to the run led by `leader`, other than the
/// leader itself, adding each to `killed`. The leader must not have been reaped yet: its
/// zombie holds the pid, so no unrelated process can take that number as its group or
/// session id while we sweep.
pub(crate) fn kill_strays(leader: pid_t, token: &str, killed: &mut BTreeSet<pid_t>) {
    let Some(leader_start) = read_stat(leader).map(|stat| stat.start_ticks) else {
        return;
    };
    let marker = format!("{TOKEN_VAR}={token}").into_bytes();
    let me = std::process::id() as pid_t;
    // A stray may fork between our scan and our kill, so sweep until a pass finds nothing.
    for _ in 0..16 {
        let Ok(entries) = fs::read_dir("/proc") else {
            break;
        };
        let mut found = false;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<pid_t>().ok())
            else {
                continue;
            };
            if pid == leader || pid == me {
                continue;
            }
            let Some(stat) = read_stat(pid) else {
                continue;
            };
            if stat.state == b'Z' || stat.start_ticks < leader_start {
                continue;
            }
            let ours =
                stat.group == leader || stat.session == leader || carries_token(pid, &marker);
            if ours {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                found |= killed.insert(pid);
            }
        }
        if !found {
            break;
        }
    }
}
