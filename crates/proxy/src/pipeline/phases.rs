//! Plugin phases: the request phases (`rewrite`, `access`, `upstream_request`) run over one
//! [`RequestCtx`] built from the request's state, and the `response` phase on every response
//! head. What runs after the head (body filters, `log`) is in `finale`.

use super::state::{PluginState, RequestState, Routed};
use super::subrequest::Gateway;
use crate::body::RespBody;
use crate::errors::error_body;
use crate::headers::X_REQUEST_ID;
use crate::observe::{Exchange, PluginStep};
use bytes::Bytes;
use gatehouse_plugin_api::{ErrorMessage, Flow, Plugin, RequestCtx, ResponseCtx};
use gatehouse_runtime::plugins::{AuthGroup, Chain, ChainEntry};
use gatehouse_runtime::snapshot::Snapshot;
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

#[derive(Clone, Copy)]
pub enum Phase {
    Rewrite,
    Access,
    UpstreamRequest,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Rewrite => "rewrite",
            Phase::Access => "access",
            Phase::UpstreamRequest => "upstream_request",
        }
    }
}

/// A plugin's answer that ends the request: the chain entry that gave it, and the response.
pub type Answer = (usize, Response<Bytes>);

/// Runs `phases` in order over the request head `parts`; the first plugin that answers ends
/// them. What the plugins decide (consumer, body limit, upstream, headers, holds, state) stays
/// in the request's plugin state.
pub async fn run(
    phases: &[Phase],
    parts: &mut Parts,
    plugins: &mut PluginState,
    rec: &mut Exchange,
    client_ip: IpAddr,
    routed: &Routed<'_>,
    snap: &Arc<Snapshot>,
) -> Result<(), Answer> {
    let chain = &routed.route.plugins;
    let gateway = Gateway { snap };
    // The one place a RequestCtx is made.
    let mut ctx = RequestCtx {
        parts,
        client_ip,
        route: &routed.route.name,
        service: &routed.service.name,
        priority_class: routed.route.priority_class,
        consumer: plugins.consumer.take(),
        response_headers: &mut plugins.response_headers,
        holds: &mut plugins.holds,
        body_limit: plugins.body_limit,
        state: &mut plugins.state,
        body: plugins.body.as_ref(),
        body_partial: plugins.body_partial,
        upstream: plugins.upstream.take(),
        variant: plugins.variant.take(),
        keep_copies: plugins.keep_copies,
        gateway: &gateway,
    };
    let mut steps = rec.decision.as_mut().map(|d| &mut d.plugins);
    let mut result = Ok(());
    for phase in phases {
        result = run_phase(chain, &mut ctx, *phase, steps.as_deref_mut()).await;
        if result.is_err() {
            break;
        }
    }
    plugins.consumer = ctx.consumer.take();
    plugins.upstream = ctx.upstream.take();
    plugins.variant = ctx.variant.take();
    plugins.keep_copies = ctx.keep_copies;
    plugins.body_limit = ctx.body_limit;
    result
}

/// Runs one request phase of every plugin in `chain`; the first that answers ends it, except
/// among authentication plugins in `access` (see [`gatehouse_runtime::plugins::AuthGroup`]).
/// With `steps` (a decision trace), each plugin's verdict, time and headers are noted.
async fn run_phase(
    chain: &Chain,
    ctx: &mut RequestCtx<'_>,
    phase: Phase,
    mut steps: Option<&mut Vec<PluginStep>>,
) -> Result<(), Answer> {
    let auth = match phase {
        Phase::Access => chain.auth.as_ref(),
        _ => None,
    };
    let mut refused: Option<Answer> = None;
    for (i, entry) in chain.entries.iter().enumerate() {
        let alternative = auth.is_some() && entry.auth;
        // Skipped when another authentication plugin already identified the caller.
        let plugin = match alternative && ctx.consumer.is_some() {
            true => None,
            false => entry.pick(ctx.consumer.as_ref().map(|c| c.index)),
        };
        if let Some(plugin) = plugin {
            let result = match run_one(entry, plugin, ctx, phase, steps.as_deref_mut()) {
                Outcome::Now(r) => r,
                Outcome::Waits(w) => w.await,
            };
            if let Err(answer) = result {
                if !alternative {
                    return Err((i, answer));
                }
                refused.get_or_insert((i, answer));
            }
        }
        if let Some(group) = auth.filter(|g| g.last == i) {
            if let Some(answer) = settle(group, ctx, refused.take()) {
                return Err(answer);
            }
        }
    }
    Ok(())
}

/// Runs one plugin's hook for `phase`, waiting if it waits; `Err` is its answer. Not an
/// `async fn`: a hook that decides at once (nearly all) costs a call, and only one that
/// waits makes a future, so plugin routes do not pay for nested futures moved per request.
fn run_one<'c>(
    entry: &'c ChainEntry,
    plugin: &'c Arc<dyn Plugin>,
    ctx: &'c mut RequestCtx<'_>,
    phase: Phase,
    steps: Option<&'c mut Vec<PluginStep>>,
) -> Outcome<'c> {
    let began = steps
        .as_ref()
        .map(|_| (Instant::now(), ctx.response_headers.len()));
    let flow = match phase {
        Phase::Rewrite => plugin.rewrite(ctx),
        Phase::Access => plugin.access(ctx),
        Phase::UpstreamRequest => plugin.upstream_request(ctx),
    };
    let result = match flow {
        Flow::Continue => Ok(()),
        Flow::Respond(resp) => Err(resp),
        Flow::Wait(later) => {
            return Outcome::Waits(Box::pin(async move {
                let result = match later.await {
                    Ok(later) => {
                        append_all(ctx.response_headers, later.headers);
                        ctx.holds.extend(later.hold);
                        if let Some(c) = later.consumer {
                            ctx.authenticate(&c);
                        }
                        gatehouse_plugin_api::set_all(
                            &mut ctx.parts.headers,
                            later.upstream_headers,
                        );
                        Ok(())
                    }
                    Err(resp) => Err(resp),
                };
                note(entry, plugin, ctx, phase, steps, began, &result);
                result
            }));
        }
    };
    note(entry, plugin, ctx, phase, steps, began, &result);
    Outcome::Now(result)
}

