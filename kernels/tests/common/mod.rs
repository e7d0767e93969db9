//! Tiny GGUF models with seeded random weights, written by the tests themselves: the
//! families and features we have no small real weights for (Qwen 3, Llama 4, Gemma 3's
//! per-layer settings at a scale where they matter) and the bad files the loader must
//! reject.
//!
//! The vocabulary is byte-level BPE without merges: one token per byte, spelled in GPT-2's
//! byte-to-unicode map, then an end-of-text control token.
//!
//! Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::fs::File;
use std::io::BufWriter;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// 256 byte tokens and `<|endoftext|>`.
pub const VOCAB: usize = 257;
/// `<|endoftext|>`, the model's EOS.
pub const EOS: u32 = 256;

/// Gemma 3's alternation of sliding-window and global layers.
#[derive(Clone, Debug)]
pub struct GemmaSpec {
    pub window: usize,
    pub local_rope_base: f32,
    /// Linear position scaling of the global layers' RoPE.
    pub global_rope_scale: f32,
}

/// Llama 4's mixture-of-experts feed-forward.
#[derive(Clone, Debug)]
pub struct MoeSpec {
    pub n_experts: usize,
    pub n_used: usize,
    pub expert_ffn: usize,
    pub shared_ffn: Option<usize>,
}

/// Llama 4's chunked attention, NoPE layers and expert layers.
#[derive(Clone, Debug)]
pub struct Llama4Spec {
    pub chunk: usize,
    /// Every `no_rope_step`-th layer has no RoPE.
    pub no_rope_step: usize,
    /// Every `moe_step`-th layer is a mixture of experts.
    pub moe_step: usize,
    pub temperature_floor_scale: f32,
    pub temperature_scale: f32,
    pub moe: MoeSpec,
}

/// What a tiny model looks like: the hyperparameters, and which tensors its family has.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `general.architecture`.
    pub arch: &'static str,
    pub d_model: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Whether `{arch}.attention.key_length` is written; without it the loader must derive
    /// `head_dim = d_model / n_heads`.
    pub explicit_head_dim: bool,
    pub ffn_hidden: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    /// Global RoPE base (`rope.freq_base`).
    pub rope_base: f32,
    /// Rotated dimensions per head.
    pub rope_dims: usize,
    /// Whether `rope.dimension_count` is written.
    pub explicit_rope_dims: bool,
    /// Adjacent-pair RoPE (Llama) rather than halves (NeoX: Qwen, Gemma).
    pub rope_interleaved: bool,
    pub qkv_bias: bool,
    /// RMS norm of each query and key head, with weights, before RoPE.
    pub qk_rms_norm: bool,
    /// Gemma's norms after attention and after the feed-forward.
    pub sandwich_norms: bool,
    /// GeGLU (tanh GELU) rather than SwiGLU.
    pub gelu: bool,
    /// Embeddings multiplied by sqrt(d_model).
    pub scale_embeddings: bool,
    /// No `output.weight`: the output reuses the token embedding.
    pub tied_output: bool,
    pub gemma: Option<GemmaSpec>,
    pub llama4: Option<Llama4Spec>,
    /// Format of the weight matrices; norm weights and biases stay F32.
    pub weight_dtype: GgmlDType,
    pub seed: u64,
}

impl Spec {
    fn base(arch: &'static str) -> Self {
        Spec {
            arch,
            d_model: 32,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
            explicit_head_dim: false,
            ffn_hidden: 48,
            context_length: 64,
            rms_eps: 1e-6,
            rope_base: 10_000.0,
            rope_dims: 8,
            explicit_rope_dims: false,
            rope_interleaved: false,
            qkv_bias: false,
            qk_rms_norm: false,
            sandwich_norms: false,
            gelu: false,
            scale_embeddings: false,
            tied_output: false,
            gemma: None,
            llama4: None,
            weight_dtype: GgmlDType::F32,
            seed: 1,
        }
    }

    /// Llama with grouped-query attention and RoPE on half of each head.
    pub fn llama() -> Self {
        Spec {
            rope_interleaved: true,
            rope_dims: 4,
            explicit_rope_dims: true,
            ..Self::base("llama")
        }
    }

    /// Qwen 2 with its Q, K and V biases.
    pub fn qwen2() -> Self {
        Spec {
            qkv_bias: true,
            rope_base: 1_000_000.0,
            seed: 2,
            ..Self::base("qwen2")
        }
    }

