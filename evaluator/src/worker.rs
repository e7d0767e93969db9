//! Evaluations in worker processes, each under a wall-clock limit.
//!
//! The drop-in and recsys tasks run the candidate's kernel inside the evaluating process,
//! where nothing can stop a thread from outside. [`Isolated`] runs them in worker processes
//! instead: a worker builds the task once, then answers requests on its stdin and stdout,
//! one JSON line each ([`serve`]). At the limit the worker is killed and the evaluation is
//! recorded as failed at [`Stage::Timeout`]; the next evaluation starts a fresh worker.
//! Idle workers are kept for the next request, one per evaluation running at once; a worker
//! whose coordinator is gone sees its stdin end and exits.

use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cascade::{failed, Cascade};
use crate::{Error, Evaluation, Provenance, Result, Stage, Task, EVALUATOR_VERSION};

/// How long a worker may take to build its task (load a model, read its data, compute a
/// reference cache): not part of any evaluation's limit.
const STARTUP_LIMIT: Duration = Duration::from_secs(600);

/// How a worker is started: a program and its arguments (for the CLI, `evokernel` itself).
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// One request to a worker.
#[derive(Serialize, Deserialize)]
struct Request {
    source: String,
    trial: u32,
}

/// One line from a worker.
#[derive(Serialize, Deserialize)]
enum Reply {
    /// The task is built; requests may come.
    Ready,
    Evaluated(Box<Evaluation>),
    /// The evaluation could not run (an [`Error`], not a failed candidate).
    Failed(String),
}

/// A task whose evaluations run in worker processes under `limit` each (see the module docs).
pub struct Isolated {
    name: &'static str,
    command: WorkerCommand,
    limit: Duration,
    idle: Mutex<Vec<Worker>>,
}

impl Isolated {
    /// `name` is the task's; `command` starts a worker that calls [`serve`] for that task.
    pub fn new(name: &'static str, command: WorkerCommand, limit: Duration) -> Isolated {
        Isolated {
            name,
            command,
            limit,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Starts a worker now, so that a bad task (a missing model, a bad config) is reported
    /// before the first evaluation, and keeps it for that evaluation.
    pub fn start(&self) -> Result<()> {
        let worker = Worker::start(&self.command)?;
        self.idle().push(worker);
        Ok(())
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The failed evaluation recorded when `source` ran past the limit.
    fn timed_out(&self, source: &str, trial: u32, spent: Duration) -> Evaluation {
        let provenance = Provenance {
            evaluator_version: EVALUATOR_VERSION.to_string(),
            trial,
            ..Provenance::default()
        };
        let mut cascade = Cascade::new(self.name, candidate_hash(source), provenance);
        let limit = self.limit.as_secs_f64();
        let _ = cascade.run::<()>(Stage::Timeout, |_| {
            Err(failed(
                Stage::Timeout,
                format!(
                    "the evaluation ran past its limit of {limit:.0} s and was stopped; a kernel \
                     this slow is no use: do less work per key"
                ),
            ))
        });
        let mut evaluation = cascade.finish();
        if let Some(timing) = evaluation.timings.last_mut() {
            timing.seconds = spent.as_secs_f64();
        }
        evaluation
    }
}

impl Task for Isolated {
    fn name(&self) -> &'static str {
        self.name
    }

    fn evaluate(&self, source: &str, trial: u32) -> Result<Evaluation> {
        let request = Request {
            source: source.to_string(),
            trial,
        };
        // An idle worker that died meanwhile (killed from outside) is replaced, once.
        let reused = self.idle().pop();
        let mut worker = match reused.map(|mut w| w.send(&request).map(|()| w)) {
            Some(Ok(worker)) => worker,
            _ => {
                let mut worker = Worker::start(&self.command)?;
                worker.send(&request)?;
                worker
            }
        };
        let started = Instant::now();
        match worker.receive(self.limit)? {
            None => {
                // Dropping the worker kills it.
                drop(worker);
                Ok(self.timed_out(source, trial, started.elapsed()))
            }
            Some(Reply::Evaluated(evaluation)) => {
                self.idle().push(worker);
                Ok(*evaluation)
            }
            Some(Reply::Failed(message)) => {
                self.idle().push(worker);
                Err(Error::Invalid(message))
            }
            Some(Reply::Ready) => Err(worker.broken("answered a request with `ready`")),
        }
    }
}

/// The identity an evaluation that never parsed records: the AKL hash when the text parses,
/// else the SHA-256 of its bytes.
fn candidate_hash(source: &str) -> String {
    kernels::akl::parse(source).map_or_else(
        |_| kernels::akl::sha256_hex(source.as_bytes()),
        |program| program.canonical_hash(),
    )
}

/// A started worker: its process, its stdin, and its stdout's lines (read by a thread, so
/// that waiting for one can time out).
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<io::Result<String>>,
}

impl Worker {
    /// Starts the worker and waits (up to `STARTUP_LIMIT`) until it has built its task.
    fn start(command: &WorkerCommand) -> Result<Worker> {
        let mut process = Command::new(&command.program);
        process
            .args(&command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = process.spawn().map_err(|e| {
            Error::Invalid(format!(
                "could not start the evaluation worker {}: {e}",
                command.program.display()
            ))
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::Invalid("the worker's pipes were not opened".into()));
        };
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut worker = Worker {
            child,
            stdin,
            lines,
        };
        match worker.receive(STARTUP_LIMIT)? {
            Some(Reply::Ready) => Ok(worker),
            Some(Reply::Failed(message)) => Err(Error::Invalid(message)),
            Some(Reply::Evaluated(_)) => Err(worker.broken("sent an evaluation before `ready`")),
            None => Err(Error::Invalid(format!(
                "the evaluation worker was not ready after {:.0} s",
                STARTUP_LIMIT.as_secs_f64()
            ))),
        }
    }

    fn send(&mut self, request: &Request) -> Result<()> {
        let line = serde_json::to_string(request).map_err(|e| Error::Invalid(e.to_string()))?;
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| self.broken(&format!("did not take a request ({e})")))
    }

