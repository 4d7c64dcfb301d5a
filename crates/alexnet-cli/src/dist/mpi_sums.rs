//! Sums of gradient buckets on a thread of their own, so that they run while
//! the main thread goes on with the backward pass (as PyTorch's DDP and
//! Horovod do). The thread sums over a duplicate of the world communicator,
//! so its collectives never meet the main thread's (the check-ins, the step's
//! loss, broadcasts), which MPI_THREAD_MULTIPLE lets run meanwhile.

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use alexnet_train::{BackgroundSums, External};
use mpi::topology::SimpleCommunicator;

use super::mpi_world::{sum_bf16_in_place, sum_into};
use super::watchdog::Watchdog;

/// A sum to run: the values, and whether they are carried as bf16.
struct Job {
    values: Vec<f32>,
    bf16: bool,
}

/// The sum thread, fed and emptied in order.
pub struct SumThread {
    jobs: Option<Sender<Job>>,
    done: Receiver<Vec<f32>>,
    thread: Option<JoinHandle<()>>,
}

/// The duplicate communicator, moved to the sum thread.
struct Moved(SimpleCommunicator);

// SAFETY: a `SumThread` is only started when MPI was initialised with
// MPI_THREAD_MULTIPLE, under which MPI may be called from any thread; the
// communicator is used by the sum thread alone, and freed there.
unsafe impl Send for Moved {}

impl Moved {
    fn communicator(&self) -> &SimpleCommunicator {
        &self.0
    }
}

impl SumThread {
    /// Starts the thread of process `rank`, summing over `comm` (a duplicate
    /// of the world), each sum under a deadline of `timeout`.
    pub fn start(
        comm: SimpleCommunicator,
        rank: usize,
        timeout: Duration,
    ) -> std::io::Result<SumThread> {
        let (jobs, queue) = mpsc::channel();
        let (finished, done) = mpsc::channel();
        let watchdog = Watchdog::start(rank, timeout, "twice --dist-timeout")?;
        let comm = Moved(comm);
        let thread = std::thread::Builder::new()
            .name("dist-sums".into())
            .spawn(move || run(comm.communicator(), &watchdog, &queue, &finished))?;
        Ok(SumThread {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }
}

impl BackgroundSums for SumThread {
    fn start(&self, values: Vec<f32>, bf16: bool) -> Result<(), External> {
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(Job { values, bf16 }).map_err(|_| stopped())
    }

    fn finish(&self) -> Result<Vec<f32>, External> {
        self.done.recv().map_err(|_| stopped())
    }
}

impl Drop for SumThread {
    /// Ends the thread once the sums it was given are done (a sum that does
    /// not finish ends the process at its deadline), so that its
    /// communicator is freed before MPI is finalised.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> External {
    "the thread summing gradients across processes has stopped".into()
}

/// The sum thread: sums each job in turn and hands it back.
fn run(
    comm: &SimpleCommunicator,
    watchdog: &Watchdog,
    queue: &Receiver<Job>,
    done: &Sender<Vec<f32>>,
) {
    // Receive buffers: MPI sums into a buffer apart from the one it reads.
    // The values sent become the next receive buffers, so that a run's steps
    // (the same buckets every time) allocate nothing after the first.
    let mut spare: Vec<Vec<f32>> = Vec::new();
    for Job { mut values, bf16 } in queue {
        let count = values.len();
        let summed = if bf16 {
            let what = || format!("a bf16 sum of {count} gradient values across processes");
            watchdog.guard(what, || sum_bf16_in_place(comm, &mut values));
            values
        } else {
            let mut sum = take_buffer(&mut spare, count);
            let what = || format!("a sum of {count} gradient values across processes");
            watchdog.guard(what, || sum_into(comm, &values, &mut sum));
            spare.push(values);
            sum
        };
        if done.send(summed).is_err() {
            return;
        }
    }
}

/// A buffer of `len` values (their contents stale): the spare one of the
/// smallest capacity that holds them, else a new one.
fn take_buffer(spare: &mut Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let best = (0..spare.len())
        .filter(|&i| spare[i].capacity() >= len)
        .min_by_key(|&i| spare[i].capacity());
    let mut buffer = best.map_or_else(Vec::new, |i| spare.swap_remove(i));
    if buffer.len() != len {
        buffer.clear();
        buffer.resize(len, 0.0);
    }
    buffer
}

#[cfg(test)]
mod tests {
    use super::take_buffer;

    #[test]
    fn a_spare_buffer_that_fits_best_is_reused() {
        let mut spare = vec![vec![1.0; 10], vec![2.0; 4], vec![3.0; 6]];
        let buffer = take_buffer(&mut spare, 5);
        assert_eq!((buffer.len(), buffer[0]), (5, 0.0), "the 6 is cut to 5");
        assert_eq!(spare.len(), 2);
        let same = take_buffer(&mut spare, 4);
        assert_eq!(same, [2.0; 4], "the same length is taken as it is");
        let new = take_buffer(&mut spare, 11);
        assert_eq!(new.len(), 11);
        assert_eq!(spare.len(), 1);
    }
}
