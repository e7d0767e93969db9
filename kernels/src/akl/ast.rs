//! The typed syntax tree of an AKL program. Clauses sit in fixed fields, so the order a
//! writer chose does not survive parsing: that is half of the canonical form.

/// A whole program: `(kernel NAME CLAUSE...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub name: String,
    /// Declared in source order (the canonical form keeps that order).
    pub params: Vec<Param>,
    /// The rule every layer uses unless a `layers` override matches it.
    pub rule: Rule,
    /// `(layers SELECTOR BODY)` overrides; the last one that matches a layer wins.
    pub layers: Vec<Override>,
}

/// `(param NAME int|float DEFAULT RANGE)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub default: Value,
    pub range: ParamRange,
}

/// A number as written: integers stay integers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl Value {
    /// The value as a real number (for scores).
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Int(v) => v as f64,
            Value::Float(v) => v,
        }
    }
}

/// The values a parameter may take, bounds inclusive. The kind (int or float) follows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamRange {
    /// `(LO HI)` for an int parameter.
    Int { lo: i64, hi: i64 },
    /// `(pow2 LO HI)`: powers of two between LO and HI, for an int parameter.
    Pow2 { lo: i64, hi: i64 },
    /// `(LO HI)` for a float parameter.
    Float { lo: f64, hi: f64 },
}

/// What one layer (or one range of heads) does. Absent clauses take their defaults:
/// mask `causal`, score `(* s scale)`, norm `softmax`, cache `all`, tile `q 32 kv 128`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    pub mask: Option<MaskExpr>,
    pub score: Option<ScoreExpr>,
    pub norm: Option<Norm>,
    pub select: Option<Select>,
    pub star: Option<Star>,
    pub cache: Option<CachePolicy>,
    pub mechanism: Option<Mechanism>,
    pub tile: Option<Tile>,
    /// `(heads SELECTOR BODY)` overrides; the last one that matches a query head wins.
    pub heads: Vec<Override>,
}

/// `(layers SELECTOR BODY)` or `(heads SELECTOR BODY)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub selector: Selector,
    pub body: Body,
}

/// What an override puts in place: a library kernel by name, or a rule spelled out.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Library(String),
    Rule(Box<Rule>),
}

/// Which layers or heads an override applies to. Indices the model lacks match nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    All,
    /// `(list 0 1 5)`.
    List(Vec<i64>),
    /// `(range A B)`: `A <= i < B`.
    Range(i64, i64),
    /// `(every N R)`: `i % N == R` (Gemma 3's global layers are `(every 6 5)`).
    Every(i64, i64),
}

impl Selector {
    /// Whether the selector picks layer or head `index`.
    pub fn matches(&self, index: usize) -> bool {
        let i = index as i64;
        match self {
            Selector::All => true,
            Selector::List(items) => items.contains(&i),
            Selector::Range(a, b) => *a <= i && i < *b,
            Selector::Every(n, r) => *n > 0 && i % n == *r,
        }
    }
}

/// A boolean expression over query position `q` and key position `kv`.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskExpr {
    /// `kv <= q`.
    Causal,
    True,
    False,
    And(Vec<MaskExpr>),
    Or(Vec<MaskExpr>),
    Not(Box<MaskExpr>),
    Compare(CmpOp, IntExpr, IntExpr),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl CmpOp {
    pub const ALL: [CmpOp; 5] = [CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge, CmpOp::Eq];

    /// The operator as AKL spells it.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Eq => "==",
        }
    }

    /// Whether `a OP b`.
    pub fn holds(self, a: i64, b: i64) -> bool {
        match self {
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Eq => a == b,
        }
    }
}

/// An integer expression: affine in `q` and `kv`, with `div` and `mod` by constants.
#[derive(Clone, Debug, PartialEq)]
pub enum IntExpr {
    Q,
    Kv,
    Lit(i64),
    /// An int parameter, by name.
    Param(String),
    Binary(IntOp, Box<IntExpr>, Box<IntExpr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntOp {
    Add,
    Sub,
    /// One side must be constant.
    Mul,
    /// Floor division by a positive constant.
    Div,
    /// Remainder of floor division by a positive constant (never negative).
    Mod,
}

impl IntOp {
    pub const ALL: [IntOp; 5] = [IntOp::Add, IntOp::Sub, IntOp::Mul, IntOp::Div, IntOp::Mod];

    /// The operator as AKL spells it.
    pub fn symbol(self) -> &'static str {
        match self {
            IntOp::Add => "+",
            IntOp::Sub => "-",
            IntOp::Mul => "*",
            IntOp::Div => "div",
            IntOp::Mod => "mod",
        }
    }
}

/// A real expression giving the pre-softmax score.
#[derive(Clone, Debug, PartialEq)]
pub enum ScoreExpr {
    /// The raw dot product q·k.
    S,
    /// The layer's scale (usually 1/sqrt(head_dim)).
    Scale,
    Q,
    Kv,
    /// The query head index.
    Head,
    Lit(f64),
    /// A parameter (int or float), by name.
    Param(String),
    Binary(ScoreOp, Box<ScoreExpr>, Box<ScoreExpr>),
    Tanh(Box<ScoreExpr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScoreOp {
    Add,
    Sub,
    Mul,
    /// The divisor must be a nonzero constant.
    Div,
    Min,
    Max,
}

impl ScoreOp {
    pub const ALL: [ScoreOp; 6] = [
        ScoreOp::Add,
        ScoreOp::Sub,
        ScoreOp::Mul,
        ScoreOp::Div,
        ScoreOp::Min,
        ScoreOp::Max,
    ];

    /// The operator as AKL spells it.
    pub fn symbol(self) -> &'static str {
        match self {
            ScoreOp::Add => "+",
            ScoreOp::Sub => "-",
            ScoreOp::Mul => "*",
            ScoreOp::Div => "/",
            ScoreOp::Min => "min",
            ScoreOp::Max => "max",
        }
    }
}

/// How scores become weights. Only the softmax for now; trainable normalisations live in
/// mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Softmax,
}

/// `(select (page P) (top K) (summary minmax|mean))`: attend only to the `K` pages of `P`
/// keys whose summaries score highest against the query (Quest with minmax, MoBA with mean).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Select {
    pub page: i64,
    pub top: i64,
    pub summary: Summary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    /// Per-channel minimum and maximum of the page's keys (Quest).
    MinMax,
    /// Mean of the page's keys (MoBA).
    Mean,
}

/// `(star (block B) (context C))`: Star Attention. Queries before position `C` see their own
/// block of `B` keys and the anchor block (the first); later queries see every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Star {
    pub block: i64,
    pub context: i64,
}

/// Which keys the KV cache keeps.
#[derive(Clone, Debug, PartialEq)]
pub enum CachePolicy {
    All,
    /// Key `kv` is kept while the newest position is `q` iff the expression holds.
    Keep(MaskExpr),
}

/// `(mechanism NAME (OPTION VALUE)...)`: a trainable mechanism block.
#[derive(Clone, Debug, PartialEq)]
pub struct Mechanism {
    pub name: String,
    /// In the mechanism table's order when the mechanism is known, else as written.
    pub options: Vec<(String, OptionValue)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    Int(i64),
    Float(f64),
    Symbol(String),
}

/// `(tile q N kv M)`: the tiled engine's block sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub q: i64,
    pub kv: i64,
}

impl Tile {
    pub const DEFAULT: Tile = Tile { q: 32, kv: 128 };
}
