//! Bad model files and bad requests: each must give an error that names what to fix (the
//! file, the key, the tensor, the limit), never a panic.

mod common;

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use common::{write_model, ScratchFile, Spec, TinyGguf, VOCAB};
use kernels::generate::{generate, GenerateOptions, Sampling};
use kernels::gguf::GgufFile;
use kernels::{Error, Logits, Model};

fn load_error(path: &Path) -> Error {
    Model::load(path).expect_err("the model should be rejected")
}

/// Asserts that `error` is `BadGguf` for `path` and its message names the file.
fn assert_bad_gguf(error: &Error, path: &Path) {
    assert!(
        matches!(error, Error::BadGguf { path: p, .. } if p == path),
        "expected BadGguf for {}, got {error:?}",
        path.display()
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
}

#[test]
fn truncated_file_is_rejected_at_every_length() {
    let path = write_model(&Spec::llama(), "truncated-source");
    let bytes = std::fs::read(&*path).expect("read model");
    let data_start = {
        let mut reader = std::io::Cursor::new(&bytes);
        Content::read(&mut reader)
            .expect("a whole file")
            .tensor_data_offset as usize
    };
    // Every cut leaves out part of a tensor: the last tensor's padding is under 32 bytes.
    let cuts = (0..bytes.len() - 32)
        .step_by(251)
        .chain([data_start - 1, bytes.len() - 32]);
    for cut in cuts {
        let truncated = ScratchFile::with_bytes("truncated.gguf", &bytes[..cut]);
        let error = load_error(&truncated);
        assert_bad_gguf(&error, &truncated);
        if cut >= data_start {
            assert!(
                error.to_string().contains("truncated"),
                "cut at {cut} of {}: {error}",
                bytes.len()
            );
        }
    }
}

#[test]
fn corrupt_file_is_rejected() {
    let good = std::fs::read(&*write_model(&Spec::llama(), "corrupt-source")).expect("read model");
    let mut bad_magic = good.clone();
    bad_magic[..4].copy_from_slice(b"GGUX");
    let mut bad_version = good.clone();
    bad_version[4..8].copy_from_slice(&99u32.to_le_bytes());
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut garbage_after_magic = good[..8].to_vec();
    garbage_after_magic.extend(&garbage);
    // The embedding's dims overwritten with 2^40 each: their product overflows.
    let mut huge_dims = good.clone();
    let name = b"token_embd.weight";
    let at = good
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor info")
        + name.len()
        + 4;
    for dim in 0..2 {
        huge_dims[at + 8 * dim..at + 8 * (dim + 1)].copy_from_slice(&(1u64 << 40).to_le_bytes());
    }
    let cases: [(&str, &[u8]); 6] = [
        ("empty", &[]),
        ("bad magic", &bad_magic),
        ("bad version", &bad_version),
        ("garbage", &garbage),
        ("garbage after the magic", &garbage_after_magic),
        ("huge tensor dims", &huge_dims),
    ];
    for (case, bytes) in cases {
        let path =
            ScratchFile::with_bytes(&format!("corrupt-{}.gguf", case.replace(' ', "-")), bytes);
        let error = load_error(&path);
        assert_bad_gguf(&error, &path);
        if case == "huge tensor dims" {
            assert!(error.to_string().contains("`token_embd.weight`"), "{error}");
        }
    }
}

/// Found by `scripts/fuzz` (target `gguf`): candle-core's parser divides by
/// `general.alignment`, so a zero there panicked inside `GgufFile::open`.
#[test]
fn zero_alignment_is_rejected_not_a_panic() {
    let crash = ScratchFile::with_bytes(
        "zero-alignment.gguf",
        include_bytes!("fuzz/gguf-zero-alignment.gguf"),
    );
    let error = GgufFile::open(&crash)
        .err()
        .expect("a zero alignment is refused");
    assert_bad_gguf(&error, &crash);
    assert!(
        error.to_string().contains("`general.alignment` is 0"),
        "{error}"
    );

    // A whole model: the walk passes its tokenizer's string arrays before the key.
    for value in [Value::U32(0), Value::U8(0), Value::I16(0)] {
        let mut gguf = TinyGguf::new(&Spec::llama());
        gguf.set("general.alignment", value);
        let path = gguf.write("zero-alignment-model");
        let error = load_error(&path);
        assert_bad_gguf(&error, &path);
        assert!(
            error.to_string().contains("`general.alignment` is 0"),
            "{error}"
        );
    }
    let mut gguf = TinyGguf::new(&Spec::llama());
    gguf.set("general.alignment", Value::U32(32));
    assert!(Model::load(&gguf.write("alignment-32")).is_ok());
}

/// Found by `scripts/fuzz` (target `gguf`): a tensor of dims `[0, 0]` passed the size check,
/// and reading it had candle-core view an empty buffer, whose pointer is not aligned for `f32`.
#[test]
fn tensor_without_data_is_rejected() {
    let crash = ScratchFile::with_bytes(
        "empty-tensor.gguf",
        include_bytes!("fuzz/gguf-empty-tensor.gguf"),
    );
    let error = GgufFile::open(&crash)
        .err()
        .expect("an empty tensor is refused");
    assert_bad_gguf(&error, &crash);
    assert!(
        error.to_string().contains("holds no data: dims [0, 0]"),
        "{error}"
    );
}

#[test]
fn unknown_architecture_is_named_with_the_supported_ones() {
    let mut gguf = TinyGguf::new(&Spec::llama());
    gguf.set("general.architecture", Value::String("mamba9".into()));
    let path = gguf.write("mamba9");
    let error = load_error(&path);
    match &error {
        Error::UnknownArchitecture {
            arch, supported, ..
        } => {
            assert_eq!(arch, "mamba9");
            for family in ["llama", "qwen2", "qwen3", "gemma3", "llama4"] {
                assert!(supported.split(", ").any(|s| s == family), "{supported}");
            }
        }
        other => panic!("expected UnknownArchitecture, got {other:?}"),
    }
    assert!(error.to_string().contains("`mamba9`"), "{error}");
}

#[test]
fn missing_tensor_is_named() {
    let cases = [
        (Spec::llama(), "token_embd.weight"),
        (Spec::llama(), "output_norm.weight"),
        (Spec::llama(), "blk.1.attn_k.weight"),
        (Spec::qwen2(), "blk.0.attn_v.bias"),
        (Spec::qwen3(), "blk.1.attn_k_norm.weight"),
        (Spec::gemma3(), "blk.5.post_ffw_norm.weight"),
        (Spec::llama4(), "blk.0.ffn_gate.weight"),
        (Spec::llama4(), "blk.1.ffn_gate_inp.weight"),
        (Spec::llama4(), "blk.1.ffn_up_exps.weight"),
        (Spec::llama4(), "blk.3.ffn_down_shexp.weight"),
    ];
    for (spec, tensor) in cases {
        let mut gguf = TinyGguf::new(&spec);
        gguf.remove_tensor(tensor);
        let path = gguf.write(&format!("missing-{tensor}"));
        let error = load_error(&path);
        assert!(
            matches!(&error, Error::MissingTensor { name, .. } if name == tensor),
            "{tensor}: {error:?}"
        );
        assert!(
            error.to_string().contains(&format!("`{tensor}`")),
            "{error}"
        );
    }
}

#[test]
fn tensor_of_the_wrong_shape_is_named_with_both_shapes() {
    let llama = Spec::llama();
    let qwen3 = Spec::qwen3();
    let llama4 = Spec::llama4();
    let experts = llama4.llama4.as_ref().expect("llama4").moe.clone();
    let cases = [
        (
            &llama,
            "blk.0.ffn_up.weight",
            vec![llama.ffn_hidden + 1, llama.d_model],
        ),
        (&llama, "token_embd.weight", vec![VOCAB - 1, llama.d_model]),
        // The classic mistake: head_dim taken as d_model / n_heads.
        (
            &qwen3,
            "blk.0.attn_q_norm.weight",
            vec![qwen3.d_model / qwen3.n_heads],
        ),
        (
            &llama4,
            "blk.1.ffn_gate_exps.weight",
            vec![experts.n_experts - 1, experts.expert_ffn, llama4.d_model],
        ),
    ];
    for (spec, tensor, shape) in cases {
        let mut gguf = TinyGguf::new(spec);
        let expected = gguf
            .tensors
            .iter()
            .find(|(n, _)| n == tensor)
            .map(|(_, t)| t.shape().dims().to_vec())
            .expect("tensor in the spec");
        gguf.matrix(tensor, &shape);
        let path = gguf.write(&format!("shape-{tensor}"));
        let error = load_error(&path);
        match &error {
            Error::TensorShape {
                name,
                expected: e,
                found,
                ..
            } => {
                assert_eq!((name.as_str(), e, found), (tensor, &expected, &shape));
            }
            other => panic!("{tensor}: expected TensorShape, got {other:?}"),
        }
        assert!(
            error.to_string().contains(&format!("`{tensor}`")),
            "{error}"
        );
    }
}

#[test]
fn missing_metadata_key_is_named() {
    let cases = [
        (Spec::llama(), "general.architecture"),
        (Spec::llama(), "llama.embedding_length"),
        (Spec::llama(), "llama.block_count"),
        (Spec::llama(), "llama.attention.head_count"),
        (Spec::llama(), "llama.attention.head_count_kv"),
        (Spec::llama(), "llama.feed_forward_length"),
        (Spec::llama(), "llama.attention.layer_norm_rms_epsilon"),
        (Spec::llama(), "llama.context_length"),
        (Spec::llama(), "tokenizer.ggml.model"),
        (Spec::llama(), "tokenizer.ggml.tokens"),
        (Spec::llama(), "tokenizer.ggml.merges"),
        (Spec::gemma3(), "gemma3.attention.sliding_window"),
        (Spec::llama4(), "llama4.expert_used_count"),
        (Spec::llama4(), "llama4.expert_feed_forward_length"),
    ];
    for (spec, key) in cases {
        let mut gguf = TinyGguf::new(&spec);
        gguf.remove_metadata(key);
        let path = gguf.write(&format!("missing-{key}"));
        let error = load_error(&path);
        assert!(
            matches!(&error, Error::MissingMetadata { key: k, .. } if k == key),
            "{key}: {error:?}"
        );
        assert!(error.to_string().contains(&format!("`{key}`")), "{error}");
    }
}

#[test]
fn inconsistent_metadata_is_named() {
    let cases = [
        (
            Spec::llama(),
            "llama.attention.head_count_kv",
            Value::U32(3),
        ),
        (
            Spec::llama(),
            "llama.context_length",
            Value::String("64".into()),
        ),
        (Spec::llama(), "llama.rope.dimension_count", Value::U32(9)),
        (
            Spec::gemma3(),
            "gemma3.attention.sliding_window",
            Value::U32(0),
        ),
        (Spec::llama4(), "llama4.attention.chunk_size", Value::U32(0)),
        (Spec::llama4(), "llama4.expert_used_count", Value::U32(5)),
        (
            Spec::llama(),
            "tokenizer.ggml.eos_token_id",
            Value::U32(VOCAB as u32),
        ),
    ];
    for (spec, key, value) in cases {
        let mut gguf = TinyGguf::new(&spec);
        gguf.set(key, value);
        let path = gguf.write(&format!("inconsistent-{key}"));
        let error = load_error(&path);
        assert!(
            matches!(&error, Error::BadMetadata { key: k, .. } if k == key),
            "{key}: {error:?}"
        );
        assert!(error.to_string().contains(&format!("`{key}`")), "{error}");
    }
}

fn tiny_model(name: &str) -> Model {
    Model::load(&write_model(&Spec::llama(), name)).expect("load the tiny model")
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        sampling: Sampling::greedy(),
        stop_tokens: Vec::new(),
    }
}

