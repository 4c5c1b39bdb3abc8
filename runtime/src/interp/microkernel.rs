//! cnnc's own GEMM for the narrow products of small nets (N up to 256 output channels, the last
//! panel padded with zero columns and stored with masks, K ≤ 1024), over the right-hand matrix
//! packed into panels of 16 columns (small: K × N), reading the left-hand rows in place: AVX-512
//! micro-kernels of 12 rows × 32 (or 16) columns, 24 accumulators in registers, where the host
//! has AVX-512F; else AVX2 and FMA ones of 6 rows × 16 (or 8), 12 accumulators. Each output
//! element is one sum in K order, whatever the split over threads. Chosen at run time (machines
//! here have AVX2, some AVX-512 as well); elsewhere, and for other shapes, the `gemm` crate runs.
//!
//! The left-hand rows are read in place ([`gemm`]) or, for a convolution, through an indirection
//! table ([`gemm_indirect`]): for each output position and tap, where its input channels start
//! (or a run of zeros, outside the image), so no im2col matrix is written at all.

/// Rows of an AVX2 micro-tile.
const MR: usize = 6;

/// Rows per parallel block (16 micro-tiles).
pub const BLOCK_ROWS: usize = 96;

/// Whether the host can run these kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the AVX-512 kernels run: the host has AVX-512F, and `CNNC_NO_AVX512` is not set (it
/// keeps the AVX2 kernels, to time them on such a host).
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            available() && std::is_x86_feature_detected!("avx512f") && std::env::var_os("CNNC_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a product of these dimensions goes to the micro-kernels: any that [`runs`], up to
/// 256 columns (wider products stream their packed filters from L2 once per block of rows: the
/// gemm crate, which blocks K, ran ResNet-50's wide products faster).
pub fn suits(rows: usize, k: usize, cols: usize, ta: bool) -> bool {
    !ta && (1..=256).contains(&cols) && runs(rows, k)
}

/// Whether the micro-kernels can run a product of `rows` rows over `k` (of any width) on this
/// host; short products of filters packed once per call (Winograd's) take them at any width.
pub fn runs(rows: usize, k: usize) -> bool {
    (1..=1024).contains(&k) && rows >= MR && available()
}

/// Whether the micro-kernels can run a product of `rows` rows over an operand packed once, of
/// any depth and width: the caller sums a K of more than 1024 in blocks ([`gemm_block`]).
pub fn runs_packed(rows: usize, k: usize) -> bool {
    k >= 1 && rows >= MR && available()
}

/// `op(B)` (`k × n`, element `(i, j)` at `b[i·rsb + j·csb]`) packed into panels of 16 columns
/// (the last may be 8): panel `p` is `k` rows of its width, one after the other.
pub fn pack(b: &[f32], k: usize, n: usize, rsb: usize, csb: usize) -> Vec<f32> {
    // Each panel's offset and width; the columns past `n` stay zeros.
    let mut panels = Vec::with_capacity(n.div_ceil(16));
    let mut j0 = 0;
    while j0 < n {
        let w = width(n - j0);
        panels.push((j0, w, w.min(n - j0)));
        j0 += w;
    }
    let mut out = vec![0f32; k * panels.iter().map(|p| p.1).sum::<usize>()];
    if csb == 1 {
        // Row by row of `b`, in the order it lies: one pass over the source.
        for i in 0..k {
            let row = &b[i * rsb..];
            let mut at = 0;
            for &(j0, w, valid) in &panels {
                out[at + i * w..at + i * w + valid].copy_from_slice(&row[j0..j0 + valid]);
                at += k * w;
            }
        }
    } else {
        // Column by column of `b` (its columns lie in order when it is transposed).
        let mut at = 0;
        for &(j0, w, valid) in &panels {
            for j in 0..valid {
                let col = &b[(j0 + j) * csb..];
                for (i, o) in out[at + j..at + k * w].iter_mut().step_by(w).enumerate() {
                    *o = col[i * rsb];
                }
            }
            at += k * w;
        }
    }
    out
}

/// The width of the panel that starts with `left` columns to go: 16, or 8 for the last few (the
/// columns past `n` are zeros in the panel and are not stored).
pub(super) fn width(left: usize) -> usize {
    if left > 8 {
        16
    } else {
        8
    }
}

/// Where a tile's left-hand rows are: K is read as `runs` runs of `len` consecutive values, run
/// `s` of row `m` starting at `at(m, s)`.
trait Rows: Copy {
    /// Where row `m`'s run `s` starts.
    ///
    /// # Safety
    /// `m` and `s` within the rows and runs the source was made for.
    unsafe fn at(self, m: usize, s: usize) -> *const f32;
    /// The same source from row `r` on.
    ///
    /// # Safety
    /// `r` within its rows.
    unsafe fn from(self, r: usize) -> Self;
}

/// Rows `lda` apart, K one run.
#[derive(Clone, Copy)]
struct Strided {
    a: *const f32,
    lda: usize,
}

impl Rows for Strided {
    #[inline(always)]
    unsafe fn at(self, m: usize, _: usize) -> *const f32 {
        // SAFETY: the caller's promise.
        unsafe { self.a.add(m * self.lda) }
    }
    #[inline(always)]
    unsafe fn from(self, r: usize) -> Self {
        // SAFETY: the caller's promise.
        Strided { a: unsafe { self.a.add(r * self.lda) }, lda: self.lda }
    }
}

/// An indirection table: row `m`'s run `s` (a tap's channels) at `table[m·runs + s]`.
#[derive(Clone, Copy)]
struct Indirect {
    table: *const *const f32,
    runs: usize,
}

impl Rows for Indirect {
    #[inline(always)]
    unsafe fn at(self, m: usize, s: usize) -> *const f32 {
        // SAFETY: the caller's promise.
        unsafe { *self.table.add(m * self.runs + s) }
    }
    #[inline(always)]
    unsafe fn from(self, r: usize) -> Self {
        // SAFETY: the caller's promise.
        Indirect { table: unsafe { self.table.add(r * self.runs) }, runs: self.runs }
    }
}

/// Where the packed panels are: those of a `kp × n` operand ([`pack`]) from `base` on, read from
/// row `k0` (a block of K): the panel of `w` columns starting at column `j` begins at
/// `base + j·kp + k0·w`, and two 16-column panels lie `16·kp` apart.
#[derive(Clone, Copy)]
struct Panels {
    base: *const f32,
    kp: usize,
    k0: usize,
}

impl Panels {
    /// The start of the panel of width `w` at column `j`, at row `k0`.
    ///
    /// # Safety
    /// Within the packed operand.
    #[inline(always)]
    unsafe fn at(self, j: usize, w: usize) -> *const f32 {
        // SAFETY: the caller's promise.
        unsafe { self.base.add(j * self.kp + self.k0 * w) }
    }
}

/// `C[rows × n] = A·B (+ C)`: `a` row-major with row pitch `lda` (`rows × k`), `packed` from
/// [`pack`], `c` with row pitch `ldc`.
///
/// # Safety
/// The host must have AVX2 and FMA ([`available`]); `a` must hold `rows` rows of `k`, `c` `rows`
/// rows of `n`, at their pitches, and `packed` `k·n` values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    rows: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    packed: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's promise.
    unsafe { gemm_on(avx512(), rows, k, n, a, lda, packed, c, ldc, accumulate) }
}

