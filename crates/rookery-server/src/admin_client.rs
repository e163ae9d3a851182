//! The command line's side of the admin API: listing, inspecting and deleting objects, point-in-time
//! recovery of one object and backups, on a running server (`rookery objects …`, `rookery backup`).

use rookery::percent_encode;
use serde_json::{Value, json};

/// Where the admin API is and the token it wants.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// The server's base URL, e.g. `http://127.0.0.1:8787`.
    pub url: String,
    /// The admin token (`[server] admin_token`).
    pub token: String,
}

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The server could not be reached or answered something unreadable.
    #[error("talking to {url}: {source}")]
    Http {
        /// The URL asked.
        url: String,
        /// What went wrong.
        source: reqwest::Error,
    },
    /// The server refused or failed the request.
    #[error("{status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: String,
    },
}

/// A bookmark of object `name` of `binding`: of its state now, or at `time_ms`.
pub async fn bookmark(
    target: &AdminTarget,
    binding: &str,
    name: &str,
    time_ms: Option<i64>,
) -> Result<Value, AdminError> {
    let mut url = object_url(target, binding, name, "bookmark");
    if let Some(t) = time_ms {
        url.push_str(&format!("?time={t}"));
    }
    send(target, reqwest::Method::GET, url, None).await
}

/// Restores object `name` of `binding` to `bookmark`, or to its state at `time_ms`.
pub async fn restore(
    target: &AdminTarget,
    binding: &str,
    name: &str,
    bookmark: Option<&str>,
    time_ms: Option<i64>,
) -> Result<Value, AdminError> {
    let body = match (bookmark, time_ms) {
        (Some(b), _) => json!({ "bookmark": b }),
        (None, t) => json!({ "time": t }),
    };
    let url = object_url(target, binding, name, "restore");
    send(target, reqwest::Method::POST, url, Some(body)).await
}

/// A page of the objects of `class` (a class name or binding): after `cursor`, with names
/// starting with `prefix`, at most `limit`.
pub async fn list_objects(
    target: &AdminTarget,
    class: &str,
    prefix: Option<&str>,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<Value, AdminError> {
    let mut url = format!("{}/objects", class_url(target, class));
    let mut sep = '?';
    for (key, value) in [
        ("prefix", prefix.map(percent_encode)),
        ("cursor", cursor.map(percent_encode)),
        ("limit", limit.map(|l| l.to_string())),
    ] {
        if let Some(value) = value {
            url.push_str(&format!("{sep}{key}={value}"));
            sep = '&';
        }
    }
    send(target, reqwest::Method::GET, url, None).await
}

/// One object of `class` (by id or name): its summary and tables, and the first page of its
/// key-value entries.
pub async fn show_object(
    target: &AdminTarget,
    class: &str,
    object: &str,
) -> Result<Value, AdminError> {
    let url = format!(
        "{}/objects/{}",
        class_url(target, class),
        percent_encode(object)
    );
    let detail = send(target, reqwest::Method::GET, url.clone(), None).await?;
    let kv = send(target, reqwest::Method::GET, format!("{url}/kv"), None).await?;
    Ok(json!({ "object": detail, "kv": kv }))
}

/// Deletes one object of `class` (by id or name): its storage, alarm and WebSockets.
pub async fn delete_object(
    target: &AdminTarget,
    class: &str,
    object: &str,
) -> Result<Value, AdminError> {
    let url = format!(
        "{}/objects/{}",
        class_url(target, class),
        percent_encode(object)
    );
    send(target, reqwest::Method::DELETE, url, None).await
}

/// Has the server back up every object into `dir` (a path on the server's machine).
pub async fn backup(target: &AdminTarget, dir: &std::path::Path) -> Result<Value, AdminError> {
    let url = format!("{}/_rookery/admin/backup", target.url.trim_end_matches('/'));
    send(
        target,
        reqwest::Method::POST,
        url,
        Some(json!({ "dir": dir })),
    )
    .await
}

fn class_url(target: &AdminTarget, class: &str) -> String {
    format!(
        "{}/_rookery/admin/classes/{}",
        target.url.trim_end_matches('/'),
        percent_encode(class)
    )
}

fn object_url(target: &AdminTarget, binding: &str, name: &str, action: &str) -> String {
    format!(
        "{}/_rookery/admin/objects/{}/{}/{action}",
        target.url.trim_end_matches('/'),
        percent_encode(binding),
        percent_encode(name)
    )
}

async fn send(
    target: &AdminTarget,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Result<Value, AdminError> {
    crate::outbound::install_crypto_provider();
    let http = |source| AdminError::Http {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder().build().map_err(http)?;
    let mut req = client.request(method, &url).bearer_auth(&target.token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.map_err(http)?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(http)?;
    if !(200..300).contains(&status) {
        return Err(AdminError::Refused { status, body: text });
    }
    serde_json::from_str(&text).map_err(|_| AdminError::Refused { status, body: text })
}

/// Reads a point in time: milliseconds since the Unix epoch, or an age such as `90s`, `15m`,
/// `2h` or `1d` (before `now_ms`).
pub fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let per: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?} is not a time: give ms since the epoch or an age like 15m"
            ));
        }
    };
    let n: i64 = number.parse().map_err(|_| {
        format!("{text:?} is not a time: give ms since the epoch or an age like 15m")
    })?;
    Ok(now_ms.saturating_sub(n.saturating_mul(per)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_epoch_millis_or_ages() {
        assert_eq!(parse_time("1700000000000", 0), Ok(1_700_000_000_000));
        assert_eq!(parse_time("15m", 1_000_000), Ok(1_000_000 - 900_000));
        assert_eq!(parse_time("2h", 10_000_000), Ok(10_000_000 - 7_200_000));
        assert!(parse_time("soon", 0).is_err());
        assert!(parse_time("5w", 0).is_err());
    }
}
