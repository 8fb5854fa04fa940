//! Micro-benchmarks of the per-request work gatehouse adds: route lookup in a 200-route
//! table, path normalisation and header processing, JWT verification (HS256, RS256,
//! ES256), the live-session check against the in-process store, and page rendering
//! (landing and a dashboard), and the tracing calls of a proxied request, off and on.
//! Speed is measured here, never asserted in `cargo test`.
//!
//! Run: `cargo bench --bench hot_path`. RS256/ES256 keys are generated with `openssl` at
//! start (skipped when it is missing).

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::auth::jwt::{Alg, Jwt, JwtSettings, KeyMaterial, KeySource, TokenType};
use gatehouse::auth::sessions::{SessionSettings, Sessions};
use gatehouse::auth::store::MemoryStore;
use gatehouse::routing::{normalize_path, Lookup, RouteKey, RouteTable};
use http::{HeaderMap, Method};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const NOW: i64 = 1_800_000_000;

fn route_table(c: &mut Criterion) {
    let services = [
        "doctors",
        "patients",
        "institutions",
        "admins",
        "billing",
        "labs",
        "imaging",
        "pharmacy",
    ];
    let mut keys = Vec::new();
    for i in 0..200 {
        let svc = services[i % services.len()];
        keys.push(RouteKey {
            prefix: format!("/api/v{}/{svc}/r{i}", 1 + i % 3),
            methods: (i % 4 == 0).then(|| vec![Method::GET, Method::POST]),
            hosts: None,
        });
    }
    keys.push(RouteKey {
        prefix: "/api/v1/doctors".into(),
        methods: None,
        hosts: None,
    });
    let table = RouteTable::new(keys);
    c.bench_function("route_lookup_200_routes_hit", |b| {
        b.iter(|| {
            table.lookup(
                Some("gw.example"),
                &Method::GET,
                black_box("/api/v2/patients/r97/visits/12"),
            )
        })
    });
    c.bench_function("route_lookup_200_routes_fallback_prefix", |b| {
        b.iter(|| {
            table.lookup(
                Some("gw.example"),
                &Method::GET,
                black_box("/api/v1/doctors/7/schedule"),
            )
        })
    });
    c.bench_function("route_lookup_200_routes_miss", |b| {
        b.iter(|| {
            let r = table.lookup(None, &Method::GET, black_box("/nothing/here/at/all"));
            assert_eq!(r, Lookup::NotFound);
        })
    });
}

fn header_processing(c: &mut Criterion) {
    let mut h = HeaderMap::new();
    h.insert("host", "gw.example".parse().expect("v"));
    h.insert(
        "x-forwarded-for",
        "203.0.113.7, 10.0.0.2".parse().expect("v"),
    );
    h.insert("x-request-id", "abc-123".parse().expect("v"));
    h.insert("accept", "application/json".parse().expect("v"));
    h.insert("authorization", "Bearer x.y.z".parse().expect("v"));
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
    let peer: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
    c.bench_function("path_normalise_clean", |b| {
        b.iter(|| normalize_path(black_box("/api/v1/doctors/7")))
    });
    c.bench_function("path_normalise_dirty", |b| {
        b.iter(|| normalize_path(black_box("//api/v1/%64octors/./x/../7")))
    });
    c.bench_function("request_headers_client_ip_request_id_client_kind", |b| {
        b.iter(|| {
            let ip = gatehouse::edge::forwarding::client_ip(Some(peer), black_box(&h), &trusted);
            let id_ok = gatehouse::edge::forwarding::valid_request_id("abc-123");
            let api = gatehouse::edge::client::is_api_client("/api/v1/doctors/7", &h);
            let token = gatehouse::auth::guard::find_token(&h, "predicthealth_session");
            black_box((ip, id_ok, api, token))
        })
    });
}

fn settings(alg: Alg, signing: KeySource) -> JwtSettings {
    JwtSettings {
        alg,
        issuer: "gatehouse".into(),
        audience: "predicthealth".into(),
        access_ttl: Duration::from_secs(900),
        refresh_ttl: Duration::from_secs(7 * 86_400),
        leeway: Duration::from_secs(30),
        signing,
        verify_only: Vec::new(),
    }
}

