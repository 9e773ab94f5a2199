"""Write a wrk Lua script that POSTs banking77 test texts as {"text": ...} (used by bench/serving_wrk.sh).

    python bench/serving_wrk_lua.py URL_PATH [API_KEY] > script.lua

wrk's `done` hook prints the non-2xx/3xx, connect and timeout error counts.
"""
import csv, json, sys
texts = [r["text"] for r in csv.DictReader(open("../shared/datasets/banking77/test.csv"))][:1000]
path, key = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
lines = ["bodies = {"] + ["  %s," % json.dumps(json.dumps({"text": t})) for t in texts] + ["}", "i = 0",
 'wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
if key: lines.append('wrk.headers["Authorization"] = "Bearer %s"' % key)
lines += ["request = function()", "  i = i % #bodies + 1", "  return wrk.format(nil, \"%s\", nil, bodies[i])" % path, "end",
 "done = function(summary, latency, requests)",
 "  io.write(string.format('non-2xx/3xx=%d connect_errors=%d timeouts=%d requests=%d\\n', summary.errors.status, summary.errors.connect, summary.errors.timeout, summary.requests))", "end"]
print("\n".join(lines))
