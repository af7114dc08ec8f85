//! The one integration-test binary of ferry-testkit: `eventually` and the
//! real-server fixtures.

mod servers;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_testkit::{eventually, eventually_blocking};

#[tokio::test]
async fn eventually_returns_once_the_condition_holds() {
    let calls = AtomicU32::new(0);
    let v = eventually("third call", Duration::from_secs(10), || async {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        (n >= 3).then_some(n * 10)
    })
    .await;
    assert_eq!(v, 30);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn eventually_sees_a_change_made_by_another_task() {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        for i in 1..=5 {
            tx.send(i).unwrap();
            tokio::task::yield_now().await;
        }
        // Keep the sender until the waiter has seen the final value.
        tx.closed().await;
    });
    let seen = eventually("value 5", Duration::from_secs(10), || {
        let v = *rx.borrow();
        async move { if v == 5 { Ok(v) } else { Err(v) } }
    })
    .await;
    assert_eq!(seen, 5);
}

#[tokio::test]
#[should_panic(expected = "timed out after 50ms waiting for the flag")]
async fn eventually_panics_naming_what_on_timeout() {
    eventually("the flag", Duration::from_millis(50), || async {
        None::<()>
    })
    .await;
}

#[tokio::test]
#[should_panic(expected = "last observed: \"lag is 42\"")]
async fn eventually_reports_the_last_observed_state() {
    eventually("lag below 10", Duration::from_millis(30), || async {
        Err::<(), _>("lag is 42".to_string())
    })
    .await;
}

#[test]
fn eventually_blocking_returns_once_the_condition_holds() {
    let mut calls = 0;
    let v = eventually_blocking("fourth call", Duration::from_secs(10), || {
        calls += 1;
        if calls >= 4 { Ok(calls) } else { Err(calls) }
    });
    assert_eq!(v, 4);
}

#[test]
#[should_panic(expected = "waiting for never; last observed: None")]
fn eventually_blocking_panics_on_timeout() {
    eventually_blocking("never", Duration::from_millis(30), || None::<()>);
}

#[test]
fn free_ports_are_distinct_and_bindable() {
    let a = ferry_testkit::free_port();
    let b = ferry_testkit::free_port();
    assert_ne!(a, b);
    let _l = std::net::TcpListener::bind(("127.0.0.1", a)).expect("free port is bindable");
    assert!(ferry_testkit::port_is_open(a));
}
