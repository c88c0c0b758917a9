//! Table tests of the validation messages: each case is a config and the exact lines a user sees.

use super::*;

const UPSTREAM: &str = "  - name: echo\n    targets: [{address: \"127.0.0.1:9000\"}]\n";
const SERVICE: &str = "  - name: echo\n    upstream: echo\n";
const BASE: &str = "upstreams:\n  - name: echo\n    targets: [{address: \"127.0.0.1:9000\"}]\nservices:\n  - name: echo\n    upstream: echo\n";

/// The errors of BASE plus `extra`; an `extra` that starts with `upstreams:` or `services:`
/// gets the base entity appended to its own list, after its items.
fn errors_of(extra: &str) -> Vec<String> {
    let text = if extra.starts_with("upstreams:") {
        format!("{extra}{UPSTREAM}services:\n{SERVICE}")
    } else if extra.starts_with("services:") {
        format!("upstreams:\n{UPSTREAM}{extra}{SERVICE}")
    } else {
        format!("{BASE}{extra}")
    };
    match parse_yaml(&text) {
        Ok(_) => Vec::new(),
        Err(e) => {
            e.0.iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        }
    }
}

#[test]
fn valid_config_parses_with_defaults() {
    let c = parse_yaml(&format!(
        "{BASE}routes:\n  - name: r\n    paths: [\"/a/*\"]\n    service: echo\n"
    ))
    .map_err(|e| e.to_string());
    let c = c.as_ref().map_err(|e| e.as_str());
    let c = match c {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors: {e}"),
    };
    assert_eq!(c.upstreams[0].targets[0].weight, 1);
    assert_eq!(c.services[0].timeouts.connect, Duration::from_secs(5));
    assert_eq!(c.services[0].retries, 1);
    assert_eq!(c.upstreams[0].keepalive.max_connections, 1000);
    assert_eq!(c.node.drain_timeout, Duration::from_secs(30));
}

