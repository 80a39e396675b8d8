//! The optimizer and schedules of a `Pretrain` stage, and rebuilding the optimizer
//! when a hot reload changes the parameter set.

use candle_core::{Tensor, Var, backprop::GradStore};

use crate::{
    engine::{optim, schedule::cosine},
    workspace::schema::Optimizer,
};

/// The optimizer of a stage, with its state saved in checkpoints.
pub(super) enum Optim {
    AdamW(optim::AdamW),
    Sgd(optim::Sgd),
}

impl Optim {
    pub(super) fn new(
        cfg: &Optimizer,
        params: Vec<(String, Var, bool)>,
    ) -> Result<Self, optim::OptimError> {
        Ok(match cfg {
            Optimizer::AdamW(c) => Self::AdamW(optim::AdamW::new(
                params,
                optim::AdamWConfig {
                    beta1: c.beta1,
                    beta2: c.beta2,
                    ..Default::default()
                },
            )?),
            Optimizer::Sgd(c) => Self::Sgd(optim::Sgd::new(
                params,
                optim::SgdConfig {
                    momentum: c.momentum,
                    ..Default::default()
                },
            )?),
        })
    }
    pub(super) fn step(
        &mut self,
        g: &GradStore,
        lr: f64,
        wd: f64,
    ) -> Result<(), optim::OptimError> {
        match self {
            Self::AdamW(o) => o.step(g, lr, wd),
            Self::Sgd(o) => o.step(g, lr, wd),
        }
    }
    pub(super) fn state(&self) -> Result<Vec<(String, Tensor)>, optim::OptimError> {
        match self {
            Self::AdamW(o) => o.state(),
            Self::Sgd(o) => o.state(),
        }
    }
    pub(super) fn load_state(&mut self, e: &[(String, Tensor)]) -> Result<(), optim::OptimError> {
        match self {
            Self::AdamW(o) => o.load_state(e),
            Self::Sgd(o) => o.load_state(e),
        }
    }
}

/// The schedules of a stage: (lr, weight decay) at a step.
pub(super) struct Schedules {
    pub(super) lr: (f64, f64, u64),
    pub(super) wd: (f64, f64),
    pub(super) clip: f64,
    pub(super) total: u64,
}

impl Schedules {
    pub(super) fn new(cfg: &Optimizer, steps_per_epoch: u64, total: u64) -> Self {
        match cfg {
            Optimizer::AdamW(c) => Self {
                lr: (c.lr, c.min_lr, u64::from(c.warmup_epochs) * steps_per_epoch),
                wd: (c.weight_decay, c.weight_decay_end),
                clip: c.clip_grad,
                total,
            },
            Optimizer::Sgd(c) => Self {
                lr: (c.lr, c.min_lr, u64::from(c.warmup_epochs) * steps_per_epoch),
                wd: (c.weight_decay, c.weight_decay),
                clip: 0.0,
                total,
            },
        }
    }
    pub(super) fn at(&self, step: u64) -> (f64, f64) {
        let lr = cosine(self.lr.0, self.lr.1, self.lr.2, 0.0, self.total, step);
        let wd = cosine(self.wd.0, self.wd.1, 0, self.wd.0, self.total, step);
        (lr, wd)
    }
}
