//! `--listen`: `/metrics` (Prometheus's text format: each pipeline's latest run and the
//! scheduler's counts) and `/healthz` over HTTP/1.1, by hyper.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics::{Latest, Scheduled};
use crate::report::RunReport;
use crate::state::LastSuccess;

/// What `/metrics` shows: each pipeline's latest run and last successes, and the counts.
pub(super) struct Board {
    latest: Mutex<BTreeMap<String, (RunReport, LastSuccess)>>,
    pub(super) scheduled: Scheduled,
}

impl Board {
    pub(super) fn new() -> Board {
        Board {
            latest: Mutex::new(BTreeMap::new()),
            scheduled: Scheduled::new(),
        }
    }

    /// Records the run that just ended.
    pub(super) fn ended(&self, report: &RunReport, last: LastSuccess) {
        self.scheduled.run_ended(report);
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(report.pipeline.clone(), (report.clone(), last));
    }

    /// The metrics, in Prometheus's text format.
    pub(super) fn render(&self) -> String {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        let runs: Vec<Latest<'_>> = latest
            .values()
            .map(|(report, last)| Latest { report, last })
            .collect();
        crate::metrics::render(&runs, Some(&self.scheduled))
    }
}

/// Serves `board` on `listener` until the future is dropped.
pub(super) async fn serve(listener: tokio::net::TcpListener, board: Arc<Board>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let board = Arc::clone(&board);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let board = Arc::clone(&board);
                async move { Ok::<_, Infallible>(respond(&request, &board)) }
            });
            // A client that goes away mid-request ends its connection, nothing else.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(request: &Request<Incoming>, board: &Board) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            // (prometheus-client writes the OpenMetrics text format.)
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            board.render(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
