//! `cnnc lsp` driven over stdio with JSON-RPC, as an editor drives it: diagnostics with exact
//! ranges and codes on open, cleared by an edit that fixes the error; hover, inlay hints,
//! definition (in the file, a `use`d file and the standard library), completion, symbols and
//! formatting; half-typed text never stops the server.

mod common;

use lsp_server::{Message, Notification, Request, RequestId};
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any one answer may take before the test fails (it takes milliseconds).
const TIMEOUT: Duration = Duration::from_secs(30);

/// A language client talking to a `cnnc lsp` process.
struct Client {
    child: Child,
    stdin: ChildStdin,
    incoming: Receiver<Message>,
    next_id: i32,
    /// Notifications received while waiting for something else.
    pending: Vec<Notification>,
}

impl Client {
    /// Starts `cnnc lsp` with its standard-library cache in `cache` and initializes it.
    fn start(cache: &Path) -> (Client, Value) {
        let mut child = common::cnnc()
            .arg("lsp")
            .env("XDG_CACHE_HOME", cache)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cnnc starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, incoming) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            while let Ok(Some(msg)) = Message::read(&mut reader) {
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        let mut client = Client { child, stdin, incoming, next_id: 0, pending: Vec::new() };
        let capabilities = json!({
            "general": { "positionEncodings": ["utf-16"] },
            "textDocument": { "publishDiagnostics": { "relatedInformation": true } },
        });
        let init =
            client.request("initialize", json!({ "processId": null, "rootUri": null, "capabilities": capabilities }));
        client.notify("initialized", json!({}));
        (client, init)
    }

    fn send(&mut self, msg: Message) {
        msg.write(&mut self.stdin).expect("server reads its input");
        self.stdin.flush().expect("flush");
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(Message::Notification(Notification::new(method.into(), params)));
    }

    /// Sends a request and waits for its response's result; panics on an error response.
    fn request(&mut self, method: &str, params: Value) -> Value {
        match self.try_request(method, params) {
            Ok(v) => v,
            Err(e) => panic!("{method} failed: {e}"),
        }
    }

