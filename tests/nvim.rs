//! A real editor as the client: headless Neovim (0.7, Debian's) set up with the repository's
//! `editors/nvim/cnnc.lua` (which starts `cnnc lsp` with `vim.lsp.start_client` and attaches it
//! with `vim.lsp.buf_attach_client`) opens a broken `.cnn` file, and a Lua script writes to a JSON
//! file the diagnostics Neovim received (their columns converted by Neovim from UTF-16 to bytes),
//! a hover and the buffer after formatting. Neovim must be installed (`.ci/run` installs it).

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"
local function main()
  dofile(os.getenv("CNNC_CONFIG")).setup({ cmd = { os.getenv("CNNC_BIN"), "lsp" } })
  vim.cmd("edit " .. vim.fn.fnameescape(os.getenv("CNNC_FILE")))
  local buf = vim.api.nvim_get_current_buf()
  assert(vim.bo[buf].filetype == "cnn", "the file type is not set")
  local attached = vim.wait(10000, function() return next(vim.lsp.buf_get_clients(buf)) ~= nil end, 20)
  assert(attached, "no client attached")
  local received = vim.wait(20000, function() return #vim.diagnostic.get(buf) > 0 end, 20)
  local diagnostics = {}
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    table.insert(diagnostics, {
      lnum = d.lnum, col = d.col, end_lnum = d.end_lnum, end_col = d.end_col,
      severity = d.severity, code = d.code, source = d.source, message = d.message,
    })
  end
  local params = { textDocument = { uri = vim.uri_from_bufnr(buf) }, position = { line = 8, character = 13 } }
  local hover = ""
  for _, answer in pairs(vim.lsp.buf_request_sync(buf, "textDocument/hover", params, 10000) or {}) do
    if answer.result and answer.result.contents then hover = answer.result.contents.value end
  end
  vim.lsp.buf.formatting_sync(nil, 10000)
  local lines = vim.api.nvim_buf_get_lines(buf, 0, -1, false)
  return { received = received, diagnostics = diagnostics, hover = hover, formatted = table.concat(lines, "\n") }
end

local ok, result = pcall(main)
if not ok then result = { error = tostring(result) } end
local out = io.open(os.getenv("CNNC_OUT"), "w")
out:write(vim.fn.json_encode(result))
out:close()
vim.cmd("qa!")
"#;

const BROKEN: &str = "// \"é𝔵\" in a layer's name keeps UTF-16 honest.\nmodel M {\n  input image: [28, 28, 1]\n  x = image\n      |> conv(8, 5x5) |> relu\n      |> maxpool(2x2)\n      |> conv(16, 5x5) |> relu\n      |> maxpool(2x2)\n  z = x |> conv(32, 5x5, name: \"é𝔵\")\n  output o = z\n}\n";

#[test]
fn neovim_receives_diagnostics_hover_and_formatting() {
    let found = Command::new("nvim").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "this test needs Neovim as the editor: install it with `apt-get install neovim` (`.ci/run` does)"
    );
    let dir = std::env::temp_dir().join(format!("cnnc-nvim-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broken.cnn");
    std::fs::write(&file, BROKEN).unwrap();
    let script = dir.join("client.lua");
    std::fs::write(&script, SCRIPT).unwrap();
    let out = dir.join("out.json");
    let result = run_nvim(&dir, &script, &file, &out);
    assert!(result.get("error").is_none(), "the Lua client failed: {}", result["error"]);
    assert_eq!(result["received"], true, "Neovim received no diagnostics: {result}");

    let diags = result["diagnostics"].as_array().unwrap();
    assert_eq!(diags.len(), 1, "{diags:#?}");
    let d = &diags[0];
    assert_eq!(d["code"], "cnnc::shape::output_too_small");
    assert_eq!(d["source"], "cnnc");
    assert_eq!(d["severity"], 1);
    // Neovim turns the server's UTF-16 columns into byte columns: they must land on the call.
    let call = "conv(32, 5x5, name: \"é𝔵\")";
    let start = BROKEN.lines().nth(8).unwrap().find(call).unwrap();
    assert_eq!((d["lnum"].as_u64(), d["col"].as_u64()), (Some(8), Some(start as u64)));
    assert_eq!((d["end_lnum"].as_u64(), d["end_col"].as_u64()), (Some(8), Some((start + call.len()) as u64)));
    assert!(d["message"].as_str().unwrap().contains("(4 + 2·0 − 5)/1 + 1 = 0"), "{}", d["message"]);

    let hover = result["hover"].as_str().unwrap();
    assert!(hover.contains("conv(filters, size"), "{hover}");

    let formatted = result["formatted"].as_str().unwrap();
    assert_eq!(format!("{formatted}\n"), cnnc_grammar::format::format(BROKEN).unwrap());
    assert!(formatted.contains("\n    x = image\n        |> conv(8, 5x5) |> relu\n"), "{formatted}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs headless Neovim on the script and returns what it wrote.
fn run_nvim(dir: &Path, script: &Path, file: &Path, out: &Path) -> Value {
    let mut child = Command::new("nvim")
        .args(["--headless", "--clean", "-c"])
        .arg(format!("luafile {}", script.display()))
        .env("CNNC_BIN", env!("CARGO_BIN_EXE_cnnc"))
        .env("CNNC_CONFIG", common::root().join("editors/nvim/cnnc.lua"))
        .env("CNNC_FILE", file)
        .env("CNNC_OUT", out)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nvim starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().expect("wait for nvim").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("Neovim did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(out).unwrap_or_else(|e| panic!("Neovim wrote no result ({e})"));
    serde_json::from_str(&text).expect("the script writes JSON")
}
