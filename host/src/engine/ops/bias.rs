//! A bias added along the last dimension (every `Linear`'s `x·Wᵀ + b`), with a
//! backward whose bias gradient is a column sum split over the worker pool (candle's
//! generic broadcast-add backward sums on one thread).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, Layout, Result, Shape, Tensor};

use super::{
    Route, f32_slice, for_each_row_block, last_dim, route, rows_per_block, simd::vectorized,
};

/// `x + b` with `b` of shape `[d]` broadcast over the leading dimensions of `x`
/// (`x`'s last dimension is `d`); other shapes fall back to candle's
/// `broadcast_add`. Gradients flow to both.
pub fn broadcast_add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let is_bias = b.rank() == 1 && x.rank() >= 1 && x.dim(D::Minus1)? == b.dim(0)?;
    let same_kind = b.dtype() == x.dtype() && b.device().same_device(x.device());
    match route(x) {
        Route::Fused if is_bias && same_kind => {
            x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
        }
        Route::Fused | Route::Upcast | Route::Composed => x.broadcast_add(b),
    }
}

/// Refuses a bias whose length is not the input's last dimension `d`.
pub(super) fn bias_fits(what: &str, len: usize, d: usize) -> Result<()> {
    if len != d {
        candle_core::bail!("{what}: bias length {len} should be {d}");
    }
    Ok(())
}

/// What tells the forward passes of the ops on rows and a bias apart ([`rows_fwd`]).
pub(super) struct RowsOp {
    /// The op's name in messages.
    pub(super) what: &'static str,
    /// Its forward span in the profile.
    pub(super) span: &'static str,
    /// Its input and bias in messages.
    pub(super) operands: [&'static str; 2],
    /// Its CUDA kernel, taking `(x, bias, y, n, d)`.
    #[cfg_attr(
        not(feature = "cuda"),
        expect(dead_code, reason = "read by the CUDA forward only")
    )]
    pub(super) kernel: &'static str,
}

/// [`AddBias`].
const ADD_BIAS: RowsOp = RowsOp {
    what: "add_bias",
    span: "add_bias fwd",
    operands: ["add_bias input", "add_bias bias"],
    kernel: "pw_add_bias",
};

/// The CPU forward of an op that writes each row of `x (…, d)` from that row and a bias
/// `b (d)`: `rows(x_rows, b, y_rows)` over blocks of whole rows, on the worker pool.
pub(super) fn rows_fwd(
    op: &RowsOp,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    rows: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let _span = crate::engine::profile::span(op.span);
    let x = f32_slice(s1, l1, op.operands[0])?;
    let b = f32_slice(s2, l2, op.operands[1])?;
    let d = last_dim(l1);
    bias_fits(op.what, b.len(), d)?;
    let mut y = vec![0f32; x.len()];
    for_each_row_block(&mut y, d, |first, out| {
        let start = first * d;
        rows(&x[start..start + out.len()], b, out);
    });
    Ok((CpuStorage::F32(y), l1.shape().clone()))
}

/// [`rows_fwd`] on CUDA: the op's kernel.
#[cfg(feature = "cuda")]
pub(super) fn rows_fwd_cuda(
    op: &RowsOp,
    (s1, l1): (&candle_core::CudaStorage, &Layout),
    (s2, l2): (&candle_core::CudaStorage, &Layout),
) -> Result<(candle_core::CudaStorage, Shape)> {
    let d = last_dim(l1);
    super::cuda::run2((s1, l1), (s2, l2), op.operands, |dev, x, b| {
        bias_fits(op.what, b.len(), d)?;
        super::cuda::bias_rows_kernel(dev, op.kernel, op.what, x, b)
    })
}

/// Forward kernel: inputs `(x, b)`.
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "patchwork-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        rows_fwd(&ADD_BIAS, (s1, l1), (s2, l2), |x, b, y| {
            let d = b.len();
            for (row_out, row_in) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                for ((o, v), bv) in row_out.iter_mut().zip(row_in).zip(b) {
                    *o = v + bv;
                }
            }
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        rows_fwd_cuda(&ADD_BIAS, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let db = grad.apply_op1_no_bwd(&ColumnSum)?;
        Ok((Some(grad), Some(db)))
    }
}

