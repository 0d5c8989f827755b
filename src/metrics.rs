//! Runs' metrics in Prometheus's text format, from their reports and the state store's history:
//! `sluice run --metrics-file F` writes a file for the node exporter's textfile collector or a
//! Pushgateway, and `sluice schedule` serves them on `/metrics`, with its own counts of runs
//! (by status, a duration histogram) on top. The latest run of each pipeline is described by
//! gauges; the last successful run of the pipeline and of each model come from the state
//! store, so a failed run still tells how stale each output is.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::report::RunReport;
use crate::state::LastSuccess;

/// Labels of a sample: (name, value) pairs.
type Labels = Vec<(String, String)>;

/// A family of float gauges.
type Gauges = Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// Bucket bounds of the duration histograms, in seconds: 1 s to about 4.5 hours.
const DURATION_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 16200.0,
];

/// The latest run of one pipeline, and when it and its models last succeeded.
pub(crate) struct Latest<'a> {
    pub(crate) report: &'a RunReport,
    pub(crate) last: &'a LastSuccess,
}

/// What `sluice schedule` counts over its lifetime, on top of each pipeline's latest run:
/// runs by status, a histogram of their durations, when each pipeline runs next and whether
/// one is running. Cloned handles share the counts.
#[derive(Clone)]
pub(crate) struct Scheduled {
    runs: Family<Labels, Counter>,
    run_seconds: Family<Labels, Histogram>,
    next_run: Gauges,
    running: Gauges,
    paused: Gauges,
}

impl Scheduled {
    pub(crate) fn new() -> Scheduled {
        Scheduled {
            runs: Family::default(),
            run_seconds: Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            next_run: Gauges::default(),
            running: Gauges::default(),
            paused: Gauges::default(),
        }
    }

    /// Counts a run of `pipeline` that ended (or was refused: status `failed`).
    pub(crate) fn run_ended(&self, report: &RunReport) {
        let pipeline = ("pipeline".to_string(), report.pipeline.clone());
        let status = ("status".to_string(), report.status.as_str().to_string());
        self.runs
            .get_or_create(&vec![pipeline.clone(), status])
            .inc();
        if let (Some(s), Some(f)) = (seconds(&report.started_at), seconds(&report.finished_at)) {
            self.run_seconds
                .get_or_create(&vec![pipeline.clone()])
                .observe(f - s);
        }
        let paused = f64::from(u8::from(report.status == crate::status::RunStatus::Paused));
        self.paused.get_or_create(&vec![pipeline]).set(paused);
    }

    /// When `pipeline` runs next.
    pub(crate) fn next_run(&self, pipeline: &str, at: chrono::DateTime<chrono::Utc>) {
        self.next_run
            .get_or_create(&vec![("pipeline".to_string(), pipeline.to_string())])
            .set(at.timestamp_micros() as f64 / 1e6);
    }

    /// Whether a run of `pipeline` is going.
    pub(crate) fn running(&self, pipeline: &str, running: bool) {
        let labels = vec![("pipeline".to_string(), pipeline.to_string())];
        self.running
            .get_or_create(&labels)
            .set(f64::from(u8::from(running)));
        if running {
            // A paused run that resumes is no longer waiting.
            self.paused.get_or_create(&labels).set(0.0);
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "runs",
            "Runs ended since the scheduler started, by pipeline and status",
            self.runs.clone(),
        );
        registry.register(
            "run_seconds",
            "How long runs took, since the scheduler started",
            self.run_seconds.clone(),
        );
        registry.register(
            "next_run_timestamp_seconds",
            "When each pipeline's next scheduled run starts (Unix time)",
            self.next_run.clone(),
        );
        registry.register(
            "running",
            "1 while a run of the pipeline is going",
            self.running.clone(),
        );
        registry.register(
            "paused",
            "1 when the pipeline's latest run was paused (its window closed) and waits to resume",
            self.paused.clone(),
        );
    }
}