fn assert_invalid_request(error: &Error, needles: &[&str]) {
    assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
    for needle in needles {
        assert!(
            error.to_string().contains(needle),
            "`{needle}` not in: {error}"
        );
    }
}

#[test]
fn prompt_longer_than_the_context_is_rejected() {
    let model = tiny_model("context");
    let context = model.config.context_length;
    let tokens: Vec<u32> = (0..context as u32 + 1).collect();

    let error = model
        .forward(&mut model.new_cache(), &tokens, Logits::Last)
        .expect_err("forward past the context");
    assert_invalid_request(
        &error,
        &[
            &format!("{}", context + 1),
            &format!("context length of {context}"),
        ],
    );

    // The cache holds most of the context; the next call overflows it and leaves it as it was.
    let mut cache = model.new_cache();
    model
        .forward(&mut cache, &tokens[..context - 2], Logits::Last)
        .expect("fits");
    let error = model
        .forward(&mut cache, &tokens[..3], Logits::Last)
        .expect_err("cached + new past the context");
    assert_invalid_request(&error, &[&format!("{} cached + 3 new", context - 2)]);
    assert_eq!(cache.len(), context - 2);

    // generate needs room for at least one new token.
    for len in [context, context + 1] {
        let error =
            generate(&model, &tokens[..len], &greedy(4), |_| {}).expect_err("prompt too long");
        assert_invalid_request(
            &error,
            &[
                &format!("{len} tokens"),
                &format!("context holds {context}"),
            ],
        );
    }
}

