// Starts `cnnc lsp` for .cnn files and restarts it when `cnnc.path` changes.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function start() {
  const command = vscode.workspace.getConfiguration("cnnc").get("path", "cnnc");
  const server = { command, args: ["lsp"] };
  client = new LanguageClient(
    "cnnc",
    "cnnc",
    { run: server, debug: server },
    { documentSelector: [{ language: "cnn" }] }
  );
  return client.start();
}

async function activate(context) {
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration("cnnc.path")) {
        await deactivate();
        await start();
      }
    })
  );
  await start();
}

async function deactivate() {
  if (client) {
    const c = client;
    client = undefined;
    await c.stop();
  }
}

module.exports = { activate, deactivate };
