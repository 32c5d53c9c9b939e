//! Wider vectors for the fused ops' loops, chosen at run time. The crate is built for baseline
//! x86-64 (SSE2) so the binary runs on any x86-64 CPU; each hot loop is written once inside
//! [`twin!`], which compiles it twice (baseline and AVX-512) and picks the AVX-512 version when
//! [`wide`] says the CPU has it (`SURGERY_SIMD=portable` forces the baseline code, for tests and
//! comparisons). A closure handed to a generic wrapper would not be inlined into it and would
//! keep the baseline instructions, hence the macro. Helpers called in the loops must be
//! `#[inline(always)]`. `exp` is a polynomial the compiler can vectorise, unlike the libm
//! call of `f32::exp`.

use std::sync::OnceLock;

/// Whether the AVX-512 versions of the fused loops run in this process.
pub fn wide() -> bool {
    static WIDE: OnceLock<bool> = OnceLock::new();
    *WIDE.get_or_init(|| {
        let forced = std::env::var("SURGERY_SIMD").is_ok_and(|v| v == "portable");
        !forced && cpu_has_avx512()
    })
}

fn cpu_has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `twin! { fn f(a: A, b: B) { body } }` defines `f`, which runs `body` compiled with AVX-512
/// when [`wide`] allows it, and as built otherwise (the body becomes an `#[inline(always)]`
/// inner function, inlined into both versions).
macro_rules! twin {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn base($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) {
                    base($($arg),*)
                }
                if $crate::kernels::cpu::simd::wide() {
                    // SAFETY: `wide()` checked that the CPU has these features.
                    return unsafe { wide($($arg),*) };
                }
            }
            base($($arg),*)
        }
    };
}
pub(crate) use twin;

/// eˣ to about 2 ulp (Cephes' expf: range reduction by ln 2, degree-6 polynomial), 0 below −87
/// (where f32's eˣ is subnormal): straight-line arithmetic the compiler vectorises.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer in the default mode.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    // n + 1.5·2²³ is exact and its bits are ROUND's plus n: the integer n comes from them
    // without a float-to-int cast, which Rust saturates and the compiler then runs lane by lane.
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let exponent = shifted
        .to_bits()
        .wrapping_sub(ROUND.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(exponent << 23);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// Σ aᵢbᵢ with 16 partial sums, so the compiler keeps them in one vector register (a single
/// running sum is a serial chain it may not reorder).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Σ aᵢ with 16 partial sums (see [`dot`]).
#[inline(always)]
pub fn sum(a: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = a.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for i in 0..16 {
            acc[i] += x[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest aᵢ (−∞ for none), with 16 partial maxima (see [`dot`]); NaN is not expected.
#[inline(always)]
pub fn max(a: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = a.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for x in chunks {
        for i in 0..16 {
            acc[i] = if x[i] > acc[i] { x[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |m, &x| if x > m { x } else { m })
}

/// y += alpha · x
#[inline(always)]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm_and_zero_far_below() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4e-7, "largest relative error {worst}");
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(0.0), 1.0);
        // The ends of the clamped range keep a normal exponent (n from −126 to 127).
        assert!((exp(88.0) / 88f32.exp() - 1.0).abs() < 4e-7);
        assert!((exp(-87.0) / (-87f32).exp() - 1.0).abs() < 4e-7);
    }

    #[test]
    fn max_finds_the_largest_value_in_the_body_and_the_tail() {
        let mut v: Vec<f32> = (0..37).map(|i| -(i as f32)).collect();
        assert_eq!(max(&v), 0.0);
        v[20] = 5.0;
        assert_eq!(max(&v), 5.0);
        v[36] = 7.0;
        assert_eq!(max(&v), 7.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
