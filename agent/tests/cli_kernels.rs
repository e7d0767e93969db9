//! `evokernel kernels ...` and `evokernel campaign status` end to end: the real binary on
//! a small database this test fills with library kernels and hand-made evaluations.

mod db_common;

use std::path::Path;
use std::process::{Command, Output};

use agent::campaign::Strategy;
use agent::db::{Db, NewCampaign, NewProgram};
use db_common::{evaluation, library_program, ScratchDir};
use serde_json::Value;

const CONFIG: &str = r#"
name = "cli"
[task]
name = "drop-in"
[[seeds]]
path = "sink_window.akl"
[mutators.perturb]
weight = 1.0
[budget]
evaluations = 20
llm_tokens = 1000
"#;

/// A program to store: kernel, parent and second parent (positions in the plan, from 1),
/// mutator, proposal, and its result as (score, speedup, KL), or `None` for a failure.
type PlannedProgram = (
    &'static str,
    Option<i64>,
    Option<i64>,
    &'static str,
    Option<&'static str>,
    Option<(f64, f64, f64)>,
);

/// Program ids of the filled database, by role.
struct Filled {
    sink: i64,
    window: i64,
    chunked: i64,
    crossed: i64,
    exact: i64,
    texts: std::collections::HashMap<i64, String>,
    hashes: std::collections::HashMap<i64, String>,
}

/// Two seeds, a mutant, a crossover that failed fidelity, and an LLM child; plus the
/// same sink-window program in a second campaign, so its hash prefix is ambiguous.
fn fill(path: &Path) -> Filled {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = Db::open(path).await.unwrap();
        let campaign = NewCampaign {
            name: "cli",
            config_toml: CONFIG,
            seed: 3,
            strategy: Strategy::Evolve,
            config_dir: None,
        };
        let c = db.create_campaign(&campaign).await.unwrap();
        let other = db
            .create_campaign(&NewCampaign {
                name: "other",
                ..campaign
            })
            .await
            .unwrap();
        let mut filled = Filled {
            sink: 0,
            window: 0,
            chunked: 0,
            crossed: 0,
            exact: 0,
            texts: Default::default(),
            hashes: Default::default(),
        };
        let plan: [PlannedProgram; 5] = [
            (
                "sink_window",
                None,
                None,
                "seed",
                None,
                Some((1.2, 1.3, 0.06)),
            ),
            ("window", None, None, "seed", None, Some((1.5, 1.6, 0.05))),
            (
                "chunked",
                Some(1),
                None,
                "perturb",
                None,
                Some((2.0, 2.0, 0.2)),
            ),
            ("quest", Some(3), Some(2), "crossover", None, None),
            (
                "exact",
                Some(1),
                None,
                "local_llm",
                Some("drop the window"),
                Some((1.0, 0.7, 0.0)),
            ),
        ];
        let mut ids = Vec::new();
        for (k, (name, parent, second, mutator, proposal, result)) in plan.into_iter().enumerate() {
            let (text, hash) = library_program(name);
            // Parents are named by their position in the plan (1-based).
            let parent_id = |p: Option<i64>| p.map(|p| ids[p as usize - 1]);
            let id = db
                .insert_program(&NewProgram {
                    campaign_id: c,
                    hash: &hash,
                    canonical_text: &text,
                    parent_id: parent_id(parent),
                    second_parent_id: parent_id(second),
                    island: (k % 2) as u32,
                    generation: u32::from(parent.is_some()),
                    mutator,
                    proposal,
                })
                .await
                .unwrap()
                .id();
            let e = match result {
                Some((score, speedup, kl)) => evaluation(
                    &hash,
                    0,
                    Some(score),
                    &[
                        ("attention_speedup", speedup),
                        ("attention_speedup_hi", speedup + 0.1),
                        ("kl_max_mean", kl),
                    ],
                ),
                None => evaluation(&hash, 0, None, &[("kl_max_mean", 0.9)]),
            };
            db.insert_evaluation(id, &e).await.unwrap();
            filled.texts.insert(id, text.clone());
            filled.hashes.insert(id, hash.clone());
            ids.push(id);
            if name == "sink_window" {
                let copy = NewProgram {
                    campaign_id: other,
                    hash: &hash,
                    canonical_text: &text,
                    parent_id: None,
                    second_parent_id: None,
                    island: 0,
                    generation: 0,
                    mutator: "seed",
                    proposal: None,
                };
                db.insert_program(&copy).await.unwrap();
            }
        }
        [
            filled.sink,
            filled.window,
            filled.chunked,
            filled.crossed,
            filled.exact,
        ] = [ids[0], ids[1], ids[2], ids[3], ids[4]];
        db.close().await.unwrap();
        filled
    })
}

