"""cnnc against the frameworks a user would pick instead, measured in one run on this machine.

Each workload is exported by cnnc (`cnnc build --emit onnx` and `--emit weights`: the initial
weights of its seed), and every peer runs that same network with those weights through its own
ops (`graph.py`, `peer.py`). The runs are interleaved — cnnc, then each peer, round after round —
and each system's figure is the median of its rounds' medians. For each inference workload, every
peer's output on one input is checked against cnnc's (`cnnc run --predict x.npy --output y.npy`)
within the norm-relative 1e-4, so both sides computed the same network.

    benches/compare/.venv/bin/python benches/compare/compare.py [--rounds 3] [--threads 2]
        [--only lenet5,resnet20,...] [--systems torch,jax,...] [--out benches/compare]

`bash benches/compare/run.sh` makes the Python environment and runs this. Writes `results.md`
and `results.json` into `--out`."""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CNNC = os.path.join(ROOT, "target", "release", "cnnc")

# name, label, file, model, mode, batch, timed steps, warm-up, learning rate
WORKLOADS = [
    ("lenet5", "LeNet-5 training b64", "examples/lenet5.cnn", None, "train", 64, 20, 3, 0.05),
    ("resnet20", "ResNet-20 training b64", "benches/models/resnet20_train.cnn", None, "train", 64, 5, 1, 0.1),
    ("vgg16", "VGG-16 inference b1", "stdlib/vgg.cnn", "VGG16", "infer", 1, 3, 1, 0.0),
    ("resnet50", "ResNet-50 inference b1", "stdlib/resnet.cnn", "ResNet50", "infer", 1, 5, 1, 0.0),
    ("resnet50b16", "ResNet-50 inference b16", "stdlib/resnet.cnn", "ResNet50", "infer", 16, 3, 1, 0.0),
    ("googlenet", "GoogLeNet inference b1", "stdlib/inception.cnn", "GoogLeNet", "infer", 1, 5, 1, 0.0),
    ("inception3a", "Inception 3a forward b32", "examples/inception_module.cnn", None, "infer", 32, 5, 1, 0.0),
]
# The compile rows the issue asks for: (workload, label).
COMPILES = [("resnet20", "compile: ResNet-20 training step"), ("resnet50", "compile: ResNet-50 inference")]
SYSTEMS = ["onnxruntime", "torch", "torch-compile", "jax", "tensorflow", "tensorflow-xla"]


