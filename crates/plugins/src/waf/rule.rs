//! One SecLang rule compiled: its targets, transformation chain, operator and actions, so
//! that a transaction only evaluates, never parses.

use super::macros::Template;
use super::operator::{self, Compiled};
use super::seclang::{self, At};
use super::transform::Transform;
use super::vars::{Coll, Targets};

/// What a matching rule does to the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruptive {
    /// Nothing (also what `block` means in the CRS's anomaly-scoring mode: the verdict is
    /// rule 949110's).
    Pass,
    Deny,
    /// Stop evaluating: the rest of the transaction (`allow`), or of this phase
    /// (`allow:phase`).
    Allow {
        phase_only: bool,
    },
}

/// How a rule's operator is run.
#[derive(Debug)]
pub enum Op {
    /// An `@rx` that is also pattern `idx` of its transformation chain's set, so that one
    /// pass of the set over a value answers every such rule.
    Set {
        idx: u32,
        re: Compiled,
    },
    /// An `@rx` with look-around, which `regex` lacks: matched on its own.
    Fancy {
        re: fancy_regex::Regex,
        negated: bool,
    },
    Plain(Compiled),
    /// An operator whose parameter has macros (`@within %{tx.allowed_methods}`): the
    /// template parsed at load, expanded per transaction.
    Expand {
        op: Box<str>,
        template: Template,
        negated: bool,
    },
}

/// `setvar`: `tx.score=+%{tx.critical_anomaly_score}`, `!tx.foo`.
#[derive(Debug, Clone)]
pub struct SetVar {
    pub coll: Coll,
    pub name: Template,
    pub how: SetHow,
}

#[derive(Debug, Clone)]
pub enum SetHow {
    Set(Template),
    Add(Template),
    Sub(Template),
    Delete,
}

/// `ctl`: what a rule changes for the rest of its transaction.
#[derive(Debug, Clone)]
pub enum Ctl {
    RemoveById(u64, u64),
    RemoveByTag(Box<str>),
    RemoveTargetById(u64, Coll, super::vars::Sel),
    RemoveTargetByTag(Box<str>, Coll, super::vars::Sel),
    EngineOff,
    BodyProcessor(Box<str>),
}

#[derive(Debug)]
pub struct Rule {
    pub id: u64,
    pub at: At,
    pub phase: u8,
    pub targets: Targets,
    pub op: Op,
    /// Index of its transformation chain in the rule set.
    pub chain: u16,
    pub multi_match: bool,
    pub capture: bool,
    pub disruptive: Disruptive,
    pub setvars: Vec<SetVar>,
    pub ctls: Vec<Ctl>,
    /// A marker's index.
    pub skip_after: Option<u32>,
    pub skip: u32,
    pub msg: Option<Template>,
    pub logdata: Option<Template>,
    pub tags: Vec<Box<str>>,
    pub severity: Option<u8>,
    pub log: bool,
    /// The CRS paranoia level the rule belongs to (its `paranoia-level/N` tag), 1 without.
    pub paranoia: u8,
    /// Removed by `SecRuleRemoveById`/`ByTag` after it was loaded.
    pub off: bool,
    pub next: Option<Box<Rule>>,
}

/// What the compiler keeps between rules: interned transformation chains, the patterns of
/// each chain's set (with each one's paranoia level), markers by name.
pub struct Builder<'d> {
    /// Reads an `@pmFromFile` file by name.
    pub data: &'d dyn Fn(&str) -> Result<String, String>,
    pub chains: Vec<Vec<Transform>>,
    pub patterns: Vec<Vec<(u8, String)>>,
    pub marker_names: Vec<String>,
    pub defaults: [Disruptive; 5],
}

