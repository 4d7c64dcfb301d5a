//! `alexnet serve`: a checkpoint behind an HTTP API, with a page to try it.
//!
//! Threads, and why: one inference worker owns the network and runs every
//! forward pass on the engine's `--threads` pool, gathering the requests of
//! all connections into batches ([`worker`]); uploads are decoded and resized
//! on a pool of their own ([`decode`], `--decode-threads`); the async runtime
//! (`--http-threads`, 1 by default) only accepts, reads and answers. On a
//! machine with few cores the forward pass must not share its cores with more
//! than that.

mod api;
mod decode;
mod http;
mod metrics;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use alexnet::checkpoint;
use alexnet_train::Preprocess;
use anyhow::{Context, Result, bail};
use clap::Args;

use crate::engine::EngineSettings;
use crate::features::FeatureFile;

/// Default largest request body: 20 MB.
const DEFAULT_BODY_BYTES: usize = 20 * 1000 * 1000;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    weights: crate::weights::CheckpointArg,
    /// Address and port to listen on (port 0: any free port, printed at start).
    /// Other than loopback, anyone who can reach the machine can use it: see --api-key.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Most images in one forward pass (and in one request).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_batch: u32,
    /// Longest a request waits for others to share its forward pass.
    #[arg(long, default_value_t = 5)]
    max_delay_ms: u64,
    /// Most requests admitted at once (decoding, waiting or running); more get 429.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_queue: u32,
    /// A request not answered within this time gets 503.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// A client must send a request's headers, and then its body, within this time.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout_ms: u64,
    /// Largest request body, in bytes (more gets 413).
    #[arg(long, default_value_t = DEFAULT_BODY_BYTES)]
    max_body_bytes: usize,
    /// Images whose header announces more pixels are refused (400).
    #[arg(long, default_value_t = crate::classify::MAX_PIXELS)]
    max_pixels: u64,
    /// Threads that decode and resize uploads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    decode_threads: u32,
    /// Threads of the HTTP runtime (accepting, reading, answering).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    http_threads: u32,
    /// A features file written by `alexnet features` with this checkpoint:
    /// `/v1/similar` answers with its nearest images.
    #[arg(long)]
    index: Option<PathBuf>,
    /// The layer whose outputs `/v1/features` gives (default: the last hidden
    /// linear layer, as `features`).
    #[arg(long)]
    layer: Option<String>,
    /// Require `Authorization: Bearer KEY` on every route but `/`, `/healthz`
    /// and `/readyz`.
    #[arg(long, env = "ALEXNET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// On SIGTERM or Ctrl-C, wait at most this long for requests in flight.
    #[arg(long, default_value_t = 10_000)]
    shutdown_ms: u64,
    #[command(flatten)]
    pub placement: crate::device::Placement,
    #[command(flatten)]
    pub engine: crate::engine::EngineArgs,
}

/// The limits every request meets.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub read_timeout: Duration,
}

/// A features file to search, checked against the served net.
pub struct Index {
    pub file: FeatureFile,
    pub path: PathBuf,
}

/// Everything the handlers share.
pub struct Server {
    pub decoder: decode::Decoder,
    pub queue: std::sync::mpsc::SyncSender<worker::Job>,
    pub admission: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<metrics::Metrics>,
    pub ready: Arc<AtomicBool>,
    /// `GET /v1/model`, made once.
    pub model: serde_json::Value,
    pub classes: usize,
    pub feature_label: String,
    /// `GET /v1/kernels.png` (none when the first layer's kernels cannot be drawn).
    pub kernels_png: Option<Vec<u8>>,
    pub index: Option<Arc<Index>>,
    pub limits: Limits,
    pub api_key: Option<String>,
}

pub fn run(args: ServeArgs, engine: &EngineSettings) -> Result<()> {
    let started = std::time::Instant::now();
    let checkpoint = args.weights.path()?;
    let server = build(&args, &checkpoint, engine)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.http_threads as usize)
        .thread_name("http")
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    let timeouts = http::Timeouts {
        header: Duration::from_millis(args.read_timeout_ms),
        shutdown: Duration::from_millis(args.shutdown_ms),
    };
    let body_limit = args.max_body_bytes;
    let addr = args.addr;
    let api_key_set = server.api_key.is_some();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--addr {addr}: cannot listen there"))?;
        let local = listener.local_addr()?;
        if !local.ip().is_loopback() && !api_key_set {
            eprintln!(
                "note: listening on {local}, reachable from other machines, without --api-key"
            );
        }
        println!(
            "serving {} on http://{local} (loaded in {:.1} s)",
            checkpoint.display(),
            started.elapsed().as_secs_f64()
        );
        let router = api::router(Arc::new(server), body_limit);
        http::serve(listener, router, timeouts, http::shutdown_signal()).await
    })
}