/// [`gemm`] by the AVX-512 kernels (`wide`) or the AVX2 ones (to test and time both).
///
/// # Safety
/// As [`gemm`], and the host has AVX-512F where `wide`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_on(
    wide: bool,
    rows: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    packed: &[f32],
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's promise: the operand's panels whole, read from their first row.
    unsafe { block_on(wide, rows, k, n, a, lda, packed, k, 0, c, ldc, accumulate) }
}

/// `C[rows × n] = A·B (+ C)` over rows `k0 .. k0 + k` of an operand of `kp` rows packed by
/// [`pack`], its columns from `packed` on (`packed` starts at a panel): a block of K of a
/// product whose panels are shared, all of the block's panels read in one pass of the rows.
///
/// # Safety
/// As [`gemm`]; `packed` holds the panels of `n` columns of a `kp`-row operand, `k0 + k ≤ kp`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_block(
    rows: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    packed: &[f32],
    kp: usize,
    k0: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: the caller's promise.
    unsafe { block_on(avx512(), rows, k, n, a, lda, packed, kp, k0, c, ldc, accumulate) }
}

/// [`gemm_block`] by the AVX-512 kernels (`wide`) or the AVX2 ones: what [`gemm_on`] and
/// [`gemm_block`] run.
///
/// # Safety
/// As [`gemm_block`], and the host has AVX-512F where `wide`.
#[allow(clippy::too_many_arguments)]
unsafe fn block_on(
    wide: bool,
    rows: usize,
    k: usize,
    n: usize,
    a: &[f32],
    lda: usize,
    packed: &[f32],
    kp: usize,
    k0: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    debug_assert!(available() && k0 + k <= kp && packed.len() >= kp * n.next_multiple_of(8));
    debug_assert!(rows == 0 || a.len() >= (rows - 1) * lda + k);
    debug_assert!(rows == 0 || c.len() >= (rows - 1) * ldc + n);
    let a = Strided { a: a.as_ptr(), lda };
    let panels = Panels { base: packed.as_ptr(), kp, k0 };
    // SAFETY: the caller's promise.
    unsafe { drive(wide, rows, 1, k, a, panels, n, c.as_mut_ptr(), ldc, accumulate) }
}

