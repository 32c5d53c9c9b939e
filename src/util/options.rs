//! The domains of numeric command-line options, in one place. Each domain is a clap value parser,
//! so a command line and a recipe step (parsed by the same parser) refuse the same values with the
//! same message naming the option (exit 2): zero where a count must be positive, negative or
//! non-finite numbers (`NaN`, `inf`), fractions outside their interval. The library's entry points
//! call [`require_positive`] for the sizes they are given directly.

use crate::error::{Error, Result};

/// An integer ≥ 1 (batch sizes, block sizes, sentence counts, ranks).
pub fn positive(text: &str) -> std::result::Result<usize, String> {
    let value: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number ≥ 1"))?;
    if value == 0 {
        return Err("must be at least 1".into());
    }
    Ok(value)
}

/// An integer ≥ 0 (counts where none is a valid answer, e.g. neurons to keep).
pub fn whole(text: &str) -> std::result::Result<usize, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number ≥ 0"))
}

/// A sequence length FLOPs are counted at: 1 to [`MAX_LEN_LIMIT`] (no model has more
/// positions), which also keeps every FLOPs count far inside 64 bits (at most 2^20 tokens ×
/// 2^16 wide × 2^10 layers).
pub fn seq_len(text: &str) -> std::result::Result<usize, String> {
    let value = positive(text)?;
    if value > MAX_LEN_LIMIT {
        return Err(format!("must be in 1..={MAX_LEN_LIMIT}, not {text}"));
    }
    Ok(value)
}

/// The largest focusing parameter γ of the focal loss: (1 − p)^γ of a token predicted at
/// p = 0.5 is 2^-100 there already, below f32's normal range, so the loss would vanish.
pub const MAX_FOCAL_GAMMA: f64 = 100.0;

/// The focal loss's γ: a finite number in [0, [`MAX_FOCAL_GAMMA`]].
pub fn focal_gamma(text: &str) -> std::result::Result<f64, String> {
    let value = non_negative(text)?;
    if value > MAX_FOCAL_GAMMA {
        return Err(format!(
            "must be in [0, {MAX_FOCAL_GAMMA}] (beyond, (1 − p)^γ underflows and nothing is learnt), not {text}"
        ));
    }
    Ok(value)
}

fn number(text: &str) -> std::result::Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !value.is_finite() {
        return Err(format!("must be a finite number, not {text}"));
    }
    Ok(value)
}

/// A finite number (any sign).
pub fn finite(text: &str) -> std::result::Result<f64, String> {
    number(text)
}

/// A finite number > 0 (learning rates, temperatures, dampening, clipping norms).
pub fn positive_number(text: &str) -> std::result::Result<f64, String> {
    let value = number(text)?;
    if value <= 0.0 {
        return Err(format!("must be greater than 0, not {text}"));
    }
    Ok(value)
}

/// A finite number ≥ 0 (weights of loss terms, weight decay, penalties).
pub fn non_negative(text: &str) -> std::result::Result<f64, String> {
    let value = number(text)?;
    if value < 0.0 {
        return Err(format!("must be 0 or more, not {text}"));
    }
    Ok(value)
}

/// A finite number in [0, 1] (mixing weights, thresholds).
pub fn unit_interval(text: &str) -> std::result::Result<f64, String> {
    let value = number(text)?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("must be in [0, 1], not {text}"));
    }
    Ok(value)
}

/// A finite number in [0, 1) (ratios where 1 would leave nothing: warm-up, label smoothing).
pub fn fraction_below_one(text: &str) -> std::result::Result<f64, String> {
    let value = number(text)?;
    if !(0.0..1.0).contains(&value) {
        return Err(format!("must be in [0, 1), not {text}"));
    }
    Ok(value)
}

/// A finite number in (0, 1) (sparsity: 0 prunes nothing, 1 everything).
pub fn open_fraction(text: &str) -> std::result::Result<f64, String> {
    let value = number(text)?;
    if !(value > 0.0 && value < 1.0) {
        return Err(format!("must be in (0, 1), not {text}"));
    }
    Ok(value)
}

/// A finite number in (0, 1] (kept spectral energy).
pub fn fraction_above_zero(text: &str) -> std::result::Result<f64, String> {
    let value = number(text)?;
    if !(value > 0.0 && value <= 1.0) {
        return Err(format!("must be in (0, 1], not {text}"));
    }
    Ok(value)
}

/// The longest value `--max-len` may take: the largest `max_position_embeddings` a config may
/// declare (see `arch::config`).
pub const MAX_LEN_LIMIT: usize = 1 << 20;

/// A token window length: at least 3 ([CLS], one piece, [SEP]) and at most [`MAX_LEN_LIMIT`].
pub fn max_len(text: &str) -> std::result::Result<usize, String> {
    let value = positive(text)?;
    if !(3..=MAX_LEN_LIMIT).contains(&value) {
        return Err(format!("must be in 3..={MAX_LEN_LIMIT}, not {text}"));
    }
    Ok(value)
}

