//! GET / and GET /<file>: the browser client, embedded in the binary at
//! build time (`build.rs` turns every file under `web/` into an
//! `include_bytes!` entry), served with its content type and headers that
//! keep the page to its own origin: a strict Content-Security-Policy (no
//! inline script, no other host; `wasm-unsafe-eval` only so the vendored
//! Argon2id WebAssembly can compile), `nosniff` and no referrer.
//!
//! Unknown paths (and methods other than GET and HEAD) are rejected as not
//! found, so the JSON 404 of the API stays the answer for anything else.

use warp::http::{HeaderValue, Method, header};
use warp::{Filter, Rejection, Reply};

/// (path below `web/`, contents), sorted by path.
static ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

pub fn routes() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("host"))
        .and_then(serve)
}

async fn serve(
    method: Method,
    path: warp::path::FullPath,
    host: Option<String>,
) -> Result<warp::reply::Response, Rejection> {
    if method != Method::GET && method != Method::HEAD {
        return Err(warp::reject::not_found());
    }
    let name = match path.as_str() {
        "/" => "index.html",
        other => other.trim_start_matches('/'),
    };
    let Some((name, body)) = find(name) else {
        return Err(warp::reject::not_found());
    };
    let mut response = warp::reply::Response::new(if method == Method::HEAD {
        Vec::new().into()
    } else {
        body.to_vec().into()
    });
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_str(&content_security_policy(host.as_deref()))
            .expect("the policy is built from checked characters"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response.into_response())
}

/// The embedded file at `name`; never anything outside the table.
fn find(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .binary_search_by(|(path, _)| (*path).cmp(name))
        .ok()
        .map(|index| ASSETS[index])
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") | None => "text/plain; charset=utf-8",
        Some(_) => "application/octet-stream",
    }
}

/// `connect-src` names the WebSocket origin explicitly (`'self'` covers it
/// in current browsers, older ones need it spelled out). The Host header is
/// the client's, so it is used only if it looks like a host and port.
fn content_security_policy(host: Option<&str>) -> String {
    let sockets = host
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
         img-src 'self' blob:; media-src 'self' blob:; connect-src 'self'{sockets}; \
         object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_so_lookups_find_every_file() {
        assert!(ASSETS.windows(2).all(|w| w[0].0 < w[1].0));
        for (name, _) in ASSETS {
            assert!(find(name).is_some(), "{name}");
        }
        assert!(find("index.html").is_some());
        assert!(find("../Cargo.toml").is_none());
    }

    #[test]
    fn a_hostile_host_header_is_left_out_of_the_policy() {
        let policy = content_security_policy(Some("evil.example; script-src *"));
        assert!(!policy.contains("evil"));
        assert!(content_security_policy(Some("127.0.0.1:7878")).contains("ws://127.0.0.1:7878"));
    }
}
