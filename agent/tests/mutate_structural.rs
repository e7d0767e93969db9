//! Structural mutators: every result passes the static checks and differs from its parent,
//! each kind edits what it says it edits, and a seed fixes the result.

use agent::mutate::structural::{mutate, Structural};
use kernels::akl::ast::{Body, MaskExpr, Program};
use kernels::akl::{check, library, parse, print};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn library_programs() -> Vec<Program> {
    library::LIBRARY
        .iter()
        .map(|(_, text)| parse(text).unwrap())
        .collect()
}

/// Runs `kind` on every library program (crossover with the next one) for a few seeds and
/// returns (parent, child) pairs; asserts validity and change, and that most draws on
/// softmax programs succeed (a trainable mechanism takes no mask or head override, and
/// Star no mask arm, so those parents may yield nothing).
fn children(kind: Structural) -> Vec<(Program, Program)> {
    let programs = library_programs();
    let mut pairs = Vec::new();
    let mut attempts = 0;
    let mut softmax_successes = 0;
    for (i, parent) in programs.iter().enumerate() {
        let other = &programs[(i + 1) % programs.len()];
        let softmax = parent.rule.mechanism.is_none() && parent.rule.star.is_none();
        for seed in 0..6 {
            attempts += usize::from(softmax);
            let mut rng = StdRng::seed_from_u64(seed);
            if let Some(child) = mutate(kind, parent, Some(other), &mut rng) {
                assert!(check(&child).is_ok(), "{kind:?} made an invalid program");
                assert_ne!(print(&child), print(parent), "{kind:?} changed nothing");
                assert!(parse(&print(&child)).unwrap() == child);
                pairs.push((parent.clone(), child));
                softmax_successes += usize::from(softmax);
            }
        }
    }
    assert!(
        softmax_successes * 2 > attempts,
        "{kind:?}: only {softmax_successes} of {attempts} draws on softmax programs made a program",
    );
    pairs
}

#[test]
fn perturb_moves_one_number_and_keeps_the_shape() {
    for (parent, child) in children(Structural::Perturb) {
        assert_eq!(parent.params.len(), child.params.len());
        assert_eq!(parent.layers.len(), child.layers.len());
        assert_eq!(parent.rule.mask.is_some(), child.rule.mask.is_some());
        assert_eq!(
            parent.rule.mechanism.is_some(),
            child.rule.mechanism.is_some()
        );
    }
}

#[test]
fn library_swap_takes_clauses_from_the_library() {
    let pairs = children(Structural::LibrarySwap);
    let texts: Vec<String> = library::LIBRARY
        .iter()
        .map(|(_, t)| t.to_string())
        .collect();
    for (parent, child) in pairs {
        // Whatever changed in the rule now reads as in some library program.
        if child.rule.mask != parent.rule.mask {
            let mask = child.rule.mask.as_ref().unwrap();
            assert!(texts
                .iter()
                .any(|t| parse(t).unwrap().rule.mask.as_ref() == Some(mask)));
        }
    }
}

fn arms(mask: &Option<MaskExpr>) -> usize {
    fn count(m: &MaskExpr) -> usize {
        match m {
            MaskExpr::And(parts) | MaskExpr::Or(parts) => parts.iter().map(count).sum(),
            _ => 1,
        }
    }
    mask.as_ref().map_or(0, count)
}

/// Mask leaves over the rule and every layer override's rule.
fn total_arms(program: &Program) -> usize {
    let overrides = program.layers.iter().filter_map(|o| match &o.body {
        Body::Rule(rule) => Some(&rule.mask),
        Body::Library(_) => None,
    });
    std::iter::once(&program.rule.mask)
        .chain(overrides)
        .map(arms)
        .sum()
}

#[test]
fn mask_arm_adds_or_removes_an_arm() {
    let pairs = children(Structural::MaskArm);
    let mut added = 0;
    let mut removed = 0;
    for (parent, child) in &pairs {
        let (before, after) = (total_arms(parent), total_arms(child));
        assert_ne!(before, after, "{}", print(child));
        if after > before {
            added += 1;
        } else {
            removed += 1;
        }
    }
    assert!(added > 0 && removed > 0, "added {added}, removed {removed}");
}

#[test]
fn a_rule_edit_touches_the_layer_or_the_head_overrides_only() {
    let (mut layer_edits, mut head_edits) = (0, 0);
    for (parent, child) in children(Structural::RuleEdit) {
        let layers_changed = parent.layers != child.layers;
        let heads_changed = parent.rule.heads != child.rule.heads;
        assert!(
            layers_changed != heads_changed,
            "exactly one override list changes"
        );
        let mut rest = child.clone();
        rest.layers = parent.layers.clone();
        rest.rule.heads = parent.rule.heads.clone();
        assert_eq!(rest, parent, "nothing else changes");
        layer_edits += usize::from(layers_changed);
        head_edits += usize::from(heads_changed);
    }
    assert!(
        layer_edits > 0 && head_edits > 0,
        "{layer_edits} layer and {head_edits} head edits"
    );
}

#[test]
fn crossover_takes_every_clause_from_one_parent() {
    let programs = library_programs();
    for (i, a) in programs.iter().enumerate() {
        let b = &programs[(i + 1) % programs.len()];
        for seed in 0..6 {
            let Some(child) = mutate(
                Structural::Crossover,
                a,
                Some(b),
                &mut StdRng::seed_from_u64(seed),
            ) else {
                continue;
            };
            let (c, ra, rb) = (&child.rule, &a.rule, &b.rule);
            assert!(c.mask == ra.mask || c.mask == rb.mask);
            assert!(c.score == ra.score || c.score == rb.score);
            assert!(c.select == ra.select || c.select == rb.select);
            assert!(c.mechanism == ra.mechanism || c.mechanism == rb.mechanism);
            assert!(child.layers == a.layers || child.layers == b.layers);
        }
    }
    let a = &programs[0];
    assert!(mutate(
        Structural::Crossover,
        a,
        None,
        &mut StdRng::seed_from_u64(0)
    )
    .is_none());
}

#[test]
fn a_seed_fixes_the_result() {
    let parent = parse(library::source("sink_window").unwrap()).unwrap();
    for kind in Structural::ALL {
        let other = parse(library::source("quest").unwrap()).unwrap();
        let one = mutate(kind, &parent, Some(&other), &mut StdRng::seed_from_u64(5));
        let two = mutate(kind, &parent, Some(&other), &mut StdRng::seed_from_u64(5));
        assert_eq!(one, two, "{kind:?}");
    }
}