def sh(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def cpu():
    text = sh(["lscpu"]).stdout
    model = re.search(r"Model name:\s*(.+)", text)
    flags = re.search(r"Flags:\s*(.+)", text)
    keep = ["fma", "avx", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_tile"]
    have = set(flags.group(1).split()) if flags else set()
    return {"model": model.group(1).strip() if model else "unknown", "cores": os.cpu_count(),
            "flags": [f for f in keep if f in have]}


def triad(threads):
    exe = os.path.join(tempfile.gettempdir(), "cnnc-triad")
    built = sh(["gcc", "-O3", "-march=native", "-fopenmp", os.path.join(HERE, "triad.c"), "-o", exe])
    if built.returncode != 0:
        return None
    out = sh([exe], env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return float(out.stdout.strip()) if out.returncode == 0 else None


def wait_quiet(limit_s=120, load=0.5):
    """Waits until the one-minute load average falls below `load` (at most `limit_s`)."""
    started = time.time()
    while True:
        now = float(open("/proc/loadavg").read().split()[0])
        if now < load or time.time() - started > limit_s:
            return now
        time.sleep(5)


def settle():
    """A pause before each system's turn: worker threads of the one before (OpenMP, Eigen) spin
    for a while after their work, and would take the cores from the next."""
    time.sleep(1.0)


class Peer:
    def __init__(self, system, threads):
        self.system = system
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "peer.py"), system, str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        hello = self.proc.stdout.readline()
        if not hello:
            raise RuntimeError(f"{system} does not start (is it installed?)")
        self.version = json.loads(hello)["version"]

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": "the worker died"}
        return json.loads(line)

    def close(self):
        try:
            self.ask(cmd="quit")
        except (BrokenPipeError, ValueError):
            pass
        self.proc.kill()
        self.proc.wait()


def cnnc_bench(w, threads):
    _, _, file, model, mode, batch, steps, warmup, _ = w
    args = [CNNC, "bench", file, f"--{mode}", "--batch", str(batch), "--steps", str(steps),
            "--warmup", str(warmup), "--threads", str(threads), "--backend", "jit"]
    if model:
        args += ["--model", model]
    out = sh(args, cwd=ROOT)
    step = re.search(r"step on jit .*: median ([0-9.]+) ms", out.stdout)
    compile_ = re.search(r"total \(parameters aside\)\s+([0-9.]+) ms", out.stdout)
    if out.returncode != 0 or not step:
        raise RuntimeError(f"cnnc bench failed: {out.stdout}{out.stderr}")
    return float(step.group(1)), float(compile_.group(1))


def export(w, tmp):
    _, _, file, model, *_ = w
    flags = ["--model", model] if model else []
    onnx, weights = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "weights.safetensors")
    for emit, path in (("onnx", onnx), ("weights", weights)):
        out = sh([CNNC, "build", file, *flags, "--emit", emit, "-o", path], cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"cnnc build --emit {emit} failed: {out.stderr}")
    return onnx, weights


def cnnc_output(w, weights, x, y):
    _, _, file, model, *_ = w
    flags = ["--model", model] if model else []
    out = sh([CNNC, "run", file, *flags, "--weights", weights, "--predict", x, "--output", y, "--out",
              os.path.dirname(y)], cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"cnnc --predict failed: {out.stdout}{out.stderr}")
    return np.load(y)


def measure(w, systems, threads, rounds, log):
    name, label, file, model, mode, batch, steps, warmup, lr = w
    result = {"workload": name, "label": label, "mode": mode, "batch": batch, "systems": {}}
    with tempfile.TemporaryDirectory() as tmp:
        onnx, weights = export(w, tmp)
        peers = {}
        for s in systems:
            if s == "onnxruntime" and mode == "train":
                continue
            try:
                p = Peer(s, threads)
            except (RuntimeError, OSError, ValueError) as e:
                log(f"  {s}: {e}")
                continue
            loaded = p.ask(cmd="load", onnx=onnx, mode=mode, batch=batch, lr=lr, momentum=0.9)
            if "error" in loaded:
                log(f"  {s}: {loaded['error']}")
                p.close()
                continue
            peers[s] = p
            result["systems"][s] = {"version": p.version, "compile_ms": loaded["compile_ms"], "rounds": []}
        result["systems"]["cnnc"] = {"rounds": [], "compile_ms": []}
        for r in range(rounds):
            settle()
            step, compile_ = cnnc_bench(w, threads)
            result["systems"]["cnnc"]["rounds"].append(step)
            result["systems"]["cnnc"]["compile_ms"].append(compile_)
            for s, p in peers.items():
                settle()
                t = p.ask(cmd="time", steps=steps, warmup=warmup)
                if "error" in t:
                    log(f"  {s}: {t['error']}")
                    continue
                result["systems"][s]["rounds"].append(statistics.median(t["times_ms"]))
            log(f"  round {r + 1}: " + ", ".join(
                f"{s} {v['rounds'][-1]:.2f}" for s, v in result["systems"].items() if v["rounds"]))
        if mode == "infer":
            x, y = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
            np.save(x, np.random.default_rng(7).uniform(-1, 1, [1, *peer_input(onnx)]).astype(np.float32))
            expected = cnnc_output(w, weights, x, y)
            for s, p in peers.items():
                out = os.path.join(tmp, f"{s}.npy")
                answer = p.ask(cmd="output", input=x, output=out)
                if "error" in answer:
                    result["systems"][s]["check"] = answer["error"]
                    continue
                got = np.load(out).reshape(expected.shape)
                err = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1.0))
                result["systems"][s]["max_error"] = err
                if err > 1e-4:
                    log(f"  {s}: output differs from cnnc's by {err:.2e} (norm-relative)")
        for p in peers.values():
            p.close()
    c = result["systems"]["cnnc"]
    c["compile_ms"] = statistics.median(c["compile_ms"])
    for s, v in result["systems"].items():
        v["median_ms"] = statistics.median(v["rounds"]) if v["rounds"] else None
    return result


