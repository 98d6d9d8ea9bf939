-- wrk script: POST pre-signed heartbeats, cycling through one body per installation.
-- usage: wrk -t T -s bench/heartbeat.lua URL -- <bodies.tsv> <T>
-- Each line of bodies.tsv is "<hex signature>\t<JSON body>". Thread k of T takes every T-th
-- line, so together the threads cycle over the whole fleet. Prints one JSON line at the end.

local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
end

function init(args)
   local path = args[1]
   local nthreads = tonumber(args[2] or "1")
   sigs, bodies = {}, {}
   local n, line_no = 0, 0
   for line in io.lines(path) do
      if line_no % nthreads == (tid or 0) then
         local tab = string.find(line, "\t", 1, true)
         n = n + 1
         sigs[n] = string.sub(line, 1, tab - 1)
         bodies[n] = string.sub(line, tab + 1)
      end
      line_no = line_no + 1
   end
   count = n
   idx = 0
   headers = {["Content-Type"] = "application/json", ["x-agent-signature"] = ""}
end

function request()
   idx = idx % count + 1
   headers["x-agent-signature"] = sigs[idx]
   return wrk.format("POST", "/api/heartbeats", headers, bodies[idx])
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '\nBENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
      '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
      '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
