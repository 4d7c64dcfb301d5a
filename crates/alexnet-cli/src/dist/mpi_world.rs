//! The communicator over MPI's world: sums and broadcasts by MPI's own
//! collectives (bf16 sums by a user operation over the bf16 bit patterns, as
//! MPI has no bf16 type), and the per-step check-in by point-to-point
//! messages that are polled until the deadline.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use alexnet::cpu::fast::gemm_bf16::bf16_bits;
use alexnet_train::{BackgroundSums, Communicator, External};
use mpi::collective::{SystemOperation, UserOperation};
use mpi::datatype::{DynBuffer, DynBufferMut};
use mpi::environment::Universe;
use mpi::point_to_point::{Destination, Source};
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives, Root};

use super::mpi_sums::SumThread;
use super::watchdog::Watchdog;

/// The tag of check-in messages.
const CHECK_IN: i32 = 0x4158;
/// The exit status of a run stopped for a process that did not check in.
const PEER_LOST: i32 = 125;

/// MPI's world communicator; MPI is finalised when it is dropped.
pub struct Mpi {
    world: SimpleCommunicator,
    /// What a sum sends: MPI reduces into a buffer apart from the one it
    /// reads. Kept from call to call, so that a step's sums allocate nothing.
    send: RefCell<Vec<f32>>,
    timeout: Duration,
    watchdog: Watchdog,
    /// Sums on a thread of their own while this one computes, where MPI
    /// allows calls from several threads.
    sums: Option<SumThread>,
    // Last: finalises MPI after everything above is gone.
    _universe: Universe,
}

impl Mpi {
    /// The world of `universe`, whose MPI allows calls from several threads
    /// where `threads_allowed`.
    pub fn new(
        universe: Universe,
        threads_allowed: bool,
        timeout: Duration,
    ) -> anyhow::Result<Mpi> {
        let world = universe.world();
        let rank = world.rank() as usize;
        let watchdog = Watchdog::start(rank, timeout, "--dist-timeout")?;
        // A stopped process is named by the check-in that follows the
        // backward pass, after `timeout`; sums started during the pass wait
        // longer, so that the check-in is the one to report it.
        let sums = if threads_allowed {
            Some(SumThread::start(world.duplicate(), rank, 2 * timeout)?)
        } else {
            None
        };
        Ok(Mpi {
            world,
            send: RefCell::new(Vec::new()),
            timeout,
            watchdog,
            sums,
            _universe: universe,
        })
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), External> {
        let mut send = self.send.borrow_mut();
        send.clear();
        send.extend_from_slice(values);
        let count = values.len();
        let what = || format!("a sum of {count} values across processes");
        self.watchdog
            .guard(what, || sum_into(&self.world, &send, values));
        Ok(())
    }

    fn all_reduce_sum_bf16(&self, values: &mut [f32]) -> Result<(), External> {
        let count = values.len();
        let what = || format!("a bf16 sum of {count} values across processes");
        self.watchdog
            .guard(what, || sum_bf16_in_place(&self.world, values));
        Ok(())
    }

    fn background_sums(&self) -> Option<&dyn BackgroundSums> {
        self.sums.as_ref().map(|sums| sums as &dyn BackgroundSums)
    }

    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), External> {
        let count = values.len();
        let what = || format!("a broadcast of {count} values from rank {root}");
        let root = self.world.process_at_rank(root as i32);
        self.watchdog
            .guard(what, || root.broadcast_into(&mut *values));
        Ok(())
    }

    fn check_in(&self, step: u64, stop: bool) -> Result<bool, External> {
        let (rank, size) = (self.world.rank(), self.world.size());
        let peers: Vec<i32> = (0..size).filter(|&r| r != rank).collect();
        // The step, and whether this process was asked to stop.
        let said = [step, u64::from(stop)];
        let mut heard = vec![[u64::MAX, 0]; peers.len()];
        let missing = mpi::request::scope(|scope| {
            let mut receives: Vec<_> = peers
                .iter()
                .zip(heard.iter_mut())
                .map(|(&peer, slot)| {
                    let from = self.world.process_at_rank(peer);
                    Some(from.immediate_receive_into_with_tag(scope, &mut slot[..], CHECK_IN))
                })
                .collect();
            // The sends are small: they complete without their receiver.
            receives.extend(peers.iter().map(|&peer| {
                let to = self.world.process_at_rank(peer);
                Some(to.immediate_send_with_tag(scope, &said[..], CHECK_IN))
            }));
            poll_until(&mut receives, Instant::now() + self.timeout);
            let missing: Vec<i32> = peers
                .iter()
                .zip(&receives)
                .filter(|(_, pending)| pending.is_some())
                .map(|(&peer, _)| peer)
                .collect();
            if !missing.is_empty() {
                self.lost(step, &missing);
            }
            missing
        });
        debug_assert!(missing.is_empty());
        if let Some((peer, [at, _])) = peers.iter().zip(&heard).find(|(_, h)| h[0] != step) {
            return Err(format!(
                "rank {rank} is at step {step} but rank {peer} checked in at step {at}: the \
                 processes were not started with the same settings"
            )
            .into());
        }
        Ok(stop || heard.iter().any(|[_, asked]| *asked != 0))
    }
}

