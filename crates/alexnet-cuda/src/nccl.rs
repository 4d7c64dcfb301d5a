//! Sums across the processes of a data-parallel run through NVIDIA's NCCL, one
//! process per GPU (cudarc's `nccl` module, opened at run time like the rest of
//! CUDA), on a stream of its own: gradients in the backend's own buffers
//! ([`NcclGroup::average_in_place`]), or values from the host, summed on the GPU
//! and sent back; the group's rank 0 hands out the starting weights by
//! [`NcclGroup::broadcast`].
//!
//! How the processes meet: NCCL's unique id. Under `torchrun` every process sets
//! `NCCL_COMM_ID=host:port` before [`NcclGroup::id`], which then only encodes
//! that address (the same id everywhere), and rank 0 listens there while the
//! group forms. Under `mpirun` rank 0 makes a fresh id and MPI broadcasts its
//! bytes to the others before they [`join`](NcclGroup::join).

use std::sync::Arc;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, ValidAsZeroBits,
};
use cudarc::nccl::result::{self as nccl, NcclError};
use cudarc::nccl::sys::{ncclComm_t, ncclRedOp_t, ncclUniqueId};
use cudarc::nccl::{Id, NcclType};

use crate::error::CudaError;

/// The bytes of an NCCL unique id.
pub const ID_BYTES: usize = 128;

/// NCCL's communicator. cudarc's own aborts it when dropped, which can drop
/// sends still on their way to another machine; this one is closed in order
/// ([`Comm::close`]: finalized, which flushes them, then destroyed) and
/// aborted only when dropped unclosed (an error path).
struct Comm {
    raw: ncclComm_t,
    rank: usize,
    size: usize,
}

impl Comm {
    fn join(rank: usize, size: usize, id: ncclUniqueId) -> Result<Comm, NcclError> {
        let (ranks, me) = (as_int(size), as_int(rank));
        let mut raw = std::ptr::null_mut();
        // SAFETY: an out-parameter for the communicator and an id of the
        // group's 128 bytes; NCCL checks the rank against the size.
        unsafe { nccl::comm_init_rank(&mut raw, ranks, id, me) }?;
        Ok(Comm { raw, rank, size })
    }

    /// Reduces the first `len` values of `buffer` across the group by `op`,
    /// in place, queued on `stream`.
    fn all_reduce_in_place<T: NcclType>(
        &self,
        stream: &CudaStream,
        buffer: &mut impl DevicePtrMut<T>,
        op: ncclRedOp_t,
    ) -> Result<(), NcclError> {
        let len = buffer.len();
        let (ptr, _written) = buffer.device_ptr_mut(stream);
        // SAFETY: `ptr` holds `len` values of `T` on this communicator's GPU;
        // NCCL reads and writes them in place, in stream order.
        unsafe {
            nccl::all_reduce(
                ptr as *const _,
                ptr as *mut _,
                len,
                T::as_nccl_type(),
                op,
                self.raw,
                stream.cu_stream() as _,
            )
        }?;
        Ok(())
    }

    /// Replaces `buffer` on every member by that of member `root`, queued on `stream`.
    fn broadcast_in_place<T: NcclType>(
        &self,
        stream: &CudaStream,
        buffer: &mut impl DevicePtrMut<T>,
        root: usize,
    ) -> Result<(), NcclError> {
        let len = buffer.len();
        let (ptr, _written) = buffer.device_ptr_mut(stream);
        // SAFETY: as in `all_reduce_in_place`.
        unsafe {
            nccl::broadcast(
                ptr as *const _,
                ptr as *mut _,
                len,
                T::as_nccl_type(),
                as_int(root),
                self.raw,
                stream.cu_stream() as _,
            )
        }?;
        Ok(())
    }

    /// Finalizes (waiting for what is still being sent) and destroys the
    /// communicator; afterwards dropping it does nothing.
    fn close(&mut self) -> Result<(), NcclError> {
        if self.raw.is_null() {
            return Ok(());
        }
        // SAFETY: a communicator made by `join`, not yet destroyed.
        unsafe { nccl::comm_finalize(self.raw) }?;
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: finalized above; never used again.
        unsafe { nccl::comm_destroy(raw) }?;
        Ok(())
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: a communicator made by `join`, not yet destroyed. Its
            // error is of no use to a process that is ending the group anyway.
            let _ = unsafe { nccl::comm_abort(self.raw) };
        }
    }
}

