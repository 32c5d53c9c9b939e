//! Matrix products with bf16 inputs and f32 accumulation, for `--precision bf16`.
//!
//! On CPUs with AVX512-BF16, `vdpbf16ps` multiplies 32 bf16 pairs per instruction, twice the
//! f32 FMA rate; the kernel below packs both operands into bf16 pairs along the contraction axis
//! and runs an 8 × 48 register tile. Without that instruction set (or with
//! `SURGERY_BF16_KERNEL=portable`) the same numbers come from rounding the operands to bf16 and
//! running the f32 `gemm` crate: the product of two bf16 values is exact in f32, so both paths
//! differ only in the order of the f32 sums.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::matrix::{product_f32, MatRef};

/// Which implementation runs the bf16 products on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// `vdpbf16ps` (AVX512-BF16), chosen when the CPU has it.
    Avx512Bf16,
    /// Operands rounded to bf16, then the f32 kernel: same results, no speed-up.
    Portable,
}

impl Bf16Kernel {
    /// The kernel for this process: AVX512-BF16 when the CPU has it, unless the environment
    /// variable `SURGERY_BF16_KERNEL=portable` forces the fallback (tests, comparisons).
    pub fn detect() -> Bf16Kernel {
        static KERNEL: OnceLock<Bf16Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let forced = std::env::var("SURGERY_BF16_KERNEL").is_ok_and(|v| v == "portable");
            if !forced && cpu_has_avx512_bf16() {
                Bf16Kernel::Avx512Bf16
            } else {
                Bf16Kernel::Portable
            }
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            Bf16Kernel::Avx512Bf16 => "AVX512-BF16 kernel",
            Bf16Kernel::Portable => {
                "portable path (no AVX512-BF16 on this CPU, or SURGERY_BF16_KERNEL=portable): bf16 numbers at f32 speed"
            }
        }
    }
}

fn cpu_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// C = A·B with both operands rounded to bf16 and f32 accumulation; C is row-major [m, n].
pub fn matmul(a: MatRef, b: MatRef, kernel: Bf16Kernel) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "inner dimensions of a bf16 product");
    match kernel {
        // The check keeps a caller that names the kernel on a CPU without it safe.
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 if cpu_has_avx512_bf16() => avx512::matmul(a, b),
        _ => portable_matmul(a, b),
    }
}

/// Round to the nearest bf16 (ties to even), as the hardware conversion does.
pub fn round_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

fn portable_matmul(a: MatRef, b: MatRef) -> Vec<f32> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let rounded = |x: MatRef| -> Vec<f32> {
        let mut out = vec![0f32; x.rows * x.cols];
        out.par_chunks_mut(x.cols.max(1))
            .enumerate()
            .for_each(|(i, row)| {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = bf16_to_f32(round_bf16(x.at(i, j)));
                }
            });
        out
    };
    let (ra, rb) = (rounded(a), rounded(b));
    product_f32(MatRef::row_major(&ra, m, k), MatRef::row_major(&rb, k, n))
}