impl Mpi {
    /// Replaces `bytes` on every process by those of process `root` (NCCL's id).
    #[cfg(feature = "cuda")]
    pub fn broadcast_bytes(&self, bytes: &mut [u8], root: usize) {
        let count = bytes.len();
        let what = || format!("a broadcast of {count} bytes from rank {root}");
        let root = self.world.process_at_rank(root as i32);
        self.watchdog
            .guard(what, || root.broadcast_into(&mut *bytes));
    }

    /// Ends the whole job: `missing` did not check in at `step` in time.
    fn lost(&self, step: u64, missing: &[i32]) -> ! {
        let names: Vec<String> = missing.iter().map(|r| format!("rank {r}")).collect();
        eprintln!(
            "error: rank {}: {} did not check in for step {step} within {} s (--dist-timeout): \
             stopped, lost or far behind; the last checkpoint is intact, continue with --resume",
            self.world.rank(),
            names.join(", "),
            self.timeout.as_secs()
        );
        self.world.abort(PEER_LOST)
    }
}

/// Polls requests until all are complete or `deadline` passes; the
/// incomplete ones stay `Some`.
fn poll_until<'a, S: Scope<'a>>(requests: &mut [Option<Request<'a, [u64], S>>], deadline: Instant) {
    let mut pause = Duration::from_micros(20);
    loop {
        let mut pending = 0;
        for slot in requests.iter_mut() {
            if let Some(request) = slot.take()
                && let Err(request) = request.test()
            {
                *slot = Some(request);
                pending += 1;
            }
        }
        if pending == 0 || Instant::now() >= deadline {
            return;
        }
        // Processes reach a step within moments of each other, but one may be
        // writing a checkpoint: wait ever longer, up to a millisecond.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// The element-wise sum of every process's `send` into `into`.
pub(super) fn sum_into(world: &SimpleCommunicator, send: &[f32], into: &mut [f32]) {
    world.all_reduce_into(send, into, SystemOperation::sum());
}

/// Replaces `values` by their sum over the processes carried as bf16.
pub(super) fn sum_bf16_in_place(world: &SimpleCommunicator, values: &mut [f32]) {
    let send: Vec<u16> = values.iter().map(|&v| bf16_bits(v)).collect();
    let mut sum = vec![0u16; send.len()];
    let add = UserOperation::commutative(add_bf16);
    world.all_reduce_into(&send[..], &mut sum[..], &add);
    for (v, s) in values.iter_mut().zip(&sum) {
        *v = bf16_value(*s);
    }
}

/// Adds bf16 values (as their bit patterns) into `sum`, rounding each sum to bf16.
fn add_bf16(values: DynBuffer, sum: DynBufferMut) {
    let values = values
        .downcast::<u16>()
        .expect("bf16 sums are of u16 bit patterns");
    let sum = sum
        .downcast::<u16>()
        .expect("bf16 sums are of u16 bit patterns");
    for (s, v) in sum.iter_mut().zip(values) {
        *s = bf16_bits(bf16_value(*s) + bf16_value(*v));
    }
}

fn bf16_value(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}
