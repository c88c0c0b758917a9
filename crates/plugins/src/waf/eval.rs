//! Evaluating a compiled rule set over one transaction: phases in order, chains, `skipAfter`,
//! per-instance and `ctl` removals. Clean traffic is the common case, so a rule whose pattern
//! is in its chain's set is first checked against the union of the set's matches over each
//! whole collection: one scan per value and chain answers every such rule, and only a rule
//! whose pattern hit somewhere looks at values one by one.

use super::actions::{self, Flow};
use super::data::{collection_of, reads_names, Data};
use super::rule::{Op, Rule};
use super::ruleset::Ruleset;
use super::vars::{excluded, Coll, Sel};
use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

/// A name and a value, as bytes.
pub type Pair = (Box<[u8]>, Box<[u8]>);

/// Per (collection read, transformation chain): which of the chain's set patterns hit.
type Union = ((Coll, u16), Rc<[bool]>);

/// What an instance of the plugin sets on top of the rule set.
#[derive(Debug, Default)]
pub struct Policy {
    pub paranoia: u8,
    /// Rules removed for this instance, by index.
    pub off: Vec<bool>,
    /// Targets removed from rules for this instance, by rule index.
    pub skips: HashMap<u32, Vec<(Coll, Sel)>>,
    /// TX variables set before the first rule (the CRS's setup).
    pub init: Vec<Pair>,
}

/// A rule that matched and logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Hit {
    pub id: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub var: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(skip)]
    pub tags: Vec<Box<str>>,
}

/// A transformed value, cached per value and chain.
#[derive(Clone, Default)]
enum Tcache {
    #[default]
    Unset,
    Same,
    Out(Rc<[u8]>),
}

/// A transaction's mutable side.
#[derive(Default)]
pub struct State {
    pub tx: HashMap<Box<[u8]>, Vec<u8>>,
    pub ip: HashMap<Box<[u8]>, Vec<u8>>,
    pub global: HashMap<Box<[u8]>, Vec<u8>>,
    /// Per chain, per value key (`index * 2 + is_name`).
    tcache: Vec<Vec<Tcache>>,
    /// Per (collection read, chain, paranoia level): which set patterns hit any member.
    unions: Vec<Union>,
    /// Per value key: which raw-set patterns its bytes match (empty: none).
    raw_hits: Vec<Option<Rc<[bool]>>>,
    pub matched_var: (Vec<u8>, Vec<u8>),
    pub matched: Vec<(Vec<u8>, Vec<u8>)>,
    pub ctls: Vec<super::rule::Ctl>,
    pub engine_off: bool,
    pub allowed: bool,
    pub denied: Option<u64>,
    pub hits: Vec<Hit>,
    pub processor: Option<Box<str>>,
}

/// The read-only side of an evaluation.
pub struct Ctx<'a> {
    pub rs: &'a Ruleset,
    pub pol: &'a Policy,
    pub data: &'a Data,
}

impl State {
    pub fn new(pol: &Policy) -> State {
        let mut s = State::default();
        for (k, v) in &pol.init {
            s.tx.insert(k.clone(), v.to_vec());
        }
        s
    }

    /// Forgets what was cached about values, when the values change (a new body processor).
    pub fn reset_caches(&mut self) {
        self.tcache.clear();
        self.unions.clear();
        self.raw_hits.clear();
    }

