//! The communicator over an NCCL group, one process per GPU (under torchrun):
//! sums, broadcasts and the per-step check-in are NCCL collectives, each under
//! the watchdog's deadline. NCCL cannot say which process failed to join a
//! collective, so a lost process is reported by the step it was lost at;
//! torchrun names the process that died.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use alexnet_cuda::nccl::{ID_BYTES, NcclGroup};
use alexnet_cuda::{CudaError, CudaSlice};
use alexnet_train::{BackgroundSums, Communicator, External};

use super::launcher::Place;
use super::watchdog::Watchdog;

pub struct Nccl {
    /// Its calls reuse device buffers, so they need the group mutably.
    group: RefCell<NcclGroup>,
    watchdog: Watchdog,
    /// Sums of host values started in the background, oldest first.
    host_sums: RefCell<VecDeque<Vec<f32>>>,
}

impl Nccl {
    /// Joins the group of `place` on GPU `ordinal` by the id `NCCL_COMM_ID`
    /// encodes (torchrun's processes; every one must join within `timeout`).
    pub fn new(place: Place, ordinal: usize, timeout: Duration) -> anyhow::Result<Nccl> {
        let id = NcclGroup::id()?;
        let met = format!(
            "NCCL_COMM_ID={}",
            std::env::var("NCCL_COMM_ID").unwrap_or_else(|_| "unset".into())
        );
        Nccl::join(place, ordinal, timeout, id, &met)
    }

    /// Joins the group of `place` on GPU `ordinal` by `id`, which rank 0 made
    /// and every process was given as `met` says.
    pub fn join(
        place: Place,
        ordinal: usize,
        timeout: Duration,
        id: [u8; ID_BYTES],
        met: &str,
    ) -> anyhow::Result<Nccl> {
        let watchdog = Watchdog::start(place.rank, timeout, "--dist-timeout")?;
        let what = || format!("joining the NCCL group of {} processes ({met})", place.size);
        let group = watchdog.guard(what, || {
            NcclGroup::join(ordinal, place.rank, place.size, id)
        })?;
        Ok(Nccl {
            group: RefCell::new(group),
            watchdog,
            host_sums: RefCell::new(VecDeque::new()),
        })
    }
}

impl Nccl {
    /// `buffer` as a GPU buffer whose weighted sum is NCCL's mean: every
    /// process holds as many images and the sums are f32. `None` otherwise
    /// (the sum then goes through the host).
    fn meanable<'a>(
        &self,
        buffer: &'a mut dyn Any,
        images: usize,
        all: usize,
        bf16: bool,
    ) -> Option<&'a mut CudaSlice<f32>> {
        let even = images * self.size() == all;
        if bf16 || !even {
            return None;
        }
        buffer.downcast_mut::<CudaSlice<f32>>()
    }

    /// Runs `call` on the group under the watchdog's deadline.
    fn guarded(
        &self,
        what: String,
        call: impl FnOnce(&mut NcclGroup) -> Result<(), CudaError>,
    ) -> Result<(), External> {
        let mut group = self.group.borrow_mut();
        self.watchdog.guard(|| what, || call(&mut group))?;
        Ok(())
    }
}

/// Leaves the group in order at the end of the run (every process has made its
/// last collective by then), flushing what this one still sends; under the
/// deadline, as a peer that died may keep it waiting.
impl Drop for Nccl {
    fn drop(&mut self) {
        let group = self.group.get_mut();
        let closed = self
            .watchdog
            .guard(|| "closing the NCCL group".into(), || group.close());
        if let Err(e) = closed {
            eprintln!("warning: {e}");
        }
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.group.borrow().rank()
    }

    fn size(&self) -> usize {
        self.group.borrow().size()
    }

    /// A group of one under torchrun sums too, so that its steps cost what
    /// they would with more processes (the overhead is measured that way).
    fn shared(&self) -> bool {
        true
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), External> {
        let what = format!("an NCCL sum of {} values across processes", values.len());
        self.guarded(what, |group| group.sum(values))
    }

    fn all_reduce_sum_bf16(&self, values: &mut [f32]) -> Result<(), External> {
        let what = format!(
            "an NCCL bf16 sum of {} values across processes",
            values.len()
        );
        self.guarded(what, |group| group.sum_bf16(values))
    }

    /// On the GPU, in place, when every process holds as many images (the
    /// weighted sum is then NCCL's mean) and the sums are f32; otherwise
    /// through the host.
    fn weighted_sum_on_device(
        &self,
        buffer: &mut dyn Any,
        len: usize,
        images: usize,
        all: usize,
        bf16: bool,
    ) -> Result<bool, External> {
        let Some(buffer) = self.meanable(buffer, images, all, bf16) else {
            return Ok(false);
        };
        let what = format!("an NCCL mean of {len} gradient values across processes");
        self.guarded(what, |group| group.average_in_place(buffer, len))?;
        Ok(true)
    }

    /// Each gradient's mean started on NCCL's stream as the backward pass
    /// hands it over (see [`BackgroundSums`]).
    fn background_sums(&self) -> Option<&dyn BackgroundSums> {
        Some(self)
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), External> {
        let what = format!(
            "an NCCL broadcast of {} values from rank {root}",
            values.len()
        );
        self.guarded(what, |group| group.broadcast(values, root))
    }

    /// The largest step, the smallest (as the largest of `MAX - step`) and
    /// whether any process was asked to stop, in one collective.
    fn check_in(&self, step: u64, stop: bool) -> Result<bool, External> {
        let mut said = [step, u64::MAX - step, u64::from(stop)];
        let what = format!("the check-in of step {step}");
        self.guarded(what, |group| group.max(&mut said))?;
        let (latest, earliest) = (said[0], u64::MAX - said[1]);
        if latest != earliest {
            return Err(format!(
                "rank {} is at step {step} but the processes checked in at steps {earliest} to \
                 {latest}: they were not started with the same settings",
                self.rank()
            )
            .into());
        }
        Ok(said[2] != 0)
    }
}

/// The sums of the backward pass. A GPU's gradients are NCCL means started on
/// NCCL's stream as each is handed over, waited for once after the pass (under
/// the deadline); values in host memory (none, for a net on a GPU) are summed
/// at once and handed back in order.
impl BackgroundSums for Nccl {
    fn start(&self, mut values: Vec<f32>, bf16: bool) -> Result<(), External> {
        if bf16 {
            self.all_reduce_sum_bf16(&mut values)?;
        } else {
            self.all_reduce_sum(&mut values)?;
        }
        self.host_sums.borrow_mut().push_back(values);
        Ok(())
    }

    fn finish(&self) -> Result<Vec<f32>, External> {
        self.host_sums
            .borrow_mut()
            .pop_front()
            .ok_or_else(|| "a sum was waited for that was never started".into())
    }

    fn start_on_device(
        &self,
        buffer: &mut dyn Any,
        len: usize,
        images: usize,
        all: usize,
        bf16: bool,
    ) -> Result<bool, External> {
        let Some(buffer) = self.meanable(buffer, images, all, bf16) else {
            return Ok(false);
        };
        let what = format!("starting an NCCL mean of {len} gradient values across processes");
        self.guarded(what, |group| group.start_average_in_place(buffer, len))?;
        Ok(true)
    }

    fn finish_on_device(&self) -> Result<(), External> {
        let what = "the NCCL means of the backward pass's gradients".to_string();
        self.guarded(what, |group| group.wait())
    }
}
