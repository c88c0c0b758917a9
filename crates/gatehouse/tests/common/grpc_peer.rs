//! Real gRPC peers for the tests: Python grpcio's server and client (fixtures/grpc), with
//! stubs generated from echo.proto by grpcio-tools once per test process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use tokio::io::AsyncBufReadExt;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/grpc")
}

/// The generated Python stubs, and the descriptor set of library.proto (`library.pb`, with
/// its imports), in a directory of this test process.
pub fn stubs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One directory per content of the fixtures, shared by every test process (nextest
        // runs each test in its own): made aside, then renamed into place.
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for f in ["echo.proto", "library.proto", "google/api/http.proto", "google/api/annotations.proto"] {
            for b in std::fs::read(fixtures().join(f)).unwrap() {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        let dir = std::env::temp_dir().join(format!("gatehouse-grpc-stubs-{hash:016x}"));
        if dir.join("library.pb").exists() {
            return dir;
        }
        let tmp = std::env::temp_dir().join(format!("gatehouse-grpc-stubs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        let out = std::process::Command::new("python3")
            .args(["-m", "grpc_tools.protoc", "-I", "."])
            .arg(format!("--python_out={}", tmp.display()))
            .arg(format!("--grpc_python_out={}", tmp.display()))
            .args(["echo.proto", "library.proto", "google/api/http.proto", "google/api/annotations.proto"])
            .current_dir(fixtures())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "grpc_tools could not generate stubs (pip install -r tests/fixtures/grpc/requirements.txt): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = std::process::Command::new("python3")
            .args(["-m", "grpc_tools.protoc", "-I", "."])
            .arg(format!("--descriptor_set_out={}", tmp.join("library.pb").display()))
            .args(["--include_imports", "library.proto"])
            .current_dir(fixtures())
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another test process put its copy in place first.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        dir
    })
}

/// A running Python gRPC server; killed when dropped.
pub struct GrpcServer {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl GrpcServer {
    /// Starts server.py with `args` (`--name`, `--tls CERT KEY`, `--fail-all CODE`).
    pub async fn start(args: &[&str]) -> GrpcServer {
        let mut child = tokio::process::Command::new("python3")
            .arg(fixtures().join("server.py"))
            .arg(stubs())
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .expect("the gRPC server started in time")
            .unwrap()
            .expect("the gRPC server printed its port");
        let port: u16 = line.strip_prefix("PORT ").unwrap().trim().parse().unwrap();
        GrpcServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
        }
    }
}

/// One call through client.py: `kind` (unary, client_stream, server_stream, bidi), the
/// requests as JSON, and extra flags (`--timeout`, `--tls CA`, `--authority`, `--meta`).
pub async fn call(
    target: SocketAddr,
    kind: &str,
    requests: serde_json::Value,
    flags: &[&str],
) -> serde_json::Value {
    let out = tokio::process::Command::new("python3")
        .arg(fixtures().join("client.py"))
        .arg(stubs())
        .arg(target.to_string())
        .arg(kind)
        .arg(requests.to_string())
        .args(flags)
        .output()
        .await
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client.py printed no JSON ({e}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