/// The 32-bit pair (x[2p], x[2p+1]) of bf16 values, the even element in the low half.
fn pair(lo: f32, hi: f32) -> u32 {
    round_bf16(lo) as u32 | (round_bf16(hi) as u32) << 16
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use rayon::prelude::*;

    use super::{pair, MatRef};

    /// Rows and columns of the register tile: 8 rows × 3 vectors of 16 = 24 accumulators.
    const MR: usize = 8;
    const NR: usize = 48;

    /// A packed as bf16 pairs along the contraction axis, with the strides the tile reads it
    /// by: pair p of row i is `data[i·row + p·pair]`.
    struct PackedA {
        data: Vec<u32>,
        row: usize,
        pair: usize,
    }

    fn pack_a(a: MatRef) -> PackedA {
        let (m, k) = (a.rows, a.cols);
        let kp = k.div_ceil(2);
        let mut data = vec![0u32; m * kp];
        if a.col_stride == 1 {
            // Rows contiguous along the contraction axis (x, dy): [m][kp].
            data.par_chunks_mut(kp)
                .enumerate()
                .for_each(|(i, dst)| pairs_along(&a.data[i * a.row_stride..][..k], dst));
            PackedA {
                data,
                row: kp,
                pair: 1,
            }
        } else if a.row_stride == 1 {
            // A transposed view (dyᵀ): the contraction runs across stored rows: [kp][m].
            data.par_chunks_mut(m).enumerate().for_each(|(p, dst)| {
                let even = &a.data[2 * p * a.col_stride..][..m];
                let odd = (2 * p + 1 < k).then(|| &a.data[(2 * p + 1) * a.col_stride..][..m]);
                pairs_across(even, odd, dst)
            });
            PackedA {
                data,
                row: 1,
                pair: m,
            }
        } else {
            data.par_chunks_mut(kp).enumerate().for_each(|(i, dst)| {
                for (p, d) in dst.iter_mut().enumerate() {
                    let hi = if 2 * p + 1 < k {
                        a.at(i, 2 * p + 1)
                    } else {
                        0.0
                    };
                    *d = pair(a.at(i, 2 * p), hi);
                }
            });
            PackedA {
                data,
                row: kp,
                pair: 1,
            }
        }
    }

    /// One NR-column panel of B as [kp][NR] pairs (columns past the edge are zero); `column`
    /// is scratch of kp pairs.
    fn pack_b_panel(b: MatRef, first_col: usize, dst: &mut [u32], column: &mut [u32]) {
        let (k, kp) = (b.rows, b.rows.div_ceil(2));
        let cols = (b.cols - first_col).min(NR);
        dst.fill(0);
        if b.row_stride == 1 {
            // A weight read transposed (Wᵀ): each column is a contiguous stored row.
            for jj in 0..cols {
                pairs_along(&b.data[(first_col + jj) * b.col_stride..][..k], column);
                for (p, &v) in column.iter().enumerate() {
                    dst[p * NR + jj] = v;
                }
            }
        } else if b.col_stride == 1 {
            // Row-major B (W, x): pair p interleaves stored rows 2p and 2p + 1.
            for p in 0..kp {
                let even = &b.data[2 * p * b.row_stride + first_col..][..cols];
                let odd = (2 * p + 1 < k)
                    .then(|| &b.data[(2 * p + 1) * b.row_stride + first_col..][..cols]);
                pairs_across(even, odd, &mut dst[p * NR..][..cols]);
            }
        } else {
            for p in 0..kp {
                for jj in 0..cols {
                    let j = first_col + jj;
                    let hi = if 2 * p + 1 < k {
                        b.at(2 * p + 1, j)
                    } else {
                        0.0
                    };
                    dst[p * NR + jj] = pair(b.at(2 * p, j), hi);
                }
            }
        }
    }

    /// dst[p] = (src[2p], src[2p+1]) in bf16, the last pair padded with 0 for odd lengths.
    fn pairs_along(src: &[f32], dst: &mut [u32]) {
        // SAFETY: only reached on CPUs with AVX512F and AVX512-BF16 (`Bf16Kernel::detect`).
        unsafe { pairs_along_avx512(src, dst) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pairs_along_avx512(src: &[f32], dst: &mut [u32]) {
        let full = src.len() / 32;
        // SAFETY: each step reads 32 floats of `src` and writes 16 of the ⌈len/2⌉ pairs of `dst`.
        unsafe {
            for c in 0..full {
                let lo = _mm512_loadu_ps(src.as_ptr().add(32 * c));
                let hi = _mm512_loadu_ps(src.as_ptr().add(32 * c + 16));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(16 * c) as *mut __m512i, packed);
            }
        }
        for p in 16 * full..dst.len() {
            let hi = src.get(2 * p + 1).copied().unwrap_or(0.0);
            dst[p] = pair(src[2 * p], hi);
        }
    }

    /// dst[j] = (even[j], odd[j]) in bf16; a missing odd row is zero.
    fn pairs_across(even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
        // SAFETY: only reached on CPUs with AVX512F and AVX512-BF16 (`Bf16Kernel::detect`).
        unsafe { pairs_across_avx512(even, odd, dst) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pairs_across_avx512(even: &[f32], odd: Option<&[f32]>, dst: &mut [u32]) {
        let full = even.len() / 16;
        let zeros = [0f32; 16];
        // SAFETY: each step reads 16 floats of each row and writes 16 pairs.
        unsafe {
            for c in 0..full {
                let e = _mm512_loadu_ps(even.as_ptr().add(16 * c));
                let o = _mm512_loadu_ps(odd.map_or(zeros.as_ptr(), |o| o.as_ptr().add(16 * c)));
                let e: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(e));
                let o: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(o));
                let packed = _mm512_or_si512(
                    _mm512_cvtepu16_epi32(e),
                    _mm512_slli_epi32(_mm512_cvtepu16_epi32(o), 16),
                );
                _mm512_storeu_si512(dst.as_mut_ptr().add(16 * c) as *mut __m512i, packed);
            }
        }
        for j in 16 * full..even.len() {
            dst[j] = pair(even[j], odd.map_or(0.0, |o| o[j]));
        }
    }

    /// Raw output pointer shared by the tasks; each writes a disjoint block of columns.
    #[derive(Clone, Copy)]
    struct OutPtr(*mut f32);
    unsafe impl Send for OutPtr {}
    unsafe impl Sync for OutPtr {}

    impl OutPtr {
        /// The element `offset` places on (a method, so closures capture the whole wrapper).
        fn offset(self, offset: usize) -> *mut f32 {
            self.0.wrapping_add(offset)
        }
    }

    pub fn matmul(a: MatRef, b: MatRef) -> Vec<f32> {
        let (m, n) = (a.rows, b.cols);
        let kp = a.cols.div_ceil(2);
        if m == 0 || n == 0 || kp == 0 {
            return vec![0f32; m * n];
        }
        let packed_a = pack_a(a);
        // Not zero-filled: the tiles below write every element exactly once.
        let mut c: Vec<f32> = Vec::with_capacity(m * n);
        let out = OutPtr(c.as_mut_ptr());
        (0..n.div_ceil(NR)).into_par_iter().for_each_init(
            || (vec![0u32; kp * NR], vec![0u32; kp]),
            |(panel, column), j| {
                let first_col = j * NR;
                pack_b_panel(b, first_col, panel, column);
                let cols = (n - first_col).min(NR);
                for i0 in (0..m).step_by(MR) {
                    let rows = (m - i0).min(MR);
                    // Rows past the edge reread the first row of the block; they are not stored.
                    let a_rows: [*const u32; MR] = std::array::from_fn(|r| {
                        let i = i0 + if r < rows { r } else { 0 };
                        packed_a.data[i * packed_a.row..].as_ptr()
                    });
                    // SAFETY: `matmul` is only reached when the CPU has AVX512F and
                    // AVX512-BF16 (`Bf16Kernel::detect`); every row has kp pairs, the
                    // panel kp·NR, and the tile writes rows i0..i0+rows, columns
                    // first_col..first_col+cols of the m × n output, which no other task writes.
                    unsafe {
                        tile(
                            kp,
                            &a_rows,
                            packed_a.pair,
                            panel.as_ptr(),
                            out.offset(i0 * n + first_col),
                            n,
                            rows,
                            cols,
                        )
                    };
                }
            },
        );
        // SAFETY: the panels cover columns 0..n and the row blocks rows 0..m, and each tile
        // stored all of its rows × cols, so all m·n elements are initialised.
        unsafe { c.set_len(m * n) };
        c
    }

    /// The 8 × 48 register tile: C[r][0..cols] = Σ_p A[r][p] · B[p][0..cols] over bf16 pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kp: usize,
        a: &[*const u32; MR],
        a_pair: usize,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        for p in 0..kp {
            let bp = b.add(p * NR) as *const __m512i;
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(1)));
            let b2: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(2)));
            for r in 0..MR {
                let ar: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*a[r].add(p * a_pair) as i32));
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
                acc[r][2] = _mm512_dpbf16_ps(acc[r][2], ar, b2);
            }
        }
        for (r, row) in acc.iter().enumerate().take(rows) {
            let dst = c.add(r * ldc);
            for (v, &vec) in row.iter().enumerate() {
                let start = v * 16;
                if start >= cols {
                    break;
                }
                let lanes = (cols - start).min(16);
                let mask: __mmask16 = if lanes == 16 {
                    0xffff
                } else {
                    (1u16 << lanes) - 1
                };
                _mm512_mask_storeu_ps(dst.add(start), mask, vec);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::util::rng::Rng::new(seed);
        (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// f64 reference of the product of the bf16-rounded operands.
    fn reference(a: MatRef, b: MatRef) -> Vec<f32> {
        let mut c = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0f64;
                for k in 0..a.cols {
                    s += bf16_to_f32(round_bf16(a.at(i, k))) as f64
                        * bf16_to_f32(round_bf16(b.at(k, j))) as f64;
                }
                c[i * b.cols + j] = s as f32;
            }
        }
        c
    }

    /// Every operand layout a linear's three products use: x·Wᵀ, dy·W and dyᵀ·x.
    fn check(m: usize, k: usize, n: usize, kernel: Bf16Kernel) {
        let (da, db) = (random(m * k, 1), random(k * n, 2));
        let a = MatRef::row_major(&da, m, k);
        let a_t = MatRef::row_major(&da, k, m).t();
        let b = MatRef::row_major(&db, k, n);
        let b_t = MatRef::row_major(&db, n, k).t();
        for (form, a, b) in [("x·Wᵀ", a, b_t), ("dy·W", a, b), ("dyᵀ·x", a_t, b)] {
            let got = matmul(a, b, kernel);
            let want = reference(a, b);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-5 * (k as f32).sqrt(),
                "{kernel:?} {form} {m}×{k}×{n}: largest difference {worst}"
            );
        }
    }

    #[test]
    fn both_kernels_match_the_rounded_reference_on_edge_shapes() {
        let shapes = [
            (1, 1, 1),
            (7, 5, 3),
            (9, 33, 49),
            (17, 64, 100),
            (40, 384, 96),
            (3, 70, 17),
        ];
        for &(m, k, n) in &shapes {
            check(m, k, n, Bf16Kernel::Portable);
            if cpu_has_avx512_bf16() {
                check(m, k, n, Bf16Kernel::Avx512Bf16);
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ lies halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), round_bf16(1.0));
        assert_eq!(
            bf16_to_f32(round_bf16(1.0 + 3.0 / 256.0)),
            1.0 + 4.0 / 256.0
        );
    }
}
