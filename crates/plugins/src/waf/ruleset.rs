//! A whole rule set compiled at load: its rules in phase order, the markers `skipAfter`
//! jumps to, and per transformation chain one `RegexSet` of every `@rx` under that chain, so
//! that a value is scanned once for all of them (built per paranoia level, lazily: a PL 1
//! instance does not pay for PL 2-4 patterns).

use super::rule::{Builder, Ctl, Disruptive, Rule};
use super::seclang::{self, At, Directive};
use super::transform::Transform;
use super::vars::{Coll, Sel, Targets};
use regex::bytes::{RegexSet, RegexSetBuilder};
use std::sync::OnceLock;

/// A rule file that did not compile: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub at: At,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// One chain's patterns of rules up to a paranoia level, as a set; `pos[idx]` is where
/// pattern `idx` of the chain is in the set (`u32::MAX`: above this level).
pub struct PlSet {
    pub set: RegexSet,
    pub pos: Vec<u32>,
}

/// Every chain's patterns up to a paranoia level as one set, matched on values as they came:
/// for a value that a chain's transformations leave alone (but for case: patterns under
/// `lowercase` are in it case-insensitively), one scan answers every chain at once. Its
/// matches are a superset of the chain's own, which is all a prefilter needs.
pub struct RawSet {
    pub set: RegexSet,
    /// Per chain, per pattern of the chain: its place in `set` (`u32::MAX`: not in it).
    pub pos: Vec<Vec<u32>>,
}

pub struct Ruleset {
    pub rules: Vec<Rule>,
    /// Rule indexes per phase (1 to 4 at 0 to 3), in load order.
    pub phases: [Vec<u32>; 4],
    /// Per marker, the position in each phase's list of the first rule after it.
    pub markers: Vec<[u32; 4]>,
    pub chains: Vec<Vec<Transform>>,
    patterns: Vec<Vec<(u8, String)>>,
    sets: Vec<[OnceLock<Option<PlSet>>; 4]>,
    raw: [OnceLock<Option<RawSet>>; 4],
}

impl Ruleset {
    /// Compiles `files` (name, text), in order; `data` reads `@pmFromFile` files.
    pub fn compile(
        files: &[(&str, &str)],
        data: &dyn Fn(&str) -> Result<String, String>,
    ) -> Result<Ruleset, CompileError> {
        let mut b = Builder {
            data,
            chains: Vec::new(),
            patterns: Vec::new(),
            marker_names: Vec::new(),
            defaults: [Disruptive::Pass; 5],
        };
        let mut rules: Vec<Rule> = Vec::new();
        let mut phases: [Vec<u32>; 4] = Default::default();
        let mut markers: Vec<Option<[u32; 4]>> = Vec::new();
        let mut skip_at: Vec<At> = Vec::new();
        let mut later: Vec<(At, String, Vec<String>)> = Vec::new();
        for (name, text) in files {
            let directives = seclang::parse(name, text).map_err(|e| CompileError {
                at: e.at,
                message: e.message,
            })?;
            for d in directives {
                let (at, compiled) = match d {
                    Directive::Rule(r) => (r.at.clone(), b.rule(&r, None)),
                    Directive::Action { at, actions } => (at.clone(), b.action(&actions, at)),
                    Directive::Marker { name, .. } => {
                        let i = b.marker_names.iter().position(|m| *m == name);
                        let i = i.unwrap_or_else(|| {
                            b.marker_names.push(name);
                            b.marker_names.len() - 1
                        });
                        markers.resize(b.marker_names.len(), None);
                        markers[i] = Some(phases.each_ref().map(|p| p.len() as u32));
                        continue;
                    }
                    Directive::Other { at, name, args } => {
                        other(&mut b, &at, &name, &args, &mut later)?;
                        continue;
                    }
                };
                let rule = compiled.map_err(|message| CompileError {
                    at: at.clone(),
                    message,
                })?;
                if rule.skip_after.is_some() {
                    skip_at.push(at);
                }
                phases[usize::from(rule.phase - 1)].push(rules.len() as u32);
                rules.push(rule);
            }
        }
        markers.resize(b.marker_names.len(), None);
        let mut resolved = Vec::with_capacity(markers.len());
        for (i, m) in markers.into_iter().enumerate() {
            match m {
                Some(m) => resolved.push(m),
                None => {
                    let name = &b.marker_names[i];
                    let at = rules
                        .iter()
                        .zip(0..)
                        .find(|(r, _)| r.skip_after == Some(i as u32))
                        .map_or_else(|| skip_at.first().cloned(), |(r, _)| Some(r.at.clone()));
                    return Err(CompileError {
                        at: at.unwrap_or(At {
                            file: String::new(),
                            line: 0,
                        }),
                        message: format!("skipAfter:{name}, but no SecMarker {name} follows"),
                    });
                }
            }
        }
        for (at, name, args) in later {
            apply_update(&mut rules, &name, &args).map_err(|message| CompileError {
                at: at.clone(),
                message,
            })?;
        }
        let sets = b.chains.iter().map(|_| Default::default()).collect();
        Ok(Ruleset {
            rules,
            phases,
            markers: resolved,
            chains: b.chains,
            patterns: b.patterns,
            sets,
            raw: Default::default(),
        })
    }

