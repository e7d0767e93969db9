//! Scoring of candidate kernels (filled by the evaluator issue).