/// Ranks and sizes as NCCL's `int`s (the launchers' variables are checked to fit).
fn as_int(value: usize) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// This process's member of an NCCL group, on one GPU.
pub struct NcclGroup {
    comm: Comm,
    stream: Arc<CudaStream>,
    /// Device buffers the host's values are summed in, kept from call to call
    /// (grown to the largest sum so far).
    f32_sums: CudaSlice<f32>,
    bf16_sums: CudaSlice<half::bf16>,
    u64_values: CudaSlice<u64>,
    /// Kept for the bf16 sums' host side.
    bf16_host: Vec<half::bf16>,
}

/// Copies `host` into the start of `device` (grown first if it is shorter),
/// reduces it over the group in place by `op`, and copies the result back.
fn staged<T: NcclType + DeviceRepr + ValidAsZeroBits>(
    comm: &Comm,
    stream: &Arc<CudaStream>,
    device: &mut CudaSlice<T>,
    host: &mut [T],
    op: ncclRedOp_t,
    what: &str,
) -> Result<(), CudaError> {
    let n = host.len();
    if device.len() < n {
        *device = stream
            .alloc_zeros(n)
            .map_err(driver_failed("allocating NCCL's buffer"))?;
    }
    let mut values = device.slice_mut(..n);
    stream
        .memcpy_htod(host, &mut values)
        .map_err(driver_failed("copying values to the GPU"))?;
    comm.all_reduce_in_place(stream, &mut values, op)
        .map_err(|e| nccl_failed(what, &e))?;
    stream
        .memcpy_dtoh(&values, host)
        .map_err(driver_failed("copying a result back from the GPU"))?;
    stream
        .synchronize()
        .map_err(driver_failed("waiting for NCCL's stream"))
}

/// Opens `libnccl.so` by name and closes it again: cudarc panics when it is
/// missing, and PyTorch's wheels ship it only as `libnccl.so.2`, a name cudarc
/// does not look for.
fn probe_library() -> Result<(), CudaError> {
    // SAFETY: the probe only dlopens candidate file names and drops the handle.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    Err(CudaError::LibraryMissing {
        library: "libnccl.so",
        what: "NCCL, NVIDIA's collective communications",
        hint: "put a folder holding libnccl.so on LD_LIBRARY_PATH (PyTorch's wheels ship \
               site-packages/nvidia/nccl/lib/libnccl.so.2: make a libnccl.so link to it, as \
               tools/gpu_env.sh does)",
    })
}

fn nccl_failed(what: &str, error: &NcclError) -> CudaError {
    // SAFETY: NCCL returns a static string for every result code.
    let message = unsafe {
        std::ffi::CStr::from_ptr(cudarc::nccl::sys::ncclGetErrorString(error.0))
            .to_string_lossy()
            .into_owned()
    };
    CudaError::Call {
        what: what.to_string(),
        message: format!("NCCL: {message}"),
    }
}

fn driver_failed(what: &str) -> impl Fn(cudarc::driver::DriverError) -> CudaError + '_ {
    move |e| CudaError::call(what, e)
}

impl NcclGroup {
    /// The id the group meets by: encodes `NCCL_COMM_ID` when it is set (the
    /// same on every process), otherwise a fresh one that rank 0 must share.
    pub fn id() -> Result<[u8; ID_BYTES], CudaError> {
        probe_library()?;
        let id = Id::new().map_err(|e| nccl_failed("making an NCCL id", &e))?;
        Ok(id.internal().map(|c| c as u8))
    }

