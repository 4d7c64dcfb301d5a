//! The routes: what each request reads, what it answers, and every refusal
//! with its status (400 bad image, 401 no key, 408 slow body, 413 too large,
//! 429 queue full, 503 not answered in time). `openapi.json` describes them.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use alexnet::plan::Plan;
use alexnet::softmax_rows;
use alexnet::spec::NetSpec;
use alexnet_train::top_k;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::decode::{Decoded, Preparation};
use super::worker::{Answer, Job};
use super::{Index, Server};
use crate::classify::ranked_json;

/// The page at `/`: one file, scripts and styles inside, nothing fetched elsewhere.
const PAGE: &str = include_str!("page.html");
const OPENAPI: &str = include_str!("openapi.json");
/// Most neighbours `/v1/similar` lists per image.
const MAX_NEIGHBOURS: usize = 100;
/// Side of the index pictures `/v1/index/{row}/image` draws.
const INDEX_PICTURE_SIDE: u32 = 128;

pub fn router(server: Arc<Server>, body_limit: usize) -> Router {
    let protected = Router::new()
        .route("/v1/classify", post(classify))
        .route("/v1/features", post(features))
        .route("/v1/similar", post(similar))
        .route("/v1/crop", post(crop))
        .route("/v1/model", get(model))
        .route("/v1/kernels.png", get(kernels))
        .route("/v1/index/{row}/image", get(index_image))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&server),
            require_key,
        ));
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&server),
            count_request,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(server)
}

/// A refusal: its status and what to tell the client, as `{"error": ...}`.
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({"error": self.message}))).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Counts every answer by route and status, with its latency.
async fn count_request(
    State(server): State<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    server.metrics.record_request(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// With `--api-key`, a request must carry `Authorization: Bearer KEY`.
async fn require_key(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    if let Some(key) = &server.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| same_secret(given.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server needs `Authorization: Bearer <key>` (its --api-key)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so the time taken does
/// not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route (see /openapi.json)")
}

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(server): State<Arc<Server>>) -> Response {
    if server.ready.load(Ordering::Acquire) {
        "ready\n".into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "warming up").into_response()
    }
}

async fn metrics(State(server): State<Arc<Server>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        server.metrics.render(),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn model(State(server): State<Arc<Server>>) -> axum::Json<Value> {
    axum::Json(server.model.clone())
}

async fn kernels(State(server): State<Arc<Server>>) -> ApiResult<Response> {
    let png = server.kernels_png.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the net's first layer has no kernels that can be drawn as pictures",
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// One uploaded image and the name it came with (multipart) if any.
struct Upload {
    name: Option<String>,
    bytes: Bytes,
}

/// Holds a place among `--max-queue` until the request is answered.
struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
    server: Arc<Server>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.server.metrics.finished();
    }
}

fn admit(server: &Arc<Server>) -> ApiResult<Admission> {
    let permit = Arc::clone(&server.admission)
        .try_acquire_owned()
        .map_err(|_| ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the server's queue is full; try again shortly".into(),
            retry_after: Some(1),
        })?;
    server.metrics.admitted();
    Ok(Admission {
        _permit: permit,
        server: Arc::clone(server),
    })
}

fn is_multipart(request: &Request) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("multipart/form-data"))
}

/// The request's images: its body, or each file of a multipart body; read
/// within the read timeout, at most `--max-batch` of them.
async fn read_uploads(server: &Server, request: Request) -> ApiResult<Vec<Upload>> {
    let limits = server.limits;
    let read = async {
        if is_multipart(&request) {
            read_multipart(request, limits).await
        } else {
            let bytes = Bytes::from_request(request, &())
                .await
                .map_err(|r| body_error(r.status(), r.body_text(), limits))?;
            Ok(vec![Upload { name: None, bytes }])
        }
    };
    let uploads = tokio::time::timeout(limits.read_timeout, read)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} ms",
                    limits.read_timeout.as_millis()
                ),
            )
        })??;
    if uploads.iter().all(|u| u.bytes.is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the request carries no image: send one as the body, or several as multipart/form-data files",
        ));
    }
    Ok(uploads)
}

