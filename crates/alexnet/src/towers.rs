//! The paper's two towers on two devices (Section 3.2): "the GPUs communicate
//! only in certain layers".
//!
//! Each tower holds half of every layer's kernels: half of conv1's 96, conv2's
//! group (its 48 input maps and 128 kernels), half of conv3's 384 kernels, and so
//! on to half of fc8's class scores. A layer whose kernels read every map of the
//! layer below (conv3 and the fully connected layers, which have `groups = 1`)
//! is where the towers exchange activations: each gathers both halves of its
//! input, side by side along channels, and on the way back each tower's share of
//! the input gradient is the sum of what both towers computed for it. LRN must
//! be per tower (`groups = 2`, the paper's), since across towers it would need
//! them to talk at every LRN.
//!
//! Side by side along channels is exactly the one-device net's layout: tower 1's
//! maps are the first half of the channels, tower 2's the second. So a net split
//! into towers computes the same function as [`Network`] with the same
//! description, and its parameters are the one-device tensors cut into contiguous
//! halves (every split tensor is split along its first axis, output channels or
//! outputs). Checkpoints are the same either way.
//!
//! The exchange stays on the devices ([`Backend::pull_rows`]): each tower pulls
//! every tower's share of each image into its place in its own buffer (on GPUs,
//! one 2-D copy per pair of towers, device to device), and on the way back pulls
//! its share of every tower's gradient into a scratch buffer and adds them up in
//! tower order, as one device would. Each pull waits for the work queued on the
//! tower it reads; afterwards every tower waits for the others' pulls
//! ([`Backend::wait_for`]) before it may overwrite what they read. The towers are
//! driven one after the other from one thread; on two GPUs their queued work
//! overlaps, since the host waits only for the loss (and, when per-layer times
//! are recorded, after every layer).

use std::ops::Range;

use crate::backend::Backend;
use crate::cpu::reference;
use crate::error::{Error, Result};
use crate::input::StoredBatch;
use crate::layers::Rows;
use crate::model::{LayerTimes, Mode, Model};
use crate::net::{Network, check_labels, initial_values, input_error, pair_mut};
use crate::optim::Sgd;
use crate::plan::{Op, Plan};
use crate::rng::Rng;
use crate::spec::{LayerSpec, NetSpec};

/// How a description splits into towers: one tower's share of the net (every
/// tower has the same shapes) and the layers whose input is gathered from all.
#[derive(Clone, Debug)]
pub struct TowerLayout {
    pub towers: usize,
    /// One tower's share, with the gathered layers reading `towers` times the
    /// channels the layer below produced.
    pub tower: Plan,
    /// Layers (indices into both plans' `layers`) whose input is gathered.
    pub gathered: Vec<usize>,
    /// The first layer whose output is split (the first convolution or linear
    /// layer); before it every tower holds the whole activation.
    pub first_split: usize,
}

fn split_error(layer: String, expected: String, found: String) -> Error {
    Error::Shape {
        layer,
        expected,
        found,
        hint: Some("towers split the paper's kind of net; run it on one device instead".into()),
    }
}

impl TowerLayout {
    /// Splits `spec` into `towers` towers, or says which layer cannot be split.
    pub fn new(spec: &NetSpec, towers: usize) -> Result<TowerLayout> {
        if towers < 2 {
            return Err(split_error(
                "towers".into(),
                "at least 2 towers".into(),
                towers.to_string(),
            ));
        }
        // The whole net must be valid first, so that errors speak of its numbers.
        let whole = Plan::new(spec)?;
        let first_split = whole
            .layers
            .iter()
            .position(|l| matches!(l.op, Op::Conv { .. } | Op::Linear { .. }))
            .unwrap_or(0);
        let mut share = spec.clone();
        let mut gathered = Vec::new();
        // Whether the activation reaching this layer is divided among the towers
        // (false only for the input image, which every tower receives whole).
        let mut split = false;
        let split_count = |label: &str, what: &str, count: usize| -> Result<usize> {
            if count.is_multiple_of(towers) {
                Ok(count / towers)
            } else {
                Err(split_error(
                    label.to_string(),
                    format!("{what} divisible by {towers} towers"),
                    count.to_string(),
                ))
            }
        };
        for (index, layer) in share.layers.iter_mut().enumerate() {
            match layer {
                LayerSpec::Conv(c) => {
                    let label = format!("layer {} ({})", index + 1, c.name);
                    if c.groups == 1 {
                        if split {
                            gathered.push(index);
                        }
                    } else if split && c.groups.is_multiple_of(towers) {
                        c.groups /= towers;
                    } else {
                        return Err(split_error(
                            label,
                            format!(
                                "groups 1 (reading every tower) or a multiple of {towers} \
                                 on an input already split into towers"
                            ),
                            format!("groups {}", c.groups),
                        ));
                    }
                    c.out = split_count(&label, "output channels", c.out)?;
                    split = true;
                }
                LayerSpec::Linear(l) => {
                    let label = format!("layer {} ({})", index + 1, l.name);
                    if split {
                        gathered.push(index);
                    }
                    if let Some(out) = &mut l.out {
                        *out = split_count(&label, "outputs", *out)?;
                    }
                    split = true;
                }
                LayerSpec::Lrn(n) if split => {
                    if !n.groups.is_multiple_of(towers) {
                        return Err(split_error(
                            format!("layer {} (lrn)", index + 1),
                            format!(
                                "normalisation within each tower (groups a multiple of {towers}, \
                                 the paper's), not across them"
                            ),
                            format!("groups {}", n.groups),
                        ));
                    }
                    n.groups /= towers;
                }
                _ => {}
            }
        }
        share.classes = split_count("classes", "class count", spec.classes)?;
        let tower = Plan::build(&share, &gathered, towers)?;
        Ok(TowerLayout {
            towers,
            tower,
            gathered,
            first_split,
        })
    }

