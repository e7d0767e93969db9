//! Every model family against a naive forward pass, on tiny GGUFs with random weights that
//! the tests write themselves (`common`): Qwen 3, Llama 4 and Gemma 3's per-layer features
//! have no small real weights to check against candle-transformers.
//!
//! The reference below reads the same weights (dequantized) from the file with candle's GGUF
//! reader and computes in f64, one token and one head at a time, from the definitions: its
//! own RMSNorm, RoPE in both pairings, masks, expert routing and temperature tuning, sharing
//! no code with the crate. Each comparison then knocks the features it is about out of the
//! reference, one at a time, and requires that this moves the logits far beyond the
//! tolerance, so that no feature under test could be wrong or missing unnoticed.
//!
//! Tolerances, on logits of magnitude ~2: F32 weights leave only f32 rounding against f64
//! (1e-4 allowed; measured below 1e-6). Q8_0 weights are used exactly as stored by both
//! sides, but our matmuls also round each block of 32 activations to 8 bits (`d·q`,
//! `d = amax/127`), as llama.cpp and candle do. The reference does the same rounding, which
//! leaves f32 against f64 again (1e-3 allowed, in case a rounding tie falls differently;
//! measured below 1e-6); against exact activations the logits move by about 2% of the
//! largest |logit| on these random weights (5% allowed).

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use common::{write_model, Spec, VOCAB};
use kernels::{Logits, Model};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const F32_TOLERANCE: f64 = 1e-4;
/// Against the reference that rounds activations as our Q8_0 kernels do: room for an f32
/// rounding difference to flip one rounded activation.
const Q8_0_TOLERANCE: f64 = 1e-3;
/// Against exact activations, relative to the largest |logit|.
const Q8_0_EXACT_RELATIVE_TOLERANCE: f64 = 0.05;
/// Prefill against decode: the same f32 arithmetic in another order.
const DECODE_TOLERANCE: f64 = 1e-4;
const PROMPT_LEN: usize = 16;

// ---------------------------------------------------------------------------------------
// The reference
// ---------------------------------------------------------------------------------------

/// Which keys query position `q` sees.
#[derive(Clone, Copy, Debug)]
enum RefMask {
    Causal,
    /// `q - k < window`.
    Window(usize),
    /// `k / chunk == q / chunk`.
    Chunk(usize),
}

impl RefMask {
    fn allows(self, q: usize, k: usize) -> bool {
        k <= q
            && match self {
                RefMask::Causal => true,
                RefMask::Window(w) => q - k < w,
                RefMask::Chunk(c) => k / c == q / c,
            }
    }
}

#[derive(Clone, Debug)]
struct RefRope {
    /// Pairs `(2i, 2i+1)`; otherwise `(i, i + dims/2)`.
    interleaved: bool,
    dims: usize,
    base: f64,
    /// Positions are divided by this.
    position_scale: f64,
}

impl RefRope {
    /// Rotates pair `i` of `head` by `position / scale · base^(-2i/dims)`.
    fn apply(&self, head: &mut [f64], position: usize) {
        let half = self.dims / 2;
        for i in 0..half {
            let theta = position as f64 / self.position_scale
                * self.base.powf(-2.0 * i as f64 / self.dims as f64);
            let (a, b) = if self.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x, y) = (head[a], head[b]);
            head[a] = x * theta.cos() - y * theta.sin();
            head[b] = x * theta.sin() + y * theta.cos();
        }
    }
}

#[derive(Clone, Debug)]
struct RefLayer {
    /// `None`: a NoPE layer.
    rope: Option<RefRope>,
    mask: RefMask,
    /// Weightless `x / sqrt(mean(x²) + eps)` of each query and key head after RoPE.
    l2_qk_norm: bool,
    /// `(floor_scale, scale)`: queries times `log(floor((pos+1)/floor_scale)+1)·scale + 1`.
    temperature: Option<(f64, f64)>,
    moe: bool,
}

#[derive(Clone, Debug)]
struct RefMoe {
    n_used: usize,
    shared: bool,
    /// The sigmoid of the router logit scales the expert's input (Llama 4) rather than its
    /// output.
    gate_input: bool,
}

