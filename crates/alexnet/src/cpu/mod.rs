//! The two CPU backends: [`Cpu`], the fast one, and [`ReferenceCpu`], which runs
//! the readable reference loops of [`reference`](mod@reference) through the same contract, so
//! whole networks can be compared layer by layer and step by step.

mod buffer;
pub mod fast;
pub mod reference;

pub use buffer::CpuBuffer;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::layers::Rows;
use crate::layers::{ConvGeometry, DropoutGeometry, LinearGeometry, LrnGeometry, PoolGeometry};
use crate::precision::{Bf16Kernel, Precision, Products};
use fast::buffers::ConvBuffers;
use std::sync::Arc;

/// The fast CPU backend: GEMM and Winograd convolutions, vectorised passes, on a
/// thread pool of its own. Its matrix products are f32 unless built with
/// [`Cpu::with_products`] for bf16.
///
/// Each backend owns its pool and the buffers its convolutions keep between
/// calls, so two backends (the paper's two towers on the CPU) never share or
/// wait for each other's. A clone shares both with the original; make a new
/// backend for an independent one.
#[derive(Clone, Debug)]
pub struct Cpu {
    products: Products,
    pool: Arc<rayon::ThreadPool>,
    buffers: Arc<ConvBuffers>,
    /// Ask for stored batches, as a GPU does (see [`Cpu::with_stored_batches`]).
    stored_batches: bool,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu {
            products: Products::default(),
            pool: Arc::new(new_pool(None).expect("a thread pool with one thread per core")),
            buffers: Arc::default(),
            stored_batches: false,
        }
    }
}

/// A pool of `threads` workers (one per core when `None`).
fn new_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let builder = rayon::ThreadPoolBuilder::new().thread_name(|i| format!("alexnet-cpu-{i}"));
    let builder = match threads {
        Some(threads) => builder.num_threads(threads),
        None => builder,
    };
    builder.build().map_err(|e| Error::Input {
        what: "threads".into(),
        expected: "a thread pool the system can start".into(),
        found: format!(
            "{} threads: {e}",
            threads.map_or("one per core".into(), |t| t.to_string())
        ),
    })
}

impl Cpu {
    /// f32 products, one thread per core.
    pub fn new() -> Self {
        Self::default()
    }

    /// The given precision and bf16 kernel; an error names a kernel this CPU lacks.
    pub fn with_products(products: Products) -> Result<Self> {
        if products.precision == Precision::Tf32 {
            return Err(Error::Input {
                what: "precision".into(),
                expected: "fp32 or bf16 on the CPU (tf32 is a GPU tensor-core format)".into(),
                found: "tf32".into(),
            });
        }
        if products.precision == Precision::Bf16 && !products.bf16_kernel.is_available() {
            return Err(Error::Input {
                what: "bf16 kernel".into(),
                expected: format!("one this CPU supports ({})", Bf16Kernel::detect().name()),
                found: products.bf16_kernel.name().into(),
            });
        }
        Ok(Cpu {
            products,
            ..Cpu::default()
        })
    }

    /// This backend on a pool of `threads` worker threads instead.
    pub fn with_threads(self, threads: usize) -> Result<Self> {
        if threads == 0 {
            return Err(Error::Input {
                what: "threads".into(),
                expected: "at least 1".into(),
                found: "0".into(),
            });
        }
        Ok(Cpu {
            pool: Arc::new(new_pool(Some(threads))?),
            ..self
        })
    }

    /// This backend on `pool`, which others may share: a program that runs its
    /// own work on the same pool (inside its `install`) then calls the layers
    /// from one of the pool's threads, where they just run, instead of handing
    /// each layer across to another pool's threads and waiting.
    pub fn with_pool(self, pool: Arc<rayon::ThreadPool>) -> Self {
        Cpu { pool, ..self }
    }

    /// This backend asking for stored batches and cutting the views itself, as a
    /// GPU does ([`Backend::cuts_views`]): the same results by the same cutting
    /// function, for testing that path where there is no GPU.
    pub fn with_stored_batches(self, stored: bool) -> Self {
        Cpu {
            stored_batches: stored,
            ..self
        }
    }

