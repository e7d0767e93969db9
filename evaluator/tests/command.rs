//! The command task end to end: small sh and python3 evaluators written by the tests run in
//! the sandbox, which must stop them at each limit, leave no process or directory behind, and
//! read OpenEvolve- and ShinkaEvolve-style metrics. The tests run in whichever sandbox the
//! machine allows (`isolation = "auto"`) unless they name one; `tests/sandbox.rs` holds what
//! only the namespace sandbox guarantees. No network, no assets.
#![cfg(target_os = "linux")]

mod command_common;

use std::path::Path;
use std::time::{Duration, Instant};

use command_common::{assert_failed_at, live_processes_mentioning, task, TestDir};
use evaluator::command::sandbox::{self, Exit, Job, LimitHit, Limits};
use evaluator::command::{CommandTask, Direction, Isolation};
use evaluator::{Error, Evaluation, SandboxKind, Stage, Task};

#[test]
fn openevolve_dictionary_on_stdout_scores_the_candidate() {
    let dir = TestDir::new("openevolve");
    // The evaluator reads the candidate's file: the score is whatever the candidate holds.
    let script = dir.write(
        "evaluate.sh",
        "echo 'loading'\n\
         echo '{\"progress\": 1}'\n\
         printf '{\"combined_score\": %s, \"speed\": 2.5, \"valid\": true, \"note\": \"fine\"}\\n' \"$(cat \"$1\")\"\n",
    );
    let task = task(&dir, &["sh", &script, "{program}"], |_| {});
    let evaluation = task.evaluate("0.625", 0).unwrap();
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert_eq!(evaluation.stage_reached, Stage::Score);
    assert_eq!(evaluation.score, Some(0.625));
    assert_eq!(evaluation.metrics["combined_score"], 0.625);
    assert_eq!(evaluation.metrics["speed"], 2.5);
    assert_eq!(evaluation.metrics["valid"], 1.0);
    assert!(!evaluation.metrics.contains_key("progress"));
    assert!(evaluation.metrics["run.wall_seconds"] > 0.0);
    assert!(
        evaluation.feedback.contains("note: fine"),
        "{}",
        evaluation.feedback
    );
    // SHA-256 of the candidate's bytes, as `sha256sum` gives it.
    assert_eq!(
        evaluation.candidate_hash,
        "42c2fafec1898f65fdb9c7c4023b4d9df291550d8633028ba1be087a5a3a0715"
    );
    assert_eq!(evaluation.task, "command");
    let timed: Vec<Stage> = evaluation.timings.iter().map(|t| t.stage).collect();
    assert_eq!(timed, vec![Stage::Run, Stage::Score]);
}

#[test]
fn shinka_results_dir_gives_public_private_metrics_and_text_feedback() {
    let dir = TestDir::new("shinka");
    let script = dir.write(
        "evaluate.py",
        r#"
import json, os, sys
program, results = sys.argv[1], sys.argv[2]
assert open(program).read() == "def solve(): return 42\n"
with open(os.path.join(results, "metrics.json"), "w") as f:
    json.dump({"combined_score": 3.5,
               "public": {"accuracy": 0.9, "passed": True},
               "private": {"hidden_cases": 7},
               "text_feedback": "Case 4 was slow."}, f)
with open(os.path.join(results, "correct.json"), "w") as f:
    json.dump({"correct": True, "error": None}, f)
print("this stdout is not the metrics")
"#,
    );
    let task = task(
        &dir,
        &["python3", &script, "{program}", "{results_dir}"],
        |_| {},
    );
    let evaluation = task.evaluate("def solve(): return 42\n", 0).unwrap();
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert_eq!(evaluation.score, Some(3.5));
    assert_eq!(evaluation.metrics["public.accuracy"], 0.9);
    assert_eq!(evaluation.metrics["public.passed"], 1.0);
    assert_eq!(evaluation.metrics["private.hidden_cases"], 7.0);
    assert!(
        evaluation.feedback.contains("Case 4 was slow."),
        "{}",
        evaluation.feedback
    );
}

