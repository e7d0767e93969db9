//! Training-free MLA conversion of a pretrained GQA model: the key and value projections of
//! every layer cut to a rank-r latent by SVD. On tiny synthetic models: the model's new
//! weight API, latent form = replaced-weights form, full rank = unchanged, and bad input.
//! On SmolLM2 (a real-asset test: a missing asset fails with the fetch command to run): the
//! next-token KL against the original at several ranks, printed as a table.

mod common;
mod mechanisms;

use common::{write_model, Spec, VOCAB};
use kernels::assets;
use kernels::perplexity::log_sum_exp;
use kernels::trainable::mla::{
    apply_kv_rank, convert_model_kv, factorize_model_kv, KvFactorization,
};
use kernels::{Logits, Model, WeightFormat};
use mechanisms::{assert_close, random_values};

fn tiny_model(spec: &Spec, name: &str, format: WeightFormat) -> Model {
    let file = write_model(spec, name);
    Model::load_with(&file, format).unwrap()
}

fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    model
        .forward(&mut model.new_cache(), tokens, Logits::All)
        .unwrap()
}

/// Mean over positions of KL(p ‖ q) between next-token distributions, in nats.
fn mean_kl(p_logits: &[f32], q_logits: &[f32], vocab: usize) -> f64 {
    let rows = p_logits.len() / vocab;
    let total: f64 = p_logits
        .chunks_exact(vocab)
        .zip(q_logits.chunks_exact(vocab))
        .map(|(p, q)| {
            let (p_norm, q_norm) = (log_sum_exp(p), log_sum_exp(q));
            p.iter()
                .zip(q)
                .map(|(&lp, &lq)| {
                    let log_p = f64::from(lp) - p_norm;
                    log_p.exp() * (log_p - (f64::from(lq) - q_norm))
                })
                .sum::<f64>()
        })
        .sum();
    total / rows as f64
}

fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

#[test]
fn kv_projection_reads_back_what_was_set_and_quantized_weights_dequantize() {
    let spec = Spec::llama().q8_0();
    let quantized = tiny_model(&spec, "mla_kv_q8", WeightFormat::AsStored);
    let dequantized = tiny_model(&spec, "mla_kv_q8_f32", WeightFormat::F32);
    for layer in 0..spec.n_layers {
        let (k_q, v_q) = quantized.kv_projection_f32(layer).unwrap();
        let (k_f, v_f) = dequantized.kv_projection_f32(layer).unwrap();
        assert_eq!(
            (k_q.len(), v_q.len()),
            (spec.kv_dim() * spec.d_model, spec.kv_dim() * spec.d_model)
        );
        assert_eq!(
            (k_q, v_q),
            (k_f, v_f),
            "layer {layer}: our and candle's dequantization"
        );
    }
    let mut model = dequantized;
    let w_k: Vec<f32> = random_values(spec.kv_dim() * spec.d_model, 0.3, 1);
    let w_v: Vec<f32> = random_values(spec.kv_dim() * spec.d_model, 0.3, 2);
    model
        .set_kv_projection(1, w_k.clone(), w_v.clone())
        .unwrap();
    assert_eq!(model.kv_projection_f32(1).unwrap(), (w_k, w_v));
}

