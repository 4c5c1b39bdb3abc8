//! Memory planning: each arena buffer's life (the kernels from its first access to its last; to
//! the end for kept buffers), and an offset in one arena such that no two buffers alive at the
//! same kernel overlap. Buffers are placed largest first, each in the smallest gap between the
//! buffers already placed whose lives overlap its own (best fit), else after them.

use super::{Program, Space};

/// Offsets are multiples of this many elements (64 bytes), for aligned vector loads.
pub const ALIGN: usize = 16;

/// Where each arena buffer lives, and what that costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Per buffer: its offset in the arena (arena buffers only).
    pub offsets: Vec<Option<usize>>,
    /// Per buffer: the first and last kernel that touch it (arena buffers that are used).
    pub lives: Vec<Option<(usize, usize)>>,
    /// Elements of the arena.
    pub size: usize,
    /// Elements of all arena buffers together (what giving each its own memory would take).
    pub total: usize,
    /// The most elements alive at one kernel: the least any plan could take.
    pub peak_live: usize,
}

fn aligned(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Plans the arena of `p`.
pub fn plan(p: &Program) -> MemoryPlan {
    let n = p.buffers.len();
    let mut lives: Vec<Option<(usize, usize)>> = vec![None; n];
    // Derived parameters are written before the first step kernel and read until the last.
    for kernel in &p.prepare {
        let (reads, writes) = kernel.access();
        for v in reads.into_iter().chain(writes) {
            lives[v.buf.0 as usize] = Some((0, p.kernels.len()));
        }
    }
    for (k, kernel) in p.kernels.iter().enumerate() {
        let (reads, writes) = kernel.access();
        for v in reads.into_iter().chain(writes) {
            let life = &mut lives[v.buf.0 as usize];
            *life = Some(life.map_or((k, k), |(a, b)| (a.min(k), b.max(k))));
        }
    }
    let end = p.kernels.len();
    for (b, life) in p.buffers.iter().zip(lives.iter_mut()) {
        if b.space != Space::Arena {
            *life = None;
        } else if b.kept {
            *life = Some(life.map_or((end, end), |(a, _)| (a, end)));
        }
    }
    let mut order: Vec<usize> = (0..n).filter(|&b| lives[b].is_some()).collect();
    order.sort_by_key(|&b| (std::cmp::Reverse(p.buffers[b].len), lives[b].map(|l| l.0), b));
    let mut offsets: Vec<Option<usize>> = vec![None; n];
    let mut placed: Vec<usize> = Vec::new();
    let mut size = 0;
    for b in order {
        let (first, last) = lives[b].unwrap_or_default();
        let len = aligned(p.buffers[b].len);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&o| lives[o].is_some_and(|(f, l)| f <= last && first <= l))
            .filter_map(|&o| offsets[o].map(|at| (at, at + aligned(p.buffers[o].len))))
            .collect();
        busy.sort_unstable();
        let (mut best, mut cursor) = (None::<(usize, usize)>, 0);
        for &(start, stop) in &busy {
            if start >= cursor + len && best.is_none_or(|(_, gap)| start - cursor < gap) {
                best = Some((cursor, start - cursor));
            }
            cursor = cursor.max(stop);
        }
        let at = best.map_or(cursor, |(at, _)| at);
        offsets[b] = Some(at);
        size = size.max(at + len);
        placed.push(b);
    }
    let total = (0..n).filter(|&b| lives[b].is_some()).map(|b| aligned(p.buffers[b].len)).sum();
    let peak_live = (0..=end)
        .map(|k| {
            (0..n).filter(|&b| lives[b].is_some_and(|(f, l)| f <= k && k <= l)).map(|b| aligned(p.buffers[b].len)).sum()
        })
        .max()
        .unwrap_or(0);
    MemoryPlan { offsets, lives, size, total, peak_live }
}

