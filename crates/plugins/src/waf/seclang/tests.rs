use super::*;

const SAMPLE: &str = r#"
# A comment, then a rule over two lines.
SecRule REQUEST_COOKIES|!REQUEST_COOKIES:/__utm/|ARGS_NAMES|ARGS|XML:/* \
    "@rx (?i)(?:\b(?:m(?:s(?:ysackup\"|sql)))|union\s+select)" \
    "id:942100,phase:2,block,capture,t:none,t:urlDecodeUni,\
    msg:'SQL Injection Attack Detected via libinjection, or, more',\
    logdata:'Matched Data: %{TX.0} found within %{MATCHED_VAR_NAME}',\
    tag:'attack-sqli',severity:'CRITICAL',\
    setvar:'tx.sql_injection_score=+%{tx.critical_anomaly_score}'"

SecRule &REQUEST_HEADERS:Host "@eq 0" "id:920280,phase:1,pass,chain"
    SecRule REQUEST_METHOD "!@streq OPTIONS" "t:none,chain"
        SecRule ARGS "@detectSQLi" "t:none"

SecAction "id:900000,phase:1,nolog,pass,t:none,setvar:tx.paranoia_level=1"
SecMarker "END-REQUEST-942-APPLICATION-ATTACK-SQLI"
SecComponentSignature "OWASP_CRS/3.3.4"
SecRule ARGS "@pmFromFile unix-shell.data" "id:932160,phase:2,block"
"#;

fn rules(d: &[Directive]) -> Vec<&Rule> {
    d.iter()
        .filter_map(|d| match d {
            Directive::Rule(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[test]
fn rules_actions_markers_and_chains_are_read() {
    let d = parse("sample.conf", SAMPLE).unwrap();
    assert_eq!(d.len(), 6, "{d:#?}");
    let r = rules(&d);
    let sqli = r[0];
    assert_eq!(sqli.at.to_string(), "sample.conf:3");
    assert_eq!(sqli.id(), Some(942100));
    assert_eq!(sqli.variables.len(), 5);
    assert_eq!(
        sqli.variables[1],
        Variable {
            name: "REQUEST_COOKIES".into(),
            selector: Some(Selector::Regex("__utm".into())),
            exclude: true,
            count: false,
        }
    );
    assert_eq!(
        sqli.variables[4].selector,
        Some(Selector::Name("/*".into()))
    );
    assert_eq!(sqli.operator.name, "rx");
    // An escaped quote inside the quoted operator is a quote of the pattern.
    assert!(
        sqli.operator.param.contains("ysackup\""),
        "{:?}",
        sqli.operator
    );
    assert_eq!(
        sqli.action("msg"),
        Some("SQL Injection Attack Detected via libinjection, or, more")
    );
    let transforms: Vec<_> = sqli
        .actions
        .iter()
        .filter(|a| a.name == "t")
        .filter_map(|a| a.value.as_deref())
        .collect();
    assert_eq!(transforms, ["none", "urlDecodeUni"]);

    // A chain of three: one rule with two conditions after it.
    let host = r[1];
    assert!(host.variables[0].count);
    assert_eq!(host.chained.len(), 2);
    assert!(host.chained[0].operator.negated);
    assert_eq!(host.chained[0].operator.name, "streq");
    assert_eq!(host.chained[1].operator.name, "detectSQLi");
    assert_eq!(host.chained[1].operator.param, "");

    assert!(matches!(&d[2], Directive::Action { actions, .. } if actions.len() == 6));
    assert!(
        matches!(&d[3], Directive::Marker { name, .. } if name == "END-REQUEST-942-APPLICATION-ATTACK-SQLI")
    );
    assert!(matches!(&d[4], Directive::Other { name, .. } if name == "SecComponentSignature"));
    assert_eq!(r[2].operator.name, "pmFromFile");
    assert_eq!(r[2].operator.param, "unix-shell.data");
}

#[test]
fn broken_files_are_named_by_file_and_line() {
    let cases: &[(&str, &str)] = &[
        (
            "\n\nSecRule ARGS \"@rx a\" \"id:1,msg:'open\"\n",
            "t.conf:3: a quoted action value is not closed",
        ),
        (
            "SecRule ARGS \"@rx a\n",
            "t.conf:1: a quoted argument is not closed",
        ),
        (
            "SecRule ARGS\n",
            "t.conf:1: SecRule takes variables, an operator and actions, not 1 arguments",
        ),
        (
            "SecRule AR-GS \"@rx a\" \"id:1\"\n",
            "t.conf:1: \"AR-GS\" is not a variable",
        ),
        (
            "SecRule ARGS \"@rx a\" \"id:1,chain\"\n",
            "t.conf:1: this rule says chain, but the file ends",
        ),
        (
            "SecRule ARGS \"@rx a\" \"id:1,chain\"\nSecMarker END\n",
            "t.conf:2: the rule at t.conf:1 says chain, but no rule follows",
        ),
        (
            "SecAction\n",
            "t.conf:1: SecAction takes one argument (its actions), not 0",
        ),
    ];
    for (text, want) in cases {
        let e = parse("t.conf", text).unwrap_err();
        assert_eq!(e.to_string(), *want, "{text}");
    }
}

/// ModSecurity's operators (its reference manual).
const OPERATORS: &[&str] = &[
    "beginsWith",
    "contains",
    "containsWord",
    "detectSQLi",
    "detectXSS",
    "endsWith",
    "eq",
    "fuzzyHash",
    "ge",
    "geoLookup",
    "gsbLookup",
    "gt",
    "inspectFile",
    "ipMatch",
    "ipMatchFromFile",
    "le",
    "lt",
    "noMatch",
    "pm",
    "pmFromFile",
    "rbl",
    "rsub",
    "rx",
    "streq",
    "strmatch",
    "unconditionalMatch",
    "validateByteRange",
    "validateDTD",
    "validateHash",
    "validateSchema",
    "validateUrlEncoding",
    "validateUtf8Encoding",
    "verifyCC",
    "verifyCPF",
    "verifySSN",
    "within",
];

/// Every file of the OWASP CRS the gateway ships (crates/plugins/crs, Debian's 3.3.4) is
/// read, with every rule's id.
#[test]
fn the_whole_crs_is_read() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/crs"));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => panic!("the vendored CRS is missing at {} ({e})", dir.display()),
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    files.sort();
    let (mut n_rules, mut n_chained) = (0, 0);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy();
        let d = match parse(&name, &text) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        for r in rules(&d) {
            assert!(r.id().is_some(), "{}: a rule without an id", r.at);
            n_rules += 1;
            n_chained += r.chained.len();
            for c in std::iter::once(r).chain(&r.chained) {
                // A misread operator shows as a name outside ModSecurity's list.
                assert!(
                    OPERATORS.contains(&c.operator.name.as_str()),
                    "{}: operator {:?}",
                    c.at,
                    c.operator
                );
            }
        }
    }
    assert!(files.len() >= 23, "{files:?}");
    // The shipped files of CRS 3.3.4: 441 rules, 70 chained conditions.
    assert!(
        n_rules > 400 && n_chained > 60,
        "{n_rules} rules, {n_chained} chained"
    );
}

/// What the native engine must translate: the CRS's `@rx` patterns are PCRE. Rust's
/// `regex` crate takes 193 of the shipped files' 211 as written (247 of Debian's whole 265),
/// and after `pcre::translate` all but the three that use look-around (920120, 942130,
/// 953120), which the engine runs through fancy-regex. Pinned, so that a CRS update that
/// changes this is seen (bench/runs/issue22/crs-rx-in-rust-regex.txt has the raw errors).
#[test]
fn crs_patterns_compile_in_rust_regex_after_translation() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/crs"));
    let (mut as_written, mut translated, mut refused) = (0, 0, Vec::new());
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("the vendored CRS is missing ({e})"));
    for f in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if f.extension().is_none_or(|x| x != "conf") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for d in parse(&f.to_string_lossy(), &text).unwrap() {
            let Directive::Rule(r) = d else { continue };
            for c in std::iter::once(&r).chain(&r.chained) {
                if c.operator.name != "rx" {
                    continue;
                }
                let p = &c.operator.param;
                if regex::bytes::Regex::new(p).is_ok() {
                    as_written += 1;
                }
                match regex::bytes::Regex::new(&crate::waf::pcre::translate(p)) {
                    Ok(_) => translated += 1,
                    Err(_) => refused.push(r.id().unwrap_or(0)),
                }
            }
        }
    }
    refused.sort_unstable();
    assert_eq!((as_written, translated), (193, 208));
    assert_eq!(refused, [920120, 942130, 953120]);
}
