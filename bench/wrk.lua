-- wrk script of bench/run.sh, configured by environment variables (wrk takes one script):
--
--   BENCH_MODE   get        : GET of the URL as given (e.g. /healthz)
--                ask_same   : POST /ask with one question, the same every request
--                ask_same_stream : the same, with `Accept: text/event-stream` (a cache
--                             hit streamed: one `delta` and `done`)
--                ask_unique : POST /ask, a question no request has asked before
--                sim_unique : POST /v1/chat/completions straight to the simulator, the
--                             same shape of body the service sends (also distinct)
--   BENCH_RATE   total requests per second, paced (0 or unset: as fast as possible)
--   BENCH_TAG    text put in every distinct question, so runs never share a cache key
--   BENCH_OUT    file the summary is written to, as one JSON object
--
-- Pacing: wrk 4 is closed-loop; its `delay()` hook (called before every request) is used
-- to keep a constant-rate schedule per wrk thread: each request takes the next slot of
-- 1/rate seconds, from a monotonic clock (LuaJIT FFI). With enough connections that some
-- are always idle, the offered load is the rate asked. wrk starts a request's clock when
-- it writes the request, after the delay, so latencies are the server's (plus loopback).

local mode = os.getenv("BENCH_MODE") or "get"
local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local tag = os.getenv("BENCH_TAG") or "run"

local questions = {
  "Where is my order?",
  "Do you ship to Canada?",
  "如何退货？",
  "Can I change the delivery address after paying?",
  "我的发票什么时候开？",
}

if mode == "ask_same" or mode == "ask_same_stream" then
  wrk.method = "POST"
  wrk.path = "/ask"
  wrk.headers["Content-Type"] = "application/json"
  if mode == "ask_same_stream" then
    wrk.headers["Accept"] = "text/event-stream"
  end
  wrk.body = '{"question":"Where is my order? (bench ' .. tag .. ')"}'
elseif mode == "ask_unique" or mode == "sim_unique" then
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local counter = 0
  function request()
    counter = counter + 1
    local q = questions[(counter % #questions) + 1]
      .. " [" .. tag .. " t" .. tostring(tid or 0) .. " #" .. tostring(counter) .. "]"
    local body
    if mode == "ask_unique" then
      body = '{"question":"' .. q .. '"}'
      return wrk.format("POST", "/ask", nil, body)
    end
    body = '{"model":"gpt-4o","messages":[{"role":"user","content":"'
      .. '你是一个专业的客服助手。请回答用户的问题。\\n\\n问题:' .. q .. '\\n\\n回答:'
      .. '"}],"temperature":0.0}'
    return wrk.format("POST", "/v1/chat/completions", nil, body)
  end
end

-- Thread ids, so distinct questions stay distinct across wrk threads.
local next_tid = 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
end

if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clk_id, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local threads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
  local interval = 1000.0 * threads / rate
  local slot = nil
  function delay()
    local now = now_ms()
    if slot == nil then
      slot = now
    end
    slot = slot + interval
    -- Never build up more than a second of backlog to burst out later.
    if slot < now - 1000 then
      slot = now
    end
    local d = slot - now
    if d < 0 then
      d = 0
    end
    return d
  end
end

local function json_escape(s)
  return (tostring(s):gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end))
end

function done(summary, latency, requests)
  local e = summary.errors
  local out = string.format(
    '{"mode":"%s","rate":%d,"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}',
    json_escape(mode), rate, summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9))
  local path = os.getenv("BENCH_OUT")
  if path then
    local f = assert(io.open(path, "w"))
    f:write(out, "\n")
    f:close()
  else
    io.write(out, "\n")
  end
end
