//! Static checks: a program passes only if its mask is proven to lie within causal, every
//! size is in range, every name it refers to exists, and its cache keeps every key the mask
//! can still show. All of it runs before anything is allocated.

use super::ast::*;
use super::fm::{unproven_future_key, unproven_kept, PROOF_BUDGET};
use super::library;
use super::mask::{
    CompiledMask, CompiledScore, Env, MaskTerm, MAX_POSITION, MAX_SCORE_MAGNITUDE, RAW_SCORE_BOUND,
};
use super::mechanism;
use super::print::{mask_text, selector_text};
use super::CheckError;

/// A program that passed every check, with its parameters' values.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckedProgram {
    pub program: Program,
    pub env: Env,
}

/// The largest tile side the engine accepts.
pub const MAX_TILE: i64 = 4096;
/// The largest layer or head index a selector may name.
pub const MAX_INDEX: i64 = 1024;
/// The largest magnitude of a float parameter.
const MAX_FLOAT: f64 = 1e9;
/// Most parameters one program may declare.
pub const MAX_PARAMS: usize = 32;
/// Most `layers` and `heads` overrides one program may hold, counted over every level.
pub const MAX_OVERRIDES: usize = 32;
/// Most comparisons one mask or keep policy may hold.
pub const MAX_COMPARISONS: usize = 32;
/// Most nodes one score expression may hold (the runtime evaluates it on every visible pair).
pub const MAX_SCORE_NODES: usize = 64;
/// Names with a meaning of their own, which a parameter may not take.
const RESERVED: &[&str] = &[
    "q", "kv", "s", "scale", "head", "causal", "true", "false", "all",
];

fn fail<T>(clause: impl Into<String>, reason: impl Into<String>) -> Result<T, CheckError> {
    Err(CheckError {
        clause: clause.into(),
        reason: reason.into(),
    })
}

/// Runs every static check on `program`.
pub fn check(program: &Program) -> Result<CheckedProgram, CheckError> {
    check_size(program)?;
    let env = check_params(&program.params)?;
    let mut budget = PROOF_BUDGET;
    check_rule(&program.rule, &env, "", false, &mut budget)?;
    for layer in &program.layers {
        let at = format!("(layers {}) ", selector_text(&layer.selector));
        check_selector(&layer.selector, &at, "layer")?;
        check_body(&layer.body, &env, &at, false, &mut budget)?;
    }
    Ok(CheckedProgram {
        program: program.clone(),
        env,
    })
}

/// The size limits, checked in one linear pass before any proof or allocation, so that the
/// proofs after them stay within their stated worst case.
fn check_size(program: &Program) -> Result<(), CheckError> {
    if program.params.len() > MAX_PARAMS {
        return fail(
            "param",
            format!(
                "{} parameters; at most {MAX_PARAMS} are allowed",
                program.params.len()
            ),
        );
    }
    // Every rule written in the program: its own, and those of its overrides at any level.
    fn rule_of(o: &Override) -> Option<&Rule> {
        match &o.body {
            Body::Rule(rule) => Some(rule),
            Body::Library(_) => None,
        }
    }
    let mut rules = vec![&program.rule];
    rules.extend(program.layers.iter().filter_map(rule_of));
    let mut overrides = program.layers.len();
    let mut next = 0;
    while let Some(&rule) = rules.get(next) {
        overrides += rule.heads.len();
        rules.extend(rule.heads.iter().filter_map(rule_of));
        next += 1;
    }
    if overrides > MAX_OVERRIDES {
        return fail(
            "layers",
            format!("{overrides} layers and heads overrides; at most {MAX_OVERRIDES} are allowed"),
        );
    }
    for rule in rules {
        let keep = match &rule.cache {
            Some(CachePolicy::Keep(keep)) => Some(keep),
            _ => None,
        };
        for (clause, mask) in [("mask", rule.mask.as_ref()), ("cache", keep)] {
            let comparisons = mask.map_or(0, comparisons);
            if comparisons > MAX_COMPARISONS {
                return fail(
                    clause,
                    format!("{comparisons} comparisons; at most {MAX_COMPARISONS} are allowed"),
                );
            }
        }
        let nodes = rule.score.as_ref().map_or(0, score_nodes);
        if nodes > MAX_SCORE_NODES {
            return fail(
                "score",
                format!("{nodes} nodes; at most {MAX_SCORE_NODES} are allowed"),
            );
        }
    }
    Ok(())
}

