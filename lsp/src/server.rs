//! The server loop: initialize (agreeing on a position encoding), then documents opened, changed,
//! saved and closed, requests answered from each document's analysis. Diagnostics are published
//! once the queue of incoming messages is empty, so a burst of keystrokes is checked once. A
//! request that fails inside cnnc gets an error response; the server goes on.

use crate::document::{Document, View};
use crate::files::StdFiles;
use crate::position::Encoding;
use crate::{completion, definition, diagnostics, formatting, hover, inlay, symbols};
use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response};
use lsp_types::notification::{
    DidChangeTextDocument, DidCloseTextDocument, DidOpenTextDocument, DidSaveTextDocument, Notification as _,
    PublishDiagnostics,
};
use lsp_types::request::{
    Completion, DocumentSymbolRequest, Formatting, GotoDefinition, HoverRequest, InlayHintRequest, Request as _,
};
use lsp_types::{
    CompletionOptions, CompletionResponse, DocumentSymbolResponse, GotoDefinitionResponse, HoverProviderCapability,
    OneOf, PublishDiagnosticsParams, ServerCapabilities, TextDocumentSyncCapability, TextDocumentSyncKind,
    TextDocumentSyncOptions, TextDocumentSyncSaveOptions, Uri,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::HashMap;
use std::error::Error;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What can end the server abnormally: the connection broke.
pub type ServerError = Box<dyn Error + Send + Sync>;

/// Runs the server on standard input and output until the client says `exit` or goes away.
pub fn run_stdio() -> Result<(), ServerError> {
    let (connection, threads) = crate::transport::stdio();
    serve(&connection)?;
    drop(connection);
    threads.join()?;
    Ok(())
}

/// Runs the server on a connection.
pub fn serve(connection: &Connection) -> Result<(), ServerError> {
    let (id, params) = connection.initialize_start()?;
    let offered: Vec<lsp_types::PositionEncodingKind> =
        serde_json::from_value(params["capabilities"]["general"]["positionEncodings"].clone()).unwrap_or_default();
    let encoding = Encoding::negotiate(Some(&offered));
    let result = serde_json::json!({
        "capabilities": capabilities(encoding),
        "serverInfo": { "name": "cnnc", "version": env!("CARGO_PKG_VERSION") },
    });
    connection.initialize_finish(id, result)?;
    let mut server = Server { connection, docs: HashMap::new(), std: StdFiles::materialize(), encoding };
    server.main_loop()
}

fn capabilities(encoding: Encoding) -> ServerCapabilities {
    ServerCapabilities {
        position_encoding: Some(encoding.kind()),
        text_document_sync: Some(TextDocumentSyncCapability::Options(TextDocumentSyncOptions {
            open_close: Some(true),
            change: Some(TextDocumentSyncKind::INCREMENTAL),
            save: Some(TextDocumentSyncSaveOptions::Supported(true)),
            ..TextDocumentSyncOptions::default()
        })),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        definition_provider: Some(OneOf::Left(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some([".", "(", ",", ">", ":"].map(String::from).to_vec()),
            ..CompletionOptions::default()
        }),
        document_symbol_provider: Some(OneOf::Left(true)),
        document_formatting_provider: Some(OneOf::Left(true)),
        inlay_hint_provider: Some(OneOf::Left(true)),
        ..ServerCapabilities::default()
    }
}

struct Server<'c> {
    connection: &'c Connection,
    /// Open documents by URI.
    docs: HashMap<String, Document>,
    std: StdFiles,
    encoding: Encoding,
}

/// Why a request gets an error response.
struct Failure {
    code: ErrorCode,
    message: String,
}