/// Sums of the columns of `g`, rows of `d` elements: one row of partial sums per
/// fixed block of rows, the partials filled in parallel by [`for_each_row_block`],
/// then added in order, so the result does not depend on the thread count.
pub(super) fn column_sums(g: &[f32], d: usize) -> Vec<f32> {
    let d = d.max(1);
    let rows = g.len() / d;
    let per_block = rows_per_block(d);
    let blocks = rows.div_ceil(per_block).max(1);
    let mut partials = vec![0f32; blocks * d];
    for_each_row_block(&mut partials, d, |first, out| {
        for (i, acc) in out.chunks_exact_mut(d).enumerate() {
            let start = ((first + i) * per_block).min(rows);
            let end = (start + per_block).min(rows);
            add_rows(acc, &g[start * d..end * d]);
        }
    });
    let mut total = vec![0f32; d];
    for part in partials.chunks_exact(d) {
        for (t, v) in total.iter_mut().zip(part) {
            *t += v;
        }
    }
    total
}

vectorized! {
    /// Adds each `acc.len()`-wide row of `rows` onto `acc`.
    pub(super) fn add_rows(acc: &mut [f32], rows: &[f32]) {
        for row in rows.chunks_exact(acc.len().max(1)) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

/// Backward kernel of the bias: the column sums of the output gradient.
pub(super) struct ColumnSum;

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "patchwork-column-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("add_bias bwd");
        let g = f32_slice(storage, layout, "add_bias output gradient")?;
        let d = last_dim(layout);
        Ok((CpuStorage::F32(column_sums(g, d)), Shape::from(d)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = last_dim(layout);
        super::cuda::run1(
            storage,
            layout,
            "add_bias output gradient",
            Shape::from(d),
            |dev, g| super::cuda::column_sums(dev, g, d),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::test_support::{assert_close, devices, randn};
    use candle_core::{Device, Var};

    fn check(shape: &[usize], seed: u64, dev: &Device) -> Result<()> {
        let d = *shape.last().unwrap_or(&1);
        let x = Var::from_tensor(&randn(seed, shape, 1.0, 0.0, dev)?)?;
        let b = Var::from_tensor(&randn(seed + 1, &[d], 1.0, 0.5, dev)?)?;
        let r = randn(seed + 2, shape, 1.0, 0.0, dev)?;
        let y = broadcast_add(&x, &b)?;
        let y_ref = x.broadcast_add(&b)?;
        assert_close(&y, &y_ref, 1e-6, "forward");
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        for (v, what) in [(&x, "dx"), (&b, "db")] {
            let got = g.get(v).expect("fused grad should exist");
            let want = g_ref.get(v).expect("reference grad should exist");
            assert_close(got, want, 1e-4, what);
        }
        Ok(())
    }

    #[test]
    fn matches_composed_on_odd_shapes() -> Result<()> {
        for dev in devices() {
            check(&[1, 1], 50, &dev)?;
            check(&[1, 7], 51, &dev)?;
            check(&[9, 1], 52, &dev)?;
            check(&[3, 17], 53, &dev)?;
            check(&[2, 5, 33], 54, &dev)?;
            // Many blocks of rows: the parallel column sum.
            check(&[4, 197, 65], 55, &dev)?;
            check(&[13], 56, &dev)?;
        }
        Ok(())
    }

    #[test]
    fn column_sums_by_hand_and_independent_of_blocking() {
        let g = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(column_sums(&g, 3), vec![5.0, 7.0, 9.0]);
        assert_eq!(column_sums(&g, 1), vec![21.0]);
        // 5000 rows of 7: several blocks; every column sums to its index times rows.
        let g: Vec<f32> = (0..5000).flat_map(|_| (0..7).map(|c| c as f32)).collect();
        let want: Vec<f32> = (0..7).map(|c| 5000.0 * c as f32).collect();
        assert_eq!(column_sums(&g, 7), want);
    }

    #[test]
    fn other_shapes_fall_back_to_broadcast_add() -> Result<()> {
        let dev = Device::Cpu;
        let x = randn(60, &[2, 3], 1.0, 0.0, &dev)?;
        let col = randn(61, &[2, 1], 1.0, 0.0, &dev)?;
        assert_close(
            &broadcast_add(&x, &col)?,
            &x.broadcast_add(&col)?,
            0.0,
            "column",
        );
        Ok(())
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        use crate::engine::ops::simd::tests::{assert_same_bits, at_every_level, wavy};
        let rows = wavy(13 * 19, 0.0);
        let runs = at_every_level(|| {
            let mut acc = wavy(19, 1.0);
            add_rows(&mut acc, &rows);
            acc
        });
        assert_same_bits("column sums", &runs);
    }
}
