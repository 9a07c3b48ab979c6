//! The HTTP serving example (`examples/serve.rs`), run in-process on 127.0.0.1:0 and
//! spoken to with a minimal HTTP/1.1 client over tokio sockets.
//!
//! Model: `models/lenet5.cnnrt` when it exists; otherwise a model built here whose one
//! Linear layer holds the ten sample digits as unit-norm templates (so by Cauchy–Schwarz
//! each sample scores highest on its own class). Either way each `digit_<d>.png` must come
//! back as class `d`.

#[allow(dead_code)]
#[path = "../examples/serve/app.rs"]
mod app;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cnnrt::format::{model_to_bytes, ChannelOrder, Metadata};
use cnnrt::graph::{Activation, Graph, Linear, Node, Op};
use cnnrt::Model;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;

const IO_TIMEOUT: Duration = Duration::from_secs(60);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn digit_png(d: usize) -> Vec<u8> {
    std::fs::read(repo(&format!("models/samples/digit_{d}.png"))).unwrap()
}

fn lenet_metadata() -> Metadata {
    let labels = std::fs::read_to_string(repo("models/lenet5_labels.txt")).unwrap();
    Metadata {
        input_name: "input".into(),
        input_shape: vec![1, 28, 28],
        mean: vec![0.1307],
        std: vec![0.3081],
        channel_order: ChannelOrder::Gray,
        labels: labels.lines().map(str::to_string).collect(),
        producer: "tests/serve.rs".into(),
        ..Metadata::default()
    }
}

/// The sample digit `d` as the model's normalised `[1, 28, 28]` input.
fn digit_tensor(d: usize, meta: &Metadata) -> Vec<f32> {
    let mut v = Vec::new();
    cnnrt::input::image_to_tensor(&digit_png(d), &[1, 28, 28], meta, &mut v).unwrap();
    v
}