    pub fn products(&self) -> Products {
        self.products
    }

    /// Worker threads of this backend's pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `f` on this backend's threads: the kernels' parallel loops then
    /// share out their work among them (and `rayon::current_num_threads` is
    /// the pool's). From one of its own threads, `f` just runs.
    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// `len` zeros, or an error saying how much memory they would have taken
/// (rather than the process aborting). Zeroed memory from the allocator, as
/// `vec![0.0; len]` takes it: large buffers arrive as untouched zero pages, so
/// parts a run never uses cost no memory.
fn host_zeros(len: usize) -> Result<Vec<f32>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let error = || Error::Input {
        what: "memory".into(),
        expected: "an allocation this machine can make".into(),
        found: format!(
            "{} for a buffer of {len} values",
            crate::plan::bytes_text(len as u128 * 4)
        ),
    };
    let layout = std::alloc::Layout::array::<f32>(len).map_err(|_| error())?;
    // SAFETY: the layout's size is not zero (len > 0). A non-null result is
    // `len` f32s of zero bits (0.0), allocated by the global allocator with the
    // layout of `len` f32s: what `Vec::from_raw_parts` needs for length and
    // capacity `len`.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout).cast::<f32>();
        if ptr.is_null() {
            return Err(error());
        }
        Ok(Vec::from_raw_parts(ptr, len, len))
    }
}

/// `len` zero bytes, or an error saying how much memory they would have taken.
fn host_bytes(len: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len).map_err(|_| Error::Input {
        what: "memory".into(),
        expected: "an allocation this machine can make".into(),
        found: format!("{} for a record", crate::plan::bytes_text(len as u128)),
    })?;
    bytes.resize(len, 0);
    Ok(bytes)
}

/// This machine's physical memory, from the operating system.
fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf only reads system configuration; a negative result means
    // the value is unknown.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// The reference backend: naive loops on one thread. Slow; for tests.
#[derive(Clone, Debug, Default)]
pub struct ReferenceCpu;

/// The operations both CPU backends share: host memory (`$buffer` derefs to a `Vec<f32>`).
macro_rules! host_buffers {
    ($buffer:ty) => {
        type Buffer = $buffer;
        fn alloc(&self, len: usize) -> Result<$buffer> {
            Ok(host_zeros(len)?.into())
        }
        fn memory_bytes(&self) -> Option<u64> {
            physical_memory_bytes()
        }
        fn upload(&self, src: &[f32], dst: &mut $buffer) {
            dst[..src.len()].copy_from_slice(src);
        }
        fn buffer_mut<'a>(&self, buf: &'a mut $buffer, len: usize) -> crate::BufferMut<'a> {
            crate::BufferMut::Host(&mut buf[..len])
        }
        fn download(&self, src: &$buffer, dst: &mut [f32]) {
            dst.copy_from_slice(&src[..dst.len()]);
        }
        fn fill(&self, buf: &mut $buffer, value: f32) {
            buf.fill(value);
        }
        fn copy(&self, len: usize, src: &$buffer, dst: &mut $buffer) {
            dst[..len].copy_from_slice(&src[..len]);
        }
        fn pull_rows(
            &self,
            _from: &Self,
            src: &$buffer,
            src_rows: crate::layers::Rows,
            dst: &mut $buffer,
            dst_rows: crate::layers::Rows,
        ) {
            let len = src_rows.len;
            for (from, to) in src_rows.paired_starts(&dst_rows, "pulled") {
                dst[to..to + len].copy_from_slice(&src[from..from + len]);
            }
        }
        fn add_rows(
            &self,
            src: &$buffer,
            src_rows: crate::layers::Rows,
            dst: &mut $buffer,
            dst_rows: crate::layers::Rows,
        ) {
            let len = src_rows.len;
            for (from, to) in src_rows.paired_starts(&dst_rows, "added") {
                for (d, s) in dst[to..to + len].iter_mut().zip(&src[from..from + len]) {
                    *d += s;
                }
            }
        }
        fn cut_views(
            &self,
            batch: &crate::input::StoredBatch,
            mean: Option<&$buffer>,
            dst: &mut $buffer,
        ) {
            crate::input::cut_views(batch, mean.map(|m| &m[..]), &mut dst[..]);
        }
    };
}

