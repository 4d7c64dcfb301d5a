//! `alexnet weights fetch` and `--pretrained` against a file server of our own
//! on loopback (never the internet), serving the repository's small fixture
//! nets in the publishers' formats: a good download, a resumed one, a wrong
//! digest, a truncated file, a missing file, no server at all; the cache in a
//! temporary `XDG_CACHE_HOME`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::temp_dir;
use sha1::Sha1;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures")
            .join(name),
    )
    .unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the server answers for one path.
#[derive(Clone)]
struct Served {
    bytes: Vec<u8>,
    /// Announce the whole length but close after this many bytes, the first time.
    cut_first: Option<usize>,
}

/// A file server on loopback that logs each request's path and Range header.
struct FileServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    fn start(files: HashMap<String, Served>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_log, thread_stop) = (Arc::clone(&log), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut files = files;
            // Bounded: the test stops it, and it gives up after two minutes anyway.
            for _ in 0..120_000 {
                if thread_stop.load(Ordering::Relaxed) {
                    return;
                }
                match listener.accept() {
                    Ok((stream, _)) => answer(stream, &mut files, &thread_log),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        FileServer { addr, log, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(
    stream: std::net::TcpStream,
    files: &mut HashMap<String, Served>,
    log: &Mutex<Vec<String>>,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).is_err() || header.trim().is_empty() {
            break;
        }
        if let Some(value) = header
            .strip_prefix("Range: ")
            .or(header.strip_prefix("range: "))
        {
            range = value
                .trim()
                .strip_prefix("bytes=")
                .and_then(|v| v.trim_end_matches('-').parse::<usize>().ok());
        }
    }
    log.lock().unwrap().push(format!(
        "{path} {}",
        range.map_or("whole".into(), |r| format!("from {r}"))
    ));
    let mut stream = stream;
    let Some(served) = files.get_mut(path.trim_start_matches('/')) else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let total = served.bytes.len();
    if let Some(cut) = served.cut_first.take() {
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(&served.bytes[..cut]);
        return;
    }
    let start = range.unwrap_or(0).min(total);
    let head = if range.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
            total - start,
            total.saturating_sub(1)
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n")
    };
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&served.bytes[start..]);
}

/// Runs the binary with the cache in `cache` and the table at `table`.
fn run(cache: &Path, table: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_alexnet"))
        .args(["--threads", "2"])
        .args(args)
        .env("XDG_CACHE_HOME", cache)
        .env("ALEXNET_WEIGHTS_TABLE", table)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A table naming the server's files, with the Caffe model's SHA-1.
fn write_table(dir: &Path, server: &FileServer, pth: &str, caffe_sha1: &str) -> PathBuf {
    let table = serde_json::json!({
        "torchvision": {"url": server.url(pth)},
        "caffe": {
            "url": server.url("bvlc_mini.caffemodel"),
            "sha1": caffe_sha1,
            "mean_url": server.url("caffe_mini.tar.gz"),
            "mean_member": "imagenet_mean.binaryproto",
        },
    });
    let path = dir.join("table.json");
    std::fs::write(&path, table.to_string()).unwrap();
    path
}

/// The torchvision fixture's published name: torch.hub's `name-<sha256 prefix>.pth`.
fn pth_name(bytes: &[u8]) -> String {
    format!("alexnet-mini-{}.pth", &hex(&Sha256::digest(bytes))[..8])
}

fn photo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../alexnet-data/tests/photos/rocket.jpg")
}