/// `models/lenet5.cnnrt` if present, else the template model described at the top.
fn test_model() -> (Arc<Model>, &'static str) {
    static MODEL: Mutex<Option<(Arc<Model>, &'static str)>> = Mutex::new(None);
    let mut m = MODEL.lock().unwrap();
    m.get_or_insert_with(|| {
        let path = repo("models/lenet5.cnnrt");
        if path.exists() {
            return (Model::open(&path).unwrap(), "lenet5");
        }
        let meta = lenet_metadata();
        let mut g = Graph::default();
        let x = g.add_value("input", vec![1, 28, 28]);
        let flat = g.add_value("flat", vec![]);
        let logits = g.add_value("logits", vec![]);
        let w = g.add_weight("templates", vec![10, 784]);
        g.nodes.push(Node {
            name: "flatten".into(),
            op: Op::Flatten { axis: 1 },
            inputs: vec![x],
            output: flat,
        });
        let lin = Linear {
            in_features: 784,
            out_features: 10,
            weight: w,
            bias: None,
            activation: Activation::Identity,
        };
        g.nodes.push(Node {
            name: "match".into(),
            op: Op::Linear(lin),
            inputs: vec![flat],
            output: logits,
        });
        g.inputs = vec![x];
        g.outputs = vec![logits];
        g.infer_shapes().unwrap();
        let mut weights = Vec::with_capacity(7840);
        for d in 0..10 {
            let t = digit_tensor(d, &meta);
            let norm = t.iter().map(|v| v * v).sum::<f32>().sqrt();
            weights.extend(t.iter().map(|v| v / norm));
        }
        let bytes = model_to_bytes(&g, &[&weights], &meta).unwrap();
        (Model::from_bytes(&bytes).unwrap(), "templates")
    })
    .clone()
}

/// The router running on 127.0.0.1:0 on its own tokio runtime; the tests talk to it with
/// blocking `std::net` sockets from ordinary threads.
struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<()>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(opts: app::ServeOptions) -> Server {
        let (model, _) = test_model();
        let router = app::router(model, opts).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(addr.ip().is_loopback());
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        rt.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            let _ = done_tx.send(());
        });
        Server {
            addr,
            stop: Some(stop),
            done,
            _rt: rt,
        }
    }

    /// Begins a graceful shutdown.
    fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Shuts down and waits (at most 10 s) for the server to stop.
    fn shutdown(mut self) {
        self.begin_shutdown();
        self.done
            .recv_timeout(Duration::from_secs(10))
            .expect("the server stops within 10 s");
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    assert!(addr.ip().is_loopback());
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn opts(sessions: usize) -> app::ServeOptions {
    app::ServeOptions {
        model_name: test_model().1.into(),
        sessions,
        ..app::ServeOptions::default()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "status {}",
            self.status
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    /// The `error` field of a JSON error reply with this status.
    fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()["error"]
            .as_str()
            .expect("an error message")
            .to_string()
    }
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let (mut out, mut rest) = (Vec::new(), &body[..]);
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 2 + n + 2..];
        }
        body = out;
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Reply {
    let mut s = connect(addr);
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{ct}Content-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

fn classify(addr: SocketAddr, query: &str, content_type: &str, body: &[u8]) -> Reply {
    request(
        addr,
        "POST",
        &format!("/v1/classify{query}"),
        Some(content_type),
        body,
    )
}

fn top1(v: &Value) -> String {
    v["top"][0]["label"].as_str().unwrap().to_string()
}

fn npy_bytes(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("cnnrt-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = dir.join(format!("{}.npy", N.fetch_add(1, Ordering::Relaxed)));
    cnnrt::input::write_npy(&path, data, shape).unwrap();
    let b = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    b
}

#[test]
fn health_reports_the_model() {
    let server = Server::start(opts(2));
    let addr = server.addr;
    let r = request(addr, "GET", "/health", None, b"");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["model"], test_model().1);
    assert_eq!(v["input_shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(v["sessions"], 2);
    assert!(
        v["workspace_bytes"].as_u64().is_some_and(|b| b >= 4 * 784),
        "{v}"
    );
    server.shutdown();
}

#[test]
fn classifies_each_sample_digit_png_and_npy() {
    let server = Server::start(opts(2));
    let addr = server.addr;
    let meta = lenet_metadata();
    for d in 0..10 {
        let r = classify(addr, "?top=3", "image/png", &digit_png(d));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        let top = v["top"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top1(&v), d.to_string(), "digit_{d}.png: {v}");
        assert_eq!(top[0]["index"], d);
        let scores: Vec<f64> = top.iter().map(|t| t["score"].as_f64().unwrap()).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]) && scores.iter().sum::<f64>() <= 1.0 + 1e-5,
            "{v}"
        );
        assert!(v["latency_ms"].as_f64().unwrap() >= v["inference_ms"].as_f64().unwrap());

        // The same digit as a float32 .npy, with and without the batch axis; the Content-Type
        // does not matter, the \x93NUMPY magic does.
        let t = digit_tensor(d, &meta);
        for (shape, ct) in [
            (&[1, 28, 28][..], "application/x-npy"),
            (&[1, 1, 28, 28][..], "application/octet-stream"),
        ] {
            let r = classify(addr, "", ct, &npy_bytes(&t, shape));
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let v = r.json();
            assert_eq!(top1(&v), d.to_string(), "npy {shape:?}: {v}");
            assert_eq!(v["top"].as_array().unwrap().len(), 5, "default top is 5");
        }
    }
    // top is clamped to the number of classes.
    let v = classify(addr, "?top=100", "image/png", &digit_png(4)).json();
    assert_eq!(v["top"].as_array().unwrap().len(), 10);
    server.shutdown();
}

#[test]
fn a_batched_npy_is_accepted_up_to_max_batch() {
    let server = Server::start(app::ServeOptions {
        max_batch: 4,
        ..opts(1)
    });
    let addr = server.addr;
    let meta = lenet_metadata();
    let digits = [7, 0, 3];
    let data: Vec<f32> = digits
        .iter()
        .flat_map(|&d| digit_tensor(d, &meta))
        .collect();
    let r = classify(
        addr,
        "?top=1",
        "application/x-npy",
        &npy_bytes(&data, &[3, 1, 28, 28]),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["batch"], 3);
    for (res, d) in v["results"].as_array().unwrap().iter().zip(digits) {
        assert_eq!(top1(res), d.to_string(), "{v}");
    }
    let five: Vec<f32> = data.iter().chain(&data[..2 * 784]).copied().collect();
    let e = classify(
        addr,
        "",
        "application/x-npy",
        &npy_bytes(&five, &[5, 1, 28, 28]),
    )
    .error(422);
    assert!(e.contains("batch 5"), "{e}");
    server.shutdown();
}

