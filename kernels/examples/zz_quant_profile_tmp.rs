use std::time::Instant;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use kernels::quant::{Isa, QuantMatrix};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let in_dim: usize = a[1].parse().unwrap();
    let out_dim: usize = a[2].parse().unwrap();
    let rows: usize = a[3].parse().unwrap();
    let dtype = match a[4].as_str() { "q4_1" => GgmlDType::Q4_1, "q4_0" => GgmlDType::Q4_0, "q5_0" => GgmlDType::Q5_0, "q8_0" => GgmlDType::Q8_0, "q4k" => GgmlDType::Q4K, "q6k" => GgmlDType::Q6K, _ => GgmlDType::F32 };
    let iters: usize = a[5].parse().unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let w: Vec<f32> = (0..in_dim * out_dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let w = Tensor::from_vec(w, (out_dim, in_dim), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&w, dtype).unwrap();
    let m = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
    let x: Vec<f32> = (0..rows * in_dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut y = vec![0f32; rows * out_dim];
    let candle = a.get(6).is_some();
    let qm = candle_core::quantized::QMatMul::from_qtensor(q).unwrap();
    let input = Tensor::from_slice(&x, (rows, in_dim), &Device::Cpu).unwrap();
    use candle_core::Module;
    let mut go = || if candle { qm.forward(&input).unwrap(); } else { m.matmul_with(Isa::Avx2, &x, rows, &mut y) };
    go();
    let cpu = || -> f64 { std::fs::read_dir("/proc/self/task").unwrap().map(|e| { let p = e.unwrap().path().join("schedstat"); std::fs::read_to_string(p).unwrap().split_whitespace().next().unwrap().parse::<f64>().unwrap() }).sum::<f64>() * 1e-9 };
    let c0 = cpu();
    let t = Instant::now();
    for _ in 0..iters { go(); }
    let wall = t.elapsed().as_secs_f64() / iters as f64;
    let dt = (cpu() - c0) / iters as f64;
    print!("wall {:.3} ms, cpu ", wall * 1e3);
    let blocks = (in_dim / 32 * out_dim * rows) as f64;
    println!("{:.3} ms, {:.2} G block-pairs/s, {:.1} GMAC/s", dt * 1e3, blocks / dt / 1e9, blocks * 32.0 / dt / 1e9);
}
