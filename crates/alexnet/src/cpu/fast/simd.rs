//! Runs plain loops compiled for the best instruction set this CPU has (AVX-512,
//! AVX2, ...), chosen at run time, so the compiler can vectorise them widely
//! while the binary still runs on any x86-64.

/// Calls `f` inside a function compiled for the CPU's widest vector extension.
///
/// Only code inlined into that function gets its instructions, so `f` should
/// be a closure marked `#[inline(always)]`, calling only `#[inline(always)]`
/// functions of its own: otherwise the closure may be compiled on its own (in
/// another codegen unit, say) for baseline x86-64, SSE2 only, as the pooling
/// and LRN loops once were.
#[inline(always)]
pub fn dispatch<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// The instruction set `dispatch` uses on this machine, for reports.
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2";
        }
    }
    "portable"
}
