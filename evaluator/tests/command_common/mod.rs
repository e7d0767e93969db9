//! What the command-task tests share: a scratch directory for the tests' own scripts, a task
//! over it, and the checks on what a run leaves behind.

use std::fs;
use std::path::PathBuf;

use evaluator::command::{CommandConfig, CommandTask};
use evaluator::{Evaluation, Stage};

/// A directory for one test's scripts (the task's `{config_dir}`), removed at the end.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!(
            "evokernel-command-test-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TestDir(path)
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A task running `command` with `dir` as its config directory, 20 s of wall clock, and
/// whatever else `tweak` sets.
pub fn task(
    dir: &TestDir,
    command: &[&str],
    tweak: impl FnOnce(&mut CommandConfig),
) -> CommandTask {
    let mut config = CommandConfig::new(command.iter().map(|s| s.to_string()).collect());
    config.timeout_seconds = 20.0;
    tweak(&mut config);
    CommandTask::new(config, &dir.0).unwrap()
}

pub fn assert_failed_at(evaluation: &Evaluation, stage: Stage, phrase: &str) {
    assert_eq!(evaluation.stage_reached, stage, "{}", evaluation.feedback);
    assert!(!evaluation.passed);
    assert_eq!(evaluation.score, None);
    assert!(
        evaluation.feedback.contains(phrase),
        "feedback lacks {phrase:?}:\n{}",
        evaluation.feedback
    );
}

/// Live (not zombie) processes whose command line mentions `marker`.
pub fn live_processes_mentioning(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| Some(stat[stat.rfind(')')? + 2..].starts_with('Z')))
            .unwrap_or(true);
        if cmdline.contains(marker) && !zombie {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}
