use super::*;
use gatehouse_model::Keepalive;

const S: u64 = 1_000_000_000;

fn targets(n: usize) -> Vec<Arc<TargetState>> {
    (0..n)
        .map(|i| {
            Arc::new(
                TargetState::new(
                    &format!("127.0.0.1:{}", 1000 + i),
                    UpstreamProtocol::Http1,
                    Keepalive::default(),
                    1,
                )
                .unwrap(),
            )
        })
        .collect()
}

fn passive(yaml: &str) -> Passive {
    let p: PassiveCheck = yaml_serde::from_str(yaml).unwrap();
    Passive::new(&p)
}

#[test]
fn consecutive_failures_eject_for_a_base_time_that_grows_on_repeat() {
    let t = targets(4);
    let p = passive("{consecutive_failures: 3, base_ejection: 10s, max_ejection: 25s}");
    let now = 100 * S;
    assert_eq!(p.report(&t, 0, true, now), None);
    assert_eq!(p.report(&t, 0, true, now), None);
    // A success breaks the streak.
    assert_eq!(p.report(&t, 0, false, now), None);
    assert_eq!(p.report(&t, 0, true, now), None);
    assert_eq!(p.report(&t, 0, true, now), None);
    assert_eq!(p.report(&t, 0, true, now), Some(Duration::from_secs(10)));
    assert!(!t[0].health.available(now + 9 * S));
    assert_eq!(t[0].health.view(now + 9 * S).state, "ejected");
    assert!(t[0].health.available(now + 10 * S));
    // Ejected again soon after: 20 s, then capped at 25 s.
    let later = now + 11 * S;
    for _ in 0..2 {
        p.report(&t, 0, true, later);
    }
    assert_eq!(p.report(&t, 0, true, later), Some(Duration::from_secs(20)));
    let later = later + 21 * S;
    for _ in 0..2 {
        p.report(&t, 0, true, later);
    }
    assert_eq!(p.report(&t, 0, true, later), Some(Duration::from_secs(25)));
    // Long after (more than max_ejection), it starts over at the base time.
    let much_later = later + 100 * S;
    for _ in 0..2 {
        p.report(&t, 0, true, much_later);
    }
    assert_eq!(
        p.report(&t, 0, true, much_later),
        Some(Duration::from_secs(10))
    );
}

#[test]
fn passive_checks_never_eject_more_than_the_max_percent() {
    let t = targets(3);
    let p = passive("{consecutive_failures: 1, max_ejection_percent: 50}");
    let now = 5 * S;
    assert!(p.report(&t, 0, true, now).is_some());
    // A second would make 2 of 3 (67 %) ejected.
    assert!(p.report(&t, 1, true, now).is_none());
    assert!(t[1].health.available(now));
    // At 0 %, a one-target upstream is never taken out.
    let one = targets(1);
    let p = passive("{consecutive_failures: 1, max_ejection_percent: 0}");
    assert!(p.report(&one, 0, true, now).is_none());
}

#[test]
fn a_failure_ratio_over_the_window_ejects_once_there_are_enough_requests() {
    let t = targets(2);
    let p = passive("{consecutive_failures: 0, failure_ratio: 0.5, min_requests: 10, window: 10s}");
    let now = 50 * S;
    // Alternate success and failure: the streak never grows, the ratio reaches 50 %.
    let mut ejected = None;
    for k in 0..10 {
        ejected = ejected.or(p.report(&t, 0, k % 2 == 1, now));
    }
    assert!(ejected.is_some(), "10 requests, 5 failed");
    // Too few requests: nothing.
    let t = targets(2);
    for _ in 0..5 {
        assert!(p.report(&t, 0, true, now).is_none());
    }
}

#[test]
fn active_probes_mark_down_after_the_unhealthy_threshold_and_up_after_the_healthy_one() {
    let t = &targets(1)[0];
    let check: ActiveCheck =
        yaml_serde::from_str("{healthy_threshold: 2, unhealthy_threshold: 3}").unwrap();
    let now = S;
    assert_eq!(t.health.probed(false, &check, now), None);
    assert_eq!(t.health.probed(false, &check, now), None);
    assert_eq!(t.health.probed(false, &check, now), Some(false));
    assert!(!t.health.available(now));
    assert_eq!(t.health.view(now).state, "unhealthy");
    assert_eq!(t.health.probed(true, &check, now), None);
    assert_eq!(t.health.probed(true, &check, now), Some(true));
    assert!(t.health.available(now));
}

#[test]
fn a_passing_probe_readmits_an_ejected_target() {
    let t = targets(2);
    let p = passive("{consecutive_failures: 1, base_ejection: 60s}");
    let check: ActiveCheck = yaml_serde::from_str("{healthy_threshold: 1}").unwrap();
    let now = 10 * S;
    assert!(p.report(&t, 0, true, now).is_some());
    assert!(!t[0].health.available(now + S));
    assert_eq!(t[0].health.probed(true, &check, now + S), Some(true));
    assert!(t[0].health.available(now + S));
}
