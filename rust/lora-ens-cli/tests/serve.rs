//! The `embed_axum` example (built by `cargo test` with the other targets) on the tiny
//! fixture ensemble: the host application's route and the nested OpenAI-compatible routes
//! answer, a completion carries the uncertainty extension, and SIGTERM stops it with status 0.
//! Run: `cargo test -p lora-ens-cli --test serve` (after `make fixtures`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is a failed test

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{fixture, s};

/// The example's binary, beside this test's in the target directory.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let path = debug.join("examples").join("embed_axum");
    assert!(path.is_file(), "{} is not built", path.display());
    path
}

/// One HTTP/1.1 request on its own connection: (status, body).
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

#[test]
fn the_example_serves_the_ensemble_inside_an_app() {
    let mut child = Command::new(example())
        .args([s(&fixture("tiny-q8_0.gguf")), s(&fixture("ensemble"))])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap()
        .to_owned();

    assert_eq!(
        request(&addr, "GET", "/", ""),
        (200, "my application".to_owned())
    );
    let (status, models) = request(&addr, "GET", "/llm/v1/models", "");
    assert_eq!(status, 200);
    let models: serde_json::Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "my-ensemble");
    assert_eq!(models["data"][0]["n_members"], 3);

    let body = r#"{"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}"#;
    let (status, answer) = request(&addr, "POST", "/llm/v1/completions", body);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let u = &answer["choices"][0]["uncertainty"];
    let n = answer["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(u["mutual_information"].as_array().unwrap().len(), n);
    let (status, _) = request(&addr, "POST", "/llm/v1/completions", "{oops");
    assert_eq!(status, 400);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
}
