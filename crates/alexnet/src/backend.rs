//! The backend contract: the operations a network needs, over buffers that live
//! wherever the backend keeps them (host memory for the CPU backends, device
//! memory for a GPU). [`crate::Network`] is written against this trait only.
//!
//! Every operation works on the first `n` images of its buffers; buffers are sized
//! once for the largest batch. Conventions are those of [`crate::layers`]: forward
//! overwrites its output, backward overwrites `dx` and adds into `dw`/`db`.

use crate::error::Result;
use crate::input::StoredBatch;
use crate::layers::{
    ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, PoolGeometry, Rows,
};
use crate::model::BufferMut;

pub trait Backend: Send + Sync {
    /// A block of `f32` values owned by the backend.
    type Buffer: Send + 'static;

    /// A short description for reports: "cpu (2 threads, avx512)".
    fn describe(&self) -> String;

    // Memory: buffers, copies to and from the host.
    /// A zeroed buffer of `len` values.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;
    /// The memory buffers live in, in bytes, where the backend knows it: a net
    /// whose buffers would need more is refused before anything is allocated.
    fn memory_bytes(&self) -> Option<u64> {
        None
    }
    /// Copies `src` into the start of `dst`.
    fn upload(&self, src: &[f32], dst: &mut Self::Buffer);
    /// The first `len` values of `buf` where they live, for work done on them
    /// in place from outside the engine (sums across processes).
    fn buffer_mut<'a>(&self, buf: &'a mut Self::Buffer, len: usize) -> BufferMut<'a>;
    /// Copies `src` into the start of `dst` as [`Backend::upload`] does, for a
    /// network's input where [`Backend::overlaps_input_uploads`] says so: the
    /// caller alternates between two input buffers, so that `dst` was last used
    /// by work queued before the previous call of this method, and the copy may
    /// run while the work queued since then runs (on a GPU, on a stream of its
    /// own). Work queued after this call sees the copied values. The backend
    /// keeps the point of the previous call, so only one caller (one network)
    /// may use this method on a backend.
    fn upload_input(&self, src: &[f32], dst: &mut Self::Buffer) {
        self.upload(src, dst);
    }
    /// Whether [`Backend::upload_input`] overlaps queued work, so that a network
    /// keeps two input buffers and alternates between them (a GPU: the next
    /// batch's copy runs during this batch's backward pass).
    fn overlaps_input_uploads(&self) -> bool {
        false
    }
    /// Copies the start of `src` into `dst`.
    fn download(&self, src: &Self::Buffer, dst: &mut [f32]);
    fn fill(&self, buf: &mut Self::Buffer, value: f32);
    /// Copies the first `len` values of `src` into `dst`.
    fn copy(&self, len: usize, src: &Self::Buffer, dst: &mut Self::Buffer);

    // Input: batches cut from stored images where they live.
    /// Cuts the views of a validated `batch` into `dst` as [`crate::input::cut_view`]
    /// does, with `mean` (one value per stored byte) where the batch subtracts it.
    fn cut_views(&self, batch: &StoredBatch, mean: Option<&Self::Buffer>, dst: &mut Self::Buffer);
    /// Whether batches should arrive as stored images for [`Backend::cut_views`]
    /// rather than finished views: true where host-to-device copies cost (a GPU).
    fn cuts_views(&self) -> bool {
        false
    }

    // Ordering and exchange between backends (the towers' devices).
    /// Waits until queued work has finished (for timing); a no-op on the CPU.
    fn synchronize(&self) {}
    /// Makes the work queued on this backend from now on wait for the work queued
    /// so far on `other` (a backend with a queue of its own, a GPU's stream). A
    /// no-op where every operation has finished when its call returns (the CPU).
    fn wait_for(&self, other: &Self) {
        let _ = other;
    }
    /// Copies rows `src_rows` of `src`, a buffer of `from` (this backend or another
    /// of the same kind, perhaps on another device), into rows `dst_rows` of `dst`,
    /// a buffer of this backend; both name the same number of rows of the same
    /// length. Runs after the work queued so far on this backend only: the caller
    /// orders it after the work on `from` that writes `src` by calling
    /// `self.wait_for(from)` first, and the work `from` queues later that writes
    /// `src` again after the copy by `from.wait_for(self)`. (Separate, so that
    /// several backends can each wait for the others' results before any of
    /// them queues its copies, and their copies then run at the same time.)
    fn pull_rows(
        &self,
        from: &Self,
        src: &Self::Buffer,
        src_rows: Rows,
        dst: &mut Self::Buffer,
        dst_rows: Rows,
    );
    /// Adds rows `src_rows` of `src` into rows `dst_rows` of `dst` (both this
    /// backend's; the same number of rows of the same length): `dst += src`.
    fn add_rows(&self, src: &Self::Buffer, src_rows: Rows, dst: &mut Self::Buffer, dst_rows: Rows);

    // Layers, forward and backward (`crate::layers` gives their semantics).
    fn conv_forward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &Self::Buffer,
        w: &Self::Buffer,
        b: &Self::Buffer,
        y: &mut Self::Buffer,
    );
    /// A convolution followed by a ReLU: `y = max(0, conv(x, w) + b)`, which a
    /// backend may compute without a second pass over `y`.
    fn conv_relu_forward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &Self::Buffer,
        w: &Self::Buffer,
        b: &Self::Buffer,
        y: &mut Self::Buffer,
    ) {
        self.conv_forward(g, n, x, w, b, y);
        self.relu_forward(n * g.output.len(), y);
    }
    /// `dx` is `None` where the input gradient is not needed (the first layer).
    fn conv_backward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &Self::Buffer,
        w: &Self::Buffer,
        dy: &Self::Buffer,
        dw: &mut Self::Buffer,
        db: &mut Self::Buffer,
        dx: Option<&mut Self::Buffer>,
    );
    fn linear_forward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &Self::Buffer,
        w: &Self::Buffer,
        b: &Self::Buffer,
        y: &mut Self::Buffer,
    );
    fn linear_backward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &Self::Buffer,
        w: &Self::Buffer,
        dy: &Self::Buffer,
        dw: &mut Self::Buffer,
        db: &mut Self::Buffer,
        dx: Option<&mut Self::Buffer>,
    );
    /// In place on the first `len` values.
    fn relu_forward(&self, len: usize, x: &mut Self::Buffer);
    /// In place on the gradient, from the ReLU's output `y`.
    fn relu_backward(&self, len: usize, y: &Self::Buffer, d: &mut Self::Buffer);
    fn tanh_forward(&self, len: usize, x: &mut Self::Buffer);
    fn tanh_backward(&self, len: usize, y: &Self::Buffer, d: &mut Self::Buffer);
    fn lrn_forward(&self, g: &LrnGeometry, n: usize, x: &Self::Buffer, y: &mut Self::Buffer);
    fn lrn_backward(
        &self,
        g: &LrnGeometry,
        n: usize,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    );
    fn max_pool_forward(&self, g: &PoolGeometry, n: usize, x: &Self::Buffer, y: &mut Self::Buffer);
    fn max_pool_backward(
        &self,
        g: &PoolGeometry,
        n: usize,
        x: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    );

    // LRN and max pooling fused into one operation, with its record.
    /// What a fused LRN + max pooling's forward pass keeps for its backward pass
    /// instead of the LRN's output: on every backend here, each pooled output's
    /// winning position within its window (`ky * size + kx`), one byte each.
    type PoolRecord;
    /// A record for `images` images of the max pooling `pool`.
    fn alloc_pool_record(&self, pool: &PoolGeometry, images: usize) -> Result<Self::PoolRecord>;
    /// Local response normalisation followed by max pooling in one pass:
    /// `y = max_pool(lrn(x))`, without keeping `lrn(x)` (the paper's conv1 and
    /// conv2 blocks, where nothing else reads the LRN's output). Where `record`
    /// is given, it receives what [`Backend::lrn_max_pool_backward`] needs
    /// instead of `lrn(x)`. Test-mode passes give `None`.
    fn lrn_max_pool_forward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
        record: Option<&mut Self::PoolRecord>,
    );
    /// The gradient of the LRN's input `x` from the pooled output's gradient `dy`,
    /// with the `record` of the forward pass of the same batch.
    fn lrn_max_pool_backward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &Self::Buffer,
        record: &Self::PoolRecord,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    );
    fn avg_pool_forward(&self, g: &PoolGeometry, n: usize, x: &Self::Buffer, y: &mut Self::Buffer);
    fn avg_pool_backward(
        &self,
        g: &PoolGeometry,
        n: usize,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    );

    // Training: dropout, the loss and the SGD update.
    /// Fills the first `values.count * values.len` values of `mask` with the values
    /// `values` picks out of the dropout mask seeded by `seed`
    /// ([`crate::layers::dropout::fill_mask_rows`]; all of a network's mask is
    /// `Rows::packed(n, len)`, a tower's share of it a column of rows): every
    /// backend must give the same values. The default fills it on the host and
    /// uploads it.
    fn dropout_mask(&self, g: &DropoutGeometry, seed: u64, values: Rows, mask: &mut Self::Buffer) {
        let mut host = vec![0.0; values.count * values.len];
        crate::layers::dropout::fill_mask_rows(g, seed, values, &mut host);
        self.upload(&host, mask);
    }
    fn dropout_forward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &Self::Buffer,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
    );
    fn dropout_backward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    );
    /// Mean softmax cross-entropy over `n` rows of `classes` logits; writes the
    /// gradient of that mean into `dlogits` and returns the loss.
    fn softmax_cross_entropy(
        &self,
        classes: usize,
        n: usize,
        logits: &Self::Buffer,
        labels: &[u32],
        dlogits: &mut Self::Buffer,
    ) -> f32;
    /// The paper's SGD step on one parameter tensor (see [`crate::optim`]).
    fn sgd_update(
        &self,
        w: &mut Self::Buffer,
        dw: &Self::Buffer,
        v: &mut Self::Buffer,
        lr: f32,
        momentum: f32,
        decay: f32,
    );
}
