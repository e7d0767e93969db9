//! A small real campaign: the drop-in task on SmolLM2-135M (real weights, real Austen and
//! HumanEval slices, at a short context), mutated by perturbation and by SmolLM2 itself
//! running in process with decoding constrained by AKL's grammar.

#[path = "db_common/mod.rs"]
mod db_common;

use std::path::Path;
use std::process::{Command, Output};

use agent::db::Db;
use agent::llm::extract::extract_program;
use db_common::ScratchDir;
use kernels::assets;

const CONFIG: &str = r#"name = "tiny"
seed = 2

[task]
name = "drop-in"
[task.evaluator.drop_in]
model = "smollm2"
contexts = [128]
slices_per_source = 1
probe_cuts = 1
timing_repeats = 1
score = { objective = "flops_reduction", kl_epsilon = 0.1 }

[[seeds]]
text = "(kernel sw (param W int 64 (16 1024)) (param n int 4 (0 64)) (mask (and causal (or (< kv n) (> kv (- q W))))) (score (* s scale)) (norm softmax))"

[mutators.perturb]
weight = 1.0
[mutators.local_llm]
weight = 1.0
model = "smollm2"
max_tokens = 200

[search]
debug_retries = 1

[budget]
evaluations = 6
"#;

/// `evokernel campaign run CONFIG` in `dir`, on `dir`'s `evokernel.db`.
fn run_campaign(dir: &Path, config: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evokernel"))
        .args(["--db", "evokernel.db", "campaign", "run", config])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn block_on(body: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}

#[test]
fn a_drop_in_campaign_with_an_in_process_model_finishes_and_records_everything() {
    assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("campaign-drop-in");
    std::fs::write(dir.path().join("tiny.toml"), CONFIG).unwrap();
    let out = run_campaign(dir.path(), "tiny.toml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("campaign tiny: finished"), "{stdout}");

    block_on(async {
        let db = Db::open_existing(&dir.db()).await.unwrap();
        let campaign = db.campaign_by_name("tiny").await.unwrap();
        let evaluations = db.campaign_evaluations(campaign.id).await.unwrap();
        assert_eq!(evaluations.len(), 6);
        let seed = &evaluations[0].evaluation;
        assert!(seed.passed, "the seed passes: {}", seed.feedback);
        for e in &evaluations {
            let e = &e.evaluation;
            assert_eq!(e.task, "drop-in");
            if e.passed {
                assert!(e.metrics["kl_max_mean"] <= 0.1);
                assert!(e.metrics.contains_key("attention_speedup"));
                assert!(e.score.unwrap() > 0.0);
            }
        }
        let calls = db.campaign_llm_calls(campaign.id).await.unwrap();
        assert!(
            calls.iter().any(|c| c.stage == "research"),
            "the local model was asked"
        );
        for call in calls.iter().filter(|c| c.stage != "research") {
            let response = call.response.as_deref().expect("a local call answers");
            assert!(call.params_json.contains("\"akl_grammar\":true"));
            // Constrained decoding: a reply is a prefix of one AKL program, and a
            // complete one parses.
            if let Ok(program) = extract_program(response) {
                kernels::akl::parse(program).unwrap_or_else(|e| {
                    panic!("a complete constrained reply must parse: {e}\n{response}")
                });
            }
        }
        db.close().await.unwrap();
    });
}

/// Evaluations run in worker processes under the task's time limit: one that runs past it is
/// stopped within about a second of the limit, stored as failed at the `timeout` stage, and
/// leaves no worker behind.
#[test]
fn an_evaluation_past_its_time_limit_is_stopped_and_recorded_as_a_timeout() {
    assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let dir = ScratchDir::new("campaign-timeout");
    // Contexts of 2048 tokens with many timed repeats take far longer than 2 s.
    let config = CONFIG
        .replace("name = \"tiny\"", "name = \"slow\"")
        .replace(
            "name = \"drop-in\"",
            "name = \"drop-in\"\ntimeout_seconds = 2",
        )
        .replace("contexts = [128]", "contexts = [2048]")
        .replace("timing_repeats = 1", "timing_repeats = 40")
        .replace("evaluations = 6", "evaluations = 2")
        .replace(
            "[mutators.local_llm]\nweight = 1.0",
            "[mutators.local_llm]\nweight = 0.0",
        );
    std::fs::write(dir.path().join("slow.toml"), config).unwrap();
    let out = run_campaign(dir.path(), "slow.toml");
    // The only seed is stopped, so there is nothing to mutate: the campaign says so.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("stopped at timeout"), "{stderr}");
    assert!(stderr.contains("no seed program passed"), "{stderr}");
    block_on(async {
        let db = Db::open_existing(&dir.db()).await.unwrap();
        let campaign = db.campaign_by_name("slow").await.unwrap();
        let evaluations = db.campaign_evaluations(campaign.id).await.unwrap();
        assert_eq!(evaluations.len(), 1);
        for e in &evaluations {
            let e = &e.evaluation;
            assert_eq!(e.stage_reached, evaluator::Stage::Timeout, "{}", e.feedback);
            assert!(!e.passed && e.score.is_none());
            assert!(e.feedback.contains("limit of 2 s"), "{}", e.feedback);
            let seconds = e.seconds();
            assert!((2.0..3.0).contains(&seconds), "stopped after {seconds} s");
        }
        db.close().await.unwrap();
    });
    // The campaign's process has exited: so have its workers.
    let workers = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|process| {
            let cmdline = std::fs::read(process.join("cmdline")).unwrap_or_default();
            let cwd = std::fs::read_link(process.join("cwd")).ok();
            String::from_utf8_lossy(&cmdline).contains("eval-worker")
                && cwd.as_deref() == Some(dir.path())
        })
        .count();
    assert_eq!(workers, 0, "a worker outlived its campaign");
}
