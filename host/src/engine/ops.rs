//! Fused operations with backward passes.
//!
//! candle-nn 0.11's fused `layer_norm` and `softmax_last_dim` drop their gradients, so the
//! host has its own. Each public function picks its implementation from the input:
//!
//! - **f32 on the CPU, or on CUDA with the `cuda` feature**: a candle custom op with a
//!   hand-written forward kernel and a backward kernel (first-order gradients only: the
//!   gradients themselves are not differentiable); the CUDA kernels are in `kernels.cu`;
//! - **f16 / bf16** (any device): upcast to f32, run the f32 path, cast back, so norms and
//!   softmaxes never accumulate in half precision;
//! - **anything else** (Metal f32, f64): composed candle ops, which carry their own
//!   correct gradients.
//!
//! CPU kernels split rows across candle's own worker pool
//! ([`candle_core::utils::barrier_pool`]) once a tensor is large enough to pay for it.

mod attention;
mod bias;
mod bias_gelu;
#[cfg(feature = "cuda")]
mod cuda;
mod gelu;
mod layer_norm;
mod linear;
mod matmul;
mod simd;
mod softmax;
mod uninit;

pub use attention::{attention, composed as attention_composed, self_attention, split_heads};
pub use bias::broadcast_add;
pub use bias_gelu::bias_gelu;
pub use gelu::gelu_erf;
pub use layer_norm::layer_norm;
pub use linear::{Activation, composed as linear_composed, linear};
pub(crate) use simd::{Level as VectorLevel, level as vector_level};
pub use softmax::{log_softmax_last_dim, softmax_last_dim};

use std::sync::{Mutex, OnceLock, PoisonError};

use candle_core::{CpuStorage, DType, Layout, Result, Tensor, bail};

/// Elements per unit of parallel work; tensors no larger than this run inline.
const BLOCK_ELEMS: usize = 16 * 1024;

/// Which implementation a tensor of this dtype and device gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The CPU f32 custom op.
    Fused,
    /// Upcast to f32, run, cast back.
    Upcast,
    /// Composed candle ops.
    Composed,
}

fn route(x: &Tensor) -> Route {
    match x.dtype() {
        DType::F16 | DType::BF16 => Route::Upcast,
        DType::F32 if x.device().is_cpu() || x.device().is_cuda() => Route::Fused,
        _ => Route::Composed,
    }
}

/// The contiguous f32 slice behind a CPU storage and its layout.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what} should be contiguous"),
    }
}

/// Refuses a backward kernel's output gradient whose length is not its input's.
fn same_length(what: &str, input: usize, grad: usize) -> Result<()> {
    if input != grad {
        bail!("{what} backward: gradient length {grad} should be {input}");
    }
    Ok(())
}

/// Length of the last dimension of a layout (1 for a scalar).
fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

/// Rows in one block of [`for_each_row_block`] for rows of `row_len` elements.
fn rows_per_block(row_len: usize) -> usize {
    (BLOCK_ELEMS / row_len.max(1)).max(1)
}

/// Calls `f(first_row, rows)` on consecutive blocks of whole rows of `dst` (rows of
/// `row_len` elements), in parallel on candle's worker pool when `dst` is large.
fn for_each_row_block<F>(dst: &mut [f32], row_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if dst.is_empty() || row_len == 0 {
        return;
    }
    let rows_per_block = rows_per_block(row_len);
    let block_len = rows_per_block * row_len;
    if dst.len() <= block_len {
        f(0, dst);
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    if pool.n_workers() == 0 {
        // Same blocks as the parallel path, so results do not depend on the thread count.
        for (i, chunk) in dst.chunks_mut(block_len).enumerate() {
            f(i * rows_per_block, chunk);
        }
        return;
    }
    let blocks: Vec<Mutex<(usize, &mut [f32])>> = dst
        .chunks_mut(block_len)
        .enumerate()
        .map(|(i, chunk)| Mutex::new((i * rows_per_block, chunk)))
        .collect();
    pool.execute_chunked(blocks.len(), |range| {
        for block in &blocks[range] {
            let mut guard = block.lock().unwrap_or_else(PoisonError::into_inner);
            let (first_row, ref mut rows) = *guard;
            f(first_row, rows);
        }
    });
}

/// The worker-thread count (candle's, read once: candle derives it anew on every
/// call, from `/proc/cpuinfo` unless `RAYON_NUM_THREADS` is set).
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// Calls `f(item)` on each item, one item per task of candle's worker pool (for work
/// already cut to the threads, which [`for_each_row_block`] would split by element
/// count instead).
fn for_each_item<T, F>(items: Vec<T>, f: F)
where
    T: Send,
    F: Fn(T) + Sync,
{
    let pool = candle_core::utils::barrier_pool();
    if pool.n_workers() == 0 || items.len() <= 1 {
        items.into_iter().for_each(f);
        return;
    }
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    pool.execute_chunked(slots.len(), |range| {
        for slot in &slots[range] {
            let item = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(item) = item {
                f(item);
            }
        }
    });
}

/// Sum of a slice with eight independent accumulators (vectorises; more accurate than
/// one running sum).
#[inline]
fn sum8(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    let mut total =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for v in rest {
        total += v;
    }
    total
}

/// Dot product of two equal-length slices with eight independent accumulators.
#[inline]
fn dot8(xs: &[f32], ys: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let xc = xs.chunks_exact(8);
    let yc = ys.chunks_exact(8);
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (cx, cy) in xc.zip(yc) {
        for ((a, x), y) in acc.iter_mut().zip(cx).zip(cy) {
            *a += x * y;
        }
    }
    let mut total =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in xr.iter().zip(yr) {
        total += x * y;
    }
    total
}

/// Sum of squared deviations from `mean`, with eight independent accumulators.
#[inline]
fn sq_dev8(xs: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            let t = v - mean;
            *a += t * t;
        }
    }
    let mut total =
        ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for v in rest {
        let t = v - mean;
        total += t * t;
    }
    total
}