/// The comparisons in a mask (its atoms that the prover turns into constraints).
fn comparisons(mask: &MaskExpr) -> usize {
    match mask {
        MaskExpr::Causal | MaskExpr::True | MaskExpr::False => 0,
        MaskExpr::Compare(..) => 1,
        MaskExpr::Not(inner) => comparisons(inner),
        MaskExpr::And(parts) | MaskExpr::Or(parts) => parts.iter().map(comparisons).sum(),
    }
}

fn score_nodes(score: &ScoreExpr) -> usize {
    1 + match score {
        ScoreExpr::Binary(_, a, b) => score_nodes(a) + score_nodes(b),
        ScoreExpr::Tanh(inner) => score_nodes(inner),
        _ => 0,
    }
}

fn check_params(params: &[Param]) -> Result<Env, CheckError> {
    let mut env = Env::new();
    for param in params {
        let at = format!("param {}", param.name);
        if RESERVED.contains(&param.name.as_str()) {
            return fail(
                at,
                format!("`{}` is a reserved name; choose another", param.name),
            );
        }
        if env.contains_key(&param.name) {
            return fail(at, "declared twice");
        }
        match (param.range, param.default) {
            (ParamRange::Int { lo, hi } | ParamRange::Pow2 { lo, hi }, Value::Int(v)) => {
                let pow2 = matches!(param.range, ParamRange::Pow2 { .. });
                for bound in [lo, hi, v] {
                    if bound.unsigned_abs() > MAX_POSITION as u64 {
                        return fail(
                            at,
                            format!("{bound} is an absurd size (the limit is ±{MAX_POSITION})"),
                        );
                    }
                }
                let is_pow2 = |x: i64| x > 0 && (x as u64).is_power_of_two();
                if lo > hi {
                    return fail(at, format!("empty range: {lo} > {hi}"));
                }
                if pow2 && !(is_pow2(lo) && is_pow2(hi)) {
                    return fail(
                        at,
                        format!("pow2 bounds {lo} and {hi} must be powers of two"),
                    );
                }
                if !(lo..=hi).contains(&v) || (pow2 && !is_pow2(v)) {
                    let kind = if pow2 { "a power of two " } else { "" };
                    return fail(at, format!("default {v} is not {kind}in {lo}..={hi}"));
                }
            }
            (ParamRange::Float { lo, hi }, Value::Float(v)) => {
                if [lo, hi, v].iter().any(|x| x.abs() > MAX_FLOAT) {
                    return fail(at, format!("values beyond ±{MAX_FLOAT:e} are absurd"));
                }
                if lo > hi {
                    return fail(at, format!("empty range: {lo:?} > {hi:?}"));
                }
                if !(lo..=hi).contains(&v) {
                    return fail(at, format!("default {v:?} is not in {lo:?}..={hi:?}"));
                }
            }
            _ => {
                return fail(
                    at,
                    "the default's kind (int or float) differs from the range's",
                )
            }
        }
        env.insert(param.name.clone(), param.default);
    }
    Ok(env)
}

fn check_selector(selector: &Selector, at: &str, what: &str) -> Result<(), CheckError> {
    let clause = format!("{at}selector");
    let bad_index = |i: &i64| !(0..=MAX_INDEX).contains(i);
    match selector {
        Selector::All => Ok(()),
        Selector::List(items) => {
            if let Some(i) = items.iter().find(|i| bad_index(i)) {
                return fail(
                    clause,
                    format!("{what} index {i} is not in 0..={MAX_INDEX}"),
                );
            }
            let mut sorted = items.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != items.len() {
                return fail(clause, format!("a {what} is listed twice"));
            }
            Ok(())
        }
        Selector::Range(a, b) => {
            if bad_index(a) || bad_index(b) || a >= b {
                return fail(
                    clause,
                    format!("need 0 <= A < B <= {MAX_INDEX} in (range {a} {b})"),
                );
            }
            Ok(())
        }
        Selector::Every(n, r) => {
            if !(1..=MAX_INDEX).contains(n) || !(0..*n).contains(r) {
                return fail(
                    clause,
                    format!("need 1 <= N <= {MAX_INDEX} and 0 <= R < N in (every {n} {r})"),
                );
            }
            Ok(())
        }
    }
}

