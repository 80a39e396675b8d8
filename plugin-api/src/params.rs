//! [`ParamScope`]: candle-style `pp()` naming for host-owned parameters.

use crate::{
    Result, Tensor,
    abi::{Init, InitKind},
    tensor::Host,
};

impl Init {
    /// All zeros.
    pub const ZEROS: Init = Init {
        kind: InitKind::ZEROS,
        a: 0.0,
        b: 0.0,
    };
    /// All ones.
    pub const ONES: Init = Init {
        kind: InitKind::ONES,
        a: 0.0,
        b: 0.0,
    };

    /// Truncated normal with `std`, cut at ±2 (timm's `trunc_normal_`).
    pub fn trunc_normal(std: f64) -> Init {
        Init {
            kind: InitKind::TRUNC_NORMAL,
            a: std,
            b: 0.0,
        }
    }

    /// Normal with `mean`, `std`.
    pub fn normal(mean: f64, std: f64) -> Init {
        Init {
            kind: InitKind::NORMAL,
            a: mean,
            b: std,
        }
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(lo: f64, hi: f64) -> Init {
        Init {
            kind: InitKind::UNIFORM,
            a: lo,
            b: hi,
        }
    }

    /// PyTorch's default Linear/Conv init: uniform ±1/√fan_in.
    pub fn kaiming_uniform(fan_in: usize) -> Init {
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        Init::uniform(-bound, bound)
    }

    /// A constant.
    pub fn constant(v: f64) -> Init {
        Init {
            kind: InitKind::CONST,
            a: v,
            b: 0.0,
        }
    }
}

/// A dotted parameter prefix plus the host that stores the parameters.
#[derive(Clone, Debug)]
pub struct ParamScope {
    host: Host,
    prefix: String,
    trainable: bool,
}

impl ParamScope {
    /// The scope `prefix` (empty for the root) in `host`.
    pub fn new(host: Host, prefix: &str) -> Self {
        Self {
            host,
            prefix: prefix.to_string(),
            trainable: true,
        }
    }

    /// A child scope: `scope.pp("blocks").pp(3)` names `blocks.3.*`.
    pub fn pp(&self, name: impl ToString) -> Self {
        Self {
            host: self.host,
            prefix: self.path(&name.to_string()),
            trainable: self.trainable,
        }
    }

    /// The same scope with its parameters frozen (no gradient, no optimizer).
    pub fn frozen(&self) -> Self {
        Self {
            trainable: false,
            ..self.clone()
        }
    }

    /// The full dotted name of `name` in this scope.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host.
    pub fn host(&self) -> Host {
        self.host
    }

    /// The parameter `name` of `shape`, created with `init` the first time
    /// (candle's `vb.get_with_hints`).
    pub fn get(&self, shape: &[usize], name: &str, init: Init) -> Result<Tensor> {
        self.host
            .param(&self.path(name), shape, init, self.trainable)
    }
}