#[test]
fn token_outside_the_vocabulary_is_rejected() {
    let model = tiny_model("vocab");
    let bad = VOCAB as u32;
    let needles = [
        &format!("token id {bad}") as &str,
        &format!("vocabulary of {VOCAB} tokens"),
    ];
    let mut cache = model.new_cache();
    model
        .forward(&mut cache, &[1, 2], Logits::Last)
        .expect("valid ids");
    let error = model
        .forward(&mut cache, &[3, bad, 4], Logits::Last)
        .expect_err("id past the vocabulary");
    assert_invalid_request(&error, &needles);
    assert_eq!(cache.len(), 2, "a rejected call must not grow the cache");

    let error =
        generate(&model, &[5, u32::MAX], &greedy(4), |_| {}).expect_err("id past the vocabulary");
    assert_invalid_request(&error, &[&format!("token id {}", u32::MAX)]);
}

#[test]
fn empty_prompt_is_rejected() {
    let model = tiny_model("empty-prompt");
    let error = model
        .forward(&mut model.new_cache(), &[], Logits::All)
        .expect_err("no tokens");
    assert_invalid_request(&error, &["no tokens"]);
    let error = generate(&model, &[], &greedy(4), |_| {}).expect_err("no tokens");
    assert_invalid_request(&error, &["no tokens"]);
}