    /// The set of chain `chain`'s patterns up to paranoia level `pl`, built on first use.
    pub fn set(&self, chain: u16, pl: u8) -> Option<&PlSet> {
        let pl = pl.clamp(1, 4);
        let slot = self
            .sets
            .get(usize::from(chain))?
            .get(usize::from(pl - 1))?;
        slot.get_or_init(|| {
            let pats = self.patterns.get(usize::from(chain))?;
            let mut pos = vec![u32::MAX; pats.len()];
            let mut chosen = Vec::new();
            for (i, (p, pat)) in pats.iter().enumerate() {
                if *p <= pl {
                    pos[i] = chosen.len() as u32;
                    chosen.push(pat.as_str());
                }
            }
            if chosen.is_empty() {
                return None;
            }
            // Each pattern compiled alone at load, so the set cannot fail but by size.
            let set = RegexSetBuilder::new(chosen)
                .size_limit(512 << 20)
                .dfa_size_limit(64 << 20)
                .build()
                .ok()?;
            Some(PlSet { set, pos })
        })
        .as_ref()
    }

    /// The raw set up to paranoia level `pl`, built on first use.
    pub fn raw(&self, pl: u8) -> Option<&RawSet> {
        let pl = pl.clamp(1, 4);
        self.raw[usize::from(pl - 1)]
            .get_or_init(|| {
                use super::transform::Transform::*;
                let mut pats: Vec<String> = Vec::new();
                let mut pos = Vec::with_capacity(self.chains.len());
                for (chain, list) in self.chains.iter().zip(&self.patterns) {
                    let never_same = chain
                        .iter()
                        .any(|t| matches!(t, HexEncode | Length | Sha1 | Base64Decode));
                    let fold = chain.iter().any(|t| matches!(t, Lowercase | CmdLine));
                    let mut p = vec![u32::MAX; list.len()];
                    for (i, (level, pat)) in list.iter().enumerate() {
                        if never_same || *level > pl {
                            continue;
                        }
                        p[i] = pats.len() as u32;
                        pats.push(if fold {
                            format!("(?i:{pat})")
                        } else {
                            pat.clone()
                        });
                    }
                    pos.push(p);
                }
                let set = RegexSetBuilder::new(&pats)
                    .size_limit(1 << 30)
                    .dfa_size_limit(256 << 20)
                    .build()
                    .ok()?;
                Some(RawSet { set, pos })
            })
            .as_ref()
    }

    /// Builds the sets of paranoia level `pl` now, so that no request pays for it.
    pub fn warm(&self, pl: u8) {
        for c in 0..self.chains.len() {
            let _ = self.set(c as u16, pl);
        }
        let _ = self.raw(pl);
    }