impl Server<'_> {
    fn main_loop(&mut self) -> Result<(), ServerError> {
        while let Ok(msg) = self.connection.receiver.recv() {
            match msg {
                Message::Request(req) => {
                    if self.connection.handle_shutdown(&req)? {
                        return Ok(());
                    }
                    let response = self.respond(req);
                    self.send(response.into())?;
                }
                Message::Notification(n) if n.method == "exit" => return Ok(()),
                Message::Notification(n) => self.notify(n),
                Message::Response(_) => {}
            }
            if self.connection.receiver.is_empty() {
                self.publish()?;
            }
        }
        Ok(())
    }

    fn send(&self, msg: Message) -> Result<(), ServerError> {
        self.connection.sender.send(msg).map_err(|e| Box::new(e) as ServerError)
    }

    /// Publishes the diagnostics of every document changed since they were last published.
    fn publish(&mut self) -> Result<(), ServerError> {
        for doc in self.docs.values_mut() {
            doc.poll(); // results of checks that outlived their deadline
        }
        let mut out = Vec::new();
        for doc in self.docs.values_mut().filter(|d| d.needs_publish) {
            doc.needs_publish = false;
            let version = doc.version;
            let std = &self.std;
            let diags = catch_unwind(AssertUnwindSafe(|| diagnostics::diagnostics(&doc.view(std))));
            let params = PublishDiagnosticsParams {
                uri: doc.uri.clone(),
                diagnostics: diags.unwrap_or_default(),
                version: Some(version),
            };
            out.push(Notification::new(PublishDiagnostics::METHOD.into(), params));
        }
        for n in out {
            self.send(n.into())?;
        }
        Ok(())
    }

    fn notify(&mut self, n: Notification) {
        match n.method.as_str() {
            DidOpenTextDocument::METHOD => {
                if let Ok(p) = params::<lsp_types::DidOpenTextDocumentParams>(n.params) {
                    let d = p.text_document;
                    self.docs
                        .insert(d.uri.as_str().to_string(), Document::new(d.uri, d.version, d.text, self.encoding));
                }
            }
            DidChangeTextDocument::METHOD => {
                if let Ok(p) = params::<lsp_types::DidChangeTextDocumentParams>(n.params) {
                    if let Some(doc) = self.docs.get_mut(p.text_document.uri.as_str()) {
                        doc.change(p.text_document.version, p.content_changes);
                    }
                }
            }
            DidSaveTextDocument::METHOD => {
                // Another open file may `use` the one saved: check them all again.
                if let Ok(p) = params::<lsp_types::DidSaveTextDocumentParams>(n.params) {
                    for (uri, doc) in &mut self.docs {
                        if uri != p.text_document.uri.as_str() {
                            doc.invalidate();
                        }
                    }
                }
            }
            DidCloseTextDocument::METHOD => {
                if let Ok(p) = params::<lsp_types::DidCloseTextDocumentParams>(n.params) {
                    self.docs.remove(p.text_document.uri.as_str());
                    let clear =
                        PublishDiagnosticsParams { uri: p.text_document.uri, diagnostics: vec![], version: None };
                    let _ = self.send(Notification::new(PublishDiagnostics::METHOD.into(), clear).into());
                }
            }
            _ => {}
        }
    }

    fn respond(&mut self, req: Request) -> Response {
        let id = req.id.clone();
        match catch_unwind(AssertUnwindSafe(|| self.dispatch(req))) {
            Ok(Ok(value)) => Response::new_ok(id, value),
            Ok(Err(f)) => Response::new_err(id, f.code as i32, f.message),
            Err(_) => Response::new_err(
                id,
                ErrorCode::InternalError as i32,
                "internal error in cnnc's language server (a bug: please report it)".into(),
            ),
        }
    }

    fn dispatch(&mut self, req: Request) -> Result<Value, Failure> {
        let std = &self.std;
        let docs = &mut self.docs;
        let json = |v: Result<Value, serde_json::Error>| {
            v.map_err(|e| Failure { code: ErrorCode::InternalError, message: e.to_string() })
        };
        match req.method.as_str() {
            HoverRequest::METHOD => {
                let p: lsp_types::HoverParams = params(req.params)?;
                let pos = p.text_document_position_params;
                let hover = view_of(docs, std, &pos.text_document.uri).and_then(|v| hover::hover(&v, pos.position));
                json(serde_json::to_value(hover))
            }
            InlayHintRequest::METHOD => {
                let p: lsp_types::InlayHintParams = params(req.params)?;
                let hints = view_of(docs, std, &p.text_document.uri).map(|v| inlay::hints(&v, p.range));
                json(serde_json::to_value(hints))
            }
            GotoDefinition::METHOD => {
                let p: lsp_types::GotoDefinitionParams = params(req.params)?;
                let pos = p.text_document_position_params;
                let def =
                    view_of(docs, std, &pos.text_document.uri).and_then(|v| definition::definition(&v, pos.position));
                json(serde_json::to_value(def.map(GotoDefinitionResponse::Scalar)))
            }
            Completion::METHOD => {
                let p: lsp_types::CompletionParams = params(req.params)?;
                let pos = p.text_document_position;
                let items = view_of(docs, std, &pos.text_document.uri).map(|v| completion::complete(&v, pos.position));
                json(serde_json::to_value(items.map(CompletionResponse::Array)))
            }
            DocumentSymbolRequest::METHOD => {
                let p: lsp_types::DocumentSymbolParams = params(req.params)?;
                let symbols = view_of(docs, std, &p.text_document.uri).map(|v| symbols::symbols(&v));
                json(serde_json::to_value(symbols.map(DocumentSymbolResponse::Nested)))
            }
            Formatting::METHOD => {
                let p: lsp_types::DocumentFormattingParams = params(req.params)?;
                let Some(doc) = docs.get(p.text_document.uri.as_str()) else { return Ok(Value::Null) };
                match formatting::edits(&doc.text, &doc.lines) {
                    Ok(edits) => json(serde_json::to_value(edits)),
                    Err(e) => Err(Failure {
                        code: ErrorCode::RequestFailed,
                        message: format!("cannot format this file: {e}"),
                    }),
                }
            }
            method => {
                Err(Failure { code: ErrorCode::MethodNotFound, message: format!("unsupported request `{method}`") })
            }
        }
    }
}

fn view_of<'a>(docs: &'a mut HashMap<String, Document>, std: &'a StdFiles, uri: &Uri) -> Option<View<'a>> {
    docs.get_mut(uri.as_str()).map(|d| d.view(std))
}

fn params<P: DeserializeOwned>(value: Value) -> Result<P, Failure> {
    serde_json::from_value(value)
        .map_err(|e| Failure { code: ErrorCode::InvalidParams, message: format!("invalid parameters: {e}") })
}
