//! The selected session's attention maps: each image's thumbnail and its per-head
//! heat maps, drawn in half-block pixels.

use ratatui::{
    Frame,
    buffer::Buffer,
    layout::Rect,
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Paragraph, Widget, Wrap},
};

use crate::{session::attention::AttentionMaps, tui::app::App};

/// Columns between two tiles.
const GAP: usize = 1;
/// Columns between two images' groups of tiles.
const GROUP_GAP: usize = 3;
/// Tiles are scaled up to about this many pixels a side.
const TILE: usize = 16;

/// RGB pixels drawn two to a cell: `▀` with the upper pixel as foreground and the
/// lower one as background.
pub struct HalfBlocks<'a> {
    /// Pixels per row.
    pub width: usize,
    /// The pixels, row-major (`width * height`).
    pub pixels: &'a [[u8; 3]],
}

fn rgb([r, g, b]: [u8; 3]) -> Color {
    Color::Rgb(r, g, b)
}

impl Widget for HalfBlocks<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if self.width == 0 {
            return;
        }
        let height = self.pixels.len() / self.width;
        let area = area.intersection(buf.area);
        for cy in 0..usize::from(area.height).min(height.div_ceil(2)) {
            for cx in 0..usize::from(area.width).min(self.width) {
                let at = |y: usize| (y < height).then(|| self.pixels[y * self.width + cx]);
                let position = (area.x + cx as u16, area.y + cy as u16);
                if let (Some(cell), Some(upper)) = (buf.cell_mut(position), at(2 * cy)) {
                    cell.set_char('▀').set_fg(rgb(upper));
                    cell.set_bg(at(2 * cy + 1).map_or(Color::Reset, rgb));
                }
            }
        }
    }
}

/// The heat colour of `v` in `[0, 1]`: black, red, yellow, white.
pub fn heat(v: f32) -> [u8; 3] {
    let t = v.clamp(0.0, 1.0) * 3.0;
    let ramp = |x: f32| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    [ramp(t), ramp(t - 1.0), ramp(t - 2.0)]
}

/// `src` (`sw * sh`) resized to `dw * dh` by nearest neighbour.
fn resize<T: Copy>(src: &[T], (sw, sh): (usize, usize), (dw, dh): (usize, usize)) -> Vec<T> {
    (0..dh)
        .flat_map(|y| (0..dw).map(move |x| (y * sh / dh) * sw + x * sw / dw))
        .filter_map(|i| src.get(i).copied())
        .collect()
}

/// How the tiles are laid out at one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fit {
    /// Tile size in pixels `(w, h)`.
    tile: (usize, usize),
    /// Heads shown per image.
    heads: usize,
    /// Images side by side.
    across: usize,
    /// Images shown.
    images: usize,
}

/// The tile layout at scale `k` in `width * height` cells.
fn fit(maps: &AttentionMaps, k: usize, width: usize, height: usize) -> Fit {
    let (rows, cols) = maps.grid;
    let tile = (cols * k, rows * k);
    let per_tile = tile.0 + GAP;
    let heads = ((width + GAP) / per_tile).saturating_sub(1).min(maps.heads);
    let group = (1 + heads) * per_tile - GAP;
    let across = ((width + GROUP_GAP) / (group + GROUP_GAP)).max(1);
    let lines = (height + 1) / (tile.1.div_ceil(2) + 1);
    let images = (across * lines).min(maps.images.len());
    Fit {
        tile,
        heads,
        across,
        images,
    }
}

/// The largest scale (tiles up to about [`TILE`] pixels) at which every image and
/// head fits, else the smallest.
fn choose(maps: &AttentionMaps, width: usize, height: usize) -> Fit {
    let largest = (TILE / maps.grid.0.max(maps.grid.1).max(1)).max(1);
    (1..=largest)
        .rev()
        .map(|k| fit(maps, k, width, height))
        .find(|f| f.heads == maps.heads && f.images == maps.images.len())
        .unwrap_or_else(|| fit(maps, 1, width, height))
}

/// Draws the maps in `area` (label line, header line, then the tiles).
fn draw_maps(maps: &AttentionMaps, frame: &mut Frame, area: Rect) {
    let width = usize::from(area.width);
    let f = choose(maps, width, usize::from(area.height).saturating_sub(2));
    let (rows, cols) = maps.grid;
    let mut label = vec![
        Span::styled("attention: ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "{} · {} heads · grid {rows}×{cols}",
            maps.label, maps.heads
        )),
    ];
    if f.images < maps.images.len() || f.heads < maps.heads {
        let shown = format!(
            " · showing {}/{} images, {}/{} heads",
            f.images,
            maps.images.len(),
            f.heads,
            maps.heads
        );
        label.push(Span::styled(shown, Color::DarkGray));
    }
    frame.render_widget(Line::from(label), Rect { height: 1, ..area });

    let per_tile = f.tile.0 + GAP;
    let group = (1 + f.heads) * per_tile - GAP + GROUP_GAP;
    let cell_rows = f.tile.1.div_ceil(2);
    let buf = frame.buffer_mut();
    let mut header = String::new();
    for _ in 0..f.across.min(f.images) {
        for t in 0..=f.heads {
            let name = match (t, f.tile.0 >= 6) {
                (0, true) => "image".to_string(),
                (0, false) => "img".to_string(),
                (t, true) => format!("head {t}"),
                (t, false) => format!("h{t}"),
            };
            let name: String = name.chars().take(f.tile.0).collect();
            header.push_str(&format!("{name:<per_tile$}"));
        }
        header.push_str(&" ".repeat(GROUP_GAP - GAP));
    }
    let header_area = Rect {
        y: area.y + 1,
        height: 1,
        ..area
    }
    .intersection(area);
    Line::styled(header, Color::DarkGray).render(header_area, buf);

    for (i, image) in maps.images.iter().take(f.images).enumerate() {
        let x = area.x as usize + (i % f.across) * group;
        let y = area.y as usize + 2 + (i / f.across) * (cell_rows + 1);
        let thumb = resize(&image.rgb, (image.size, image.size), f.tile);
        let heats = image.maps.iter().take(f.heads).map(|m| {
            let pixels: Vec<[u8; 3]> = m.iter().map(|&v| heat(v)).collect();
            resize(&pixels, (cols, rows), f.tile)
        });
        for (t, pixels) in std::iter::once(thumb).chain(heats).enumerate() {
            let tile = Rect {
                x: (x + t * per_tile) as u16,
                y: y as u16,
                width: f.tile.0 as u16,
                height: cell_rows as u16,
            }
            .intersection(area);
            HalfBlocks {
                width: f.tile.0,
                pixels: &pixels,
            }
            .render(tile, buf);
        }
    }
}

/// Draws the attention panel into `area`.
pub fn render(app: &App, frame: &mut Frame, area: Rect) {
    let name = app.current().map_or("", |r| r.name.as_str());
    let block = Block::bordered().title(format!(" attention · {name} "));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    match app.current().and_then(|r| r.attention.as_deref()) {
        Some(maps) if !maps.images.is_empty() && maps.grid.0 * maps.grid.1 > 0 => {
            draw_maps(maps, frame, inner);
        }
        _ => {
            let text = "no attention maps yet: they appear at random init, after each epoch \
                        and after evaluation";
            let text =
                Paragraph::new(Line::styled(text, Color::DarkGray)).wrap(Wrap { trim: true });
            frame.render_widget(text, inner);
        }
    }
}
