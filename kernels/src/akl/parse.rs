//! S-expressions to the typed tree. Every error names the line:col of the offending
//! expression and what would have been accepted there.

use super::ast::*;
use super::lexer::{read_all, Pos, Sexp};
use super::mechanism;
use super::ParseError;

const MASK_FORMS: &str = "a mask expression (causal, and, or, not, <, <=, >, >=, ==, true, false)";
const INT_FORMS: &str =
    "an integer expression (q, kv, an integer, an int parameter, +, -, *, div, mod)";
const SCORE_FORMS: &str =
    "a score expression (s, scale, q, kv, head, a number, a parameter, +, -, *, /, min, max, tanh)";
const RULE_CLAUSES: &str =
    "a rule clause (mask, score, norm, select, star, cache, mechanism, tile, heads)";
const PROGRAM_CLAUSES: &str =
    "a clause (param, mask, score, norm, select, star, cache, mechanism, tile, heads, layers)";
/// The heads of a rule's clauses; each but `heads` at most once per rule.
pub(super) const RULE_HEADS: [&str; 9] = [
    "mask",
    "score",
    "norm",
    "select",
    "star",
    "cache",
    "mechanism",
    "tile",
    "heads",
];
const SELECTORS: &str = "a selector (all, (list I...), (range A B), (every N R))";

/// Parses one program: `(kernel NAME CLAUSE...)`.
pub fn parse(text: &str) -> Result<Program, ParseError> {
    let mut top = read_all(text)?;
    if top.len() > 1 {
        return Err(ParseError::new(
            top[1].pos(),
            "end of input",
            &top[1].describe(),
        ));
    }
    let Some(program) = top.pop() else {
        return Err(ParseError::new(
            Pos { line: 1, col: 1 },
            "\"(kernel NAME ...)\"",
            "end of input",
        ));
    };
    let (items, pos) = list(&program, "\"(kernel NAME ...)\"")?;
    keyword(items.first(), pos, &["kernel"], "\"kernel\"")?;
    let name = symbol(items.get(1), end_of(&program), "the kernel's name")?;
    let mut params = Vec::new();
    let mut layers = Vec::new();
    let mut rule = Rule::default();
    for clause in &items[2..] {
        let (parts, at) = list(clause, PROGRAM_CLAUSES)?;
        match head_symbol(parts) {
            Some("param") => params.push(param(parts, clause)?),
            Some("layers") => layers.push(override_clause(parts, clause)?),
            _ => rule_clause(&mut rule, parts, clause, at, PROGRAM_CLAUSES)?,
        }
    }
    Ok(Program {
        name,
        params,
        rule,
        layers,
    })
}

fn end_of(sexp: &Sexp) -> Pos {
    match sexp {
        Sexp::List(_, _, end) => *end,
        other => other.pos(),
    }
}

fn head_symbol(items: &[Sexp]) -> Option<&str> {
    match items.first() {
        Some(Sexp::Symbol(s, _)) => Some(s.as_str()),
        _ => None,
    }
}

fn list<'a>(sexp: &'a Sexp, expected: &str) -> Result<(&'a [Sexp], Pos), ParseError> {
    match sexp {
        Sexp::List(items, pos, _) => Ok((items, *pos)),
        other => Err(ParseError::new(other.pos(), expected, &other.describe())),
    }
}

/// The item at `index` of a list, or an error at the closing parenthesis.
fn item<'a>(
    items: &'a [Sexp],
    index: usize,
    whole: &Sexp,
    expected: &str,
) -> Result<&'a Sexp, ParseError> {
    items
        .get(index)
        .ok_or_else(|| ParseError::new(end_of(whole), expected, "\")\""))
}

