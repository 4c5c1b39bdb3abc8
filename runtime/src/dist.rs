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
    /// Starts summing every process's `send` into `recv` (as long as it) and returns at once. The
    /// sums started go on a channel of their own, so they may be started between the other calls
    /// in any order, but every process starts the same sums in the same order.
    ///
    /// # Safety
    ///
    /// Both buffers stay where they are, neither read nor written, until [`Group::wait_all`].
    unsafe fn start_sum(&self, send: &[f32], recv: &mut [f32]);
    /// Lets the sums started go on (an MPI library moves them only inside its calls).
    fn progress(&self);
    /// Waits until every sum started is done.
    fn wait_all(&self);
}

/// Elements of the gradient store a bucket holds unless [`set_bucket_len`] says otherwise (256
/// KB, chosen by measurement: README, *Training on several processes*).
pub const BUCKET: usize = 64 * 1024;

static BUCKET_LEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(BUCKET);

/// Sets the bucket size in elements (0: no overlap, one sum after the step); the binary reads it
/// once from `CNNC_BUCKET_KB`.
pub fn set_bucket_len(elements: usize) {
    BUCKET_LEN.store(elements, std::sync::atomic::Ordering::Relaxed);
}

/// The bucket size in elements.
pub fn bucket_len() -> usize {
    BUCKET_LEN.load(std::sync::atomic::Ordering::Relaxed)
}

/// The gradients summed over the group in buckets while the backward pass goes on, as PyTorch's
/// DistributedDataParallel does: the store is cut into contiguous buckets from its end (the last
/// layers, whose gradients the backward pass finishes first), and each bucket is sent, scaled by
/// this process's share of the batch, as soon as the last kernel writing into it has run. Every
/// process starts the buckets in the same order; [`Exchange::finish`] waits for them and writes
/// the sums back.
pub struct Exchange<'g> {
    group: &'g dyn Group,
    spans: Vec<Range<usize>>,
    /// The kernel after which each bucket's gradients are final.
    ready: Vec<usize>,
    /// Buckets started so far (in order).
    next: usize,
    send: Vec<Vec<f32>>,
    recv: Vec<Vec<f32>>,
    share: f32,
}

impl<'g> Exchange<'g> {
    /// Buckets of `bucket` elements over a store of `len`, ready after the last kernel that
    /// `writes` (kernel, range) names in each; this process's gradients weigh `share`.
    pub fn new(group: &'g dyn Group, len: usize, bucket: usize, writes: &[(usize, Range<usize>)], share: f32) -> Self {
        let bucket = bucket.max(1);
        let spans: Vec<Range<usize>> =
            (0..len.div_ceil(bucket)).map(|b| len.saturating_sub((b + 1) * bucket)..len - b * bucket).collect();
        let ready = spans
            .iter()
            .map(|s| {
                writes.iter().filter(|(_, r)| r.start < s.end && s.start < r.end).map(|(k, _)| *k).max().unwrap_or(0)
            })
            .collect();
        let send = spans.iter().map(|s| vec![0.0; s.len()]).collect();
        let recv = spans.iter().map(|s| vec![0.0; s.len()]).collect();
        Exchange { group, spans, ready, next: 0, send, recv, share }
    }

    /// After kernel `k`: starts, in order, every bucket whose gradients are final.
    pub fn after(&mut self, k: usize, grads: &[f32]) {
        let before = self.next;
        while self.next < self.spans.len() && self.ready[self.next] <= k {
            self.start(grads);
        }
        if before > 0 || self.next > before {
            self.group.progress();
        }
    }

    fn start(&mut self, grads: &[f32]) {
        let b = self.next;
        let share = self.share;
        self.send[b].iter_mut().zip(&grads[self.spans[b].clone()]).for_each(|(s, &g)| *s = g * share);
        // SAFETY: `send` and `recv` are not resized or touched until `wait_all` (in `finish`, or
        // on drop): their heap buffers stay put while the outer vectors move with `self`.
        unsafe { self.group.start_sum(&self.send[b], &mut self.recv[b]) };
        self.next += 1;
    }

    /// Starts what is left, waits for every sum and writes them into `grads`.
    pub fn finish(mut self, grads: &mut [f32]) {
        while self.next < self.spans.len() {
            self.start(grads);
        }
        self.group.wait_all();
        for (span, sum) in self.spans.iter().zip(&self.recv) {
            grads[span.clone()].copy_from_slice(sum);
        }
        self.next = 0;
    }
}

impl Drop for Exchange<'_> {
    /// A step that failed midway still waits for the sums it started: their buffers are freed here.
    fn drop(&mut self) {
        if self.next > 0 {
            self.group.wait_all();
        }
    }
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
pub(crate) fn combine_stats(all: &[f64], c: usize) -> (Vec<f64>, Vec<f64>) {
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

/// [`batch_sums`] of batchnorm's two per-channel sums (Σ dy and Σ dy·x̂) kept apart.
pub fn batch_sums_pair(sum: &mut [f32], dot: &mut [f32], rows: usize) {
    if group().is_none() {
        return;
    }
    let c = sum.len();
    let mut both = [&*sum, &*dot].concat();
    batch_sums(&mut both, rows);
    sum.copy_from_slice(&both[..c]);
    dot.copy_from_slice(&both[c..]);
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
