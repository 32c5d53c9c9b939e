//! `surgery compress`: the library's search with its progress and result printed.

use std::process::ExitCode;

use surgery::budget::group;
use surgery::pipeline::compress::{compress, CompressArgs, CompressResult};

pub fn run(args: CompressArgs) -> anyhow::Result<ExitCode> {
    match compress(&args, &mut |line| println!("{line}"))? {
        CompressResult::Planned {
            teacher_params,
            teacher_flops,
            candidates,
            refused,
        } => {
            println!(
                "teacher: {} unique parameters, {} encoder FLOPs per token",
                group(teacher_params),
                group(teacher_flops)
            );
            println!(
                "{:<32} {:>13} {:>11}  chain",
                "candidate", "unique params", "FLOPs share"
            );
            for c in &candidates {
                let chain = c
                    .cuts
                    .iter()
                    .map(|cut| {
                        let options: Vec<String> = cut
                            .options
                            .iter()
                            .filter(|(k, _)| !k.starts_with("calib"))
                            .map(|(k, v)| match v.is_empty() {
                                true => format!("--{k}"),
                                false => format!("--{k} {v}"),
                            })
                            .collect();
                        format!("{} {}", cut.kind, options.join(" "))
                    })
                    .collect::<Vec<_>>()
                    .join(" → ");
                let params = c.params.map(group).unwrap_or_else(|| "≤ target".into());
                let flops = c
                    .flops
                    .map(|f| format!("{:.4}", f as f64 / teacher_flops as f64))
                    .unwrap_or_else(|| "≤ target".into());
                println!("{:<32} {params:>13} {flops:>11}  {chain}", c.name);
                if c.params.is_none() {
                    println!("{:<32} {}", "", c.planned);
                }
            }
            for (name, why) in &refused {
                println!("refused: {name}: {why}");
            }
            Ok(ExitCode::SUCCESS)
        }
        CompressResult::TeacherMeetsTarget(why) => {
            println!("{why}");
            Ok(ExitCode::SUCCESS)
        }
        CompressResult::Finished(record) => {
            if let Some(w) = &record.winner {
                println!(
                    "\nwinner {}: {} unique parameters, {:.1}% of the FLOPs, dev F1 {:.4}{}{}",
                    w.candidate,
                    group(w.params),
                    100.0 * w.flops as f64 / record.teacher_flops as f64,
                    w.dev_f1,
                    w.test_f1
                        .map(|t| format!(", test F1 {t:.4}"))
                        .unwrap_or_default(),
                    w.measured_speedup
                        .map(|s| format!(", {s:.2}× the teacher's tokens/s"))
                        .unwrap_or_default()
                );
                if let (Some(goal), Some(measured)) = (args.speedup, w.measured_speedup) {
                    if measured < goal {
                        println!(
                            "the speed target is missed: measured {measured:.2}× < --speedup {goal} \
                             (the latency table predicted it; see compress.json)"
                        );
                    }
                }
                println!("model: {}", w.model.display());
                println!("recipe: {}", w.recipe.display());
                println!("record: {}", args.out.join("compress.json").display());
                println!("report: {}", args.out.join("report/compress.md").display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
