//! `dino-mm`: DINO-MM (Wang, Albrecht & Zhu, "Self-supervised Vision Transformers
//! for Joint SAR-optical Representation Learning", IGARSS 2022), following
//! `methods.md` §5 and zhu-xlab/DINO-MM 45975d8.
//!
//! DINO-MM is DINO on channel-concatenated multi-sensor images (optical bands, then
//! SAR bands) with one extra augmentation, **RandomSensorDrop**: each crop,
//! independently, with probability `drop_p` (0.5) keeps one modality chosen
//! uniformly and zeroes the channels of the others. With two modalities a view
//! shows both 50 % of the time, only the first 25 % and only the second 25 %.
//! Everything else is DINO (`patchwork-dino-core`, configured under `dino: (...)`);
//! the host's view pipeline applies DINO's photometric operations to multi-band
//! images channel-wise (brightness and contrast, channel-mean grey, blur, solarize),
//! as the official `rs_transforms.py` does.
//!
//! Deviations:
//! - the drop happens on the normalised views the host hands over, so it zeroes the
//!   raw channels (as the paper does) only when the data source does not
//!   normalise: DINO-MM uses `ToTensor` alone, which `normalize: Given((mean: [0.0],
//!   std: [1.0]))` reproduces (`workspaces/dino-mm.ron` does so);
//! - the modalities are channel counts (`modalities: [3, 2]` for the `sar_optical`
//!   source; BigEarthNet-MM would be `[12, 2]`), and more than two are allowed
//!   (one is kept, the rest dropped);
//! - the draws come from the host's seeded generator, so a resumed run drops the
//!   same channels as an uninterrupted one.

use patchwork_dino_core::Dino;
use patchwork_plugin_api::prelude::*;

/// Settings: DINO's, plus the sensor drop.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// DINO's settings (everything the `dino` plugin takes).
    pub dino: patchwork_dino_core::Config,
    /// Channels of each modality, in channel order.
    pub modalities: Vec<usize>,
    /// Probability that a view keeps only one modality (DINO-MM: 0.5).
    pub drop_p: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dino: patchwork_dino_core::Config::default(),
            modalities: vec![3, 2],
            drop_p: 0.5,
        }
    }
}

impl Config {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        self.dino.validate()?;
        if self.modalities.len() < 2 || self.modalities.contains(&0) {
            return Err(Error::msg(format!(
                "modalities must list at least two non-zero channel counts, got {:?}",
                self.modalities
            )));
        }
        if !(0.0..=1.0).contains(&self.drop_p) {
            return Err(Error::msg(format!(
                "drop_p must be in [0, 1], got {}",
                self.drop_p
            )));
        }
        Ok(())
    }
}

/// The per-sample channel mask of RandomSensorDrop, `B × C` row-major (1 keeps a
/// channel, 0 zeroes it), from two uniform draws in `[0, 1)` per sample: the first
/// decides whether to drop (`< p`), the second which modality to keep.
pub fn sensor_mask(draws: &[f32], p: f32, modalities: &[usize]) -> Vec<f32> {
    let channels: usize = modalities.iter().sum();
    let mut mask = Vec::with_capacity(draws.len() / 2 * channels);
    for pair in draws.chunks_exact(2) {
        if pair[0] < p {
            let keep = ((pair[1] * modalities.len() as f32) as usize).min(modalities.len() - 1);
            for (m, &n) in modalities.iter().enumerate() {
                let v = if m == keep { 1.0 } else { 0.0 };
                mask.extend(std::iter::repeat_n(v, n));
            }
        } else {
            mask.extend(std::iter::repeat_n(1.0, channels));
        }
    }
    mask
}

/// The DINO-MM task.
pub struct DinoMm {
    dino: Dino,
    host: Host,
    modalities: Vec<usize>,
    drop_p: f32,
}

