//! `alexnet serve` over a real socket on loopback: every route, every refusal,
//! requests of several connections batched together and answered as
//! `classify` answers, and a graceful stop.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::{self, Response};
use common::served::{Served, mini_checkpoint};
use common::{ok, temp_dir};
use serde_json::Value;

fn photo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../alexnet-data/tests/photos")
        .join(name)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// `alexnet classify --json`'s top classes of `image`: (class, probability).
fn classified(checkpoint: &Path, image: &Path, top: usize) -> Vec<(u64, f64)> {
    let text = ok(&[
        "classify",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--json",
        "--top",
        &top.to_string(),
        image.to_str().unwrap(),
    ]);
    let line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    top_of(&line)
}

fn top_of(image: &Value) -> Vec<(u64, f64)> {
    image["top"]
        .as_array()
        .unwrap_or_else(|| panic!("no top classes in {image}"))
        .iter()
        .map(|c| {
            (
                c["class"].as_u64().unwrap(),
                c["probability"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The same classes in the same order, probabilities within 1e-5 (a batch of
/// another size runs other kernels, so bits may differ).
fn assert_same_top(served: &[(u64, f64)], expected: &[(u64, f64)], what: &str) {
    assert_eq!(served.len(), expected.len(), "{what}");
    for (s, e) in served.iter().zip(expected) {
        assert_eq!(
            s.0, e.0,
            "{what}: classes {served:?} vs classify's {expected:?}"
        );
        assert!(
            (s.1 - e.1).abs() < 1e-5,
            "{what}: {served:?} vs classify's {expected:?}"
        );
    }
}

fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[test]
#[allow(clippy::too_many_lines)] // one server, every route in turn
fn every_route_answers_over_a_socket() {
    let dir = temp_dir("serve-routes");
    let ckpt = mini_checkpoint(&dir);
    let images = [
        photo("rocket.jpg"),
        photo("chelsea.png"),
        photo("coins.png"),
    ];
    let features = dir.join("index.safetensors");
    let mut args = vec![
        "features".to_string(),
        "--checkpoint".into(),
        ckpt.display().to_string(),
        "--out".into(),
        features.display().to_string(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let server = Served::start(&ckpt, &["--index", features.to_str().unwrap()]);
    let addr = server.addr;

    assert_eq!(http::get(addr, "/healthz").status, 200);
    let model = http::get(addr, "/v1/model").json();
    assert_eq!(model["classes"].as_array().unwrap().len(), 10);
    assert_eq!(model["input"]["crop"], serde_json::json!([3, 224, 224]));
    assert!(model["parameters"].as_u64().unwrap() > 0);
    assert_eq!(model["index"]["images"], 3);
    let dim = model["features"]["dim"].as_u64().unwrap() as usize;

    // One image as the body: classify's answer.
    let answer = http::post(addr, "/v1/classify?top=5", &read(&images[0]));
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    assert_same_top(
        &top_of(&json["images"][0]),
        &classified(&ckpt, &images[0], 5),
        "rocket.jpg",
    );
    assert!(json["timing"]["total_ms"].as_f64().unwrap() > 0.0);

    // Several as multipart, a bad one among them: the others are answered in order.
    let readme = photo("README.md");
    let answer = http::post_files(
        addr,
        "/v1/classify?top=3",
        &[
            ("chelsea.png", &read(&images[1])),
            ("README.md", &read(&readme)),
            ("coins.png", &read(&images[2])),
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    let answered = json["images"].as_array().unwrap();
    assert_eq!(answered.len(), 3);
    assert_eq!(answered[0]["image"], "chelsea.png");
    assert_same_top(
        &top_of(&answered[0]),
        &classified(&ckpt, &images[1], 3),
        "chelsea",
    );
    assert!(
        answered[1]["error"]
            .as_str()
            .unwrap()
            .contains("not an image"),
        "{json}"
    );
    assert_same_top(
        &top_of(&answered[2]),
        &classified(&ckpt, &images[2], 3),
        "coins",
    );

    // Features: JSON, and little-endian f32 rows; the same values as the index's row.
    let answer = http::post(addr, "/v1/features", &read(&images[1])).json();
    let row: Vec<f64> = answer["images"][0]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(row.len(), dim);
    let binary = http::request(
        addr,
        "POST",
        "/v1/features",
        &[("Accept", "application/octet-stream")],
        &read(&images[1]),
    );
    assert_eq!(binary.status, 200);
    assert_eq!(
        binary.header("x-features-dim"),
        Some(dim.to_string().as_str())
    );
    assert_eq!(binary.body.len(), 4 * dim);
    let floats: Vec<f32> = binary
        .body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (a, b) in floats.iter().zip(&row) {
        assert!((f64::from(*a) - b).abs() < 1e-5);
    }

    // Similar: an image of the index is its own nearest (distance ~0), with its path.
    let answer = http::post(addr, "/v1/similar?k=2", &read(&images[2])).json();
    let neighbours = answer["images"][0]["neighbours"].as_array().unwrap();
    assert_eq!(neighbours.len(), 2);
    assert_eq!(neighbours[0]["row"], 2);
    assert!(
        neighbours[0]["distance"].as_f64().unwrap() < 1e-3,
        "{answer}"
    );
    assert!(
        neighbours[0]["path"]
            .as_str()
            .unwrap()
            .ends_with("coins.png")
    );
    let picture = http::get(addr, "/v1/index/0/image");
    assert_eq!(picture.status, 200);
    assert_eq!(picture.header("content-type"), Some("image/png"));
    assert_eq!(http::get(addr, "/v1/index/3/image").status, 404);

    // The crop the net sees, and the kernels: PNGs of the right size.
    let crop = http::post(addr, "/v1/crop", &read(&images[0]));
    assert_eq!(crop.status, 200, "{}", crop.text());
    let crop = image::load_from_memory(&crop.body).unwrap();
    assert_eq!((crop.width(), crop.height()), (224, 224));
    let kernels = http::get(addr, "/v1/kernels.png");
    assert_eq!(kernels.status, 200);
    assert!(image::load_from_memory(&kernels.body).is_ok());

    // The page, and a description that lists every route.
    let page = http::get(addr, "/");
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("/v1/classify"));
    let openapi = http::get(addr, "/openapi.json").json();
    let routes = [
        "/v1/classify",
        "/v1/features",
        "/v1/similar",
        "/v1/crop",
        "/v1/model",
        "/v1/kernels.png",
        "/v1/index/{row}/image",
        "/metrics",
        "/openapi.json",
        "/",
        "/healthz",
        "/readyz",
    ];
    let described: Vec<&String> = openapi["paths"].as_object().unwrap().keys().collect();
    assert_eq!(described.len(), routes.len(), "{described:?}");
    for route in routes {
        assert!(
            openapi["paths"].get(route).is_some(),
            "{route} is not described"
        );
    }
    let missing = http::get(addr, "/v2/nothing");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());

    // What happened, counted.
    let metrics = http::get(addr, "/metrics").text();
    assert_eq!(
        metric(
            &metrics,
            "alexnet_requests_total{route=\"/v1/classify\",status=\"200\"}"
        ),
        2.0
    );
    // 1 + 2 (multipart) + 2 (features) + 1 (similar) images ran.
    assert_eq!(metric(&metrics, "alexnet_images_total"), 6.0);
    assert!(
        metrics.contains("alexnet_request_seconds_bucket{route=\"/v1/features\",le=\"+Inf\"} 2")
    );
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn concurrent_requests_share_one_forward_pass() {
    let dir = temp_dir("serve-batching");
    let ckpt = mini_checkpoint(&dir);
    // A long delay: the four requests are sure to arrive inside it.
    let server = Served::start(&ckpt, &["--max-batch", "8", "--max-delay-ms", "1500"]);
    let addr = server.addr;
    let files = ["rocket.jpg", "chelsea.png", "coins.png", "chelsea-cmyk.jpg"];
    let answers: Vec<(PathBuf, Response)> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .iter()
            .map(|name| {
                scope.spawn(move || {
                    let path = photo(name);
                    let answer = http::post(addr, "/v1/classify", &read(&path));
                    (path, answer)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (path, answer) in &answers {
        assert_eq!(answer.status, 200, "{}", answer.text());
        let json = answer.json();
        assert_eq!(json["timing"]["batch_images"], 4, "{json}");
        assert_same_top(
            &top_of(&json["images"][0]),
            &classified(&ckpt, path, 5),
            &path.display().to_string(),
        );
    }
    let metrics = http::get(addr, "/metrics").text();
    assert_eq!(
        metric(&metrics, "alexnet_batch_images_count"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "alexnet_batch_images_bucket{le=\"2\"}"),
        0.0
    );
    assert_eq!(
        metric(&metrics, "alexnet_batch_images_bucket{le=\"4\"}"),
        1.0
    );
}

#[test]
fn bad_input_gets_the_status_that_names_it() {
    let dir = temp_dir("serve-refusals");
    let ckpt = mini_checkpoint(&dir);
    let server = Served::start(
        &ckpt,
        &[
            "--max-batch",
            "2",
            "--max-body-bytes",
            "600000",
            "--max-pixels",
            "200000",
        ],
    );
    let addr = server.addr;
    let refused = |answer: Response, status: u16, says: &str| {
        assert_eq!(answer.status, status, "{}", answer.text());
        let message = answer.json()["error"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{status}: {message}");
    };
    refused(http::post(addr, "/v1/classify", b""), 400, "no image");
    refused(
        http::post(addr, "/v1/classify", b"plain text, not a picture"),
        400,
        "not an image",
    );
    // A header that announces 28192x29807 pixels: refused before any is decoded.
    refused(
        http::post(addr, "/v1/classify", b"GIF89a not really"),
        400,
        "over the limit of 200000 pixels",
    );
    // coffee.png is 600x400 = 240,000 pixels: its header is over the limit.
    refused(
        http::post(addr, "/v1/classify", &read(&photo("coffee.png"))),
        400,
        "over the limit of 200000 pixels",
    );
    let rocket = read(&photo("rocket.jpg"));
    refused(
        http::post_files(
            addr,
            "/v1/classify",
            &[("a.jpg", &rocket), ("b.jpg", &rocket), ("c.jpg", &rocket)],
        ),
        413,
        "more than 2 images",
    );
    refused(
        http::post(addr, "/v1/classify", &vec![0u8; 700_000]),
        413,
        "limit of 600000 bytes",
    );
    refused(
        http::post_files(addr, "/v1/classify", &[("big.jpg", &vec![0u8; 700_000])]),
        413,
        "limit of 600000 bytes",
    );
    refused(http::post(addr, "/v1/classify?top=many", &rocket), 400, "");
    // Every image of a multipart request bad: the request is bad, each named.
    refused(
        http::post_files(
            addr,
            "/v1/classify",
            &[("x.txt", b"text"), ("y.txt", b"more")],
        ),
        400,
        "x.txt: not an image",
    );
    assert_eq!(http::post(addr, "/v1/similar", &rocket).status, 404);
}

#[test]
fn a_full_queue_gets_429_and_a_late_answer_503() {
    let dir = temp_dir("serve-load");
    let ckpt = mini_checkpoint(&dir);
    let server = Served::start(&ckpt, &["--max-queue", "1", "--read-timeout-ms", "20000"]);
    let addr = server.addr;
    // A client that announces a body and sends only part of it holds the one place.
    let mut slow = http::connect(addr);
    slow.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nhalf")
        .unwrap();
    let started = Instant::now();
    let full = loop {
        let answer = http::post(addr, "/v1/classify", &read(&photo("rocket.jpg")));
        if answer.status == 429 || started.elapsed() > http::WAIT {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(full.status, 429, "{}", full.text());
    assert_eq!(full.header("retry-after"), Some("1"));
    drop(slow);
    drop(server);

    // A timeout shorter than any decode and forward pass.
    let server = Served::start(&ckpt, &["--timeout-ms", "1"]);
    let answer = http::post(server.addr, "/v1/classify", &read(&photo("coffee.png")));
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("--timeout-ms")
    );
}

#[test]
fn slow_clients_cannot_hold_a_connection() {
    let dir = temp_dir("serve-slow");
    let ckpt = mini_checkpoint(&dir);
    let server = Served::start(&ckpt, &["--read-timeout-ms", "300"]);
    let addr = server.addr;
    // Headers never finished: the connection is closed.
    let mut stream = http::connect(addr);
    stream
        .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the connection stayed open"
    );
    // A body never finished: 408.
    let mut stream = http::connect(addr);
    stream
        .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabc")
        .unwrap();
    let answer = http::read_response(stream);
    assert_eq!(answer.status, 408, "{}", answer.text());
    // The server still answers others.
    assert_eq!(http::get(addr, "/healthz").status, 200);
}

#[test]
fn an_api_key_guards_all_but_the_health_checks() {
    let dir = temp_dir("serve-key");
    let ckpt = mini_checkpoint(&dir);
    let server = Served::start_with_env(&ckpt, &[], &[("ALEXNET_API_KEY", "s3cret")]);
    let addr = server.addr;
    assert_eq!(http::get(addr, "/healthz").status, 200);
    assert_eq!(http::get(addr, "/readyz").status, 200);
    let refused = http::get(addr, "/v1/model");
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let wrong = http::request(
        addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cre")],
        b"",
    );
    assert_eq!(wrong.status, 401);
    let right = http::request(
        addr,
        "GET",
        "/v1/model",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(right.status, 200);
    let rocket = read(&photo("rocket.jpg"));
    assert_eq!(http::post(addr, "/v1/classify", &rocket).status, 401);
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let dir = temp_dir("serve-stop");
    let ckpt = mini_checkpoint(&dir);
    // The request waits 2 s for company: the stop comes while it is in flight.
    let server = Served::start(&ckpt, &["--max-delay-ms", "2000"]);
    let addr = server.addr;
    let rocket = read(&photo("rocket.jpg"));
    let in_flight = std::thread::spawn(move || http::post(addr, "/v1/classify", &rocket));
    std::thread::sleep(Duration::from_millis(500));
    let status = server.stop();
    let answer = in_flight.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(status.code(), Some(0));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting"
    );
}

#[test]
fn an_index_of_another_checkpoint_is_refused_at_start() {
    let dir = temp_dir("serve-index");
    let ckpt = mini_checkpoint(&dir);
    let other = dir.join("other.safetensors");
    let trained = common::dataset(&dir);
    ok(&[
        "train",
        "--data",
        trained.to_str().unwrap(),
        "--arch",
        "cifar",
        "--max-steps",
        "1",
        "--holdout",
        "40",
        "--batch",
        "8",
        "--quiet",
        "--out",
        dir.join("run").to_str().unwrap(),
    ]);
    std::fs::copy(dir.join("run/last.safetensors"), &other).unwrap();
    let features = dir.join("other-features.safetensors");
    ok(&[
        "features",
        "--checkpoint",
        other.to_str().unwrap(),
        "--data",
        trained.to_str().unwrap(),
        "--limit",
        "4",
        "--out",
        features.to_str().unwrap(),
    ]);
    let text = common::fails(&[
        "serve",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--index",
        features.to_str().unwrap(),
    ]);
    assert!(text.contains(features.to_str().unwrap()), "{text}");
    assert!(text.contains("values of"), "{text}");
}
