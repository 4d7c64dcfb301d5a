//! The inference worker: one thread that owns the network and runs every
//! forward pass, gathering the requests of all connections into batches.
//!
//! A batch starts with the oldest waiting request and takes the requests behind
//! it, whole, until it holds `max_batch` images or the oldest has waited
//! `max_delay` (requests already queued are still taken after that). A request
//! that would not fit waits for the next batch, so a request's images always
//! run together and come back in their order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use alexnet::plan::Plan;
use alexnet::{Mode, Model};
use tokio::sync::oneshot;

use super::metrics::Metrics;

/// One request's images, prepared as the net's input, and where to answer.
pub struct Job {
    /// `images` inputs, one after the other.
    pub inputs: Vec<f32>,
    pub images: usize,
    /// When the request joined the queue: the batching delay counts from here.
    pub queued: Instant,
    pub reply: oneshot::Sender<Result<Answer, String>>,
}

/// What the net computed for one request: a row per image.
pub struct Answer {
    pub logits: Vec<f32>,
    pub features: Vec<f32>,
    /// How many images (of all requests) ran in the same forward pass.
    pub batch_images: usize,
    pub forward_seconds: f64,
}

/// How requests are gathered.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    pub max_batch: usize,
    pub max_delay: Duration,
}

/// The worker's end of the queue, and what it runs.
pub struct Worker {
    pub net: Box<dyn Model>,
    /// The plan index of the layer whose outputs are the features.
    pub feature_layer: usize,
    pub batching: Batching,
    pub metrics: Arc<Metrics>,
    /// Set once the net has run a warm-up batch: the server is ready.
    pub ready: Arc<AtomicBool>,
}

/// What the worker tells of its net once it has built it.
pub struct Built {
    pub plan: Plan,
    pub feature_layer: usize,
    pub device: String,
}

/// Starts the worker on a thread of its own, where `make` builds the net (a
/// net stays on the thread that made it) and its feature layer; it ends when
/// every sender is gone.
pub fn spawn<F>(
    make: F,
    batching: Batching,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    capacity: usize,
) -> anyhow::Result<(SyncSender<Job>, Built)>
where
    F: FnOnce() -> anyhow::Result<(Box<dyn Model>, usize)> + Send + 'static,
{
    let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
    let (built_sender, built) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || {
            let (net, feature_layer) = match make() {
                Ok(made) => made,
                Err(e) => {
                    let _ = built_sender.send(Err(e));
                    return;
                }
            };
            let _ = built_sender.send(Ok(Built {
                plan: net.plan().clone(),
                feature_layer,
                device: net.describe(),
            }));
            let worker = Worker {
                net,
                feature_layer,
                batching,
                metrics,
                ready,
            };
            worker.run(&receiver);
        })?;
    let built = built
        .recv()
        .map_err(|_| anyhow::anyhow!("the inference worker stopped while building the net"))??;
    Ok((sender, built))
}

impl Worker {
    fn run(mut self, queue: &Receiver<Job>) {
        self.warm_up();
        let mut waiting: Option<Job> = None;
        loop {
            let Some(first) = waiting.take().or_else(|| queue.recv().ok()) else {
                return;
            };
            let (batch, next) = gather(first, queue, self.batching, &self.metrics);
            waiting = next;
            self.run_batch(batch);
        }
    }

    /// A first full batch, so that scratch is grown and kernels are chosen before
    /// the first request (and `/readyz` says so).
    fn warm_up(&mut self) {
        let input = vec![0.0; self.batching.max_batch * self.net.plan().input_shape().len()];
        if self.net.set_input(&input).is_ok() {
            self.net.forward(Mode::Test);
            self.net.synchronize();
        }
        self.ready.store(true, Ordering::Release);
    }

    fn run_batch(&mut self, mut batch: Vec<Job>) {
        // A request whose client has given up (its timeout) is not computed.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let images: usize = batch.iter().map(|job| job.images).sum();
        let mut inputs = Vec::with_capacity(batch.iter().map(|job| job.inputs.len()).sum());
        for job in &batch {
            inputs.extend_from_slice(&job.inputs);
        }
        let started = Instant::now();
        let outputs = self.net.set_input(&inputs).map(|_| {
            self.net.forward(Mode::Test);
            (self.net.logits(), self.net.layer_output(self.feature_layer))
        });
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.record_batch(images, seconds);
        let (logits, features) = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(format!("the forward pass failed: {e}")));
                }
                return;
            }
        };
        let classes = logits.len() / images;
        let dim = features.len() / images;
        let mut first = 0;
        for job in batch {
            let rows = first..first + job.images;
            first = rows.end;
            let answer = Answer {
                logits: logits[rows.start * classes..rows.end * classes].to_vec(),
                features: features[rows.start * dim..rows.end * dim].to_vec(),
                batch_images: images,
                forward_seconds: seconds,
            };
            // The client may have gone meanwhile; nothing to do then.
            let _ = job.reply.send(Ok(answer));
        }
    }
}

/// The requests that run with `first`: those behind it while they fit, until the
/// delay is over; and the one that did not fit, if any.
fn gather(
    first: Job,
    queue: &Receiver<Job>,
    batching: Batching,
    metrics: &Metrics,
) -> (Vec<Job>, Option<Job>) {
    metrics.dequeued();
    let deadline = first.queued + batching.max_delay;
    let mut images = first.images;
    let mut batch = vec![first];
    while images < batching.max_batch {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = if left.is_zero() {
            match queue.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        } else {
            match queue.recv_timeout(left) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        };
        metrics.dequeued();
        if images + next.images > batching.max_batch {
            return (batch, Some(next));
        }
        images += next.images;
        batch.push(next);
    }
    (batch, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(images: usize, queued: Instant) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            inputs: vec![0.0; images],
            images,
            queued,
            reply,
        }
    }

    fn sizes(batch: &[Job]) -> Vec<usize> {
        batch.iter().map(|j| j.images).collect()
    }

    #[test]
    fn a_batch_takes_whole_requests_until_full() {
        let metrics = Metrics::new(4);
        let (sender, queue) = std::sync::mpsc::sync_channel(8);
        let now = Instant::now();
        for images in [2, 1, 3, 1] {
            sender.send(job(images, now)).unwrap();
        }
        let batching = Batching {
            max_batch: 4,
            max_delay: Duration::from_secs(60),
        };
        let first = queue.recv().unwrap();
        let (batch, next) = gather(first, &queue, batching, &metrics);
        // 2 + 1 fit; the 3 would make 6, so it waits for the next batch whole.
        assert_eq!(sizes(&batch), [2, 1]);
        let next = next.expect("the request that did not fit");
        assert_eq!(next.images, 3);
        let (batch, next) = gather(next, &queue, batching, &metrics);
        assert_eq!(sizes(&batch), [3, 1]);
        assert!(next.is_none());
    }

    #[test]
    fn an_expired_delay_still_takes_what_is_queued_but_waits_for_nothing() {
        let metrics = Metrics::new(8);
        let (sender, queue) = std::sync::mpsc::sync_channel(8);
        let long_ago = Instant::now() - Duration::from_secs(10);
        sender.send(job(1, long_ago)).unwrap();
        sender.send(job(1, long_ago)).unwrap();
        let batching = Batching {
            max_batch: 8,
            max_delay: Duration::from_millis(1),
        };
        let started = Instant::now();
        let first = queue.recv().unwrap();
        let (batch, next) = gather(first, &queue, batching, &metrics);
        assert_eq!(sizes(&batch), [1, 1]);
        assert!(next.is_none());
        // The sender is still open: a wait for more would block until the delay.
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(sender);
    }
}
