//! Routing through the real gateway: precedence, segment boundaries, methods, hosts,
//! strip/rewrite, query strings, and attempts to reach a route while skipping its policy.

mod common;
use common::*;

/// Three pools, each an echo server, so a response tells which route served it.
struct Site {
    gw: Gw,
    api: FakeUpstream,
    doctors: FakeUpstream,
    admin: FakeUpstream,
}

fn site() -> Site {
    let api = FakeUpstream::start(Behavior::Echo);
    let doctors = FakeUpstream::start(Behavior::Echo);
    let admin = FakeUpstream::start(Behavior::Echo);
    let gw = Gw::start(&format!(
        "upstreams:\n{}\n{}\n{}\nroutes:\n\
         \x20 - {{prefix: /api, upstream: api}}\n\
         \x20 - {{prefix: /api/v1/doctors, upstream: doctors, methods: [GET, POST]}}\n\
         \x20 - {{prefix: /api/v1/admins, upstream: admin, hosts: [admin.example]}}\n\
         \x20 - {{prefix: /strip, upstream: api, strip_prefix: true}}\n\
         \x20 - {{prefix: /old, upstream: api, rewrite_prefix: /new/v2}}\n",
        upstream("api", &[api.url()], ""),
        upstream("doctors", &[doctors.url()], ""),
        upstream("admin", &[admin.url()], ""),
    ));
    Site {
        gw,
        api,
        doctors,
        admin,
    }
}

/// The path the upstream saw for the last request, and which upstream it was.
fn served_by(s: &Site) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for (name, up) in [
        ("api", &s.api),
        ("doctors", &s.doctors),
        ("admin", &s.admin),
    ] {
        for r in up.requests() {
            out.push((name, r.target.clone()));
        }
    }
    out
}

fn only_request(s: &Site) -> (&'static str, String) {
    let seen = served_by(s);
    assert_eq!(
        seen.len(),
        1,
        "expected exactly one upstream request, saw {seen:?}"
    );
    seen[0].clone()
}

#[test]
fn longest_prefix_wins() {
    let s = site();
    assert_eq!(s.gw.get("/api/v1/doctors/7").status, 200);
    assert_eq!(
        only_request(&s),
        ("doctors", "/api/v1/doctors/7".to_string())
    );
}

#[test]
fn prefix_matches_exact_path_and_children_only_on_segment_boundaries() {
    let s = site();
    assert_eq!(s.gw.get("/api/v1/doctors").status, 200);
    assert_eq!(s.gw.get("/api/v1/doctorsX").status, 200);
    let seen = served_by(&s);
    assert!(
        seen.contains(&("doctors", "/api/v1/doctors".into())),
        "{seen:?}"
    );
    // `/api/v1/doctorsX` is not under `/api/v1/doctors`: the shorter `/api` route takes it.
    assert!(
        seen.contains(&("api", "/api/v1/doctorsX".into())),
        "{seen:?}"
    );
}

#[test]
fn no_match_is_404_json() {
    let s = site();
    let r = s.gw.get("/nothing/here");
    assert_eq!(r.status, 404);
    let v = json(&r);
    assert_eq!(v["error"]["status"], 404);
    assert_eq!(v["error"]["code"], "not_found");
    assert!(served_by(&s).is_empty());
}

#[test]
fn method_outside_the_route_is_405_with_allow() {
    let s = site();
    let r = request(s.gw.port, "DELETE", "/api/v1/doctors/7", &[], b"").expect("delete");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert!(
        served_by(&s).is_empty(),
        "a refused method must not fall through to /api"
    );
    let r = request(s.gw.port, "POST", "/api/v1/doctors", &[], b"{}").expect("post");
    assert_eq!(r.status, 200);
}

#[test]
fn host_restricted_route_answers_only_its_host() {
    let s = site();
    let r =
        s.gw.get_with("/api/v1/admins/1", &[("Host", "admin.example:8080")]);
    assert_eq!(r.status, 200);
    assert_eq!(only_request(&s).0, "admin");
    // Another host falls back to the `/api` route.
    let r =
        s.gw.get_with("/api/v1/admins/1", &[("Host", "www.example")]);
    assert_eq!(r.status, 200);
    assert!(served_by(&s).contains(&("api", "/api/v1/admins/1".into())));
}

#[test]
fn strip_prefix_and_rewrite_keep_the_query() {
    let s = site();
    assert_eq!(s.gw.get("/strip/a/b?x=1&y=%20").status, 200);
    assert_eq!(s.gw.get("/strip").status, 200);
    assert_eq!(s.gw.get("/old/items?page=2").status, 200);
    let seen: Vec<String> = s.api.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(seen, vec!["/a/b?x=1&y=%20", "/", "/new/v2/items?page=2"]);
}

#[test]
fn encoded_and_dotted_paths_are_normalised_before_matching() {
    // Each spelling must reach the doctors route (and its method policy), never `/api`.
    for path in [
        "/api/v1/%64octors/7",
        "/x/../api/v1/doctors/7",
        "//api/v1/doctors/7",
        "/api/v1/./doctors//7",
    ] {
        let s = site();
        let r = s.gw.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            only_request(&s),
            ("doctors", "/api/v1/doctors/7".to_string()),
            "{path}"
        );
        let r = request(s.gw.port, "DELETE", path, &[], b"").expect("delete");
        assert_eq!(
            r.status, 405,
            "{path}: the doctors method policy must apply"
        );
    }
}

#[test]
fn unsafe_paths_are_rejected_with_400() {
    let s = site();
    for path in [
        "/api/v1/doctors%2f7",
        "/api%5cv1",
        "/api/%00",
        "/../api/v1/doctors",
        "/api/%zz",
    ] {
        let r = s.gw.get(path);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(json(&r)["error"]["code"], "bad_request", "{path}");
    }
    assert!(served_by(&s).is_empty());
}