/// The metrics of each pipeline's latest run, and what the scheduler counted, if this is
/// `sluice schedule`.
pub(crate) fn render(latest: &[Latest<'_>], scheduled: Option<&Scheduled>) -> String {
    let mut registry = Registry::with_prefix("sluice");
    if let Some(s) = scheduled {
        s.register(&mut registry);
    }
    let gauges = |registry: &mut Registry, name: &str, help: &str| -> Gauges {
        let family = Gauges::default();
        registry.register(name, help, family.clone());
        family
    };
    let set = |family: &Gauges, labels: Labels, value: f64| {
        family.get_or_create(&labels).set(value);
    };
    let status = gauges(
        &mut registry,
        "run_status",
        "1 for the status the pipeline's latest run ended with",
    );
    let run_duration = gauges(
        &mut registry,
        "run_duration_seconds",
        "How long the latest run took",
    );
    let run_finished = gauges(
        &mut registry,
        "run_finished_timestamp_seconds",
        "When the latest run ended (Unix time)",
    );
    let last_success = gauges(
        &mut registry,
        "last_success_timestamp_seconds",
        "When a run of the pipeline last succeeded whole (Unix time)",
    );
    let model_last = gauges(
        &mut registry,
        "model_last_success_timestamp_seconds",
        "When each model last succeeded (Unix time): alert on its age",
    );
    let rows = gauges(
        &mut registry,
        "model_rows",
        "Rows of each model in the latest run: read (in), written (out), quarantined \
         (rejected), late inside and beyond the late window",
    );
    let late_rate = gauges(
        &mut registry,
        "model_late_arrival_rate",
        "Late rows over all rows an incremental model counted in the latest run",
    );
    let spilled = gauges(
        &mut registry,
        "model_spilled_bytes",
        "Bytes each model spilled to disk in the latest run",
    );
    let duration = gauges(
        &mut registry,
        "model_duration_seconds",
        "How long each model took in the latest run",
    );
    let units = gauges(
        &mut registry,
        "model_units",
        "Work units of each model in the latest run: all, and done",
    );
    let retries = gauges(
        &mut registry,
        "model_retries",
        "Unit attempts beyond the first in the latest run",
    );
    let unit_seconds =
        Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
    registry.register(
        "unit_duration_seconds",
        "How long each work unit took in the latest run",
        unit_seconds.clone(),
    );
    let db_rows = gauges(
        &mut registry,
        "database_rows",
        "Rows read from and written to each database in the latest run",
    );
    let db_bytes = gauges(
        &mut registry,
        "database_bytes",
        "Bytes read from and written to each database in the latest run",
    );
    let db_paused = gauges(
        &mut registry,
        "database_paused_seconds",
        "Time reads and loads paused for each database's latency guard in the latest run",
    );
    let db_throttled = gauges(
        &mut registry,
        "database_throttled_seconds",
        "Time reads waited for each database's max_rows_per_second in the latest run",
    );
    let store_bytes = gauges(
        &mut registry,
        "store_bytes",
        "Bytes read from and written to each object store in the latest run",
    );
    let store_requests = gauges(
        &mut registry,
        "store_requests",
        "Requests made to each object store in the latest run",
    );
    let store_throttled = gauges(
        &mut registry,
        "store_throttled_seconds",
        "Time requests waited for each object store's I/O quotas in the latest run",
    );
    for Latest { report, last } in latest {
        let pipeline = &report.pipeline;
        let labels = |extra: &[(&str, &str)]| -> Labels {
            std::iter::once(("pipeline".to_string(), pipeline.clone()))
                .chain(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
                .collect()
        };
        set(&status, labels(&[("status", report.status.as_str())]), 1.0);
        let started = seconds(&report.started_at);
        let finished = seconds(&report.finished_at);
        if let (Some(s), Some(f)) = (started, finished) {
            set(&run_duration, labels(&[]), f - s);
        }
        if let Some(f) = finished {
            set(&run_finished, labels(&[]), f);
        }
        if let Some(t) = last.pipeline.as_deref().and_then(seconds) {
            set(&last_success, labels(&[]), t);
        }
        for (model, at) in &last.models {
            if let Some(t) = seconds(at) {
                set(&model_last, labels(&[("model", model)]), t);
            }
        }
        for m in &report.models {
            let model = m.name.as_str();
            for (kind, n) in [
                ("in", m.rows_in),
                ("out", m.rows_out),
                ("rejected", m.rows_rejected),
            ] {
                set(&rows, labels(&[("model", model), ("kind", kind)]), n as f64);
            }
            if let Some(late) = &m.late {
                for (kind, n) in [
                    ("late_in_window", late.counts.rows_late_in_window),
                    ("late_beyond_window", late.counts.rows_late_beyond_window),
                ] {
                    set(&rows, labels(&[("model", model), ("kind", kind)]), n as f64);
                }
                set(&late_rate, labels(&[("model", model)]), late.rate);
            }
            set(
                &spilled,
                labels(&[("model", model)]),
                m.spilled_bytes as f64,
            );
            set(
                &duration,
                labels(&[("model", model)]),
                m.elapsed_ms as f64 / 1000.0,
            );
            for (state, n) in [("all", m.units_total), ("done", m.units_done)] {
                set(
                    &units,
                    labels(&[("model", model), ("state", state)]),
                    n as f64,
                );
            }
            let extra: u64 = (m.units.iter())
                .map(|u| u64::from(u.attempts.saturating_sub(1)))
                .sum();
            set(&retries, labels(&[("model", model)]), extra as f64);
            let histogram = unit_seconds.get_or_create(&labels(&[("model", model)]));
            for u in &m.units {
                histogram.observe(u.elapsed_ms as f64 / 1000.0);
            }
        }
        for st in &report.stores {
            let store = st.name.as_deref().unwrap_or(&st.url);
            for (direction, b) in [("read", st.bytes_read), ("written", st.bytes_written)] {
                set(
                    &store_bytes,
                    labels(&[("store", store), ("direction", direction)]),
                    b as f64,
                );
            }
            set(
                &store_requests,
                labels(&[("store", store)]),
                st.requests as f64,
            );
            set(
                &store_throttled,
                labels(&[("store", store)]),
                st.throttled_ms as f64 / 1000.0,
            );
        }
        for d in &report.databases {
            let db = d.name.as_str();
            for (direction, r, b) in [
                ("read", d.rows_read, d.bytes_read),
                ("written", d.rows_written, d.bytes_written),
            ] {
                let l = labels(&[("database", db), ("direction", direction)]);
                set(&db_rows, l.clone(), r as f64);
                set(&db_bytes, l, b as f64);
            }
            set(
                &db_paused,
                labels(&[("database", db)]),
                d.paused_ms as f64 / 1000.0,
            );
            set(
                &db_throttled,
                labels(&[("database", db)]),
                d.throttled_ms as f64 / 1000.0,
            );
        }
    }

    let mut out = String::new();
    // (Writing to a String cannot fail.)
    let _ = encode(&mut out, &registry);
    out
}

/// An RFC 3339 time as Unix seconds.
fn seconds(t: &str) -> Option<f64> {
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(t.timestamp_micros() as f64 / 1e6)
}
