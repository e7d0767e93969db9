//! Random valid programs, for property tests and for the search's random baseline. Masks are
//! grown from pieces that are within causal by construction (`causal` conjoined with
//! anything, disjunctions of such pieces) mixed with arbitrary comparisons; every draw is
//! checked and a draw that fails is replaced by a fresh one.

use rand::Rng;

use super::ast::*;
use super::check::check;
use super::mechanism::{OptionKind, MECHANISMS};

/// What the generator may draw.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// At most this many int parameters (plus one float parameter).
    pub max_params: usize,
    /// Nesting depth of mask and score expressions.
    pub max_depth: usize,
    /// At most this many `layers` overrides and `heads` overrides per rule.
    pub max_overrides: usize,
    /// Whether rules may be trainable mechanisms.
    pub mechanisms: bool,
}

impl Default for GenConfig {
    fn default() -> GenConfig {
        GenConfig {
            max_params: 3,
            max_depth: 3,
            max_overrides: 2,
            mechanisms: true,
        }
    }
}

/// Draws tried before falling back to the plain causal program.
const ATTEMPTS: usize = 64;

/// A random program that passes `check`.
pub fn generate<R: Rng>(rng: &mut R, config: &GenConfig) -> Program {
    for _ in 0..ATTEMPTS {
        let program = Draw {
            rng,
            config,
            ints: Vec::new(),
            divisors: Vec::new(),
            floats: Vec::new(),
        }
        .program();
        if check(&program).is_ok() {
            return program;
        }
    }
    Program {
        name: "causal_fallback".to_string(),
        params: Vec::new(),
        rule: Rule::default(),
        layers: Vec::new(),
    }
}

/// Library kernels a generated override may name: plain rules, usable for heads too.
const PLAIN_LIBRARY: &[&str] = &[
    "exact",
    "window",
    "chunked",
    "sink_window",
    "quest",
    "moba",
    "star",
];
/// Library kernels usable for whole layers only.
const LAYER_LIBRARY: &[&str] = &["head_mix", "linear", "mta", "mla", "gated_deltanet"];

struct Draw<'a, R: Rng> {
    rng: &'a mut R,
    config: &'a GenConfig,
    /// Int parameter names.
    ints: Vec<String>,
    /// Int parameters that are always positive (pow2 ranges), usable as divisors.
    divisors: Vec<String>,
    /// Float parameters (positive ranges).
    floats: Vec<String>,
}

