//! Structural mutators: edits of a program's syntax tree that need no model. Each draws
//! an edit, keeps it only if the result passes the static checks and differs from the
//! parent, and otherwise draws again.

use kernels::akl::ast::{
    Body, IntExpr, MaskExpr, OptionValue, Override, Param, ParamRange, Program, Rule, ScoreExpr,
    Selector, Value,
};
use kernels::akl::{check, library, parse};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The kinds of structural edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Structural {
    /// Move one number: a parameter's default within its range, a page or tile size, a
    /// literal in a mask, a mechanism option.
    Perturb,
    /// Replace one clause (or add one `layers` override) with the one a library program has.
    LibrarySwap,
    /// Add a mask arm (sinks, window, chunk, dilation, diagonal) or remove one.
    MaskArm,
    /// Add, retarget or remove a `(layers SEL BODY)` or `(heads SEL BODY)` override.
    RuleEdit,
    /// Each clause from one of two parents.
    Crossover,
}

impl Structural {
    pub const ALL: [Structural; 5] = [
        Structural::Perturb,
        Structural::LibrarySwap,
        Structural::MaskArm,
        Structural::RuleEdit,
        Structural::Crossover,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Structural::Perturb => "perturb",
            Structural::LibrarySwap => "library_swap",
            Structural::MaskArm => "mask_arm",
            Structural::RuleEdit => "rule_edit",
            Structural::Crossover => "crossover",
        }
    }
}

/// Draws before a mutator gives up on a parent it cannot change validly.
const ATTEMPTS: usize = 64;

/// Layer and head indices an override may name: enough for the models we run.
const MAX_LAYER: i64 = 32;
const MAX_HEAD: i64 = 16;

/// Applies `kind` to `parent` (crossover also takes `other`). `None` when no valid,
/// different program came of [`ATTEMPTS`] draws, or crossover has no second parent.
pub fn mutate<R: Rng>(
    kind: Structural,
    parent: &Program,
    other: Option<&Program>,
    rng: &mut R,
) -> Option<Program> {
    for _ in 0..ATTEMPTS {
        let mut child = parent.clone();
        let edited = match kind {
            Structural::Perturb => perturb(&mut child, rng),
            Structural::LibrarySwap => library_swap(&mut child, rng),
            Structural::MaskArm => mask_arm(&mut child, rng),
            Structural::RuleEdit if rng.random_bool(0.5) => {
                override_edit(&mut child.layers, MAX_LAYER, rng)
            }
            Structural::RuleEdit => override_edit(&mut child.rule.heads, MAX_HEAD, rng),
            Structural::Crossover => crossover(&mut child, other?, rng),
        };
        if edited && child != *parent && check(&child).is_ok() {
            return Some(child);
        }
    }
    None
}

// ---- Perturb ----

/// A number in the program that an edit may move.
enum Slot<'a> {
    Param(&'a mut Value, ParamRange),
    /// A positive size: page, top, block, tile, an integer option.
    Size(&'a mut i64),
    /// An integer literal in a mask.
    Literal(&'a mut i64),
    Float(&'a mut f64),
}

fn perturb<R: Rng>(program: &mut Program, rng: &mut R) -> bool {
    let mut slots = Vec::new();
    for param in &mut program.params {
        slots.push(Slot::Param(&mut param.default, param.range));
    }
    rule_slots(&mut program.rule, &mut slots);
    for o in &mut program.layers {
        if let Body::Rule(rule) = &mut o.body {
            rule_slots(rule, &mut slots);
        }
    }
    if slots.is_empty() {
        return false;
    }
    // Declared parameters are the knobs a program's author meant to be turned: half the
    // draws go to them.
    let params = program_params(&slots);
    let index = if params > 0 && rng.random_bool(0.5) {
        rng.random_range(0..params)
    } else {
        rng.random_range(0..slots.len())
    };
    match slots.swap_remove(index) {
        Slot::Param(value, range) => *value = perturb_param(*value, range, rng),
        Slot::Size(v) => *v = scale_size(*v, rng),
        Slot::Literal(v) => *v = scale_size(*v, rng).max(0),
        Slot::Float(v) => *v *= rng.random_range(0.5..1.5),
    }
    true
}

/// How many of the slots, which list the declared parameters first, are parameters.
fn program_params(slots: &[Slot]) -> usize {
    slots
        .iter()
        .take_while(|s| matches!(s, Slot::Param(..)))
        .count()
}

fn rule_slots<'a>(rule: &'a mut Rule, slots: &mut Vec<Slot<'a>>) {
    if let Some(mask) = &mut rule.mask {
        mask_slots(mask, slots);
    }
    if let Some(score) = &mut rule.score {
        score_slots(score, slots);
    }
    if let Some(select) = &mut rule.select {
        slots.push(Slot::Size(&mut select.page));
        slots.push(Slot::Size(&mut select.top));
    }
    if let Some(star) = &mut rule.star {
        slots.push(Slot::Size(&mut star.block));
        slots.push(Slot::Size(&mut star.context));
    }
    if let Some(tile) = &mut rule.tile {
        slots.push(Slot::Size(&mut tile.q));
        slots.push(Slot::Size(&mut tile.kv));
    }
    if let Some(mechanism) = &mut rule.mechanism {
        for (_, value) in &mut mechanism.options {
            match value {
                OptionValue::Int(v) => slots.push(Slot::Size(v)),
                OptionValue::Float(v) => slots.push(Slot::Float(v)),
                OptionValue::Symbol(_) => {}
            }
        }
    }
    for o in &mut rule.heads {
        if let Body::Rule(rule) = &mut o.body {
            rule_slots(rule, slots);
        }
    }
}

fn mask_slots<'a>(mask: &'a mut MaskExpr, slots: &mut Vec<Slot<'a>>) {
    match mask {
        MaskExpr::And(parts) | MaskExpr::Or(parts) => {
            parts.iter_mut().for_each(|p| mask_slots(p, slots))
        }
        MaskExpr::Not(inner) => mask_slots(inner, slots),
        MaskExpr::Compare(_, a, b) => {
            int_slots(a, slots);
            int_slots(b, slots);
        }
        MaskExpr::Causal | MaskExpr::True | MaskExpr::False => {}
    }
}

fn int_slots<'a>(expr: &'a mut IntExpr, slots: &mut Vec<Slot<'a>>) {
    match expr {
        IntExpr::Lit(v) => slots.push(Slot::Literal(v)),
        IntExpr::Binary(_, a, b) => {
            int_slots(a, slots);
            int_slots(b, slots);
        }
        IntExpr::Q | IntExpr::Kv | IntExpr::Param(_) => {}
    }
}

