//! The browser path through the real stack: gRPC-web over raw HTTP/1.1, and CORS.

use chat_engine_client::pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::TestApp;

/// A raw HTTP/1.1 response, de-chunked.
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl HttpResponse {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) async fn http1(app: &TestApp, request_head: &str, body: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(request_head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16)
                    .unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        out
    } else {
        rest.to_vec()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// Splits a gRPC-web body into (flag, payload) frames.
pub(crate) fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((flag, body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

fn grpc_web_post(path: &str, origin: &str, payload: &[u8]) -> (String, Vec<u8>) {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nOrigin: {origin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    );
    (head, frame)
}

pub(crate) fn trailers(frames: &[(u8, Vec<u8>)]) -> String {
    frames
        .iter()
        .find(|(flag, _)| flag & 0x80 != 0)
        .map(|(_, t)| String::from_utf8(t.clone()).unwrap())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_login_works_over_http1_and_errors_are_readable() {
    let app = TestApp::spawn().await;
    app.tenant("web").await;
    let origin = "https://app.web.example";

    let ok = pb::LoginRequest {
        tenant_slug: "web".into(),
        email: "admin@web.example".into(),
        password: "admin-password-123".into(),
    };
    let (head, body) = grpc_web_post(
        "/chatengine.v1.AuthService/Login",
        origin,
        &ok.encode_to_vec(),
    );
    let r = http1(&app, &head, &body).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/grpc-web")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    let f = frames(&r.body);
    let data = f.iter().find(|(flag, _)| *flag == 0).expect("a data frame");
    let login = pb::LoginResponse::decode(&data.1[..]).unwrap();
    assert!(!login.tokens.unwrap().access_token.is_empty());
    assert!(trailers(&f).contains("grpc-status:0"), "{}", trailers(&f));

    // A validation error: status, message and the rich details are all readable by the page.
    let bad = pb::LoginRequest {
        tenant_slug: String::new(),
        email: "x".into(),
        password: String::new(),
    };
    let (head, body) = grpc_web_post(
        "/chatengine.v1.AuthService/Login",
        origin,
        &bad.encode_to_vec(),
    );
    let r = http1(&app, &head, &body).await;
    let expose = r
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(expose.contains(h), "{h} not exposed: {expose}");
    }
    let status = r
        .header("grpc-status")
        .map(str::to_owned)
        .unwrap_or_else(|| trailers(&frames(&r.body)));
    assert!(
        status.contains('3'),
        "INVALID_ARGUMENT expected, got {status}"
    );
    let details = r
        .header("grpc-status-details-bin")
        .map(str::to_owned)
        .unwrap_or_else(|| {
            trailers(&frames(&r.body))
                .lines()
                .find_map(|l| {
                    l.strip_prefix("grpc-status-details-bin:")
                        .map(str::to_owned)
                })
                .unwrap_or_default()
        });
    assert!(!details.is_empty(), "no rich error details in the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_the_widget_headers() {
    let app = TestApp::spawn().await;
    let head = "OPTIONS /chatengine.v1.VisitorService/GetWidgetConfig HTTP/1.1\r\nHost: localhost\r\n\
                Origin: https://shop.example\r\nAccess-Control-Request-Method: POST\r\n\
                Access-Control-Request-Headers: content-type,x-grpc-web,x-api-key,authorization\r\n\
                Connection: close\r\n\r\n";
    let r = http1(&app, head, b"").await;
    assert!(
        (200..300).contains(&r.status),
        "preflight status {}",
        r.status
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let allowed = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for h in ["content-type", "x-grpc-web", "x-api-key", "authorization"] {
        assert!(allowed.contains(h), "{h} not allowed: {allowed}");
    }
    assert!(
        r.header("access-control-allow-methods")
            .unwrap_or_default()
            .contains("POST")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_widget_the_console_and_the_demo_hint_are_served_beside_grpc() {
    let app = TestApp::spawn().await;
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");

    let js = http1(&app, &get("/widget.js"), b"").await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(js.header("cache-control"), Some("no-cache"));
    let on_disk = std::fs::read("clients/widget/dist/widget.js").unwrap();
    assert_eq!(js.body, on_disk, "the embedded widget is the built one");

    let page = http1(&app, &get("/console"), b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("/console/console.js"), "{html}");
    let script = http1(&app, &get("/console/console.js"), b"").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.body,
        std::fs::read("clients/console/dist/console.js").unwrap()
    );

    // A plain server knows no demo key: the page says how to get one instead of a widget.
    let demo = http1(&app, &get("/demo"), b"").await;
    assert_eq!(demo.status, 404);
    let text = String::from_utf8(demo.body).unwrap();
    assert!(text.contains("chat-engine demo"), "{text}");
    assert!(!text.contains("__CHAT_ENGINE_API_KEY__"));

    // Only GET and HEAD: a POST there is refused, and any other path is left to gRPC-web,
    // which refuses plain HTTP/1.1 requests as before.
    let post = http1(
        &app,
        "POST /widget.js HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let other = http1(&app, &get("/nope"), b"").await;
    assert_eq!(other.status, 400);
}