fn evokernel(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evokernel"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run evokernel")
}

/// Stdout of a command that must succeed.
fn ok(db: &Path, args: &[&str]) -> String {
    let output = evokernel(db, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Stderr of a command that must fail cleanly.
fn fails(db: &Path, args: &[&str]) -> String {
    let output = evokernel(db, args);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "{args:?} should fail");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn json(db: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(db, args)).expect("valid JSON")
}

fn ids(values: &Value, key: &str) -> Vec<i64> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[key].as_i64().unwrap())
        .collect()
}

/// The shortest prefix of `hash` that no other program of the list shares.
fn unique_prefix(hash: &str, others: &[&String]) -> String {
    (4..=hash.len())
        .map(|n| &hash[..n])
        .find(|p| others.iter().all(|o| !o.starts_with(p)))
        .unwrap()
        .to_string()
}

#[test]
fn the_query_commands_read_a_campaign() {
    let dir = ScratchDir::new("cli-kernels");
    let db = dir.db();
    let f = fill(&db);

    // list: newest first; the table shows results.
    let listed = json(&db, &["kernels", "list", "--campaign", "cli", "--json"]);
    assert_eq!(
        ids(&listed, "id"),
        vec![f.exact, f.crossed, f.chunked, f.window, f.sink]
    );
    assert_eq!(
        ids(
            &json(&db, &["kernels", "list", "--json", "--limit", "2"]),
            "id"
        )
        .len(),
        2
    );
    let table = ok(&db, &["kernels", "list"]);
    assert!(table.starts_with("id"), "{table}");
    assert!(table.contains("failed: fidelity"), "{table}");
    assert!(table.contains("local_llm"), "{table}");

    // show, by a unique hash prefix.
    let crossed_hash = &f.hashes[&f.crossed];
    let others: Vec<&String> = f.hashes.values().filter(|h| *h != crossed_hash).collect();
    let prefix = unique_prefix(crossed_hash, &others);
    let shown = ok(&db, &["kernels", "show", &prefix]);
    assert!(
        shown.contains(&format!("program #{}", f.crossed)),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("parent      #{}", f.chunked)),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("2nd parent  #{}", f.window)),
        "{shown}"
    );
    assert!(shown.contains("failed at fidelity"), "{shown}");
    assert!(
        shown.contains("widen the window"),
        "the feedback is shown: {shown}"
    );
    assert!(shown.contains(f.texts[&f.crossed].trim()), "{shown}");
    let shown = json(&db, &["kernels", "show", &f.exact.to_string(), "--json"]);
    assert_eq!(shown["program"]["proposal"], "drop the window");
    assert_eq!(
        shown["evaluations"][0]["evaluation"]["metrics"]["attention_speedup"],
        0.7
    );

    // best: score by default, any metric, either direction.
    let best = json(&db, &["kernels", "best", "--json"]);
    assert_eq!(
        ids(&best["programs"], "program_id"),
        vec![f.chunked, f.window, f.sink, f.exact]
    );
    let best = json(
        &db,
        &[
            "kernels",
            "best",
            "--metric",
            "kl_max_mean",
            "--json",
            "--limit",
            "1",
        ],
    );
    assert_eq!(best["direction"], "min", "KL is known to be better small");
    assert_eq!(ids(&best["programs"], "program_id"), vec![f.exact]);
    assert_eq!(best["programs"][0]["slower_than_exact"], true);
    let table = ok(&db, &["kernels", "best", "--metric", "kl_max_mean"]);
    assert!(table.contains("0.70× slower"), "{table}");
    assert!(
        table.contains(&format!(
            "#{} ranks first by kl_max_mean but runs measurably slower",
            f.exact
        )),
        "{table}"
    );
    let best = json(
        &db,
        &[
            "kernels",
            "best",
            "--metric",
            "kl_max_mean",
            "--max",
            "--json",
        ],
    );
    assert_eq!(ids(&best["programs"], "program_id")[0], f.chunked);
    let table = ok(&db, &["kernels", "best", "--metric", "attention_speedup"]);
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(&f.chunked.to_string()),
        "{table}"
    );
    assert!(fails(&db, &["kernels", "best", "--min", "--max"]).contains("cannot be used with"));

    // pareto: speedup up against KL down; the sink-window seed is dominated by window.
    let pareto = json(&db, &["kernels", "pareto", "--json"]);
    assert_eq!(pareto["candidates"], 4);
    assert_eq!(
        ids(&pareto["front"], "program_id"),
        vec![f.chunked, f.window, f.exact]
    );
    let flipped = json(
        &db,
        &[
            "kernels",
            "pareto",
            "--x",
            "kl_max_mean:max",
            "--y",
            "attention_speedup:min",
            "--json",
        ],
    );
    assert_eq!(
        ids(&flipped["front"], "program_id"),
        vec![f.chunked, f.sink, f.exact]
    );
    let table = ok(&db, &["kernels", "pareto"]);
    assert!(
        table.contains("attention_speedup (max) against kl_max_mean (min)"),
        "{table}"
    );
    assert!(fails(&db, &["kernels", "pareto", "--x", "speedup:up"]).contains("`max` or `min`"));

    // lineage: both parents of the crossover, as a tree and as DOT.
    let tree = ok(&db, &["kernels", "lineage", &f.crossed.to_string()]);
    assert!(tree.starts_with(&format!("#{}", f.crossed)), "{tree}");
    assert!(
        tree.contains(&format!("├── parent: #{}", f.chunked)),
        "{tree}"
    );
    assert!(
        tree.contains(&format!("second parent: #{}", f.window)),
        "{tree}"
    );
    assert!(
        tree.contains(&format!("parent: #{}", f.sink)),
        "the grandparent: {tree}"
    );
    let dot = ok(
        &db,
        &["kernels", "lineage", &f.crossed.to_string(), "--dot"],
    );
    assert!(dot.starts_with("digraph"), "{dot}");
    assert_eq!(dot.matches("->").count(), 3, "{dot}");
    assert!(dot.contains("second parent"), "{dot}");
    let ancestry = json(
        &db,
        &["kernels", "lineage", &f.crossed.to_string(), "--json"],
    );
    assert_eq!(
        ids(&ancestry["ancestry"], "id"),
        vec![f.sink, f.window, f.chunked, f.crossed]
    );

    // diff: a unified diff of the canonical texts.
    let diff = ok(
        &db,
        &[
            "kernels",
            "diff",
            &f.sink.to_string(),
            &f.window.to_string(),
        ],
    );
    assert!(diff.starts_with(&format!("--- #{}", f.sink)), "{diff}");
    assert!(diff.contains("\n@@ -1,"), "{diff}");
    assert!(
        diff.contains("\n-(kernel sink_window") && diff.contains("\n+(kernel window"),
        "{diff}"
    );
    assert_eq!(
        ok(
            &db,
            &["kernels", "diff", &f.sink.to_string(), &f.sink.to_string()]
        ),
        ""
    );

    // export: to stdout and to a file; the text parses to the same hash.
    let exported = ok(&db, &["kernels", "export", &f.chunked.to_string()]);
    assert_eq!(exported.trim_end(), f.texts[&f.chunked].trim_end());
    let out = dir.path().join("chunked.akl");
    ok(
        &db,
        &[
            "kernels",
            "export",
            &f.chunked.to_string(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let written = std::fs::read_to_string(&out).unwrap();
    let reparsed = kernels::akl::parse(&written).unwrap();
    assert_eq!(reparsed.canonical_hash(), f.hashes[&f.chunked]);
}

#[test]
fn campaign_status_shows_progress_against_budgets() {
    let dir = ScratchDir::new("cli-status");
    let db = dir.db();
    let f = fill(&db);
    let status = json(&db, &["campaign", "status", "--campaign", "cli", "--json"]);
    let cli = &status[0];
    assert_eq!(cli["campaign"]["name"], "cli");
    assert_eq!(cli["evaluations"], 5);
    assert_eq!(cli["passed"], 4);
    assert_eq!(cli["best_score"], 2.0);
    assert_eq!(cli["best_program_id"], f.chunked);
    assert_eq!(cli["budget"]["evaluations"], 20);
    let all = json(&db, &["campaign", "status", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 2);
    let table = ok(&db, &["campaign", "status"]);
    assert!(table.contains("5/20"), "{table}");
    assert!(
        table.contains(&format!("2.0000 (#{})", f.chunked)),
        "{table}"
    );
    assert!(table.contains("0/1000"), "{table}");
    assert!(fails(&db, &["campaign", "status", "--campaign", "nope"])
        .contains("no campaign named `nope`"));
}

#[test]
fn bad_references_and_bad_databases_get_clear_errors() {
    let dir = ScratchDir::new("cli-errors");
    let db = dir.db();
    let missing = fails(&db, &["kernels", "list"]);
    assert!(
        missing.contains(&db.display().to_string()) && missing.contains("no database"),
        "{missing}"
    );
    assert!(!db.exists(), "a query must not create a database");
    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "these are notes, not a database, and long enough to fill a header",
    )
    .unwrap();
    let not_sqlite = fails(&text, &["kernels", "list"]);
    assert!(
        not_sqlite.contains(&text.display().to_string()),
        "{not_sqlite}"
    );
    assert_eq!(
        not_sqlite.matches("file is not a database").count(),
        1,
        "said once: {not_sqlite}"
    );

    let f = fill(&db);
    // The sink-window program is in both campaigns: any prefix of its hash is ambiguous.
    let prefix = &f.hashes[&f.sink][..8];
    let ambiguous = fails(&db, &["kernels", "show", prefix]);
    assert!(
        ambiguous.contains("matches several programs"),
        "{ambiguous}"
    );
    assert!(ambiguous.contains(&format!("id {}", f.sink)), "{ambiguous}");
    assert!(
        fails(&db, &["kernels", "show", "999"]).contains("no program with id or hash prefix `999`")
    );
    assert!(fails(&db, &["kernels", "export", "xyz"])
        .contains("neither a program id nor a hash prefix"));
    assert!(
        fails(&db, &["kernels", "best", "--metric", "a b", "--max"]).contains("not a metric name")
    );
    let unknown = fails(&db, &["kernels", "best", "--metric", "speed"]);
    assert!(
        unknown.contains("unknown metric `speed`") && unknown.contains("attention_speedup"),
        "{unknown}"
    );

    // A database from a newer evokernel.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut raw = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display()))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (424242, 'future', 1, x'00', 0)",
        )
        .execute(&mut raw)
        .await
        .unwrap();
        raw.close().await.unwrap();
    });
    let newer = fails(&db, &["kernels", "list"]);
    assert!(
        newer.contains("schema version 424242") && newer.contains(&db.display().to_string()),
        "{newer}"
    );
}
