//! Fused self-attention, forward and backward, for every head of a layer at once:
//! softmax(Q·Kᵀ·scale + mask) (⊙ dropout mask) · V, read from and written to the [B, L, heads·d]
//! layout the linears produce. The composite path (per-head batched matmuls, transposes,
//! contiguous copies and a separate softmax) spends most of its time in small-matrix overhead;
//! this runs one task per sentence and recomputes the probabilities in the backward pass.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::ops::{cpu_f32, with_f32};
use super::simd::{self, axpy, dot};

/// The op's constants: the key mask and the dropout multipliers are not differentiated.
struct AttentionOp {
    heads: usize,
    head_dim: usize,
    batch: usize,
    len: usize,
    /// [B, L]: 0 for real keys, a large negative number for padding.
    key_bias: Vec<f32>,
    /// [B, heads, L, L] dropout multipliers of the probabilities (0 or 1/(1−p)); None in eval.
    dropout: Option<Vec<f32>>,
}

impl AttentionOp {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The probabilities of head `h` of sentence `b` into `p` ([L, L], row = query), with
    /// `kt` ([d, padded(L)], zero past L) as scratch. Each score row is Σₜ qᵢₜ·Kᵀₜ over a
    /// transposed copy of the head's keys, sixteen keys per register, instead of one short dot
    /// product (and its horizontal sum) per query–key pair.
    #[inline(always)]
    fn probabilities(
        &self,
        q: &[f32],
        k: &[f32],
        b: usize,
        h: usize,
        kt: &mut [f32],
        p: &mut [f32],
    ) {
        let (l, d, a) = (self.len, self.head_dim, self.width());
        let scale = 1.0 / (d as f32).sqrt();
        let bias = &self.key_bias[b * l..(b + 1) * l];
        head_transposed(k, b, h, l, d, a, kt);
        for i in 0..l {
            let qi = &q[(b * l + i) * a + h * d..][..d];
            let row = &mut p[i * l..(i + 1) * l];
            times_transposed(qi, scale, kt, row);
            for (s, &m) in row.iter_mut().zip(bias) {
                *s += m;
            }
            let max = simd::max(row);
            row.iter_mut().for_each(|s| *s = simd::exp(*s - max));
            let inv = 1.0 / simd::sum(row);
            row.iter_mut().for_each(|s| *s *= inv);
        }
    }