    /// Qwen 3 with a head dim (16) that is not d_model / n_heads (8), and QK-norm.
    pub fn qwen3() -> Self {
        Spec {
            head_dim: 16,
            rope_dims: 16,
            explicit_head_dim: true,
            qk_rms_norm: true,
            rope_base: 1_000_000.0,
            seed: 3,
            ..Self::base("qwen3")
        }
    }

    /// Gemma 3 with seven layers (local ×5, global, local), a window of 3, and a head dim
    /// that is not d_model / n_heads, as in the real models.
    pub fn gemma3() -> Self {
        Spec {
            n_layers: 7,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 16,
            rope_dims: 16,
            explicit_head_dim: true,
            qk_rms_norm: true,
            sandwich_norms: true,
            gelu: true,
            scale_embeddings: true,
            tied_output: true,
            rope_base: 1_000_000.0,
            gemma: Some(GemmaSpec {
                window: 3,
                local_rope_base: 10_000.0,
                global_rope_scale: 2.0,
            }),
            seed: 4,
            ..Self::base("gemma3")
        }
    }

    /// Llama 4 with four layers: RoPE + dense, RoPE + experts, NoPE + dense, RoPE + experts;
    /// chunks of 4 and a temperature floor of 2, so both matter within a short prompt.
    pub fn llama4() -> Self {
        Spec {
            n_layers: 4,
            rope_interleaved: true,
            rope_base: 500_000.0,
            llama4: Some(Llama4Spec {
                chunk: 4,
                no_rope_step: 3,
                moe_step: 2,
                temperature_floor_scale: 2.0,
                temperature_scale: 0.5,
                moe: MoeSpec {
                    n_experts: 4,
                    n_used: 2,
                    expert_ffn: 24,
                    shared_ffn: Some(40),
                },
            }),
            seed: 5,
            ..Self::base("llama4")
        }
    }

    /// Sizes that Q8_0 blocks of 32 divide: every matrix's input width is a multiple of 32.
    pub fn q8_0(self) -> Self {
        let moe_ffn = |l: &Llama4Spec| Llama4Spec {
            moe: MoeSpec {
                expert_ffn: 32,
                shared_ffn: l.moe.shared_ffn.map(|_| 64),
                ..l.moe.clone()
            },
            ..l.clone()
        };
        Spec {
            d_model: 64,
            head_dim: 16,
            rope_dims: self.rope_dims * 16 / self.head_dim,
            ffn_hidden: 96,
            llama4: self.llama4.as_ref().map(moe_ffn),
            weight_dtype: GgmlDType::Q8_0,
            ..self
        }
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the others
/// take U+0100 and up, in byte order.
pub fn byte_token(byte: u8) -> String {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xa1..=0xac | 0xae..=0xff);
    let code = if printable(byte) {
        u32::from(byte)
    } else {
        256 + (0..byte).filter(|&b| !printable(b)).count() as u32
    };
    char::from_u32(code).expect("a valid char").to_string()
}

/// Metadata and tensors of a GGUF file, editable before it is written.
pub struct TinyGguf {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, QTensor)>,
    weight_dtype: GgmlDType,
    rng: StdRng,
}

impl TinyGguf {
    pub fn new(spec: &Spec) -> Self {
        let mut gguf = TinyGguf {
            metadata: Vec::new(),
            tensors: Vec::new(),
            weight_dtype: spec.weight_dtype,
            rng: StdRng::seed_from_u64(spec.seed),
        };
        gguf.add_metadata(spec);
        gguf.add_tensors(spec);
        gguf
    }

