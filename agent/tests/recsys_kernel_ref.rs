//! `evokernel recsys ... --kernel X` with X a program id or hash prefix in `--db`: the real
//! binary on a database this test fills with library kernels. The checkpoint records the
//! kernel's hash, program and campaign; an unknown, ambiguous or malformed reference and a
//! missing database are refused with a message naming what to fix, and no file is created.

mod db_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agent::campaign::Strategy;
use agent::db::{Db, NewCampaign, NewProgram};
use db_common::{library_program, ScratchDir};
use serde_json::Value;

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

/// 12 users walking a catalogue of 10 items, in ML-100K `u.data` form.
fn walking_data(dir: &Path) -> PathBuf {
    let mut lines = String::new();
    for user in 0..12 {
        for step in 0..6 {
            let item = (user * 3 + step) % 10 + 1;
            lines += &format!("{}\t{item}\t4\t{}\n", user + 1, 1000 + step);
        }
    }
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("u.data"), lines).unwrap();
    data
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

/// Runs `recsys train` on the walking data with `kernel` and `db`, into `out`.
fn train(dir: &Path, db: &Path, kernel: &str, out: &Path) -> Output {
    let data = walking_data(dir);
    evokernel(&[
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
        "--epochs",
        "1",
        "--d-model",
        "8",
        "--max-len",
        "4",
        "--batch-size",
        "8",
    ])
}

fn checkpoint_meta(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("checkpoint.json")).unwrap()).unwrap()
}

#[test]
fn a_program_id_or_hash_prefix_trains_evaluates_and_serves_and_the_checkpoint_names_it() {
    let scratch = ScratchDir::new("recsys-kernel-ref");
    let db = scratch.db();
    let filled = fill(&db);
    let (window_id, window_hash) = &filled.window;

    let by_id = scratch.path().join("by-id");
    let output = train(scratch.path(), &db, &window_id.to_string(), &by_id);
    assert!(output.status.success(), "{}", stderr(&output));
    let meta = checkpoint_meta(&by_id);
    assert_eq!(meta["kernel_sha256"], window_hash.as_str());
    assert_eq!(meta["kernel_source"]["program_id"], *window_id);
    assert_eq!(meta["kernel_source"]["campaign"], "found");

    // A hash prefix, in capitals: the same program as `kernels show` would find.
    let (sink_id, sink_hash) = &filled.sink_window;
    let by_prefix = scratch.path().join("by-prefix");
    let prefix = sink_hash[..10].to_ascii_uppercase();
    let output = train(scratch.path(), &db, &prefix, &by_prefix);
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
    let scratch = ScratchDir::new("recsys-kernel-ref-bad");
    let db = scratch.db();
    let filled = fill(&db);
    let out = scratch.path().join("never");
    let refused = |db: &Path, kernel: &str| {
        let output = train(scratch.path(), db, kernel, &out);
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

    let missing = scratch.path().join("typo.db");
    let err = refused(&missing, &filled.window.0.to_string());
    assert!(err.contains("no database at"), "{err}");
    assert!(err.contains("typo.db"), "{err}");
    assert!(!missing.exists(), "a missing database must not be created");
}
