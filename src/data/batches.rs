//! Length-bucketed batches: examples of similar length go together so little compute is spent on
//! padding (random batches of CoNLL waste ~60% of it); the order of batches is shuffled.

use crate::util::rng::Rng;

/// Batches as lists of example indices, and how much of the padded compute is padding.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub batches: Vec<Vec<usize>>,
    /// Pad tokens / all tokens of the padded batches.
    pub padding_ratio: f64,
}

/// Groups examples of similar length into batches of `batch_size`. With a generator, ties in
/// length are broken randomly and the batch order is shuffled (training); without, the order is
/// by length (evaluation).
pub fn bucket_batches(lengths: &[usize], batch_size: usize, rng: Option<&mut Rng>) -> BatchPlan {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    let mut rng = rng;
    if let Some(r) = rng.as_deref_mut() {
        r.shuffle(&mut order);
    }
    order.sort_by_key(|&i| lengths[i]);
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(|c| c.to_vec()).collect();
    if let Some(r) = rng {
        r.shuffle(&mut batches);
    }
    BatchPlan {
        padding_ratio: padding_ratio(&batches, lengths),
        batches,
    }
}

/// Random batches (no bucketing), for comparison with the usual training loops.
#[cfg(test)]
pub fn random_batches(lengths: &[usize], batch_size: usize, rng: &mut Rng) -> BatchPlan {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    let batches: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    BatchPlan {
        padding_ratio: padding_ratio(&batches, lengths),
        batches,
    }
}

fn padding_ratio(batches: &[Vec<usize>], lengths: &[usize]) -> f64 {
    let (mut real, mut padded) = (0usize, 0usize);
    for b in batches {
        let max = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        real += b.iter().map(|&i| lengths[i]).sum::<usize>();
        padded += max * b.len();
    }
    if padded == 0 {
        0.0
    } else {
        1.0 - real as f64 / padded as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_example_once_and_pad_less_than_random() {
        let mut rng = Rng::new(3);
        let lengths: Vec<usize> = (0..1000).map(|_| 3 + rng.below(60)).collect();
        let plan = bucket_batches(&lengths, 32, Some(&mut Rng::new(1)));
        let mut seen: Vec<usize> = plan.batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        let random = random_batches(&lengths, 32, &mut Rng::new(1));
        assert!(plan.padding_ratio < 0.05, "{}", plan.padding_ratio);
        assert!(random.padding_ratio > 0.3, "{}", random.padding_ratio);
    }
}
