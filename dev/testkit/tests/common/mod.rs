//! A minimal HTTP/1.1 client on raw sockets, standing in for a function's
//! runtime client so the emulator is tested without any workspace crate.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Writes a request on a fresh connection and leaves the response unread.
pub async fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    Ok(stream)
}

/// Reads one response; the server closes the connection after it because
/// every request asks for `Connection: close`.
pub async fn receive(mut stream: TcpStream) -> io::Result<HttpResponse> {
    let mut raw = Vec::new();
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, status_line.to_owned()))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[head_end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding")
                && v.eq_ignore_ascii_case("chunked")),
        "this client does not decode chunked responses"
    );
    match length {
        Some(length) => {
            while body.len() < length {
                let mut chunk = vec![0u8; (length - body.len()).min(1 << 16)];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside the body",
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
        }
        None => {
            stream.read_to_end(&mut body).await?;
        }
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    receive(send(addr, method, path, headers, body).await?).await
}

pub const NEXT: &str = "/2018-06-01/runtime/invocation/next";

pub fn response_path(id: &str) -> String {
    format!("/2018-06-01/runtime/invocation/{id}/response")
}

pub fn error_path(id: &str) -> String {
    format!("/2018-06-01/runtime/invocation/{id}/error")
}

pub const INIT_ERROR: &str = "/2018-06-01/runtime/init/error";

/// An invocation as a poller received it.
pub struct Received {
    pub id: String,
    pub event: Value,
    pub response: HttpResponse,
}

/// Long-polls `/next`, panicking if nothing arrives within `limit`.
pub async fn next_within(addr: &str, limit: Duration) -> Received {
    let response = tokio::time::timeout(limit, request(addr, "GET", NEXT, &[], b""))
        .await
        .expect("an invocation within the limit")
        .expect("GET /next");
    assert_eq!(response.status, 200, "GET /next status");
    let id = response
        .header("Lambda-Runtime-Aws-Request-Id")
        .expect("request id header")
        .to_owned();
    Received {
        id,
        event: response.json(),
        response,
    }
}

pub async fn next(addr: &str) -> Received {
    next_within(addr, Duration::from_secs(10)).await
}

pub async fn respond(addr: &str, id: &str, body: &[u8]) -> HttpResponse {
    request(addr, "POST", &response_path(id), &[], body)
        .await
        .expect("POST response")
}

pub async fn fail(addr: &str, id: &str, error_type: &str, message: &str) -> HttpResponse {
    let body =
        serde_json::json!({"errorType": error_type, "errorMessage": message, "stackTrace": []});
    request(
        addr,
        "POST",
        &error_path(id),
        &[
            ("Content-Type", "application/vnd.aws.lambda.error+json"),
            ("Lambda-Runtime-Function-Error-Type", error_type),
        ],
        body.to_string().as_bytes(),
    )
    .await
    .expect("POST error")
}

pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