#[test]
fn validation_messages() {
    let cases: &[(&str, &[&str])] = &[
        (
            "routes:\n  - name: r\n    service: users\n",
            &["routes[0].service: no service named \"users\""],
        ),
        (
            "routes:\n  - name: r\n    service: echo\n    colour: red\n",
            &["routes[0].colour: unknown field `colour`, expected one of `name`, `hosts`, `paths`, `methods`, `headers`, `query`, `cookies`, `service`, `priority`, `strip_prefix`, `rewrite`, `rewrite_regex`, `preserve_host`, `priority_class`, `retries`, `retry`, `circuit_breaker`, `fallback`, `observability`, `protocols`, `https_redirect_status_code`, `grpc_transcode`"],
        ),
        (
            "routes:\n  - {name: a, service: echo}\n  - {name: a, service: echo}\n",
            &["routes[1].name: duplicate name \"a\" (first at routes[0])"],
        ),
        (
            "routes:\n  - {name: a, service: echo, paths: [\"api\"]}\n",
            &["routes[0].paths[0]: must start with '/' (or '~' for a regex)"],
        ),
        (
            "routes:\n  - {name: a, service: echo, paths: [\"/a/*/b\"]}\n",
            &["routes[0].paths[0]: '*' is only allowed as the last segment, as in /api/*"],
        ),
        (
            "routes:\n  - {name: a, service: echo, paths: [\"/u/{id}/{id}\"]}\n",
            &["routes[0].paths[0]: parameter {id} appears twice"],
        ),
        (
            "routes:\n  - {name: a, service: echo, paths: [\"/u/x{id}\"]}\n",
            &["routes[0].paths[0]: segment \"x{id}\": a parameter must be a whole segment, as in /users/{id}"],
        ),
        (
            "routes:\n  - {name: a, service: echo, methods: [FETCH]}\n",
            &["routes[0].methods[0]: unknown method \"FETCH\", expected one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE, CONNECT"],
        ),
        (
            "routes:\n  - {name: a, service: echo, headers: [{name: x-a}]}\n",
            &["routes[0].headers[0]: needs exactly one of equals, regex, present"],
        ),
        (
            "routes:\n  - {name: a, service: echo, hosts: [\"a.*.com\"]}\n",
            &["routes[0].hosts[0]: a wildcard is only allowed as the first label, as in *.example.com"],
        ),
        (
            "routes:\n  - {name: a, service: echo, paths: [\"/u/{id}\"], rewrite: \"/v/{name}\"}\n",
            &["routes[0].rewrite: parameter {name} is not captured by every path of this route"],
        ),
        (
            "listen:\n  - address: \"localhost\"\n",
            &["listen[0].address: invalid socket address syntax: expected ip:port such as 0.0.0.0:8080"],
        ),
        (
            "upstreams:\n  - name: u2\n    targets: [{address: \"h\"}, {address: \"h:0\"}]\n",
            &[
                "upstreams[0].targets[0].address: \"h\" has no port; expected host:port",
                "upstreams[0].targets[1].address: \"0\" is not a port (1-65535)",
            ],
        ),
        (
            "upstreams:\n  - name: u2\n    balance: consistent_hash\n    hash_on: header\n    targets: [{address: \"h:1\"}]\n",
            &["upstreams[0].hash_key: required when hash_on is header, cookie or query"],
        ),
        (
            "upstreams:\n  - name: u2\n    balance: fastest\n    targets: [{address: \"h:1\"}]\n",
            &["upstreams[0].balance: unknown variant `fastest`, expected one of `round_robin`, `random`, `least_conn`, `ewma`, `consistent_hash`"],
        ),
        (
            "upstreams:\n  - name: u2\n    targets: [{address: \"h:1\"}]\n    health:\n      active: {path: health, interval: 0s, unhealthy_threshold: 0, expected_statuses: [99]}\n      passive: {consecutive_failures: 0, max_ejection_percent: 101, base_ejection: 10s, max_ejection: 5s}\n",
            &[
                "upstreams[0].health.active.expected_statuses[0]: 99 is not an HTTP status",
                "upstreams[0].health.active.interval: must be above 0",
                "upstreams[0].health.active.path: must start with /",
                "upstreams[0].health.active.unhealthy_threshold: must be at least 1",
                "upstreams[0].health.passive: ejects nothing: set consecutive_failures above 0 or a failure_ratio",
                "upstreams[0].health.passive.max_ejection: must be at least base_ejection",
                "upstreams[0].health.passive.max_ejection_percent: must be from 0 to 100",
            ],
        ),
        (
            "services:\n  - name: s2\n    url: http://a:1\n    retry: {on: [connect_failure, 700], methods: [FETCH], backoff: 1s, max_backoff: 10ms}\n",
            &[
                "services[0].retry.max_backoff: must be at least backoff",
                "services[0].retry.methods[0]: unknown method \"FETCH\", expected one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE",
                "services[0].retry.on[1]: 700 is not an HTTP status",
            ],
        ),
        (
            "upstreams:\n  - name: u2\n    targets: [{address: \"h:1\"}]\n    circuit_breaker: {min_calls: 0, failure_ratio: 2, half_open_probes: 0}\n",
            &[
                "upstreams[0].circuit_breaker.failure_ratio: must be above 0 and at most 1",
                "upstreams[0].circuit_breaker.half_open_probes: must be at least 1",
                "upstreams[0].circuit_breaker.min_calls: must be at least 1",
            ],
        ),
        (
            "routes:\n  - name: r\n    service: echo\n    fallback: {upstream: nope, static: {body: a, body_file: b}}\n",
            &[
                "routes[0].fallback.static.body_file: give either body or body_file, not both",
                "routes[0].fallback.upstream: no upstream named \"nope\"",
            ],
        ),
        (
            "routes:\n  - name: r\n    service: echo\n    fallback: {statuses: [42], header: \"x y\"}\n",
            &[
                "routes[0].fallback: serves nothing: give a cache, a static response or an upstream",
                "routes[0].fallback.header: must be a header name (letters, digits, - and _)",
                "routes[0].fallback.statuses[0]: 42 is not an HTTP status",
            ],
        ),
        (
            "services:\n  - {name: s2, upstream: nope}\n  - {name: s3}\n  - {name: s4, url: \"ftp://x\"}\n",
            &[
                "services[0].upstream: no upstream named \"nope\"",
                "services[1]: needs an upstream or a url",
                "services[2].url: must start with http:// or https://",
            ],
        ),
        (
            "services:\n  - name: s2\n    url: http://a:1\n    timeouts: {connect: soon}\n",
            &["services[0].timeouts.connect: invalid duration \"soon\" (expected number at 0): write a number and a unit, e.g. 500ms, 5s, 2m, 1h"],
        ),
        (
            "node: {drain_timeout: 100000h}\n",
            &["node.drain_timeout: \"100000h\" is more than this setting's most (1h)"],
        ),
        (
            "routing: []\n",
            &["routing: unknown key, expected one of: listen, admin, node, redis, observability, upstreams, services, consumers, routes, plugins, certificates, acme"],
        ),
        (
            "plugins:\n  - {name: key-auth, route: nope}\n",
            &["plugins[0].route: no route named \"nope\""],
        ),
        (
            "upstreams:\n  - {name: u, targets: [{address: \"a:1\", labels: {color: gray}}]}\n",
            &["upstreams[0].targets: needs a target without a color label, for requests that are not coloured"],
        ),
        (
            "services:\n  - {name: s, upstream: echo, blue_green: {blue: echo, green: nope}}\n  - {name: t, blue_green: {blue: echo, green: echo, active: green}}\n",
            &[
                "services[0].blue_green: give either blue_green, upstream or url, not more than one",
                "services[0].blue_green.green: no upstream named \"nope\"",
                "services[1].blue_green.green: must name another upstream than blue",
            ],
        ),
        (
            "node: {color_header: \"bad header\"}\n",
            &["node.color_header: \"bad header\" is not a valid header name"],
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(&errors_of(yaml), expected, "for config:\n{yaml}");
    }
}

#[test]
fn every_bad_item_is_reported_not_just_the_first() {
    let errs = errors_of(
        "routes:\n  - {name: a, service: echo, bogus: 1}\n  - {name: b, service: nope}\n  - {name: c, service: echo, priority: high}\n",
    );
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].starts_with("routes[0].bogus: unknown field `bogus`"));
    assert_eq!(errs[1], "routes[1].service: no service named \"nope\"");
    assert!(
        errs[2].starts_with("routes[2].priority: invalid type"),
        "{}",
        errs[2]
    );
}

