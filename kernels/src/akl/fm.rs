//! The prover behind the static checks: a mask becomes a disjunction of conjunctions of
//! linear integer constraints (with an auxiliary variable per `div`/`mod`), and
//! Fourier–Motzkin elimination shows a conjunction infeasible. Elimination over the
//! rationals is sound for integers (no rational point means no integer point); tightening
//! each constraint by the gcd of its coefficients recovers some integer reasoning.

use std::collections::HashMap;

use super::ast::{CmpOp, IntExpr, IntOp, MaskExpr};
use super::mask::{Env, IntTerm};
use super::print::mask_text;

/// `Σ coeffs[i]·x[i] <= bound` over integer variables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Constraint {
    pub coeffs: Vec<i128>,
    pub bound: i128,
}

/// One conjunct of a mask in disjunctive normal form: the source text of each literal and
/// the constraints it stands for.
#[derive(Clone, Debug, Default)]
pub struct Conjunct {
    pub literals: Vec<String>,
    pub constraints: Vec<Constraint>,
}

impl Conjunct {
    pub fn text(&self) -> String {
        match self.literals.as_slice() {
            [] => "true".to_string(),
            [one] => one.clone(),
            many => format!("(and {})", many.join(" ")),
        }
    }
}

/// More disjuncts than this and a mask is rejected as too complex to prove.
pub const MAX_DISJUNCTS: usize = 256;
/// Elimination gives up (the proof fails) when a system grows past this many constraints.
const MAX_CONSTRAINTS: usize = 4096;
/// Work the checks of one program may spend over all their masks and cases, in coefficients
/// read or written by elimination steps, so that no program can keep the checker busy for
/// long (about 50 ms at this budget on one core; see AKL.md's worst case).
pub const PROOF_BUDGET: usize = 2_000_000;

/// Variable indices: positions first, auxiliary variables after.
const Q: usize = 0;
const KV: usize = 1;
/// A second query position, for the cache check.
const LATER_Q: usize = 2;
const FIRST_AUX: usize = 3;

/// A linear form `Σ coeffs[i]·x[i] + constant`.
#[derive(Clone, Debug, Default)]
struct Linear {
    coeffs: Vec<i128>,
    constant: i128,
}

impl Linear {
    fn var(index: usize, coeff: i128) -> Linear {
        let mut coeffs = vec![0; index + 1];
        coeffs[index] = coeff;
        Linear {
            coeffs,
            constant: 0,
        }
    }

    fn combine(&self, factor: i128, other: &Linear) -> Linear {
        let n = self.coeffs.len().max(other.coeffs.len());
        let at = |l: &Linear, i: usize| l.coeffs.get(i).copied().unwrap_or(0);
        Linear {
            coeffs: (0..n)
                .map(|i| at(self, i) + factor * at(other, i))
                .collect(),
            constant: self.constant + factor * other.constant,
        }
    }

    fn scaled(&self, factor: i128) -> Linear {
        Linear::default().combine(factor, self)
    }

    /// `self <= bound` as a constraint.
    fn at_most(&self, bound: i128) -> Constraint {
        Constraint {
            coeffs: self.coeffs.clone(),
            bound: bound - self.constant,
        }
    }

    /// The coefficients without trailing zeros, for memoising.
    fn key(&self) -> (Vec<i128>, i128) {
        let mut coeffs = self.coeffs.clone();
        while coeffs.last() == Some(&0) {
            coeffs.pop();
        }
        (coeffs, self.constant)
    }
}

/// Turns masks into constraint systems, sharing one auxiliary variable per distinct
/// `div`/`mod` argument so that `(div kv C)` written twice is one unknown.
struct Prover<'a> {
    env: &'a Env,
    next_var: usize,
    definitions: Vec<Constraint>,
    quotients: HashMap<(Vec<i128>, i128, i64), usize>,
}

