//! The server's transport on standard input and output: LSP's base protocol (`Content-Length`
//! headers, then a JSON-RPC body) read with bounds, so that no client can crash or freeze the
//! server with a message. A header line is at most 8 KiB, a body at most [`MAX_MESSAGE`] bytes
//! (a larger one is read past without being held); a body that is not a JSON-RPC message, or a
//! header without a usable `Content-Length`, is answered with JSON-RPC's parse error and a short
//! line on standard error (never the payload), and the server goes on.

use lsp_server::{Connection, Message};
use std::io::{self, BufRead, Read, Write};
use std::thread::JoinHandle;

/// The largest message body read (64 MiB: far more than any source file a client sends).
pub const MAX_MESSAGE: u64 = 64 << 20;

/// The longest header line kept.
const MAX_HEADER_LINE: usize = 8 << 10;

/// The threads that move messages between the connection and standard input and output.
pub struct Threads {
    reader: JoinHandle<()>,
    writer: JoinHandle<io::Result<()>>,
}

impl Threads {
    /// Waits for both threads; an error writing to standard output is returned.
    pub fn join(self) -> io::Result<()> {
        let _ = self.reader.join();
        self.writer.join().map_err(|_| io::Error::other("the writer thread panicked"))?
    }
}

/// A connection on standard input and output, with the bounded reader.
pub fn stdio() -> (Connection, Threads) {
    let (server, client) = Connection::memory();
    let Connection { sender, receiver } = client;
    let writer = std::thread::spawn(move || {
        for message in receiver.iter() {
            let mut out = io::stdout().lock();
            message.write(&mut out)?;
        }
        Ok(())
    });
    let reader = std::thread::spawn(move || {
        let mut input = io::stdin().lock();
        let mut log = io::stderr();
        read_all(&mut input, &mut log, &mut io::stdout(), |m| sender.send(m).is_ok());
    });
    (server, Threads { reader, writer })
}

/// One framed read.
#[derive(Debug, PartialEq)]
enum Frame {
    /// A body, within bounds.
    Body(Vec<u8>),
    /// A message that was read past, and why.
    Refused(String),
}

/// Reads messages from `input` until it ends or `deliver` says the server is gone (or after
/// `exit`). Messages that cannot be read get a parse error written to `out` and a line in `log`.
pub(crate) fn read_all(
    input: &mut impl BufRead,
    log: &mut impl Write,
    out: &mut impl Write,
    mut deliver: impl FnMut(Message) -> bool,
) {
    loop {
        let problem = match read_frame(input) {
            Ok(None) | Err(_) => return,
            Ok(Some(Frame::Body(body))) => match serde_json::from_slice::<Message>(&body) {
                Ok(message) => {
                    let exit = matches!(&message, Message::Notification(n) if n.method == "exit");
                    if !deliver(message) || exit {
                        return;
                    }
                    continue;
                }
                Err(e) => format!("a {}-byte body that is not a JSON-RPC message ({e})", body.len()),
            },
            Ok(Some(Frame::Refused(why))) => why,
        };
        let _ = writeln!(log, "cnnc lsp: ignored {problem}");
        let body = serde_json::json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": -32700, "message": format!("cnnc ignored {problem}") },
        })
        .to_string();
        let _ = write!(out, "Content-Length: {}\r\n\r\n{body}", body.len()).and_then(|()| out.flush());
    }
}

/// Reads one header line of at most [`MAX_HEADER_LINE`] bytes (the rest of a longer one is read
/// past); `None` at the end of the input.
fn header_line(input: &mut impl BufRead) -> io::Result<Option<(String, bool)>> {
    let mut line = Vec::new();
    let mut long = false;
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then(|| (String::from_utf8_lossy(&line).into_owned(), long)));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_HEADER_LINE.saturating_sub(line.len());
        long |= take > room;
        line.extend_from_slice(&buf[..take.min(room)]);
        input.consume(take);
        if done {
            return Ok(Some((String::from_utf8_lossy(&line).trim_end().to_string(), long)));
        }
    }
}