fn score_slots<'a>(expr: &'a mut ScoreExpr, slots: &mut Vec<Slot<'a>>) {
    match expr {
        ScoreExpr::Lit(v) => slots.push(Slot::Float(v)),
        ScoreExpr::Binary(_, a, b) => {
            score_slots(a, slots);
            score_slots(b, slots);
        }
        ScoreExpr::Tanh(inner) => score_slots(inner, slots),
        _ => {}
    }
}

/// Halves or doubles a size (the natural steps of page, window and tile sizes), or moves
/// a small one by one.
fn scale_size<R: Rng>(v: i64, rng: &mut R) -> i64 {
    match (v.abs() < 4, rng.random_bool(0.5)) {
        (true, up) => v + if up { 1 } else { -1 },
        (false, true) => v.saturating_mul(2),
        (false, false) => v / 2,
    }
}

fn perturb_param<R: Rng>(value: Value, range: ParamRange, rng: &mut R) -> Value {
    match (value, range) {
        (Value::Int(v), ParamRange::Pow2 { lo, hi }) => {
            let next = if rng.random_bool(0.5) { v * 2 } else { v / 2 };
            Value::Int(next.clamp(lo, hi))
        }
        (Value::Int(v), ParamRange::Int { lo, hi }) => {
            let step = (v.abs() / 4).max(1);
            Value::Int((v + rng.random_range(-step..=step)).clamp(lo, hi))
        }
        (Value::Float(v), ParamRange::Float { lo, hi }) => {
            let step = (hi - lo) / 10.0;
            Value::Float((v + rng.random_range(-step..=step)).clamp(lo, hi))
        }
        (other, _) => other,
    }
}

// ---- Library swap ----

/// Takes one clause of a random library program, with the parameters it needs.
fn library_swap<R: Rng>(program: &mut Program, rng: &mut R) -> bool {
    let (_, text) = library::LIBRARY
        .choose(rng)
        .expect("the library is not empty");
    let donor = parse(text).expect("library programs parse");
    let rule = &donor.rule;
    let choice = rng.random_range(0..8);
    let target = &mut program.rule;
    let taken = match choice {
        0 => rule.mask.clone().map(|m| target.mask = Some(m)),
        1 => rule.score.clone().map(|s| target.score = Some(s)),
        2 => rule.select.map(|s| target.select = Some(s)),
        3 => rule.star.map(|s| target.star = Some(s)),
        4 => rule.cache.clone().map(|c| target.cache = Some(c)),
        5 => rule.mechanism.clone().map(|m| target.mechanism = Some(m)),
        6 => rule.tile.map(|t| target.tile = Some(t)),
        _ => donor
            .layers
            .choose(rng)
            .cloned()
            .map(|o| program.layers.push(o)),
    };
    if taken.is_none() {
        return false;
    }
    adopt_params(&mut program.params, &donor.params);
    true
}

/// Adds the parameters of `new` that `params` does not declare yet.
fn adopt_params(params: &mut Vec<Param>, new: &[Param]) {
    for param in new {
        if !params.iter().any(|p| p.name == param.name) {
            params.push(param.clone());
        }
    }
}

// ---- Mask arms ----

/// Mask pieces an arm can be, each with the parameters it needs.
const ARMS: [&str; 5] = [
    "(kernel sinks (param n_sink int 4 (0 64)) (mask (< kv n_sink)))",
    "(kernel window (param W_arm int 512 (pow2 16 65536)) (mask (> kv (- q W_arm))))",
    "(kernel chunk (param C_arm int 2048 (pow2 64 65536)) (mask (== (div q C_arm) (div kv C_arm))))",
    "(kernel dilation (param D_arm int 4 (pow2 2 64)) (mask (== (mod (- q kv) D_arm) 0)))",
    "(kernel diagonal (mask (== q kv)))",
];

