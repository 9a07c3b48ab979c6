//! HTTP inference server: one shared model, a pool of sessions.
//!
//! ```text
//! cargo run --release --features server --example serve -- models/lenet5.cnnrt \
//!     [--addr 127.0.0.1:8080] [--sessions N] [--max-batch 1]
//! curl -s --data-binary @models/samples/digit_7.png -H 'Content-Type: image/png' \
//!     'http://127.0.0.1:8080/v1/classify?top=3'
//! ```
//!
//! The API and the design are described in docs/SERVING.md; the router is in `serve/app.rs`.

#[path = "serve/app.rs"]
mod app;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Serve a .cnnrt model over HTTP (GET /health, POST /v1/classify)")]
struct Args {
    /// The .cnnrt model file.
    model: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Sessions in the pool, i.e. inferences running at once (default: one per CPU).
    #[arg(long)]
    sessions: Option<usize>,
    /// Largest batch a single request may carry (a [N, ...] .npy body).
    #[arg(long, default_value_t = 1)]
    max_batch: usize,
    /// Classes returned when a request gives no ?top=K.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 16)]
    body_limit_mib: usize,
    /// Requests that may wait for a session before the server answers 503.
    #[arg(long, default_value_t = 1024)]
    max_queue: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let model = match cnnrt::Model::open(&args.model) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let planned = model.metadata().planned_batch.max(1);
    if args.max_batch > 1 && planned != args.max_batch {
        eprintln!(
            "note: {} was converted for batch {planned}; for requests of {} samples, \
             `cnnrt convert --batch {}` may run them faster",
            args.model.display(),
            args.max_batch,
            args.max_batch
        );
    }
    let defaults = app::ServeOptions::default();
    let opts = app::ServeOptions {
        model_name: args
            .model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned()),
        sessions: args.sessions.unwrap_or(defaults.sessions),
        max_batch: args.max_batch,
        default_top: args.top.max(1),
        body_limit: args.body_limit_mib.saturating_mul(1 << 20),
        max_queue: args.max_queue,
    };
    let sessions = opts.sessions;
    let router = match app::router(model.clone(), opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await?;
        eprintln!(
            "serving {} (input {:?}) on http://{} with {sessions} session(s), max batch {}; ctrl-c to stop",
            args.model.display(),
            model.input_shape(),
            listener.local_addr()?,
            args.max_batch
        );
        axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await
    });
    match result {
        Ok(()) => {
            eprintln!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.addr);
            ExitCode::FAILURE
        }
    }
}

/// Resolves on ctrl-c (or SIGTERM on Unix); the server then stops accepting connections and
/// finishes the requests in progress.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("shutting down: finishing requests in progress");
}
