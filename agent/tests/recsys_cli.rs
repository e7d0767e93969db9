//! `evokernel recsys` end to end on a tiny dataset written here: train writes a checkpoint
//! that eval reads, and bad data or a bad kernel fail with a message naming what to fix.

use std::path::PathBuf;
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("evokernel-recsys-cli-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 24 users walking a catalogue of 16 items in steps of one, in ML-100K `u.data` form, in a
/// directory of the test's own (tests run in parallel, and `scratch` empties its directory).
fn walking_data(test: &str) -> PathBuf {
    let dir = scratch(&format!("walk-{test}"));
    let mut lines = String::new();
    for user in 0..24 {
        for step in 0..8 {
            let item = (user * 5 + step) % 16 + 1;
            lines += &format!("{}\t{item}\t4\t{}\n", user + 1, 1000 + step);
        }
    }
    std::fs::write(dir.join("u.data"), lines).unwrap();
    dir
}

fn evokernel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evokernel"))
        .args(args)
        .output()
        .expect("run evokernel")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const TINY: [&str; 10] = [
    "--epochs",
    "2",
    "--d-model",
    "16",
    "--max-len",
    "8",
    "--batch-size",
    "8",
    "--seed",
    "3",
];

#[test]
fn train_writes_a_checkpoint_that_eval_reads() {
    let data = walking_data("train");
    let out = scratch("ckpt");
    let data_arg = data.to_str().unwrap();
    let out_arg = out.to_str().unwrap();
    let mut args = vec!["recsys", "train", "--data", data_arg, "--out", out_arg];
    args.extend(TINY);
    let trained = evokernel(&args);
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(
        stderr(&trained).contains("epoch   1"),
        "progress goes to stderr"
    );
    assert!(out.join("model.safetensors").is_file());

    let eval = evokernel(&["recsys", "eval", "--checkpoint", out_arg, "--json"]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    for model in ["sasrec", "popularity", "item-knn"] {
        let m = &json["models"][model]["seen_filtered"];
        assert_eq!(m["cases"], 24, "{json}");
        let hr = m["hr_10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&hr));
    }
    assert!(json["kernel"].as_str().unwrap().contains("exact"));
}

#[test]
fn a_malformed_dataset_line_is_named() {
    let dir = scratch("bad-line");
    std::fs::write(dir.join("u.data"), "1\t1\t4\t10\n1\t2\t4\n").unwrap();
    let out = scratch("bad-line-out");
    let output = evokernel(&[
        "recsys",
        "train",
        "--data",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("u.data:2:"), "{err}");
}

#[test]
fn a_kernel_the_recommender_cannot_train_is_named() {
    let data = walking_data("kernel");
    let kernel = scratch("kernel").join("linear.akl");
    std::fs::write(&kernel, "(kernel l (mechanism linear (chunk 64)))").unwrap();
    let out = scratch("kernel-out");
    let mut args = vec![
        "recsys",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    let output = evokernel(&args);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("linear.akl"), "{err}");
    assert!(err.contains("mechanism `linear`"), "{err}");
}

#[test]
fn a_window_step_longer_than_the_model_reads_is_named() {
    let data = walking_data("step");
    let out = scratch("step-out");
    let mut args = vec![
        "recsys",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--window-step",
        "9",
    ];
    args.extend(TINY);
    let output = evokernel(&args);
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("window_step 9") && err.contains("max_len 8"),
        "{err}"
    );
}