/// Generates a PKCS#8 private key PEM with openssl (`genpkey` args), if available.
fn openssl_key(args: &[&str]) -> Option<Vec<u8>> {
    let out = std::process::Command::new("openssl")
        .arg("genpkey")
        .args(args)
        .output()
        .ok()?;
    out.status.success().then_some(out.stdout)
}

fn jwt(c: &mut Criterion) {
    let hs = Jwt::new(settings(
        Alg::HS256,
        KeySource {
            kid: None,
            material: KeyMaterial::Secret(vec![7u8; 32]),
        },
    ))
    .expect("hs256");
    let (token, _) = hs
        .issue("42", "patient", "sid", TokenType::Access, NOW)
        .expect("issue");
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| {
            hs.verify(black_box(&token), TokenType::Access, NOW)
                .expect("ok")
        })
    });
    for (name, alg, args) in [
        (
            "jwt_verify_rs256",
            Alg::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
        ),
        (
            "jwt_verify_es256",
            Alg::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
        ),
    ] {
        let Some(pem) = openssl_key(args) else {
            eprintln!("skipping {name}: openssl not available");
            continue;
        };
        let j = Jwt::new(settings(
            alg,
            KeySource {
                kid: None,
                material: KeyMaterial::PrivatePem(pem),
            },
        ))
        .expect("key");
        let (token, _) = j
            .issue("42", "patient", "sid", TokenType::Access, NOW)
            .expect("issue");
        c.bench_function(name, |b| {
            b.iter(|| {
                j.verify(black_box(&token), TokenType::Access, NOW)
                    .expect("ok")
            })
        });
    }
}

fn session_check(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let jwt = Jwt::new(settings(
        Alg::HS256,
        KeySource {
            kid: None,
            material: KeyMaterial::Secret(vec![7u8; 32]),
        },
    ))
    .expect("hs256");
    let sessions = Sessions {
        store: Arc::new(MemoryStore::new()),
        jwt,
        settings: SessionSettings {
            access_prefix: "access_token:".into(),
            refresh_prefix: "refresh_token:".into(),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(7 * 86_400),
            absolute_lifetime: Duration::from_secs(12 * 3600),
            idle_timeout: Duration::from_secs(30 * 60),
            roles: Vec::new(),
        },
        live: None,
    };
    let now = gatehouse::auth::unix_now();
    let pair = rt
        .block_on(sessions.start("42", "patient", now))
        .expect("session");
    c.bench_function("session_check_memory_store_hs256", |b| {
        b.iter(|| {
            rt.block_on(sessions.check(black_box(&pair.access_token), now))
                .expect("live")
        })
    });
}

fn page_rendering(c: &mut Criterion) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let yaml = format!(
        "upstreams:\n  patients: {{backends: 'http://127.0.0.1:9'}}\nweb:\n  templates: {dir}/templates\n  assets: {dir}/assets\n  pages:\n    - {{path: /, template: landing.html, title: Inicio}}\n    - {{path: /patient/dashboard, template: patient/dashboard.html, title: Mi panel}}\n"
    );
    let config = gatehouse::Config::from_yaml_str(&yaml).expect("config");
    let snap = gatehouse::check(config).expect("snapshot");
    let pages = snap.pages.clone();
    let view = gatehouse::pages::RequestView {
        path: "/",
        query: None,
        request_id: "0123456789abcdef0123456789abcdef",
        user: None,
        csrf_token: "0123456789abcdef0123456789abcdef",
        flash: Vec::new(),
    };
    c.bench_function("render_landing", |b| {
        b.iter(|| {
            let ctx = pages.context(&view, "Inicio", serde_json::Map::new());
            pages.render("landing.html", &ctx).expect("render")
        })
    });
    let mut extra = serde_json::Map::new();
    extra.insert(
        "data".into(),
        serde_json::json!({
            "profile": {"name": "Ana Pérez", "blood_type": "O+", "allergies": "Penicilina", "risk": "bajo"},
            "appointments": [
                {"date": "2026-12-01", "doctor": "Dr. Ruiz", "reason": "Control"},
                {"date": "2027-01-10", "doctor": "Dra. Gómez", "reason": "Análisis"}
            ]
        }),
    );
    let user_view = gatehouse::pages::RequestView {
        user: Some(
            serde_json::json!({"id": 42, "email": "ana@example.com", "name": "Ana Pérez", "role": "patient"}),
        ),
        path: "/patient/dashboard",
        ..view
    };
    c.bench_function("render_patient_dashboard", |b| {
        b.iter(|| {
            let ctx = pages.context(&user_view, "Mi panel", extra.clone());
            pages
                .render("patient/dashboard.html", &ctx)
                .expect("render")
        })
    });
}

