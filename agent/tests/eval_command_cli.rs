//! `evokernel eval --task command` end to end: the real binary, a config with a `[command]`
//! section, and a scoring script in Python.

use std::process::Command;

#[test]
fn a_command_task_scores_a_program_from_the_cli() {
    let dir = std::env::temp_dir().join(format!("evokernel-eval-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("eval.toml"),
        "[command]\ncommand = [\"python3\", \"{config_dir}/evaluate.py\", \"{program}\"]\n\
         timeout_seconds = 20\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("evaluate.py"),
        "import json, sys\nsrc = open(sys.argv[1]).read()\n\
         print(json.dumps({'combined_score': len(src), 'lines': src.count('\\n')}))\n",
    )
    .unwrap();
    std::fs::write(dir.join("program.py"), "print('hello')\n").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_evokernel"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let out = run(&[
        "eval",
        "program.py",
        "--task",
        "command",
        "--config",
        "eval.toml",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let evaluation: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(evaluation["passed"], true);
    assert_eq!(evaluation["score"], 15.0);
    assert_eq!(evaluation["metrics"]["lines"], 1.0);

    // Confirmation re-runs the command on trial 1; a deterministic score holds.
    let out = run(&[
        "eval",
        "program.py",
        "--task",
        "command",
        "--config",
        "eval.toml",
        "--confirm",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let both: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(both["confirmation"]["holds"], true);
    assert_eq!(
        both["confirmation"]["evaluations"][0]["provenance"]["trial"],
        1
    );

    // A candidate that fails its evaluation is a non-zero exit, with the report still printed.
    std::fs::write(dir.join("broken.py"), "").unwrap();
    std::fs::write(
        dir.join("strict.toml"),
        "[command]\ncommand = [\"python3\", \"-c\", \"import sys; sys.exit(3)\"]\n",
    )
    .unwrap();
    let failed = run(&[
        "eval",
        "broken.py",
        "--task",
        "command",
        "--config",
        "strict.toml",
        "--json",
    ]);
    assert_eq!(failed.status.code(), Some(1));
    let evaluation: serde_json::Value = serde_json::from_slice(&failed.stdout).unwrap();
    assert_eq!(evaluation["passed"], false);
    assert!(String::from_utf8_lossy(&failed.stderr).contains("did not pass"));

    let missing = run(&["eval", "program.py", "--task", "command"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("[command] section"));
    std::fs::remove_dir_all(&dir).unwrap();
}
