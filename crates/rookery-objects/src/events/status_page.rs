//! `GET /events/:namespace/status`: one look at a namespace (issue 16, item 6): its
//! subscriptions with their backlog, attempts, last error and dead letters, its schemas, and
//! the event writer's backlog.
//! JSON by default; a small HTML page when the client prefers `text/html` (a browser), which
//! refreshes itself every five seconds.

use rookery::prelude::*;
use rookery::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::bindings::{EVENTS_BINDING, SCHEMAS_BINDING};

/// The status of `namespace`, as JSON or HTML.
pub(super) async fn status(req: &Request, env: &Env, namespace: &str) -> Result<Response> {
    let events = env.namespace(EVENTS_BINDING)?.get_by_name(namespace);
    let subscriptions = events
        .fetch(Request::get("/subscriptions")?)
        .await?
        .json_body::<Value>()?;
    let schemas = match env.namespace(SCHEMAS_BINDING) {
        Ok(ns) => ns
            .get_by_name(namespace)
            .fetch(Request::get("/schemas")?)
            .await?
            .json_body::<Value>()?["types"]
            .clone(),
        Err(_) => Value::Null,
    };
    let subs = subscriptions["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sum = |field: &str| subs.iter().filter_map(|s| s[field].as_i64()).sum::<i64>();
    let body = json!({
        "namespace": namespace,
        "backlog": sum("pending"),
        "delivered": sum("delivered"),
        "deadLetters": sum("deadLetters"),
        "subscriptions": subs,
        "schemas": schemas,
        "archive": subscriptions["archive"].clone(),
    });
    let wants_html = req
        .header("accept")
        .is_some_and(|a| a.contains("text/html"));
    if wants_html {
        Ok(Response::new(StatusCode::OK, html(&body))
            .with_header(
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("text/html; charset=utf-8"),
            )
            .with_header(
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
            ))
    } else {
        Response::json(&body)
    }
}

/// Text made safe inside HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as table-cell text.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "—".to_string(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

fn html(status: &Value) -> String {
    let ns = cell(&status["namespace"]);
    let mut rows = String::new();
    for s in status["subscriptions"].as_array().into_iter().flatten() {
        rows.push_str("<tr>");
        for field in [
            "id",
            "pattern",
            "url",
            "pending",
            "attempts",
            "lastError",
            "nextAttemptAt",
            "delivered",
            "deadLetters",
            "dropped",
            "shard",
        ] {
            rows.push_str(&format!("<td>{}</td>", cell(&s[field])));
        }
        rows.push_str("</tr>\n");
    }
    let mut schemas = String::new();
    for t in status["schemas"].as_array().into_iter().flatten() {
        schemas.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            cell(&t["type"]),
            cell(&t["latest"]),
            cell(&t["versions"])
        ));
    }
    let archive = &status["archive"];
    let archive = if archive.is_object() {
        format!(
            "<h2>Event writer</h2><p>Archived through sequence <b>{}</b> · backlog <b>{}</b> · \
             failed calls <b>{}</b> · last error {}</p>",
            cell(&archive["archived"]),
            cell(&archive["backlog"]),
            cell(&archive["failures"]),
            cell(&archive["lastError"]),
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
         <title>events: {ns}</title><style>body{{font:14px system-ui,sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style>\
         </head><body><h1>Namespace {ns}</h1>\
         <p>Backlog <b>{}</b> · delivered <b>{}</b> · dead letters <b>{}</b></p>\
         <h2>Subscriptions</h2><table><tr><th>id</th><th>pattern</th><th>url</th><th>pending</th>\
         <th>attempts</th><th>last error</th><th>next attempt (ms)</th><th>delivered</th>\
         <th>dead letters</th><th>dropped</th><th>shard</th></tr>\n{rows}</table>\
         <h2>Schemas</h2><table><tr><th>type</th><th>latest</th><th>versions</th></tr>\n{schemas}</table>\
         {archive}</body></html>\n",
        cell(&status["backlog"]),
        cell(&status["delivered"]),
        cell(&status["deadLetters"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_subscribers_wrote() {
        let page = html(&json!({
            "namespace": "shop",
            "backlog": 3, "delivered": 1, "deadLetters": 0,
            "subscriptions": [{"id": "sub_1", "pattern": "order.*", "url": "https://x/<script>",
                               "pending": 3, "lastError": "HTTP 500 \"boom\""}],
            "schemas": [{"type": "order.created", "latest": 2, "versions": 2}],
        }));
        assert!(page.contains("https://x/&lt;script&gt;"), "{page}");
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("HTTP 500 &quot;boom&quot;"), "{page}");
        assert!(page.contains("<td>order.created</td><td>2</td>"), "{page}");
        assert!(page.contains("Backlog <b>3</b>"), "{page}");
    }
}
