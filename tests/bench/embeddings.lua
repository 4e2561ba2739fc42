-- wrk script: POST /v1/embeddings with a realistic OpenAI-style body.
--   BENCH_INPUTS    texts per request (default 1)
--   BENCH_TEXT_LEN  characters per text (default 200)
--   BENCH_ENCODING  encoding_format asked for: float (default) or base64
-- The texts are deterministic English-like prose so every target and every
-- run sees the same bytes. done() prints one machine-readable RESULT line.

local inputs = tonumber(os.getenv("BENCH_INPUTS") or "1")
local text_len = tonumber(os.getenv("BENCH_TEXT_LEN") or "200")
local encoding = os.getenv("BENCH_ENCODING") or "float"

local words = {
    "the", "quarterly", "report", "shows", "that", "customer", "support", "tickets",
    "about", "billing", "were", "resolved", "faster", "after", "the", "team", "added",
    "a", "search", "over", "past", "answers", "and", "the", "median", "wait", "fell",
    "from", "four", "hours", "to", "ninety", "minutes", "while", "satisfaction", "rose",
}

local function make_text(seed)
    local parts, len, state = {}, 0, seed
    while len < text_len do
        state = (state * 1103515245 + 12345) % 2147483648
        local w = words[(state % #words) + 1]
        parts[#parts + 1] = w
        len = len + #w + 1
    end
    return string.sub(table.concat(parts, " "), 1, text_len)
end

local texts = {}
for i = 1, inputs do
    texts[i] = '"' .. make_text(i * 7919) .. '"'
end

local input
if inputs == 1 then
    input = texts[1]
else
    input = "[" .. table.concat(texts, ",") .. "]"
end

wrk.method = "POST"
wrk.path = "/v1/embeddings"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"bench-model","input":' .. input .. ',"encoding_format":"' .. encoding .. '"}'

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "RESULT requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d max_us=%d " ..
        "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d " ..
        "text_bytes_per_request=%d\n",
        summary.requests, summary.duration, summary.bytes,
        latency:percentile(50), latency:percentile(99), latency.max,
        e.connect, e.read, e.write, e.status, e.timeout, inputs * text_len))
end
