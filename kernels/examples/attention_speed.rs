//! Times attention prefill and prints medians: the plain causal `Mask` path of
//! `TiledAttention`, the same mask run as a rule (the rule path's overhead), and the
//! training-free sparse kernels on the same shapes.
//!
//! `cargo run --release -p kernels --example attention_speed [-- --quick]`
//!
//! Shapes: 9 query heads on 3 KV heads, head_dim 64; prefill of T = 1024 and 4096 queries
//! over as many keys, and one decode step over 16384 keys. `--quick` takes fewer runs.

use std::time::Instant;

use std::sync::Arc;

use kernels::attention::{
    AttentionInput, AttentionKernel, HeadMix, LayerAttention, Mask, PageSummary, RuleAttention,
    StarAttention, TiledAttention, TopKPages,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Shape {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    t: usize,
}

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;

impl Shape {
    fn random(t: usize) -> Shape {
        let mut rng = StdRng::seed_from_u64(t as u64);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        Shape {
            q: values(HEADS * t * HEAD_DIM),
            k: values(KV_HEADS * t * HEAD_DIM),
            v: values(KV_HEADS * t * HEAD_DIM),
            t,
        }
    }

    fn input(&self) -> AttentionInput<'_> {
        AttentionInput {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            n_q_heads: HEADS,
            n_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            n_queries: self.t,
            kv_len: self.t,
            kv_capacity: self.t,
            key_positions: None,
            page_summaries: &[],
        }
    }
}

/// Median wall time of `runs` calls, in milliseconds.
fn median_ms(runs: usize, mut call: impl FnMut()) -> f64 {
    call();
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            call();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let layer = LayerAttention {
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        mask: Mask::Causal,
    };
    let tiled = TiledAttention::default();
    // The causal mask again as a rule: the rule path's overhead over the plain one.
    let causal_rule = RuleAttention::mask(Mask::Causal).unwrap();
    let sink_window = RuleAttention::sink_window(4, 256).unwrap();
    let quest = TopKPages::new(64, 8, PageSummary::MinMax).unwrap();
    let exact: Arc<dyn AttentionKernel> = Arc::new(tiled);
    let windowed: Arc<dyn AttentionKernel> = Arc::new(sink_window.clone());
    // Cuts the middle GQA group: heads 0..4 exact, 4..9 sinks + window.
    let mix = HeadMix::new(vec![(0..4, exact), (4..HEADS, windowed)]).unwrap();
    let kernels: [(&str, &dyn AttentionKernel); 5] = [
        ("tiled causal (Mask path)", &tiled),
        ("causal as a rule", &causal_rule),
        ("sink_window(4,256)", &sink_window),
        ("top_k_pages(quest,64,8)", &quest),
        ("head_mix(exact 4, sinks 5)", &mix),
    ];
    for t in [1024, 4096] {
        let shape = Shape::random(t);
        let runs = if quick || t > 1024 { 7 } else { 21 };
        let mut out = vec![0.0; HEADS * t * HEAD_DIM];
        // Star: the first half of the prompt is context in blocks of T/8, the rest queries.
        let star = StarAttention::new(t / 8, t / 2).unwrap();
        let star_kernels: [(&str, &dyn AttentionKernel); 1] = [("star(T/8, T/2)", &star)];
        for (name, kernel) in kernels.into_iter().chain(star_kernels) {
            let ms = median_ms(runs, || {
                kernel.forward(&shape.input(), &layer, &mut out).unwrap()
            });
            println!("prefill T={t:5} {name:28} {ms:8.2} ms");
        }
    }
    // Decode: the last query alone over the whole cache.
    let t = 16 * 1024;
    let shape = Shape::random(t);
    let last_query: Vec<f32> = (0..HEADS)
        .flat_map(|h| {
            shape.q[((h + 1) * t - 1) * HEAD_DIM..(h + 1) * t * HEAD_DIM]
                .iter()
                .copied()
        })
        .collect();
    let input = AttentionInput {
        q: &last_query,
        n_queries: 1,
        ..shape.input()
    };
    let mut out = vec![0.0; HEADS * HEAD_DIM];
    for (name, kernel) in kernels {
        let ms = median_ms(if quick { 11 } else { 51 }, || {
            kernel.forward(&input, &layer, &mut out).unwrap()
        });
        println!("decode  T={t:5} {name:28} {ms:8.3} ms");
    }
}
