//! `alexnet serve` started on a free loopback port for a test, and the small
//! checkpoint the serving tests share.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http;

/// A checkpoint of the small torchvision-shaped net in fixtures/ (RGB, 10
/// classes), imported into `dir`.
pub fn mini_checkpoint(dir: &Path) -> PathBuf {
    let out = dir.join("mini.safetensors");
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/torchvision-mini.pth");
    super::ok(&[
        "import",
        "torchvision",
        pth.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

/// A running server; killed when dropped.
pub struct Served {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Served {
    /// Starts the server on `checkpoint` with the flags `extra` and waits until
    /// it answers `/readyz`.
    pub fn start(checkpoint: &Path, extra: &[&str]) -> Served {
        Self::start_with_env(checkpoint, extra, &[])
    }

    pub fn start_with_env(checkpoint: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_alexnet"))
            .args([
                "serve",
                "--threads",
                "2",
                "--addr",
                "127.0.0.1:0",
                "--checkpoint",
            ])
            .arg(checkpoint)
            .args(extra)
            .env_remove("ALEXNET_API_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.split("http://").nth(1) else {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("the server did not start: {line}{stderr}");
        };
        let addr: SocketAddr = addr.split_whitespace().next().unwrap().parse().unwrap();
        let served = Served { child, addr };
        let started = Instant::now();
        while http::get(addr, "/readyz").status != 200 {
            assert!(
                started.elapsed() < http::WAIT,
                "the server never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        served
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        super::kill(&self.child, "TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < http::WAIT, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
