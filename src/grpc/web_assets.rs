//! The browser pages served beside gRPC and gRPC-web on the one port: the embeddable widget
//! (`/widget.js`), the demo page that embeds it (`/demo`) and the agent console
//! (`/console`). The built scripts are committed under `clients/*/dist/` and embedded at
//! compile time, so a server built on a machine without node serves them too.
//!
//! A tower layer in front of gRPC-web answers these few GET paths itself: gRPC-web answers
//! any other HTTP/1.1 request with 400, and every other request goes on to gRPC untouched.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, FutureExt};
use http::{HeaderValue, Method, StatusCode, header};
use tonic::body::Body;
use tower::{Layer, Service};

/// The widget bundle (`clients/widget`, `npm run build`).
const WIDGET_JS: &str = include_str!("../../clients/widget/dist/widget.js");
/// The demo page; `__CHAT_ENGINE_API_KEY__` stands where the demo tenant's key goes.
const DEMO_HTML: &str = include_str!("../../clients/widget/demo.html");
/// The agent console page and its bundle (`clients/console`).
const CONSOLE_HTML: &str = include_str!("../../clients/console/index.html");
const CONSOLE_JS: &str = include_str!("../../clients/console/dist/console.js");

const KEY_SLOT: &str = "__CHAT_ENGINE_API_KEY__";
const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// What the pages need to know about the node serving them.
#[derive(Clone, Debug, Default)]
pub struct WebPages {
    /// The demo tenant's widget key, when this node runs `chat-engine demo`; without it
    /// `/demo` explains how to get one instead of embedding a widget that cannot work.
    pub demo_widget_key: Option<String>,
}

/// One page: status, content type and body.
struct Page {
    status: StatusCode,
    content_type: &'static str,
    body: Arc<str>,
}

/// The pages by path, made once per server.
struct Pages {
    widget: Page,
    demo: Page,
    console: Page,
    console_js: Page,
    /// Browsers ask for it on every page; a plain 404 instead of gRPC-web's 400.
    no_icon: Page,
}

impl Pages {
    fn new(web: &WebPages) -> Self {
        let page = |content_type, body: &str| Page {
            status: StatusCode::OK,
            content_type,
            body: body.into(),
        };
        let demo = match web.demo_widget_key.as_deref() {
            Some(k) => page(HTML, &DEMO_HTML.replace(KEY_SLOT, &html_attr(k))),
            None => Page {
                status: StatusCode::NOT_FOUND,
                ..page(HTML, NO_DEMO)
            },
        };
        Self {
            widget: page(JS, WIDGET_JS),
            demo,
            console: page(HTML, CONSOLE_HTML),
            console_js: page(JS, CONSOLE_JS),
            no_icon: Page {
                status: StatusCode::NOT_FOUND,
                ..page("text/plain; charset=utf-8", "")
            },
        }
    }

    fn get(&self, path: &str) -> Option<&Page> {
        match path {
            "/widget.js" => Some(&self.widget),
            "/demo" | "/demo/" => Some(&self.demo),
            "/console" | "/console/" => Some(&self.console),
            "/console/console.js" => Some(&self.console_js),
            "/favicon.ico" => Some(&self.no_icon),
            _ => None,
        }
    }
}

const NO_DEMO: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>chat-engine: no demo here</title></head><body>\
<h1>No demo tenant on this server</h1>\
<p>This page embeds the chat widget with the demo tenant's key, which only \
<code>chat-engine demo</code> knows. Run <code>chat-engine demo</code> and open its \
<code>/demo</code>, or embed the widget on your own page with your tenant's widget key:</p>\
<pre>&lt;script src=\"https://YOUR-HOST/widget.js\" data-api-key=\"YOUR-KEY\" async&gt;&lt;/script&gt;</pre>\
</body></html>\n";

/// Escapes text for a double-quoted HTML attribute.
fn html_attr(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The response for a page, or 405 for a method other than GET and HEAD.
fn respond(page: &Page, method: &Method) -> http::Response<Body> {
    let allowed = method == Method::GET || method == Method::HEAD;
    let (status, body) = match (allowed, method == Method::HEAD) {
        (false, _) => (StatusCode::METHOD_NOT_ALLOWED, Body::default()),
        (true, true) => (page.status, Body::default()),
        (true, false) => (page.status, Body::new(page.body.to_string())),
    };
    let mut r = http::Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if !allowed {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(page.content_type),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(page.body.len()));
    // Revalidated on every load, so an upgraded server's widget reaches every site at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Adds [`PagesService`] in front of the gRPC stack.
#[derive(Clone)]
pub struct PagesLayer {
    pages: Arc<Pages>,
}

impl PagesLayer {
    /// The layer serving `web`'s pages.
    pub fn new(web: &WebPages) -> Self {
        Self {
            pages: Arc::new(Pages::new(web)),
        }
    }
}

impl<S> Layer<S> for PagesLayer {
    type Service = PagesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        PagesService {
            inner,
            pages: self.pages.clone(),
        }
    }
}

/// Answers the pages' paths; passes every other request to `inner`.
#[derive(Clone)]
pub struct PagesService<S> {
    inner: S,
    pages: Arc<Pages>,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for PagesService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        match self.pages.get(req.uri().path()) {
            Some(page) => {
                let r = respond(page, req.method());
                async move { Ok(r) }.boxed()
            }
            None => self.inner.call(req).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_page_embeds_the_key_escaped_or_explains_its_absence() {
        let with = Pages::new(&WebPages {
            demo_widget_key: Some("ck_a\"b<c".into()),
        });
        let page = with.get("/demo").unwrap();
        assert_eq!(page.status, StatusCode::OK);
        assert!(
            page.body.contains("data-api-key=\"ck_a&quot;b&lt;c\""),
            "{}",
            page.body
        );
        assert!(!page.body.contains(KEY_SLOT));
        let without = Pages::new(&WebPages::default());
        let page = without.get("/demo").unwrap();
        assert_eq!(page.status, StatusCode::NOT_FOUND);
        assert!(page.body.contains("chat-engine demo"));
        assert!(
            without
                .get("/chatengine.v1.VisitorService/StartChat")
                .is_none()
        );
    }
}
