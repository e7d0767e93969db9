//! The inference core.