impl MemoryPlan {
    /// Checks the plan: every arena buffer that a kernel touches has an offset, lies inside the
    /// arena, and overlaps no other buffer alive at the same time.
    pub fn check(&self, p: &Program) -> Result<(), String> {
        let placed: Vec<(usize, (usize, usize), usize, usize)> = (0..p.buffers.len())
            .filter_map(|b| {
                let life = self.lives[b]?;
                let at = self.offsets[b]?;
                Some((b, life, at, at + p.buffers[b].len))
            })
            .collect();
        if let Some(b) = (0..p.buffers.len()).find(|&b| self.lives[b].is_some() && self.offsets[b].is_none()) {
            return Err(format!("buffer b{b} is used but has no place"));
        }
        for (i, &(a, (fa, la), sa, ea)) in placed.iter().enumerate() {
            if ea > self.size {
                return Err(format!("buffer b{a} ends past the arena"));
            }
            for &(b, (fb, lb), sb, eb) in &placed[i + 1..] {
                if fa <= lb && fb <= la && sa < eb && sb < ea {
                    return Err(format!("buffers b{a} and b{b} are alive together and overlap"));
                }
            }
        }
        Ok(())
    }

    /// The plan as text: each arena buffer's size, offset and life; then the totals.
    pub fn to_text(&self, p: &Program) -> String {
        use std::fmt::Write;
        let mut out = format!("memory {} (batch {})\n", p.name, p.batch);
        let mut rows: Vec<usize> = (0..p.buffers.len()).filter(|&b| self.offsets[b].is_some()).collect();
        rows.sort_by_key(|&b| (self.lives[b].map(|l| l.0), b));
        for b in rows {
            let buf = &p.buffers[b];
            let (first, last) = self.lives[b].unwrap_or_default();
            let _ = writeln!(
                out,
                "  b{b:<4} {:>12} B  at {:>12}  kernels {first:>4} ..= {last:<4} {}{}",
                buf.len * 4,
                self.offsets[b].unwrap_or(0) * 4,
                buf.name,
                if buf.kept { " (kept)" } else { "" }
            );
        }
        let mib = |e: usize| e as f64 * 4.0 / (1 << 20) as f64;
        let _ = writeln!(out, "arena:            {:.2} MiB", mib(self.size));
        let _ = writeln!(out, "peak live:        {:.2} MiB (the least any plan could take)", mib(self.peak_live));
        let _ = writeln!(out, "sum of buffers:   {:.2} MiB (every buffer its own memory)", mib(self.total));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lir::{BufId, Buffer, DType, Kernel, View};

    fn buffer(len: usize) -> Buffer {
        Buffer { name: String::new(), space: Space::Arena, len, dtype: DType::F32, kept: false }
    }

    fn copy(a: u32, b: u32, len: usize) -> Kernel {
        Kernel::Copy { src: View::whole(BufId(a), vec![len]), dst: View::whole(BufId(b), vec![len]) }
    }

    #[test]
    fn buffers_with_disjoint_lives_share_memory_and_the_plan_checks() {
        // b0 → b1 → b2 → b3: each buffer is dead once the next is written, so two slots suffice.
        let p = Program {
            name: "chain".into(),
            batch: 1,
            buffers: vec![buffer(100), buffer(100), buffer(100), buffer(100)],
            prepare: vec![],
            kernels: vec![copy(0, 1, 100), copy(1, 2, 100), copy(2, 3, 100)],
            inputs: vec![],
            results: vec![],
        };
        let chain = super::plan(&p);
        chain.check(&p).unwrap();
        assert_eq!(chain.total, 4 * 112);
        assert_eq!(chain.size, 2 * 112);
        assert_eq!(chain.peak_live, 2 * 112);
        // A kept buffer lives to the end: it takes a slot of its own.
        let mut kept = p.clone();
        kept.buffers[0].kept = true;
        let with_kept = super::plan(&kept);
        with_kept.check(&kept).unwrap();
        assert_eq!(with_kept.size, 3 * 112);
        // A broken plan is caught.
        let mut bad = with_kept.clone();
        bad.offsets[1] = bad.offsets[0];
        assert!(bad.check(&kept).is_err());
    }
}
