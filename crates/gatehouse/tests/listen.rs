//! Listeners: the PROXY protocol on a listener that takes it, and listeners added and removed
//! by a reload without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;

/// A gateway whose listeners come from the config (not a command-line override).
fn gateway_listening(yaml: &str) -> Gateway {
    let config = gatehouse_model::parse_yaml(yaml).unwrap();
    let opts = StartOptions {
        listen: Vec::new(),
        workers: 2,
        node_index: 0,
        registry: gatehouse_plugins::registry(),
    };
    Gateway::start(config, &opts).unwrap()
}

/// The JSON the echo origin answered to raw `bytes`, or `None` when nothing came back.
async fn echoed(a: SocketAddr, bytes: &[u8]) -> Option<serde_json::Value> {
    let resp = raw(a, bytes).await;
    let body = resp.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

const GET: &[u8] = b"GET /x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n";

fn v2_header(src: [u8; 4], src_port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_names_the_client() {
    let o = Origin::start("a").await;
    let g = gateway_listening(
        &(upstream_yaml(&[o.addr], "")
            + "listen: [{address: \"127.0.0.1:0\", proxy_protocol: true}]\n"
            + ROUTE_ALL),
    );
    let a = g.addrs()[0];
    let mut v1 = b"PROXY TCP4 5.6.7.8 127.0.0.1 4321 8080\r\n".to_vec();
    v1.extend_from_slice(GET);
    let j = echoed(a, &v1).await.expect("answered after a v1 header");
    assert_eq!(j["headers"]["x-real-ip"], "5.6.7.8");
    assert_eq!(j["headers"]["x-forwarded-for"], "5.6.7.8");
    let mut v2 = v2_header([9, 8, 7, 6], 5555);
    v2.extend_from_slice(GET);
    let j = echoed(a, &v2).await.expect("answered after a v2 header");
    assert_eq!(j["headers"]["x-real-ip"], "9.8.7.6");
    // A connection without the header is closed unanswered.
    assert_eq!(raw(a, GET).await, "");
    assert_eq!(raw(a, b"PROXY TCP4 nonsense\r\n\r\n").await, "");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_reloads_and_a_taken_address_rejects_the_config() {
    let o = Origin::start("a").await;
    let base = upstream_yaml(&[o.addr], "") + ROUTE_ALL;
    let one = "listen: [{address: \"127.0.0.1:0\"}]\n";
    let two =
        "listen: [{address: \"127.0.0.1:0\"}, {address: \"127.0.0.2:0\", proxy_protocol: true}]\n";
    let g = gateway_listening(&(base.clone() + one));
    let first = g.addrs()[0];
    assert!(echoed(first, GET).await.is_some());

    g.reload(gatehouse_model::parse_yaml(&(base.clone() + two)).unwrap())
        .unwrap();
    let addrs = g.addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(addrs[0], first, "a listener that stays keeps its socket");
    let second = addrs[1];
    let mut v1 = b"PROXY TCP4 5.6.7.8 127.0.0.2 4321 8080\r\n".to_vec();
    v1.extend_from_slice(GET);
    let j = echoed(second, &v1)
        .await
        .expect("the added listener serves");
    assert_eq!(j["headers"]["x-real-ip"], "5.6.7.8");

    // An address that is taken: the reload is refused, naming it, and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let bad = format!(
        "listen: [{{address: \"127.0.0.1:0\"}}, {{address: \"{}\"}}]\n",
        taken.local_addr().unwrap()
    );
    let errs = g
        .reload(gatehouse_model::parse_yaml(&(base.clone() + &bad)).unwrap())
        .unwrap_err();
    assert_eq!(errs[0].path, "listen[1].address", "{errs:?}");
    assert_eq!(g.addrs(), addrs);
    assert!(echoed(second, &v1).await.is_some());

    // Removed: the second address refuses connections, the first still serves.
    g.reload(gatehouse_model::parse_yaml(&(base + one)).unwrap())
        .unwrap();
    assert_eq!(g.addrs(), [first]);
    // The workers drop the socket as soon as they hear of it.
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(second).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(refused, "the removed listener still accepts");
    assert!(echoed(first, GET).await.is_some());
    g.shutdown().await;
}
