//! A request to drive plugins with in unit tests: the facade over real `http` parts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use gatehouse_plugin_api::{Consumer, Flow, Hold, Plugin, PriorityClass, RequestCtx};
use http::{HeaderMap, Response};

pub struct Req {
    pub parts: http::request::Parts,
    pub out: HeaderMap,
    pub holds: Vec<Hold>,
    pub ip: std::net::IpAddr,
    pub consumer: Option<Consumer>,
    pub class: PriorityClass,
}

impl Req {
    pub fn new(ip: &str) -> Self {
        let (parts, ()) = http::Request::builder()
            .uri("/a?tenant=t1")
            .header("user-agent", "Mozilla/5.0")
            .body(())
            .unwrap()
            .into_parts();
        Req {
            parts,
            out: HeaderMap::new(),
            holds: Vec::new(),
            ip: ip.parse().unwrap(),
            consumer: None,
            class: PriorityClass::Critical,
        }
    }

    pub fn ctx(&mut self) -> RequestCtx<'_> {
        RequestCtx {
            parts: &mut self.parts,
            client_ip: self.ip,
            route: "r",
            service: "s",
            priority_class: self.class,
            consumer: self.consumer.clone(),
            response_headers: &mut self.out,
            holds: &mut self.holds,
            body_limit: None,
        }
    }

    #[allow(clippy::result_large_err)]
    pub fn access(&mut self, p: &dyn Plugin) -> Result<HeaderMap, Response<Bytes>> {
        self.out.clear();
        match p.access(&mut self.ctx()) {
            Flow::Continue => Ok(self.out.clone()),
            Flow::Respond(r) => Err(r),
            Flow::Wait(_) => panic!("unexpected wait"),
        }
    }
}