impl Prover<'_> {
    /// The variable `m = floor(inner / c)`, with its defining constraints.
    fn quotient(&mut self, inner: &Linear, c: i64) -> usize {
        let (coeffs, constant) = inner.key();
        if let Some(&m) = self.quotients.get(&(coeffs.clone(), constant, c)) {
            return m;
        }
        let m = self.next_var;
        self.next_var += 1;
        let cm = Linear::var(m, i128::from(c));
        // c·m <= inner <= c·m + c - 1
        self.definitions.push(cm.combine(-1, inner).at_most(0));
        self.definitions
            .push(inner.combine(-1, &cm).at_most(i128::from(c) - 1));
        self.quotients.insert((coeffs, constant, c), m);
        m
    }

    fn linear(&mut self, term: &IntTerm, q_var: usize) -> Linear {
        match term {
            IntTerm::Const(c) => Linear {
                coeffs: Vec::new(),
                constant: i128::from(*c),
            },
            IntTerm::Q => Linear::var(q_var, 1),
            IntTerm::Kv => Linear::var(KV, 1),
            IntTerm::Add(a, b) => self.linear(a, q_var).combine(1, &self.linear(b, q_var)),
            IntTerm::Sub(a, b) => self.linear(a, q_var).combine(-1, &self.linear(b, q_var)),
            IntTerm::Scale(c, t) => self.linear(t, q_var).scaled(i128::from(*c)),
            IntTerm::Div(t, c) => {
                let inner = self.linear(t, q_var);
                Linear::var(self.quotient(&inner, *c), 1)
            }
            IntTerm::Mod(t, c) => {
                let inner = self.linear(t, q_var);
                let m = self.quotient(&inner, *c);
                inner.combine(-i128::from(*c), &Linear::var(m, 1))
            }
        }
    }

    /// `expr` (or its negation) in disjunctive normal form, with `q` read as variable `q_var`.
    fn dnf(
        &mut self,
        expr: &MaskExpr,
        negated: bool,
        q_var: usize,
    ) -> Result<Vec<Conjunct>, String> {
        let literal = |text: String, constraints: Vec<Constraint>| {
            vec![Conjunct {
                literals: vec![text],
                constraints,
            }]
        };
        // Only literals (a comparison or `causal`) need their text: formatting every
        // and/or node would cost the square of the mask's size.
        let text = || {
            if negated {
                format!("(not {})", mask_text(expr))
            } else {
                mask_text(expr)
            }
        };
        Ok(match (expr, negated) {
            (MaskExpr::True, false) | (MaskExpr::False, true) => vec![Conjunct::default()],
            (MaskExpr::True, true) | (MaskExpr::False, false) => Vec::new(),
            (MaskExpr::Causal, _) => {
                let kv_minus_q = Linear::var(KV, 1).combine(-1, &Linear::var(q_var, 1));
                let constraint = if negated {
                    kv_minus_q.scaled(-1).at_most(-1)
                } else {
                    kv_minus_q.at_most(0)
                };
                literal(text(), vec![constraint])
            }
            (MaskExpr::Not(inner), _) => self.dnf(inner, !negated, q_var)?,
            (MaskExpr::And(parts), false) | (MaskExpr::Or(parts), true) => {
                let mut product = vec![Conjunct::default()];
                for part in parts {
                    let next = self.dnf(part, negated, q_var)?;
                    if product.len() * next.len() > MAX_DISJUNCTS {
                        return Err(too_complex());
                    }
                    product = product
                        .iter()
                        .flat_map(|left| {
                            next.iter().map(move |right| Conjunct {
                                literals: [left.literals.clone(), right.literals.clone()].concat(),
                                constraints: [left.constraints.clone(), right.constraints.clone()]
                                    .concat(),
                            })
                        })
                        .collect();
                }
                product
            }
            (MaskExpr::Or(parts), false) | (MaskExpr::And(parts), true) => {
                let mut sum = Vec::new();
                for part in parts {
                    sum.extend(self.dnf(part, negated, q_var)?);
                    if sum.len() > MAX_DISJUNCTS {
                        return Err(too_complex());
                    }
                }
                sum
            }
            (MaskExpr::Compare(op, a, b), _) => {
                let difference =
                    IntExpr::Binary(IntOp::Sub, Box::new(a.clone()), Box::new(b.clone()));
                let d = self.linear(&IntTerm::compile(&difference, self.env)?, q_var);
                let op = if negated {
                    match op {
                        CmpOp::Lt => CmpOp::Ge,
                        CmpOp::Le => CmpOp::Gt,
                        CmpOp::Gt => CmpOp::Le,
                        CmpOp::Ge => CmpOp::Lt,
                        // a != b: a < b or a > b.
                        CmpOp::Eq => {
                            let below = literal(text(), vec![d.at_most(-1)]);
                            let above = literal(text(), vec![d.scaled(-1).at_most(-1)]);
                            return Ok([below, above].concat());
                        }
                    }
                } else {
                    *op
                };
                let constraints = match op {
                    CmpOp::Lt => vec![d.at_most(-1)],
                    CmpOp::Le => vec![d.at_most(0)],
                    CmpOp::Gt => vec![d.scaled(-1).at_most(-1)],
                    CmpOp::Ge => vec![d.scaled(-1).at_most(0)],
                    CmpOp::Eq => vec![d.at_most(0), d.scaled(-1).at_most(0)],
                };
                literal(text(), constraints)
            }
        })
    }
}

fn too_complex() -> String {
    format!(
        "the expression has more than {MAX_DISJUNCTS} cases once and/or are expanded; simplify it"
    )
}

fn prover(env: &Env) -> Prover<'_> {
    Prover {
        env,
        next_var: FIRST_AUX,
        definitions: Vec::new(),
        quotients: HashMap::new(),
    }
}