#[test]
fn shinka_correct_false_fails_the_run_with_its_error() {
    let dir = TestDir::new("incorrect");
    let script = dir.write(
        "evaluate.py",
        r#"
import json, os, sys
results = sys.argv[1]
json.dump({"combined_score": 100.0}, open(os.path.join(results, "metrics.json"), "w"))
json.dump({"correct": False, "error": "wrong answer on case 3: expected 6, got 7"},
          open(os.path.join(results, "correct.json"), "w"))
"#,
    );
    let task = task(&dir, &["python3", &script, "{results_dir}"], |_| {});
    let evaluation = task.evaluate("print(7)", 0).unwrap();
    assert_failed_at(
        &evaluation,
        Stage::Run,
        "wrong answer on case 3: expected 6, got 7",
    );
    // The metrics are kept for the record, but the high score does not count.
    assert_eq!(evaluation.metrics["combined_score"], 100.0);
}

#[test]
fn garbage_on_stdout_gives_feedback_naming_the_expected_format() {
    let dir = TestDir::new("garbage");
    let task = task(
        &dir,
        &["sh", "-c", "echo 'score: high'; echo 'all good'"],
        |_| {},
    );
    let evaluation = task.evaluate("x", 0).unwrap();
    assert_failed_at(&evaluation, Stage::Run, "no JSON object found on stdout");
    assert_eq!(evaluation.timings.len(), 1);
    assert!(
        evaluation.feedback.contains("all good"),
        "{}",
        evaluation.feedback
    );

    let silent = self::task(&dir, &["true"], |_| {});
    let evaluation = silent.evaluate("x", 0).unwrap();
    assert_failed_at(&evaluation, Stage::Run, "printed nothing on stdout");
}

#[test]
fn a_missing_score_fails_the_score_stage_and_lists_what_was_found() {
    let dir = TestDir::new("missing");
    let task = task(&dir, &["echo", "{\"accuracy\": 1, \"loss\": 0.5}"], |_| {});
    let evaluation = task.evaluate("x", 0).unwrap();
    assert_failed_at(
        &evaluation,
        Stage::Score,
        "no `combined_score` (found: accuracy, loss)",
    );
}

#[test]
fn a_nan_or_infinite_score_fails_and_never_enters_the_metrics() {
    let dir = TestDir::new("nan");
    for (value, token) in [("float('nan')", "NaN"), ("-float('inf')", "-Infinity")] {
        let code =
            format!("import json; print(json.dumps({{'combined_score': {value}, 'size': 3}}))");
        let task = task(&dir, &["python3", "-c", &code], |_| {});
        let evaluation = task.evaluate("x", 0).unwrap();
        assert_failed_at(
            &evaluation,
            Stage::Score,
            &format!("`combined_score` is {token}"),
        );
        assert!(!evaluation.metrics.contains_key("combined_score"));
        assert_eq!(evaluation.metrics["size"], 3.0);
        // What is stored survives a JSON round trip.
        let json = serde_json::to_string(&evaluation).unwrap();
        assert_eq!(
            serde_json::from_str::<Evaluation>(&json).unwrap(),
            evaluation
        );
    }
}

#[test]
fn minimised_metric_is_negated_and_descriptors_are_copied() {
    let dir = TestDir::new("minimise");
    let task = task(
        &dir,
        &["echo", "{\"loss\": 0.25, \"size\": 12}"],
        |config| {
            config.score_metric = "loss".into();
            config.direction = Direction::Minimize;
            config.descriptors = vec!["size".into()];
        },
    );
    let evaluation = task.evaluate("x", 0).unwrap();
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert_eq!(evaluation.score, Some(-0.25));
    assert_eq!(evaluation.descriptors["size"], 12.0);

    let needs_width = self::task(&dir, &["echo", "{\"combined_score\": 1}"], |config| {
        config.descriptors = vec!["width".into()];
    });
    let evaluation = needs_width.evaluate("x", 0).unwrap();
    assert_failed_at(&evaluation, Stage::Score, "descriptor `width` is missing");
}