/// Requires that `items` has exactly `n` entries.
fn arity(items: &[Sexp], n: usize, whole: &Sexp) -> Result<(), ParseError> {
    if let Some(extra) = items.get(n) {
        return Err(ParseError::new(extra.pos(), "\")\"", &extra.describe()));
    }
    if items.len() < n {
        return Err(ParseError::new(
            end_of(whole),
            &format!("{} more argument(s)", n - items.len()),
            "\")\"",
        ));
    }
    Ok(())
}

fn keyword<'a>(
    sexp: Option<&'a Sexp>,
    at: Pos,
    allowed: &[&str],
    expected: &str,
) -> Result<&'a str, ParseError> {
    match sexp {
        Some(Sexp::Symbol(s, _)) if allowed.contains(&s.as_str()) => Ok(s),
        Some(other) => Err(ParseError::new(other.pos(), expected, &other.describe())),
        None => Err(ParseError::new(at, expected, "\"()\"")),
    }
}

fn symbol(sexp: Option<&Sexp>, at: Pos, expected: &str) -> Result<String, ParseError> {
    match sexp {
        Some(Sexp::Symbol(s, _))
            if s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') =>
        {
            Ok(s.clone())
        }
        Some(other) => Err(ParseError::new(other.pos(), expected, &other.describe())),
        None => Err(ParseError::new(at, expected, "\")\"")),
    }
}

fn integer(sexp: &Sexp, expected: &str) -> Result<i64, ParseError> {
    match sexp {
        Sexp::Int(v, _) => Ok(*v),
        other => Err(ParseError::new(other.pos(), expected, &other.describe())),
    }
}

fn number(sexp: &Sexp, expected: &str) -> Result<f64, ParseError> {
    match sexp {
        Sexp::Int(v, _) => Ok(*v as f64),
        Sexp::Float(v, _) => Ok(*v),
        other => Err(ParseError::new(other.pos(), expected, &other.describe())),
    }
}

/// `(param NAME int|float DEFAULT RANGE)`.
fn param(items: &[Sexp], whole: &Sexp) -> Result<Param, ParseError> {
    arity(items, 5, whole)?;
    let name = symbol(items.get(1), end_of(whole), "a parameter name")?;
    let kind = keyword(
        items.get(2),
        end_of(whole),
        &["int", "float"],
        "\"int\" or \"float\"",
    )?;
    let (bounds, _) = list(&items[4], "a range \"(LO HI)\" or \"(pow2 LO HI)\"")?;
    if kind == "int" {
        let default = Value::Int(integer(&items[3], "an integer default")?);
        let pow2 = head_symbol(bounds) == Some("pow2");
        let bounds = if pow2 { &bounds[1..] } else { bounds };
        arity(bounds, 2, &items[4])?;
        let lo = integer(&bounds[0], "an integer bound")?;
        let hi = integer(&bounds[1], "an integer bound")?;
        let range = if pow2 {
            ParamRange::Pow2 { lo, hi }
        } else {
            ParamRange::Int { lo, hi }
        };
        Ok(Param {
            name,
            default,
            range,
        })
    } else {
        let default = Value::Float(number(&items[3], "a number default")?);
        arity(bounds, 2, &items[4])?;
        let lo = number(&bounds[0], "a number bound")?;
        let hi = number(&bounds[1], "a number bound")?;
        Ok(Param {
            name,
            default,
            range: ParamRange::Float { lo, hi },
        })
    }
}

/// `(layers SELECTOR BODY)` or `(heads SELECTOR BODY)`, where BODY is a library name or
/// rule clauses (none at all means the default rule).
fn override_clause(items: &[Sexp], whole: &Sexp) -> Result<Override, ParseError> {
    let selector = selector(item(items, 1, whole, SELECTORS)?)?;
    let body = match &items[2..] {
        [Sexp::Symbol(name, _)] => Body::Library(name.clone()),
        clauses => {
            let mut rule = Rule::default();
            for clause in clauses {
                let (parts, at) =
                    list(clause, &format!("a library kernel name or {RULE_CLAUSES}"))?;
                rule_clause(&mut rule, parts, clause, at, RULE_CLAUSES)?;
            }
            Body::Rule(Box::new(rule))
        }
    };
    Ok(Override { selector, body })
}

