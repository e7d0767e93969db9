//! Masks and scores compiled against concrete parameter values: a mask becomes a
//! `KeyRule` that answers single pairs by evaluation and whole rectangles by interval
//! arithmetic, so a tiled engine can skip or run tiles unmasked without a T×T mask.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use super::ast::{CmpOp, IntExpr, IntOp, MaskExpr, ScoreExpr, ScoreOp, Value};
use crate::attention::{Coverage, KeyRule, ScoreModifier};

/// Parameter values by name.
pub type Env = BTreeMap<String, Value>;

/// The largest position a check reasons about (16 Mi tokens). Integer literals and
/// parameters beyond it are rejected as absurd sizes.
pub const MAX_POSITION: i64 = 1 << 24;

/// No subexpression of a checked mask may reach this magnitude for positions up to
/// `MAX_POSITION`, so evaluation in `i64` never overflows.
pub const MAX_MAGNITUDE: i64 = 1 << 52;

/// An integer expression with parameters replaced by values and constants folded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IntTerm {
    Const(i64),
    Q,
    Kv,
    Add(Box<IntTerm>, Box<IntTerm>),
    Sub(Box<IntTerm>, Box<IntTerm>),
    /// A constant times a term.
    Scale(i64, Box<IntTerm>),
    /// Floor division by a positive constant.
    Div(Box<IntTerm>, i64),
    /// Non-negative remainder of floor division by a positive constant.
    Mod(Box<IntTerm>, i64),
}

/// A mask with parameters replaced by values.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskTerm {
    True,
    False,
    Causal,
    And(Vec<MaskTerm>),
    Or(Vec<MaskTerm>),
    Not(Box<MaskTerm>),
    /// `a OP b` kept as `(a - b) OP 0`: the interval of the difference is exact whenever `q`
    /// and `kv` each appear once in it.
    Compare(CmpOp, IntTerm),
}

/// Three-valued truth over a set of (q, kv) pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    Always,
    Never,
    Sometimes,
}

impl Tri {
    fn not(self) -> Tri {
        match self {
            Tri::Always => Tri::Never,
            Tri::Never => Tri::Always,
            Tri::Sometimes => Tri::Sometimes,
        }
    }

    /// Truth of a conjunction.
    pub fn and(self, other: Tri) -> Tri {
        match (self, other) {
            (Tri::Never, _) | (_, Tri::Never) => Tri::Never,
            (Tri::Always, Tri::Always) => Tri::Always,
            _ => Tri::Sometimes,
        }
    }

    fn or(self, other: Tri) -> Tri {
        self.not().and(other.not()).not()
    }

    /// The tile classification this truth stands for.
    pub fn coverage(self) -> Coverage {
        match self {
            Tri::Always => Coverage::Full,
            Tri::Never => Coverage::Empty,
            Tri::Sometimes => Coverage::Partial,
        }
    }
}

/// A constant folded from `expr`, refused when it overflowed or reaches `MAX_MAGNITUDE` (the
/// same bound every mask subterm is held to, so no intermediate escapes it by folding).
fn folded(expr: &IntExpr, value: Option<i64>) -> Result<IntTerm, String> {
    match value {
        Some(v) if v.unsigned_abs() < MAX_MAGNITUDE as u64 => Ok(IntTerm::Const(v)),
        _ => Err(format!(
            "`{}` reaches 2^52 or more; positions are at most 2^24, keep constants near that",
            super::print::int_text(expr)
        )),
    }
}

