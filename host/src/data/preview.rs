//! A PNG grid of raw images and their augmented views: one row per sample, the raw
//! image first, then every view (denormalised) in view-spec order.

use std::path::Path;

use rand_chacha::ChaCha8Rng;

use super::loader::{DataError, Dataset, sample_rng};
use super::stats::ChannelStats;
use super::views::{Image, ViewSpec, make_views};

/// Gap between cells, in pixels.
const GAP: usize = 2;

/// The grid as an RGB image: `rows` samples (indices `0, step, 2·step, …` spread over
/// the dataset), each with its raw image and the views of `specs` drawn with the
/// loader's per-sample RNG for `(seed, epoch 0, index)`. Cells are as large as the
/// largest image; each picture is scaled up by an integer factor to fill its cell.
pub fn preview_grid(
    data: &dyn Dataset,
    specs: &[ViewSpec],
    stats: &ChannelStats,
    rows: usize,
    seed: u64,
) -> Result<image::RgbImage, DataError> {
    let n = data.len();
    if n == 0 {
        return Err(DataError::Empty);
    }
    let rows = rows.clamp(1, n);
    let step = (n / rows).max(1);
    let mut table: Vec<Vec<Image>> = Vec::with_capacity(rows);
    for r in 0..rows {
        let index = (r * step).min(n - 1);
        let sample = data.get(index)?;
        let mut rng: ChaCha8Rng = sample_rng(seed, 0, index);
        let views = make_views(&sample.image, specs, stats, &mut rng);
        let mut row = vec![sample.image.clone()];
        row.extend(
            views
                .iter()
                .map(|v| denormalize(v, &stats.mean, &stats.std)),
        );
        table.push(row);
    }
    let cell = table
        .iter()
        .flatten()
        .map(|i| i.height.max(i.width))
        .max()
        .unwrap_or(1);
    let cols = table.iter().map(Vec::len).max().unwrap_or(1);
    let w = cols * (cell + GAP) + GAP;
    let h = rows * (cell + GAP) + GAP;
    let mut out = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb([40, 40, 40]));
    for (r, row) in table.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let scale = (cell / img.height.max(img.width).max(1)).max(1);
            let (x0, y0) = (GAP + c * (cell + GAP), GAP + r * (cell + GAP));
            for y in 0..(img.height * scale).min(cell) {
                for x in 0..(img.width * scale).min(cell) {
                    let px = rgb_at(img, y / scale, x / scale);
                    out.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
                }
            }
        }
    }
    Ok(out)
}

/// Writes [`preview_grid`] to `path` as PNG.
pub fn write_preview(grid: &image::RgbImage, path: &Path) -> Result<(), DataError> {
    grid.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::Write {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Undoes `normalize`: `v·std + mean` per channel (channels past `mean.len()` as is).
fn denormalize(img: &Image, mean: &[f32], std: &[f32]) -> Image {
    let plane = img.plane();
    let mut out = img.clone();
    for c in 0..img.channels.min(mean.len()).min(std.len()) {
        for v in &mut out.data[c * plane..(c + 1) * plane] {
            *v = *v * std[c] + mean[c];
        }
    }
    out
}

/// An 8-bit RGB pixel; one-channel images are grey, extra channels are ignored.
fn rgb_at(img: &Image, y: usize, x: usize) -> [u8; 3] {
    let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    if img.channels >= 3 {
        [q(img.at(0, y, x)), q(img.at(1, y, x)), q(img.at(2, y, x))]
    } else {
        let g = q(img.at(0, y, x));
        [g, g, g]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::{Shapes, ShapesConfig, Split};
    use crate::data::stats::{ChannelStats, IMAGENET_MEAN, IMAGENET_STD};
    use crate::data::views::dino_default;

    #[test]
    fn grid_has_a_cell_per_image_and_view() {
        let shapes = Shapes::new(ShapesConfig {
            images: 12,
            size: 16,
            ..ShapesConfig::default()
        })
        .unwrap();
        let ds = shapes.split(Split::Train);
        let specs = dino_default(16, 2, 8);
        let grid = preview_grid(&ds, &specs, &ChannelStats::imagenet(), 3, 0).unwrap();
        // 3 rows; raw + 2 globals + 2 locals = 5 columns of 16 px cells.
        assert_eq!(
            grid.dimensions(),
            ((5 * 18 + 2) as u32, (3 * 18 + 2) as u32)
        );
        // The raw image of row 0 is copied exactly into its cell.
        let raw = ds.get(0).unwrap().image;
        let want = rgb_at(&raw, 3, 5);
        assert_eq!(grid.get_pixel(2 + 5, 2 + 3).0, want);
    }

    #[test]
    fn denormalize_inverts_normalize() {
        let img = Image::new(3, 1, 2, vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).unwrap();
        let n = crate::data::augment::normalize(&img, &IMAGENET_MEAN, &IMAGENET_STD);
        let back = denormalize(&n, &IMAGENET_MEAN, &IMAGENET_STD);
        for (a, b) in back.data.iter().zip(&img.data) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