fn check_body(
    body: &Body,
    env: &Env,
    at: &str,
    in_heads: bool,
    budget: &mut usize,
) -> Result<(), CheckError> {
    match body {
        Body::Rule(rule) => check_rule(rule, env, at, in_heads, budget),
        Body::Library(name) => {
            let clause = format!("{at}body");
            let library = library::checked(name).map_err(|reason| CheckError {
                clause: clause.clone(),
                reason,
            })?;
            if !library.program.layers.is_empty() {
                return fail(
                    clause,
                    format!("library kernel `{name}` has per-layer overrides; only whole programs can use it"),
                );
            }
            if in_heads
                && (library.program.rule.mechanism.is_some()
                    || !library.program.rule.heads.is_empty())
            {
                return fail(
                    clause,
                    format!("library kernel `{name}` is a mechanism or a head mix; a heads override needs a plain rule"),
                );
            }
            Ok(())
        }
    }
}

fn check_rule(
    rule: &Rule,
    env: &Env,
    at: &str,
    in_heads: bool,
    budget: &mut usize,
) -> Result<(), CheckError> {
    let clause = |name: &str| format!("{at}{name}");
    let in_range = |name: &str, what: &str, v: i64, lo: i64, hi: i64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            fail(clause(name), format!("{what} {v} is not in {lo}..={hi}"))
        }
    };
    if let Some(mechanism) = &rule.mechanism {
        if in_heads {
            return fail(
                clause("mechanism"),
                "a mechanism mixes a whole layer; it cannot serve only some heads",
            );
        }
        let others = rule.mask.is_some()
            || rule.score.is_some()
            || rule.norm.is_some()
            || rule.select.is_some()
            || rule.star.is_some()
            || rule.cache.is_some()
            || rule.tile.is_some()
            || !rule.heads.is_empty();
        if others {
            return fail(
                clause("mechanism"),
                "a mechanism rule takes no other clause",
            );
        }
        mechanism::validate(mechanism).map_err(|reason| CheckError {
            clause: clause("mechanism"),
            reason,
        })?;
    }
    if let Some(star) = rule.star {
        if rule.mask.is_some()
            || rule.score.is_some()
            || rule.select.is_some()
            || rule.cache.is_some()
        {
            return fail(
                clause("star"),
                "Star attention brings its own mask; drop mask, score, select and cache",
            );
        }
        in_range("star", "block", star.block, 1, MAX_POSITION)?;
        in_range("star", "context", star.context, 0, MAX_POSITION)?;
    }
    if let Some(select) = rule.select {
        if matches!(rule.cache, Some(CachePolicy::Keep(_))) {
            return fail(
                clause("cache"),
                "a selection may pick any key the mask shows; drop the keep policy",
            );
        }
        in_range("select", "page", select.page, 1, MAX_TILE)?;
        in_range("select", "top", select.top, 1, 1 << 16)?;
    }
    if let Some(tile) = rule.tile {
        in_range("tile", "q tile", tile.q, 1, MAX_TILE)?;
        in_range("tile", "kv tile", tile.kv, 1, MAX_TILE)?;
    }
    let mask = rule.mask.clone().unwrap_or(MaskExpr::Causal);
    if let Some(written) = &rule.mask {
        check_within_causal(written, env, &clause("mask"), budget)?;
    }
    if let Some(score) = &rule.score {
        let compiled = CompiledScore::new(score, env).map_err(|reason| CheckError {
            clause: clause("score"),
            reason,
        })?;
        let bound = compiled.term.magnitude_bound();
        if bound.is_nan() || bound > MAX_SCORE_MAGNITUDE {
            return fail(
                clause("score"),
                format!(
                    "the score may reach {bound:.1e} (for positions up to 2^24 and raw scores up \
                     to {RAW_SCORE_BOUND:e}), past what f32 holds safely; bound it, e.g. with tanh"
                ),
            );
        }
    }
    if let Some(CachePolicy::Keep(keep)) = &rule.cache {
        check_keeps_visible(&mask, keep, env, &clause("cache"), budget)?;
    }
    if !rule.heads.is_empty() && in_heads {
        return fail(clause("heads"), "heads overrides cannot nest");
    }
    for head in &rule.heads {
        let at = format!("{at}(heads {}) ", selector_text(&head.selector));
        check_selector(&head.selector, &at, "head")?;
        check_body(&head.body, env, &at, true, budget)?;
    }
    Ok(())
}

