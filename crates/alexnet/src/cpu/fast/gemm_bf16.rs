//! Matrix products for mixed precision: both operands rounded to bf16 (round to
//! nearest even), every product and sum in f32.
//!
//! The operands are packed into blocks of bf16 *pairs*: one `u32` holds the
//! values at `k = 2p` (low half) and `k = 2p + 1` (high half) of one row of `A`
//! or one column of `B`. That is the layout of AVX512-BF16's `VDPBF16PS`, which
//! multiplies 16 such pairs of `B` by one broadcast pair of `A` and adds both
//! products into 16 f32 sums: twice the multiply-adds of an f32 FMA per
//! instruction. The loops follow the usual blocked GEMM: a `KC`-pair slice of `B`
//! packed once and kept in cache, `MC` rows of `A` packed per slice, and a
//! `MR x NR` tile of `C` held in registers by the micro-kernel.
//!
//! Two micro-kernels read the same packed blocks: [`Bf16Kernel::Avx512Bf16`] and
//! [`Bf16Kernel::Portable`] (plain f32 arithmetic on the unpacked bf16 values, for
//! CPUs without the instruction, and the fast kernel's test oracle). Because the
//! product of two bf16 values is exact in f32, the two differ only in the order
//! and rounding of the sums.

use std::cell::Cell;

use rayon::prelude::*;

use super::gemm::Layout;
use super::simd::dispatch;
use crate::precision::Bf16Kernel;

/// Rows of `C` per micro-tile (broadcast pairs of `A`).
const MR: usize = 12;
/// Columns of `C` per micro-tile: two 16-lane vectors of `B` pairs.
const NR: usize = 32;
/// `k` pairs per packed slice: a `KC x NR` panel of `B` (24 KiB) stays in L1.
const KC: usize = 192;
/// Rows of `A` packed at a time: `MC x KC` pairs (108 KiB) stay in L2.
const MC: usize = 144;
/// Columns of `B` packed at a time (a `KC x NC` slice of 2.3 MiB, from L3).
const NC: usize = 3072;

/// The bf16 bit pattern nearest to `x` (ties to even); NaN stays NaN.
pub fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Keep a quiet NaN: truncation alone could clear every mantissa bit.
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// `x` rounded to the nearest bf16 value.
pub fn round_to_bf16(x: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(x)) << 16)
}

fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(bf16_bits(lo)) | (u32::from(bf16_bits(hi)) << 16)
}

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize, layout: Layout) -> Self {
        let (row_stride, col_stride) = match layout {
            Layout::Normal => (cols, 1),
            Layout::Transposed => (1, rows),
        };
        View {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// Rows `first..first + count` (the data before them cut off).
    fn rows(self, first: usize, count: usize) -> Self {
        View {
            data: &self.data[first * self.row_stride..],
            rows: count,
            ..self
        }
    }

    /// The same matrix with rows and columns swapped (no copy).
    fn transposed(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// The element, or zero outside the matrix (the padding of partial tiles).
    fn get(&self, r: usize, c: usize) -> f32 {
        if r < self.rows && c < self.cols {
            self.data[r * self.row_stride + c * self.col_stride]
        } else {
            0.0
        }
    }
}

thread_local! {
    /// Packing buffers per thread, grown once and reused (like [`super::scratch`]).
    static PACKED: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// `c[m x n] (+)= bf16(a)[m x k] * bf16(b)[k x n]` with f32 sums; arguments as
/// [`super::gemm::matmul`]. `threads > 1` splits the rows of `c` among threads.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_layout: Layout,
    b: &[f32],
    b_layout: Layout,
    c: &mut [f32],
    accumulate: bool,
    threads: usize,
    kernel: Bf16Kernel,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "matmul operand too short"
    );
    assert!(
        kernel.is_available(),
        "bf16 kernel not available on this CPU"
    );
    if m == 0 || n == 0 {
        return;
    }
    let a = View::new(a, m, k, a_layout);
    let b = View::new(b, k, n, b_layout);
    let c = &mut c[..m * n];
    let parts = threads.min(m.div_ceil(MR)).max(1);
    if parts == 1 {
        return product(a, b, c, accumulate, kernel);
    }
    let rows_per_part = m.div_ceil(parts).next_multiple_of(MR);
    c.par_chunks_mut(rows_per_part * n)
        .enumerate()
        .for_each(|(part, c)| {
            let first = part * rows_per_part;
            product(a.rows(first, c.len() / n), b, c, accumulate, kernel);
        });
}

/// One thread's product into the whole of `c` (`a.rows x b.cols`, row-major).
fn product(a: View, b: View, c: &mut [f32], accumulate: bool, kernel: Bf16Kernel) {
    let (m, n, pairs) = (a.rows, b.cols, a.cols.div_ceil(2));
    if pairs == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let a_len = MC.next_multiple_of(MR) * KC;
    let b_len = NC.next_multiple_of(NR) * KC;
    let mut packed = PACKED.with(Cell::take);
    if packed.len() < a_len + b_len {
        packed.resize(a_len + b_len, 0);
    }
    let (a_pack, b_pack) = packed.split_at_mut(a_len);
    for col0 in (0..n).step_by(NC) {
        let nc = NC.min(n - col0);
        for pair0 in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - pair0);
            pack_b(b, pair0, kc, col0, nc, b_pack, kernel);
            // The first slice overwrites `c` unless the caller accumulates.
            let add_to_c = accumulate || pair0 > 0;
            for row0 in (0..m).step_by(MC) {
                let mc = MC.min(m - row0);
                pack_a(a, row0, mc, pair0, kc, a_pack, kernel);
                for panel_col in (0..nc).step_by(NR) {
                    let b_panel = &b_pack[panel_col * kc..][..kc * NR];
                    for panel_row in (0..mc).step_by(MR) {
                        let a_panel = &a_pack[panel_row * kc..][..kc * MR];
                        let tile = Tile {
                            first: (row0 + panel_row) * n + col0 + panel_col,
                            stride: n,
                            rows: MR.min(mc - panel_row),
                            cols: NR.min(nc - panel_col),
                            add_to_c,
                        };
                        micro_kernel(kernel, kc, a_panel, b_panel, c, tile);
                    }
                }
            }
        }
    }
    PACKED.with(|slot| {
        let other = slot.take();
        slot.set(if other.len() > packed.len() {
            other
        } else {
            packed
        });
    });
}

/// Packs rows `row0..row0 + mc`, pairs `pair0..pair0 + kc` of `a` into panels of
/// `MR` rows: panel `r` holds `kc` groups of `MR` pairs.
fn pack_a(
    a: View,
    row0: usize,
    mc: usize,
    pair0: usize,
    kc: usize,
    dst: &mut [u32],
    kernel: Bf16Kernel,
) {
    pack_panels::<MR>(a, row0, mc, pair0, kc, dst, kernel)
}

/// Packs pairs `pair0..pair0 + kc`, columns `col0..col0 + nc` of `b` into panels
/// of `NR` columns: panel `j` holds `kc` rows of `NR` pairs.
fn pack_b(
    b: View,
    pair0: usize,
    kc: usize,
    col0: usize,
    nc: usize,
    dst: &mut [u32],
    kernel: Bf16Kernel,
) {
    // A column of `B` is a row of `B^T`: the same packing as `A`'s rows.
    pack_panels::<NR>(b.transposed(), col0, nc, pair0, kc, dst, kernel)
}