    /// The next reply, or `None` when `limit` passes first.
    fn receive(&mut self, limit: Duration) -> Result<Option<Reply>> {
        match self.lines.recv_timeout(limit) {
            Ok(Ok(line)) => serde_json::from_str(&line)
                .map(Some)
                .map_err(|e| self.broken(&format!("sent an unreadable reply ({e})"))),
            Ok(Err(e)) => Err(self.broken(&format!("could not be read ({e})"))),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.broken("exited")),
        }
    }

    /// The error for a worker that stopped keeping the protocol, with its exit status.
    fn broken(&mut self, what: &str) -> Error {
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        Error::Invalid(format!("the evaluation worker {what}: {status}"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The worker's side: builds the task, says `ready` (or why not), then answers each request
/// line on `input` with one line on `output` until `input` ends.
pub fn serve(
    build: impl FnOnce() -> std::result::Result<std::sync::Arc<dyn Task>, String>,
    input: impl BufRead,
    mut output: impl Write,
) -> io::Result<()> {
    let mut reply = |reply: &Reply| -> io::Result<()> {
        let line = serde_json::to_string(reply).map_err(io::Error::other)?;
        writeln!(output, "{line}")?;
        output.flush()
    };
    let task = match build() {
        Ok(task) => task,
        Err(e) => return reply(&Reply::Failed(e)),
    };
    reply(&Reply::Ready)?;
    for line in input.lines() {
        let answer = match serde_json::from_str::<Request>(&line?) {
            Ok(request) => match task.evaluate(&request.source, request.trial) {
                Ok(evaluation) => Reply::Evaluated(Box::new(evaluation)),
                Err(e) => Reply::Failed(e.to_string()),
            },
            Err(e) => Reply::Failed(format!("unreadable request: {e}")),
        };
        reply(&answer)?;
    }
    Ok(())
}
