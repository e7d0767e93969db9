//! Our quantized matmul against an f64 reference on candle's dequantized weights, its AVX2
//! kernels against the portable ones, decode against prefill, and the formats it declines.
//!
//! Tolerance against the reference: the kernels use the weights exactly as stored and
//! quantize each activation block to `d·q` with `d = amax / 127` (the K-quants, blocks of
//! 256) or the next whole multiple of the row's unit `row_amax / (127 · 16383)` (the
//! 32-element formats, blocks of 32), so each activation is off by at most `amax / 254`, plus
//! `row_amax / (254 · 16383)` for the 32-element formats. Hence `|ours − reference| ≤
//! Σ_i |W[o, i]| · that`, plus f32 rounding, allowed as `1e-4 · Σ_i |W[o, i] · x[i]|`. `f32`
//! weights see no quantization and get the rounding allowance alone.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use kernels::model::linear::{Linear, WeightFormat};
use kernels::quant::{BlockFormat, Isa, QuantMatrix};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A weight matrix in `format`, candle's dequantization of it, and activation rows.
struct Case {
    qtensor: QTensor,
    /// `[out_dim, in_dim]`, dequantized by candle.
    weights: Vec<f32>,
    out_dim: usize,
    in_dim: usize,
    /// `[rows, in_dim]`.
    x: Vec<f32>,
    rows: usize,
}

impl Case {
    fn random(format: BlockFormat, out_dim: usize, in_dim: usize, rows: usize, seed: u64) -> Case {
        let mut rng = StdRng::seed_from_u64(seed);
        let w: Vec<f32> = (0..out_dim * in_dim)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        // Activations with occasional outliers, as after a norm layer.
        let x = (0..rows * in_dim)
            .map(|_| {
                let outlier = if rng.random_bool(0.02) { 20.0 } else { 1.0 };
                rng.random_range(-1.0f32..1.0) * outlier
            })
            .collect();
        Case::new(format, w, out_dim, x, rows)
    }

    /// `w` (`[out_dim, in_dim]`) quantized to `format`, against the rows of `x`.
    fn new(format: BlockFormat, w: Vec<f32>, out_dim: usize, x: Vec<f32>, rows: usize) -> Case {
        let in_dim = w.len() / out_dim;
        let tensor = Tensor::from_vec(w, (out_dim, in_dim), &Device::Cpu).unwrap();
        let qtensor = QTensor::quantize(&tensor, format.dtype()).unwrap();
        let weights = qtensor
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        Case {
            qtensor,
            weights,
            out_dim,
            in_dim,
            x,
            rows,
        }
    }

    fn matrix(&self) -> QuantMatrix {
        QuantMatrix::from_qtensor(&self.qtensor)
            .unwrap()
            .expect("a format with our kernels")
    }

    fn run(&self, isa: Isa) -> Vec<f32> {
        let mut y = vec![f32::NAN; self.rows * self.out_dim];
        self.matrix().matmul_with(isa, &self.x, self.rows, &mut y);
        y
    }

    fn w_row(&self, o: usize) -> &[f32] {
        &self.weights[o * self.in_dim..(o + 1) * self.in_dim]
    }

    fn x_row(&self, r: usize) -> &[f32] {
        &self.x[r * self.in_dim..(r + 1) * self.in_dim]
    }

