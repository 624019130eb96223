-- One request shape per run, from the environment: BENCH_METHOD, BENCH_PATH, BENCH_TOKEN,
-- BENCH_BODY, BENCH_NO_CACHE. done() prints one JSON line the benchmark reads.
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local token = os.getenv("BENCH_TOKEN")
local body = os.getenv("BENCH_BODY")
local no_cache = os.getenv("BENCH_NO_CACHE")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")

wrk.method = method
wrk.path = path
if token then wrk.headers["Authorization"] = "Bearer " .. token end
if no_cache then wrk.headers["Cache-Control"] = "no-cache" end
if body then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

-- wrk waits whole milliseconds: a fractional delay is dithered between its two neighbours,
-- so that the mean wait is the one asked for (3.4 ms was 3 ms, and the steady load 20% high).
function delay()
  local whole = math.floor(delay_ms)
  if math.random() < delay_ms - whole then
    return whole + 1
  end
  return whole
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "errors": %d, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, errors,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
