#!/usr/bin/env python3
"""Fail fast on a dead upstream: the release gateway, default config, in front of a local
server that answers 500 to everything. Prints how long callers waited until the breaker
opened, then the latency of 300 callers while it is open and the upstream calls they made.

    cargo build --release -p tower-deepseek-gateway
    python3 tower-deepseek-gateway/bench/fail_fast.py [target/release/deepseek-gateway]

Loopback only; stops by itself.
"""
import concurrent.futures, http.server, json, os, subprocess, sys, threading, time, urllib.request

calls = 0
lock = threading.Lock()


class Dead(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        global calls
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with lock:
            calls += 1
        body = b'{"error":{"message":"Internal","type":"api_error","code":"server_error"}}'
        self.send_response(500)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/deepseek-gateway"
    up = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dead)
    threading.Thread(target=up.serve_forever, daemon=True).start()
    env = dict(os.environ, DEEPSEEK_API_KEY="sk-bench")
    gw = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--upstream", f"http://127.0.0.1:{up.server_port}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = gw.stdout.readline().strip()
        url = line.removeprefix("listening on ") + "/v1/chat/completions"

        def call(i):
            t = time.monotonic()
            req = urllib.request.Request(url, data=json.dumps(
                {"model": "deepseek-chat", "messages": [{"role": "user", "content": f"q{i}"}]}
            ).encode(), headers={"content-type": "application/json"})
            try:
                urllib.request.urlopen(req, timeout=120).read()
                code = 200
            except urllib.error.HTTPError as e:
                code = e.code
                e.read()
            return code, time.monotonic() - t

        with concurrent.futures.ThreadPoolExecutor(40) as ex:
            first = list(ex.map(call, range(60)))
        codes = {}
        for c, _ in first:
            codes[c] = codes.get(c, 0) + 1
        print(f"until open: 60 callers, answers {codes}, longest wait {max(d for _, d in first):.2f} s")
        before = calls
        lat, codes = [], {}
        for i in range(300):
            c, d = call(1000 + i)
            lat.append(d)
            codes[c] = codes.get(c, 0) + 1
        lat.sort()
        print(f"while open: 300 callers, answers {codes}, upstream calls {calls - before}, "
              f"p50 {lat[150] * 1000:.1f} ms, p99 {lat[296] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms")
    finally:
        gw.terminate()
        gw.wait()
        up.shutdown()


if __name__ == "__main__":
    main()