    /// `Σ_i |W[o, i] · x[r, i]|`: the scale of the dot product's rounding.
    fn magnitude(&self, r: usize, o: usize) -> f64 {
        let terms = self.w_row(o).iter().zip(self.x_row(r));
        terms
            .map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs())
            .sum()
    }

    /// The error bound of the module's comment for output `(r, o)`.
    fn bound(&self, format: BlockFormat, r: usize, o: usize) -> f64 {
        let rounding = 1e-4 * self.magnitude(r, o) + 1e-6;
        let amax = |x: &[f32]| f64::from(x.iter().fold(0f32, |m, v| m.max(v.abs())));
        let (block, unit) = match format {
            BlockFormat::F32 => return rounding,
            BlockFormat::Q4K | BlockFormat::Q6K => (256, 0.0),
            _ => (32, amax(self.x_row(r)) / (127.0 * 16383.0)),
        };
        let quantization: f64 = self
            .x_row(r)
            .chunks(block)
            .zip(self.w_row(o).chunks(block))
            .map(|(x, w)| {
                let w_abs: f64 = w.iter().map(|&w| f64::from(w.abs())).sum();
                w_abs * (amax(x) / 254.0 + unit / 2.0)
            })
            .sum();
        quantization + rounding
    }

    fn reference(&self, r: usize, o: usize) -> f64 {
        let terms = self.w_row(o).iter().zip(self.x_row(r));
        terms.map(|(&w, &x)| f64::from(w) * f64::from(x)).sum()
    }
}

