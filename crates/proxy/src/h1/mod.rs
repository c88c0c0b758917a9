//! The gateway's own HTTP/1.1 server for client connections (`node.http1.server: own`).
//!
//! Why by hand: hyper's server was the largest measured cost left on a plain route, and its
//! connection holds its buffers and a boxed slot for the service future for the connection's
//! whole life (28.5 KiB of RSS per idle keep-alive connection, bench/RESULTS.md). Here the
//! head is parsed with httparse (hyper's own parser), the request runs inside the connection's
//! task, and an idle connection holds no buffer: it waits for readiness, then reads. The
//! framing rules are the edge's, not a library's: one reading of a request or a refusal.

pub(crate) mod body;
pub(crate) mod head;
mod io;
mod write;

pub use io::{Io, Split};

use crate::pipeline::{self, ConnInfo};
use crate::Shared;
use bytes::{Bytes, BytesMut};
use gatehouse_runtime::downstream::RequestBody;
use head::{Framing, Head, Refusal};
use http::{Method, Request, Response, StatusCode};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// Limits on a request head (`node.http1`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Method, target and version: longer is 414.
    pub max_request_line: usize,
    /// One header field, name and value: larger is 431.
    pub max_header: usize,
    /// The whole head: larger is 431.
    pub max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_line: 8 * 1024,
            max_header: 16 * 1024,
            max_head: 64 * 1024,
        }
    }
}

/// What a connection is served with, read from the snapshot when it opens.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub limits: Limits,
    /// The longest wait for a complete head, between requests, for a body byte, and for the
    /// client to take a response write.
    pub client_timeout: Duration,
}

/// A body the pipeline did not read that is discarded (up to this much) to keep the
/// connection; a larger rest closes it.
const DISCARD_CAP: u64 = 64 * 1024;
const DISCARD_WITHIN: Duration = Duration::from_secs(2);

/// The first read of a head, and the least room left before a read asks for more.
const HEAD_CHUNK: usize = 4 * 1024;
const MIN_ROOM: usize = 1024;

/// How long an idle connection stays open once the node drains, for a request a client may
/// be sending at that moment (closing at once would fail it).
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// A client connection handed over after a 101, with what the client sent past its head.
pub struct Upgraded {
    pub io: Box<dyn Io>,
    pub read_ahead: Bytes,
}

/// The client side of an upgrade, in the request's extensions until the pipeline takes it.
#[derive(Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    pub fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().ok()?.take()
    }
}

/// The connection's state between requests: the read side (while no body has it) and the
/// bytes read past the last head.
struct Conn<C: Split> {
    r: Option<C::R>,
    w: C::W,
    buf: BytesMut,
    out: Vec<u8>,
}

/// What waiting for the next head came to.
enum Next {
    Head(Box<Head>),
    Refused(Refusal),
    Closed,
}

/// Serves HTTP/1.1 requests on `io` until the client closes, a request asks to, a timeout
/// passes, or the node stops.
///
/// Meant to be a task of its own (not awaited inside a larger future, whose state would hold
/// this one's twice over): an idle connection then costs this future and nothing more.
/// `held` lives as long as the connection (what counts it open).
pub async fn serve<C: Split, H: Send>(
    io: C,
    info: Arc<ConnInfo>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    settings: Settings,
    held: H,
) {
    let _held = held;
    let (r, w) = io.split();
    let mut conn = Conn::<C> {
        r: Some(r),
        w,
        buf: BytesMut::new(),
        out: Vec::new(),
    };
    loop {
        let head = match next_head(&mut conn, &settings, &mut stop).await {
            Next::Head(h) => h,
            Next::Refused(refusal) => return Box::pin(refuse(&mut conn, refusal, &settings)).await,
            Next::Closed => return,
        };
        let upgrade = crate::headers::wants_upgrade(&head.headers);
        if upgrade && head.framing != Framing::None {
            let why = Refusal(StatusCode::BAD_REQUEST, "an upgrade request with a body");
            return Box::pin(refuse(&mut conn, why, &settings)).await;
        }
        // Boxed: a request's state (its handler, its response being written) lives only
        // while the request does, not in every idle connection's task.
        let exchanged = Box::pin(exchange(
            &mut conn, *head, upgrade, &info, &shared, &stop, &settings,
        ));
        match exchanged.await {
            After::Next => {}
            After::Close => break,
            After::Upgraded(tx) => {
                let Some(r) = conn.r.take() else { return };
                let Some(io) = C::unsplit(r, conn.w) else {
                    return;
                };
                let read_ahead = conn.buf.split().freeze();
                let _ = tx.send(Upgraded {
                    io: Box::new(io),
                    read_ahead,
                });
                return;
            }
        }
        if conn.buf.is_empty() {
            // Nothing of a next request yet: an idle connection keeps no buffer.
            conn.buf = BytesMut::new();
            conn.out = Vec::new();
        }
    }
    let _ = conn.w.shutdown().await;
}

