//! Matrix products on f32 slices through candle's own `gemm` crate, for the fused ops
//! that call it directly (attention, linear): operands are read where they lie, with
//! row and column strides (a transpose or a head of a packed projection is a view),
//! and the destination is written in place, optionally accumulating onto what it holds.

use gemm::{Parallelism, gemm};

/// A matrix operand: its data from the first element on and the strides of a row and of
/// a column (a transpose swaps them).
#[derive(Clone, Copy)]
pub(super) struct Operand<'a> {
    /// The elements from the matrix's first one on.
    pub(super) data: &'a [f32],
    /// Elements between the starts of consecutive rows.
    pub(super) row_stride: usize,
    /// Elements between consecutive columns of a row.
    pub(super) col_stride: usize,
}

impl<'a> Operand<'a> {
    /// `data` as a matrix whose rows start `stride` elements apart, columns adjacent.
    pub(super) fn rows(data: &'a [f32], stride: usize) -> Self {
        Self {
            data,
            row_stride: stride,
            col_stride: 1,
        }
    }

    /// The transpose of [`Operand::rows`]`(data, stride)`.
    pub(super) fn transposed(data: &'a [f32], stride: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: stride,
        }
    }

    /// Whether a `rows × cols` matrix with these strides lies inside `data`.
    fn holds(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// How a product writes its destination and on how many threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mode {
    /// Add the product to what the destination holds instead of overwriting it.
    pub(super) accumulate: bool,
    /// Split the product over the worker threads (large products); otherwise it runs
    /// on the calling thread (the small per-head products of an attention, which are
    /// themselves spread over the pool).
    pub(super) parallel: bool,
}

impl Mode {
    /// Overwrite, on this thread.
    pub(super) const INLINE: Self = Self {
        accumulate: false,
        parallel: false,
    };
}

/// `dst = scale · a·b` for `a` of `m × k` and `b` of `k × n`, `dst` holding `m` rows of
/// `n` adjacent elements starting `dst_stride` apart; on this thread.
#[allow(
    clippy::too_many_arguments,
    reason = "a gemm call: three shapes, three operands, a scale"
)]
pub(super) fn product(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_stride: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    scale: f32,
) {
    product_with(m, n, k, dst, dst_stride, a, b, scale, Mode::INLINE);
}

/// [`product`] with the destination written as `mode` says: `dst = scale · a·b`, or
/// `dst += scale · a·b` when accumulating.
///
/// # Panics
/// When a shape does not fit its slice (a bug in the calling kernel, which checks the
/// user's shapes first).
#[allow(
    clippy::too_many_arguments,
    reason = "a gemm call: three shapes, three operands, a scale, a mode"
)]
pub(super) fn product_with(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_stride: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    scale: f32,
    mode: Mode,
) {
    let dst_fits = m == 0 || n == 0 || (m - 1) * dst_stride + n <= dst.len();
    assert!(
        dst_fits && (m <= 1 || dst_stride >= n) && a.holds(m, k) && b.holds(k, n),
        "matrix product {m}x{k} · {k}x{n} out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !mode.accumulate {
            for row in 0..m {
                dst[row * dst_stride..row * dst_stride + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = match super::threads() {
        threads if mode.parallel && threads > 1 => Parallelism::Rayon(threads),
        _ => Parallelism::None,
    };
    // SAFETY: the assertion above keeps every element gemm reads (of `a`, `b`, and of
    // `dst` when accumulating) and writes (of `dst`) inside the slices; `dst` is
    // exclusively borrowed, so it does not overlap the shared `a` and `b`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            mode.accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_by_hand() {
        // [[1, 2], [3, 4]] · [[5, 6], [7, 8]] and the same with the left transposed.
        let a = [1.0f32, 2.0, 3.0, 4.0];
        let b = [5.0f32, 6.0, 7.0, 8.0];
        let mut out = [0f32; 4];
        product(
            2,
            2,
            2,
            &mut out,
            2,
            Operand::rows(&a, 2),
            Operand::rows(&b, 2),
            1.0,
        );
        assert_eq!(out, [19.0, 22.0, 43.0, 50.0]);
        product(
            2,
            2,
            2,
            &mut out,
            2,
            Operand::transposed(&a, 2),
            Operand::rows(&b, 2),
            0.5,
        );
        assert_eq!(out, [13.0, 15.0, 19.0, 22.0]);
    }

    #[test]
    fn accumulating_adds_and_parallel_matches_inline() {
        // A product large enough for gemm to split, against the naive triple loop.
        let (m, n, k) = (67, 45, 131);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let mut naive = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                naive[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        let (oa, ob) = (Operand::rows(&a, k), Operand::rows(&b, n));
        let mut par = vec![0f32; m * n];
        let over_threads = Mode {
            accumulate: false,
            parallel: true,
        };
        product_with(m, n, k, &mut par, n, oa, ob, 1.0, over_threads);
        let mut acc = vec![1f32; m * n];
        let add = Mode {
            accumulate: true,
            parallel: true,
        };
        product_with(m, n, k, &mut acc, n, oa, ob, 2.0, add);
        for i in 0..m * n {
            assert!(
                (par[i] - naive[i]).abs() < 1e-3,
                "{i}: {} vs {}",
                par[i],
                naive[i]
            );
            let want = 1.0 + 2.0 * naive[i];
            assert!((acc[i] - want).abs() < 2e-3, "{i}: {} vs {want}", acc[i]);
        }
    }

    #[test]
    fn empty_inner_dimension_clears_or_keeps() {
        let mut dst = [3f32; 4];
        let none: [f32; 0] = [];
        let add = Mode {
            accumulate: true,
            parallel: false,
        };
        product_with(
            2,
            2,
            0,
            &mut dst,
            2,
            Operand::rows(&none, 0),
            Operand::rows(&none, 2),
            1.0,
            add,
        );
        assert_eq!(dst, [3.0; 4]);
        product(
            2,
            2,
            0,
            &mut dst,
            2,
            Operand::rows(&none, 0),
            Operand::rows(&none, 2),
            1.0,
        );
        assert_eq!(dst, [0.0; 4]);
    }
}
