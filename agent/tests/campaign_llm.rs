//! LLM campaigns on the real binary against a fake OpenAI-compatible endpoint on loopback:
//! the DeepEvolve stages are recorded, a reply with no program goes to a debug round, a
//! failing endpoint is recorded and the campaign goes on, and `--replay` reruns the campaign
//! with the endpoint gone and produces the same programs and scores.

#[path = "db_common/mod.rs"]
mod db_common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use agent::db::Db;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use db_common::ScratchDir;
use kernels::akl::library;
use serde_json::{json, Value};

/// A stand-in for a model: deterministic in the prompt, so that a replay asks the same
/// questions. Research gets a proposal; a code prompt gets prose with no program for some
/// prompts (a debug round must follow) and a library program for others; a third of the
/// research prompts get an HTTP 400, which the client does not retry. Every answer follows
/// from the prompt alone: two jobs may ask the same question at once, and a replay must be
/// able to give each the answer it got.
async fn chat(Json(body): Json<Value>) -> (StatusCode, String) {
    let user = body["messages"][1]["content"].as_str().unwrap_or_default();
    let digest = user
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    let library_program = || {
        let names = ["sink_window", "window", "chunked", "quest", "moba", "star"];
        let name = names[(digest / 7) as usize % names.len()];
        library::source(name).unwrap()
    };
    let text = if user.contains("PROPOSAL:") {
        if digest % 3 == 0 {
            return (
                StatusCode::BAD_REQUEST,
                "{\"error\": \"model overloaded\"}".into(),
            );
        }
        "NOTES: sliding_window, attention_sinks\nPROPOSAL: Keep a few sink keys and narrow the window."
            .to_string()
    } else if user.contains("Your previous program was refused") {
        format!("Here is the fix:\n```\n{}\n```", library_program())
    } else if digest % 2 == 0 {
        "I would narrow the window, but I am not sure how to write it.".to_string()
    } else {
        library_program().to_string()
    };
    let reply = json!({
        "model": "fake-coder",
        "choices": [{"message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": user.len() / 4, "completion_tokens": text.len() / 4},
    });
    (StatusCode::OK, reply.to_string())
}

/// Serves the fake model on a thread of its own; dropping the runtime stops it.
fn serve() -> (String, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/v1/chat/completions", post(chat));
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), runtime)
}

const SCORER: &str = r#"
import json, sys
src = open(sys.argv[1]).read()
print(json.dumps({"combined_score": (len(src) * 7919) % 1000 / 1000.0}))
"#;

