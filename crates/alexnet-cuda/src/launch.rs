//! What every kernel launch shares: launch shapes (a thread per value, per
//! plane value, a block per row), the argument groups of the LRN and pooling
//! kernels, checked launches, and grown scratch buffers.

use std::sync::{Arc, Mutex, MutexGuard};

use alexnet::layers::{LrnGeometry, PoolGeometry};
use cudarc::driver::{CudaSlice, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg, sys};

use crate::CudaBackend;
use crate::kernels::BLOCK;

/// One thread per value, in blocks of [`BLOCK`].
pub(crate) fn per_value(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(BLOCK as usize);
    LaunchConfig {
        grid_dim: (
            u32::try_from(blocks).expect("a launch of at most 2^32 blocks"),
            1,
            1,
        ),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per value of each of `planes` planes (a channel of an image) of
/// `plane_len` values, as the LRN and max-pooling kernels expect: `blockIdx.x`
/// is the plane, `blockIdx.y * blockDim.x + threadIdx.x` the position within it.
/// Blocks are cut down to the plane, in whole warps, where it holds fewer than
/// [`BLOCK`] values, so that small planes (13x13 after conv2's pooling) leave
/// fewer threads idle.
pub(crate) fn per_plane_value(planes: usize, plane_len: usize) -> LaunchConfig {
    let threads = plane_len.next_multiple_of(32).clamp(32, BLOCK as usize);
    let blocks_per_plane = plane_len.div_ceil(threads);
    LaunchConfig {
        grid_dim: (
            u32::try_from(planes)
                .ok()
                .filter(|&p| p <= i32::MAX as u32)
                .expect("a launch of at most 2^31 - 1 planes"),
            u32::try_from(blocks_per_plane)
                .ok()
                .filter(|&b| b <= 65535)
                .expect("planes of at most 65535 blocks of values"),
            1,
        ),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A null device pointer (a pointer argument is its 64-bit address), for a
/// kernel's optional output left out.
pub(crate) const NULL_POINTER: u64 = 0;

/// One block of [`BLOCK`] threads per row (or channel).
pub(crate) fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (u32::try_from(rows).expect("at most 2^32 rows"), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The buffer in `slot`, replaced by a larger one first when it holds fewer than `len` values.
pub(crate) fn grow<'a, T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<&'a mut CudaSlice<T>, cudarc::driver::DriverError> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None;
        *slot = Some(stream.alloc_zeros::<T>(len.max(1))?);
    }
    Ok(slot.as_mut().expect("filled above"))
}

/// Events that only order work (no timestamps, which cost time to record).
pub(crate) const NO_TIMING: Option<sys::CUevent_flags> =
    Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING);

pub(crate) fn int(v: usize) -> i32 {
    i32::try_from(v).expect("layer sizes fit 32 bits")
}

/// The arguments every LRN kernel takes after its buffers (then the plane's
/// length, or the pooling's [`PoolArgs`] for the fused kernels).
pub(crate) struct LrnArgs {
    pub(crate) channels: i32,
    pub(crate) per_group: i32,
    pub(crate) size: i32,
    pub(crate) alpha: f32,
    pub(crate) beta: f32,
    pub(crate) k: f32,
}

impl LrnArgs {
    pub(crate) fn new(g: &LrnGeometry) -> LrnArgs {
        LrnArgs {
            channels: int(g.shape.channels),
            per_group: int(g.channels_per_group()),
            size: int(g.size),
            alpha: g.alpha,
            beta: g.beta,
            k: g.k,
        }
    }

    pub(crate) fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(&self.channels)
            .arg(&self.per_group)
            .arg(&self.size)
            .arg(&self.alpha)
            .arg(&self.beta)
            .arg(&self.k);
    }
}

/// The geometry arguments every pooling kernel takes after its buffers.
pub(crate) struct PoolArgs {
    pub(crate) in_h: i32,
    pub(crate) in_w: i32,
    pub(crate) out_h: i32,
    pub(crate) out_w: i32,
    pub(crate) size: i32,
    pub(crate) stride: i32,
}

impl PoolArgs {
    pub(crate) fn new(g: &PoolGeometry) -> PoolArgs {
        PoolArgs {
            in_h: int(g.input.height),
            in_w: int(g.input.width),
            out_h: int(g.output.height),
            out_w: int(g.output.width),
            size: int(g.size),
            stride: int(g.stride),
        }
    }

    pub(crate) fn push<'a>(&'a self, args: &mut LaunchArgs<'a>) {
        args.arg(&self.in_h)
            .arg(&self.in_w)
            .arg(&self.out_h)
            .arg(&self.out_w)
            .arg(&self.size)
            .arg(&self.stride);
    }
}

impl CudaBackend {
    pub(crate) fn launch(&self, mut args: LaunchArgs<'_>, config: LaunchConfig, kernel: &str) {
        // SAFETY: every kernel's arguments are pushed in the order and with the
        // types its CUDA C signature declares, and the lengths passed never exceed
        // the buffers (the engine sizes buffers for `n` images of each layer).
        if let Err(e) = unsafe { args.launch(config) } {
            self.fail(&format!("launching kernel {kernel}"), e);
        }
    }

    pub(crate) fn lock<'a, T>(&self, mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
        // A panic while holding the lock leaves nothing half-updated on the host
        // that a later call could trip over, so a poisoned lock is still usable.
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
