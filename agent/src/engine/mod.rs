//! The evolution engine: the campaign loop ([`run`]), the jobs it runs ([`job`]), what it
//! knows between them ([`search`]), which mutator to use next ([`bandit`]) and where
//! parents come from ([`population`]).

pub mod bandit;
pub mod job;
pub mod population;
pub mod run;
pub mod search;