impl Backend for Cpu {
    host_buffers!(CpuBuffer);

    fn cuts_views(&self) -> bool {
        self.stored_batches
    }

    fn describe(&self) -> String {
        let products = match self.products.precision {
            // `with_products` refuses tf32, so a Cpu never holds it.
            Precision::F32 | Precision::Tf32 => "fp32 products".to_string(),
            Precision::Bf16 => format!("bf16 products on {}", self.products.bf16_kernel.name()),
        };
        format!(
            "cpu ({} threads, {}, {products})",
            self.pool.current_num_threads(),
            fast::simd::instruction_set()
        )
    }
    fn conv_forward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CpuBuffer,
        w: &CpuBuffer,
        b: &CpuBuffer,
        y: &mut CpuBuffer,
    ) {
        self.install(|| fast::conv::forward(g, n, x, w, b, y, self.products, &self.buffers, false))
    }
    fn conv_relu_forward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CpuBuffer,
        w: &CpuBuffer,
        b: &CpuBuffer,
        y: &mut CpuBuffer,
    ) {
        self.install(|| fast::conv::forward(g, n, x, w, b, y, self.products, &self.buffers, true))
    }
    fn conv_backward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &CpuBuffer,
        w: &CpuBuffer,
        dy: &CpuBuffer,
        dw: &mut CpuBuffer,
        db: &mut CpuBuffer,
        dx: Option<&mut CpuBuffer>,
    ) {
        self.install(|| {
            fast::conv::backward(
                g,
                n,
                x,
                w,
                dy,
                dw,
                db,
                dx.map(|d| d.as_mut_slice()),
                self.products,
                &self.buffers,
            )
        })
    }
    fn linear_forward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &CpuBuffer,
        w: &CpuBuffer,
        b: &CpuBuffer,
        y: &mut CpuBuffer,
    ) {
        self.install(|| {
            if n >= crate::precision::BF16_MIN_BATCH {
                fast::linear::forward(g, n, x, w, b, y, self.products)
            } else if self.products.precision == Precision::Bf16 {
                // Small batches read every weight per image: from a bf16 copy, made
                // on first use and kept while the weights are unchanged.
                fast::gemv::forward(g, n, x, w.bf16(), b, y)
            } else {
                fast::gemv::forward(g, n, x, w, b, y)
            }
        })
    }
    fn linear_backward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &CpuBuffer,
        w: &CpuBuffer,
        dy: &CpuBuffer,
        dw: &mut CpuBuffer,
        db: &mut CpuBuffer,
        dx: Option<&mut CpuBuffer>,
    ) {
        self.install(|| {
            fast::linear::backward(
                g,
                n,
                x,
                w,
                dy,
                dw,
                db,
                dx.map(|d| d.as_mut_slice()),
                self.products,
            )
        })
    }
    fn relu_forward(&self, len: usize, x: &mut CpuBuffer) {
        self.install(|| fast::elementwise::relu_forward(&mut x[..len]))
    }
    fn relu_backward(&self, len: usize, y: &CpuBuffer, d: &mut CpuBuffer) {
        self.install(|| fast::elementwise::relu_backward(&y[..len], &mut d[..len]))
    }
    fn tanh_forward(&self, len: usize, x: &mut CpuBuffer) {
        self.install(|| fast::elementwise::tanh_forward(&mut x[..len]))
    }
    fn tanh_backward(&self, len: usize, y: &CpuBuffer, d: &mut CpuBuffer) {
        self.install(|| fast::elementwise::tanh_backward(&y[..len], &mut d[..len]))
    }
    fn lrn_forward(&self, g: &LrnGeometry, n: usize, x: &CpuBuffer, y: &mut CpuBuffer) {
        self.install(|| fast::lrn::forward(g, n, x, y))
    }
    fn lrn_backward(
        &self,
        g: &LrnGeometry,
        n: usize,
        x: &CpuBuffer,
        dy: &CpuBuffer,
        dx: &mut CpuBuffer,
    ) {
        self.install(|| fast::lrn::backward(g, n, x, dy, dx))
    }
    fn max_pool_forward(&self, g: &PoolGeometry, n: usize, x: &CpuBuffer, y: &mut CpuBuffer) {
        self.install(|| fast::pool::max_forward(g, n, x, y))
    }
    fn max_pool_backward(
        &self,
        g: &PoolGeometry,
        n: usize,
        x: &CpuBuffer,
        dy: &CpuBuffer,
        dx: &mut CpuBuffer,
    ) {
        self.install(|| fast::pool::max_backward(g, n, x, dy, dx))
    }
    type PoolRecord = Vec<u8>;
    fn alloc_pool_record(&self, pool: &PoolGeometry, images: usize) -> Result<Vec<u8>> {
        host_bytes(images.saturating_mul(fast::lrn_pool::record_len(pool)))
    }
    fn lrn_max_pool_forward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &CpuBuffer,
        y: &mut CpuBuffer,
        record: Option<&mut Vec<u8>>,
    ) {
        self.install(|| {
            fast::lrn_pool::forward(lrn, pool, n, x, y, record.map(|r| r.as_mut_slice()))
        })
    }
    fn lrn_max_pool_backward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &CpuBuffer,
        record: &Vec<u8>,
        dy: &CpuBuffer,
        dx: &mut CpuBuffer,
    ) {
        self.install(|| fast::lrn_pool::backward(lrn, pool, n, x, record, dy, dx))
    }
    fn avg_pool_forward(&self, g: &PoolGeometry, n: usize, x: &CpuBuffer, y: &mut CpuBuffer) {
        self.install(|| fast::pool::avg_forward(g, n, x, y))
    }
    fn avg_pool_backward(&self, g: &PoolGeometry, n: usize, dy: &CpuBuffer, dx: &mut CpuBuffer) {
        self.install(|| fast::pool::avg_backward(g, n, dy, dx))
    }
    fn dropout_mask(&self, g: &DropoutGeometry, seed: u64, values: Rows, mask: &mut CpuBuffer) {
        self.install(|| {
            crate::layers::dropout::fill_mask_rows(g, seed, values, mask.as_mut_slice())
        })
    }
    fn dropout_forward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &CpuBuffer,
        x: &CpuBuffer,
        y: &mut CpuBuffer,
    ) {
        self.install(|| {
            let len = n * g.len;
            fast::elementwise::multiply(&x[..len], &mask[..len], &mut y[..len])
        })
    }
    fn dropout_backward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &CpuBuffer,
        dy: &CpuBuffer,
        dx: &mut CpuBuffer,
    ) {
        self.install(|| {
            let len = n * g.len;
            fast::elementwise::multiply(&dy[..len], &mask[..len], &mut dx[..len])
        })
    }
    fn softmax_cross_entropy(
        &self,
        classes: usize,
        n: usize,
        logits: &CpuBuffer,
        labels: &[u32],
        dlogits: &mut CpuBuffer,
    ) -> f32 {
        self.install(|| {
            // A few thousand values per batch: the reference is fast enough.
            reference::softmax_cross_entropy(classes, n, logits, labels, dlogits)
        })
    }
    fn sgd_update(
        &self,
        w: &mut CpuBuffer,
        dw: &CpuBuffer,
        v: &mut CpuBuffer,
        lr: f32,
        momentum: f32,
        decay: f32,
    ) {
        self.install(|| fast::elementwise::sgd_update(w, dw, v, lr, momentum, decay))
    }
}