def peer_input(onnx_path):
    import onnx
    g = onnx.load(onnx_path).graph
    return [d.dim_value for d in g.input[0].type.tensor_type.shape.dim][1:]


def table(results, systems, meta):
    shown = ["cnnc"] + [s for s in systems if any(s in r["systems"] for r in results)]
    head = "| workload | " + " | ".join(shown) + " | best peer | cnnc vs best peer |"
    rows = [head, "|" + "---|" * (len(shown) + 3)]

    def cell(ms):
        return "—" if ms is None else (f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.2f} ms")

    def line(label, figures):
        peers = {s: v for s, v in figures.items() if s != "cnnc" and v is not None}
        best = min(peers, key=peers.get) if peers else None
        ratio = f"**{peers[best] / figures['cnnc']:.2f}×**" if best and figures.get("cnnc") else "—"
        cells = [cell(figures.get(s)) for s in shown]
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {best or '—'} | {ratio} |")

    for r in results:
        line(r["label"], {s: v.get("median_ms") for s, v in r["systems"].items()})
    for name, label in COMPILES:
        r = next((r for r in results if r["workload"] == name), None)
        if r:
            line(label, {s: v.get("compile_ms") for s, v in r["systems"].items() if s != "torch"})
    checks = []
    for r in results:
        errs = [f"{s} {v['max_error']:.0e}" for s, v in r["systems"].items() if "max_error" in v]
        if errs:
            checks.append(f"{r['label']}: " + ", ".join(errs))
    versions = {s: v["version"] for r in results for s, v in r["systems"].items() if "version" in v}
    text = [
        f"Measured {meta['date']} on {meta['cpu']['model']} ({meta['cpu']['cores']} cores; "
        f"{' '.join(meta['cpu']['flags'])}), {meta['threads']} threads each, "
        f"triad bandwidth {meta['triad_gbs']} GB/s, load average {meta['load']:.2f} at the start; "
        f"{meta['rounds']} interleaved rounds, medians. cnnc {meta['cnnc']}; "
        + ", ".join(f"{s} {v}" for s, v in sorted(versions.items())) + ".",
        "",
        *rows,
        "",
        "Ratio: the best peer's time over cnnc's (above 1: cnnc is faster). Compile: source or model "
        "definition to runnable code in a fresh process, parameters and the first step's run time "
        "excluded (eager PyTorch compiles nothing, so it is left out; ONNX Runtime's is creating the "
        "session from the exported file).",
        "",
        "Each peer's output against cnnc's on one input (norm-relative ‖a − b‖∞ / max(‖b‖∞, 1)): "
        + "; ".join(checks) + ".",
    ]
    return "\n".join(text) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--out", default=HERE)
    a = ap.parse_args()
    if not os.path.exists(CNNC):
        sys.exit(f"{CNNC} is missing: run `cargo build --release` first (run.sh does)")
    chosen = [w for w in WORKLOADS if not a.only or w[0] in a.only.split(",")]
    systems = [s for s in a.systems.split(",") if s]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    load = wait_quiet()
    meta = {
        "date": datetime.date.today().isoformat(), "cpu": cpu(), "threads": a.threads, "rounds": a.rounds,
        "triad_gbs": triad(a.threads), "load": load,
        "cnnc": sh(["git", "describe", "--always", "--dirty"], cwd=ROOT).stdout.strip(),
    }
    log(f"{meta['cpu']['model']} {meta['cpu']['flags']}; triad {meta['triad_gbs']} GB/s; load {load:.2f}")
    results = []
    for w in chosen:
        log(f"{w[1]}:")
        results.append(measure(w, systems, a.threads, a.rounds, log))
    md = table(results, systems, meta)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(md)


if __name__ == "__main__":
    main()