#[test]
fn broken_yaml_names_the_line() {
    let e = parse_yaml("routes: [\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.starts_with("line "), "{e}");
    assert!(e.contains("invalid YAML"), "{e}");
}

#[test]
fn service_url_split() {
    assert_eq!(
        parse_service_url("http://127.0.0.1:9000/base/"),
        Ok(("127.0.0.1:9000".into(), "/base".into()))
    );
    assert_eq!(
        parse_service_url("http://example.com"),
        Ok(("example.com:80".into(), String::new()))
    );
}

#[test]
fn observability_messages() {
    let cases: &[(&str, &[&str])] = &[
        (
            "observability:\n  metrics: {buckets: [0.1, 0.05, -1]}\n",
            &[
                "observability.metrics.buckets[1]: bounds must be ascending",
                "observability.metrics.buckets[2]: bounds must be ascending",
                "observability.metrics.buckets[2]: must be a positive number of seconds",
            ],
        ),
        (
            "observability:\n  access_log: {path: \" \", sample: 2, fields: [status, status], rotate_every: 10ms}\n",
            &[
                "observability.access_log.fields[1]: listed twice",
                "observability.access_log.path: must name a file or `stdout`",
                "observability.access_log.rotate_every: must be at least 1s",
                "observability.access_log.sample: must be between 0 and 1, not 2",
            ],
        ),
        (
            "observability:\n  access_log: {path: x, fields: [colour]}\n",
            &["observability.access_log.fields[0]: unknown variant `colour`, expected one of `time`, `request_id`, `client_ip`, `consumer`, `route`, `service`, `upstream`, `target`, `method`, `host`, `path`, `protocol`, `status`, `bytes_in`, `bytes_out`, `duration`, `upstream_duration`, `gateway_duration`, `retries`, `rejected_by`, `degraded`, `trace_id`, `user_agent`, `grpc_status`, `variant`"],
        ),
        (
            "observability:\n  tracing: {endpoint: \"https://collector:4318/v1/traces\", sample_ratio: -0.5}\n  debug_header: \"bad header\"\n",
            &[
                "observability.debug_header: not a valid header name",
                "observability.tracing.endpoint: must be an http:// URL with a host",
                "observability.tracing.sample_ratio: must be between 0 and 1, not -0.5",
            ],
        ),
        (
            "routes:\n  - name: r\n    service: echo\n    observability: {log_sample: 1.5}\n",
            &["routes[0].observability.log_sample: must be between 0 and 1, not 1.5"],
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(errors_of(extra), *want, "config:\n{extra}");
    }
}

#[test]
fn a_bad_service_is_reported_once_first_and_not_again_for_every_route_that_uses_it() {
    let text = "\
upstreams:
  - {name: u, targets: [{address: \"127.0.0.1:9\"}]}
routes:
  - {name: r1, paths: [\"/a\"], service: s}
  - {name: r2, paths: [\"/b\"], service: s}
services:
  - name: s
    upstream: u
    timeouts: {connect: \"5\"}
";
    let errs = parse_yaml(text).err().map(|e| e.0).unwrap_or_default();
    // Before: `routes[0].service: no service named "s"` twice, printed before the cause.
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "services[0].timeouts.connect");
    assert_eq!(errs[0].location, Some((9, 25)));
    assert!(errs[0].message.contains("e.g. 500ms, 5s"), "{}", errs[0]);
    assert!(
        errs[0]
            .to_string()
            .starts_with("services[0].timeouts.connect (line 9 column 25): "),
        "{}",
        errs[0]
    );
}

#[test]
fn values_of_a_known_form_say_it_with_an_example() {
    let errs =
        errors_of("listen: [\"8080\"]\nroutes:\n  - {name: r, service: echo, retries: \"2\"}\n");
    assert_eq!(
        errs,
        [
            "listen[0]: invalid type: string \"8080\", expected a mapping such as {address: \"0.0.0.0:8080\"}",
            "routes[0].retries: invalid type: string \"2\", expected a whole number, 0 or more: write it without quotes, as 2",
        ]
    );
    let errs = errors_of("services:\n  - {name: s, upstream: echo, timeouts: {read: 30}}\n");
    assert_eq!(
        errs,
        ["services[0].timeouts.read: 30 has no unit: write 30s, 30ms or 30m"]
    );
}

#[test]
fn discovery_messages() {
    let cases: &[(&str, &[&str])] = &[
        (
            "upstreams:\n  - {name: u, targets: []}\n",
            &["upstreams[0].targets: needs at least one target (or a discovery)"],
        ),
        ("upstreams:\n  - {name: u, discovery: {}}\n", &[]),
        (
            "upstreams:\n  - {name: u, discovery: {dns: {name: orders.svc}}}\n",
            &["upstreams[0].discovery.dns.port: A/AAAA records carry no port: give the targets' port"],
        ),
        (
            "upstreams:\n  - {name: u, discovery: {dns: {name: _x._tcp.o, record: srv, port: 80, resolvers: [dns1], min_ttl: 10m, max_ttl: 1m}}}\n",
            &[
                "upstreams[0].discovery.dns.min_ttl: must not be more than max_ttl",
                "upstreams[0].discovery.dns.port: SRV records carry their own ports: leave port out",
                "upstreams[0].discovery.dns.resolvers[0]: \"dns1\" is not an ip:port",
            ],
        ),
        (
            "upstreams:\n  - {name: u, discovery: {dns: {name: 'bad name!', port: 80}}}\n",
            &["upstreams[0].discovery.dns.name: \"bad name!\" is not a DNS name"],
        ),
        (
            "upstreams:\n  - {name: u, discovery: {etcd: {endpoints: ['ftp://e:2379', 'x'], prefix: '', username: u}}}\n",
            &[
                "upstreams[0].discovery.etcd.endpoints[0]: \"ftp://e:2379\" is not an http:// or https://host:port URL",
                "upstreams[0].discovery.etcd.endpoints[1]: \"x\" is not an http:// or https://host:port URL",
                "upstreams[0].discovery.etcd.password: username and password go together",
                "upstreams[0].discovery.etcd.prefix: must not be empty (it would watch the whole keyspace)",
            ],
        ),
        (
            "upstreams:\n  - {name: u, discovery: {etcd: {endpoints: ['http://e:2379'], prefix: /p/, tls: {verify: false}}}}\n",
            &["upstreams[0].discovery.etcd.tls: applies to https:// endpoints only"],
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(errors_of(extra), *want, "{extra}");
    }
}
