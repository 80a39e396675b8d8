//! Output buffers the workers fill chunk by chunk instead of zeroing them up front. A
//! zeroed 20 MB output is one more pass over memory before the kernel's own; written
//! a chunk at a time, the first write of each chunk stays in cache for the product or
//! activation that follows (the zeroing of a ViT-Tiny/16 step's linear outputs took
//! ~5 % of the step).

use std::mem::MaybeUninit;

/// `dst` filled with copies of `row` (its length a multiple of `row.len()`), as floats.
pub(super) fn rows_of<'a>(dst: &'a mut [MaybeUninit<f32>], row: &[f32]) -> &'a mut [f32] {
    if !row.is_empty() {
        for chunk in dst.chunks_mut(row.len()) {
            for (d, v) in chunk.iter_mut().zip(row) {
                d.write(*v);
            }
        }
    }
    assume_written(dst, row.is_empty())
}

/// `dst` filled with zeros, as floats.
pub(super) fn zeros(dst: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for d in dst.iter_mut() {
        d.write(0.0);
    }
    assume_written(dst, false)
}

/// `dst` filled with a copy of `src` (of the same length), as floats.
pub(super) fn copy_of<'a>(dst: &'a mut [MaybeUninit<f32>], src: &[f32]) -> &'a mut [f32] {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy between slices of different lengths"
    );
    for (d, v) in dst.iter_mut().zip(src) {
        d.write(*v);
    }
    assume_written(dst, false)
}

/// `dst` as floats once every element has been written (`zero_fill` writes zeros
/// first, for a pattern that could not).
fn assume_written(dst: &mut [MaybeUninit<f32>], zero_fill: bool) -> &mut [f32] {
    if zero_fill {
        for d in dst.iter_mut() {
            d.write(0.0);
        }
    }
    // SAFETY: every caller has written every element of `dst` (or `zero_fill` just
    // did), and `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A vector of `len` floats whose first `len` elements of spare capacity `fill` writes
/// (through [`rows_of`], [`zeros`] or [`copy_of`] on every part it hands out).
///
/// # Safety
/// `fill` must initialise all `len` elements of the slice it is given.
pub(super) unsafe fn filled(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is at least `len` and the caller guarantees `fill` wrote
    // every one of those elements.
    unsafe { v.set_len(len) };
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_write_every_element() {
        // SAFETY: each closure fills its whole slice through one of the helpers.
        let rows = unsafe {
            filled(7, |d| {
                rows_of(d, &[1.0]);
            })
        };
        assert_eq!(rows, [1.0; 7]);
        // SAFETY: as above.
        let v = unsafe {
            filled(6, |d| {
                rows_of(d, &[1.0, 2.0, 3.0]);
            })
        };
        assert_eq!(v, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        // SAFETY: as above.
        let z = unsafe {
            filled(5, |d| {
                zeros(d);
            })
        };
        assert_eq!(z, [0.0; 5]);
        // SAFETY: as above.
        let c = unsafe {
            filled(3, |d| {
                copy_of(d, &[4.0, 5.0, 6.0]);
            })
        };
        assert_eq!(c, [4.0, 5.0, 6.0]);
        // SAFETY: an empty row pattern zero-fills.
        let e = unsafe {
            filled(2, |d| {
                rows_of(d, &[]);
            })
        };
        assert_eq!(e, [0.0; 2]);
    }
}
