//! The LLM mutator's prompts and their parsing, and one real constrained call on a local
//! GGUF model.

use std::collections::BTreeMap;

use agent::knowledge::{self, Note};
use agent::llm::extract::extract_program;
use agent::llm::local::LocalLlm;
use agent::llm::Request;
use agent::mutate::prompt::{self, Brief, Proposal, Scored};
use kernels::akl::{library, parse};
use kernels::assets;

fn notes() -> Vec<Note> {
    knowledge::notes().collect()
}

fn with_brief(check: impl FnOnce(&Brief)) {
    let metrics = BTreeMap::from([
        ("kl_max_mean".to_string(), 0.0345),
        ("attention_speedup".to_string(), 2.5),
        ("kl_mean[austen/emma.txt@0+512]".to_string(), 0.0123),
        ("attention_seconds_spread".to_string(), 0.0042),
    ]);
    let none = BTreeMap::new();
    let inspirations = [Scored {
        text: library::source("quest").unwrap(),
        score: Some(1.7),
        metrics: &none,
        feedback: "",
    }];
    let insights = vec!["windows under 256 keys lose too much".to_string()];
    let brief = Brief {
        task: "maximise speed-up subject to mean KL <= 0.05",
        parent: Scored {
            text: library::source("sink_window").unwrap(),
            score: Some(2.5),
            metrics: &metrics,
            feedback: "fidelity passed at 1024 and 4096",
        },
        inspirations: &inspirations,
        insights: &insights,
    };
    check(&brief);
}

#[test]
fn the_research_prompt_shows_the_parent_its_numbers_and_the_notes() {
    with_brief(|brief| {
        let (system, user) = prompt::research(brief, &notes());
        assert!(system.contains("AKL"));
        for needle in [
            "(kernel sink_window",
            "kl_max_mean 0.0345",
            "score 2.5000",
            "fidelity passed",
            "(kernel quest",
            "windows under 256 keys",
            "attention_sinks: Attention sinks",
            "NOTES:",
        ] {
            assert!(user.contains(needle), "missing {needle:?}");
        }
        for breakdown in ["kl_mean[austen", "attention_seconds_spread"] {
            assert!(
                !user.contains(breakdown),
                "breakdowns stay out of prompts: {breakdown}"
            );
        }
    });
}

#[test]
fn a_task_without_headline_metrics_shows_all_but_the_sandbox_measurements() {
    let metrics = BTreeMap::from([
        ("combined_score".to_string(), 0.75),
        ("run.cpu_seconds".to_string(), 0.093),
    ]);
    let parent = Scored {
        text: "(kernel k (mask causal))",
        score: Some(0.75),
        metrics: &metrics,
        feedback: "",
    };
    let brief = Brief {
        task: "maximise combined_score",
        parent,
        inspirations: &[],
        insights: &[],
    };
    let (_, user) = prompt::research(&brief, &notes());
    assert!(user.contains("combined_score 0.7500"));
    assert!(!user.contains("run.cpu_seconds"));
}

#[test]
fn research_replies_are_read_leniently() {
    let notes = notes();
    let reply = "Sure!\n**NOTES:** attention_sinks, made_up_note, dilation\nPROPOSAL: keep 8 sinks and halve the window.";
    assert_eq!(
        prompt::parse_research(reply, &notes),
        Proposal {
            notes: vec!["attention_sinks".into(), "dilation".into()],
            text: "keep 8 sinks and halve the window.".into(),
        }
    );
    let bare = prompt::parse_research("Halve the window.", &notes);
    assert!(bare.notes.is_empty());
    assert_eq!(bare.text, "Halve the window.");
}

#[test]
fn the_code_and_debug_prompts_carry_the_grammar_the_notes_and_the_feedback() {
    let notes = notes();
    let proposal = Proposal {
        notes: vec!["dilation".into()],
        text: "add a strided arm".into(),
    };
    with_brief(|brief| {
        let (_, code) = prompt::code(brief, &proposal, &notes);
        assert!(code.contains("program    = \"(\" \"kernel\" NAME clause* \")\""));
        assert!(code.contains("Dilated and strided patterns"));
        assert!(!code.contains("Star attention"), "only the chosen notes");
        assert!(code.contains("add a strided arm"));
        let (_, debug) = prompt::debug(
            brief,
            &proposal,
            "(kernel bad (mask (< kv (+ q 1))))",
            "2:3: the mask is not within causal",
        );
        assert!(debug.contains("(kernel bad") && debug.contains("not within causal"));
    });
}

#[test]
fn a_constrained_local_model_writes_a_program_that_parses() {
    let path = assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let llm = LocalLlm::load(&path).unwrap();
    let notes = notes();
    with_brief(|brief| {
        let proposal =
            prompt::parse_research("NOTES: attention_sinks\nPROPOSAL: keep 8 sinks.", &notes);
        let (system, user) = prompt::code(brief, &proposal, &notes);
        let request = Request {
            system,
            user,
            max_tokens: 160,
            temperature: 0.7,
            seed: 1,
        };
        let reply = llm.complete(&request, true).unwrap();
        assert!(reply.completion_tokens > 0 && reply.prompt_tokens > 500);
        assert_eq!(reply.model, "smollm2-135m-instruct-q4_1.gguf");
        // Cut off or complete, the reply is AKL from its first byte; complete, it parses.
        assert!(
            reply.text.trim_start().starts_with("(kernel"),
            "{}",
            reply.text
        );
        if let Ok(program) = extract_program(&reply.text) {
            parse(program).unwrap_or_else(|e| panic!("{e}\n{program}"));
        }
    });
}
