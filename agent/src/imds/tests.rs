//! The client against the fake IMDS (real HTTP on loopback).

use std::{collections::HashMap, time::Duration};

use super::{Client, ImdsError, fake::FakeImds};

const ID: &str = "/latest/meta-data/instance-id";

fn fake() -> FakeImds {
    FakeImds::start(HashMap::from([(ID.to_string(), "i-0123456789abcdef0".to_string())]))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn one_token_serves_many_gets() {
    let f = fake();
    let c = Client::new(&f.endpoint());
    rt().block_on(async {
        for _ in 0..5 {
            assert_eq!(c.get(ID).await.unwrap().as_deref(), Some("i-0123456789abcdef0"));
        }
        assert_eq!(c.get("/latest/meta-data/nope").await.unwrap(), None);
    });
    assert_eq!(f.token_requests(), 1);
    assert_eq!(f.unauthorized(), 0);
}

#[test]
fn renews_the_token_before_its_ttl_ends() {
    let f = fake();
    // TTL 2 s: renewed after 1 s (half the TTL when it is shorter than two minutes).
    let c = Client::new(&f.endpoint()).with_token_ttl(2);
    rt().block_on(async {
        c.get(ID).await.unwrap();
        c.get(ID).await.unwrap();
        assert_eq!(f.token_requests(), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        c.get(ID).await.unwrap();
    });
    assert_eq!(f.token_requests(), 2);
    assert_eq!(f.unauthorized(), 0, "never used an expired token");
}

#[test]
fn a_rejected_token_is_replaced_once() {
    let f = fake();
    let c = Client::new(&f.endpoint());
    rt().block_on(async {
        c.get(ID).await.unwrap();
        f.expire_tokens();
        assert_eq!(c.get(ID).await.unwrap().as_deref(), Some("i-0123456789abcdef0"));
    });
    assert_eq!((f.token_requests(), f.unauthorized()), (2, 1));
}

#[test]
fn failing_and_refusing_imds_are_errors() {
    let f = fake();
    let c = Client::new(&f.endpoint());
    rt().block_on(async {
        f.set_get_status(Some(500));
        let e = c.get(ID).await.unwrap_err();
        assert!(matches!(e, ImdsError::Status { status: 500, .. }), "{e}");
        assert!(e.to_string().contains(ID) && e.to_string().contains(&f.endpoint()), "{e}");
        f.set_get_status(None);
        f.set_token_status(Some(403));
        f.expire_tokens();
        // The cached token is rejected, a new one is refused: IMDSv1 is not tried unless enabled.
        let e = c.get(ID).await.unwrap_err();
        assert!(matches!(e, ImdsError::Status { status: 403, .. }), "{e}");
    });
}

#[test]
fn imdsv1_fallback_only_when_enabled() {
    let f = fake();
    f.set_token_status(Some(403));
    f.set_allow_v1(true);
    rt().block_on(async {
        let strict = Client::new(&f.endpoint());
        assert!(strict.get(ID).await.is_err());
        let v1 = Client::new(&f.endpoint()).with_v1_fallback(true);
        assert_eq!(v1.get(ID).await.unwrap().as_deref(), Some("i-0123456789abcdef0"));
    });
}

#[test]
fn slow_imds_times_out() {
    let f = fake();
    f.set_delay(Duration::from_secs(3));
    let c = Client::new(&f.endpoint());
    let e = rt().block_on(c.get(ID)).unwrap_err();
    match e {
        ImdsError::Http { source, .. } => assert!(source.is_timeout(), "{source}"),
        e => panic!("expected a timeout, got {e}"),
    }
}

#[test]
fn oversized_answers_are_refused() {
    let f = fake();
    f.set_path(ID, &"x".repeat(super::MAX_BODY + 1));
    let e = rt().block_on(Client::new(&f.endpoint()).get(ID)).unwrap_err();
    assert!(matches!(e, ImdsError::TooLarge { .. }), "{e}");
}

#[test]
fn unreachable_endpoint_fails_fast_not_forever() {
    // A port nothing listens on: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let c = Client::new(&format!("http://127.0.0.1:{port}/"));
    assert_eq!(c.endpoint(), format!("http://127.0.0.1:{port}"));
    assert!(matches!(rt().block_on(c.get(ID)), Err(ImdsError::Http { .. })));
}
