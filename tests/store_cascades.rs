//! Contract tests of the cascade store on every configured back end: the neighbourhood reads
//! detection relies on, and alerts unique per pattern and root cause.

mod common;

use std::collections::BTreeSet;

use common::ects::new_ect;
use common::test_stores;
use unwind::store::cascade::NewCascadeAlert;

fn jtis(records: &[unwind::store::EctRecord]) -> BTreeSet<String> {
    records.iter().map(|r| r.jti.clone()).collect()
}

fn alert(id: &str, pattern: &str, root: &str) -> NewCascadeAlert {
    NewCascadeAlert {
        id: id.into(),
        wid: Some("w".into()),
        pattern: pattern.into(),
        root_cause_ect: root.into(),
        affected_agents: vec!["spiffe://x/a".into(), "spiffe://x/b".into()],
        blast_radius: vec![root.into(), "c".into()],
        ect: format!("ect-{id}"),
        token: format!("token-{id}"),
    }
}

#[tokio::test]
async fn neighbourhood_reads_follow_the_edges() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        // a -> b -> d, a -> c -> d, d -> e; and a stranger in another workflow.
        let mut e = new_ect("e", Some("w"), &["d"], "x");
        e.exec_act = "circuit_breaker_open".into();
        e.iat += 50;
        let e = common::ects::signed_as_stored(e, "x");
        let batch = vec![
            new_ect("a", Some("w"), &[], "x"),
            new_ect("b", Some("w"), &["a"], "x"),
            new_ect("c", Some("w"), &["a"], "x"),
            new_ect("d", Some("w"), &["b", "c"], "x"),
            e,
            new_ect("z", Some("v"), &[], "x"),
        ];
        s.append(&batch).await.unwrap();

        let up = s.ancestors_of("e", 64).await.unwrap();
        assert_eq!(
            jtis(&up),
            ["a", "b", "c", "d"].map(String::from).into(),
            "{}",
            ts.name
        );
        let near = s.ancestors_of("e", 2).await.unwrap();
        assert_eq!(
            jtis(&near),
            ["b", "c", "d"].map(String::from).into(),
            "{}",
            ts.name
        );
        assert!(s.ancestors_of("a", 64).await.unwrap().is_empty());

        let down = s.children_of("a", 100).await.unwrap();
        assert_eq!(
            jtis(&down),
            ["b", "c"].map(String::from).into(),
            "{}",
            ts.name
        );
        assert_eq!(s.children_of("a", 1).await.unwrap().len(), 1);

        let iat = batch[4].iat;
        let reports = s
            .ects_issued_between("circuit_breaker_open", iat - 1, iat + 1, 10)
            .await
            .unwrap();
        assert_eq!(
            jtis(&reports),
            ["e"].map(String::from).into(),
            "{}",
            ts.name
        );
        let none = s
            .ects_issued_between("circuit_breaker_open", iat - 10, iat - 1, 10)
            .await
            .unwrap();
        assert!(none.is_empty(), "{}", ts.name);
    }
}

#[tokio::test]
async fn alerts_are_unique_per_pattern_and_root_cause() {
    for ts in test_stores().await {
        let s = ts.store.as_ref();
        let first = s
            .insert_cascade_alert(&alert("c1", "depth_first", "r"))
            .await
            .unwrap()
            .expect("new");
        assert_eq!(first.alert.affected_agents.len(), 2);
        assert!(!first.recorded);
        assert!(s.cascade_alert_exists("depth_first", "r").await.unwrap());
        assert!(!s.cascade_alert_exists("breadth_first", "r").await.unwrap());
        // The same cascade again (another replica, a later node): not stored twice.
        let again = s
            .insert_cascade_alert(&alert("c2", "depth_first", "r"))
            .await
            .unwrap();
        assert_eq!(again, None, "{}", ts.name);
        // The cascade spreads: new agents widen the alert, known ones do not.
        let known = vec!["spiffe://x/b".to_string()];
        assert_eq!(
            s.widen_cascade_alert("depth_first", "r", &known)
                .await
                .unwrap(),
            None,
            "{}",
            ts.name
        );
        let more = vec!["spiffe://x/c".to_string(), "spiffe://x/a".to_string()];
        let wider = s
            .widen_cascade_alert("depth_first", "r", &more)
            .await
            .unwrap()
            .expect("grew");
        assert_eq!(
            wider.alert.affected_agents,
            ["spiffe://x/a", "spiffe://x/b", "spiffe://x/c"],
            "{}",
            ts.name
        );
        assert_eq!(
            s.widen_cascade_alert("breadth_first", "nowhere", &more)
                .await
                .unwrap(),
            None
        );
        // Another pattern at the same root is another cascade.
        s.insert_cascade_alert(&alert("c3", "breadth_first", "r"))
            .await
            .unwrap()
            .expect("new");

        let pending: Vec<String> = s
            .unrecorded_cascade_alerts()
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.alert.id)
            .collect();
        assert_eq!(pending, ["c1", "c3"], "{}", ts.name);
        s.mark_cascade_alert_recorded("c1").await.unwrap();
        let pending = s.unrecorded_cascade_alerts().await.unwrap();
        assert_eq!(pending.len(), 1, "{}", ts.name);

        let page = s.list_cascade_alerts(Some("w"), None, 1).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].alert.id, "c1");
        assert_eq!(page.items[0].alert.affected_agents.len(), 3, "{}", ts.name);
        assert!(page.items[0].recorded);
        let rest = s
            .list_cascade_alerts(Some("w"), page.next_cursor.as_deref(), 10)
            .await
            .unwrap();
        assert_eq!(rest.items.len(), 1);
        assert_eq!(rest.items[0].alert.id, "c3");
        assert_eq!(rest.next_cursor, None);
        let other = s.list_cascade_alerts(Some("v"), None, 10).await.unwrap();
        assert!(other.items.is_empty());
        let all = s.list_cascade_alerts(None, None, 10).await.unwrap();
        assert_eq!(all.items.len(), 2, "{}", ts.name);
    }
}
