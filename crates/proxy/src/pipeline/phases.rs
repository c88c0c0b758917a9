//! Plugin phases: the request phases (`rewrite`, `access`, `upstream_request`) run over one
//! [`RequestCtx`] built from the request's state, the `response` phase on every response
//! head, and the `log` phase when the request has ended.

use super::state::{PluginState, RequestState, Routed};
use crate::body::RespBody;
use crate::errors::error_body;
use crate::headers::X_REQUEST_ID;
use crate::observe::{Exchange, PluginStep};
use bytes::Bytes;
use gatehouse_plugin_api::{Consumer, ErrorMessage, Flow, LogCtx, Plugin, RequestCtx, ResponseCtx};
use gatehouse_runtime::plugins::Chain;
use gatehouse_runtime::snapshot::Snapshot;
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use std::net::IpAddr;
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
/// them. What the plugins decide (consumer, body limit, headers, holds) stays in the state.
pub async fn run(
    phases: &[Phase],
    parts: &mut Parts,
    plugins: &mut PluginState,
    rec: &mut Exchange,
    client_ip: IpAddr,
    routed: &Routed<'_>,
) -> Result<(), Answer> {
    let chain = &routed.route.plugins;
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
    plugins.body_limit = ctx.body_limit;
    result
}

/// Runs one request phase of every plugin in `chain`; the first that answers ends it.
/// With `steps` (a decision trace), each plugin's verdict, time and headers are noted.
async fn run_phase(
    chain: &Chain,
    ctx: &mut RequestCtx<'_>,
    phase: Phase,
    mut steps: Option<&mut Vec<PluginStep>>,
) -> Result<(), Answer> {
    for (i, entry) in chain.entries.iter().enumerate() {
        let Some(plugin) = entry.pick(ctx.consumer.as_ref().map(|c| c.index)) else {
            continue;
        };
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
            Flow::Wait(later) => match later.await {
                Ok(later) => {
                    append_all(ctx.response_headers, later.headers);
                    ctx.holds.extend(later.hold);
                    Ok(())
                }
                Err(resp) => Err(resp),
            },
        };
        if let (Some(steps), Some((at, before))) = (steps.as_deref_mut(), began) {
            steps.push(step(
                entry.kind,
                phase,
                plugin.as_ref(),
                ctx,
                &result,
                at,
                before,
            ));
        }
        if let Err(resp) = result {
            return Err((i, resp));
        }
    }
    Ok(())
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

/// Runs every plugin's response hook on a response head.
pub fn response_phase(
    chain: &Chain,
    consumer: Option<usize>,
    status: StatusCode,
    headers: &mut HeaderMap,
    route: &str,
) {
    for entry in chain.entries.iter() {
        if let Some(plugin) = entry.pick(consumer) {
            plugin.response(&mut ResponseCtx {
                status,
                headers,
                route,
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
    let chain = &routed.route.plugins;
    let consumer = st.plugins.consumer_index();
    response_phase(
        chain,
        consumer,
        status,
        resp.headers_mut(),
        &routed.route.name,
    );
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

/// The log guard for the plugins of the route that want the `log` phase, or `None` when
/// none does (then the request carries nothing for it).
pub fn log_guard(
    snap: &Arc<Snapshot>,
    routed: &Routed<'_>,
    client_ip: IpAddr,
    consumer: Option<&Consumer>,
    started: Instant,
) -> Option<LogGuard> {
    let chain = &routed.route.plugins;
    if !chain.logs {
        return None;
    }
    let c = consumer.map(|c| c.index);
    let plugins: Vec<Arc<dyn Plugin>> = chain
        .entries
        .iter()
        .filter_map(|e| e.pick(c))
        .filter(|p| p.wants_log())
        .cloned()
        .collect();
    (!plugins.is_empty()).then(|| LogGuard {
        snap: snap.clone(),
        route: routed.index,
        client_ip,
        consumer: consumer.cloned(),
        status: StatusCode::OK,
        started,
        plugins,
    })
}

/// Runs the `log` phase of the plugins that want it when dropped, i.e. once the request has
/// ended. Made only for routes with such plugins.
pub struct LogGuard {
    snap: Arc<Snapshot>,
    route: usize,
    client_ip: IpAddr,
    consumer: Option<Consumer>,
    pub status: StatusCode,
    started: Instant,
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some(route) = self.snap.routes.get(self.route) else {
            return;
        };
        let service = self
            .snap
            .services
            .get(route.service)
            .map_or("", |s| &*s.name);
        let ctx = LogCtx {
            route: &route.name,
            service,
            client_ip: self.client_ip,
            consumer: self.consumer.as_ref(),
            status: self.status,
            duration: self.started.elapsed(),
        };
        for p in &self.plugins {
            p.log(&ctx);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A plugin that writes down what its log phase saw.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Plugin for Recorder {
        fn wants_log(&self) -> bool {
            true
        }
        fn log(&self, ctx: &LogCtx<'_>) {
            let who = ctx.consumer.map_or("-", |c| &c.username);
            self.0.lock().unwrap().push(format!(
                "{} {} {} {} {}",
                ctx.route, ctx.service, ctx.client_ip, who, ctx.status
            ));
        }
    }

    #[test]
    fn the_log_phase_runs_when_the_response_body_is_dropped() {
        let yaml = "upstreams: [{name: u, targets: [{address: \"127.0.0.1:9\"}]}]
services: [{name: s, upstream: u}]
routes: [{name: r, service: s}]
";
        let config = gatehouse_model::parse_yaml(yaml).unwrap();
        let node = gatehouse_runtime::NodeContext {
            workers: 1,
            node_index: 0,
        };
        let snap = Arc::new(Snapshot::compile(config, None, node).unwrap());
        let recorder = Arc::new(Recorder::default());
        let guard = LogGuard {
            snap,
            route: 0,
            client_ip: "10.1.2.3".parse().unwrap(),
            consumer: Some(Consumer {
                index: 0,
                username: "alice".into(),
                credential: None,
            }),
            status: StatusCode::IM_A_TEAPOT,
            started: Instant::now(),
            plugins: vec![recorder.clone()],
        };
        let body = RespBody::full(Bytes::from_static(b"hi")).with_hold(Box::new(guard));
        assert!(recorder.0.lock().unwrap().is_empty(), "not before the end");
        drop(body);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["r s 10.1.2.3 alice 418 I'm a teapot"]
        );
    }
}
