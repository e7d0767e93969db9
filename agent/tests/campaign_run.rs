//! Campaigns end to end on the real `evokernel` binary: the command task with a Python
//! scorer (fast, and no asset needed), the database checked after every step. A campaign
//! killed with SIGKILL or interrupted with SIGINT resumes without losing or repeating
//! anything it committed; an LLM campaign against a fake endpoint on loopback replays
//! without any model; the random baseline compares against evolution.

#[path = "db_common/mod.rs"]
mod db_common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent::db::{CampaignStatus, Db};
use db_common::ScratchDir;

/// Scores an AKL program by a hash of its text: deterministic, and different for every
/// change, so the search has something to climb. `length` is a descriptor.
const SCORER: &str = r#"
import json, sys, time
src = open(sys.argv[1]).read()
time.sleep(float(sys.argv[2]))
print(json.dumps({"combined_score": (len(src) * 7919 + src.count("(") * 31) % 1000 / 1000.0,
                  "length": len(src)}))
"#;

/// A campaign config for the command task whose scorer sleeps `sleep` seconds; `extra` is
/// appended (mutators, search, budget).
fn config(dir: &Path, name: &str, sleep: f64, concurrency: u32, extra: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("score.py"), SCORER).unwrap();
    let library = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/library");
    let text = format!(
        r#"name = "{name}"
seed = 11
concurrency = {concurrency}
[task]
name = "command"
[task.evaluator.command]
command = ["python3", "{{config_dir}}/score.py", "{{program}}", "{sleep}"]
timeout_seconds = 30
descriptors = ["length"]
[[seeds]]
path = "{sink}"
[[seeds]]
path = "{window}"
[islands]
count = 2
migration_interval = 4
[[archive.descriptors]]
name = "length"
range = [0.0, 600.0]
bins = 6
{extra}"#,
        sink = library.join("sink_window.akl").display(),
        window = library.join("window.akl").display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

const STRUCTURAL: &str = "[mutators.perturb]\nweight = 2.0\n[mutators.mask_arm]\nweight = 1.0\n\
     [mutators.crossover]\nweight = 1.0\n[mutators.rule_edit]\nweight = 1.0\n\
     [mutators.library_swap]\nweight = 1.0\n";

fn evokernel(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_evokernel"));
    command
        .args(["--db", "evokernel.db"])
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info");
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let out = evokernel(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "evokernel {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// One stored evaluation, as a comparable row.
#[derive(Clone, Debug, PartialEq)]
struct Row {
    id: i64,
    program_id: i64,
    trial: u32,
    passed: bool,
    score: Option<f64>,
    metrics: BTreeMap<String, f64>,
}

/// The campaign's evaluations and its programs' (id, hash).
fn snapshot(db_path: &Path, name: &str) -> (Vec<Row>, Vec<(i64, String)>) {
    block_on(async {
        let db = Db::open_existing(db_path).await.unwrap();
        let campaign = db.campaign_by_name(name).await.unwrap();
        let rows = db
            .campaign_evaluations(campaign.id)
            .await
            .unwrap()
            .into_iter()
            .map(|s| Row {
                id: s.id,
                program_id: s.program_id,
                trial: s.evaluation.provenance.trial,
                passed: s.evaluation.passed,
                score: s.evaluation.score,
                metrics: s.evaluation.metrics,
            })
            .collect();
        let programs = db
            .campaign_programs(campaign.id)
            .await
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.hash))
            .collect();
        db.close().await.unwrap();
        (rows, programs)
    })
}

fn status(db_path: &Path, name: &str) -> CampaignStatus {
    block_on(async {
        let db = Db::open_existing(db_path).await.unwrap();
        let status = db.campaign_by_name(name).await.unwrap().status;
        db.close().await.unwrap();
        status
    })
}

/// Evaluations stored so far, read through a separate connection while the campaign runs.
fn evaluations_so_far(db_path: &Path) -> usize {
    if !db_path.exists() {
        return 0;
    }
    block_on(async {
        let Ok(db) = Db::open_existing(db_path).await else {
            return 0;
        };
        let n = match db.campaigns().await {
            Ok(campaigns) if !campaigns.is_empty() => db
                .campaign_evaluations(campaigns[0].id)
                .await
                .map_or(0, |e| e.len()),
            _ => 0,
        };
        db.close().await.ok();
        n
    })
}

/// Waits until the running campaign has stored at least `n` evaluations.
fn wait_for_evaluations(child: &mut Child, db_path: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while evaluations_so_far(db_path) < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the campaign ended before {n} evaluations"
        );
        assert!(Instant::now() < deadline, "no {n} evaluations in 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every program has exactly one first evaluation, every hash is stored once, and the
/// evaluations add up to the budget.
fn assert_complete(rows: &[Row], programs: &[(i64, String)], budget: usize) {
    assert_eq!(rows.len(), budget, "the budget is spent exactly");
    let keys: BTreeSet<(i64, u32)> = rows.iter().map(|r| (r.program_id, r.trial)).collect();
    assert_eq!(
        keys.len(),
        rows.len(),
        "no program is evaluated twice per trial"
    );
    let hashes: BTreeSet<&str> = programs.iter().map(|(_, h)| h.as_str()).collect();
    assert_eq!(hashes.len(), programs.len(), "no program is stored twice");
    for (id, _) in programs {
        assert!(
            keys.contains(&(*id, 0)),
            "program #{id} was stored but never evaluated"
        );
    }
}

#[test]
fn a_campaign_spends_its_budget_and_stores_every_step() {
    let dir = ScratchDir::new("campaign-basic");
    let path = config(
        dir.path(),
        "basic",
        0.0,
        1,
        &format!("{STRUCTURAL}[budget]\nevaluations = 30\n"),
    );
    let out = run(dir.path(), &["campaign", "run", path.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("campaign basic: finished"), "{stdout}");
    assert!(stdout.contains("30 this run"), "{stdout}");

    let (rows, programs) = snapshot(&dir.db(), "basic");
    assert_complete(&rows, &programs, 30);
    assert!(
        rows.iter().any(|r| r.trial == 1),
        "would-be island bests are confirmed on a fresh trial"
    );
    block_on(async {
        let db = Db::open_existing(&dir.db()).await.unwrap();
        let campaign = db.campaign_by_name("basic").await.unwrap();
        assert_eq!(campaign.status, CampaignStatus::Finished);
        assert!(campaign.elapsed_seconds > 0.0);
        let stats = db.mutator_stats(campaign.id).await.unwrap();
        let uses: i64 = stats.iter().map(|s| s.uses).sum();
        let mutated = programs.len() as i64 - 2; // less the two seeds
        assert!(
            uses >= mutated,
            "every mutated program counts a use of its mutator ({uses} < {mutated})"
        );
        assert!(stats.iter().all(|s| s.improvements <= s.uses));
        let cells = db.archive_cells(campaign.id).await.unwrap();
        assert!(
            cells.iter().any(|c| c.island == 0) && cells.iter().any(|c| c.island == 1),
            "both islands hold archive cells: {cells:?}"
        );
        db.close().await.unwrap();
    });

    // The same name again is refused, naming the way out.
    let again = evokernel(dir.path(), &["campaign", "run", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn a_campaign_killed_with_sigkill_resumes_without_losing_or_repeating_work() {
    let dir = ScratchDir::new("campaign-kill");
    let path = config(
        dir.path(),
        "killed",
        0.15,
        2,
        &format!("{STRUCTURAL}[budget]\nevaluations = 24\n"),
    );
    let mut child = evokernel(dir.path(), &["campaign", "run", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_evaluations(&mut child, &dir.db(), 8);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let (before, programs_before) = snapshot(&dir.db(), "killed");
    assert!(before.len() >= 8 && before.len() < 24, "{}", before.len());
    assert_eq!(status(&dir.db(), "killed"), CampaignStatus::Running);

    let out = run(dir.path(), &["campaign", "resume", "killed"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished"));
    let (after, programs_after) = snapshot(&dir.db(), "killed");
    for row in &before {
        assert!(
            after.contains(row),
            "evaluation {row:?} was lost or changed"
        );
    }
    for program in &programs_before {
        assert!(
            programs_after.contains(program),
            "program {program:?} was lost"
        );
    }
    assert_complete(&after, &programs_after, 24);
    assert_eq!(status(&dir.db(), "killed"), CampaignStatus::Finished);
}

#[test]
fn ctrl_c_stops_a_campaign_cleanly_and_resume_finishes_it() {
    let dir = ScratchDir::new("campaign-sigint");
    let path = config(
        dir.path(),
        "interrupted",
        0.15,
        1,
        &format!("{STRUCTURAL}[budget]\nevaluations = 20\n"),
    );
    let mut child = evokernel(dir.path(), &["campaign", "run", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_evaluations(&mut child, &dir.db(), 5);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "Ctrl-C did not stop the campaign"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "an interrupted campaign exits cleanly");
    assert_eq!(status(&dir.db(), "interrupted"), CampaignStatus::Stopped);
    let (before, _) = snapshot(&dir.db(), "interrupted");
    assert!(before.len() < 20);

    run(dir.path(), &["campaign", "resume", "interrupted"]);
    let (after, programs) = snapshot(&dir.db(), "interrupted");
    for row in &before {
        assert!(
            after.contains(row),
            "evaluation {row:?} was lost or changed"
        );
    }
    assert_complete(&after, &programs, 20);
    let finished = evokernel(dir.path(), &["campaign", "resume", "interrupted"])
        .output()
        .unwrap();
    assert!(
        !finished.status.success(),
        "a finished campaign is not resumed"
    );
    assert!(String::from_utf8_lossy(&finished.stderr).contains("budget is spent"));
}

#[test]
fn the_random_baseline_runs_at_the_same_budget_and_compares() {
    let dir = ScratchDir::new("campaign-compare");
    let path = config(
        dir.path(),
        "evolved",
        0.0,
        2,
        &format!("{STRUCTURAL}[budget]\nevaluations = 20\n"),
    );
    let path = path.to_str().unwrap();
    run(dir.path(), &["campaign", "run", path]);
    run(
        dir.path(),
        &["campaign", "run", path, "--strategy", "random"],
    );
    let (rows, programs) = snapshot(&dir.db(), "evolved-random");
    assert_complete(&rows, &programs, 20);

    let out = run(
        dir.path(),
        &[
            "campaign",
            "compare",
            "evolved",
            "evolved-random",
            "--y",
            "length:min",
            "--json",
        ],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sides = report["campaigns"].as_array().unwrap();
    assert_eq!(sides.len(), 2);
    assert_eq!(sides[1]["strategy"], "random");
    for side in sides {
        let front = side["front"].as_array().unwrap();
        assert!(!front.is_empty());
        let points: Vec<(f64, f64)> = front
            .iter()
            .map(|p| (p["value"].as_f64().unwrap(), p["other"].as_f64().unwrap()))
            .collect();
        for a in &points {
            for b in &points {
                let dominates = b.0 >= a.0 && b.1 <= a.1 && (b.0 > a.0 || b.1 < a.1);
                assert!(!dominates, "{b:?} dominates {a:?} on the front");
            }
        }
        assert!(side["hypervolume"].as_f64().unwrap() >= 0.0);
    }
    let text = run(
        dir.path(),
        &["campaign", "compare", "evolved", "evolved-random"],
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("evolved (evolve)") && text.contains("evolved-random (random)"));
    assert!(text.contains("hypervolume"));
}

#[test]
fn a_seed_that_does_not_parse_stops_the_campaign_before_anything_is_stored() {
    let dir = ScratchDir::new("campaign-bad-seed");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\n[task]\nname = \"drop-in\"\n[[seeds]]\ntext = \"(kernel broken (mask\"\n\
         [mutators.perturb]\nweight = 1.0\n[budget]\nevaluations = 5\n",
    )
    .unwrap();
    let out = evokernel(dir.path(), &["campaign", "run", "bad.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("seed program seeds[0]") && stderr.contains("1:"),
        "the error names the seed and the place: {stderr}"
    );
    assert!(!dir.db().exists(), "nothing is stored for a bad config");
}
