//! The network: buffers planned once from a [`Plan`], and the forward pass,
//! backward pass and SGD step over them on any [`Backend`].
//!
//! Buffers: one per parameter tensor for values, gradients and velocities (the
//! three share one layout: index `i` is the same tensor in each); one activation
//! buffer per non-in-place layer, sized for `max_batch` images, except the
//! output of an LRN fused with the max pooling after it (see [`crate::fusion`]),
//! which is never kept; two gradient buffers, used in turn as the gradient flows
//! back, each sized for the largest gradient it will hold. Nothing is allocated
//! by a step after construction (a backend may grow scratch of its own in the
//! first step).

use std::ops::Range;
use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fusion::{Fusion, GradientStep, fusions, gradient_lens, gradient_step};
use crate::input::StoredBatch;
use crate::layers::Rows;
use crate::model::{BufferMut, LayerTimes, Mode, Model};
use crate::optim::Sgd;
use crate::plan::{Init, Op, ParamInfo, Plan};
use crate::rng::Rng;
use crate::spec::NetSpec;

/// A parameter tensor with its gradient and SGD velocity.
pub struct Param<Buf> {
    pub info: ParamInfo,
    pub value: Buf,
    pub grad: Buf,
    pub velocity: Buf,
    /// Frozen parameters keep their values: the SGD step skips them (fine-tuning).
    pub frozen: bool,
}

pub struct Network<B: Backend> {
    backend: B,
    plan: Plan,
    max_batch: usize,
    params: Vec<Param<B::Buffer>>,
    activations: Vec<B::Buffer>,
    /// The second input buffer, where the backend overlaps input uploads with
    /// queued work ([`Backend::overlaps_input_uploads`]): `set_input` swaps it
    /// with `activations[0]` and uploads into it while the work queued on the
    /// other may still read that.
    spare_input: Option<B::Buffer>,
    gradients: [B::Buffer; 2],
    /// How each layer runs (indexed like `plan.layers`).
    fusions: Vec<Fusion>,
    /// What each max pooling fused with an LRN recorded in its last training
    /// forward pass, and whether that was of the loaded batch's current values
    /// (both indexed like `plan.layers`).
    records: Vec<Option<B::PoolRecord>>,
    records_fresh: Vec<bool>,
    /// One mask buffer per dropout layer (indexed like `plan.layers`).
    masks: Vec<Option<B::Buffer>>,
    /// When set, the next training forward pass uses masks given by the caller.
    masks_given: bool,
    /// The first image of this batch within a larger one whose dropout masks
    /// it shares (data parallelism: each process draws its rows of them).
    dropout_offset: usize,
    rng: Rng,
    /// Images in the current batch (set by `set_input`).
    batch: usize,
    /// The mean image subtracted from stored batches, with its length.
    mean: Option<(B::Buffer, usize)>,
    times: Option<LayerTimes>,
}

/// A parameter tensor's starting values as the paper draws them (Section 5).
pub(crate) fn initial_values(info: &ParamInfo, rng: &mut Rng) -> Vec<f32> {
    match info.init {
        Init::Gaussian(std) => (0..info.len())
            .map(|_| (rng.normal() * std as f64) as f32)
            .collect(),
        Init::Constant(c) => vec![c; info.len()],
    }
}

/// Element `read` to read and element `write` to write, which must differ.
pub(crate) fn pair_mut<T>(items: &mut [T], read: usize, write: usize) -> (&T, &mut T) {
    assert_ne!(read, write, "an element read and written at once");
    if read < write {
        let (head, tail) = items.split_at_mut(write);
        (&head[read], &mut tail[0])
    } else {
        let (head, tail) = items.split_at_mut(read);
        (&tail[0], &mut head[write])
    }
}

/// Checks that there is one label per image and each names a class.
pub(crate) fn check_labels(labels: &[u32], n: usize, classes: usize) -> Result<()> {
    if labels.len() != n {
        return Err(input_error(
            "labels",
            format!("{n} labels, one per image"),
            labels.len().to_string(),
        ));
    }
    if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
        return Err(input_error(
            "labels",
            format!("class indices below {classes}"),
            bad.to_string(),
        ));
    }
    Ok(())
}

