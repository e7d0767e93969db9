//! What the namespace sandbox guarantees, each shown by a program that tries to break it:
//! nothing it starts outlives the evaluation, it writes nowhere but its private directory and
//! reads nothing it was not shown, it cannot change the grader, a quota stops it filling the
//! disk, it has no network unless the config gives it one, and with `candidate_command` it
//! cannot forge the score. Every test here needs bubblewrap and user namespaces and says so
//! when the machine lacks them (CI installs bubblewrap, so there they run).
#![cfg(target_os = "linux")]

mod command_common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use command_common::{assert_failed_at, live_processes_mentioning, task, TestDir};
use evaluator::command::{probe_namespaces, CommandConfig, CommandTask, Isolation};
use evaluator::{Error, Evaluation, SandboxKind, Stage, Task};

/// Whether the namespace sandbox can run here; prints why a test is skipped when not.
fn namespaces(test: &str) -> bool {
    match probe_namespaces() {
        Ok(()) => true,
        Err(reason) => {
            eprintln!("skipping {test}: the namespace sandbox cannot run here: {reason}");
            false
        }
    }
}

/// A task that must run in namespaces.
fn enclosed(
    dir: &TestDir,
    command: &[&str],
    tweak: impl FnOnce(&mut CommandConfig),
) -> CommandTask {
    task(dir, command, |config| {
        config.isolation = Isolation::Required;
        tweak(config);
    })
}

fn evaluate(task: &CommandTask, source: &str) -> Evaluation {
    let evaluation = task.evaluate(source, 0).unwrap();
    assert_eq!(
        evaluation.provenance.sandbox,
        Some(task_sandbox(task)),
        "{}",
        evaluation.feedback
    );
    evaluation
}

fn task_sandbox(task: &CommandTask) -> SandboxKind {
    match task.config().isolation {
        Isolation::Off => SandboxKind::ProcessGroup,
        Isolation::Required | Isolation::Auto => SandboxKind::Namespaces,
    }
}

/// The value a `printf 'name=%s'` line of the command's stderr gave, from the feedback.
fn reported<'a>(evaluation: &'a Evaluation, name: &str) -> &'a str {
    evaluation
        .feedback
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {}", evaluation.feedback))
}

/// Escapees of every kind the process-group sweep can miss: one leaves the session and
/// replaces itself by a program with an empty environment; one is a fork chain whose every
/// link leaves the session, execs itself with an empty environment and forks the next link.
/// Each carries the marker in its command line and ends itself after `SECONDS`, so that a
/// failing test leaves nothing running for long.
const ESCAPEES: &str = r#"
import os, sys, time
marker, role = sys.argv[1], sys.argv[2]
SECONDS = 30
if role == "link":
    deadline = float(sys.argv[3])
    os.setsid()
    while time.time() < deadline:
        if os.fork() != 0:
            os._exit(0)
        os.execve(sys.executable, [sys.executable, sys.argv[0], marker, "link", str(deadline)], {})
    os._exit(0)
started, done = os.pipe()
if os.fork() == 0:
    os.setsid()
    os.write(done, b"s")
    os.execve("/bin/sleep", ["sleep", str(SECONDS), marker], {})
if os.fork() == 0:
    os.write(done, b"c")
    os.execve(sys.executable, [sys.executable, sys.argv[0], marker, "link", str(time.time() + SECONDS)], {})
assert len(os.read(started, 1)) + len(os.read(started, 1)) == 2
time.sleep(0.3)
print('{"combined_score": 1}', flush=True)
"#;

#[test]
fn escapees_that_leave_the_session_wipe_their_environment_and_fork_on_do_not_outlive_the_run() {
    if !namespaces("escapees") {
        return;
    }
    let dir = TestDir::new("ns-escapees");
    let script = dir.write("escape.py", ESCAPEES);
    let marker = format!("evokernel-escapee-{}", std::process::id());
    let task = enclosed(&dir, &["python3", &script, &marker, "leader"], |_| {});
    let evaluation = evaluate(&task, "x");
    assert!(evaluation.passed, "{}", evaluation.feedback);
    let left = live_processes_mentioning(&marker);
    // Checked again a moment later: a fork chain is invisible while a link is between fork
    // and exec only if it survived at all.
    std::thread::sleep(Duration::from_millis(300));
    let later = live_processes_mentioning(&marker);
    assert!(
        left.is_empty() && later.is_empty(),
        "still alive: {left:?} {later:?}"
    );
    assert!(
        !evaluation.feedback.contains("escaped"),
        "{}",
        evaluation.feedback
    );
}

