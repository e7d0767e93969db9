//! AKL front to back on hand-written programs: syntax, canonical form, checks, compiled
//! masks and scores, plans and costs.

use std::sync::Arc;

use kernels::akl::{
    check, compile, cost, exact_cost, library, parse, parse_and_check, print, CheckedProgram,
    HeadSpec, ModelShape,
};
use kernels::attention::{Coverage, KeyRule, ScoreModifier};

const SKETCH: &str = "
(kernel sink_window   ; the sketch from the design, clauses in any order
  (param W int 1024 (pow2 128 8192)) (param n int 4 (0 64))
  (layers (list 0 1) exact)
  (mask (and causal (or (< kv n) (> kv (- q W)))))
  (score (* s scale)) (norm softmax)
  (tile q 32 kv 128))
";

const SKETCH_CANONICAL: &str = "(kernel sink_window
  (param W int 1024 (pow2 128 8192))
  (param n int 4 (0 64))
  (mask (and causal (or (< kv n) (> kv (- q W)))))
  (score (* s scale))
  (norm softmax)
  (tile q 32 kv 128)
  (layers (list 0 1) exact))
";

fn checked(text: &str) -> CheckedProgram {
    parse_and_check(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn check_error(text: &str) -> String {
    let program = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    match check(&program) {
        Ok(_) => panic!("expected a check error for\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// A program with one rule whose clauses are `clauses`.
fn rule(params: &str, clauses: &str) -> String {
    format!("(kernel t {params} {clauses})")
}

#[test]
fn the_sketch_prints_in_canonical_form() {
    let program = parse(SKETCH).unwrap();
    assert_eq!(print(&program), SKETCH_CANONICAL);
    assert_eq!(parse(SKETCH_CANONICAL).unwrap(), program);
    checked(SKETCH);
}

#[test]
fn hash_ignores_layout_and_comments_but_not_meaning() {
    let a = parse(SKETCH).unwrap();
    let b = parse(SKETCH_CANONICAL).unwrap();
    assert_eq!(a.canonical_hash(), b.canonical_hash());
    assert_eq!(a.canonical_hash().len(), 64);
    let changed = parse(&SKETCH_CANONICAL.replace("(param n int 4", "(param n int 8")).unwrap();
    assert_ne!(a.canonical_hash(), changed.canonical_hash());
}

#[test]
fn numbers_print_in_one_form() {
    let text = rule(
        "(param cap float 30 (1 100))",
        "(score (* cap (tanh (/ (* s scale) cap)))) (mechanism differential (lambda_init 1))",
    );
    let printed = print(&parse(&text).unwrap());
    assert!(
        printed.contains("(param cap float 30.0 (1.0 100.0))"),
        "{printed}"
    );
    assert!(printed.contains("(lambda_init 1.0)"), "{printed}");
    let options_reordered =
        print(&parse("(kernel m (mechanism mla (rope_dim 8) (kv_rank 32)))").unwrap());
    assert!(
        options_reordered.contains("(mechanism mla (kv_rank 32) (rope_dim 8))"),
        "{options_reordered}"
    );
}

#[test]
fn syntax_errors_name_line_column_and_what_was_expected() {
    let e = parse("(kernel k\n  (mask (and causal foo)))").unwrap_err();
    assert_eq!((e.line, e.col), (2, 21));
    assert_eq!(
        e.to_string(),
        "2:21: expected a mask expression (causal, and, or, not, <, <=, >, >=, ==, true, false), found \"foo\""
    );
    let e = parse("(kernel k\n  (mask causal)").unwrap_err();
    assert_eq!((e.line, e.col, e.found.as_str()), (2, 16, "end of input"));
    assert!(e.expected.contains("closing the list at 1:1"), "{e}");
    let e = parse("(kernel k (window 5))").unwrap_err();
    assert_eq!((e.line, e.col), (1, 12));
    assert!(e.expected.starts_with("a clause (param, mask"), "{e}");
    let e = parse("(kernel k (mask causal) (mask causal))").unwrap_err();
    assert!(e.to_string().contains("at most one \"mask\" clause"), "{e}");
    let e = parse("(kernel k (mask (< kv 1.5)))").unwrap_err();
    assert!(e.expected.starts_with("an integer expression"), "{e}");
    let e = parse("(kernel k (tile q 32 kv))").unwrap_err();
    assert!(e.to_string().contains("more argument"), "{e}");
    let e = parse("(kernel k) (kernel j)").unwrap_err();
    assert_eq!((e.line, e.col), (1, 12));
    let deep = format!(
        "(kernel k (mask {}causal{}))",
        "(not ".repeat(100),
        ")".repeat(100)
    );
    assert!(parse(&deep).unwrap_err().expected.contains("nested"));
}

#[test]
fn masks_within_causal_are_proven() {
    let params = "(param W int 64 (1 4096)) (param n int 4 (0 64)) (param C int 16 (pow2 1 1024))";
    let masks = [
        "causal",
        "(and causal (> kv (- q W)))",
        "(and causal (or (< kv n) (> kv (- q W))))",
        "(and causal (== (div kv C) (div q C)))",
        "(and causal (== (mod (- q kv) 2) 0))",
        "(and causal (or (< kv 256) (== (div kv 256) (div q 256))))",
        "(not (> kv q))",
        "(< kv (- q 3))",
        "(< (* 2 kv) (+ (* 2 q) 2))",
        "(or (and causal (< kv n)) (and (<= kv q) (> kv (- q W))))",
        "(and (<= (div kv C) (div q C)) (<= (mod kv C) (mod q C)))",
        "false",
    ];
    for mask in masks {
        checked(&rule(params, &format!("(mask {mask})")));
    }
}

#[test]
fn masks_not_within_causal_are_rejected_with_the_case_and_an_example() {
    let e = check_error(&rule(
        "(param n int 4 (0 64))",
        "(mask (or causal (< kv n)))",
    ));
    assert!(e.starts_with("mask: not provably within causal"), "{e}");
    assert!(e.contains("`(< kv n)`"), "{e}");
    assert!(e.contains("for example q=0 sees kv=1"), "{e}");
    for mask in [
        "true",
        "(> kv (- q 8))",
        "(== (div kv 4) (div q 4))",
        "(not causal)",
    ] {
        let e = check_error(&rule("", &format!("(mask {mask})")));
        assert!(e.contains("not provably within causal"), "{mask}: {e}");
    }
    // Within causal only in layers that override the rule: each rule is checked.
    let e = check_error("(kernel t (layers (list 3) (mask (>= kv 0))))");
    assert!(e.starts_with("(layers (list 3)) mask:"), "{e}");
}

#[test]
fn out_of_range_and_absurd_sizes_are_rejected() {
    let cases = [
        (
            "(param W int 5000 (pow2 128 4096))",
            "",
            "default 5000 is not a power of two in 128..=4096",
        ),
        ("(param W int 100 (pow2 128 4096))", "", "default 100"),
        (
            "(param W int 1000000000000000 (1 1000000000000000))",
            "",
            "absurd size",
        ),
        ("(param W int 8 (9 4))", "", "empty range"),
        ("(param cap float 0.5 (1.0 2.0))", "", "default 0.5"),
        ("(param q int 1 (0 4))", "", "reserved name"),
        ("", "(tile q 0 kv 128)", "q tile 0 is not in 1..=4096"),
        ("", "(tile q 32 kv 8192)", "kv tile 8192"),
        ("", "(select (page 0) (top 4) (summary mean))", "page 0"),
        (
            "",
            "(mask (and causal (> kv (- q 1000000000000))))",
            "absurd size",
        ),
        (
            "",
            "(mask (and causal (> kv (* 100000 (* 100000 (- q 8))))))",
            "reaches",
        ),
        ("", "(heads (list 2000) exact)", "head index 2000"),
        ("", "(heads (range 4 4) exact)", "(range 4 4)"),
    ];
    for (params, clauses, expected) in cases {
        let e = check_error(&rule(params, clauses));
        assert!(e.contains(expected), "{params} {clauses}: {e}");
    }
    let e = check_error("(kernel t (layers (list 0 5000) exact))");
    assert!(e.contains("layer index 5000"), "{e}");
    let e = check_error("(kernel t (layers (every 6 6) exact))");
    assert!(e.contains("(every 6 6)"), "{e}");
}

#[test]
fn unknown_names_are_rejected_by_name() {
    let e = check_error("(kernel t (mechanism flash9))");
    assert!(
        e.contains("unknown mechanism `flash9`") && e.contains("gated_deltanet"),
        "{e}"
    );
    let e = check_error("(kernel t (mechanism mamba2 (heads 3)))");
    assert!(e.contains("unknown option `heads`"), "{e}");
    let e = check_error("(kernel t (mechanism mamba2 (chunk 48)))");
    assert!(
        e.contains("chunk must be a power of two from 1 to 1024"),
        "{e}"
    );
    let e = check_error("(kernel t (mechanism log_linear (base gated_deltanet)))");
    assert!(e.contains("base must be one of linear, mamba2"), "{e}");
    let e = check_error("(kernel t (mechanism mla (rope_dim 7)))");
    assert!(
        e.contains("rope_dim must be an even integer from 2 to 512"),
        "{e}"
    );
    let e = check_error("(kernel t (mechanism differential (lambda_init 1.0)))");
    assert!(
        e.contains("lambda_init must be a number from 0.0 to 0.95"),
        "{e}"
    );
    // Options nothing at runtime honours are not in the table.
    for removed in [
        "(mechanism linear (feature_map relu))",
        "(mechanism mamba2 (state 64))",
        "(mechanism deltanet (conv 4))",
        "(mechanism mla (q_rank 0))",
    ] {
        let e = check_error(&format!("(kernel t {removed})"));
        assert!(e.contains("unknown option"), "{removed}: {e}");
    }
    let e = check_error("(kernel t (layers all windw))");
    assert!(e.contains("unknown library kernel `windw`"), "{e}");
    let e = check_error("(kernel t (mask (and causal (< kv m))))");
    assert!(e.contains("unknown parameter `m`"), "{e}");
    let e = check_error("(kernel t (score (* s temp)))");
    assert!(e.contains("unknown parameter `temp`"), "{e}");
}

#[test]
fn rule_shapes_that_make_no_sense_are_rejected() {
    let e = check_error("(kernel t (mechanism mla) (mask causal))");
    assert!(e.contains("a mechanism rule takes no other clause"), "{e}");
    let e = check_error("(kernel t (heads (list 0) (mechanism mla)))");
    assert!(e.contains("cannot serve only some heads"), "{e}");
    let e = check_error("(kernel t (heads (list 0) mla))");
    assert!(e.contains("needs a plain rule"), "{e}");
    let e = check_error("(kernel t (heads (list 0) (heads (list 1) exact)))");
    assert!(e.contains("cannot nest"), "{e}");
    let e = check_error("(kernel t (layers all gemma3))");
    assert!(e.contains("per-layer overrides"), "{e}");
    let e = check_error("(kernel t (star (block 64) (context 128)) (mask causal))");
    assert!(e.contains("brings its own mask"), "{e}");
    let e = check_error(
        "(kernel t (select (page 8) (top 2) (summary mean)) (cache (keep (> kv (- q 9)))))",
    );
    assert!(e.contains("drop the keep policy"), "{e}");
    let e = check_error("(kernel t (score (/ s 0)))");
    assert!(e.contains("nonzero constant"), "{e}");
    let e = check_error("(kernel t (mask (and causal (< (* q kv) 5))))");
    assert!(e.contains("one side of * must be a constant"), "{e}");
    let e = check_error("(kernel t (mask (and causal (< (mod kv 0) 5))))");
    assert!(e.contains("divisor must be positive"), "{e}");
}

#[test]
fn a_cache_must_keep_every_key_the_mask_can_still_show() {
    let window = "(param W int 64 (1 4096))";
    let mask = "(mask (and causal (> kv (- q W))))";
    checked(&rule(
        window,
        &format!("{mask} (cache (keep (> kv (- q W))))"),
    ));
    checked(&rule(
        window,
        &format!("{mask} (cache (keep (> kv (- q 100))))"),
    ));
    checked(&rule(window, &format!("{mask} (cache all)")));
    let e = check_error(&rule(
        window,
        &format!("{mask} (cache (keep (> kv (- q 32))))"),
    ));
    assert!(
        e.starts_with("cache: the cache may drop a key the mask still shows"),
        "{e}"
    );
    assert!(e.contains("for example key"), "{e}");
    // A chunk's keys are needed until the chunk ends.
    let chunked = "(mask (and causal (== (div kv 16) (div q 16))))";
    checked(&rule(
        "",
        &format!("{chunked} (cache (keep (== (div kv 16) (div q 16))))"),
    ));
    let e = check_error(&rule(
        "",
        &format!("{chunked} (cache (keep (> kv (- q 8))))"),
    ));
    assert!(e.contains("may drop a key"), "{e}");
    // Keeping only sinks loses the window.
    let e = check_error(&rule(
        "(param n int 4 (0 64))",
        "(mask (and causal (or (< kv n) (> kv (- q 64))))) (cache (keep (< kv n)))",
    ));
    assert!(e.contains("may drop a key"), "{e}");
}

fn rule_spec(checked: &CheckedProgram) -> HeadSpec {
    let plans = compile(checked, 1, 1).unwrap();
    plans[0].groups[0].spec.clone()
}

#[test]
fn compiled_masks_answer_pairs_and_rectangles() {
    let program = checked(&rule(
        "(param W int 8 (1 64)) (param n int 2 (0 8))",
        "(mask (and causal (or (< kv n) (> kv (- q W)))))",
    ));
    let HeadSpec::Rule { mask, .. } = rule_spec(&program) else {
        panic!("a windowed rule compiles to HeadSpec::Rule");
    };
    for q in 0..40 {
        for k in 0..40 {
            let expected = k <= q && (k < 2 || k + 8 > q);
            assert_eq!(mask.allows(q, k), expected, "q={q} k={k}");
        }
    }
    assert_eq!(mask.coverage(20..24, 30..40), Coverage::Empty);
    assert_eq!(mask.coverage(20..24, 0..2), Coverage::Full);
    assert_eq!(mask.coverage(20..24, 4..10), Coverage::Empty);
    assert_eq!(mask.coverage(20..24, 16..17), Coverage::Full);
    assert_eq!(mask.coverage(20..24, 10..20), Coverage::Partial);
}

#[test]
fn scores_evaluate_the_expression_at_the_layer_scale() {
    let program = checked(&rule(
        "(param cap float 5.0 (1.0 50.0)) (param slope float 0.5 (0.0 1.0))",
        "(score (- (* cap (tanh (/ (* s scale) cap))) (* slope (- q kv))))",
    ));
    let HeadSpec::Rule {
        score: Some(score), ..
    } = rule_spec(&program)
    else {
        panic!("a modified score compiles to HeadSpec::Rule with a score");
    };
    let (s, scale) = (3.0f64, 0.25f64);
    let expected = 5.0 * (s * scale / 5.0).tanh() - 0.5 * (9.0 - 4.0);
    assert!((score.eval(0, 9, 4, s, scale) - expected).abs() < 1e-12);
    let modifier = score.at_scale(scale as f32);
    let modified = modifier.modify(0, 9, 4, (s * scale) as f32);
    assert!(
        (f64::from(modified) - expected).abs() < 1e-5,
        "{modified} vs {expected}"
    );
}

#[test]
fn plans_name_the_right_spec_for_each_kind_of_rule() {
    assert!(matches!(rule_spec(&checked("(kernel t)")), HeadSpec::Exact));
    assert!(matches!(
        rule_spec(&checked("(kernel t (mask causal) (score (* scale s)))")),
        HeadSpec::Exact
    ));
    let HeadSpec::Rule {
        keep: Some(_),
        q_tile: 32,
        kv_tile: 128,
        ..
    } = rule_spec(library::checked("sink_window").unwrap())
    else {
        panic!("sink_window keeps a sink and window cache");
    };
    assert!(matches!(
        rule_spec(library::checked("quest").unwrap()),
        HeadSpec::Select {
            page: 16,
            top: 64,
            ..
        }
    ));
    assert!(matches!(
        rule_spec(library::checked("star").unwrap()),
        HeadSpec::Star {
            block: 256,
            context: 4096
        }
    ));
    let HeadSpec::Mechanism { name, options } =
        rule_spec(&checked("(kernel t (mechanism mta (head_kernel 3)))"))
    else {
        panic!("a mechanism compiles to HeadSpec::Mechanism");
    };
    assert_eq!(name, "mta");
    let keys: Vec<&str> = options.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["q_kernel", "k_kernel", "head_kernel"],
        "defaults are filled in, in table order"
    );
    // Selectors beyond the model match nothing; equal rules share one compiled mask.
    let program = checked("(kernel t (layers (list 1 40) window) (layers (list 2) window))");
    let plans = compile(&program, 3, 2).unwrap();
    assert!(matches!(plans[0].groups[0].spec, HeadSpec::Exact));
    let (HeadSpec::Rule { mask: a, .. }, HeadSpec::Rule { mask: b, .. }) =
        (&plans[1].groups[0].spec, &plans[2].groups[0].spec)
    else {
        panic!("layers 1 and 2 run the window");
    };
    assert!(Arc::ptr_eq(a, b));
}

const SHAPE: ModelShape = ModelShape {
    n_layers: 2,
    n_q_heads: 4,
    n_kv_heads: 2,
    head_dim: 8,
};

#[test]
fn exact_cost_follows_the_closed_form() {
    let t = 300usize;
    let c = exact_cost(&SHAPE, t).unwrap();
    let pairs = (t * (t + 1) / 2) as f64;
    assert_eq!(c.flops, 2.0 * 4.0 * 4.0 * 8.0 * pairs);
    // Each KV head is held once per layer: K and V, head_dim floats each.
    assert_eq!(c.kv_bytes_held_per_token, 2.0 * 2.0 * 2.0 * 8.0 * 4.0);
    // Query tiles of 32 read every key tile (of 128) up to their last row; K and V of
    // head_dim f32 for each of 2 KV heads in 2 layers.
    let keys_read: usize = (0..t)
        .step_by(32)
        .map(|start| {
            let last_row = (start + 31).min(t - 1);
            (0..=last_row / 128)
                .map(|j| ((j + 1) * 128).min(t) - j * 128)
                .sum::<usize>()
        })
        .sum();
    assert_eq!(
        c.kv_bytes_read,
        keys_read as f64 * (2.0 * 8.0 * 4.0) * 2.0 * 2.0
    );
}

#[test]
fn linear_family_costs_follow_the_chunkwise_formulas() {
    let (t, d, heads) = (1000.0, 8.0, 2.0 * 4.0);
    let run = |text: &str| cost(&checked(text), &SHAPE, 1000).unwrap();
    // One d × d state per head, whatever the member: nothing else is held.
    for name in [
        "linear",
        "retnet",
        "gla",
        "mamba2",
        "deltanet",
        "gated_deltanet",
    ] {
        let c = run(&format!("(kernel t (mechanism {name} (chunk 16)))"));
        assert_eq!(c.kv_bytes_held_per_token, heads * d * d * 4.0 / t, "{name}");
    }
    // Per token: state read and write (4d²) and half a chunk of pairs (2·C·d).
    let linear = run("(kernel t (mechanism linear (chunk 16)))");
    assert_eq!(linear.flops, heads * t * (4.0 * d * d + 2.0 * 16.0 * d));
    let delta = run("(kernel t (mechanism deltanet (chunk 16)))");
    assert_eq!(
        delta.flops - linear.flops,
        heads * t * (3.0 * 16.0 * d + 2.0 * d * d)
    );
    // Log-Linear: chunk n of 16 reads popcount(n) states of d × d for each of its queries;
    // the cache holds ⌊log₂ T⌋ + 1 = 10 states.
    let log_linear = run("(kernel t (mechanism log_linear (chunk 16) (base linear)))");
    let reads: f64 = (0..63u32)
        .map(|n| f64::from(n.count_ones()) * if n == 62 { 8.0 } else { 16.0 })
        .sum();
    assert_eq!(
        log_linear.flops,
        heads * (t * (2.0 * d * d + 2.0 * 16.0 * d) + reads * 2.0 * d * d)
    );
    assert_eq!(
        log_linear.kv_bytes_held_per_token,
        heads * 10.0 * d * d * 4.0 / t
    );
    assert!(log_linear.flops > linear.flops);
}

#[test]
fn windows_cost_less_than_exact_and_caches_hold_less() {
    let t = 4096;
    let exact = exact_cost(&SHAPE, t).unwrap();
    let window = cost(library::checked("window").unwrap(), &SHAPE, t).unwrap();
    let w = 1024f64;
    let pairs = (w * (w + 1.0) / 2.0) + (t as f64 - w) * w;
    // Rows score every key of the tiles they visit, the window's edge tile whole, and check
    // that tile against the mask: more than the visible pairs' 4·d, less than exact.
    assert!(window.flops > 2.0 * 4.0 * 4.0 * 8.0 * pairs);
    assert!(window.flops < exact.flops);
    assert!(window.kv_bytes_read < 0.5 * exact.kv_bytes_read);
    assert_eq!(
        window.kv_bytes_held_per_token,
        exact.kv_bytes_held_per_token
    );
    let sinks = cost(library::checked("sink_window").unwrap(), &SHAPE, t).unwrap();
    let kept = (1024.0 + 4.0) / t as f64;
    assert!((sinks.kv_bytes_held_per_token - kept * exact.kv_bytes_held_per_token).abs() < 1e-9);
    for name in library::names() {
        let c = cost(library::checked(name).unwrap(), &SHAPE, t).unwrap();
        assert!(c.flops > 0.0 && c.flops.is_finite(), "{name}: {c:?}");
        assert!(
            c.kv_bytes_read > 0.0 && c.kv_bytes_held_per_token > 0.0,
            "{name}: {c:?}"
        );
    }
    // At a real head size (with 8 dims the mask checks of partial tiles outweigh the pairs
    // skipped). Not quest and moba: their f64 page scoring and row-at-a-time attention cost
    // more than the keys they skip at this length (as measured: tests/cost_model.rs).
    let real = ModelShape {
        head_dim: 64,
        ..SHAPE
    };
    let exact = exact_cost(&real, t).unwrap();
    for name in ["window", "sink_window", "star", "linear", "mamba2"] {
        let c = cost(library::checked(name).unwrap(), &real, t).unwrap();
        assert!(
            c.flops < exact.flops,
            "{name} should be cheaper than exact: {c:?} vs {exact:?}"
        );
    }
}

#[test]
fn bad_shapes_are_rejected_by_the_cost_model() {
    let exact = library::checked("exact").unwrap();
    let bad = ModelShape {
        n_kv_heads: 3,
        ..SHAPE
    };
    assert!(cost(exact, &bad, 10).is_err());
    assert!(cost(exact, &SHAPE, 0).is_err());
    assert!(compile(exact, 0, 4).is_err());
}

#[test]
fn library_masks_agree_with_the_runtime_masks_they_name() {
    use kernels::attention::Mask;
    let window = rule_spec(library::checked("window").unwrap());
    let chunked = rule_spec(library::checked("chunked").unwrap());
    let (HeadSpec::Rule { mask: window, .. }, HeadSpec::Rule { mask: chunked, .. }) =
        (window, chunked)
    else {
        panic!("window and chunked compile to rules");
    };
    let pairs = [
        (window, Mask::SlidingWindow { window: 1024 }),
        (chunked, Mask::Chunked { chunk: 8192 }),
    ];
    for (compiled, runtime) in pairs {
        for q in (0..20_000).step_by(97) {
            for k in (0..20_000).step_by(89) {
                assert_eq!(
                    compiled.allows(q, k),
                    runtime.allows(q, k),
                    "{} q={q} k={k}",
                    compiled.text
                );
            }
        }
        for (queries, keys) in [
            (0..32, 0..128),
            (8192..8224, 8064..8192),
            (9000..9032, 7936..8064),
            (100..132, 512..640),
        ] {
            assert_eq!(
                compiled.coverage(queries.clone(), keys.clone()),
                runtime.coverage(queries.clone(), keys.clone()),
                "{} {queries:?} {keys:?}",
                compiled.text
            );
        }
    }
}

#[test]
fn error_messages_read_well() {
    let cases = [
        "(kernel t (param n int 4 (0 64)) (mask (or causal (< kv n))))",
        "(kernel t (param W int 64 (1 4096)) (mask (and causal (> kv (- q W)))) (cache (keep (> kv (- q 32)))))",
        "(kernel t (layers (every 6 5) (heads (list 1) (mask (> kv 3)))))",
    ];
    let messages: Vec<String> = cases.iter().map(|c| check_error(c)).collect();
    assert_eq!(
        messages[0],
        "mask: not provably within causal: the case `(< kv n)` may let a query see a future key (kv > q); \
         for example q=0 sees kv=1; add `causal` to the conjunction"
    );
    assert_eq!(
        messages[1],
        "cache: the cache may drop a key the mask still shows: the case \
         `(and causal (> kv (- q W)) (not (> kv (- q 32))))` is not excluded; \
         for example key 0 is dropped at position 32 but query 32 sees it; keep is `(> kv (- q 32))`"
    );
    assert!(
        messages[2].starts_with("(layers (every 6 5)) (heads (list 1)) mask: not provably"),
        "{}",
        messages[2]
    );
}

#[test]
fn written_order_of_list_indices_and_options_does_not_change_the_hash() {
    let a =
        parse("(kernel t (layers (list 5 0 3) exact) (mechanism gla (gate_rank 8) (chunk 32)))")
            .unwrap();
    let b =
        parse("(kernel t (mechanism gla (chunk 32) (gate_rank 8)) (layers (list 0 3 5) exact))")
            .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.canonical_hash(), b.canonical_hash());
    let odd_numbers = "(kernel t (score (+ (* s scale) -3)) (param x float -0.50 (-0.0000001 25e19)) (mask (> kv (+ q -4))))";
    let program = parse(odd_numbers).unwrap();
    assert_eq!(
        print(&program),
        "(kernel t\n  (param x float -0.5 (-1e-7 2.5e20))\n  (mask (> kv (+ q -4)))\n  (score (+ (* s scale) -3.0)))\n"
    );
    assert_eq!(parse(&print(&program)).unwrap(), program);
}

#[test]
fn a_large_mask_under_causal_passes_without_expansion() {
    // 15 arms of two comparisons and one more without `causal`: within the comparison limit.
    let arms: Vec<String> = (0..15)
        .map(|i| format!("(or (< (mod kv {}) 1) (> kv (- q {})))", i + 2, i + 9))
        .collect();
    checked(&format!(
        "(kernel t (mask (and causal {})))",
        arms.join(" ")
    ));
    // Without `causal` the same mask needs the full expansion, which is refused as too complex.
    let e = check_error(&format!(
        "(kernel t (mask (and (<= kv q) {})))",
        arms.join(" ")
    ));
    assert!(e.contains("more than 256 cases"), "{e}");
}

/// Stored kernels are identified by this hash: a change to the canonical form changes every
/// identity in the database, so it must be deliberate.
#[test]
fn the_canonical_hash_is_pinned() {
    assert_eq!(
        parse(SKETCH).unwrap().canonical_hash(),
        "b58a64de7d0e89c8a1cc2da4e585962ccccdf116773ed288902613249387ea65"
    );
}

#[test]
fn the_last_matching_override_wins() {
    let program = checked(
        "(kernel t
           (layers all window)
           (layers (list 1) exact)
           (layers (range 2 4)
             (mask (and causal (> kv (- q 8))))
             (heads all quest)
             (heads (every 2 1) exact)))",
    );
    let plans = compile(&program, 4, 4).unwrap();
    assert!(matches!(plans[0].groups[0].spec, HeadSpec::Rule { .. }));
    assert!(matches!(plans[1].groups[0].spec, HeadSpec::Exact));
    for plan in &plans[2..] {
        let kinds: Vec<(std::ops::Range<usize>, bool)> = plan
            .groups
            .iter()
            .map(|g| (g.heads.clone(), matches!(g.spec, HeadSpec::Select { .. })))
            .collect();
        assert_eq!(
            kinds,
            [(0..1, true), (1..2, false), (2..3, true), (3..4, false)]
        );
    }
}

// ---- Size and magnitude limits: refused in linear time, with what to fix ----

#[test]
fn extreme_integers_are_refused_not_wrapped() {
    let min = i64::MIN;
    let e = check_error(&rule(&format!("(param W int {min} ({min} 0))"), ""));
    assert!(e.contains("absurd size"), "{e}");
    let e = check_error(&rule("", &format!("(mask (and causal (> kv {min})))")));
    assert!(e.contains("absurd size"), "{e}");
    // Folding 2^72 and subtracting it again must not hide the overflow.
    let huge = "(* (* 16777216 16777216) 16777216)";
    let e = check_error(&rule(
        "",
        &format!("(mask (and causal (> kv (- {huge} {huge}))))"),
    ));
    assert!(e.contains("2^52"), "{e}");
    let e = check_error(&rule(
        "",
        "(mask (and causal (> kv (* (* 16777216 16777216) 16))))",
    ));
    assert!(e.contains("2^52"), "{e}");
}

#[test]
fn a_score_that_could_overflow_f32_at_some_position_is_refused() {
    let e = check_error(&rule("", "(score (* (* s scale) (* (* q q) (* q q))))"));
    assert!(e.contains("score") && e.contains("tanh"), "{e}");
    let e = check_error(&rule("", "(score (/ (* s scale) 1e-30))"));
    assert!(e.contains("past what f32 holds"), "{e}");
    // Bounded forms pass: soft-capping and an ALiBi-like bias over 2^24 positions.
    checked(&rule("", "(score (* 30 (tanh (/ (* s scale) 30))))"));
    checked(&rule("", "(score (- (* s scale) (* 0.5 (- q kv))))"));
}

#[test]
fn sizes_past_the_limits_are_refused_naming_the_limit() {
    use kernels::akl::check::{MAX_COMPARISONS, MAX_OVERRIDES, MAX_PARAMS, MAX_SCORE_NODES};
    use kernels::akl::lexer::{MAX_BYTES, MAX_EXPRESSIONS};
    let params = |n: usize| {
        (0..n)
            .map(|i| format!("(param p{i} int 1 (0 8))"))
            .collect::<String>()
    };
    checked(&rule(&params(MAX_PARAMS), ""));
    let e = check_error(&rule(&params(MAX_PARAMS + 1), ""));
    assert!(e.contains(&format!("at most {MAX_PARAMS}")), "{e}");

    let window = |n: usize| {
        let parts: String = (0..n)
            .map(|i| format!(" (> kv (- q {}))", 100 + i))
            .collect();
        format!("(mask (and causal (or{parts})))")
    };
    checked(&rule("", &window(MAX_COMPARISONS)));
    let e = check_error(&rule("", &window(MAX_COMPARISONS + 1)));
    assert!(e.contains(&format!("at most {MAX_COMPARISONS}")), "{e}");

    let overrides = |n: usize| {
        (0..n)
            .map(|i| format!("(layers (list {i}) window)"))
            .collect::<String>()
    };
    checked(&rule("", &overrides(MAX_OVERRIDES)));
    let e = check_error(&rule("", &overrides(MAX_OVERRIDES + 1)));
    assert!(e.contains(&format!("at most {MAX_OVERRIDES}")), "{e}");

    let score = |n: usize| format!("(score {}s{})", "(+ 1 ".repeat(n), ")".repeat(n));
    checked(&rule("", &score((MAX_SCORE_NODES - 1) / 2)));
    let e = check_error(&rule("", &score(MAX_SCORE_NODES / 2)));
    assert!(e.contains(&format!("at most {MAX_SCORE_NODES}")), "{e}");

    let long = format!("(kernel t){}", " ".repeat(MAX_BYTES));
    let e = parse(&long).unwrap_err().to_string();
    assert!(e.contains(&format!("at most {MAX_BYTES} bytes")), "{e}");
    let many = format!(
        "(kernel t {})",
        "(tile q 32 kv 128) ".repeat(MAX_EXPRESSIONS / 5)
    );
    let e = parse(&many).unwrap_err().to_string();
    assert!(
        e.contains(&format!("at most {MAX_EXPRESSIONS} expressions")),
        "{e}"
    );
}

/// The hardest programs within the limits for the prover: every parameter, every override,
/// and in each a mask and a keep policy of the most comparisons, each over its own `div` or
/// `mod` (an auxiliary variable apiece), in products of disjunctions that expand to the
/// most cases. The checker's worst case (AKL.md) is what this measures; the bound asserted
/// here is loose for shared test machines, and the time is printed.
#[test]
fn the_checker_finishes_quickly_on_the_hardest_programs_within_the_limits() {
    use kernels::akl::check::{MAX_COMPARISONS, MAX_OVERRIDES, MAX_PARAMS};
    let params: String = (0..MAX_PARAMS)
        .map(|i| format!("(param p{i} int {} (1 4096))", 3 + 7 * i))
        .collect();
    let atom = |i: usize| {
        let c = 2 + i % 13;
        match i % 4 {
            0 => format!("(< (mod (+ q p{}) {c}) (div kv {}))", i % MAX_PARAMS, c + 1),
            1 => format!("(>= (div (- q kv) {c}) (mod kv p{}))", i % MAX_PARAMS),
            2 => format!("(> (+ kv (div q {c})) (- q p{}))", i % MAX_PARAMS),
            _ => format!("(== (mod (- q kv) {c}) (div (+ q kv) {}))", c + 2),
        }
    };
    // Pairs in a conjunction: 2^(n/2) cases, up to the 256-case limit.
    let product = |offset: usize, n: usize| {
        let pairs: String = (0..n / 2)
            .map(|j| {
                format!(
                    " (or {} {})",
                    atom(offset + 2 * j),
                    atom(offset + 2 * j + 1)
                )
            })
            .collect();
        format!("(and{pairs})")
    };
    let shapes = [
        // Within causal by its shape only with `causal`: without it every case is proved.
        format!("(mask (or causal {}))", product(0, 16)),
        format!("(mask {})", product(1, 16)),
        format!(
            "(mask (and causal {})) (cache (keep {}))",
            product(2, 8),
            product(3, 8)
        ),
        format!(
            "(mask (or {}))",
            (0..MAX_COMPARISONS).map(atom).collect::<String>()
        ),
        // Within causal, but only by proof, case by case.
        format!("(mask (and (<= kv q) {}))", product(4, 16)),
    ];
    let overrides = |shape: &str, n: usize| -> String {
        (0..n)
            .map(|i| format!("(layers (list {i}) {shape})"))
            .collect()
    };
    let mut worst = std::time::Duration::ZERO;
    for shape in &shapes {
        // As many overrides repeating the shape as the size limits let through.
        let mut text = rule(&params, shape);
        for i in 0..MAX_OVERRIDES {
            let more = rule(&params, &format!("{shape} {}", overrides(shape, i + 1)));
            if parse(&more).is_err() {
                break;
            }
            text = more;
        }
        let program = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let verdict = check(&program);
        let took = started.elapsed();
        eprintln!(
            "{took:>10.1?}  {} bytes  {}",
            text.len(),
            verdict.err().map_or("passed".to_string(), |e| e
                .to_string()
                .chars()
                .take(100)
                .collect())
        );
        worst = worst.max(took);
    }
    eprintln!("worst case: {worst:.1?}");
    assert!(worst < std::time::Duration::from_secs(5), "{worst:?}");
}
