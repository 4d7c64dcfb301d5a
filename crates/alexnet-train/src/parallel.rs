//! Data parallelism inside a [`Trainer`](crate::Trainer): every process trains
//! its part of each batch (the loader reads only those images), and before the
//! update the loss gradients are summed across the processes and divided by the
//! whole batch, so a process holding fewer images weighs less. Weight decay and
//! momentum are applied after that, identically everywhere, so every process
//! keeps the same weights; rank 0 hands out the starting ones.

use alexnet::{BufferMut, Model};
use alexnet_data::Part;

use crate::comm::{BackgroundSums, Communicator, weighted_sum_on_host};
use crate::error::{Error, External, Result};
use crate::evaluate::Evaluation;

/// This process's part of every batch.
pub fn part_of(comm: &dyn Communicator) -> Part {
    Part {
        index: comm.rank(),
        parts: comm.size(),
    }
}

/// Images the net of any process must hold for its part of a batch of `batch`.
pub fn largest_part(batch: usize, processes: usize) -> usize {
    batch.div_ceil(processes.max(1))
}

/// Refuses a batch with fewer images than processes (a process would train nothing).
pub fn check_batch(batch: usize, comm: &dyn Communicator) -> Result<()> {
    if batch < comm.size() {
        return Err(Error::Setting(format!(
            "--batch {batch} is smaller than the {} processes: every process needs at least one \
             image of each batch",
            comm.size()
        )));
    }
    Ok(())
}

/// Refuses a step whose processes held `all` images of a batch of `batch`:
/// gradient buckets weigh each process's gradient by the whole batch before
/// its sum starts, and every batch of a shared run is whole.
pub fn check_whole_batch(all: usize, batch: usize) -> Result<()> {
    if all != batch {
        return Err(Error::Run(format!(
            "the processes held {all} images of a batch of {batch}: they were not started with \
             the same settings"
        )));
    }
    Ok(())
}

/// Replaces every process's weights and velocities by rank 0's.
pub fn broadcast_weights(net: &mut dyn Model, comm: &dyn Communicator) -> Result<()> {
    for index in 0..net.plan().params.len() {
        let mut values = net.param_values(index);
        comm.broadcast(&mut values, 0).map_err(Error::External)?;
        net.set_param_values(index, &values)?;
        let mut velocity = net.param_velocity(index);
        comm.broadcast(&mut velocity, 0).map_err(Error::External)?;
        net.set_param_velocity(index, &velocity)?;
    }
    Ok(())
}

/// A step's loss, top-1 errors and images summed over the processes: the
/// whole batch's mean loss, its errors and its images.
pub fn reduce_step(
    comm: &dyn Communicator,
    loss: f32,
    errors: usize,
    images: usize,
) -> Result<(f32, usize, usize)> {
    let mut totals = [loss * images as f32, errors as f32, images as f32];
    comm.all_reduce_sum(&mut totals).map_err(Error::External)?;
    let all = totals[2] as usize;
    Ok((totals[0] / all.max(1) as f32, totals[1] as usize, all))
}

/// Every parameter's gradient (each process's the mean over its `images`)
/// replaced by the mean over the `all` images of the whole batch: scaled by
/// `images / all`, then summed across the processes, in the backend's own
/// buffers where the communicator reaches them (host memory for MPI, GPU
/// memory for NCCL), else copied through the host.
pub fn reduce_gradients(
    net: &mut dyn Model,
    comm: &dyn Communicator,
    images: usize,
    all: usize,
    bf16: bool,
) -> Result<()> {
    // A device's gradients are complete before another stream sums them.
    net.synchronize();
    for index in 0..net.plan().params.len() {
        reduce_gradient(net, comm, index, (images, all), bf16)?;
    }
    Ok(())
}

/// One parameter's gradient, of `images` of the batch's `all`, weighted and
/// summed across the processes as [`reduce_gradients`] says.
fn reduce_gradient(
    net: &mut dyn Model,
    comm: &dyn Communicator,
    index: usize,
    (images, all): (usize, usize),
    bf16: bool,
) -> Result<()> {
    if let Some(grad) = net.param_grad_mut(index)
        && comm
            .weighted_sum_in_place(grad, images, all, bf16)
            .map_err(Error::External)?
    {
        return Ok(());
    }
    let mut grad = net.param_grad(index);
    weighted_sum_on_host(comm, &mut grad, images, all, bf16).map_err(Error::External)?;
    net.set_param_grad(index, &grad)?;
    Ok(())
}