    /// Joins the group of `size` processes as `rank`, on GPU `ordinal`; blocks
    /// until every process has joined.
    pub fn join(
        ordinal: usize,
        rank: usize,
        size: usize,
        id: [u8; ID_BYTES],
    ) -> Result<NcclGroup, CudaError> {
        probe_library()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice {
            ordinal,
            message: e.to_string(),
        })?;
        let stream = ctx
            .new_stream()
            .map_err(driver_failed("creating NCCL's stream"))?;
        let id = ncclUniqueId {
            internal: id.map(|b| b as std::ffi::c_char),
        };
        let comm = Comm::join(rank, size, id).map_err(|e| {
            nccl_failed(
                &format!("joining the NCCL group as rank {rank} of {size}"),
                &e,
            )
        })?;
        let alloc = driver_failed("allocating NCCL's sum buffer");
        Ok(NcclGroup {
            f32_sums: stream.alloc_zeros(1).map_err(&alloc)?,
            bf16_sums: stream.alloc_zeros(1).map_err(&alloc)?,
            u64_values: stream.alloc_zeros(1).map_err(&alloc)?,
            bf16_host: Vec::new(),
            comm,
            stream,
        })
    }

    /// Replaces `values` by their element-wise sum over the group.
    pub fn sum(&mut self, values: &mut [f32]) -> Result<(), CudaError> {
        let sums = &mut self.f32_sums;
        staged(
            &self.comm,
            &self.stream,
            sums,
            values,
            ncclRedOp_t::ncclSum,
            "an NCCL sum",
        )
    }

    /// Replaces the first `len` values of `buffer`, a buffer of this GPU (a
    /// backend's gradient), by their mean over the group, in place. Work
    /// queued on other streams that writes `buffer` must have finished.
    pub fn average_in_place(
        &mut self,
        buffer: &mut CudaSlice<f32>,
        len: usize,
    ) -> Result<(), CudaError> {
        let mut values = buffer.slice_mut(..len);
        self.comm
            .all_reduce_in_place(&self.stream, &mut values, ncclRedOp_t::ncclAvg)
            .map_err(|e| nccl_failed("an NCCL mean", &e))?;
        self.synchronize()
    }

    /// Starts [`average_in_place`](NcclGroup::average_in_place) without
    /// waiting for it: NCCL's stream first waits (an event) for the work already
    /// queued on the stream `buffer` belongs to (the backward pass that wrote
    /// it), so the caller's stream goes on with the rest of the pass while NCCL
    /// sums. Nothing may touch `buffer` until [`wait`](NcclGroup::wait)
    /// returns.
    pub fn start_average_in_place(
        &mut self,
        buffer: &mut CudaSlice<f32>,
        len: usize,
    ) -> Result<(), CudaError> {
        let written = buffer
            .stream()
            .record_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .map_err(driver_failed(
                "recording the end of a gradient's computation",
            ))?;
        self.stream
            .wait(&written)
            .map_err(driver_failed("ordering NCCL's stream after the gradient"))?;
        let mut values = buffer.slice_mut(..len);
        self.comm
            .all_reduce_in_place(&self.stream, &mut values, ncclRedOp_t::ncclAvg)
            .map_err(|e| nccl_failed("starting an NCCL mean", &e))
    }

    /// Waits for every sum started on NCCL's stream.
    pub fn wait(&self) -> Result<(), CudaError> {
        self.synchronize()
    }

    /// [`sum`](NcclGroup::sum) carried as bf16: each process's values are
    /// rounded to bf16 (to nearest, ties to even) and NCCL sums in bf16.
    pub fn sum_bf16(&mut self, values: &mut [f32]) -> Result<(), CudaError> {
        self.bf16_host.clear();
        self.bf16_host
            .extend(values.iter().map(|&v| half::bf16::from_f32(v)));
        let (sums, host) = (&mut self.bf16_sums, &mut self.bf16_host);
        staged(
            &self.comm,
            &self.stream,
            sums,
            host,
            ncclRedOp_t::ncclSum,
            "an NCCL bf16 sum",
        )?;
        for (v, s) in values.iter_mut().zip(&self.bf16_host) {
            *v = s.to_f32();
        }
        Ok(())
    }

    /// Replaces `values` by the element-wise largest over the group (exact:
    /// the check-in's step numbers and stop flags).
    pub fn max(&mut self, values: &mut [u64]) -> Result<(), CudaError> {
        let sums = &mut self.u64_values;
        staged(
            &self.comm,
            &self.stream,
            sums,
            values,
            ncclRedOp_t::ncclMax,
            "an NCCL maximum",
        )
    }

    /// Replaces `values` on every process by those of process `root`.
    pub fn broadcast(&mut self, values: &mut [f32], root: usize) -> Result<(), CudaError> {
        let mut device = self
            .stream
            .clone_htod(values)
            .map_err(driver_failed("copying values to the GPU"))?;
        self.comm
            .broadcast_in_place(&self.stream, &mut device, root)
            .map_err(|e| nccl_failed(&format!("an NCCL broadcast from rank {root}"), &e))?;
        self.stream
            .memcpy_dtoh(&device, values)
            .map_err(driver_failed("copying a broadcast back from the GPU"))?;
        self.synchronize()
    }

    pub fn rank(&self) -> usize {
        self.comm.rank
    }

    pub fn size(&self) -> usize {
        self.comm.size
    }

    /// Leaves the group in order, once every process is done with it: what
    /// this one still sends is delivered first. Dropped without it (an error
    /// path), the group is aborted.
    pub fn close(&mut self) -> Result<(), CudaError> {
        self.synchronize()?;
        self.comm
            .close()
            .map_err(|e| nccl_failed("closing the NCCL group", &e))
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(driver_failed("waiting for NCCL's stream"))
    }
}
