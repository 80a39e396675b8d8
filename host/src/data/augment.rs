//! Image augmentations on CPU [`Image`]s, following torchvision/PIL semantics.
//!
//! Resampling is PIL's `BICUBIC`: the Keys cubic with `a = -0.5`, support widened by the
//! downscale factor (antialiasing), weights renormalised at the borders; output clamped
//! to `[0, 1]` as PIL's 8-bit path does. Colour operations (jitter, grayscale) change
//! only 3-channel images; other images pass through unchanged.

use rand::Rng;

use super::views::Image;

/// Luma weights (ITU-R 601-2, as PIL's `convert("L")`).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// A uniform sample in `[lo, hi)` (`lo` when the range is empty).
pub fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.random::<f32>()
}

/// Keys cubic convolution kernel with `a = -0.5` (PIL's bicubic).
pub fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index and normalised weights (PIL's `precompute_coeffs`).
fn coefficients(in_size: usize, start: f64, len: f64, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = len / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|o| {
            let center = start + (o as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0) as usize).min(in_size - 1);
            let hi = ((center + support + 0.5).floor() as usize).clamp(lo + 1, in_size);
            let w: Vec<f64> = (lo..hi)
                .map(|x| bicubic_kernel((x as f64 - center + 0.5) / filterscale))
                .collect();
            let sum: f64 = w.iter().sum();
            let w = if sum == 0.0 {
                let mut one = vec![0.0; w.len()];
                one[0] = 1.0;
                one
            } else {
                w.iter().map(|v| (v / sum) as f32).collect()
            };
            (lo, w)
        })
        .collect()
}

/// Resamples the box `(top, left, height, width)` (in input pixels, may be fractional)
/// to `out_h x out_w` with the bicubic filter. Empty images or outputs give zeros.
pub fn resample_box(img: &Image, bbox: (f64, f64, f64, f64), out_h: usize, out_w: usize) -> Image {
    let (top, left, bh, bw) = bbox;
    let mut out = Image::zeros(img.channels, out_h, out_w);
    if img.height == 0 || img.width == 0 || out_h == 0 || out_w == 0 {
        return out;
    }
    let rows = coefficients(img.height, top, bh, out_h);
    let cols = coefficients(img.width, left, bw, out_w);
    let row_lo = rows.iter().map(|r| r.0).min().unwrap_or(0);
    let row_hi = rows.iter().map(|r| r.0 + r.1.len()).max().unwrap_or(0);
    let span = row_hi - row_lo;
    // Horizontal pass over the rows the vertical pass needs.
    let mut tmp = vec![0.0f32; img.channels * span * out_w];
    for c in 0..img.channels {
        for y in 0..span {
            let src = &img.data[(c * img.height + row_lo + y) * img.width..][..img.width];
            let dst = &mut tmp[(c * span + y) * out_w..][..out_w];
            for (d, (x0, w)) in dst.iter_mut().zip(&cols) {
                *d = src[*x0..].iter().zip(w).map(|(s, k)| s * k).sum();
            }
        }
    }
    // Vertical pass.
    for c in 0..img.channels {
        for (oy, (y0, w)) in rows.iter().enumerate() {
            let dst = &mut out.data[(c * out_h + oy) * out_w..][..out_w];
            for (k, &wk) in w.iter().enumerate() {
                let src = &tmp[(c * span + y0 - row_lo + k) * out_w..][..out_w];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += wk * s;
                }
            }
        }
    }
    for v in &mut out.data {
        *v = v.clamp(0.0, 1.0);
    }
    out
}

/// Bicubic resize of the whole image to `height x width`.
pub fn resize_bicubic(img: &Image, height: usize, width: usize) -> Image {
    resample_box(
        img,
        (0.0, 0.0, img.height as f64, img.width as f64),
        height,
        width,
    )
}

/// Resizes so that the shorter side becomes `size`, keeping the aspect ratio
/// (torchvision `Resize(int)`: the longer side is `floor(size * long / short)`).
pub fn resize_shorter_side(img: &Image, size: usize) -> Image {
    let (h, w) = (img.height, img.width);
    if h == 0 || w == 0 {
        return img.clone();
    }
    if h <= w {
        resize_bicubic(img, size, size * w / h)
    } else {
        resize_bicubic(img, size * h / w, size)
    }
}

