//! Issue 12 item 4: health probes, with paused time and real loopback sockets. An environment
//! is ready only after its probe passes `healthy_after` times in a row (HTTP, TCP, a command
//! through `exec`); a pool member is claimable only when ready; a service that turns
//! unhealthy is restarted; bad `health` bodies are refused by field.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapse_core::model::{Environment, Health, Lifecycle, ObservedState, OnExpiry, Spec};
use lapse_core::probe::{HealthCheck, HttpProbe};
use lapse_core::wire::{CreateEnvironment, DurationInput, PutPool};
use lapse_providers::ProviderSet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::probed::{self, Probed};
use super::{Harness, eventually};
use crate::app::AppError;
use crate::auth::Caller;

async fn start() -> (Arc<Probed>, Harness) {
    let p = Arc::new(Probed::new());
    let mut providers = ProviderSet::default();
    providers.insert(p.clone());
    let h = Harness::start(providers, |_| {}).await;
    tokio::spawn(crate::probe::run(h.app.cx.clone(), h.app.reconciler.clone()));
    (p, h)
}

fn check(healthy_after: u32, unhealthy_after: u32) -> HealthCheck {
    HealthCheck {
        interval: Some(DurationInput::Text("1s".into())),
        timeout: Some(DurationInput::Text("500ms".into())),
        healthy_after: Some(healthy_after),
        unhealthy_after: Some(unhealthy_after),
        ..Default::default()
    }
}

fn request(spec: Spec, lifecycle: Lifecycle) -> CreateEnvironment {
    CreateEnvironment {
        name: None,
        owner: "o".into(),
        labels: Default::default(),
        spec,
        ttl: Some(DurationInput::Text("1d".into())),
        on_expiry: OnExpiry::Stop,
        lifecycle,
        max_retries: None,
        params: None,
        idle_timeout: None,
        on_idle: Default::default(),
        warn_before: None,
    }
}

/// A loopback port that nothing listens on (yet).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("binding loopback");
    l.local_addr().expect("a bound address").port()
}

/// Serves `HTTP/1.1 <status>` on `port`, counting requests.
async fn serve_http(port: u16, status: u16) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("binding the probed port");
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            });
        }
    });
    served
}

/// Moves time a probe interval at a time until `id`'s health is `want`. After each move it
/// gives the round's attempt a little real time to come back (the clock stays meanwhile).
async fn probe_until(h: &Harness, id: &str, want: Health) -> Environment {
    advance_until(h, id, &format!("{want}"), |e| e.health == Some(want)).await
}

/// As [`probe_until`], until `done` holds of the row.
async fn advance_until(h: &Harness, id: &str, what: &str, done: impl Fn(&Environment) -> bool) -> Environment {
    for _ in 0..60 {
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..50 {
            super::real_sleep(Duration::from_millis(4)).await;
            let e = h.env(id).await;
            if done(&e) {
                return e;
            }
        }
    }
    panic!("{id} never became {what}: {:?}", h.env(id).await);
}

async fn created(h: &Harness, req: CreateEnvironment) -> String {
    let id = h.app.create(req, &Caller::Open).await.expect("creating").env.id;
    h.settle().await;
    id
}

async fn health_events(h: &Harness, id: &str) -> Vec<lapse_core::wire::Event> {
    let filter = lapse_store::EventFilter {
        target: Some(id.to_owned()),
        action: Some("health".into()),
        limit: 100,
        ..Default::default()
    };
    h.cx().store.events(&filter).await.expect("reading events")
}

#[tokio::test(start_paused = true)]
async fn an_http_port_that_opens_late_is_ready_only_after_the_probe_passes() {
    let (_p, h) = start().await;
    let port = free_port().await;
    let mut spec = probed::spec_with_port(8080, port);
    spec.health = Some(HealthCheck { http: Some(HttpProbe { port: 8080, path: "/healthz".into() }), ..check(2, 3) });
    let id = created(&h, request(spec, Lifecycle::Lease)).await;
    let e = h.env(&id).await;
    assert_eq!((e.observed, e.health, e.is_ready()), (ObservedState::Running, Some(Health::Starting), false));
    // Nothing listens: three failures in a row make it unhealthy, never ready.
    let e = probe_until(&h, &id, Health::Unhealthy).await;
    assert!(!e.is_ready() && e.ready_at.is_none());
    // The port opens: two passes in a row make it ready.
    let served = serve_http(port, 200).await;
    let e = probe_until(&h, &id, Health::Healthy).await;
    assert!(e.is_ready());
    assert_eq!(e.ready_at.map(|_| ()), Some(()));
    assert!(served.load(Ordering::SeqCst) >= 2, "healthy_after = 2 needs two passes");
    let events = health_events(&h, &id).await;
    let outcomes: Vec<&str> = events.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["unhealthy", "healthy"], "written on change only: {events:?}");
    assert!(events[0].message.contains("starting -> unhealthy"), "{}", events[0].message);
    let view = lapse_core::wire::EnvironmentView::from(&e);
    assert_eq!((view.health, view.ready), (Some(Health::Healthy), true));
}

