//! Gradient clipping.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};

/// L2 norms of the gradients of `vars` (`None` for a var without a gradient), read back
/// with a single device-to-host transfer.
fn grad_norms(grads: &GradStore, vars: &[Var]) -> Result<Vec<Option<f64>>> {
    let mut squares = Vec::with_capacity(vars.len());
    let mut present = Vec::with_capacity(vars.len());
    for var in vars {
        match grads.get(var.as_tensor()) {
            Some(g) => {
                squares.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
                present.push(true);
            }
            None => present.push(false),
        }
    }
    let values = if squares.is_empty() {
        Vec::new()
    } else {
        Tensor::stack(&squares, 0)?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?
    };
    let mut values = values.into_iter();
    Ok(present
        .into_iter()
        .map(|p| {
            if p {
                values.next().map(|sq| f64::from(sq).sqrt())
            } else {
                None
            }
        })
        .collect())
}

/// DINO's `clip_gradients` (utils.py): each tensor's gradient is clipped on its own. For a
/// gradient of L2 norm `n`, `clip_coef = max_norm / (n + 1e-6)`; if it is below 1 the
/// gradient is multiplied by it (a NaN norm leaves the gradient as it is, as in DINO).
///
/// Returns one norm per entry of `vars` (before clipping); a var without a gradient gets
/// `0.0` and is skipped.
pub fn clip_per_param(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<Vec<f64>> {
    let norms = grad_norms(grads, vars)?;
    for (var, norm) in vars.iter().zip(&norms) {
        let Some(norm) = *norm else { continue };
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0
            && let Some(g) = grads.get(var.as_tensor())
        {
            let clipped = (g * coef)?;
            grads.insert(var.as_tensor(), clipped);
        }
    }
    Ok(norms.into_iter().map(|n| n.unwrap_or(0.0)).collect())
}

/// PyTorch's `clip_grad_norm_`: one L2 norm over all gradients of `vars`; if it exceeds
/// `max_norm`, every gradient is multiplied by `max_norm / (total + 1e-6)`. Returns the
/// total norm before clipping.
pub fn clip_global(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let norms = grad_norms(grads, vars)?;
    let total = norms.iter().flatten().map(|n| n * n).sum::<f64>().sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        for var in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let clipped = (g * coef)?;
                grads.insert(var.as_tensor(), clipped);
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grads_for(pairs: &[(&Var, &[f32])]) -> GradStore {
        let mut loss: Option<Tensor> = None;
        for (var, g) in pairs {
            let g = Tensor::new(*g, &Device::Cpu).expect("grad tensor");
            let term = (var.as_tensor() * g).expect("mul").sum_all().expect("sum");
            loss = Some(match loss {
                None => term,
                Some(l) => (l + term).expect("add"),
            });
        }
        loss.expect("at least one pair")
            .backward()
            .expect("backward")
    }

    fn grad(grads: &GradStore, var: &Var) -> Vec<f32> {
        grads
            .get(var.as_tensor())
            .expect("grad")
            .to_vec1()
            .expect("vec")
    }

    #[test]
    fn clips_each_tensor_separately() -> Result<()> {
        let a = Var::new(&[0.0f32, 0.0], &Device::Cpu)?;
        let b = Var::new(&[0.0f32, 0.0], &Device::Cpu)?;
        let c = Var::new(&[0.0f32], &Device::Cpu)?; // no gradient
        // |ga| = 5 -> clipped to norm 3 (coef 3 / (5 + 1e-6)); |gb| = 1 -> untouched.
        let mut grads = grads_for(&[(&a, &[3.0, 4.0]), (&b, &[0.6, 0.8])]);
        let norms = clip_per_param(&mut grads, &[a.clone(), b.clone(), c.clone()], 3.0)?;
        assert!((norms[0] - 5.0).abs() < 1e-6);
        assert!((norms[1] - 1.0).abs() < 1e-6);
        assert_eq!(norms[2], 0.0);
        let coef = 3.0 / (5.0 + 1e-6);
        let ga = grad(&grads, &a);
        assert!((f64::from(ga[0]) - 3.0 * coef).abs() < 1e-6);
        assert!((f64::from(ga[1]) - 4.0 * coef).abs() < 1e-6);
        assert_eq!(grad(&grads, &b), vec![0.6, 0.8]);
        assert!(grads.get(c.as_tensor()).is_none());
        Ok(())
    }

    #[test]
    fn global_clip_scales_all() -> Result<()> {
        let a = Var::new(&[0.0f32, 0.0], &Device::Cpu)?;
        let b = Var::new(&[0.0f32], &Device::Cpu)?;
        // total norm sqrt(9 + 16 + 0) = 5, max 1 -> coef ~0.2
        let mut grads = grads_for(&[(&a, &[3.0, 4.0]), (&b, &[0.0])]);
        let total = clip_global(&mut grads, &[a.clone(), b.clone()], 1.0)?;
        assert!((total - 5.0).abs() < 1e-6);
        let ga = grad(&grads, &a);
        assert!((ga[0] - 0.6).abs() < 1e-5 && (ga[1] - 0.8).abs() < 1e-5);
        Ok(())
    }
}