/// Crops `height x width` from the centre (torchvision offsets, `round((H - h) / 2)`);
/// parts outside the input are zero.
pub fn center_crop(img: &Image, height: usize, width: usize) -> Image {
    let top = ((img.height as f64 - height as f64) / 2.0).round_ties_even() as isize;
    let left = ((img.width as f64 - width as f64) / 2.0).round_ties_even() as isize;
    let mut out = Image::zeros(img.channels, height, width);
    for c in 0..img.channels {
        for y in 0..height {
            let sy = y as isize + top;
            if sy < 0 || sy >= img.height as isize {
                continue;
            }
            for x in 0..width {
                let sx = x as isize + left;
                if sx >= 0 && sx < img.width as isize {
                    out.data[(c * height + y) * width + x] = img.at(c, sy as usize, sx as usize);
                }
            }
        }
    }
    out
}

/// Copies the `height x width` window at `(top, left)`; it must lie inside the image.
pub fn crop(img: &Image, top: usize, left: usize, height: usize, width: usize) -> Image {
    let mut out = Image::zeros(img.channels, height, width);
    for c in 0..img.channels {
        for y in 0..height {
            let src = (c * img.height + top + y) * img.width + left;
            let dst = (c * height + y) * width;
            out.data[dst..dst + width].copy_from_slice(&img.data[src..src + width]);
        }
    }
    out
}

/// torchvision `RandomResizedCrop`: up to 10 tries for a box of area fraction in
/// `scale` and aspect ratio (log-uniform) in `ratio` that fits, else a centre crop
/// with the ratio clamped; the window is cropped (integer box), then resized bicubic to
/// `out_size x out_size`, as torchvision does on PIL images.
pub fn random_resized_crop<R: Rng + ?Sized>(
    img: &Image,
    out_size: usize,
    scale: (f32, f32),
    ratio: (f32, f32),
    rng: &mut R,
) -> Image {
    let (hh, ww) = (img.height, img.width);
    let area = (hh * ww) as f32;
    for _ in 0..10 {
        let target = area * uniform(rng, scale.0, scale.1);
        let aspect = uniform(rng, ratio.0.ln(), ratio.1.ln()).exp();
        let cw = (target * aspect).sqrt().round() as usize;
        let ch = (target / aspect).sqrt().round() as usize;
        if cw > 0 && cw <= ww && ch > 0 && ch <= hh {
            let top = rng.random_range(0..=hh - ch);
            let left = rng.random_range(0..=ww - cw);
            return resize_bicubic(&crop(img, top, left, ch, cw), out_size, out_size);
        }
    }
    let in_ratio = ww as f32 / hh.max(1) as f32;
    let (ch, cw) = if in_ratio < ratio.0.min(ratio.1) {
        ((ww as f32 / ratio.0.min(ratio.1)).round() as usize, ww)
    } else if in_ratio > ratio.0.max(ratio.1) {
        (hh, (hh as f32 * ratio.0.max(ratio.1)).round() as usize)
    } else {
        (hh, ww)
    };
    // torchvision: top = (H - h) // 2, left = (W - w) // 2.
    let cropped = crop(img, (hh - ch) / 2, (ww - cw) / 2, ch, cw);
    resize_bicubic(&cropped, out_size, out_size)
}

/// Mirrors the image left-right.
pub fn hflip(img: &Image) -> Image {
    let mut out = img.clone();
    for row in out.data.chunks_exact_mut(img.width.max(1)) {
        row.reverse();
    }
    out
}

fn is_rgb(img: &Image) -> bool {
    img.channels == 3
}

fn luma_plane(img: &Image) -> Vec<f32> {
    let p = img.plane();
    (0..p)
        .map(|i| LUMA[0] * img.data[i] + LUMA[1] * img.data[p + i] + LUMA[2] * img.data[2 * p + i])
        .collect()
}

/// Blends every channel toward `other` (`factor * img + (1 - factor) * other`), clamped;
/// `other` is a per-pixel plane or empty for zero.
fn blend(img: &Image, other: &[f32], factor: f32, offset: f32) -> Image {
    let mut out = img.clone();
    for plane in out.data.chunks_exact_mut(img.plane().max(1)) {
        if other.is_empty() {
            plane
                .iter_mut()
                .for_each(|v| *v = (factor * *v + offset).clamp(0.0, 1.0));
        } else {
            for (v, o) in plane.iter_mut().zip(other) {
                *v = (factor * *v + (1.0 - factor) * o).clamp(0.0, 1.0);
            }
        }
    }
    out
}