/// Loads the checkpoint, starts the worker (which builds the net) and the decoder.
fn build(args: &ServeArgs, path: &Path, engine: &EngineSettings) -> Result<Server> {
    let ckpt = Arc::new(checkpoint::load_weights(path)?);
    let preprocess = Preprocess::from_checkpoint(&ckpt)?;
    let max_batch = args.max_batch as usize;
    let metrics = Arc::new(metrics::Metrics::new(max_batch));
    let ready = Arc::new(AtomicBool::new(false));
    let max_queue = args.max_queue as usize;
    let batching = worker::Batching {
        max_batch,
        max_delay: Duration::from_millis(args.max_delay_ms),
    };
    let make = {
        let (ckpt, placement, engine) = (Arc::clone(&ckpt), args.placement.clone(), engine.clone());
        let (path, layer) = (path.to_path_buf(), args.layer.clone());
        move || {
            let mut net = placement
                .nets(&engine)
                .network_zeroed(&ckpt.spec, max_batch)?;
            ckpt.apply(net.as_mut(), &path, false)?;
            let feature_layer = crate::features::feature_layer(net.as_ref(), layer.as_deref())?;
            Ok((net, feature_layer))
        }
    };
    let (queue, built) = worker::spawn(
        make,
        batching,
        Arc::clone(&metrics),
        Arc::clone(&ready),
        max_queue,
    )?;
    let plan = &built.plan;
    let feature_label = plan.layers[built.feature_layer].label.clone();
    let feature_dim = plan.layers[built.feature_layer].output.len();
    let digest = crate::digest::file_sha256(path)?;
    let index = args
        .index
        .as_deref()
        .map(|index| open_index(index, &feature_label, feature_dim, path, &digest))
        .transpose()?
        .map(Arc::new);
    let shape = plan.input_shape();
    let preparation = decode::Preparation {
        side: crate::classify::stored_side(&preprocess)?,
        height: shape.height,
        width: shape.width,
        max_pixels: args.max_pixels,
        preprocess,
    };
    let model = api::describe_model(&api::ModelFacts {
        plan,
        spec: &ckpt.spec,
        preparation: &preparation,
        device: &built.device,
        checkpoint: path,
        digest: &digest,
        feature_label: &feature_label,
        max_batch,
        max_delay_ms: args.max_delay_ms,
        index: index.as_deref(),
    });
    let kernels_png = crate::kernels::draw(&ckpt, 4, 8)
        .ok()
        .and_then(|drawing| api::png(&drawing.image).ok());
    Ok(Server {
        decoder: decode::Decoder::new(args.decode_threads as usize, preparation)?,
        queue,
        admission: Arc::new(tokio::sync::Semaphore::new(max_queue)),
        metrics,
        ready,
        model,
        classes: plan.classes(),
        feature_label,
        kernels_png,
        index,
        limits: Limits {
            max_batch,
            max_body_bytes: args.max_body_bytes,
            timeout: Duration::from_millis(args.timeout_ms),
            read_timeout: Duration::from_millis(args.read_timeout_ms),
        },
        api_key: args.api_key.clone().filter(|key| !key.is_empty()),
    })
}

/// Opens `--index` and refuses a file that does not belong to the served net:
/// vectors of another layer, of another length, or from another checkpoint.
fn open_index(
    path: &Path,
    layer: &str,
    dim: usize,
    checkpoint: &Path,
    digest: &str,
) -> Result<Index> {
    let file = FeatureFile::open(path).with_context(|| format!("--index {}", path.display()))?;
    let name = path.display();
    let theirs = |key: &str| {
        file.metadata
            .get(key)
            .map_or("(not recorded)", String::as_str)
    };
    if theirs("layer") != layer || file.dim != dim {
        bail!(
            "--index {name}: its vectors are {} values of {}; the served net's features are {dim} \
             values of {layer} (choose it with --layer, or write the features with this checkpoint)",
            file.dim,
            theirs("layer")
        );
    }
    let same_checkpoint = match file.metadata.get("checkpoint_sha256") {
        Some(recorded) => recorded == digest,
        // Files written before digests were recorded: the same file by path.
        None => file
            .metadata
            .get("checkpoint")
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|p| std::fs::canonicalize(checkpoint).is_ok_and(|c| c == p)),
    };
    if !same_checkpoint {
        bail!(
            "--index {name}: it was written from checkpoint {} (sha256 {}), not from the served \
             {} (sha256 {digest}); write it again with `alexnet features --checkpoint {}`",
            theirs("checkpoint"),
            theirs("checkpoint_sha256"),
            checkpoint.display(),
            checkpoint.display()
        );
    }
    Ok(Index {
        file,
        path: path.to_path_buf(),
    })
}
