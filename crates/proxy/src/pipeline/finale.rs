//! What runs after the response head, over the request's plugin state: the `response_body`
//! filters on each chunk as it streams, and the `log` phase once the request has ended. Made
//! only for routes whose plugins ask for either.

use super::state::Routed;
use crate::body::{Filter, RespBody};
use bytes::{Bytes, BytesMut};
use gatehouse_plugin_api::{BodyCtx, Consumer, Copies, LogCtx, Plugin, RequestHead};
use gatehouse_runtime::snapshot::Snapshot;
use gatehouse_runtime::tee::TeeCopy;
use http::HeaderMap;
use http::{Extensions, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// The finale of a request whose plugins need one, or `None`. Made once the consumer is
/// known (after `access`), so consumer-scoped instances are the ones that run.
pub fn prepare(
    snap: &Arc<Snapshot>,
    routed: &Routed<'_>,
    client_ip: IpAddr,
    consumer: Option<&Consumer>,
    started: Instant,
) -> Option<Finale> {
    let needs = routed.route.plugins.needs;
    if !needs.log && !needs.response_body && needs.copies.is_none() {
        return None;
    }
    let c = consumer.map(|c| c.index);
    let picked = || {
        routed
            .route
            .plugins
            .entries
            .iter()
            .filter_map(|e| e.pick(c))
    };
    let log: Vec<Arc<dyn Plugin>> = picked().filter(|p| p.needs().log).cloned().collect();
    let filters: Vec<Arc<dyn Plugin>> = picked()
        .filter(|p| p.needs().response_body)
        .cloned()
        .collect();
    Some(Finale {
        snap: snap.clone(),
        route: routed.index,
        client_ip,
        consumer: consumer.cloned(),
        status: StatusCode::OK,
        started,
        log: log.into(),
        filters: filters.into(),
        state: Extensions::new(),
        copies: needs
            .copies
            .map(|cap| Box::new(Copying::new(cap, needs.copy_response))),
    })
}

/// Where the copy of the request body comes from: read already, or copied as it streams.
pub enum BodyCopy {
    Read(Bytes),
    Streaming(Arc<TeeCopy>),
}

/// Copies of the exchange being taken, for plugins declaring `Needs::copies`.
pub struct Copying {
    cap: usize,
    request: Option<(RequestHead, BodyCopy)>,
    response_headers: HeaderMap,
    /// `None` once the response body went over the cap.
    response_body: Option<BytesMut>,
}

impl Copying {
    fn new(cap: u64, response: bool) -> Self {
        Self {
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            request: None,
            response_headers: HeaderMap::new(),
            response_body: response.then(BytesMut::new),
        }
    }

    fn chunk(&mut self, data: &Bytes) {
        if let Some(b) = &mut self.response_body {
            if b.len() + data.len() > self.cap {
                self.response_body = None;
            } else {
                b.extend_from_slice(data);
            }
        }
    }

    fn finish(self, status: StatusCode) -> Option<Copies> {
        let (request, body) = self.request?;
        let request_body = match body {
            BodyCopy::Read(b) => Some(b),
            BodyCopy::Streaming(tee) => tee.whole(),
        };
        Some(Copies {
            request,
            request_body,
            status,
            response_headers: self.response_headers,
            response_body: self.response_body.map(BytesMut::freeze),
        })
    }
}

/// The request's plugin state after its head went out, with the instances that still run.
pub struct Finale {
    snap: Arc<Snapshot>,
    route: usize,
    client_ip: IpAddr,
    consumer: Option<Consumer>,
    status: StatusCode,
    started: Instant,
    log: Box<[Arc<dyn Plugin>]>,
    filters: Box<[Arc<dyn Plugin>]>,
    state: Extensions,
    copies: Option<Box<Copying>>,
}

impl Finale {
    /// Attaches to `resp`: its body runs the filters, and its end (or drop) the log phase.
    pub fn attach(mut self, state: Extensions, resp: Response<RespBody>) -> Response<RespBody> {
        self.status = resp.status();
        self.state = state;
        let copying_response = self
            .copies
            .as_ref()
            .is_some_and(|c| c.request.is_some() && c.response_body.is_some());
        if let Some(c) = self.copies.as_mut().filter(|_| copying_response) {
            c.response_headers = resp.headers().clone();
        }
        if self.filters.is_empty() && !copying_response {
            resp.map(|b| b.with_hold(Box::new(self)))
        } else {
            resp.map(|b| b.filtered(Box::new(self)))
        }
    }

    /// The request as it goes upstream, for the copies: its head and where its body is.
    pub fn copy_request(&mut self, head: RequestHead, body: BodyCopy) {
        if let Some(c) = &mut self.copies {
            c.request = Some((head, body));
        }
    }

    /// The cap on copied bodies, when the route's plugins want copies.
    pub fn copy_cap(&self) -> Option<u64> {
        self.copies.as_ref().map(|c| c.cap as u64)
    }

    fn route_name(&self) -> &str {
        self.snap.routes.get(self.route).map_or("", |r| &*r.name)
    }
}

impl Filter for Finale {
    fn chunk(&mut self, data: &mut Bytes, end: bool) {
        let route = self.snap.routes.get(self.route).map_or("", |r| &*r.name);
        let mut ctx = BodyCtx {
            status: self.status,
            route,
            consumer: self.consumer.as_ref(),
            state: &mut self.state,
        };
        for p in self.filters.iter() {
            p.response_body(&mut ctx, data, end);
        }
        if let Some(c) = &mut self.copies {
            c.chunk(data);
        }
    }
}

impl Drop for Finale {
    fn drop(&mut self) {
        if self.log.is_empty() {
            return;
        }
        let Some(route) = self.snap.routes.get(self.route) else {
            return;
        };
        let service = self
            .snap
            .services
            .get(route.service)
            .map_or("", |s| &*s.name);
        let copies = self.copies.take().and_then(|c| c.finish(self.status));
        let gateway = super::subrequest::Gateway { snap: &self.snap };
        let ctx = LogCtx {
            route: self.route_name(),
            service,
            client_ip: self.client_ip,
            consumer: self.consumer.as_ref(),
            status: self.status,
            duration: self.started.elapsed(),
            state: &self.state,
            copies: copies.as_ref(),
            gateway: &gateway,
        };
        for p in self.log.iter() {
            p.log(&ctx);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use gatehouse_plugin_api::Needs;
    use http_body_util::BodyExt;
    use std::sync::Mutex;

    /// Upper-cases the body and writes down what its log phase saw, state included.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[derive(Clone)]
    struct Seen(usize);

    impl Plugin for Recorder {
        fn needs(&self) -> Needs {
            Needs {
                log: true,
                response_body: true,
                ..Needs::default()
            }
        }
        fn response_body(&self, ctx: &mut BodyCtx<'_>, chunk: &mut Bytes, _end: bool) {
            let n = ctx.state.get::<Seen>().map_or(0, |s| s.0);
            ctx.state.insert(Seen(n + chunk.len()));
            *chunk = Bytes::from(chunk.to_ascii_uppercase());
        }
        fn log(&self, ctx: &LogCtx<'_>) {
            let who = ctx.consumer.map_or("-", |c| &c.username);
            let seen = ctx.state.get::<Seen>().map_or(0, |s| s.0);
            self.0.lock().unwrap().push(format!(
                "{} {} {} {} {} {seen}",
                ctx.route, ctx.service, ctx.client_ip, who, ctx.status
            ));
        }
    }

    #[tokio::test]
    async fn filters_run_on_the_body_and_the_log_phase_when_it_is_dropped() {
        let yaml = "upstreams: [{name: u, targets: [{address: \"127.0.0.1:9\"}]}]
services: [{name: s, upstream: u}]
routes: [{name: r, service: s}]
";
        let config = gatehouse_model::parse_yaml(yaml).unwrap();
        let node = gatehouse_runtime::NodeContext {
            workers: 1,
            node_index: 0,
            registry: gatehouse_plugin_api::Registry::default().leak(),
        };
        let snap = Arc::new(Snapshot::compile(config, None, node).unwrap());
        let recorder = Arc::new(Recorder::default());
        let plugins: Box<[Arc<dyn Plugin>]> = Box::new([recorder.clone() as Arc<dyn Plugin>]);
        let finale = Finale {
            snap,
            route: 0,
            client_ip: "10.1.2.3".parse().unwrap(),
            consumer: Some(Consumer::named(0, "alice")),
            status: StatusCode::OK,
            started: Instant::now(),
            log: plugins.clone(),
            filters: plugins,
            state: Extensions::new(),
            copies: None,
        };
        let mut resp = Response::new(RespBody::full(Bytes::from_static(b"hi there")));
        *resp.status_mut() = StatusCode::IM_A_TEAPOT;
        let resp = finale.attach(Extensions::new(), resp);
        let body = resp.into_body();
        assert!(recorder.0.lock().unwrap().is_empty(), "not before the end");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"HI THERE");
        assert_eq!(
            *recorder.0.lock().unwrap(),
            ["r s 10.1.2.3 alice 418 I'm a teapot 8"]
        );
    }
}