impl IntTerm {
    /// Resolves parameters and folds constants. Errors name what to fix.
    pub fn compile(expr: &IntExpr, env: &Env) -> Result<IntTerm, String> {
        Ok(match expr {
            IntExpr::Q => IntTerm::Q,
            IntExpr::Kv => IntTerm::Kv,
            IntExpr::Lit(v) if v.unsigned_abs() > MAX_POSITION as u64 => {
                return Err(format!(
                    "{v} is an absurd size (the limit is ±{MAX_POSITION})"
                ))
            }
            IntExpr::Lit(v) => IntTerm::Const(*v),
            IntExpr::Param(name) => match env.get(name) {
                Some(Value::Int(v)) => IntTerm::Const(*v),
                Some(Value::Float(_)) => {
                    return Err(format!(
                        "parameter `{name}` is a float; masks need int parameters"
                    ))
                }
                None => return Err(format!("unknown parameter `{name}`")),
            },
            IntExpr::Binary(op, a, b) => {
                let (a, b) = (IntTerm::compile(a, env)?, IntTerm::compile(b, env)?);
                match (op, a, b) {
                    (IntOp::Add, IntTerm::Const(x), IntTerm::Const(y)) => {
                        folded(expr, x.checked_add(y))?
                    }
                    (IntOp::Add, a, b) => IntTerm::Add(Box::new(a), Box::new(b)),
                    (IntOp::Sub, IntTerm::Const(x), IntTerm::Const(y)) => {
                        folded(expr, x.checked_sub(y))?
                    }
                    (IntOp::Sub, a, b) => IntTerm::Sub(Box::new(a), Box::new(b)),
                    (IntOp::Mul, IntTerm::Const(x), IntTerm::Const(y)) => {
                        folded(expr, x.checked_mul(y))?
                    }
                    (IntOp::Mul, IntTerm::Const(c), t) | (IntOp::Mul, t, IntTerm::Const(c)) => {
                        IntTerm::Scale(c, Box::new(t))
                    }
                    (IntOp::Mul, _, _) => {
                        return Err(format!(
                            "`{}`: one side of * must be a constant (a number or a parameter)",
                            super::print::int_text(expr)
                        ))
                    }
                    (IntOp::Div | IntOp::Mod, _, IntTerm::Const(c)) if c <= 0 => {
                        return Err(format!(
                            "`{}`: the divisor must be positive, it is {c}",
                            super::print::int_text(expr)
                        ))
                    }
                    (IntOp::Div, IntTerm::Const(x), IntTerm::Const(c)) => {
                        IntTerm::Const(x.div_euclid(c))
                    }
                    (IntOp::Mod, IntTerm::Const(x), IntTerm::Const(c)) => {
                        IntTerm::Const(x.rem_euclid(c))
                    }
                    (IntOp::Div, t, IntTerm::Const(c)) => IntTerm::Div(Box::new(t), c),
                    (IntOp::Mod, t, IntTerm::Const(c)) => IntTerm::Mod(Box::new(t), c),
                    (IntOp::Div | IntOp::Mod, _, _) => {
                        return Err(format!(
                            "`{}`: the divisor must be a constant (a number or a parameter)",
                            super::print::int_text(expr)
                        ))
                    }
                }
            }
        })
    }

    /// The value at one (q, kv) pair.
    pub fn eval(&self, q: i64, kv: i64) -> i64 {
        match self {
            IntTerm::Const(c) => *c,
            IntTerm::Q => q,
            IntTerm::Kv => kv,
            IntTerm::Add(a, b) => a.eval(q, kv).saturating_add(b.eval(q, kv)),
            IntTerm::Sub(a, b) => a.eval(q, kv).saturating_sub(b.eval(q, kv)),
            IntTerm::Scale(c, t) => c.saturating_mul(t.eval(q, kv)),
            IntTerm::Div(t, c) => t.eval(q, kv).div_euclid(*c),
            IntTerm::Mod(t, c) => t.eval(q, kv).rem_euclid(*c),
        }
    }