#[test]
fn writes_outside_the_private_directory_fail_or_vanish_and_nothing_else_is_readable() {
    if !namespaces("writes") {
        return;
    }
    let dir = TestDir::new("ns-writes");
    let grader_text = "#!/bin/sh\n# the grader\n";
    let grader = dir.write("grader.sh", grader_text);
    // A stand-in for the kernel database and the project tree: a directory the run is not shown.
    let project = TestDir::new("ns-writes-project");
    let database = project.write("evokernel.db", "the discovered kernels");
    let pid = std::process::id();
    let temp = std::env::temp_dir();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let outside = [
        ("grader", grader.clone()),
        ("config_dir", format!("{}/new-file", dir.0.display())),
        ("database", database.clone()),
        ("project", format!("{}/new-file", project.0.display())),
        ("tmp", format!("/tmp/evokernel-sandbox-escape-{pid}")),
        ("home", format!("{home}/evokernel-sandbox-escape-{pid}")),
        ("root", format!("/evokernel-sandbox-escape-{pid}")),
        ("usr", format!("/usr/evokernel-sandbox-escape-{pid}")),
        ("shm", format!("/dev/shm/evokernel-sandbox-escape-{pid}")),
    ];
    let mut script = String::new();
    for (name, path) in &outside {
        script.push_str(&format!(
            "if echo forged >> '{path}' 2>/dev/null; then echo {name}=written >&2; \
             else echo {name}=refused >&2; fi\n"
        ));
    }
    script.push_str(&format!(
        "cat '{database}' >/dev/null 2>&1 && echo database_read=yes >&2 || echo database_read=no >&2\n\
         ls '{}' >/dev/null 2>&1 && echo project_listed=yes >&2 || echo project_listed=no >&2\n\
         echo private > mine && echo private=$(cat mine) >&2\n\
         echo tmp_entries=$(ls -A '{}' | tr '\\n' ' ') >&2\n\
         echo root_entries=$(ls -A / | tr '\\n' ' ') >&2\n\
         echo '{{\"combined_score\": 1}}'\n",
        project.0.display(),
        temp.display()
    ));
    let script = dir.write("try.sh", &script);
    let task = enclosed(&dir, &["sh", &script], |_| {});
    let evaluation = evaluate(&task, "x");
    assert!(evaluation.passed, "{}", evaluation.feedback);

    // Everything outside is refused, except /dev/shm, which is the run's own and vanishes.
    for (name, path) in &outside {
        let expected = if *name == "shm" { "written" } else { "refused" };
        assert_eq!(reported(&evaluation, name), expected, "{name}: {path}");
        if *name != "grader" && *name != "database" {
            assert!(!Path::new(path).exists(), "{path} was written");
        }
    }
    assert_eq!(fs::read_to_string(&grader).unwrap(), grader_text);
    assert_eq!(
        fs::read_to_string(&database).unwrap(),
        "the discovered kernels"
    );
    assert_eq!(reported(&evaluation, "database_read"), "no");
    assert_eq!(reported(&evaluation, "project_listed"), "no");
    assert_eq!(reported(&evaluation, "private"), "private");
    // The temp dir shows only the run's own directory and the config's (both live there
    // here), not other runs' or anything else of the machine's.
    let config_dir = dir.0.file_name().unwrap().to_str().unwrap();
    let mut tmp: Vec<&str> = reported(&evaluation, "tmp_entries")
        .split_whitespace()
        .collect();
    tmp.retain(|entry| *entry != config_dir);
    assert_eq!(tmp.len(), 1, "{tmp:?}");
    assert!(
        tmp[0].starts_with(&format!("evokernel-command-{pid}-")),
        "{tmp:?}"
    );
    // The root holds the system directories and nothing else.
    let mut expected: Vec<String> = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
    ]
    .into_iter()
    .filter(|dir| Path::new(dir).exists())
    .map(|dir| dir[1..].to_string())
    .chain(["dev", "proc"].map(String::from))
    .chain(
        temp.iter()
            .nth(1)
            .map(|top| top.to_string_lossy().into_owned()),
    )
    .collect();
    expected.sort();
    let mut root: Vec<&str> = reported(&evaluation, "root_entries")
        .split_whitespace()
        .collect();
    root.sort();
    assert_eq!(root, expected);
}

/// The grader scores the candidate's answer from the file the candidate left against the key
/// beside it; it also records whether the candidate's stdout reached it.
const GRADER: &str = r#"#!/bin/sh
answer=$(cat "$1/answer.txt")
score=0; [ "$answer" = "$(cat "$(dirname "$0")/answer-key.txt")" ] && score=1
greeted=0; grep -q hello "$2" && greeted=1
printf '{"combined_score": %s, "greeted": %s}' "$score" "$greeted" > "$3/metrics.json"
"#;

