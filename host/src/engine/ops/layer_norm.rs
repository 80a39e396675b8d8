//! Layer normalisation over the last dimension, with backward.

use std::sync::{Mutex, PoisonError};

use candle_core::{CpuStorage, CustomOp3, D, DType, Layout, Result, Shape, Tensor, bail};

use super::{
    Route, dot8, f32_slice, for_each_row_block, last_dim, route, rows_per_block, simd::vectorized,
    sq_dev8, sum8,
};

/// Layer normalisation over the last dimension of `x`:
/// `(x - mean) / sqrt(var + eps) * weight + bias`, with the biased variance (as PyTorch).
///
/// `weight` and `bias` have shape `[d]` where `d` is the last dimension of `x`. Gradients
/// flow to all three inputs.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    for (what, t) in [("weight", weight), ("bias", bias)] {
        if t.dims() != [d] {
            bail!(
                "layer_norm {what} has shape {:?}, expected [{d}] (the last dim of input {:?})",
                t.dims(),
                x.dims()
            );
        }
    }
    match route(x) {
        Route::Upcast => {
            let dtype = x.dtype();
            let y = layer_norm(
                &x.to_dtype(DType::F32)?,
                &weight.to_dtype(DType::F32)?,
                &bias.to_dtype(DType::F32)?,
                eps,
            )?;
            y.to_dtype(dtype)
        }
        Route::Fused
            if weight.dtype() == DType::F32
                && bias.dtype() == DType::F32
                && weight.device().same_device(x.device())
                && bias.device().same_device(x.device()) =>
        {
            x.contiguous()?.apply_op3(
                &weight.contiguous()?,
                &bias.contiguous()?,
                LayerNorm { eps },
            )
        }
        _ => composed(x, weight, bias, eps),
    }
}

/// The composed-op reference (and the fallback off the CPU).
pub(crate) fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let x_hat = centered.broadcast_div(&(var + f64::from(eps))?.sqrt()?)?;
    x_hat.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Refuses a weight or bias whose length is not the row length `d`.
fn params_fit(d: usize, w: usize, b: usize) -> Result<()> {
    if w != d || b != d {
        bail!("layer_norm weight/bias length {w}/{b} should be {d}");
    }
    Ok(())
}

/// Refuses backward inputs of lengths that do not go together.
fn backward_inputs_fit(d: usize, x: usize, w: usize, g: usize) -> Result<()> {
    if w != d || g != x {
        bail!(
            "layer_norm backward: weight length {w} should be {d}, gradient length {g} should be {x}"
        );
    }
    Ok(())
}

/// Mean and reciprocal standard deviation of one row (two passes; the row is in cache).
#[inline]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum8(row) / n;
    let var = sq_dev8(row, mean) / n;
    (mean, (var + eps).sqrt().recip())
}

vectorized! {
    /// `y = (x − mean)·rstd·w + b` for each row (rows as wide as `w`).
    fn norm_rows(x: &[f32], y: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let d = w.len().max(1);
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let (mean, rstd) = moments(xr, eps);
            for (((yv, xv), wv), bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *yv = (xv - mean) * rstd * wv + bv;
            }
        }
    }
}

vectorized! {
    /// The input gradient of each row (rows as wide as `w`) into `dx`, adding the rows'
    /// weight and bias gradients to the last two quarters of `work` (`4·d` long: x̂,
    /// g·w, dweight, dbias).
    fn norm_grad_rows(x: &[f32], g: &[f32], dx: &mut [f32], w: &[f32], eps: f32, work: &mut [f32]) {
        let d = w.len().max(1);
        let n = d as f32;
        let (x_hat, rest) = work.split_at_mut(d);
        let (gw, acc) = rest.split_at_mut(d);
        let (dw, db) = acc.split_at_mut(d);
        for ((xr, gr), dxr) in x
            .chunks_exact(d)
            .zip(g.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            let (mean, rstd) = moments(xr, eps);
            for ((((h, p), xv), gv), wv) in
                x_hat.iter_mut().zip(gw.iter_mut()).zip(xr).zip(gr).zip(w)
            {
                *h = (xv - mean) * rstd;
                *p = gv * wv;
            }
            let mean_gw = sum8(gw) / n;
            let mean_gw_xhat = dot8(gw, x_hat) / n;
            for (((o, h), p), (a, (b, gv))) in dxr
                .iter_mut()
                .zip(x_hat.iter())
                .zip(gw.iter())
                .zip(dw.iter_mut().zip(db.iter_mut().zip(gr)))
            {
                *o = rstd * (p - mean_gw - h * mean_gw_xhat);
                *a += gv * h;
                *b += gv;
            }
        }
    }
}

