//! A communicator for tests of data-parallel code without processes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::comm::{BackgroundSums, Communicator, round_slice_to_bf16};
use crate::error::External;

/// What a [`Mirrored`] communicator was asked to do, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// A background sum of this many values started.
    Start(usize),
    CheckIn,
    Finish,
}

/// Rank 0 of two processes whose twin holds exactly its values: every sum
/// doubles them. With `background`, it also sums in the background (doubling
/// at the start, handing back at the finish). Logs its check-ins and
/// background sums.
#[derive(Default)]
pub struct Mirrored {
    background: bool,
    calls: Arc<Mutex<Vec<Call>>>,
    running: Mutex<VecDeque<Vec<f32>>>,
}

impl Mirrored {
    /// The communicator, and the log of its calls.
    pub fn new(background: bool) -> (Mirrored, Arc<Mutex<Vec<Call>>>) {
        let comm = Mirrored {
            background,
            ..Mirrored::default()
        };
        let calls = comm.calls.clone();
        (comm, calls)
    }

    fn log(&self, call: Call) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

impl Communicator for Mirrored {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        2
    }
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), External> {
        values.iter_mut().for_each(|v| *v *= 2.0);
        Ok(())
    }
    fn all_reduce_sum_bf16(&self, values: &mut [f32]) -> Result<(), External> {
        round_slice_to_bf16(values);
        self.all_reduce_sum(values)
    }
    fn background_sums(&self) -> Option<&dyn BackgroundSums> {
        self.background.then_some(self as &dyn BackgroundSums)
    }
    fn broadcast(&self, _values: &mut [f32], _root: usize) -> Result<(), External> {
        Ok(())
    }
    fn check_in(&self, _step: u64, stop: bool) -> Result<bool, External> {
        self.log(Call::CheckIn);
        Ok(stop)
    }
}

impl BackgroundSums for Mirrored {
    fn start(&self, mut values: Vec<f32>, bf16: bool) -> Result<(), External> {
        self.log(Call::Start(values.len()));
        if bf16 {
            self.all_reduce_sum_bf16(&mut values)?;
        } else {
            self.all_reduce_sum(&mut values)?;
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.push_back(values);
        Ok(())
    }
    fn finish(&self) -> Result<Vec<f32>, External> {
        self.log(Call::Finish);
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .pop_front()
            .ok_or_else(|| "no background sum was started".into())
    }
}