impl<R: Rng> Draw<'_, R> {
    fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn program(mut self) -> Program {
        let mut params = Vec::new();
        for i in 0..self.rng.random_range(0..=self.config.max_params) {
            let name = format!("p{i}");
            let (range, default) = if self.rng.random_bool(0.5) {
                let lo = 1i64 << self.rng.random_range(0..6);
                let steps = self.rng.random_range(0..8);
                self.divisors.push(name.clone());
                let default = lo << self.rng.random_range(0..=steps);
                (
                    ParamRange::Pow2 {
                        lo,
                        hi: lo << steps,
                    },
                    default,
                )
            } else {
                let lo = self.rng.random_range(0..16);
                let hi = lo + self.rng.random_range(0..2048);
                (ParamRange::Int { lo, hi }, self.rng.random_range(lo..=hi))
            };
            self.ints.push(name.clone());
            params.push(Param {
                name,
                default: Value::Int(default),
                range,
            });
        }
        if self.rng.random_bool(0.5) {
            let lo = f64::from(self.rng.random_range(1..8u32)) * 0.5;
            let hi = lo + f64::from(self.rng.random_range(0..200u32));
            let default = lo + (hi - lo) * f64::from(self.rng.random_range(0..=4u32)) / 4.0;
            self.floats.push("cap".to_string());
            params.push(Param {
                name: "cap".to_string(),
                default: Value::Float(default),
                range: ParamRange::Float { lo, hi },
            });
        }
        let rule = self.rule(false);
        let layers = (0..self.rng.random_range(0..=self.config.max_overrides))
            .map(|_| {
                let selector = self.selector();
                let body = if self.rng.random_bool(0.3) {
                    let names = if self.rng.random_bool(0.5) {
                        PLAIN_LIBRARY
                    } else {
                        LAYER_LIBRARY
                    };
                    Body::Library(self.pick(names).to_string())
                } else {
                    Body::Rule(Box::new(self.rule(false)))
                };
                Override { selector, body }
            })
            .collect();
        Program {
            name: format!("g{:08x}", self.rng.random::<u32>()),
            params,
            rule,
            layers,
        }
    }

    fn selector(&mut self) -> Selector {
        match self.rng.random_range(0..4) {
            0 => Selector::All,
            1 => {
                let mut items: Vec<i64> = (0..self.rng.random_range(1..4))
                    .map(|_| self.rng.random_range(0..8))
                    .collect();
                items.sort_unstable();
                items.dedup();
                Selector::List(items)
            }
            2 => {
                let a = self.rng.random_range(0..8);
                Selector::Range(a, a + self.rng.random_range(1..6))
            }
            _ => {
                let n = self.rng.random_range(1..7);
                Selector::Every(n, self.rng.random_range(0..n))
            }
        }
    }

    fn rule(&mut self, in_heads: bool) -> Rule {
        let roll = self.rng.random_range(0..20);
        if roll < 2 && self.config.mechanisms && !in_heads {
            return Rule {
                mechanism: Some(self.mechanism()),
                ..Rule::default()
            };
        }
        if roll < 4 {
            let star = Star {
                block: 1 << self.rng.random_range(2..10),
                context: self.rng.random_range(0..8192),
            };
            return Rule {
                star: Some(star),
                ..Rule::default()
            };
        }
        let depth = self.config.max_depth;
        let mut rule = Rule::default();
        if self.rng.random_bool(0.8) {
            rule.mask = Some(self.safe_mask(depth));
        }
        if self.rng.random_bool(0.5) {
            rule.score = Some(self.score(depth));
        }
        if self.rng.random_bool(0.3) {
            rule.norm = Some(Norm::Softmax);
        }
        if roll < 7 {
            rule.select = Some(Select {
                page: 1 << self.rng.random_range(0..9),
                top: self.rng.random_range(1..64),
                summary: if self.rng.random_bool(0.5) {
                    Summary::MinMax
                } else {
                    Summary::Mean
                },
            });
        } else if self.rng.random_bool(0.2) {
            rule.cache = Some(match (&rule.mask, self.rng.random_bool(0.3)) {
                (Some(mask), false) => CachePolicy::Keep(mask.clone()),
                (_, true) => CachePolicy::Keep(MaskExpr::True),
                (None, false) => CachePolicy::All,
            });
        }
        if self.rng.random_bool(0.3) {
            rule.tile = Some(Tile {
                q: 1 << self.rng.random_range(0..8),
                kv: 1 << self.rng.random_range(0..10),
            });
        }
        if !in_heads && self.rng.random_bool(0.2) {
            for _ in 0..self.rng.random_range(1..=self.config.max_overrides.max(1)) {
                let selector = self.selector();
                let body = if self.rng.random_bool(0.4) {
                    Body::Library(self.pick(PLAIN_LIBRARY).to_string())
                } else {
                    Body::Rule(Box::new(self.rule(true)))
                };
                rule.heads.push(Override { selector, body });
            }
        }
        rule
    }

    fn mechanism(&mut self) -> Mechanism {
        let spec = self.pick(MECHANISMS);
        let mut options = Vec::new();
        for option in spec.options {
            if self.rng.random_bool(0.5) {
                continue;
            }
            let value = match option.kind {
                OptionKind::Int { lo, hi, .. } => OptionValue::Int(self.rng.random_range(lo..=hi)),
                OptionKind::Pow2 { lo, hi, .. } => {
                    let steps = (hi / lo).trailing_zeros();
                    OptionValue::Int(lo << self.rng.random_range(0..=steps))
                }
                OptionKind::Even { lo, hi, .. } => {
                    OptionValue::Int(2 * self.rng.random_range(lo / 2..=hi / 2))
                }
                OptionKind::Float { lo, hi, .. } => OptionValue::Float(
                    lo + (hi - lo) * f64::from(self.rng.random_range(0..=8u32)) / 8.0,
                ),
                OptionKind::Choice { choices, .. } => {
                    OptionValue::Symbol(self.pick(choices).to_string())
                }
            };
            options.push((option.name.to_string(), value));
        }
        Mechanism {
            name: spec.name.to_string(),
            options,
        }
    }

    /// A mask within causal by construction.
    fn safe_mask(&mut self, depth: usize) -> MaskExpr {
        let choice = if depth == 0 {
            0
        } else {
            self.rng.random_range(0..8)
        };
        match choice {
            0 => MaskExpr::Causal,
            6 | 7 => MaskExpr::And(vec![MaskExpr::Causal, self.classic_piece()]),
            1 | 2 => MaskExpr::And(vec![MaskExpr::Causal, self.any_mask(depth - 1)]),
            3 => MaskExpr::Or(vec![self.safe_mask(depth - 1), self.safe_mask(depth - 1)]),
            4 => MaskExpr::And(vec![self.any_mask(depth - 1), self.safe_mask(depth - 1)]),
            _ => {
                let (a, b) = if self.rng.random_bool(0.5) {
                    (IntExpr::Kv, IntExpr::Q)
                } else {
                    (IntExpr::Q, IntExpr::Kv)
                };
                let op = if matches!(a, IntExpr::Kv) {
                    CmpOp::Le
                } else {
                    CmpOp::Ge
                };
                if self.rng.random_bool(0.5) {
                    MaskExpr::Compare(op, a, b)
                } else {
                    let flipped = if op == CmpOp::Le {
                        CmpOp::Gt
                    } else {
                        CmpOp::Lt
                    };
                    MaskExpr::Not(Box::new(MaskExpr::Compare(flipped, a, b)))
                }
            }
        }
    }

    /// The pieces known kernels are made of: a window, sinks, chunks, dilation.
    fn classic_piece(&mut self) -> MaskExpr {
        let window = self.int_constant();
        let size = self.divisor();
        let block = |of: IntExpr, size: &IntExpr| {
            IntExpr::Binary(IntOp::Div, Box::new(of), Box::new(size.clone()))
        };
        match self.rng.random_range(0..4) {
            0 => MaskExpr::Compare(
                CmpOp::Gt,
                IntExpr::Kv,
                IntExpr::Binary(IntOp::Sub, Box::new(IntExpr::Q), Box::new(window)),
            ),
            1 => MaskExpr::Or(vec![
                MaskExpr::Compare(CmpOp::Lt, IntExpr::Kv, size.clone()),
                MaskExpr::Compare(
                    CmpOp::Gt,
                    IntExpr::Kv,
                    IntExpr::Binary(IntOp::Sub, Box::new(IntExpr::Q), Box::new(window)),
                ),
            ]),
            2 => MaskExpr::Compare(
                CmpOp::Eq,
                block(IntExpr::Kv, &size),
                block(IntExpr::Q, &size),
            ),
            _ => {
                let distance =
                    IntExpr::Binary(IntOp::Sub, Box::new(IntExpr::Q), Box::new(IntExpr::Kv));
                MaskExpr::Compare(
                    CmpOp::Eq,
                    IntExpr::Binary(IntOp::Mod, Box::new(distance), Box::new(size)),
                    IntExpr::Lit(0),
                )
            }
        }
    }

    /// Any mask, causal or not.
    fn any_mask(&mut self, depth: usize) -> MaskExpr {
        let choice = if depth == 0 {
            self.rng.random_range(0..2)
        } else {
            self.rng.random_range(0..7)
        };
        match choice {
            0 => {
                let op = *self.pick(&CmpOp::ALL);
                let (a, b) = (self.int_expr(depth), self.int_expr(depth));
                MaskExpr::Compare(op, a, b)
            }
            1 => self
                .pick(&[MaskExpr::Causal, MaskExpr::True, MaskExpr::False])
                .clone(),
            2 | 3 => {
                let parts = (0..self.rng.random_range(1..3))
                    .map(|_| self.any_mask(depth - 1))
                    .collect();
                if choice == 2 {
                    MaskExpr::And(parts)
                } else {
                    MaskExpr::Or(parts)
                }
            }
            4 => MaskExpr::Not(Box::new(self.any_mask(depth - 1))),
            _ => {
                let op = *self.pick(&CmpOp::ALL);
                let (a, b) = (self.int_expr(depth - 1), self.int_expr(depth - 1));
                MaskExpr::Compare(op, a, b)
            }
        }
    }

    fn int_constant(&mut self) -> IntExpr {
        if !self.ints.is_empty() && self.rng.random_bool(0.5) {
            IntExpr::Param(self.pick(&self.ints.clone()).clone())
        } else {
            IntExpr::Lit(self.rng.random_range(-4..64))
        }
    }

    fn divisor(&mut self) -> IntExpr {
        if !self.divisors.is_empty() && self.rng.random_bool(0.5) {
            IntExpr::Param(self.pick(&self.divisors.clone()).clone())
        } else {
            IntExpr::Lit(self.rng.random_range(1..64))
        }
    }

    fn int_expr(&mut self, depth: usize) -> IntExpr {
        let choice = if depth == 0 {
            self.rng.random_range(0..3)
        } else {
            self.rng.random_range(0..8)
        };
        let sub = |this: &mut Self| Box::new(this.int_expr(depth.saturating_sub(1)));
        match choice {
            0 => IntExpr::Q,
            1 => IntExpr::Kv,
            2 => self.int_constant(),
            3 => IntExpr::Binary(IntOp::Add, sub(self), sub(self)),
            4 => IntExpr::Binary(IntOp::Sub, sub(self), sub(self)),
            5 => {
                let c = Box::new(self.int_constant());
                IntExpr::Binary(IntOp::Mul, c, sub(self))
            }
            _ => {
                let op = if choice == 6 { IntOp::Div } else { IntOp::Mod };
                let inner = sub(self);
                IntExpr::Binary(op, inner, Box::new(self.divisor()))
            }
        }
    }

    fn score(&mut self, depth: usize) -> ScoreExpr {
        let choice = if depth == 0 {
            self.rng.random_range(0..7)
        } else {
            self.rng.random_range(0..10)
        };
        let sub = |this: &mut Self| Box::new(this.score(depth.saturating_sub(1)));
        match choice {
            0 => ScoreExpr::S,
            1 => ScoreExpr::Scale,
            2 => ScoreExpr::Q,
            3 => ScoreExpr::Kv,
            4 => ScoreExpr::Head,
            5 => ScoreExpr::Lit(f64::from(self.rng.random_range(-16..16i32)) * 0.25),
            6 => match self.floats.first().or(self.ints.first()) {
                Some(name) => ScoreExpr::Param(name.clone()),
                None => ScoreExpr::Lit(1.5),
            },
            7 => ScoreExpr::Tanh(sub(self)),
            8 => {
                let divisor = match self.floats.first() {
                    Some(name) if self.rng.random_bool(0.5) => ScoreExpr::Param(name.clone()),
                    _ => ScoreExpr::Lit(f64::from(self.rng.random_range(1..32u32)) * 0.5),
                };
                ScoreExpr::Binary(ScoreOp::Div, sub(self), Box::new(divisor))
            }
            _ => {
                let op = *self.pick(&[
                    ScoreOp::Add,
                    ScoreOp::Sub,
                    ScoreOp::Mul,
                    ScoreOp::Min,
                    ScoreOp::Max,
                ]);
                ScoreExpr::Binary(op, sub(self), sub(self))
            }
        }
    }
}