    /// The activation buffer a gathered layer's input is assembled from in each
    /// tower (the last one written before it) and the one it reads.
    fn exchange_buffers(&self, layer: usize) -> (usize, usize) {
        let layers = &self.tower.layers;
        (layers[layer - 1].dst, layers[layer].src)
    }

    /// Values per image of one tower's share of a gathered layer's input.
    fn share_len(&self, layer: usize) -> usize {
        self.tower.layers[layer - 1].output.len()
    }
}

/// Lays `towers` per-image shares side by side: image `i` of the result is
/// tower 0's image `i`, then tower 1's, ...
fn interleave(shares: &[Vec<f32>], n: usize, share: usize, out: &mut [f32]) {
    let towers = shares.len();
    for (t, part) in shares.iter().enumerate() {
        for i in 0..n {
            out[(i * towers + t) * share..][..share].copy_from_slice(&part[i * share..][..share]);
        }
    }
}

/// Tower `t`'s share of each image of a side-by-side layout.
fn share_of(whole: &[f32], towers: usize, t: usize, n: usize, share: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * share);
    for i in 0..n {
        out.extend_from_slice(&whole[(i * towers + t) * share..][..share]);
    }
    out
}

/// A net split into towers, one per backend (each backend a device; the same
/// device may be given twice). It trains and evaluates as [`Network`] does, with
/// the same parameters and, for the same seed, the same initial values and
/// dropout masks.
pub struct Towers<B: Backend> {
    /// The whole net as one device would run it: names, shapes, layers.
    plan: Plan,
    layout: TowerLayout,
    towers: Vec<Network<B>>,
    /// One buffer per tower, on its backend, for the shares of the gradients it
    /// pulls from every tower at an exchange (one packed slot per tower).
    exchange: Vec<B::Buffer>,
    max_batch: usize,
    /// Draws dropout masks for the whole net, as [`Network`] would.
    rng: Rng,
    /// When set, the next training forward pass uses masks given by the caller.
    masks_given: bool,
    batch: usize,
}

impl<B: Backend> Towers<B> {
    /// Builds the net of `spec` split over `backends` (one tower each), initialised
    /// as [`Network::new`] with the same seed would be.
    pub fn new(backends: Vec<B>, spec: &NetSpec, max_batch: usize, seed: u64) -> Result<Towers<B>> {
        let mut net = Towers::new_zeroed(backends, spec, max_batch)?;
        let mut rng = Rng::new(seed);
        for index in 0..net.plan.params.len() {
            let values = initial_values(&net.plan.params[index], &mut rng);
            net.set_param_values(index, &values)?;
        }
        net.rng = rng;
        Ok(net)
    }

    /// Builds the net with every parameter at zero, for weights from a checkpoint.
    pub fn new_zeroed(backends: Vec<B>, spec: &NetSpec, max_batch: usize) -> Result<Towers<B>> {
        let plan = Plan::new(spec)?;
        let layout = TowerLayout::new(spec, backends.len())?;
        let towers = backends
            .into_iter()
            .map(|backend| Network::from_plan(backend, layout.tower.clone(), max_batch))
            .collect::<Result<Vec<_>>>()?;
        let exchange_len = layout
            .gathered
            .iter()
            .map(|&layer| max_batch * layout.share_len(layer) * layout.towers)
            .max()
            .unwrap_or(0);
        let exchange = towers
            .iter()
            .map(|tower| tower.backend().alloc(exchange_len))
            .collect::<Result<Vec<_>>>()?;
        Ok(Towers {
            plan,
            layout,
            towers,
            exchange,
            max_batch,
            rng: Rng::new(0),
            masks_given: false,
            batch: 0,
        })
    }