/// How a connection goes on after an exchange.
enum After {
    Next,
    Close,
    Upgraded(oneshot::Sender<Upgraded>),
}

/// One request and its response.
async fn exchange<C: Split>(
    conn: &mut Conn<C>,
    head: Head,
    upgrade: bool,
    info: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    stop: &watch::Receiver<bool>,
    settings: &Settings,
) -> After {
    let Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
    } = head;
    let head_only = method == Method::HEAD;
    let (body, back, mut go_on) = lend_body(conn, framing, expect_continue, settings);
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    let upgrade_tx = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        let pending = PendingUpgrade(Arc::new(Mutex::new(Some(rx))));
        req.extensions_mut().insert(pending);
        tx
    });
    let handler = std::pin::pin!(pipeline::handle(shared.clone(), info.clone(), req));
    let Some(resp) = answer(conn, handler, &mut go_on).await else {
        // The client went away: the request is dropped (and recorded as 499).
        return After::Close;
    };
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    // A body the pipeline never asked for while the client waits for `100 Continue` was
    // never sent: the connection cannot be read on past it.
    let unsent = go_on.is_some_and(|mut g| g.try_recv().is_err());
    let ask = write::Ask {
        head_only,
        version,
        keep_alive: keep_alive && !*stop.borrow() && !unsent && (upgrade_tx.is_some() || !switched),
        write_timeout: settings.client_timeout,
    };
    let Conn { r, w, out, .. } = &mut *conn;
    let gone = async {
        match r.as_mut() {
            Some(r) => C::closed(r).await,
            None => std::future::pending().await,
        }
    };
    let reusable = matches!(write::response(w, out, resp, ask, gone).await, Ok(true));
    if let (true, Some(tx)) = (switched, upgrade_tx) {
        return if reusable {
            After::Upgraded(tx)
        } else {
            After::Close
        };
    }
    if !reusable || unsent || !reclaim(conn, back).await {
        return After::Close;
    }
    After::Next
}

