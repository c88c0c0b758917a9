//! The requests plugin unit tests drive: plugin-api's [`TestRequest`] with this crate's
//! usual head, and a synchronous access for hooks that must not wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use gatehouse_plugin_api::testing::TestRequest;
use gatehouse_plugin_api::{Flow, Plugin};
use http::{HeaderMap, Response};

pub type Req = TestRequest;

/// A GET of `/a?tenant=t1` from `ip`, with a browser's User-Agent.
pub fn req(ip: &str) -> Req {
    TestRequest::get("/a?tenant=t1")
        .header("user-agent", "Mozilla/5.0")
        .from_ip(ip.parse().unwrap())
}

pub trait AccessNow {
    /// Runs `p`'s access hook, which must decide at once: the headers it added, or its answer.
    #[allow(clippy::result_large_err)]
    fn access_now(&mut self, p: &dyn Plugin) -> Result<HeaderMap, Response<Bytes>>;
}

impl AccessNow for Req {
    fn access_now(&mut self, p: &dyn Plugin) -> Result<HeaderMap, Response<Bytes>> {
        self.response_headers.clear();
        let flow = p.access(&mut self.ctx());
        match flow {
            Flow::Continue => Ok(self.response_headers.clone()),
            Flow::Respond(r) => Err(r),
            Flow::Wait(_) => panic!("unexpected wait"),
        }
    }
}

/// A GET of `uri` from 127.0.0.1.
pub fn get(uri: &str) -> Req {
    TestRequest::get(uri)
}
