//! Outbound JSON `POST`s to a receiver that acknowledges with any 2xx: what the event
//! aggregator, the metrics object and event subscriptions send, each retrying by alarm.

use rookery::prelude::*;
use rookery::{Bytes, HeaderName, HeaderValue};

/// The outcome of one delivery attempt: `Ok` when the receiver acknowledged, else why not.
pub(crate) type Attempt = std::result::Result<(), String>;

/// `POST`s the JSON `body` to `url` with `headers` (name, value).
///
/// `Ok(attempt)` is what the receiver made of it: a URL that cannot be used, a refusal or an
/// unreachable receiver are failed attempts, to be retried. `Err` is a failure of the turn
/// itself (a header value that cannot be sent, or the turn's writes not made durable before
/// the request could leave): the caller must not count it as an attempt.
pub(crate) async fn post_json(
    env: &Env,
    url: &str,
    body: impl Into<Bytes>,
    headers: &[(&'static str, &str)],
) -> Result<Attempt> {
    let mut req = match Request::post(url) {
        Ok(req) => req.with_body(body).with_header(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        ),
        Err(e) => return Ok(Err(format!("{url:?} is not a usable URL: {e}"))),
    };
    for (name, value) in headers {
        let value = HeaderValue::from_str(value)
            .map_err(|e| Error::msg(format!("{name}: not a header value: {e}")))?;
        req = req.with_header(HeaderName::from_static(name), value);
    }
    match env.http().fetch(req).await {
        Ok(resp) if resp.status().is_success() => Ok(Ok(())),
        Ok(resp) => Ok(Err(format!("the receiver answered {}", resp.status()))),
        Err(e @ Error::Outbound { .. }) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}
