//! The transformer: gradients reach every parameter, positions never see the future, the
//! kernel's mask is what attention obeys, checkpoints round-trip, and training learns.

use candle_core::{Device, Tensor};
use kernels::trainable::missing_gradients;
use recsys::data::{Dataset, Item, ItemMeta, Split};
use recsys::eval::{evaluate, Popularity};
use recsys::model::{train, Checkpoint, KernelSource, SasRec, SasRecConfig, TrainConfig, EXACT};

/// Soft-capped scores and an ALiBi-like bias on one head: every score operator in play.
const CAPPED: &str = "(kernel capped
  (param cap float 5.0 (1.0 100.0))
  (mask causal)
  (score (* cap (tanh (/ (* s scale) cap))))
  (heads (list 1) (mask causal) (score (- (* s scale) (* 0.1 (- q kv))))))";

/// Each position sees itself and the one before.
const WINDOW_2: &str = "(kernel w2
  (param W int 2 (1 16))
  (mask (and causal (> kv (- q W)))))";

fn config(n_items: usize) -> SasRecConfig {
    SasRecConfig {
        n_items,
        max_len: 8,
        d_model: 16,
        n_blocks: 2,
        n_heads: 2,
        d_ff: 32,
        dropout: 0.0,
    }
}

fn tokens(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

fn every_parameter_receives_a_gradient(kernel: &str) {
    let model = SasRec::new(config(12), kernel, 3).unwrap();
    let input = tokens(&[&[1, 2, 3, 4, 5], &[6, 7, 8, 0, 0]]);
    let targets = tokens(&[&[2, 3, 4, 5, 6], &[7, 8, 9, 0, 0]]);
    let weights = Tensor::from_vec(
        vec![1f32, 1., 1., 1., 1., 1., 1., 1., 0., 0.],
        (2, 5),
        &Device::Cpu,
    )
    .unwrap();
    let loss = model.loss(&input, &targets, &weights, None).unwrap();
    let grads = loss.backward().unwrap();
    let missing = missing_gradients(model.params(), &grads).unwrap();
    assert!(missing.is_empty(), "no gradient reaches {missing:?}");
    assert!(model.params().named().len() > 20);
}

#[test]
fn every_parameter_receives_a_gradient_with_the_exact_kernel() {
    every_parameter_receives_a_gradient(EXACT);
}

#[test]
fn every_parameter_receives_a_gradient_with_score_modifiers() {
    every_parameter_receives_a_gradient(CAPPED);
}

/// The loss, which scores only weighted positions, equals the weighted mean cross-entropy of
/// the full per-position logits, with and without a per-position restriction of the next item.
#[test]
fn the_loss_is_the_weighted_cross_entropy_of_every_positions_logits() {
    let mut model = SasRec::new(config(12), EXACT, 9).unwrap();
    let input = tokens(&[&[1, 2, 3, 4, 5], &[6, 7, 8, 0, 0]]);
    let targets = tokens(&[&[2, 3, 4, 5, 6], &[7, 8, 9, 0, 0]]);
    let w = [0f32, 0., 1., 1., 1., 1., 1., 1., 0., 0.];
    let weights = Tensor::from_vec(w.to_vec(), (2, 5), &Device::Cpu).unwrap();
    for restricted in [false, true] {
        if restricted {
            model.restrict_next(|p| p % 3..12).unwrap();
        }
        let loss: f32 = model
            .loss(&input, &targets, &weights, None)
            .unwrap()
            .to_scalar()
            .unwrap();
        let logits: Vec<Vec<Vec<f32>>> = model.logits(&input, None).unwrap().to_vec3().unwrap();
        let target_rows: Vec<Vec<u32>> = targets.to_vec2().unwrap();
        let mut slow = 0f64;
        for (i, &weight) in w.iter().enumerate() {
            let (b, p) = (i / 5, i % 5);
            let row = &logits[b][p];
            let max = row.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
            let log_z = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            slow += weight as f64 * (log_z - row[target_rows[b][p] as usize] as f64);
        }
        slow /= w.iter().sum::<f32>() as f64;
        assert!(
            (loss as f64 - slow).abs() < 1e-4,
            "restricted {restricted}: {loss} vs {slow}"
        );
    }
    let nothing = Tensor::zeros((2, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    let zero: f32 = model
        .loss(&input, &targets, &nothing, None)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(zero, 0.0);
}

/// Per-position scores `[t][n_items]` of one sequence.
fn position_scores(model: &SasRec, items: &[u32]) -> Vec<Vec<f32>> {
    model
        .logits(&tokens(&[items]), None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

fn assert_rows_equal(a: &[Vec<f32>], b: &[Vec<f32>], rows: std::ops::Range<usize>) {
    for r in rows {
        for (x, y) in a[r].iter().zip(&b[r]) {
            assert!((x - y).abs() < 1e-5, "position {r} moved: {x} vs {y}");
        }
    }
}

#[test]
fn later_items_do_not_change_earlier_positions() {
    for kernel in [EXACT, CAPPED, WINDOW_2] {
        let model = SasRec::new(config(12), kernel, 5).unwrap();
        let a = position_scores(&model, &[1, 2, 3, 4, 5, 6]);
        let b = position_scores(&model, &[1, 2, 3, 9, 10, 11]);
        assert_rows_equal(&a, &b, 0..3);
        let moved = a[3].iter().zip(&b[3]).any(|(x, y)| (x - y).abs() > 1e-4);
        assert!(moved, "position 3's own item changed, so its scores must");
    }
}

#[test]
fn attention_obeys_the_kernel_mask() {
    // Two layers of a window of 2 let position 3 see positions 1..=3, never 0.
    let window = SasRec::new(config(12), WINDOW_2, 7).unwrap();
    let a = position_scores(&window, &[1, 2, 3, 4, 5]);
    let b = position_scores(&window, &[9, 2, 3, 4, 5]);
    assert_rows_equal(&a, &b, 3..5);
    // Exact attention at the same weights does see position 0.
    let exact = SasRec::new(config(12), EXACT, 7).unwrap();
    let a = position_scores(&exact, &[1, 2, 3, 4, 5]);
    let b = position_scores(&exact, &[9, 2, 3, 4, 5]);
    assert!(a[4].iter().zip(&b[4]).any(|(x, y)| (x - y).abs() > 1e-5));
}

#[test]
fn kernels_the_recommender_cannot_train_are_refused_by_name() {
    let err = SasRec::new(config(12), "(kernel l (mechanism linear (chunk 64)))", 1).unwrap_err();
    assert!(err.to_string().contains("mechanism `linear`"), "{err}");
    let err = SasRec::new(config(12), "(kernel broken (mask causal", 1).unwrap_err();
    assert!(err.to_string().contains("AKL syntax"), "{err}");
}

/// Users who walk the catalogue in steps of one from different starts: the next item is
/// always the current one plus one, which a sequence model can learn and popularity cannot.
fn walking_users(n_items: u32, n_users: u32, len: u32) -> Dataset {
    Dataset {
        name: "walk".into(),
        items: (0..n_items)
            .map(|i| Item {
                raw_id: format!("i{i}"),
                meta: ItemMeta {
                    title: format!("Item {i}"),
                    ..Default::default()
                },
            })
            .collect(),
        users: (0..n_users).map(|u| format!("u{u}")).collect(),
        histories: (0..n_users)
            .map(|u| (0..len).map(|step| (u * 7 + step) % n_items).collect())
            .collect(),
    }
}

#[test]
fn training_learns_a_sequential_pattern_and_the_checkpoint_round_trips() {
    let data = walking_users(24, 48, 12);
    let split = Split::leave_one_out(&data);
    let model = SasRec::new(
        SasRecConfig {
            dropout: 0.1,
            ..config(24)
        },
        EXACT,
        11,
    )
    .unwrap();
    let report = train(
        &model,
        &split,
        &TrainConfig {
            epochs: 40,
            batch_size: 16,
            learning_rate: 5e-3,
            patience: 40,
            ..TrainConfig::default()
        },
        |_, _| Ok(()),
    )
    .unwrap();
    let ours = evaluate(&model, &split.test).unwrap().seen_filtered;
    let popular = evaluate(&Popularity::fit(&split.train, 24), &split.test)
        .unwrap()
        .seen_filtered;
    assert!(ours.hr_10 > 0.9, "the walk is easy to learn: {ours:?}");
    assert!(
        ours.ndcg_10 > popular.ndcg_10 + 0.3,
        "{ours:?} vs {popular:?}"
    );
    assert!(report.best_valid.ndcg_10 > 0.5);

    let dir = std::env::temp_dir().join(format!("recsys-ckpt-{}", std::process::id()));
    let histories: Vec<&[u32]> = split.test.iter().map(|c| c.history.as_slice()).collect();
    let before = model.score_histories(&histories).unwrap();
    Checkpoint {
        model,
        dataset: data.clone(),
        report: Some(report),
        kernel_source: None,
    }
    .save(&dir)
    .unwrap();
    let loaded = Checkpoint::load(&dir).unwrap();
    assert_eq!(loaded.dataset, data);
    assert_eq!(loaded.model.score_histories(&histories).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_with_missing_weights_is_refused() {
    let dir = std::env::temp_dir().join(format!("recsys-bad-ckpt-{}", std::process::id()));
    let data = walking_users(12, 4, 5);
    let model = SasRec::new(config(12), EXACT, 1).unwrap();
    Checkpoint {
        model,
        dataset: data,
        report: None,
        kernel_source: None,
    }
    .save(&dir)
    .unwrap();
    std::fs::write(dir.join("model.safetensors"), b"not safetensors").unwrap();
    let err = Checkpoint::load(&dir).unwrap_err();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn set_kernel_swaps_the_attention_rule_and_keeps_the_weights() {
    let mut model = SasRec::new(config(12), EXACT, 7).unwrap();
    let exact = model.score_histories(&[&[1, 2, 3, 4, 5]]).unwrap();
    model.set_kernel(WINDOW_2).unwrap();
    assert!(model.kernel.text.contains("w2"));
    let windowed = model.score_histories(&[&[1, 2, 3, 4, 5]]).unwrap();
    assert_ne!(
        exact, windowed,
        "the last position no longer sees the first items"
    );
    // What the window hides cannot matter: the first item is out of reach of the last.
    let other_start = model.score_histories(&[&[9, 2, 3, 4, 5]]).unwrap();
    assert_eq!(windowed, other_start);
    // A one-item history is the same under both rules (a position always sees itself).
    let short = model.score_histories(&[&[3]]).unwrap();
    model.set_kernel(EXACT).unwrap();
    assert_eq!(model.score_histories(&[&[3]]).unwrap(), short);
    assert!(model.set_kernel("(kernel nope (mask (< kv q)").is_err());
}

#[test]
fn a_time_budget_stops_training_after_the_epoch_it_runs_out_in() {
    let data = walking_users(24, 16, 8);
    let split = Split::leave_one_out(&data);
    let model = SasRec::new(config(24), EXACT, 3).unwrap();
    let budget = TrainConfig {
        epochs: 50,
        batch_size: 16,
        patience: 50,
        max_seconds: Some(0.0),
        ..TrainConfig::default()
    };
    let report = train(&model, &split, &budget, |_, _| Ok(())).unwrap();
    assert_eq!(report.epochs.len(), 1);
}

/// Serving's `Inference` against the candle forward pass, which trains: every kernel
/// feature (mask, score terms, two heads), histories shorter than, equal to and longer than
/// `max_len`.
#[test]
fn serving_inference_scores_as_the_trained_model() {
    let histories: [&[u32]; 4] = [
        &[3],
        &[1, 5, 2, 9, 4],
        &[1, 2, 3, 4, 5, 6, 7, 8],
        &[9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11],
    ];
    let mut by_kernel = Vec::new();
    for (kernel, seed) in [(EXACT, 1), (WINDOW_2, 1), (CAPPED, 1), (EXACT, 2)] {
        let model = SasRec::new(config(12), kernel, seed).unwrap();
        let inference = model.inference().unwrap();
        let reference = model.score_histories(&histories).unwrap();
        for (history, want) in histories.iter().zip(&reference) {
            let got = inference.scores(history).unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-4 * scale + 1e-7,
                    "{kernel}: {g} vs {w} for {history:?}"
                );
            }
        }
        by_kernel.push(inference.scores(histories[3]).unwrap());
    }
    // The mask and the score terms change the scores: the comparison above can see them.
    assert_ne!(by_kernel[0], by_kernel[1]);
    assert_ne!(by_kernel[0], by_kernel[2]);
    let bad = SasRec::new(config(12), EXACT, 1)
        .unwrap()
        .inference()
        .unwrap();
    assert!(bad.scores(&[]).unwrap_err().to_string().contains("empty"));
    assert!(bad.scores(&[1, 12]).unwrap_err().to_string().contains("12"));
}

#[test]
fn a_checkpoint_records_its_kernel_hash_and_program_and_old_ones_still_load() {
    let dir = std::env::temp_dir().join(format!("recsys-kernel-id-{}", std::process::id()));
    let source = KernelSource {
        program_id: 17,
        campaign: "recsys".into(),
    };
    let model = SasRec::new(config(12), WINDOW_2, 1).unwrap();
    let hash = model.kernel.hash.clone();
    assert_eq!(
        hash,
        kernels::akl::parse(WINDOW_2).unwrap().canonical_hash(),
        "the hash is the database's: SHA-256 of the canonical text"
    );
    Checkpoint {
        model,
        dataset: walking_users(12, 4, 5),
        report: None,
        kernel_source: Some(source.clone()),
    }
    .save(&dir)
    .unwrap();
    let meta_path = dir.join("checkpoint.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    assert_eq!(meta["kernel_sha256"], hash.as_str());
    assert_eq!(meta["kernel_source"]["program_id"], 17);
    let loaded = Checkpoint::load(&dir).unwrap();
    assert_eq!(loaded.kernel_source, Some(source));
    assert_eq!(loaded.model.kernel.hash, hash);

    // A checkpoint written before the kernel's identity was recorded.
    let fields = meta.as_object_mut().unwrap();
    fields.remove("kernel_sha256");
    fields.remove("kernel_source");
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let old = Checkpoint::load(&dir).unwrap();
    assert_eq!(old.kernel_source, None);
    assert_eq!(old.model.kernel.hash, hash);

    // A recorded hash that its text does not have is refused.
    meta["kernel_sha256"] = "ab".repeat(32).into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let err = Checkpoint::load(&dir).unwrap_err().to_string();
    assert!(
        err.contains("kernel_sha256") && err.contains(&hash),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