    fn try_request(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = RequestId::from(self.next_id);
        self.send(Message::Request(Request::new(id.clone(), method.into(), params)));
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.recv(deadline) {
                Message::Response(r) if r.id == id => {
                    return r.response_result.map_err(|e| json!({ "code": e.code, "message": e.message }));
                }
                Message::Notification(n) => self.pending.push(n),
                _ => {}
            }
        }
    }

    fn recv(&mut self, deadline: Instant) -> Message {
        match self.incoming.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => panic!("no message from the server within {TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the server closed its output (did it crash?)"),
        }
    }

    /// The next diagnostics published for `uri` at `version`.
    fn diagnostics(&mut self, uri: &str, version: i64) -> Vec<Value> {
        let deadline = Instant::now() + TIMEOUT;
        let matches = |n: &Notification| {
            n.method == "textDocument/publishDiagnostics" && n.params["uri"] == uri && n.params["version"] == version
        };
        loop {
            if let Some(i) = self.pending.iter().position(matches) {
                let n = self.pending.remove(i);
                return n.params["diagnostics"].as_array().cloned().unwrap_or_default();
            }
            match self.recv(deadline) {
                Message::Notification(n) => self.pending.push(n),
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    fn open(&mut self, uri: &str, text: &str) {
        let doc = json!({ "uri": uri, "languageId": "cnn", "version": 1, "text": text });
        self.notify("textDocument/didOpen", json!({ "textDocument": doc }));
    }

    /// Shuts the server down and checks it exits cleanly.
    fn shutdown(mut self) {
        assert_eq!(self.request("shutdown", Value::Null), Value::Null);
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(status.success(), "cnnc lsp exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "cnnc lsp did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh folder for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cnnc-lsp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary folder");
    dir
}

fn file_uri(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn pos(line: u32, character: u32) -> Value {
    json!({ "line": line, "character": character })
}

fn at(uri: &str, line: u32, character: u32) -> Value {
    json!({ "textDocument": { "uri": uri }, "position": pos(line, character) })
}

const BROKEN: &str = r#"use std.layers.conv_bn_relu
use blocks.twice

// A small network; the name "é𝔵" keeps UTF-16 positions honest.
model Small {
    input image: [28, 28, 1]
    x = image
        |> conv(8, 5x5)
        |> maxpool(2x2)
        |> conv(16, 13x13, name: "é𝔵")
    output logits = x |> twice(4) |> conv_bn_relu(4, 1) |> flatten |> dense(10)
}
"#;

const BLOCKS: &str = "// Two 3×3 convolutions.\nblock twice(x, c: int) {\n    return x |> conv(c, 3x3, pad: same) |> conv(c, 3x3, pad: same)\n}\n";

#[test]
fn diagnostics_hover_hints_definition_completion_symbols_and_formatting() {
    let dir = scratch("session");
    let cache = dir.join("cache");
    std::fs::write(dir.join("blocks.cnn"), BLOCKS).unwrap();
    let path = dir.join("small.cnn");
    std::fs::write(&path, BROKEN).unwrap();
    let uri = file_uri(&path);
    let (mut client, init) = Client::start(&cache);
    let caps = &init["capabilities"];
    assert_eq!(caps["positionEncoding"], "utf-16");
    for provider in ["hoverProvider", "definitionProvider", "documentFormattingProvider", "inlayHintProvider"] {
        assert_eq!(caps[provider], true, "{provider}");
    }

    // Open the broken file: one error, its range in UTF-16 code units, where its input came from.
    client.open(&uri, BROKEN);
    let diags = client.diagnostics(&uri, 1);
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert_eq!(d["code"], "cnnc::shape::output_too_small");
    assert_eq!(d["severity"], 1);
    assert_eq!(d["range"], json!({ "start": pos(9, 11), "end": pos(9, 39) }));
    assert!(d["message"].as_str().unwrap().contains("(12 + 2·0 − 13)/1 + 1 = 0"), "{}", d["message"]);
    let related = d["relatedInformation"].as_array().expect("related information");
    assert!(related.iter().any(|r| r["location"]["uri"] == uri.as_str()
        && r["location"]["range"]["start"] == pos(8, 11)
        && r["message"].as_str().unwrap().contains("[12, 12, 8]")));

    // Fix it with an incremental edit: the diagnostics are cleared.
    let change = json!({ "range": { "start": pos(9, 20), "end": pos(9, 25) }, "text": "3x3" });
    client.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 2 }, "contentChanges": [change] }),
    );
    assert_eq!(client.diagnostics(&uri, 2), Vec::<Value>::new());

    // Hover on the convolution: shapes, parameters, the arithmetic.
    let hover = client.request("textDocument/hover", at(&uri, 9, 13));
    let text = hover["contents"]["value"].as_str().expect("markdown hover");
    for expected in
        ["input   [12, 12, 8]", "output  [10, 10, 16]", "params  1,168", "height  (12 + 2·0 − 3)/1 + 1 = 10"]
    {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }
    assert_eq!(hover["range"], json!({ "start": pos(9, 11), "end": pos(9, 15) }));
    // Hover on a binding: its shape.
    let hover = client.request("textDocument/hover", at(&uri, 6, 4));
    let text = hover["contents"]["value"].as_str().unwrap();
    for expected in ["x: [10, 10, 16]", "computed by `é𝔵` (conv2d)", "width   (12 + 2·0 − 3)/1 + 1 = 10"] {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }

    // Inlay hints: the binding's shape after its name, each stage's at the end of its line.
    let range = json!({ "start": pos(0, 0), "end": pos(12, 0) });
    let hints = client.request("textDocument/inlayHint", json!({ "textDocument": { "uri": uri }, "range": range }));
    let hints: Vec<(Value, String)> = hints
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["position"].clone(), h["label"].as_str().unwrap_or_default().to_string()))
        .collect();
    for expected in [
        (pos(6, 5), ": [10, 10, 16]"),
        (pos(7, 23), "[24, 24, 8]"),
        (pos(8, 23), "[12, 12, 8]"),
        (pos(10, 17), ": [10]"),
    ] {
        assert!(hints.contains(&(expected.0.clone(), expected.1.to_string())), "{expected:?} not in {hints:?}");
    }

    // Definition: a binding, a block of a used file, a block of the standard library.
    let def = client.request("textDocument/definition", at(&uri, 10, 20));
    assert_eq!(def, json!({ "uri": uri, "range": { "start": pos(6, 4), "end": pos(6, 5) } }));
    let def = client.request("textDocument/definition", at(&uri, 10, 27));
    assert_eq!(def["uri"], file_uri(&dir.join("blocks.cnn")));
    assert_eq!(def["range"], json!({ "start": pos(1, 6), "end": pos(1, 11) }));
    let def = client.request("textDocument/definition", at(&uri, 0, 17));
    let std_file = cache.join("cnnc/std/layers.cnn");
    assert_eq!(def["uri"], file_uri(&std_file));
    let std_text = std::fs::read_to_string(&std_file).expect("the standard library is materialized");
    let line = def["range"]["start"]["line"].as_u64().unwrap() as usize;
    assert!(std_text.lines().nth(line).unwrap().contains("block conv_bn_relu"));
    let def = client.request("textDocument/definition", at(&uri, 1, 6));
    assert_eq!(def["uri"], file_uri(&dir.join("blocks.cnn")));

    // Completion: named arguments inside a call, layers and blocks after `|>`.
    let items = labels(&client.request("textDocument/completion", at(&uri, 9, 27)));
    for expected in ["stride", "pad", "dilation", "groups"] {
        assert!(items.contains(&expected.to_string()), "{expected} not in {items:?}");
    }
    let edit = json!({ "range": { "start": pos(10, 0), "end": pos(10, 0) }, "text": "    y = x |> \n" });
    client.notify(
        "textDocument/didChange",
        json!({ "textDocument": { "uri": uri, "version": 3 }, "contentChanges": [edit] }),
    );
    let half_typed = client.diagnostics(&uri, 3);
    assert!(half_typed.iter().any(|d| d["code"] == "cnnc::parse::syntax"), "{half_typed:#?}");
    let items = labels(&client.request("textDocument/completion", at(&uri, 10, 13)));
    for expected in ["conv", "maxpool", "dense", "twice", "conv_bn_relu", "repeat"] {
        assert!(items.contains(&expected.to_string()), "{expected} not in {items:?}");
    }
    // The half-typed line still leaves the rest checked: hover works below it.
    let hover = client.request("textDocument/hover", at(&uri, 11, 26));
    assert!(hover["contents"]["value"].as_str().unwrap().contains("block twice(x, c: int)"), "{hover}");

    // Symbols: the model with its bindings and their shapes.
    let symbols = client.request("textDocument/documentSymbol", json!({ "textDocument": { "uri": uri } }));
    let model = &symbols[0];
    assert_eq!((model["name"].as_str(), model["kind"].as_u64()), (Some("Small"), Some(5)));
    assert_eq!(model["detail"], "[28, 28, 1] → [10]");
    let x = model["children"].as_array().unwrap().iter().find(|c| c["name"] == "x").expect("symbol x");
    assert_eq!(x["detail"], "[10, 10, 16]");

    // Formatting: one edit that yields the formatted text.
    let messy = "model M {\ninput i:[4]\n  output o=i |> dense( 2 )\n}\n";
    let messy_uri = file_uri(&dir.join("messy.cnn"));
    client.open(&messy_uri, messy);
    let options = json!({ "tabSize": 4, "insertSpaces": true });
    let edits =
        client.request("textDocument/formatting", json!({ "textDocument": { "uri": messy_uri }, "options": options }));
    assert_eq!(
        edits,
        json!([{ "range": { "start": pos(1, 0), "end": pos(3, 0) }, "newText": "    input i: [4]\n    output o = i |> dense(2)\n" }])
    );
    let unlexable = file_uri(&dir.join("unlexable.cnn"));
    client.open(&unlexable, "model M { x = @ }\n");
    let refused = client
        .try_request("textDocument/formatting", json!({ "textDocument": { "uri": unlexable }, "options": options }));
    assert!(refused.unwrap_err()["message"].as_str().unwrap().contains("unexpected character `@`"));

    client.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