/// Position pairs (or triples) tried when looking for a counterexample to show: the search
/// only illustrates an unproven case, so it stops here rather than grow with the parameters.
const EXAMPLE_TRIES: usize = 100_000;

/// Positions worth trying when looking for a counterexample: small ones and those near the
/// parameters' values.
fn probe_positions(env: &Env) -> Vec<i64> {
    let mut probes: Vec<i64> = (0..=40).collect();
    for value in env.values() {
        if let Value::Int(v) = value {
            probes.extend([v - 1, *v, v + 1, 2 * v, 2 * v + 1]);
        }
    }
    probes.retain(|p| (0..=MAX_POSITION).contains(p));
    probes.sort_unstable();
    probes.dedup();
    probes
}

fn check_within_causal(
    mask: &MaskExpr,
    env: &Env,
    clause: &str,
    budget: &mut usize,
) -> Result<(), CheckError> {
    let compiled = CompiledMask::new(mask, env).map_err(|reason| CheckError {
        clause: clause.to_string(),
        reason,
    })?;
    let open = unproven_future_key(mask, env, budget).map_err(|reason| CheckError {
        clause: clause.to_string(),
        reason,
    })?;
    let Some(first) = open else {
        return Ok(());
    };
    let probes = probe_positions(env);
    let example = probes
        .iter()
        .flat_map(|&q| {
            let near = (q + 1..=q + 40).chain(probes.iter().copied().filter(move |&k| k > q));
            near.map(move |kv| (q, kv))
        })
        .take(EXAMPLE_TRIES)
        .find(|&(q, kv)| compiled.term.eval(q, kv))
        .map(|(q, kv)| format!("; for example q={q} sees kv={kv}"));
    fail(
        clause,
        format!(
            "not provably within causal: the case `{}` may let a query see a future key (kv > q){}; \
             add `causal` to the conjunction",
            first.text(),
            example.unwrap_or_default()
        ),
    )
}

fn check_keeps_visible(
    mask: &MaskExpr,
    keep: &MaskExpr,
    env: &Env,
    clause: &str,
    budget: &mut usize,
) -> Result<(), CheckError> {
    let error = |reason| CheckError {
        clause: clause.to_string(),
        reason,
    };
    let keep_term = CompiledMask::new(keep, env).map_err(error)?.term;
    let mask_term = MaskTerm::compile(mask, env).map_err(error)?;
    let Some(first) = unproven_kept(mask, keep, env, budget).map_err(error)? else {
        return Ok(());
    };
    let probes = probe_positions(env);
    let example = probes
        .iter()
        .flat_map(|&q| {
            let keys =
                ((q - 40).max(0)..=q).chain(probes.iter().copied().filter(move |&kv| kv <= q));
            let later = probes.iter().copied().filter(move |&l| l >= q);
            keys.flat_map(move |kv| later.clone().map(move |l| (q, l, kv)))
        })
        .take(EXAMPLE_TRIES)
        .find(|&(q, l, kv)| mask_term.eval(l, kv) && !keep_term.eval(q, kv))
        .map(|(q, l, kv)| {
            format!("; for example key {kv} is dropped at position {q} but query {l} sees it")
        });
    fail(
        clause,
        format!(
            "the cache may drop a key the mask still shows: the case `{}` is not excluded{}; keep is `{}`",
            first.text(),
            example.unwrap_or_default(),
            mask_text(keep)
        ),
    )
}
