//! AKL, the attention kernel language: the text form of a candidate kernel. See `kernels/AKL.md`.
