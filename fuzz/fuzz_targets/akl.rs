//! AKL text through the parser and the checker; what passes is printed and parsed again (the
//! canonical text must round-trip) and costed on a small model shape at a short length.
#![no_main]

use kernels::akl::{self, ModelShape};
use libfuzzer_sys::fuzz_target;

const SHAPE: ModelShape = ModelShape {
    n_layers: 2,
    n_q_heads: 4,
    n_kv_heads: 2,
    head_dim: 8,
};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let Ok(checked) = akl::parse_and_check(text) else {
        return;
    };
    let canonical = checked.program.canonical_text();
    let again = akl::parse_and_check(&canonical)
        .unwrap_or_else(|e| panic!("canonical text does not parse: {e}\n{canonical}"));
    assert_eq!(
        again.program.canonical_text(),
        canonical,
        "printing is not stable"
    );
    let _ = akl::cost(&checked, &SHAPE, 48);
});