/// Multiplies by `factor` (torchvision `adjust_brightness`), clamped.
pub fn adjust_brightness(img: &Image, factor: f32) -> Image {
    if !is_rgb(img) {
        return img.clone();
    }
    blend(img, &[], factor, 0.0)
}

/// Blends with the mean luma (torchvision `adjust_contrast`), clamped.
pub fn adjust_contrast(img: &Image, factor: f32) -> Image {
    if !is_rgb(img) || img.plane() == 0 {
        return img.clone();
    }
    let mean = luma_plane(img).iter().sum::<f32>() / img.plane() as f32;
    blend(img, &[], factor, (1.0 - factor) * mean)
}

/// Blends with the per-pixel luma (torchvision `adjust_saturation`), clamped.
pub fn adjust_saturation(img: &Image, factor: f32) -> Image {
    if !is_rgb(img) {
        return img.clone();
    }
    let gray = luma_plane(img);
    blend(img, &gray, factor, 0.0)
}

/// Rotates the hue by `shift` turns (`shift` in `[-0.5, 0.5]`; torchvision `adjust_hue`).
pub fn adjust_hue(img: &Image, shift: f32) -> Image {
    if !is_rgb(img) {
        return img.clone();
    }
    let p = img.plane();
    let mut out = img.clone();
    for i in 0..p {
        let (h, s, v) = rgb_to_hsv(img.data[i], img.data[p + i], img.data[2 * p + i]);
        let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
        out.data[i] = r;
        out.data[p + i] = g;
        out.data[2 * p + i] = b;
    }
    out
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let delta = max - min;
    if delta <= 0.0 {
        return (0.0, 0.0, max);
    }
    let s = if max > 0.0 { delta / max } else { 0.0 };
    let h = if max == r {
        (g - b) / delta
    } else if max == g {
        2.0 + (b - r) / delta
    } else {
        4.0 + (r - g) / delta
    };
    ((h / 6.0).rem_euclid(1.0), s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let p = v * (1.0 - s);
    let q = v * (1.0 - s * f);
    let t = v * (1.0 - s * (1.0 - f));
    match (sector as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// torchvision `ColorJitter(brightness, contrast, saturation, hue)`: draws a random
/// order of the four ops, then the factors (`1 ± x`, hue `± hue`), then applies them.
pub fn color_jitter<R: Rng + ?Sized>(
    img: &Image,
    brightness: f32,
    contrast: f32,
    saturation: f32,
    hue: f32,
    rng: &mut R,
) -> Image {
    let mut order = [0usize, 1, 2, 3];
    for i in (1..4).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let factor = |rng: &mut R, x: f32| uniform(rng, (1.0 - x).max(0.0), 1.0 + x);
    let b = factor(rng, brightness);
    let c = factor(rng, contrast);
    let s = factor(rng, saturation);
    let h = uniform(rng, -hue, hue);
    let mut out = img.clone();
    for op in order {
        out = match op {
            0 => adjust_brightness(&out, b),
            1 => adjust_contrast(&out, c),
            2 => adjust_saturation(&out, s),
            _ => adjust_hue(&out, h),
        };
    }
    out
}

/// Luma replicated to all three channels (torchvision `Grayscale(3)`).
pub fn grayscale(img: &Image) -> Image {
    if !is_rgb(img) {
        return img.clone();
    }
    let gray = luma_plane(img);
    let mut out = img.clone();
    for plane in out.data.chunks_exact_mut(img.plane().max(1)) {
        plane.copy_from_slice(&gray);
    }
    out
}

/// Every band times `factor`, clamped: DINO-MM's multi-band `RandomBrightness`.
pub fn scale_bands(img: &Image, factor: f32) -> Image {
    blend(img, &[], factor, 0.0)
}

/// Each band blended with its own mean, `(v - mean_c) * factor + mean_c`, clamped:
/// DINO-MM's multi-band `RandomContrast`.
pub fn contrast_bands(img: &Image, factor: f32) -> Image {
    let mut out = img.clone();
    let n = img.plane().max(1);
    for plane in out.data.chunks_exact_mut(n) {
        let mean = plane.iter().sum::<f32>() / n as f32;
        plane
            .iter_mut()
            .for_each(|v| *v = ((*v - mean) * factor + mean).clamp(0.0, 1.0));
    }
    out
}

/// The mean over bands, in every band: DINO-MM's multi-band `ToGray`.
pub fn mean_gray(img: &Image) -> Image {
    let p = img.plane();
    let mut gray = vec![0.0f32; p];
    for plane in img.data.chunks_exact(p.max(1)) {
        for (g, v) in gray.iter_mut().zip(plane) {
            *g += v / img.channels.max(1) as f32;
        }
    }
    let mut out = img.clone();
    for plane in out.data.chunks_exact_mut(p.max(1)) {
        plane.copy_from_slice(&gray);
    }
    out
}

/// Reflect-101 index (`-1 -> 1`, `n -> n - 2`) for any offset.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Separable Gaussian blur with standard deviation `sigma` pixels (kernel radius
/// `ceil(3 sigma)`, reflect padding), on every channel.
pub fn gaussian_blur(img: &Image, sigma: f32) -> Image {
    if sigma <= 0.0 || img.plane() == 0 {
        return img.clone();
    }
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let (h, w) = (img.height, img.width);
    let pad = |n: usize| -> Vec<usize> {
        (-radius..n as isize + radius)
            .map(|i| reflect(i, n))
            .collect()
    };
    let (cols, rows) = (pad(w), pad(h));
    // Horizontal pass through a reflected copy of each row.
    let mut tmp = vec![0.0f32; img.data.len()];
    let mut padded = vec![0.0f32; cols.len()];
    for (src, dst) in img.data.chunks_exact(w).zip(tmp.chunks_exact_mut(w)) {
        for (p, &c) in padded.iter_mut().zip(&cols) {
            *p = src[c];
        }
        for (x, d) in dst.iter_mut().enumerate() {
            *d = padded[x..x + kernel.len()]
                .iter()
                .zip(&kernel)
                .map(|(a, k)| a * k)
                .sum();
        }
    }
    // Vertical pass: whole rows scaled and accumulated.
    let mut out = Image::zeros(img.channels, h, w);
    for (src, dst) in tmp
        .chunks_exact(h * w)
        .zip(out.data.chunks_exact_mut(h * w))
    {
        for (y, row) in dst.chunks_exact_mut(w).enumerate() {
            for (&k, &r) in kernel.iter().zip(&rows[y..]) {
                for (d, s) in row.iter_mut().zip(&src[r * w..(r + 1) * w]) {
                    *d += k * s;
                }
            }
        }
    }
    out
}

/// Inverts values at or above `threshold` (`v -> 1 - v`; PIL `solarize`), every channel.
pub fn solarize(img: &Image, threshold: f32) -> Image {
    let mut out = img.clone();
    for v in &mut out.data {
        if *v >= threshold {
            *v = 1.0 - *v;
        }
    }
    out
}

/// `(v - mean[c]) / std[c]`; when fewer values than channels are given they repeat
/// cyclically (one value applies to all channels). Empty slices leave the image as is.
pub fn normalize(img: &Image, mean: &[f32], std: &[f32]) -> Image {
    if mean.is_empty() || std.is_empty() {
        return img.clone();
    }
    let mut out = img.clone();
    for (c, plane) in out.data.chunks_exact_mut(img.plane().max(1)).enumerate() {
        let (m, inv) = (mean[c % mean.len()], 1.0 / std[c % std.len()]);
        plane.iter_mut().for_each(|v| *v = (*v - m) * inv);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn multi_band_contrast_keeps_each_bands_mean_and_gray_averages_bands() {
        // Two bands of two pixels: (0.2, 0.6) and (0.5, 0.5).
        let img = Image::new(2, 1, 2, vec![0.2, 0.6, 0.5, 0.5]).unwrap();
        let c = contrast_bands(&img, 0.5);
        for (got, want) in c.data.iter().zip([0.3, 0.5, 0.5, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{:?}", c.data);
        }
        let g = mean_gray(&img);
        for (got, want) in g.data.iter().zip([0.35, 0.55, 0.35, 0.55]) {
            assert!((got - want).abs() < 1e-6, "{:?}", g.data);
        }
        let b = scale_bands(&img, 2.0);
        assert_eq!(b.data, vec![0.4, 1.0, 1.0, 1.0], "clamped at 1");
    }

    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn assert_close(a: f32, b: f32, tol: f32) {
        assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
    }

    fn random_image(c: usize, h: usize, w: usize, seed: u64) -> Image {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let data = (0..c * h * w).map(|_| rng.random::<f32>()).collect();
        Image::new(c, h, w, data).unwrap()
    }

    fn gray_image(h: usize, w: usize, seed: u64) -> Image {
        let g = random_image(1, h, w, seed);
        let data = g.data.iter().cycle().take(3 * h * w).copied().collect();
        Image::new(3, h, w, data).unwrap()
    }

    #[test]
    fn kernel_matches_keys_a_minus_half() {
        assert_close(bicubic_kernel(0.0) as f32, 1.0, 1e-7);
        assert_close(bicubic_kernel(1.0) as f32, 0.0, 1e-7);
        assert_close(bicubic_kernel(2.0) as f32, 0.0, 1e-7);
        // a = -0.5 at 0.5: (1.5 * 0.5 - 2.5) * 0.25 + 1 = 0.5625; at 1.5: -0.0625.
        assert_close(bicubic_kernel(0.5) as f32, 0.5625, 1e-7);
        assert_close(bicubic_kernel(-1.5) as f32, -0.0625, 1e-7);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = Image::filled(3, 13, 17, 0.37);
        for out in [
            resize_bicubic(&img, 29, 8),
            resize_bicubic(&img, 5, 40),
            gaussian_blur(&img, 1.7),
            gaussian_blur(&img, 0.1),
            random_resized_crop(
                &img,
                11,
                (0.05, 0.4),
                (0.75, 4.0 / 3.0),
                &mut ChaCha8Rng::seed_from_u64(3),
            ),
        ] {
            assert!(out.data.iter().all(|&v| (v - 0.37).abs() < 1e-5));
        }
    }

    #[test]
    fn bicubic_resize_of_a_ramp_is_linear_inside() {
        let (h, w) = (4, 20);
        let data = (0..3 * h * w).map(|i| (i % w) as f32 / w as f32).collect();
        let img = Image::new(3, h, w, data).unwrap();
        for out_w in [40, 10] {
            let out = resize_bicubic(&img, h, out_w);
            let step = w as f32 / out_w as f32;
            // Away from the borders, output pixel x samples the input at (x + 0.5) * step - 0.5.
            let margin = ((2.0 * step.max(1.0) + 1.0) / step).ceil() as usize + 1;
            for x in margin..out_w - margin {
                let expected = ((x as f32 + 0.5) * step - 0.5) / w as f32;
                assert_close(out.at(1, 2, x), expected, 1e-5);
            }
        }
    }

    #[test]
    fn identity_resize_is_exact() {
        let img = random_image(3, 9, 7, 5);
        let out = resize_bicubic(&img, 9, 7);
        for (a, b) in out.data.iter().zip(&img.data) {
            assert_close(*a, *b, 1e-6);
        }
    }

    #[test]
    fn flip_twice_is_identity() {
        let img = random_image(3, 5, 8, 1);
        let once = hflip(&img);
        assert_eq!(once.at(0, 2, 0), img.at(0, 2, 7));
        assert_eq!(hflip(&once), img);
    }

    #[test]
    fn solarize_inverts_above_threshold() {
        let img = Image::new(1, 1, 4, vec![0.1, 0.49, 0.5, 0.9]).unwrap();
        let out = solarize(&img, 0.5);
        let expected = [0.1, 0.49, 0.5, 0.1];
        for (a, b) in out.data.iter().zip(expected) {
            assert_close(*a, b, 1e-6);
        }
    }

    #[test]
    fn hue_and_saturation_leave_gray_unchanged() {
        let img = gray_image(6, 6, 2);
        for out in [
            adjust_hue(&img, 0.3),
            adjust_hue(&img, -0.1),
            adjust_saturation(&img, 1.7),
        ] {
            for (a, b) in out.data.iter().zip(&img.data) {
                assert_close(*a, *b, 1e-6);
            }
        }
        for (a, b) in grayscale(&img).data.iter().zip(&img.data) {
            assert_close(*a, *b, 1e-6);
        }
    }

    #[test]
    fn hue_shift_roundtrips_and_rotates_primaries() {
        let img = random_image(3, 4, 4, 9);
        let back = adjust_hue(&adjust_hue(&img, 0.25), -0.25);
        for (a, b) in back.data.iter().zip(&img.data) {
            assert_close(*a, *b, 1e-5);
        }
        // Pure red shifted by a third of a turn becomes pure green.
        let red = Image::new(3, 1, 1, vec![1.0, 0.0, 0.0]).unwrap();
        let green = adjust_hue(&red, 1.0 / 3.0);
        for (a, b) in green.data.iter().zip([0.0, 1.0, 0.0]) {
            assert_close(*a, b, 1e-5);
        }
    }

    #[test]
    fn brightness_contrast_grayscale_values() {
        let img = Image::new(3, 1, 2, vec![0.2, 0.8, 0.4, 0.4, 0.6, 0.0]).unwrap();
        let bright = adjust_brightness(&img, 1.5);
        assert_close(bright.at(0, 0, 1), 1.0, 1e-6);
        assert_close(bright.at(0, 0, 0), 0.3, 1e-6);
        let flat = adjust_contrast(&img, 0.0);
        let mean = (0.299 * 1.0 + 0.587 * 0.8 + 0.114 * 0.6) / 2.0;
        assert!(flat.data.iter().all(|&v| (v - mean).abs() < 1e-6));
        let g = grayscale(&img);
        assert_close(g.at(2, 0, 0), 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6, 1e-6);
        assert_eq!(g.at(0, 0, 1), g.at(1, 0, 1));
    }

    #[test]
    fn colour_ops_skip_non_rgb() {
        let img = random_image(2, 3, 3, 4);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(color_jitter(&img, 0.4, 0.4, 0.2, 0.1, &mut rng), img);
        assert_eq!(grayscale(&img), img);
    }

    #[test]
    fn blur_preserves_mean_and_smooths() {
        let img = random_image(3, 16, 16, 6);
        let out = gaussian_blur(&img, 2.0);
        let var = |d: &[f32]| {
            let m = d.iter().sum::<f32>() / d.len() as f32;
            d.iter().map(|v| (v - m).powi(2)).sum::<f32>() / d.len() as f32
        };
        assert!(var(&out.data) < 0.25 * var(&img.data));
        let tiny = gaussian_blur(&img, 0.1);
        for (a, b) in tiny.data.iter().zip(&img.data) {
            assert_close(*a, *b, 1e-4);
        }
        assert_eq!(reflect(-1, 5), 1);
        assert_eq!(reflect(5, 5), 3);
        assert_eq!(reflect(-9, 5), 1);
    }

    #[test]
    fn crops_have_the_right_shape_and_centre() {
        let img = random_image(3, 10, 14, 7);
        let c = center_crop(&img, 6, 6);
        assert_eq!(c.at(1, 0, 0), img.at(1, 2, 4));
        let padded = center_crop(&img, 12, 14);
        assert_eq!(padded.at(0, 0, 3), 0.0);
        assert_eq!(padded.at(0, 1, 3), img.at(0, 0, 3));
        let r = resize_shorter_side(&img, 5);
        assert_eq!((r.height, r.width), (5, 7));
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let rrc = random_resized_crop(&img, 9, (0.4, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!((rrc.channels, rrc.height, rrc.width), (3, 9, 9));
        assert!(rrc.data.iter().all(|v| (0.0..=1.0).contains(v)));
        // A 2x40 strip never fits a 3/4..4/3 box of 90% area: centre-crop fallback.
        let strip =
            Image::new(1, 2, 40, (0..80).map(|i| (i % 40) as f32 / 40.0).collect()).unwrap();
        let fb = random_resized_crop(&strip, 4, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert_eq!((fb.height, fb.width), (4, 4));
        assert!(
            fb.data.iter().all(|&v| (0.4..0.6).contains(&v)),
            "{:?}",
            fb.data
        );
    }

    #[test]
    fn normalize_uses_channel_statistics() {
        let img = Image::filled(3, 1, 1, 0.5);
        let out = normalize(&img, &[0.5, 0.25, 0.0], &[1.0, 0.5, 0.25]);
        assert_eq!(out.data, vec![0.0, 0.5, 2.0]);
        let one = normalize(&Image::filled(2, 1, 1, 1.0), &[0.5], &[0.5]);
        assert_eq!(one.data, vec![1.0, 1.0]);
    }
}
