//! The named parameter store: trainable and frozen parameters as candle `Var`s,
//! plus named state tensors (e.g. DINO's centre). Checkpoints, EMA teachers and
//! hot reload all work by name.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use patchwork_plugin_api::abi::{Init, InitKind};

/// Errors of the parameter store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A parameter was requested again with another shape.
    #[error("parameter '{name}' exists with shape {existing:?}, requested {requested:?}")]
    ShapeMismatch {
        /// Parameter name.
        name: String,
        /// Shape in the store.
        existing: Vec<usize>,
        /// Shape asked for.
        requested: Vec<usize>,
    },
    /// An init kind this host does not know.
    #[error("unknown parameter init kind {0}")]
    UnknownInit(u32),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// One named parameter.
#[derive(Clone, Debug)]
pub struct Param {
    /// The variable (frozen ones too, so EMA can update them in place).
    pub var: Var,
    /// Whether the optimizer updates it.
    pub trainable: bool,
}

/// All parameters and state tensors of one session.
#[derive(Debug)]
pub struct ParamStore {
    device: Device,
    params: BTreeMap<String, Param>,
    state: BTreeMap<String, Tensor>,
}

impl ParamStore {
    /// An empty store on `device`.
    pub fn new(device: Device) -> Self {
        Self {
            device,
            params: BTreeMap::new(),
            state: BTreeMap::new(),
        }
    }

    /// The device parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The parameter `name`, created from `init` with `rng` the first time.
    ///
    /// Returns the tensor a plugin should use: the variable itself when trainable,
    /// a detached view sharing its storage when frozen.
    pub fn get_or_create(
        &mut self,
        name: &str,
        shape: &[usize],
        init: Init,
        trainable: bool,
        rng: &mut ChaCha8Rng,
    ) -> Result<Tensor, StoreError> {
        if let Some(p) = self.params.get_mut(name) {
            let existing = p.var.dims().to_vec();
            if existing != shape {
                return Err(StoreError::ShapeMismatch {
                    name: name.to_string(),
                    existing,
                    requested: shape.to_vec(),
                });
            }
            p.trainable = trainable;
            return Ok(handout(p));
        }
        let values = init_values(init, shape.iter().product(), rng)?;
        let tensor = Tensor::from_vec(values, shape, &self.device)?;
        let p = Param {
            var: Var::from_tensor(&tensor)?,
            trainable,
        };
        let out = handout(&p);
        self.params.insert(name.to_string(), p);
        Ok(out)
    }

    /// Removes parameter `name` (hot reload: gone from the new build, or reshaped).
    pub fn remove(&mut self, name: &str) -> Option<Param> {
        self.params.remove(name)
    }

    /// A copy of the parameter table (the variables are shared, not copied), to put
    /// back with [`restore`](Self::restore) when a swap fails.
    pub fn snapshot(&self) -> BTreeMap<String, Param> {
        self.params.clone()
    }

    /// Puts back a table taken with [`snapshot`](Self::snapshot).
    pub fn restore(&mut self, params: BTreeMap<String, Param>) {
        self.params = params;
    }

    /// Every parameter, by name.
    pub fn params(&self) -> &BTreeMap<String, Param> {
        &self.params
    }