    /// The dropout multipliers of head `h` of sentence `b`, if any.
    fn dropout_of(&self, b: usize, h: usize) -> Option<&[f32]> {
        let n = self.len * self.len;
        self.dropout
            .as_ref()
            .map(|m| &m[(b * self.heads + h) * n..][..n])
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (cpu_f32(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        let (l, a) = (self.len, self.width());
        let mut out = vec![0f32; self.batch * l * a];
        out.par_chunks_mut(l * a)
            .enumerate()
            .for_each(|(b, dst)| sentence_context(self, q, k, v, b, dst));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Read the gradient, q, k and v in place (no copies): this runs for every layer of
        // every step.
        let [dq, dk, dv] = with_f32(grad, |dc| {
            with_f32(q, |q| {
                with_f32(k, |k| with_f32(v, |v| self.gradients(q, k, v, dc)))
            })
        })????;
        let (shape, device) = (q.shape(), q.device());
        Ok((
            Some(Tensor::from_vec(dq, shape, device)?),
            Some(Tensor::from_vec(dk, shape, device)?),
            Some(Tensor::from_vec(dv, shape, device)?),
        ))
    }
}

impl AttentionOp {
    /// dQ, dK and dV from the context gradient `dc`, recomputing the probabilities per head.
    fn gradients(&self, q: &[f32], k: &[f32], v: &[f32], dc: &[f32]) -> [Vec<f32>; 3] {
        let (l, a) = (self.len, self.width());
        let n = self.batch * l * a;
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        dq.par_chunks_mut(l * a)
            .zip(dk.par_chunks_mut(l * a))
            .zip(dv.par_chunks_mut(l * a))
            .enumerate()
            .for_each(|(b, ((dq, dk), dv))| sentence_gradients(self, q, k, v, dc, b, dq, dk, dv));
        [dq, dk, dv]
    }
}

simd::twin! {
    /// The context of every head of sentence `b` into `dst` ([L, heads·d]).
    fn sentence_context(
        op: &AttentionOp,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        b: usize,
        dst: &mut [f32],
    ) {
        let (l, d, a) = (op.len, op.head_dim, op.width());
        let (mut p, mut kt) = (vec![0f32; l * l], vec![0f32; d * padded(l)]);
        for h in 0..op.heads {
            op.probabilities(q, k, b, h, &mut kt, &mut p);
            if let Some(m) = op.dropout_of(b, h) {
                p.iter_mut().zip(m).for_each(|(x, m)| *x *= m);
            }
            let values = Rows { data: v, first: b * l * a + h * d, stride: a };
            for i in 0..l {
                // C_i = Σ_j P_ij · V_j
                let weights = Weights { data: &p, first: i * l, stride: 1 };
                weighted_sum(d, weights, values, l, &mut dst[i_range(i, h, d, a)]);
            }
        }
    }
}

simd::twin! {
    /// dQ, dK and dV of sentence `b` (its rows of each) from the context gradient `dc`.
    fn sentence_gradients(
        op: &AttentionOp,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dc: &[f32],
        b: usize,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let (l, d, a) = (op.len, op.head_dim, op.width());
        let scale = 1.0 / (d as f32).sqrt();
        let (mut p, mut kept, mut ds) = (vec![0f32; l * l], vec![0f32; l * l], vec![0f32; l * l]);
        let (mut kt, mut vt) = (vec![0f32; d * padded(l)], vec![0f32; d * padded(l)]);
        let first = b * l * a;
        for h in 0..op.heads {
            let rows = |x| Rows { data: x, first: first + h * d, stride: a };
            op.probabilities(q, k, b, h, &mut kt, &mut p);
            head_transposed(v, b, h, l, d, a, &mut vt);
            let m = op.dropout_of(b, h);
            match m {
                Some(m) => kept.iter_mut().zip(&p).zip(m).for_each(|((x, p), m)| *x = p * m),
                None => kept.copy_from_slice(&p),
            }
            for i in 0..l {
                let dci = &dc[first + i * a + h * d..][..d];
                // d(P⊙M)_i = Σₜ dC_it · Vᵀₜ (axpys along the keys, as in `probabilities`).
                let dsi = &mut ds[i * l..(i + 1) * l];
                times_transposed(dci, 1.0, &vt, dsi);
                if let Some(m) = m {
                    dsi.iter_mut().zip(&m[i * l..]).for_each(|(g, m)| *g *= m);
                }
                // Softmax backward: dS = P ⊙ (dP − Σ_j dP·P).
                let pi = &p[i * l..(i + 1) * l];
                let total = dot(pi, dsi);
                for (g, &pij) in dsi.iter_mut().zip(pi) {
                    *g = pij * (*g - total) * scale;
                }
            }
            for i in 0..l {
                let out = i_range(i, h, d, a);
                // dQ_i = Σ_j dS_ij · K_j
                let row = Weights { data: &ds, first: i * l, stride: 1 };
                weighted_sum(d, row, rows(k), l, &mut dq[out.clone()]);
                // dK_i = Σ_j dS_ji · Q_j and dV_i = Σ_j (P⊙M)_ji · dC_j (column i)
                let column = |data| Weights { data, first: i, stride: l };
                weighted_sum(d, column(&ds), rows(q), l, &mut dk[out.clone()]);
                weighted_sum(d, column(&kept), rows(dc), l, &mut dv[out]);
            }
        }
    }
}

/// Weights wⱼ = data[first + j·stride].
#[derive(Clone, Copy)]
struct Weights<'a> {
    data: &'a [f32],
    first: usize,
    stride: usize,
}

/// Vectors xⱼ = data[first + j·stride ..][..d] (one head of each token).
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [f32],
    first: usize,
    stride: usize,
}

/// dst += Σ_{j<n} wⱼ·xⱼ for vectors of d values. The head sizes of BERT models (32, 64) get a
/// fixed-size accumulator the compiler keeps in registers across the whole sum.
#[inline(always)]
fn weighted_sum(d: usize, w: Weights, x: Rows, n: usize, dst: &mut [f32]) {
    match d {
        32 => fixed_weighted_sum::<32>(w, x, n, dst),
        64 => fixed_weighted_sum::<64>(w, x, n, dst),
        _ => {
            for j in 0..n {
                axpy(
                    w.data[w.first + j * w.stride],
                    &x.data[x.first + j * x.stride..][..d],
                    dst,
                );
            }
        }
    }
}

