//! The canonical printer: one layout for every program, so that the text (and its hash)
//! identifies the kernel. Clauses in a fixed order, one per line, two spaces of indent per
//! level, expressions on one line, integers in decimal, floats in Rust's shortest
//! round-trip form (always with a `.` or an exponent), comments gone.

use std::fmt::Write;

use super::ast::*;

/// The canonical text of `program`, ending with a newline.
pub fn print(program: &Program) -> String {
    let mut out = format!("(kernel {}", program.name);
    for param in &program.params {
        write!(out, "\n  {}", param_text(param)).expect("writing to a String");
    }
    rule_clauses(&mut out, &program.rule, 1);
    for layer in &program.layers {
        override_text(&mut out, "layers", layer, 1);
    }
    out.push_str(")\n");
    out
}

fn param_text(param: &Param) -> String {
    let range = match param.range {
        ParamRange::Int { lo, hi } => format!("({lo} {hi})"),
        ParamRange::Pow2 { lo, hi } => format!("(pow2 {lo} {hi})"),
        ParamRange::Float { lo, hi } => format!("({} {})", float(lo), float(hi)),
    };
    let (kind, default) = match param.default {
        Value::Int(v) => ("int", v.to_string()),
        Value::Float(v) => ("float", float(v)),
    };
    format!("(param {} {kind} {default} {range})", param.name)
}

/// Shortest text that reads back as the same `f64`, always marked as a float.
pub fn float(v: f64) -> String {
    format!("{v:?}")
}

fn line(out: &mut String, depth: usize, text: &str) {
    out.push('\n');
    out.push_str(&"  ".repeat(depth));
    out.push_str(text);
}

fn rule_clauses(out: &mut String, rule: &Rule, depth: usize) {
    if let Some(mask) = &rule.mask {
        line(out, depth, &format!("(mask {})", mask_text(mask)));
    }
    if let Some(score) = &rule.score {
        line(out, depth, &format!("(score {})", score_text(score)));
    }
    if let Some(Norm::Softmax) = rule.norm {
        line(out, depth, "(norm softmax)");
    }
    if let Some(select) = rule.select {
        let summary = match select.summary {
            Summary::MinMax => "minmax",
            Summary::Mean => "mean",
        };
        let text = format!(
            "(select (page {}) (top {}) (summary {summary}))",
            select.page, select.top
        );
        line(out, depth, &text);
    }
    if let Some(star) = rule.star {
        let text = format!("(star (block {}) (context {}))", star.block, star.context);
        line(out, depth, &text);
    }
    match &rule.cache {
        Some(CachePolicy::All) => line(out, depth, "(cache all)"),
        Some(CachePolicy::Keep(keep)) => {
            line(out, depth, &format!("(cache (keep {}))", mask_text(keep)))
        }
        None => {}
    }
    if let Some(mechanism) = &rule.mechanism {
        let mut text = format!("(mechanism {}", mechanism.name);
        for (key, value) in &mechanism.options {
            let value = match value {
                OptionValue::Int(v) => v.to_string(),
                OptionValue::Float(v) => float(*v),
                OptionValue::Symbol(s) => s.clone(),
            };
            write!(text, " ({key} {value})").expect("writing to a String");
        }
        text.push(')');
        line(out, depth, &text);
    }
    if let Some(tile) = rule.tile {
        line(out, depth, &format!("(tile q {} kv {})", tile.q, tile.kv));
    }
    for head in &rule.heads {
        override_text(out, "heads", head, depth);
    }
}

fn override_text(out: &mut String, keyword: &str, item: &Override, depth: usize) {
    let selector = selector_text(&item.selector);
    match &item.body {
        Body::Library(name) => line(out, depth, &format!("({keyword} {selector} {name})")),
        Body::Rule(rule) => {
            line(out, depth, &format!("({keyword} {selector}"));
            rule_clauses(out, rule, depth + 1);
            out.push(')');
        }
    }
}

pub fn selector_text(selector: &Selector) -> String {
    match selector {
        Selector::All => "all".to_string(),
        Selector::List(items) => {
            let items: Vec<String> = items.iter().map(i64::to_string).collect();
            format!("(list {})", items.join(" "))
        }
        Selector::Range(a, b) => format!("(range {a} {b})"),
        Selector::Every(n, r) => format!("(every {n} {r})"),
    }
}

/// A mask expression on one line.
pub fn mask_text(mask: &MaskExpr) -> String {
    match mask {
        MaskExpr::Causal => "causal".to_string(),
        MaskExpr::True => "true".to_string(),
        MaskExpr::False => "false".to_string(),
        MaskExpr::And(parts) | MaskExpr::Or(parts) => {
            let op = if matches!(mask, MaskExpr::And(_)) {
                "and"
            } else {
                "or"
            };
            let parts: Vec<String> = parts.iter().map(mask_text).collect();
            format!("({op} {})", parts.join(" "))
        }
        MaskExpr::Not(inner) => format!("(not {})", mask_text(inner)),
        MaskExpr::Compare(op, a, b) => {
            format!("({} {} {})", op.symbol(), int_text(a), int_text(b))
        }
    }
}

pub fn int_text(expr: &IntExpr) -> String {
    match expr {
        IntExpr::Q => "q".to_string(),
        IntExpr::Kv => "kv".to_string(),
        IntExpr::Lit(v) => v.to_string(),
        IntExpr::Param(name) => name.clone(),
        IntExpr::Binary(op, a, b) => {
            format!("({} {} {})", op.symbol(), int_text(a), int_text(b))
        }
    }
}

pub fn score_text(expr: &ScoreExpr) -> String {
    match expr {
        ScoreExpr::S => "s".to_string(),
        ScoreExpr::Scale => "scale".to_string(),
        ScoreExpr::Q => "q".to_string(),
        ScoreExpr::Kv => "kv".to_string(),
        ScoreExpr::Head => "head".to_string(),
        ScoreExpr::Lit(v) => float(*v),
        ScoreExpr::Param(name) => name.clone(),
        ScoreExpr::Binary(op, a, b) => {
            format!("({} {} {})", op.symbol(), score_text(a), score_text(b))
        }
        ScoreExpr::Tanh(inner) => format!("(tanh {})", score_text(inner)),
    }
}