#[test]
fn a_fetch_is_checked_cached_and_then_offline() {
    let dir = temp_dir("weights-good");
    let pth = fixture("torchvision-mini.pth");
    let name = pth_name(&pth);
    // Cut the first answer half-way: the fetch resumes where it stopped.
    let server = FileServer::start(HashMap::from([(
        name.clone(),
        Served {
            bytes: pth.clone(),
            cut_first: Some(pth.len() / 2),
        },
    )]));
    let table = write_table(&dir, &server, &name, &"0".repeat(40));
    let cache = dir.join("cache");
    let out = run(&cache, &table, &["weights", "fetch", "torchvision"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("BSD 3-Clause"),
        "the licence is shown: {}",
        text(&out)
    );
    let cached = PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().next().unwrap());
    assert!(cached.starts_with(&cache), "{}", cached.display());
    assert_eq!(
        server.requests(),
        [
            format!("/{name} whole"),
            format!("/{name} from {}", pth.len() / 2)
        ],
        "one cut-off download, then one resumed from where it stopped"
    );
    // The download is the published file, byte for byte.
    assert_eq!(
        std::fs::read(cache.join("alexnet/downloads").join(&name)).unwrap(),
        pth
    );

    // The second use asks the server nothing; --pretrained classifies as the
    // same file imported by hand does.
    let image = photo();
    let classify = |args: &[&str]| {
        let mut all = vec!["classify", "--json"];
        all.extend(args);
        all.push(image.to_str().unwrap());
        let out = run(&cache, &table, &all);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pretrained = classify(&["--pretrained", "torchvision"]);
    assert_eq!(server.requests().len(), 2, "the cache was used");
    let by_hand = dir.join("by-hand.safetensors");
    std::fs::write(dir.join(&name), &pth).unwrap();
    let out = run(
        &cache,
        &table,
        &[
            "import",
            "torchvision",
            dir.join(&name).to_str().unwrap(),
            "--out",
            by_hand.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        pretrained,
        classify(&["--checkpoint", by_hand.to_str().unwrap()])
    );
    let conflict = run(
        &cache,
        &table,
        &[
            "classify",
            "--pretrained",
            "torchvision",
            "--checkpoint",
            "x",
            "y.jpg",
        ],
    );
    assert!(!conflict.status.success());
    assert!(
        text(&conflict).contains("cannot be used with"),
        "{}",
        text(&conflict)
    );
}

#[test]
fn wrong_digests_truncated_and_missing_files_are_refused() {
    let dir = temp_dir("weights-bad");
    let pth = fixture("torchvision-mini.pth");
    let name = pth_name(&pth);
    let wrong_name = "alexnet-mini-deadbeef.pth".to_string();
    let server = FileServer::start(HashMap::from([
        (
            wrong_name.clone(),
            Served {
                bytes: pth.clone(),
                cut_first: None,
            },
        ),
        // Served whole, but the file itself is cut short.
        (
            name.clone(),
            Served {
                bytes: pth[..pth.len() - 100].to_vec(),
                cut_first: None,
            },
        ),
    ]));
    let cache = dir.join("cache");
    let downloads = cache.join("alexnet/downloads");
    for (file, says) in [
        (&wrong_name, "does not start with deadbeef".to_string()),
        (
            &name,
            format!("does not start with {}", &hex(&Sha256::digest(&pth))[..8]),
        ),
    ] {
        let table = write_table(&dir, &server, file, &"0".repeat(40));
        let out = run(&cache, &table, &["weights", "fetch", "torchvision"]);
        assert!(!out.status.success());
        assert!(text(&out).contains(&says), "{}", text(&out));
        assert!(!downloads.join(file).exists() && !downloads.join(format!("{file}.part")).exists());
    }
    assert!(!cache.join("alexnet").read_dir().unwrap().any(|e| {
        e.unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "safetensors")
    }));
    // Not on the server: the status, and what to do by hand.
    let table = write_table(&dir, &server, "alexnet-gone-12345678.pth", &"0".repeat(40));
    let out = run(&cache, &table, &["weights", "fetch", "torchvision"]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("404"), "{said}");
    assert!(
        said.contains("download") && said.contains("put it at"),
        "{said}"
    );
    assert!(
        said.contains(
            downloads
                .join("alexnet-gone-12345678.pth")
                .to_str()
                .unwrap()
        ),
        "{said}"
    );
    // No server at all (offline): the same instructions.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let table = dir.join("offline.json");
    std::fs::write(
        &table,
        serde_json::json!({
            "torchvision": {"url": format!("http://127.0.0.1:{port}/alexnet-owt-7be5be79.pth")},
            "caffe": {"url": "http://127.0.0.1:9/m.caffemodel", "sha1": "0".repeat(40),
                      "mean_url": "http://127.0.0.1:9/m.tar.gz", "mean_member": "m"},
        })
        .to_string(),
    )
    .unwrap();
    let out = run(
        &cache,
        &table,
        &[
            "classify",
            "--pretrained",
            "torchvision",
            photo().to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("put it at") && said.contains("its SHA-256 starts with 7be5be79"),
        "{said}"
    );
}

/// A gzip-compressed tar holding one file, as Caffe ships its mean.
fn tar_gz(name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut tar = vec![0u8; 512];
    tar[..name.len()].copy_from_slice(name.as_bytes());
    tar[100..107].copy_from_slice(b"0000644");
    tar[124..135].copy_from_slice(format!("{:011o}", bytes.len()).as_bytes());
    tar[156] = b'0';
    tar[257..262].copy_from_slice(b"ustar");
    tar.extend_from_slice(bytes);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn caffe_weights_come_with_their_mean_from_the_archive() {
    let dir = temp_dir("weights-caffe");
    let model = fixture("caffe-mini-alexnet.caffemodel");
    let mean = fixture("caffe-mini-mean.binaryproto");
    let server = FileServer::start(HashMap::from([
        (
            "bvlc_mini.caffemodel".to_string(),
            Served {
                bytes: model.clone(),
                cut_first: None,
            },
        ),
        (
            "caffe_mini.tar.gz".to_string(),
            Served {
                bytes: tar_gz("data/ilsvrc12/imagenet_mean.binaryproto", &mean),
                cut_first: None,
            },
        ),
    ]));
    let cache = dir.join("cache");
    let wrong = write_table(&dir, &server, "unused-12345678.pth", &"1".repeat(40));
    let out = run(&cache, &wrong, &["weights", "fetch", "caffe"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("not the published"), "{}", text(&out));

    let table = write_table(
        &dir,
        &server,
        "unused-12345678.pth",
        &hex(&Sha1::digest(&model)),
    );
    let out = run(
        &cache,
        &table,
        &[
            "weights",
            "fetch",
            "caffe",
            "--out",
            dir.join("c.safetensors").to_str().unwrap(),
        ],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("non-commercial"), "{said}");
    assert!(
        said.contains("publishes no digest"),
        "the mean is said to be unchecked: {said}"
    );
    assert!(dir.join("c.safetensors").exists());
    // The cached weights classify, and carry the archive's mean image.
    let out = run(
        &cache,
        &table,
        &[
            "classify",
            "--pretrained",
            "caffe",
            photo().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let by_hand = dir.join("by-hand.safetensors");
    std::fs::write(dir.join("m.caffemodel"), &model).unwrap();
    std::fs::write(dir.join("mean.binaryproto"), &mean).unwrap();
    let out = run(
        &cache,
        &table,
        &[
            "import",
            "caffe",
            dir.join("m.caffemodel").to_str().unwrap(),
            "--mean",
            dir.join("mean.binaryproto").to_str().unwrap(),
            "--out",
            by_hand.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let classify = |flag: &str, value: &str| {
        let out = run(
            &cache,
            &table,
            &["classify", "--json", flag, value, photo().to_str().unwrap()],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        classify("--pretrained", "caffe"),
        classify("--checkpoint", by_hand.to_str().unwrap())
    );
}
