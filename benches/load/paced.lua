-- wrk script: paces each connection so that the whole run offers about RATE requests/s
-- (wrk2 is not packaged in Debian). Usage: wrk -t1 -cC ... -s paced.lua URL -- RATE C
-- Each connection waits a random 0..2*(C/RATE) seconds (mean C/RATE) before each request;
-- wrk starts a request's latency clock when the request is written, so the wait is not
-- counted. This is closed-loop pacing: a stalled proxy delays later requests instead of
-- queueing them (no coordinated-omission correction), so p99 here is a lower bound of what
-- an open-loop generator would see; the achieved rate is reported next to it.
dofile(os.getenv("GATEHOUSE_LOAD_DIR") .. "/stats.lua") -- done(): the JSON line
local mean_ms = 10

function init(args)
  local rate = tonumber(args[1]) or 10000
  local conns = tonumber(args[2]) or 100
  mean_ms = conns * 1000 / rate
  math.randomseed(os.time())
end

function delay()
  -- wrk's timer has millisecond resolution: integer waits with the right mean.
  return math.random(0, math.floor(2 * mean_ms + 0.5))
end
