//! Softmax and log-softmax over the last dimension, with backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Tensor};

use super::{
    Route, dot8, exp_neg, f32_slice, for_each_row_block, last_dim, max8, route, same_length,
    simd::vectorized, sum8,
};

/// Softmax over the last dimension (max-subtracted, so large logits do not overflow).
///
/// Backward: `dx = y * (g - sum(g * y))`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match route(x) {
        Route::Upcast => softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        Route::Fused => x.contiguous()?.apply_op1(Softmax { log: false }),
        Route::Composed => composed_softmax(x),
    }
}

/// Log-softmax over the last dimension: `x - max - ln(sum(exp(x - max)))`.
///
/// Backward: `dx = g - exp(y) * sum(g)`.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match route(x) {
        Route::Upcast => log_softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        Route::Fused => x.contiguous()?.apply_op1(Softmax { log: true }),
        Route::Composed => composed_log_softmax(x),
    }
}

/// `x - max(x)` over the last dimension; the max is a constant for the gradient (softmax is
/// invariant to the shift, so this is exact and avoids routing gradient through ties).
fn shifted(x: &Tensor) -> Result<Tensor> {
    x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())
}

/// The composed-op softmax reference (and the fallback off the CPU).
pub(crate) fn composed_softmax(x: &Tensor) -> Result<Tensor> {
    let e = shifted(x)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// The composed-op log-softmax reference (and the fallback off the CPU).
pub(crate) fn composed_log_softmax(x: &Tensor) -> Result<Tensor> {
    let s = shifted(x)?;
    s.broadcast_sub(&s.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// Forward CPU kernel for softmax (`log == false`) and log-softmax (`log == true`).
struct Softmax {
    log: bool,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        if self.log {
            "patchwork-log-softmax"
        } else {
            "patchwork-softmax"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("softmax fwd");
        let x = f32_slice(storage, layout, "softmax input")?;
        let d = last_dim(layout);
        let log = self.log;
        let mut y = vec![0f32; x.len()];
        for_each_row_block(&mut y, d, |first_row, out| {
            let start = first_row * d;
            softmax_rows(&x[start..start + out.len()], out, d, log);
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
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
            "softmax input",
            layout.shape().clone(),
            |dev, x| super::cuda::softmax(dev, x, d, self.log),
        )
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        let dx = res.apply_op2_no_bwd(&grad, &SoftmaxBwd { log: self.log })?;
        Ok(Some(dx))
    }
}

/// Backward CPU kernel: inputs `(y, grad_y)`, output `dx`.
struct SoftmaxBwd {
    log: bool,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        if self.log {
            "patchwork-log-softmax-bwd"
        } else {
            "patchwork-softmax-bwd"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("softmax bwd");
        let y = f32_slice(s1, l1, "softmax output")?;
        let g = f32_slice(s2, l2, "softmax output gradient")?;
        same_length("softmax", y.len(), g.len())?;
        let d = last_dim(l1);
        let log = self.log;
        let mut dx = vec![0f32; y.len()];
        for_each_row_block(&mut dx, d, |first_row, out| {
            let range = first_row * d..first_row * d + out.len();
            softmax_grad_rows(&y[range.clone()], &g[range], out, d, log);
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
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let d = last_dim(l1);
        super::cuda::run2(
            (s1, l1),
            (s2, l2),
            ["softmax output", "softmax output gradient"],
            |dev, y, g| super::cuda::softmax_bwd(dev, y, g, d, self.log),
        )
    }
}

vectorized! {
    /// The (log-)softmax of each `d`-wide row of `x` into `y`.
    fn softmax_rows(x: &[f32], y: &mut [f32], d: usize, log: bool) {
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let max = max8(xr);
            for (yv, xv) in yr.iter_mut().zip(xr) {
                *yv = exp_neg(xv - max);
            }
            let sum = sum8(yr);
            if log {
                let shift = max + sum.ln();
                for (yv, xv) in yr.iter_mut().zip(xr) {
                    *yv = xv - shift;
                }
            } else {
                let inv = sum.recip();
                for yv in yr.iter_mut() {
                    *yv *= inv;
                }
            }
        }
    }
}

vectorized! {
    /// The input gradient of each `d`-wide row from the output `y` and its gradient `g`.
    fn softmax_grad_rows(y: &[f32], g: &[f32], dx: &mut [f32], d: usize, log: bool) {
        for ((yr, gr), dr) in y
            .chunks_exact(d)
            .zip(g.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            if log {
                let sum_g = sum8(gr);
                for ((o, yv), gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *o = gv - exp_neg(*yv) * sum_g;
                }
            } else {
                let dot = dot8(gr, yr);
                for ((o, yv), gv) in dr.iter_mut().zip(yr).zip(gr) {
                    *o = yv * (gv - dot);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::test_support::{assert_close, devices, randn};
    use candle_core::{Device, Var};

    type OpFn = fn(&Tensor) -> Result<Tensor>;

    fn check(op: OpFn, reference: OpFn, shape: &[usize], seed: u64, dev: &Device) -> Result<()> {
        let x = Var::from_tensor(&randn(seed, shape, 3.0, 0.0, dev)?)?;
        let r = randn(seed + 1, shape, 1.0, 0.0, dev)?;
        let y = op(&x)?;
        let y_ref = reference(&x)?;
        assert_close(&y, &y_ref, 1e-5, "forward");
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        let got = g.get(&x).expect("fused grad should exist");
        let want = g_ref.get(&x).expect("reference grad should exist");
        assert_close(got, want, 1e-5, "backward");
        Ok(())
    }

    #[test]
    fn softmax_matches_composed() -> Result<()> {
        for dev in devices() {
            for (i, shape) in [&[2, 3, 7][..], &[5, 16], &[1], &[40, 500]]
                .iter()
                .enumerate()
            {
                check(
                    softmax_last_dim,
                    composed_softmax,
                    shape,
                    10 + i as u64,
                    &dev,
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn log_softmax_matches_composed() -> Result<()> {
        for dev in devices() {
            for (i, shape) in [&[2, 3, 7][..], &[5, 16], &[1], &[40, 500]]
                .iter()
                .enumerate()
            {
                check(
                    log_softmax_last_dim,
                    composed_log_softmax,
                    shape,
                    20 + i as u64,
                    &dev,
                )?;
            }
        }
        Ok(())
    }

    #[test]
    fn softmax_matches_candle_nn_and_sums_to_one() -> Result<()> {
        let x = randn(30, &[4, 9], 2.0, 0.0, &Device::Cpu)?;
        let y = softmax_last_dim(&x)?;
        let nn = candle_nn::ops::softmax_last_dim(&x)?;
        assert_close(&y, &nn, 1e-6, "vs candle-nn");
        let ones = Tensor::ones(4, DType::F32, &Device::Cpu)?;
        assert_close(&y.sum(1)?, &ones, 1e-6, "row sums");
        Ok(())
    }

    #[test]
    fn large_logits_stay_finite() -> Result<()> {
        let x = Tensor::new(
            &[[1000f32, 1001., 999.], [-1000., -1000., -1000.]],
            &Device::Cpu,
        )?;
        let y = softmax_last_dim(&x)?;
        let ly = log_softmax_last_dim(&x)?;
        assert_close(&y, &composed_softmax(&x)?, 1e-6, "softmax");
        assert_close(&ly, &composed_log_softmax(&x)?, 1e-5, "log_softmax");
        let finite = ly.to_vec2::<f32>()?.iter().flatten().all(|v| v.is_finite());
        assert!(finite);
        Ok(())
    }

    #[test]
    fn non_contiguous_input() -> Result<()> {
        let x = Var::from_tensor(&randn(31, &[7, 5], 1.0, 0.0, &Device::Cpu)?)?;
        let xt = x.t()?;
        let r = randn(32, &[5, 7], 1.0, 0.0, &Device::Cpu)?;
        let g = (softmax_last_dim(&xt)? * &r)?.sum_all()?.backward()?;
        let g_ref = (composed_softmax(&xt)? * &r)?.sum_all()?.backward()?;
        let got = g.get(&x).expect("grad should exist");
        let want = g_ref.get(&x).expect("grad should exist");
        assert_close(got, want, 1e-5, "dx through transpose");
        Ok(())
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        use crate::engine::ops::simd::tests::{assert_same_bits, at_every_level, wavy};
        let d = 37;
        let (x, g) = (wavy(5 * d, 0.0), wavy(5 * d, 3.0));
        let runs = at_every_level(|| {
            let mut all = Vec::new();
            for log in [false, true] {
                let mut y = vec![0f32; x.len()];
                softmax_rows(&x, &mut y, d, log);
                let mut dx = vec![0f32; x.len()];
                softmax_grad_rows(&y, &g, &mut dx, d, log);
                all.extend(y);
                all.extend(dx);
            }
            all
        });
        assert_same_bits("softmax", &runs);
    }
}
