//! Learning-rate schedules: linear warm-up, then linear or cosine decay to zero (or constant).

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    #[default]
    Linear,
    Cosine,
    Constant,
}

/// A run's learning rate over its `total` optimizer steps: `warmup` steps up to `peak`, then
/// `decay`.
pub struct LrSchedule {
    pub peak: f64,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
}

impl LrSchedule {
    /// The learning rate at optimizer step `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        let LrSchedule {
            peak,
            warmup,
            total,
            decay,
        } = *self;
        if step < warmup {
            return peak * (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / span).min(1.0);
        match decay {
            Decay::Linear => peak * (1.0 - progress),
            Decay::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Constant => peak,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(peak: f64, warmup: usize, total: usize, decay: Decay) -> LrSchedule {
        LrSchedule {
            peak,
            warmup,
            total,
            decay,
        }
    }

    #[test]
    fn warm_up_then_decay() {
        assert!((schedule(1.0, 10, 110, Decay::Linear).at(0) - 0.1).abs() < 1e-12);
        assert!((schedule(1.0, 10, 110, Decay::Linear).at(9) - 1.0).abs() < 1e-12);
        assert!((schedule(1.0, 10, 110, Decay::Linear).at(60) - 0.5).abs() < 1e-12);
        assert!((schedule(1.0, 10, 110, Decay::Cosine).at(60) - 0.5).abs() < 1e-12);
        assert!(schedule(1.0, 10, 110, Decay::Linear).at(110).abs() < 1e-12);
        assert_eq!(schedule(2.0, 0, 100, Decay::Constant).at(50), 2.0);
    }
}