fn labels(completion: &Value) -> Vec<String> {
    let items = completion.get("items").unwrap_or(completion);
    items
        .as_array()
        .expect("completion items")
        .iter()
        .map(|i| i["label"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn every_prefix_of_a_model_file_keeps_the_server_answering() {
    let dir = scratch("prefixes");
    let (mut client, _) = Client::start(&dir.join("cache"));
    let text = std::fs::read_to_string(common::root().join("examples/yolo.cnn")).unwrap();
    let uri = file_uri(&dir.join("yolo.cnn"));
    client.open(&uri, "");
    let mut version = 1;
    let cuts: Vec<usize> = (0..=text.len()).step_by(23).filter(|&i| text.is_char_boundary(i)).collect();
    for cut in cuts {
        version += 1;
        let prefix = &text[..cut];
        client.notify(
            "textDocument/didChange",
            json!({ "textDocument": { "uri": uri, "version": version }, "contentChanges": [{ "text": prefix }] }),
        );
        let last_line = prefix.matches('\n').count() as u32;
        let end = pos(last_line, prefix.rsplit('\n').next().unwrap_or("").encode_utf16().count() as u32);
        let range = json!({ "start": pos(0, 0), "end": end.clone() });
        client.request("textDocument/inlayHint", json!({ "textDocument": { "uri": uri }, "range": range }));
        client.request("textDocument/completion", json!({ "textDocument": { "uri": uri }, "position": end }));
        let middle = json!({ "textDocument": { "uri": uri }, "position": pos(last_line / 2, 8) });
        client.request("textDocument/hover", middle.clone());
        client.request("textDocument/definition", middle);
        client.request("textDocument/documentSymbol", json!({ "textDocument": { "uri": uri } }));
        let diags = client.diagnostics(&uri, version);
        if cnnc_grammar::parse(prefix).is_err() {
            assert!(!diags.is_empty(), "no diagnostic for a prefix that does not parse: {prefix:?}");
        }
        if cut == text.len() {
            assert_eq!(diags, Vec::<Value>::new());
        }
    }
    client.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