fn supported_isas() -> Vec<Isa> {
    [Isa::Portable, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter(|isa| isa.is_supported())
        .collect()
}

/// Shapes: row lengths of one and of several blocks, odd output counts, and enough of both
/// (130 × 70) that the work is split into many tiles and runs on the pool.
fn shapes(format: BlockFormat) -> Vec<(usize, usize, usize)> {
    let in_dims: &[usize] = match format {
        BlockFormat::F32 => &[37, 96],
        BlockFormat::Q4K | BlockFormat::Q6K => &[256, 768],
        _ => &[32, 96, 576],
    };
    let mut shapes = Vec::new();
    for &in_dim in in_dims {
        for out_dim in [1, 7, 33, 130] {
            for rows in [1, 3, 17, 70] {
                shapes.push((out_dim, in_dim, rows));
            }
        }
    }
    shapes
}

#[test]
fn every_format_matches_the_dequantized_reference() {
    for format in BlockFormat::ALL {
        for (seed, (out_dim, in_dim, rows)) in shapes(format).into_iter().enumerate() {
            let case = Case::random(format, out_dim, in_dim, rows, seed as u64);
            for isa in supported_isas() {
                let y = case.run(isa);
                for r in 0..rows {
                    for o in 0..out_dim {
                        let (got, want) = (f64::from(y[r * out_dim + o]), case.reference(r, o));
                        let bound = case.bound(format, r, o);
                        assert!(
                            (got - want).abs() <= bound,
                            "{format:?} {isa:?} [{rows}, {in_dim}] × [{out_dim}, {in_dim}]ᵀ at \
                             ({r}, {o}): {got} vs {want}, bound {bound}"
                        );
                    }
                }
            }
        }
    }
}

/// AVX2 and portable kernels see the same quantized activations and sum the same integers;
/// only the order of the f32 sums differs.
fn assert_kernels_agree(case: &Case, format: BlockFormat) {
    let (avx2, portable) = (case.run(Isa::Avx2), case.run(Isa::Portable));
    // The AVX-512 build differs only in how Q5_0's fifth bits get in: the same bits out.
    if Isa::Avx512.is_supported() {
        assert_eq!(
            case.run(Isa::Avx512),
            avx2,
            "{format:?}: AVX-512 against AVX2"
        );
    }
    for r in 0..case.rows {
        for o in 0..case.out_dim {
            let i = r * case.out_dim + o;
            let tolerance = 2e-5 * case.magnitude(r, o) + 1e-6;
            assert!(
                f64::from((avx2[i] - portable[i]).abs()) <= tolerance,
                "{format:?} [{}, {}] × [{}, {}]ᵀ at ({r}, {o}): AVX2 {} vs portable {}",
                case.rows,
                case.in_dim,
                case.out_dim,
                case.in_dim,
                avx2[i],
                portable[i]
            );
        }
    }
}

#[test]
fn avx2_and_portable_kernels_agree() {
    if !Isa::Avx2.is_supported() {
        eprintln!("skipped: this CPU has no AVX2");
        return;
    }
    for format in BlockFormat::ALL {
        for (seed, (out_dim, in_dim, rows)) in shapes(format).into_iter().enumerate() {
            let case = Case::random(format, out_dim, in_dim, rows, 1000 + seed as u64);
            assert_kernels_agree(&case, format);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn avx2_equals_portable_on_random_shapes(
        format in prop::sample::select(BlockFormat::ALL.to_vec()),
        out_dim in 1usize..40,
        blocks in 1usize..4,
        rows in 1usize..10,
        seed in any::<u64>(),
    ) {
        prop_assume!(Isa::Avx2.is_supported());
        let in_dim = blocks * format.block_elems().max(8);
        let case = Case::random(format, out_dim, in_dim, rows, seed);
        assert_kernels_agree(&case, format);
    }
}

/// Q4_0, Q4_1 and Q5_0 pack their weights into panels for prefill (from 16 rows) and sum the
/// offsets in another order there, so their rows agree to rounding; the rest bit for bit.
#[test]
fn a_decode_row_equals_its_row_of_a_prefill() {
    for format in BlockFormat::ALL {
        let panels = matches!(
            format,
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0
        );
        let in_dim = 20 * format.block_elems().max(32);
        let case = Case::random(format, 33, in_dim, 17, 7);
        for isa in supported_isas() {
            let prefill = case.run(isa);
            let matrix = case.matrix();
            for r in 0..case.rows {
                let mut decode = vec![f32::NAN; case.out_dim];
                matrix.matmul_with(isa, case.x_row(r), 1, &mut decode);
                let row = &prefill[r * case.out_dim..(r + 1) * case.out_dim];
                if !panels {
                    // Each row is quantized alone and summed in the same order in every group size.
                    assert_eq!(decode, row, "{format:?} {isa:?} row {r}");
                    continue;
                }
                for (o, (&d, &p)) in decode.iter().zip(row).enumerate() {
                    let tolerance = 2e-5 * case.magnitude(r, o) + 1e-6;
                    assert!(
                        f64::from((d - p).abs()) <= tolerance,
                        "{format:?} {isa:?} ({r}, {o}): decode {d}, prefill {p}"
                    );
                }
                assert_ne!(
                    decode, row,
                    "{format:?} {isa:?}: prefill did not use panels"
                );
            }
        }
    }
}

/// The largest integer sums a kernel can meet: Q5_0 quants of 31 (a block of +1 whose largest
/// magnitude is a −1) against activations whose every block takes the largest scale. A whole
/// block of a weight row is summed in one `i32` lane in prefill, so the scale's cap must keep
/// `s · 31 · 31 · 127` below 2³¹.
#[test]
fn the_largest_integer_sums_do_not_overflow() {
    let (out_dim, in_dim, rows) = (9, 64, 17);
    let w = (0..out_dim * in_dim)
        .map(|i| if i % 32 == 0 { -1.0 } else { 1.0 })
        .collect();
    let case = Case::new(
        BlockFormat::Q5_0,
        w,
        out_dim,
        vec![1.0; rows * in_dim],
        rows,
    );
    for isa in supported_isas() {
        let y = case.run(isa);
        for (i, &got) in y.iter().enumerate() {
            let (r, o) = (i / out_dim, i % out_dim);
            let want = case.reference(r, o);
            assert!(
                (f64::from(got) - want).abs() <= case.bound(BlockFormat::Q5_0, r, o),
                "{isa:?} ({r}, {o}): {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_nan_or_an_infinity_in_a_row_reaches_its_outputs() {
    for format in BlockFormat::ALL {
        let in_dim = 2 * format.block_elems().max(32);
        for bad in [f32::NAN, f32::INFINITY] {
            for rows in [1, 17] {
                let mut case = Case::random(format, 9, in_dim, rows, 5);
                let bad_row = rows / 2;
                case.x[bad_row * in_dim + 3] = bad;
                for isa in supported_isas() {
                    let y = case.run(isa);
                    for (r, row) in y.chunks(case.out_dim).enumerate() {
                        let finite = row.iter().all(|v| v.is_finite());
                        assert_eq!(finite, r != bad_row, "{format:?} {isa:?} {bad} row {r}");
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_uses_the_best_kernels() {
    let case = Case::random(BlockFormat::Q4_1, 7, 64, 3, 3);
    let mut y = vec![0.0; 3 * 7];
    case.matrix().matmul(&case.x, 3, &mut y);
    assert_eq!(y, case.run(Isa::best()));
}

#[test]
fn unsupported_formats_are_left_to_candle() {
    let tensor = Tensor::ones((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
    for dtype in [
        GgmlDType::F16,
        GgmlDType::Q5_1,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q5K,
    ] {
        let qtensor = QTensor::quantize(&tensor, dtype).unwrap();
        assert!(
            QuantMatrix::from_qtensor(&qtensor).unwrap().is_none(),
            "{dtype:?}"
        );
    }
}

#[test]
fn data_that_does_not_fit_the_shape_is_an_error() {
    let case = Case::random(BlockFormat::Q4_1, 7, 64, 1, 5);
    let data = case.qtensor.data().unwrap();
    // One block (20 bytes) short of 7 rows of two blocks.
    let short = &data[..data.len() - 20];
    let storage = QStorage::from_data(Cow::Borrowed(short), &Device::Cpu, GgmlDType::Q4_1).unwrap();
    let qtensor = QTensor::new(storage, (7, 64)).unwrap();
    let err = QuantMatrix::from_qtensor(&qtensor).unwrap_err();
    assert!(err.to_string().contains("bytes of data"), "{err}");
}

#[test]
fn a_tensor_that_is_not_a_matrix_is_an_error() {
    let tensor = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
    let qtensor = QTensor::quantize(&tensor, GgmlDType::Q8_0).unwrap();
    assert!(QuantMatrix::from_qtensor(&qtensor).is_err());
}

#[test]
fn linear_runs_our_kernels_and_candles_alike() {
    // 128 columns: candle's Q5_1 kernel needs an even number of blocks.
    let case = Case::random(BlockFormat::Q4_1, 33, 128, 5, 11);
    let tensor = case.qtensor.dequantize(&Device::Cpu).unwrap();
    for (dtype, ours) in [(GgmlDType::Q4_1, true), (GgmlDType::Q5_1, false)] {
        let quantize = || QTensor::quantize(&tensor, dtype).unwrap();
        let weights = quantize().dequantize(&Device::Cpu).unwrap();
        let case = Case {
            qtensor: quantize(),
            weights: weights.flatten_all().unwrap().to_vec1().unwrap(),
            x: case.x.clone(),
            ..case
        };
        let linear = Linear::new(quantize(), WeightFormat::AsStored).unwrap();
        assert_eq!(linear.uses_own_kernels(), ours, "{dtype:?}");
        let y = linear.forward(&case.x).unwrap();
        for r in 0..case.rows {
            for o in 0..case.out_dim {
                let got = f64::from(y[r * case.out_dim + o]);
                // candle's activation scales are f16: allow it twice our bound.
                let bound = 2.0 * case.bound(BlockFormat::Q4_1, r, o);
                let want = case.reference(r, o);
                assert!((got - want).abs() <= bound, "{dtype:?} ({r}, {o})");
            }
        }
        assert!(
            linear.forward(&case.x[1..]).is_err(),
            "a partial row must be refused"
        );
    }
}

#[test]
fn every_format_gives_back_the_bytes_it_was_loaded_from() {
    // Q5_0 is held in a wider layout than GGUF's; the round trip must still be exact.
    for format in BlockFormat::ALL {
        let in_dim = if format.block_elems() == 256 {
            768
        } else {
            576
        };
        let case = Case::random(format, 5, in_dim, 1, 77);
        let back = case.matrix().to_qtensor().unwrap();
        assert_eq!(back.dtype(), case.qtensor.dtype(), "{format:?}");
        assert_eq!(
            back.data().unwrap(),
            case.qtensor.data().unwrap(),
            "{format:?}"
        );
    }
}