#[tokio::test(start_paused = true)]
async fn an_http_error_status_fails_and_a_tcp_probe_needs_a_listener() {
    let (_p, h) = start().await;
    let (bad, open) = (free_port().await, free_port().await);
    let mut spec = probed::spec_with_port(80, bad);
    spec.health = Some(HealthCheck { http: Some(HttpProbe { port: 80, path: "/".into() }), ..check(1, 2) });
    let http = created(&h, request(spec, Lifecycle::Lease)).await;
    let served = serve_http(bad, 503).await;
    probe_until(&h, &http, Health::Unhealthy).await;
    assert!(served.load(Ordering::SeqCst) >= 2);

    let mut spec = probed::spec_with_port(22, open);
    spec.health = Some(HealthCheck { tcp: Some(22), ..check(1, 2) });
    let tcp = created(&h, request(spec, Lifecycle::Lease)).await;
    probe_until(&h, &tcp, Health::Unhealthy).await;
    let _listener = TcpListener::bind(("127.0.0.1", open)).await.expect("binding the probed port");
    let e = probe_until(&h, &tcp, Health::Healthy).await;
    assert!(e.is_ready());
}

#[tokio::test(start_paused = true)]
async fn a_cmd_probe_runs_through_exec_and_an_unhealthy_service_is_restarted() {
    let (p, h) = start().await;
    let mut spec = probed::spec_with_port(80, 1);
    spec.health = Some(HealthCheck { cmd: vec!["check".into()], ..check(1, 3) });
    p.set_exit(0);
    let id = created(&h, request(spec, Lifecycle::Service)).await;
    probe_until(&h, &id, Health::Healthy).await;
    assert!(p.count("exec", &id) >= 1);
    assert_eq!(p.count("ensure_running", &id), 1);
    // It turns unhealthy: three failures, then a restart (stop, start) counted in `restarts`.
    p.set_exit(1);
    let e = advance_until(&h, &id, "restarted", |e| e.restarts == 1).await;
    let e = if e.observed == ObservedState::Running && !e.restart_requested {
        e
    } else {
        eventually("the restart to finish", || async {
            Some(h.env(&id).await).filter(|e| e.observed == ObservedState::Running && !e.restart_requested)
        })
        .await
    };
    assert_eq!(e.health, Some(Health::Starting), "a restarted service starts its probe over: {e:?}");
    assert_eq!((p.count("stop", &id), p.count("ensure_running", &id)), (1, 2));
    let events = health_events(&h, &id).await;
    assert!(events.last().is_some_and(|e| e.message.contains("restarting the service")), "{events:?}");
    // Healthy again once the check passes.
    p.set_exit(0);
    probe_until(&h, &id, Health::Healthy).await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_that_turns_unhealthy_is_not_restarted() {
    let (p, h) = start().await;
    let mut spec = probed::spec_with_port(80, 1);
    spec.health = Some(HealthCheck { cmd: vec!["check".into()], ..check(1, 1) });
    p.set_exit(0);
    let id = created(&h, request(spec, Lifecycle::Lease)).await;
    probe_until(&h, &id, Health::Healthy).await;
    p.set_exit(1);
    probe_until(&h, &id, Health::Unhealthy).await;
    h.settle().await;
    let e = h.env(&id).await;
    assert_eq!((e.restarts, e.restart_requested, p.count("stop", &id)), (0, false, 0));
}

#[tokio::test(start_paused = true)]
async fn a_pool_member_is_claimable_only_once_ready() {
    let (_p, h) = start().await;
    let port = free_port().await;
    let mut spec = probed::spec_with_port(8080, port);
    spec.health = Some(HealthCheck { http: Some(HttpProbe { port: 8080, path: "/".into() }), ..check(1, 3) });
    let pool =
        PutPool { spec: spec.clone(), min: 1, max: None, version: None, lifecycle: Lifecycle::Lease, on_claim: None };
    h.app.put_pool("ide", pool, "test").await.expect("putting the pool");
    crate::pools::round(h.cx(), &h.app.reconciler).await.expect("a pool round");
    h.settle().await;
    let members = h.cx().store.pool_members().await.expect("members");
    assert_eq!(members.len(), 1);
    let member = members[0].id.clone();
    assert_eq!(h.env(&member).await.observed, ObservedState::Running);
    // Running, not ready: a create of its spec does not get it.
    let cold = h.app.create(request(spec.clone(), Lifecycle::Lease), &Caller::Open).await.expect("a cold create");
    assert!(!cold.claimed && cold.env.id != member);
    assert_eq!(h.app.get_pool("ide").await.expect("the pool").warm, 0, "an unready member is not warm");
    serve_http(port, 200).await;
    probe_until(&h, &member, Health::Healthy).await;
    let warm = h.app.create(request(spec, Lifecycle::Lease), &Caller::Open).await.expect("a warm create");
    assert!(warm.claimed);
    assert_eq!(warm.env.id, member);
}

#[tokio::test(start_paused = true)]
async fn bad_health_bodies_are_refused_naming_the_field() {
    let (_p, h) = start().await;
    let base = probed::spec_with_port(8080, 1);
    let cases: Vec<(HealthCheck, &str)> = vec![
        (HealthCheck::default(), "spec.health"),
        (HealthCheck { tcp: Some(9), ..Default::default() }, "spec.health.tcp"),
        (
            HealthCheck { http: Some(HttpProbe { port: 8080, path: "nope".into() }), ..Default::default() },
            "spec.health.http.path",
        ),
        (
            HealthCheck { tcp: Some(8080), interval: Some(DurationInput::Seconds(0)), ..Default::default() },
            "spec.health.interval",
        ),
        (HealthCheck { tcp: Some(8080), healthy_after: Some(0), ..Default::default() }, "spec.health.healthy_after"),
    ];
    for (health, field) in cases {
        let mut spec = base.clone();
        spec.health = Some(health);
        match h.app.create(request(spec, Lifecycle::Lease), &Caller::Open).await {
            Err(AppError::Invalid(f)) => assert_eq!(f.field, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    let all = h.cx().store.list(&Default::default()).await.expect("listing");
    assert!(all.is_empty(), "nothing refused was written");
}
