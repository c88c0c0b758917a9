//! Runs libinjection's SQLi and XSS detectors over every sample of bench/waf/corpus, each
//! decoded as a WAF would first (URL decoding up to twice), and prints detection per attack
//! family and false positives per benign family. `--native`: with the prototype native
//! detector set (`native.rs`: normalisation, then libinjection and signatures) instead.

mod native;

use std::path::Path;

/// The sample and its URL-decoded forms (once, twice), as matching sees them.
fn decodings(s: &str) -> Vec<Vec<u8>> {
    let mut out = vec![s.as_bytes().to_vec()];
    for _ in 0..2 {
        let last = out.last().cloned().unwrap_or_default();
        let next: Vec<u8> = percent_encoding::percent_decode(&last).collect();
        if next == last {
            break;
        }
        out.push(next);
    }
    out
}

fn flagged(sample: &str) -> Option<&'static str> {
    for d in decodings(sample) {
        if libinjectionrs::detect_sqli(&d).is_injection() {
            return Some("sqli");
        }
        if libinjectionrs::detect_xss(&d).is_injection() {
            return Some("xss");
        }
    }
    None
}

fn main() {
    let native = std::env::args().any(|a| a == "--native");
    let flagged = |l: &str| {
        if native {
            native::detect(l)
        } else {
            flagged(l)
        }
    };
    let root = std::env::var_os("WAF_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"),
        std::path::PathBuf::from,
    );
    for kind in ["attack", "benign"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(kind))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let (mut all, mut hits) = (0, 0);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let marked: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| flagged(l).is_some())
                .collect();
            let name = f.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
            println!("{kind:7} {name:10} {:3} of {:3}", marked.len(), lines.len());
            if kind == "benign" && !marked.is_empty() {
                println!("        flagged: {marked:?}");
            }
            all += lines.len();
            hits += marked.len();
        }
        if all > 0 {
            let share = 100.0 * hits as f64 / all as f64;
            println!("== {kind}: {hits} of {all} flagged ({share:.1} %)\n");
        }
    }
}