    /// Bounds `(lo, hi)` of the term over every `q` in `qs` and `kv` in `ks` (inclusive).
    pub fn interval(&self, qs: (i64, i64), ks: (i64, i64)) -> (i64, i64) {
        match self {
            IntTerm::Const(c) => (*c, *c),
            IntTerm::Q => qs,
            IntTerm::Kv => ks,
            IntTerm::Add(a, b) => {
                let (a, b) = (a.interval(qs, ks), b.interval(qs, ks));
                (a.0.saturating_add(b.0), a.1.saturating_add(b.1))
            }
            IntTerm::Sub(a, b) => {
                let (a, b) = (a.interval(qs, ks), b.interval(qs, ks));
                (a.0.saturating_sub(b.1), a.1.saturating_sub(b.0))
            }
            IntTerm::Scale(c, t) => {
                let (lo, hi) = t.interval(qs, ks);
                let (x, y) = (c.saturating_mul(lo), c.saturating_mul(hi));
                (x.min(y), x.max(y))
            }
            IntTerm::Div(t, c) => {
                let (lo, hi) = t.interval(qs, ks);
                (lo.div_euclid(*c), hi.div_euclid(*c))
            }
            IntTerm::Mod(t, c) => {
                let (lo, hi) = t.interval(qs, ks);
                if lo.div_euclid(*c) == hi.div_euclid(*c) {
                    (lo.rem_euclid(*c), hi.rem_euclid(*c))
                } else {
                    (0, c - 1)
                }
            }
        }
    }

    /// Nodes one evaluation visits: what the cost model charges per evaluated pair.
    pub fn nodes(&self) -> usize {
        1 + match self {
            IntTerm::Const(_) | IntTerm::Q | IntTerm::Kv => 0,
            IntTerm::Add(a, b) | IntTerm::Sub(a, b) => a.nodes() + b.nodes(),
            IntTerm::Scale(_, t) | IntTerm::Div(t, _) | IntTerm::Mod(t, _) => t.nodes(),
        }
    }

    /// The largest magnitude any subterm reaches for positions in `0..=MAX_POSITION`.
    fn max_magnitude(&self) -> i64 {
        let all = (0, MAX_POSITION);
        let (lo, hi) = self.interval(all, all);
        let own = lo.saturating_abs().max(hi.saturating_abs());
        let inner = match self {
            IntTerm::Const(_) | IntTerm::Q | IntTerm::Kv => 0,
            IntTerm::Add(a, b) | IntTerm::Sub(a, b) => a.max_magnitude().max(b.max_magnitude()),
            IntTerm::Scale(_, t) | IntTerm::Div(t, _) | IntTerm::Mod(t, _) => t.max_magnitude(),
        };
        own.max(inner)
    }
}

impl MaskTerm {
    /// Resolves parameters in every comparison.
    pub fn compile(expr: &MaskExpr, env: &Env) -> Result<MaskTerm, String> {
        let all = |parts: &[MaskExpr]| -> Result<Vec<MaskTerm>, String> {
            parts.iter().map(|p| MaskTerm::compile(p, env)).collect()
        };
        Ok(match expr {
            MaskExpr::Causal => MaskTerm::Causal,
            MaskExpr::True => MaskTerm::True,
            MaskExpr::False => MaskTerm::False,
            MaskExpr::And(parts) => MaskTerm::And(all(parts)?),
            MaskExpr::Or(parts) => MaskTerm::Or(all(parts)?),
            MaskExpr::Not(inner) => MaskTerm::Not(Box::new(MaskTerm::compile(inner, env)?)),
            MaskExpr::Compare(op, a, b) => {
                let difference =
                    IntExpr::Binary(IntOp::Sub, Box::new(a.clone()), Box::new(b.clone()));
                MaskTerm::Compare(*op, IntTerm::compile(&difference, env)?)
            }
        })
    }

    /// Whether query `q` sees key `kv`.
    pub fn eval(&self, q: i64, kv: i64) -> bool {
        match self {
            MaskTerm::True => true,
            MaskTerm::False => false,
            MaskTerm::Causal => kv <= q,
            MaskTerm::And(parts) => parts.iter().all(|p| p.eval(q, kv)),
            MaskTerm::Or(parts) => parts.iter().any(|p| p.eval(q, kv)),
            MaskTerm::Not(inner) => !inner.eval(q, kv),
            MaskTerm::Compare(op, difference) => op.holds(difference.eval(q, kv), 0),
        }
    }