#[test]
fn bad_requests_get_json_errors() {
    let server = Server::start(opts(1));
    let addr = server.addr;
    // Undecodable bodies: 400.
    let e = classify(addr, "", "image/png", b"this is not an image at all").error(400);
    assert!(e.contains("neither"), "{e}");
    let png = digit_png(2);
    classify(addr, "", "image/png", &png[..png.len() / 2]).error(400);
    classify(addr, "", "image/jpeg", b"\xff\xd8\xff\xe0 truncated jpeg").error(400);
    classify(addr, "", "application/x-npy", b"\x93NUMPY\x01\x00garbage").error(400);
    let e = classify(addr, "", "image/png", b"").error(400);
    assert!(e.contains("empty"), "{e}");
    classify(addr, "?top=0", "image/png", &png).error(400);
    classify(addr, "?top=abc", "image/png", &png).error(400);
    // A tensor of the wrong shape: 422.
    let e = classify(
        addr,
        "",
        "application/x-npy",
        &npy_bytes(&vec![0.0; 28 * 27], &[1, 28, 27]),
    )
    .error(422);
    assert!(
        e.contains("[1, 28, 27]") && e.contains("[1, 28, 28]"),
        "{e}"
    );
    // batch 2 on a server with --max-batch 1.
    classify(
        addr,
        "",
        "application/x-npy",
        &npy_bytes(&vec![0.0; 2 * 784], &[2, 1, 28, 28]),
    )
    .error(422);
    // Unknown route 404, wrong method 405.
    request(addr, "GET", "/v2/nothing", None, b"").error(404);
    request(addr, "POST", "/", None, b"x").error(404);
    let r = request(addr, "GET", "/v1/classify", None, b"");
    r.error(405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = request(addr, "POST", "/health", None, b"");
    r.error(405);
    assert!(
        r.header("allow").is_some_and(|a| a.contains("GET")),
        "{:?}",
        r.headers
    );
    request(addr, "DELETE", "/v1/classify", None, b"").error(405);
    // Over the 16 MiB limit: 413, decided from Content-Length before the body is read.
    let reply = {
        let mut s = connect(addr);
        let n = app::DEFAULT_BODY_LIMIT + 1;
        let head = format!(
            "POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: image/png\r\nContent-Length: {n}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse_reply(&raw)
    };
    let e = reply.error(413);
    assert!(e.contains("limit"), "{e}");
    // The server still works after all that.
    assert_eq!(classify(addr, "", "image/png", &png).status, 200);
    server.shutdown();
}

#[test]
fn a_body_over_a_small_limit_is_413_when_streamed() {
    // Chunked (no Content-Length): the limit trips while reading.
    let server = Server::start(app::ServeOptions {
        body_limit: 100,
        ..opts(1)
    });
    let addr = server.addr;
    let reply = {
        let mut s = connect(addr);
        let head = "POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
        s.write_all(head.as_bytes()).unwrap();
        // 200 bytes in one chunk, then the end: all of it reaches the server, which reads
        // it while enforcing the limit.
        s.write_all(format!("c8\r\n{}\r\n0\r\n\r\n", "x".repeat(200)).as_bytes())
            .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        parse_reply(&raw)
    };
    reply.error(413);
    server.shutdown();
}

#[test]
fn graceful_shutdown_finishes_the_request_in_progress() {
    let mut server = Server::start(opts(1));
    let addr = server.addr;
    let png = digit_png(8);
    let mut s = connect(addr);
    let head = format!("POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n", png.len());
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&png[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server.begin_shutdown();
    std::thread::sleep(Duration::from_millis(200));
    // Once shutdown has begun, a new connection is refused or closed unanswered.
    if let Ok(mut late) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        late.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = late.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        let mut buf = Vec::new();
        let got = late.read_to_end(&mut buf);
        assert!(
            buf.is_empty(),
            "a late connection was served ({got:?}): {}",
            String::from_utf8_lossy(&buf)
        );
    }
    // The request in progress still completes.
    s.write_all(&png[10..]).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let r = parse_reply(&raw);
    assert_eq!(r.status, 200);
    assert_eq!(top1(&r.json()), "8");
    server.shutdown();
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    // One session, no waiting room: while a slow request (a 3000×3000 PNG to decode and
    // shrink) holds the session, concurrent requests are turned away rather than queued.
    let server = Server::start(app::ServeOptions {
        max_queue: 0,
        ..opts(1)
    });
    let addr = server.addr;
    let mut big = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(3000, 3000, |x, y| {
        image::Luma([((x ^ y) & 0xff) as u8])
    }))
    .write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
    .unwrap();
    let small = Arc::new(digit_png(5));
    let big = Arc::new(big);
    // The overlap is a race with the scheduler (on a loaded 2-core machine the slow
    // request can finish before the burst arrives), so a few attempts are allowed; a
    // server that never turns a request away fails every one of them.
    let (mut ok, mut busy) = (0, 0);
    for _attempt in 0..5 {
        let barrier = Arc::new(std::sync::Barrier::new(17));
        let slow = {
            let (barrier, big) = (barrier.clone(), big.clone());
            std::thread::spawn(move || {
                barrier.wait();
                classify(addr, "", "image/png", &big)
            })
        };
        let quick: Vec<_> = (0..16)
            .map(|_| {
                let (barrier, small) = (barrier.clone(), small.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    std::thread::sleep(Duration::from_millis(20));
                    classify(addr, "", "image/png", &small)
                })
            })
            .collect();
        // The slow request is usually the one served first; when a quick one wins the
        // session instead, the slow one is turned away like the rest.
        let slow = slow.join().unwrap();
        let replies = quick.into_iter().map(|t| (t.join().unwrap(), "5"));
        for (r, want) in std::iter::once((slow, "")).chain(replies) {
            if r.status == 200 {
                if !want.is_empty() {
                    assert_eq!(top1(&r.json()), want);
                }
                ok += 1;
            } else {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert!(r.error(503).contains("busy"));
                busy += 1;
            }
        }
        if busy >= 1 {
            break;
        }
    }
    assert!(busy >= 1, "no request was turned away ({ok} answered)");
    // Once idle, the server answers again.
    assert_eq!(classify(addr, "", "image/png", &small).status, 200);
    server.shutdown();
}

