#!/usr/bin/env python3
"""Instructions per request of deepseek-gateway, layer by layer, under callgrind.

The release gateway runs under `valgrind --tool=callgrind` in front of the fast mock upstream,
once per configuration: every layer off (bare), every layer on (full), and every layer on but
one. Each run warms with WARM requests, zeroes the counters (`callgrind_control -z`), sends N
requests one after another on one keep-alive connection, and dumps (`callgrind_control -d`):
the instructions of exactly those N requests, every gateway thread included, the kernel's
share (loopback TCP, the audit file's writes) not. A layer's own cost is the full stack minus
the stack without it. Load on the machine does not move instruction counts.

    cargo build --release -p tower-deepseek-gateway -p tower-deepseek-testkit --bins
    tower-deepseek-gateway/bench/layers.py                 # N=400 WARM=100
    N=1000 SCENARIOS=proxied,cached tower-deepseek-gateway/bench/layers.py

Scenarios: `proxied` (temperature 1: every call goes through the whole stack and upstream),
`cached` (temperature 0, one prompt: L1 hits; only with the cache on).
"""
import hashlib, http.client, json, os, re, subprocess, sys, tempfile, time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
N = int(os.environ.get("N", "400"))
WARM = int(os.environ.get("WARM", "100"))
SCENARIOS = os.environ.get("SCENARIOS", "proxied,cached").split(",")
LAYERS = ["audit", "redact", "cache", "rate_limit", "retry", "breaker", "timeout"]
KEY = "bench-client-key-0001"
HASH = hashlib.sha256(KEY.encode()).hexdigest()
BODY = {
    "proxied": '{"model":"deepseek-chat","temperature":1,"messages":[{"role":"user","content":"Hello, how are you today?"}]}',
    "cached": '{"model":"deepseek-chat","temperature":0,"messages":[{"role":"user","content":"Hello, how are you today?"}]}',
}


def wait_line(path, proc, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            m = re.search(r"listening on (http://\S+)", open(path).read())
            if m:
                return m.group(1)
        if proc.poll() is not None:
            sys.exit(f"{path}: exited early:\n" + open(path).read())
        time.sleep(0.1)
    sys.exit(f"{path}: no listening line")


def drive(url, body, n):
    host = url.split("//")[1]
    conn = http.client.HTTPConnection(host, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"status {r.status}")
    conn.close()


def measure(work, upstream, name, layers, scenario):
    cfg = os.path.join(work, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f'[[keys]]\nsha256 = "{HASH}"\ntenant = "bench"\n')
        f.write('[rate_limit]\nrequests_per_minute = 100000000\nkey_by = "tenant"\n')
        f.write('[breaker]\nminimum_number_of_calls = 100\n[audit]\non_sink_failure = "fail_open"\n')
        f.write("[layers]\n" + "".join(f"{l} = {'true' if l in layers else 'false'}\n" for l in LAYERS))
    out = os.path.join(work, f"{name}.{scenario}.out")
    cg = os.path.join(work, f"{name}.{scenario}.cg")
    env = dict(os.environ, DEEPSEEK_API_KEY="sk-bench-upstream",
               GATEWAY_AUDIT_HMAC_KEY="bench-audit-hmac-key-0001", RUST_LOG="warn")
    args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}",
            os.path.join(BIN, "deepseek-gateway"), "--listen", "127.0.0.1:0",
            "--upstream", upstream, "--config", cfg]
    if "audit" in layers:
        args += ["--audit-log", os.path.join(work, f"{name}.{scenario}.audit.jsonl")]
    with open(out, "w") as o:
        gw = subprocess.Popen(args, stdout=o, stderr=subprocess.STDOUT, env=env)
    try:
        url = wait_line(out, gw)
        drive(url, BODY[scenario], WARM)
        subprocess.run(["callgrind_control", "-z", str(gw.pid)], check=True, capture_output=True)
        drive(url, BODY[scenario], N)
        subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, capture_output=True)
    finally:
        gw.terminate()
        gw.wait()
    # The dump after the zeroing is `<out-file>.1` (threads in one file, callgrind's default).
    text = open(cg + ".1").read()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    total = int(m.group(1))
    return total / N


def main():
    work = tempfile.mkdtemp(prefix="gw-layers-")
    up_out = os.path.join(work, "upstream.out")
    with open(up_out, "w") as o:
        up = subprocess.Popen([os.path.join(BIN, "mock-upstream"), "--fast"], stdout=o, stderr=subprocess.STDOUT)
    try:
        upstream = wait_line(up_out, up)
        print(f"N={N} requests after {WARM}; instructions per request (callgrind, all gateway threads)")
        for scenario in SCENARIOS:
            configs = [("full", set(LAYERS))]
            if scenario == "proxied":
                configs = [("bare", set())] + configs + [(f"without_{l}", set(LAYERS) - {l}) for l in LAYERS]
            res = {}
            for name, layers in configs:
                res[name] = measure(work, upstream, name, layers, scenario)
                own = ""
                if name.startswith("without_"):
                    own = f"   {name[8:]}: {res['full'] - res[name]:+,.0f}"
                print(f"{scenario:8} {name:20} {res[name]:>12,.0f}{own}", flush=True)
            if "bare" in res:
                print(f"{scenario:8} layers (full - bare) {res['full'] - res['bare']:>10,.0f}")
        print(f"callgrind dumps (for callgrind_annotate): {work}")
    finally:
        up.terminate()
        up.wait()


if __name__ == "__main__":
    main()