/// The tracing calls one proxied request makes — server span (reading `traceparent`), route,
/// client address, one attempt and its `traceparent`, the attempt's and the request's end —
/// against doing nothing: with tracing off (nothing configured) they must cost nothing
/// measurable. On, the same calls with the span recorded (queued for export; the queue is
/// emptied outside the timing), not sampled (ids and `traceparent` only), and continuing a
/// caller's trace; and the export encoding of a 512-span batch.
fn tracing_calls(c: &mut Criterion) {
    use gatehouse::telemetry::settings::{resolve, TelemetryConfig};
    use gatehouse::telemetry::{proto, Counters, TraceParent, Tracer};
    use std::net::{IpAddr, SocketAddr};
    use std::time::Instant;

    fn request(traceparent: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::builder()
            .method("GET")
            .uri("/api/v1/doctors/7")
            .header("host", "gw.example")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0");
        if let Some(tp) = traceparent {
            b = b.header("traceparent", tp);
        }
        b.body(()).expect("request").into_parts().0
    }
    let backend: SocketAddr = "10.0.0.5:8000".parse().expect("addr");
    let client: IpAddr = "203.0.113.7".parse().expect("ip");
    let calls = |t: &Tracer, req: &http::request::Parts| -> Option<TraceParent> {
        let mut s = t.start_server(req);
        s.set_route("/api/v1/doctors");
        s.set_client(Some(client), Some(client));
        let a = s.attempt(&Method::GET, "doctors", backend, 1);
        let tp = a.traceparent();
        a.end_attempt("ok", Some(200), None);
        s.end_server(200, None);
        tp
    };
    let plain = request(None);
    c.bench_function("tracing_baseline_nothing", |b| {
        b.iter(|| black_box(&plain).uri.path().len())
    });
    let off = Tracer::disabled();
    c.bench_function("tracing_off_request_calls", |b| {
        b.iter(|| calls(black_box(&off), black_box(&plain)))
    });

    let metrics = gatehouse::metrics::Metrics::new();
    let on = |sampler: &str| {
        let cfg = TelemetryConfig {
            endpoint: "http://127.0.0.1:4318".into(),
            sampler: sampler.into(),
            queue_size: 20_000,
            ..Default::default()
        };
        let s = resolve(&cfg, |_| None).expect("valid").expect("on");
        Tracer::new(s, Counters::of(&metrics))
    };
    let continued = request(Some(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ));
    for (name, sampler, req) in [
        ("tracing_on_request_calls_recorded", "always_on", &plain),
        (
            "tracing_on_request_calls_continued",
            "parentbased_always_on",
            &continued,
        ),
        ("tracing_on_request_calls_not_sampled", "always_off", &plain),
    ] {
        let (tracer, mut exporter) = on(sampler);
        c.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    // Two spans a request: stay within the queue, empty it untimed.
                    let n = left.min(5_000);
                    let start = Instant::now();
                    for _ in 0..n {
                        black_box(calls(&tracer, black_box(req)));
                    }
                    total += start.elapsed();
                    exporter.take_queued();
                    left -= n;
                }
                total
            })
        });
    }
    let (tracer, mut exporter) = on("always_on");
    for _ in 0..256 {
        calls(&tracer, &plain);
    }
    let batch = exporter.take_queued();
    assert_eq!(batch.len(), 512);
    c.bench_function("tracing_export_encode_512_spans", |b| {
        b.iter(|| prost::Message::encode_to_vec(&proto::request("gatehouse", black_box(&batch))))
    });
}

criterion_group!(
    benches,
    route_table,
    header_processing,
    jwt,
    session_check,
    page_rendering,
    tracing_calls
);
criterion_main!(benches);
