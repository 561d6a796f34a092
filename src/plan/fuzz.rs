//! Property tests over arbitrary specs, as an API server that enforces no CEL rule (1.24
//! and older) would store them: validation and planning never panic, whatever validates
//! stays within the bounds, and a namespace of such incidents settles.

use super::{tests::World, *};
use crate::api::{
    Escalation, HardRejectSettings, LabelOperator, LabelRequirement, MailIncidentSpec, MtaKind,
    QueueLifetimes, Release, Scope, SmtpReply, Targets, TimeSpan,
    validation::{
        MAX_INCIDENT_DURATION, MAX_OLDEST_MESSAGE_AGE, MAX_QUEUE_LIFETIME, MAX_QUEUED_MESSAGES,
        RELEASE_CONCURRENCY, latest_expiry, validate,
    },
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::SignedDuration,
};
use proptest::{
    collection, option, prelude::*, sample::select, strategy::ValueTree, test_runner::TestRunner,
};

/// Time span text: plausible spans, the edges of the bounds, every magnitude the schema
/// pattern admits (up to 9999999w), too many digits, and anything at all.
fn time_span() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[1-9][0-9]?[smhd]",
        2 => select(vec![
            "100d", "101d", "2400h", "2401h", "14w", "15w", "8640000s", "8640001s", "144000m",
            "144001m", "9999999w", "9999999d", "0d",
        ])
        .prop_map(String::from),
        1 => "[0-9]{1,7}[smhdw]",
        1 => "[0-9]{8,25}[smhdw]",
        1 => ".{0,12}",
    ]
}

/// Any instant jiff can hold, with weight on both ends of time and on the present.
fn timestamp() -> impl Strategy<Value = Timestamp> {
    let seconds = prop_oneof![
        Timestamp::MIN.as_second()..=Timestamp::MAX.as_second(),
        Just(Timestamp::MIN.as_second()),
        Just(Timestamp::MAX.as_second()),
        1_700_000_000i64..1_900_000_000,
    ];
    (seconds, 0..1_000_000_000i32)
        .prop_map(|(second, nanosecond)| Timestamp::new(second, nanosecond).expect("in range"))
}

/// A label value (empty is a value too).
fn label() -> impl Strategy<Value = String> {
    select(vec!["app", "mta", "tier", "edge", ""]).prop_map(String::from)
}

/// A label key, now and then one the API server refuses.
fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        19 => select(vec!["app", "mta", "tier", "example.com/edge"]).prop_map(String::from),
        1 => select(vec!["", "bad key!", "Example.com/x", "a/b/c"]).prop_map(String::from),
    ]
}

fn targets() -> impl Strategy<Value = Targets> {
    let operator = select(vec![
        LabelOperator::In,
        LabelOperator::NotIn,
        LabelOperator::Exists,
        LabelOperator::DoesNotExist,
    ]);
    // Mostly well-formed: values for In and NotIn only.
    let set = prop_oneof![
        (
            select(vec![LabelOperator::In, LabelOperator::NotIn]),
            collection::vec(label(), 1..3)
        ),
        (
            select(vec![LabelOperator::Exists, LabelOperator::DoesNotExist]),
            Just(vec![])
        ),
    ];
    let requirement = (
        label_key(),
        prop_oneof![4 => set, 1 => (operator, collection::vec(label(), 0..3))],
    )
        .prop_map(|(key, (operator, values))| LabelRequirement {
            key,
            operator,
            values,
        });
    let mta = select(vec![MtaKind::Postfix, MtaKind::Exim, MtaKind::Generic]);
    (
        collection::btree_map(label_key(), label(), 0..3),
        collection::vec(requirement, 0..3),
        option::of(mta),
    )
        .prop_map(|(match_labels, match_expressions, mta)| Targets {
            match_labels,
            match_expressions,
            mta,
        })
}

fn smtp_reply() -> impl Strategy<Value = SmtpReply> {
    let code = prop_oneof![
        4 => select(vec![421u16, 450, 451, 452, 521, 550, 552, 553, 554, 556]),
        1 => any::<u16>(),
    ];
    let enhanced_code = prop_oneof![
        4 => "[45][.][0-9]{1,3}[.][0-9]{1,3}",
        1 => "[0-9]{1,2}[.][0-9]{1,4}[.][0-9]{1,4}",
        1 => ".{0,10}",
    ];
    let text = prop_oneof![4 => r"[ -#%-\[\]-z|~]{1,61}", 1 => "[ -~]{0,210}", 1 => ".{0,30}"];
    (
        option::of(code),
        option::of(enhanced_code),
        option::of(text),
    )
        .prop_map(|(code, enhanced_code, text)| SmtpReply {
            code,
            enhanced_code,
            text,
        })
}

