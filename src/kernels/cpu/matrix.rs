//! Strided f32 matrix views and the f32 product on them (the `gemm` crate, as candle's own
//! matmul calls it), shared by the linear op and the bf16 kernels' portable path.

/// A read-only strided view of an f32 matrix: element (i, j) is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(
            data.len() >= rows * cols,
            "a {rows}×{cols} view of {} values",
            data.len()
        );
        MatRef {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    pub(crate) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// C = A·B in f32, C row-major [m, n]. Same call (threads, strides, no read of C) as candle's
/// CPU matmul, so a linear moved onto this path keeps its numbers.
pub fn product_f32(a: MatRef, b: MatRef) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "inner dimensions of a product");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return c;
    }
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `row_major` checked that each buffer holds its rows × cols; a transpose reads the
    // same elements; C holds m × n.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    c
}

/// The matrix as a row-major copy (a transpose when `m` is one), in 32 × 32 tiles so that
/// both the reads and the writes stay within a few cache lines.
pub fn to_row_major(m: MatRef) -> Vec<f32> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    let (rows, cols) = (m.rows, m.cols);
    let mut out = vec![0f32; rows * cols];
    if cols == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * cols)
        .enumerate()
        .for_each(|(block, dst)| {
            let first = block * TILE;
            let n = dst.len() / cols;
            for j0 in (0..cols).step_by(TILE) {
                for i in 0..n {
                    for j in j0..(j0 + TILE).min(cols) {
                        dst[i * cols + j] = m.at(first + i, j);
                    }
                }
            }
        });
    out
}