    /// A TX variable as a number (0 when missing or not one).
    pub fn tx_num(&self, name: &str) -> i64 {
        self.tx
            .get(name.as_bytes())
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Runs phase `phase` (1 to 4).
pub fn phase(cx: &Ctx<'_>, st: &mut State, phase: u8) {
    let Some(list) = cx.rs.phases.get(usize::from(phase.wrapping_sub(1))) else {
        return;
    };
    let mut i = 0;
    while i < list.len() {
        if st.engine_off || st.allowed || st.denied.is_some() {
            return;
        }
        let ri = list[i];
        let r = &cx.rs.rules[ri as usize];
        if r.off || cx.pol.off.get(ri as usize).copied().unwrap_or(false) || removed(st, r) {
            i += 1;
            continue;
        }
        if !chain(cx, st, r, ri) {
            i += 1;
            continue;
        }
        match actions::run(cx, st, r) {
            Flow::Stop => return,
            Flow::Next => {}
        }
        i = match r.skip_after {
            Some(m) => cx.rs.markers[m as usize][usize::from(phase - 1)] as usize,
            None => i + 1 + r.skip as usize,
        };
    }
}

fn removed(st: &State, r: &Rule) -> bool {
    !st.ctls.is_empty() && st.ctls.iter().any(|c| super::ruleset::ctl_removes(c, r))
}

/// Whether `r` and every link chained to it match, in order.
fn chain(cx: &Ctx<'_>, st: &mut State, r: &Rule, ri: u32) -> bool {
    let mut link = Some(r);
    while let Some(l) = link {
        if !one(cx, st, l, ri, r) {
            return false;
        }
        link = l.next.as_deref();
    }
    true
}

/// Evaluates one link over its targets; records what matched.
fn one(cx: &Ctx<'_>, st: &mut State, r: &Rule, ri: u32, head: &Rule) -> bool {
    let mut found: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for t in &r.targets.take {
        if t.count {
            let n = count(cx, st, t.coll, &t.sel);
            let v = n.to_string().into_bytes();
            if test(cx, st, r, None, &v).is_some() {
                found.push((format!("&{}", t.coll.label()).into_bytes(), v));
            }
            continue;
        }
        if !t.coll.stable() {
            for (name, value) in unstable(st, t.coll, &t.sel) {
                if let Some(m) = test(cx, st, r, None, &value) {
                    found.push((label(t.coll, &name), m));
                }
            }
            continue;
        }
        if let Op::Set { idx, re } = &r.op {
            if !re.negated && !union_hits(cx, st, r.chain, t.coll, *idx) {
                continue;
            }
        }
        let names = reads_names(t.coll);
        let start = cx.data.start(t.coll);
        for (j, item) in cx.data.members(t.coll).iter().enumerate() {
            if !t.sel.takes(&item.name) || skipped(cx, st, r, ri, head, t.coll, &item.name) {
                continue;
            }
            let v = if names { &item.name } else { &item.value };
            let key = (start + j as u32) * 2 + u32::from(names);
            if let Some(m) = test(cx, st, r, Some(key), v) {
                found.push((label(t.coll, &item.name), m));
            }
        }
    }
    match found.last() {
        None => false,
        Some(last) => {
            st.matched_var = last.clone();
            st.matched = found;
            true
        }
    }
}

fn label(c: Coll, name: &[u8]) -> Vec<u8> {
    let mut l = c.label().as_bytes().to_vec();
    if !name.is_empty() {
        l.push(b':');
        l.extend_from_slice(name);
    }
    l
}

/// Whether the rule, its instance or a `ctl` leaves member `name` of `coll` out.
fn skipped(cx: &Ctx<'_>, st: &State, r: &Rule, ri: u32, head: &Rule, c: Coll, name: &[u8]) -> bool {
    use super::rule::Ctl;
    let c = collection_of(c);
    excluded(&r.targets.skip, c, name)
        || cx.pol.skips.get(&ri).is_some_and(|s| excluded(s, c, name))
        || st.ctls.iter().any(|ctl| match ctl {
            Ctl::RemoveTargetById(id, cc, sel) => {
                *id == head.id && excluded(std::slice::from_ref(&(*cc, sel.clone())), c, name)
            }
            Ctl::RemoveTargetByTag(tag, cc, sel) => {
                head.tags.iter().any(|t| t == tag)
                    && excluded(std::slice::from_ref(&(*cc, sel.clone())), c, name)
            }
            _ => false,
        })
}

fn count(cx: &Ctx<'_>, st: &State, c: Coll, sel: &Sel) -> usize {
    if c.stable() {
        cx.data
            .members(c)
            .iter()
            .filter(|i| sel.takes(&i.name))
            .count()
    } else {
        unstable(st, c, sel).len()
    }
}

/// Members of the collections rules change as they run.
fn unstable(st: &State, c: Coll, sel: &Sel) -> Vec<(Vec<u8>, Vec<u8>)> {
    let map = match c {
        Coll::Tx => &st.tx,
        Coll::Ip => &st.ip,
        Coll::Global => &st.global,
        Coll::MatchedVar => return vec![st.matched_var.clone()],
        Coll::MatchedVarName => {
            return vec![(Vec::new(), st.matched_var.0.clone())];
        }
        Coll::MatchedVars => {
            return st
                .matched
                .iter()
                .filter(|m| sel.takes(&m.0))
                .cloned()
                .collect()
        }
        Coll::MatchedVarsNames => {
            return st
                .matched
                .iter()
                .filter(|m| sel.takes(&m.0))
                .map(|m| (m.0.clone(), m.0.clone()))
                .collect()
        }
        _ => return Vec::new(),
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = map
        .iter()
        .filter(|(k, _)| sel.takes(k))
        .map(|(k, v)| (k.to_vec(), v.clone()))
        .collect();
    out.sort();
    out
}

/// The value after the rule's transformations; `Some` (that value) when the operator matches.
fn test(cx: &Ctx<'_>, st: &mut State, r: &Rule, key: Option<u32>, value: &[u8]) -> Option<Vec<u8>> {
    let t = transformed(cx, st, r.chain, key, value);
    let hit = match &r.op {
        Op::Set { re, .. } => re.matches(&t),
        Op::Fancy { re, negated } => {
            re.is_match(String::from_utf8_lossy(&t).as_ref())
                .unwrap_or(false)
                != *negated
        }
        Op::Expand {
            op,
            template,
            negated,
        } => actions::expanded_test(cx, st, r, op, template, &t) != *negated,
        Op::Plain(c) => c.matches(&t),
    };
    if !hit {
        return None;
    }
    if r.capture {
        actions::capture(st, &r.op, &t);
    }
    Some(t.to_vec())
}

/// A value after transformations: the value itself, a cached result, or a fresh one.
enum Val<'v> {
    Same(&'v [u8]),
    Cached(Rc<[u8]>),
    Fresh(Vec<u8>),
}

impl std::ops::Deref for Val<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Val::Same(v) => v,
            Val::Cached(v) => v,
            Val::Fresh(v) => v,
        }
    }
}

