//! Response caching (issue 10, item 3) through the running gateway and real fake upstreams:
//! `Cache-Control` and `Expires` freshness, `Age` and `X-Cache-Status` on answers, `Vary`,
//! never storing private / no-store / Set-Cookie answers, credentials bypassing the cache
//! unless the route is `public` (and a private answer never reaching another user), the
//! memory bound with LRU eviction, the object-size limit, stale-if-error while the pool is
//! down, the admin purge endpoint and the metrics.

mod common;
use common::*;

use gatehouse::auth::users::Role;

/// An upstream that echoes each request as JSON, with these response headers.
fn echo_with(headers: &[(&str, &str)]) -> FakeUpstream {
    FakeUpstream::start(Behavior::EchoWith(owned_headers(headers)))
}

/// A gateway with one route `/c` → pool `app` (at `url`) whose `cache:` block is `cache`;
/// `server_extra` goes inside `server:`.
fn gateway(url: &str, cache: &str, server_extra: &str) -> Gw {
    Gw::start_with_server(
        server_extra,
        &format!(
            "upstreams:\n{}\nroutes:\n  - prefix: /c\n    upstream: app\n    cache: {cache}\n",
            upstream("app", &[url.to_string()], "")
        ),
    )
}

fn status_of(r: &Response) -> &str {
    r.header("x-cache-status").unwrap_or("-")
}

fn target_of(r: &Response) -> String {
    json(r)["target"].as_str().unwrap_or_default().to_string()
}

fn purge(gw: &Gw, query: &str) -> Response {
    request(
        gw.admin_port,
        "POST",
        &format!("/cache/purge?{query}"),
        &[],
        b"",
    )
    .expect("POST admin /cache/purge")
}

/// GETs `path` (as an API client) until `done` holds for the answer or [`POLL`] runs out;
/// returns whether it held and the last answer.
fn get_until(gw: &Gw, path: &str, done: impl Fn(&Response) -> bool) -> (bool, Response) {
    poll_until(POLL, || gw.get_with(path, &[API_JSON]), done)
}

fn cache_metric(gw: &Gw, status: &str) -> f64 {
    metric(
        gw.admin_port,
        "gatehouse_cache_requests_total",
        &[("status", status)],
    )
}

/// The value of the unlabelled metric `name` (fails when it is not exported).
fn gauge(gw: &Gw, name: &str) -> f64 {
    let text = scrape(gw.admin_port);
    let v = samples(&text, name, &[]).first().copied();
    v.unwrap_or_else(|| panic!("{name} not on /metrics"))
}

#[test]
fn fresh_answer_is_served_from_cache_with_age_and_hit_status() {
    let up = echo_with(&[("Cache-Control", "max-age=60"), ("ETag", "\"v1\"")]);
    let gw = gateway(&up.url(), "{}", "");

    let first = gw.get_with("/c/item?x=1", &[API_JSON]);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(status_of(&first), "MISS");
    let second = gw.get_with("/c/item?x=1", &[API_JSON]);
    assert_eq!(second.status, 200);
    assert_eq!(status_of(&second), "HIT");
    assert!(
        second.header("age").is_some(),
        "a hit carries Age: {:?}",
        second.headers
    );
    assert_eq!(second.body, first.body, "the stored answer, byte for byte");
    assert_ne!(
        second.header("x-request-id"),
        first.header("x-request-id"),
        "each answer keeps its own request id"
    );
    assert_eq!(up.request_count(), 1, "the hit never reached the upstream");

    // Another query string is another URL; HEAD uses the stored GET answer.
    assert_eq!(status_of(&gw.get_with("/c/item?x=2", &[API_JSON])), "MISS");
    let head = request(gw.port, "HEAD", "/c/item?x=1", &[API_JSON], b"").expect("HEAD");
    assert_eq!((head.status, status_of(&head)), (200, "HIT"));
    assert!(head.body.is_empty());
    // A conditional request is answered 304 from the cache.
    let cond = gw.get_with("/c/item?x=1", &[API_JSON, ("If-None-Match", "\"v1\"")]);
    assert_eq!((cond.status, status_of(&cond)), (304, "HIT"));
    assert_eq!(up.request_count(), 2);
    // POST is never cached.
    let post = request(gw.port, "POST", "/c/item?x=1", &[API_JSON], b"{}").expect("POST");
    assert_eq!(post.status, 200);
    assert_eq!(up.request_count(), 3);

    assert!(cache_metric(&gw, "hit") >= 3.0);
    assert!(cache_metric(&gw, "miss") >= 2.0);
}

