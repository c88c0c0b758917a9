use super::*;
use crate::waf::seclang::Operator;

fn op(spec: &str) -> Compiled {
    let (negated, rest) = spec.strip_prefix('!').map_or((false, spec), |r| (true, r));
    let (name, param) = rest
        .trim_start_matches('@')
        .split_once(' ')
        .unwrap_or((rest.trim_start_matches('@'), ""));
    let o = Operator {
        name: name.into(),
        negated,
        param: param.into(),
    };
    compile(&o, Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/crs"))).unwrap()
}

#[test]
fn operators_match_as_modsecurity_defines_them() {
    let cases: &[(&str, &str, bool)] = &[
        (r"@rx (?i)union\s+select", "1 UNION  SELECT x", true),
        (r"@rx \<script\>", "<script>", true),
        ("@pm select union", "xx UnIoN yy", true),
        ("@pm select union", "unity", false),
        ("@streq POST", "POST", true),
        ("!@streq POST", "GET", true),
        ("@contains /remote.php/dav", "/x/remote.php/dav/files", true),
        ("@beginsWith /admin", "/admin/x", true),
        ("@endsWith .php", "/a/index.php", true),
        ("@within |GET| |POST|", "POST", true),
        ("@within |GET| |POST|", "", false),
        ("@eq 0", "0", true),
        ("@gt 5", "12", true),
        ("@lt 2", "abc", true),
        ("@detectSQLi", "1' OR '1'='1", true),
        ("@detectSQLi", "O'Brien", false),
        ("@detectXSS", "<img src=x onerror=alert(1)>", true),
        ("@detectXSS", "Rock & Roll", false),
        ("@validateUrlEncoding", "a%2Gb", true),
        ("@validateUrlEncoding", "a%20b", false),
        ("@validateUtf8Encoding", "caf\u{e9}", false),
        ("@validateByteRange 32-126", "tab\there", true),
        ("@validateByteRange 32-126", "plain", false),
        ("@ipMatch 127.0.0.1,::1,10.0.0.0/8", "10.1.2.3", true),
        ("@ipMatch 127.0.0.1,::1,10.0.0.0/8", "192.168.0.1", false),
    ];
    for (spec, value, want) in cases {
        assert_eq!(
            op(spec).matches(value.as_bytes()),
            *want,
            "{spec} on {value:?}"
        );
    }
    assert!(op("@validateUtf8Encoding").matches(b"\xff\xfe"));
    assert!(matches!(
        op("@within %{tx.allowed_methods}").test,
        Test::Expand { .. }
    ));
}

#[test]
fn what_cannot_be_compiled_says_why() {
    let err = |spec: &str, param: &str| {
        let o = Operator {
            name: spec.into(),
            negated: false,
            param: param.into(),
        };
        compile(&o, Path::new("/nonexistent")).unwrap_err()
    };
    assert_eq!(
        err("geoLookup", ""),
        "@geoLookup is not supported by this engine"
    );
    assert!(err("rx", "(?<=a)b").starts_with("@rx: "));
    assert!(err("pmFromFile", "x.data").starts_with("@pmFromFile /nonexistent/x.data: "));
    assert!(err("eq", "one").contains("not a number"));
    assert!(err("validateByteRange", "9-x").contains("not a byte or a range"));
    assert!(err("ipMatch", "10.0.0.0/99").contains("not an address or CIDR"));
}

/// Every operator of the CRS's request rules compiles into `regex` but the two look-around
/// patterns, named (the engine runs those through fancy-regex). The files with @geoLookup
/// and @rbl (910) are not shipped.
#[test]
fn the_crs_request_rules_operators_compile() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/crs"));
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("the vendored CRS is missing ({e})"));
    let (mut ok, mut refused) = (0, Vec::new());
    for f in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("REQUEST-") || !name.ends_with(".conf") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for d in crate::waf::seclang::parse(&name, &text).unwrap() {
            let crate::waf::seclang::Directive::Rule(r) = d else {
                continue;
            };
            for c in std::iter::once(&r).chain(&r.chained) {
                match compile(&c.operator, dir) {
                    Ok(_) => ok += 1,
                    Err(e) => refused.push(format!("{} {e}", r.id().unwrap_or(0))),
                }
            }
        }
    }
    refused.sort();
    let ids: Vec<&str> = refused.iter().map(|r| &r[..6]).collect();
    assert_eq!(ids, ["920120", "942130"], "{refused:#?}");
    assert!(ok > 400, "{ok}");
}