/// Packs `count` rows ("lines") of `src` from `line0`, pairs `pair0..pair0 + kc`,
/// into panels of `W` lines, each panel `kc` groups of `W` pairs; lines past the
/// end of `src` and the missing half of an odd last pair are zero.
fn pack_panels<const W: usize>(
    src: View,
    line0: usize,
    count: usize,
    pair0: usize,
    kc: usize,
    dst: &mut [u32],
    kernel: Bf16Kernel,
) {
    for (panel, first) in (0..count).step_by(W).enumerate() {
        let panel_dst = &mut dst[panel * kc * W..][..kc * W];
        let lines = W.min(count - first);
        let panel_src = Panel {
            line0: line0 + first,
            lines,
            pair0,
            kc,
        };
        match kernel {
            #[cfg(target_arch = "x86_64")]
            Bf16Kernel::Avx512Bf16 => {
                // SAFETY: this kernel is only used where the CPU has AVX512-BF16
                // (checked by `matmul`); the function bounds its own accesses.
                unsafe { avx512::pack_panel::<W>(src, panel_src, panel_dst) }
            }
            _ => pack_panel_portable::<W>(src, panel_src, panel_dst),
        }
    }
}

/// One panel to pack: `lines` lines from `line0` (at most the panel's width), pairs `pair0..pair0 + kc`.
#[derive(Clone, Copy)]
struct Panel {
    line0: usize,
    lines: usize,
    pair0: usize,
    kc: usize,
}

fn pack_panel_portable<const W: usize>(src: View, panel: Panel, dst: &mut [u32]) {
    for line in 0..W {
        for p in 0..panel.kc {
            let k = 2 * (panel.pair0 + p);
            dst[p * W + line] = if line < panel.lines {
                let r = panel.line0 + line;
                pair(src.get(r, k), src.get(r, k + 1))
            } else {
                0
            };
        }
    }
}

/// Where a micro-tile lands in `c`, and how much of it is inside the matrix.
#[derive(Clone, Copy)]
struct Tile {
    first: usize,
    stride: usize,
    rows: usize,
    cols: usize,
    add_to_c: bool,
}

fn micro_kernel(kernel: Bf16Kernel, kc: usize, a: &[u32], b: &[u32], c: &mut [f32], tile: Tile) {
    // The tile's last element must be inside `c`: the fast kernel writes through a pointer.
    assert!(tile.rows >= 1 && tile.cols >= 1 && tile.cols <= NR && tile.rows <= MR);
    assert!(tile.first + (tile.rows - 1) * tile.stride + tile.cols <= c.len());
    assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 => {
            // SAFETY: `matmul` checked that the CPU has AVX512-BF16, and the
            // assertions above bound every access of the kernel.
            unsafe { avx512::kernel(kc, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), tile) }
        }
        _ => dispatch(|| portable_kernel(kc, a, b, c, tile)),
    }
}

/// The low and high bf16 of a pair as f32.
fn unpack(pair: u32) -> (f32, f32) {
    (
        f32::from_bits(pair << 16),
        f32::from_bits(pair & 0xffff_0000),
    )
}

