//! The cache under a keep policy: a layer whose kernel keeps only some keys drops the others
//! after each forward call, and the model's outputs stay those of a cache that keeps every
//! key (the keep policy only drops keys the mask never shows again). Also: the memory really
//! shrinks, programs without `keep` drop nothing, and Quest's page summaries kept with the
//! cache give what recomputing them gives.

mod common;

use std::sync::{Arc, Mutex, OnceLock};

use common::{write_model, ScratchFile, Spec, VOCAB};
use kernels::akl::{self, ModelShape};
use kernels::attention::{
    AttentionInput, AttentionKernel, CachePolicy, HeadMix, KeyRule, LayerAttention, NaiveAttention,
    PageSummary, RuleAttention, SinkWindow, TopKPages,
};
use kernels::{Logits, Model};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Logits of two f32 runs that differ only in summation order (tiles over held keys).
const TOLERANCE: f32 = 1e-4;

/// A two-layer Llama with four query heads on two KV heads, loaded once.
fn model() -> &'static Model {
    static MODEL: OnceLock<(ScratchFile, Model)> = OnceLock::new();
    &MODEL
        .get_or_init(|| {
            let spec = Spec {
                context_length: 4096,
                ..Spec::llama()
            };
            let file = write_model(&spec, "kv-keep");
            let model = Model::load(&file).expect("load the tiny model");
            (file, model)
        })
        .1
}

fn tokens(len: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| rng.random_range(0..VOCAB as u32))
        .collect()
}

/// The f64 oracle under a rule, on a cache that keeps every key.
#[derive(Debug)]
struct NaiveRule(Arc<dyn KeyRule>);

impl AttentionKernel for NaiveRule {
    fn name(&self) -> &str {
        "naive rule"
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        NaiveAttention.forward_rule(input, layer, self.0.as_ref(), None, out, None)
    }
}

/// Sinks plus a window, keeping `extra` more keys than the window shows.
fn sink_window(sinks: usize, window: usize, extra: usize) -> (RuleAttention, NaiveRule) {
    let rule = Arc::new(SinkWindow::new(sinks, window).unwrap());
    let keep = Arc::new(SinkWindow::new(sinks, window + extra).unwrap());
    let kernel = RuleAttention::new("sink window", rule.clone(), None)
        .unwrap()
        .with_keep(keep)
        .unwrap();
    (kernel, NaiveRule(rule))
}

