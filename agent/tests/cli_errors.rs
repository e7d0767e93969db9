//! The `evokernel` binary on bad input: it exits with an error that names what to fix,
//! never a panic.

/// The kernels tests' tiny GGUF writer (`agent/tests/common` is the oracle tests' own).
#[path = "../../kernels/tests/common/mod.rs"]
mod tiny_gguf;

use std::process::Command;

use tiny_gguf::{write_model, ScratchFile, Spec};

#[test]
fn perplexity_names_a_text_file_that_is_not_utf8() {
    let model = write_model(&Spec::llama(), "cli-perplexity");
    // Valid up to byte 6, then a lone continuation byte.
    let text = ScratchFile::with_bytes("not-utf8.txt", b"hello \x80 world");
    let output = Command::new(env!("CARGO_BIN_EXE_evokernel"))
        .arg("perplexity")
        .arg("--model")
        .arg(&*model)
        .arg("--text")
        .arg(&*text)
        .output()
        .expect("run evokernel");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a bad text file should fail: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&text.display().to_string()),
        "the file is not named: {stderr}"
    );
    assert!(stderr.contains("not UTF-8"), "{stderr}");
    assert!(
        stderr.contains("offset 6"),
        "the first bad byte is not named: {stderr}"
    );
}

#[test]
fn generate_names_a_model_file_that_is_not_gguf() {
    let model = ScratchFile::with_bytes("not-a-model.gguf", b"this is text, not a model");
    let output = Command::new(env!("CARGO_BIN_EXE_evokernel"))
        .args(["generate", "--prompt", "hi", "--model"])
        .arg(&*model)
        .output()
        .expect("run evokernel");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a bad model file should fail: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&model.display().to_string()),
        "the file is not named: {stderr}"
    );
    assert!(stderr.contains("not a readable GGUF file"), "{stderr}");
}

#[test]
fn generate_names_a_kernel_it_cannot_run() {
    let model = write_model(&Spec::llama(), "cli-generate-kernel");
    let not_causal = ScratchFile::with_bytes(
        "future.akl",
        b"(kernel future (mask (<= kv (+ q 1))) (score (* s scale)) (norm softmax))",
    );
    let cases = [
        ("best".to_string(), "not \"best\""),
        ("fastest".to_string(), "--kernel must be"),
        ("missing-kernel.akl".to_string(), "missing-kernel.akl"),
        (not_causal.display().to_string(), "causal"),
    ];
    for (kernel, named) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_evokernel"))
            .args(["generate", "--prompt", "hi", "--kernel", &kernel, "--model"])
            .arg(&*model)
            .output()
            .expect("run evokernel");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{kernel} should fail: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains(named), "{kernel}: {stderr}");
    }
}