/// `C[rows × n] = A·B`, row `r` of A the runs of `len` values that `table[r·runs + s]` point to,
/// `s` in order (K = `runs·len`): a convolution's rows read where they lie in its input.
///
/// # Safety
/// As [`gemm`]; `table` holds `rows·runs` pointers, each to `len` readable values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_indirect(
    rows: usize,
    runs: usize,
    len: usize,
    table: &[*const f32],
    n: usize,
    packed: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    // SAFETY: the caller's promise.
    unsafe { gemm_indirect_on(avx512(), rows, runs, len, table, n, packed, c, ldc) }
}

/// [`gemm_indirect`] by the AVX-512 kernels (`wide`) or the AVX2 ones.
///
/// # Safety
/// As [`gemm_indirect`], and the host has AVX-512F where `wide`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_indirect_on(
    wide: bool,
    rows: usize,
    runs: usize,
    len: usize,
    table: &[*const f32],
    n: usize,
    packed: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    debug_assert!(available() && packed.len() >= runs * len * n.next_multiple_of(8));
    debug_assert!(table.len() >= rows * runs);
    debug_assert!(rows == 0 || c.len() >= (rows - 1) * ldc + n);
    let a = Indirect { table: table.as_ptr(), runs };
    let panels = Panels { base: packed.as_ptr(), kp: runs * len, k0: 0 };
    // SAFETY: the caller's promise.
    unsafe { drive(wide, rows, runs, len, a, panels, n, c.as_mut_ptr(), ldc, false) }
}

/// The tiles over every row and panel.
///
/// # Safety
/// As [`gemm`] and [`gemm_indirect`]: `a` gives `rows` rows of `runs` runs of `len`.
#[allow(clippy::too_many_arguments)]
unsafe fn drive<R: Rows>(
    wide: bool,
    rows: usize,
    runs: usize,
    len: usize,
    a: R,
    packed: Panels,
    n: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's promise.
    unsafe {
        if wide {
            avx512::drive(rows, runs, len, a, packed, n, c, ldc, accumulate);
        } else {
            avx2::drive(rows, runs, len, a, packed, n, c, ldc, accumulate);
        }
    }
}

