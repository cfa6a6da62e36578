-- wrk script for infra/bench/submit_load.sh: POSTs one submission per request in the dialect named
-- by EASEL_DIALECT (hive, or openai with `Prefer: respond-async`) and counts answers per thread.
local key = os.getenv("EASEL_KEY")
local dialect = os.getenv("EASEL_DIALECT") or "hive"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if dialect == "openai" then
  wrk.path = "/v1/images/generations"
  wrk.headers["Authorization"] = "Bearer " .. key
  wrk.headers["Prefer"] = "respond-async"
  wrk.body = '{"model": "dall-e-3", "prompt": "a lighthouse at dusk", "n": 1, "size": "512x512"}'
else
  wrk.path = "/api/v2/task/async"
  wrk.headers["authorization"] = "Token " .. key
  wrk.body = '{"text_data": "a lighthouse at dusk", "options": {"neg_text": "fog", "num_images": 1}}'
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  accepted = 0
  refused = 0
end

function response(status, headers, body)
  -- Hive answers 200 with the queued task; the OpenAI dialect 202 + Location.
  if status == 200 or status == 202 then accepted = accepted + 1 else refused = refused + 1 end
end

function done(summary, latency, requests)
  local ok, bad = 0, 0
  for _, t in ipairs(threads) do
    ok = ok + t:get("accepted")
    bad = bad + t:get("refused")
  end
  io.write(string.format("RESULT accepted=%d refused=%d errors=%d rps=%.0f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f\n",
    ok, bad, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
