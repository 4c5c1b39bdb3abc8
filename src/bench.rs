//! `cnnc bench`: how fast a model compiles and runs. Source to runnable is timed per phase; then
//! warm-up steps and timed steps on one preloaded synthetic batch (no loader, no evaluation), of
//! training (forward, backward, update) or inference. Prints the median and spread, the peak
//! memory of the process, and the CPU with its vector ISA flags, since machines differ.

use cnnc_compiler::elaborate::ModelInfo;
use cnnc_compiler::train::TrainSpec;
use cnnc_compiler::Compilation;
use cnnc_runtime::backend::Backend;
use cnnc_runtime::bench::{Workload, WorkloadKind};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::run::{fail, Failure, EXIT_INPUT};
use crate::EXIT_USAGE;

/// What `cnnc bench` was asked to do.
pub struct Args {
    pub file: PathBuf,
    pub model: Option<String>,
    pub train: bool,
    pub batch: Option<usize>,
    pub threads: Option<usize>,
    pub steps: usize,
    pub warmup: usize,
    pub profile: bool,
    pub backends: Vec<Backend>,
    /// Kernel-program passes left out.
    pub disabled: Vec<String>,
}

/// Runs the benchmark; `compiled` is how long parsing and checking took.
pub fn run(c: &Compilation, args: &Args, compiled: Duration) -> Result<(), Failure> {
    let known = |n: &String| {
        let lir = cnnc_compiler::lir::passes::PASSES.iter().chain(cnnc_compiler::lir::passes::OPT_IN);
        lir.map(|(p, _)| p).any(|p| p == n)
    };
    if let Some(name) = args.disabled.iter().find(|n| !known(n)) {
        let names: Vec<&str> = cnnc_compiler::lir::passes::PASSES.iter().map(|(p, _)| *p).collect();
        return Err(fail(
            EXIT_USAGE,
            format!("--disable-pass {name}: cnnc bench leaves out the kernel-program passes: {}", names.join(", ")),
        ));
    }
    if let Some(t) = args.threads {
        cnnc_runtime::bench::set_threads(t).map_err(|e| fail(EXIT_INPUT, e))?;
    }
    let model = pick(c, args.model.as_deref())?;
    let spec: Option<&TrainSpec> = c.trains.iter().find(|t| t.model == model.name);
    if args.train && spec.is_none() {
        return Err(fail(
            EXIT_INPUT,
            format!("model `{}` has no train section: `--train` needs its loss and optimizer", model.name),
        ));
    }
    let batch = args.batch.or(spec.map(|s| s.batch)).unwrap_or(1).max(1);
    let kind = if args.train { WorkloadKind::Train } else { WorkloadKind::Infer };
    let cpu = cnnc_runtime::bench::cpu();
    println!("cnnc bench {} ({}), {} b{batch}", model.name, args.file.display(), kind);
    println!("cpu: {} ({} threads; {})", cpu.model, cnnc_runtime::bench::threads(), cpu.flags);
    let mut medians = Vec::new();
    for (i, &backend) in args.backends.iter().enumerate() {
        let mut w =
            Workload::new(model, spec, kind, batch, backend, &args.disabled).map_err(|e| fail(EXIT_INPUT, e))?;
        if i == 0 || backend != Backend::Reference {
            println!("source to runnable on {backend}:");
            println!("  {:<24}{:>10.2} ms", "parse + check", ms(compiled));
            for (phase, d) in w.phases() {
                println!("  {:<24}{:>10.2} ms", phase, ms(*d));
            }
            let rest = w.phases().iter().filter(|(p, _)| *p != "parameters").map(|(_, d)| *d);
            println!("  {:<24}{:>10.2} ms", "total (parameters aside)", ms(compiled + rest.sum::<Duration>()));
        }
        let (median, times) = time_steps(&mut w, args)?;
        let per_image = batch as f64 / median.as_secs_f64();
        println!(
            "step on {backend:<9} ({} timed, {} warm-up): median {:.3} ms  min {:.3}  max {:.3}  ({:.0} images/s)",
            times.len(),
            args.warmup,
            ms(median),
            ms(times[0]),
            ms(times[times.len() - 1]),
            per_image
        );
        for (what, bytes) in w.memory() {
            println!("  memory: {:<32}{:>10.2} MiB", what, bytes as f64 / (1 << 20) as f64);
        }
        medians.push((backend, median));
    }
    if let [(a, ta), ref rest @ ..] = medians[..] {
        for &(b, tb) in rest {
            println!("{a} / {b}: {:.2}× the time per step", ta.as_secs_f64() / tb.as_secs_f64().max(1e-12));
        }
    }
    if let Some(peak) = cnnc_runtime::bench::peak_rss() {
        println!("memory: {:<34}{:>10.2} MiB", "peak resident (process)", peak as f64 / (1 << 20) as f64);
    }
    Ok(())
}