/// Refuses a net whose buffers at `max_batch` would not fit in `memory` bytes,
/// saying how much they would need.
pub(crate) fn check_memory(plan: &Plan, max_batch: usize, memory: Option<u64>) -> Result<()> {
    let need = plan.buffer_bytes(max_batch);
    let fits = match (need, memory) {
        (None, _) => false,
        (Some(need), Some(memory)) => need <= u128::from(memory),
        (Some(_), None) => true,
    };
    if fits {
        return Ok(());
    }
    let needed = need.map_or(
        "more bytes than can be counted".into(),
        crate::plan::bytes_text,
    );
    let have = memory.map_or(String::new(), |m| {
        format!(
            ", more than the {} of memory here",
            crate::plan::bytes_text(m.into())
        )
    });
    Err(input_error(
        "batch size",
        "a batch whose buffers fit in memory".into(),
        format!("{max_batch} images: the net's buffers would need {needed}{have}"),
    ))
}

pub(crate) fn input_error(what: &str, expected: String, found: String) -> Error {
    Error::Input {
        what: what.to_string(),
        expected,
        found,
    }
}

impl<B: Backend> Network<B> {
    /// Builds the net described by `spec` for batches of up to `max_batch` images,
    /// initialised as the paper does (Gaussian weights, constant biases) from `seed`.
    pub fn new(backend: B, spec: &NetSpec, max_batch: usize, seed: u64) -> Result<Network<B>> {
        Network::build(backend, spec, max_batch, seed, true)
    }

    /// Builds the net with every parameter at zero, for weights that will be
    /// loaded from a checkpoint: it skips drawing tens of millions of random numbers.
    pub fn new_zeroed(backend: B, spec: &NetSpec, max_batch: usize) -> Result<Network<B>> {
        Network::build(backend, spec, max_batch, 0, false)
    }

    fn build(
        backend: B,
        spec: &NetSpec,
        max_batch: usize,
        seed: u64,
        initialise: bool,
    ) -> Result<Network<B>> {
        let plan = Plan::new(spec)?;
        let mut rng = Rng::new(seed);
        let mut net = Network::from_plan(backend, plan, max_batch)?;
        if initialise {
            for index in 0..net.params.len() {
                let host = initial_values(&net.params[index].info, &mut rng);
                net.backend.upload(&host, &mut net.params[index].value);
            }
        }
        net.rng = rng;
        Ok(net)
    }