/// The handler's response; `None` when the client closed the connection first. With
/// `Expect: 100-continue`, `100 Continue` goes out when the body is first asked for.
async fn answer<C: Split, F>(
    conn: &mut Conn<C>,
    mut handler: std::pin::Pin<&mut F>,
    go_on: &mut Option<oneshot::Receiver<()>>,
) -> Option<F::Output>
where
    F: std::future::Future,
{
    let Conn { r, w, .. } = conn;
    let gone = async {
        match r.as_mut() {
            Some(r) => C::closed(r).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(gone);
    loop {
        tokio::select! {
            biased;
            resp = handler.as_mut() => return Some(resp),
            Some(()) = async { go_on.as_mut()?.await.ok() }, if go_on.is_some() => {
                *go_on = None; // said
                let _ = write::interim(w, StatusCode::CONTINUE).await;
            }
            () = &mut gone => return None,
        }
    }
}

/// The request's body: nothing for a bodiless request; else the read side, lent. With it,
/// where it comes back, and (`Expect: 100-continue`) the word that it was first asked for.
type Lending<C> = (
    RequestBody,
    Option<oneshot::Receiver<body::Returned<<C as Split>::R>>>,
    Option<oneshot::Receiver<()>>,
);

fn lend_body<C: Split>(
    conn: &mut Conn<C>,
    framing: Framing,
    expect_continue: bool,
    settings: &Settings,
) -> Lending<C> {
    let state = match framing {
        Framing::None => return (RequestBody::Empty, None, None),
        Framing::Length(n) => body::State::Length(n),
        Framing::Chunked => body::State::ChunkSize,
    };
    let Some(r) = conn.r.take() else {
        return (RequestBody::Empty, None, None);
    };
    let lent = body::Lent {
        r,
        buf: std::mem::take(&mut conn.buf),
    };
    let (back_tx, back_rx) = oneshot::channel();
    let (go_tx, go_rx) = match expect_continue {
        true => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let body = body::Body::new(lent, state, Some(back_tx), go_tx, settings.client_timeout);
    (RequestBody::Own(Box::pin(body)), Some(back_rx), go_rx)
}

/// Takes the read side back after a response; a body left unread is discarded first.
/// `false`: the connection must close (the body is still held, broken, or too long).
async fn reclaim<C: Split>(
    conn: &mut Conn<C>,
    back: Option<oneshot::Receiver<body::Returned<C::R>>>,
) -> bool {
    let Some(mut rx) = back else { return true };
    let Ok(returned) = rx.try_recv() else {
        return false;
    };
    let lent = match returned.state {
        body::State::Done => returned.lent,
        body::State::Broken => return false,
        _ => match body::discard(returned, DISCARD_CAP, DISCARD_WITHIN).await {
            Some(lent) => lent,
            None => return false,
        },
    };
    conn.r = Some(lent.r);
    conn.buf = lent.buf;
    true
}

/// Waits for and reads the next request head.
async fn next_head<C: Split>(
    conn: &mut Conn<C>,
    settings: &Settings,
    stop: &mut watch::Receiver<bool>,
) -> Next {
    let Some(r) = conn.r.as_mut() else {
        return Next::Closed;
    };
    if conn.buf.is_empty() {
        // Idle between requests: wait for a byte without holding a buffer.
        tokio::select! {
            ready = tokio::time::timeout(settings.client_timeout, C::readable(r)) => {
                if !matches!(ready, Ok(Ok(()))) {
                    return Next::Closed;
                }
            }
            () = async { let _ = stop.wait_for(|s| *s).await; } => {
                // Draining: a request already on its way still gets an answer (with
                // `Connection: close`); a connection that stays quiet is closed.
                match tokio::time::timeout(DRAIN_IDLE, C::readable(r)).await {
                    Ok(Ok(())) => {}
                    _ => return Next::Closed,
                }
            }
        }
    }
    let deadline = Instant::now() + settings.client_timeout;
    loop {
        if !conn.buf.is_empty() {
            match head::parse(&mut conn.buf, &settings.limits) {
                Ok(Some(h)) => return Next::Head(Box::new(h)),
                Ok(None) => {}
                Err(refusal) => return Next::Refused(refusal),
            }
        }
        // A head starts in 4 KiB (most fit; nginx starts at 1 KiB) and grows 8 KiB at a time;
        // reserving only when little room is left keeps a slow head from doubling its buffer
        // on every read.
        if conn.buf.capacity() - conn.buf.len() < MIN_ROOM {
            let more = match conn.buf.is_empty() {
                true => HEAD_CHUNK,
                false => body::READ_CHUNK,
            };
            conn.buf.reserve(more);
        }
        match tokio::time::timeout_at(deadline, r.read_buf(&mut conn.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Next::Closed,
            Ok(Ok(_)) => {}
            Err(_) if conn.buf.is_empty() => return Next::Closed,
            Err(_) => {
                return Next::Refused(Refusal(
                    StatusCode::REQUEST_TIMEOUT,
                    "request head not received in time",
                ))
            }
        }
    }
}

/// Answers a head that cannot be served, and closes: what follows it cannot be trusted to
/// be where a next request starts.
async fn refuse<C: Split>(conn: &mut Conn<C>, refusal: Refusal, settings: &Settings) {
    let Refusal(status, why) = refusal;
    tracing::debug!(status = status.as_u16(), why, "request head refused");
    let id = crate::headers::new_request_id();
    let body = crate::errors::error_body(why, status, &id);
    let mut resp = Response::new(http_body_util::Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(crate::headers::X_REQUEST_ID.clone(), id);
    let ask = write::Ask {
        head_only: false,
        version: http::Version::HTTP_11,
        keep_alive: false,
        write_timeout: settings.client_timeout,
    };
    let _ = write::response(
        &mut conn.w,
        &mut conn.out,
        resp,
        ask,
        std::future::pending(),
    )
    .await;
    let _ = conn.w.shutdown().await;
    linger(conn).await;
}

/// After a refusal, reads what the client still sends (up to 64 KiB, for a second) before
/// the socket closes: closed with unread bytes, the kernel would reset the connection and the
/// client could lose the answer it was just sent (nginx's lingering close).
async fn linger<C: Split>(conn: &mut Conn<C>) {
    let Some(r) = conn.r.as_mut() else { return };
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match r.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}