#[test]
fn answers_without_freshness_are_stored_only_when_the_route_sets_a_ttl() {
    let up = echo_with(&[]);
    let gw = gateway(&up.url(), "{}", "");
    for _ in 0..2 {
        assert_eq!(status_of(&gw.get_with("/c/a", &[API_JSON])), "MISS");
    }
    assert_eq!(
        up.request_count(),
        2,
        "no freshness, no ttl: nothing stored"
    );

    let up = echo_with(&[]);
    let gw = gateway(&up.url(), "{ttl: 30s}", "");
    assert_eq!(status_of(&gw.get_with("/c/a", &[API_JSON])), "MISS");
    assert_eq!(status_of(&gw.get_with("/c/a", &[API_JSON])), "HIT");
    assert_eq!(up.request_count(), 1);
}

#[test]
fn no_store_private_and_set_cookie_answers_are_never_stored() {
    for headers in [
        vec![("Cache-Control", "no-store, max-age=60")],
        vec![("Cache-Control", "private, max-age=60")],
        vec![
            ("Cache-Control", "max-age=60"),
            ("Set-Cookie", "s=1; Path=/"),
        ],
        vec![("Cache-Control", "max-age=60"), ("Vary", "*")],
    ] {
        let up = echo_with(&headers);
        let gw = gateway(&up.url(), "{ttl: 60s, public: true}", "");
        for i in 0..2 {
            let r = gw.get_with("/c/a", &[API_JSON]);
            assert_eq!(r.status, 200);
            assert_eq!(status_of(&r), "MISS", "{headers:?} request {i}");
        }
        assert_eq!(up.request_count(), 2, "{headers:?} was stored");
    }
}

#[test]
fn vary_keeps_one_answer_per_request_header_value() {
    let up = echo_with(&[("Cache-Control", "max-age=60"), ("Vary", "Accept-Language")]);
    let gw = gateway(&up.url(), "{}", "");
    let es = [API_JSON, ("Accept-Language", "es")];
    let en = [API_JSON, ("Accept-Language", "en")];
    assert_eq!(status_of(&gw.get_with("/c/v", &es)), "MISS");
    assert_eq!(status_of(&gw.get_with("/c/v", &en)), "MISS");
    let again_es = gw.get_with("/c/v", &es);
    let again_en = gw.get_with("/c/v", &en);
    assert_eq!((status_of(&again_es), status_of(&again_en)), ("HIT", "HIT"));
    assert_eq!(
        echoed_header(&json(&again_es), "accept-language").as_deref(),
        Some("es")
    );
    assert_eq!(
        echoed_header(&json(&again_en), "accept-language").as_deref(),
        Some("en")
    );
    assert_eq!(up.request_count(), 2);
}

/// A gateway whose `/c` route requires a signed-in user, with two patients.
fn protected(url: &str, cache: &str) -> (Gw, Vec<Account>) {
    let db = temp_db_url("cache");
    let users = seed_users(
        &db,
        "cache.test",
        &[(Role::Patient, "Ana"), (Role::Patient, "Beto")],
    );
    let gw = pool_gateway("app", &[url.to_string()], &format!("routes:\n  - {{prefix: /c, upstream: app, auth: required, cache: {cache}}}\nauth:\n  database_url: \"{db}\"\n  jwt: {{secret: \"{SECRET}\"}}\n"));
    (gw, users)
}

fn as_user(gw: &Gw, token: &str, path: &str) -> Response {
    gw.get_with(path, &[API_JSON, ("Authorization", &bearer(token))])
}

#[test]
fn credentialed_requests_bypass_the_cache_on_a_route_that_is_not_public() {
    let up = echo_with(&[("Cache-Control", "max-age=60")]);
    let (gw, users) = protected(&up.url(), "{}");
    let (a, b) = (
        login(gw.port, &users[0].email),
        login(gw.port, &users[1].email),
    );
    let ra = as_user(&gw, &a, "/c/records");
    let rb = as_user(&gw, &b, "/c/records");
    let ra2 = as_user(&gw, &a, "/c/records");
    for r in [&ra, &rb, &ra2] {
        assert_eq!((r.status, status_of(r)), (200, "BYPASS"), "{}", r.text());
    }
    assert_eq!(
        echoed_header(&json(&ra), "x-user-id"),
        Some(users[0].id.to_string())
    );
    assert_eq!(
        echoed_header(&json(&rb), "x-user-id"),
        Some(users[1].id.to_string())
    );
    assert_eq!(
        up.request_count(),
        3,
        "every credentialed request went upstream"
    );
    assert_eq!(cache_metric(&gw, "bypass"), 3.0);
}

