//! Thread defaults on the CPU. Two pools run a model's ops there: rayon's, for the matrix
//! products and the fused kernels (candle splits a product over `RAYON_NUM_THREADS` threads, by
//! default one per physical core: the *compute threads*); and candle's pool for its own
//! elementwise ops, `CANDLE_NUM_THREADS` threads (the caller and its workers; by default as many
//! as the compute threads), whose workers spin for a while after each op, on the cores the
//! products then need.
//!
//! The rule, applied before the first tensor op (candle reads these variables once), and only
//! where the environment does not set the variable:
//! - training (and recipes, which train): candle's elementwise pool gets half of the compute
//!   threads, at least one. On 2 cores that is the calling thread alone: measured faster in
//!   every alternating run, +4–5% real tokens/s at f32 and +1.5–12% at bf16 over 100 steps, with
//!   bit-identical losses (docs/results.md). On many cores the elementwise ops stay parallel
//!   (one thread would make them the step's serial part) while at most half of the cores
//!   carry spinning workers;
//! - inference: the pool keeps candle's size (no difference beyond noise on 2 cores), but its
//!   workers park at once instead of spinning: +5% tokens/s on the test set (−9% in training,
//!   which therefore keeps the spin).

/// What a command mostly does, which decides its thread defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Training,
    Inference,
}

const CANDLE_THREADS: &str = "CANDLE_NUM_THREADS";
const SPIN_LIMIT: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Sets this process's thread defaults for `workload` (see the module's rule). Call it before
/// any tensor op, while the process has a single thread.
pub fn apply_defaults(workload: Workload) {
    for (key, value) in defaults(workload, compute_threads()) {
        if std::env::var_os(key).is_none() {
            std::env::set_var(key, value);
        }
    }
}

/// The threads of rayon's pool that run the matrix products: `RAYON_NUM_THREADS`, else the
/// physical cores (candle's own count).
pub fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// The most threads a pool may be given: 8 per core, at least 64. Beyond that the threads only
/// contend (and `RAYON_NUM_THREADS=100000` spends minutes and gigabytes starting them).
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (8 * cores).max(64)
}

/// Checks the thread-count variables (`RAYON_NUM_THREADS`, `CANDLE_NUM_THREADS`) before any
/// pool starts: each must be a whole number in 1..=[`max_threads`] (rayon and candle would
/// silently ignore a malformed one and start an absurd one).
pub fn check_environment() -> Result<(), String> {
    for key in ["RAYON_NUM_THREADS", CANDLE_THREADS] {
        let Some(value) = std::env::var_os(key) else {
            continue;
        };
        check_thread_count(key, &value.to_string_lossy(), max_threads())?;
    }
    Ok(())
}

/// One thread-count variable's value checked against `max`.
pub fn check_thread_count(key: &str, value: &str, max: usize) -> Result<(), String> {
    match value.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(()),
        Ok(n) => Err(format!(
            "{key}={n}: give a thread count in 1..={max} (8 per core on this machine, at least 64)"
        )),
        Err(_) => Err(format!(
            "{key}=`{value}` is not a whole number; give a thread count in 1..={max}"
        )),
    }
}

/// The variables the rule sets for `workload` with `compute` threads for the products.
pub fn defaults(workload: Workload, compute: usize) -> Vec<(&'static str, String)> {
    match workload {
        Workload::Training => vec![(
            CANDLE_THREADS,
            training_elementwise_threads(compute).to_string(),
        )],
        Workload::Inference => vec![(SPIN_LIMIT, "0".to_string())],
    }
}

/// Candle's elementwise pool in training: half of the compute threads, at least one.
pub fn training_elementwise_threads(compute: usize) -> usize {
    (compute / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_or_malformed_thread_counts_are_refused_with_the_variable_named() {
        assert!(check_thread_count("RAYON_NUM_THREADS", "4", 64).is_ok());
        let err = check_thread_count("RAYON_NUM_THREADS", "100000", 64).unwrap_err();
        assert!(
            err.contains("RAYON_NUM_THREADS=100000") && err.contains("1..=64"),
            "{err}"
        );
        assert!(check_thread_count("RAYON_NUM_THREADS", "0", 64).is_err());
        assert!(check_thread_count("CANDLE_NUM_THREADS", "four", 64)
            .unwrap_err()
            .contains("CANDLE_NUM_THREADS"));
    }

    #[test]
    fn training_keeps_two_cores_on_one_elementwise_thread_and_halves_larger_machines() {
        let threads: Vec<usize> = [1, 2, 3, 4, 16, 64]
            .into_iter()
            .map(training_elementwise_threads)
            .collect();
        assert_eq!(threads, [1, 1, 1, 2, 8, 32]);
        assert_eq!(
            defaults(Workload::Training, 2),
            [("CANDLE_NUM_THREADS", "1".to_string())]
        );
        assert_eq!(
            defaults(Workload::Inference, 64),
            [("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0".to_string())]
        );
    }
}
