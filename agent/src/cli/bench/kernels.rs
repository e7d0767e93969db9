//! `evokernel bench kernels`: attention time against sequence length for exact attention and
//! every training-free kernel, the fitted exponent of time against T, exact attention's
//! GFLOP/s beside this machine's matmul GFLOP/s measured in the same run, each kernel's
//! cost-model FLOPs beside its time with Spearman's rank correlation of the two, and a plot.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use kernels::akl::{self, ModelShape};
use kernels::attention::{AttentionInput, AttentionKernel, LayerAttention, Mask};
use kernels::stats::spearman;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::median;
use super::plot::{plot_times, Series};

#[derive(clap::Args)]
pub struct Args {
    /// Sequence lengths to time (prefill of T queries over T keys).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1024,2048,4096,8192,16384,32768"
    )]
    lengths: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    head_dim: usize,
    #[arg(long, default_value_t = 9)]
    q_heads: usize,
    #[arg(long, default_value_t = 3)]
    kv_heads: usize,
    /// Timed runs per point, interleaved across kernels; medians are reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Where to write the plot (SVG).
    #[arg(long, default_value = "bench-kernels.svg")]
    plot: PathBuf,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// The library programs timed: exact attention first, then every training-free kernel.
const PROGRAMS: [&str; 8] = [
    "exact",
    "window",
    "chunked",
    "sink_window",
    "star",
    "quest",
    "moba",
    "head_mix",
];

/// A kernel under test: a library program instantiated for one layer of the benchmark shape.
struct Candidate {
    name: &'static str,
    checked: &'static akl::CheckedProgram,
    kernel: Arc<dyn AttentionKernel>,
}

fn shape(args: &Args) -> ModelShape {
    ModelShape {
        n_layers: 1,
        n_q_heads: args.q_heads,
        n_kv_heads: args.kv_heads,
        head_dim: args.head_dim,
    }
}

fn candidates(args: &Args) -> anyhow::Result<Vec<Candidate>> {
    let shape = shape(args);
    PROGRAMS
        .iter()
        .map(|&name| {
            let checked = akl::library::checked(name).map_err(anyhow::Error::msg)?;
            let mut drop_in = akl::instantiate(checked, &shape, attention_scale(args.head_dim))?;
            Ok(Candidate {
                name,
                checked,
                kernel: drop_in.kernels.remove(0),
            })
        })
        .collect()
}

fn attention_scale(head_dim: usize) -> f32 {
    1.0 / (head_dim as f32).sqrt()
}

/// One kernel's median times, in seconds, one per length.
#[derive(serde::Serialize)]
struct Timings {
    kernel: &'static str,
    seconds: Vec<f64>,
    /// The cost model's FLOPs (FLOP-equivalents) of the kernel, one per length.
    model_flops: Vec<f64>,
    /// Slope of ln(time) against ln(T), over every length.
    exponent: f64,
    /// The same over the longer half of the lengths, where a window or page budget no
    /// longer covers the whole sequence and the kernel's asymptotic growth shows.
    tail_exponent: f64,
}

