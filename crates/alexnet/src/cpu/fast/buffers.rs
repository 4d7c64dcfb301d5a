//! The buffers the fast convolutions keep between calls (transformed kernels,
//! per-part sums of weight gradients), so that they are allocated once. One set
//! belongs to each backend instance, so two backends (two towers on the CPU)
//! never share or wait for each other's.
//!
//! Each buffer is locked for a whole call, around its parallel loops. A backend
//! runs its layers one at a time, each from outside its thread pool, so a lock is
//! never contended; a convolution started from inside a job of the pool it runs
//! on could deadlock (a waiting thread may take up a second call's job that wants
//! the same lock), which is why the backend enters its pool once per layer.

use std::sync::{Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct ConvBuffers {
    /// F(2x2,3x3) Winograd: the transformed kernels of a forward pass.
    pub(super) winograd_kernels: Mutex<Vec<f32>>,
    /// The rotated kernels of an input gradient (every Winograd variant).
    pub(super) rotated_kernels: Mutex<Vec<f32>>,
    /// F(2x2,3x3) Winograd: per-part weight gradients.
    pub(super) winograd_weight_partials: Mutex<Vec<f32>>,
    /// Strided (conv1) Winograd: its phase planes and partial sums.
    pub(super) strided: Mutex<Vec<f32>>,
    /// 5x5 kernels in 3x3 pieces (conv2): the transformed pieces.
    pub(super) pieces_kernels: Mutex<Vec<f32>>,
    /// 5x5 kernels in 3x3 pieces: per-part weight gradients.
    pub(super) pieces_weight_partials: Mutex<Vec<f32>>,
    /// GEMM convolutions: per-part weight gradients.
    pub(super) gemm_weight_partials: Mutex<Vec<f32>>,
}

/// `buffer`, locked; a poisoned lock (a panic in an earlier call) still holds a
/// usable buffer, since every call sizes and overwrites what it uses.
pub(super) fn lock(buffer: &Mutex<Vec<f32>>) -> MutexGuard<'_, Vec<f32>> {
    buffer.lock().unwrap_or_else(|e| e.into_inner())
}
