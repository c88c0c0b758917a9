//! SecLang's variables compiled at load: which collection of the transaction a rule looks
//! at (`ARGS`, `REQUEST_HEADERS`, `TX`...), which members (`ARGS:id`, `TX:/^foo/`), and
//! whether it counts them (`&ARGS`).

use super::seclang::{Selector, Variable};
use regex::bytes::Regex;

/// A collection (or a single value, which is a collection of one) of the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coll {
    Args,
    ArgsGet,
    ArgsPost,
    ArgsNames,
    ArgsGetNames,
    ArgsPostNames,
    ArgsCombinedSize,
    RequestHeaders,
    RequestHeadersNames,
    RequestCookies,
    RequestCookiesNames,
    Files,
    FilesNames,
    FilesSizes,
    FilesCombinedSize,
    MultipartPartHeaders,
    MultipartStrictError,
    MultipartUnmatchedBoundary,
    Xml,
    RequestUri,
    RequestUriRaw,
    RequestFilename,
    RequestBasename,
    RequestLine,
    RequestMethod,
    RequestProtocol,
    QueryString,
    RequestBody,
    RequestBodyLength,
    RemoteAddr,
    ReqbodyProcessor,
    ReqbodyError,
    ReqbodyErrorMsg,
    UniqueId,
    Duration,
    ResponseBody,
    ResponseStatus,
    ResponseHeaders,
    ResponseHeadersNames,
    ResponseContentType,
    ResponseContentLength,
    ResponseProtocol,
    Tx,
    /// Persistent collections in ModSecurity (`initcol`); here they live as long as the
    /// transaction: Gatehouse's bans and CC protection keep per-client state instead.
    Ip,
    Global,
    MatchedVar,
    MatchedVarName,
    MatchedVars,
    MatchedVarsNames,
}

impl Coll {
    pub fn named(name: &str) -> Option<Coll> {
        use Coll::*;
        Some(match name.to_ascii_uppercase().as_str() {
            "ARGS" => Args,
            "ARGS_GET" => ArgsGet,
            "ARGS_POST" => ArgsPost,
            "ARGS_NAMES" => ArgsNames,
            "ARGS_GET_NAMES" => ArgsGetNames,
            "ARGS_POST_NAMES" => ArgsPostNames,
            "ARGS_COMBINED_SIZE" => ArgsCombinedSize,
            "REQUEST_HEADERS" => RequestHeaders,
            "REQUEST_HEADERS_NAMES" => RequestHeadersNames,
            "REQUEST_COOKIES" => RequestCookies,
            "REQUEST_COOKIES_NAMES" => RequestCookiesNames,
            "FILES" => Files,
            "FILES_NAMES" => FilesNames,
            "FILES_SIZES" => FilesSizes,
            "FILES_COMBINED_SIZE" => FilesCombinedSize,
            "MULTIPART_PART_HEADERS" => MultipartPartHeaders,
            "MULTIPART_STRICT_ERROR" => MultipartStrictError,
            "MULTIPART_UNMATCHED_BOUNDARY" => MultipartUnmatchedBoundary,
            "XML" => Xml,
            "REQUEST_URI" => RequestUri,
            "REQUEST_URI_RAW" => RequestUriRaw,
            "REQUEST_FILENAME" => RequestFilename,
            "REQUEST_BASENAME" => RequestBasename,
            "REQUEST_LINE" => RequestLine,
            "REQUEST_METHOD" => RequestMethod,
            "REQUEST_PROTOCOL" => RequestProtocol,
            "QUERY_STRING" => QueryString,
            "REQUEST_BODY" => RequestBody,
            "REQUEST_BODY_LENGTH" => RequestBodyLength,
            "REMOTE_ADDR" => RemoteAddr,
            "REQBODY_PROCESSOR" => ReqbodyProcessor,
            "REQBODY_ERROR" => ReqbodyError,
            "REQBODY_ERROR_MSG" => ReqbodyErrorMsg,
            "UNIQUE_ID" => UniqueId,
            "DURATION" => Duration,
            "RESPONSE_BODY" => ResponseBody,
            "RESPONSE_STATUS" => ResponseStatus,
            "RESPONSE_HEADERS" => ResponseHeaders,
            "RESPONSE_HEADERS_NAMES" => ResponseHeadersNames,
            "RESPONSE_CONTENT_TYPE" => ResponseContentType,
            "RESPONSE_CONTENT_LENGTH" => ResponseContentLength,
            "RESPONSE_PROTOCOL" => ResponseProtocol,
            "TX" => Tx,
            "IP" => Ip,
            "GLOBAL" => Global,
            "MATCHED_VAR" => MatchedVar,
            "MATCHED_VAR_NAME" => MatchedVarName,
            "MATCHED_VARS" => MatchedVars,
            "MATCHED_VARS_NAMES" => MatchedVarsNames,
            _ => return None,
        })
    }