fn write_config(dir: &Path, base_url: &str) {
    std::fs::write(dir.join("score.py"), SCORER).unwrap();
    let library = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/library");
    let text = format!(
        r#"name = "llm"
seed = 5
concurrency = 2
[task]
name = "command"
[task.evaluator.command]
command = ["python3", "{{config_dir}}/score.py", "{{program}}"]
[[seeds]]
path = "{sink}"
[mutators.perturb]
weight = 1.0
[mutators.remote_llm]
weight = 3.0
base_url = "{base_url}"
model = "fake-coder"
timeout_seconds = 5
retries = 0
[search]
debug_retries = 1
[budget]
evaluations = 16
"#,
        sink = library.join("sink_window.akl").display(),
    );
    std::fs::write(dir.join("llm.toml"), text).unwrap();
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_evokernel"))
        .args(["--db", "evokernel.db"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "evokernel {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A campaign's programs (hash, mutator, parent's hash) and first-trial scores by hash.
type Programs = BTreeSet<(String, String, Option<String>, Option<u64>)>;

fn programs(db_path: &Path, name: &str) -> (Programs, Vec<agent::db::LlmCall>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let db = Db::open_existing(db_path).await.unwrap();
            let campaign = db.campaign_by_name(name).await.unwrap();
            let stored = db.campaign_programs(campaign.id).await.unwrap();
            let evaluations = db.campaign_evaluations(campaign.id).await.unwrap();
            let hash_of = |id: i64| stored.iter().find(|p| p.id == id).map(|p| p.hash.clone());
            let set = stored
                .iter()
                .map(|p| {
                    let score = evaluations
                        .iter()
                        .find(|e| e.program_id == p.id && e.evaluation.provenance.trial == 0)
                        .and_then(|e| e.evaluation.score)
                        .map(f64::to_bits);
                    (
                        p.hash.clone(),
                        p.mutator.clone(),
                        p.parent_id.and_then(hash_of),
                        score,
                    )
                })
                .collect();
            let calls = db.campaign_llm_calls(campaign.id).await.unwrap();
            db.close().await.unwrap();
            (set, calls)
        })
}

#[test]
fn an_llm_campaign_records_its_calls_and_replays_without_the_model() {
    let dir = ScratchDir::new("campaign-llm");
    let (base_url, server) = serve();
    write_config(dir.path(), &base_url);
    run(dir.path(), &["campaign", "run", "llm.toml"]);
    drop(server); // the endpoint is gone: a replay must not need it

    let (recorded, calls) = programs(&dir.db(), "llm");
    let stages: BTreeSet<&str> = calls.iter().map(|c| c.stage.as_str()).collect();
    assert_eq!(
        stages,
        BTreeSet::from(["code", "debug", "research"]),
        "every DeepEvolve stage ran"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.error.as_deref().is_some_and(|e| e.contains("400"))),
        "a refused call is recorded with its error"
    );
    assert!(
        calls
            .iter()
            .filter(|c| c.response.is_some())
            .all(|c| c.model == "fake-coder" && c.prompt_tokens > 0),
        "answered calls record the model and the tokens"
    );
    assert!(
        recorded
            .iter()
            .any(|(_, mutator, _, _)| mutator == "remote_llm"),
        "the model's programs were evaluated"
    );
    let linked = calls.iter().filter(|c| c.program_id.is_some()).count();
    assert!(linked > 0, "calls are linked to the programs they made");

    let out = run(dir.path(), &["campaign", "run", "--replay", "llm"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("campaign llm-replay: finished"));
    let (replayed, replay_calls) = programs(&dir.db(), "llm-replay");
    assert_eq!(
        replayed, recorded,
        "the replay made the same programs with the same scores"
    );
    // The campaign ends when its last evaluation lands; jobs still running then, or done
    // but behind it in plan order, are dropped wherever they are, in the recording and the
    // replay alike, so the two runs may differ by those jobs' calls. Such a call may still be
    // linked to a program (one the campaign already had), so the replay links no more calls
    // than the recording did; the programs themselves are the same (above), and no replayed
    // call diverged (below).
    let linked =
        |calls: &[agent::db::LlmCall]| calls.iter().filter(|c| c.program_id.is_some()).count();
    assert!(
        linked(&replay_calls) > 0,
        "the replay's calls made programs"
    );
    assert!(
        linked(&replay_calls) <= linked(&calls),
        "the replay linked calls the recording never made"
    );
    let diverged: Vec<_> = replay_calls
        .iter()
        .filter(|c| c.error.as_deref().unwrap_or("").contains("diverged"))
        .collect();
    assert!(
        diverged.iter().all(|c| c.program_id.is_none()),
        "every call that made a program was found in the recording"
    );
}

#[test]
fn an_unreachable_endpoint_is_recorded_and_the_campaign_goes_on() {
    let dir = ScratchDir::new("campaign-llm-down");
    // Nothing listens on port 9 of loopback (discard): connections are refused.
    write_config(dir.path(), "http://127.0.0.1:9/v1");
    let out = run(dir.path(), &["campaign", "run", "llm.toml"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("finished"));
    let (programs, calls) = programs(&dir.db(), "llm");
    assert!(!calls.is_empty());
    assert!(calls
        .iter()
        .all(|c| c.response.is_none() && c.error.is_some()));
    assert!(
        programs
            .iter()
            .all(|(_, mutator, _, _)| mutator != "remote_llm"),
        "no program came from the dead endpoint"
    );
    assert_eq!(programs.len(), 16 - count_confirmations(&dir.db()));
}

fn count_confirmations(db_path: &Path) -> usize {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let db = Db::open_existing(db_path).await.unwrap();
            let c = db.campaign_by_name("llm").await.unwrap();
            let n = db
                .campaign_evaluations(c.id)
                .await
                .unwrap()
                .iter()
                .filter(|e| e.evaluation.provenance.trial > 0)
                .count();
            db.close().await.unwrap();
            n
        })
}
