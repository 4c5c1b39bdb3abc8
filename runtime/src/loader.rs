//! Loader threads: while the training step runs, `workers` threads load and augment the next
//! batches into bounded queues (two batches ahead each). Batch k is made by worker k mod W, and
//! each example's randomness depends only on (seed, epoch, example), so batches are the same for
//! any number of workers.

use crate::augment::Pipeline;
use crate::data::{Dataset, Split};
use crate::reference::Tensor;
use ndarray::{ArrayD, IxDyn};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

/// Batches augmented for training.
pub struct Loader<'a> {
    /// The data.
    pub data: &'a Dataset,
    /// The augmentation pipeline.
    pub pipeline: &'a Pipeline,
    /// Number of loader threads (at least one).
    pub workers: usize,
}

impl Loader<'_> {
    /// Batch `indices` of the training split for `epoch`: inputs `[b, input..]` and targets
    /// ([`Split::targets`]).
    pub fn batch(&self, split: &Split, indices: &[usize], epoch: usize) -> (Tensor, Tensor) {
        self.batch_after(split, &[], indices, epoch)
    }

    /// [`Loader::batch`] for the part `indices` of a batch whose examples `before` come first
    /// (the shares of earlier processes, under data parallelism): an example that came there
    /// already is augmented as the next of its copies, as one process would.
    pub fn batch_after(&self, split: &Split, before: &[usize], indices: &[usize], epoch: usize) -> (Tensor, Tensor) {
        let f = self.data.features();
        let input = &self.pipeline.input;
        let per = split.target_len();
        let mut x = Vec::with_capacity(indices.len() * input.iter().product::<usize>());
        let mut moved = Vec::with_capacity(indices.len() * per);
        // An example that comes again in a batch (an identity of one image, its positive made by
        // augmentation) is augmented anew each time.
        let mut again: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        for &i in before {
            *again.entry(i).or_insert(0) += 1;
        }
        for &i in indices {
            let example = &split.x[i * f..(i + 1) * f];
            let k = again.entry(i).or_insert(0);
            let mut rng = self.pipeline.rng(epoch, i + *k * split.len());
            *k += 1;
            // Boxes and points move with the pixels.
            let mut t = split.t[i * per..(i + 1) * per].to_vec();
            x.extend(self.pipeline.train_moving(example, &mut t, &self.data.target, &mut rng));
            moved.extend(t);
        }
        let mut shape = vec![indices.len()];
        shape.extend_from_slice(input);
        let x = ArrayD::from_shape_vec(IxDyn(&shape), x).expect("augmented examples fill the input shape");
        if per == 0 {
            return (x, split.targets(indices, &self.data.target));
        }
        let shape: Vec<usize> = std::iter::once(indices.len()).chain(self.data.target.iter().copied()).collect();
        (x, ArrayD::from_shape_vec(IxDyn(&shape), moved).expect("targets fill their shape"))
    }

    /// Feeds the batches of `order` to `step` in order, prepared by the worker threads, with the
    /// time spent waiting for data so far. Returns the total wait. Stops at the first error.
    pub fn epoch<E>(
        &self,
        order: &[usize],
        batch: usize,
        epoch: usize,
        step: impl FnMut(Tensor, Tensor, Duration) -> Result<(), E>,
    ) -> Result<Duration, E> {
        self.batches(&order.chunks(batch.max(1)).collect::<Vec<_>>(), epoch, step)
    }

    /// Feeds the batches `chunks` (example indices each) to `step` in order, as
    /// [`Loader::epoch`] does.
    pub fn batches<E>(
        &self,
        chunks: &[&[usize]],
        epoch: usize,
        step: impl FnMut(Tensor, Tensor, Duration) -> Result<(), E>,
    ) -> Result<Duration, E> {
        self.batches_after(chunks, &[], epoch, step)
    }

    /// [`Loader::batches`] of parts of batches, each after the examples `before[k]` of its batch
    /// ([`Loader::batch_after`]; none where `before` is shorter).
    pub fn batches_after<E>(
        &self,
        chunks: &[&[usize]],
        before: &[&[usize]],
        epoch: usize,
        mut step: impl FnMut(Tensor, Tensor, Duration) -> Result<(), E>,
    ) -> Result<Duration, E> {
        let workers = self.workers.clamp(1, chunks.len().max(1));
        let mut waited = Duration::ZERO;
        std::thread::scope(|scope| {
            let mut queues: Vec<Receiver<(Tensor, Tensor)>> = Vec::with_capacity(workers);
            for w in 0..workers {
                let (tx, rx) = sync_channel(2);
                queues.push(rx);
                scope.spawn(move || {
                    for (k, chunk) in chunks.iter().enumerate().skip(w).step_by(workers) {
                        let prior = before.get(k).copied().unwrap_or(&[]);
                        if tx.send(self.batch_after(&self.data.train, prior, chunk, epoch)).is_err() {
                            return;
                        }
                    }
                });
            }
            let mut result = Ok(());
            for k in 0..chunks.len() {
                let started = Instant::now();
                let Ok((x, y)) = queues[k % workers].recv() else { break };
                waited += started.elapsed();
                if let Err(e) = step(x, y, waited) {
                    result = Err(e);
                    break;
                }
            }
            // Dropping the queues ends the workers.
            drop(queues);
            result
        })?;
        Ok(waited)
    }
}