#[inline(always)]
fn portable_kernel(kc: usize, a: &[u32], b: &[u32], c: &mut [f32], tile: Tile) {
    let mut sums = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let b_row: [(f32, f32); NR] = std::array::from_fn(|j| unpack(b[p * NR + j]));
        for (i, sum) in sums.iter_mut().enumerate() {
            let (a_lo, a_hi) = unpack(a[p * MR + i]);
            for (s, (b_lo, b_hi)) in sum.iter_mut().zip(b_row) {
                *s += a_lo * b_lo + a_hi * b_hi;
            }
        }
    }
    for (i, sum) in sums.iter().enumerate().take(tile.rows) {
        let row = &mut c[tile.first + i * tile.stride..][..tile.cols];
        for (out, s) in row.iter_mut().zip(sum) {
            *out = if tile.add_to_c { *out + s } else { *s };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR, Panel, Tile, View};
    use std::arch::x86_64::*;

    /// The first `count` (at most 16) lanes.
    fn lanes(count: usize) -> __mmask16 {
        if count >= 16 {
            0xffff
        } else {
            (1u16 << count) - 1
        }
    }

    /// Packs one panel (see `pack_panels`), converting 32 values per instruction
    /// (`VCVTNE2PS2BF16`, round to nearest even; it flushes f32 subnormals to zero,
    /// which the portable packing keeps).
    ///
    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_panel<const W: usize>(src: View, panel: Panel, dst: &mut [u32]) {
        let Panel {
            line0,
            lines,
            pair0,
            kc,
        } = panel;
        assert!(dst.len() >= kc * W && lines <= W && W <= 32);
        let k0 = 2 * pair0;
        // Values of each line present in this slice (an odd `k` leaves the last pair half empty).
        let k_count = src.cols.min(k0 + 2 * kc).saturating_sub(k0);
        if lines == 0 || k_count == 0 {
            dst[..kc * W].fill(0);
            return;
        }
        let last = (line0 + lines - 1) * src.row_stride + (k0 + k_count - 1) * src.col_stride;
        assert!(last < src.data.len(), "bf16 packing outside its operand");
        let base = src.data.as_ptr();
        if src.row_stride == 1 {
            // Lines contiguous: rows `k` and `k + 1` hold the pair halves of every
            // line side by side; interleave them 16 lines at a time.
            let interleave = interleave_index();
            for p in 0..kc {
                let k = k0 + 2 * p;
                for half in 0..W.div_ceil(16) {
                    let first = half * 16;
                    let mask = lanes(lines.saturating_sub(first));
                    let odd_mask = if k + 1 < k0 + k_count { mask } else { 0 };
                    let even_mask = if k < k0 + k_count { mask } else { 0 };
                    // SAFETY: masked lanes stay within the checked `last` element.
                    unsafe {
                        // Wrapping: a fully masked row may lie past the operand's end.
                        let at = base.wrapping_add(k * src.col_stride + line0 + first);
                        let even = _mm512_maskz_loadu_ps(even_mask, at);
                        let odd = _mm512_maskz_loadu_ps(odd_mask, at.wrapping_add(src.col_stride));
                        let halves: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(odd, even));
                        let pairs = _mm512_permutexvar_epi16(interleave, halves);
                        let out = dst.as_mut_ptr().add(p * W + first);
                        _mm512_mask_storeu_epi32(out.cast(), lanes(W - first), pairs);
                    }
                }
            }
        } else {
            debug_assert_eq!(src.col_stride, 1, "one stride of a packed operand is 1");
            // Pairs contiguous along each line: convert 16 lines 32 values at a
            // time (each a row of 16 pairs in order), transpose the 16x16 block of
            // pairs, and store its rows: one group of 16 lines' pairs for each `p`.
            for first_line in (0..W).step_by(16) {
                let store_lanes = lanes(W - first_line);
                for p16 in (0..kc).step_by(16) {
                    let left = k_count.saturating_sub(2 * p16);
                    let rows: [__m512i; 16] = std::array::from_fn(|l| {
                        let line = first_line + l;
                        if line >= lines || left == 0 {
                            return _mm512_setzero_si512();
                        }
                        // SAFETY: masked lanes stay within the line's `k_count` values,
                        // the last of which was checked against the operand's length.
                        unsafe {
                            let at =
                                base.wrapping_add((line0 + line) * src.row_stride + k0 + 2 * p16);
                            let lo = _mm512_maskz_loadu_ps(lanes(left), at);
                            let hi_lanes = lanes(left.saturating_sub(16));
                            let hi = _mm512_maskz_loadu_ps(hi_lanes, at.wrapping_add(16));
                            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
                        }
                    });
                    let columns = transpose16(rows);
                    for (t, column) in columns.iter().enumerate().take(kc - p16) {
                        // SAFETY: `p16 + t < kc` and `first_line + 16` lanes are masked to `W`.
                        unsafe {
                            let out = dst.as_mut_ptr().add((p16 + t) * W + first_line);
                            _mm512_mask_storeu_epi32(out.cast(), store_lanes, *column);
                        }
                    }
                }
            }
        }
    }

    /// The transpose of a 16x16 block of 32-bit values held as 16 rows: in-lane
    /// interleaves of 32- then 64-bit elements gather each column's values in
    /// groups of four rows per 128-bit lane, and two rounds of lane shuffles put
    /// the four groups of each column together.
    #[target_feature(enable = "avx512f")]
    pub fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // t[2i], t[2i+1]: rows 2i and 2i+1 interleaved (columns 4L, 4L+1 / 4L+2, 4L+3).
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
        }
        // u[4g + j]: lane L holds rows 4g..4g+3 of column 4L + j.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let b = 4 * g;
            u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
            u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
            u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
            u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
        }
        let mut out = [_mm512_setzero_si512(); 16];
        for j in 0..4 {
            // Lanes 0, 2 (then 1, 3) of the groups of rows 0-3 and 4-7, and of 8-11 and 12-15.
            let even_low = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
            let odd_low = _mm512_shuffle_i32x4::<0xdd>(u[j], u[4 + j]);
            let even_high = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
            let odd_high = _mm512_shuffle_i32x4::<0xdd>(u[8 + j], u[12 + j]);
            out[j] = _mm512_shuffle_i32x4::<0x88>(even_low, even_high);
            out[8 + j] = _mm512_shuffle_i32x4::<0xdd>(even_low, even_high);
            out[4 + j] = _mm512_shuffle_i32x4::<0x88>(odd_low, odd_high);
            out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(odd_low, odd_high);
        }
        out
    }

    /// Word indices that turn [16 even halves | 16 odd halves] into 16 (even, odd) pairs.
    #[target_feature(enable = "avx512f")]
    fn interleave_index() -> __m512i {
        let index: [u16; 32] = std::array::from_fn(|i| (i / 2 + (i % 2) * 16) as u16);
        // SAFETY: reads the 64 bytes of `index`.
        unsafe { _mm512_loadu_si512(index.as_ptr().cast()) }
    }

    /// The `MR x NR` tile as 24 vector sums, one `VDPBF16PS` per sum and pair.
    ///
    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512-BF16; `a` must hold `kc * MR`
    /// pairs, `b` `kc * NR`, and `c` the tile described by `tile`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn kernel(kc: usize, a: *const u32, b: *const u32, c: *mut f32, tile: Tile) {
        let mut sums = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc {
            // SAFETY (this block and the stores below): bounds as the caller guarantees.
            unsafe {
                let b_panel = b.add(p * NR);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b_panel.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b_panel.add(16).cast()));
                let a_pairs = a.add(p * MR);
                for (i, sum) in sums.iter_mut().enumerate() {
                    let a_pair: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a_pairs.add(i) as i32));
                    sum[0] = _mm512_dpbf16_ps(sum[0], a_pair, b0);
                    sum[1] = _mm512_dpbf16_ps(sum[1], a_pair, b1);
                }
            }
        }
        let mask0: __mmask16 = if tile.cols >= 16 {
            0xffff
        } else {
            (1u16 << tile.cols) - 1
        };
        let rest = tile.cols.saturating_sub(16);
        let mask1: __mmask16 = if rest >= 16 {
            0xffff
        } else {
            (1u16 << rest) - 1
        };
        for (i, sum) in sums.iter().enumerate() {
            if i >= tile.rows {
                break;
            }
            // SAFETY: masked accesses touch only the tile's `cols` columns of row `i`.
            unsafe {
                let row = c.add(tile.first + i * tile.stride);
                let (mut v0, mut v1) = (sum[0], sum[1]);
                if tile.add_to_c {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(mask0, row));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(mask1, row.add(16)));
                }
                _mm512_mask_storeu_ps(row, mask0, v0);
                _mm512_mask_storeu_ps(row.add(16), mask1, v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(round_to_bf16(1.0), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.0.
        assert_eq!(round_to_bf16(1.0 + 1.0 / 256.0), 1.0);
        // Just above halfway rounds up.
        assert_eq!(
            round_to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 4096.0),
            1.0 + 1.0 / 128.0
        );
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
        assert_eq!(round_to_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round_to_bf16(-2.5), -2.5);
        assert!(round_to_bf16(f32::NAN).is_nan());
        assert_eq!(round_to_bf16(f32::INFINITY), f32::INFINITY);
        assert_eq!(round_to_bf16(f32::MAX), f32::INFINITY);
    }

    fn values(count: usize, seed: u32) -> Vec<f32> {
        // Not representable in bf16, so that rounding shows.
        (0..count)
            .map(|i| {
                (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0
                    + 1e-4
            })
            .collect()
    }

    fn kernels() -> Vec<Bf16Kernel> {
        [Bf16Kernel::Portable, Bf16Kernel::Avx512Bf16]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    #[test]
    fn products_equal_f64_sums_of_rounded_operands() {
        use Layout::{Normal, Transposed};
        // Shapes around the tile and block edges: MR = 12, NR = 32, KC = 192 pairs, MC = 144.
        let shapes = [
            (1, 1, 1),
            (13, 33, 3),
            (12, 32, 385),
            (150, 70, 17),
            (5, 3100, 4),
        ];
        for kernel in kernels() {
            for &(m, n, k) in &shapes {
                for (a_layout, b_layout) in [
                    (Normal, Normal),
                    (Normal, Transposed),
                    (Transposed, Normal),
                    (Transposed, Transposed),
                ] {
                    for (accumulate, threads) in [(false, 1), (true, 2)] {
                        let (a, b) = (values(m * k, 1), values(k * n, 2));
                        let c0 = values(m * n, 3);
                        let mut c = c0.clone();
                        matmul(
                            m, n, k, &a, a_layout, &b, b_layout, &mut c, accumulate, threads,
                            kernel,
                        );
                        let at = |i: usize, p: usize| match a_layout {
                            Normal => a[i * k + p],
                            Transposed => a[p * m + i],
                        };
                        let bt = |p: usize, j: usize| match b_layout {
                            Normal => b[p * n + j],
                            Transposed => b[j * k + p],
                        };
                        for i in 0..m {
                            for j in 0..n {
                                let (mut sum, mut size) = (0.0f64, 0.0f64);
                                for p in 0..k {
                                    let t = f64::from(round_to_bf16(at(i, p)))
                                        * f64::from(round_to_bf16(bt(p, j)));
                                    sum += t;
                                    size += t.abs();
                                }
                                if accumulate {
                                    sum += f64::from(c0[i * n + j]);
                                    size += f64::from(c0[i * n + j]).abs();
                                }
                                let error = (f64::from(c[i * n + j]) - sum).abs();
                                assert!(
                                    error <= 1e-6 * size + 1e-30,
                                    "{} {m}x{n}x{k} {a_layout:?}/{b_layout:?} at ({i},{j}): {} vs {sum}",
                                    kernel.name(),
                                    c[i * n + j]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn operands_are_really_rounded() {
        // 1 + 2^-10 rounds to 1 in bf16, so the bf16 product of these is exactly 4.
        let a = [1.0 + 1.0 / 1024.0; 4];
        let b = [1.0f32; 4];
        for kernel in kernels() {
            let mut c = [0.0f32; 1];
            matmul(
                1,
                1,
                4,
                &a,
                Layout::Normal,
                &b,
                Layout::Normal,
                &mut c,
                false,
                1,
                kernel,
            );
            assert_eq!(c[0], 4.0, "{}", kernel.name());
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn transpose16_transposes() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("NOT TESTED: transpose16 (this CPU lacks AVX-512)");
            return;
        }
        use std::arch::x86_64::*;
        let values: [[u32; 16]; 16] =
            std::array::from_fn(|r| std::array::from_fn(|c| (r * 16 + c) as u32));
        // SAFETY: AVX-512F was detected; loads and stores touch the arrays' 64 bytes.
        let transposed = unsafe {
            let rows: [__m512i; 16] =
                std::array::from_fn(|r| _mm512_loadu_si512(values[r].as_ptr().cast()));
            let columns = avx512::transpose16(rows);
            let mut out = [[0u32; 16]; 16];
            for (row, column) in out.iter_mut().zip(columns) {
                _mm512_storeu_si512(row.as_mut_ptr().cast(), column);
            }
            out
        };
        for r in 0..16 {
            for c in 0..16 {
                assert_eq!(transposed[c][r], values[r][c], "({r}, {c})");
            }
        }
    }
}