fn mask_arm<R: Rng>(program: &mut Program, rng: &mut R) -> bool {
    let Program {
        rule,
        layers,
        params,
        ..
    } = program;
    let mut masks: Vec<&mut Option<MaskExpr>> = vec![&mut rule.mask];
    for o in layers.iter_mut() {
        if let Body::Rule(rule) = &mut o.body {
            masks.push(&mut rule.mask);
        }
    }
    let index = rng.random_range(0..masks.len());
    let mask = masks.swap_remove(index);
    if rng.random_bool(0.5) && remove_arm(mask, rng) {
        return true;
    }
    let donor = parse(ARMS.choose(rng).expect("arms")).expect("arms parse");
    let arm = donor.rule.mask.expect("every arm has a mask");
    *mask = Some(match mask.take() {
        None | Some(MaskExpr::Causal) => MaskExpr::And(vec![MaskExpr::Causal, arm]),
        // Widen: one more way a key may be seen.
        Some(MaskExpr::And(mut parts)) if rng.random_bool(0.5) => {
            match parts.iter_mut().find(|p| matches!(p, MaskExpr::Or(_))) {
                Some(MaskExpr::Or(arms)) => arms.push(arm),
                _ => parts.push(MaskExpr::Or(vec![arm])),
            }
            MaskExpr::And(parts)
        }
        // Narrow: one more condition every key must meet.
        Some(MaskExpr::And(mut parts)) => {
            parts.push(arm);
            MaskExpr::And(parts)
        }
        Some(other) => MaskExpr::And(vec![MaskExpr::Causal, MaskExpr::Or(vec![other, arm])]),
    });
    adopt_params(params, &donor.params);
    true
}

/// Removes one arm of a disjunction or one condition of a conjunction other than `causal`.
fn remove_arm<R: Rng>(mask: &mut Option<MaskExpr>, rng: &mut R) -> bool {
    let Some(MaskExpr::And(parts)) = mask else {
        return false;
    };
    let removable: Vec<(usize, Option<usize>)> = parts
        .iter()
        .enumerate()
        .flat_map(|(i, part)| match part {
            MaskExpr::Or(arms) if arms.len() > 1 => (0..arms.len()).map(|j| (i, Some(j))).collect(),
            MaskExpr::Causal => Vec::new(),
            _ => vec![(i, None)],
        })
        .collect();
    let Some(&(i, arm)) = removable.choose(rng) else {
        return false;
    };
    match (arm, &mut parts[i]) {
        (Some(j), MaskExpr::Or(arms)) => {
            arms.remove(j);
        }
        _ => {
            parts.remove(i);
        }
    }
    true
}

// ---- Layer and head overrides ----

/// The training-free library programs an override body may name.
const BODIES: [&str; 6] = ["exact", "window", "sink_window", "quest", "moba", "chunked"];

fn override_edit<R: Rng>(overrides: &mut Vec<Override>, max_index: i64, rng: &mut R) -> bool {
    match (overrides.is_empty(), rng.random_range(0..3)) {
        (false, 0) => {
            let i = rng.random_range(0..overrides.len());
            overrides.remove(i);
        }
        (false, 1) => {
            let i = rng.random_range(0..overrides.len());
            overrides[i].selector = random_selector(max_index, rng);
        }
        _ => overrides.push(Override {
            selector: random_selector(max_index, rng),
            body: Body::Library(BODIES.choose(rng).expect("bodies").to_string()),
        }),
    }
    true
}

fn random_selector<R: Rng>(max_index: i64, rng: &mut R) -> Selector {
    match rng.random_range(0..3) {
        0 => {
            let n = rng.random_range(2..=6);
            Selector::Every(n, rng.random_range(0..n))
        }
        1 => {
            let a = rng.random_range(0..max_index - 1);
            Selector::Range(a, rng.random_range(a + 1..=max_index))
        }
        _ => {
            let mut items: Vec<i64> = (0..rng.random_range(1..=3))
                .map(|_| rng.random_range(0..max_index))
                .collect();
            items.sort_unstable();
            items.dedup();
            Selector::List(items)
        }
    }
}

// ---- Crossover ----

/// Each clause of the rule, and the layer overrides, from `a` or `b` at random; the
/// parameters of both (`a`'s where a name is declared by both).
fn crossover<R: Rng>(a: &mut Program, b: &Program, rng: &mut R) -> bool {
    let (x, y) = (&mut a.rule, &b.rule);
    macro_rules! pick {
        ($($field:ident),*) => {
            $(if rng.random_bool(0.5) {
                x.$field = y.$field.clone();
            })*
        };
    }
    pick!(mask, score, norm, select, star, cache, mechanism, tile, heads);
    if rng.random_bool(0.5) {
        a.layers = b.layers.clone();
    }
    adopt_params(&mut a.params, &b.params);
    true
}
