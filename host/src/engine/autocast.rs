//! bf16 autocast for matrix products, as mixed-precision training does on GPUs: the
//! operands of a matmul are cast to bf16 and the product back to f32, so parameters
//! (the master weights), norms, softmaxes, losses and reductions stay in f32. The
//! backward pass follows the casts: the product's gradients are computed in bf16 and
//! arrive at the f32 weights as f32.
//!
//! A session turns it on with `precision: Bf16`; it applies to the op table's matmuls,
//! the attention products and the patch-embedding convolution of this thread.

use candle_core::{DType, Result, Tensor};

use super::context;

/// Whether this thread's session runs its matrix products in bf16.
pub fn enabled() -> bool {
    context::with(|c| c.bf16_matmul).unwrap_or(false)
}

/// `product(a, b)`, with the operands in bf16 and the result cast back to f32 when
/// autocast is on and both operands are f32; plain `product(a, b)` otherwise.
pub fn product(
    a: &Tensor,
    b: &Tensor,
    product: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if enabled() && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        product(&a.to_dtype(DType::BF16)?, &b.to_dtype(DType::BF16)?)?.to_dtype(DType::F32)
    } else {
        product(a, b)
    }
}

/// `a · b` under autocast.
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(a, b, Tensor::matmul)
}

/// `a · b` with broadcasting, under autocast.
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    product(a, b, Tensor::broadcast_matmul)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::engine::context::{self, HostContext};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    #[test]
    fn bf16_products_are_close_in_f32_and_carry_f32_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let a = Var::randn(0f32, 1.0, (3, 17, 33), &dev)?;
        let b = Var::randn(0f32, 1.0, (33, 9), &dev)?;
        let exact = a.as_tensor().broadcast_matmul(b.as_tensor())?;
        let g_exact = exact.sqr()?.sum_all()?.backward()?;

        let previous = context::install(HostContext::new(dev.clone(), 0));
        assert!(!enabled(), "autocast is off by default");
        context::with(|c| c.bf16_matmul = true);
        let mixed = broadcast_matmul(a.as_tensor(), b.as_tensor());
        let on = enabled();
        context::take();
        if let Some(ctx) = previous {
            context::install(ctx);
        }
        let mixed = mixed?;
        assert!(on);
        assert_eq!(mixed.dtype(), DType::F32);
        // bf16 keeps 8 significant bits: products of 33 unit-variance terms differ
        // from f32 by a few hundredths.
        let d = max_diff(&mixed, &exact);
        assert!(d > 0.0 && d < 0.15, "forward differs by {d}");
        let g_mixed = mixed.sqr()?.sum_all()?.backward()?;
        for v in [&a, &b] {
            let (gm, ge) = (
                g_mixed.get(v.as_tensor()).expect("gradient"),
                g_exact.get(v.as_tensor()).expect("gradient"),
            );
            assert_eq!(gm.dtype(), DType::F32);
            let scale = ge.abs()?.max_all()?.to_scalar::<f32>()?;
            let d = max_diff(gm, ge) / scale;
            assert!(d < 0.03, "relative gradient difference {d}");
        }
        Ok(())
    }

    #[test]
    fn other_dtypes_and_no_context_are_left_alone() -> Result<()> {
        let a = Tensor::randn(0f64, 1.0, (4, 5), &Device::Cpu)?;
        let b = Tensor::randn(0f64, 1.0, (5, 2), &Device::Cpu)?;
        assert_eq!(
            max_diff(
                &matmul(&a, &b)?.to_dtype(DType::F32)?,
                &a.matmul(&b)?.to_dtype(DType::F32)?
            ),
            0.0
        );
        Ok(())
    }
}