#[test]
fn a_private_answer_is_never_served_to_another_user_even_on_a_public_route() {
    let up = echo_with(&[("Cache-Control", "private, max-age=60")]);
    let (gw, users) = protected(&up.url(), "{public: true}");
    let (a, b) = (
        login(gw.port, &users[0].email),
        login(gw.port, &users[1].email),
    );
    for (token, user) in [(&a, &users[0]), (&b, &users[1]), (&a, &users[0])] {
        let r = as_user(&gw, token, "/c/records");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            echoed_header(&json(&r), "x-user-id"),
            Some(user.id.to_string()),
            "{} got someone else's answer",
            user.name
        );
        assert_eq!(status_of(&r), "MISS");
    }
    assert_eq!(up.request_count(), 3);
}

#[test]
fn a_public_route_shares_its_answer_but_still_checks_who_asks() {
    let up = echo_with(&[("Cache-Control", "max-age=60")]);
    let (gw, users) = protected(&up.url(), "{public: true}");
    let (a, b) = (
        login(gw.port, &users[0].email),
        login(gw.port, &users[1].email),
    );
    assert_eq!(status_of(&as_user(&gw, &a, "/c/catalog")), "MISS");
    assert_eq!(status_of(&as_user(&gw, &b, "/c/catalog")), "HIT");
    let anonymous = gw.get_with("/c/catalog", &[API_JSON]);
    assert_eq!(
        anonymous.status, 401,
        "the cache must not answer before auth"
    );
    assert_eq!(up.request_count(), 1);
}

#[test]
fn a_cached_answer_is_served_while_the_upstream_is_down_and_stale_after_it_expires() {
    let up = echo_with(&[("Cache-Control", "max-age=1")]);
    let gw = gateway(&up.url(), "{stale_if_error: 5m}", "");
    let fresh = gw.get_with("/c/list", &[API_JSON]);
    assert_eq!(status_of(&fresh), "MISS");
    drop(up); // the only backend now refuses connections

    let hit = gw.get_with("/c/list", &[API_JSON]);
    assert_eq!(
        (hit.status, status_of(&hit)),
        (200, "HIT"),
        "{}",
        hit.text()
    );
    assert_eq!(target_of(&hit), "/c/list");

    // Once it is past max-age, the stale copy stands in for the dead pool.
    let (stale, r) = get_until(&gw, "/c/list", |r| status_of(r) == "STALE");
    assert!(
        stale,
        "never served stale: {} {:?} {}",
        r.status,
        r.headers,
        r.text()
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fresh.body);
    assert!(cache_metric(&gw, "stale") >= 1.0);
}

#[test]
fn stale_while_revalidate_serves_the_old_copy_while_one_request_refreshes_it() {
    let up = echo_with(&[("Cache-Control", "max-age=1")]);
    let gw = gateway(&up.url(), "{stale_while_revalidate: 30s}", "");
    assert_eq!(status_of(&gw.get_with("/c/swr", &[API_JSON])), "MISS");
    // Past max-age: the stale copy is answered at once and refreshed in the background.
    let (updating, r) = get_until(&gw, "/c/swr", |r| status_of(r) == "UPDATING");
    assert!(updating, "never UPDATING: {:?}", r.headers);
    assert_eq!(r.status, 200);
    assert!(
        wait_until(POLL, || up.request_count() == 2),
        "the background refresh never reached the upstream"
    );
    // The refreshed copy is stored once the background request's answer has been read
    // (a moment after the upstream saw it); from then on it is a hit, without another
    // upstream request.
    let (hit, fresh) = get_until(&gw, "/c/swr", |r| r.status == 200 && status_of(r) == "HIT");
    assert!(hit, "never a HIT after the refresh: {:?}", fresh.headers);
    assert_eq!(
        up.request_count(),
        2,
        "the refresh was the only upstream request"
    );
}