#[test]
fn a_failing_command_reports_its_exit_and_the_tail_of_stderr() {
    let dir = TestDir::new("stderr");
    let script = dir.write(
        "evaluate.sh",
        "head -c 100000 /dev/zero | tr '\\0' x >&2\necho >&2\necho 'ValueError: the real error' >&2\nexit 3\n",
    );
    let task = task(&dir, &["sh", &script], |config| config.feedback_bytes = 500);
    let evaluation = task.evaluate("x", 0).unwrap();
    assert_failed_at(&evaluation, Stage::Run, "ended with exit status 3");
    assert!(evaluation.feedback.contains("ValueError: the real error"));
    assert!(
        evaluation.feedback.contains("earlier bytes cut"),
        "{}",
        evaluation.feedback
    );
    assert!(
        evaluation.feedback.len() < 1500,
        "{}",
        evaluation.feedback.len()
    );
}

#[test]
fn a_huge_stdout_is_capped_and_the_metrics_on_its_last_line_still_count() {
    let dir = TestDir::new("huge");
    let printed: u64 = 64 << 20;
    let code = format!("head -c {printed} /dev/zero; echo; echo '{{\"combined_score\": 1}}'");
    let argv = ["sh".to_string(), "-c".to_string(), code.clone()];
    let limits = Limits {
        wall: Duration::from_secs(60),
        cpu_seconds: 60,
        memory_bytes: 1 << 30,
        file_bytes: 1 << 20,
        output_bytes: 1 << 20,
    };
    let env = [("PATH".to_string(), std::env::var("PATH").unwrap())];
    let report = sandbox::run(&Job {
        argv: &argv,
        env: &env,
        dir: &dir.0,
        limits: &limits,
    })
    .unwrap();
    assert_eq!(report.exit, Exit::Code(0));
    let last_line = "{\"combined_score\": 1}\n";
    assert_eq!(
        report.stdout.total_bytes(),
        printed + 1 + last_line.len() as u64
    );
    assert_eq!(report.stdout.bytes().len(), 1 << 20);
    assert!(report.stdout.text().ends_with(last_line));

    let task = task(&dir, &["sh", "-c", &code], |_| {});
    let evaluation = task.evaluate("x", 0).unwrap();
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert!(
        evaluation.feedback.contains("stdout was 67108887 bytes"),
        "{}",
        evaluation.feedback
    );
}

#[test]
fn a_child_that_sleeps_forever_is_stopped_within_a_second_of_the_timeout() {
    let dir = TestDir::new("sleep");
    let script = dir.write("evaluate.sh", "echo \"cwd=$(pwd)\" >&2\nexec sleep 1000\n");
    let timeout = 1.0;
    let task = task(&dir, &["sh", &script], |config| {
        config.timeout_seconds = timeout;
    });
    let started = Instant::now();
    let evaluation = task.evaluate("x", 0).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_failed_at(&evaluation, Stage::Run, "wall-clock limit of 1 s");
    assert!(
        elapsed < timeout + 1.0,
        "stopped {elapsed:.2} s after the start"
    );
    assert!(elapsed >= timeout);
    let cwd = evaluation
        .feedback
        .lines()
        .find_map(|line| line.strip_prefix("cwd="))
        .unwrap();
    assert!(!Path::new(cwd).exists(), "{cwd} is still there");
}

/// A leader that forks a child ignoring SIGTERM, a grandchild, a child in its own process
/// group and one in its own session, waits until all are in place (each marks a file in
/// its private directory), says so, and then either exits (`leave`) or sleeps forever
/// (`hang`).
const FORKING_TREE: &str = r#"
import os, signal, sys, time
mode, ready = sys.argv[1], "ready"
os.mkdir(ready)
def child(name, setup):
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        setup()
        open(os.path.join(ready, name), "w").close()
        while True:
            time.sleep(1)
def grandparent():
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open(os.path.join(ready, "grandchild"), "w").close()
        while True:
            time.sleep(1)
