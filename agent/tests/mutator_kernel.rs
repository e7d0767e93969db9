//! The local mutator model on a discovered kernel (real assets): the fidelity gate refuses
//! a kernel far from exact attention and accepts one equal to it, the kernel is what the
//! model then runs, and exact attention as a kernel generates what plain attention does;
//! and (no assets) which programs `"best"` tries and which prompts the gate reads.

mod db_common;

use std::path::{Path, PathBuf};

use agent::campaign::Strategy;
use agent::db::{short_hash, Db, NewCampaign, NewLlmCall, NewProgram};
use agent::llm::kernel::{
    candidates, recorded_prompts, Candidate, GatePrompt, KernelChoice, Prepared,
};
use agent::llm::local::LocalLlm;
use agent::llm::Request;
use kernels::akl::library;
use kernels::assets::{self, Asset};
use kernels::generate::{generate, GenerateOptions, Sampling};
use kernels::model::Logits;
use kernels::Model;

/// Each query sees itself and one key before it: far from exact attention.
const TINY_WINDOW: &str = "(kernel tiny_window
  (mask (and causal (> kv (- q 2))))
  (score (* s scale))
  (norm softmax))";

fn require(asset: Asset) -> PathBuf {
    asset.require().unwrap_or_else(|e| panic!("{e}"))
}

fn candidate(origin: &str, text: &str) -> Candidate {
    Candidate {
        origin: origin.to_string(),
        text: text.to_string(),
    }
}

/// A short mutator conversation: a request and a reply that is a program.
fn conversation() -> GatePrompt {
    GatePrompt {
        system: "You design efficient attention kernels. You write them in AKL.".into(),
        user: format!(
            "Parent program:\n{}\nWrite a program that attends to fewer keys.",
            library::source("sink_window").unwrap()
        ),
        reply: Some(library::source("window").unwrap().to_string()),
    }
}

#[test]
fn the_gate_skips_a_far_or_invalid_kernel_and_accepts_one_equal_to_exact() {
    let path = require(assets::SMOLLM2);
    let not_causal = "(kernel future (mask (<= kv (+ q 1))) (score (* s scale)) (norm softmax))";
    let candidates = [
        candidate("tiny", TINY_WINDOW),
        candidate("future", not_causal),
        candidate("exact", library::source("exact").unwrap()),
    ];
    let (llm, outcomes) =
        LocalLlm::load_gated(&path, &candidates, &[conversation()], 0.05).unwrap();
    let kl: Vec<_> = outcomes.iter().map(|o| o.kl.clone()).collect();
    assert!(
        matches!(kl[0], Ok(kl) if kl > 0.05) && !outcomes[0].passed,
        "{outcomes:?}"
    );
    assert!(
        matches!(&kl[1], Err(why) if why.contains("causal")),
        "{outcomes:?}"
    );
    assert!(
        matches!(kl[2], Ok(kl) if kl < 1e-9) && outcomes[2].passed,
        "{outcomes:?}"
    );
    let running = llm.kernel().expect("exact passed the gate");
    assert_eq!(running.name, "exact");
    assert_eq!(
        llm.name(),
        format!(
            "smollm2-135m-instruct-q4_1.gguf@kernel:{}",
            short_hash(&running.hash)
        )
    );

    let (llm, outcomes) =
        LocalLlm::load_gated(&path, &candidates[..1], &[conversation()], 0.05).unwrap();
    assert!(llm.kernel().is_none() && !outcomes[0].passed);
    assert_eq!(llm.name(), "smollm2-135m-instruct-q4_1.gguf");
}

#[test]
fn an_applied_kernel_is_what_the_model_runs() {
    let path = require(assets::SMOLLM2);
    let exact = Model::load(&path).unwrap();
    let mut windowed = Model::load(&path).unwrap();
    let prepared = Prepared::new(TINY_WINDOW, &windowed).unwrap();
    prepared.apply(&mut windowed).unwrap();
    let tokens = exact
        .tokenizer
        .encode_with_bos("The kernel keeps a window of recent keys and a few sinks.")
        .unwrap();
    let forward = |model: &Model| model.forward(&mut model.new_cache(), &tokens, Logits::All);
    let beside = exact
        .forward_with(
            &mut exact.new_cache(),
            &tokens,
            Logits::All,
            &prepared.kernels,
        )
        .unwrap();
    let installed = forward(&windowed).unwrap();
    assert_eq!(installed, beside);
    assert_ne!(installed, forward(&exact).unwrap());
}