impl DinoMm {
    /// `view (B, C, H, W)` with RandomSensorDrop applied per sample.
    fn drop_sensors(&self, view: &Tensor) -> Result<Tensor> {
        let (b, c) = (view.dim(0)?, view.dim(1)?);
        let want: usize = self.modalities.iter().sum();
        if c != want {
            return Err(Error::msg(format!(
                "dino-mm: the views have {c} channels, but modalities {:?} add up to {want}; set `modalities` to the data's channel groups",
                self.modalities
            )));
        }
        let draws = self.host.rand_uniform(&[2 * b], 0.0, 1.0)?.to_vec_f32()?;
        let mask = sensor_mask(&draws, self.drop_p, &self.modalities);
        view.broadcast_mul(&self.host.from_f32(&mask, &[b, c, 1, 1])?)
    }
}

impl PretextTask for DinoMm {
    type Config = Config;

    fn new(cfg: Config, host: Host, scope: ParamScope) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            dino: Dino::new(cfg.dino, host, scope)?,
            host,
            modalities: cfg.modalities,
            drop_p: cfg.drop_p,
        })
    }

    fn views(&self) -> Vec<ViewSpec> {
        self.dino.views()
    }

    fn step(&mut self, batch: &Batch, info: &StepInfo) -> Result<StepOutput> {
        let views = batch
            .views
            .iter()
            .map(|v| self.drop_sensors(v))
            .collect::<Result<Vec<_>>>()?;
        let dropped = Batch {
            views,
            labels: batch.labels.clone(),
        };
        self.dino.step(&dropped, info)
    }

    fn frozen(&self, info: &StepInfo) -> Vec<String> {
        self.dino.frozen(info)
    }

    fn after_step(&mut self, info: &StepInfo) -> Result<()> {
        self.dino.after_step(info)
    }

    fn result_scope(&self) -> String {
        self.dino.result_scope()
    }
}

export_pretext!(
    DinoMm,
    name = "dino-mm",
    description =
        "DINO-MM: DINO on SAR + optical channels with random sensor drop (Wang et al. 2022)"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator of uniform draws in `[0, 1)`.
    fn draws(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    #[test]
    fn a_drop_zeroes_exactly_one_modality_at_the_configured_rates() {
        let modalities = [3, 2];
        let n = 40_000;
        let mask = sensor_mask(&draws(2 * n, 7), 0.5, &modalities);
        assert_eq!(mask.len(), n * 5);
        let (mut both, mut optical_only, mut sar_only) = (0, 0, 0);
        for row in mask.chunks_exact(5) {
            let optical = &row[..3];
            let sar = &row[3..];
            // A modality is kept or zeroed as a whole.
            assert!(optical.iter().all(|v| *v == optical[0]), "{row:?}");
            assert!(sar.iter().all(|v| *v == sar[0]), "{row:?}");
            match (optical[0], sar[0]) {
                (1.0, 1.0) => both += 1,
                (1.0, 0.0) => optical_only += 1,
                (0.0, 1.0) => sar_only += 1,
                _ => panic!("both modalities dropped: {row:?}"),
            }
        }
        let rate = |k: usize| k as f64 / n as f64;
        // 40 000 draws: the standard error of a rate near 0.25 is about 0.002.
        assert!((rate(both) - 0.5).abs() < 0.01, "both {}", rate(both));
        assert!(
            (rate(optical_only) - 0.25).abs() < 0.01,
            "optical {}",
            rate(optical_only)
        );
        assert!(
            (rate(sar_only) - 0.25).abs() < 0.01,
            "sar {}",
            rate(sar_only)
        );
    }

    #[test]
    fn no_drop_probability_keeps_every_channel_and_one_drops_every_view() {
        assert!(
            sensor_mask(&draws(200, 1), 0.0, &[2, 2])
                .iter()
                .all(|v| *v == 1.0)
        );
        let always = sensor_mask(&draws(200, 2), 1.0, &[2, 2]);
        for row in always.chunks_exact(4) {
            assert_eq!(
                row.iter().sum::<f32>(),
                2.0,
                "one modality of two kept: {row:?}"
            );
        }
    }

    #[test]
    fn config_reads_nested_dino_settings_and_rejects_one_modality() {
        let cfg: Config =
            parse_config("(dino: (out_dim: 256), modalities: [12, 2])").expect("parses");
        assert_eq!(cfg.dino.out_dim, 256);
        assert_eq!(cfg.modalities, vec![12, 2]);
        cfg.validate().expect("valid");
        let one = Config {
            modalities: vec![5],
            ..Config::default()
        };
        assert!(one.validate().is_err());
    }
}
