//! Errors from DataFusion, arrow, parquet and object_store, rendered in words a user can act
//! on. A leaf: any layer may use it, and it uses nothing of the crate.

/// Renders a DataFusion error for a user: the innermost useful message, without the
/// "Arrow error: External error: ..." wrapping and without a backtrace.
pub fn describe_datafusion(err: &datafusion::error::DataFusionError) -> String {
    describe_storage(&describe_engine(err))
}

/// A storage failure in words a user can act on: a refusal (HTTP 403, or object_store's
/// "lacked the necessary privileges") starts with "access denied", and a server's XML error
/// body (many lines) is cut off. Other messages pass unchanged.
pub fn describe_storage(message: &str) -> String {
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
