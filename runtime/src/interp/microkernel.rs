//! cnnc's own GEMM for the narrow products of small nets (N up to 256 output channels, the last
//! panel padded with zero columns and stored with masks, K ≤ 1024): AVX2 and FMA micro-kernels of 6 rows × 16 (or 8) columns that keep
//! their 12 accumulators in registers, over the right-hand matrix packed into panels of 16
//! columns (small: K × N), reading the left-hand rows in place. Each output element is one sum
//! in K order, whatever the split over threads. Chosen at run time when the host has AVX2 and
//! FMA (machines here have AVX2, some AVX-512 as well); elsewhere, and for other shapes, the
//! `gemm` crate runs.

/// Rows of a micro-tile.
const MR: usize = 6;

/// Rows per parallel block (16 micro-tiles).
pub(super) const BLOCK_ROWS: usize = 96;

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

/// `op(B)` (`k × n`, element `(i, j)` at `b[i·rsb + j·csb]`) packed into panels of 16 columns
/// (the last may be 8): panel `p` is `k` rows of its width, one after the other.
pub fn pack(b: &[f32], k: usize, n: usize, rsb: usize, csb: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(k * n.next_multiple_of(8));
    let mut j0 = 0;
    while j0 < n {
        let w = width(n - j0);
        for i in 0..k {
            out.extend((j0..j0 + w).map(|j| if j < n { b[i * rsb + j * csb] } else { 0.0 }));
        }
        j0 += w;
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
    debug_assert!(available() && packed.len() >= k * n.next_multiple_of(8));
    debug_assert!(rows == 0 || a.len() >= (rows - 1) * lda + k);
    debug_assert!(rows == 0 || c.len() >= (rows - 1) * ldc + n);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's promise.
    unsafe {
        let mut j0 = 0;
        while j0 < n {
            let w = width(n - j0);
            let valid = w.min(n - j0);
            let panel = packed.as_ptr().add(j0 * k);
            let mut r = 0;
            while r < rows {
                let mr = MR.min(rows - r);
                let (ap, cp) = (a.as_ptr().add(r * lda), c.as_mut_ptr().add(r * ldc + j0));
                match (mr, w) {
                    (6, 16) => avx2::tile::<6, 2>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (6, _) => avx2::tile::<6, 1>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (5, 16) => avx2::tile::<5, 2>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (5, _) => avx2::tile::<5, 1>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (4, 16) => avx2::tile::<4, 2>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (4, _) => avx2::tile::<4, 1>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (3, 16) => avx2::tile::<3, 2>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (3, _) => avx2::tile::<3, 1>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (2, 16) => avx2::tile::<2, 2>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (2, _) => avx2::tile::<2, 1>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (_, 16) => avx2::tile::<1, 2>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                    (_, _) => avx2::tile::<1, 1>(k, ap, lda, panel, cp, ldc, accumulate, valid),
                }
                r += mr;
            }
            j0 += w;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// One tile: `M` rows × `V` vectors of 8 columns, summed over `k` in order.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` holds `M` rows of `k` at pitch `lda`, `b` `k` rows of `8·V`, `c` `M`
    /// rows of `valid` (at most `8·V`) at pitch `ldc`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const M: usize, const V: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        valid: usize,
    ) {
        // SAFETY: within the bounds the caller promises.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); V]; M];
            for i in 0..k {
                let row = b.add(i * 8 * V);
                let mut bv = [_mm256_setzero_ps(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(row.add(8 * v));
                }
                for (m, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(m * lda + i));
                    for v in 0..V {
                        acc[v] = _mm256_fmadd_ps(x, bv[v], acc[v]);
                    }
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
                let mut c = vec![1.0f32; rows * n];
                // SAFETY: available() said so; the buffers hold what the shapes say.
                unsafe { gemm(rows, k, n, &a, k, &packed, &mut c, n, accumulate) };
                for r in 0..rows {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|i| a[r * k + i] * b[i * n + j]).sum::<f32>()
                            + if accumulate { 1.0 } else { 0.0 };
                        assert!((c[r * n + j] - want).abs() <= 1e-4 * want.abs().max(1.0), "{rows}×{k}×{n}");
                    }
                }
            }
        }
    }
}