child("plain", lambda: None)
child("parent", grandparent)
child("own-group", lambda: os.setpgid(0, 0))
child("own-session", os.setsid)
while len(os.listdir(ready)) < 5:
    time.sleep(0.01)
print("all 5 started", file=sys.stderr, flush=True)
print('{"combined_score": 1}', flush=True)
if mode == "hang":
    while True:
        time.sleep(1)
"#;

fn run_forking_tree(
    name: &str,
    mode: &str,
    timeout: f64,
    isolation: Isolation,
) -> (Evaluation, f64) {
    let dir = TestDir::new(name);
    let script = dir.write("tree.py", FORKING_TREE);
    let task = task(&dir, &["python3", &script, mode], |config| {
        config.timeout_seconds = timeout;
        config.isolation = isolation;
    });
    let started = Instant::now();
    let evaluation = task.evaluate("x", 0).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        evaluation.feedback.contains("all 5 started"),
        "not every process started: {}",
        evaluation.feedback
    );
    let left = live_processes_mentioning(&script);
    assert!(left.is_empty(), "left behind: {left:?}");
    (evaluation, elapsed)
}

#[test]
fn a_forking_tree_leaves_no_process_behind_when_its_leader_exits() {
    for isolation in [Isolation::Auto, Isolation::Off] {
        let (evaluation, _) = run_forking_tree("tree-leave", "leave", 20.0, isolation);
        assert!(evaluation.passed, "{}", evaluation.feedback);
        assert!(
            !evaluation.feedback.contains("escaped"),
            "{}",
            evaluation.feedback
        );
        // Only the sweep counts what it kills; in namespaces the kernel kills them unseen.
        if evaluation.provenance.sandbox == Some(SandboxKind::ProcessGroup) {
            assert!(
                evaluation
                    .feedback
                    .contains("5 process(es) left running by the command were killed"),
                "{}",
                evaluation.feedback
            );
        }
    }
}

#[test]
fn a_forking_tree_is_killed_whole_at_the_timeout() {
    let timeout = 2.0;
    let (evaluation, elapsed) = run_forking_tree("tree-hang", "hang", timeout, Isolation::Auto);
    assert_failed_at(&evaluation, Stage::Run, "wall-clock limit");
    assert!(
        elapsed < timeout + 1.0,
        "stopped {elapsed:.2} s after the start"
    );
}

#[test]
fn a_memory_hog_is_stopped_by_the_address_space_limit() {
    let dir = TestDir::new("memory");
    // A child hogs too, and sleeps on once the parent has died of it.
    let script = dir.write(
        "hog.py",
        "import os, time\n\
         child = os.fork() == 0\n\
         a = []\n\
         try:\n    while True:\n        a.append(bytearray(16 << 20))\n\
         except MemoryError:\n    if child:\n        a.clear()\n        time.sleep(1000)\n    raise\n",
    );
    let task = task(&dir, &["python3", &script], |config| {
        config.memory_bytes = 256 << 20;
        config.timeout_seconds = 30.0;
    });
    let started = Instant::now();
    let evaluation = task.evaluate("x", 0).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_failed_at(
        &evaluation,
        Stage::Run,
        "out of memory under the address-space limit of 256 MiB",
    );
    assert!(
        evaluation.feedback.contains("MemoryError"),
        "{}",
        evaluation.feedback
    );
    // Far inside the wall-clock limit: the memory limit stopped it, not the timeout.
    assert!(elapsed < 10.0, "took {elapsed:.2} s");
}

#[test]
fn a_cpu_spinner_is_stopped_by_the_cpu_limit() {
    let dir = TestDir::new("cpu");
    let argv = [
        "sh".to_string(),
        "-c".to_string(),
        "while :; do :; done".to_string(),
    ];
    let limits = Limits {
        wall: Duration::from_secs(60),
        cpu_seconds: 1,
        memory_bytes: 1 << 30,
        file_bytes: 1 << 20,
        output_bytes: 1 << 10,
    };
    let report = sandbox::run(&Job {
        argv: &argv,
        env: &[],
        dir: &dir.0,
        limits: &limits,
    })
    .unwrap();
    assert_eq!(report.limit_hit, Some(LimitHit::CpuTime));
    assert_eq!(report.exit, Exit::Signal(libc::SIGXCPU));
    // The kernel's CPU accounting and the limit's tick do not agree to the millisecond.
    assert!(report.cpu >= Duration::from_millis(500), "{:?}", report.cpu);
    assert!(report.wall < limits.wall);
}