/// A candidate that does not know the answer and tries every way to forge a perfect score
/// and to change the grader: it points its answer at the grader's key, writes results
/// wherever it can, rewrites the grader, prints a score and leaves a straggler.
fn forger(grader: &str) -> String {
    let key = Path::new(grader).with_file_name("answer-key.txt");
    format!(
        r#"ln -s '{}' answer.txt
echo hello
for dir in . results ../results ../grader ../grader/results "$TMPDIR" /tmp /dev/shm; do
  mkdir -p "$dir" 2>/dev/null
  echo '{{"combined_score": 100}}' > "$dir/metrics.json" 2>/dev/null
  echo '{{"correct": true}}' > "$dir/correct.json" 2>/dev/null
done
echo 'echo {{\"combined_score\": 100}}; exit 0' > '{grader}' 2>/dev/null
chmod 777 '{grader}' 2>/dev/null
# A straggler that would forge the results while the grader runs.
(setsid sh -c 'sleep 0.5; for d in /tmp/evokernel-command-*/results; do echo "{{\"combined_score\": 100}}" > $d/metrics.json; done' &) 2>/dev/null
echo '{{"combined_score": 100}}'
"#,
        key.display()
    )
}

#[test]
fn a_candidate_command_cannot_forge_the_score_or_change_the_grader() {
    if !namespaces("forge") {
        return;
    }
    let dir = TestDir::new("ns-forge");
    let grader = dir.write("grade.sh", GRADER);
    dir.write("answer-key.txt", "42\n");
    let task = enclosed(
        &dir,
        &[
            "sh",
            "{config_dir}/grade.sh",
            "{candidate_dir}",
            "{candidate_stdout}",
            "{results_dir}",
        ],
        |config| {
            config.candidate_command = Some(vec!["sh".into(), "{program}".into()]);
            config.program_file = "candidate.sh".into();
        },
    );
    let evaluation = evaluate(&task, &forger(&grader));
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert_eq!(evaluation.score, Some(0.0), "{}", evaluation.feedback);
    assert_eq!(evaluation.metrics["greeted"], 1.0);
    assert!(
        evaluation
            .feedback
            .contains("1 symbolic link(s) or special file(s) the candidate left were removed"),
        "{}",
        evaluation.feedback
    );
    assert!(evaluation
        .metrics
        .contains_key("run.candidate.wall_seconds"));
    assert_eq!(fs::read_to_string(&grader).unwrap(), GRADER);

    // The same pipeline scores an honest candidate.
    let evaluation = evaluate(&task, "echo 42 > answer.txt\n");
    assert_eq!(evaluation.score, Some(1.0), "{}", evaluation.feedback);
    assert_eq!(evaluation.metrics["greeted"], 0.0);
}

#[test]
fn a_candidate_that_fails_is_reported_and_the_grader_does_not_run() {
    if !namespaces("candidate-fails") {
        return;
    }
    let dir = TestDir::new("ns-candidate-fails");
    let task = enclosed(
        &dir,
        &["sh", "-c", "echo '{\"combined_score\": 1}'"],
        |config| {
            config.candidate_command = Some(vec![
                "sh".into(),
                "-c".into(),
                "echo 'Traceback: boom' >&2; exit 4".into(),
            ]);
        },
    );
    let evaluation = evaluate(&task, "x");
    assert_failed_at(
        &evaluation,
        Stage::Run,
        "the candidate command ended with exit status 4",
    );
    assert!(
        evaluation
            .feedback
            .contains("the candidate's stderr:\nTraceback: boom"),
        "{}",
        evaluation.feedback
    );
    assert!(!evaluation.metrics.contains_key("run.wall_seconds"));
}

#[test]
fn the_private_directory_quota_stops_a_disk_filler_of_small_files() {
    if !namespaces("quota") {
        return;
    }
    let dir = TestDir::new("ns-quota");
    // Each file is under the file-size limit; together they pass the byte quota.
    let bytes = enclosed(
        &dir,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 50); do head -c 1000000 /dev/zero > f$i || exit 1; done; \
             echo '{\"combined_score\": 1}'",
        ],
        |config| {
            config.private_dir_bytes = 8 << 20;
            config.file_bytes = 2 << 20;
        },
    );
    let evaluation = evaluate(&bytes, "x");
    assert_failed_at(
        &evaluation,
        Stage::Run,
        "the private directory is full (at most 8 MiB in 100000 files",
    );
    assert!(
        evaluation.feedback.contains("No space left on device"),
        "{}",
        evaluation.feedback
    );
    // Empty files take no bytes, only inodes.
    let files = enclosed(
        &dir,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 5000); do : > e$i || exit 1; done; echo '{\"combined_score\": 1}'",
        ],
        |config| config.private_dir_files = 200,
    );
    let evaluation = evaluate(&files, "x");
    assert_failed_at(&evaluation, Stage::Run, "in 200 files and directories");
}

