//! What matching the CRS's paranoia-level-1 request patterns costs per request, the part of
//! a native WAF engine that decides whether it can stay within 2× a plain route: the values
//! of a clean 1 KiB JSON body (bench/waf/post-1k-json.lua's) against every `@rx` of the CRS
//! request rules that look at ARGS, one `regex` at a time and as one `RegexSet`.
//! Needs Debian's modsecurity-crs. `cargo bench -p gatehouse-plugins --bench waf_patterns`

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse_plugins::waf::{pcre, seclang};
use regex::bytes::Regex;
use std::hint::black_box;

/// The `@rx` patterns of PL 1 request rules whose variables include ARGS.
fn patterns() -> Vec<String> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/crs"));
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("the OWASP CRS is not installed: apt-get install modsecurity-crs");
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with("REQUEST-9") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let Ok(directives) = seclang::parse(&name, &text) else {
            continue;
        };
        // Rules after the "@lt 2" paranoia gate are PL 2 and up.
        let mut pl1 = true;
        for d in directives {
            let seclang::Directive::Rule(r) = d else {
                continue;
            };
            let gate = r.variables.iter().any(|v| {
                v.name == "TX"
                    && matches!(&v.selector, Some(seclang::Selector::Name(n)) if n.eq_ignore_ascii_case("EXECUTING_PARANOIA_LEVEL"))
            });
            if gate {
                pl1 = !r.operator.param.trim().ends_with('2');
                continue;
            }
            let on_args = r.variables.iter().any(|v| v.name == "ARGS" && !v.exclude);
            if pl1 && on_args && r.operator.name == "rx" {
                out.push(pcre::translate(&r.operator.param).into_owned());
            }
        }
    }
    out
}

/// The values a WAF sees in bench/waf/post-1k-json.lua's body, transformed (lower case).
fn values() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = vec![
        b"anne o'brien".to_vec(),
        b"anne@example.com".to_vec(),
        b"please deliver after 6pm, ring twice.".to_vec(),
    ];
    for i in 1..=12 {
        v.push(format!("sku-{i:04}").into_bytes());
        v.push(b"blue cotton t-shirt size m".to_vec());
        v.push(i.to_string().into_bytes());
        v.push(b"19.99".to_vec());
    }
    v
}

fn bench(c: &mut Criterion) {
    let pats = patterns();
    let compiled: Vec<Regex> = pats.iter().filter_map(|p| Regex::new(p).ok()).collect();
    // The default size limit is for one pattern, not seventy-seven.
    let set = regex::bytes::RegexSetBuilder::new(compiled.iter().map(Regex::as_str))
        .size_limit(256 << 20)
        .dfa_size_limit(64 << 20)
        .build();
    let set = match set {
        Ok(s) => s,
        Err(e) => panic!("the patterns do not build one set: {e}"),
    };
    assert_eq!(set.len(), compiled.len());
    let vals = values();
    eprintln!(
        "{} PL 1 ARGS patterns ({} compile), {} values",
        pats.len(),
        compiled.len(),
        vals.len()
    );
    c.bench_function("crs_pl1_args_one_regex_at_a_time", |b| {
        b.iter(|| {
            let mut hits = 0;
            for v in &vals {
                for re in &compiled {
                    hits += usize::from(re.is_match(black_box(v)));
                }
            }
            hits
        })
    });
    c.bench_function("crs_pl1_args_one_regex_set", |b| {
        b.iter(|| {
            let mut hits = 0;
            for v in &vals {
                hits += usize::from(set.is_match(black_box(v)));
            }
            hits
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