fn selector(sexp: &Sexp) -> Result<Selector, ParseError> {
    if let Sexp::Symbol(s, _) = sexp {
        if s == "all" {
            return Ok(Selector::All);
        }
    }
    let (items, at) = list(sexp, SELECTORS)?;
    let index = |s: &Sexp| integer(s, "an integer index");
    match keyword(items.first(), at, &["list", "range", "every"], SELECTORS)? {
        "list" => {
            if items.len() < 2 {
                return Err(ParseError::new(end_of(sexp), "at least one index", "\")\""));
            }
            // Sorted, so that the order written does not change the canonical text.
            let mut indices = items[1..]
                .iter()
                .map(index)
                .collect::<Result<Vec<_>, _>>()?;
            indices.sort_unstable();
            Ok(Selector::List(indices))
        }
        "range" => {
            arity(items, 3, sexp)?;
            Ok(Selector::Range(index(&items[1])?, index(&items[2])?))
        }
        _ => {
            arity(items, 3, sexp)?;
            Ok(Selector::Every(index(&items[1])?, index(&items[2])?))
        }
    }
}

/// Adds one clause to `rule`, refusing a clause given twice.
fn rule_clause(
    rule: &mut Rule,
    items: &[Sexp],
    whole: &Sexp,
    at: Pos,
    expected: &str,
) -> Result<(), ParseError> {
    let name = keyword(items.first(), at, &RULE_HEADS, expected)?;
    let twice = || {
        Err(ParseError::new(
            at,
            &format!("at most one \"{name}\" clause per rule"),
            "a second one",
        ))
    };
    match name {
        "mask" => {
            arity(items, 2, whole)?;
            if rule.mask.is_some() {
                return twice();
            }
            rule.mask = Some(mask_expr(&items[1])?);
        }
        "score" => {
            arity(items, 2, whole)?;
            if rule.score.is_some() {
                return twice();
            }
            rule.score = Some(score_expr(&items[1])?);
        }
        "norm" => {
            arity(items, 2, whole)?;
            if rule.norm.is_some() {
                return twice();
            }
            keyword(items.get(1), at, &["softmax"], "a normalisation (softmax)")?;
            rule.norm = Some(Norm::Softmax);
        }
        "select" => {
            if rule.select.is_some() {
                return twice();
            }
            rule.select = Some(select(items, whole)?);
        }
        "star" => {
            if rule.star.is_some() {
                return twice();
            }
            arity(items, 3, whole)?;
            rule.star = Some(Star {
                block: tagged_int(&items[1], "block")?,
                context: tagged_int(&items[2], "context")?,
            });
        }
        "cache" => {
            arity(items, 2, whole)?;
            if rule.cache.is_some() {
                return twice();
            }
            rule.cache = Some(cache(&items[1])?);
        }
        "mechanism" => {
            if rule.mechanism.is_some() {
                return twice();
            }
            rule.mechanism = Some(mechanism_clause(items, whole)?);
        }
        "tile" => {
            arity(items, 5, whole)?;
            if rule.tile.is_some() {
                return twice();
            }
            keyword(items.get(1), at, &["q"], "\"q\"")?;
            keyword(items.get(3), at, &["kv"], "\"kv\"")?;
            rule.tile = Some(Tile {
                q: integer(&items[2], "an integer tile size")?,
                kv: integer(&items[4], "an integer tile size")?,
            });
        }
        _ => rule.heads.push(override_clause(items, whole)?),
    }
    Ok(())
}

/// `(NAME INTEGER)`, such as `(page 64)`.
fn tagged_int(sexp: &Sexp, tag: &str) -> Result<i64, ParseError> {
    let expected = format!("\"({tag} N)\"");
    let (items, at) = list(sexp, &expected)?;
    keyword(items.first(), at, &[tag], &expected)?;
    arity(items, 2, sexp)?;
    integer(&items[1], "an integer")
}

