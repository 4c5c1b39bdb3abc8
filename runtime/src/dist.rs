//! Data-parallel training over several processes (`mpirun -np N cnnc run`): every process holds
//! the whole model, reads its shard of each global batch, and the processes combine what the
//! step needs so that N processes compute what one computes for the same global batch, up to
//! summation order:
//!
//! - the gradients, each process's scaled by its share of the batch, summed over processes
//!   before one identical optimizer step ([`Group::sum`]);
//! - every training-mode batchnorm's statistics, combined from each process's mean and variance
//!   in the forward pass ([`batch_stats`]), and its backward's two per-channel sums
//!   ([`batch_sums`]): synchronized batchnorm;
//! - dropout's masks, drawn by each example's place in the global batch (`Ctx::first`).
//!
//! The transport is the [`Group`] a binary installs ([`join`]); cnnc's is MPI's world (the `mpi`
//! feature). Nothing here runs, and nothing is exchanged, without one.

use std::ops::Range;
use std::sync::OnceLock;

/// The processes that train one model together.
pub trait Group: Send + Sync {
    /// This process's place, from 0.
    fn rank(&self) -> usize;
    /// How many processes.
    fn size(&self) -> usize;
    /// The element-wise sum of every process's `buf`, into every process's `buf`.
    fn sum(&self, buf: &mut [f32]);
    /// Every process's `local` (the same length on each), one after the other in rank order.
    fn gather(&self, local: &[f64]) -> Vec<f64>;
    /// Rank 0's `buf` into every process's `buf`.
    fn broadcast(&self, buf: &mut [f32]);
    /// Ends every process of the group with exit status `code`.
    fn abort(&self, code: i32) -> !;
}

static GROUP: OnceLock<Box<dyn Group>> = OnceLock::new();

/// Makes `group` the process's group, once (later calls are ignored). A group of one process is
/// kept too, and changes nothing.
pub fn join(group: Box<dyn Group>) {
    let _ = GROUP.set(group);
}

/// The group this process trains in, when it has more than one process.
pub fn group() -> Option<&'static dyn Group> {
    GROUP.get().map(|g| g.as_ref()).filter(|g| g.size() > 1)
}

/// Whether this process prints, evaluates and writes: rank 0, or the only process.
pub fn leader() -> bool {
    group().is_none_or(|g| g.rank() == 0)
}

/// `(rank, size)`: `(0, 1)` without a group.
pub fn place() -> (usize, usize) {
    group().map_or((0, 1), |g| (g.rank(), g.size()))
}

/// The examples of a batch of `n` that process `rank` of `size` takes: contiguous, in rank order,
/// the first `n mod size` ranks one more than the others.
pub fn shard(n: usize, rank: usize, size: usize) -> Range<usize> {
    let size = size.max(1);
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Turns this process's batch statistics per channel (`mean`, biased `var`, over `rows` rows)
/// into the global batch's, combined in rank order (Chan's parallel formula, in f64), the same on
/// every process. Nothing without a group.
pub fn batch_stats(mean: &mut [f32], var: &mut [f32], rows: usize) {
    let Some(g) = group() else { return };
    let mut local = Vec::with_capacity(1 + 2 * mean.len());
    local.push(rows as f64);
    local.extend(mean.iter().map(|&v| f64::from(v)));
    local.extend(var.iter().map(|&v| f64::from(v)));
    let (mu, spread) = combine_stats(&g.gather(&local), mean.len());
    mean.iter_mut().zip(&mu).for_each(|(m, &v)| *m = v as f32);
    var.iter_mut().zip(&spread).for_each(|(s, &v)| *s = v as f32);
}

/// The mean and biased variance of `c` channels over the rows of every part of `all`: parts of
/// `[rows, mean × c, var × c]` one after the other, combined in order.
fn combine_stats(all: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
    let parts: Vec<&[f64]> = all.chunks_exact(1 + 2 * c).collect();
    let total: f64 = parts.iter().map(|p| p[0]).sum::<f64>().max(1.0);
    let mean: Vec<f64> = (0..c).map(|ch| parts.iter().map(|p| p[0] * p[1 + ch]).sum::<f64>() / total).collect();
    let var = (0..c)
        .map(|ch| parts.iter().map(|p| p[0] * (p[1 + c + ch] + (p[1 + ch] - mean[ch]).powi(2))).sum::<f64>() / total)
        .collect();
    (mean, var)
}

/// Turns per-channel sums over this process's `rows` rows of batchnorm's backward (Σ dy and
/// Σ dy·x̂, each process's dy scaled by its own loss's 1/batch) into what the local kernel must
/// use so that its `sum / rows` is the global batch's mean in its own scale: Σ_r S_r · rows_r /
/// Σ_r rows_r. Nothing without a group.
pub fn batch_sums(sums: &mut [f32], rows: usize) {
    let Some(g) = group() else { return };
    let mut local = Vec::with_capacity(1 + sums.len());
    local.push(rows as f64);
    local.extend(sums.iter().map(|&v| f64::from(v)));
    let all = g.gather(&local);
    let parts: Vec<&[f64]> = all.chunks_exact(local.len()).collect();
    let total: f64 = parts.iter().map(|p| p[0]).sum();
    if total == 0.0 {
        return;
    }
    for (k, s) in sums.iter_mut().enumerate() {
        *s = (parts.iter().map(|p| p[0] * p[1 + k]).sum::<f64>() / total) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::{combine_stats, shard};

    /// Mean and biased variance of each column of `rows`, by two passes.
    fn stats(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
        let (n, c) = (rows.len() as f64, rows[0].len());
        let mean: Vec<f64> = (0..c).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n).collect();
        let var = (0..c).map(|j| rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n).collect();
        (mean, var)
    }

    #[test]
    fn statistics_combined_from_parts_are_the_whole_batch_s() {
        // Rows of two channels, far from zero-mean, split unevenly in three.
        let rows: Vec<Vec<f64>> =
            (0..23).map(|i| vec![100.0 + (i as f64 * 0.7).sin(), -3.0 + ((i * i) % 7) as f64]).collect();
        let mut all = Vec::new();
        for part in [&rows[..10], &rows[10..11], &rows[11..]] {
            let (m, v) = stats(part);
            all.push(part.len() as f64);
            all.extend(m);
            all.extend(v);
        }
        let (mean, var) = combine_stats(&all, 2);
        let (m, v) = stats(&rows);
        for j in 0..2 {
            assert!((mean[j] - m[j]).abs() < 1e-12, "{mean:?} {m:?}");
            assert!((var[j] - v[j]).abs() < 1e-12, "{var:?} {v:?}");
        }
    }

    #[test]
    fn shards_cover_the_batch_in_order() {
        for n in 0..20 {
            for size in 1..5 {
                let parts: Vec<_> = (0..size).map(|r| shard(n, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[size - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
    }
}