/// Reads one message's headers and body.
fn read_frame(input: &mut impl BufRead) -> io::Result<Option<Frame>> {
    let mut length: Option<Result<u64, String>> = None;
    let mut seen_any = false;
    loop {
        let Some((line, long)) = header_line(input)? else {
            return Ok(seen_any.then(|| Frame::Refused("a message cut off by the end of the input".into())));
        };
        if line.is_empty() {
            if !seen_any {
                continue; // blank lines between messages
            }
            break;
        }
        seen_any = true;
        if long {
            length = Some(Err("a header line longer than 8 KiB".into()));
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length =
                    Some(value.trim().parse::<u64>().map_err(|_| format!("a Content-Length of `{}`", value.trim())));
            }
        }
    }
    match length {
        None => Ok(Some(Frame::Refused("a message without a Content-Length header".into()))),
        Some(Err(why)) => Ok(Some(Frame::Refused(why))),
        Some(Ok(n)) if n > MAX_MESSAGE => {
            // Read past it without holding it.
            io::copy(&mut input.take(n), &mut io::sink())?;
            Ok(Some(Frame::Refused(format!("a {n}-byte message (the limit is {MAX_MESSAGE})"))))
        }
        Some(Ok(n)) => {
            let mut body = Vec::with_capacity(n as usize);
            input.take(n).read_to_end(&mut body)?;
            if (body.len() as u64) < n {
                return Ok(Some(Frame::Refused("a message cut off by the end of the input".into())));
            }
            Ok(Some(Frame::Body(body)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &str) -> String {
        format!("Content-Length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn malformed_and_oversized_messages_are_answered_and_the_next_one_is_read() {
        let good = r#"{"jsonrpc":"2.0","method":"initialized","params":{}}"#;
        let mut stream = String::new();
        stream += &framed("{bad json");
        stream += "X-Junk: 1\r\n\r\n"; // no Content-Length
        stream += "Content-Length: nine\r\n\r\n";
        stream += &format!("Content-Length: {}\r\n\r\n", MAX_MESSAGE + 1);
        stream += &"x".repeat(1000); // the oversized body, cut short by the end of the stream
        let mut input = io::Cursor::new(stream.into_bytes());
        let (mut log, mut out, mut got) = (Vec::new(), Vec::new(), Vec::new());
        read_all(&mut input, &mut log, &mut out, |m| {
            got.push(m);
            true
        });
        let log = String::from_utf8(log).unwrap();
        assert_eq!(log.lines().count(), 4, "{log}");
        assert!(log.contains("not a JSON-RPC message") && log.contains("without a Content-Length"), "{log}");
        assert!(log.contains("`nine`") && log.contains(&format!("{}-byte message", MAX_MESSAGE + 1)), "{log}");
        assert!(!log.contains("bad json"), "the payload is not logged: {log}");
        assert_eq!(String::from_utf8(out).unwrap().matches("\"code\":-32700").count(), 4);
        assert!(got.is_empty());
        // After garbage, a good message still arrives.
        let stream = format!("{}{}", framed("[1,2"), framed(good));
        let mut input = io::Cursor::new(stream.into_bytes());
        let mut got = Vec::new();
        read_all(&mut input, &mut Vec::new(), &mut Vec::new(), |m| {
            got.push(m);
            true
        });
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Message::Notification(n) if n.method == "initialized"));
    }

    proptest::proptest! {
        /// Any bytes end in messages delivered or refused, never a panic or a hang; each
        /// refusal is answered.
        #[test]
        fn any_bytes_are_read_to_their_end(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
                                          header in proptest::prelude::any::<bool>()) {
            let mut stream = if header { format!("Content-Length: {}\r\n\r\n", bytes.len()).into_bytes() } else { Vec::new() };
            stream.extend(&bytes);
            let (mut log, mut out) = (Vec::new(), Vec::new());
            read_all(&mut io::Cursor::new(stream), &mut log, &mut out, |_| true);
            let refused = String::from_utf8_lossy(&log).lines().count();
            proptest::prop_assert_eq!(String::from_utf8_lossy(&out).matches("-32700").count(), refused);
        }
    }

    #[test]
    fn a_header_line_without_end_is_cut_at_8_kib() {
        let stream = format!("Content-Length: 2{}\r\n\r\n{{}}", " ".repeat(100_000));
        let mut input = io::Cursor::new(stream.into_bytes());
        let mut log = Vec::new();
        read_all(&mut input, &mut log, &mut Vec::new(), |_| true);
        assert!(String::from_utf8(log).unwrap().contains("longer than 8 KiB"));
    }
}
