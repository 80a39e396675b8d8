//! Exact (erf) GELU, with backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::{Route, exp_neg, f32_slice, for_each_row_block, route, same_length, simd::vectorized};

/// Elements per "row" handed to the block scheduler (GELU is element-wise).
const CHUNK: usize = 1024;

/// `1 / sqrt(2)`.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU: `x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))` (PyTorch's default
/// `nn.GELU()`, not the tanh approximation).
///
/// Backward: `dx = g * (Phi(x) + x * phi(x))`, with `phi` the standard normal density.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    match route(x) {
        Route::Upcast => gelu_erf(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype()),
        Route::Fused => x.contiguous()?.apply_op1(Gelu),
        Route::Composed => x.gelu_erf(),
    }
}

/// `erf` for f32: a rational approximation (Eigen's `generic_fast_erf_float`), odd
/// polynomial over even polynomial on `[-4, 4]`, clamped outside (within 1e-7 of ±1).
/// Absolute error below 1e-6 (checked against f64 `erf` in the tests); branch-free, so it
/// vectorises.
#[inline]
fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_473_9e-2;
    p / q
}

/// Standard normal CDF.
#[inline]
fn phi_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf_fast(x * FRAC_1_SQRT_2))
}

/// `gelu(x) = x·Φ(x)`.
#[inline]
pub(super) fn gelu_value(x: f32) -> f32 {
    x * phi_cdf(x)
}

/// `gelu'(x) = Φ(x) + x·φ(x)`.
#[inline]
pub(super) fn gelu_slope(x: f32) -> f32 {
    let pdf = FRAC_1_SQRT_2PI * exp_neg(-0.5 * x * x);
    phi_cdf(x) + x * pdf
}

vectorized! {
    /// `y = gelu(x)`, element-wise.
    pub(super) fn gelu_into(x: &[f32], y: &mut [f32]) {
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv = gelu_value(*xv);
        }
    }
}

vectorized! {
    /// `x = gelu(x)`, element-wise.
    pub(super) fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_value(*v);
        }
    }
}

vectorized! {
    /// `dx = g·gelu'(x)`, element-wise.
    pub(super) fn gelu_grad_into(x: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((o, xv), gv) in dx.iter_mut().zip(x).zip(g) {
            *o = gv * gelu_slope(*xv);
        }
    }
}

/// Forward CPU kernel.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "patchwork-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("gelu fwd");
        let x = f32_slice(storage, layout, "gelu input")?;
        let mut y = vec![0f32; x.len()];
        for_each_row_block(&mut y, CHUNK, |first, out| {
            let start = first * CHUNK;
            gelu_into(&x[start..start + out.len()], out);
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::run1(
            storage,
            layout,
            "gelu input",
            layout.shape().clone(),
            super::cuda::gelu,
        )
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &GeluBwd)?))
    }
}

/// Backward CPU kernel: inputs `(x, grad_y)`, output `dx`.
struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "patchwork-gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _span = crate::engine::profile::span("gelu bwd");
        let x = f32_slice(s1, l1, "gelu input")?;
        let g = f32_slice(s2, l2, "gelu output gradient")?;
        same_length("gelu", x.len(), g.len())?;
        let mut dx = vec![0f32; x.len()];
        for_each_row_block(&mut dx, CHUNK, |first, out| {
            let range = first * CHUNK..first * CHUNK + out.len();
            gelu_grad_into(&x[range.clone()], &g[range], out);
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
        super::cuda::run2(
            (s1, l1),
            (s2, l2),
            ["gelu input", "gelu output gradient"],
            super::cuda::gelu_bwd,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ops::test_support::{assert_close, devices, randn};
    use candle_core::{Device, Var};

    #[test]
    fn erf_fast_is_accurate() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let exact = candle_core::cpu::erf::erf_f64(f64::from(x));
            worst = worst.max((f64::from(erf_fast(x)) - exact).abs());
        }
        assert!(worst < 1e-6, "max abs error {worst}");
        assert!((erf_fast(10.0) - 1.0).abs() <= 1e-6);
        assert!((erf_fast(-10.0) + 1.0).abs() <= 1e-6);
        assert_eq!(erf_fast(0.0), 0.0);
    }

    fn check(shape: &[usize], seed: u64, dev: &Device) -> Result<()> {
        let x = Var::from_tensor(&randn(seed, shape, 2.5, 0.0, dev)?)?;
        let r = randn(seed + 1, shape, 1.0, 0.0, dev)?;
        let y = gelu_erf(&x)?;
        let y_ref = x.gelu_erf()?;
        assert_close(&y, &y_ref, 1e-5, "forward");
        let g = (&y * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        let got = g.get(&x).expect("fused grad should exist");
        let want = g_ref.get(&x).expect("reference grad should exist");
        // candle's reference backward rounds 1/sqrt(2 pi) to 0.398942.
        assert_close(got, want, 2e-5, "backward");
        Ok(())
    }

    #[test]
    fn matches_composed() -> Result<()> {
        for dev in devices() {
            check(&[2, 3, 7], 40, &dev)?;
            check(&[5, 16], 41, &dev)?;
            check(&[3, 7000], 42, &dev)?;
        }
        Ok(())
    }

    #[test]
    fn known_values() -> Result<()> {
        // PyTorch: torch.nn.functional.gelu(torch.tensor([-3., -1., 0., 0.5, 2.]))
        // -> [-0.0040, -0.1587, 0.0000, 0.3457, 1.9545]
        let x = Tensor::new(&[-3f32, -1., 0., 0.5, 2.], &Device::Cpu)?;
        let want = Tensor::new(
            &[
                -0.004_049_7f32,
                -0.158_655_25,
                0.,
                0.345_731_34,
                1.954_499_7,
            ],
            &Device::Cpu,
        )?;
        assert_close(&gelu_erf(&x)?, &want, 1e-6, "gelu values");
        Ok(())
    }

    #[test]
    fn every_vector_width_computes_the_same_bits() {
        use crate::engine::ops::simd::tests::{assert_same_bits, at_every_level, wavy};
        let (x, g) = (wavy(1029, 0.0), wavy(1029, 3.0));
        let runs = at_every_level(|| {
            let mut y = vec![0f32; x.len()];
            gelu_into(&x, &mut y);
            let mut dx = vec![0f32; x.len()];
            gelu_grad_into(&x, &g, &mut dx);
            y.extend(dx);
            y
        });
        assert_same_bits("gelu", &runs);
    }
}
