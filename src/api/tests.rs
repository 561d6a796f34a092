use super::{
    MailIncident, Mode, crd, crd_yaml,
    validation::{MAX_QUEUED_MESSAGES, Reply, validate},
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use serde_json::Value;

const COMMITTED_CRD: &str = include_str!("../../crds/mailincidents.mailops.dev.yaml");

/// A MailIncident from the YAML of its spec, as a user would write it.
fn incident(spec_yaml: &str) -> MailIncident {
    let spec: serde_yaml::Value = serde_yaml::from_str(spec_yaml).expect("test YAML parses");
    let object = serde_json::json!({
        "apiVersion": "mailops.dev/v1alpha1",
        "kind": "MailIncident",
        "metadata": {"name": "test", "namespace": "mail"},
        "spec": spec,
    });
    serde_json::from_value(object).expect("test spec deserializes")
}

const VALID_TEMP_FAIL: &str = "
mode: TempFail
reason: INC-1 storage down
targets: {matchLabels: {app: postfix}}
";

#[test]
fn committed_crd_matches_the_generated_one() {
    assert!(
        crd_yaml() == COMMITTED_CRD,
        "crds/mailincidents.mailops.dev.yaml is stale: run `make crds` and commit the result"
    );
}

#[test]
fn defaults_fill_the_reply_and_lifetimes() {
    let valid = validate(&incident(VALID_TEMP_FAIL).spec, None).expect("valid");
    assert_eq!(
        valid.reply.to_string(),
        "452 4.3.1 Mailbox storage temporarily unavailable, try again later"
    );
    assert_eq!(valid.queue_lifetime.to_string(), "5d");
    assert_eq!(valid.bounce_lifetime.to_string(), "5d");
    assert_eq!(valid.selector.to_string(), "app=postfix");
    let hard = Reply::default_for(Mode::HardReject);
    assert_eq!((hard.code, hard.enhanced_code.as_str()), (550, "5.3.2"));
}

#[test]
fn a_partial_reply_keeps_the_mode_defaults_for_the_rest() {
    let spec = format!("{VALID_TEMP_FAIL}smtpReply: {{code: 421}}\n");
    let valid = validate(&incident(&spec).spec, None).expect("valid");
    assert_eq!(valid.reply.code, 421);
    assert_eq!(valid.reply.enhanced_code, "4.3.1");
}

/// Specs the CEL rules and the controller must both refuse, with the field the controller
/// names. (These pass the OpenAPI schema: only a cross-field or range rule catches them.)
const CROSS_FIELD_CASES: &[(&str, &str, &str)] = &[
    (
        "HardReject without acknowledgement",
        "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}",
        "spec.hardReject.acknowledgeBounces",
    ),
    (
        "HardReject acknowledgement false",
        "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: false}",
        "spec.hardReject.acknowledgeBounces",
    ),
    (
        "TempFail with a 5xx code",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nsmtpReply: {code: 550}",
        "spec.smtpReply.code",
    ),
    (
        "AcceptAndQueue escalation reply with a 5xx code",
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nsmtpReply: {code: 554}",
        "spec.smtpReply.code",
    ),
    (
        "HardReject with a 4xx code",
        "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}\nsmtpReply: {code: 452}",
        "spec.smtpReply.code",
    ),
    (
        "TempFail with a 5.x.x enhanced code",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nsmtpReply: {enhancedCode: '5.3.2'}",
        "spec.smtpReply.enhancedCode",
    ),
    (
        "HardReject claiming the user does not exist",
        "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}\nsmtpReply: {enhancedCode: '5.1.1'}",
        "spec.smtpReply.enhancedCode",
    ),
    (
        "both expiresAt and duration",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nexpiresAt: '2030-01-01T00:00:00Z'\nduration: 2h",
        "spec.duration",
    ),
    (
        "escalation outside AcceptAndQueue",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nescalation: {maxQueuedMessages: 10}",
        "spec.escalation",
    ),
    (
        "escalation without a limit",
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nescalation: {}",
        "spec.escalation",
    ),
    (
        "an empty selector",
        "mode: TempFail\nreason: r\ntargets: {mta: Postfix}",
        "spec.targets",
    ),
    (
        "In without values",
        "mode: TempFail\nreason: r\ntargets: {matchExpressions: [{key: app, operator: In}]}",
        "spec.targets.matchExpressions",
    ),
    (
        "Exists with values",
        "mode: TempFail\nreason: r\ntargets: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}",
        "spec.targets.matchExpressions",
    ),
    (
        "a queue lifetime over 100 days",
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nqueue: {lifetime: 101d}",
        "spec.queue.lifetime",
    ),
    (
        "a bounce lifetime over 100 days in weeks",
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nqueue: {bounceLifetime: 15w}",
        "spec.queue.bounceLifetime",
    ),
    (
        "a duration of 101 days",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nduration: 101d",
        "spec.duration",
    ),
    (
        "a duration past the end of time",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nduration: 9999999w",
        "spec.duration",
    ),
    (
        "a zero duration",
        "mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}\nduration: 0d",
        "spec.duration",
    ),
    (
        "a zero queue lifetime",
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nqueue: {lifetime: 0000000m}",
        "spec.queue.lifetime",
    ),
    (
        "an oldest message age over 100 days",
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nescalation: {maxOldestMessageAge: 8640001s}",
        "spec.escalation.maxOldestMessageAge",
    ),
];

#[test]
fn cel_rules_and_the_controller_refuse_the_same_cross_field_errors() {
    for (case, spec, field) in CROSS_FIELD_CASES {
        let object = incident(spec);
        assert!(object.validate_cel().is_err(), "CEL accepted {case}");
        let errors = validate(&object.spec, None).expect_err(case);
        assert!(
            errors.iter().any(|e| e.field == *field),
            "{case}: expected an error on {field}, got {errors:?}"
        );
    }
}

#[test]
fn limits_are_inclusive() {
    for spec in [
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nqueue: {lifetime: 100d, bounceLifetime: 2400h}",
        "mode: AcceptAndQueue\nreason: r\ntargets: {matchLabels: {app: mta}}\nduration: 8640000s\nescalation: {maxQueuedMessages: 100000000, maxOldestMessageAge: 144000m}",
        "mode: HardReject\nreason: r\ntargets: {matchLabels: {app: mta}}\nhardReject: {acknowledgeBounces: true}\nsmtpReply: {code: 554, enhancedCode: '5.3.2'}",
        "mode: TempFail\nreason: r\ntargets: {matchExpressions: [{key: app, operator: Exists}]}\nsmtpReply: {code: 421, enhancedCode: '4.4.5'}",
    ] {
        let object = incident(spec);
        assert!(
            object.validate_cel().is_ok(),
            "CEL refused {spec}: {:?}",
            object.validate_cel()
        );
        assert!(
            validate(&object.spec, None).is_ok(),
            "controller refused {spec}"
        );
    }
}

#[test]
fn every_example_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("examples/ exists") {
        let path = entry.expect("readable entry").path();
        // examples/images/ holds the example MTA images, not manifests.
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document).expect("example YAML parses");
            if value.get("kind").and_then(|k| k.as_str()) != Some("MailIncident") {
                continue;
            }
            let object: MailIncident = serde_yaml::from_value(value).expect("example deserializes");
            assert!(
                object.validate_cel().is_ok(),
                "{}: {:?}",
                path.display(),
                object.validate_cel()
            );
            if let Err(errors) = validate(&object.spec, None) {
                panic!("{}: {errors:?}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen > 0, "no MailIncident in examples/");
}
use serde::Deserialize;

/// The OpenAPI schema of one spec property, from the generated CRD.
fn schema_of(path: &[&str]) -> Value {
    let crd = serde_json::to_value(crd()).expect("CRD serializes");
    let mut node = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for step in path {
        node = &node["properties"][step];
    }
    node.clone()
}

fn pattern_of(path: &[&str]) -> regex::Regex {
    let pattern = schema_of(path)["pattern"]
        .as_str()
        .expect("property has a pattern")
        .to_string();
    regex::Regex::new(&pattern).expect("schema pattern compiles")
}

#[test]
fn schema_pattern_for_reply_text_agrees_with_the_controller() {
    let pattern = pattern_of(&["smtpReply", "text"]);
    let max = schema_of(&["smtpReply", "text"])["maxLength"]
        .as_u64()
        .expect("maxLength");
    assert_eq!(max, crate::api::validation::MAX_REPLY_TEXT as u64);
    let samples = [
        (
            "Mailbox storage temporarily unavailable, try again later",
            true,
        ),
        (
            "Try again (#42) - 100% ~ maybe | 'quoted' \"too\" [x] ^_^ `ok`",
            true,
        ),
        // 62 and 61 characters: the longest that every MTA sends on one line is 61.
        (
            "Mailbox storage unavailable for several days; resend elsewhere",
            false,
        ),
        (
            "Mailbox storage unavailable for several days, resend elsewher",
            true,
        ),
        ("line one\r\nline two", false),
        ("tab\there", false),
        ("closes a map }", false),
        ("opens a map {", false),
        ("expands $myhostname", false),
        ("escapes \\n", false),
        ("non-ASCII caf\u{e9}", false),
        ("", false),
    ];
    for (text, ok) in samples {
        let schema_accepts = pattern.is_match(text) && text.len() as u64 <= max;
        assert_eq!(schema_accepts, ok, "schema on {text:?}");
        let spec = format!(
            "{VALID_TEMP_FAIL}smtpReply: {{text: {}}}\n",
            serde_json::to_string(text).unwrap()
        );
        let result = validate(&incident(&spec).spec, None);
        assert_eq!(
            result.is_ok(),
            ok,
            "controller on {text:?}: {:?}",
            result.err()
        );
    }
}

#[test]
fn schema_patterns_for_time_spans_agree_with_the_controller() {
    let fields = [
        vec!["queue", "lifetime"],
        vec!["queue", "bounceLifetime"],
        vec!["duration"],
        vec!["escalation", "maxOldestMessageAge"],
    ];
    for field in &fields {
        let pattern = pattern_of(field);
        for text in [
            "5d",
            "36h",
            "90m",
            "3600s",
            "2w",
            "5",
            "5 d",
            "1.5d",
            "d",
            "5x",
            "12345678s",
            "1h30m",
        ] {
            assert_eq!(
                pattern.is_match(text),
                text.parse::<super::TimeSpan>().is_ok(),
                "{field:?} on {text:?}"
            );
        }
    }
}

#[test]
fn schema_pattern_for_enhanced_codes_agrees_with_the_controller() {
    let pattern = pattern_of(&["smtpReply", "enhancedCode"]);
    for (code, mode) in [
        ("4.3.1", "TempFail"),
        ("4.4.5", "TempFail"),
        ("4.3", "TempFail"),
        ("4.3.1.1", "TempFail"),
        ("4.3.1000", "TempFail"),
        ("x.3.1", "TempFail"),
        ("5.3.2", "HardReject"),
        ("5.7.1", "HardReject"),
        ("55.3.2", "HardReject"),
    ] {
        let spec = format!(
            "mode: {mode}\nreason: r\ntargets: {{matchLabels: {{app: mta}}}}\nhardReject: {{acknowledgeBounces: true}}\nsmtpReply: {{enhancedCode: '{code}'}}\n"
        );
        assert_eq!(
            pattern.is_match(code),
            validate(&incident(&spec).spec, None).is_ok(),
            "{code} for {mode}"
        );
    }
}

#[test]
fn schema_enum_of_reply_codes_is_what_the_controller_allows() {
    let allowed: Vec<u64> = schema_of(&["smtpReply", "code"])["enum"]
        .as_array()
        .expect("code enum")
        .iter()
        .map(|v| v.as_u64().expect("integer"))
        .collect();
    for code in 400..600u64 {
        let controller_allows = ["TempFail", "HardReject"].iter().any(|mode| {
            let spec = format!(
                "mode: {mode}\nreason: r\ntargets: {{matchLabels: {{app: mta}}}}\nhardReject: {{acknowledgeBounces: true}}\nsmtpReply: {{code: {code}}}\n"
            );
            validate(&incident(&spec).spec, None).is_ok()
        });
        assert_eq!(allowed.contains(&code), controller_allows, "code {code}");
    }
}

#[test]
fn the_controller_reports_every_error_at_once() {
    let spec = "mode: HardReject\nreason: ' '\ntargets: {matchLabels: {app: mta}}\nqueue: {lifetime: 200d}\nsmtpReply: {code: 452, text: 'a}b'}";
    let fields: Vec<&str> = validate(&incident(spec).spec, None)
        .expect_err("invalid")
        .iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(
        fields,
        [
            "spec.reason",
            "spec.hardReject.acknowledgeBounces",
            "spec.queue.lifetime",
            "spec.smtpReply.code",
            "spec.smtpReply.text"
        ]
    );
}

#[test]
fn duration_counts_from_creation() {
    let spec = format!("{VALID_TEMP_FAIL}duration: 36h\n");
    let created: Timestamp = "2026-01-23T16:00:00Z".parse().unwrap();
    let valid = validate(&incident(&spec).spec, Some(created)).expect("valid");
    assert_eq!(
        valid.expires_at.unwrap().to_string(),
        "2026-01-25T04:00:00Z"
    );
}

#[test]
fn expiry_is_at_most_100_days_after_creation() {
    let created: Timestamp = "2026-01-23T16:00:00Z".parse().unwrap();
    for (expires_at, valid) in [
        ("2026-01-01T00:00:00Z", true),
        ("2026-05-03T16:00:00Z", true),
        ("2026-05-03T16:00:01Z", false),
        ("2999-12-31T23:59:59Z", false),
    ] {
        let spec = format!("{VALID_TEMP_FAIL}expiresAt: '{expires_at}'\n");
        let result = validate(&incident(&spec).spec, Some(created));
        match result {
            Ok(incident) => {
                assert!(valid, "{expires_at} accepted");
                assert_eq!(incident.expires_at.unwrap().to_string(), expires_at);
            }
            Err(errors) => {
                assert!(!valid, "{expires_at} refused: {errors:?}");
                assert_eq!(errors[0].field, "spec.expiresAt");
            }
        }
    }
}

#[test]
fn a_duration_ending_past_representable_time_is_an_error() {
    let created = Timestamp::MAX - SignedDuration::from_hours(24);
    let spec = format!("{VALID_TEMP_FAIL}duration: 2d\n");
    let errors = validate(&incident(&spec).spec, Some(created)).expect_err("past the end");
    assert_eq!(errors[0].field, "spec.duration");
}

#[test]
fn schema_pattern_for_expires_at_admits_only_times_the_controller_can_read() {
    let pattern = pattern_of(&["expiresAt"]);
    for (text, admitted) in [
        ("2026-01-25T04:00:00Z", true),
        ("2000-01-01T00:00:00+14:00", true),
        ("2999-12-31T23:59:59-23:59", true),
        ("1999-12-31T23:59:59Z", false),
        ("9999-12-31T23:59:59Z", false),
    ] {
        assert_eq!(pattern.is_match(text), admitted, "{text}");
        if admitted {
            let read: Result<Time, _> = serde_json::from_value(Value::from(text));
            assert!(read.is_ok(), "{text}: {read:?}");
        }
    }
    let unreadable: Result<Time, _> = serde_json::from_value(Value::from("9999-12-31T23:59:59Z"));
    assert!(
        unreadable.is_err(),
        "the pattern keeps out what jiff cannot read"
    );
}

#[test]
fn crd_names_printer_columns_and_status_subresource() {
    let crd = crd();
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["mailinc".to_string()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["mail".to_string()][..])
    );
    let version = &crd.spec.versions[0];
    let columns: Vec<(&str, i32)> = version
        .additional_printer_columns
        .as_ref()
        .expect("printer columns")
        .iter()
        .map(|c| (c.name.as_str(), c.priority.unwrap_or(0)))
        .collect();
    assert_eq!(
        columns,
        [
            ("Mode", 0),
            ("Scope", 0),
            ("Ready", 0),
            ("Applied", 0),
            ("Starts", 0),
            ("Expires", 0),
            ("Age", 0),
            ("Reason", 1),
            ("Declared By", 1),
            ("Changed By", 1)
        ]
    );
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
}

#[test]
fn schema_range_of_release_concurrency_is_what_the_controller_allows() {
    let schema = schema_of(&["release", "concurrency"]);
    let (min, max) = (
        schema["minimum"].as_f64().expect("minimum") as u64,
        schema["maximum"].as_f64().expect("maximum") as u64,
    );
    for concurrency in 0..=200u64 {
        let spec = format!(
            "mode: AcceptAndQueue\nreason: r\ntargets: {{matchLabels: {{app: mta}}}}\nrelease: {{concurrency: {concurrency}}}\n"
        );
        let controller_allows = validate(&incident(&spec).spec, None).is_ok();
        assert_eq!(
            (min..=max).contains(&concurrency),
            controller_allows,
            "concurrency {concurrency}"
        );
    }
    let default = incident("mode: TempFail\nreason: r\ntargets: {matchLabels: {app: mta}}");
    assert_eq!(default.spec.release.concurrency, 4);
}

#[test]
fn schema_range_of_max_queued_messages_is_what_the_controller_allows() {
    let schema = schema_of(&["escalation", "maxQueuedMessages"]);
    let (min, max) = (
        schema["minimum"].as_f64().expect("minimum") as u64,
        schema["maximum"].as_f64().expect("maximum") as u64,
    );
    assert_eq!((min, max), (1, MAX_QUEUED_MESSAGES));
    for messages in [
        0,
        1,
        1_000,
        MAX_QUEUED_MESSAGES,
        MAX_QUEUED_MESSAGES + 1,
        u64::MAX,
    ] {
        let spec = format!(
            "mode: AcceptAndQueue\nreason: r\ntargets: {{matchLabels: {{app: mta}}}}\nescalation: {{maxQueuedMessages: {messages}}}\n"
        );
        assert_eq!(
            validate(&incident(&spec).spec, None).is_ok(),
            (min..=max).contains(&messages),
            "maxQueuedMessages {messages}"
        );
    }
}

#[test]
fn label_keys_and_values_are_refused_as_the_api_server_refuses_them() {
    let with_targets = |targets: &str| {
        validate(
            &incident(&format!("mode: TempFail\nreason: r\ntargets: {targets}")).spec,
            None,
        )
    };
    for good in [
        "{matchLabels: {app: postfix}}",
        "{matchLabels: {app.kubernetes.io/name: mx-1, tier: ''}}",
        "{matchLabels: {example.com/Role_2: In.bound}}",
        "{matchExpressions: [{key: mail.example.com/tier, operator: In, values: [edge, core]}]}",
        "{matchExpressions: [{key: app, operator: Exists}]}",
    ] {
        assert!(with_targets(good).is_ok(), "{good} refused");
    }
    for (bad, field, words) in [
        (
            "{matchLabels: {'bad key!': x}}",
            "spec.targets.matchLabels",
            "label key \"bad key!\"",
        ),
        (
            "{matchLabels: {Example.com/app: x}}",
            "spec.targets.matchLabels",
            "prefix",
        ),
        (
            "{matchLabels: {app: -edge}}",
            "spec.targets.matchLabels",
            "label value \"-edge\"",
        ),
        (
            "{matchLabels: {'/app': x}}",
            "spec.targets.matchLabels",
            "prefix",
        ),
        (
            "{matchExpressions: [{key: app, operator: In, values: ['a b']}]}",
            "spec.targets.matchExpressions",
            "label value",
        ),
        (
            "{matchExpressions: [{key: 'a/b/c', operator: Exists}]}",
            "spec.targets.matchExpressions",
            "label key",
        ),
    ] {
        let errors = with_targets(bad).expect_err(bad);
        assert!(
            errors
                .iter()
                .any(|e| e.field == field && e.message.contains(words)),
            "{bad}: {errors:?}"
        );
    }
    let long = "a".repeat(64);
    assert!(with_targets(&format!("{{matchLabels: {{app: {long}}}}}")).is_err());
    assert!(with_targets(&format!("{{matchLabels: {{{long}: x}}}}")).is_err());
}

#[test]
fn a_scheduled_window_starts_at_most_100_days_ahead_and_its_end_counts_from_the_start() {
    let created: Timestamp = "2026-01-23T16:00:00Z".parse().unwrap();
    let spec = format!("{VALID_TEMP_FAIL}startsAt: '2026-01-24T22:00:00Z'\nduration: 4h\n");
    let valid = validate(&incident(&spec).spec, Some(created)).expect("valid");
    assert_eq!(valid.starts_at.unwrap().to_string(), "2026-01-24T22:00:00Z");
    assert_eq!(
        valid.expires_at.unwrap().to_string(),
        "2026-01-25T02:00:00Z"
    );
    // expiresAt may lie up to 100 days after the start, not after the creation.
    let spec = format!(
        "{VALID_TEMP_FAIL}startsAt: '2026-03-01T00:00:00Z'\nexpiresAt: '2026-06-01T00:00:00Z'\n"
    );
    assert!(validate(&incident(&spec).spec, Some(created)).is_ok());
    for (extra, field, says) in [
        (
            "startsAt: '2026-05-03T16:00:01Z'\n",
            "spec.startsAt",
            "at most 100d ahead",
        ),
        (
            "startsAt: '2026-02-01T00:00:00Z'\nexpiresAt: '2026-02-01T00:00:00Z'\n",
            "spec.expiresAt",
            "is not after spec.startsAt",
        ),
        (
            "startsAt: '2026-02-01T00:00:00Z'\nexpiresAt: '2026-05-12T00:00:01Z'\n",
            "spec.expiresAt",
            "after spec.startsAt",
        ),
    ] {
        let errors = validate(
            &incident(&format!("{VALID_TEMP_FAIL}{extra}")).spec,
            Some(created),
        )
        .expect_err(extra);
        assert_eq!(errors[0].field, field, "{extra}");
        assert!(errors[0].message.contains(says), "{errors:?}");
    }
    // A start before the creation (a window re-applied from Git) is simply in effect.
    let spec = format!("{VALID_TEMP_FAIL}startsAt: '2026-01-01T00:00:00Z'\n");
    assert!(validate(&incident(&spec).spec, Some(created)).is_ok());
}

#[test]
fn a_scope_lists_valid_distinct_domains_and_names_every_problem() {
    let spec = format!(
        "{VALID_TEMP_FAIL}scope: {{recipientDomains: ['pec.example.it', '*.storage.example.it']}}\n"
    );
    let valid = validate(&incident(&spec).spec, None).expect("valid");
    let scope: Vec<String> = valid
        .scope
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(scope, ["pec.example.it", "*.storage.example.it"]);
    assert!(
        validate(&incident(VALID_TEMP_FAIL).spec, None)
            .unwrap()
            .scope
            .is_none()
    );
    for (domains, says) in [
        ("[]", "1 to 1000 are allowed"),
        ("['Example.it']", "not a lower-case domain name"),
        ("['a.it', 'a.it']", "lists a.it more than once"),
        ("['user@a.it', 'x.*.it']", "\"x.*.it\""),
    ] {
        let spec = format!("{VALID_TEMP_FAIL}scope: {{recipientDomains: {domains}}}\n");
        let errors = validate(&incident(&spec).spec, None).expect_err(domains);
        assert_eq!(errors[0].field, "spec.scope.recipientDomains");
        assert!(errors[0].message.contains(says), "{domains}: {errors:?}");
    }
    let many: Vec<String> = (0..1001).map(|i| format!("'d{i}.it'")).collect();
    let spec = format!(
        "{VALID_TEMP_FAIL}scope: {{recipientDomains: [{}]}}\n",
        many.join(", ")
    );
    let errors = validate(&incident(&spec).spec, None).expect_err("too many");
    assert!(
        errors[0].message.contains("lists 1001 domains"),
        "{errors:?}"
    );
}

/// Each variant's name is the one the API stores, and reads back in any case.
fn assert_names_round_trip<T>(all: &[T])
where
    T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + serde::Serialize,
    T: std::str::FromStr<Err = super::names::UnknownName>,
{
    for &value in all {
        let name = value.to_string();
        assert_eq!(
            serde_json::to_value(value).unwrap(),
            Value::from(name.clone())
        );
        assert_eq!(name.parse::<T>(), Ok(value));
        assert_eq!(name.to_ascii_lowercase().parse::<T>(), Ok(value));
    }
}

#[test]
fn modes_and_mtas_are_written_and_read_as_the_api_spells_them() {
    use super::{EffectiveMode, MtaKind};
    assert_names_round_trip(Mode::ALL);
    assert_names_round_trip(EffectiveMode::ALL);
    assert_names_round_trip(MtaKind::ALL);
    assert_eq!(EffectiveMode::AcceptAndQueue.as_str(), "AcceptAndQueue");
    assert_eq!("EXIM".parse(), Ok(MtaKind::Exim));
    let unknown = "sendmail".parse::<MtaKind>().unwrap_err();
    assert_eq!(
        unknown.to_string(),
        r#""sendmail" names no MTA: expected one of Postfix, Exim, Generic"#
    );
}