    /// The name the deny log shows (`ARGS:q`).
    pub fn label(self) -> &'static str {
        use Coll::*;
        match self {
            Args | ArgsGet | ArgsPost => "ARGS",
            ArgsNames | ArgsGetNames | ArgsPostNames => "ARGS_NAMES",
            RequestHeaders => "REQUEST_HEADERS",
            RequestHeadersNames => "REQUEST_HEADERS_NAMES",
            RequestCookies => "REQUEST_COOKIES",
            RequestCookiesNames => "REQUEST_COOKIES_NAMES",
            Files => "FILES",
            FilesNames => "FILES_NAMES",
            Xml => "XML",
            RequestUri => "REQUEST_URI",
            RequestUriRaw => "REQUEST_URI_RAW",
            RequestFilename => "REQUEST_FILENAME",
            RequestBasename => "REQUEST_BASENAME",
            RequestLine => "REQUEST_LINE",
            RequestMethod => "REQUEST_METHOD",
            RequestProtocol => "REQUEST_PROTOCOL",
            QueryString => "QUERY_STRING",
            RequestBody => "REQUEST_BODY",
            ResponseBody => "RESPONSE_BODY",
            ResponseHeaders => "RESPONSE_HEADERS",
            Tx => "TX",
            MultipartPartHeaders => "MULTIPART_PART_HEADERS",
            _ => "VAR",
        }
    }

    /// Whether its values are the same for every rule of a transaction's request phases, so
    /// that their transformations and pattern matches can be computed once and reused.
    pub fn stable(self) -> bool {
        !matches!(
            self,
            Coll::Tx
                | Coll::Ip
                | Coll::Global
                | Coll::MatchedVar
                | Coll::MatchedVarName
                | Coll::MatchedVars
                | Coll::MatchedVarsNames
                | Coll::Duration
        )
    }
}

/// Which members of a collection.
#[derive(Debug, Clone)]
pub enum Sel {
    All,
    /// Lower-cased; compared case-insensitively, as ModSecurity does.
    Name(Box<[u8]>),
    Regex(Regex),
}

impl Sel {
    pub fn takes(&self, name: &[u8]) -> bool {
        match self {
            Sel::All => true,
            Sel::Name(n) => n.eq_ignore_ascii_case(name),
            Sel::Regex(re) => re.is_match(name),
        }
    }

    pub fn parse(sel: Option<&Selector>) -> Result<Sel, String> {
        Ok(match sel {
            None => Sel::All,
            Some(Selector::Name(n)) => Sel::Name(n.to_ascii_lowercase().into_bytes().into()),
            Some(Selector::Regex(r)) => Sel::Regex(
                regex::bytes::RegexBuilder::new(&super::pcre::translate(r))
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| format!("selector /{r}/: {e}"))?,
            ),
        })
    }
}

/// One variable of a rule: `&ARGS:foo` is `{coll: Args, sel: Name(foo), count: true}`.
#[derive(Debug, Clone)]
pub struct Target {
    pub coll: Coll,
    pub sel: Sel,
    pub count: bool,
}

/// A rule's variables: those it looks at, and those it leaves out (`!ARGS:password`).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub take: Vec<Target>,
    pub skip: Vec<(Coll, Sel)>,
}

impl Targets {
    pub fn compile(vars: &[Variable]) -> Result<Targets, String> {
        let mut t = Targets::default();
        for v in vars {
            let coll = Coll::named(&v.name)
                .ok_or_else(|| format!("variable {} is not supported by this engine", v.name))?;
            // XML is matched on its text and attribute values, not by XPath: the CRS only
            // ever asks for all of them (`XML:/*`, `XML://@*`).
            let sel = match (coll, &v.selector) {
                (Coll::Xml, Some(Selector::Name(p))) if p == "/*" || p == "//@*" => Sel::All,
                (Coll::Xml, Some(other)) => {
                    return Err(format!(
                        "XML:{other:?}: only /* and //@* are supported (no XPath)"
                    ))
                }
                (_, s) => Sel::parse(s.as_ref())?,
            };
            if v.exclude {
                t.skip.push((coll, sel));
            } else {
                t.take.push(Target {
                    coll,
                    sel,
                    count: v.count,
                });
            }
        }
        Ok(t)
    }

    /// Parses `ARGS:password` or `REQUEST_COOKIES:/^sess/` (an exclusion's target).
    pub fn exclusion(spec: &str) -> Result<(Coll, Sel), String> {
        let (name, sel) = match spec.split_once(':') {
            Some((n, s)) => (n, Some(s)),
            None => (spec, None),
        };
        let coll = Coll::named(name).ok_or_else(|| format!("{name:?} is not a variable"))?;
        let sel = match sel {
            None => None,
            Some(s) if s.len() > 1 && s.starts_with('/') && s.ends_with('/') => {
                Some(Selector::Regex(s[1..s.len() - 1].to_owned()))
            }
            Some(s) => Some(Selector::Name(s.to_owned())),
        };
        Ok((coll, Sel::parse(sel.as_ref())?))
    }
}

/// Whether an exclusion `(coll, sel)` covers member `name` of `of`. `ARGS` exclusions also
/// cover `ARGS_GET`/`ARGS_POST` members, and the reverse.
pub fn excluded(skip: &[(Coll, Sel)], of: Coll, name: &[u8]) -> bool {
    skip.iter()
        .any(|(c, s)| same_family(*c, of) && s.takes(name))
}

fn same_family(a: Coll, b: Coll) -> bool {
    use Coll::*;
    let fam = |c| match c {
        Args | ArgsGet | ArgsPost => 1,
        ArgsNames | ArgsGetNames | ArgsPostNames => 2,
        _ => 0,
    };
    a == b || (fam(a) != 0 && fam(a) == fam(b))
}