    /// Builds the buffers for `plan` with every parameter at zero and the dropout
    /// generator at seed 0.
    pub(crate) fn from_plan(backend: B, plan: Plan, max_batch: usize) -> Result<Network<B>> {
        if max_batch == 0 {
            return Err(input_error("batch size", "at least 1".into(), "0".into()));
        }
        check_memory(&plan, max_batch, backend.memory_bytes())?;
        let mut params = Vec::with_capacity(plan.params.len());
        for info in &plan.params {
            params.push(Param {
                info: info.clone(),
                value: backend.alloc(info.len())?,
                grad: backend.alloc(info.len())?,
                velocity: backend.alloc(info.len())?,
                frozen: false,
            });
        }
        let fusions = fusions(&plan);
        let layer_count = plan.layers.len();
        let mut activations = Vec::with_capacity(plan.activations.len());
        for (buffer, len) in plan.activations.iter().enumerate() {
            // A fused LRN's output is never written.
            let unused = plan.layers.iter().zip(&fusions).any(|(layer, fusion)| {
                layer.dst == buffer && matches!(fusion, Fusion::LrnIntoPool { .. })
            });
            activations.push(backend.alloc(if unused { 0 } else { len * max_batch })?);
        }
        let spare_input = if backend.overlaps_input_uploads() {
            Some(backend.alloc(plan.activations[0] * max_batch)?)
        } else {
            None
        };
        let [first, second] = gradient_lens(&plan, &fusions);
        let gradients = [
            backend.alloc(first * max_batch)?,
            backend.alloc(second * max_batch)?,
        ];
        let mut records = Vec::with_capacity(plan.layers.len());
        for (layer, fusion) in plan.layers.iter().zip(&fusions) {
            records.push(match fusion {
                Fusion::PoolAfterLrn { .. } => {
                    let Op::MaxPool { geometry } = &layer.op else {
                        unreachable!("fusions pair an LRN with a max pooling");
                    };
                    Some(backend.alloc_pool_record(geometry, max_batch)?)
                }
                _ => None,
            });
        }
        let mut masks = Vec::with_capacity(plan.layers.len());
        for layer in &plan.layers {
            masks.push(match &layer.op {
                Op::Dropout { geometry } => Some(backend.alloc(geometry.len * max_batch)?),
                _ => None,
            });
        }
        Ok(Network {
            backend,
            plan,
            max_batch,
            params,
            activations,
            spare_input,
            gradients,
            fusions,
            records,
            records_fresh: vec![false; layer_count],
            masks,
            masks_given: false,
            dropout_offset: 0,
            rng: Rng::new(0),
            batch: 0,
            mean: None,
            times: None,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
    pub fn params(&self) -> &[Param<B::Buffer>] {
        &self.params
    }

    /// Copies one mask per dropout layer into the mask buffers.
    pub(crate) fn upload_dropout_masks(&mut self, masks: &[Vec<f32>]) -> Result<()> {
        let n = self.batch;
        let layers = self.masks.iter().filter(|m| m.is_some()).count();
        if masks.len() != layers {
            return Err(input_error(
                "dropout masks",
                format!("one mask per dropout layer ({layers})"),
                format!("{} masks", masks.len()),
            ));
        }
        let mut given = masks.iter();
        for (layer, mask) in self.plan.layers.iter().zip(self.masks.iter_mut()) {
            let (Op::Dropout { geometry }, Some(buffer)) = (&layer.op, mask) else {
                continue;
            };
            let host = given.next().ok_or_else(|| {
                input_error(
                    "dropout masks",
                    "one mask per dropout layer".into(),
                    format!("{}", masks.len()),
                )
            })?;
            if host.len() != n * geometry.len {
                return Err(input_error(
                    &layer.label,
                    format!("a mask of {} values", n * geometry.len),
                    format!("{} values", host.len()),
                ));
            }
            self.backend.upload(host, buffer);
        }
        Ok(())
    }

    fn draw_masks(&mut self) {
        let dropouts = self.masks.iter().filter(|m| m.is_some()).count();
        let seeds: Vec<u64> = (0..dropouts).map(|_| self.rng.next_u64()).collect();
        let (n, first) = (self.batch, self.dropout_offset);
        // Rows `first..first + n` of the masks of a larger batch (a process's
        // share of a data-parallel batch), or the whole mask of this one.
        self.draw_masks_from(&seeds, |_, len| Rows {
            offset: first * len,
            ..Rows::packed(n, len)
        });
    }

    /// Draws each dropout layer's mask on the backend from its seed (one per
    /// dropout layer, in order): for layer `index` with `len` values per image,
    /// the values `pick(index, len)` names of the mask that seed gives.
    pub(crate) fn draw_masks_from(&mut self, seeds: &[u64], pick: impl Fn(usize, usize) -> Rows) {
        let dropouts = self
            .plan
            .layers
            .iter()
            .zip(self.masks.iter_mut())
            .enumerate();
        let mut seeds = seeds.iter();
        for (index, (layer, mask)) in dropouts {
            let (Op::Dropout { geometry }, Some(buffer)) = (&layer.op, mask) else {
                continue;
            };
            let seed = *seeds.next().expect("one seed per dropout layer");
            self.backend
                .dropout_mask(geometry, seed, pick(index, geometry.len), buffer);
        }
    }

    /// Runs the layers in `layers` on the loaded batch (the dropout masks are
    /// already in place).
    pub(crate) fn forward_layers(&mut self, layers: Range<usize>, mode: Mode) {
        let n = self.batch;
        for index in layers {
            let started = self.times.as_ref().map(|_| Instant::now());
            self.forward_layer(index, n, mode);
            if let (Some(times), Some(started)) = (self.times.as_mut(), started) {
                self.backend.synchronize();
                times.forward[index] += started.elapsed().as_secs_f64();
            }
        }
    }

    fn forward_layer(&mut self, index: usize, n: usize, mode: Mode) {
        let layer = &self.plan.layers[index];
        let be = &self.backend;
        let rectify = match self.fusions[index] {
            Fusion::Alone => false,
            Fusion::ConvWithRelu { .. } => true,
            Fusion::LrnIntoPool { pool } => return self.forward_lrn_pool(index, pool, n, mode),
            // Computed with the layer before it.
            Fusion::PoolAfterLrn { .. } | Fusion::ReluAfterConv { .. } => return,
        };
        if layer.op.in_place() {
            let x = &mut self.activations[layer.src];
            let len = n * layer.output.len();
            match layer.op {
                Op::Relu { .. } => be.relu_forward(len, x),
                Op::Tanh { .. } => be.tanh_forward(len, x),
                _ => unreachable!("only activations run in place"),
            }
            return;
        }
        let (before, after) = self.activations.split_at_mut(layer.dst);
        let (x, y) = (&before[layer.src], &mut after[0]);
        match &layer.op {
            Op::Conv { geometry, weight } if rectify => be.conv_relu_forward(
                geometry,
                n,
                x,
                &self.params[*weight].value,
                &self.params[weight + 1].value,
                y,
            ),
            Op::Conv { geometry, weight } => be.conv_forward(
                geometry,
                n,
                x,
                &self.params[*weight].value,
                &self.params[weight + 1].value,
                y,
            ),
            Op::Linear { geometry, weight } => be.linear_forward(
                geometry,
                n,
                x,
                &self.params[*weight].value,
                &self.params[weight + 1].value,
                y,
            ),
            Op::Lrn { geometry } => be.lrn_forward(geometry, n, x, y),
            Op::MaxPool { geometry } => be.max_pool_forward(geometry, n, x, y),
            Op::AvgPool { geometry } => be.avg_pool_forward(geometry, n, x, y),
            Op::Dropout { geometry } => match mode {
                Mode::Train => {
                    let mask = self.masks[index]
                        .as_ref()
                        .expect("dropout layers own a mask");
                    be.dropout_forward(geometry, n, mask, x, y)
                }
                // Inverted dropout is the identity at test time.
                Mode::Test => be.copy(n * geometry.len, x, y),
            },
            Op::Relu { .. } | Op::Tanh { .. } => unreachable!("handled above"),
        }
    }

    /// LRN layer `lrn` and max-pooling layer `pool` in one pass, recording what
    /// the backward pass needs in training mode.
    fn forward_lrn_pool(&mut self, lrn: usize, pool: usize, n: usize, mode: Mode) {
        let (src, pool_layer) = (self.plan.layers[lrn].src, &self.plan.layers[pool]);
        let (
            Op::Lrn {
                geometry: lrn_geometry,
            },
            Op::MaxPool {
                geometry: pool_geometry,
            },
        ) = (&self.plan.layers[lrn].op, &pool_layer.op)
        else {
            unreachable!("fusions pair an LRN with a max pooling");
        };
        let (before, after) = self.activations.split_at_mut(pool_layer.dst);
        let record = match mode {
            Mode::Train => self.records[pool].as_mut(),
            Mode::Test => None,
        };
        self.backend.lrn_max_pool_forward(
            lrn_geometry,
            pool_geometry,
            n,
            &before[src],
            &mut after[0],
            record,
        );
        self.records_fresh[pool] = mode == Mode::Train;
    }

    pub(crate) fn zero_grads(&mut self) {
        for p in &mut self.params {
            self.backend.fill(&mut p.grad, 0.0);
        }
    }

    /// Backward through `layers`, last first, starting from the gradient of the
    /// last one's output in gradient buffer `current`; returns the buffer that then
    /// holds the gradient of the first one's input.
    pub(crate) fn backward_layers(&mut self, layers: Range<usize>, current: usize) -> usize {
        self.backward_layers_each(layers, current, &mut |_, _| {})
    }

    /// [`Network::backward_layers`], handing each parameter's gradient to
    /// `ready` as soon as its layer's backward pass has written it.
    fn backward_layers_each(
        &mut self,
        layers: Range<usize>,
        mut current: usize,
        ready: &mut dyn FnMut(usize, BufferMut<'_>),
    ) -> usize {
        let n = self.batch;
        // `current` holds the gradient of the layer's output; each non-in-place
        // layer writes its input gradient into the other buffer and the roles swap.
        for index in layers.rev() {
            let started = self.times.as_ref().map(|_| Instant::now());
            if self.backward_layer(index, n, current) {
                current = 1 - current;
            }
            if let (Some(times), Some(started)) = (self.times.as_mut(), started) {
                self.backend.synchronize();
                times.backward[index] += started.elapsed().as_secs_f64();
            }
            self.hand_over_gradients(index, ready);
        }
        current
    }

    /// Hands the gradients of layer `index`'s weight and bias, which its
    /// backward pass has just finished, to `ready`.
    fn hand_over_gradients(&mut self, index: usize, ready: &mut dyn FnMut(usize, BufferMut<'_>)) {
        let (Op::Conv { weight, .. } | Op::Linear { weight, .. }) = self.plan.layers[index].op
        else {
            return;
        };
        for param in [weight, weight + 1] {
            let p = &mut self.params[param];
            let len = p.info.len();
            ready(param, self.backend.buffer_mut(&mut p.grad, len));
        }
    }

    /// Activation buffer `index` of the plan (0 is the input).
    pub(crate) fn activation(&self, index: usize) -> &B::Buffer {
        &self.activations[index]
    }
    /// The backend with activation buffer `index`, to write into it.
    pub(crate) fn backend_and_activation(&mut self, index: usize) -> (&B, &mut B::Buffer) {
        (&self.backend, &mut self.activations[index])
    }
    /// The backend with activation buffer `read` to read and `write` to write.
    pub(crate) fn backend_and_activations(
        &mut self,
        read: usize,
        write: usize,
    ) -> (&B, &B::Buffer, &mut B::Buffer) {
        let (src, dst) = pair_mut(&mut self.activations, read, write);
        (&self.backend, src, dst)
    }
    /// One of the two gradient buffers the backward pass alternates between.
    pub(crate) fn gradient(&self, index: usize) -> &B::Buffer {
        &self.gradients[index]
    }
    pub(crate) fn backend_and_gradient(&mut self, index: usize) -> (&B, &mut B::Buffer) {
        (&self.backend, &mut self.gradients[index])
    }
    /// Images in the loaded batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Backward through an LRN and the max pooling reading it (`pool`), run as
    /// one operation from the record the fused forward pass left.
    fn backward_lrn_pool(&mut self, lrn: usize, pool: usize, n: usize, current: usize) {
        let (lrn_layer, pool_layer) = (&self.plan.layers[lrn], &self.plan.layers[pool]);
        let (
            Op::Lrn {
                geometry: lrn_geometry,
            },
            Op::MaxPool {
                geometry: pool_geometry,
            },
        ) = (&lrn_layer.op, &pool_layer.op)
        else {
            unreachable!("fusions pair an LRN with a max pooling");
        };
        let [g0, g1] = &mut self.gradients;
        let (dy, dx) = if current == 0 { (g0, g1) } else { (g1, g0) };
        let record = self.records[pool]
            .as_mut()
            .expect("fused pools own a record");
        let x = &self.activations[lrn_layer.src];
        if !self.records_fresh[pool] {
            // The last forward pass was a test-mode one, which records
            // nothing: run it again for the record. Its pooled values go
            // to `dx`, which is overwritten next; the pool's own buffer may
            // already hold an in-place activation's output.
            self.backend
                .lrn_max_pool_forward(lrn_geometry, pool_geometry, n, x, dx, Some(record));
            self.records_fresh[pool] = true;
        }
        self.backend
            .lrn_max_pool_backward(lrn_geometry, pool_geometry, n, x, record, dy, dx);
    }

    /// Backward through one layer; returns whether the gradient moved to the other buffer.
    fn backward_layer(&mut self, index: usize, n: usize, current: usize) -> bool {
        let step = gradient_step(&self.plan, &self.fusions, index);
        match self.fusions[index] {
            // Only the forward pass is fused.
            Fusion::Alone | Fusion::ConvWithRelu { .. } | Fusion::ReluAfterConv { .. } => {}
            // Done by the pool's backward pass.
            Fusion::LrnIntoPool { .. } => return false,
            Fusion::PoolAfterLrn { lrn } => {
                if step == GradientStep::Stays {
                    return false;
                }
                self.backward_lrn_pool(lrn, index, n, current);
                return true;
            }
        }
        let layer = &self.plan.layers[index];
        let be = &self.backend;
        let [g0, g1] = &mut self.gradients;
        let (dy, dx) = if current == 0 { (g0, g1) } else { (g1, g0) };
        let y = &self.activations[layer.dst];
        let x = &self.activations[layer.src];
        // The network input needs no gradient.
        let needs_dx = layer.src != 0;
        match &layer.op {
            Op::Relu { .. } => {
                be.relu_backward(n * layer.output.len(), y, dy);
                false
            }
            Op::Tanh { .. } => {
                be.tanh_backward(n * layer.output.len(), y, dy);
                false
            }
            Op::Conv { geometry, weight } => {
                let (weights, bias) = self.params.split_at_mut(weight + 1);
                let w = &mut weights[*weight];
                be.conv_backward(
                    geometry,
                    n,
                    x,
                    &w.value,
                    dy,
                    &mut w.grad,
                    &mut bias[0].grad,
                    needs_dx.then_some(dx),
                );
                true
            }
            Op::Linear { geometry, weight } => {
                let (weights, bias) = self.params.split_at_mut(weight + 1);
                let w = &mut weights[*weight];
                be.linear_backward(
                    geometry,
                    n,
                    x,
                    &w.value,
                    dy,
                    &mut w.grad,
                    &mut bias[0].grad,
                    needs_dx.then_some(dx),
                );
                true
            }
            _ if !needs_dx => false,
            Op::Lrn { geometry } => {
                be.lrn_backward(geometry, n, x, dy, dx);
                true
            }
            Op::MaxPool { geometry } => {
                be.max_pool_backward(geometry, n, x, dy, dx);
                true
            }
            Op::AvgPool { geometry } => {
                be.avg_pool_backward(geometry, n, dy, dx);
                true
            }
            Op::Dropout { geometry } => {
                let mask = self.masks[index]
                    .as_ref()
                    .expect("dropout layers own a mask");
                be.dropout_backward(geometry, n, mask, dy, dx);
                true
            }
        }
    }
}

impl<B: Backend> Model for Network<B> {
    fn describe(&self) -> String {
        self.backend.describe()
    }
    fn synchronize(&self) {
        self.backend.synchronize()
    }
    fn cuts_views(&self) -> bool {
        self.backend.cuts_views()
    }
    fn plan(&self) -> &Plan {
        &self.plan
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    /// The generator behind dropout masks (its state goes into checkpoints).
    fn rng(&self) -> &Rng {
        &self.rng
    }
    fn set_rng(&mut self, rng: Rng) {
        self.rng = rng;
    }
    /// Starts (or stops) recording the time of each layer's passes.
    fn record_layer_times(&mut self, on: bool) {
        self.times = on.then(|| LayerTimes {
            forward: vec![0.0; self.plan.layers.len()],
            backward: vec![0.0; self.plan.layers.len()],
        });
    }
    /// Accumulated per-layer seconds since recording started.
    fn layer_times(&self) -> Option<LayerTimes> {
        self.times.clone()
    }
    /// A parameter tensor's values, copied to the host.
    fn param_values(&self, index: usize) -> Vec<f32> {
        let mut host = vec![0.0; self.params[index].info.len()];
        self.backend.download(&self.params[index].value, &mut host);
        host
    }
    fn param_grad(&self, index: usize) -> Vec<f32> {
        let mut host = vec![0.0; self.params[index].info.len()];
        self.backend.download(&self.params[index].grad, &mut host);
        host
    }
    fn param_velocity(&self, index: usize) -> Vec<f32> {
        let mut host = vec![0.0; self.params[index].info.len()];
        self.backend
            .download(&self.params[index].velocity, &mut host);
        host
    }
    /// Replaces a parameter tensor's values; the length must match its shape.
    fn set_param_grad(&mut self, index: usize, values: &[f32]) -> Result<()> {
        let info = &self.params[index].info;
        if values.len() != info.len() {
            return Err(input_error(
                &format!("{} gradient", info.name),
                format!("{} values (shape {:?})", info.len(), info.shape),
                format!("{} values", values.len()),
            ));
        }
        self.backend.upload(values, &mut self.params[index].grad);
        Ok(())
    }
    fn param_grad_mut(&mut self, index: usize) -> Option<BufferMut<'_>> {
        let param = &mut self.params[index];
        let len = param.info.len();
        Some(self.backend.buffer_mut(&mut param.grad, len))
    }
    fn set_dropout_offset(&mut self, images: usize) -> Result<()> {
        self.dropout_offset = images;
        Ok(())
    }
    fn set_param_values(&mut self, index: usize, values: &[f32]) -> Result<()> {
        let info = &self.params[index].info;
        if values.len() != info.len() {
            return Err(input_error(
                &info.name,
                format!("{} values (shape {:?})", info.len(), info.shape),
                format!("{} values", values.len()),
            ));
        }
        self.backend.upload(values, &mut self.params[index].value);
        Ok(())
    }
    fn set_param_velocity(&mut self, index: usize, values: &[f32]) -> Result<()> {
        let info = &self.params[index].info;
        if values.len() != info.len() {
            return Err(input_error(
                &info.name,
                format!("{} velocity values", info.len()),
                format!("{} values", values.len()),
            ));
        }
        self.backend
            .upload(values, &mut self.params[index].velocity);
        Ok(())
    }
    /// Loads a batch of images (NCHW, `n * channels * height * width` values).
    fn set_input(&mut self, images: &[f32]) -> Result<usize> {
        let per_image = self.plan.activations[0];
        if images.is_empty() || !images.len().is_multiple_of(per_image) {
            return Err(input_error(
                "input batch",
                format!(
                    "a whole number of {} images ({per_image} values each)",
                    self.plan.input_shape()
                ),
                format!("{} values", images.len()),
            ));
        }
        let n = images.len() / per_image;
        if n > self.max_batch {
            return Err(input_error(
                "input batch",
                format!(
                    "at most {} images (the batch size the net was built for)",
                    self.max_batch
                ),
                format!("{n} images"),
            ));
        }
        match &mut self.spare_input {
            Some(spare) => {
                std::mem::swap(spare, &mut self.activations[0]);
                self.backend.upload_input(images, &mut self.activations[0]);
            }
            None => self.backend.upload(images, &mut self.activations[0]),
        }
        self.batch = n;
        self.records_fresh.fill(false);
        Ok(n)
    }
    /// Keeps `mean` (one value per stored byte) on the backend for
    /// [`Network::set_input_stored`] to subtract.
    fn set_mean_image(&mut self, mean: &[f32]) -> Result<()> {
        let mut buffer = self.backend.alloc(mean.len())?;
        self.backend.upload(mean, &mut buffer);
        self.mean = Some((buffer, mean.len()));
        Ok(())
    }
    /// Loads a batch by cutting its views out of stored images where the backend
    /// keeps its buffers (see [`crate::input`]); one view per input image.
    fn set_input_stored(&mut self, batch: &StoredBatch) -> Result<usize> {
        batch.validate()?;
        let n = batch.views.len();
        if batch.view_shape() != self.plan.input_shape() {
            return Err(input_error(
                "stored batch",
                format!("views of {}", self.plan.input_shape()),
                format!("views of {}", batch.view_shape()),
            ));
        }
        if n == 0 || n > self.max_batch {
            return Err(input_error(
                "stored batch",
                format!(
                    "1 to {} views (the batch size the net was built for)",
                    self.max_batch
                ),
                format!("{n} views"),
            ));
        }
        let mean = match (&self.mean, batch.subtract_mean) {
            (_, false) => None,
            (Some((buffer, len)), true) if *len == batch.stored.len() => Some(buffer),
            (mean, true) => {
                return Err(input_error(
                    "mean image",
                    format!("{} values, set by set_mean_image", batch.stored.len()),
                    mean.as_ref()
                        .map_or("none".to_string(), |(_, len)| format!("{len} values")),
                ));
            }
        };
        self.backend
            .cut_views(batch, mean, &mut self.activations[0]);
        self.batch = n;
        self.records_fresh.fill(false);
        Ok(n)
    }
    /// Uses these masks (one per dropout layer, in order, `n * len` values of 0 or
    /// `1 / (1 - p)`) in the next training forward pass instead of drawing them.
    /// For comparing with another implementation that drew its own.
    fn set_next_dropout_masks(&mut self, masks: &[Vec<f32>]) -> Result<()> {
        self.upload_dropout_masks(masks)?;
        self.masks_given = true;
        Ok(())
    }
    /// Runs the loaded batch through the net.
    fn forward(&mut self, mode: Mode) {
        let n = self.batch;
        assert!(n > 0, "forward called before set_input");
        let layers = self.plan.layers.len();
        if mode == Mode::Train && !self.masks_given {
            // The masks are drawn once the layers before the first dropout layer
            // are queued: a device backend that draws them on the host (the
            // trait's default) then runs those layers meanwhile.
            let first_dropout = self
                .plan
                .layers
                .iter()
                .position(|l| matches!(l.op, Op::Dropout { .. }))
                .unwrap_or(layers);
            self.forward_layers(0..first_dropout, mode);
            self.draw_masks();
            self.forward_layers(first_dropout..layers, mode);
        } else {
            self.forward_layers(0..layers, mode);
        }
        self.masks_given = false;
    }
    /// The class scores of the current batch (`n x classes`), copied to the host.
    fn logits(&self) -> Vec<f32> {
        let last = self.plan.layers.last().expect("a plan has layers");
        let mut host = vec![0.0; self.batch * self.plan.classes()];
        self.backend
            .download(&self.activations[last.dst], &mut host);
        host
    }
    /// The output of layer `index` (of `plan().layers`) for the current batch, copied
    /// to the host: `n x output` values. In-place activations have already been
    /// applied to their input layer's output, so a linear layer followed by a ReLU
    /// yields the rectified values (the paper's fc7 features).
    fn layer_output(&self, index: usize) -> Vec<f32> {
        let layer = &self.plan.layers[index];
        let mut host = vec![0.0; self.batch * layer.output.len()];
        match (self.fusions[index], &layer.op) {
            (Fusion::LrnIntoPool { .. }, Op::Lrn { geometry }) => {
                // Not kept: normalised again, on the host, from the LRN's input.
                let mut input = vec![0.0; self.batch * layer.input.len()];
                self.backend
                    .download(&self.activations[layer.src], &mut input);
                crate::cpu::reference::lrn_forward(geometry, self.batch, &input, &mut host);
            }
            _ => self
                .backend
                .download(&self.activations[layer.dst], &mut host),
        }
        host
    }
    /// Zeroes the parameter gradients, then adds the gradient of the mean
    /// cross-entropy of the last forward pass against `labels`. Returns the loss.
    fn backward(&mut self, labels: &[u32]) -> Result<f32> {
        self.backward_each(labels, &mut |_, _| {})
    }
    fn backward_each(
        &mut self,
        labels: &[u32],
        ready: &mut dyn FnMut(usize, BufferMut<'_>),
    ) -> Result<f32> {
        let n = self.batch;
        let classes = self.plan.classes();
        check_labels(labels, n, classes)?;
        self.zero_grads();
        let last = self.plan.layers.last().expect("a plan has layers");
        let loss = self.backend.softmax_cross_entropy(
            classes,
            n,
            &self.activations[last.dst],
            labels,
            &mut self.gradients[0],
        );
        self.backward_layers_each(0..self.plan.layers.len(), 0, ready);
        Ok(loss)
    }
    /// Freezes (or unfreezes) a parameter tensor: frozen ones are not updated.
    fn set_frozen(&mut self, index: usize, frozen: bool) {
        self.params[index].frozen = frozen;
    }
    /// One SGD update of every parameter that is not frozen, from the gradients of
    /// the last backward pass.
    fn sgd_step(&mut self, sgd: &Sgd) {
        for p in self.params.iter_mut().filter(|p| !p.frozen) {
            let decay = if p.info.decay { sgd.weight_decay } else { 0.0 };
            self.backend.sgd_update(
                &mut p.value,
                &p.grad,
                &mut p.velocity,
                sgd.learning_rate,
                sgd.momentum,
                decay,
            );
        }
    }
}