#[test]
fn the_private_directory_is_removed_even_when_made_read_only() {
    let dir = TestDir::new("scratch");
    let script = dir.write(
        "evaluate.sh",
        "[ \"$(dirname \"$1\")\" = \"$(pwd)\" ] && [ \"$TMPDIR\" = \"$(pwd)\" ] || exit 9\n\
         mkdir -p locked/deeper && touch locked/deeper/file && chmod 000 locked/deeper && chmod 500 locked\n\
         printf '{\"combined_score\": 1, \"cwd\": \"%s\"}\\n' \"$(pwd)\"\n",
    );
    let task = task(&dir, &["sh", &script, "{program}"], |config| {
        config.program_file = "candidate.txt".into();
    });
    let evaluation = task.evaluate("x", 0).unwrap();
    assert!(evaluation.passed, "{}", evaluation.feedback);
    let cwd = evaluation
        .feedback
        .lines()
        .find_map(|line| line.strip_prefix("cwd: "))
        .unwrap();
    let cwd = Path::new(cwd);
    assert!(cwd.starts_with(std::env::temp_dir()), "{}", cwd.display());
    assert!(!cwd.exists(), "{} is still there", cwd.display());
}

#[test]
fn the_command_sees_only_the_environment_it_is_given() {
    let dir = TestDir::new("env");
    let code = "cat; printf '{\"combined_score\": 1, \"vars\": \"%s\", \"trial\": %s}\\n' \
                \"$(env | cut -d= -f1 | sort | tr '\\n' ' ')\" \"$EVOKERNEL_TRIAL\"";
    let task = task(&dir, &["sh", "-c", code], |config| {
        config.inherit_env = vec!["PATH".into()];
        config.env.insert("GREETING".into(), "hello".into());
    });
    let evaluation = task.evaluate("x", 7).unwrap();
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert_eq!(evaluation.metrics["trial"], 7.0);
    assert_eq!(evaluation.provenance.trial, 7);
    let vars = evaluation
        .feedback
        .lines()
        .find_map(|line| line.strip_prefix("vars: "))
        .unwrap();
    let vars: Vec<&str> = vars.split_whitespace().collect();
    for expected in [
        "GREETING",
        "PATH",
        "TMPDIR",
        "EVOKERNEL_PROGRAM",
        "EVOKERNEL_RESULTS_DIR",
    ] {
        assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
    }
    assert!(!vars.contains(&"HOME"), "{vars:?}");
    assert!(!vars.iter().any(|v| v.starts_with("CARGO")), "{vars:?}");
}

