//! What a transaction's rules look at: the request's (and response's) values, gathered once
//! into one arena, each collection a range of it, so that a value has a stable index by
//! which its transformations and pattern matches are cached.

use super::transform::Transform;
use super::vars::Coll;
use std::borrow::Cow;

/// One member of a collection: `name` is empty for single values (`REQUEST_URI`).
#[derive(Debug, Clone)]
pub struct Item {
    pub name: Box<[u8]>,
    pub value: Box<[u8]>,
}

const COLLS: usize = Coll::MatchedVarsNames as usize + 1;

#[derive(Debug, Clone)]
pub struct Data {
    pub items: Vec<Item>,
    /// Per value key (`index * 2 + is_name`): what transformations would find in it.
    pub feats: Vec<u16>,
    ranges: [(u32, u32); COLLS],
}

impl Default for Data {
    fn default() -> Self {
        Data {
            items: Vec::new(),
            feats: Vec::new(),
            ranges: [(0, 0); COLLS],
        }
    }
}

/// The parts of a request the rules see.
pub struct Request<'a> {
    pub method: &'a str,
    pub uri: &'a http::Uri,
    pub version: http::Version,
    pub headers: &'a http::HeaderMap,
    pub remote_addr: std::net::IpAddr,
    pub request_id: &'a str,
}

impl Data {
    /// The members of `coll` (its names are `items[..].name`).
    pub fn members(&self, coll: Coll) -> &[Item] {
        let (a, b) = self.ranges[collection_of(coll) as usize];
        &self.items[a as usize..b as usize]
    }

    /// The index of the first member of `coll` in the arena.
    pub fn start(&self, coll: Coll) -> u32 {
        self.ranges[collection_of(coll) as usize].0
    }

    /// Appends the members of `coll`, which must not have any yet.
    pub fn push_all(&mut self, coll: Coll, members: impl IntoIterator<Item = Item>) {
        let a = self.items.len() as u32;
        self.items.extend(members);
        for i in &self.items[a as usize..] {
            self.feats.push(super::transform::features::of(&i.value));
            self.feats.push(super::transform::features::of(&i.name));
        }
        self.ranges[coll as usize] = (a, self.items.len() as u32);
    }

    pub fn set(&mut self, coll: Coll, value: impl Into<Box<[u8]>>) {
        self.push_all(
            coll,
            [Item {
                name: Box::default(),
                value: value.into(),
            }],
        );
    }

    /// The first value of `coll` (or its only one).
    pub fn get(&self, coll: Coll) -> Option<&[u8]> {
        self.members(coll).first().map(|i| &*i.value)
    }

    /// The request's collections, from its head and its parsed body.
    pub fn request(r: &Request<'_>, body: &super::body::Parsed) -> Data {
        let mut d = Data::default();
        let path = r.uri.path();
        let query = r.uri.query().unwrap_or("");
        let protocol = match r.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            http::Version::HTTP_09 => "HTTP/0.9",
            _ => "HTTP/1.1",
        };
        let target = r.uri.path_and_query().map_or(path, |pq| pq.as_str());
        d.push_all(Coll::ArgsGet, form_args(query.as_bytes()));
        d.push_all(Coll::ArgsPost, body.args.iter().cloned());
        d.join_args();
        body.fill(&mut d);
        let headers = r.headers.iter().map(|(n, v)| Item {
            name: n.as_str().as_bytes().into(),
            value: v.as_bytes().into(),
        });
        d.push_all(Coll::RequestHeaders, headers);
        let cookies: Vec<Item> = r
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| cookie_items(v.as_bytes()))
            .collect();
        d.push_all(Coll::RequestCookies, cookies);
        d.set(Coll::RequestMethod, r.method.as_bytes());
        // As libmodsecurity 3 has them (the reference for the CRS's verdicts): the URI and
        // file name percent-decoded once, the raw form in REQUEST_URI_RAW and REQUEST_LINE.
        d.set(Coll::RequestUri, percent_decoded(target.as_bytes()));
        d.set(Coll::RequestUriRaw, r.uri.to_string().into_bytes());
        let file = percent_decoded(path.as_bytes());
        let base = file.rsplit(|b| *b == b'/').next().unwrap_or(&[]).to_vec();
        d.set(Coll::RequestFilename, file);
        d.set(Coll::RequestBasename, base);
        d.set(
            Coll::RequestLine,
            format!("{} {target} {protocol}", r.method).into_bytes(),
        );
        d.set(Coll::RequestProtocol, protocol.as_bytes());
        d.set(Coll::QueryString, query.as_bytes());
        d.set(Coll::RemoteAddr, r.remote_addr.to_string().into_bytes());
        d.set(Coll::UniqueId, r.request_id.as_bytes());
        d
    }

    /// `ARGS` spans `ARGS_GET` then `ARGS_POST`, pushed one after the other.
    fn join_args(&mut self) {
        let (a, _) = self.ranges[Coll::ArgsGet as usize];
        let (_, b) = self.ranges[Coll::ArgsPost as usize];
        self.ranges[Coll::Args as usize] = (a, b);
        let size: usize = self
            .members(Coll::Args)
            .iter()
            .map(|i| i.name.len() + i.value.len())
            .sum();
        self.set(Coll::ArgsCombinedSize, size.to_string().into_bytes());
    }
}

/// The collection whose members a variable reads (`ARGS_NAMES` reads `ARGS`'s names).
pub fn collection_of(c: Coll) -> Coll {
    match c {
        Coll::ArgsNames => Coll::Args,
        Coll::ArgsGetNames => Coll::ArgsGet,
        Coll::ArgsPostNames => Coll::ArgsPost,
        Coll::RequestHeadersNames => Coll::RequestHeaders,
        Coll::RequestCookiesNames => Coll::RequestCookies,
        Coll::FilesNames => Coll::Files,
        Coll::ResponseHeadersNames => Coll::ResponseHeaders,
        c => c,
    }
}

/// Whether a variable reads its collection's names rather than its values.
pub fn reads_names(c: Coll) -> bool {
    collection_of(c) != c
}

/// `a=1&b=2` as ModSecurity splits it: names and values URL-decoded to bytes (not to
/// UTF-8, so an overlong or invalid sequence stays for the rules to see), repeats kept.
pub fn form_args(s: &[u8]) -> Vec<Item> {
    s.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = split_pair(p);
            Item {
                name: decode(n),
                value: decode(v),
            }
        })
        .collect()
}

/// `%XX` sequences decoded (not `+`); invalid ones stay as they are.
fn percent_decoded(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            if let (Some(h), Some(l)) = (
                s.get(i + 1).and_then(|b| hex(*b)),
                s.get(i + 2).and_then(|b| hex(*b)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn decode(s: &[u8]) -> Box<[u8]> {
    match Transform::UrlDecode.apply(s) {
        Cow::Borrowed(b) => b.into(),
        Cow::Owned(v) => v.into(),
    }
}

/// `name=value` at the first `=`; without one, all name.
fn split_pair(p: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b'=', p) {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => (p, &b""[..]),
    }
}

fn cookie_items(v: &[u8]) -> Vec<Item> {
    v.split(|b| *b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = split_pair(p);
            Item {
                name: n.into(),
                value: v.into(),
            }
        })
        .collect()
}