    /// Truth over the rectangle `qs × ks` (inclusive bounds), soundly: `Always` and `Never`
    /// are only answered when they hold for every pair.
    pub fn truth(&self, qs: (i64, i64), ks: (i64, i64)) -> Tri {
        match self {
            MaskTerm::True => Tri::Always,
            MaskTerm::False => Tri::Never,
            MaskTerm::Causal => compare(CmpOp::Le, ks, qs),
            MaskTerm::And(parts) => parts
                .iter()
                .fold(Tri::Always, |t, p| t.and(p.truth(qs, ks))),
            MaskTerm::Or(parts) => parts.iter().fold(Tri::Never, |t, p| t.or(p.truth(qs, ks))),
            MaskTerm::Not(inner) => inner.truth(qs, ks).not(),
            MaskTerm::Compare(op, difference) => compare(*op, difference.interval(qs, ks), (0, 0)),
        }
    }

    /// Nodes one evaluation visits at most (`and` and `or` may stop early).
    pub fn nodes(&self) -> usize {
        1 + match self {
            MaskTerm::True | MaskTerm::False | MaskTerm::Causal => 0,
            MaskTerm::And(parts) | MaskTerm::Or(parts) => parts.iter().map(MaskTerm::nodes).sum(),
            MaskTerm::Not(inner) => inner.nodes(),
            MaskTerm::Compare(_, difference) => difference.nodes(),
        }
    }

    /// Every integer term, for the magnitude check.
    fn terms(&self) -> Vec<&IntTerm> {
        match self {
            MaskTerm::True | MaskTerm::False | MaskTerm::Causal => Vec::new(),
            MaskTerm::And(parts) | MaskTerm::Or(parts) => {
                parts.iter().flat_map(MaskTerm::terms).collect()
            }
            MaskTerm::Not(inner) => inner.terms(),
            MaskTerm::Compare(_, difference) => vec![difference],
        }
    }
}

/// `a OP b` for every `a` in `x` and `b` in `y`.
fn compare(op: CmpOp, x: (i64, i64), y: (i64, i64)) -> Tri {
    let (always, never) = match op {
        CmpOp::Lt => (x.1 < y.0, x.0 >= y.1),
        CmpOp::Le => (x.1 <= y.0, x.0 > y.1),
        CmpOp::Gt => (x.0 > y.1, x.1 <= y.0),
        CmpOp::Ge => (x.0 >= y.1, x.1 < y.0),
        CmpOp::Eq => (
            x.0 == x.1 && y.0 == y.1 && x.0 == y.0,
            x.1 < y.0 || y.1 < x.0,
        ),
    };
    if always {
        Tri::Always
    } else if never {
        Tri::Never
    } else {
        Tri::Sometimes
    }
}

/// A checked mask bound to its parameter values: the `KeyRule` the runtime runs.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledMask {
    /// The canonical text of the source expression, for messages and plans.
    pub text: String,
    pub term: MaskTerm,
}

impl CompiledMask {
    /// Compiles `expr` with `env`'s values, refusing expressions whose arithmetic could leave
    /// the safe range. Does not prove causality: `check` does that.
    pub fn new(expr: &MaskExpr, env: &Env) -> Result<CompiledMask, String> {
        let term = MaskTerm::compile(expr, env)?;
        if let Some(big) = term
            .terms()
            .into_iter()
            .find(|t| t.max_magnitude() >= MAX_MAGNITUDE)
        {
            return Err(format!(
                "an integer expression reaches {} for positions up to {MAX_POSITION}; \
                 keep sizes and factors smaller",
                big.max_magnitude()
            ));
        }
        Ok(CompiledMask {
            text: super::print::mask_text(expr),
            term,
        })
    }