    fn add_metadata(&mut self, spec: &Spec) {
        let arch = spec.arch;
        let u32 = |n: usize| Value::U32(n as u32);
        let mut set = |key: &str, value: Value| self.set(key, value);
        set("general.architecture", Value::String(arch.into()));
        set(&format!("{arch}.embedding_length"), u32(spec.d_model));
        set(&format!("{arch}.block_count"), u32(spec.n_layers));
        set(&format!("{arch}.attention.head_count"), u32(spec.n_heads));
        set(
            &format!("{arch}.attention.head_count_kv"),
            u32(spec.n_kv_heads),
        );
        if spec.explicit_head_dim {
            set(&format!("{arch}.attention.key_length"), u32(spec.head_dim));
            set(
                &format!("{arch}.attention.value_length"),
                u32(spec.head_dim),
            );
        } else {
            assert_eq!(
                spec.head_dim * spec.n_heads,
                spec.d_model,
                "head_dim must be implicit"
            );
        }
        set(&format!("{arch}.feed_forward_length"), u32(spec.ffn_hidden));
        set(&format!("{arch}.context_length"), u32(spec.context_length));
        set(
            &format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(spec.rms_eps),
        );
        set(
            &format!("{arch}.rope.freq_base"),
            Value::F32(spec.rope_base),
        );
        if spec.explicit_rope_dims {
            set(&format!("{arch}.rope.dimension_count"), u32(spec.rope_dims));
        } else {
            assert_eq!(spec.rope_dims, spec.head_dim, "rope dims must be implicit");
        }
        if let Some(g) = &spec.gemma {
            set("gemma3.attention.sliding_window", u32(g.window));
            set("gemma3.rope.local_freq_base", Value::F32(g.local_rope_base));
            set(
                "gemma3.rope.scaling.factor",
                Value::F32(g.global_rope_scale),
            );
        }
        if let Some(l) = &spec.llama4 {
            set("llama4.attention.chunk_size", u32(l.chunk));
            set("llama4.no_rope_layer_step", u32(l.no_rope_step));
            set("llama4.interleave_moe_layer_step", u32(l.moe_step));
            set(
                "llama4.attention.temperature_floor_scale",
                Value::F32(l.temperature_floor_scale),
            );
            set(
                "llama4.attention.temperature_scale",
                Value::F32(l.temperature_scale),
            );
            set("llama4.expert_count", u32(l.moe.n_experts));
            set("llama4.expert_used_count", u32(l.moe.n_used));
            set("llama4.expert_feed_forward_length", u32(l.moe.expert_ffn));
            if let Some(shared) = l.moe.shared_ffn {
                set("llama4.expert_shared_feed_forward_length", u32(shared));
            }
        }

        let mut tokens: Vec<Value> = (0..=255u8).map(|b| Value::String(byte_token(b))).collect();
        tokens.push(Value::String("<|endoftext|>".into()));
        let mut types = vec![Value::I32(1); 256];
        types.push(Value::I32(3));
        set("tokenizer.ggml.model", Value::String("gpt2".into()));
        set("tokenizer.ggml.pre", Value::String("gpt2".into()));
        set("tokenizer.ggml.tokens", Value::Array(tokens));
        set("tokenizer.ggml.token_type", Value::Array(types));
        set("tokenizer.ggml.merges", Value::Array(Vec::new()));
        set("tokenizer.ggml.eos_token_id", Value::U32(EOS));
    }

    fn add_tensors(&mut self, spec: &Spec) {
        let (d, q, kv, ff) = (spec.d_model, spec.q_dim(), spec.kv_dim(), spec.ffn_hidden);
        self.matrix("token_embd.weight", &[VOCAB, d]);
        if !spec.tied_output {
            self.matrix("output.weight", &[VOCAB, d]);
        }
        self.norm("output_norm.weight", d);
        for i in 0..spec.n_layers {
            let name = |t: &str| format!("blk.{i}.{t}");
            self.norm(&name("attn_norm.weight"), d);
            self.matrix(&name("attn_q.weight"), &[q, d]);
            self.matrix(&name("attn_k.weight"), &[kv, d]);
            self.matrix(&name("attn_v.weight"), &[kv, d]);
            self.matrix(&name("attn_output.weight"), &[d, q]);
            if spec.qkv_bias {
                self.vector(&name("attn_q.bias"), q);
                self.vector(&name("attn_k.bias"), kv);
                self.vector(&name("attn_v.bias"), kv);
            }
            if spec.qk_rms_norm {
                self.norm(&name("attn_q_norm.weight"), spec.head_dim);
                self.norm(&name("attn_k_norm.weight"), spec.head_dim);
            }
            if spec.sandwich_norms {
                self.norm(&name("post_attention_norm.weight"), d);
                self.norm(&name("post_ffw_norm.weight"), d);
            }
            self.norm(&name("ffn_norm.weight"), d);
            match spec.llama4.as_ref().filter(|l| (i + 1) % l.moe_step == 0) {
                Some(l) => {
                    let (ne, eff) = (l.moe.n_experts, l.moe.expert_ffn);
                    self.matrix(&name("ffn_gate_inp.weight"), &[ne, d]);
                    self.matrix(&name("ffn_gate_exps.weight"), &[ne, eff, d]);
                    self.matrix(&name("ffn_up_exps.weight"), &[ne, eff, d]);
                    self.matrix(&name("ffn_down_exps.weight"), &[ne, d, eff]);
                    if let Some(sff) = l.moe.shared_ffn {
                        self.matrix(&name("ffn_gate_shexp.weight"), &[sff, d]);
                        self.matrix(&name("ffn_up_shexp.weight"), &[sff, d]);
                        self.matrix(&name("ffn_down_shexp.weight"), &[d, sff]);
                    }
                }
                None => {
                    self.matrix(&name("ffn_gate.weight"), &[ff, d]);
                    self.matrix(&name("ffn_up.weight"), &[ff, d]);
                    self.matrix(&name("ffn_down.weight"), &[d, ff]);
                }
            }
        }
    }

