//! Unit tests of `fleet::plan`: grouping, the hub's once-only answers, and
//! the routing of answers to a peer's plan.

use super::*;

fn report(hash: &str, items: &[(&str, Outcome, &str)]) -> Answer {
    Answer::Report(pb::RunReport {
        state_hash: hash.into(),
        noop: true,
        resources: items
            .iter()
            .map(|(id, o, c)| pb::ResourceOutcome {
                id: (*id).into(),
                outcome: i32::from(*o),
                changes: if c.is_empty() {
                    vec![]
                } else {
                    vec![(*c).into()]
                },
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    })
}

fn changes(items: &[(&str, Outcome, &str)]) -> Answered {
    match report("h", items) {
        Answer::Report(r) => Answered::Changes(changes_of(r)),
        Answer::Refused(_) => unreachable!(),
    }
}

#[test]
fn plan_groups_nodes_by_identical_change_set() {
    let same = [
        (
            "file[/a]",
            Outcome::Changed,
            "replace content (1 -> 2 bytes)",
        ),
        ("user[x]", Outcome::Unchanged, ""),
    ];
    let resp = group(
        3,
        vec![
            ("n2".into(), changes(&same)),
            ("n1".into(), changes(&same)),
            ("n3".into(), changes(&[("user[x]", Outcome::Unchanged, "")])),
            ("n4".into(), changes(&[("package[p]", Outcome::Failed, "")])),
            ("n5".into(), Answered::Refused("bad document".into())),
            ("n7".into(), Answered::Unsent("busy".into())),
        ],
        vec![("n6".into(), "no answer within 1s".into())],
    );
    assert_eq!(resp.groups[0].nodes, vec!["n1", "n2"]);
    assert_eq!(
        resp.groups[0].items.len(),
        1,
        "unchanged resources left out"
    );
    assert_eq!(
        (resp.changed_nodes, resp.unchanged_nodes, resp.failed_nodes),
        (2, 1, 1)
    );
    assert_eq!(resp.refused[0].node, "n5");
    let silent: Vec<&str> = resp.unanswered.iter().map(|u| u.node.as_str()).collect();
    assert_eq!(silent, ["n6", "n7"]);
}

#[test]
fn plan_answers_only_from_nodes_sent_the_plan_once() {
    let hub = Arc::new(Hub::default());
    let mut rx = hub.open("a");
    let (mut answers, _tx, sent, unsent) = hub
        .start_local(
            "p1",
            vec![
                ("a".into(), b"{}".to_vec(), "h".into()),
                ("b".into(), b"{}".to_vec(), "h".into()),
            ],
        )
        .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(unsent, vec![("b".to_owned(), None)]);
    let req = rx.try_recv().unwrap();
    assert!(matches!(
        hub.answer("b", &req.id, report("h", &[])),
        Err(FleetError::Denied(_))
    ));
    assert!(matches!(
        hub.answer("a", &req.id, report("other", &[])),
        Err(FleetError::Invalid(_))
    ));
    hub.answer("a", &req.id, report("h", &[])).unwrap();
    assert_eq!(answers.try_recv().unwrap().0, "a");
    assert!(matches!(
        hub.answer("a", &req.id, report("h", &[])),
        Err(FleetError::Denied(_))
    ));
    hub.lock().waiting.remove("p1");
    assert!(matches!(
        hub.answer("a", &req.id, report("h", &[])),
        Err(FleetError::NotFound(_))
    ));
}

#[test]
fn answers_to_a_peers_plan_go_to_the_store_writer() {
    let hub = Hub::default();
    let (tx, mut out) = mpsc::unbounded_channel();
    hub.set_writer(tx);
    let mut rx = hub.open("a");
    let mut full = hub.open("busy");
    for i in 0..PLAN_QUEUE {
        hub.start_remote(
            &format!("fill{i}"),
            vec![("busy".into(), b"{}".to_vec(), "h".into())],
            Duration::from_secs(60),
        );
    }
    while out.try_recv().is_ok() {}
    assert!(hub.start_remote(
        "p",
        vec![
            ("a".into(), b"{}".to_vec(), "h".into()),
            ("busy".into(), b"{}".to_vec(), "h".into()),
        ],
        Duration::from_secs(60),
    ));
    assert!(
        !hub.start_remote("p", vec![], Duration::from_secs(60)),
        "a plan is served once"
    );
    match out.try_recv().unwrap() {
        Outgoing::Answer { node, answered, .. } => {
            assert_eq!(node, "busy");
            assert!(matches!(answered, Answered::Unsent(r) if r.starts_with("busy")));
        }
        _ => panic!("expected the busy node's answer"),
    }
    let req = rx.try_recv().unwrap();
    hub.answer("a", &req.id, report("h", &[("f", Outcome::Changed, "x")]))
        .unwrap();
    match out.try_recv().unwrap() {
        Outgoing::Answer { id, node, answered } => {
            assert_eq!((id.as_str(), node.as_str()), ("p", "a"));
            assert!(matches!(answered, Answered::Changes(c) if c.len() == 1));
        }
        _ => panic!("expected a's answer"),
    }
    hub.end_remote("p");
    assert!(matches!(out.try_recv().unwrap(), Outgoing::End(id) if id == "p"));
    assert!(matches!(
        hub.answer("a", "p", report("h", &[])),
        Err(FleetError::NotFound(_))
    ));
    drop(full.try_recv());
}