impl Builder<'_> {
    fn chain_id(&mut self, chain: Vec<Transform>) -> u16 {
        if let Some(i) = self.chains.iter().position(|c| *c == chain) {
            return i as u16;
        }
        self.chains.push(chain);
        self.patterns.push(Vec::new());
        (self.chains.len() - 1) as u16
    }

    fn marker(&mut self, name: &str) -> u32 {
        if let Some(i) = self.marker_names.iter().position(|m| m == name) {
            return i as u32;
        }
        self.marker_names.push(name.to_owned());
        (self.marker_names.len() - 1) as u32
    }

    /// Compiles `r` (and its chain); `head` carries the phase and paranoia level to chained
    /// conditions, which have none of their own.
    pub fn rule(&mut self, r: &seclang::Rule, head: Option<(u8, u8)>) -> Result<Rule, String> {
        let mut out = self.actions(&r.actions, r.at.clone(), head)?;
        out.targets = Targets::compile(&r.variables)?;
        out.op = self.operator(&r.operator, out.chain, out.paranoia)?;
        let mut next: Option<Box<Rule>> = None;
        for c in r.chained.iter().rev() {
            let mut link = self.rule(c, Some((out.phase, out.paranoia)))?;
            link.next = next.take();
            next = Some(Box::new(link));
        }
        out.next = next;
        Ok(out)
    }

    /// An action list alone (`SecAction`), as a rule that always matches.
    pub fn action(&mut self, acts: &[seclang::Action], at: At) -> Result<Rule, String> {
        let mut out = self.actions(acts, at, None)?;
        out.op = Op::Plain(Compiled {
            test: operator::Test::UnconditionalMatch,
            negated: false,
        });
        out.targets.take.push(super::vars::Target {
            coll: Coll::RequestMethod,
            sel: super::vars::Sel::All,
            count: false,
        });
        Ok(out)
    }

    fn operator(&mut self, op: &seclang::Operator, chain: u16, pl: u8) -> Result<Op, String> {
        match operator::compile_with(op, self.data) {
            Ok(
                re @ Compiled {
                    test: operator::Test::Rx(_),
                    ..
                },
            ) => {
                let set = &mut self.patterns[usize::from(chain)];
                set.push((pl, super::pcre::translate(&op.param).into_owned()));
                Ok(Op::Set {
                    idx: (set.len() - 1) as u32,
                    re,
                })
            }
            Ok(Compiled {
                test: operator::Test::Expand { op, template },
                negated,
            }) => Ok(Op::Expand {
                op,
                template: Template::parse(&template)?,
                negated,
            }),
            Ok(c) => Ok(Op::Plain(c)),
            Err(e) if op.name == "rx" => {
                // `regex` has no look-around; fancy-regex adds it (backtracking, but only
                // for these few patterns).
                let re = fancy_regex::Regex::new(&super::pcre::translate(&op.param))
                    .map_err(|f| format!("{e}; fancy-regex: {f}"))?;
                Ok(Op::Fancy {
                    re,
                    negated: op.negated,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn actions(
        &mut self,
        acts: &[seclang::Action],
        at: At,
        head: Option<(u8, u8)>,
    ) -> Result<Rule, String> {
        let mut transforms: Vec<Transform> = Vec::new();
        let mut r = Rule {
            id: 0,
            at,
            phase: head.map_or(2, |h| h.0),
            targets: Targets::default(),
            op: Op::Plain(Compiled {
                test: operator::Test::UnconditionalMatch,
                negated: false,
            }),
            chain: 0,
            multi_match: false,
            capture: false,
            disruptive: Disruptive::Pass,
            setvars: Vec::new(),
            ctls: Vec::new(),
            skip_after: None,
            skip: 0,
            msg: None,
            logdata: None,
            tags: Vec::new(),
            severity: None,
            log: true,
            paranoia: head.map_or(1, |h| h.1),
            off: false,
            next: None,
        };
        let mut disruptive = None;
        for a in acts {
            let v = a.value.as_deref().unwrap_or("");
            let bad = |why: &str| format!("{}:{v:?}: {why}", a.name);
            match a.name.as_str() {
                "id" => r.id = v.parse().map_err(|_| bad("not a number"))?,
                "phase" => {
                    r.phase = match v {
                        "1" => 1,
                        "2" | "request" => 2,
                        "3" => 3,
                        "4" | "response" => 4,
                        "5" | "logging" => {
                            return Err(bad("the logging phase is not run by this engine"))
                        }
                        _ => return Err(bad("not a phase")),
                    }
                }
                "t" if v == "none" => transforms.clear(),
                "t" => transforms
                    .push(Transform::named(v).ok_or_else(|| bad("unknown transformation"))?),
                "msg" => r.msg = Some(Template::parse(v)?),
                "logdata" => r.logdata = Some(Template::parse(v)?),
                "tag" => {
                    if let Some(n) = v.strip_prefix("paranoia-level/") {
                        r.paranoia = n.parse().map_err(|_| bad("not a paranoia level"))?;
                    }
                    r.tags.push(v.into());
                }
                "severity" => r.severity = Some(severity(v).ok_or_else(|| bad("not a severity"))?),
                "capture" => r.capture = true,
                "multiMatch" => r.multi_match = true,
                "log" | "auditlog" => r.log = true,
                "nolog" => r.log = false,
                "pass" => disruptive = Some(Disruptive::Pass),
                "deny" | "drop" | "redirect" => disruptive = Some(Disruptive::Deny),
                "block" => disruptive = Some(self.defaults[usize::from(r.phase)]),
                "allow" => {
                    disruptive = Some(Disruptive::Allow {
                        phase_only: v == "phase",
                    })
                }
                "setvar" => r.setvars.push(setvar(v).map_err(|e| bad(&e))?),
                "ctl" => {
                    if let Some(c) = ctl(v).map_err(|e| bad(&e))? {
                        r.ctls.push(c)
                    }
                }
                "skipAfter" => r.skip_after = Some(self.marker(v)),
                "skip" => r.skip = v.parse().map_err(|_| bad("not a number"))?,
                // Metadata, and what has no meaning in a transaction of this engine: no audit
                // log (the deny log replaces it), collections live as long as the
                // transaction, the status of a denial is the plugin's.
                "ver" | "rev" | "maturity" | "accuracy" | "noauditlog" | "chain" | "status"
                | "expirevar" | "initcol" => {}
                other => return Err(format!("action {other} is not supported by this engine")),
            }
        }
        r.disruptive = disruptive.unwrap_or(self.defaults[usize::from(r.phase)]);
        r.chain = self.chain_id(transforms);
        Ok(r)
    }
}

fn severity(v: &str) -> Option<u8> {
    Some(match v.to_ascii_uppercase().as_str() {
        "EMERGENCY" | "0" => 0,
        "ALERT" | "1" => 1,
        "CRITICAL" | "2" => 2,
        "ERROR" | "3" => 3,
        "WARNING" | "4" => 4,
        "NOTICE" | "5" => 5,
        "INFO" | "6" => 6,
        "DEBUG" | "7" => 7,
        _ => return None,
    })
}

fn setvar(v: &str) -> Result<SetVar, String> {
    let (delete, v) = match v.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (name, value) = match v.split_once('=') {
        Some((n, val)) => (n, Some(val)),
        None => (v, None),
    };
    let (coll, member) = name
        .split_once('.')
        .ok_or_else(|| "expected collection.name".to_owned())?;
    let coll = match Coll::named(coll) {
        Some(c @ (Coll::Tx | Coll::Ip | Coll::Global)) => c,
        _ => return Err(format!("setvar on {coll} is not supported")),
    };
    let name = Template::parse(&member.to_ascii_lowercase())?;
    let how = match (delete, value) {
        (true, _) => SetHow::Delete,
        (false, None) => SetHow::Set(Template::parse("1")?),
        (false, Some(val)) => {
            if let Some(n) = val.strip_prefix('+') {
                SetHow::Add(Template::parse(n)?)
            } else if let Some(n) = val.strip_prefix('-') {
                SetHow::Sub(Template::parse(n)?)
            } else {
                SetHow::Set(Template::parse(val)?)
            }
        }
    };
    Ok(SetVar { coll, name, how })
}

/// `Ok(None)` for controls of what this engine does not have (the audit log).
fn ctl(v: &str) -> Result<Option<Ctl>, String> {
    let (what, arg) = v
        .split_once('=')
        .ok_or_else(|| "expected name=value".to_owned())?;
    let id_range = |s: &str| -> Result<(u64, u64), String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(format!("{s:?} is not a rule id or range")),
        }
    };
    let target = |s: &str| -> Result<(Box<str>, Coll, super::vars::Sel), String> {
        let (who, var) = s
            .split_once(';')
            .ok_or_else(|| format!("{s:?}: expected id;VARIABLE"))?;
        let (c, sel) = Targets::exclusion(var)?;
        Ok((who.into(), c, sel))
    };
    Ok(Some(match what {
        "ruleRemoveById" => {
            let (a, b) = id_range(arg)?;
            Ctl::RemoveById(a, b)
        }
        "ruleRemoveByTag" => Ctl::RemoveByTag(arg.into()),
        "ruleRemoveTargetById" => {
            let (id, c, sel) = target(arg)?;
            let id = id.parse().map_err(|_| format!("{id:?} is not a rule id"))?;
            Ctl::RemoveTargetById(id, c, sel)
        }
        "ruleRemoveTargetByTag" => {
            let (tag, c, sel) = target(arg)?;
            Ctl::RemoveTargetByTag(tag, c, sel)
        }
        "ruleEngine" if arg.eq_ignore_ascii_case("off") => Ctl::EngineOff,
        "ruleEngine" => return Ok(None),
        "requestBodyProcessor" => Ctl::BodyProcessor(arg.to_ascii_uppercase().into()),
        "auditLogParts" | "auditEngine" | "forceRequestBodyVariable" => return Ok(None),
        other => return Err(format!("ctl:{other} is not supported by this engine")),
    }))
}