    pub fn layout(&self) -> &TowerLayout {
        &self.layout
    }

    /// The tower networks, in order.
    pub fn towers(&self) -> &[Network<B>] {
        &self.towers
    }

    /// The runs of layers between exchanges, in order.
    fn stretches(&self) -> Vec<Range<usize>> {
        let mut bounds = vec![0];
        bounds.extend(&self.layout.gathered);
        bounds.push(self.plan.layers.len());
        bounds.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// The dropout layers of the whole net: index and values per image.
    fn dropout_layers(&self) -> Vec<(usize, usize)> {
        let layers = self.plan.layers.iter().enumerate();
        layers
            .filter_map(|(index, l)| match &l.op {
                Op::Dropout { geometry } => Some((index, geometry.len)),
                _ => None,
            })
            .collect()
    }

    /// Gives each tower its share of the whole net's masks (one per dropout layer):
    /// its part of each image's values, or all of them before the first split layer.
    fn upload_mask_shares(&mut self, masks: &[Vec<f32>]) -> Result<()> {
        let (n, towers) = (self.batch, self.layout.towers);
        let dropouts = self.dropout_layers();
        for (t, tower) in self.towers.iter_mut().enumerate() {
            let shares: Vec<Vec<f32>> = masks
                .iter()
                .zip(&dropouts)
                .map(|(mask, &(index, len))| {
                    if index < self.layout.first_split {
                        mask.clone()
                    } else {
                        share_of(mask, towers, t, n, len / towers)
                    }
                })
                .collect();
            tower.upload_dropout_masks(&shares)?;
        }
        Ok(())
    }

    /// Draws the whole net's masks as [`Network`] does (one seed per dropout
    /// layer from the same generator), each tower drawing only its share on its
    /// own device: all of each image's values before the first split layer, its
    /// run of them after.
    fn draw_masks(&mut self) {
        let (n, towers, first_split) = (self.batch, self.layout.towers, self.layout.first_split);
        let seeds: Vec<u64> = self
            .dropout_layers()
            .iter()
            .map(|_| self.rng.next_u64())
            .collect();
        for (t, tower) in self.towers.iter_mut().enumerate() {
            // `len`: the tower's values per image, a share of the whole's after the split.
            tower.draw_masks_from(&seeds, |index, len| {
                if index < first_split {
                    Rows::packed(n, len)
                } else {
                    Rows {
                        count: n,
                        len,
                        offset: t * len,
                        stride: len * towers,
                    }
                }
            });
        }
    }

    /// Fills every tower's input buffer of gathered layer `layer` with all towers'
    /// shares, each image's side by side.
    fn gather_activations(&mut self, layer: usize) {
        let (n, towers) = (self.batch, self.layout.towers);
        let (from, to) = self.layout.exchange_buffers(layer);
        let share = self.layout.share_len(layer);
        self.before_pulls();
        for t in 0..towers {
            for s in 0..towers {
                let placed = Rows {
                    count: n,
                    len: share,
                    offset: s * share,
                    stride: share * towers,
                };
                let packed = Rows::packed(n, share);
                if s == t {
                    let (backend, src, dst) = self.towers[t].backend_and_activations(from, to);
                    backend.pull_rows(backend, src, packed, dst, placed);
                } else {
                    let (source, target) = pair_mut(&mut self.towers, s, t);
                    let (backend, dst) = target.backend_and_activation(to);
                    backend.pull_rows(
                        source.backend(),
                        source.activation(from),
                        packed,
                        dst,
                        placed,
                    );
                }
            }
        }
        self.after_pulls();
    }

    /// After the backward pass of gathered layer `layer`, gradient buffer `current`
    /// of every tower holds the gradient of the whole gathered input; replaces it
    /// in each tower by the sum over towers of that tower's share, packed.
    fn scatter_gradients(&mut self, layer: usize, current: usize) {
        let (n, towers) = (self.batch, self.layout.towers);
        let share = self.layout.share_len(layer);
        let slot = |s: usize| Rows {
            count: n,
            len: share,
            offset: s * n * share,
            stride: share,
        };
        // Tower t's share of every tower's gradient, into slot s of t's scratch.
        self.before_pulls();
        for (t, scratch) in self.exchange.iter_mut().enumerate() {
            let own = &self.towers[t];
            for (s, source) in self.towers.iter().enumerate() {
                let shared = Rows {
                    count: n,
                    len: share,
                    offset: t * share,
                    stride: share * towers,
                };
                own.backend().pull_rows(
                    source.backend(),
                    source.gradient(current),
                    shared,
                    scratch,
                    slot(s),
                );
            }
        }
        self.after_pulls();
        // The sum, in tower order (as one device adds the paths into one input).
        for (tower, scratch) in self.towers.iter_mut().zip(&self.exchange) {
            let (backend, sum) = tower.backend_and_gradient(current);
            let packed = Rows::packed(n, share);
            backend.pull_rows(backend, scratch, slot(0), sum, packed);
            for s in 1..towers {
                backend.add_rows(scratch, slot(s), sum, packed);
            }
        }
    }

    /// Orders every tower's next work (its pulls) after the work queued so far on
    /// the others, which produces what it pulls. Every tower waits before any
    /// queues a pull, so no tower's pulls wait for another's.
    fn before_pulls(&self) {
        for (t, puller) in self.towers.iter().enumerate() {
            for (s, source) in self.towers.iter().enumerate() {
                if s != t {
                    puller.backend().wait_for(source.backend());
                }
            }
        }
    }

    /// Orders every tower's later work after the other towers' pulls from it, so
    /// that nothing a tower pulled from is overwritten before the pull has run.
    fn after_pulls(&self) {
        for (s, source) in self.towers.iter().enumerate() {
            for (t, puller) in self.towers.iter().enumerate() {
                if s != t {
                    source.backend().wait_for(puller.backend());
                }
            }
        }
    }

    /// The last layer's output of every tower laid side by side: `n x classes`.
    fn gather_output(&self, index: usize) -> Vec<f32> {
        let n = self.batch;
        let shares: Vec<Vec<f32>> = self.towers.iter().map(|t| t.layer_output(index)).collect();
        let share = self.layout.tower.layers[index].output.len();
        let mut whole = vec![0.0; n * share * shares.len()];
        interleave(&shares, n, share, &mut whole);
        whole
    }
}

impl<B: Backend> Model for Towers<B> {
    fn describe(&self) -> String {
        let devices: Vec<String> = self.towers.iter().map(|t| t.backend().describe()).collect();
        format!("{} towers: {}", self.towers.len(), devices.join(" | "))
    }
    fn plan(&self) -> &Plan {
        &self.plan
    }
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn rng(&self) -> &Rng {
        &self.rng
    }
    fn set_rng(&mut self, rng: Rng) {
        self.rng = rng;
    }
    fn synchronize(&self) {
        self.towers.iter().for_each(|t| t.backend().synchronize());
    }

