//! Campaign configs: the quickstart parses, and each kind of mistake gets an error that
//! names the file and the field.

mod db_common;

use std::path::{Path, PathBuf};

use agent::campaign::config::ConfigError;
use agent::campaign::{CampaignConfig, Strategy, TaskName};
use agent::llm::kernel::KernelChoice;
use db_common::ScratchDir;
use evaluator::config::EvaluatorConfig;

fn quickstart_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../campaigns/quickstart.toml")
}

const MINIMAL: &str = r#"
name = "mini"
[task]
name = "command"
[[seeds]]
text = "print('hello')"
[mutators.perturb]
weight = 1.0
[budget]
evaluations = 5
"#;

fn parse(text: &str) -> Result<CampaignConfig, ConfigError> {
    CampaignConfig::from_toml(text, Path::new("campaigns/mine.toml"))
}

/// The error for `text`, checked to name the file.
fn error(text: &str) -> String {
    let message = parse(text)
        .expect_err("the config should be refused")
        .to_string();
    assert!(
        message.contains("campaigns/mine.toml"),
        "the file is not named: {message}"
    );
    message
}

#[test]
fn the_quickstart_parses_and_its_seeds_are_valid_akl() {
    let path = quickstart_path();
    let config = CampaignConfig::load(&path).unwrap();
    assert_eq!(config.name, "quickstart");
    assert_eq!(config.task.name, TaskName::DropIn);
    assert_eq!(config.strategy, Strategy::Evolve);
    let drop_in = &config.task.evaluator.drop_in;
    assert_eq!(drop_in.model, "smollm2");
    assert_eq!(
        drop_in.contexts,
        vec![2048],
        "long enough that doing less attention work is measurably faster"
    );
    assert_eq!(
        drop_in.score.objective,
        evaluator::drop_in::Objective::AttentionSpeedup,
        "scored by measured time, not by the cost model's estimate"
    );
    assert!(drop_in.timing_repeats >= 3, "an interval needs pairs");
    assert_eq!(config.islands.count, 2);
    assert_eq!(config.archive.descriptors.len(), 2);
    let local = config
        .mutators
        .local_llm
        .as_ref()
        .expect("a local LLM mutator");
    assert_eq!(local.model, "qwen-coder");
    let names: Vec<&str> = config
        .mutator_weights()
        .iter()
        .map(|(m, _)| m.name())
        .collect();
    assert!(
        names.contains(&"perturb") && names.contains(&"crossover"),
        "{names:?}"
    );
    assert_eq!(config.budget.wall_seconds, Some(840), "≤ 15 minutes");
    let seeds = config.seed_programs(&path).unwrap();
    assert_eq!(seeds.len(), 3, "three library kernels");
    assert!(seeds[0].text.contains("(kernel sink_window"));
}

#[test]
fn the_recsys_campaign_parses_and_the_recommender_trains_every_seed() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../campaigns/recsys.toml");
    let config = CampaignConfig::load(&path).unwrap();
    assert_eq!(config.task.name, TaskName::Recsys);
    let recsys = &config.task.evaluator.recsys;
    assert!(
        recsys.max_seconds.is_some_and(|s| s <= 60.0),
        "each evaluation is capped to fit the budget"
    );
    assert!(
        config.budget.wall_seconds.is_some_and(|s| s <= 900),
        "≤ 15 minutes"
    );
    let seeds = config.seed_programs(&path).unwrap();
    assert!(seeds.len() >= 4);
    let model = recsys::model::SasRecConfig {
        n_items: 10,
        max_len: recsys.max_len,
        d_model: 8,
        n_blocks: recsys.blocks,
        n_heads: recsys.heads,
        d_ff: 16,
        dropout: 0.0,
    };
    for seed in &seeds {
        recsys::model::SasRec::new(model.clone(), &seed.text, 1)
            .unwrap_or_else(|e| panic!("the recommender refuses {}: {e}", seed.origin));
    }
}