/// A failure to read the body, saying which limit it met if it met one.
fn body_error(status: StatusCode, text: String, limits: super::Limits) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            status,
            format!(
                "the body is over the server's limit of {} bytes (its --max-body-bytes)",
                limits.max_body_bytes
            ),
        );
    }
    ApiError::new(status, text)
}

async fn read_multipart(request: Request, limits: super::Limits) -> ApiResult<Vec<Upload>> {
    let max_batch = limits.max_batch;
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|r| body_error(r.status(), r.body_text(), limits))?;
    let mut uploads = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| body_error(e.status(), e.body_text(), limits))?
    {
        // Text fields (no file name) are not images.
        let Some(name) = field.file_name().map(str::to_string) else {
            continue;
        };
        if uploads.len() == max_batch {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {max_batch} images in one request (the server's --max-batch)"),
            ));
        }
        let bytes = field
            .bytes()
            .await
            .map_err(|e| body_error(e.status(), e.body_text(), limits))?;
        uploads.push(Upload {
            name: Some(name),
            bytes,
        });
    }
    Ok(uploads)
}

/// An upload's row of the answer and its decoding, or why it has none.
type Row<'a> = Result<(usize, &'a Decoded), &'a str>;

/// What the net made of a request's images: each image's decoding, and for
/// those that decoded, their rows of the answer (in order).
struct Computed {
    uploads: Vec<Upload>,
    decoded: Vec<Result<Decoded, String>>,
    answer: Option<Answer>,
    started: Instant,
}

impl Computed {
    /// For each upload: its name, and its row of the answer or why it has none.
    fn rows(&self) -> Vec<(Option<&str>, Row<'_>)> {
        let mut row = 0;
        self.uploads
            .iter()
            .zip(&self.decoded)
            .map(|(upload, decoded)| {
                let name = upload.name.as_deref();
                match decoded {
                    Ok(d) => {
                        row += 1;
                        (name, Ok((row - 1, d)))
                    }
                    Err(e) => (name, Err(e.as_str())),
                }
            })
            .collect()
    }

    fn timing(&self) -> Value {
        let answer = self.answer.as_ref();
        json!({
            "batch_images": answer.map(|a| a.batch_images),
            "forward_ms": answer.map(|a| 1e3 * a.forward_seconds),
            "total_ms": 1e3 * self.started.elapsed().as_secs_f64(),
        })
    }
}

/// Admits, reads, decodes, and runs a request's images through the net.
async fn compute(server: &Arc<Server>, request: Request) -> ApiResult<Computed> {
    let started = Instant::now();
    let _admission = admit(server)?;
    let uploads = read_uploads(server, request).await?;
    let deadline = tokio::time::Instant::from_std(started + server.limits.timeout);
    let work = async {
        let bytes: Vec<Bytes> = uploads.iter().map(|u| u.bytes.clone()).collect();
        let decoded = server.decoder.decode_all(&bytes).await;
        let answer = run_decoded(server, &decoded).await?;
        Ok::<_, ApiError>((decoded, answer))
    };
    let (decoded, answer) = tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not answered within {} ms (the server's --timeout-ms); it is busy",
                    server.limits.timeout.as_millis()
                ),
            )
        })??;
    if answer.is_none() {
        // Nothing decoded: the request as a whole is bad.
        let reasons: Vec<String> = uploads
            .iter()
            .zip(&decoded)
            .filter_map(|(u, d)| {
                d.as_ref().err().map(|e| match &u.name {
                    Some(name) => format!("{name}: {e}"),
                    None => e.clone(),
                })
            })
            .collect();
        return Err(ApiError::new(StatusCode::BAD_REQUEST, reasons.join("; ")));
    }
    Ok(Computed {
        uploads,
        decoded,
        answer,
        started,
    })
}

/// Sends the images that decoded to the worker and waits for their rows.
async fn run_decoded(
    server: &Server,
    decoded: &[Result<Decoded, String>],
) -> ApiResult<Option<Answer>> {
    let good: Vec<&Decoded> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();
    if good.is_empty() {
        return Ok(None);
    }
    let mut inputs = Vec::with_capacity(good.iter().map(|d| d.input.len()).sum());
    for d in &good {
        inputs.extend_from_slice(&d.input);
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job {
        inputs,
        images: good.len(),
        queued: Instant::now(),
        reply,
    };
    server.metrics.enqueued();
    if server.queue.try_send(job).is_err() {
        server.metrics.dequeued();
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the inference worker is not taking requests",
        ));
    }
    let answer = answer
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the inference worker stopped",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok(Some(answer))
}

fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::new(rejection.status(), rejection.body_text())
}

#[derive(Deserialize)]
struct ClassifyQuery {
    top: Option<usize>,
}

async fn classify(
    State(server): State<Arc<Server>>,
    query: Result<Query<ClassifyQuery>, QueryRejection>,
    request: Request,
) -> ApiResult<axum::Json<Value>> {
    let Query(query) = query.map_err(query_error)?;
    let computed = compute(&server, request).await?;
    let answer = computed
        .answer
        .as_ref()
        .expect("compute answers or refuses");
    let classes = server.classes;
    let top = query.top.unwrap_or(5).min(classes);
    let preprocess = &server.decoder.preparation().preprocess;
    let images: Vec<Value> = computed
        .rows()
        .into_iter()
        .map(|(name, row)| match row {
            Ok((row, decoded)) => {
                let logits = &answer.logits[row * classes..][..classes];
                let probabilities = softmax_rows(logits, classes);
                let ranked = ranked_json(preprocess, &probabilities, &top_k(&probabilities, top));
                json!({"image": name, "top": ranked, "decode_ms": 1e3 * decoded.seconds})
            }
            Err(e) => json!({"image": name, "error": e}),
        })
        .collect();
    Ok(axum::Json(
        json!({"images": images, "timing": computed.timing()}),
    ))
}

fn wants_binary(request: &Request) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/octet-stream"))
}

