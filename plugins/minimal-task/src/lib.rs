//! `minimal-task`: the smallest complete pretext-task plugin for patchwork, readable
//! in one sitting. `patchwork new plugin NAME --kind pretext` starts a new crate from
//! a copy of this file.
//!
//! SimSiam (Chen & He, 2021) in its smallest form: two augmented views of each image
//! go through the session's backbone and a projector; a predictor maps one view's
//! projection to the other's, and the loss is the symmetric negative cosine
//! similarity with a stop-gradient on the target side (which is what keeps it from
//! collapsing). Deviation: a one-layer projector and predictor, no batch norm.
//! Replace `step` with your method.

use patchwork_plugin_api::prelude::*;

/// Settings, read from the workspace (`config: (...)`); unknown fields are errors.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Smallest crop, as a fraction of the image area.
    pub min_scale: f32,
    /// Projection width.
    pub proj_dim: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_scale: 0.2,
            proj_dim: 128,
        }
    }
}

impl Config {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return Err(Error::msg(format!(
                "min_scale must be in (0, 1], got {}",
                self.min_scale
            )));
        }
        if self.proj_dim == 0 {
            return Err(Error::msg("proj_dim must be at least 1"));
        }
        Ok(())
    }
}

/// The task.
pub struct Task {
    cfg: Config,
    backbone: BackboneHandle,
    projector: Linear,
    predictor: Linear,
    img_size: u32,
}

/// Mean over the batch of `-cos(p, z)`, rows L2-normalised: `(B, D), (B, D) -> ()`.
fn negative_cosine(p: &Tensor, z: &Tensor) -> Result<Tensor> {
    let p = p.l2_normalize(D::Minus1)?;
    let z = z.l2_normalize(D::Minus1)?;
    p.mul(&z)?.sum(D::Minus1)?.mean_all()?.neg()
}

impl PretextTask for Task {
    type Config = Config;

    fn new(cfg: Config, host: Host, scope: ParamScope) -> Result<Self> {
        cfg.validate()?;
        // The session's backbone, with its parameters under `student.backbone`.
        let backbone = BackboneHandle::build(host, "student.backbone")?;
        let geometry = backbone.geometry()?;
        let width = geometry.embed_dim as usize;
        let projector = linear(width, cfg.proj_dim, scope.pp("projector"))?;
        let predictor = linear(cfg.proj_dim, cfg.proj_dim, scope.pp("predictor"))?;
        Ok(Self {
            cfg,
            backbone,
            projector,
            predictor,
            img_size: geometry.img_size,
        })
    }

    fn views(&self) -> Vec<ViewSpec> {
        vec![ViewSpec {
            count: 2,
            size: self.img_size,
            scale_min: self.cfg.min_scale,
            scale_max: 1.0,
            flip_p: 0.5,
            jitter_p: 0.8,
            gray_p: 0.2,
            blur_p: 0.0,
            blur_sigma_min: 0.1,
            blur_sigma_max: 2.0,
            solarize_p: 0.0,
        }]
    }

    fn step(&mut self, batch: &Batch, _info: &StepInfo) -> Result<StepOutput> {
        let [a, b] = batch.views.as_slice() else {
            return Err(Error::msg(format!(
                "expected 2 views, got {}",
                batch.views.len()
            )));
        };
        let opts = ForwardOptions {
            train: true,
            ..ForwardOptions::default()
        };
        let za = self
            .backbone
            .forward(a, &opts)?
            .cls
            .apply(&self.projector)?; // (B, P)
        let zb = self
            .backbone
            .forward(b, &opts)?
            .cls
            .apply(&self.projector)?;
        let pa = za.apply(&self.predictor)?;
        let pb = zb.apply(&self.predictor)?;
        let loss = negative_cosine(&pa, &zb.detach()?)?
            .add(&negative_cosine(&pb, &za.detach()?)?)?
            .affine(0.5, 0.0)?;
        Ok(StepOutput::loss(loss))
    }

    fn result_scope(&self) -> String {
        "student.backbone".to_string()
    }
}

export_pretext!(
    Task,
    name = "minimal-task",
    description = "SimSiam-style two-view task (the minimal task)"
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
    fn a_crop_scale_outside_the_unit_interval_is_rejected() {
        let cfg = Config {
            min_scale: 1.5,
            ..Config::default()
        };
        assert!(cfg.validate().is_err());
    }
}