#[inline(always)]
fn fixed_weighted_sum<const D: usize>(w: Weights, x: Rows, n: usize, dst: &mut [f32]) {
    let mut acc = [0f32; D];
    for j in 0..n {
        let wj = w.data[w.first + j * w.stride];
        let xj = &x.data[x.first + j * x.stride..][..D];
        for t in 0..D {
            acc[t] += wj * xj[t];
        }
    }
    for (o, s) in dst[..D].iter_mut().zip(acc) {
        *o += s;
    }
}

/// L rounded up to whole registers of sixteen keys.
fn padded(l: usize) -> usize {
    l.next_multiple_of(16)
}

/// Head `h` of sentence `b` of x ([B, L, heads·d]) transposed into `dst` ([d, padded(L)]; the
/// columns past L are left as they are: zero).
#[inline(always)]
fn head_transposed(x: &[f32], b: usize, h: usize, l: usize, d: usize, a: usize, dst: &mut [f32]) {
    let lp = padded(l);
    for j in 0..l {
        let xj = &x[(b * l + j) * a + h * d..][..d];
        for (t, &v) in xj.iter().enumerate() {
            dst[t * lp + j] = v;
        }
    }
}

/// out[j] = scale · Σₜ coef[t] · mt[t, j] for the out.len() first columns of mt ([d, padded],
/// zero past out.len()): sixteen columns at a time, each block summed in one register. The
/// compiler splits the portable loop's sixteen lanes into odd pieces, so the AVX-512 path is
/// written with intrinsics.
#[inline(always)]
fn times_transposed(coef: &[f32], scale: f32, mt: &[f32], out: &mut [f32]) {
    let lp = padded(out.len());
    assert!(
        mt.len() >= coef.len() * lp,
        "a transposed head of {} values",
        mt.len()
    );
    #[cfg(target_arch = "x86_64")]
    if simd::wide() {
        // SAFETY: `wide()` checked AVX-512F; the assert above bounds every block read.
        unsafe { times_transposed_avx512(coef, scale, mt, out) };
        return;
    }
    for j0 in (0..lp).step_by(16) {
        let mut acc = [0f32; 16];
        for (t, &c) in coef.iter().enumerate() {
            let c = c * scale;
            let block = &mt[t * lp + j0..][..16];
            for u in 0..16 {
                acc[u] += c * block[u];
            }
        }
        let n = (out.len() - j0).min(16);
        out[j0..j0 + n].copy_from_slice(&acc[..n]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn times_transposed_avx512(coef: &[f32], scale: f32, mt: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let lp = padded(out.len());
    for j0 in (0..lp).step_by(16) {
        let mut acc = _mm512_setzero_ps();
        for (t, &c) in coef.iter().enumerate() {
            let block = _mm512_loadu_ps(mt.as_ptr().add(t * lp + j0));
            acc = _mm512_fmadd_ps(_mm512_set1_ps(c * scale), block, acc);
        }
        let mut sums = [0f32; 16];
        _mm512_storeu_ps(sums.as_mut_ptr(), acc);
        let n = (out.len() - j0).min(16);
        out[j0..j0 + n].copy_from_slice(&sums[..n]);
    }
}

/// The columns of head `h` in row `i` of one sentence's [L, heads·d] block.
#[inline(always)]
fn i_range(i: usize, h: usize, d: usize, a: usize) -> std::ops::Range<usize> {
    i * a + h * d..i * a + (h + 1) * d
}

/// Self-attention of all heads: q, k, v are [B, L, heads·d]; `key_mask` is [B, L] (1 for real
/// tokens); `dropout` holds [B, heads, L, L] multipliers in training. Returns the context
/// [B, L, heads·d], with gradients for q, k and v.
pub fn self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    key_mask: &[f32],
    dropout: Option<Vec<f32>>,
) -> candle_core::Result<Tensor> {
    let (batch, len, width) = q.dims3()?;
    if heads == 0 || width % heads != 0 || key_mask.len() != batch * len {
        candle_core::bail!(
            "fused attention: {heads} heads for width {width}, mask of {}",
            key_mask.len()
        );
    }
    if dropout
        .as_ref()
        .is_some_and(|m| m.len() != batch * heads * len * len)
    {
        candle_core::bail!("fused attention: dropout mask of the wrong size");
    }
    let op = AttentionOp {
        heads,
        head_dim: width / heads,
        batch,
        len,
        key_bias: key_mask.iter().map(|m| (m - 1.0) * 1e9).collect(),
        dropout,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::kernels::cpu::ops::tests::{grads, max_diff};
    use crate::util::rng::Rng;

    fn random(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let n = shape.0 * shape.1 * shape.2;
        Tensor::from_vec(
            (0..n).map(|_| rng.normal()).collect::<Vec<f32>>(),
            shape,
            &Device::Cpu,
        )
        .unwrap()
    }

    /// The composite candle computation the model used before (it has gradients everywhere).
    fn composite(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        mask: &[f32],
        drop: Option<&[f32]>,
    ) -> Tensor {
        let (b, l, a) = q.dims3().unwrap();
        let d = a / heads;
        let split = |t: &Tensor| {
            t.reshape((b, l, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (q, k, v) = (split(q), split(k), split(v));
        let bias: Vec<f32> = mask.iter().map(|m| (m - 1.0) * 1e9).collect();
        let bias = Tensor::from_vec(bias, (b, 1, 1, l), &Device::Cpu).unwrap();
        let scores = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap()
            * (1.0 / (d as f64).sqrt()))
        .unwrap()
        .broadcast_add(&bias)
        .unwrap();
        let mut p = crate::kernels::cpu::ops::softmax_last_dim(&scores).unwrap();
        if let Some(m) = drop {
            p = (p * Tensor::from_vec(m.to_vec(), (b, heads, l, l), &Device::Cpu).unwrap())
                .unwrap();
        }
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((b, l, a))
            .unwrap()
    }

    #[test]
    fn matches_the_composite_path_forward_and_backward_with_padding_and_dropout() {
        // Head sizes 32 and 64 take the fixed-size accumulators, 4 the general loop; 7 keys
        // fill part of one register block, 21 spill into a second.
        for (d, l) in [(4, 7), (32, 7), (64, 7), (32, 21), (4, 21)] {
            matches_the_composite_path(d, l);
        }
    }

    fn matches_the_composite_path(d: usize, l: usize) {
        let (b, heads) = (3, 2);
        let mut mask = vec![1f32; b * l];
        mask[l - 2..l].iter_mut().for_each(|m| *m = 0.0); // sentence 0 has two pads
        mask[2 * l - 1] = 0.0;
        let mut rng = Rng::new(9);
        let drop: Vec<f32> = (0..b * heads * l * l)
            .map(|_| if rng.uniform() < 0.2 { 0.0 } else { 1.25 })
            .collect();
        for dropout in [None, Some(drop)] {
            let vars: Vec<Var> = (0..3)
                .map(|s| Var::from_tensor(&random((b, l, heads * d), s)).unwrap())
                .collect();
            let probe = random((b, l, heads * d), 7);
            let fused = self_attention(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
                heads,
                &mask,
                dropout.clone(),
            )
            .unwrap();
            let reference = composite(
                vars[0].as_tensor(),
                vars[1].as_tensor(),
                vars[2].as_tensor(),
                heads,
                &mask,
                dropout.as_deref(),
            );
            assert!(
                max_diff(&fused, &reference) < 1e-5,
                "forward (d = {d}, l = {l}) {}",
                max_diff(&fused, &reference)
            );
            let g1 = grads(fused, &probe);
            let g2 = grads(reference, &probe);
            for v in &vars {
                let (a, b) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert!(
                    max_diff(a, b) < 1e-4,
                    "gradient (d = {d}, l = {l}) {}",
                    max_diff(a, b)
                );
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (b, l, heads, d) = (2, 5, 2, 3);
        let mask = vec![1f32; b * l];
        let inputs: Vec<Tensor> = (0..3).map(|s| random((b, l, heads * d), 20 + s)).collect();
        let probe = random((b, l, heads * d), 30);
        let loss = |q: &Tensor, k: &Tensor, v: &Tensor| -> f64 {
            let out = self_attention(q, k, v, heads, &mask, None).unwrap();
            (out * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let out = self_attention(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            heads,
            &mask,
            None,
        )
        .unwrap();
        let gradients = grads(out, &probe);
        let eps = 1e-2f32;
        for which in 0..3 {
            let analytic = gradients
                .get(vars[which].as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let base = inputs[which]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for idx in [0, 7, 13, 29] {
                let nudged = |delta: f32| {
                    let mut x = base.clone();
                    x[idx] += delta;
                    let t = Tensor::from_vec(x, (b, l, heads * d), &Device::Cpu).unwrap();
                    let mut args = inputs.clone();
                    args[which] = t;
                    loss(&args[0], &args[1], &args[2])
                };
                let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic[idx] as f64).abs() < 2e-2 * numeric.abs().max(1.0),
                    "input {which}[{idx}]: {numeric} vs {}",
                    analytic[idx]
                );
            }
        }
    }
}