/// Gradients summed in buckets while the backward pass runs, as a
/// communicator with [`BackgroundSums`] allows: each gradient the pass hands
/// over is weighted as [`reduce_gradients`] weighs it and copied into the
/// bucket being filled; a bucket whose next gradient would take it past its
/// size starts its sum at once, so the sums of the fully connected layers
/// (the last layers, ready first, 96% of the paper's net's bytes) run while
/// the convolutions' gradients are computed. A gradient the pass hands over in
/// a device's memory (a GPU's) has its sum started there at once, where the
/// communicator can ([`BackgroundSums::start_on_device`]: NCCL's, on its own
/// stream), one tensor at a time; any other (or one the pass does not hand
/// over) is summed after the pass, as [`reduce_gradients`] does. Buffers are
/// kept from step to step.
pub struct GradientBuckets {
    /// Values a bucket holds before its sum starts (at least one gradient).
    capacity: usize,
    /// This process's images of the batch, and the whole batch's.
    images: (usize, usize),
    bf16: bool,
    filling: Bucket,
    /// Buckets whose sums were started, oldest first.
    running: std::collections::VecDeque<Bucket>,
    /// Buffers of finished buckets, for the next step's (the first bucket's last).
    spare: Vec<Vec<f32>>,
    /// Which parameters went into a bucket this step.
    handed: Vec<bool>,
    /// The first error of a sum started during the pass.
    failed: Option<External>,
}

/// Gradients copied back to back: `(parameter index, length)` and the values.
#[derive(Default)]
struct Bucket {
    params: Vec<(usize, usize)>,
    values: Vec<f32>,
}

impl GradientBuckets {
    /// Buckets of `bytes` of f32 values (at least one value).
    pub fn new(bytes: usize) -> GradientBuckets {
        GradientBuckets {
            capacity: (bytes / 4).max(1),
            images: (1, 1),
            bf16: false,
            filling: Bucket::default(),
            running: Default::default(),
            spare: Vec::new(),
            handed: Vec::new(),
            failed: None,
        }
    }

    /// Prepares for a backward pass over `images` of a batch of `all` images
    /// of a net with `params` parameter tensors.
    pub fn begin(&mut self, params: usize, images: usize, all: usize, bf16: bool) {
        self.images = (images, all);
        self.bf16 = bf16;
        self.handed.clear();
        self.handed.resize(params, false);
        self.failed = None;
    }

    /// Takes in a gradient the backward pass has finished.
    pub fn ready(&mut self, sums: &dyn BackgroundSums, index: usize, grad: BufferMut<'_>) {
        let values = match grad {
            BufferMut::Host(values) => values,
            BufferMut::Device { buffer, len } => {
                // After a failed start this process's collectives no longer
                // match the others': start no more (the step ends in error).
                if self.failed.is_some() {
                    return;
                }
                let (images, all) = self.images;
                match sums.start_on_device(buffer, len, images, all, self.bf16) {
                    Ok(started) => self.handed[index] = started,
                    Err(error) => {
                        self.failed.get_or_insert(error);
                    }
                }
                return;
            }
        };
        let fill = self.filling.values.len();
        if fill > 0 && fill + values.len() > self.capacity {
            self.start(sums);
        }
        if self.filling.values.is_empty() {
            self.filling.values = self.spare.pop().unwrap_or_default();
            self.filling.values.clear();
        }
        let weight = self.images.0 as f32 / self.images.1.max(1) as f32;
        self.filling.params.push((index, values.len()));
        self.filling
            .values
            .extend(values.iter().map(|g| g * weight));
        self.handed[index] = true;
        if self.filling.values.len() >= self.capacity {
            self.start(sums);
        }
    }

    /// Starts the sum of the bucket being filled.
    fn start(&mut self, sums: &dyn BackgroundSums) {
        let mut bucket = std::mem::take(&mut self.filling);
        let values = std::mem::take(&mut bucket.values);
        if let Err(error) = sums.start(values, self.bf16) {
            self.failed.get_or_insert(error);
        }
        self.running.push_back(bucket);
    }