fn select(items: &[Sexp], whole: &Sexp) -> Result<Select, ParseError> {
    arity(items, 4, whole)?;
    let (summary, at) = list(&items[3], "\"(summary minmax|mean)\"")?;
    keyword(
        summary.first(),
        at,
        &["summary"],
        "\"(summary minmax|mean)\"",
    )?;
    arity(summary, 2, &items[3])?;
    let kind = keyword(
        summary.get(1),
        at,
        &["minmax", "mean"],
        "a summary (minmax, mean)",
    )?;
    Ok(Select {
        page: tagged_int(&items[1], "page")?,
        top: tagged_int(&items[2], "top")?,
        summary: if kind == "minmax" {
            Summary::MinMax
        } else {
            Summary::Mean
        },
    })
}

fn cache(sexp: &Sexp) -> Result<CachePolicy, ParseError> {
    const EXPECTED: &str = "a cache policy (all, (keep MASK))";
    if let Sexp::Symbol(s, _) = sexp {
        if s == "all" {
            return Ok(CachePolicy::All);
        }
    }
    let (items, at) = list(sexp, EXPECTED)?;
    keyword(items.first(), at, &["keep"], EXPECTED)?;
    arity(items, 2, sexp)?;
    Ok(CachePolicy::Keep(mask_expr(&items[1])?))
}

/// `(mechanism NAME (OPTION VALUE)...)`; options of a known mechanism are put in the
/// table's order, so that the written order does not change the canonical text.
fn mechanism_clause(items: &[Sexp], whole: &Sexp) -> Result<Mechanism, ParseError> {
    let name = symbol(items.get(1), end_of(whole), "a mechanism name")?;
    let mut options: Vec<(String, OptionValue)> = Vec::new();
    for option in &items[2..] {
        let (parts, at) = list(option, "an option \"(NAME VALUE)\"")?;
        arity(parts, 2, option)?;
        let key = symbol(parts.first(), at, "an option name")?;
        if options.iter().any(|(k, _)| *k == key) {
            return Err(ParseError::new(
                at,
                &format!("option \"{key}\" at most once"),
                "a second one",
            ));
        }
        let value = match &parts[1] {
            Sexp::Int(v, _) => OptionValue::Int(*v),
            Sexp::Float(v, _) => OptionValue::Float(*v),
            Sexp::Symbol(s, _) => OptionValue::Symbol(s.clone()),
            other => {
                return Err(ParseError::new(
                    other.pos(),
                    "a number or a name",
                    &other.describe(),
                ))
            }
        };
        options.push((key, value));
    }
    if let Some(spec) = mechanism::find(&name) {
        // A float option written as an integer reads as the float, so both spell one text.
        for (key, value) in options.iter_mut() {
            let float_option = spec
                .options
                .iter()
                .any(|o| o.name == key && matches!(o.kind, mechanism::OptionKind::Float { .. }));
            if let (true, OptionValue::Int(v)) = (float_option, &value) {
                *value = OptionValue::Float(*v as f64);
            }
        }
        let rank = |key: &str| {
            spec.options
                .iter()
                .position(|o| o.name == key)
                .unwrap_or(usize::MAX)
        };
        options.sort_by_key(|(key, _)| rank(key));
    }
    Ok(Mechanism { name, options })
}

