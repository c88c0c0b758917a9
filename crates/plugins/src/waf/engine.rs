//! One request (or response) through a rule set: its body parsed, its collections gathered,
//! its phases run; what comes out is a verdict the plugin acts on. Rule sets are compiled once
//! per distinct set of files and shared by every instance that uses them.

use super::body::{self, Parsed};
use super::data::{Data, Request};
use super::eval::{self, Ctx, Hit, Policy, State};
use super::ruleset::{CompileError, Ruleset};
use super::vars::Coll;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// What the rules decided about a request.
#[derive(Debug, Default)]
pub struct Verdict {
    /// The rule that denied it (949110, the anomaly threshold, for the CRS).
    pub denied: Option<u64>,
    pub hits: Vec<Hit>,
    /// The CRS's inbound anomaly score.
    pub score: i64,
    /// Why the body did not parse, if it did not.
    pub body_error: Option<String>,
    /// The TX collection at the end, for the response phases.
    pub tx: HashMap<Box<[u8]>, Vec<u8>>,
}

/// Runs phases 1 and 2 over a request and its body (`None`: not read).
pub fn request(rs: &Ruleset, pol: &Policy, req: &Request<'_>, body: Option<&[u8]>) -> Verdict {
    let ct = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parse = |processor: &'static str| match body {
        Some(b) if !b.is_empty() => body::parse(processor, b, ct),
        _ => Parsed::default(),
    };
    let mut parsed = parse(body::processor_for(ct));
    let mut data = Data::request(req, &parsed);
    let mut st = State::new(pol);
    let run = |data: &Data, st: &mut State, phase: u8| {
        eval::phase(&Ctx { rs, pol, data }, st, phase);
    };
    run(&data, &mut st, 1);
    if let Some(p) = st.processor.take() {
        let wanted = match &*p {
            "URLENCODED" => "URLENCODED",
            "JSON" => "JSON",
            "XML" => "XML",
            "MULTIPART" => "MULTIPART",
            _ => "",
        };
        if wanted != parsed.processor {
            parsed = parse(wanted);
            data = Data::request(req, &parsed);
            st.reset_caches();
        }
    }
    run(&data, &mut st, 2);
    Verdict {
        denied: st.denied,
        score: st.tx_num("anomaly_score"),
        hits: std::mem::take(&mut st.hits),
        body_error: parsed.error,
        tx: st.tx,
    }
}

/// Runs phases 3 and 4 over a response, with the TX collection the request left.
pub fn response(
    rs: &Ruleset,
    pol: &Policy,
    tx: HashMap<Box<[u8]>, Vec<u8>>,
    status: u16,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Verdict {
    let mut data = Data::default();
    data.set(Coll::ResponseStatus, status.to_string().into_bytes());
    let items = headers.iter().map(|(n, v)| super::data::Item {
        name: n.as_str().as_bytes().into(),
        value: v.as_bytes().into(),
    });
    data.push_all(Coll::ResponseHeaders, items);
    let ct = headers
        .get(http::header::CONTENT_TYPE)
        .map_or(&b""[..], |v| v.as_bytes());
    data.set(Coll::ResponseContentType, ct);
    data.set(Coll::ResponseBody, body);
    data.set(Coll::ResponseProtocol, &b"HTTP/1.1"[..]);
    let mut st = State::new(pol);
    st.tx = tx;
    let cx = Ctx {
        rs,
        pol,
        data: &data,
    };
    eval::phase(&cx, &mut st, 3);
    eval::phase(&cx, &mut st, 4);
    Verdict {
        denied: st.denied,
        score: st.tx_num("outbound_anomaly_score"),
        hits: std::mem::take(&mut st.hits),
        body_error: None,
        tx: HashMap::new(),
    }
}

type Files = Vec<(String, String)>;

/// Rule sets by their files' contents: instances with the same files share one compile,
/// and a reload that changes nothing compiles nothing.
fn cache() -> &'static Mutex<HashMap<u64, Weak<Ruleset>>> {
    static C: std::sync::OnceLock<Mutex<HashMap<u64, Weak<Ruleset>>>> = std::sync::OnceLock::new();
    C.get_or_init(Default::default)
}

/// The rule set of the built-in CRS (when `crs`), then `extra` files (name, text); data
/// files of `@pmFromFile` come from the CRS's, then from `data_dir`.
pub fn load(
    crs: bool,
    extra: &Files,
    data_dir: Option<&std::path::Path>,
) -> Result<Arc<Ruleset>, CompileError> {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<(&str, &str)> = Vec::new();
    if crs {
        files.extend(super::crs::RULES.iter().copied());
    }
    files.extend(extra.iter().map(|(n, t)| (n.as_str(), t.as_str())));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    files.hash(&mut h);
    data_dir.hash(&mut h);
    let key = h.finish();
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rs) = c.get(&key).and_then(Weak::upgrade) {
        return Ok(rs);
    }
    let data = |name: &str| -> Result<String, String> {
        if let Some((_, t)) = super::crs::DATA.iter().find(|(n, _)| *n == name) {
            return Ok((*t).to_owned());
        }
        let dir = data_dir.ok_or_else(|| format!("{name}: no such data file"))?;
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let rs = Arc::new(Ruleset::compile(&files, &data)?);
    c.retain(|_, w| w.strong_count() > 0);
    c.insert(key, Arc::downgrade(&rs));
    Ok(rs)
}
