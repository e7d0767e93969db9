//! Times `QuantMatrix::matmul` against candle's `QMatMul::forward` on SmolLM2-135M's matrix
//! shapes, for decode (1 row) and prefill (512 rows), and prints a table.
//!
//! `cargo run --release -p kernels --example quant_matmul_speed [-- --quick] [--only NAME]`
//!
//! Decode reads its weights from memory as a real model's decode does: each timed call uses
//! the next of enough copies of the matrix to overflow the last-level cache. Threads: rayon's
//! global pool for ours (`RAYON_NUM_THREADS`), candle's own pool for candle's.

use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};
use kernels::quant::{Isa, QuantMatrix};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Copies of a decode matrix span at least this many bytes, beyond any last-level cache here.
const STREAMED_BYTES: usize = 256 << 20;

struct Shape {
    name: &'static str,
    in_dim: usize,
    out_dim: usize,
    dtype: GgmlDType,
}

const SMOLLM2: [Shape; 5] = [
    Shape {
        name: "attn q/o",
        in_dim: 576,
        out_dim: 576,
        dtype: GgmlDType::Q4_1,
    },
    Shape {
        name: "attn k/v",
        in_dim: 576,
        out_dim: 192,
        dtype: GgmlDType::Q4_1,
    },
    Shape {
        name: "ffn gate/up",
        in_dim: 576,
        out_dim: 1536,
        dtype: GgmlDType::Q4_1,
    },
    Shape {
        name: "ffn down",
        in_dim: 1536,
        out_dim: 576,
        dtype: GgmlDType::Q4_1,
    },
    Shape {
        name: "lm head",
        in_dim: 576,
        out_dim: 49152,
        dtype: GgmlDType::Q8_0,
    },
];

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The best of three medians of `runs` timed calls of `f(i)`, for each of `a` and `b`, timed
/// in alternating blocks so that both see similar load from anything else on the machine
/// (alternating single calls would set rayon's and candle's spinning pools against each other).
fn time_both(
    runs: usize,
    mut a: impl FnMut(usize),
    mut b: impl FnMut(usize),
) -> (Duration, Duration) {
    let block = |f: &mut dyn FnMut(usize)| {
        (0..runs / 4 + 1).for_each(&mut *f);
        let times = (0..runs)
            .map(|i| {
                let start = Instant::now();
                f(i);
                start.elapsed()
            })
            .collect();
        median(times)
    };
    let (mut best_a, mut best_b) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        best_a = best_a.min(block(&mut a));
        best_b = best_b.min(block(&mut b));
    }
    (best_a, best_b)
}

fn main() -> kernels::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    println!(
        "threads: ours {} (rayon), kernels {:?}; candle {}",
        rayon::current_num_threads(),
        Isa::best(),
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:<12} {:>11} {:>5} {:>5} {:>10} {:>10} {:>7} {:>8} {:>8}",
        "matrix",
        "shape",
        "type",
        "rows",
        "ours ms",
        "candle ms",
        "speedup",
        "ours GB/s",
        "cand GB/s"
    );
    let mut rng = StdRng::seed_from_u64(1);
    for shape in SMOLLM2
        .iter()
        .filter(|s| only.is_none_or(|o| s.name.contains(o.as_str())))
    {
        let w: Vec<f32> = (0..shape.in_dim * shape.out_dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let w = Tensor::from_vec(w, (shape.out_dim, shape.in_dim), &Device::Cpu)?;
        let quantized = QTensor::quantize(&w, shape.dtype)?;
        let data = quantized.data()?;
        let bytes = data.len();
        for rows in [1, 512] {
            let copies = if rows == 1 {
                STREAMED_BYTES.div_ceil(bytes)
            } else {
                1
            };
            let mut ours = Vec::with_capacity(copies);
            let mut theirs = Vec::with_capacity(copies);
            for _ in 0..copies {
                let storage = QStorage::from_data(data.clone(), &Device::Cpu, shape.dtype)?;
                let q = QTensor::new(storage, (shape.out_dim, shape.in_dim))?;
                ours.push(QuantMatrix::from_qtensor(&q)?.expect("a format with our kernels"));
                theirs.push(QMatMul::from_qtensor(q)?);
            }
            let x: Vec<f32> = (0..rows * shape.in_dim)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let input = Tensor::from_slice(&x, (rows, shape.in_dim), &Device::Cpu)?;
            let mut y = vec![0f32; rows * shape.out_dim];
            let runs = match (quick, rows) {
                (true, 1) => 50,
                (false, 1) => 400,
                (true, _) => 3,
                (false, _) => 15,
            };
            let (ours_time, candle_time) = time_both(
                runs,
                |i| ours[i % copies].matmul(&x, rows, &mut y),
                // Half a ring apart, so neither finds what the other left in cache.
                |i| {
                    let copy = (i + copies / 2) % copies;
                    theirs[copy].forward(&input).expect("candle's matmul");
                },
            );
            let gbps = |t: Duration| bytes as f64 / t.as_secs_f64() / 1e9;
            let (ours_gbps, candle_gbps) = if rows == 1 {
                (
                    format!("{:.1}", gbps(ours_time)),
                    format!("{:.1}", gbps(candle_time)),
                )
            } else {
                ("-".into(), "-".into())
            };
            println!(
                "{:<12} {:>11} {:>5} {:>5} {:>10.3} {:>10.3} {:>6.2}× {:>8} {:>8}",
                shape.name,
                format!("{}→{}", shape.in_dim, shape.out_dim),
                format!("{:?}", shape.dtype),
                rows,
                ours_time.as_secs_f64() * 1e3,
                candle_time.as_secs_f64() * 1e3,
                candle_time.as_secs_f64() / ours_time.as_secs_f64(),
                ours_gbps,
                candle_gbps,
            );
        }
    }
    Ok(())
}
