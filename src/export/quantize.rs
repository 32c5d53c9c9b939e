//! Symmetric int8 quantization of a weight matrix per output channel (per column of the [in, out]
//! MatMul operand): scale = max|w| / 127, zero point 0, as ONNX Runtime's dynamic quantizer
//! writes it for `MatMulInteger`.

/// An [in, out] matrix of int8 values and one scale per column.
pub struct QuantizedMatrix {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Quantizes a row-major [rows, cols] matrix column by column. An all-zero column gets scale 1.
pub fn per_column_int8(values: &[f32], rows: usize, cols: usize) -> QuantizedMatrix {
    assert_eq!(values.len(), rows * cols, "matrix size");
    if cols == 0 || rows == 0 {
        // A linear left with no neurons (pruned FFN): nothing to quantize, one scale per column.
        return QuantizedMatrix {
            values: vec![],
            scales: vec![1.0; cols],
        };
    }
    let mut scales = vec![0f32; cols];
    for row in values.chunks_exact(cols) {
        for (s, &v) in scales.iter_mut().zip(row) {
            *s = s.max(v.abs());
        }
    }
    for s in &mut scales {
        *s = if *s > 0.0 { *s / 127.0 } else { 1.0 };
    }
    let values = values
        .chunks_exact(cols)
        .flat_map(|row| {
            row.iter()
                .zip(&scales)
                .map(|(&v, &s)| (v / s).round().clamp(-127.0, 127.0) as i8)
        })
        .collect();
    QuantizedMatrix { values, scales }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_without_rows_or_columns_quantizes_to_nothing() {
        let q = per_column_int8(&[], 0, 4);
        assert!(q.values.is_empty());
        assert_eq!(q.scales, vec![1.0; 4]);
        assert!(per_column_int8(&[], 8, 0).values.is_empty());
    }

    #[test]
    fn columns_are_scaled_by_their_own_maximum() {
        // 2 × 3: column maxima 2, 0.5, 0.
        let q = per_column_int8(&[2.0, -0.25, 0.0, -1.0, 0.5, 0.0], 2, 3);
        assert_eq!(q.scales, vec![2.0 / 127.0, 0.5 / 127.0, 1.0]);
        assert_eq!(q.values, vec![127, -64, 0, -64, 127, 0]);
        // Dequantized values are within half a step of the originals.
        for (i, &v) in [2.0f32, -0.25, 0.0, -1.0, 0.5, 0.0].iter().enumerate() {
            let back = q.values[i] as f32 * q.scales[i % 3];
            assert!(
                (back - v).abs() <= q.scales[i % 3] / 2.0 + 1e-7,
                "{i}: {back} vs {v}"
            );
        }
    }
}
