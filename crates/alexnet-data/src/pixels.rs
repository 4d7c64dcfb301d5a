//! Interleaved RGB (as a JPEG decoder writes it) to the CHW planes the loader
//! and the backends read: a readable loop, and on x86-64 an SSSE3 one that
//! sorts 16 pixels at a time with byte shuffles, chosen at run time. About a
//! tenth of a stored JPEG image's loading time went to the loop.

/// Writes the `plane` pixels of `rgb` (`r g b r g b ...`) to `out` as three
/// planes of `plane` bytes each: red, green, blue.
pub(crate) fn deinterleave(rgb: &[u8], out: &mut [u8], plane: usize) {
    assert!(
        rgb.len() >= 3 * plane && out.len() >= 3 * plane,
        "deinterleave: {plane} pixels need 3 x {plane} bytes in and out"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: the CPU has SSSE3, checked just above.
        return unsafe { x86::deinterleave_ssse3(rgb, out, plane) };
    }
    deinterleave_reference(rgb, out, plane, 0);
}

/// The loop, from pixel `from` on.
fn deinterleave_reference(rgb: &[u8], out: &mut [u8], plane: usize, from: usize) {
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for i in from..plane {
        r[i] = rgb[3 * i];
        g[i] = rgb[3 * i + 1];
        b[i] = rgb[3 * i + 2];
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_or_si128, _mm_shuffle_epi8, _mm_storeu_si128,
    };

    /// For channel `c` and the `k`-th 16 bytes of 16 interleaved pixels, the
    /// shuffle that moves pixel `i`'s channel-`c` byte (byte `3i + c` of the 48,
    /// so byte `3i + c - 16k` of that register) to place `i`; 0x80 (zero) where
    /// it lies in another register.
    const fn shuffle(c: usize, k: usize) -> [u8; 16] {
        let mut mask = [0x80u8; 16];
        let mut i = 0;
        while i < 16 {
            let at = 3 * i + c;
            if at >= 16 * k && at < 16 * (k + 1) {
                mask[i] = (at - 16 * k) as u8;
            }
            i += 1;
        }
        mask
    }

    const SHUFFLES: [[[u8; 16]; 3]; 3] = {
        let mut all = [[[0u8; 16]; 3]; 3];
        let mut c = 0;
        while c < 3 {
            let mut k = 0;
            while k < 3 {
                all[c][k] = shuffle(c, k);
                k += 1;
            }
            c += 1;
        }
        all
    };

    /// [`super::deinterleave`] 16 pixels at a time, the rest by the loop.
    ///
    /// # Safety
    /// The CPU must have SSSE3.
    #[target_feature(enable = "ssse3")]
    pub(super) unsafe fn deinterleave_ssse3(rgb: &[u8], out: &mut [u8], plane: usize) {
        let blocks = plane / 16;
        let load = |bytes: &[u8]| {
            // SAFETY: 16 bytes in bounds (the slice is exactly 16 long);
            // unaligned loads are allowed.
            unsafe { _mm_loadu_si128(bytes.as_ptr().cast::<__m128i>()) }
        };
        let masks = SHUFFLES.map(|per_channel| per_channel.map(|m| load(&m)));
        for block in 0..blocks {
            let src = &rgb[48 * block..][..48];
            let parts = [load(&src[..16]), load(&src[16..32]), load(&src[32..])];
            for (c, mask) in masks.iter().enumerate() {
                let picked = _mm_or_si128(
                    _mm_or_si128(
                        _mm_shuffle_epi8(parts[0], mask[0]),
                        _mm_shuffle_epi8(parts[1], mask[1]),
                    ),
                    _mm_shuffle_epi8(parts[2], mask[2]),
                );
                let dst = &mut out[c * plane + 16 * block..][..16];
                // SAFETY: 16 bytes in bounds (the slice is exactly 16 long).
                unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast::<__m128i>(), picked) };
            }
        }
        super::deinterleave_reference(rgb, out, plane, 16 * blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_makes_planes() {
        let rgb = [1, 2, 3, 4, 5, 6];
        let mut out = [0; 6];
        deinterleave_reference(&rgb, &mut out, 2, 0);
        assert_eq!(out, [1, 4, 2, 5, 3, 6]);
    }

    /// Every length around the 16-pixel blocks, and a plane of a stored image,
    /// against the loop.
    #[test]
    fn the_fast_path_matches_the_reference() {
        #[cfg(target_arch = "x86_64")]
        if !std::arch::is_x86_feature_detected!("ssse3") {
            println!("skipped: this CPU has no SSSE3 (the loop is all there is)");
        }
        let mut state = 7u32;
        for plane in (0..70).chain([256 * 256]) {
            let rgb: Vec<u8> = (0..3 * plane)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as u8
                })
                .collect();
            let mut fast = vec![0xAA; 3 * plane];
            let mut slow = vec![0x55; 3 * plane];
            deinterleave(&rgb, &mut fast, plane);
            deinterleave_reference(&rgb, &mut slow, plane, 0);
            assert_eq!(fast, slow, "{plane} pixels");
        }
    }
}
