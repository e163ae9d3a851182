//! OpenTelemetry export of the server's spans over OTLP/HTTP, with the `otel` feature: every
//! span the log filter lets through (a turn's `turn` span carries the class, the object id and
//! the request id; with `RUST_LOG=debug`, each request's `request` span too) goes to a
//! collector, batched in the background.
//!
//! Export is on when `--otlp-endpoint URL` is given (the collector's base URL, such as
//! `http://127.0.0.1:4318`; `/v1/traces` is added) or when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables are set. The
//! other standard variables apply: `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the
//! default, or `http/json`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ... A
//! collector that is down loses spans, never requests: the batch queue is bounded (2 048
//! spans) and drops what does not fit.

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// A layer that exports spans, boxed so that the binary composes it whatever the feature.
pub type ExportLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// Why export cannot start.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    /// The binary was built without the `otel` feature.
    #[error(
        "this rookery was built without OpenTelemetry export; build it with \
         `cargo build --release -p rookery-server --features otel`"
    )]
    NotBuilt,
    /// The exporter could not be made (a bad endpoint, for one).
    #[error("OpenTelemetry export: {0}")]
    Exporter(String),
}

/// The environment variables that turn export on without the flag.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Whether export is asked for: by the flag, or by a standard variable.
fn wanted(endpoint: Option<&str>) -> bool {
    endpoint.is_some()
        || ENDPOINT_VARS
            .iter()
            .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

/// The traces URL for a collector's base URL: `/v1/traces` is added unless a path is given.
pub fn traces_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if has_path {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    }
}

/// Span export while it lives; dropping it sends what is still queued and stops.
pub struct Export {
    #[cfg(feature = "otel")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Drop for Export {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Err(e) = self.provider.shutdown() {
            eprintln!("OpenTelemetry export did not finish cleanly: {e}");
        }
    }
}

/// The export layer and its guard when export is asked for (`endpoint`, or the standard
/// variables), else `None`.
pub fn layer<S>(endpoint: Option<&str>) -> Result<Option<(ExportLayer<S>, Export)>, OtelError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !wanted(endpoint) {
        return Ok(None);
    }
    build(endpoint).map(Some)
}

#[cfg(not(feature = "otel"))]
fn build<S>(_endpoint: Option<&str>) -> Result<(ExportLayer<S>, Export), OtelError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    Err(OtelError::NotBuilt)
}

#[cfg(feature = "otel")]
fn build<S>(endpoint: Option<&str>) -> Result<(ExportLayer<S>, Export), OtelError>
where
    S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    // The exporter's HTTP client is reqwest with rustls, which needs its crypto provider.
    crate::outbound::install_crypto_provider();
    let builder = SpanExporter::builder().with_http();
    let builder = match endpoint {
        Some(url) => builder.with_endpoint(traces_url(url)),
        // Without the flag, the standard variables say where.
        None => builder,
    };
    let exporter = builder
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("rookery").build())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("rookery"));
    Ok((Box::new(layer), Export { provider }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::Registry;

    #[test]
    #[cfg(not(feature = "otel"))]
    fn without_the_feature_asking_for_export_is_refused() {
        let err = layer::<Registry>(Some("http://127.0.0.1:4318")).err();
        assert!(matches!(err, Some(OtelError::NotBuilt)), "{err:?}");
    }

    #[test]
    #[cfg(feature = "otel")]
    fn a_bad_endpoint_is_refused() {
        let err = layer::<Registry>(Some("not a url")).err();
        assert!(matches!(err, Some(OtelError::Exporter(_))), "{err:?}");
    }

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example.com/custom/traces"),
            "https://otel.example.com/custom/traces"
        );
    }
}
