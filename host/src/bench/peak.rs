//! `patchwork bench peak`: the machine's fp32 peak, measured rather than assumed. Every
//! worker thread runs chains of fused multiply-adds at the CPU's widest vector width,
//! enough independent chains to hide the instruction's latency on two FMA ports, so
//! the figure is what the cores sustain at the clock they hold under that load. The
//! train bench compares its achieved GFLOP/s with this figure.

use std::time::{Duration, Instant};

use crate::engine::ops::{VectorLevel, vector_level};

/// Independent accumulator registers per thread: at least FMA latency (4 cycles) ×
/// ports (2), and few enough that the compiler keeps all of them in registers (at 16 it
/// spilled two to the stack, which halved the rate).
const CHAINS: usize = 12;

/// The FMA loop's iterations between clock reads.
const BURST: u64 = 1 << 16;

/// The measured peak.
#[derive(Debug, Clone, Copy)]
pub struct Peak {
    /// fp32 GFLOP/s over all threads (an FMA counts as two FLOPs).
    pub gflops: f64,
    /// Worker threads that ran the loop.
    pub threads: usize,
    /// The instructions used: `AVX-512`, `AVX2+FMA` or `scalar`.
    pub width: &'static str,
}

/// The vector instructions the loop uses (the widest the host's kernels pick,
/// [`vector_level`]) and their lanes of f32.
fn width() -> (&'static str, usize) {
    match vector_level() {
        VectorLevel::Avx512 => ("AVX-512", 16),
        VectorLevel::Avx2 => ("AVX2+FMA", 8),
        VectorLevel::Baseline => ("scalar", 1),
    }
}

/// Runs the FMA loop on `threads` threads for about `time` and returns the rate.
pub fn measure(threads: usize, time: Duration) -> Peak {
    let threads = threads.max(1);
    let (name, lanes) = width();
    let iterations: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || run_for(time)))
            .collect();
        workers.into_iter().filter_map(|w| w.join().ok()).sum()
    });
    let flops = iterations as f64 * (CHAINS * lanes * 2) as f64;
    Peak {
        gflops: flops / time.as_secs_f64() / 1e9,
        threads,
        width: name,
    }
}

/// FMA-loop iterations done in about `time` on this thread, counted over whole bursts
/// and scaled to exactly `time`.
fn run_for(time: Duration) -> u64 {
    // One untimed burst lets the core reach its vector clock.
    std::hint::black_box(burst(BURST));
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < time {
        std::hint::black_box(burst(BURST));
        done += BURST;
    }
    let spent = start.elapsed().as_secs_f64();
    (done as f64 * time.as_secs_f64() / spent) as u64
}

/// `iterations` rounds of [`CHAINS`] independent FMAs at the widest width; returns a
/// value that depends on every chain so none is optimised away.
fn burst(iterations: u64) -> f32 {
    match vector_level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `vector_level` found AVX-512 (F, BW, DQ, VL) and FMA on this CPU.
        VectorLevel::Avx512 => unsafe { avx512(iterations) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `vector_level` found AVX2 and FMA on this CPU.
        VectorLevel::Avx2 => unsafe { avx2(iterations) },
        _ => scalar(iterations),
    }
}

/// The loop on 16-lane registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn avx512(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm512_set1_ps(std::hint::black_box(0.999_99));
    let c = _mm512_set1_ps(std::hint::black_box(1e-6));
    let mut acc = [_mm512_set1_ps(0.5); CHAINS];
    for _ in 0..iterations {
        for a in &mut acc {
            *a = _mm512_fmadd_ps(*a, m, c);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

/// The loop on 8-lane registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn avx2(iterations: u64) -> f32 {
    use std::arch::x86_64::*;
    let m = _mm256_set1_ps(std::hint::black_box(0.999_99));
    let c = _mm256_set1_ps(std::hint::black_box(1e-6));
    let mut acc = [_mm256_set1_ps(0.5); CHAINS];
    for _ in 0..iterations {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, m, c);
        }
    }
    let mut sum = 0.0;
    for a in acc {
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds the register's 8 f32s.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), a) };
        sum += lanes.iter().sum::<f32>();
    }
    sum
}

/// The loop without vector instructions: [`CHAINS`] scalar chains `a ← a·m + c`.
fn scalar(iterations: u64) -> f32 {
    let mut acc = [0.5f32; CHAINS];
    let (m, c) = std::hint::black_box((0.999_99f32, 1e-6f32));
    for _ in 0..iterations {
        for a in &mut acc {
            *a = a.mul_add(m, c);
        }
    }
    acc.iter().sum()
}

/// Prints `peak` as `patchwork bench peak` does.
pub fn print(peak: &Peak) {
    println!(
        "fp32 peak: {:.1} GFLOP/s on {} thread(s) ({}, {CHAINS} independent FMA chains per thread)",
        peak.gflops, peak.threads, peak.width
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_computes_the_same_chains() {
        // The vector loops run the scalar loop's recurrence in every lane.
        let want = scalar(1000) / CHAINS as f32;
        let (_, lanes) = width();
        let got = burst(1000) / (CHAINS * lanes) as f32;
        assert!((got - want).abs() <= 1e-4 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn the_rate_is_positive_and_counts_threads() {
        let p = measure(1, Duration::from_millis(20));
        assert_eq!(p.threads, 1);
        assert!(p.gflops > 0.0 && p.gflops.is_finite(), "{p:?}");
    }
}