    /// Values drawn from N(0, std²).
    fn gaussian(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                // Box–Muller.
                let u1: f32 = 1.0 - self.rng.random::<f32>();
                let u2: f32 = self.rng.random();
                mean + std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect()
    }

    fn push(&mut self, name: &str, values: Vec<f32>, shape: &[usize], dtype: GgmlDType) {
        let tensor = Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor");
        let qtensor = QTensor::quantize(&tensor, dtype).expect("quantize");
        self.tensors.retain(|(n, _)| n != name);
        self.tensors.push((name.to_string(), qtensor));
    }

    /// A weight matrix (or a stack of them) in the spec's format, N(0, 0.1²).
    pub fn matrix(&mut self, name: &str, shape: &[usize]) {
        let values = self.gaussian(shape.iter().product(), 0.0, 0.1);
        self.push(name, values, shape, self.weight_dtype);
    }

    /// A norm weight near 1, in F32.
    fn norm(&mut self, name: &str, len: usize) {
        let values = self.gaussian(len, 1.0, 0.1);
        self.push(name, values, &[len], GgmlDType::F32);
    }

    /// A bias, in F32.
    fn vector(&mut self, name: &str, len: usize) {
        let values = self.gaussian(len, 0.0, 0.1);
        self.push(name, values, &[len], GgmlDType::F32);
    }

    /// Sets (or replaces) a metadata key.
    pub fn set(&mut self, key: &str, value: Value) {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
    }

    pub fn remove_metadata(&mut self, key: &str) {
        let before = self.metadata.len();
        self.metadata.retain(|(k, _)| k != key);
        assert_ne!(
            before,
            self.metadata.len(),
            "no metadata key `{key}` to remove"
        );
    }

    pub fn remove_tensor(&mut self, name: &str) {
        let before = self.tensors.len();
        self.tensors.retain(|(n, _)| n != name);
        assert_ne!(before, self.tensors.len(), "no tensor `{name}` to remove");
    }

    /// Writes the file as `{name}.gguf` in the test scratch directory.
    pub fn write(&self, name: &str) -> ScratchFile {
        let file = ScratchFile::new(&format!("{name}.gguf"));
        let mut writer = BufWriter::new(File::create(&*file).expect("create gguf"));
        let metadata: Vec<(&str, &Value)> =
            self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> =
            self.tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        gguf_file::write(&mut writer, &metadata, &tensors).expect("write gguf");
        file
    }
}

/// A file in the test scratch directory, removed when dropped. The name carries the process
/// id, since test runs may share the target directory.
pub struct ScratchFile(PathBuf);

impl ScratchFile {
    pub fn new(file_name: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        ScratchFile(dir.join(format!("{}-{file_name}", std::process::id())))
    }

    /// A scratch file holding `bytes`.
    pub fn with_bytes(file_name: &str, bytes: &[u8]) -> Self {
        let file = Self::new(file_name);
        std::fs::write(&file.0, bytes).expect("write scratch file");
        file
    }
}

impl Deref for ScratchFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        // Best effort: a leftover file in the scratch directory harms nothing.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `spec`'s model as `{name}.gguf`.
pub fn write_model(spec: &Spec, name: &str) -> ScratchFile {
    TinyGguf::new(spec).write(name)
}
