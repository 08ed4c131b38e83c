//! The human-escalation part of the store's contract, checked against every configured back
//! end: deduplicated escalations, resolution, and leased, recorded webhook deliveries.

mod common;

use std::time::Duration;

use serde_json::json;
use unwind::store::hitl::*;

fn escalation(kind: EscalationKind, rollback: &str) -> Escalation {
    Escalation {
        id: uuid::Uuid::new_v4().to_string(),
        kind,
        status: EscalationStatus::Open,
        wid: "w1".into(),
        rollback_id: Some(rollback.into()),
        cascade_id: None,
        detail: json!({"n": 1}),
        created_at: chrono::Utc::now(),
        resolved_at: None,
        decision: None,
        decided_by: None,
        comment: None,
    }
}

fn event(key: &str) -> OutboxEvent {
    OutboxEvent {
        event_id: format!("evt_{key}"),
        event_key: key.into(),
        event_type: "rollback.partial".into(),
        url: "http://127.0.0.1:9/hook".into(),
        body: format!("{{\"id\":\"evt_{key}\"}}"),
    }
}

#[tokio::test]
async fn escalations_are_deduplicated_while_open_and_resolved_once() {
    for ts in common::test_stores().await {
        let s = &ts.store;
        let first = escalation(EscalationKind::PartialRollback, "r1");
        let (a, created) = s
            .raise_escalation(&first, "k1", &[event("e1")])
            .await
            .unwrap();
        assert!(created, "{}", ts.name);
        assert_eq!(a.id, first.id);
        let again = escalation(EscalationKind::PartialRollback, "r1");
        let (b, created) = s
            .raise_escalation(&again, "k1", &[event("e2")])
            .await
            .unwrap();
        assert!(!created, "{}", ts.name);
        assert_eq!(b.id, first.id, "{}", ts.name);
        // The duplicate's event was not stored: one deliverable row only.
        let claimed = s
            .claim_deliveries("w", Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "{}", ts.name);
        assert_eq!(claimed[0].event_id, "evt_e1");

        let r = Resolution {
            decision: Some("abort".into()),
            decided_by: "operator:ops".into(),
            comment: None,
        };
        let resolved = s.resolve_rollback_escalations("r1", &r).await.unwrap();
        assert_eq!(resolved.len(), 1, "{}", ts.name);
        assert_eq!(resolved[0].status, EscalationStatus::Resolved);
        assert!(matches!(
            s.resolve_escalation(&first.id, &r).await.unwrap(),
            ResolveOutcome::NotOpen(_)
        ));
        assert_eq!(
            s.resolve_escalation("none", &r).await.unwrap(),
            ResolveOutcome::NotFound
        );
        // Once resolved, the same subject may be raised again.
        let (_, created) = s.raise_escalation(&again, "k1", &[]).await.unwrap();
        assert!(created, "{}", ts.name);
        let open = s
            .list_escalations(Some(EscalationStatus::Open), None, 100)
            .await
            .unwrap();
        assert_eq!(open.items.len(), 1, "{}", ts.name);
        let page = s.list_escalations(None, None, 1).await.unwrap();
        assert_eq!(page.items[0].id, first.id, "{}: oldest first", ts.name);
        let next = s
            .list_escalations(None, page.next_cursor.as_deref(), 1)
            .await
            .unwrap();
        assert_eq!(next.items[0].id, again.id, "{}", ts.name);
    }
}

#[tokio::test]
async fn deliveries_are_leased_retried_and_recorded() {
    for ts in common::test_stores().await {
        let s = &ts.store;
        s.enqueue_events(&[event("e1")]).await.unwrap();
        s.enqueue_events(&[event("e1")]).await.unwrap();
        let d = s
            .claim_deliveries("w1", Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert_eq!(d.len(), 1, "{}: enqueued once", ts.name);
        assert!(
            s.claim_deliveries("w2", Duration::from_secs(30), 10)
                .await
                .unwrap()
                .is_empty(),
            "{}: leased rows are not claimed twice",
            ts.name
        );
        let failed = Attempt {
            attempted_at: chrono::Utc::now(),
            duration_ms: 3,
            http_status: Some(500),
            error: Some("the receiver answered 500".into()),
        };
        assert!(
            !s.record_attempt(&d[0], "w2", &failed, AttemptOutcome::Delivered)
                .await
                .unwrap()
        );
        assert!(
            s.record_attempt(
                &d[0],
                "w1",
                &failed,
                AttemptOutcome::RetryIn(Duration::from_millis(300))
            )
            .await
            .unwrap()
        );
        assert!(
            s.claim_deliveries("w2", Duration::from_secs(30), 10)
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let d = s
            .claim_deliveries("w2", Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert_eq!(d.len(), 1, "{}: due again after its delay", ts.name);
        assert_eq!(d[0].attempts, 1);
        let ok = Attempt {
            http_status: Some(200),
            error: None,
            ..failed
        };
        assert!(
            s.record_attempt(&d[0], "w2", &ok, AttemptOutcome::Delivered)
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            s.claim_deliveries("w3", Duration::from_secs(30), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let attempts = s.list_attempts(None, 100).await.unwrap().items;
        assert_eq!(attempts.len(), 2, "{}", ts.name);
        assert_eq!((attempts[0].attempt, attempts[1].attempt), (1, 2));
        assert_eq!(attempts[0].http_status, Some(500));
        assert_eq!(attempts[1].http_status, Some(200));
        assert_eq!(attempts[1].body, "{\"id\":\"evt_e1\"}");
    }
}
