-- wrk script for bench/ocsp.sh: cycles through the request mix in $REQUESTS
-- (lines "kind der-file get-path"), as GET /ocsp/{base64} or POST /ocsp ($METHOD).
local method = os.getenv("METHOD") or "GET"
-- OpenSSL's responder answers at "/" (POST) and "/{base64}" (GET); ours at /ocsp.
local post_path = os.getenv("POST_PATH") or "/ocsp"
local get_prefix = os.getenv("GET_PREFIX") or "/ocsp/"
local list = os.getenv("REQUESTS")
local reqs = {}
local i = 0

init = function(args)
  for line in io.lines(list) do
    local kind, file, get = line:match("^(%S+) (%S+) (%S+)$")
    if method == "POST" then
      local f = assert(io.open(file, "rb"))
      local body = f:read("*a")
      f:close()
      table.insert(reqs, wrk.format("POST", post_path, { ["Content-Type"] = "application/ocsp-request" }, body))
    else
      table.insert(reqs, wrk.format("GET", get_prefix .. get))
    end
  end
  i = math.random(#reqs) - 1
end

request = function()
  i = i % #reqs + 1
  return reqs[i]
end

local bad = 0
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50_us=%d p99_us=%d errors=%d non200=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout,
    summary.errors.status))
end
