//! Pure functions of the DINO recipe: schedules, loss-pair counting and multi-crop
//! grouping. No tensors, so they are unit-tested directly.

use std::{f64::consts::PI, ops::Range};

/// Teacher temperature at `epoch` (main_dino.py `DINOLoss.teacher_temp_schedule`):
/// `np.linspace(warmup_temp, temp, warmup_epochs)` for the first `warmup_epochs`
/// epochs (both ends included), then `temp`.
pub fn teacher_temp(epoch: u64, warmup_temp: f64, temp: f64, warmup_epochs: u64) -> f64 {
    if epoch >= warmup_epochs {
        return temp;
    }
    if warmup_epochs == 1 {
        return warmup_temp;
    }
    warmup_temp + (temp - warmup_temp) * epoch as f64 / (warmup_epochs - 1) as f64
}

/// EMA momentum of the teacher at iteration `step` of `total_steps`
/// (`utils.cosine_scheduler(momentum_teacher, 1, epochs, niter_per_ep)`):
/// `1 + ½(base − 1)(1 + cos(π·step/total))`, rising from `base` towards 1.
pub fn teacher_momentum(base: f64, step: u64, total_steps: u64) -> f64 {
    if total_steps == 0 {
        return base;
    }
    let progress = step.min(total_steps) as f64 / total_steps as f64;
    1.0 + 0.5 * (base - 1.0) * (1.0 + (PI * progress).cos())
}

/// Number of (teacher view, student view) terms in DINOLoss: every pair except a
/// view with itself (`2·ncrops − 2` with 2 teacher views).
pub fn loss_pairs(teacher_views: usize, student_views: usize) -> usize {
    teacher_views * student_views - teacher_views.min(student_views)
}

/// Runs of equal consecutive keys, as the `MultiCropWrapper`'s
/// `unique_consecutive(..., return_counts=True)` over crop resolutions.
pub fn group_consecutive<T: PartialEq>(keys: &[T]) -> Vec<Range<usize>> {
    let mut groups: Vec<Range<usize>> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if keys[g.start] == *key => g.end = i + 1,
            _ => groups.push(i..i + 1),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(actual: f64, expected: f64, tol: f64) {
        assert!(
            (actual - expected).abs() <= tol,
            "{actual} vs {expected} (tol {tol})"
        );
    }

    #[test]
    fn teacher_temp_defaults_are_constant() {
        for epoch in [0, 1, 50, 1000] {
            assert_close(teacher_temp(epoch, 0.04, 0.04, 0), 0.04, 1e-15);
        }
    }

    #[test]
    fn teacher_temp_warms_up_linearly_with_both_ends() {
        // np.linspace(0.04, 0.07, 30): [0.04, 0.04103…, …, 0.07], then 0.07.
        assert_close(teacher_temp(0, 0.04, 0.07, 30), 0.04, 1e-15);
        assert_close(
            teacher_temp(15, 0.04, 0.07, 30),
            0.04 + 0.03 * 15.0 / 29.0,
            1e-15,
        );
        assert_close(teacher_temp(29, 0.04, 0.07, 30), 0.07, 1e-15);
        assert_close(teacher_temp(30, 0.04, 0.07, 30), 0.07, 1e-15);
        assert_close(teacher_temp(0, 0.04, 0.07, 1), 0.04, 1e-15);
        assert_close(teacher_temp(1, 0.04, 0.07, 1), 0.07, 1e-15);
    }

    #[test]
    fn momentum_is_cosine_from_base_to_one() {
        assert_close(teacher_momentum(0.996, 0, 1000), 0.996, 1e-15);
        assert_close(teacher_momentum(0.996, 500, 1000), 0.998, 1e-12);
        assert_close(teacher_momentum(0.996, 1000, 1000), 1.0, 1e-15);
        // The last iteration (999) is just below 1, as np.arange(total) never reaches it.
        let last = teacher_momentum(0.996, 999, 1000);
        assert!(last < 1.0 && last > 0.99999, "{last}");
        let mut prev = 0.0;
        for step in 0..1000 {
            let m = teacher_momentum(0.996, step, 1000);
            assert!(m >= prev, "not monotone at {step}");
            prev = m;
        }
        assert_close(teacher_momentum(0.996, 3, 0), 0.996, 1e-15);
    }

    #[test]
    fn pair_counts() {
        assert_eq!(loss_pairs(2, 10), 18);
        assert_eq!(loss_pairs(2, 2), 2);
        assert_eq!(loss_pairs(2, 12), 22);
        assert_eq!(loss_pairs(1, 1), 0);
    }

    #[test]
    fn groups_follow_consecutive_resolutions() {
        let sizes = [224, 224, 96, 96, 96, 96, 96, 96, 96, 96];
        assert_eq!(group_consecutive(&sizes), vec![0..2, 2..10]);
        assert_eq!(group_consecutive(&[224, 96, 224]), vec![0..1, 1..2, 2..3]);
        assert_eq!(group_consecutive::<u32>(&[]), Vec::<Range<usize>>::new());
    }
}