/// Runs `tokens` in calls of the given sizes (cycled) and gathers every position's logits.
fn run_in_calls(
    kernels: &[Arc<dyn AttentionKernel>],
    tokens: &[u32],
    sizes: &[usize],
) -> (Vec<f32>, kernels::KvCache) {
    let model = model();
    let mut cache = model.new_cache();
    let mut logits = Vec::new();
    let mut start = 0;
    for &size in sizes.iter().cycle() {
        if start == tokens.len() {
            break;
        }
        let end = (start + size).min(tokens.len());
        logits.extend(
            model
                .forward_with(&mut cache, &tokens[start..end], Logits::All, kernels)
                .unwrap(),
        );
        start = end;
    }
    (logits, cache)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The positions `keep` keeps while the newest is `len - 1`.
fn kept(keep: &dyn KeyRule, len: usize) -> Vec<usize> {
    (0..len).filter(|&k| keep.allows(len - 1, k)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Decode token by token, and prefill in chunks, over a cache that drops keys: the
    /// logits are the oracle's over a cache that keeps them all, and the cache holds exactly
    /// the kept keys. One layer mixes two sink windows by head, so the cache keeps what
    /// either keeps.
    #[test]
    fn dropping_keys_changes_no_output(
        sinks in 0usize..4,
        window in 1usize..24,
        extra in 0usize..4,
        other in (0usize..3, 1usize..12),
        len in 1usize..72,
        chunk in 1usize..20,
        seed in 0u64..1000,
    ) {
        let (kernel, oracle) = sink_window(sinks, window, extra);
        let (other_kernel, other_oracle) = sink_window(other.0, other.1, 0);
        let (kernel, other_kernel) = (Arc::new(kernel), Arc::new(other_kernel));
        let mixed = HeadMix::new(vec![(0..1, kernel.clone() as _), (1..4, other_kernel.clone() as _)])
            .unwrap();
        let mixed_oracle = HeadMix::new(vec![
            (0..1, Arc::new(oracle) as _),
            (1..4, Arc::new(other_oracle) as _),
        ])
        .unwrap();
        let candidate: Vec<Arc<dyn AttentionKernel>> = vec![kernel.clone(), Arc::new(mixed)];
        let reference: Vec<Arc<dyn AttentionKernel>> =
            vec![Arc::new(sink_window(sinks, window, 0).1), Arc::new(mixed_oracle)];
        let tokens = tokens(len, seed);
        let (want, full) = run_in_calls(&reference, &tokens, &[len]);
        prop_assert_eq!(full.held_positions(0).unwrap(), (0..len).collect::<Vec<_>>());

        for sizes in [vec![1], vec![chunk, 1, 2 * chunk], vec![len]] {
            let (got, cache) = run_in_calls(&candidate, &tokens, &sizes);
            let diff = max_abs_diff(&want, &got);
            prop_assert!(diff <= TOLERANCE, "calls of {sizes:?}: {diff:.2e} from the oracle");
            let keep = kernel.cache_policy().keep.unwrap();
            let other_keep = other_kernel.cache_policy().keep.unwrap();
            prop_assert_eq!(cache.held_positions(0).unwrap(), kept(keep.as_ref(), len));
            let either: Vec<usize> = (0..len)
                .filter(|&k| keep.allows(len - 1, k) || other_keep.allows(len - 1, k))
                .collect();
            prop_assert_eq!(cache.held_positions(1).unwrap(), either);
            prop_assert_eq!(cache.len(), len);
        }
    }
}

/// One prefill and token-by-token decode over a dropping cache give the same logits.
#[test]
fn prefill_equals_decode_when_dropping() {
    let (kernel, _) = sink_window(3, 17, 0);
    let kernel: Arc<dyn AttentionKernel> = Arc::new(kernel);
    let kernels = vec![kernel; 2];
    let tokens = tokens(90, 5);
    let (prefill, _) = run_in_calls(&kernels, &tokens, &[90]);
    let (decode, cache) = run_in_calls(&kernels, &tokens, &[1]);
    let diff = max_abs_diff(&prefill, &decode);
    assert!(diff <= TOLERANCE, "decode is {diff:.2e} from prefill");
    assert_eq!(cache.held_positions(0).unwrap().len(), 3 + 17);
}

/// Bytes of one held row of keys and values, over every layer of `model`.
fn row_bytes(model: &Model) -> usize {
    let c = &model.config;
    c.n_layers() * 2 * c.n_kv_heads * c.head_dim * 4
}

/// A long decode under sinks and a window allocates about what it holds plus the incoming
/// tokens (a quarter more, to amortise growth), not the sequence length; exact attention
/// over the same tokens allocates the whole sequence.
#[test]
fn allocation_stays_bounded_by_the_kept_keys() {
    let (sinks, window, chunk, len) = (4, 700, 24, 3000);
    let model = model();
    let (kernel, _) = sink_window(sinks, window, 0);
    let kernel: Arc<dyn AttentionKernel> = Arc::new(kernel);
    let kernels = vec![kernel; 2];
    let tokens = tokens(len, 9);
    let mut cache = model.new_cache();
    let mut most = 0;
    for piece in tokens.chunks(chunk) {
        model
            .forward_with(&mut cache, piece, Logits::Last, &kernels)
            .unwrap();
        most = most.max(cache.bytes_allocated());
    }
    // Rows, and for each a position (8 bytes) that may have grown by doubling.
    let rows = (sinks + window + chunk) * 5 / 4 + 64;
    let bound = rows * row_bytes(model) + 2 * rows * 8 * 2;
    assert_eq!(cache.bytes_held(), (sinks + window) * row_bytes(model));
    assert!(
        most <= bound,
        "{most} bytes allocated at most, over the {bound} that {rows} rows take"
    );

    let exact = model.attention_kernels().to_vec();
    let mut full = model.new_cache();
    for piece in tokens.chunks(chunk) {
        model
            .forward_with(&mut full, piece, Logits::Last, &exact)
            .unwrap();
    }
    assert_eq!(full.bytes_held(), len * row_bytes(model));
    assert!(full.bytes_allocated() >= len * row_bytes(model));
}

/// AKL text for sinks and a window over `model()`, with or without its keep policy.
fn akl_sink_window(keep: bool) -> Vec<Arc<dyn AttentionKernel>> {
    let rule = "(or (< kv 2) (> kv (- q 20)))";
    let cache = if keep {
        format!("(cache (keep {rule}))")
    } else {
        "(cache all)".to_string()
    };
    let text = format!("(kernel sw (mask (and causal {rule})) {cache})");
    let checked = akl::parse_and_check(&text).unwrap();
    let model = model();
    akl::instantiate(
        &checked,
        &ModelShape::of(&model.config),
        model.config.attention_scale,
    )
    .unwrap()
    .kernels
}

#[test]
fn a_program_drops_keys_only_with_a_keep_policy() {
    let tokens = tokens(60, 3);
    let (all_logits, all) = run_in_calls(&akl_sink_window(false), &tokens, &[7, 1]);
    let (keep_logits, kept) = run_in_calls(&akl_sink_window(true), &tokens, &[7, 1]);
    for layer in 0..2 {
        assert_eq!(
            all.held_positions(layer).unwrap(),
            (0..60).collect::<Vec<_>>()
        );
        let want: Vec<usize> = (0..2).chain(40..60).collect();
        assert_eq!(kept.held_positions(layer).unwrap(), want);
    }
    assert_eq!(all.bytes_held(), 60 * row_bytes(model()));
    let diff = max_abs_diff(&all_logits, &keep_logits);
    assert!(
        diff <= TOLERANCE,
        "keeping fewer keys moved logits by {diff:.2e}"
    );
}

/// Kernels that read keys by position refuse a cache that dropped some, with a clear error,
/// and the failed call leaves the cache as it was.
#[test]
fn kernels_that_need_every_key_refuse_a_dropping_cache() {
    let tokens = tokens(40, 4);
    let kernels = akl_sink_window(true);
    let (_, mut cache) = run_in_calls(&kernels, &tokens[..30], &[30]);
    let quest: Arc<dyn AttentionKernel> =
        Arc::new(TopKPages::new(4, 2, PageSummary::MinMax).unwrap());
    let quest = vec![quest; 2];
    let error = model()
        .forward_with(&mut cache, &tokens[30..], Logits::Last, &quest)
        .unwrap_err()
        .to_string();
    assert!(error.contains("dropped keys"), "{error}");
    let rest = model()
        .forward_with(&mut cache, &tokens[30..], Logits::All, &kernels)
        .unwrap();
    let (whole, _) = run_in_calls(&kernels, &tokens, &[40]);
    let diff = max_abs_diff(&whole[30 * VOCAB..], &rest);
    assert!(diff <= TOLERANCE, "after a failed call: {diff:.2e}");
}

/// A dropping cache cannot go back to before the newest position of its last drop (a query
/// there may need a dropped key), but can go back to it.
#[test]
fn truncating_a_dropping_cache_is_refused_where_keys_are_gone() {
    let kernels = akl_sink_window(true);
    let tokens = tokens(50, 6);
    let (whole, mut cache) = run_in_calls(&kernels, &tokens, &[30, 10]);
    // Keys were last dropped when the newest position was 49.
    let error = cache.truncate(48).unwrap_err().to_string();
    assert!(error.contains("dropped"), "{error}");
    cache.truncate(49).unwrap();
    assert_eq!(cache.len(), 49);
    assert_eq!(cache.held_positions(0).unwrap().last(), Some(&48));
    let again = model()
        .forward_with(&mut cache, &tokens[49..], Logits::All, &kernels)
        .unwrap();
    let diff = max_abs_diff(&whole[49 * VOCAB..], &again);
    assert!(diff <= TOLERANCE, "after truncating: {diff:.2e}");

    // Without a keep policy, any length will do.
    let (_, mut full) = run_in_calls(&akl_sink_window(false), &tokens, &[30, 10]);
    full.truncate(3).unwrap();
    assert_eq!(full.held_positions(1).unwrap(), vec![0, 1, 2]);
}

/// Runs a kernel and records, per call, the keys and the pages the cache handed it
/// summarised. Unless `ask_cache`, it asks the cache for nothing: Quest then summarises
/// every page itself at every call.
#[derive(Debug)]
struct Spy {
    inner: Arc<dyn AttentionKernel>,
    ask_cache: bool,
    pages: Mutex<Vec<(usize, usize)>>,
}

impl Spy {
    fn new(inner: Arc<dyn AttentionKernel>, ask_cache: bool) -> Arc<Spy> {
        Arc::new(Spy {
            inner,
            ask_cache,
            pages: Mutex::new(Vec::new()),
        })
    }
}

impl AttentionKernel for Spy {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn cache_policy(&self) -> CachePolicy {
        if self.ask_cache {
            self.inner.cache_policy()
        } else {
            CachePolicy::default()
        }
    }

    fn forward(
        &self,
        input: &AttentionInput,
        layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        let summarised = input
            .page_summaries
            .iter()
            .flatten()
            .map(|store| store.pages())
            .min()
            .unwrap_or(0);
        self.pages.lock().unwrap().push((input.kv_len, summarised));
        self.inner.forward(input, layer, out)
    }
}

/// Quest and MoBA with their page summaries kept with the cache, through prefill in chunks
/// and decode, give bit for bit what summarising every page at every call gives.
#[test]
fn page_summaries_kept_with_the_cache_equal_recomputing() {
    let tokens = tokens(150, 8);
    for summary in [PageSummary::MinMax, PageSummary::Mean] {
        let quest: Arc<dyn AttentionKernel> = Arc::new(TopKPages::new(8, 3, summary).unwrap());
        let (spy, blind) = (
            Spy::new(quest.clone(), true),
            Spy::new(quest.clone(), false),
        );
        // Layer 1 mixes Quest with a sink window: the mix passes the summaries through, and
        // drops no key, as Quest keeps every key.
        let window: Arc<dyn AttentionKernel> = Arc::new(sink_window(1, 9, 0).0);
        let mix = |quest: Arc<Spy>| -> Arc<dyn AttentionKernel> {
            Arc::new(HeadMix::new(vec![(0..2, quest as _), (2..4, window.clone())]).unwrap())
        };
        let kept: Vec<Arc<dyn AttentionKernel>> = vec![quest.clone(), mix(spy.clone())];
        let recomputed: Vec<Arc<dyn AttentionKernel>> =
            vec![Spy::new(quest.clone(), false), mix(blind.clone())];
        let sizes = [37, 1, 1, 20, 1];
        let (got, _) = run_in_calls(&kept, &tokens, &sizes);
        let (want, _) = run_in_calls(&recomputed, &tokens, &sizes);
        let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "{summary:?}: {differ} logits differ");
        let calls = spy.pages.lock().unwrap();
        assert!(calls.len() > 10);
        for &(kv_len, pages) in calls.iter() {
            assert_eq!(
                pages,
                kv_len / 8,
                "{summary:?}: pages kept at {kv_len} keys"
            );
        }
        assert!(blind
            .pages
            .lock()
            .unwrap()
            .iter()
            .all(|&(_, pages)| pages == 0));
    }
}

/// A stand-in for attention that writes zeros but asks the cache for what `inner` asks:
/// the cache's bytes do not depend on what attention computes.
#[derive(Debug)]
struct Zeros(Arc<dyn AttentionKernel>);

impl AttentionKernel for Zeros {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn cache_policy(&self) -> CachePolicy {
        self.0.cache_policy()
    }

    fn forward(
        &self,
        input: &AttentionInput,
        _layer: &LayerAttention,
        out: &mut [f32],
    ) -> kernels::Result<()> {
        input.validate(out.len())?;
        out.fill(0.0);
        Ok(())
    }
}

/// The library's `sink_window` (4 sinks, window 1024) on SmolLM2's attention shape: after
/// 8192 tokens the cache holds what the cost model prices, within 5%, and exact attention's
/// cache what exact is priced at.
#[test]
fn measured_bytes_held_match_the_cost_model_on_smollm2_shape() {
    let spec = Spec {
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        explicit_head_dim: true,
        rope_dims: 64,
        d_model: 64,
        ffn_hidden: 16,
        context_length: 8192,
        ..Spec::llama()
    };
    let model = Model::load(&write_model(&spec, "kv-smollm2-shape")).unwrap();
    let shape = ModelShape::of(&model.config);
    assert_eq!(
        shape,
        ModelShape {
            n_layers: 30,
            n_q_heads: 9,
            n_kv_heads: 3,
            head_dim: 64
        }
    );
    let t = 8192;
    let checked = akl::library::checked("sink_window").unwrap();
    let drop_in = akl::instantiate(checked, &shape, model.config.attention_scale).unwrap();
    let measure = |kernels: &[Arc<dyn AttentionKernel>]| {
        let kernels: Vec<Arc<dyn AttentionKernel>> = kernels
            .iter()
            .map(|k| Arc::new(Zeros(k.clone())) as _)
            .collect();
        let mut cache = model.new_cache();
        for piece in tokens(t, 2).chunks(1024) {
            model
                .forward_hidden_with(&mut cache, piece, &kernels)
                .unwrap();
        }
        cache.bytes_held() as f64 / t as f64
    };
    let measured = measure(&drop_in.kernels);
    let priced = akl::cost(checked, &shape, t)
        .unwrap()
        .kv_bytes_held_per_token;
    eprintln!("sink_window at {t}: {measured:.1} bytes held per token, priced {priced:.1}");
    assert!(
        (measured / priced - 1.0).abs() <= 0.05,
        "measured {measured:.1} bytes per token, priced {priced:.1}"
    );
    let exact = measure(model.attention_kernels());
    let exact_priced = akl::exact_cost(&shape, t).unwrap().kv_bytes_held_per_token;
    assert!(
        (exact / exact_priced - 1.0).abs() <= 0.05,
        "{exact} vs {exact_priced}"
    );
}
