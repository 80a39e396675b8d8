//! Optimizers whose state can be checkpointed: AdamW and SGD with momentum.
//!
//! candle-nn's `AdamW` keeps its moments private and has no per-parameter weight decay.
//! These optimizers take named parameters with a `decay` flag (DINO's two parameter
//! groups: see [`decays`]), take the learning rate and weight decay at every step (so
//! schedules live outside), skip parameters without a gradient, and expose their state as
//! named tensors for checkpoints:
//!
//! | optimizer | key                 | shape          | dtype       |
//! |-----------|---------------------|----------------|-------------|
//! | AdamW     | `adam_m/<param>`    | the param's    | the param's |
//! | AdamW     | `adam_v/<param>`    | the param's    | the param's |
//! | AdamW     | `adam_t/<param>`    | `[1]`          | u32         |
//! | AdamW     | `adam/steps`        | `[1]`          | u32         |
//! | SGD       | `sgd_mom/<param>`   | the param's    | the param's |
//! | SGD       | `sgd/steps`         | `[1]`          | u32         |
//!
//! `adam_t/<param>` is the parameter's own step count, used for bias correction. As in
//! PyTorch it only advances when the parameter has a gradient, so a parameter frozen for
//! a while (DINO's last layer in epoch 0) starts its bias correction afresh.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

/// Errors from building optimizers and restoring their state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// Two parameters share a name.
    #[error("duplicate parameter name '{name}'")]
    DuplicateParam {
        /// The repeated name.
        name: String,
    },
    /// A state entry names a parameter the optimizer does not have.
    #[error("optimizer state '{key}' names unknown parameter '{param}'")]
    UnknownParam {
        /// The state key.
        key: String,
        /// The parameter part of the key.
        param: String,
    },
    /// A state entry's shape does not match the parameter.
    #[error("optimizer state '{key}' has shape {found:?}, its parameter has shape {expected:?}")]
    ShapeMismatch {
        /// The state key.
        key: String,
        /// The parameter's shape.
        expected: Vec<usize>,
        /// The state tensor's shape.
        found: Vec<usize>,
    },
    /// A counter entry is not a one-element integer tensor.
    #[error(
        "optimizer state '{key}' should be a one-element u32 tensor, found {dtype:?} {shape:?}"
    )]
    BadCounter {
        /// The state key.
        key: String,
        /// Its dtype.
        dtype: DType,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, OptimError>;

/// DINO's parameter-group rule (`utils.get_params_groups`): biases and all 1-D parameters
/// (norm weights and biases) get no weight decay; everything else does, including the
/// 3-D CLS token and position embedding.
pub fn decays(name: &str, shape: &[usize]) -> bool {
    let is_bias = name == "bias" || name.ends_with(".bias");
    !(is_bias || shape.len() <= 1)
}

/// One named parameter and the optimizer's bookkeeping for it.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
}

fn build_slots(params: Vec<(String, Var, bool)>) -> Result<(Vec<Slot>, HashMap<String, usize>)> {
    let mut index = HashMap::with_capacity(params.len());
    let mut slots = Vec::with_capacity(params.len());
    for (name, var, decay) in params {
        if index.insert(name.clone(), slots.len()).is_some() {
            return Err(OptimError::DuplicateParam { name });
        }
        slots.push(Slot { name, var, decay });
    }
    Ok((slots, index))
}

/// A one-element u32 tensor holding a counter (saturating at `u32::MAX`).
fn counter_tensor(value: u64) -> Result<Tensor> {
    let v = u32::try_from(value).unwrap_or(u32::MAX);
    Ok(Tensor::new(&[v], &Device::Cpu)?)
}

fn read_counter(key: &str, t: &Tensor) -> Result<u64> {
    let bad = || OptimError::BadCounter {
        key: key.to_string(),
        dtype: t.dtype(),
        shape: t.dims().to_vec(),
    };
    if t.elem_count() != 1 || t.dtype() != DType::U32 {
        return Err(bad());
    }
    let v = t.flatten_all()?.to_vec1::<u32>()?;
    Ok(u64::from(v[0]))
}

