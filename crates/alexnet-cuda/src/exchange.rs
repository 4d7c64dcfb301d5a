//! Moving blocks of rows between the towers' devices, and letting two GPUs
//! reach each other's buffers directly.

use alexnet::Rows;
use cudarc::driver::{CudaSlice, sys};

use crate::CudaBackend;

/// Panics unless both blocks of rows have the same shape and lie inside their
/// buffers (a device copy past the end would corrupt other memory).
pub(crate) fn check_rows(
    src: &CudaSlice<f32>,
    src_rows: Rows,
    dst: &CudaSlice<f32>,
    dst_rows: Rows,
    what: &str,
) {
    assert_eq!(
        (src_rows.count, src_rows.len),
        (dst_rows.count, dst_rows.len),
        "rows {what} between blocks of different shapes"
    );
    assert!(
        src_rows.len <= src_rows.stride || src_rows.count <= 1,
        "overlapping source rows"
    );
    assert!(
        dst_rows.len <= dst_rows.stride || dst_rows.count <= 1,
        "overlapping destination rows"
    );
    assert!(
        src_rows.end() <= src.len() && dst_rows.end() <= dst.len(),
        "rows {what} past the end of a buffer"
    );
}

/// Lets each of two backends on different GPUs read and write the buffers
/// the other allocates, where the hardware and the driver allow
/// (`cuDeviceCanAccessPeer`), so that the towers' copies go from GPU to GPU
/// instead of through host memory. Buffers come from each device's
/// stream-ordered memory pool, which context peer access does not cover:
/// access is granted on the pool (`cuMemPoolSetAccess`). Returns whether both
/// directions were enabled; one GPU named twice, GPUs without a peer path, or
/// a driver that refuses (no memory pools) leave the copies staged through the
/// host, as they are without this.
pub fn enable_peer_access(a: &CudaBackend, b: &CudaBackend) -> bool {
    if a.ordinal == b.ordinal {
        return false;
    }
    let (dev_a, dev_b) = (a.ctx.cu_device(), b.ctx.cu_device());
    [(dev_a, dev_b, b.ordinal), (dev_b, dev_a, a.ordinal)]
        .into_iter()
        .all(|(owner, peer, peer_ordinal)| grant_pool_access(owner, peer, peer_ordinal))
}

/// Gives device `peer` (CUDA's `peer_ordinal`) access to `owner`'s memory
/// pool, if it can reach `owner`'s memory at all; whether it now has it.
fn grant_pool_access(owner: sys::CUdevice, peer: sys::CUdevice, peer_ordinal: usize) -> bool {
    let mut can = 0;
    // SAFETY: two valid device handles and an out-parameter.
    let asked = unsafe { sys::cuDeviceCanAccessPeer(&mut can, peer, owner) }.result();
    if asked.is_err() || can == 0 {
        return false;
    }
    let mut pool = std::ptr::null_mut();
    // SAFETY: a valid device handle and an out-parameter; the pool is the one
    // cudarc's stream-ordered allocations come from.
    if unsafe { sys::cuDeviceGetMemPool(&mut pool, owner) }
        .result()
        .is_err()
    {
        return false;
    }
    let access = sys::CUmemAccessDesc {
        location: sys::CUmemLocation {
            type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
            __bindgen_anon_1: sys::CUmemLocation_st__bindgen_ty_1 {
                id: i32::try_from(peer_ordinal).unwrap_or(i32::MAX),
            },
        },
        flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
    };
    // SAFETY: a valid pool and one access descriptor.
    unsafe { sys::cuMemPoolSetAccess(pool, &access, 1) }
        .result()
        .is_ok()
}
