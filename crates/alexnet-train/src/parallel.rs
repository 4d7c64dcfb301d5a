//! Data parallelism inside a [`Trainer`](crate::Trainer): every process trains
//! its part of each batch (the loader reads only those images), and before the
//! update the loss gradients are summed across the processes and divided by the
//! whole batch, so a process holding fewer images weighs less. Weight decay and
//! momentum are applied after that, identically everywhere, so every process
//! keeps the same weights; rank 0 hands out the starting ones.

use alexnet::Model;
use alexnet_data::Part;

use crate::comm::{Communicator, weighted_sum_on_host};
use crate::error::{Error, Result};
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
        if let Some(grad) = net.param_grad_mut(index)
            && comm
                .weighted_sum_in_place(grad, images, all, bf16)
                .map_err(Error::External)?
        {
            continue;
        }
        let mut grad = net.param_grad(index);
        weighted_sum_on_host(comm, &mut grad, images, all, bf16).map_err(Error::External)?;
        net.set_param_grad(index, &grad)?;
    }
    Ok(())
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