/// Looks up the parameter named by `key` (after its prefix).
fn slot_for<'a>(
    key: &str,
    param: &str,
    slots: &'a [Slot],
    index: &HashMap<String, usize>,
) -> Result<(usize, &'a Slot)> {
    match index.get(param) {
        Some(&i) => Ok((i, &slots[i])),
        None => Err(OptimError::UnknownParam {
            key: key.to_string(),
            param: param.to_string(),
        }),
    }
}

/// Checks a moment tensor against its parameter and moves it to the parameter's device
/// and dtype.
fn moment_for(key: &str, slot: &Slot, t: &Tensor) -> Result<Tensor> {
    if t.dims() != slot.var.dims() {
        return Err(OptimError::ShapeMismatch {
            key: key.to_string(),
            expected: slot.var.dims().to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(t.to_device(slot.var.device())?
        .to_dtype(slot.var.dtype())?
        .detach())
}

/// AdamW hyper-parameters other than learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the bias-corrected second-moment root.
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Moments of one AdamW parameter.
struct AdamState {
    m: Tensor,
    v: Tensor,
    t: u64,
}

/// AdamW with decoupled weight decay (Loshchilov & Hutter; PyTorch `torch.optim.AdamW`).
///
/// For a parameter `p` with gradient `g` and its own step count `t` (after increment):
///
/// ```text
/// p <- p * (1 - lr * wd)                  (only if the parameter decays)
/// m <- beta1 * m + (1 - beta1) * g
/// v <- beta2 * v + (1 - beta2) * g^2
/// p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
/// ```
pub struct AdamW {
    config: AdamWConfig,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    state: Vec<AdamState>,
    steps: u64,
}

impl AdamW {
    /// An optimizer over `(name, var, decay)` parameters; moments start at zero.
    pub fn new(params: Vec<(String, Var, bool)>, config: AdamWConfig) -> Result<Self> {
        let (slots, index) = build_slots(params)?;
        let state = slots
            .iter()
            .map(|s| {
                Ok(AdamState {
                    m: s.var.zeros_like()?,
                    v: s.var.zeros_like()?,
                    t: 0,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            config,
            slots,
            index,
            state,
            steps: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> AdamWConfig {
        self.config
    }

    /// Number of calls to [`AdamW::step`] (restored by [`AdamW::load_state`]).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameters, in construction order.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// The parameter names with their decay flags, in construction order.
    pub fn names(&self) -> Vec<(&str, bool)> {
        self.slots
            .iter()
            .map(|s| (s.name.as_str(), s.decay))
            .collect()
    }

    /// One update with learning rate `lr`; `weight_decay` applies to parameters flagged
    /// `decay` only. Parameters without a gradient in `grads` are left alone, moments and
    /// step count included.
    pub fn step(&mut self, grads: &GradStore, lr: f64, weight_decay: f64) -> Result<()> {
        let AdamWConfig { beta1, beta2, eps } = self.config;
        for (slot, st) in self.slots.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            // Detached so the moments never hold on to the backward graph.
            let g = g.detach();
            st.t += 1;
            let t = i32::try_from(st.t).unwrap_or(i32::MAX);
            let m = ((&st.m * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&st.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let bias1 = 1.0 - beta1.powi(t);
            let bias2 = 1.0 - beta2.powi(t);
            let denom = ((v.sqrt()? / bias2.sqrt())? + eps)?;
            let update = ((&m / &denom)? * (lr / bias1))?;
            let mut p = slot.var.as_detached_tensor();
            if slot.decay && weight_decay != 0.0 {
                p = (p * (1.0 - lr * weight_decay))?;
            }
            slot.var.set(&(p - update)?)?;
            st.m = m;
            st.v = v;
        }
        self.steps += 1;
        Ok(())
    }

    /// The state as named tensors (see the module docs for the keys).
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(3 * self.slots.len() + 1);
        for (slot, st) in self.slots.iter().zip(&self.state) {
            out.push((format!("adam_m/{}", slot.name), st.m.clone()));
            out.push((format!("adam_v/{}", slot.name), st.v.clone()));
            out.push((format!("adam_t/{}", slot.name), counter_tensor(st.t)?));
        }
        out.push(("adam/steps".to_string(), counter_tensor(self.steps)?));
        Ok(out)
    }

    /// Restores state saved by [`AdamW::state`]. Entries without an `adam` prefix are
    /// ignored (the list may be a whole checkpoint); parameters missing from it keep their
    /// current state. Nothing changes unless every entry is valid.
    pub fn load_state(&mut self, entries: &[(String, Tensor)]) -> Result<()> {
        let mut ms = Vec::new();
        let mut vs = Vec::new();
        let mut ts = Vec::new();
        let mut steps = None;
        for (key, t) in entries {
            if key == "adam/steps" {
                steps = Some(read_counter(key, t)?);
            } else if let Some(param) = key.strip_prefix("adam_m/") {
                let (i, slot) = slot_for(key, param, &self.slots, &self.index)?;
                ms.push((i, moment_for(key, slot, t)?));
            } else if let Some(param) = key.strip_prefix("adam_v/") {
                let (i, slot) = slot_for(key, param, &self.slots, &self.index)?;
                vs.push((i, moment_for(key, slot, t)?));
            } else if let Some(param) = key.strip_prefix("adam_t/") {
                let (i, _) = slot_for(key, param, &self.slots, &self.index)?;
                ts.push((i, read_counter(key, t)?));
            }
        }
        for (i, m) in ms {
            self.state[i].m = m;
        }
        for (i, v) in vs {
            self.state[i].v = v;
        }
        for (i, t) in ts {
            self.state[i].t = t;
        }
        if let Some(steps) = steps {
            self.steps = steps;
        }
        Ok(())
    }
}

/// SGD hyper-parameters other than learning rate and weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Momentum factor (0 disables the buffer).
    pub momentum: f64,
    /// Dampening applied to the gradient added to the buffer (after the first step).
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    /// Momentum 0.9 (DINO's linear probe), no dampening, no Nesterov.
    fn default() -> Self {
        Self {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }
    }
}

/// SGD with momentum, as `torch.optim.SGD`: weight decay is coupled (added to the
/// gradient), and the momentum buffer is the first gradient on a parameter's first step:
///
/// ```text
/// g <- g + wd * p                          (only if the parameter decays)
/// b <- g                                   (first step)
/// b <- momentum * b + (1 - dampening) * g  (later steps)
/// p <- p - lr * (nesterov ? g + momentum * b : b)
/// ```
pub struct Sgd {
    config: SgdConfig,
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    buffers: Vec<Option<Tensor>>,
    steps: u64,
}

impl Sgd {
    /// An optimizer over `(name, var, decay)` parameters.
    pub fn new(params: Vec<(String, Var, bool)>, config: SgdConfig) -> Result<Self> {
        let (slots, index) = build_slots(params)?;
        let buffers = vec![None; slots.len()];
        Ok(Self {
            config,
            slots,
            index,
            buffers,
            steps: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> SgdConfig {
        self.config
    }

    /// Number of calls to [`Sgd::step`] (restored by [`Sgd::load_state`]).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The parameters, in construction order.
    pub fn vars(&self) -> Vec<Var> {
        self.slots.iter().map(|s| s.var.clone()).collect()
    }

    /// One update; see the type docs. Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64, weight_decay: f64) -> Result<()> {
        let SgdConfig {
            momentum,
            dampening,
            nesterov,
        } = self.config;
        for (slot, buf) in self.slots.iter().zip(self.buffers.iter_mut()) {
            let Some(g) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            let p = slot.var.as_detached_tensor();
            let mut g = g.detach();
            if slot.decay && weight_decay != 0.0 {
                g = (g + (&p * weight_decay)?)?;
            }
            let dir = if momentum != 0.0 {
                let b = match buf.take() {
                    None => g.clone(),
                    Some(b) => ((b * momentum)? + (&g * (1.0 - dampening))?)?,
                };
                let dir = if nesterov {
                    (&g + (&b * momentum)?)?
                } else {
                    b.clone()
                };
                *buf = Some(b);
                dir
            } else {
                g
            };
            slot.var.set(&(p - (dir * lr)?)?)?;
        }
        self.steps += 1;
        Ok(())
    }

    /// The state as named tensors: `sgd_mom/<param>` for parameters that have a buffer,
    /// and `sgd/steps`.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(self.slots.len() + 1);
        for (slot, buf) in self.slots.iter().zip(&self.buffers) {
            if let Some(b) = buf {
                out.push((format!("sgd_mom/{}", slot.name), b.clone()));
            }
        }
        out.push(("sgd/steps".to_string(), counter_tensor(self.steps)?));
        Ok(out)
    }

    /// Restores state saved by [`Sgd::state`]; other entries are ignored, parameters
    /// missing from it keep their buffer. Nothing changes unless every entry is valid.
    pub fn load_state(&mut self, entries: &[(String, Tensor)]) -> Result<()> {
        let mut bufs = Vec::new();
        let mut steps = None;
        for (key, t) in entries {
            if key == "sgd/steps" {
                steps = Some(read_counter(key, t)?);
            } else if let Some(param) = key.strip_prefix("sgd_mom/") {
                let (i, slot) = slot_for(key, param, &self.slots, &self.index)?;
                bufs.push((i, moment_for(key, slot, t)?));
            }
        }
        for (i, b) in bufs {
            self.buffers[i] = Some(b);
        }
        if let Some(steps) = steps {
            self.steps = steps;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_vec_close(actual: &[f32], expected: &[f64], tol: f64) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (f64::from(*a) - e).abs() <= tol,
                "element {i}: expected {e}, got {a}"
            );
        }
    }

    /// A GradStore holding `g` as the gradient of `var` (via loss = sum(var * g)).
    fn grads_for(pairs: &[(&Var, &[f32])]) -> GradStore {
        let mut loss: Option<Tensor> = None;
        for (var, g) in pairs {
            let g = Tensor::new(*g, &Device::Cpu).expect("grad tensor");
            let g = g.reshape(var.dims()).expect("reshape");
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

    fn values(var: &Var) -> Vec<f32> {
        var.flatten_all()
            .expect("flatten")
            .to_vec1()
            .expect("to_vec1")
    }

    #[test]
    fn dino_decay_rule() {
        assert!(decays("blocks.0.attn.qkv.weight", &[1152, 384]));
        assert!(decays("cls_token", &[1, 1, 384]));
        assert!(decays("pos_embed", &[1, 197, 384]));
        assert!(!decays("blocks.0.attn.qkv.bias", &[1152]));
        assert!(!decays("blocks.0.norm1.weight", &[384]));
        assert!(!decays("head.bias", &[10, 1])); // named bias, whatever its shape
        assert!(!decays("bias", &[4, 4]));
        assert!(!decays("scale", &[]));
    }

    // Expected values computed by hand from the formula on `AdamW` (and matching
    // torch.optim.AdamW([p], lr=0.1, weight_decay=0.5, betas=(0.9, 0.999), eps=1e-8)):
    //   p0 = [1.0, -2.0], g1 = [0.5, -1.0], g2 = [-0.2, 0.4]
    //   step 1: p <- p * (1 - 0.1*0.5) = [0.95, -1.9]
    //           m = 0.1*g1 = [0.05, -0.1];  v = 0.001*g1^2 = [0.00025, 0.001]
    //           m_hat = [0.5, -1.0]; v_hat = [0.25, 1.0]; m_hat/(sqrt(v_hat)+eps) = [1, -1]
    //           p = [0.95 - 0.1, -1.9 + 0.1] = [0.85, -1.8]
    //   step 2: p <- p * 0.95 = [0.8075, -1.71]
    //           m = 0.9*m + 0.1*g2 = [0.025, -0.05]
    //           v = 0.999*v + 0.001*g2^2 = [0.00024975 + 0.00004, 0.000999 + 0.00016]
    //             = [0.00028975, 0.001159]
    //           m_hat = m/0.19 = [0.131578947, -0.263157895]
    //           v_hat = v/0.001999 = [0.144947474, 0.579789895]
    //           sqrt(v_hat) = [0.380719692, 0.761439384]
    //           ratio = [0.345606447, -0.345606447]
    //           p = [0.8075 - 0.0345606447, -1.71 + 0.0345606447]
    //             = [0.772939355, -1.675439355]
    #[test]
    fn adamw_two_steps_by_hand() -> Result<()> {
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("w".into(), p.clone(), true)], AdamWConfig::default())?;
        opt.step(&grads_for(&[(&p, &[0.5, -1.0])]), 0.1, 0.5)?;
        assert_vec_close(&values(&p), &[0.85, -1.8], 1e-6);
        opt.step(&grads_for(&[(&p, &[-0.2, 0.4])]), 0.1, 0.5)?;
        assert_vec_close(&values(&p), &[0.772_939_355, -1.675_439_355], 1e-6);
        assert_eq!(opt.steps(), 2);
        Ok(())
    }

    #[test]
    fn adamw_skips_weight_decay_when_flag_is_off() -> Result<()> {
        // Same first step as above without decay: p = [1 - 0.1, -2 + 0.1].
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let name = "norm.weight";
        let decay = decays(name, p.dims());
        assert!(!decay);
        let mut opt = AdamW::new(
            vec![(name.into(), p.clone(), decay)],
            AdamWConfig::default(),
        )?;
        opt.step(&grads_for(&[(&p, &[0.5, -1.0])]), 0.1, 0.5)?;
        assert_vec_close(&values(&p), &[0.9, -1.9], 1e-6);
        Ok(())
    }

    #[test]
    fn adamw_skips_params_without_grad() -> Result<()> {
        let a = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
        let b = Var::new(&[3.0f32], &Device::Cpu)?;
        let mut opt = AdamW::new(
            vec![
                ("a".into(), a.clone(), true),
                ("b".into(), b.clone(), false),
            ],
            AdamWConfig::default(),
        )?;
        opt.step(&grads_for(&[(&a, &[1.0, 1.0])]), 0.1, 0.0)?;
        assert_vec_close(&values(&b), &[3.0], 0.0);
        let state = opt.state()?;
        let get = |k: &str| {
            state
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, t)| t.clone())
                .expect("state key should exist")
        };
        assert_eq!(get("adam_t/a").to_vec1::<u32>()?, vec![1]);
        assert_eq!(get("adam_t/b").to_vec1::<u32>()?, vec![0]);
        assert_eq!(get("adam_m/b").to_vec1::<f32>()?, vec![0.0]);
        assert_eq!(get("adam/steps").to_vec1::<u32>()?, vec![1]);
        Ok(())
    }

    #[test]
    fn adamw_state_round_trip_continues_identically() -> Result<()> {
        let make = || -> Result<(Var, AdamW)> {
            let p = Var::new(&[[0.3f32, -0.7], [1.1, 0.2]], &Device::Cpu)?;
            let opt = AdamW::new(vec![("w".into(), p.clone(), true)], AdamWConfig::default())?;
            Ok((p, opt))
        };
        let g1: &[f32] = &[0.1, -0.2, 0.3, 0.4];
        let g2: &[f32] = &[-0.5, 0.1, 0.0, 0.2];
        let (p1, mut o1) = make()?;
        o1.step(&grads_for(&[(&p1, g1)]), 0.01, 0.1)?;
        let (p2, mut o2) = make()?;
        p2.set(p1.as_tensor())?;
        o2.load_state(&o1.state()?)?;
        assert_eq!(o2.steps(), 1);
        o1.step(&grads_for(&[(&p1, g2)]), 0.01, 0.1)?;
        o2.step(&grads_for(&[(&p2, g2)]), 0.01, 0.1)?;
        assert_eq!(values(&p1), values(&p2));
        Ok(())
    }

    #[test]
    fn adamw_load_state_rejects_bad_entries() -> Result<()> {
        let p = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
        let mut opt = AdamW::new(vec![("w".into(), p, true)], AdamWConfig::default())?;
        let wrong = Tensor::zeros(3, DType::F32, &Device::Cpu)?;
        let err = opt
            .load_state(&[("adam_m/w".into(), wrong.clone())])
            .expect_err("shape mismatch should fail");
        assert!(matches!(err, OptimError::ShapeMismatch { .. }), "{err}");
        assert!(err.to_string().contains("'adam_m/w'"), "{err}");
        let err = opt
            .load_state(&[("adam_v/nope".into(), wrong.clone())])
            .expect_err("unknown param should fail");
        assert!(matches!(err, OptimError::UnknownParam { .. }), "{err}");
        let err = opt
            .load_state(&[("adam/steps".into(), wrong.clone())])
            .expect_err("bad counter should fail");
        assert!(matches!(err, OptimError::BadCounter { .. }), "{err}");
        // Unrelated keys (model weights in the same checkpoint) are ignored.
        opt.load_state(&[("student.w".into(), wrong)])?;
        Ok(())
    }

    #[test]
    fn duplicate_names_are_rejected() -> Result<()> {
        let p = Var::new(&[1.0f32], &Device::Cpu)?;
        let err = AdamW::new(
            vec![("w".into(), p.clone(), true), ("w".into(), p, true)],
            AdamWConfig::default(),
        )
        .err()
        .expect("duplicate should fail");
        assert_eq!(err.to_string(), "duplicate parameter name 'w'");
        Ok(())
    }

    // torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.5), by hand:
    //   p0 = [1.0, -2.0], g1 = [0.5, -1.0], g2 = [-0.2, 0.4]
    //   step 1: g = g1 + 0.5*p0 = [1.0, -2.0]; b = g = [1.0, -2.0]; p = [0.9, -1.8]
    //   step 2: g = g2 + 0.5*p = [0.25, -0.5]; b = 0.9*b + g = [1.15, -2.3]
    //           p = [0.9 - 0.115, -1.8 + 0.23] = [0.785, -1.57]
    #[test]
    fn sgd_two_steps_by_hand() -> Result<()> {
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut opt = Sgd::new(vec![("w".into(), p.clone(), true)], SgdConfig::default())?;
        opt.step(&grads_for(&[(&p, &[0.5, -1.0])]), 0.1, 0.5)?;
        assert_vec_close(&values(&p), &[0.9, -1.8], 1e-6);
        opt.step(&grads_for(&[(&p, &[-0.2, 0.4])]), 0.1, 0.5)?;
        assert_vec_close(&values(&p), &[0.785, -1.57], 1e-6);
        let state = opt.state()?;
        assert_eq!(state[0].0, "sgd_mom/w");
        assert_vec_close(&state[0].1.to_vec1::<f32>()?, &[1.15, -2.3], 1e-6);
        Ok(())
    }

    #[test]
    fn sgd_state_round_trip_and_no_decay_for_1d() -> Result<()> {
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let decay = decays("fc.bias", p.dims());
        let mut opt = Sgd::new(
            vec![("fc.bias".into(), p.clone(), decay)],
            SgdConfig::default(),
        )?;
        opt.step(&grads_for(&[(&p, &[0.5, -1.0])]), 0.1, 0.5)?;
        // No decay: b = g, p = p - 0.1 * g.
        assert_vec_close(&values(&p), &[0.95, -1.9], 1e-6);
        let q = Var::new(&[0.95f32, -1.9], &Device::Cpu)?;
        let mut restored = Sgd::new(
            vec![("fc.bias".into(), q.clone(), decay)],
            SgdConfig::default(),
        )?;
        restored.load_state(&opt.state()?)?;
        opt.step(&grads_for(&[(&p, &[1.0, 1.0])]), 0.1, 0.5)?;
        restored.step(&grads_for(&[(&q, &[1.0, 1.0])]), 0.1, 0.5)?;
        assert_eq!(values(&p), values(&q));
        assert_eq!(restored.steps(), 2);
        Ok(())
    }
}
