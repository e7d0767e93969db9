//! Campaigns: what to evolve, how, and for how long.

pub mod config;

pub use config::{CampaignConfig, ConfigError, SeedProgram, Strategy, TaskConfig, TaskName};