/// `exp(x)` for `x <= 0` (softmax terms, log-probabilities, the normal density): Cody-Waite
/// range reduction and a degree-6 polynomial, branch-free so loops over it vectorise.
/// Relative error below 3e-7 on `[-87, 0]` (checked against f64 in the tests); `0` below
/// `-87` (true value < 1.7e-38), `1` for positive inputs, NaN stays NaN.
#[inline]
fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    const SHIFTER_BITS: i32 = 0x4B40_0000;
    let xc = x.clamp(-87.0, 0.0);
    let t = xc * std::f32::consts::LOG2_E + SHIFTER;
    let n = t - SHIFTER;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 0], so n + 127 is a valid biased exponent.
    let n_int = (t.to_bits() as i32).wrapping_sub(SHIFTER_BITS);
    // Wrapping: no overflow check (debug builds check `+`), so loops over it vectorise.
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// Maximum of a slice (`-inf` when empty; NaN-propagation is not guaranteed).
#[inline]
fn max8(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            // A plain comparison, not `f32::max`: its NaN rule costs a compare and a
            // blend per vector, where this is one `vmaxps`.
            if *v > *a {
                *a = *v;
            }
        }
    }
    let mut m = acc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in rest {
        m = m.max(*v);
    }
    m
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Shared helpers for the op tests.

    use candle_core::{Device, Result, Tensor};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    /// Devices every op test runs on.
    pub(crate) fn devices() -> Vec<Device> {
        #[cfg(feature = "cuda")]
        {
            vec![
                Device::Cpu,
                Device::new_cuda(0).expect("cuda device 0 should exist"),
            ]
        }
        #[cfg(not(feature = "cuda"))]
        {
            vec![Device::Cpu]
        }
    }

    /// A seeded standard-normal tensor, scaled and shifted.
    pub(crate) fn randn(
        seed: u64,
        shape: &[usize],
        scale: f32,
        shift: f32,
        device: &Device,
    ) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let v: f32 = StandardNormal.sample(&mut rng);
                v * scale + shift
            })
            .collect();
        Tensor::from_vec(data, shape, device)
    }

    /// Largest absolute difference between two tensors of the same shape.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims(), "shapes differ");
        let a = a.to_dtype(candle_core::DType::F32)?;
        let b = b.to_dtype(candle_core::DType::F32)?;
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    /// Asserts `|a - b| <= tol` element-wise (relative to magnitude above 1).
    pub(crate) fn assert_close(actual: &Tensor, expected: &Tensor, tol: f32, what: &str) {
        let diff = max_abs_diff(actual, expected).expect("diff should compute");
        let scale = expected
            .abs()
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_dtype(candle_core::DType::F32))
            .and_then(|t| t.to_scalar::<f32>())
            .expect("scale should compute")
            .max(1.0);
        assert!(
            diff <= tol * scale,
            "{what}: max abs diff {diff} exceeds {tol} (scale {scale})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_naive() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let ys: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let s: f32 = xs.iter().sum();
        let d: f32 = xs.iter().zip(&ys).map(|(x, y)| x * y).sum();
        let m = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert!((sum8(&xs) - s).abs() < 1e-5);
        assert!((dot8(&xs, &ys) - d).abs() < 1e-5);
        assert_eq!(max8(&xs), m);
        assert_eq!(max8(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn exp_neg_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let exact = f64::from(x).exp();
            let rel = (f64::from(exp_neg(x)) - exact).abs() / exact;
            worst = worst.max(rel);
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-100.0), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert!(exp_neg(f32::NAN).is_nan());
    }

    #[test]
    fn row_blocks_cover_every_row_once() {
        let row_len = 5;
        let rows = 3 * BLOCK_ELEMS / row_len + 7;
        let mut dst = vec![0f32; rows * row_len];
        for_each_row_block(&mut dst, row_len, |first_row, block| {
            for (r, row) in block.chunks_mut(row_len).enumerate() {
                for v in row {
                    *v += (first_row + r) as f32;
                }
            }
        });
        for (r, row) in dst.chunks(row_len).enumerate() {
            assert!(row.iter().all(|&v| v == r as f32), "row {r} wrong");
        }
    }
}
