//! The HTTP service behind `examples/serve.rs`: a router over one shared [`Model`] and a pool
//! of [`Session`]s. It lives in its own file so that `tests/serve.rs` can include it and run
//! the same router in-process (see docs/SERVING.md for the API and the design).
//!
//! Concurrency: the model (graph, metadata, memory-mapped weights) is immutable and shared by
//! every request through one `Arc<Model>`. A session owns a mutable workspace, so each run
//! needs one to itself: the pool holds `sessions` of them, a semaphore with as many permits
//! hands them out, and the CPU work of a request (decoding + inference) happens in
//! `tokio::task::spawn_blocking`, never on the async worker threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cnnrt::{Model, Session, SessionOptions};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Default request body limit: 16 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 16 << 20;

/// How the service is set up; [`ServeOptions::default`] matches the example's defaults.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Name reported by `/health` (the example uses the model file's stem).
    pub model_name: String,
    /// Sessions in the pool: how many inferences run at once.
    pub sessions: usize,
    /// Largest batch one request may carry (a `[N, ...]` .npy); each session is planned for it.
    pub max_batch: usize,
    /// Classes returned when the request has no `top` parameter.
    pub default_top: usize,
    /// Largest request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// Requests allowed to wait for a session on top of the `sessions` running; beyond that
    /// the service answers 503 instead of queueing without bound.
    pub max_queue: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model_name: "model".into(),
            sessions: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_batch: 1,
            default_top: 5,
            body_limit: DEFAULT_BODY_LIMIT,
            max_queue: 1024,
        }
    }
}

/// Sessions not in use. A permit of `permits` guarantees that `idle` is not empty.
struct Pool {
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

/// A session taken from the pool; dropping it (also while unwinding from a panic) puts the
/// session back first and only then releases the permit.
struct Lease<'a> {
    pool: &'a Pool,
    session: Option<Session>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
        }
    }
}

struct App {
    model: Arc<Model>,
    opts: ServeOptions,
    pool: Pool,
    /// Requests between admission and response (waiting or running).
    in_flight: AtomicUsize,
    /// Per-sample output size (number of classes).
    classes: usize,
    /// Whether the model's last node is a Softmax (outputs are probabilities already).
    ends_in_softmax: bool,
    /// Kernel tier the sessions planned with.
    isa: String,
    /// Activation workspace of one session, in bytes.
    workspace_bytes: usize,
}

/// A request error: status + message, answered as `{"error": message}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        ApiError(status, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.0, &json!({ "error": self.1 }))
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Builds the service: `sessions` sessions planned for `max_batch`, each run once, and the
/// routes `GET /health` and `POST /v1/classify`. Fails if a session cannot be planned.
pub fn router(model: Arc<Model>, opts: ServeOptions) -> cnnrt::Result<Router> {
    if opts.sessions == 0 {
        return Err(cnnrt::Error::Other("at least one session is needed".into()));
    }
    let mut sessions = (0..opts.sessions)
        .map(|_| model.session(SessionOptions::default().max_batch(opts.max_batch)))
        .collect::<cnnrt::Result<Vec<_>>>()?;
    // One run of one sample per session before serving: a session's first run takes the
    // page faults of its workspace (see `Model::session`; 1–2 ms on ResNet-18), which
    // would otherwise land on the first requests.
    let zeros: Vec<Vec<f32>> = {
        let g = model.graph();
        g.inputs
            .iter()
            .map(|&v| vec![0.0; g.shape(v).iter().product()])
            .collect()
    };
    let inputs: Vec<&[f32]> = zeros.iter().map(Vec::as_slice).collect();
    for s in &mut sessions {
        s.run_multi(&inputs, 1)?;
    }
    let isa = sessions[0].isa().to_string();
    let workspace_bytes = sessions[0].workspace_bytes();
    let classes = model.output_shape().iter().product();
    let ends_in_softmax = {
        let g = model.graph();
        g.nodes.last().is_some_and(|n| {
            matches!(n.op, cnnrt::graph::Op::Softmax { .. }) && n.output == g.outputs[0]
        })
    };
    let body_limit = opts.body_limit;
    let app = Arc::new(App {
        pool: Pool {
            permits: Arc::new(Semaphore::new(sessions.len())),
            idle: Mutex::new(sessions),
        },
        model,
        opts,
        in_flight: AtomicUsize::new(0),
        classes,
        ends_in_softmax,
        isa,
        workspace_bytes,
    });
    Ok(Router::new()
        .route("/health", get(health))
        .route("/v1/classify", post(classify))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app))
}