fn escalation() -> impl Strategy<Value = Escalation> {
    let messages = prop_oneof![4 => 0..=MAX_QUEUED_MESSAGES + 1, 1 => any::<u64>()];
    (option::of(messages), option::of(time_span())).prop_map(
        |(max_queued_messages, max_oldest_message_age)| Escalation {
            max_queued_messages,
            max_oldest_message_age,
        },
    )
}

prop_compose! {
    fn spec()(
        mode in select(vec![Mode::AcceptAndQueue, Mode::TempFail, Mode::HardReject]),
        reason in prop_oneof![".{0,40}", " {0,3}", "[a-z]{500,600}"],
        targets in targets(),
        lifetime in prop_oneof![Just("5d".to_string()), time_span()],
        bounce_lifetime in prop_oneof![Just("5d".to_string()), time_span()],
        smtp_reply in option::weighted(0.3, smtp_reply()),
        escalation in option::weighted(0.3, escalation()),
        acknowledge_bounces in option::weighted(0.7, prop_oneof![3 => Just(true), 1 => Just(false)]),
        (expires_at, duration) in prop_oneof![
            3 => Just((None, None)),
            3 => timestamp().prop_map(|at| (Some(at), None)),
            3 => time_span().prop_map(|span| (None, Some(span))),
            1 => (timestamp(), time_span()).prop_map(|(at, span)| (Some(at), Some(span))),
        ],
        resolved in any::<bool>(),
        concurrency in prop_oneof![8 => 1..=100u16, 1 => 0..=101u16, 1 => any::<u16>()],
        scope in option::weighted(0.3, collection::vec(domain(), 1..3)),
        starts_at in option::weighted(0.1, timestamp()),
    ) -> MailIncidentSpec {
        MailIncidentSpec {
            mode,
            reason,
            targets,
            queue: QueueLifetimes { lifetime, bounce_lifetime },
            smtp_reply,
            escalation,
            hard_reject: acknowledge_bounces.map(|acknowledge_bounces| HardRejectSettings {
                acknowledge_bounces,
            }),
            expires_at: expires_at.map(Time),
            duration,
            resolved,
            release: Release { concurrency },
            scope: scope.map(|recipient_domains| Scope { recipient_domains }),
            starts_at: starts_at.map(Time),
        }
    }
}

prop_compose! {
    /// An incident as the API server stores it, created up to 200 days before `now`;
    /// `seen` ones carry the conditions of the controller's first look, so they are
    /// validated and planned.
    fn stored_incident(now: Timestamp)(
        spec in spec(),
        age_seconds in 0..=200 * 86_400i64,
        seen in any::<bool>(),
        deleting in any::<bool>(),
        generation in 1..4i64,
    ) -> MailIncident {
        let created = now
            .checked_sub(SignedDuration::from_secs(age_seconds))
            .unwrap_or(now);
        let mut incident = MailIncident::new("", spec);
        incident.metadata.namespace = Some("mail".into());
        incident.metadata.generation = Some(generation);
        incident.metadata.creation_timestamp = Some(Time(created));
        incident.metadata.deletion_timestamp = deleting.then_some(Time(now));
        incident.status = seen.then(|| MailIncidentStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: "Initializing".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(created),
            }],
            ..MailIncidentStatus::default()
        });
        incident
    }
}

/// A scope entry: mostly valid domains from a small set (so scopes overlap), wildcards,
/// and some malformed ones.
fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => select(vec!["a.example.it", "b.example.it", "example.it", "pec.it"]).prop_map(String::from),
        6 => select(vec!["*.example.it", "*.it", "*.b.example.it"]).prop_map(String::from),
        1 => ".{0,20}",
    ]
}

