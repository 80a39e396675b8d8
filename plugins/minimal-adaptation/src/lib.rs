//! `minimal-adaptation`: the smallest complete adaptation plugin for patchwork,
//! readable in one sitting. `patchwork new plugin NAME --kind adaptation` starts a new
//! crate from a copy of this file.
//!
//! Image classification on top of the trained backbone, the downstream protocol of
//! DINO and MAE: a linear classifier on the CLS feature, trained with cross-entropy
//! on the labelled training split. `mode: Probe` keeps the backbone frozen (linear
//! probing: the features are detached); `mode: Finetune` trains it too. The host
//! evaluates `accuracy` and `loss` on the validation split after the stage.
//! Deviation: no BatchNorm before the classifier, CLS of the last block only.
//! Replace `step` and `evaluate` with your method.

use patchwork_plugin_api::prelude::*;

/// Whether the backbone trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Mode {
    /// Frozen backbone, only the classifier trains (linear probing).
    Probe,
    /// Backbone and classifier train together (fine-tuning).
    Finetune,
}

/// Settings, read from the workspace (`config: (...)`); unknown fields are errors.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Classes of the data (labels run from 0 to `classes - 1`).
    pub classes: usize,
    /// Probe or fine-tune.
    pub mode: Mode,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            classes: 10,
            mode: Mode::Probe,
        }
    }
}

impl Config {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if self.classes < 2 {
            return Err(Error::msg(format!(
                "classes must be at least 2, got {}",
                self.classes
            )));
        }
        Ok(())
    }
}

/// The method.
pub struct Method {
    cfg: Config,
    backbone: BackboneHandle,
    classifier: Linear,
}

impl Method {
    /// Class scores `(B, classes)` of one view.
    fn logits(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let opts = ForwardOptions {
            train: train && self.cfg.mode == Mode::Finetune,
            ..ForwardOptions::default()
        };
        let cls = self.backbone.forward(images, &opts)?.cls; // (B, D)
        let features = match self.cfg.mode {
            Mode::Probe => cls.detach()?,
            Mode::Finetune => cls,
        };
        features.apply(&self.classifier)
    }

    /// The one view and the labels of a batch, labels checked against `classes`.
    fn inputs<'b>(&self, batch: &'b Batch) -> Result<(&'b Tensor, &'b Tensor)> {
        let (Some(images), Some(labels)) = (batch.views.first(), batch.labels.as_ref()) else {
            return Err(Error::msg("classification needs images and labels"));
        };
        let max = labels.to_vec_u32()?.into_iter().max().unwrap_or(0);
        if max as usize >= self.cfg.classes {
            return Err(Error::msg(format!(
                "label {max} is out of range for classes: {}; set `classes` in the method's config to the data's class count",
                self.cfg.classes
            )));
        }
        Ok((images, labels))
    }
}

/// Mean cross-entropy of `logits (B, K)` against U32 `labels (B,)`.
fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let b = labels.dims()?[0];
    logits
        .log_softmax_last_dim()?
        .gather(&labels.reshape(&[b, 1])?, 1)? // (B, 1)
        .mean_all()?
        .neg()
}

impl Adaptation for Method {
    type Config = Config;

    fn new(cfg: Config, host: Host, scope: ParamScope) -> Result<Self> {
        cfg.validate()?;
        // `scope` is where the trained backbone's parameters are (e.g. DINO's
        // `teacher.backbone`); the classifier gets a scope of its own.
        let backbone = BackboneHandle::build(host, scope.prefix())?;
        let width = backbone.geometry()?.embed_dim as usize;
        let classifier = linear(
            width,
            cfg.classes,
            ParamScope::new(host, "adapt").pp("classifier"),
        )?;
        Ok(Self {
            cfg,
            backbone,
            classifier,
        })
    }

    fn step(&mut self, batch: &Batch, _info: &StepInfo) -> Result<StepOutput> {
        let (images, labels) = self.inputs(batch)?;
        let loss = cross_entropy(&self.logits(images, true)?, labels)?;
        Ok(StepOutput::loss(loss))
    }

    fn evaluate(&mut self, batch: &Batch) -> Result<Vec<(String, f64)>> {
        let (images, labels) = self.inputs(batch)?;
        let logits = self.logits(images, false)?;
        let loss = cross_entropy(&logits, labels)?.to_scalar_f32()?;
        let predicted = logits.argmax(1)?.to_vec_u32()?;
        let truth = labels.to_vec_u32()?;
        let correct = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
        Ok(vec![
            (
                "accuracy".to_string(),
                correct as f64 / truth.len().max(1) as f64,
            ),
            ("loss".to_string(), f64::from(loss)),
        ])
    }
}

export_adaptation!(
    Method,
    name = "minimal-adaptation",
    description = "Linear probe or fine-tuning for classification (the minimal adaptation)"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_reads_from_an_empty_workspace_entry() {
        let cfg: Config = parse_config("()").expect("parses");
        assert_eq!(cfg, Config::default());
        cfg.validate().expect("valid");
    }

    #[test]
    fn fine_tuning_reads_from_the_workspace_and_one_class_is_rejected() {
        let cfg: Config = parse_config("(classes: 4, mode: Finetune)").expect("parses");
        assert_eq!(cfg.mode, Mode::Finetune);
        let one = Config {
            classes: 1,
            ..Config::default()
        };
        assert!(one.validate().is_err());
    }
}
