//! What a matching rule does: `setvar`, `ctl`, the deny log's hit, its disruptive action;
//! and macro expansion, which those and `@within %{tx...}`-style operators need.

use super::eval::{Ctx, Hit, State};
use super::macros::{member_sel, Part, Template};
use super::operator::{self, Test};
use super::rule::{Ctl, Disruptive, Op, Rule, SetHow};
use super::seclang::Operator;
use super::vars::Coll;

/// Whether evaluation goes on after a rule's actions.
pub enum Flow {
    Next,
    Stop,
}

/// The most bytes of a matched value the deny log keeps.
const VALUE_MAX: usize = 64;

/// Runs the actions of `r` (whose chain matched) and of its chained links.
pub fn run(cx: &Ctx<'_>, st: &mut State, r: &Rule) -> Flow {
    let mut link = Some(r);
    while let Some(l) = link {
        for sv in &l.setvars {
            setvar(cx, st, r, sv);
        }
        for c in &l.ctls {
            match c {
                Ctl::EngineOff => st.engine_off = true,
                Ctl::BodyProcessor(p) => st.processor = Some(p.clone()),
                other => st.ctls.push(other.clone()),
            }
        }
        link = l.next.as_deref();
    }
    if r.log && r.id != 0 {
        let msg = r
            .msg
            .as_ref()
            .map(|m| expand(cx, st, r, m))
            .unwrap_or_default();
        let (var, value) = &st.matched_var;
        st.hits.push(Hit {
            id: r.id,
            msg: String::from_utf8_lossy(&msg).into_owned(),
            var: String::from_utf8_lossy(var).into_owned(),
            value: truncate(value),
            tags: r.tags.clone(),
        });
    }
    match r.disruptive {
        Disruptive::Pass => Flow::Next,
        Disruptive::Deny => {
            st.denied = Some(r.id);
            Flow::Stop
        }
        Disruptive::Allow { phase_only } => {
            st.allowed = !phase_only;
            Flow::Stop
        }
    }
}

fn truncate(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(&v[..v.len().min(VALUE_MAX)]).into_owned();
    if v.len() > VALUE_MAX {
        s + "…"
    } else {
        s
    }
}

fn setvar(cx: &Ctx<'_>, st: &mut State, r: &Rule, sv: &super::rule::SetVar) {
    let name: Box<[u8]> = expand(cx, st, r, &sv.name).to_ascii_lowercase().into();
    let num = |st: &State, t: &Template| -> i64 {
        std::str::from_utf8(&expand(cx, st, r, t))
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let new = match &sv.how {
        SetHow::Delete => None,
        SetHow::Set(t) => Some(expand(cx, st, r, t)),
        SetHow::Add(t) | SetHow::Sub(t) => {
            let d = num(st, t);
            let map = collection(st, sv.coll);
            let old: i64 = map
                .get(&name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let n = if matches!(sv.how, SetHow::Add(_)) {
                old.saturating_add(d)
            } else {
                old.saturating_sub(d)
            };
            Some(n.to_string().into_bytes())
        }
    };
    let map = collection(st, sv.coll);
    match new {
        Some(v) => {
            map.insert(name, v);
        }
        None => {
            map.remove(&name);
        }
    }
}

fn collection(st: &mut State, c: Coll) -> &mut std::collections::HashMap<Box<[u8]>, Vec<u8>> {
    match c {
        Coll::Ip => &mut st.ip,
        Coll::Global => &mut st.global,
        _ => &mut st.tx,
    }
}

/// `t` with its macros replaced by the transaction's values (empty when missing).
pub fn expand(cx: &Ctx<'_>, st: &State, r: &Rule, t: &Template) -> Vec<u8> {
    if let Some(l) = t.literal() {
        return l.to_vec();
    }
    let mut out = Vec::new();
    for p in &t.0 {
        match p {
            Part::Lit(l) => out.extend_from_slice(l),
            Part::RuleId => out.extend_from_slice(r.id.to_string().as_bytes()),
            Part::RuleMsg => {
                if let Some(m) = r.msg.as_ref().filter(|m| !m.0.iter().any(is_msg)) {
                    out.extend(expand(cx, st, r, m));
                }
            }
            Part::Var(c, member) => out.extend_from_slice(&lookup(cx, st, *c, member)),
        }
    }
    out
}

fn is_msg(p: &Part) -> bool {
    matches!(p, Part::RuleMsg)
}

fn lookup(cx: &Ctx<'_>, st: &State, c: Coll, member: &Option<Box<[u8]>>) -> Vec<u8> {
    let first = |m: &std::collections::HashMap<Box<[u8]>, Vec<u8>>| {
        member
            .as_ref()
            .and_then(|k| m.get(k))
            .cloned()
            .unwrap_or_default()
    };
    match c {
        Coll::Tx => first(&st.tx),
        Coll::Ip => first(&st.ip),
        Coll::Global => first(&st.global),
        Coll::MatchedVar => st.matched_var.1.clone(),
        Coll::MatchedVarName => st.matched_var.0.clone(),
        c => {
            let sel = member_sel(member);
            cx.data
                .members(c)
                .iter()
                .find(|i| sel.takes(&i.name))
                .map(|i| i.value.to_vec())
                .unwrap_or_default()
        }
    }
}

/// An operator whose parameter has macros: expanded, then compiled and run (these are the
/// cheap comparisons; `@rx` and `@pm` never take macros).
pub fn expanded_test(
    cx: &Ctx<'_>,
    st: &State,
    r: &Rule,
    op: &str,
    template: &Template,
    value: &[u8],
) -> bool {
    let param = String::from_utf8_lossy(&expand(cx, st, r, template)).into_owned();
    let o = Operator {
        name: op.to_owned(),
        negated: false,
        param,
    };
    match operator::compile_with(&o, &|_| Err("no files here".into())) {
        Ok(c) if !matches!(c.test, Test::Expand { .. }) => c.matches(value),
        _ => false,
    }
}

/// `capture`: the pattern's groups into `TX:0`..`TX:9`.
pub fn capture(st: &mut State, op: &Op, value: &[u8]) {
    let re = match op {
        Op::Set { re, .. } | Op::Plain(re) => match &re.test {
            Test::Rx(re) => re,
            _ => return,
        },
        Op::Fancy { .. } | Op::Expand { .. } => return,
    };
    let Some(caps) = re.captures(value) else {
        return;
    };
    for i in 0..10usize {
        let k: Box<[u8]> = i.to_string().into_bytes().into();
        match caps.get(i) {
            Some(m) => {
                st.tx.insert(k, m.as_bytes().to_vec());
            }
            None => {
                st.tx.remove(&k);
            }
        }
    }
}