#[test]
fn exact_attention_as_a_kernel_generates_token_for_token_what_plain_attention_does() {
    // The mutator's model, whose shape differs from SmolLM2's (grouped queries).
    let path = require(assets::QWEN_CODER);
    let exact_program = candidate("exact", library::source("exact").unwrap());
    let plain = LocalLlm::load(&path).unwrap();
    // A short gate: this test is about generation.
    let hello = GatePrompt {
        system: String::new(),
        user: "Write an attention kernel.".into(),
        reply: None,
    };
    let (on_kernel, _) =
        LocalLlm::load_gated(&path, std::slice::from_ref(&exact_program), &[hello], 0.05).unwrap();
    assert!(on_kernel.kernel().is_some());
    let request = Request {
        system: conversation().system,
        user: conversation().user,
        max_tokens: 16,
        temperature: 0.7,
        seed: 3,
    };
    let (a, b) = (
        plain.complete(&request, true).unwrap(),
        on_kernel.complete(&request, true).unwrap(),
    );
    assert!(a.completion_tokens > 0);
    assert_eq!((a.text, a.completion_tokens), (b.text, b.completion_tokens));

    // The same through `generate` on a model the program was applied to.
    let mut model = Model::load(&path).unwrap();
    let prompt = model.tokenizer.encode_with_bos("fn main() {").unwrap();
    let options = GenerateOptions {
        max_tokens: 12,
        sampling: Sampling {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            seed: 11,
        },
        stop_tokens: vec![],
    };
    let before = generate(&model, &prompt, &options, |_| {}).unwrap();
    Prepared::new(&exact_program.text, &model)
        .unwrap()
        .apply(&mut model)
        .unwrap();
    let after = generate(&model, &prompt, &options, |_| {}).unwrap();
    assert_eq!(before.tokens, after.tokens);
}

fn config(task: &str) -> String {
    format!(
        "name = \"x\"\n[task]\nname = \"{task}\"\n[[seeds]]\ntext = \"(kernel a)\"\n\
         [mutators.perturb]\nweight = 1.0\n[budget]\nevaluations = 5\n"
    )
}

/// Stores `program` in `campaign` with one evaluation (passed when `score` is given).
async fn store(db: &Db, campaign: i64, name: &str, score: Option<f64>) -> i64 {
    let (text, hash) = db_common::library_program(name);
    let id = db
        .insert_program(&NewProgram {
            campaign_id: campaign,
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
    db.insert_evaluation(id, &db_common::evaluation(&hash, 0, score, &[]))
        .await
        .unwrap();
    id
}

async fn call(db: &Db, campaign: i64, stage: &str, prompt: &str, response: Option<&str>) {
    db.insert_llm_call(&NewLlmCall {
        campaign_id: campaign,
        program_id: None,
        stage,
        model: "m.gguf",
        params_json: "{}",
        prompt,
        response,
        prompt_tokens: 1,
        completion_tokens: 1,
        latency_seconds: 0.1,
        error: response.is_none().then_some("failed"),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn best_tries_the_best_passed_drop_in_programs_and_the_gate_reads_recorded_code_calls() {
    let dir = db_common::ScratchDir::new("mutator-kernel");
    let db = Db::open(&dir.db()).await.unwrap();
    let (drop_in, command) = (config("drop-in"), config("command"));
    let mut ids = Vec::new();
    for (name, config_toml) in [("d", &drop_in), ("c", &command)] {
        let new = NewCampaign {
            name,
            config_toml,
            seed: 1,
            strategy: Strategy::Evolve,
            config_dir: None,
        };
        ids.push(db.create_campaign(&new).await.unwrap());
    }
    let window = store(&db, ids[0], "window", Some(2.0)).await;
    let quest = store(&db, ids[0], "quest", Some(3.0)).await;
    store(&db, ids[0], "moba", None).await;
    store(&db, ids[1], "chunked", Some(9.0)).await;

    let best = candidates(&db, &KernelChoice::Best, Path::new(""))
        .await
        .unwrap();
    let origins: Vec<&str> = best.iter().map(|c| c.origin.as_str()).collect();
    assert_eq!(
        origins,
        [
            format!("program #{quest} (d, score 3.0000)"),
            format!("program #{window} (d, score 2.0000)")
        ],
        "passed drop-in programs only, best first"
    );
    assert!(best[0].text.starts_with("(kernel quest"));
    let by_id = candidates(
        &db,
        &KernelChoice::Program(window.to_string()),
        Path::new(""),
    )
    .await
    .unwrap();
    assert!(by_id[0].text.starts_with("(kernel window"));

    assert!(recorded_prompts(&db).await.unwrap().is_empty());
    call(&db, ids[0], "research", "sys\n\nresearch?", Some("NOTES:")).await;
    call(
        &db,
        ids[0],
        "code",
        "sys\n\nwrite\n\nit",
        Some("(kernel a)"),
    )
    .await;
    call(&db, ids[1], "code", "sys\n\nfailed", None).await;
    call(&db, ids[1], "debug", "sys\n\nfix", Some("(kernel b)")).await;
    let prompts = recorded_prompts(&db).await.unwrap();
    let read: Vec<(&str, &str, Option<&str>)> = prompts
        .iter()
        .map(|p| (p.system.as_str(), p.user.as_str(), p.reply.as_deref()))
        .collect();
    assert_eq!(
        read,
        [
            ("sys", "fix", Some("(kernel b)")),
            ("sys", "write\n\nit", Some("(kernel a)"))
        ],
        "code and debug calls with a reply, newest first"
    );
}