#[test]
fn defaults_fill_what_a_minimal_config_leaves_out() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.seed, 0);
    assert_eq!(config.concurrency, 1);
    assert_eq!(config.islands.count, 1);
    assert_eq!(config.task.evaluator, EvaluatorConfig::default());
    assert!(config.archive.descriptors.is_empty());
    assert_eq!(config.budget.wall_seconds, None);
    assert_eq!(config.base_dir, Path::new("campaigns"));
    // The command task takes any text as a seed.
    let seeds = config
        .seed_programs(Path::new("campaigns/mine.toml"))
        .unwrap();
    assert_eq!(seeds[0].origin, "seeds[0]");
}

#[test]
fn the_local_mutator_kernel_is_best_a_program_or_a_file_and_bad_values_are_named() {
    let with =
        |settings: &str| format!("{MINIMAL}\n[mutators.local_llm]\nweight = 1.0\n{settings}\n");
    let choice = |settings: &str| {
        let config = parse(&with(settings)).unwrap();
        let local = config.mutators.local_llm.unwrap();
        (local.kernel_choice().unwrap(), local.kernel_kl_max)
    };
    assert_eq!(
        choice(""),
        (None, 0.05),
        "absent: exact, with the default bound"
    );
    assert_eq!(
        choice("kernel = \"best\"\nkernel_kl_max = 0.1"),
        (Some(KernelChoice::Best), 0.1)
    );
    assert_eq!(
        choice("kernel = \"12\"").0,
        Some(KernelChoice::Program("12".into()))
    );
    assert_eq!(
        choice("kernel = \"9f3a0c\"").0,
        Some(KernelChoice::Program("9f3a0c".into()))
    );
    assert_eq!(
        choice("kernel = \"kernels/mine.akl\"").0,
        Some(KernelChoice::File("kernels/mine.akl".into()))
    );
    for (settings, named) in [
        ("kernel = \"fastest\"", "\"fastest\""),
        ("kernel = \"\"", "\"best\""),
        ("kernel = \"mine.txt\"", ".akl"),
        ("kernel_kl_max = -0.1", "nats"),
    ] {
        let message = error(&with(settings));
        let field = settings.split(' ').next().unwrap();
        assert!(
            message.contains(&format!("mutators.local_llm.{field}")) && message.contains(named),
            "{settings}: {message}"
        );
    }
}

#[test]
fn an_unknown_field_is_named_at_the_top_and_in_a_table() {
    let message = error(&format!("{MINIMAL}\nsed = 3\n"));
    assert!(message.contains("unknown field `sed`"), "{message}");
    let message = error(&MINIMAL.replace("evaluations = 5", "evaluations = 5\nwall_minutes = 3"));
    assert!(
        message.contains("unknown field `wall_minutes`"),
        "{message}"
    );
    assert!(message.contains("`budget.wall_minutes`"), "{message}");
    let message = error(&format!(
        "{MINIMAL}\n[[seeds]]\npath = \"a.akl\"\nweight = 2\n"
    ));
    assert!(message.contains("`seeds[1].weight`"), "{message}");
    let message = error(&MINIMAL.replace("[mutators.perturb]", "[mutators.pertub]"));
    assert!(message.contains("unknown field `pertub`"), "{message}");
    assert!(
        message.contains("perturb"),
        "the known names are listed: {message}"
    );
}

#[test]
fn a_mistyped_value_is_named_with_its_field() {
    let message = error(&MINIMAL.replace("evaluations = 5", "evaluations = \"five\""));
    assert!(message.contains("`budget.evaluations`"), "{message}");
    assert!(message.contains("invalid type"), "{message}");
    let message = error(&MINIMAL.replace("name = \"command\"", "name = \"dropin\""));
    assert!(message.contains("dropin"), "{message}");
    assert!(
        message.contains("drop-in"),
        "the task names are listed: {message}"
    );
}

#[test]
fn a_missing_required_field_is_named() {
    let message = error(&MINIMAL.replace("[budget]\nevaluations = 5", ""));
    assert!(message.contains("missing field `budget`"), "{message}");
    let message = error(&MINIMAL.replace("[mutators.perturb]\nweight = 1.0", "[mutators.perturb]"));
    assert!(message.contains("missing field `weight`"), "{message}");
    assert!(message.contains("mutators.perturb"), "{message}");
}