/// The model as the definitions describe it, built from the test's own `Spec`.
#[derive(Clone, Debug)]
struct Reference {
    spec: Spec,
    layers: Vec<RefLayer>,
    moe: Option<RefMoe>,
    /// Whether matmul inputs are rounded as our kernels round them for quantized weights.
    quantized_activations: bool,
}

/// Tensors by name, dequantized, row-major.
struct Weights(HashMap<String, Vec<f64>>);

impl Weights {
    fn read(path: &Path) -> Self {
        let mut reader = BufReader::new(File::open(path).expect("open gguf"));
        let content = Content::read(&mut reader).expect("read gguf");
        let tensors = content
            .tensor_infos
            .keys()
            .map(|name| {
                let qtensor = content
                    .tensor(&mut reader, name, &Device::Cpu)
                    .expect("tensor");
                let values: Vec<f32> = qtensor
                    .dequantize(&Device::Cpu)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1())
                    .expect("dequantize");
                (name.clone(), values.into_iter().map(f64::from).collect())
            })
            .collect();
        Weights(tensors)
    }

    fn get(&self, name: &str) -> &[f64] {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

/// What our Q8_0 matmuls do to an input row: each block of 32 becomes `d·q` with `q` an
/// integer and `d` the smallest whole multiple `s` of the row's unit `amax / (127 · 16383)`
/// that covers the block's `amax / 127`, the scales and quants computed in f32 as the kernels
/// do.
fn quantize_activations(x: &[f64]) -> Vec<f64> {
    let amax = |block: &[f64]| block.iter().fold(0f32, |m, &v| m.max((v as f32).abs()));
    let unit = amax(x) / (127.0 * 16383.0);
    x.chunks(32)
        .flat_map(|block| {
            let amax = amax(block);
            let s = if amax > 0.0 {
                ((amax / (127.0 * unit)).ceil() as i32).clamp(1, 16383)
            } else {
                0
            };
            let d = s as f32 * unit;
            let inverse = if d > 0.0 { 1.0 / d } else { 0.0 };
            block.iter().map(move |&v| {
                let q = (v as f32 * inverse).round_ties_even().clamp(-127.0, 127.0);
                f64::from(q) * f64::from(d)
            })
        })
        .collect()
}

/// `w · x` for `w` of `rows × x.len()`.
fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    assert_eq!(w.len() % x.len(), 0);
    w.chunks_exact(x.len())
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn mean_square(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64
}

fn rms_norm(x: &[f64], weight: &[f64], eps: f64) -> Vec<f64> {
    let inv = 1.0 / (mean_square(x) + eps).sqrt();
    x.iter().zip(weight).map(|(v, w)| v * inv * w).collect()
}

fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Reference {
    fn new(spec: &Spec) -> Self {
        let rope = |base: f32, position_scale: f32| RefRope {
            interleaved: spec.rope_interleaved,
            dims: spec.rope_dims,
            base: f64::from(base),
            position_scale: f64::from(position_scale),
        };
        let layers = (0..spec.n_layers)
            .map(|i| {
                let mut layer = RefLayer {
                    rope: Some(rope(spec.rope_base, 1.0)),
                    mask: RefMask::Causal,
                    l2_qk_norm: false,
                    temperature: None,
                    moe: false,
                };
                // Gemma 3: five sliding-window layers with the local base, then one global.
                if let Some(g) = &spec.gemma {
                    if (i + 1) % 6 == 0 {
                        layer.rope = Some(rope(spec.rope_base, g.global_rope_scale));
                    } else {
                        layer.rope = Some(rope(g.local_rope_base, 1.0));
                        layer.mask = RefMask::Window(g.window);
                    }
                }
                // Llama 4: NoPE layers attend globally with temperature tuning; the others
                // attend within chunks and L2-normalise queries and keys after RoPE.
                if let Some(l) = &spec.llama4 {
                    if (i + 1) % l.no_rope_step == 0 {
                        layer.rope = None;
                        layer.temperature = Some((
                            f64::from(l.temperature_floor_scale),
                            f64::from(l.temperature_scale),
                        ));
                    } else {
                        layer.mask = RefMask::Chunk(l.chunk);
                        layer.l2_qk_norm = true;
                    }
                    layer.moe = (i + 1) % l.moe_step == 0;
                }
                layer
            })
            .collect();
        let moe = spec.llama4.as_ref().map(|l| RefMoe {
            n_used: l.moe.n_used,
            shared: l.moe.shared_ffn.is_some(),
            gate_input: true,
        });
        Reference {
            spec: spec.clone(),
            layers,
            moe,
            quantized_activations: spec.weight_dtype != GgmlDType::F32,
        }
    }

    /// `w · x`, for a weight matrix `w`.
    fn linear(&self, w: &[f64], x: &[f64]) -> Vec<f64> {
        if self.quantized_activations {
            matvec(w, &quantize_activations(x))
        } else {
            matvec(w, x)
        }
    }

    /// Logits at every position of `tokens`.
    fn logits(&self, w: &Weights, tokens: &[u32]) -> Vec<Vec<f64>> {
        let s = &self.spec;
        let d = s.d_model;
        let eps = f64::from(s.rms_eps);
        let embedding = w.get("token_embd.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| {
                let row = &embedding[t as usize * d..(t as usize + 1) * d];
                let scale = if s.scale_embeddings {
                    (d as f64).sqrt()
                } else {
                    1.0
                };
                row.iter().map(|v| v * scale).collect()
            })
            .collect();
        for (i, layer) in self.layers.iter().enumerate() {
            let name = |t: &str| format!("blk.{i}.{t}");
            let attention = self.attention(w, i, layer, &xs);
            for (x, mut out) in xs.iter_mut().zip(attention) {
                if s.sandwich_norms {
                    out = rms_norm(&out, w.get(&name("post_attention_norm.weight")), eps);
                }
                add(x, &out);
            }
            for x in &mut xs {
                let h = rms_norm(x, w.get(&name("ffn_norm.weight")), eps);
                let mut out = if layer.moe {
                    self.moe(w, i, &h)
                } else {
                    self.ffn(
                        w,
                        &name("ffn_gate.weight"),
                        &name("ffn_up.weight"),
                        &name("ffn_down.weight"),
                        &h,
                    )
                };
                if s.sandwich_norms {
                    out = rms_norm(&out, w.get(&name("post_ffw_norm.weight")), eps);
                }
                add(x, &out);
            }
        }
        let output = if s.tied_output {
            embedding
        } else {
            w.get("output.weight")
        };
        xs.iter()
            .map(|x| self.linear(output, &rms_norm(x, w.get("output_norm.weight"), eps)))
            .collect()
    }

    /// The attention block's output (before `attn_output`'s residual add) at every position.
    fn attention(&self, w: &Weights, i: usize, layer: &RefLayer, xs: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let s = &self.spec;
        let (hd, nh, nkv) = (s.head_dim, s.n_heads, s.n_kv_heads);
        let eps = f64::from(s.rms_eps);
        let name = |t: &str| format!("blk.{i}.{t}");
        let project = |x: &[f64], t: &str| -> Vec<f64> {
            let mut y = self.linear(w.get(&name(&format!("attn_{t}.weight"))), x);
            if s.qkv_bias {
                add(&mut y, w.get(&name(&format!("attn_{t}.bias"))));
            }
            y
        };
        // Per position: the heads of q, k and v, each `head_dim` long.
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (pos, x) in xs.iter().enumerate() {
            let h = rms_norm(x, w.get(&name("attn_norm.weight")), eps);
            let heads =
                |v: Vec<f64>| -> Vec<Vec<f64>> { v.chunks(hd).map(<[f64]>::to_vec).collect() };
            let mut q = heads(project(&h, "q"));
            let mut k = heads(project(&h, "k"));
            let v = heads(project(&h, "v"));
            for (heads, norm) in [
                (&mut q, "attn_q_norm.weight"),
                (&mut k, "attn_k_norm.weight"),
            ] {
                for head in heads.iter_mut() {
                    if s.qk_rms_norm {
                        *head = rms_norm(head, w.get(&name(norm)), eps);
                    }
                    if let Some(rope) = &layer.rope {
                        rope.apply(head, pos);
                        if layer.l2_qk_norm {
                            let inv = 1.0 / (mean_square(head) + eps).sqrt();
                            head.iter_mut().for_each(|v| *v *= inv);
                        }
                    }
                }
            }
            if let Some((floor_scale, scale)) = layer.temperature {
                let factor = ((((pos + 1) as f64) / floor_scale).floor() + 1.0).ln() * scale + 1.0;
                q.iter_mut().flatten().for_each(|v| *v *= factor);
            }
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let group = nh / nkv;
        qs.iter()
            .enumerate()
            .map(|(pos, q)| {
                let visible: Vec<usize> = (0..xs.len())
                    .filter(|&k| layer.mask.allows(pos, k))
                    .collect();
                let mut concat = Vec::with_capacity(nh * hd);
                for (h, q_head) in q.iter().enumerate() {
                    let kv = h / group;
                    let scores: Vec<f64> = visible
                        .iter()
                        .map(|&k| {
                            q_head
                                .iter()
                                .zip(&ks[k][kv])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    let mut out = vec![0.0; hd];
                    for (&k, weight) in visible.iter().zip(&weights) {
                        for (o, v) in out.iter_mut().zip(&vs[k][kv]) {
                            *o += weight / total * v;
                        }
                    }
                    concat.extend(out);
                }
                self.linear(w.get(&name("attn_output.weight")), &concat)
            })
            .collect()
    }

    /// `down · (act(gate · x) ⊙ (up · x))`.
    fn gated_ffn(&self, gate: &[f64], up: &[f64], down: &[f64], x: &[f64]) -> Vec<f64> {
        let activation = if self.spec.gelu { gelu_tanh } else { silu };
        let hidden: Vec<f64> = self
            .linear(gate, x)
            .into_iter()
            .zip(self.linear(up, x))
            .map(|(g, u)| activation(g) * u)
            .collect();
        self.linear(down, &hidden)
    }

    fn ffn(&self, w: &Weights, gate: &str, up: &str, down: &str, x: &[f64]) -> Vec<f64> {
        self.gated_ffn(w.get(gate), w.get(up), w.get(down), x)
    }

    /// Top-k experts by router logit, each weighted by the sigmoid of its logit, plus the
    /// shared expert.
    fn moe(&self, w: &Weights, i: usize, x: &[f64]) -> Vec<f64> {
        let moe = self.moe.as_ref().expect("a MoE config");
        let l = self.spec.llama4.as_ref().expect("a Llama 4 spec");
        let name = |t: &str| format!("blk.{i}.{t}");
        let router = self.linear(w.get(&name("ffn_gate_inp.weight")), x);
        let mut order: Vec<usize> = (0..router.len()).collect();
        order.sort_by(|&a, &b| router[b].total_cmp(&router[a]));
        let expert = |t: &str, e: usize| -> &[f64] {
            let all = w.get(&name(t));
            let size = all.len() / l.moe.n_experts;
            &all[e * size..(e + 1) * size]
        };
        let mut out = if moe.shared {
            self.ffn(
                w,
                &name("ffn_gate_shexp.weight"),
                &name("ffn_up_shexp.weight"),
                &name("ffn_down_shexp.weight"),
                x,
            )
        } else {
            vec![0.0; x.len()]
        };
        for &e in &order[..moe.n_used] {
            let gate = sigmoid(router[e]);
            let (g, u, dn) = (
                expert("ffn_gate_exps.weight", e),
                expert("ffn_up_exps.weight", e),
                expert("ffn_down_exps.weight", e),
            );
            let y = if moe.gate_input {
                let scaled: Vec<f64> = x.iter().map(|v| v * gate).collect();
                self.gated_ffn(g, u, dn, &scaled)
            } else {
                self.gated_ffn(g, u, dn, x)
                    .into_iter()
                    .map(|v| v * gate)
                    .collect()
            };
            add(&mut out, &y);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------

/// A seeded prompt of `PROMPT_LEN` token ids.
fn prompt(seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..PROMPT_LEN)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect()
}

fn max_abs_diff(ours: &[f32], reference: &[Vec<f64>]) -> f64 {
    let reference: Vec<f64> = reference.concat();
    assert_eq!(ours.len(), reference.len(), "logit counts differ");
    ours.iter()
        .zip(&reference)
        .map(|(&a, b)| (f64::from(a) - b).abs())
        .fold(0.0, f64::max)
}

fn max_abs(values: &[f32]) -> f64 {
    values
        .iter()
        .map(|v| f64::from(v.abs()))
        .fold(0.0, f64::max)
}

/// A feature of the reference, and how to take it out.
type Knockout = (&'static str, fn(&mut Reference));

/// Our logits at every position against the reference's; then each knocked-out feature
/// must move the reference far from ours.
fn check_against_reference(spec: &Spec, name: &str, knockouts: &[Knockout]) {
    let path = write_model(spec, name);
    let model = Model::load(&path).expect("load the tiny model");
    let weights = Weights::read(&path);
    let reference = Reference::new(spec);
    let tokens = prompt(spec.seed);
    let ours = model
        .forward(&mut model.new_cache(), &tokens, Logits::All)
        .expect("forward");
    let (tolerance, knockouts) = if reference.quantized_activations {
        let exact: Knockout = ("8-bit activations", |r| r.quantized_activations = false);
        (Q8_0_TOLERANCE, [&[exact], knockouts].concat())
    } else {
        (F32_TOLERANCE, knockouts.to_vec())
    };
    let expected = reference.logits(&weights, &tokens);
    let diff = max_abs_diff(&ours, &expected);
    eprintln!(
        "{name}: max |ours - reference| = {diff:.2e} (tolerance {tolerance:.0e}, max |logit| {:.2})",
        max_abs(&ours)
    );
    // Top-k routing is discontinuous: where two experts nearly tie, rounding the router's
    // 8-bit input one way or the other (our f32 activations against the reference's f64)
    // can pick the other expert. So with experts and 8-bit activations one position in
    // eight may differ, by no more than the exact-activation bound; the rest must match.
    let routed = reference.layers.iter().any(|l| l.moe);
    if routed && reference.quantized_activations {
        let per_position: Vec<f64> = (0..expected.len())
            .map(|p| max_abs_diff(&ours[p * VOCAB..(p + 1) * VOCAB], &expected[p..p + 1]))
            .collect();
        let swapped = per_position.iter().filter(|&&d| d > tolerance).count();
        let bound = Q8_0_EXACT_RELATIVE_TOLERANCE * max_abs(&ours);
        assert!(
            swapped <= per_position.len() / 8 && diff <= bound,
            "{name}: {swapped} of {} positions differ by more than {tolerance:.0e} \
             (largest {diff:.2e}, bound {bound:.2e})",
            per_position.len()
        );
    } else {
        assert!(
            diff <= tolerance,
            "{name}: logits differ by {diff:.2e} > {tolerance:.0e}"
        );
    }
    for (feature, knock_out) in knockouts {
        let mut without = reference.clone();
        knock_out(&mut without);
        let moved = max_abs_diff(&ours, &without.logits(&weights, &tokens));
        eprintln!("{name}: the reference without {feature} is {moved:.2e} away");
        assert!(
            moved > 10.0 * tolerance,
            "{name}: taking {feature} out of the reference moves it only {moved:.2e} from ours, \
             so this test could not tell whether we implement it"
        );
        // Only without experts, which a rounded router input can swap (above).
        if reference.quantized_activations && !without.quantized_activations && !routed {
            let bound = Q8_0_EXACT_RELATIVE_TOLERANCE * max_abs(&ours);
            assert!(
                moved <= bound,
                "{name}: 8-bit activations cost {moved:.2e} > {bound:.2e}"
            );
        }
    }
}

fn each_layer(reference: &mut Reference, change: impl Fn(&mut RefLayer)) {
    reference.layers.iter_mut().for_each(change);
}

fn swap_rope_pairing(r: &mut Reference) {
    each_layer(r, |l| {
        if let Some(rope) = &mut l.rope {
            rope.interleaved = !rope.interleaved;
        }
    });
}

#[test]
fn llama_matches_reference() {
    check_against_reference(
        &Spec::llama(),
        "llama",
        &[
            ("adjacent-pair RoPE", swap_rope_pairing),
            ("partial RoPE", |r| {
                let hd = r.spec.head_dim;
                each_layer(r, |l| l.rope.as_mut().expect("rope").dims = hd);
            }),
        ],
    );
}

#[test]
fn qwen2_matches_reference() {
    check_against_reference(
        &Spec::qwen2(),
        "qwen2",
        &[
            ("QKV biases", |r| r.spec.qkv_bias = false),
            ("NeoX RoPE", swap_rope_pairing),
        ],
    );
}

#[test]
fn qwen3_with_head_dim_not_d_over_heads_matches_reference() {
    let spec = Spec::qwen3();
    assert_ne!(spec.head_dim, spec.d_model / spec.n_heads);
    check_against_reference(
        &spec,
        "qwen3",
        &[
            ("QK-norm", |r| r.spec.qk_rms_norm = false),
            ("NeoX RoPE", swap_rope_pairing),
        ],
    );
}

#[test]
fn gemma3_local_and_global_layers_match_reference() {
    let spec = Spec::gemma3();
    assert!(spec.n_layers > 6 && spec.gemma.as_ref().is_some_and(|g| g.window < PROMPT_LEN));
    check_against_reference(
        &spec,
        "gemma3",
        &[
            ("the sliding window", |r| {
                each_layer(r, |l| l.mask = RefMask::Causal)
            }),
            ("the local RoPE base", |r| {
                let base = f64::from(r.spec.rope_base);
                each_layer(r, |l| l.rope.as_mut().expect("rope").base = base);
            }),
            ("the global RoPE scaling", |r| {
                each_layer(r, |l| l.rope.as_mut().expect("rope").position_scale = 1.0);
            }),
            ("sandwich norms", |r| r.spec.sandwich_norms = false),
            ("GELU-tanh", |r| r.spec.gelu = false),
            ("the embedding scale", |r| r.spec.scale_embeddings = false),
            ("QK-norm", |r| r.spec.qk_rms_norm = false),
        ],
    );
}

const LLAMA4_KNOCKOUTS: [Knockout; 6] = [
    ("chunked attention", |r| {
        each_layer(r, |l| l.mask = RefMask::Causal)
    }),
    ("temperature tuning", |r| {
        each_layer(r, |l| l.temperature = None)
    }),
    ("L2 QK-norm", |r| each_layer(r, |l| l.l2_qk_norm = false)),
    ("NoPE layers", |r| {
        let rope = r.layers[0].rope.clone();
        each_layer(r, |l| l.rope = rope.clone());
    }),
    ("top-k routing", |r| {
        let moe = r.moe.as_mut().expect("moe");
        moe.n_used = r.spec.llama4.as_ref().expect("llama4").moe.n_experts;
    }),
    ("gating the expert input", |r| {
        r.moe.as_mut().expect("moe").gate_input = false
    }),
];

#[test]
fn llama4_top2_with_shared_expert_matches_reference() {
    let spec = Spec::llama4();
    let l = spec.llama4.as_ref().expect("llama4");
    assert!(l.chunk < PROMPT_LEN && l.moe.n_used == 2 && l.moe.shared_ffn.is_some());
    let mut knockouts = LLAMA4_KNOCKOUTS.to_vec();
    knockouts.push(("the shared expert", |r| {
        r.moe.as_mut().expect("moe").shared = false
    }));
    check_against_reference(&spec, "llama4-top2", &knockouts);
}

#[test]
fn llama4_top1_without_shared_expert_matches_reference() {
    let mut spec = Spec::llama4();
    let l = spec.llama4.as_mut().expect("llama4");
    l.moe.n_used = 1;
    l.moe.shared_ffn = None;
    spec.seed = 6;
    check_against_reference(&spec, "llama4-top1", &LLAMA4_KNOCKOUTS);
}

#[test]
fn llama_q8_0_matches_reference() {
    check_against_reference(&Spec::llama().q8_0(), "llama-q8_0", &[]);
}

#[test]
fn llama4_q8_0_experts_match_reference() {
    check_against_reference(&Spec::llama4().q8_0(), "llama4-q8_0", &[]);
}

// ---------------------------------------------------------------------------------------
// Decode against prefill
// ---------------------------------------------------------------------------------------

fn max_abs_diff_f32(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "logit counts differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

/// The prompt in one call, token by token, and in two chunks must give the same logits;
/// `Logits::From` and `Logits::Last` must be the tails of `Logits::All`.
fn check_decode_equals_prefill(spec: &Spec, name: &str) {
    let model = Model::load(&write_model(spec, name)).expect("load the tiny model");
    let tokens = prompt(spec.seed + 100);
    let prefill = model
        .forward(&mut model.new_cache(), &tokens, Logits::All)
        .expect("prefill");

    let mut cache = model.new_cache();
    let decoded: Vec<f32> = tokens
        .iter()
        .flat_map(|&t| {
            model
                .forward(&mut cache, &[t], Logits::Last)
                .expect("decode")
        })
        .collect();
    assert_eq!(cache.len(), tokens.len());
    let decode_diff = max_abs_diff_f32(&prefill, &decoded);

    // 7 + 9: the split falls inside Llama 4's chunks of 4 and Gemma's windows of 3.
    let mut cache = model.new_cache();
    let mut chunked = model
        .forward(&mut cache, &tokens[..7], Logits::All)
        .expect("chunk 1");
    chunked.extend(
        model
            .forward(&mut cache, &tokens[7..], Logits::All)
            .expect("chunk 2"),
    );
    let chunk_diff = max_abs_diff_f32(&prefill, &chunked);

    let from = model
        .forward(&mut model.new_cache(), &tokens, Logits::From(10))
        .expect("from");
    let last = model
        .forward(&mut model.new_cache(), &tokens, Logits::Last)
        .expect("last");
    assert_eq!(from, prefill[10 * VOCAB..], "{name}: Logits::From(10)");
    assert_eq!(
        last,
        prefill[(PROMPT_LEN - 1) * VOCAB..],
        "{name}: Logits::Last"
    );

    eprintln!("{name}: decode {decode_diff:.2e}, two chunks {chunk_diff:.2e} from prefill");
    assert!(
        decode_diff <= DECODE_TOLERANCE,
        "{name}: decode differs by {decode_diff:.2e}"
    );
    assert!(
        chunk_diff <= DECODE_TOLERANCE,
        "{name}: chunked prefill differs by {chunk_diff:.2e}"
    );
}

#[test]
fn llama_decode_equals_prefill() {
    check_decode_equals_prefill(&Spec::llama(), "llama-decode");
}

#[test]
fn qwen2_decode_equals_prefill() {
    check_decode_equals_prefill(&Spec::qwen2(), "qwen2-decode");
}

#[test]
fn qwen3_decode_equals_prefill() {
    check_decode_equals_prefill(&Spec::qwen3(), "qwen3-decode");
}

#[test]
fn gemma3_decode_equals_prefill() {
    check_decode_equals_prefill(&Spec::gemma3(), "gemma3-decode");
}

#[test]
fn llama4_decode_equals_prefill() {
    check_decode_equals_prefill(&Spec::llama4(), "llama4-decode");
}

#[test]
fn llama4_q8_0_decode_equals_prefill() {
    check_decode_equals_prefill(&Spec::llama4().q8_0(), "llama4-q8_0-decode");
}

/// The cache starts with room for 256 positions; growing it must keep what it holds.
#[test]
fn decode_across_kv_cache_growth_equals_prefill() {
    let spec = Spec {
        context_length: 600,
        ..Spec::llama()
    };
    let model = Model::load(&write_model(&spec, "kv-growth")).expect("load the tiny model");
    let mut rng = StdRng::seed_from_u64(7);
    let tokens: Vec<u32> = (0..300)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect();
    let prefill = model
        .forward(&mut model.new_cache(), &tokens, Logits::All)
        .expect("prefill");
    let mut cache = model.new_cache();
    let mut pieces = model
        .forward(&mut cache, &tokens[..200], Logits::All)
        .expect("first chunk");
    // This chunk crosses position 256 and makes the cache grow.
    pieces.extend(
        model
            .forward(&mut cache, &tokens[200..270], Logits::All)
            .expect("second chunk"),
    );
    for &t in &tokens[270..] {
        pieces.extend(
            model
                .forward(&mut cache, &[t], Logits::Last)
                .expect("decode"),
        );
    }
    let diff = max_abs_diff_f32(&prefill, &pieces);
    eprintln!("kv-growth: {diff:.2e} from prefill");
    assert!(diff <= DECODE_TOLERANCE, "after the cache grew: {diff:.2e}");
}