#[test]
fn configuration_mistakes_are_errors_naming_the_fix() {
    let dir = TestDir::new("config");
    let path = dir.write("task.toml", "command = [\"python3\"]\ntimeout_secs = 5\n");
    match CommandTask::from_file(Path::new(&path)) {
        Err(Error::Config { path: p, message }) => {
            assert_eq!(p, Path::new(&path));
            assert!(
                message.contains("unknown field `timeout_secs`"),
                "{message}"
            );
        }
        other => panic!("expected a config error, got {other:?}"),
    }

    let path = dir.write(
        "good.toml",
        "command = [\"sh\", \"{config_dir}/evaluate.sh\"]\ntimeout_seconds = 5\n",
    );
    dir.write("evaluate.sh", "echo '{\"combined_score\": 4}'\n");
    let task = CommandTask::from_file(Path::new(&path)).unwrap();
    assert_eq!(task.evaluate("x", 0).unwrap().score, Some(4.0));

    let missing = self::task(&dir, &["/nonexistent/evaluator"], |_| {});
    match missing.evaluate("x", 0) {
        Err(Error::Invalid(message)) => {
            assert!(message.contains("cannot run the command"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_file_larger_than_the_file_size_limit_stops_the_writer() {
    let dir = TestDir::new("fsize");
    let task = task(
        &dir,
        &["sh", "-c", "exec head -c 3000000 /dev/zero > big"],
        |config| config.file_bytes = 1 << 20,
    );
    let evaluation = task.evaluate("x", 0).unwrap();
    assert_failed_at(&evaluation, Stage::Run, "file-size limit of 1 MiB");
}

#[test]
fn parallel_evaluations_keep_to_their_own_directories_and_processes() {
    let dir = TestDir::new("parallel");
    // Each run leaves a child behind; sweeping one run must not touch another's.
    let script = dir.write(
        "evaluate.sh",
        "sleep 1000 &\nsleep 0.2\nprintf '{\"combined_score\": %s}\\n' \"$(cat program.py)\"\n",
    );
    for isolation in [Isolation::Auto, Isolation::Off] {
        let task = task(&dir, &["sh", &script], |config| {
            config.isolation = isolation
        });
        std::thread::scope(|scope| {
            let runs: Vec<_> = (0..4)
                .map(|i| {
                    let task = &task;
                    scope.spawn(move || (i, task.evaluate(&i.to_string(), 0).unwrap()))
                })
                .collect();
            for run in runs {
                let (i, evaluation) = run.join().unwrap();
                assert!(evaluation.passed, "{}", evaluation.feedback);
                assert_eq!(evaluation.score, Some(i as f64));
                if evaluation.provenance.sandbox == Some(SandboxKind::ProcessGroup) {
                    assert!(
                        evaluation.feedback.contains("1 process(es) left running"),
                        "{}",
                        evaluation.feedback
                    );
                }
            }
        });
    }
}

/// The process-group sandbox's documented gap: a process that leaves the session and drops
/// its environment cannot be found without namespaces. The run must still end promptly and
/// say so. (`tests/sandbox.rs` shows that in namespaces nothing escapes.)
#[test]
fn an_escaped_process_holding_the_output_is_reported_not_waited_for() {
    let dir = TestDir::new("escape");
    let marker = (7_000_000 + std::process::id()).to_string();
    let code = format!(
        "import os, shutil\n\
         sleep = shutil.which('sleep')\n\
         if os.fork() == 0:\n    os.setsid()\n    os.execve(sleep, ['sleep', '{marker}'], {{}})\n\
         print('{{\"combined_score\": 1}}')\n"
    );
    let task = task(&dir, &["python3", "-c", &code], |config| {
        config.isolation = Isolation::Off;
    });
    let started = Instant::now();
    let evaluation = task.evaluate("x", 0).unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let escaped = live_processes_mentioning(&marker);
    for process in &escaped {
        let pid: i32 = process.split(':').next().unwrap().parse().unwrap();
        // SAFETY: kill has no memory-safety preconditions; the pid is our test's escapee.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert_eq!(escaped.len(), 1, "{escaped:?}");
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert!(
        evaluation.feedback.contains("escaped the sandbox"),
        "{}",
        evaluation.feedback
    );
    assert!(elapsed < 10.0, "waited {elapsed:.2} s for the escapee");
}

#[test]
fn a_results_file_that_is_a_fifo_or_a_link_fails_without_hanging() {
    let dir = TestDir::new("hostile");
    for (setup, phrase) in [
        (
            "mkfifo \"$1/metrics.json\"",
            "results/metrics.json must be a regular file",
        ),
        (
            "ln -s /dev/zero \"$1/metrics.json\"",
            "cannot open results/metrics.json",
        ),
        (
            "ln -s /dev/zero \"$1/correct.json\"",
            "cannot open results/correct.json",
        ),
    ] {
        let code = format!("{setup}; echo '{{\"combined_score\": 1}}'");
        let task = task(&dir, &["sh", "-c", &code, "sh", "{results_dir}"], |_| {});
        let evaluation = task.evaluate("x", 0).unwrap();
        assert_failed_at(&evaluation, Stage::Run, phrase);
    }
}
