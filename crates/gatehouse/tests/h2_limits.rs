//! HTTP/2 hardening on client connections, driven with raw frames: the stream limit the
//! gateway advertises, oversized header lists, CONTINUATION floods, rapid reset
//! (CVE-2023-44487), and PING timeouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header (without indexing, new name).
fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    hpack_int(&mut out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(&mut out, 0, 7, value.len());
    out.extend_from_slice(value);
    out
}

/// `GET /` for authority `a`, from HPACK's static table.
const GET_ROOT: [u8; 6] = [0x82, 0x86, 0x84, 0x41, 0x01, b'a'];

/// A connected raw HTTP/2 client: preface and an empty SETTINGS sent.
async fn open(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

/// What the server sent until it closed (or `within` passed): frames as (type, flags,
/// payload), and whether the connection was closed.
async fn read_frames(
    s: &mut TcpStream,
    within: Duration,
    ack_pings: bool,
) -> (Vec<(u8, u8, Vec<u8>)>, bool) {
    let until = Instant::now() + within;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (frames, false);
        }
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Err(_) => return (frames, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            if kind == SETTINGS && flags & ACK == 0 {
                let _ = s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
            }
            if kind == PING && flags & ACK == 0 && ack_pings {
                let _ = s.write_all(&frame(PING, ACK, 0, &payload)).await;
            }
            frames.push((kind, flags, payload));
        }
    }
}

fn goaway_code(frames: &[(u8, u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|(k, _, _)| *k == GOAWAY)
        .map(|(_, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
}

fn limited_gateway(origin: std::net::SocketAddr, http2: &str) -> Gateway {
    gateway(&(upstream_yaml(&[origin], "") + &format!("node:\n  http2: {{{http2}}}\n")))
}

#[tokio::test]
async fn the_stream_limit_is_advertised_and_large_header_lists_are_refused() {
    let origin = Origin::start("o").await;
    let g = limited_gateway(
        origin.addr,
        "max_concurrent_streams: 7, max_header_list_size: 8KiB",
    );
    let mut s = open(addr(&g)).await;
    let (frames, _) = read_frames(&mut s, Duration::from_millis(300), true).await;
    let settings = frames
        .iter()
        .find(|(k, f, _)| *k == SETTINGS && f & ACK == 0)
        .expect("the server's SETTINGS");
    let mut found = std::collections::HashMap::new();
    for pair in settings.2.chunks(6) {
        let id = u16::from_be_bytes([pair[0], pair[1]]);
        let value = u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]);
        found.insert(id, value);
    }
    assert_eq!(
        found.get(&0x3),
        Some(&7),
        "MAX_CONCURRENT_STREAMS: {found:?}"
    );
    assert_eq!(
        found.get(&0x6),
        Some(&8192),
        "MAX_HEADER_LIST_SIZE: {found:?}"
    );

    // A 20 KiB header: refused, never proxied.
    let mut block = GET_ROOT.to_vec();
    block.extend(literal("x-big", &[b'a'; 20 * 1024]));
    let mut out = Vec::new();
    for (i, part) in block.chunks(16 * 1024).enumerate() {
        let last = (i + 1) * 16 * 1024 >= block.len();
        let (kind, flags) = match (i, last) {
            (0, true) => (HEADERS, END_STREAM | END_HEADERS),
            (0, false) => (HEADERS, END_STREAM),
            (_, true) => (CONTINUATION, END_HEADERS),
            (_, false) => (CONTINUATION, 0),
        };
        out.extend(frame(kind, flags, 1, part));
    }
    s.write_all(&out).await.unwrap();
    let (frames, _) = read_frames(&mut s, Duration::from_millis(500), true).await;
    // `:status: 431` as HPACK writes it: a literal of static name 8, Huffman "431".
    const STATUS_431: &[u8] = &[0x48, 0x83, 0x69, 0x90, 0xff];
    let refused = frames.iter().any(|(k, _, p)| {
        *k == RST_STREAM || *k == GOAWAY || (*k == HEADERS && p.starts_with(STATUS_431))
    });
    assert!(refused, "{frames:?}");
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_continuation_flood_closes_the_connection() {
    let origin = Origin::start("o").await;
    let g = limited_gateway(origin.addr, "");
    let mut s = open(addr(&g)).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end: up to 16 MiB.
    s.write_all(&frame(HEADERS, END_STREAM, 1, &GET_ROOT))
        .await
        .unwrap();
    let piece = frame(CONTINUATION, 0, 1, &literal("x-flood", &[b'f'; 4000]));
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < 16 * 1024 * 1024 && started.elapsed() < Duration::from_secs(10) {
        if s.write_all(&piece).await.is_err() {
            break;
        }
        sent += piece.len();
    }
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(2), true).await;
    assert!(
        closed || goaway_code(&frames).is_some(),
        "still open after {sent} bytes of CONTINUATION: {frames:?}"
    );
    assert!(sent < 16 * 1024 * 1024, "all 16 MiB were taken");
    assert_eq!(origin.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rapid_reset_closes_the_connection_with_enhance_your_calm() {
    let origin = Origin::start("o").await;
    let g = limited_gateway(origin.addr, "max_pending_reset_streams: 20");
    let mut s = open(addr(&g)).await;
    // 5 000 streams, each opened and cancelled at once, in one burst.
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &GET_ROOT));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&burst).await;
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(3), true).await;
    assert_eq!(
        goaway_code(&frames),
        Some(0xb),
        "ENHANCE_YOUR_CALM: {frames:?}"
    );
    assert!(closed || goaway_code(&frames).is_some());
    // Far fewer than 5 000 requests reached the upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let proxied = origin.max_active.load(Ordering::SeqCst);
    assert!(proxied < 500, "{proxied} requests were proxied at once");
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed() {
    let origin = Origin::start("o").await;
    let g = limited_gateway(origin.addr, "ping_interval: 200ms, ping_timeout: 300ms");
    let mut s = open(addr(&g)).await;
    // One request, so the connection is past its first-request timeout; then silence.
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &GET_ROOT))
        .await
        .unwrap();
    let started = Instant::now();
    let (frames, closed) = read_frames(&mut s, Duration::from_secs(5), false).await;
    assert!(
        frames.iter().any(|(k, f, _)| *k == PING && f & ACK == 0),
        "no PING: {frames:?}"
    );
    assert!(closed, "still open: {frames:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
