//! The table of trainable mechanisms a `(mechanism NAME ...)` clause may name, with each
//! option's range and default. The checker validates against it; the compiler fills in
//! defaults from it, so the runtime always receives every option.

use super::ast::{Mechanism, OptionValue};

/// One known mechanism.
#[derive(Debug)]
pub struct MechanismSpec {
    pub name: &'static str,
    pub options: &'static [OptionSpec],
}

/// One option: its name and the values it may take (bounds inclusive), with a default.
#[derive(Debug)]
pub struct OptionSpec {
    pub name: &'static str,
    pub kind: OptionKind,
}

#[derive(Debug)]
pub enum OptionKind {
    Int {
        lo: i64,
        hi: i64,
        default: i64,
    },
    /// A power of two between `lo` and `hi`.
    Pow2 {
        lo: i64,
        hi: i64,
        default: i64,
    },
    /// An even integer between `lo` and `hi` (both even).
    Even {
        lo: i64,
        hi: i64,
        default: i64,
    },
    Float {
        lo: f64,
        hi: f64,
        default: f64,
    },
    Choice {
        choices: &'static [&'static str],
        default: &'static str,
    },
}

const fn int(name: &'static str, lo: i64, hi: i64, default: i64) -> OptionSpec {
    OptionSpec {
        name,
        kind: OptionKind::Int { lo, hi, default },
    }
}

const fn pow2(name: &'static str, lo: i64, hi: i64, default: i64) -> OptionSpec {
    OptionSpec {
        name,
        kind: OptionKind::Pow2 { lo, hi, default },
    }
}

const fn even(name: &'static str, lo: i64, hi: i64, default: i64) -> OptionSpec {
    OptionSpec {
        name,
        kind: OptionKind::Even { lo, hi, default },
    }
}

const CHUNK: OptionSpec = pow2("chunk", 1, 1024, 64);

/// Every mechanism, in the order the documentation lists them.
pub const MECHANISMS: &[MechanismSpec] = &[
    MechanismSpec {
        name: "log_linear",
        options: &[
            CHUNK,
            OptionSpec {
                name: "base",
                kind: OptionKind::Choice {
                    choices: &["linear", "mamba2"],
                    default: "mamba2",
                },
            },
        ],
    },
    MechanismSpec {
        name: "mta",
        options: &[
            int("q_kernel", 1, 16, 6),
            int("k_kernel", 1, 64, 11),
            int("head_kernel", 1, 16, 2),
        ],
    },
    MechanismSpec {
        name: "differential",
        options: &[OptionSpec {
            name: "lambda_init",
            kind: OptionKind::Float {
                lo: 0.0,
                // λ = 1 would cancel the two maps exactly; the runtime needs λ < 1.
                hi: 0.95,
                default: 0.8,
            },
        }],
    },
    MechanismSpec {
        name: "mla",
        options: &[
            int("kv_rank", 8, 4096, 64),
            // Rotary dimensions come in pairs.
            even("rope_dim", 2, 512, 16),
        ],
    },
    MechanismSpec {
        name: "linear",
        options: &[CHUNK],
    },
    MechanismSpec {
        name: "retnet",
        options: &[CHUNK],
    },
    MechanismSpec {
        name: "gla",
        options: &[CHUNK, int("gate_rank", 1, 256, 16)],
    },
    MechanismSpec {
        name: "mamba2",
        options: &[CHUNK],
    },
    MechanismSpec {
        name: "deltanet",
        options: &[CHUNK],
    },
    MechanismSpec {
        name: "gated_deltanet",
        options: &[CHUNK],
    },
];

pub fn find(name: &str) -> Option<&'static MechanismSpec> {
    MECHANISMS.iter().find(|m| m.name == name)
}

fn names(items: impl Iterator<Item = &'static str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

impl OptionSpec {
    pub fn default_value(&self) -> OptionValue {
        match self.kind {
            OptionKind::Int { default, .. }
            | OptionKind::Pow2 { default, .. }
            | OptionKind::Even { default, .. } => OptionValue::Int(default),
            OptionKind::Float { default, .. } => OptionValue::Float(default),
            OptionKind::Choice { default, .. } => OptionValue::Symbol(default.to_string()),
        }
    }

    /// Whether `value` is allowed, and if not, what would be.
    pub fn validate(&self, value: &OptionValue) -> Result<(), String> {
        let ok = match (&self.kind, value) {
            (OptionKind::Int { lo, hi, .. }, OptionValue::Int(v)) => (lo..=hi).contains(&v),
            (OptionKind::Pow2 { lo, hi, .. }, OptionValue::Int(v)) => {
                (lo..=hi).contains(&v) && (*v as u64).is_power_of_two()
            }
            (OptionKind::Even { lo, hi, .. }, OptionValue::Int(v)) => {
                (lo..=hi).contains(&v) && v % 2 == 0
            }
            (OptionKind::Float { lo, hi, .. }, OptionValue::Float(v)) => (*lo..=*hi).contains(v),
            (OptionKind::Choice { choices, .. }, OptionValue::Symbol(s)) => {
                choices.contains(&s.as_str())
            }
            _ => false,
        };
        if ok {
            return Ok(());
        }
        Err(match &self.kind {
            OptionKind::Int { lo, hi, .. } => format!("an integer from {lo} to {hi}"),
            OptionKind::Pow2 { lo, hi, .. } => format!("a power of two from {lo} to {hi}"),
            OptionKind::Even { lo, hi, .. } => format!("an even integer from {lo} to {hi}"),
            OptionKind::Float { lo, hi, .. } => format!("a number from {lo:?} to {hi:?}"),
            OptionKind::Choice { choices, .. } => format!("one of {}", choices.join(", ")),
        })
    }
}

/// Checks a mechanism clause against the table.
pub fn validate(mechanism: &Mechanism) -> Result<(), String> {
    let Some(spec) = find(&mechanism.name) else {
        return Err(format!(
            "unknown mechanism `{}` (known: {})",
            mechanism.name,
            names(MECHANISMS.iter().map(|m| m.name))
        ));
    };
    for (key, value) in &mechanism.options {
        let Some(option) = spec.options.iter().find(|o| o.name == key) else {
            return Err(format!(
                "mechanism {}: unknown option `{key}` (known: {})",
                spec.name,
                names(spec.options.iter().map(|o| o.name))
            ));
        };
        option.validate(value).map_err(|allowed| {
            format!("mechanism {}: option {key} must be {allowed}", spec.name)
        })?;
    }
    Ok(())
}

/// Every option of a validated mechanism, in table order, defaults filled in.
pub fn resolved_options(mechanism: &Mechanism) -> Vec<(String, OptionValue)> {
    let Some(spec) = find(&mechanism.name) else {
        return mechanism.options.clone();
    };
    spec.options
        .iter()
        .map(|option| {
            let given = mechanism.options.iter().find(|(k, _)| k == option.name);
            let value = given.map_or_else(|| option.default_value(), |(_, v)| v.clone());
            (option.name.to_string(), value)
        })
        .collect()
}