fn target() -> impl Strategy<Value = Target> {
    let delivery = select(vec![Delivery::Reload, Delivery::Restart]);
    let hash = option::of(select(vec!["0123456789abcdef", ""]).prop_map(String::from));
    let source = collection::vec(
        select(vec!["incident-0", "incident-1", "other"]).prop_map(String::from),
        0..3,
    );
    let queue = (any::<u64>(), any::<u64>()).prop_map(|(messages, oldest_age_seconds)| QueueLoad {
        messages,
        oldest_age_seconds,
    });
    let storage = select(vec![
        QueueStorage::Persistent,
        QueueStorage::EmptyDir {
            volume: "spool".into(),
            path: "/var/spool/postfix".into(),
        },
        QueueStorage::Unknown {
            why: "no container".into(),
        },
    ]);
    (
        collection::btree_map(label_key(), label(), 0..3),
        delivery,
        (hash.clone(), hash.clone(), source),
        any::<bool>(),
        collection::vec(hash, 0..3),
        collection::vec(queue, 0..3),
        any::<i32>(),
        any::<bool>(),
        storage,
    )
        .prop_map(
            |(
                labels,
                delivery,
                (document_hash, template_hash, source_incidents),
                report_exists,
                pod_reports,
                queues,
                replicas,
                rollout_complete,
                queue,
            )| Target {
                target: TargetRef {
                    kind: WorkloadKind::Deployment,
                    name: String::new(),
                },
                labels: Arc::new(labels),
                delivery,
                mta: None,
                document_hash,
                document_mismatch: None,
                document_owners: vec![],
                report_owned: report_exists,
                template_env: vec![],
                changed_by: None,
                drifts: vec![],
                departed_reports: vec![],
                unreleased_pods: vec![],
                template_hash,
                source_incidents,
                report_exists,
                pod_reports,
                queues,
                replicas,
                ready_replicas: replicas.saturating_sub(1),
                rollout_complete,
                mta_container: Some("mta".into()),
                queue,
            },
        )
}

/// A namespace at an arbitrary `now`, with uniquely named incidents and targets.
fn namespace() -> impl Strategy<Value = (Timestamp, Vec<MailIncident>, Vec<Target>)> {
    timestamp().prop_flat_map(|now| {
        (
            Just(now),
            collection::vec(stored_incident(now), 1..4),
            collection::vec(target(), 0..4),
        )
            .prop_map(|(now, mut incidents, mut targets)| {
                for (i, incident) in incidents.iter_mut().enumerate() {
                    incident.metadata.name = Some(format!("incident-{i}"));
                    incident.metadata.uid = Some(format!("uid-{i}"));
                }
                for (i, target) in targets.iter_mut().enumerate() {
                    target.target.name = format!("mta-{i}");
                }
                (now, incidents, targets)
            })
    })
}

/// A change between two syncs: of one target, one incident, a write's outcome or the time.
#[derive(Debug, Clone)]
enum Change {
    /// The target at this position (modulo their number) becomes another, keeping its name.
    Target(usize, Target),
    AddTarget(Target),
    RemoveTarget(usize),
    Resolve(usize),
    Delete(usize),
    /// An incident's status lost its conditions (as a replica seeing it anew would make).
    ForgetStatus(usize),
    WriteRefused(usize),
    WriteSucceeded(usize),
    Advance(i64),
    /// The controller carries out its plans until they settle.
    Settle {
        agents_ack: bool,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (any::<usize>(), target()).prop_map(|(at, t)| Change::Target(at, t)),
        1 => target().prop_map(Change::AddTarget),
        1 => any::<usize>().prop_map(Change::RemoveTarget),
        1 => any::<usize>().prop_map(Change::Resolve),
        1 => any::<usize>().prop_map(Change::Delete),
        1 => any::<usize>().prop_map(Change::ForgetStatus),
        1 => any::<usize>().prop_map(Change::WriteRefused),
        1 => any::<usize>().prop_map(Change::WriteSucceeded),
        1 => (0..=30 * 86_400i64).prop_map(Change::Advance),
        3 => any::<bool>().prop_map(|agents_ack| Change::Settle { agents_ack }),
    ]
}

fn is_stalled_by_invalid_spec(status: &MailIncidentStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == "InvalidSpec")
}