    /// At the end of the backward pass: starts the last bucket.
    pub fn end_pass(&mut self, sums: &dyn BackgroundSums) {
        if !self.filling.params.is_empty() {
            self.start(sums);
        }
    }

    /// After the backward pass and [`end_pass`](GradientBuckets::end_pass):
    /// sums what was not handed over, then waits for every bucket and puts
    /// its sums back into the net's gradients.
    pub fn finish(
        &mut self,
        net: &mut dyn Model,
        comm: &dyn Communicator,
        sums: &dyn BackgroundSums,
    ) -> Result<()> {
        self.end_pass(sums);
        // The device sums first: they were started first, and the fallback
        // below may read the same device's buffers.
        let on_device = sums.finish_on_device();
        if let Some(error) = self.failed.take() {
            return Err(Error::External(error));
        }
        on_device.map_err(Error::External)?;
        let rest: Vec<usize> = (0..self.handed.len())
            .filter(|&i| !self.handed[i])
            .collect();
        if !rest.is_empty() {
            net.synchronize();
            for index in rest {
                reduce_gradient(net, comm, index, self.images, self.bf16)?;
            }
        }
        let mut finished = Vec::with_capacity(self.running.len());
        while let Some(bucket) = self.running.pop_front() {
            let mut values = sums.finish().map_err(Error::External)?;
            self.put_back(net, &bucket, &values)?;
            // The first step's buckets grew as they filled.
            values.shrink_to_fit();
            finished.push(values);
        }
        // Popped first to last by the next step's buckets, so that each gets
        // the buffer of its own size (the buckets are the same every step).
        self.spare.extend(finished.into_iter().rev());
        Ok(())
    }

    /// After a step that ends in an error: waits for the device sums started,
    /// which write the net's own buffers (their error, if any, is not the one
    /// to report). Host buckets are left: they write only their own buffers,
    /// and waiting for them could wait on the process that failed.
    pub fn abandon(&self, sums: &dyn BackgroundSums) {
        let _ = sums.finish_on_device();
    }

    /// Copies a bucket's sums into the gradients it holds.
    fn put_back(&self, net: &mut dyn Model, bucket: &Bucket, values: &[f32]) -> Result<()> {
        let expected: usize = bucket.params.iter().map(|(_, len)| len).sum();
        if values.len() != expected {
            return Err(Error::External(
                format!(
                    "a sum of gradients came back with {} values instead of {expected}",
                    values.len()
                )
                .into(),
            ));
        }
        let mut offset = 0;
        for &(index, len) in &bucket.params {
            let sum = &values[offset..offset + len];
            match net.param_grad_mut(index) {
                Some(BufferMut::Host(grad)) => grad.copy_from_slice(sum),
                _ => net.set_param_grad(index, sum)?,
            }
            offset += len;
        }
        Ok(())
    }
}

/// An evaluation of each process's part of the images, summed into that of
/// all of them (counts are exact in f32 up to 2^24 images).
pub fn reduce_evaluation(comm: &dyn Communicator, part: Evaluation) -> Result<Evaluation> {
    if !comm.shared() {
        return Ok(part);
    }
    let mut counts = vec![
        part.images as f32,
        part.top1_errors as f32,
        part.top5_errors as f32,
        part.loss_sum as f32,
    ];
    if let Some(confusion) = &part.confusion {
        counts.extend(confusion.iter().flatten().map(|&c| c as f32));
    }
    comm.all_reduce_sum(&mut counts).map_err(Error::External)?;
    let classes = part.confusion.as_ref().map_or(0, Vec::len);
    let confusion = part.confusion.as_ref().map(|_| {
        counts[4..]
            .chunks_exact(classes.max(1))
            .map(|row| row.iter().map(|&c| c as u64).collect())
            .collect()
    });
    Ok(Evaluation {
        images: counts[0] as usize,
        top1_errors: counts[1] as usize,
        top5_errors: counts[2] as usize,
        loss_sum: f64::from(counts[3]),
        confusion,
    })
}

#[cfg(test)]
mod tests {
    use alexnet::rng::Rng;
    use alexnet::testing::paper_mini;
    use alexnet::{Cpu, Mode, Model, Network};

    use std::any::Any;
    use std::cell::RefCell;