/// Forward CPU kernel: inputs `(x, weight, bias)`.
struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "patchwork-layer-norm"
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
        let _span = crate::engine::profile::span("layer_norm fwd");
        let x = f32_slice(s1, l1, "layer_norm input")?;
        let w = f32_slice(s2, l2, "layer_norm weight")?;
        let b = f32_slice(s3, l3, "layer_norm bias")?;
        let d = last_dim(l1);
        params_fit(d, w.len(), b.len())?;
        let eps = self.eps;
        let mut y = vec![0f32; x.len()];
        for_each_row_block(&mut y, d, |first_row, out| {
            let start = first_row * d;
            norm_rows(&x[start..start + out.len()], out, w, b, eps);
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
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
        let dev = &s1.device;
        let x = super::cuda::view(s1, l1, "layer_norm input")?;
        let w = super::cuda::view(s2, l2, "layer_norm weight")?;
        let b = super::cuda::view(s3, l3, "layer_norm bias")?;
        let d = last_dim(l1);
        params_fit(d, w.len(), b.len())?;
        let y = super::cuda::layer_norm(dev, &x, &w, &b, self.eps)?;
        Ok((super::cuda::storage(y, dev), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad_res.contiguous()?;
        let d = x.dim(D::Minus1)?;
        let rows = x.elem_count() / d.max(1);
        // One kernel returns `rows` rows of dx followed by one row of dweight and one of dbias.
        let packed = x.apply_op3_no_bwd(weight, &grad, &LayerNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dweight = packed.narrow(0, rows, 1)?.reshape(d)?;
        let dbias = packed.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dweight), Some(dbias)))
    }
}