/// A mode document's lifetimes and release, as an agent would read them.
fn assert_document_in_bounds(document: &ModeDocument) {
    for lifetime in [&document.queue.lifetime, &document.queue.bounce_lifetime] {
        let span: TimeSpan = lifetime.parse().expect("a document lifetime parses");
        assert!(span <= MAX_QUEUE_LIFETIME, "document lifetime {lifetime}");
    }
    assert!(RELEASE_CONCURRENCY.contains(&document.release.concurrency));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn validation_never_panics_and_bounds_what_it_accepts(
        spec in spec(),
        created in option::of(timestamp()),
    ) {
        let Ok(valid) = validate(&spec, created) else {
            return Ok(());
        };
        prop_assert!(valid.queue_lifetime <= MAX_QUEUE_LIFETIME);
        prop_assert!(valid.bounce_lifetime <= MAX_QUEUE_LIFETIME);
        prop_assert!(RELEASE_CONCURRENCY.contains(&valid.release_concurrency));
        if let Some(limits) = valid.escalation {
            prop_assert!(limits.max_queued_messages.is_none_or(|m| (1..=MAX_QUEUED_MESSAGES).contains(&m)));
            prop_assert!(limits.max_oldest_message_age.is_none_or(|age| age <= MAX_OLDEST_MESSAGE_AGE));
        }
        if let (Some(created), Some(starts_at)) = (created, valid.starts_at) {
            prop_assert!(starts_at <= latest_expiry(created), "starts at {starts_at}, created at {created}");
        }
        // Expiry counts from the start: the scheduled one, or the creation.
        let start = valid.starts_at.or(created);
        match (start, valid.expires_at) {
            (Some(start), Some(expires_at)) => {
                prop_assert!(
                    expires_at <= latest_expiry(start),
                    "expires at {expires_at}, starts at {start}"
                );
                prop_assert!(valid.starts_at.is_none_or(|s| s < expires_at));
            }
            (None, Some(_)) => prop_assert!(spec.expires_at.is_some(), "a duration needs a start"),
            (_, None) => prop_assert!(spec.expires_at.is_none() && (spec.duration.is_none() || start.is_none())),
        }
        if let (Some(start), Some(text)) = (start, &spec.duration) {
            let span: TimeSpan = text.parse().expect("a valid duration parses");
            prop_assert!(span <= MAX_INCIDENT_DURATION);
            prop_assert_eq!(valid.expires_at, start.checked_add(span.as_duration()).ok());
        }
        if let Some(scope) = &valid.scope {
            prop_assert!(!scope.is_empty() && scope.len() <= crate::api::scope::MAX_SCOPE_DOMAINS);
            prop_assert!(scope.windows(2).all(|pair| pair[0] < pair[1]), "sorted, no duplicates");
        }
    }

    #[test]
    fn planning_incrementally_equals_planning_from_scratch_after_any_changes(
        (start, incidents, targets) in namespace(),
        changes in collection::vec(change(), 1..12),
    ) {
        // World::plan plans both ways and asserts that they agree.
        let mut world = World::new(incidents, targets);
        let mut now = start;
        world.plan(now);
        for (step, change) in changes.into_iter().enumerate() {
            let targets = world.targets.len();
            let incidents = world.incidents.len();
            match change {
                Change::Target(at, mut target) if targets > 0 => {
                    target.target = world.targets[at % targets].target.clone();
                    world.targets[at % targets] = target;
                }
                Change::AddTarget(mut target) => {
                    target.target.name = format!("mta-added-{step}");
                    world.targets.push(target);
                }
                Change::RemoveTarget(at) if targets > 0 => {
                    world.targets.remove(at % targets);
                }
                Change::Resolve(at) => world.incidents[at % incidents].spec.resolved = true,
                Change::Delete(at) => {
                    world.incidents[at % incidents].metadata.deletion_timestamp = Some(Time(now));
                }
                Change::ForgetStatus(at) => world.incidents[at % incidents].status = None,
                Change::WriteRefused(at) if targets > 0 => {
                    let target = world.targets[at % targets].target.clone();
                    world.failures.insert(target, format!("refused at step {step}"));
                }
                Change::WriteSucceeded(at) if targets > 0 => {
                    world.failures.remove(&world.targets[at % targets].target);
                }
                Change::Advance(seconds) => {
                    now = now.checked_add(SignedDuration::from_secs(seconds)).unwrap_or(now);
                }
                Change::Settle { agents_ack } => {
                    world.settle(now, agents_ack);
                }
                _ => {}
            }
            world.plan(now);
        }
    }

    #[test]
    fn planning_never_panics_settles_and_wakes_within_the_bound(
        (now, incidents, targets) in namespace(),
        agents_ack in any::<bool>(),
    ) {
        let mut world = World::new(incidents, targets);
        for write in &world.plan(now).writes {
            if let Write::PutDocument { document, .. } | Write::SetRestartEnv { document, .. } = write {
                assert_document_in_bounds(document);
            }
        }
        let settled = world.settle(now, agents_ack);
        if let Some(wake_at) = settled.wake_at {
            prop_assert!(now < wake_at && wake_at <= latest_expiry(now), "wake at {wake_at}, now {now}");
        }
        // Each recipient gets the most severe, then oldest, active incident covering it.
        for target in world.targets.iter().filter(|t| t.delivery == Delivery::Reload) {
            let Some(document) = world.documents.get(&target.target.name) else { continue };
            for domain in ["a.example.it", "x.b.example.it", "example.it", "pec.it", "other.com"] {
                let expected = world
                    .incidents
                    .iter()
                    .filter_map(|incident| {
                        let created = incident.metadata.creation_timestamp.as_ref().map(|t| t.0);
                        let spec = validate(&incident.spec, created).ok()?;
                        let active = !spec.resolved
                            && incident.metadata.deletion_timestamp.is_none()
                            && spec.expires_at.is_none_or(|at| at > now)
                            && spec.starts_at.is_none_or(|at| at <= now);
                        let covers = spec.scope.as_ref().is_none_or(|scope| scope.iter().any(|p| p.covers(domain)));
                        let seen = incident.status.as_ref().is_some_and(|s| s.observed_generation.is_some());
                        (active && covers && seen && spec.selector.matches(&target.labels))
                            .then(|| (severity(spec.mode), std::cmp::Reverse((created, incident.name_any()))))
                    })
                    .max()
                    .map(|(_, std::cmp::Reverse((_, name)))| name);
                let decided = document.rule_for(Some(domain)).map(|r| r.incident.name.clone());
                if !target.source_incidents.iter().any(|n| world.incidents.iter().any(|i| i.name_any() == *n && validate(&i.spec, None).is_err())) {
                    prop_assert_eq!(decided, expected, "{} on {}", domain, target.target.name);
                }
            }
        }
        for incident in &world.incidents {
            let status = incident.status.as_ref().expect("planning gives every incident a status");
            let created = incident.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let validated = validate(&incident.spec, created);
            if validated.is_err() {
                prop_assert!(is_stalled_by_invalid_spec(status), "{:?}", status.conditions);
            }
            if let (Ok(valid), Some(created)) = (validated, created) {
                prop_assert_eq!(status.expires_at.as_ref().map(|t| t.0), valid.expires_at);
                let start = valid.starts_at.unwrap_or(created);
                prop_assert!(valid.expires_at.is_none_or(|at| at <= latest_expiry(start)));
                // Scheduled: Ready, and no target carries its mode.
                if valid.starts_at.is_some_and(|at| at > now) && !valid.resolved && incident.metadata.deletion_timestamp.is_none() {
                    prop_assert!(status.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "Scheduled" && c.status == "True"));
                    let name = incident.metadata.name.clone().unwrap_or_default();
                    prop_assert!(world.targets.iter().all(|t| !t.source_incidents.contains(&name) || t.document_hash.is_none() && (t.template_hash.is_none() || t.queue.restart_refusal().is_some())),
                        "a scheduled incident's mode reached a target");
                }
            }
        }
    }
}

