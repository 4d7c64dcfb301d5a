//! Decoding and resizing uploads, on a small pool of threads of its own
//! (`--decode-threads`): neither on the async runtime's threads, which must
//! stay free to accept and answer, nor on its blocking pool, which is unbounded.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use alexnet_train::Preprocess;
use axum::body::Bytes;
use tokio::sync::oneshot;

/// An upload turned into the net's input.
pub struct Decoded {
    pub input: Vec<f32>,
    /// The stored-size photo (CHW bytes), from which the crop is cut.
    pub photo: Vec<u8>,
    pub seconds: f64,
}

/// What every upload is turned into: the checkpoint's preprocessing.
pub struct Preparation {
    pub preprocess: Preprocess,
    /// The stored side photos are resized and cropped to, and the net's input crop.
    pub side: u32,
    pub height: usize,
    pub width: usize,
    /// Images whose header announces more pixels are refused.
    pub max_pixels: u64,
}

impl Preparation {
    /// Decodes, resizes and crops one image as `classify` does.
    pub fn decode(&self, bytes: &[u8]) -> Result<Decoded, String> {
        let started = Instant::now();
        let photo = alexnet_data::photo_from_bytes(bytes, self.side, self.max_pixels)?;
        let input = crate::classify::photo_input(&photo, &self.preprocess, self.height, self.width)
            .map_err(|e| format!("{e:#}"))?;
        Ok(Decoded {
            input,
            photo,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// The part of a stored-size photo the net sees (its centre crop), as RGB.
    pub fn crop(&self, photo: &[u8]) -> image::RgbImage {
        let side = self.side as usize;
        let (top, left) = ((side - self.height) / 2, (side - self.width) / 2);
        let plane = side * side;
        image::RgbImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            let at = (top + y as usize) * side + left + x as usize;
            image::Rgb([photo[at], photo[plane + at], photo[2 * plane + at]])
        })
    }
}

/// The pool and what it prepares.
pub struct Decoder {
    pool: rayon::ThreadPool,
    preparation: Arc<Preparation>,
}

impl Decoder {
    pub fn new(threads: usize, preparation: Preparation) -> anyhow::Result<Decoder> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("decode-{i}"))
            // A panic is caught in the job; never abort the process for one.
            .panic_handler(|_| {})
            .build()?;
        Ok(Decoder {
            pool,
            preparation: Arc::new(preparation),
        })
    }

    pub fn preparation(&self) -> &Preparation {
        &self.preparation
    }

    /// Starts `job` on the pool at once; the future gives its result (`None` if
    /// it panicked).
    pub fn run<T, F>(&self, job: F) -> impl Future<Output = Option<T>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce(&Preparation) -> T + Send + 'static,
    {
        let (sender, receiver) = oneshot::channel();
        let preparation = Arc::clone(&self.preparation);
        self.pool.spawn(move || {
            // A bug in a decoder must fail this job, not the server.
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&preparation)));
            let _ = sender.send(result.ok());
        });
        async move { receiver.await.ok().flatten() }
    }

    /// Decodes every upload on the pool (in parallel when it has threads for
    /// it); the results are in the uploads' order.
    pub async fn decode_all(&self, uploads: &[Bytes]) -> Vec<Result<Decoded, String>> {
        let pending: Vec<_> = uploads
            .iter()
            .map(|bytes| {
                let bytes = bytes.clone();
                self.run(move |preparation| preparation.decode(&bytes))
            })
            .collect();
        let mut decoded = Vec::with_capacity(pending.len());
        for job in pending {
            decoded.push(
                job.await
                    .unwrap_or_else(|| Err("the decoder failed on this image".to_string())),
            );
        }
        decoded
    }
}