    fn param_values(&self, index: usize) -> Vec<f32> {
        self.towers
            .iter()
            .flat_map(|t| t.param_values(index))
            .collect()
    }
    fn param_grad(&self, index: usize) -> Vec<f32> {
        self.towers
            .iter()
            .flat_map(|t| t.param_grad(index))
            .collect()
    }
    fn param_velocity(&self, index: usize) -> Vec<f32> {
        self.towers
            .iter()
            .flat_map(|t| t.param_velocity(index))
            .collect()
    }
    fn set_param_values(&mut self, index: usize, values: &[f32]) -> Result<()> {
        let info = &self.plan.params[index];
        if values.len() != info.len() {
            return Err(input_error(
                &info.name,
                format!("{} values (shape {:?})", info.len(), info.shape),
                format!("{} values", values.len()),
            ));
        }
        let share = values.len() / self.towers.len();
        for (tower, part) in self.towers.iter_mut().zip(values.chunks_exact(share)) {
            tower.set_param_values(index, part)?;
        }
        Ok(())
    }
    fn set_param_velocity(&mut self, index: usize, values: &[f32]) -> Result<()> {
        let info = &self.plan.params[index];
        if values.len() != info.len() {
            return Err(input_error(
                &info.name,
                format!("{} velocity values", info.len()),
                format!("{} values", values.len()),
            ));
        }
        let share = values.len() / self.towers.len();
        for (tower, part) in self.towers.iter_mut().zip(values.chunks_exact(share)) {
            tower.set_param_velocity(index, part)?;
        }
        Ok(())
    }
    fn set_frozen(&mut self, index: usize, frozen: bool) {
        self.towers
            .iter_mut()
            .for_each(|t| t.set_frozen(index, frozen));
    }