/// The mask of the first `left` of 16 lanes (all 16 from 16 on).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn first_lanes(left: usize) -> std::arch::x86_64::__mmask16 {
    if left >= 16 {
        0xffff
    } else {
        (1u16 << left) - 1
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{first_lanes, Rows};
    use std::arch::x86_64::*;

    /// Rows of a tile.
    const MR: usize = 12;

    /// Tiles of 12 rows × two 16-column panels (24 accumulators) where two full panels follow
    /// each other, else × one panel; a panel of 8 columns (the last of a narrow product) by the
    /// AVX2 tiles.
    ///
    /// # Safety
    /// AVX-512F, AVX2 and FMA, and [`super::drive`]'s bounds.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn drive<R: Rows>(
        rows: usize,
        runs: usize,
        len: usize,
        a: R,
        packed: super::Panels,
        n: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: within the caller's bounds: `packed` gives every panel.
        unsafe {
            let mut j0 = 0;
            while j0 < n {
                let w = super::width(n - j0);
                let panels = if w == 16 && n - j0 > 16 && super::width(n - j0 - 16) == 16 { 2 } else { 1 };
                let valid = (16 * panels).min(n - j0);
                let panel = packed.at(j0, w);
                let stride = 16 * packed.kp;
                let mut r = 0;
                while r < rows {
                    let mr = MR.min(rows - r);
                    let (ar, cp) = (a.from(r), c.add(r * ldc + j0));
                    macro_rules! tiles {
                        ($($m:literal)*) => {
                            match (mr, panels, w) {
                                $(
                                    ($m, 2, _) => tile::<$m, 2, R>(runs, len, ar, panel, stride, cp, ldc, accumulate, valid),
                                    ($m, _, 16) => tile::<$m, 1, R>(runs, len, ar, panel, stride, cp, ldc, accumulate, valid),
                                )*
                                _ => {
                                    let m = mr.min(super::MR);
                                    for (first, m) in [(0, m), (m, mr - m)] {
                                        if m > 0 {
                                            let (ap, cq) = (ar.from(first), cp.add(first * ldc));
                                            super::avx2::panel(m, runs, len, ap, panel, cq, ldc, accumulate, valid);
                                        }
                                    }
                                }
                            }
                        };
                    }
                    tiles!(12 11 10 9 8 7 6 5 4 3 2 1);
                    r += mr;
                }
                j0 += 16 * panels;
            }
        }
    }

    /// One tile: `M` rows × `P` panels of 16 columns (panel `p` from `b + p·stride`), summed
    /// over K (`runs·len`) in order.
    ///
    /// # Safety
    /// AVX-512F; `a` gives `M` rows of `runs` runs of `len`, `b` `P` panels of K rows of 16,
    /// `stride` apart, `c` `M` rows of `valid` (at most `16·P`) at pitch `ldc`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const M: usize, const P: usize, R: Rows>(
        runs: usize,
        len: usize,
        a: R,
        b: *const f32,
        stride: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        valid: usize,
    ) {
        // SAFETY: within the bounds the caller promises.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); P]; M];
            for s in 0..runs {
                let rows: [*const f32; M] = std::array::from_fn(|m| a.at(m, s));
                let bs = b.add(s * len * 16);
                let step = |acc: &mut [[__m512; P]; M], i: usize| {
                    let mut bv = [_mm512_setzero_ps(); P];
                    for (p, x) in bv.iter_mut().enumerate() {
                        *x = _mm512_loadu_ps(bs.add(p * stride + i * 16));
                    }
                    for (m, acc) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*rows[m].add(i));
                        for p in 0..P {
                            acc[p] = _mm512_fmadd_ps(x, bv[p], acc[p]);
                        }
                    }
                };
                // Four steps of K a turn: the rows' addresses and the loop's count once for four
                // (1.05–1.25× over one on the Xeon).
                let mut i = 0;
                while i + 4 <= len {
                    step(&mut acc, i);
                    step(&mut acc, i + 1);
                    step(&mut acc, i + 2);
                    step(&mut acc, i + 3);
                    i += 4;
                }
                while i < len {
                    step(&mut acc, i);
                    i += 1;
                }
            }
            for (m, acc) in acc.iter().enumerate() {
                for (p, &sum) in acc.iter().enumerate() {
                    let at = c.add(m * ldc + 16 * p);
                    // Only the lanes inside the product are touched.
                    let mask = first_lanes(valid.saturating_sub(16 * p));
                    let sum = if accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, at), sum) } else { sum };
                    _mm512_mask_storeu_ps(at, mask, sum);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Rows;
    use std::arch::x86_64::*;

    /// Tiles of 6 rows × one panel of 16 (two vectors) or 8 columns.
    ///
    /// # Safety
    /// AVX2 and FMA, and [`super::drive`]'s bounds.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn drive<R: Rows>(
        rows: usize,
        runs: usize,
        len: usize,
        a: R,
        packed: super::Panels,
        n: usize,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
    ) {
        // SAFETY: the caller's promise: `packed` gives every panel.
        unsafe {
            let mut j0 = 0;
            while j0 < n {
                let w = super::width(n - j0);
                let valid = w.min(n - j0);
                let bp = packed.at(j0, w);
                let mut r = 0;
                while r < rows {
                    let mr = super::MR.min(rows - r);
                    panel(mr, runs, len, a.from(r), bp, c.add(r * ldc + j0), ldc, accumulate, valid);
                    r += mr;
                }
                j0 += w;
            }
        }
    }

    /// One panel of 8 or 16 columns (its width from `valid`), `rows` ≤ 6.
    ///
    /// # Safety
    /// AVX2 and FMA, and [`super::drive`]'s bounds for these rows and this panel.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panel<R: Rows>(
        rows: usize,
        runs: usize,
        len: usize,
        a: R,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        valid: usize,
    ) {
        // SAFETY: the caller's promise.
        unsafe {
            match (rows, super::width(valid)) {
                (6, 16) => tile::<6, 2, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (6, _) => tile::<6, 1, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (5, 16) => tile::<5, 2, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (5, _) => tile::<5, 1, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (4, 16) => tile::<4, 2, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (4, _) => tile::<4, 1, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (3, 16) => tile::<3, 2, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (3, _) => tile::<3, 1, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (2, 16) => tile::<2, 2, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (2, _) => tile::<2, 1, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (_, 16) => tile::<1, 2, R>(runs, len, a, b, c, ldc, accumulate, valid),
                (_, _) => tile::<1, 1, R>(runs, len, a, b, c, ldc, accumulate, valid),
            }
        }
    }

    /// One tile: `M` rows × `V` vectors of 8 columns, summed over `k` in order.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` gives `M` rows of `runs` runs of `len`, `b` holds `k` rows of `8·V`,
    /// `c` `M` rows of `valid` (at most `8·V`) at pitch `ldc`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const M: usize, const V: usize, R: Rows>(
        runs: usize,
        len: usize,
        a: R,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        valid: usize,
    ) {
        // SAFETY: within the bounds the caller promises.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); V]; M];
            for s in 0..runs {
                let rows: [*const f32; M] = std::array::from_fn(|m| a.at(m, s));
                let bs = b.add(s * len * 8 * V);
                if M == 6 && V == 2 {
                    // The full tile by hand: its 12 sums, 2 columns and a row's value take 15 of
                    // the 16 registers, and the compiler's schedule spilled a sum every step.
                    // (M and V are 6 and 2 here: the casts change no size.)
                    let acc = &mut *(acc.as_mut_ptr() as *mut [[__m256; 2]; 6]);
                    full_run(acc, *(rows.as_ptr() as *const [*const f32; 6]), bs, len);
                    continue;
                }
                let step = |acc: &mut [[__m256; V]; M], i: usize| {
                    let row = bs.add(i * 8 * V);
                    let mut bv = [_mm256_setzero_ps(); V];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = _mm256_loadu_ps(row.add(8 * v));
                    }
                    for (m, acc) in acc.iter_mut().enumerate() {
                        let x = _mm256_broadcast_ss(&*rows[m].add(i));
                        for v in 0..V {
                            acc[v] = _mm256_fmadd_ps(x, bv[v], acc[v]);
                        }
                    }
                };
                // Four steps of K a turn: the rows' addresses and the loop's count once for four.
                let mut i = 0;
                while i + 4 <= len {
                    step(&mut acc, i);
                    step(&mut acc, i + 1);
                    step(&mut acc, i + 2);
                    step(&mut acc, i + 3);
                    i += 4;
                }
                while i < len {
                    step(&mut acc, i);
                    i += 1;
                }
            }
            for (m, acc) in acc.iter().enumerate() {
                for (v, &sum) in acc.iter().enumerate() {
                    let at = c.add(m * ldc + 8 * v);
                    let lanes = valid.saturating_sub(8 * v).min(8);
                    if lanes == 8 {
                        let sum = if accumulate { _mm256_add_ps(_mm256_loadu_ps(at), sum) } else { sum };
                        _mm256_storeu_ps(at, sum);
                    } else if lanes > 0 {
                        // The last columns: only the lanes inside the product are touched.
                        let mask = _mm256_cmpgt_epi32(
                            _mm256_set1_epi32(lanes as i32),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                        );
                        let sum = if accumulate { _mm256_add_ps(_mm256_maskload_ps(at, mask), sum) } else { sum };
                        _mm256_maskstore_ps(at, mask, sum);
                    }
                }
            }
        }
    }

    /// `acc[m] += Σᵢ rows[m][i] · b[i]` for `i < len`, in order: the 6 × 16 tile's sums over a run
    /// of K, each a fused multiply-add per step as in [`tile`] (the same bits), all 16 vector
    /// registers named: 12 sums, a row of `b` in two, a row's value in the other two by turns.
    ///
    /// # Safety
    /// AVX2 and FMA; each of `rows` holds `len` values, `b` `len` rows of 16.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn full_run(acc: &mut [[__m256; 2]; 6], rows: [*const f32; 6], b: *const f32, len: usize) {
        if len == 0 {
            return;
        }
        let [[c0, c1], [c2, c3], [c4, c5], [c6, c7], [c8, c9], [c10, c11]] = acc;
        // SAFETY: the caller's promise: every load is inside `rows`' runs and `b`'s rows; the
        // code writes only the registers it names as outputs.
        unsafe {
            std::arch::asm!(
                "2:",
                "vmovups {y12}, ymmword ptr [{b}]",
                "vmovups {y13}, ymmword ptr [{b} + 32]",
                "vbroadcastss {y14}, dword ptr [{a0} + 4*{i}]",
                "vfmadd231ps {c0}, {y14}, {y12}",
                "vfmadd231ps {c1}, {y14}, {y13}",
                "vbroadcastss {y15}, dword ptr [{a1} + 4*{i}]",
                "vfmadd231ps {c2}, {y15}, {y12}",
                "vfmadd231ps {c3}, {y15}, {y13}",
                "vbroadcastss {y14}, dword ptr [{a2} + 4*{i}]",
                "vfmadd231ps {c4}, {y14}, {y12}",
                "vfmadd231ps {c5}, {y14}, {y13}",
                "vbroadcastss {y15}, dword ptr [{a3} + 4*{i}]",
                "vfmadd231ps {c6}, {y15}, {y12}",
                "vfmadd231ps {c7}, {y15}, {y13}",
                "vbroadcastss {y14}, dword ptr [{a4} + 4*{i}]",
                "vfmadd231ps {c8}, {y14}, {y12}",
                "vfmadd231ps {c9}, {y14}, {y13}",
                "vbroadcastss {y15}, dword ptr [{a5} + 4*{i}]",
                "vfmadd231ps {c10}, {y15}, {y12}",
                "vfmadd231ps {c11}, {y15}, {y13}",
                "add {b}, 64",
                "inc {i}",
                "cmp {i}, {len}",
                "jne 2b",
                a0 = in(reg) rows[0],
                a1 = in(reg) rows[1],
                a2 = in(reg) rows[2],
                a3 = in(reg) rows[3],
                a4 = in(reg) rows[4],
                a5 = in(reg) rows[5],
                b = inout(reg) b => _,
                i = inout(reg) 0usize => _,
                len = in(reg) len,
                c0 = inout(ymm_reg) *c0,
                c1 = inout(ymm_reg) *c1,
                c2 = inout(ymm_reg) *c2,
                c3 = inout(ymm_reg) *c3,
                c4 = inout(ymm_reg) *c4,
                c5 = inout(ymm_reg) *c5,
                c6 = inout(ymm_reg) *c6,
                c7 = inout(ymm_reg) *c7,
                c8 = inout(ymm_reg) *c8,
                c9 = inout(ymm_reg) *c9,
                c10 = inout(ymm_reg) *c10,
                c11 = inout(ymm_reg) *c11,
                y12 = out(ymm_reg) _,
                y13 = out(ymm_reg) _,
                y14 = out(ymm_reg) _,
                y15 = out(ymm_reg) _,
                options(nostack, readonly),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_micro_kernels_equal_a_plain_product_for_every_tile_shape() {
        if !available() {
            return;
        }
        for (rows, k, n) in [
            (6, 1, 8),
            (7, 3, 16),
            (13, 17, 24),
            (1, 5, 8),
            (30, 64, 144),
            (25, 20, 48),
            (13, 7, 40),
            (12, 3, 33),
            (11, 9, 40),
            (8, 25, 6),
            (7, 4, 13),
            (9, 3, 1),
        ] {
            let a: Vec<f32> = (0..rows * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.5).collect();
            for (tb, accumulate) in [(false, false), (true, false), (false, true)] {
                // op(B) from a row-major [k, n], or from its transpose [n, k].
                let stored: Vec<f32> =
                    if tb { (0..n * k).map(|x| b[(x % k) * n + x / k]).collect() } else { b.clone() };
                let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
                let packed = pack(&stored, k, n, rsb, csb);
                for wide in [false, true] {
                    if wide && !std::is_x86_feature_detected!("avx512f") {
                        continue;
                    }
                    let mut c = vec![1.0f32; rows * n];
                    // SAFETY: available() said so (and AVX-512F where `wide`); the buffers hold what
                    // the shapes say.
                    unsafe { gemm_on(wide, rows, k, n, &a, k, &packed, &mut c, n, accumulate) };
                    // The same rows through an indirection table, K in runs of a divisor of K
                    // (products are not accumulated there).
                    let mut indirect = vec![1.0f32; rows * n];
                    let len = (1..=k).rev().find(|l| k % l == 0 && *l <= 5).unwrap_or(1);
                    let table: Vec<*const f32> = (0..rows * (k / len))
                        .map(|i| a[(i / (k / len)) * k + (i % (k / len)) * len..].as_ptr())
                        .collect();
                    // SAFETY: as above; each pointer starts a run of `len` values of `a`.
                    unsafe { gemm_indirect_on(wide, rows, k / len, len, &table, n, &packed, &mut indirect, n) };
                    for r in 0..rows {
                        for j in 0..n {
                            let want: f32 = (0..k).map(|i| a[r * k + i] * b[i * n + j]).sum::<f32>()
                                + if accumulate { 1.0 } else { 0.0 };
                            assert!((c[r * n + j] - want).abs() <= 1e-4 * want.abs().max(1.0), "{rows}×{k}×{n} {wide}");
                            if !accumulate {
                                assert_eq!(indirect[r * n + j], c[r * n + j], "{rows}×{k}×{n} {wide} indirect");
                            }
                        }
                    }
                }
                // Blocks of K (3 rows each) over ranges of columns that start at panels, one
                // or two panels each (`packed_product`'s tasks), summed into C block by block.
                for step in [16, 32] {
                    let mut blocked = vec![1.0f32; rows * n];
                    for j0 in (0..n).step_by(step) {
                        let valid = step.min(n - j0);
                        for k0 in (0..k).step_by(3) {
                            let kn = 3.min(k - k0);
                            // SAFETY: as above; the panels from column `j0` on hold `valid`
                            // columns of `k` rows, `blocked` from `j0` holds `rows` rows of
                            // `valid` at pitch `n`.
                            unsafe {
                                let (cs, acc) = (&mut blocked[j0..], accumulate || k0 > 0);
                                gemm_block(rows, kn, valid, &a[k0..], k, &packed[j0 * k..], k, k0, cs, n, acc)
                            };
                        }
                    }
                    for r in 0..rows {
                        for j in 0..n {
                            let want: f32 = (0..k).map(|i| a[r * k + i] * b[i * n + j]).sum::<f32>()
                                + if accumulate { 1.0 } else { 0.0 };
                            let got = blocked[r * n + j];
                            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{rows}×{k}×{n} step {step}");
                        }
                    }
                }
            }
        }
    }
}