/// Warm-up steps, then timed steps (sorted); the median and all times.
fn time_steps(w: &mut Workload, args: &Args) -> Result<(Duration, Vec<Duration>), Failure> {
    for _ in 0..args.warmup {
        w.step().map_err(|e| fail(EXIT_INPUT, e))?;
    }
    let profile = std::sync::Arc::new(std::sync::Mutex::new(cnnc_runtime::executor::Profile::default()));
    if args.profile {
        w.profile_into(profile.clone());
    }
    let mut times = Vec::with_capacity(args.steps);
    for _ in 0..args.steps.max(1) {
        let t = Instant::now();
        w.step().map_err(|e| fail(EXIT_INPUT, e))?;
        times.push(t.elapsed());
    }
    times.sort_unstable();
    if let (true, Ok(p)) = (args.profile, profile.lock()) {
        print_profile(&p, times.len());
    }
    Ok((times[times.len() / 2], times))
}

/// Time per op or kernel kind and step, largest first, with its share of the step and, for
/// kernels, its GFLOP/s.
fn print_profile(p: &cnnc_runtime::executor::Profile, steps: usize) {
    println!("profile (per step):");
    print_entries(&p.ops, steps, usize::MAX);
    if !p.kernels.is_empty() {
        println!("slowest kernels (per step):");
        print_entries(&p.kernels, steps, 12);
    }
}

/// The `most` largest of `entries`, with their shares of the entries' total.
fn print_entries(entries: &[cnnc_runtime::executor::ProfileEntry], steps: usize, most: usize) {
    let total: Duration = entries.iter().map(|e| e.time).sum();
    let mut ops = entries.to_vec();
    ops.sort_by_key(|e| std::cmp::Reverse(e.time));
    for e in ops.into_iter().take(most) {
        let per_step = e.time / steps.max(1) as u32;
        let share = 100.0 * e.time.as_secs_f64() / total.as_secs_f64().max(1e-12);
        let rate = if e.flops > 0 {
            format!("{:>8.2} GFLOP/s", e.flops as f64 / e.time.as_secs_f64().max(1e-12) / 1e9)
        } else {
            String::new()
        };
        println!(
            "  {:<36}{:>10.3} ms {share:>6.1}%  {:>4} calls {rate}",
            e.name,
            ms(per_step),
            e.runs / steps.max(1) as u64
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pick<'c>(c: &'c Compilation, name: Option<&str>) -> Result<&'c ModelInfo, Failure> {
    match name {
        Some(n) => c.models.iter().find(|m| m.name == n).ok_or_else(|| {
            let names: Vec<&str> = c.models.iter().map(|m| m.name.as_str()).collect();
            fail(EXIT_INPUT, format!("no model `{n}` in this file (models: {})", names.join(", ")))
        }),
        None => match c.models.as_slice() {
            [] => Err(fail(EXIT_INPUT, "the file defines no model")),
            [one] => Ok(one),
            _ => Err(fail(EXIT_INPUT, "the file has several models: choose one with --model NAME")),
        },
    }
}