/// `x >= 0` for a position variable.
fn non_negative(var: usize) -> Constraint {
    Linear::var(var, -1).at_most(0)
}

/// Whether the mask is within causal by its shape alone: `causal` or `false`, a conjunction
/// with such a part, or a disjunction of such parts. No expansion needed, whatever its size.
fn causal_by_structure(mask: &MaskExpr) -> bool {
    match mask {
        MaskExpr::Causal | MaskExpr::False => true,
        MaskExpr::And(parts) => parts.iter().any(causal_by_structure),
        MaskExpr::Or(parts) => parts.iter().all(causal_by_structure),
        _ => false,
    }
}

/// Charges the budget for building a normal form: a coefficient per variable per constraint.
fn spend(budget: &mut usize, disjuncts: &[Conjunct], n_vars: usize) -> Result<(), String> {
    let work: usize = disjuncts.iter().map(|d| d.constraints.len() * n_vars).sum();
    *budget = budget.checked_sub(work).ok_or_else(out_of_budget)?;
    Ok(())
}

fn out_of_budget() -> String {
    format!(
        "proving this needs more work than the checker allows a program ({PROOF_BUDGET} \
         coefficient steps); simplify it"
    )
}

/// Whether the system is proven empty. The constraints over positions alone are tried
/// first: a contradiction among them (the usual `causal` conjunct) is found at once, and
/// a subset without solutions proves the whole system has none.
fn refuted(constraints: Vec<Constraint>, budget: &mut usize) -> Result<bool, String> {
    let positions_only: Vec<Constraint> = constraints
        .iter()
        .filter(|c| c.coeffs.iter().skip(FIRST_AUX).all(|&a| a == 0))
        .cloned()
        .collect();
    let smaller = positions_only.len() < constraints.len();
    let proven = (smaller && infeasible(positions_only, budget)) || infeasible(constraints, budget);
    if *budget == 0 {
        return Err(out_of_budget());
    }
    Ok(proven)
}