    use alexnet::BufferMut;

    use super::GradientBuckets;
    use crate::External;
    use crate::comm::{BackgroundSums, SingleProcess};
    use crate::testing::Mirrored;

    /// Sums that run on a "device" whose buffers are `Vec<f32>`: each started
    /// sum is recorded and stands for two processes holding the same values
    /// (weighted, then doubled); `accept` false declines every one.
    struct DeviceSums {
        accept: bool,
        /// Fails the start of this many-th sum (counting from 1), if any.
        fail_at: Option<usize>,
        tried: RefCell<usize>,
        started: RefCell<Vec<(usize, usize, usize)>>,
        finished: RefCell<usize>,
    }

    impl BackgroundSums for DeviceSums {
        fn start(&self, _values: Vec<f32>, _bf16: bool) -> Result<(), External> {
            panic!("no gradient is in host memory here")
        }
        fn finish(&self) -> Result<Vec<f32>, External> {
            panic!("no bucket was started")
        }
        fn start_on_device(
            &self,
            buffer: &mut dyn Any,
            len: usize,
            images: usize,
            all: usize,
            _bf16: bool,
        ) -> Result<bool, External> {
            if !self.accept {
                return Ok(false);
            }
            *self.tried.borrow_mut() += 1;
            if self.fail_at == Some(*self.tried.borrow()) {
                return Err("the stand-in's start failed".into());
            }
            let values = buffer.downcast_mut::<Vec<f32>>().expect("a test buffer");
            let weight = images as f32 / all as f32;
            values[..len].iter_mut().for_each(|v| *v *= 2.0 * weight);
            self.started.borrow_mut().push((len, images, all));
            Ok(true)
        }
        fn finish_on_device(&self) -> Result<(), External> {
            *self.finished.borrow_mut() += 1;
            Ok(())
        }
    }

    fn device_sums(accept: bool) -> DeviceSums {
        DeviceSums {
            accept,
            fail_at: None,
            tried: RefCell::new(0),
            started: RefCell::new(Vec::new()),
            finished: RefCell::new(0),
        }
    }

    /// Gradients handed over in a device's buffers start their sums there, in
    /// the order handed over, and are waited for once, at the end; nothing is
    /// summed again after the pass.
    #[test]
    fn device_gradients_start_their_sums_on_the_device_as_they_are_handed_over() {
        let mut net = Network::new(Cpu::new(), &paper_mini(), 2, 3).unwrap();
        let params = net.plan().params.len();
        for index in 0..params {
            let len = net.param_grad(index).len();
            net.set_param_grad(index, &vec![3.0; len]).unwrap();
        }
        let before: Vec<Vec<f32>> = (0..params).map(|i| net.param_grad(i)).collect();
        let sums = device_sums(true);
        let mut buckets = GradientBuckets::new(64 << 10);
        buckets.begin(params, 1, 4, false);
        let mut device: Vec<Vec<f32>> = (0..params).map(|i| vec![1.0; i + 3]).collect();
        for index in (0..params).rev() {
            let len = index + 2;
            let buffer: &mut dyn Any = &mut device[index];
            buckets.ready(&sums, index, BufferMut::Device { buffer, len });
        }
        assert_eq!(
            *sums.finished.borrow(),
            0,
            "waited for before the pass ended"
        );
        buckets.finish(&mut net, &SingleProcess, &sums).unwrap();
        assert_eq!(*sums.finished.borrow(), 1);
        let started = sums.started.borrow();
        let expected: Vec<_> = (0..params).rev().map(|i| (i + 2, 1, 4)).collect();
        assert_eq!(*started, expected);
        for (index, values) in device.iter().enumerate() {
            // The buffer handed over is the one summed (2 x 1/4).
            assert!(values[..index + 2].iter().all(|&v| v == 0.5), "{values:?}");
        }
        let after: Vec<Vec<f32>> = (0..params).map(|i| net.param_grad(i)).collect();
        assert_eq!(after, before, "the net's own gradients were summed again");
    }