pub(super) fn mask_expr(sexp: &Sexp) -> Result<MaskExpr, ParseError> {
    match sexp {
        Sexp::Symbol(s, pos) => match s.as_str() {
            "causal" => Ok(MaskExpr::Causal),
            "true" => Ok(MaskExpr::True),
            "false" => Ok(MaskExpr::False),
            _ => Err(ParseError::new(*pos, MASK_FORMS, &sexp.describe())),
        },
        Sexp::List(items, at, _) => {
            let head = keyword(
                items.first(),
                *at,
                &["and", "or", "not", "<", "<=", ">", ">=", "=="],
                MASK_FORMS,
            )?;
            match head {
                "and" | "or" => {
                    if items.len() < 2 {
                        return Err(ParseError::new(end_of(sexp), MASK_FORMS, "\")\""));
                    }
                    let parts = items[1..].iter().map(mask_expr).collect::<Result<_, _>>()?;
                    Ok(if head == "and" {
                        MaskExpr::And(parts)
                    } else {
                        MaskExpr::Or(parts)
                    })
                }
                "not" => {
                    arity(items, 2, sexp)?;
                    Ok(MaskExpr::Not(Box::new(mask_expr(&items[1])?)))
                }
                op => {
                    arity(items, 3, sexp)?;
                    let op = *CmpOp::ALL
                        .iter()
                        .find(|c| c.symbol() == op)
                        .expect("listed above");
                    Ok(MaskExpr::Compare(
                        op,
                        int_expr(&items[1])?,
                        int_expr(&items[2])?,
                    ))
                }
            }
        }
        other => Err(ParseError::new(other.pos(), MASK_FORMS, &other.describe())),
    }
}

fn int_expr(sexp: &Sexp) -> Result<IntExpr, ParseError> {
    match sexp {
        Sexp::Int(v, _) => Ok(IntExpr::Lit(*v)),
        Sexp::Symbol(s, pos) => match s.as_str() {
            "q" => Ok(IntExpr::Q),
            "kv" => Ok(IntExpr::Kv),
            name if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                Ok(IntExpr::Param(name.to_string()))
            }
            _ => Err(ParseError::new(*pos, INT_FORMS, &sexp.describe())),
        },
        Sexp::List(items, at, _) => {
            let head = keyword(
                items.first(),
                *at,
                &["+", "-", "*", "div", "mod"],
                INT_FORMS,
            )?;
            arity(items, 3, sexp)?;
            let op = *IntOp::ALL
                .iter()
                .find(|o| o.symbol() == head)
                .expect("listed above");
            Ok(IntExpr::Binary(
                op,
                Box::new(int_expr(&items[1])?),
                Box::new(int_expr(&items[2])?),
            ))
        }
        other => Err(ParseError::new(other.pos(), INT_FORMS, &other.describe())),
    }
}

fn score_expr(sexp: &Sexp) -> Result<ScoreExpr, ParseError> {
    match sexp {
        Sexp::Int(v, _) => Ok(ScoreExpr::Lit(*v as f64)),
        Sexp::Float(v, _) => Ok(ScoreExpr::Lit(*v)),
        Sexp::Symbol(s, pos) => match s.as_str() {
            "s" => Ok(ScoreExpr::S),
            "scale" => Ok(ScoreExpr::Scale),
            "q" => Ok(ScoreExpr::Q),
            "kv" => Ok(ScoreExpr::Kv),
            "head" => Ok(ScoreExpr::Head),
            name if name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') => {
                Ok(ScoreExpr::Param(name.to_string()))
            }
            _ => Err(ParseError::new(*pos, SCORE_FORMS, &sexp.describe())),
        },
        Sexp::List(items, at, _) => {
            let head = keyword(
                items.first(),
                *at,
                &["+", "-", "*", "/", "min", "max", "tanh"],
                SCORE_FORMS,
            )?;
            if head == "tanh" {
                arity(items, 2, sexp)?;
                return Ok(ScoreExpr::Tanh(Box::new(score_expr(&items[1])?)));
            }
            arity(items, 3, sexp)?;
            let op = *ScoreOp::ALL
                .iter()
                .find(|o| o.symbol() == head)
                .expect("listed above");
            Ok(ScoreExpr::Binary(
                op,
                Box::new(score_expr(&items[1])?),
                Box::new(score_expr(&items[2])?),
            ))
        }
    }
}