    fn set_input(&mut self, images: &[f32]) -> Result<usize> {
        let mut n = 0;
        for tower in &mut self.towers {
            n = tower.set_input(images)?;
        }
        self.batch = n;
        Ok(n)
    }
    fn cuts_views(&self) -> bool {
        self.towers.iter().any(|t| t.backend().cuts_views())
    }
    fn set_mean_image(&mut self, mean: &[f32]) -> Result<()> {
        self.towers
            .iter_mut()
            .try_for_each(|t| t.set_mean_image(mean))
    }
    /// Every tower cuts the whole input: the towers share only the image.
    fn set_input_stored(&mut self, batch: &StoredBatch) -> Result<usize> {
        let mut n = 0;
        for tower in &mut self.towers {
            n = tower.set_input_stored(batch)?;
        }
        self.batch = n;
        Ok(n)
    }
    fn set_next_dropout_masks(&mut self, masks: &[Vec<f32>]) -> Result<()> {
        let n = self.batch;
        let dropouts: Vec<usize> = self.dropout_layers().iter().map(|&(_, len)| len).collect();
        if masks.len() != dropouts.len() {
            return Err(input_error(
                "dropout masks",
                format!("one mask per dropout layer ({})", dropouts.len()),
                format!("{} masks", masks.len()),
            ));
        }
        if let Some((mask, len)) = masks
            .iter()
            .zip(&dropouts)
            .find(|(m, len)| m.len() != n * *len)
        {
            return Err(input_error(
                "dropout masks",
                format!("masks of {} values ({n} images x {len})", n * len),
                format!("a mask of {} values", mask.len()),
            ));
        }
        self.upload_mask_shares(masks)?;
        self.masks_given = true;
        Ok(())
    }

    fn forward(&mut self, mode: Mode) {
        assert!(self.batch > 0, "forward called before set_input");
        if mode == Mode::Train && !self.masks_given {
            self.draw_masks();
        }
        for stretch in self.stretches() {
            if stretch.start > 0 {
                self.gather_activations(stretch.start);
            }
            for tower in &mut self.towers {
                tower.forward_layers(stretch.clone(), mode);
            }
        }
        self.masks_given = false;
    }

    fn logits(&self) -> Vec<f32> {
        self.gather_output(self.plan.layers.len() - 1)
    }

    fn layer_output(&self, index: usize) -> Vec<f32> {
        // Layers before the first split one see the whole input in every tower.
        if index < self.layout.first_split {
            self.towers[0].layer_output(index)
        } else {
            self.gather_output(index)
        }
    }

    fn backward(&mut self, labels: &[u32]) -> Result<f32> {
        let n = self.batch;
        let classes = self.plan.classes();
        check_labels(labels, n, classes)?;
        let logits = self.logits();
        let mut dlogits = vec![0.0; n * classes];
        let loss = reference::softmax_cross_entropy(classes, n, &logits, labels, &mut dlogits);
        let towers = self.layout.towers;
        for (t, tower) in self.towers.iter_mut().enumerate() {
            tower.zero_grads();
            let (backend, buffer) = tower.backend_and_gradient(0);
            backend.upload(&share_of(&dlogits, towers, t, n, classes / towers), buffer);
        }
        let mut current = 0;
        for stretch in self.stretches().into_iter().rev() {
            // Every tower runs the same layers, so their buffers swap alike.
            let start = current;
            for tower in &mut self.towers {
                current = tower.backward_layers(stretch.clone(), start);
            }
            if stretch.start > 0 {
                self.scatter_gradients(stretch.start, current);
            }
        }
        Ok(loss)
    }

    fn sgd_step(&mut self, sgd: &Sgd) {
        self.towers.iter_mut().for_each(|t| t.sgd_step(sgd));
    }

    fn record_layer_times(&mut self, on: bool) {
        self.towers
            .iter_mut()
            .for_each(|t| t.record_layer_times(on));
    }

    /// The towers' times added up (they run one after the other).
    fn layer_times(&self) -> Option<LayerTimes> {
        let mut total: Option<LayerTimes> = None;
        for times in self.towers.iter().filter_map(|t| t.layer_times()) {
            match &mut total {
                None => total = Some(times.clone()),
                Some(total) => {
                    for (a, b) in total.forward.iter_mut().zip(&times.forward) {
                        *a += b;
                    }
                    for (a, b) in total.backward.iter_mut().zip(&times.backward) {
                        *a += b;
                    }
                }
            }
        }
        total
    }
}