    /// The trainable parameters, by name.
    pub fn trainable(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.params
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(n, p)| (n, &p.var))
    }

    /// Overwrites a parameter's values (shape must match), creating it if absent.
    pub fn set(&mut self, name: &str, value: &Tensor) -> Result<(), StoreError> {
        let value = value.to_device(&self.device)?.to_dtype(DType::F32)?;
        match self.params.get(name) {
            Some(p) => {
                if p.var.dims() != value.dims() {
                    return Err(StoreError::ShapeMismatch {
                        name: name.to_string(),
                        existing: p.var.dims().to_vec(),
                        requested: value.dims().to_vec(),
                    });
                }
                p.var.set(&value)?;
            }
            None => {
                let p = Param {
                    var: Var::from_tensor(&value)?,
                    trainable: false,
                };
                self.params.insert(name.to_string(), p);
            }
        }
        Ok(())
    }

    /// A named state tensor.
    pub fn state(&self, name: &str) -> Option<&Tensor> {
        self.state.get(name)
    }

    /// Sets a named state tensor (stored detached).
    pub fn set_state(&mut self, name: &str, value: &Tensor) {
        self.state.insert(name.to_string(), value.detach());
    }

    /// Every state tensor, by name.
    pub fn states(&self) -> &BTreeMap<String, Tensor> {
        &self.state
    }

    /// Copies every parameter under `src.` onto the same name under `dst.`,
    /// creating frozen ones as needed; returns the count.
    pub fn copy_prefix(&mut self, src: &str, dst: &str) -> Result<u64, StoreError> {
        let pairs = self.matching(src, dst);
        for (from, to) in &pairs {
            let value = self.params[from].var.as_tensor().detach().copy()?;
            self.set(to, &value)?;
        }
        Ok(pairs.len() as u64)
    }

    /// `dst ← m·dst + (1−m)·src` for every name present under both prefixes.
    pub fn ema_prefix(&mut self, src: &str, dst: &str, momentum: f64) -> Result<u64, StoreError> {
        let mut n = 0;
        for (from, to) in self.matching(src, dst) {
            let (Some(s), Some(d)) = (self.params.get(&from), self.params.get(&to)) else {
                continue;
            };
            let s = s.var.as_tensor().detach();
            let dt = d.var.as_tensor().detach();
            let mixed = (dt.affine(momentum, 0.0)? + s.affine(1.0 - momentum, 0.0)?)?;
            d.var.set(&mixed)?;
            n += 1;
        }
        Ok(n)
    }

    fn matching(&self, src: &str, dst: &str) -> Vec<(String, String)> {
        let src_dot = format!("{src}.");
        self.params
            .keys()
            .filter_map(|k| {
                k.strip_prefix(&src_dot)
                    .map(|rest| (k.clone(), format!("{dst}.{rest}")))
            })
            .collect()
    }
}

fn handout(p: &Param) -> Tensor {
    if p.trainable {
        p.var.as_tensor().clone()
    } else {
        p.var.as_tensor().detach()
    }
}

/// Initial values for `n` elements.
pub fn init_values(init: Init, n: usize, rng: &mut ChaCha8Rng) -> Result<Vec<f32>, StoreError> {
    let v = match init.kind {
        InitKind::ZEROS => vec![0.0; n],
        InitKind::ONES => vec![1.0; n],
        InitKind::CONST => vec![init.a as f32; n],
        InitKind::NORMAL => normal(rng, n, init.a, init.b, None)?,
        InitKind::TRUNC_NORMAL => normal(rng, n, 0.0, init.a, Some(2.0))?,
        InitKind::UNIFORM => (0..n)
            .map(|_| rng.random_range(init.a..init.b.max(init.a + f64::EPSILON)) as f32)
            .collect(),
        other => return Err(StoreError::UnknownInit(other.0)),
    };
    Ok(v)
}

/// `n` normal samples; with `cut`, values outside ±cut are redrawn (timm's rule).
pub fn normal(
    rng: &mut ChaCha8Rng,
    n: usize,
    mean: f64,
    std: f64,
    cut: Option<f64>,
) -> Result<Vec<f32>, StoreError> {
    let dist = Normal::new(mean, std.max(0.0)).map_err(|e| {
        StoreError::Candle(candle_core::Error::Msg(format!(
            "normal({mean}, {std}): {e}"
        )))
    })?;
    Ok((0..n)
        .map(|_| {
            loop {
                let x = dist.sample(rng);
                match cut {
                    Some(c) if x.abs() > c => continue,
                    _ => break x as f32,
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn params_are_created_once_and_ema_mixes() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut store = ParamStore::new(Device::Cpu);
        let a = store
            .get_or_create(
                "student.w",
                &[2, 2],
                Init {
                    kind: InitKind::ONES,
                    a: 0.0,
                    b: 0.0,
                },
                true,
                &mut rng,
            )
            .unwrap();
        let again = store
            .get_or_create(
                "student.w",
                &[2, 2],
                Init {
                    kind: InitKind::ZEROS,
                    a: 0.0,
                    b: 0.0,
                },
                true,
                &mut rng,
            )
            .unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), again.to_vec2::<f32>().unwrap());
        assert!(
            store
                .get_or_create(
                    "student.w",
                    &[3],
                    Init {
                        kind: InitKind::ZEROS,
                        a: 0.0,
                        b: 0.0
                    },
                    true,
                    &mut rng
                )
                .is_err()
        );
        assert_eq!(store.copy_prefix("student", "teacher").unwrap(), 1);
        store
            .set(
                "student.w",
                &Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
        store.ema_prefix("student", "teacher", 0.75).unwrap();
        let t = store.params()["teacher.w"]
            .var
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        assert!((t[0][0] - 0.75).abs() < 1e-6);
        assert!(!store.params()["teacher.w"].trainable);
    }
}