impl Backend for ReferenceCpu {
    host_buffers!(Vec<f32>);

    fn describe(&self) -> String {
        "cpu reference (naive loops, 1 thread)".to_string()
    }
    fn conv_forward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        y: &mut Vec<f32>,
    ) {
        reference::conv_forward(g, n, x, w, b, y)
    }
    fn conv_backward(
        &self,
        g: &ConvGeometry,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dx: Option<&mut Vec<f32>>,
    ) {
        reference::conv_backward(g, n, x, w, dy, dw, db, dx.map(|d| d.as_mut_slice()))
    }
    fn linear_forward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: &Vec<f32>,
        y: &mut Vec<f32>,
    ) {
        reference::linear_forward(g, n, x, w, b, y)
    }
    fn linear_backward(
        &self,
        g: &LinearGeometry,
        n: usize,
        x: &Vec<f32>,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dw: &mut Vec<f32>,
        db: &mut Vec<f32>,
        dx: Option<&mut Vec<f32>>,
    ) {
        reference::linear_backward(g, n, x, w, dy, dw, db, dx.map(|d| d.as_mut_slice()))
    }
    fn relu_forward(&self, len: usize, x: &mut Vec<f32>) {
        reference::relu_forward(&mut x[..len])
    }
    fn relu_backward(&self, len: usize, y: &Vec<f32>, d: &mut Vec<f32>) {
        reference::relu_backward(&y[..len], &mut d[..len])
    }
    fn tanh_forward(&self, len: usize, x: &mut Vec<f32>) {
        reference::tanh_forward(&mut x[..len])
    }
    fn tanh_backward(&self, len: usize, y: &Vec<f32>, d: &mut Vec<f32>) {
        reference::tanh_backward(&y[..len], &mut d[..len])
    }
    fn lrn_forward(&self, g: &LrnGeometry, n: usize, x: &Vec<f32>, y: &mut Vec<f32>) {
        reference::lrn_forward(g, n, x, y)
    }
    fn lrn_backward(
        &self,
        g: &LrnGeometry,
        n: usize,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) {
        reference::lrn_backward(g, n, x, dy, dx)
    }
    fn max_pool_forward(&self, g: &PoolGeometry, n: usize, x: &Vec<f32>, y: &mut Vec<f32>) {
        reference::max_pool_forward(g, n, x, y)
    }
    fn max_pool_backward(
        &self,
        g: &PoolGeometry,
        n: usize,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) {
        reference::max_pool_backward(g, n, x, dy, dx)
    }
    /// The reference records positions as values of its float type.
    type PoolRecord = Vec<f32>;
    fn alloc_pool_record(&self, pool: &PoolGeometry, images: usize) -> Result<Vec<f32>> {
        host_zeros(images.saturating_mul(pool.output.len()))
    }
    fn lrn_max_pool_forward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        record: Option<&mut Vec<f32>>,
    ) {
        reference::lrn_max_pool_forward(lrn, pool, n, x, y, record.map(|r| r.as_mut_slice()))
    }
    fn lrn_max_pool_backward(
        &self,
        lrn: &LrnGeometry,
        pool: &PoolGeometry,
        n: usize,
        x: &Vec<f32>,
        record: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) {
        reference::lrn_max_pool_backward(lrn, pool, n, x, record, dy, dx)
    }
    fn avg_pool_forward(&self, g: &PoolGeometry, n: usize, x: &Vec<f32>, y: &mut Vec<f32>) {
        reference::avg_pool_forward(g, n, x, y)
    }
    fn avg_pool_backward(&self, g: &PoolGeometry, n: usize, dy: &Vec<f32>, dx: &mut Vec<f32>) {
        reference::avg_pool_backward(g, n, dy, dx)
    }
    fn dropout_mask(&self, g: &DropoutGeometry, seed: u64, values: Rows, mask: &mut Vec<f32>) {
        crate::layers::dropout::fill_mask_rows(g, seed, values, mask);
    }
    fn dropout_forward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &Vec<f32>,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
    ) {
        reference::dropout_forward(g, n, mask, x, y)
    }
    fn dropout_backward(
        &self,
        g: &DropoutGeometry,
        n: usize,
        mask: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) {
        reference::dropout_backward(g, n, mask, dy, dx)
    }
    fn softmax_cross_entropy(
        &self,
        classes: usize,
        n: usize,
        logits: &Vec<f32>,
        labels: &[u32],
        dlogits: &mut Vec<f32>,
    ) -> f32 {
        reference::softmax_cross_entropy(classes, n, logits, labels, dlogits)
    }
    fn sgd_update(
        &self,
        w: &mut Vec<f32>,
        dw: &Vec<f32>,
        v: &mut Vec<f32>,
        lr: f32,
        momentum: f32,
        decay: f32,
    ) {
        reference::sgd_update(w, dw, v, lr, momentum, decay)
    }
}