    /// A start that fails ends the step in that error, after the sums already
    /// started were waited for; no further sum is started (this process's
    /// collectives would no longer match the others').
    #[test]
    fn a_failed_start_on_the_device_ends_the_step_after_waiting_for_the_others() {
        let mut net = Network::new(Cpu::new(), &paper_mini(), 2, 3).unwrap();
        let params = net.plan().params.len();
        assert!(params > 3);
        let sums = DeviceSums {
            fail_at: Some(2),
            ..device_sums(true)
        };
        let mut buckets = GradientBuckets::new(64 << 10);
        buckets.begin(params, 1, 4, false);
        let mut device = vec![1.0f32; 8];
        for index in (0..params).rev() {
            let buffer: &mut dyn Any = &mut device;
            buckets.ready(&sums, index, BufferMut::Device { buffer, len: 8 });
        }
        assert_eq!(
            *sums.tried.borrow(),
            2,
            "sums were started after the failure"
        );
        let error = buckets.finish(&mut net, &SingleProcess, &sums).unwrap_err();
        assert!(
            error.to_string().contains("the stand-in's start failed"),
            "{error}"
        );
        assert_eq!(
            *sums.finished.borrow(),
            1,
            "the started sum was not waited for"
        );
    }

    /// A communicator that cannot sum a device's buffer leaves the gradient to
    /// the sums after the pass (through the net, as without buckets).
    #[test]
    fn device_gradients_it_cannot_sum_are_summed_after_the_pass() {
        let mut net = Network::new(Cpu::new(), &paper_mini(), 2, 3).unwrap();
        let params = net.plan().params.len();
        for index in 0..params {
            let len = net.param_grad(index).len();
            net.set_param_grad(index, &vec![3.0; len]).unwrap();
        }
        let sums = device_sums(false);
        let mut buckets = GradientBuckets::new(64 << 10);
        buckets.begin(params, 1, 4, false);
        let mut device = vec![1.0f32; 8];
        for index in (0..params).rev() {
            let buffer: &mut dyn Any = &mut device;
            buckets.ready(&sums, index, BufferMut::Device { buffer, len: 8 });
        }
        buckets.finish(&mut net, &SingleProcess, &sums).unwrap();
        assert!(sums.started.borrow().is_empty());
        assert_eq!(device, vec![1.0; 8], "a declined buffer was changed");
        for index in 0..params {
            // One process alone: its gradient weighted by 1/4 of the batch.
            let grad = net.param_grad(index);
            assert!(
                grad.iter().all(|&g| g == 0.75),
                "parameter {index}: {grad:?}"
            );
        }
    }

    /// Steps of the same net fill the same buckets, so each bucket takes back
    /// the buffer it had: the buffers hold one copy of the gradients, and
    /// after the first step none is allocated again.
    #[test]
    fn each_bucket_reuses_a_buffer_of_its_own_size() {
        let spec = paper_mini();
        let mut net = Network::new(Cpu::new(), &spec, 2, 3).unwrap();
        let mut rng = Rng::new(4);
        let images: Vec<f32> = (0..2 * net.plan().input_shape().len())
            .map(|_| rng.normal() as f32)
            .collect();
        let (comm, _) = Mirrored::new(true);
        let sums = &comm;
        let params = net.plan().params.len();
        let gradient_values: usize = net.plan().params.iter().map(|p| p.len()).sum();
        let mut buckets = GradientBuckets::new(64 << 10);
        let mut addresses = Vec::new();
        for _ in 0..5 {
            net.set_input(&images).unwrap();
            net.forward(Mode::Train);
            buckets.begin(params, 2, 4, false);
            net.backward_each(&[0, 1], &mut |i, g| buckets.ready(sums, i, g))
                .unwrap();
            buckets.end_pass(sums);
            buckets.finish(&mut net, &comm, sums).unwrap();
            let mut now: Vec<usize> = buckets.spare.iter().map(|b| b.as_ptr() as usize).collect();
            now.sort_unstable();
            addresses.push(now);
        }
        let sizes: Vec<usize> = buckets.spare.iter().map(Vec::len).collect();
        let capacities: Vec<usize> = buckets.spare.iter().map(Vec::capacity).collect();
        assert!(sizes.len() > 3, "{sizes:?}");
        assert_eq!(capacities, sizes);
        assert_eq!(sizes.iter().sum::<usize>(), gradient_values);
        assert!(
            addresses[1..].iter().all(|a| *a == addresses[1]),
            "{addresses:?}"
        );
    }
}
