//! `evokernel recsys` end to end on a tiny dataset written here: train writes a checkpoint
//! that eval reads, and bad data or a bad kernel fail with a message naming what to fix.
//! `--kernel` also takes a program id or hash prefix from a database filled here: the
//! checkpoint records the kernel's hash, program and campaign; an unknown, ambiguous or
//! malformed reference and a missing database are refused, and no file is created.

mod db_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agent::campaign::Strategy;
use agent::db::{Db, NewCampaign, NewProgram};
use db_common::library_program;
use serde_json::Value;

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

/// Programs of the filled database: (id, hash) by role.
struct Filled {
    window: (i64, String),
    sink_window: (i64, String),
}

/// Campaign `found` holds window and sink_window; campaign `again` holds window too, so
/// window's hash prefixes are ambiguous (its ids are not).
fn fill(path: &Path) -> Filled {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = Db::open(path).await.unwrap();
        let mut ids = Vec::new();
        for (campaign, kernel) in [
            ("found", "window"),
            ("found", "sink_window"),
            ("again", "window"),
        ] {
            let campaign_id = match db.campaign_by_name(campaign).await {
                Ok(c) => c.id,
                Err(_) => db
                    .create_campaign(&NewCampaign {
                        name: campaign,
                        config_toml: "",
                        seed: 1,
                        strategy: Strategy::Evolve,
                        config_dir: None,
                    })
                    .await
                    .unwrap(),
            };
            let (text, hash) = library_program(kernel);
            let id = db
                .insert_program(&NewProgram {
                    campaign_id,
                    hash: &hash,
                    canonical_text: &text,
                    parent_id: None,
                    second_parent_id: None,
                    island: 0,
                    generation: 0,
                    mutator: "seed",
                    proposal: None,
                })
                .await
                .unwrap()
                .id();
            ids.push((id, hash));
        }
        db.close().await.unwrap();
        Filled {
            window: ids[0].clone(),
            sink_window: ids[1].clone(),
        }
    })
}

/// Runs `recsys train` on the walking data with `kernel` from `db`, into `out`.
fn train_with(data: &Path, db: &Path, kernel: &str, out: &Path) -> Output {
    let mut args = vec![
        "--db",
        db.to_str().unwrap(),
        "recsys",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--kernel",
        kernel,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(TINY);
    evokernel(&args)
}

fn checkpoint_meta(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint.json")).unwrap()).unwrap()
}

#[test]
fn a_program_id_or_hash_prefix_trains_evaluates_and_serves_and_the_checkpoint_names_it() {
    let data = walking_data("ref");
    let db = scratch("ref-db").join("evokernel.db");
    let filled = fill(&db);
    let (window_id, window_hash) = &filled.window;

    let by_id = scratch("ref-by-id");
    let output = train_with(&data, &db, &window_id.to_string(), &by_id);
    assert!(output.status.success(), "{}", stderr(&output));
    let meta = checkpoint_meta(&by_id);
    assert_eq!(meta["kernel_sha256"], window_hash.as_str());
    assert_eq!(meta["kernel_source"]["program_id"], *window_id);
    assert_eq!(meta["kernel_source"]["campaign"], "found");

    // A hash prefix, in capitals: the same program as `kernels show` would find.
    let (sink_id, sink_hash) = &filled.sink_window;
    let by_prefix = scratch("ref-by-prefix");
    let prefix = sink_hash[..10].to_ascii_uppercase();
    let output = train_with(&data, &db, &prefix, &by_prefix);
    assert!(output.status.success(), "{}", stderr(&output));
    let meta = checkpoint_meta(&by_prefix);
    assert_eq!(meta["kernel_sha256"], sink_hash.as_str());
    assert_eq!(meta["kernel_source"]["program_id"], *sink_id);

    // eval swaps in another program and reports which.
    let eval = evokernel(&[
        "--db",
        db.to_str().unwrap(),
        "recsys",
        "eval",
        "--checkpoint",
        by_id.to_str().unwrap(),
        "--kernel",
        &sink_hash[..12],
        "--json",
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let json: Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(json["kernel_sha256"], sink_hash.as_str());
    assert_eq!(json["kernel_source"]["program_id"], *sink_id);

    // bench-serve resolves the same way (a library name here) and serves every request.
    let bench = evokernel(&[
        "--db",
        db.to_str().unwrap(),
        "recsys",
        "bench-serve",
        "--checkpoint",
        by_prefix.to_str().unwrap(),
        "--kernel",
        "exact",
        "--requests",
        "20",
        "--concurrency",
        "2",
        "--json",
    ]);
    assert!(bench.status.success(), "{}", stderr(&bench));
    let json: Value = serde_json::from_slice(&bench.stdout).unwrap();
    assert_eq!(json["failed"], 0, "{json}");
    assert!(stderr(&bench).contains("library kernel exact"));
}

#[test]
fn unknown_ambiguous_and_malformed_references_and_a_missing_database_are_named() {
    let data = walking_data("bad-ref");
    let dir = scratch("bad-ref-db");
    let db = dir.join("evokernel.db");
    let filled = fill(&db);
    let out = dir.join("never");
    let refused = |db: &Path, kernel: &str| {
        let output = train_with(&data, db, kernel, &out);
        let err = stderr(&output);
        assert!(!output.status.success(), "{kernel} was accepted");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "a refused kernel wrote a checkpoint");
        err
    };

    let err = refused(&db, "987654");
    assert!(
        err.contains("no program with id or hash prefix `987654`"),
        "{err}"
    );
    assert!(
        err.contains(db.to_str().unwrap()),
        "the database is named: {err}"
    );

    let prefix = &filled.window.1[..8];
    let err = refused(&db, prefix);
    assert!(err.contains("matches several programs"), "{err}");
    assert!(err.contains(&format!("id {}", filled.window.0)), "{err}");

    let err = refused(&db, "no-such-kernel.akl");
    assert!(err.contains("no such file"), "{err}");
    assert!(err.contains("sink_window"), "the library is listed: {err}");

    let missing = dir.join("typo.db");
    let err = refused(&missing, &filled.window.0.to_string());
    assert!(err.contains("no database at"), "{err}");
    assert!(err.contains("typo.db"), "{err}");
    assert!(!missing.exists(), "a missing database must not be created");
}
