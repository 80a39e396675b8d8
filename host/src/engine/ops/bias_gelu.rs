//! `gelu(x + b)`: a linear layer's bias and activation as one op, for the linear layers
//! that do not take the CPU's fused [`super::linear`] (CUDA, bf16 autocast). One kernel
//! instead of a bias add and a GELU, and a backward that recomputes `x + b` from its
//! inputs instead of keeping it.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, D, Layout, Result, Shape, Tensor};

use super::{
    Route,
    bias::bias_fits,
    f32_slice, for_each_row_block,
    gelu::{gelu_slope, gelu_value},
    last_dim, route, same_length,
    simd::vectorized,
};

/// `gelu(x + b)` with `b` of shape `[d]` broadcast over the leading dimensions of `x`
/// (`x`'s last dimension is `d`); gradients flow to both. Other shapes, dtypes and
/// devices compose [`super::broadcast_add`] and [`super::gelu_erf`].
pub fn bias_gelu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let is_bias = b.rank() == 1 && x.rank() >= 1 && x.dim(D::Minus1)? == b.dim(0)?;
    let same_kind = b.dtype() == x.dtype() && b.device().same_device(x.device());
    match route(x) {
        Route::Fused if is_bias && same_kind => {
            x.contiguous()?.apply_op2(&b.contiguous()?, BiasGelu)
        }
        Route::Fused | Route::Upcast | Route::Composed => composed(x, b),
    }
}

/// The composed reference.
pub fn composed(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    super::gelu_erf(&super::broadcast_add(x, b)?)
}

vectorized! {
    /// `y = gelu(x + b)` over rows as wide as `b`.
    fn bias_gelu_rows(x: &[f32], b: &[f32], y: &mut [f32]) {
        let d = b.len().max(1);
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            for ((yv, xv), bv) in yr.iter_mut().zip(xr).zip(b) {
                *yv = gelu_value(xv + bv);
            }
        }
    }
}

vectorized! {
    /// `dx = g·gelu'(x + b)` over rows as wide as `b`.
    fn bias_gelu_grad_rows(x: &[f32], b: &[f32], g: &[f32], dx: &mut [f32]) {
        let d = b.len().max(1);
        for ((xr, gr), dr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            for (((o, xv), gv), bv) in dr.iter_mut().zip(xr).zip(gr).zip(b) {
                *o = gv * gelu_slope(xv + bv);
            }
        }
    }
}

/// Forward op: inputs `(x, b)`.
struct BiasGelu;

/// [`BiasGelu`]'s forward, as [`super::bias::rows_fwd`] runs it.
const BIAS_GELU: super::bias::RowsOp = super::bias::RowsOp {
    what: "bias_gelu",
    span: "bias_gelu fwd",
    operands: ["bias_gelu input", "bias_gelu bias"],
    kernel: "pw_bias_gelu_fwd",
};

impl CustomOp2 for BiasGelu {
    fn name(&self) -> &'static str {
        "patchwork-bias-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        super::bias::rows_fwd(&BIAS_GELU, (s1, l1), (s2, l2), bias_gelu_rows)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::bias::rows_fwd_cuda(&BIAS_GELU, (s1, l1), (s2, l2))
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let dx = x.apply_op3_no_bwd(b, &grad, &BiasGeluBwd)?;
        let db = dx.apply_op1_no_bwd(&super::bias::ColumnSum)?;
        Ok((Some(dx), Some(db)))
    }
}

/// Backward op: inputs `(x, b, grad_y)`, output `dx` (the bias gradient is its column sums).
struct BiasGeluBwd;

impl CustomOp3 for BiasGeluBwd {
    fn name(&self) -> &'static str {
        "patchwork-bias-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("bias_gelu bwd");
        let x = f32_slice(s1, l1, "bias_gelu input")?;
        let b = f32_slice(s2, l2, "bias_gelu bias")?;
        let g = f32_slice(s3, l3, "bias_gelu output gradient")?;
        let d = last_dim(l1);
        bias_fits("bias_gelu", b.len(), d)?;
        same_length("bias_gelu", x.len(), g.len())?;
        let mut dx = vec![0f32; x.len()];
        for_each_row_block(&mut dx, d, |first, out| {
            let range = first * d..first * d + out.len();
            bias_gelu_grad_rows(&x[range.clone()], b, &g[range], out);
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda;
        let d = last_dim(l1);
        let x = cuda::view(s1, l1, "bias_gelu input")?;
        let b = cuda::view(s2, l2, "bias_gelu bias")?;
        let g = cuda::view(s3, l3, "bias_gelu output gradient")?;
        bias_fits("bias_gelu", b.len(), d)?;
        same_length("bias_gelu", x.len(), g.len())?;
        let dx = cuda::bias_gelu_bwd(&s1.device, &x, &b, &g)?;
        Ok((cuda::storage(dx, &s1.device), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::engine::ops::test_support::{assert_close, devices, randn};

    fn check(shape: &[usize], seed: u64, dev: &Device) -> Result<()> {
        let d = *shape.last().unwrap_or(&1);
        let x = Var::from_tensor(&randn(seed, shape, 1.5, 0.0, dev)?)?;
        let b = Var::from_tensor(&randn(seed + 1, &[d], 1.0, 0.3, dev)?)?;
        let y = bias_gelu(&x, &b)?;
        let y_ref = composed(&x, &b)?;
        let what = format!("{shape:?} on {dev:?}");
        assert_close(&y, &y_ref, 1e-5, &format!("{what} forward"));
        let r = randn(seed + 2, shape, 1.0, 0.0, dev)?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        for (name, var) in [("dx", &x), ("db", &b)] {
            let got = g.get(var).expect("fused grad should exist");
            let want = g_ref.get(var).expect("reference grad should exist");
            assert_close(got, want, 1e-4, &format!("{what} {name}"));
        }
        Ok(())
    }

    #[test]
    fn matches_composed_on_odd_shapes() -> Result<()> {
        for dev in devices() {
            check(&[1], 200, &dev)?;
            check(&[1, 7], 201, &dev)?;
            check(&[9, 1], 202, &dev)?;
            check(&[3, 5, 17], 203, &dev)?;
            check(&[130, 97], 204, &dev)?;
        }
        Ok(())
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        use crate::engine::ops::simd::tests::{assert_same_bits, at_every_level, wavy};
        let d = 23;
        let (x, b, g) = (wavy(6 * d, 0.0), wavy(d, 2.0), wavy(6 * d, 5.0));
        let runs = at_every_level(|| {
            let mut y = vec![0f32; x.len()];
            bias_gelu_rows(&x, &b, &mut y);
            let mut dx = vec![0f32; x.len()];
            bias_gelu_grad_rows(&x, &b, &g, &mut dx);
            y.extend(dx);
            y
        });
        assert_same_bits("bias_gelu", &runs);
    }

    #[test]
    fn other_shapes_compose() -> Result<()> {
        let dev = &Device::Cpu;
        let x = randn(210, &[4, 6], 1.0, 0.0, dev)?;
        let b = randn(211, &[4, 1], 1.0, 0.0, dev)?;
        assert_close(
            &bias_gelu(&x, &b)?,
            &composed(&x, &b)?,
            0.0,
            "broadcast column",
        );
        Ok(())
    }
}
