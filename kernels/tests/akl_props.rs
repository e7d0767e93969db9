//! Property tests over generated programs and hostile input: the canonical form round-trips,
//! generated programs check, compiled masks classify rectangles soundly, accepted masks never
//! show a future key, the cost model counts pairs exactly, and nothing panics.

use kernels::akl::ast::{Program, Rule};
use kernels::akl::{check, compile, cost, generate, parse, print, GenConfig, HeadSpec, ModelShape};
use kernels::attention::{Coverage, KeyRule};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn generated(seed: u64) -> Program {
    generate(&mut StdRng::seed_from_u64(seed), &GenConfig::default())
}

/// Every mask (rule masks and cache masks) a generated program compiles to.
fn compiled_masks(program: &Program) -> Vec<std::sync::Arc<kernels::akl::CompiledMask>> {
    let checked = check(program).unwrap();
    let mut masks = Vec::new();
    for plan in compile(&checked, 8, 4).unwrap() {
        for group in plan.groups {
            match group.spec {
                HeadSpec::Rule { mask, keep, .. } => {
                    masks.extend([Some(mask), keep].into_iter().flatten())
                }
                HeadSpec::Select { mask, .. } => masks.push(mask),
                _ => {}
            }
        }
    }
    masks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn generated_programs_round_trip_and_check(seed in any::<u64>()) {
        let program = generated(seed);
        let text = print(&program);
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&parsed, &program, "{}", text);
        prop_assert_eq!(print(&parsed), text.clone());
        let checked = check(&program).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        compile(&checked, 7, 6).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let shape = ModelShape { n_layers: 3, n_q_heads: 4, n_kv_heads: 2, head_dim: 4 };
        let c = cost(&checked, &shape, 97).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert!(c.flops.is_finite() && c.flops >= 0.0, "{:?}", c);
    }

    #[test]
    fn coverage_is_sound_on_generated_masks(seed in any::<u64>()) {
        let program = generated(seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        for mask in compiled_masks(&program) {
            for _ in 0..24 {
                let q0 = rng.random_range(0..300usize);
                let k0 = rng.random_range(0..300usize);
                let queries = q0..q0 + rng.random_range(1..40);
                let keys = k0..k0 + rng.random_range(1..40);
                let allowed: Vec<bool> = queries
                    .clone()
                    .flat_map(|q| keys.clone().map(move |k| (q, k)))
                    .map(|(q, k)| mask.allows(q, k))
                    .collect();
                match mask.coverage(queries.clone(), keys.clone()) {
                    Coverage::Full => prop_assert!(allowed.iter().all(|a| *a), "{} {:?} {:?}", mask.text, queries, keys),
                    Coverage::Empty => prop_assert!(!allowed.iter().any(|a| *a), "{} {:?} {:?}", mask.text, queries, keys),
                    Coverage::Partial => {}
                }
            }
        }
    }

    #[test]
    fn a_score_expression_is_charged_on_exactly_the_visible_pairs(seed in any::<u64>(), len in 1usize..160) {
        let program = generated(seed);
        let Some(mask) = program.rule.mask.clone() else { return Ok(()) };
        if program.rule.select.is_some() || program.rule.star.is_some() || program.rule.mechanism.is_some() {
            return Ok(());
        }
        let score_of = |text: &str| {
            parse(&format!("(kernel s (score {text}))")).unwrap().rule.score
        };
        let shape = ModelShape { n_layers: 1, n_q_heads: 1, n_kv_heads: 1, head_dim: 1 };
        // The cost of one more score node, on `mask`.
        let extra_node = |mask: kernels::akl::ast::MaskExpr| {
            let flops = |score| {
                let single = Program {
                    name: "single".to_string(),
                    params: program.params.clone(),
                    rule: Rule { mask: Some(mask.clone()), score, ..Rule::default() },
                    layers: Vec::new(),
                };
                cost(&check(&single).unwrap(), &shape, len).unwrap().flops
            };
            flops(score_of("(+ (+ (* s scale) 1.0) 1.0)")) - flops(score_of("(+ (* s scale) 1.0)"))
        };
        let causal = parse("(kernel c (mask causal))").unwrap().rule.mask.unwrap();
        let per_pair = extra_node(causal) / (len * (len + 1) / 2) as f64;
        let single = Program {
            name: "single".to_string(),
            params: program.params.clone(),
            rule: Rule { mask: Some(mask.clone()), ..Rule::default() },
            layers: Vec::new(),
        };
        let pairs = match compiled_masks(&single).first() {
            Some(m) => (0..len).map(|q| (0..=q).filter(|&k| m.allows(q, k)).count()).sum::<usize>(),
            None => len * (len + 1) / 2,
        };
        prop_assert!(per_pair > 0.0);
        prop_assert_eq!(extra_node(mask), per_pair * pairs as f64, "{}", print(&single));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        exercise(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn token_soups_never_panic(picks in proptest::collection::vec(0usize..TOKENS.len(), 0..60)) {
        let soup: Vec<&str> = picks.iter().map(|&i| TOKENS[i]).collect();
        exercise(&format!("(kernel soup {})", soup.join(" ")));
        exercise(&soup.join(" "));
    }

    #[test]
    fn mutated_programs_never_panic(seed in any::<u64>(), edits in proptest::collection::vec((0usize..10_000, 0usize..TOKENS.len()), 1..6)) {
        let text = print(&generated(seed));
        let mut words: Vec<String> = text
            .replace('(', " ( ")
            .replace(')', " ) ")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        for (at, token) in edits {
            let at = at % (words.len() + 1);
            if token % 3 == 0 && at < words.len() {
                words.remove(at);
            } else {
                words.insert(at, TOKENS[token].to_string());
            }
        }
        exercise(&words.join(" "));
    }
}

/// Every AKL keyword, operator and a few awkward numbers.
const TOKENS: &[&str] = &[
    "(",
    ")",
    "(",
    ")",
    "(",
    ")",
    "kernel",
    "param",
    "int",
    "float",
    "pow2",
    "mask",
    "score",
    "norm",
    "softmax",
    "select",
    "page",
    "top",
    "summary",
    "minmax",
    "mean",
    "star",
    "block",
    "context",
    "cache",
    "keep",
    "all",
    "mechanism",
    "mamba2",
    "mla",
    "chunk",
    "tile",
    "q",
    "kv",
    "s",
    "scale",
    "head",
    "heads",
    "layers",
    "list",
    "range",
    "every",
    "causal",
    "true",
    "false",
    "and",
    "or",
    "not",
    "<",
    "<=",
    ">",
    ">=",
    "==",
    "+",
    "-",
    "*",
    "/",
    "div",
    "mod",
    "min",
    "max",
    "tanh",
    "0",
    "1",
    "-1",
    "64",
    "4096",
    "16777216",
    "99999999999",
    "9223372036854775807",
    "1.5",
    "-0.0",
    "1e308",
    "W",
    "n",
    "exact",
    "window",
    "gemma3",
    ";",
    "\n",
];

/// Parses, checks, compiles and costs `text`, accepting any error but no panic.
fn exercise(text: &str) {
    let Ok(program) = parse(text) else { return };
    let Ok(checked) = check(&program) else { return };
    let plans = compile(&checked, 3, 2).expect("a checked program compiles");
    assert_eq!(plans.len(), 3);
    let shape = ModelShape {
        n_layers: 3,
        n_q_heads: 2,
        n_kv_heads: 1,
        head_dim: 2,
    };
    cost(&checked, &shape, 33).expect("a checked program has a cost");
}

/// A random mask as text, from safe and unsafe pieces alike.
fn random_mask(rng: &mut StdRng, depth: u32) -> String {
    let int = |rng: &mut StdRng| -> String {
        let atoms = [
            "q",
            "kv",
            "0",
            "1",
            "3",
            "8",
            "(- q 4)",
            "(+ kv 2)",
            "(div q 4)",
            "(div kv 4)",
            "(mod kv 3)",
            "(* 2 q)",
            "(- q kv)",
        ];
        atoms[rng.random_range(0..atoms.len())].to_string()
    };
    let ops = ["<", "<=", ">", ">=", "=="];
    if depth == 0 || rng.random_bool(0.3) {
        return match rng.random_range(0..4) {
            0 => ["causal", "true", "false"][rng.random_range(0..3)].to_string(),
            _ => format!(
                "({} {} {})",
                ops[rng.random_range(0..5)],
                int(rng),
                int(rng)
            ),
        };
    }
    match rng.random_range(0..3) {
        0 => format!(
            "(and {} {})",
            random_mask(rng, depth - 1),
            random_mask(rng, depth - 1)
        ),
        1 => format!(
            "(or {} {})",
            random_mask(rng, depth - 1),
            random_mask(rng, depth - 1)
        ),
        _ => format!("(not {})", random_mask(rng, depth - 1)),
    }
}

/// The checker is sound: a mask it accepts never shows a future key, checked by brute force;
/// and it is not vacuous: it accepts some random masks and rejects others.
#[test]
fn accepted_masks_never_show_a_future_key() {
    let mut rng = StdRng::seed_from_u64(7);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..600 {
        let text = format!("(kernel m (mask {}))", random_mask(&mut rng, 3));
        let program = parse(&text).unwrap();
        if check(&program).is_err() {
            rejected += 1;
            continue;
        }
        accepted += 1;
        for mask in compiled_masks(&program) {
            for q in 0..48 {
                for k in q + 1..q + 40 {
                    assert!(!mask.allows(q, k), "{text} shows key {k} to query {q}");
                }
            }
        }
    }
    assert!(
        accepted > 50 && rejected > 50,
        "accepted {accepted}, rejected {rejected}"
    );
}

/// The generator's draws pass the checks on their own, rather than through its fallback.
#[test]
fn every_generated_program_checks_without_the_fallback() {
    let fallbacks = (0..200)
        .filter(|&seed| generated(seed).name == "causal_fallback")
        .count();
    assert_eq!(
        fallbacks, 0,
        "the generator fell back to the plain program {fallbacks} times"
    );
}