proptest! {
    // Each case compiles and runs every CEL rule, about a hundred times slower than the
    // controller's checks.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn cel_rules_and_the_controller_agree_on_every_time_span(
        lifetime in "[0-9]{1,7}[smhdw]",
        bounce_lifetime in "[0-9]{1,7}[smhdw]",
        duration in "[0-9]{1,7}[smhdw]",
        oldest in "[0-9]{1,7}[smhdw]",
    ) {
        let mut incident = MailIncident::new("spans", MailIncidentSpec {
            mode: Mode::AcceptAndQueue,
            reason: "r".into(),
            targets: Targets {
                match_labels: BTreeMap::from([("app".into(), "mta".into())]),
                ..Targets::default()
            },
            queue: QueueLifetimes { lifetime, bounce_lifetime },
            smtp_reply: None,
            escalation: Some(Escalation { max_queued_messages: None, max_oldest_message_age: Some(oldest) }),
            hard_reject: None,
            expires_at: None,
            duration: Some(duration),
            resolved: false,
            release: Release::default(),
            scope: None,
            starts_at: None,
        });
        incident.metadata.namespace = Some("mail".into());
        prop_assert_eq!(
            incident.validate_cel().is_ok(),
            validate(&incident.spec, None).is_ok(),
            "{:?}",
            incident.spec
        );
    }
}

/// The properties above say something only if the generator makes valid specs too.
#[test]
fn the_spec_generator_makes_valid_specs_often_enough() {
    let mut runner = TestRunner::deterministic();
    let strategy = spec();
    let samples = 1000;
    let created = "2026-01-22T08:00:00Z".parse().expect("a timestamp");
    let valid = (0..samples)
        .filter(|_| {
            let spec = strategy.new_tree(&mut runner).expect("a spec").current();
            validate(&spec, Some(created)).is_ok()
        })
        .count();
    assert!(
        valid * 10 >= samples,
        "{valid} of {samples} specs are valid"
    );
}