    /// The indexes of rules whose id is in `a..=b`, or that carry `tag`.
    pub fn select(&self, ids: Option<(u64, u64)>, tag: Option<&str>) -> Vec<u32> {
        (0..self.rules.len() as u32)
            .filter(|i| {
                let r = &self.rules[*i as usize];
                ids.is_some_and(|(a, b)| (a..=b).contains(&r.id))
                    || tag.is_some_and(|t| r.tags.iter().any(|x| &**x == t))
            })
            .collect()
    }
}

/// Directives other than rules, actions and markers: `SecDefaultAction` now, removals and
/// target updates once every rule is in (`later`); ModSecurity's engine settings are the
/// plugin's config here, so they are refused by name.
fn other(
    b: &mut Builder<'_>,
    at: &At,
    name: &str,
    args: &[String],
    later: &mut Vec<(At, String, Vec<String>)>,
) -> Result<(), CompileError> {
    let err = |message: String| CompileError {
        at: at.clone(),
        message,
    };
    match name {
        "SecComponentSignature" | "SecCollectionTimeout" => Ok(()),
        "SecDefaultAction" => {
            let [acts] = args else {
                return Err(err("SecDefaultAction takes one argument".into()));
            };
            let acts = seclang::parse(&at.file, &format!("SecAction \"{acts}\""))
                .ok()
                .and_then(|d| match d.into_iter().next() {
                    Some(Directive::Action { actions, .. }) => Some(actions),
                    _ => None,
                })
                .ok_or_else(|| err("SecDefaultAction: unreadable actions".into()))?;
            let rule = b.action(&acts, at.clone()).map_err(err)?;
            b.defaults[usize::from(rule.phase)] = rule.disruptive;
            Ok(())
        }
        "SecRuleRemoveById"
        | "SecRuleRemoveByTag"
        | "SecRuleUpdateTargetById"
        | "SecRuleUpdateTargetByTag" => {
            later.push((at.clone(), name.to_owned(), args.to_vec()));
            Ok(())
        }
        _ => Err(err(format!(
            "{name} is not supported here (engine settings are the waf plugin's config)"
        ))),
    }
}

fn apply_update(rules: &mut [Rule], name: &str, args: &[String]) -> Result<(), String> {
    match name {
        "SecRuleRemoveById" => {
            for a in args {
                let (x, y) = a.split_once('-').unwrap_or((a, a));
                let (x, y): (u64, u64) = match (x.parse(), y.parse()) {
                    (Ok(x), Ok(y)) => (x, y),
                    _ => return Err(format!("{a:?} is not a rule id or range")),
                };
                for r in rules.iter_mut().filter(|r| (x..=y).contains(&r.id)) {
                    r.off = true;
                }
            }
        }
        "SecRuleRemoveByTag" => {
            for r in rules
                .iter_mut()
                .filter(|r| r.tags.iter().any(|t| args.iter().any(|a| **t == **a)))
            {
                r.off = true;
            }
        }
        _ => {
            let [who, targets] = args else {
                return Err(format!("{name} takes a rule and a target list"));
            };
            let mut skips: Vec<(Coll, Sel)> = Vec::new();
            for t in targets.split('|') {
                let t = t.trim_start_matches('!');
                skips.push(Targets::exclusion(t)?);
            }
            let by_id = name.ends_with("ById");
            let id: Option<u64> = by_id.then(|| who.parse().ok()).flatten();
            if by_id && id.is_none() {
                return Err(format!("{who:?} is not a rule id"));
            }
            for r in rules.iter_mut().filter(|r| match id {
                Some(id) => r.id == id,
                None => r.tags.iter().any(|t| **t == **who),
            }) {
                r.targets.skip.extend(skips.iter().cloned());
            }
        }
    }
    Ok(())
}

/// Whether `ctl` removes rule `r` (by id or tag).
pub fn ctl_removes(ctl: &Ctl, r: &Rule) -> bool {
    match ctl {
        Ctl::RemoveById(a, b) => (*a..=*b).contains(&r.id),
        Ctl::RemoveByTag(t) => r.tags.iter().any(|x| x == t),
        _ => false,
    }
}
