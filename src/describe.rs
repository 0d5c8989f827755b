//! Errors from DataFusion, arrow, parquet and object_store, rendered in words a user can act
//! on, and told apart: transient (worth another attempt) or not. A leaf: any layer may use it,
//! and it uses nothing of the crate.

/// Renders a DataFusion error for a user: the innermost useful message, without the
/// "Arrow error: External error: ..." wrapping and without a backtrace.
pub(crate) fn describe_datafusion(err: &datafusion::error::DataFusionError) -> String {
    describe_storage(&describe_engine(err))
}

/// A storage failure in words a user can act on: a refusal (HTTP 403, or object_store's
/// "lacked the necessary privileges") starts with "access denied", and a server's XML error
/// body (many lines) is cut off. Other messages pass unchanged.
pub(crate) fn describe_storage(message: &str) -> String {
    let text = message
        .split("<?xml")
        .next()
        .unwrap_or(message)
        .trim_end()
        .trim_end_matches(':')
        .replace("External: ", "");
    let denied = text.contains("lacked the necessary privileges")
        || text.contains("403 Forbidden")
        || text.contains("AccessDenied");
    if denied && !text.starts_with("access denied") {
        format!("access denied (check the credentials and the bucket's policy): {text}")
    } else {
        text
    }
}

fn describe_engine(err: &datafusion::error::DataFusionError) -> String {
    use datafusion::error::DataFusionError as D;
    match err {
        D::Context(ctx, inner) => format!("{ctx}: {}", describe_engine(inner)),
        D::Shared(inner) => describe_engine(inner),
        D::External(inner) => describe_external(inner.as_ref()),
        D::ArrowError(inner, _) => describe_arrow(inner),
        D::ObjectStore(inner) => inner.to_string(),
        // (The parquet error's own text starts "Parquet error: ".)
        D::ParquetError(inner) => inner.to_string(),
        D::Collection(errs) => errs
            .first()
            .map(describe_engine)
            .unwrap_or_else(|| err.to_string()),
        other => other.strip_backtrace(),
    }
}

fn describe_arrow(err: &datafusion::arrow::error::ArrowError) -> String {
    use datafusion::arrow::error::ArrowError as A;
    match err {
        A::ExternalError(inner) => describe_external(inner.as_ref()),
        other => other.to_string(),
    }
}

fn describe_external(err: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    if let Some(df) = err.downcast_ref::<datafusion::error::DataFusionError>() {
        describe_engine(df)
    } else if let Some(arrow) = err.downcast_ref::<datafusion::arrow::error::ArrowError>() {
        describe_arrow(arrow)
    } else {
        err.to_string()
    }
}

/// Whether trying again could succeed: a dropped or refused connection, a timeout, storage
/// throttling (HTTP 429) or a server error (HTTP 5xx). Decided from the types along the
/// error's chain of sources — I/O error kinds, object_store's error variants and HTTP error
/// kinds, DataFusion and arrow wrappers looked through — not from its message. Errors in the
/// data, the SQL or the schema are deterministic and are not retried.
pub(crate) fn is_transient(err: &(dyn std::error::Error + 'static)) -> bool {
    use object_store::client::{HttpError, HttpErrorKind};
    use std::io::ErrorKind as K;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::TimedOut
                    | K::ConnectionReset
                    | K::ConnectionRefused
                    | K::ConnectionAborted
                    | K::NotConnected
                    | K::BrokenPipe
                    | K::Interrupted
                    | K::WouldBlock
            ) {
                return true;
            }
            // An I/O error's `source` skips the error it wraps: look at that one itself.
            next = io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            continue;
        }
        if let Some(http) = e.downcast_ref::<HttpError>() {
            return matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        if e.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
            return true;
        }
        if let Some(store) = e.downcast_ref::<object_store::Error>() {
            match store {
                object_store::Error::Generic { source, .. } => {
                    if let Some(status) = http_status(source.as_ref()) {
                        return status == 429 || (500..600).contains(&status);
                    }
                }
                // Missing, refused, conflicting or unsupported: the same next time.
                _ => return false,
            }
        }
        next = e.source();
    }
    false
}

/// The HTTP status of a request object_store gave up on (after its own retries). Its error
/// types for that (`RetryError`, `RequestError`) are private, so the status is read from the
/// one message they write: "Server returned non-2xx status code: 503 Service Unavailable".
fn http_status(err: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if let Some((_, rest)) = text.split_once("non-2xx status code: ") {
            return rest.get(..3)?.parse().ok();
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::error::DataFusionError;
    use std::io;

    fn io_err(kind: io::ErrorKind) -> DataFusionError {
        DataFusionError::ObjectStore(Box::new(object_store::Error::Generic {
            store: "S3",
            source: Box::new(io::Error::new(kind, "boom")),
        }))
    }

    #[test]
    fn dropped_connections_and_timeouts_are_transient_through_the_wrappers() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::TimedOut,
            io::ErrorKind::BrokenPipe,
        ] {
            let e = io_err(kind);
            assert!(is_transient(&e), "{kind:?}");
            // Wrapped as DataFusion wraps a stream's error: External(Arrow(External(...))).
            let wrapped = DataFusionError::Context(
                "reading".into(),
                Box::new(DataFusionError::External(Box::new(
                    datafusion::arrow::error::ArrowError::ExternalError(Box::new(e)),
                ))),
            );
            assert!(is_transient(&wrapped), "{kind:?} wrapped");
            // Inside an io::Error, as a writer reports it.
            let in_io = io::Error::other(io_err(kind));
            assert!(is_transient(&in_io), "{kind:?} in io::Error");
        }
        let http = object_store::client::HttpError::new(
            object_store::client::HttpErrorKind::Connect,
            io::Error::other("refused"),
        );
        assert!(is_transient(&http));
    }

    #[test]
    fn server_errors_and_throttling_are_transient_other_statuses_are_not() {
        /// An error whose message is object_store's for a status it gave up on.
        #[derive(Debug)]
        struct Status(u16);
        impl std::fmt::Display for Status {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "Server returned non-2xx status code: {} Whatever: ",
                    self.0
                )
            }
        }
        impl std::error::Error for Status {}
        let generic = |status| object_store::Error::Generic {
            store: "S3",
            source: Box::new(Status(status)),
        };
        for status in [429, 500, 502, 503, 504] {
            assert!(is_transient(&generic(status)), "{status}");
        }
        for status in [400, 403, 404, 412] {
            assert!(!is_transient(&generic(status)), "{status}");
        }
    }

    #[test]
    fn data_sql_and_missing_objects_are_not_transient() {
        let not_found = object_store::Error::NotFound {
            path: "a".into(),
            source: Box::new(io::Error::new(io::ErrorKind::TimedOut, "x")),
        };
        assert!(!is_transient(&not_found), "missing stays missing");
        assert!(!is_transient(&DataFusionError::Plan(
            "No field named x".into()
        )));
        let cast = datafusion::arrow::error::ArrowError::CastError("'abc' to Int32".into());
        assert!(!is_transient(&DataFusionError::ArrowError(
            Box::new(cast),
            None
        )));
        assert!(!is_transient(&io_err(io::ErrorKind::UnexpectedEof)));
    }
}