/// A window length checked against the model's: longer than its position table is an error
/// rather than a silent clamp.
pub fn check_max_len(option: &str, value: usize, model_max: usize) -> Result<()> {
    if value > model_max {
        return Err(Error::Spec(format!(
            "{option} {value}: the model has {model_max} positions; give at most {model_max}"
        )));
    }
    Ok(())
}

/// `--max-len`'s default on the training commands.
pub const TRAIN_MAX_LEN_DEFAULT: usize = 128;

/// The window length of a training run on models with `limits` positions (each named, e.g.
/// "the teacher"): a `--max-len` beyond one of them is an error, as on `eval`, rather than a
/// silent clamp. Only the default, which was not chosen for this model, is lowered to fit.
pub fn train_window_len(value: usize, limits: &[(&str, usize)]) -> Result<usize> {
    let Some(&(who, fits)) = limits.iter().min_by_key(|&&(_, n)| n) else {
        return Ok(value);
    };
    if value <= fits {
        return Ok(value);
    }
    if value == TRAIN_MAX_LEN_DEFAULT {
        return Ok(fits);
    }
    Err(Error::Spec(format!(
        "--max-len {value}: {who} has {fits} positions (max_position_embeddings); give at most {fits}"
    )))
}

/// For sizes a library entry point receives directly: zero is refused with the option's name.
pub fn require_positive(option: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::Spec(format!("{option} 0: must be at least 1")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The hostile values every numeric option is tried with, and ordinary ones.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_string()),
            Just("-1".to_string()),
            Just("NaN".to_string()),
            Just("nan".to_string()),
            Just("inf".to_string()),
            Just("-inf".to_string()),
            Just("1e30".to_string()),
            Just("18446744073709551616".to_string()),
            Just("1".to_string()),
            Just("0.5".to_string()),
            any::<f64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            "[ -~]{0,8}",
        ]
    }

    proptest! {
        /// Every accepted value lies in the option's domain; every value of the domain is
        /// accepted (checked against the parsed number, so no domain lets NaN or ∞ through).
        #[test]
        fn numeric_option_domains_accept_exactly_their_values(text in value()) {
            let parsed = text.trim().parse::<f64>().ok();
            let domains: [(fn(&str) -> std::result::Result<f64, String>, fn(f64) -> bool); 7] = [
                (finite, |v| v.is_finite()),
                (positive_number, |v| v.is_finite() && v > 0.0),
                (non_negative, |v| v.is_finite() && v >= 0.0),
                (unit_interval, |v| (0.0..=1.0).contains(&v)),
                (fraction_below_one, |v| (0.0..1.0).contains(&v)),
                (open_fraction, |v| v > 0.0 && v < 1.0),
                (fraction_above_zero, |v| v > 0.0 && v <= 1.0),
            ];
            for (parse, inside) in domains {
                match parse(&text) {
                    Ok(v) => prop_assert!(inside(v) && v.is_finite(), "{text} → {v}"),
                    Err(_) => prop_assert!(parsed.is_none_or(|v| !inside(v))),
                }
            }
            let integer = text.trim().parse::<usize>().ok();
            match positive(&text) {
                Ok(v) => prop_assert!(v >= 1 && Some(v) == integer),
                Err(_) => prop_assert!(integer.is_none_or(|v| v == 0)),
            }
            match max_len(&text) {
                Ok(v) => prop_assert!((3..=MAX_LEN_LIMIT).contains(&v)),
                Err(_) => prop_assert!(integer.is_none_or(|v| !(3..=MAX_LEN_LIMIT).contains(&v))),
            }
        }
    }

    #[test]
    fn sequence_lengths_and_gamma_have_bounds() {
        assert_eq!(seq_len("128"), Ok(128));
        assert!(seq_len("4611686018427387904").is_err());
        assert!(seq_len("0").is_err());
        assert_eq!(focal_gamma("2"), Ok(2.0));
        assert!(focal_gamma("1e308").unwrap_err().contains("[0, 100]"));
        assert_eq!(whole("0"), Ok(0));
        assert!(whole("-1").is_err());
    }

    #[test]
    fn zero_batch_size_given_to_the_library_is_refused() {
        assert!(require_positive("--batch-size", 0).is_err());
        assert!(require_positive("--batch-size", 1).is_ok());
        assert!(check_max_len("--max-len", 100_000, 512).is_err());
        assert!(check_max_len("--max-len", 512, 512).is_ok());
    }

    #[test]
    fn a_training_window_beyond_a_model_is_an_error_except_the_default() {
        let limits = [("the student", 64), ("the teacher", 32)];
        assert_eq!(train_window_len(16, &limits).unwrap(), 16);
        assert_eq!(train_window_len(32, &limits).unwrap(), 32);
        let err = train_window_len(48, &limits).unwrap_err().to_string();
        assert!(
            err.contains("--max-len 48") && err.contains("the teacher has 32"),
            "{err}"
        );
        assert_eq!(
            train_window_len(TRAIN_MAX_LEN_DEFAULT, &limits).unwrap(),
            32
        );
        assert_eq!(train_window_len(512, &[("the model", 512)]).unwrap(), 512);
    }
}
