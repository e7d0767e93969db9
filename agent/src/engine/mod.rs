//! The evolution engine's parts: which mutator to use next ([`bandit`]) and where parents
//! come from ([`population`]).

pub mod bandit;
pub mod population;