fn transformed<'v>(
    cx: &Ctx<'_>,
    st: &mut State,
    chain: u16,
    key: Option<u32>,
    value: &'v [u8],
) -> Val<'v> {
    let transforms = &cx.rs.chains[usize::from(chain)];
    if transforms.is_empty() {
        return Val::Same(value);
    }
    let apply = || {
        let mut v = Cow::Borrowed(value);
        for t in transforms {
            v = match v {
                Cow::Borrowed(b) => t.apply(b),
                Cow::Owned(o) => Cow::Owned(t.apply(&o).into_owned()),
            };
        }
        v
    };
    let Some(key) = key else {
        return match apply() {
            Cow::Borrowed(b) => Val::Same(b),
            Cow::Owned(o) => Val::Fresh(o),
        };
    };
    let per = cx.data.items.len() * 2;
    let slots = &mut st.tcache;
    if slots.len() <= usize::from(chain) {
        slots.resize(usize::from(chain) + 1, Vec::new());
    }
    let slot = &mut slots[usize::from(chain)];
    if slot.len() < per {
        slot.resize(per, Tcache::Unset);
    }
    if let Tcache::Unset = slot[key as usize] {
        let f = cx.data.feats.get(key as usize).copied().unwrap_or(u16::MAX);
        if transforms.iter().all(|t| t.keeps(f)) {
            slot[key as usize] = Tcache::Same;
        }
    }
    match &slot[key as usize] {
        Tcache::Same => Val::Same(value),
        Tcache::Out(o) => Val::Cached(o.clone()),
        Tcache::Unset => match apply() {
            Cow::Borrowed(b) => {
                slot[key as usize] = Tcache::Same;
                Val::Same(b)
            }
            Cow::Owned(o) => {
                let rc: Rc<[u8]> = o.into();
                slot[key as usize] = Tcache::Out(rc.clone());
                Val::Cached(rc)
            }
        },
    }
}