#[test]
fn burst_of_1000_concurrent_requests_all_answered_correctly() {
    const TOTAL: usize = 1000;
    const IN_FLIGHT: usize = 64;
    let sessions = app::ServeOptions::default().sessions;
    let server = Server::start(opts(sessions));
    let addr = server.addr;
    let pngs: Arc<Vec<Vec<u8>>> = Arc::new((0..10).map(digit_png).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let correct = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(TOTAL)));
    let server_ms = Arc::new(Mutex::new(Vec::with_capacity(TOTAL)));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(300);
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (pngs, next, correct, latencies, server_ms) = (
                pngs.clone(),
                next.clone(),
                correct.clone(),
                latencies.clone(),
                server_ms.clone(),
            );
            std::thread::spawn(move || {
                // Self-stopping: no new request after the deadline.
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= TOTAL {
                        break;
                    }
                    let d = i % 10;
                    let t = Instant::now();
                    let r = classify(addr, "?top=1", "image/png", &pngs[d]);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    assert_eq!(
                        r.status,
                        200,
                        "request {i}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    let v = r.json();
                    assert_eq!(top1(&v), d.to_string(), "request {i}: {v}");
                    correct.fetch_add(1, Ordering::Relaxed);
                    latencies.lock().unwrap().push(ms);
                    server_ms.lock().unwrap().push((
                        v["latency_ms"].as_f64().unwrap(),
                        v["inference_ms"].as_f64().unwrap(),
                    ));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a burst worker failed");
    }
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(
        correct.load(Ordering::Relaxed),
        TOTAL,
        "every request answered 200 with the right digit"
    );
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let sm = server_ms.lock().unwrap();
    let mean = |f: &dyn Fn(&(f64, f64)) -> f64| sm.iter().map(f).sum::<f64>() / sm.len() as f64;
    println!(
        "burst: model {}, {TOTAL} requests, {IN_FLIGHT} in flight, {sessions} sessions: {:.2} s, {:.0} req/s, \
         client latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; server mean latency {:.2} ms, inference {:.3} ms",
        test_model().1,
        wall,
        TOTAL as f64 / wall,
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1],
        mean(&|x| x.0),
        mean(&|x| x.1),
    );
    server.shutdown();
}