#[test]
fn values_out_of_range_are_named() {
    let cases = [
        (
            MINIMAL.replace("weight = 1.0", "weight = -1.0"),
            "mutators.perturb.weight",
        ),
        (
            MINIMAL.replace("weight = 1.0", "weight = 0.0"),
            "`mutators`",
        ),
        (
            MINIMAL.replace("evaluations = 5", "evaluations = 0"),
            "budget.evaluations",
        ),
        (format!("concurrency = 0\n{MINIMAL}"), "concurrency"),
        (
            MINIMAL.replace("text = \"print('hello')\"", "text = \"x\"\npath = \"a.py\""),
            "seeds[0]",
        ),
        (
            format!("{MINIMAL}\n[islands]\ncount = 0\n"),
            "islands.count",
        ),
        (
            format!(
                "{MINIMAL}\n[[archive.descriptors]]\nname = \"x\"\nrange = [1.0, 0.0]\nbins = 3\n"
            ),
            "archive.descriptors[0].range",
        ),
        (
            format!(
                "{MINIMAL}\n[[archive.descriptors]]\nname = \"x\"\nrange = [0.0, 1.0]\nbins = 3\n\
                 [[archive.descriptors]]\nname = \"x\"\nrange = [0.0, 2.0]\nbins = 3\n"
            ),
            "archive.descriptors[1].name",
        ),
        (
            format!(
                "{MINIMAL}\n[mutators.remote_llm]\nweight = 1.0\nbase_url = \"localhost:8080\"\n\
                 model = \"m\"\n"
            ),
            "mutators.remote_llm.base_url",
        ),
    ];
    for (text, field) in cases {
        let message = error(&text);
        assert!(message.contains(field), "`{field}` is not named: {message}");
    }
    // Random search needs no mutators.
    let random = format!(
        "strategy = \"random\"\n{}",
        MINIMAL.replace("weight = 1.0", "weight = 0.0")
    );
    assert_eq!(parse(&random).unwrap().strategy, Strategy::Random);
}

#[test]
fn a_seed_program_that_does_not_parse_is_named_with_its_file_and_position() {
    let dir = ScratchDir::new("config-seeds");
    std::fs::write(
        dir.path().join("good.akl"),
        "(kernel ok (mask causal) (score (* s scale)) (norm softmax))",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.akl"),
        "(kernel bad\n  (mask (and causal))\n  (oops",
    )
    .unwrap();
    let config_path = dir.path().join("c.toml");
    let text = r#"
name = "seeds"
[task]
name = "drop-in"
[[seeds]]
path = "good.akl"
[[seeds]]
path = "bad.akl"
[mutators.perturb]
weight = 1.0
[budget]
evaluations = 5
"#;
    std::fs::write(&config_path, text).unwrap();
    let config = CampaignConfig::load(&config_path).unwrap();
    let message = config.seed_programs(&config_path).unwrap_err().to_string();
    assert!(
        message.contains("bad.akl"),
        "the seed file is not named: {message}"
    );
    assert!(
        message.contains(&config_path.display().to_string()),
        "{message}"
    );
    assert!(message.contains("3:8"), "no line:col: {message}");

    std::fs::write(&config_path, text.replace("bad.akl", "absent.akl")).unwrap();
    let config = CampaignConfig::load(&config_path).unwrap();
    let message = config.seed_programs(&config_path).unwrap_err().to_string();
    assert!(
        message.contains("absent.akl") && message.contains("cannot read"),
        "{message}"
    );
}

#[test]
fn a_missing_config_file_is_named() {
    let message = CampaignConfig::load(Path::new("/nonexistent/campaign.toml"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("/nonexistent/campaign.toml"), "{message}");
}

#[test]
fn the_evaluator_section_is_the_evaluator_config_with_its_checks() {
    let unknown = error(&MINIMAL.replace(
        "name = \"command\"",
        "name = \"command\"\n[task.evaluator.drop_in]\ncontxts = [512]",
    ));
    assert!(unknown.contains("unknown field `contxts`"), "{unknown}");
    let empty = error(&MINIMAL.replace(
        "name = \"command\"",
        "name = \"command\"\n[task.evaluator.command]\ncommand = []",
    ));
    assert!(empty.contains("task.evaluator"), "{empty}");
}