#[test]
fn without_stale_if_error_a_dead_pool_answers_503_once_the_copy_expires() {
    let up = echo_with(&[("Cache-Control", "max-age=1")]);
    let gw = gateway(&up.url(), "{stale_if_error: 0s}", "");
    assert_eq!(status_of(&gw.get_with("/c/list", &[API_JSON])), "MISS");
    drop(up);
    let (failed, r) = get_until(&gw, "/c/list", |r| r.status != 200);
    assert!(failed, "a stale copy was served: {:?}", r.headers);
    assert!(matches!(r.status, 502 | 503), "{} {}", r.status, r.text());
}

#[test]
fn the_memory_bound_evicts_the_least_recently_used_answer() {
    let body = "x".repeat(1500);
    let up = FakeUpstream::start(Behavior::Respond {
        status: 200,
        headers: owned_headers(&[("Cache-Control", "max-age=60")]),
        body,
    });
    // Room for two 1.5 KiB answers (with their headers), not three.
    let gw = gateway(
        &up.url(),
        "{}",
        "  cache: {max_size: 4KiB, max_object_size: 2KiB}",
    );
    for p in ["/c/a", "/c/b"] {
        assert_eq!(status_of(&gw.get_with(p, &[])), "MISS");
    }
    assert_eq!(status_of(&gw.get_with("/c/a", &[])), "HIT"); // a is now the most recent
    assert_eq!(status_of(&gw.get_with("/c/c", &[])), "MISS"); // evicts b
    assert_eq!(status_of(&gw.get_with("/c/a", &[])), "HIT");
    assert_eq!(
        status_of(&gw.get_with("/c/b", &[])),
        "MISS",
        "b was evicted"
    );
    let size = gauge(&gw, "gatehouse_cache_size_bytes");
    assert!(size > 0.0 && size <= 4096.0, "cache size {size}");
    assert!(gauge(&gw, "gatehouse_cache_evictions_total") >= 1.0);
    let stats = json(&get_ok(gw.admin_port, "/cache", &[]));
    assert_eq!(stats["entries"], 2, "{stats}");
}

#[test]
fn an_answer_over_the_object_limit_is_served_whole_but_not_stored() {
    let body = "y".repeat(3000);
    let up = FakeUpstream::start(Behavior::Respond {
        status: 200,
        headers: owned_headers(&[("Cache-Control", "max-age=60")]),
        body: body.clone(),
    });
    let gw = gateway(&up.url(), "{}", "  cache: {max_object_size: 2KiB}");
    for _ in 0..2 {
        let r = gw.get_with("/c/big", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), body, "the client gets the whole answer");
        assert_eq!(status_of(&r), "MISS");
    }
    assert_eq!(up.request_count(), 2);
}

#[test]
fn admin_purge_removes_answers_by_prefix_route_or_all() {
    let up = echo_with(&[("Cache-Control", "max-age=60")]);
    let gw = gateway(&up.url(), "{}", "");
    let prime = |paths: &[&str]| {
        for p in paths {
            gw.get_with(p, &[API_JSON]);
        }
    };
    prime(&["/c/a/1", "/c/a/2?q=1", "/c/ab", "/c/b"]);
    assert_eq!(status_of(&gw.get_with("/c/a/1", &[API_JSON])), "HIT");

    let r = purge(&gw, "prefix=/c/a");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["purged"], 2, "/c/ab is not under /c/a");
    assert_eq!(status_of(&gw.get_with("/c/a/1", &[API_JSON])), "MISS");
    assert_eq!(status_of(&gw.get_with("/c/ab", &[API_JSON])), "HIT");

    let r = purge(&gw, "route=app");
    assert_eq!(json(&r)["purged"], 3);
    assert_eq!(status_of(&gw.get_with("/c/b", &[API_JSON])), "MISS");
    assert_eq!(json(&purge(&gw, "all=true"))["purged"], 1);
    assert_eq!(gauge(&gw, "gatehouse_cache_purged_total"), 6.0);

    // Refused: nothing said, a relative prefix, the wrong method.
    assert_eq!(purge(&gw, "").status, 400);
    assert_eq!(purge(&gw, "prefix=c/a").status, 400);
    assert_eq!(
        get_ok(gw.admin_port, "/cache/purge?all=true", &[]).status,
        405
    );
}