/// The first disjunct of `mask` that could not be shown to exclude every future key
/// (`kv > q`). `None` means the mask is proven to lie within causal.
/// Proofs spend `budget` (shared by every proof of one program).
pub fn unproven_future_key(
    mask: &MaskExpr,
    env: &Env,
    budget: &mut usize,
) -> Result<Option<Conjunct>, String> {
    if causal_by_structure(mask) {
        return Ok(None);
    }
    let mut prover = prover(env);
    let disjuncts = prover.dnf(mask, false, Q)?;
    spend(budget, &disjuncts, prover.next_var)?;
    let future = Linear::var(Q, 1)
        .combine(-1, &Linear::var(KV, 1))
        .at_most(-1);
    let facts = [
        vec![non_negative(Q), non_negative(KV), future],
        prover.definitions.clone(),
    ]
    .concat();
    for d in disjuncts {
        if !refuted([facts.clone(), d.constraints.clone()].concat(), budget)? {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

/// The first case of `mask(q', kv) ∧ ¬keep(q, kv)` with `kv <= q <= q'` that could not be
/// shown empty: a key the mask shows a later query may already be evicted. `None` means the
/// policy is proven to keep every key the mask can still show. Proofs spend `budget`.
pub fn unproven_kept(
    mask: &MaskExpr,
    keep: &MaskExpr,
    env: &Env,
    budget: &mut usize,
) -> Result<Option<Conjunct>, String> {
    let mut prover = prover(env);
    let seen = prover.dnf(mask, false, LATER_Q)?;
    let evicted = prover.dnf(keep, true, Q)?;
    spend(budget, &seen, prover.next_var)?;
    spend(budget, &evicted, prover.next_var)?;
    if seen.len() * evicted.len() > MAX_DISJUNCTS {
        return Err(too_complex());
    }
    let order = vec![
        non_negative(KV),
        Linear::var(KV, 1)
            .combine(-1, &Linear::var(Q, 1))
            .at_most(0),
        Linear::var(Q, 1)
            .combine(-1, &Linear::var(LATER_Q, 1))
            .at_most(0),
    ];
    let facts = [order, prover.definitions.clone()].concat();
    for s in &seen {
        for e in &evicted {
            let constraints =
                [facts.clone(), s.constraints.clone(), e.constraints.clone()].concat();
            if !refuted(constraints, budget)? {
                return Ok(Some(Conjunct {
                    literals: [s.literals.clone(), e.literals.clone()].concat(),
                    constraints: Vec::new(),
                }));
            }
        }
    }
    Ok(None)
}

fn gcd(a: i128, b: i128) -> i128 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}

/// Divides by the gcd of the coefficients and rounds the bound down: sound for integer
/// variables, and it keeps numbers small. `None` for a constraint with no variables.
fn tighten(mut c: Constraint) -> Option<Constraint> {
    let g = c.coeffs.iter().fold(0, |g, &a| gcd(g, a));
    if g == 0 {
        return None;
    }
    for a in &mut c.coeffs {
        *a /= g;
    }
    c.bound = c.bound.div_euclid(g);
    while c.coeffs.last() == Some(&0) {
        c.coeffs.pop();
    }
    Some(c)
}

/// Whether Fourier–Motzkin elimination proves the system has no solution. `false` means
/// "not proven", never "feasible for sure".
///
/// Every coefficient an elimination step reads or writes spends one unit of `budget`; at zero
/// the proof gives up.
pub fn infeasible(constraints: Vec<Constraint>, budget: &mut usize) -> bool {
    let mut system = constraints;
    loop {
        // Normalise, drop duplicates (keeping the tightest bound), spot a false constant.
        let mut tightest: HashMap<Vec<i128>, i128> = HashMap::new();
        for c in system {
            match tighten(c.clone()) {
                None if c.bound < 0 => return true,
                None => {}
                Some(t) => {
                    let bound = tightest.entry(t.coeffs).or_insert(t.bound);
                    *bound = (*bound).min(t.bound);
                }
            }
        }
        system = tightest
            .into_iter()
            .map(|(coeffs, bound)| Constraint { coeffs, bound })
            .collect();
        let n_vars = system.iter().map(|c| c.coeffs.len()).max().unwrap_or(0);
        let coeff = |c: &Constraint, v: usize| c.coeffs.get(v).copied().unwrap_or(0);
        // Eliminate the variable that creates the fewest new constraints.
        let pick = (0..n_vars)
            .map(|v| {
                let pos = system.iter().filter(|c| coeff(c, v) > 0).count();
                let neg = system.iter().filter(|c| coeff(c, v) < 0).count();
                (pos * neg, pos + neg, v)
            })
            .filter(|(_, used, _)| *used > 0)
            .min();
        let Some((_, _, v)) = pick else {
            return false;
        };
        let (with, without): (Vec<_>, Vec<_>) = system.into_iter().partition(|c| coeff(c, v) != 0);
        let (upper, lower): (Vec<_>, Vec<_>) = with.into_iter().partition(|c| coeff(c, v) > 0);
        let derived = upper.len() * lower.len();
        if without.len() + derived > MAX_CONSTRAINTS {
            return false;
        }
        // The step reads every constraint's coefficients and writes the derived ones.
        let work = (without.len() + upper.len() + lower.len() + derived) * n_vars;
        if work > *budget {
            *budget = 0;
            return false;
        }
        *budget -= work;
        let mut next = without;
        for u in &upper {
            for l in &lower {
                let (a, b) = (coeff(u, v), -coeff(l, v));
                let n = u.coeffs.len().max(l.coeffs.len());
                let combined = (0..n)
                    .map(|i| {
                        b.checked_mul(coeff(u, i))?
                            .checked_add(a.checked_mul(coeff(l, i))?)
                    })
                    .collect::<Option<Vec<_>>>();
                let bound = b
                    .checked_mul(u.bound)
                    .and_then(|x| x.checked_add(a.checked_mul(l.bound)?));
                match (combined, bound) {
                    (Some(coeffs), Some(bound)) => next.push(Constraint { coeffs, bound }),
                    _ => return false,
                }
            }
        }
        system = next;
    }
}

#[cfg(test)]
mod tests {
    use super::{Constraint, PROOF_BUDGET};

    fn infeasible(constraints: Vec<Constraint>) -> bool {
        let mut budget = PROOF_BUDGET;
        super::infeasible(constraints, &mut budget)
    }

    fn c(coeffs: &[i128], bound: i128) -> Constraint {
        Constraint {
            coeffs: coeffs.to_vec(),
            bound,
        }
    }

    #[test]
    fn elimination_finds_contradictions_and_only_those() {
        // x >= 1 and x <= 0.
        assert!(infeasible(vec![c(&[-1], -1), c(&[1], 0)]));
        // x <= y, y <= z, z <= x - 1: a cycle that is strictly decreasing.
        assert!(infeasible(vec![
            c(&[1, -1, 0], 0),
            c(&[0, 1, -1], 0),
            c(&[-1, 0, 1], -1)
        ]));
        // x <= y, y <= z, z <= x: satisfiable (all equal).
        assert!(!infeasible(vec![
            c(&[1, -1, 0], 0),
            c(&[0, 1, -1], 0),
            c(&[-1, 0, 1], 0)
        ]));
        // 2x = 1 has a rational solution but no integer one: the gcd tightening sees it.
        assert!(infeasible(vec![c(&[2], 1), c(&[-2], -1)]));
        // 0 <= -1 with no variables at all.
        assert!(infeasible(vec![c(&[0, 0], -1)]));
        assert!(!infeasible(Vec::new()));
    }
}