/// What a hook came to: decided at once, or a wait to finish.
enum Outcome<'c> {
    Now(Result<(), Response<Bytes>>),
    Waits(Pin<Box<dyn Future<Output = Result<(), Response<Bytes>>> + Send + 'c>>),
}

/// Notes a hook's verdict in the decision trace, when there is one.
fn note(
    entry: &ChainEntry,
    plugin: &Arc<dyn Plugin>,
    ctx: &RequestCtx<'_>,
    phase: Phase,
    steps: Option<&mut Vec<PluginStep>>,
    began: Option<(Instant, usize)>,
    result: &Result<(), Response<Bytes>>,
) {
    if let (Some(steps), Some((at, before))) = (steps, began) {
        steps.push(step(
            entry.kind,
            phase,
            plugin.as_ref(),
            ctx,
            result,
            at,
            before,
        ));
    }
}

/// After a chain's last authentication plugin: the caller is known, or is let through as the
/// `anonymous` consumer, or gets the first refusal (returned). Then the upstream is told
/// who it is.
fn settle(group: &AuthGroup, ctx: &mut RequestCtx<'_>, refused: Option<Answer>) -> Option<Answer> {
    let mut anonymous = false;
    if ctx.consumer.is_none() {
        match group
            .anonymous
            .and_then(|i| ctx.consumers().get(i))
            .cloned()
        {
            Some(anon) => {
                ctx.authenticate(&anon);
                anonymous = true;
            }
            None => {
                if refused.is_some() {
                    return refused;
                }
            }
        }
    }
    group
        .headers
        .apply(&mut ctx.parts.headers, ctx.consumer.as_ref(), anonymous);
    None
}

/// The decision trace's note of one plugin's hook.
fn step(
    kind: &'static str,
    phase: Phase,
    plugin: &dyn Plugin,
    ctx: &RequestCtx<'_>,
    result: &Result<(), Response<Bytes>>,
    at: Instant,
    headers_before: usize,
) -> PluginStep {
    let headers = match result {
        Err(r) => r.headers().iter().collect::<Vec<_>>(),
        Ok(()) => ctx.response_headers.iter().skip(headers_before).collect(),
    };
    PluginStep {
        plugin: kind,
        phase: phase.name(),
        verdict: match result {
            Ok(()) => "continue".into(),
            Err(r) => format!("respond {}", r.status().as_u16()),
        },
        micros: at.elapsed().as_micros() as u64,
        key: plugin.key_class().to_owned(),
        key_value: plugin.key_of(ctx),
        headers: headers
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    }
}

/// Runs every plugin's response hook on a response head. With a body filter in the chain,
/// the length may change, so `Content-Length` goes.
pub fn response_phase(
    routed: &Routed<'_>,
    plugins: &mut PluginState,
    status: StatusCode,
    headers: &mut HeaderMap,
) {
    let chain = &routed.route.plugins;
    if chain.needs.response_body {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    let consumer = plugins.consumer.as_ref();
    for entry in chain.entries.iter() {
        if let Some(plugin) = entry.pick(consumer.map(|c| c.index)) {
            plugin.response(&mut ResponseCtx {
                status,
                headers,
                route: &routed.route.name,
                service: &routed.service.name,
                request: plugins.head.as_deref(),
                consumer,
                state: &mut plugins.state,
            });
        }
    }
}

/// The response a plugin answered with, with the headers plugins added and the request id;
/// the rejection is counted against the plugin.
pub fn answered(
    st: &mut RequestState<'_>,
    routed: &Routed<'_>,
    answer: Answer,
) -> Response<RespBody> {
    let (entry, resp) = answer;
    if let Some(r) = routed.route.rejections.get(entry) {
        r.count.fetch_add(1, Ordering::Relaxed);
        st.rec.rejected_by = Some(r.plugin);
    }
    // A plugin's error (json_response) gets the gateway's error shape, with the request id.
    let status = resp.status();
    let resp = match resp.extensions().get::<ErrorMessage>().cloned() {
        Some(ErrorMessage(m)) => resp.map(|_| error_body(&m, status, &st.request_id)),
        None => resp,
    };
    let mut resp = resp.map(RespBody::full);
    append_all(
        resp.headers_mut(),
        std::mem::take(&mut st.plugins.response_headers),
    );
    resp.headers_mut()
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(|| st.request_id.clone());
    response_phase(routed, &mut st.plugins, status, resp.headers_mut());
    resp
}

pub fn append_all(to: &mut HeaderMap, from: HeaderMap) {
    let mut last = None;
    for (name, value) in from {
        if let Some(n) = name {
            last = Some(n);
        }
        if let Some(n) = &last {
            to.append(n.clone(), value);
        }
    }
}