async fn features(State(server): State<Arc<Server>>, request: Request) -> ApiResult<Response> {
    let binary = wants_binary(&request);
    let computed = compute(&server, request).await?;
    let answer = computed
        .answer
        .as_ref()
        .expect("compute answers or refuses");
    let rows = computed.rows();
    let count = rows.iter().filter(|(_, r)| r.is_ok()).count();
    let dim = answer.features.len() / count;
    if binary {
        if let Some((name, Err(e))) = rows.iter().find(|(_, r)| r.is_err()) {
            let name = name.unwrap_or("the image");
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{name}: {e}"),
            ));
        }
        let bytes: Vec<u8> = answer
            .features
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        return Ok((
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::HeaderName::from_static("x-features-count"),
                    count.to_string(),
                ),
                (
                    header::HeaderName::from_static("x-features-dim"),
                    dim.to_string(),
                ),
            ],
            bytes,
        )
            .into_response());
    }
    let images: Vec<Value> = rows
        .into_iter()
        .map(|(name, row)| match row {
            Ok((row, _)) => {
                json!({"image": name, "features": &answer.features[row * dim..][..dim]})
            }
            Err(e) => json!({"image": name, "error": e}),
        })
        .collect();
    Ok(axum::Json(json!({
        "layer": server.feature_label,
        "dim": dim,
        "images": images,
        "timing": computed.timing(),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct SimilarQuery {
    k: Option<usize>,
}

async fn similar(
    State(server): State<Arc<Server>>,
    query: Result<Query<SimilarQuery>, QueryRejection>,
    request: Request,
) -> ApiResult<axum::Json<Value>> {
    let Query(query) = query.map_err(query_error)?;
    let index = server.index.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no index: start it with --index FEATURES (written by `alexnet features`)",
        )
    })?;
    let k = query.k.unwrap_or(6).clamp(1, MAX_NEIGHBOURS);
    let computed = compute(&server, request).await?;
    let answer = computed
        .answer
        .as_ref()
        .expect("compute answers or refuses");
    let dim = index.file.dim;
    let preprocess = &server.decoder.preparation().preprocess;
    let images: Vec<Value> = computed
        .rows()
        .into_iter()
        .map(|(name, row)| match row {
            Ok((row, _)) => {
                let query = &answer.features[row * dim..][..dim];
                let neighbours: Vec<Value> =
                    crate::features::nearest_to(&index.file.features, query, k)
                        .into_iter()
                        .map(|(i, distance)| neighbour(&index, preprocess, i, distance))
                        .collect();
                json!({"image": name, "neighbours": neighbours})
            }
            Err(e) => json!({"image": name, "error": e}),
        })
        .collect();
    Ok(axum::Json(
        json!({"images": images, "timing": computed.timing()}),
    ))
}

fn neighbour(
    index: &Index,
    preprocess: &alexnet_train::Preprocess,
    row: usize,
    distance: f32,
) -> Value {
    let label = index.file.label(row);
    json!({
        "row": row,
        "distance": distance,
        "label": label,
        "class_name": label.map(|l| preprocess.class_name(l)),
        "path": index.file.path(row).map(|p| p.display().to_string()),
    })
}

async fn index_image(
    State(server): State<Arc<Server>>,
    axum::extract::Path(row): axum::extract::Path<usize>,
) -> ApiResult<Response> {
    let index = server
        .index
        .clone()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "this server has no index"))?;
    if row >= index.file.count {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "the index has {} images; there is no {row}",
                index.file.count
            ),
        ));
    }
    // Reading the dataset or the file is blocking work: on the decode pool.
    let png = server
        .decoder
        .run(move |_| {
            let (pixels, [channels, height, width]) =
                index.file.picture(row, INDEX_PICTURE_SIDE)?;
            let image = image::RgbImage::from_fn(width as u32, height as u32, |x, y| {
                let at = |c: usize| {
                    pixels[(c.min(channels - 1) * height + y as usize) * width + x as usize]
                };
                image::Rgb([at(0), at(1), at(2)])
            });
            png(&image)
        })
        .await
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the decoder stopped"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// The part of an uploaded image the net sees, as PNG.
async fn crop(State(server): State<Arc<Server>>, request: Request) -> ApiResult<Response> {
    let _admission = admit(&server)?;
    let upload = read_uploads(&server, request)
        .await?
        .into_iter()
        .next()
        .expect("read_uploads returns at least one upload");
    let png = server
        .decoder
        .run(move |preparation| {
            let decoded = preparation.decode(&upload.bytes)?;
            png(&preparation.crop(&decoded.photo)).map_err(|e| format!("{e:#}"))
        })
        .await
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the decoder stopped"))?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

pub fn png(image: &image::RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

/// What `GET /v1/model` says of the served net.
pub struct ModelFacts<'a> {
    pub plan: &'a Plan,
    pub spec: &'a NetSpec,
    pub preparation: &'a Preparation,
    pub device: &'a str,
    pub checkpoint: &'a Path,
    pub digest: &'a str,
    pub feature_label: &'a str,
    pub max_batch: usize,
    pub max_delay_ms: u64,
    pub index: Option<&'a Index>,
}

pub fn describe_model(facts: &ModelFacts) -> Value {
    let preprocess = &facts.preparation.preprocess;
    let classes: Vec<Value> = (0..facts.plan.classes())
        .map(|c| json!({"class": c, "id": preprocess.class_ids.get(c), "name": preprocess.class_name(c)}))
        .collect();
    let layers: Vec<Value> = facts
        .plan
        .layers
        .iter()
        .map(
            |l| json!({"label": l.label, "output": l.output.to_string(), "values": l.output.len()}),
        )
        .collect();
    let shape = facts.plan.input_shape();
    json!({
        "name": facts.spec.name,
        "checkpoint": facts.checkpoint.display().to_string(),
        "checkpoint_sha256": facts.digest,
        "parameters": facts.plan.parameter_count(),
        "device": facts.device,
        "layers": layers,
        "classes": classes,
        "input": {
            "stored": preprocess.stored,
            "crop": [shape.channels, shape.height, shape.width],
            "pixels": format!("{:?}", preprocess.pixels),
            "channel_scale": preprocess.channel_scale(),
            "subtract_mean_image": preprocess.subtract_mean,
            "dataset": preprocess.dataset,
        },
        "features": {"layer": facts.feature_label, "dim": facts.plan.layers.iter().find(|l| l.label == facts.feature_label).map(|l| l.output.len())},
        "batching": {"max_batch": facts.max_batch, "max_delay_ms": facts.max_delay_ms},
        "index": facts.index.map(|index| json!({"path": index.path.display().to_string(), "images": index.file.count})),
    })
}