#[test]
fn latent_form_equals_the_replaced_weights_on_one_layer() {
    let spec = Spec::llama();
    let mut model = tiny_model(&spec, "mla_latent", WeightFormat::F32);
    let factors = KvFactorization::of_layer(&model, 0).unwrap();
    assert_eq!(factors.max_rank(), (2 * spec.kv_dim()).min(spec.d_model));
    let latent = factors.latent_kv(5).unwrap();
    let (w_k, w_v) = latent.projection_weights();
    model.set_kv_projection(0, w_k, w_v).unwrap();
    let (w_k, w_v) = model.kv_projection_f32(0).unwrap();

    let rows = 7;
    let hidden = random_values(rows * spec.d_model, 1.0, 3);
    let (keys, values) = latent
        .keys_values(&latent.latents(&hidden).unwrap())
        .unwrap();
    assert_eq!(keys.len(), rows * spec.kv_dim());
    let apply = |w: &[f32]| -> Vec<f64> {
        hidden
            .chunks_exact(spec.d_model)
            .flat_map(|h| {
                w.chunks_exact(spec.d_model)
                    .map(|row| {
                        row.iter()
                            .zip(h)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    assert_close(
        &keys,
        &apply(&w_k),
        1e-6,
        "keys: latent form vs model weights",
    );
    assert_close(
        &values,
        &apply(&w_v),
        1e-6,
        "values: latent form vs model weights",
    );
}

#[test]
fn full_rank_conversion_leaves_the_model_unchanged_and_low_rank_does_not() {
    for spec in [Spec::llama(), Spec::qwen2()] {
        let tokens: Vec<u32> = (0..20).map(|i| (i * 37 + 5) % 256).collect();
        let mut model = tiny_model(&spec, &format!("mla_full_{}", spec.arch), WeightFormat::F32);
        let original = logits(&model, &tokens);
        let factors = factorize_model_kv(&model).unwrap();
        let full = factors[0].max_rank();
        let conversion = apply_kv_rank(&mut model, &factors, full).unwrap();
        assert_eq!(
            conversion.kv_bytes_per_token_before,
            spec.n_layers * 2 * spec.kv_dim() * 4
        );
        assert_eq!(
            conversion.kv_bytes_per_token_latent,
            spec.n_layers * full * 4
        );
        let kl_full = mean_kl(&original, &logits(&model, &tokens), VOCAB);
        assert!(
            kl_full < 1e-9,
            "{}: full rank moved the output by KL {kl_full:e}",
            spec.arch
        );
        assert_close(
            &to_f64(&logits(&model, &tokens)),
            &to_f64(&original),
            1e-4,
            "full-rank logits",
        );

        convert_model_kv(&mut model, 2).unwrap();
        let kl_low = mean_kl(&original, &logits(&model, &tokens), VOCAB);
        assert!(
            kl_low > 1e-4,
            "{}: rank 2 changed nothing (KL {kl_low:e})",
            spec.arch
        );
    }
}

#[test]
fn bad_ranks_layers_and_weights_are_rejected() {
    let spec = Spec::llama();
    let mut model = tiny_model(&spec, "mla_bad", WeightFormat::F32);
    let max = (2 * spec.kv_dim()).min(spec.d_model);
    for rank in [0, max + 1] {
        let err = convert_model_kv(&mut model, rank).unwrap_err().to_string();
        assert!(
            err.contains(&format!("rank {rank} must be between 1 and {max}")),
            "{err}"
        );
    }
    let err = model
        .kv_projection_f32(spec.n_layers)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = model
        .set_kv_projection(0, vec![0.0; 3], vec![0.0; spec.kv_dim() * spec.d_model])
        .unwrap_err()
        .to_string();
    assert!(err.contains("keys projection needs"), "{err}");
    let err = apply_kv_rank(&mut model, &[], 1).unwrap_err().to_string();
    assert!(err.contains("0 factorizations"), "{err}");
}

/// Real-asset test: SmolLM2-135M (weights dequantized to f32, so that only the conversion
/// differs), ~512 tokens of Pride and Prejudice, every layer converted at each rank.
#[test]
fn smollm2_next_token_kl_falls_as_the_latent_rank_grows() {
    let path = assets::SMOLLM2.require().unwrap_or_else(|e| panic!("{e}"));
    let novels = assets::AUSTEN.require().unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(novels.join("pride-and-prejudice.txt")).unwrap();
    let start = text.find("It is a truth universally acknowledged").unwrap();
    let mut model = Model::load_with(&path, WeightFormat::F32).unwrap();
    let mut tokens = model
        .tokenizer
        .encode(&text[start..start + 4000], false)
        .unwrap();
    tokens.truncate(512);
    assert_eq!(tokens.len(), 512);
    let vocab = model.config.vocab_size;

    let original = logits(&model, &tokens);
    let started = std::time::Instant::now();
    let factors = factorize_model_kv(&model).unwrap();
    println!(
        "SVD of {} layers' [W_K; W_V]: {:.1} s",
        factors.len(),
        started.elapsed().as_secs_f64()
    );
    let full = factors[0].max_rank();
    assert_eq!(
        full,
        2 * model.config.kv_dim(),
        "SmolLM2 stacks 384 K/V rows over 576 inputs"
    );
    println!("rank  latent KV bytes/token  full KV bytes/token  weight error  mean KL (nats)");
    let mut kls = Vec::new();
    for rank in [32, 64, 128, 192, full] {
        let conversion = apply_kv_rank(&mut model, &factors, rank).unwrap();
        let kl = mean_kl(&original, &logits(&model, &tokens), vocab);
        // ‖W − W_r‖ / ‖W‖ over the layers' stacked K/V weights, by Eckart–Young.
        let weight_error = factors
            .iter()
            .map(|f| {
                let energy = |s: &[f64]| s.iter().fold(0.0, |sum, v| sum + v * v);
                let sigma = f.singular_values();
                (energy(&sigma[rank..]) / energy(sigma)).sqrt()
            })
            .sum::<f64>()
            / factors.len() as f64;
        println!(
            "{rank:>4}  {:>21}  {:>19}  {weight_error:>12.4}  {kl:.3e}",
            conversion.kv_bytes_per_token_latent, conversion.kv_bytes_per_token_before
        );
        kls.push((rank, kl));
    }
    let (_, kl_full) = *kls.last().unwrap();
    assert!(
        kl_full < 1e-6,
        "full rank must reproduce the model, KL {kl_full:e}"
    );
    assert!(
        kls.windows(2).all(|w| w[1].1 < w[0].1),
        "KL must fall as the rank grows: {kls:?}"
    );
}
