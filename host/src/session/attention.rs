//! Last-layer CLS attention of a few validation images, per head: what the TUI's
//! attention view shows (DINO's `get_last_selfattention`).

use abi_stable::std_types::ROption;
use candle_core::{DType, Tensor};
use patchwork_plugin_api::abi::ForwardOpts;

use super::{
    SessionError,
    plugin_call::check,
    runner::{backbone_at, destroy},
};
use crate::{
    data::{augment::normalize, image_folder::eval_transform, source::Data, views::Image},
    engine::{context, grad, registry},
    plugins::LoadedPlugin,
};

/// The attention maps of a few images at one point of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionMaps {
    /// When they were taken (`random init`, `epoch 3`, `trained`).
    pub label: String,
    /// Attention heads of the last block.
    pub heads: usize,
    /// Patch grid `(rows, cols)`.
    pub grid: (usize, usize),
    /// One entry per image.
    pub images: Vec<AttentionImage>,
}

/// One image and its per-head CLS attention.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionImage {
    /// Side of the square thumbnail.
    pub size: usize,
    /// `size * size` RGB pixels, row-major (the first three bands of multi-band data).
    pub rgb: Vec<[u8; 3]>,
    /// Per head, `rows * cols` values scaled to `[0, 1]` (min–max per map).
    pub maps: Vec<Vec<f32>>,
}

/// The images to look at, prepared once per session.
#[derive(Debug)]
pub struct AttentionProbe {
    /// Normalised eval views `(N, C, S, S)`, on the CPU.
    input: Tensor,
    thumbs: Vec<Vec<[u8; 3]>>,
    size: usize,
}

/// Where to take the maps from: the backbone plugin and the scope of its parameters.
pub struct AttentionCapture<'a> {
    /// The prepared images.
    pub probe: &'a AttentionProbe,
    /// The backbone plugin.
    pub plugin: &'a LoadedPlugin,
    /// Its config (RON).
    pub config: &'a str,
    /// The parameter scope whose features the session reports (e.g. the teacher).
    pub scope: String,
}

fn thumbnail(img: &Image) -> Vec<[u8; 3]> {
    let byte = |c: usize, i: usize| {
        let c = c.min(img.channels.saturating_sub(1));
        (img.data[c * img.plane() + i].clamp(0.0, 1.0) * 255.0).round() as u8
    };
    (0..img.plane())
        .map(|i| [byte(0, i), byte(1, i), byte(2, i)])
        .collect()
}

impl AttentionProbe {
    /// The first `count` validation images of `data` (training images when it has no
    /// validation split); `None` when `count` is 0 or there are no images.
    pub fn new(data: &Data, count: usize) -> Result<Option<Self>, SessionError> {
        let split = if data.val.is_empty() {
            &data.train
        } else {
            &data.val
        };
        let count = count.min(split.len());
        if count == 0 {
            return Ok(None);
        }
        let size = data.size;
        let mut values = Vec::new();
        let mut thumbs = Vec::new();
        for i in 0..count {
            let view = eval_transform(&split.get(i)?.image, size);
            thumbs.push(thumbnail(&view));
            values.extend_from_slice(&normalize(&view, &data.stats.mean, &data.stats.std).data);
        }
        let input = Tensor::from_vec(
            values,
            (count, data.channels, size, size),
            &candle_core::Device::Cpu,
        )?;
        Ok(Some(Self {
            input,
            thumbs,
            size,
        }))
    }
}

/// Scales `v` to `[0, 1]` (all zeros when constant).
fn min_max(v: &[f32]) -> Vec<f32> {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = hi - lo;
    v.iter()
        .map(|x| if span > 0.0 { (x - lo) / span } else { 0.0 })
        .collect()
}

/// Per image, per head, one value per token (or per patch).
type PerImageHead = Vec<Vec<Vec<f32>>>;

/// Splits CLS attention rows `(B, heads, T)` (T = 1 + patches) into per-image,
/// per-head square maps of the patch tokens: `(heads, grid, maps)`.
fn cls_maps(rows: PerImageHead) -> Result<(usize, (usize, usize), PerImageHead), String> {
    let heads = rows.first().map_or(0, Vec::len);
    let tokens = rows.first().and_then(|r| r.first()).map_or(0, Vec::len);
    let patches = tokens.saturating_sub(1);
    let side = (patches as f64).sqrt().round() as usize;
    if side == 0 || side * side != patches {
        return Err(format!(
            "attention has {tokens} tokens; expected the CLS token plus a square grid of patches"
        ));
    }
    let maps = rows
        .into_iter()
        .map(|image| image.iter().map(|head| min_max(&head[1..])).collect())
        .collect();
    Ok((heads, (side, side), maps))
}

impl AttentionCapture<'_> {
    /// Runs the backbone on the probe images and returns the maps labelled `label`.
    pub fn capture(&self, label: &str) -> Result<AttentionMaps, SessionError> {
        let bb = backbone_at(self.plugin, self.config, &self.scope)?;
        let result = self.forward(bb.instance);
        destroy(self.plugin, bb.instance);
        let rows = result?;
        let (heads, grid, maps) = cls_maps(rows).map_err(SessionError::Unsupported)?;
        let images = maps
            .into_iter()
            .zip(&self.probe.thumbs)
            .map(|(maps, rgb)| AttentionImage {
                size: self.probe.size,
                rgb: rgb.clone(),
                maps,
            })
            .collect();
        Ok(AttentionMaps {
            label: label.to_string(),
            heads,
            grid,
            images,
        })
    }

    /// CLS attention rows `(B, heads, T)` of the probe images.
    fn forward(
        &self,
        instance: patchwork_plugin_api::abi::InstanceId,
    ) -> Result<PerImageHead, SessionError> {
        let images = registry::insert(self.probe.input.to_device(&context::device())?);
        let opts = ForwardOpts {
            train: false,
            layers: false,
            attention: true,
            keep: ROption::RNone,
        };
        let r = grad::no_grad(|| (self.plugin.root.backbone_forward())(instance, images, opts));
        registry::remove(images);
        let out = check(self.plugin, "forward", r)?;
        registry::remove(out.cls);
        registry::remove(out.patches);
        for id in out.layers.iter() {
            registry::remove(*id);
        }
        let attention = out
            .attention
            .into_option()
            .and_then(registry::remove)
            .ok_or_else(|| {
                SessionError::Unsupported(format!(
                    "backbone '{}' returns no attention maps",
                    self.plugin.name()
                ))
            })?;
        // (B, heads, T, T) -> the CLS row (B, heads, T).
        let cls_row = attention.detach().narrow(2, 0, 1)?.squeeze(2)?;
        Ok(cls_row.to_dtype(DType::F32)?.to_vec3::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cls_maps_drop_the_cls_token_and_scale_per_head() {
        // One image, two heads, CLS + 2x2 patches.
        let rows = vec![vec![
            vec![0.5, 0.1, 0.2, 0.3, 0.4],
            vec![0.9, 0.0, 0.0, 0.0, 0.0],
        ]];
        let (heads, grid, maps) = cls_maps(rows).unwrap();
        assert_eq!((heads, grid), (2, (2, 2)));
        let m = &maps[0][0];
        let expected = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0];
        for (a, e) in m.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{m:?}");
        }
        assert_eq!(maps[0][1], vec![0.0; 4], "a constant map scales to zeros");
    }

    #[test]
    fn cls_maps_reject_a_non_square_grid() {
        let err = cls_maps(vec![vec![vec![0.0; 4]]]).unwrap_err();
        assert!(err.contains("4 tokens"), "{err}");
    }
}
