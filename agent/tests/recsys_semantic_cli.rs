//! `evokernel recsys train --retriever semantic-id` and `recsys eval --semantic-id-checkpoint`
//! end to end on a tiny dataset and a semantic-ID file written here (building IDs needs the
//! language model; `recsys/tests/semantic_ml100k.rs` covers that on the real assets).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use recsys::semantic::{EmbeddingKey, ItemId, RqConfig, SemanticIds};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("evokernel-semantic-cli-{}", std::process::id()))
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

/// IDs for items "1".."16": two codes from the item number, then zeros.
fn write_ids(path: &Path, items: u16) {
    let ids = SemanticIds {
        source: EmbeddingKey {
            items: "test".into(),
            model: "none".into(),
        },
        config: RqConfig::default(),
        vocab_sizes: vec![4, 4, 1, 1],
        levels: Vec::new(),
        collisions: Default::default(),
        items: (0..items)
            .map(|i| ItemId {
                raw_id: (i + 1).to_string(),
                codes: vec![i / 4, i % 4, 0, 0],
            })
            .collect(),
    };
    ids.save(path).unwrap();
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

const TINY: [&str; 8] = [
    "--epochs",
    "2",
    "--d-model",
    "16",
    "--max-len",
    "4",
    "--batch-size",
    "8",
];

#[test]
fn the_semantic_id_retriever_trains_and_is_one_more_eval_row() {
    let data = walking_data("train");
    let dir = scratch("run");
    let ids = dir.join("ids.json");
    write_ids(&ids, 16);
    let (sasrec, generative) = (dir.join("sasrec"), dir.join("generative"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec!["recsys", "train", "--data", data.to_str().unwrap()];
    args.extend(TINY);
    let sasrec_arg = path(&sasrec);
    let trained = evokernel(&[args.as_slice(), &["--out", &sasrec_arg]].concat());
    assert!(trained.status.success(), "{}", stderr(&trained));
    let (ids_arg, generative_arg) = (path(&ids), path(&generative));
    let trained = evokernel(
        &[
            args.as_slice(),
            &[
                "--retriever",
                "semantic-id",
                "--semantic-ids",
                &ids_arg,
                "--out",
                &generative_arg,
            ],
        ]
        .concat(),
    );
    assert!(trained.status.success(), "{}", stderr(&trained));
    assert!(stderr(&trained).contains("semantic IDs of 4 codes"));

    let eval = evokernel(&[
        "recsys",
        "eval",
        "--checkpoint",
        &sasrec_arg,
        "--semantic-id-checkpoint",
        &generative_arg,
        "--json",
    ]);
    assert!(eval.status.success(), "{}", stderr(&eval));
    let json: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let row = &json["models"]["semantic-id"];
    assert_eq!(row["seen_filtered"]["cases"], 24);
    let hr = row["unfiltered"]["hr_10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hr));
    assert_eq!(
        json["semantic_id"]["vocab_sizes"],
        serde_json::json!([4, 4, 1, 1])
    );
}

#[test]
fn semantic_id_training_names_what_is_missing() {
    let data = walking_data("missing");
    let dir = scratch("bad");
    let out = dir.join("out");
    let base = [
        "recsys",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--retriever",
        "semantic-id",
    ];
    let run = evokernel(&base);
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("--semantic-ids FILE"),
        "{}",
        stderr(&run)
    );

    // IDs that cover only 12 of the 16 items name an uncovered one.
    let ids = dir.join("ids.json");
    write_ids(&ids, 12);
    let run = evokernel(&[base.as_slice(), &["--semantic-ids", ids.to_str().unwrap()]].concat());
    assert!(!run.status.success());
    assert!(
        stderr(&run).contains("has no semantic ID"),
        "{}",
        stderr(&run)
    );
}