    /// The plain causal mask.
    pub fn causal() -> CompiledMask {
        CompiledMask {
            text: "causal".to_string(),
            term: MaskTerm::Causal,
        }
    }
}

fn position(p: usize) -> i64 {
    i64::try_from(p).unwrap_or(i64::MAX)
}

impl KeyRule for CompiledMask {
    fn allows(&self, q: usize, k: usize) -> bool {
        self.term.eval(position(q), position(k))
    }

    fn coverage(&self, queries: Range<usize>, keys: Range<usize>) -> Coverage {
        let qs = (position(queries.start), position(queries.end) - 1);
        let ks = (position(keys.start), position(keys.end) - 1);
        self.term.truth(qs, ks).coverage()
    }
}

/// A score expression with parameters replaced by values.
#[derive(Clone, Debug, PartialEq)]
pub enum ScoreTerm {
    S,
    Scale,
    Q,
    Kv,
    Head,
    Const(f64),
    Binary(ScoreOp, Box<ScoreTerm>, Box<ScoreTerm>),
    Tanh(Box<ScoreTerm>),
}

impl ScoreTerm {
    /// Resolves parameters; refuses non-finite numbers and non-constant divisors.
    pub fn compile(expr: &ScoreExpr, env: &Env) -> Result<ScoreTerm, String> {
        Ok(match expr {
            ScoreExpr::S => ScoreTerm::S,
            ScoreExpr::Scale => ScoreTerm::Scale,
            ScoreExpr::Q => ScoreTerm::Q,
            ScoreExpr::Kv => ScoreTerm::Kv,
            ScoreExpr::Head => ScoreTerm::Head,
            ScoreExpr::Lit(v) if !v.is_finite() => {
                return Err(format!("the number {v} is not finite"))
            }
            ScoreExpr::Lit(v) => ScoreTerm::Const(*v),
            ScoreExpr::Param(name) => match env.get(name) {
                Some(value) => ScoreTerm::Const(value.as_f64()),
                None => return Err(format!("unknown parameter `{name}`")),
            },
            ScoreExpr::Tanh(inner) => ScoreTerm::Tanh(Box::new(ScoreTerm::compile(inner, env)?)),
            ScoreExpr::Binary(op, a, b) => {
                let (a, b) = (ScoreTerm::compile(a, env)?, ScoreTerm::compile(b, env)?);
                if *op == ScoreOp::Div && !matches!(b, ScoreTerm::Const(c) if c != 0.0) {
                    return Err(format!(
                        "`{}`: the divisor must be a nonzero constant",
                        super::print::score_text(expr)
                    ));
                }
                ScoreTerm::Binary(*op, Box::new(a), Box::new(b))
            }
        })
    }

    /// Nodes one evaluation visits, and how many of them are transcendental functions.
    pub fn nodes(&self) -> (usize, usize) {
        let (nodes, transcendental) = match self {
            ScoreTerm::S
            | ScoreTerm::Scale
            | ScoreTerm::Q
            | ScoreTerm::Kv
            | ScoreTerm::Head
            | ScoreTerm::Const(_) => (0, 0),
            ScoreTerm::Tanh(inner) => {
                let (n, t) = inner.nodes();
                (n, t + 1)
            }
            ScoreTerm::Binary(_, a, b) => {
                let ((na, ta), (nb, tb)) = (a.nodes(), b.nodes());
                (na + nb, ta + tb)
            }
        };
        (nodes + 1, transcendental)
    }

