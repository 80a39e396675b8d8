//! The attention figure an `Attention` evaluator writes: one row per image, the
//! image first, then the last block's CLS attention of each head over the patch
//! grid (DINO's `visualize_attention.py` view), as a PNG.

use std::path::Path;

use super::attention::AttentionMaps;

/// Gap between cells, in pixels.
const GAP: usize = 2;
/// Cells are scaled up by an integer factor to at least this side.
const MIN_CELL: usize = 96;
/// Background between cells.
const BACKGROUND: [u8; 3] = [255, 255, 255];
/// Stops of the colour map from 0 to 1 (viridis at 0, ¼, ½, ¾, 1).
const STOPS: [[f32; 3]; 5] = [
    [68.0, 1.0, 84.0],
    [59.0, 82.0, 139.0],
    [33.0, 145.0, 140.0],
    [94.0, 201.0, 98.0],
    [253.0, 231.0, 37.0],
];

/// The colour of `v` in `[0, 1]` (clamped; NaN is the low end).
pub fn colour(v: f32) -> [u8; 3] {
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let pos = v * (STOPS.len() - 1) as f32;
    let i = (pos.floor() as usize).min(STOPS.len() - 2);
    let t = pos - i as f32;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    [0, 1, 2].map(|c| (a[c] + t * (b[c] - a[c])).round() as u8)
}

/// The figure as an RGB image: per image a row of `1 + heads` cells of side
/// `size · scale`, the maps upsampled from the patch grid by nearest neighbour.
pub fn figure(maps: &AttentionMaps) -> image::RgbImage {
    let size = maps.images.first().map_or(1, |i| i.size).max(1);
    let scale = MIN_CELL.div_ceil(size);
    let cell = size * scale;
    let cols = 1 + maps.heads;
    let rows = maps.images.len().max(1);
    let w = cols * (cell + GAP) + GAP;
    let h = rows * (cell + GAP) + GAP;
    let mut out = image::RgbImage::from_pixel(w as u32, h as u32, image::Rgb(BACKGROUND));
    let (grid_rows, grid_cols) = (maps.grid.0.max(1), maps.grid.1.max(1));
    for (r, img) in maps.images.iter().enumerate() {
        let y0 = GAP + r * (cell + GAP);
        let mut put = |c: usize, y: usize, x: usize, px: [u8; 3]| {
            let x0 = GAP + c * (cell + GAP);
            out.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb(px));
        };
        for y in 0..cell {
            for x in 0..cell {
                let px = img
                    .rgb
                    .get((y / scale) * img.size + x / scale)
                    .copied()
                    .unwrap_or(BACKGROUND);
                put(0, y, x, px);
                let patch = (y * grid_rows / cell) * grid_cols + x * grid_cols / cell;
                for (head, map) in img.maps.iter().enumerate() {
                    put(
                        1 + head,
                        y,
                        x,
                        colour(map.get(patch).copied().unwrap_or(0.0)),
                    );
                }
            }
        }
    }
    out
}

/// Writes [`figure`] of `maps` to `path` as PNG, atomically (a temporary file renamed
/// into place), creating the folder.
pub fn write(maps: &AttentionMaps, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut png = std::io::Cursor::new(Vec::new());
    figure(maps)
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(path, png.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::attention::AttentionImage;

    fn maps() -> AttentionMaps {
        // Two 4 px images, two heads, a 2x2 patch grid.
        let image = |shade: u8| AttentionImage {
            size: 4,
            rgb: vec![[shade, 0, 0]; 16],
            maps: vec![vec![0.0, 1.0, 0.5, 0.0], vec![1.0; 4]],
        };
        AttentionMaps {
            label: "end".into(),
            heads: 2,
            grid: (2, 2),
            images: vec![image(10), image(200)],
        }
    }

    #[test]
    fn colour_map_runs_from_dark_to_bright() {
        assert_eq!(colour(0.0), [68, 1, 84]);
        assert_eq!(colour(1.0), [253, 231, 37]);
        assert_eq!(colour(0.5), [33, 145, 140]);
        assert_eq!(colour(f32::NAN), colour(0.0));
        assert_eq!(colour(7.0), colour(1.0));
    }

    #[test]
    fn figure_lays_out_images_and_heads_with_upsampled_patches() {
        let fig = figure(&maps());
        // 4 px scaled to 96: cells of 96, 3 columns and 2 rows with 2 px gaps.
        assert_eq!(fig.dimensions(), (3 * 98 + 2, 2 * 98 + 2));
        let at = |c: u32, r: u32, x: u32, y: u32| fig.get_pixel(2 + c * 98 + x, 2 + r * 98 + y).0;
        assert_eq!(at(0, 0, 5, 5), [10, 0, 0], "the first image");
        assert_eq!(at(0, 1, 90, 90), [200, 0, 0], "the second image");
        // Head 0: patch (0, 1) is 1.0 (top right), patch (1, 0) is 0.5 (bottom left).
        assert_eq!(at(1, 0, 10, 10), colour(0.0));
        assert_eq!(at(1, 0, 60, 10), colour(1.0));
        assert_eq!(at(1, 0, 10, 60), colour(0.5));
        assert_eq!(at(2, 1, 47, 47), colour(1.0), "head 1 of image 1");
        assert_eq!(fig.get_pixel(0, 0).0, BACKGROUND);
    }

    #[test]
    fn write_leaves_a_png_that_decodes() {
        let dir = std::env::temp_dir().join(format!("pw-attn-fig-{}", std::process::id()));
        let path = dir.join("attention").join("end.png");
        write(&maps(), &path).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(back, figure(&maps()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
