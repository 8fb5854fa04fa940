//! An in-process OTLP/HTTP trace receiver: a small HTTP/1.1 server on 127.0.0.1 that takes
//! `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`, decodes it with the
//! gateway's own message definitions (`gatehouse::telemetry::proto`) and keeps the spans.
//! It answers `200` (or the status set with [`OtlpReceiver::answer`]). A test-only fake:
//! it reads `Content-Length` bodies only, which is what the exporter sends.

use gatehouse::telemetry::proto::{ExportTraceServiceRequest, Span};
use prost::Message as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One export request as received.
#[derive(Clone, Debug)]
pub struct Export {
    pub path: String,
    pub content_type: String,
    pub request: ExportTraceServiceRequest,
}

impl Export {
    /// `service.name` of the (first) resource.
    pub fn service_name(&self) -> Option<String> {
        let r = self.request.resource_spans.first()?.resource.as_ref()?;
        r.attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.as_str())
            .map(str::to_string)
    }
}

#[derive(Default)]
struct Shared {
    exports: Mutex<Vec<Export>>,
    status: AtomicU16,
    stop: AtomicBool,
}

pub struct OtlpReceiver {
    port: u16,
    shared: Arc<Shared>,
}

impl OtlpReceiver {
    pub fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("otlp receiver: bind");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared::default());
        shared.status.store(200, SeqCst);
        let sh = shared.clone();
        thread::spawn(move || {
            while !sh.stop.load(SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let sh = sh.clone();
                        thread::spawn(move || serve(stream, sh));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        OtlpReceiver { port, shared }
    }

    /// `http://127.0.0.1:PORT` (the exporter appends `/v1/traces`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The status of the answers from now on.
    pub fn answer(&self, status: u16) {
        self.shared.status.store(status, SeqCst);
    }

    pub fn exports(&self) -> Vec<Export> {
        self.shared.exports.lock().expect("lock").clone()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.exports()
            .iter()
            .flat_map(|e| e.request.resource_spans.clone())
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
    }
}

fn serve(stream: TcpStream, sh: Arc<Shared>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let (mut length, mut content_type) = (0usize, String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "content-type" => content_type = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = sh.status.load(SeqCst);
        if status == 200 {
            if let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice()) {
                sh.exports.lock().expect("lock").push(Export {
                    path,
                    content_type,
                    request,
                });
            }
        }
        let answer = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Lower-case hex of an id as the receiver got it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string attribute of a received span.
pub fn str_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    s.attribute(key)
        .and_then(gatehouse::telemetry::proto::AnyValue::as_str)
}

/// An integer attribute of a received span.
pub fn int_attr(s: &Span, key: &str) -> Option<i64> {
    s.attribute(key)
        .and_then(gatehouse::telemetry::proto::AnyValue::as_int)
}
