//! Benchmark: GFLOP/s of the matrix products of a MiniLM-L6-H384 training step (batch 32 × 20
//! real tokens = 640 rows) as the model runs them (candle's matmul on `x · Wᵀ`), and of the
//! fused attention op against the per-head composite path. Run: `cargo bench --bench matmul`.

use std::time::Instant;

use candle_core::{Device, Tensor};
use surgery::kernels::cpu::attention::self_attention;

/// Median seconds of `f` over `runs` runs after one warm-up.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[runs / 2]
}

/// The per-head composite path the model takes when gates or probabilities are needed.
fn composite_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
    let (b, l, a) = q.dims3().unwrap();
    let split = |t: &Tensor| {
        t.reshape((b, l, heads, a / heads))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (split(q), split(k), split(v));
    let s = q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap();
    let p = surgery::kernels::cpu::ops::softmax_last_dim(&s).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
}

/// The three products of a linear's step (forward x·Wᵀ, input gradient dy·W, weight gradient
/// dyᵀ·x) in bf16 with f32 accumulation, on the kernel this CPU gets, beside f32.
fn bf16_products(rows: usize) {
    use surgery::kernels::cpu::bf16_gemm::{matmul, Bf16Kernel};
    use surgery::kernels::cpu::matrix::MatRef;
    let kernel = Bf16Kernel::detect();
    println!("linears in bf16 ({}):", kernel.describe());
    for (name, out, inp) in [
        ("query/key/value/attention-output", 384, 384),
        ("intermediate", 1536, 384),
        ("output", 384, 1536),
    ] {
        let x = random(&[rows, inp])
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let w = random(&[out, inp])
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dy = random(&[rows, out])
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (x, w, dy) = (
            MatRef::row_major(&x, rows, inp),
            MatRef::row_major(&w, out, inp),
            MatRef::row_major(&dy, rows, out),
        );
        for (form, a, b) in [("x·Wᵀ", x, w.t()), ("dy·W", dy, w), ("dyᵀ·x", dy.t(), x)] {
            let s = time(21, || {
                matmul(a, b, kernel);
            });
            let gflops = 2.0 * (rows * inp * out) as f64 / s / 1e9;
            println!(
                "  {name:<34} {out:>5}×{inp:<5} {form:<6} {:>8.3} ms  {gflops:>6.1} GFLOP/s",
                s * 1e3
            );
        }
    }
}

fn random(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn main() {
    let rows = 640;
    println!("linears in f32 (candle matmul, {rows} rows):");
    for (name, out, inp) in [
        ("query/key/value/attention-output", 384, 384),
        ("intermediate", 1536, 384),
        ("output", 384, 1536),
        ("classifier", 9, 384),
    ] {
        let x = random(&[rows, inp]);
        let w = random(&[out, inp]);
        let dy = random(&[rows, out]);
        // The three products as the autograd of `x.matmul(w.t())` forms them.
        // The linear op multiplies by a row-major copy of Wᵀ when in ≥ 2·out.
        let wt = w.t().unwrap().contiguous().unwrap();
        let forms = [
            ("x·Wᵀ", x.clone(), w.t().unwrap()),
            ("x·(Wᵀ)", x.clone(), wt),
            ("dy·W", dy.clone(), w.clone()),
            ("dyᵀ·x", dy.t().unwrap(), x.clone()),
        ];
        for (form, a, b) in forms {
            let s = time(21, || {
                a.matmul(&b).unwrap();
            });
            let gflops = 2.0 * (rows * inp * out) as f64 / s / 1e9;
            println!(
                "  {name:<34} {out:>5}×{inp:<5} {form:<6} {:>8.3} ms  {gflops:>6.1} GFLOP/s",
                s * 1e3
            );
        }
    }
    bf16_products(rows);
    let (b, l, heads, d) = (32, 20, 12, 32);
    let (q, k, v) = (
        random(&[b, l, heads * d]),
        random(&[b, l, heads * d]),
        random(&[b, l, heads * d]),
    );
    let mask = vec![1f32; b * l];
    let flops = 4.0 * (b * heads * l * l * d) as f64;
    let fused = time(21, || {
        self_attention(&q, &k, &v, heads, &mask, None).unwrap();
    });
    let composite = time(21, || {
        composite_attention(&q, &k, &v, heads);
    });
    // Forward and backward, as in training.
    let vars: Vec<candle_core::Var> = [&q, &k, &v]
        .iter()
        .map(|t| candle_core::Var::from_tensor(t).unwrap())
        .collect();
    let fused_train = time(11, || {
        let out = self_attention(
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
            heads,
            &mask,
            None,
        )
        .unwrap();
        out.sum_all().unwrap().backward().unwrap();
    });
    let composite_train = time(11, || {
        let (q, k, v) = (
            vars[0].as_tensor(),
            vars[1].as_tensor(),
            vars[2].as_tensor(),
        );
        let out = composite_attention(q, k, v, heads);
        out.sum_all().unwrap().backward().unwrap();
    });
    println!("attention, {b} sentences × {l} tokens × {heads} heads of {d}:");
    println!(
        "  forward + backward: fused {:.3} ms, per-head composite {:.3} ms",
        fused_train * 1e3,
        composite_train * 1e3
    );
    println!(
        "  fused op            {:>8.3} ms  {:>6.1} GFLOP/s",
        fused * 1e3,
        flops / fused / 1e9
    );
    println!(
        "  per-head composite  {:>8.3} ms  {:>6.1} GFLOP/s",
        composite * 1e3,
        flops / composite / 1e9
    );
}