    /// An upper bound on `|score|` for raw dot products up to `RAW_SCORE_BOUND`, scales up to
    /// 1, heads up to 1024 and positions up to `MAX_POSITION` (interval arithmetic, one pass).
    pub fn magnitude_bound(&self) -> f64 {
        match self {
            ScoreTerm::S => RAW_SCORE_BOUND,
            ScoreTerm::Scale => 1.0,
            ScoreTerm::Q | ScoreTerm::Kv => MAX_POSITION as f64,
            ScoreTerm::Head => 1024.0,
            ScoreTerm::Const(c) => c.abs(),
            ScoreTerm::Tanh(_) => 1.0,
            ScoreTerm::Binary(op, a, b) => {
                let (a, b) = (a.magnitude_bound(), b.magnitude_bound());
                match op {
                    ScoreOp::Add | ScoreOp::Sub => a + b,
                    ScoreOp::Mul => a * b,
                    // The divisor is a nonzero constant: its bound is its magnitude.
                    ScoreOp::Div => a / b,
                    ScoreOp::Min | ScoreOp::Max => a.max(b),
                }
            }
        }
    }

    /// The score for raw dot product `s` at the layer's `scale`.
    pub fn eval(&self, head: usize, q: usize, kv: usize, s: f64, scale: f64) -> f64 {
        let go = |t: &ScoreTerm| t.eval(head, q, kv, s, scale);
        match self {
            ScoreTerm::S => s,
            ScoreTerm::Scale => scale,
            ScoreTerm::Q => q as f64,
            ScoreTerm::Kv => kv as f64,
            ScoreTerm::Head => head as f64,
            ScoreTerm::Const(c) => *c,
            ScoreTerm::Tanh(inner) => go(inner).tanh(),
            ScoreTerm::Binary(op, a, b) => {
                let (a, b) = (go(a), go(b));
                match op {
                    ScoreOp::Add => a + b,
                    ScoreOp::Sub => a - b,
                    ScoreOp::Mul => a * b,
                    ScoreOp::Div => a / b,
                    ScoreOp::Min => a.min(b),
                    ScoreOp::Max => a.max(b),
                }
            }
        }
    }
}

/// The raw dot products `q·k` the score bound assumes; real models stay far below it.
pub const RAW_SCORE_BOUND: f64 = 1e6;
/// Scores whose bound passes this are refused: past it the f32 runtime may reach infinity
/// (f32 holds up to 3.4e38) at some position, where no evaluation looks.
pub const MAX_SCORE_MAGNITUDE: f64 = 1e30;

/// A checked score expression bound to its parameter values. The layer's scale is not known
/// until a model is: `at_scale` binds it and gives the runtime's `ScoreModifier`.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledScore {
    pub text: String,
    pub term: ScoreTerm,
}

impl CompiledScore {
    /// Compiles `expr` with `env`'s values.
    pub fn new(expr: &ScoreExpr, env: &Env) -> Result<CompiledScore, String> {
        Ok(CompiledScore {
            text: super::print::score_text(expr),
            term: ScoreTerm::compile(expr, env)?,
        })
    }

    /// The score from the raw dot product `s` and the layer's `scale`.
    pub fn eval(&self, head: usize, q: usize, kv: usize, s: f64, scale: f64) -> f64 {
        self.term.eval(head, q, kv, s, scale)
    }

    /// The modifier for a layer whose kernel scales scores by `scale` (which must be nonzero).
    pub fn at_scale(self: &Arc<Self>, scale: f32) -> ScaledScore {
        ScaledScore {
            score: Arc::clone(self),
            scale,
        }
    }
}

/// A `CompiledScore` for one layer's scale. As `ScoreModifier` promises, `modify` receives the
/// already scaled score `s·scale`; it recovers `s` and evaluates the expression.
#[derive(Clone, Debug)]
pub struct ScaledScore {
    pub score: Arc<CompiledScore>,
    pub scale: f32,
}

impl ScoreModifier for ScaledScore {
    fn modify(&self, head: usize, q: usize, k: usize, score: f32) -> f32 {
        let scale = f64::from(self.scale);
        self.score.eval(head, q, k, f64::from(score) / scale, scale) as f32
    }
}
