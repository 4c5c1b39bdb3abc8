"""A mutation fuzzer for the front end and the language server, run outside CI:

    cargo build --release && python3 fuzz/mutate.py [--files 10000] [--seed 1] [--jobs 2]

Mutates the repository's own .cnn files (examples, stdlib, UI tests): byte flips, insertions and
deletions, lines duplicated, swapped or spliced from other files, numbers made huge, zero or
negative, repeat counts and nesting inflated. Each mutated file goes through `cnnc check`,
`cnnc build --emit summary` and `cnnc build --emit train-ir`, each with a 10 s limit, and through
one long-running `cnnc lsp` (didOpen, then a documentSymbol request whose answer must come
within 10 s). A failure is a panic (exit 101), an exit code other than 0, 1 or 2, a hang, or a
server that stops answering; failing inputs are kept in fuzz/failures/. Prints the counts.
"""
import argparse
import concurrent.futures
import glob
import json
import os
import random
import re
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNNC = os.path.join(ROOT, "target", "release", "cnnc")
LIMIT = 10.0


def seeds():
    files = []
    for pattern in ["examples/*.cnn", "stdlib/*.cnn", "tests/ui/*.cnn", "tests/import/*.cnn"]:
        files += sorted(glob.glob(os.path.join(ROOT, pattern)))
    return [open(f, "rb").read() for f in files]


def mutate(rng, text, corpus):
    data = bytearray(text)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9)
        lines = data.split(b"\n")
        if kind == 0 and data:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(data))
                data[i] = rng.randrange(256)
        elif kind == 1 and data:  # delete a span
            i = rng.randrange(len(data))
            del data[i : i + rng.randint(1, 40)]
        elif kind == 2:  # insert tokens
            token = rng.choice([b"{", b"}", b"(", b")", b"|>", b"repeat 10000 {", b"frozen ", b"x", b"[", b"]",
                                b"//", b"/*", b"\"", b"1e308", b"-1", b"0x0", b"9999999999999999999", b"\xff\xfe",
                                b"model M {", b"block b(x) {", b"train M {", b"use std.", b"\n" * 3, b"\t"])
            i = rng.randrange(len(data) + 1)
            data[i:i] = token
        elif kind == 3 and len(lines) > 1:  # duplicate a line many times
            i = rng.randrange(len(lines))
            lines[i:i] = [lines[i]] * rng.randint(1, 50)
            data = bytearray(b"\n".join(lines))
        elif kind == 4 and len(lines) > 1:  # swap two lines
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            data = bytearray(b"\n".join(lines))
        elif kind == 5:  # splice lines from another file
            other = rng.choice(corpus).split(b"\n")
            a = rng.randrange(len(other))
            i = rng.randrange(len(lines) + 1)
            lines[i:i] = other[a : a + rng.randint(1, 10)]
            data = bytearray(b"\n".join(lines))
        elif kind == 6:  # numbers made extreme
            nums = list(re.finditer(rb"\d+", bytes(data)))
            if nums:
                m = rng.choice(nums)
                new = rng.choice([b"0", b"1", b"10000", b"65536", b"2147483648", b"99999999999999999999", b"-3"])
                data[m.start() : m.end()] = new
        elif kind == 7:  # a long line
            i = rng.randrange(len(data) + 1)
            data[i:i] = b" " * rng.choice([100, 70000]) + b"nope"
        elif kind == 8:  # nesting
            depth = rng.randint(5, 200)
            i = rng.randrange(len(data) + 1)
            data[i:i] = b"(" * depth + b"1" + b")" * depth
    return bytes(data)


CODES = {}


def run_commands(path):
    """Runs the three commands on one file; returns the failures, described."""
    failures = []
    for args in (["check"], ["build", "--emit", "summary"], ["build", "--emit", "train-ir"]):
        started = time.time()
        try:
            p = subprocess.run([CNNC, args[0], path] + args[1:], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=LIMIT)
            code = p.returncode
            CODES[code] = CODES.get(code, 0) + 1
            if code not in (0, 1, 2):
                failures.append(f"{' '.join(args)}: exit {code}: {p.stderr[-300:]!r}")
        except subprocess.TimeoutExpired:
            failures.append(f"{' '.join(args)}: no answer in {LIMIT} s")
        slowest[0] = max(slowest[0], time.time() - started)
    return failures


slowest = [0.0]


class Server:
    """One `cnnc lsp`, fed every mutated file."""

    def __init__(self):
        self.p = subprocess.Popen([CNNC, "lsp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        self.next_id = 0
        self.answers = {}
        self.lock = threading.Condition()
        threading.Thread(target=self.read, daemon=True).start()
        self.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}})
        self.notify("initialized", {})

    def send(self, msg):
        body = json.dumps(msg).encode()
        self.p.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.p.stdin.flush()

    def read(self):
        out = self.p.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                line = line.strip()
                if not line:
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = json.loads(out.read(length))
            if "id" in body and "method" not in body:
                with self.lock:
                    self.answers[body["id"]] = body
                    self.lock.notify_all()

    def notify(self, method, params):
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method, params):
        self.next_id += 1
        rid = self.next_id
        self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        deadline = time.time() + LIMIT
        with self.lock:
            while rid not in self.answers:
                left = deadline - time.time()
                if left <= 0 or self.p.poll() is not None:
                    return None
                self.lock.wait(left)
            return self.answers.pop(rid)

    def check(self, i, text):
        uri = f"file:///fuzz/m{i}.cnn"
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1,
                                                               "text": text.decode("utf-8", "replace")}})
        answer = self.request("textDocument/documentSymbol", {"textDocument": {"uri": uri}})
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        return answer is not None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    corpus = seeds()
    workdir = os.path.join(ROOT, "fuzz", "work")
    faildir = os.path.join(ROOT, "fuzz", "failures")
    os.makedirs(workdir, exist_ok=True)
    mutants = [mutate(rng, rng.choice(corpus), corpus) for _ in range(args.files)]
    paths = []
    for i, m in enumerate(mutants):
        path = os.path.join(workdir, f"m{i}.cnn")
        with open(path, "wb") as f:
            f.write(m)
        paths.append(path)
    started = time.time()
    failures = {}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for path, found in zip(paths, pool.map(run_commands, paths)):
            if found:
                failures[path] = found
    commands = time.time() - started
    started = time.time()
    server, server_failures = Server(), 0
    for i, m in enumerate(mutants):
        if not server.check(i, m):
            server_failures += 1
            failures[paths[i]] = failures.get(paths[i], []) + ["server: no answer within 10 s or it exited"]
            server = Server()
    served = time.time() - started
    if failures:
        os.makedirs(faildir, exist_ok=True)
        for path, found in failures.items():
            name = os.path.basename(path)
            os.replace(path, os.path.join(faildir, name))
            print(f"{name}: " + "; ".join(found))
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    print(f"{args.files} mutated files (seed {args.seed}): 3 commands each in {commands:.0f} s "
          f"(exit codes {dict(sorted(CODES.items()))}, slowest {slowest[0]:.2f} s), "
          f"the server in {served:.0f} s; {len(failures)} failing files, {server_failures} server failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
