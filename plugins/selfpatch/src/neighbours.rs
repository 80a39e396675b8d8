//! SelfPatch's positive patches: for each patch, the `k` most similar of its 8
//! neighbours in the 3×3 window, coordinates wrapping around the grid's edges as
//! in the official code (a border patch's neighbours include the opposite edge).

/// The 8 neighbours of every patch of a `grid × grid` layout, row-major, each row
/// in window order (dy, dx) ∈ {-1, 0, 1}², centre left out.
pub fn neighbour_table(grid: usize) -> Vec<[usize; 8]> {
    let g = grid as isize;
    let wrap = |v: isize| v.rem_euclid(g.max(1)) as usize;
    let mut table = Vec::with_capacity(grid * grid);
    for r in 0..g {
        for c in 0..g {
            let mut row = [0usize; 8];
            let mut i = 0;
            for dy in -1..=1 {
                for dx in -1..=1 {
                    if dy == 0 && dx == 0 {
                        continue;
                    }
                    row[i] = wrap(r + dy) * grid + wrap(c + dx);
                    i += 1;
                }
            }
            table.push(row);
        }
    }
    table
}

/// For `images` images of `grid × grid` tokens of width `dim` (`tokens`, row-major
/// `(images·grid², dim)`), the `k` neighbours of each token with the highest cosine
/// similarity, most similar first (ties: the earlier neighbour in window order), as
/// row indices into `tokens`: `images·grid²·k` of them.
pub fn select_neighbours(
    tokens: &[f32],
    images: usize,
    grid: usize,
    dim: usize,
    k: usize,
) -> Vec<u32> {
    let n = grid * grid;
    let table = neighbour_table(grid);
    let norms: Vec<f32> = tokens
        .chunks_exact(dim.max(1))
        .map(|t| t.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12))
        .collect();
    let row = |i: usize| &tokens[i * dim..(i + 1) * dim];
    let mut out = Vec::with_capacity(images * n * k);
    for img in 0..images {
        for (p, window) in table.iter().enumerate() {
            let me = img * n + p;
            let mut sims: Vec<(usize, f32)> = window
                .iter()
                .map(|&q| {
                    let other = img * n + q;
                    let dot: f32 = row(me).iter().zip(row(other)).map(|(a, b)| a * b).sum();
                    (other, dot / (norms[me] * norms[other]))
                })
                .collect();
            // Stable: equal similarities keep window order.
            sims.sort_by(|a, b| b.1.total_cmp(&a.1));
            out.extend(sims.iter().take(k).map(|(i, _)| *i as u32));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corner_neighbours_wrap_around_the_grid() {
        // 4×4 grid; patch 0 is the top-left corner.
        let t = neighbour_table(4);
        assert_eq!(t[0], [15, 12, 13, 3, 1, 7, 4, 5]);
        // An inner patch (1, 1) = 5 has its plain 3×3 window.
        assert_eq!(t[5], [0, 1, 2, 4, 6, 8, 9, 10]);
    }

    #[test]
    fn the_most_similar_neighbours_are_picked_across_the_edge() {
        // One image, 3×3 grid, 2-d tokens. Patch 0 (top-left) points along x; its
        // wrap-around neighbours 2 (same row, far edge) and 6 (same column, bottom)
        // also point along x, patch 8 (the opposite corner) nearly so; the rest
        // point along y.
        let x = [1.0f32, 0.0];
        let y = [0.0f32, 1.0];
        let near_x = [1.0f32, 0.1];
        let grid: Vec<[f32; 2]> = vec![x, y, x, y, y, y, x, y, near_x];
        let tokens: Vec<f32> = grid.iter().flatten().copied().collect();
        let picked = select_neighbours(&tokens, 1, 3, 2, 4);
        // Ties keep window order: 6 comes before 2 in patch 0's window.
        assert_eq!(&picked[..3], &[6, 2, 8], "patch 0 top three: {picked:?}");
        // The fourth is one of the y tokens, the earliest in window order.
        let t = neighbour_table(3);
        let first_y = t[0].iter().find(|q| ![2, 6, 8].contains(*q)).copied();
        assert_eq!(Some(picked[3] as usize), first_y);
        assert_eq!(picked.len(), 9 * 4);
    }

    #[test]
    fn neighbours_stay_inside_their_image() {
        let tokens: Vec<f32> = (0..2 * 4 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let picked = select_neighbours(&tokens, 2, 2, 3, 4);
        for (row, chunk) in picked.chunks_exact(4).enumerate() {
            let image = row / 4;
            assert!(
                chunk.iter().all(|&i| i as usize / 4 == image),
                "{row}: {chunk:?}"
            );
        }
    }
}
