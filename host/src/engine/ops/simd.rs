//! The element-wise kernels compiled for the widest vector instructions the CPU has.
//!
//! The host is built for the x86-64 baseline (SSE2, 4 lanes), so its kernels' loops
//! vectorise only that wide. A kernel written with [`vectorized!`] is compiled three
//! times, for AVX-512, for AVX2 + FMA and for the baseline, and the first call picks
//! the widest the CPU supports (gemm does the same for the matrix products). Rust never
//! contracts or reorders float arithmetic on its own, so every width computes the same
//! bits: only the number of lanes differs.

use std::sync::OnceLock;

/// The vector instruction sets a [`vectorized!`] kernel chooses between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// AVX-512 (F, BW, DQ, VL) with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// What the binary was built for.
    Baseline,
}

/// The widest level this CPU supports (detected once).
pub(crate) fn level() -> Level {
    #[cfg(test)]
    if let Some(level) = tests::FORCED.get() {
        return level;
    }
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(detect)
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f")
            && has!("avx512bw")
            && has!("avx512dq")
            && has!("avx512vl")
            && has!("fma")
        {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// Defines `fn name(args)` whose body runs compiled for [`level`]: the body goes into
/// an `#[inline(always)]` function called from one `#[target_feature]` wrapper per
/// level, so it and the `#[inline]` helpers it calls are vectorised for that width.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(
                enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt"
            )]
            unsafe fn avx512($($arg: $ty),*) {
                body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt")]
            unsafe fn avx2($($arg: $ty),*) {
                body($($arg),*)
            }

            match $crate::engine::ops::simd::level() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `level` found AVX-512, AVX2 and FMA on this CPU.
                $crate::engine::ops::simd::Level::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `level` found AVX2 and FMA on this CPU.
                $crate::engine::ops::simd::Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

pub(super) use vectorized;

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// A level forced on this thread by [`at_every_level`].
        pub(super) static FORCED: Cell<Option<Level>> = const { Cell::new(None) };
    }

    /// `f()` at each level this CPU supports, the baseline first.
    pub(in crate::engine::ops) fn at_every_level<R>(mut f: impl FnMut() -> R) -> Vec<(Level, R)> {
        let levels = match detect() {
            Level::Avx512 => vec![Level::Baseline, Level::Avx2, Level::Avx512],
            Level::Avx2 => vec![Level::Baseline, Level::Avx2],
            Level::Baseline => vec![Level::Baseline],
        };
        let out = levels
            .into_iter()
            .map(|level| {
                FORCED.set(Some(level));
                (level, f())
            })
            .collect();
        FORCED.set(None);
        out
    }

    /// Deterministic values in about [-6, 6] for the kernels' same-bits tests.
    pub(in crate::engine::ops) fn wavy(len: usize, phase: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + phase) * 0.731).sin() * 6.0)
            .collect()
    }

    /// Asserts every level's answer has the baseline's bits.
    pub(in crate::engine::ops) fn assert_same_bits(what: &str, runs: &[(Level, Vec<f32>)]) {
        let Some((_, want)) = runs.first() else {
            return;
        };
        for (level, got) in runs {
            let same = got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{what}: {level:?} differs from the baseline");
        }
    }

    vectorized! {
        /// A kernel body with the helpers the real ones use.
        fn sample(first: usize, block: &mut [f32]) {
            for (i, x) in block.iter_mut().enumerate() {
                let v = ((first + i) as f32 * 0.37).sin() * 6.0;
                *x = super::super::exp_neg(-v.abs()) + super::super::gelu::gelu_slope(v) * 0.5;
            }
            let total = super::super::sum8(block);
            block[0] += total;
        }
    }

    #[test]
    fn every_level_computes_the_same_bits() {
        let runs = at_every_level(|| {
            let mut out = vec![0f32; 1037];
            sample(11, &mut out);
            out
        });
        assert_same_bits("sample kernel", &runs);
    }
}