/// Whether pattern `idx` of `chain`'s set matches any member of `coll` (computed once per
/// collection and chain per transaction). `true` when the set cannot say.
fn union_hits(cx: &Ctx<'_>, st: &mut State, chain: u16, coll: Coll, idx: u32) -> bool {
    let Some(set) = cx.rs.set(chain, cx.pol.paranoia) else {
        return true;
    };
    let Some(&pos) = set.pos.get(idx as usize) else {
        return true;
    };
    if pos == u32::MAX {
        // Above this instance's paranoia level: not in its set, so matched one by one.
        return true;
    }
    if let Some((_, u)) = st.unions.iter().find(|(k, _)| *k == (coll, chain)) {
        return u[pos as usize];
    }
    let mut union = vec![false; set.set.len()];
    let mut buf = vec![false; set.set.len()];
    let names = reads_names(coll);
    let start = cx.data.start(coll);
    let raw = cx.rs.raw(cx.pol.paranoia);
    let transforms = &cx.rs.chains[usize::from(chain)];
    for (j, item) in cx.data.members(coll).iter().enumerate() {
        let v = if names { &item.name } else { &item.value };
        let key = (start + j as u32) * 2 + u32::from(names);
        let f = cx.data.feats.get(key as usize).copied().unwrap_or(u16::MAX);
        if let Some(raw) = raw.filter(|_| same_but_case(transforms, f)) {
            let bits = raw_hits(st, raw, key, v);
            if bits.is_empty() {
                continue;
            }
            let to_raw = &raw.pos[usize::from(chain)];
            for (i, sp) in set.pos.iter().enumerate() {
                let rp = to_raw.get(i).copied().unwrap_or(u32::MAX);
                if *sp != u32::MAX && (rp == u32::MAX || bits[rp as usize]) {
                    union[*sp as usize] = true;
                }
            }
            continue;
        }
        let t = transformed(cx, st, chain, Some(key), v);
        if set.set.is_match(&t) {
            buf.iter_mut().for_each(|b| *b = false);
            set.set.matches_read_at(&mut buf, &t, 0);
            for (u, b) in union.iter_mut().zip(&buf) {
                *u |= *b;
            }
        }
    }
    let hit = union[pos as usize];
    st.unions.push(((coll, chain), union.into()));
    hit
}

/// Whether `transforms` leave a value with features `f` as it is, but perhaps for its case.
fn same_but_case(transforms: &[super::transform::Transform], f: u16) -> bool {
    use super::transform::{features::UPPER, Transform::*};
    transforms.iter().all(|t| match t {
        Lowercase => true,
        CmdLine => t.keeps(f & !UPPER),
        other => other.keeps(f),
    })
}

/// Which raw-set patterns `v` (value key `key`) matches, scanned once per request.
fn raw_hits(st: &mut State, raw: &super::ruleset::RawSet, key: u32, v: &[u8]) -> Rc<[bool]> {
    let k = key as usize;
    if st.raw_hits.len() <= k {
        st.raw_hits.resize(k + 1, None);
    }
    if let Some(h) = &st.raw_hits[k] {
        return h.clone();
    }
    let h: Rc<[bool]> = if raw.set.is_match(v) {
        let mut buf = vec![false; raw.set.len()];
        raw.set.matches_read_at(&mut buf, v, 0);
        buf.into()
    } else {
        Rc::from(Vec::new())
    };
    st.raw_hits[k] = Some(h.clone());
    h
}