async fn health(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "model": app.opts.model_name,
            "input_shape": app.model.input_shape(),
            "output_shape": app.model.output_shape(),
            "sessions": app.opts.sessions,
            "max_batch": app.opts.max_batch,
            "isa": app.isa,
            "workspace_bytes": app.workspace_bytes,
            "in_flight": app.in_flight.load(Ordering::Relaxed),
        }),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; try GET /health or POST /v1/classify",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route (GET /health, POST /v1/classify)",
    )
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn parse_top(query: Option<&str>, default: usize) -> Result<usize, ApiError> {
    let mut top = default;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "top" {
            top = v.parse::<usize>().ok().filter(|&t| t >= 1).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("top must be a positive integer, got '{v}'"),
                )
            })?;
        }
    }
    Ok(top)
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// Turns a request body into `batch` samples of the model's input. `.npy` is recognised by
/// its magic whatever the Content-Type says; anything else is decoded as an image.
fn decode(app: &App, body: &[u8]) -> Result<(Vec<f32>, usize), ApiError> {
    let sample_shape = app.model.input_shape();
    if body.starts_with(NPY_MAGIC) {
        let (data, shape) = cnnrt::input::npy_from_bytes(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read .npy body: {e}"),
            )
        })?;
        let batch = if shape == sample_shape {
            1
        } else if shape.len() == sample_shape.len() + 1 && shape[1..] == *sample_shape {
            shape[0]
        } else {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("array shape {shape:?} does not match the model input {sample_shape:?} (with or without a leading batch)"),
            ));
        };
        if batch == 0 || batch > app.opts.max_batch {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "batch {batch} outside 1..={} that this server accepts (--max-batch)",
                    app.opts.max_batch
                ),
            ));
        }
        return Ok((data, batch));
    }
    let is_image_input = matches!(*sample_shape, [1 | 3, _, _]);
    if !is_image_input {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("this model takes {sample_shape:?}, not a 1- or 3-channel image; send a float32 .npy"),
        ));
    }
    let mut data = Vec::new();
    cnnrt::input::image_to_tensor(body, sample_shape, app.model.metadata(), &mut data).map_err(
        |e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("body is neither a float32 .npy nor a decodable PNG/JPEG: {e}"),
            )
        },
    )?;
    Ok((data, 1))
}

/// One sample's best classes, `(index, score)`, best first.
type Ranked = Vec<(usize, f32)>;

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// The `k` best classes of one output row, as `(index, score)`, best first. Scores are
/// softmax probabilities (the row as it is when the model ends in Softmax).
fn top_k(row: &[f32], k: usize, already_probabilities: bool) -> Ranked {
    let scores: Vec<f32> = if already_probabilities {
        row.to_vec()
    } else {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let exp: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
        let sum: f64 = exp.iter().sum();
        exp.iter().map(|&e| (e / sum) as f32).collect()
    };
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter().map(|i| (i, scores[i])).collect()
}

async fn classify(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Response {
    let start = Instant::now();
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body larger than the {} byte limit",
                app.opts.body_limit
            ),
        )
    };
    // A declared length over the limit is refused before any of the body is read; a body
    // without one (chunked) is cut off by the limit while it is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.opts.body_limit as u64) {
        return too_large().into_response();
    }
    let body = match Bytes::from_request(req, &()).await {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large().into_response()
        }
        Err(e) => {
            return ApiError(
                e.status(),
                format!("cannot read the request body: {}", e.body_text()),
            )
            .into_response()
        }
    };
    let top = match parse_top(query.as_deref(), app.opts.default_top) {
        Ok(t) => t.min(app.classes),
        Err(e) => return e.into_response(),
    };
    if body.is_empty() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty body; send PNG/JPEG image bytes or a float32 .npy",
        )
        .into_response();
    }
    let admitted = app.in_flight.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight(&app.in_flight);
    if admitted >= app.opts.sessions + app.opts.max_queue {
        let mut r = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server busy; retry later")
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    }
    // Wait (asynchronously) for a session; the permit travels with the blocking task.
    let permit = app
        .pool
        .permits
        .clone()
        .acquire_owned()
        .await
        .expect("the pool's semaphore is never closed");
    let worker = app.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(Vec<Ranked>, f64), ApiError> {
        let app = &*worker;
        let (data, batch) = decode(app, &body)?;
        let session = app
            .pool
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .expect("a permit guarantees an idle session");
        let mut lease = Lease {
            pool: &app.pool,
            session: Some(session),
            _permit: permit,
        };
        let t = Instant::now();
        let out = lease
            .session
            .as_mut()
            .expect("leased")
            .run(&data, batch)
            .map_err(|e| match e {
                cnnrt::Error::Input(m) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m),
                other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
            })?;
        let inference_ms = t.elapsed().as_secs_f64() * 1e3;
        let rows = out
            .chunks(app.classes)
            .map(|row| top_k(row, top, app.ends_in_softmax))
            .collect();
        Ok((rows, inference_ms))
    })
    .await;
    let (rows, inference_ms) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return e.into_response(),
        Err(e) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("inference failed: {e}"),
            )
            .into_response()
        }
    };
    let labels = &app.model.metadata().labels;
    let to_json = |row: &[(usize, f32)]| -> Value {
        row.iter()
            .map(|&(i, s)| json!({ "index": i, "label": labels.get(i).cloned().unwrap_or_else(|| i.to_string()), "score": s }))
            .collect()
    };
    let latency_ms = round3(start.elapsed().as_secs_f64() * 1e3);
    let inference_ms = round3(inference_ms);
    let v = if rows.len() == 1 {
        json!({ "top": to_json(&rows[0]), "latency_ms": latency_ms, "inference_ms": inference_ms })
    } else {
        json!({
            "batch": rows.len(),
            "results": rows.iter().map(|r| json!({ "top": to_json(r) })).collect::<Vec<_>>(),
            "latency_ms": latency_ms,
            "inference_ms": inference_ms,
        })
    };
    json_response(StatusCode::OK, &v)
}