#[test]
fn the_network_is_unreachable_unless_the_config_allows_it() {
    if !namespaces("network") {
        return;
    }
    let dir = TestDir::new("ns-network");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "if (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; then r=1; else r=0; fi; \
         echo \"{{\\\"combined_score\\\": $r}}\""
    );
    let command = ["bash", "-c", code.as_str()];
    let offline = enclosed(&dir, &command, |_| {});
    assert_eq!(evaluate(&offline, "x").score, Some(0.0));
    let online = enclosed(&dir, &command, |config| config.network = true);
    assert_eq!(evaluate(&online, "x").score, Some(1.0));
}

#[test]
fn isolation_off_is_the_process_group_sandbox_and_the_provenance_says_so() {
    let dir = TestDir::new("ns-off");
    let command = [
        "sh",
        "-c",
        "echo written > \"$0/written-from-the-run\" 2>/dev/null; echo '{\"combined_score\": 1}'",
        "{config_dir}",
    ];
    let off = task(&dir, &command, |config| config.isolation = Isolation::Off);
    let evaluation = evaluate(&off, "x");
    assert!(evaluation.passed, "{}", evaluation.feedback);
    // Nothing stops a write outside the private directory there.
    assert!(dir.0.join("written-from-the-run").exists());
    fs::remove_file(dir.0.join("written-from-the-run")).unwrap();

    let required = task(&dir, &command, |config| {
        config.isolation = Isolation::Required
    });
    if !namespaces("isolation-off") {
        // Where namespaces cannot run, `required` refuses and names what to install.
        match required.evaluate("x", 0) {
            Err(Error::Invalid(message)) => assert!(
                message.contains("isolation = \"required\"")
                    && message.contains("apt-get install bubblewrap"),
                "{message}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        return;
    }
    let evaluation = evaluate(&required, "x");
    assert!(evaluation.passed, "{}", evaluation.feedback);
    assert!(!dir.0.join("written-from-the-run").exists());
}

#[test]
fn read_only_paths_are_seen_and_not_changed() {
    if !namespaces("read-only-paths") {
        return;
    }
    let dir = TestDir::new("ns-read-only");
    let beside = dir.write("beside.txt", "beside the config\n");
    fs::create_dir(dir.0.join("data")).unwrap();
    let data = dir.write("data/input.txt", "7\n");
    let elsewhere = TestDir::new("ns-read-only-elsewhere");
    let table = elsewhere.write("table.txt", "35\n");
    let script = format!(
        "a=$(cat '{data}'); b=$(cat '{table}'); \
         echo changed > '{table}' 2>/dev/null && echo table=written >&2 || echo table=refused >&2; \
         cat '{beside}' >/dev/null 2>&1 && echo beside=read >&2 || echo beside=hidden >&2; \
         echo \"{{\\\"combined_score\\\": $((a * b))}}\""
    );
    // A candidate run sees them too, though not the config's directory.
    let task = enclosed(
        &dir,
        &["sh", "-c", "cat \"$0\"", "{candidate_stdout}"],
        |config| {
            config.candidate_command = Some(vec!["sh".into(), "-c".into(), script]);
            config.read_only_paths = vec!["data".into(), elsewhere.0.clone()];
        },
    );
    let evaluation = evaluate(&task, "x");
    assert_eq!(evaluation.score, Some(245.0), "{}", evaluation.feedback);
    assert_eq!(reported(&evaluation, "table"), "refused");
    assert_eq!(reported(&evaluation, "beside"), "hidden");
    assert_eq!(fs::read_to_string(&table).unwrap(), "35\n");

    let missing = CommandTask::new(
        {
            let mut config = CommandConfig::new(vec!["true".into()]);
            config.read_only_paths = vec!["no-such-dir".into()];
            config
        },
        &dir.0,
    );
    match missing {
        Err(Error::Invalid(message)) => {
            assert!(
                message.contains("no-such-dir, which does not exist"),
                "{message}"
            )
        }
        other => panic!("expected an error, got {other:?}"),
    }
}