/// Backward CPU kernel: inputs `(x, weight, grad_y)`; output `(rows + 2, d)`: dx rows, then
/// dweight, then dbias.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "patchwork-layer-norm-bwd"
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
        let _span = crate::engine::profile::span("layer_norm bwd");
        let x = f32_slice(s1, l1, "layer_norm input")?;
        let w = f32_slice(s2, l2, "layer_norm weight")?;
        let g = f32_slice(s3, l3, "layer_norm output gradient")?;
        let d = last_dim(l1);
        backward_inputs_fit(d, x.len(), w.len(), g.len())?;
        let rows = x.len() / d.max(1);
        let eps = self.eps;
        let mut out = vec![0f32; x.len() + 2 * d];
        let (dx, tail) = out.split_at_mut(x.len());

        // Per-block partial sums of dweight and dbias, combined in block order afterwards so
        // the result does not depend on scheduling.
        let n_blocks = rows.div_ceil(rows_per_block(d)).max(1);
        let partials: Vec<Mutex<Vec<f32>>> =
            (0..n_blocks).map(|_| Mutex::new(Vec::new())).collect();
        for_each_row_block(dx, d, |first_row, out| {
            let range = first_row * d..first_row * d + out.len();
            // x̂ | g·w of the current row, then the block's dweight | dbias sums.
            let mut work = vec![0f32; 4 * d];
            norm_grad_rows(&x[range.clone()], &g[range], out, w, eps, &mut work);
            let acc = work.split_off(2 * d);
            let block = first_row / rows_per_block(d);
            *partials[block]
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = acc;
        });
        for partial in partials {
            let partial = partial.into_inner().unwrap_or_else(PoisonError::into_inner);
            for (t, p) in tail.iter_mut().zip(&partial) {
                *t += p;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from_dims(&[rows + 2, d])))
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
        let dev = &s1.device;
        let x = super::cuda::view(s1, l1, "layer_norm input")?;
        let w = super::cuda::view(s2, l2, "layer_norm weight")?;
        let g = super::cuda::view(s3, l3, "layer_norm output gradient")?;
        let d = last_dim(l1);
        backward_inputs_fit(d, x.len(), w.len(), g.len())?;
        let rows = x.len() / d.max(1);
        let packed = super::cuda::layer_norm_bwd(dev, &x, &w, &g, self.eps)?;
        Ok((
            super::cuda::storage(packed, dev),
            Shape::from_dims(&[rows + 2, d]),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::test_support::{assert_close, devices, randn};
    use candle_core::{Device, Var};

    /// Forward and all three gradients of the fused op against the composed reference.
    fn check(shape: &[usize], seed: u64, device: &Device) -> Result<()> {
        let d = shape[shape.len() - 1];
        let x = Var::from_tensor(&randn(seed, shape, 2.0, 0.5, device)?)?;
        let w = Var::from_tensor(&randn(seed + 1, &[d], 1.0, 1.0, device)?)?;
        let b = Var::from_tensor(&randn(seed + 2, &[d], 1.0, 0.0, device)?)?;
        let r = randn(seed + 3, shape, 1.0, 0.0, device)?;

        let y = layer_norm(&x, &w, &b, 1e-6)?;
        let y_ref = composed(&x, &w, &b, 1e-6)?;
        assert_close(&y, &y_ref, 1e-5, "layer_norm forward");

        let grads = (&y * &r)?.sum_all()?.backward()?;
        let grads_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        for (name, v) in [("dx", &x), ("dweight", &w), ("dbias", &b)] {
            let got = grads.get(v).expect("fused grad should exist");
            let want = grads_ref.get(v).expect("reference grad should exist");
            assert_close(got, want, 1e-5, name);
        }
        Ok(())
    }

    #[test]
    fn matches_composed_small_shapes() -> Result<()> {
        for device in devices() {
            check(&[2, 3, 7], 1, &device)?;
            check(&[5, 16], 2, &device)?;
            check(&[9], 3, &device)?;
        }
        Ok(())
    }

    #[test]
    fn matches_composed_across_many_blocks() -> Result<()> {
        // 300 rows of 384: several parallel blocks, exercises the partial-sum reduction.
        check(&[3, 100, 384], 4, &Device::Cpu)
    }

    #[test]
    fn weight_and_bias_get_nonzero_grads() -> Result<()> {
        let x = randn(5, &[4, 8], 1.0, 0.0, &Device::Cpu)?;
        let w = Var::ones(8, DType::F32, &Device::Cpu)?;
        let b = Var::zeros(8, DType::F32, &Device::Cpu)?;
        let r = randn(6, &[4, 8], 1.0, 0.0, &Device::Cpu)?;
        let grads = (layer_norm(&x, &w, &b, 1e-5)? * r)?.sum_all()?.backward()?;
        for (name, v) in [("weight", &w), ("bias", &b)] {
            let g = grads.get(v).expect("grad should exist");
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 1e-6, "{name} grad is zero");
        }
        Ok(())
    }

    #[test]
    fn non_contiguous_input() -> Result<()> {
        let dev = &Device::Cpu;
        let x = Var::from_tensor(&randn(7, &[6, 4], 1.0, 0.0, dev)?)?;
        let xt = x.t()?; // (4, 6), strided
        let w = Var::from_tensor(&randn(9, &[6], 1.0, 1.0, dev)?)?;
        let b = Var::from_tensor(&randn(10, &[6], 1.0, 0.0, dev)?)?;
        let r = randn(11, &[4, 6], 1.0, 0.0, dev)?;
        let y = layer_norm(&xt, &w, &b, 1e-5)?;
        let y_ref = composed(&xt, &w, &b, 1e-5)?;
        assert_close(&y, &y_ref, 1e-5, "forward");
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        let got = g.get(&x).expect("grad should exist");
        let want = g_ref.get(&x).expect("grad should exist");
        assert_close(got, want, 1e-5, "dx through transpose");
        Ok(())
    }

    #[test]
    fn half_precision_upcasts() -> Result<()> {
        let x = randn(12, &[3, 10], 1.0, 0.0, &Device::Cpu)?;
        let w = randn(13, &[10], 1.0, 1.0, &Device::Cpu)?;
        let b = randn(14, &[10], 1.0, 0.0, &Device::Cpu)?;
        let y32 = layer_norm(&x, &w, &b, 1e-6)?;
        let y16 = layer_norm(
            &x.to_dtype(DType::BF16)?,
            &w.to_dtype(DType::BF16)?,
            &b.to_dtype(DType::BF16)?,
            1e-6,
        )?;
        assert_eq!(y16.dtype(), DType::BF16);
        assert_close(&y16.to_dtype(DType::F32)?, &y32, 5e-2, "bf16 forward");
        Ok(())
    }

    #[test]
    fn rejects_mismatched_weight() -> Result<()> {
        let x = randn(15, &[2, 5], 1.0, 0.0, &Device::Cpu)?;
        let w = randn(16, &[4], 1.0, 0.0, &Device::Cpu)?;
        let err = layer_norm(&x, &w, &w, 1e-6).expect_err("shape mismatch should fail");
        assert!(err.to_string().contains("expected [5]"), "{err}");
        Ok(())
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        use crate::engine::ops::simd::tests::{assert_same_bits, at_every_level, wavy};
        let d = 45;
        let (x, g, w, b) = (
            wavy(7 * d, 0.0),
            wavy(7 * d, 2.0),
            wavy(d, 5.0),
            wavy(d, 9.0),
        );
        let runs = at_every_level(|| {
            let mut y = vec![0f32; x.len()];
            norm_rows(&x, &mut y, &w, &b, 1e-6);
            let mut dx = vec![0f32; x.len()];
            let mut work = vec![0f32; 4 * d];
            norm_grad_rows(&x, &g, &mut dx, &w, 1e-6, &mut work);
            y.extend(dx);
            y.extend(work);
            y
        });
        assert_same_bits("layer norm", &runs);
    }
}
