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

/// The learning rate at optimizer step `step` (0-based) of `total`.
pub fn learning_rate(peak: f64, step: usize, warmup: usize, total: usize, decay: Decay) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_then_decay() {
        assert!((learning_rate(1.0, 0, 10, 110, Decay::Linear) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 9, 10, 110, Decay::Linear) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 60, 10, 110, Decay::Linear) - 0.5).abs() < 1e-12);
        assert!((learning_rate(1.0, 60, 10, 110, Decay::Cosine) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 110, 10, 110, Decay::Linear).abs() < 1e-12);
        assert_eq!(learning_rate(2.0, 50, 0, 100, Decay::Constant), 2.0);
    }
}