pub fn run(mut args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.repeats > 0, "--repeats must be at least 1");
    args.lengths.sort_unstable();
    args.lengths.dedup();
    anyhow::ensure!(
        args.lengths.len() >= 2 && args.lengths.iter().all(|&t| t > 0),
        "--lengths needs at least two different positive lengths to fit an exponent"
    );
    anyhow::ensure!(
        args.head_dim > 0 && args.kv_heads > 0 && args.q_heads.is_multiple_of(args.kv_heads),
        "--q-heads must be a positive multiple of --kv-heads, and --head-dim positive"
    );
    let matmul_gflops = matmul_gflops(args.repeats.max(3))?;
    let candidates = candidates(&args)?;
    let mut seconds = vec![Vec::new(); candidates.len()];
    for &t in &args.lengths {
        let data = RandomAttention::new(&args, t);
        let medians = data.median_times(&candidates, args.repeats)?;
        for ((candidate, times), median) in candidates.iter().zip(&mut seconds).zip(medians) {
            eprintln!(
                "T = {t:>6}  {:<12} {:>10.2} ms",
                candidate.name,
                median * 1e3
            );
            times.push(median);
        }
    }
    let tail = (args.lengths.len() / 2).min(args.lengths.len() - 2);
    let timings: Vec<Timings> = candidates
        .iter()
        .zip(seconds)
        .map(|(c, seconds)| -> anyhow::Result<Timings> {
            let model_flops = args
                .lengths
                .iter()
                .map(|&t| Ok(akl::cost(c.checked, &shape(&args), t)?.flops))
                .collect::<anyhow::Result<_>>()?;
            Ok(Timings {
                kernel: c.name,
                model_flops,
                exponent: fitted_exponent(&args.lengths, &seconds),
                tail_exponent: fitted_exponent(&args.lengths[tail..], &seconds[tail..]),
                seconds,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    // Spearman's rank correlation over the kernels, per length, of model FLOPs and time.
    let rank_correlation: Vec<f64> = (0..args.lengths.len())
        .map(|i| {
            let column = |f: fn(&Timings) -> &Vec<f64>| -> Vec<f64> {
                timings.iter().map(|k| f(k)[i]).collect()
            };
            spearman(&column(|k| &k.model_flops), &column(|k| &k.seconds))
        })
        .collect();
    let exact = &timings[0];
    let exact_gflops: Vec<f64> = args
        .lengths
        .iter()
        .zip(&exact.seconds)
        .map(|(&t, &s)| causal_flops(t, args.q_heads, args.head_dim) / s / 1e9)
        .collect();

    let series: Vec<Series> = timings
        .iter()
        .map(|t| Series {
            name: t.kernel.to_string(),
            points: args
                .lengths
                .iter()
                .map(|&l| l as f64)
                .zip(t.seconds.iter().copied())
                .collect(),
        })
        .collect();
    plot_times(&args.plot, &series)?;

    if args.json {
        let json = serde_json::json!({
            "lengths": args.lengths,
            "head_dim": args.head_dim,
            "q_heads": args.q_heads,
            "kv_heads": args.kv_heads,
            "threads": rayon::current_num_threads(),
            "kernels": timings,
            "exact_gflops": exact_gflops,
            "cost_model_spearman": rank_correlation,
            "matmul_gflops": matmul_gflops,
            "plot": args.plot,
        });
        println!("{json}");
        return Ok(());
    }
    println!(
        "attention prefill, {} query heads, {} KV heads, head dim {}, {} threads; median of {} (ms)",
        args.q_heads,
        args.kv_heads,
        args.head_dim,
        rayon::current_num_threads(),
        args.repeats
    );
    let names: Vec<&str> = timings.iter().map(|t| t.kernel).collect();
    println!("| T | {} | exact GFLOP/s |", names.join(" | "));
    println!("|---|{}---|", "---|".repeat(names.len()));
    for (i, &t) in args.lengths.iter().enumerate() {
        let cells: Vec<String> = timings
            .iter()
            .map(|k| format!("{:.1}", k.seconds[i] * 1e3))
            .collect();
        println!("| {t} | {} | {:.1} |", cells.join(" | "), exact_gflops[i]);
    }
    let last = args.lengths.len() - 1;
    println!();
    println!(
        "| kernel | fitted exponent | exponent over T >= {} | speed-up over exact at T = {} |",
        args.lengths[tail], args.lengths[last]
    );
    println!("|---|---|---|---|");
    for k in &timings {
        println!(
            "| {} | {:.2} | {:.2} | {:.1}x |",
            k.kernel,
            k.exponent,
            k.tail_exponent,
            exact.seconds[last] / k.seconds[last]
        );
    }
    println!();
    println!("cost model (FLOP-equivalents) against measured time:");
    println!(
        "| kernel | {} |",
        args.lengths
            .iter()
            .map(|t| format!("GFLOP at {t} | ms at {t}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}", "---|---|".repeat(args.lengths.len()));
    for k in &timings {
        let cells: Vec<String> = k
            .model_flops
            .iter()
            .zip(&k.seconds)
            .map(|(f, s)| format!("{:.2} | {:.1}", f / 1e9, s * 1e3))
            .collect();
        println!("| {} | {} |", k.kernel, cells.join(" | "));
    }
    for (&t, rho) in args.lengths.iter().zip(&rank_correlation) {
        println!("Spearman's rho of cost-model FLOPs and time at T = {t}: {rho:.2}");
    }
    println!();
    println!("matmul (candle-core f32, 2048³): {matmul_gflops:.1} GFLOP/s");
    for (&t, &g) in args.lengths.iter().zip(&exact_gflops) {
        println!(
            "exact attention at T = {t}: {g:.1} GFLOP/s = {:.0}% of matmul",
            100.0 * g / matmul_gflops
        );
    }
    println!("plot: {}", args.plot.display());
    Ok(())
}

/// Random queries, keys and values for one sequence length, head-major.
struct RandomAttention {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    out: Vec<f32>,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
}

impl RandomAttention {
    fn new(args: &Args, len: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(len as u64);
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let q_len = args.q_heads * len * args.head_dim;
        let kv_len = args.kv_heads * len * args.head_dim;
        RandomAttention {
            q: random(q_len),
            k: random(kv_len),
            v: random(kv_len),
            out: vec![0.0; q_len],
            q_heads: args.q_heads,
            kv_heads: args.kv_heads,
            head_dim: args.head_dim,
            len,
        }
    }

    /// Each candidate's median wall time over `repeats` rounds that run every candidate once
    /// (after a warm-up round at short lengths): a load spike hits one round of every
    /// candidate, and the median drops it.
    fn median_times(&self, candidates: &[Candidate], repeats: usize) -> anyhow::Result<Vec<f64>> {
        let input = AttentionInput {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            n_q_heads: self.q_heads,
            n_kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            n_queries: self.len,
            kv_len: self.len,
            kv_capacity: self.len,
            key_positions: None,
            page_summaries: &[],
        };
        let layer = LayerAttention {
            scale: attention_scale(self.head_dim),
            mask: Mask::Causal,
        };
        let mut out = self.out.clone();
        let warm_up = usize::from(self.len <= 4096);
        let mut times = vec![Vec::with_capacity(repeats); candidates.len()];
        for round in 0..warm_up + repeats {
            for (candidate, times) in candidates.iter().zip(&mut times) {
                let started = Instant::now();
                candidate.kernel.forward(&input, &layer, &mut out)?;
                if round >= warm_up {
                    times.push(started.elapsed().as_secs_f64());
                }
            }
        }
        Ok(times.iter().map(|t| median(t)).collect())
    }
}

/// FLOPs of exact causal attention over `t` tokens: q·k and p·v, 2·d each per visible pair.
fn causal_flops(t: usize, q_heads: usize, head_dim: usize) -> f64 {
    let pairs = t as f64 * (t as f64 + 1.0) / 2.0;
    4.0 * head_dim as f64 * pairs * q_heads as f64
}

/// This machine's f32 matmul throughput through candle-core, on the same thread pool.
fn matmul_gflops(repeats: usize) -> anyhow::Result<f64> {
    const N: usize = 2048;
    let a = Tensor::randn(0f32, 1.0, (N, N), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (N, N), &Device::Cpu)?;
    a.matmul(&b)?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let started = Instant::now();
        a.matmul(&b)?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(2.0 * (N * N * N) as f64 / median(&times) / 1e9)
}

/// Least-squares slope of ln(seconds) against ln(length).
fn fitted_exponent(lengths: &[usize], seconds: &[f64]) -> f64 {
    let xs: Vec<f64> = lengths.iter().map(|&l| (l as f64).ln()).collect();
    let ys: Vec<f64> = seconds.iter().map(|s| s.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    cov / var
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_recovers_a_power_law() {
        let lengths = [1024, 2048, 4096, 8192];
        let seconds: Vec<f64> = lengths
            .iter()
            .map(|&t| 3e-9 * (t as f64).powf(1.7))
            .collect();
        assert!((fitted_exponent(&lengths, &seconds) - 1.7).abs() < 1e-9);
    }

    #[test]
    fn causal_flops_count_every_visible_pair() {
        // 3 tokens see 1 + 2 + 3 = 6 keys; 4·d FLOPs per pair and head.
        assert_eq!(causal_flops(3, 2, 8), 4.0 * 8.0 * 6.0 * 2.0);
    }
}
